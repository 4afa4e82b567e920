"""QualityMonitor: baselines on the job's own split, the quality target, time to reach it.

At fit start rank 0 computes the baselines (src/quality/baselines.py) on the data module's
training samples and evaluates them on its validation samples, and broadcasts them, so that a
target relative to a baseline is the same number on every rank. After each validation of the
fit it compares the target's metric with the threshold; the first time it is reached it
records the time since training started (validations included, as MLPerf's time to train),
the samples and epochs of data seen and the training FLOPs spent, and stops training when
`early_stop` is set. The baselines travel in the job's checkpoints: a resumed job reuses them
when its split and baseline settings are unchanged, instead of fitting the ridge again (minutes
on a large set). `finalize_metrics` adds the skill scores and the Valid FLOP/s to the
job's metrics once the final validation is in (src/training/fit.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping

import numpy as np
from lightning.pytorch import Callback

from src.errors import ConfigError
from src.perf.flops import flops_per_sample
from src.quality.baselines import baseline_metrics, mean_errors, sample_features, stats_errors
from src.quality.scores import check_exponent, quality_penalty, skill_metrics
from src.quality.target import QualityTarget

log = logging.getLogger(__name__)


def _baseline_settings(cfg: Mapping | None) -> dict:
    cfg = {"enabled": True, "pk_bins": 4, "ridge_alpha": 1.0, "max_train_samples": 4096,
           **dict(cfg or {})}
    if int(cfg["pk_bins"]) < 0 or float(cfg["ridge_alpha"]) < 0 or int(cfg["max_train_samples"]) < 1:
        raise ConfigError(f"quality.baselines={cfg}: need pk_bins >= 0, ridge_alpha >= 0 and "
                          "max_train_samples >= 1")
    return cfg


class QualityMonitor(Callback):
    """Args (the `quality` config group, conf/quality/default.yaml):
        target: the quality target (src/quality/target.py).
        early_stop: stop training at the first validation that reaches the target.
        baselines: enabled, pk_bins, ridge_alpha, max_train_samples of the summary-statistics
            ridge (the training-mean baseline is always computed when there is validation).
        valid_flops: exponent (and cap_at_one) of the Valid FLOP/s penalty.
    """

    def __init__(self, target: Mapping | None = None, early_stop: bool = False,
                 baselines: Mapping | None = None, valid_flops: Mapping | None = None):
        super().__init__()
        self.target = QualityTarget.from_config(target)
        self.early_stop = bool(early_stop)
        self.baselines = _baseline_settings(baselines)
        if self.target.relative_to == "summary_stats" and not self.baselines["enabled"]:
            raise ConfigError("quality.target.relative_to=summary_stats needs "
                              "quality.baselines.enabled=true")
        valid_flops = dict(valid_flops or {})
        self.exponent = check_exponent(valid_flops.get("exponent", 5))
        self.cap = bool(valid_flops.get("cap_at_one", True))
        self.metrics: dict = {}
        self.reached: dict = {}
        self.samples_seen, self.train_s = 0, 0.0
        self._threshold = self._best = None
        self._started = None
        self._names: list[str] = []
        self._restored_baselines: dict | None = None  # from a resumed job's checkpoint
        self._baseline_key = ""

    # ---- baselines ----------------------------------------------------------------------
    def _compute_baselines(self, dm) -> dict:
        train, val = dm.train_set, dm.val_set
        if len(val) == 0:
            return {}
        start = time.perf_counter()
        # the training samples of data.dir only: extra (e.g. generated) ones come after them
        n_primary = int(getattr(dm, "n_primary_train", len(train)))
        y_train = train.labels[train.index[:n_primary, 0]]
        y_val = val.labels[val.index[:, 0]]
        result = {"mean": mean_errors(y_train, y_val)}
        extra = {}
        if self.baselines["enabled"]:
            pick = np.arange(n_primary)
            if len(pick) > int(self.baselines["max_train_samples"]):
                pick = np.sort(np.random.default_rng(0).choice(
                    len(pick), int(self.baselines["max_train_samples"]), replace=False))
            bins = int(self.baselines["pk_bins"])
            f_train = np.stack([sample_features(train.read_raw(int(i)), bins) for i in pick])
            f_val = np.stack([sample_features(val.read_raw(i), bins) for i in range(len(val))])
            result["stats"] = stats_errors(f_train, y_train[pick], f_val, y_val,
                                           float(self.baselines["ridge_alpha"]))
            extra["baseline_train_samples"] = len(pick)
        return {**baseline_metrics(result, dm.param_names), **extra,
                "baseline_s": time.perf_counter() - start}

    def _split_key(self, dm) -> str:
        """What the baselines depend on: the split, the samples and the baseline settings."""
        return json.dumps({
            "val_sim_ids": sorted(int(i) for i in dm.val_sim_ids),
            "train_sim_ids": sorted(int(i) for i in dm.train_sim_ids),
            "n_primary_train": int(getattr(dm, "n_primary_train", len(dm.train_set))),
            "n_val": len(dm.val_set), "sample_shape": list(dm.sample_shape),
            "baselines": self.baselines}, sort_keys=True, default=str)

    def on_fit_start(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        self._names = list(dm.param_names)
        self.target.check_params(self._names)
        # a job that never validates (limit_val_batches=0) has no quality to compare
        validates = trainer.limit_val_batches != 0
        self._baseline_key = self._split_key(dm) if validates else ""
        restored = self._restored_baselines
        reuse = bool(restored) and validates and restored.get("key") == self._baseline_key
        found = None
        if trainer.is_global_zero and validates:
            found = dict(restored["metrics"]) if reuse else self._compute_baselines(dm)
        self.metrics.update(trainer.strategy.broadcast(found, src=0) or {})
        self._threshold = self.target.threshold(self.metrics)
        self._n_train = max(1, int(dm.n_train_total))
        self._flops_per_sample = flops_per_sample(pl_module.net, dm.sample_shape)["flops_per_sample_train"]
        if self._threshold is None:
            log.warning("quality target %s: no validation to measure it on", self.target.name)
        elif trainer.is_global_zero and "baseline_mean_mse" in self.metrics:
            # a long convergence job says at its start what it has to beat
            stats = self.metrics.get("baseline_stats_mse")
            ridge = "off" if stats is None else (
                f"{stats:.4g} (fitted on {self.metrics['baseline_train_samples']} training samples)")
            took = (f"restored from the checkpoint (fitted in {self.metrics['baseline_s']:.0f} s)"
                    if reuse else f"in {self.metrics['baseline_s']:.0f} s")
            log.info("quality baselines: training mean val MSE %.4g, summary-statistics ridge %s, "
                     "%s; target %s <= %.4g", self.metrics["baseline_mean_mse"], ridge, took,
                     self.target.name, self._threshold)

    # ---- progress -----------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self._started = time.perf_counter()

    def _elapsed(self) -> float:
        return self.train_s + (time.perf_counter() - self._started if self._started else 0.0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # every rank trains on equal shards (ShardSampler equal=True)
        self.samples_seen += len(batch[0]) * trainer.world_size

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or self._threshold is None:
            return
        achieved = self.target.achieved(trainer.callback_metrics, self._names)
        if achieved is None:
            return
        self._best = achieved if self._best is None else min(self._best, achieved)
        if trainer.is_global_zero and not self.reached:
            log.info("quality target %s <= %.4g: %.4g at epoch %d (best %.4g)", self.target.name,
                     self._threshold, achieved, trainer.current_epoch, self._best)
        if self.reached or achieved > self._threshold:
            return
        self._record_reached()
        log.info("quality target %s <= %.4g reached: %.4g after %d samples", self.target.name,
                 self._threshold, achieved, self.samples_seen)
        if self.early_stop:
            trainer.should_stop = True

    def _record_reached(self) -> None:
        self.reached = {
            "time_to_target_s": self._elapsed(), "samples_to_target": self.samples_seen,
            "epochs_to_target": self.samples_seen / self._n_train,
            "flops_to_target": float(self.samples_seen * self._flops_per_sample),
        }

    def on_train_end(self, trainer, pl_module) -> None:
        self.train_s, self._started = self._elapsed(), None

    # ---- the job's metrics --------------------------------------------------------------
    def finalize_metrics(self, metrics: Mapping) -> dict:
        """Target, whether and when it was reached, skill and Valid FLOP/s, from the job's
        metrics after its final validation."""
        out = dict(self.metrics)
        out.update(skill_metrics({**metrics, **out}, self._names))
        if self._threshold is None:
            return out
        achieved = self.target.achieved(metrics, self._names)
        if not self.reached and achieved is not None and achieved <= self._threshold:
            self._record_reached()  # by the final validation, after all the training
        out.update({"quality_target": self._threshold, "quality_target_metric": self.target.name,
                    "target_reached": bool(self.reached), **self.reached})
        if self._best is not None:
            out["quality_best"] = self._best
        if achieved is not None:
            out["quality_achieved"] = achieved
            penalty = quality_penalty(achieved, self._threshold, self.exponent, self.cap)
            out["quality_penalty"] = penalty
            if metrics.get("tflops_aggregate") is not None:
                out["valid_tflops_aggregate"] = float(metrics["tflops_aggregate"]) * penalty
        return out

    # ---- resume -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        baselines = json.dumps({"key": self._baseline_key, "metrics": self.metrics}, default=float)
        return {"reached": self.reached, "samples_seen": self.samples_seen,
                "train_s": self._elapsed(), "best": self._best, "baselines": baselines}

    def load_state_dict(self, state_dict: dict) -> None:
        self.reached = dict(state_dict.get("reached") or {})
        self.samples_seen = int(state_dict.get("samples_seen", 0))
        self.train_s = float(state_dict.get("train_s", 0.0))
        self._best = state_dict.get("best")
        # checkpoints written before the baselines were kept have none: they are fitted again
        baselines = json.loads(state_dict.get("baselines") or "{}")
        self._restored_baselines = baselines if baselines.get("metrics") else None
