"""MLPerfLog: the job's MLPerf HPC log (`:::MLLOG` lines, mlperf_logging.mllog) beside its
metrics.json, so MLCommons' compliance checker and result tools can read a SAIH-cosmo run.

Only global rank 0 writes. Each start of the job writes a fresh log, so a resumed job's log
covers the resumed part; the log of an earlier start is kept beside it as mllog.1.txt,
mllog.2.txt, ... (oldest first), never overwritten. What each key means here, and which
checker rules a scaled, simulated CosmoFlow cannot pass, is in docs/report.md ("MLPerf HPC
log").
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

from src.errors import ConfigError

DIVISIONS = ("open", "closed")
STATUSES = ("cloud", "onprem", "preview", "research")


def _now_ms() -> int:
    return int(time.time() * 1000)


def keep_earlier_log(path: Path) -> None:
    """Move an existing log out of the way to the first free <stem>.<n><suffix>."""
    if not path.exists():
        return
    n = 1
    while (kept := path.with_name(f"{path.stem}.{n}{path.suffix}")).exists():
        n += 1
    path.rename(kept)


def eval_error(metrics, param_names) -> float | None:
    """MLPerf CosmoFlow's eval_error: the MAE of the normalised labels, averaged over the
    parameters (our val/mae_<p>_norm)."""
    values = [metrics.get(f"val/mae_{p}_norm") for p in param_names]
    if not values or any(v is None for v in values):
        return None
    return float(sum(float(v) for v in values) / len(values))


class MLPerfLog(Callback):
    def __init__(self, path: str, org: str = "SAIH-cosmo", platform_name: str | None = None,
                 division: str = "open", status: str = "research"):
        super().__init__()
        try:
            from mlperf_logging.mllog import constants, mllog
        except ImportError as err:
            raise ConfigError("callbacks.mllog needs the mlperf-logging package (make install, "
                              "or pip install mlperf-logging); ~callbacks.mllog turns it off") from err
        if division not in DIVISIONS or status not in STATUSES:
            raise ConfigError(f"callbacks.mllog: division={division!r} (one of {DIVISIONS}), "
                              f"status={status!r} (one of {STATUSES})")
        self._mllog, self._c, self.path = mllog, constants, Path(path)
        self.submission = {"org": org, "platform": platform_name, "division": division,
                           "status": status}
        self._init_ms = _now_ms()  # the job's start: the callbacks are built with its objects
        self._logger = self._handler = None

    # ---- writing ------------------------------------------------------------------------
    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keep_earlier_log(self.path)  # a resumed job's first part stays readable
        logger = logging.getLogger(f"saih_cosmo.mllog.{id(self)}")
        logger.propagate, logger.handlers = False, []
        logger.setLevel(logging.INFO)
        self._handler = logging.FileHandler(self.path, mode="w")
        logger.addHandler(self._handler)
        self._logger = self._mllog.MLLogger(logger=logger, default_stack_offset=2)

    def _event(self, key, value=None, metadata=None, time_ms=None, kind="event") -> None:
        if self._logger is not None:
            getattr(self._logger, kind)(key=key, value=value, metadata=metadata, time_ms=time_ms)

    def _close(self) -> None:
        if self._handler is not None:
            self._handler.close()
            logging.getLogger(f"saih_cosmo.mllog.{id(self)}").handlers = []
        self._logger = self._handler = None

    # ---- the run ------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage=None) -> None:
        if stage != "fit" or not trainer.is_global_zero:
            return
        self._open()
        c = self._c
        sub = self.submission
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.machine()
        for key, value in ((c.SUBMISSION_BENCHMARK, "cosmoflow"), (c.SUBMISSION_ORG, sub["org"]),
                           (c.SUBMISSION_PLATFORM, sub["platform"] or f"{trainer.num_nodes}x{device}"),
                           (c.SUBMISSION_DIVISION, sub["division"]),
                           (c.SUBMISSION_STATUS, sub["status"])):
            self._event(key, value, time_ms=self._init_ms)
        # nothing here drops the OS page cache (that needs root): say so
        self._event(c.CACHE_CLEAR, False, time_ms=self._init_ms)
        self._event(c.INIT_START, time_ms=self._init_ms, kind="start")
        dm = trainer.datamodule
        if getattr(dm, "staging_s", 0) > 0:  # staged in the data module's setup, just now
            now = _now_ms()
            self._event(c.STAGING_START, time_ms=now - int(dm.staging_s * 1000), kind="start")
            self._event(c.STAGING_STOP, time_ms=now, kind="end",
                        metadata={"staging_duration": dm.staging_s, "staged_to": str(dm.staged_to)})

    def _log_settings(self, trainer, pl_module) -> None:
        c = self._c
        dm, hp = trainer.datamodule, pl_module.hparams
        opt = dict(hp.get("optimizer") or {})
        lr = trainer.optimizers[0].param_groups[0].get("initial_lr", opt.get("lr"))
        steps_per_epoch = max(1, trainer.num_training_batches) if trainer.num_training_batches else 1
        settings = {
            c.SEED: int(torch.initial_seed()),
            "number_of_nodes": trainer.num_nodes, "accelerators_per_node": trainer.num_devices,
            c.GLOBAL_BATCH_SIZE: dm.batch_size * trainer.world_size,
            c.TRAIN_SAMPLES: dm.n_train_total, c.EVAL_SAMPLES: len(dm.val_set),
            "gradient_accumulation_steps": trainer.accumulate_grad_batches,
            c.OPT_NAME: str(opt.get("class", "")).rsplit(".", 1)[-1].lower(),
            c.OPT_BASE_LR: float(lr),
            c.OPT_LR_WARMUP_EPOCHS: float(hp.get("warmup_steps", 0)) / steps_per_epoch,
            # the warm-up ramps up to the base rate itself
            c.OPT_LR_WARMUP_FACTOR: 1.0,
            # a smooth decay (schedule.decay), not steps at epoch boundaries
            c.OPT_LR_DECAY_BOUNDARY_EPOCHS: [],
            c.OPT_LR_DECAY_FACTOR: float(hp.get("min_lr_ratio", 1.0)),
            c.OPT_WEIGHT_DECAY: float(opt.get("weight_decay", 0.0) or 0.0),
            "opt_learning_rate_decay_schedule": str(hp.get("decay", "")),
        }
        for key, value in settings.items():
            self._event(key, value)

    def on_train_start(self, trainer, pl_module) -> None:
        if self._logger is None:
            return
        c = self._c
        self._log_settings(trainer, pl_module)
        self._event(c.INIT_STOP, kind="end")
        self._event(c.RUN_START, kind="start")

    def _epoch(self, trainer) -> dict:
        return {"epoch_num": trainer.current_epoch + 1}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._event(self._c.EPOCH_START, metadata=self._epoch(trainer), kind="start")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._event(self._c.EPOCH_STOP, metadata=self._epoch(trainer), kind="end")

    def _in_fit(self, trainer) -> bool:
        return self._logger is not None and trainer.state.fn == "fit" and not trainer.sanity_checking

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self._in_fit(trainer):
            self._event(self._c.EVAL_START, metadata=self._epoch(trainer), kind="start")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._in_fit(trainer):
            return
        c = self._c
        error = eval_error(trainer.callback_metrics, getattr(pl_module, "param_names", []))
        if error is not None:
            self._event("eval_error", error, metadata=self._epoch(trainer))
        self._event(c.EVAL_STOP, metadata=self._epoch(trainer), kind="end")

    def on_train_end(self, trainer, pl_module) -> None:
        if self._logger is None:
            return
        c = self._c
        # success: the job's quality target (src/callbacks/quality.py) was reached
        reached = any(getattr(cb, "reached", None) for cb in trainer.callbacks)
        self._event(c.RUN_STOP, kind="end", metadata={
            "status": c.SUCCESS if reached else c.ABORTED})
        self._close()

    def teardown(self, trainer, pl_module, stage=None) -> None:
        self._close()
