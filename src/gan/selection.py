"""Pick the generator by its physics checks along training, not take its last weights
(`gan.select_every`, docs/gan.md).

A GAN does not converge to a point: with the tiny set on CPU the four checks swung by 0.1-0.2
between validations 100 generator steps apart, so where a run stopped decided whether it
passed (docs/benchmarks.md "GAN"). Every `gan.select_every` generator steps, and at the end of
training, `SelectByChecks` makes cubes with the moving-average generator at the parameters of
`gan.n_select` selection sub-volumes (src/gan/reference.py: training sub-volumes apart from
the validation's) and runs the physics checks on them. A check's value over its threshold
says how far it is from failing (<= 1: it passes); the worst of the four is the score, and the
state with the lowest score so far is saved as `selected.ckpt` beside last.ckpt. The score
record rides in every checkpoint (the callback's state), so a resumed run goes on comparing
against the best before the kill, and `selection.json` lists every score.

The checks use their own RNG streams, not the global one, so they take no random numbers
from the training; its weights still part from a run without checks after a few hundred
steps at the bench's size (docs/gan.md), as rounding differs once more work has run.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import numpy as np
import torch

from src.gan.nets import GanConfigError
from src.gan.physics import validate
from src.gan.sample import LoadedGenerator
from src.util.atomic import temporary_name, write_json_atomic

log = logging.getLogger(__name__)
SELECTED = "selected.ckpt"
RECORD = "selection.json"


def score(result: Mapping) -> float:
    """The worst check's value over its threshold (<= 1: every check passes); a threshold of
    0 is failed by any value above it."""
    ratios = [float(c["value"]) / float(c["threshold"]) if float(c["threshold"]) > 0
              else (math.inf if float(c["value"]) > 0 else 0.0) for c in result["checks"]]
    return max(ratios, default=0.0)


class SelectByChecks(L.Callback):
    """Check the moving-average generator every `every` generator steps (and at the end);
    keep the best-scoring state at out_dir/selected.ckpt."""

    def __init__(self, every: int, simulated: np.ndarray, params: np.ndarray, seeds: list[int],
                 thresholds: Mapping, box_size: float, out_dir: Path, batch: int = 16):
        self.every, self.simulated, self.params, self.seeds = every, simulated, params, seeds
        self.thresholds, self.box_size, self.batch = dict(thresholds), box_size, batch
        self.path, self.record = Path(out_dir) / SELECTED, Path(out_dir) / RECORD
        self.best_score, self.best_step, self.history = math.inf, None, []

    # ------------------------------------------------------------ state in every checkpoint
    def state_dict(self) -> dict:
        return {"best_score": self.best_score, "best_step": self.best_step,
                "history": list(self.history), "n_select": len(self.params)}

    def load_state_dict(self, state: Mapping) -> None:
        if int(state.get("n_select", len(self.params))) != len(self.params):
            raise GanConfigError(
                f"gan.n_select={len(self.params)}, but the checkpoint resumed selected on "
                f"{state['n_select']} sub-volumes: its scores are not comparable; set it back, "
                "or gan.resume=false to train afresh")
        self.best_score = float(state["best_score"])
        self.best_step = state["best_step"]
        self.history = list(state["history"])

    def on_train_start(self, trainer, module) -> None:
        # after every strategy has restored the callbacks (some restore after on_fit_start):
        # restored from last.ckpt (or nothing, training afresh: train_gan then removed any
        # older selection). A selected.ckpt saved after last.ckpt, before a kill, is this
        # run's too and may hold a better state than last.ckpt knows of; one that is gone
        # cannot be returned.
        recorded = recorded_best(self.path) if self.path.is_file() else None
        if recorded is None and self.best_step is not None:
            log.warning("GAN selection: %s is missing; selecting afresh from step %d",
                        self.path, trainer.global_step // 2)
            self.best_score, self.best_step = math.inf, None
        elif recorded is not None and recorded[0] < self.best_score:
            self.best_score, self.best_step = recorded

    # ------------------------------------------------------------ the checks
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step // 2  # two optimizer steps per batch
        if step > 0 and step % self.every == 0:
            self.check(trainer, module, step)

    def on_train_end(self, trainer, module) -> None:
        step = trainer.global_step // 2
        if step > 0 and not any(h["step"] == step for h in self.history):
            self.check(trainer, module, step)

    def check(self, trainer, module, step: int) -> dict:
        gen = LoadedGenerator(self.path, module.generator_ema, dict(module.hparams), "unsaved")
        cubes = gen.generate(self.params, self.seeds, self.batch)
        result = validate(self.simulated, cubes, self.params, self.thresholds, self.box_size)
        response = result["sigma8_response"]
        entry = {"step": int(step), "score": score(result), "passed": bool(result["passed"]),
                 "values": {c["name"]: float(c["value"]) for c in result["checks"]},
                 # what the checks forgive as noise, kept to judge the pick by afterwards
                 "pk_ratio": np.round(result["pk"]["ratio"], 4).tolist(),
                 "sigma8_slope": {"generated": np.round(response["slope_gen"], 3).tolist(),
                                  "simulated": np.round(response["slope_sim"], 3).tolist()}}
        self.history.append(entry)
        better = entry["score"] < self.best_score
        if better:
            self.best_score, self.best_step = entry["score"], int(step)
            tmp = temporary_name(self.path)  # a kill mid-save leaves the old selection whole
            trainer.save_checkpoint(tmp, weights_only=False)  # with the callbacks: its own score
            if trainer.is_global_zero:
                os.replace(tmp, self.path)
        if trainer.is_global_zero:
            write_json_atomic(self.record, {"selected_step": self.best_step,
                                            "selected_score": self.best_score,
                                            "n_select": len(self.params),
                                            "history": self.history})
        log.info("GAN selection, step %d: score %.3f (%s)%s", step, entry["score"],
                 ", ".join(f"{k} {v:.3f}" for k, v in entry["values"].items()),
                 " -> selected" if better else f"; best {self.best_score:.3f} at step "
                 f"{self.best_step}")
        return entry


def selected_or_last(out_dir: Path, last: Path, every: int) -> Path:
    """The checkpoint to sample from: selected.ckpt when selection is on and one was saved,
    else `last`."""
    selected = Path(out_dir) / SELECTED
    return selected if every > 0 and selected.is_file() else last


def recorded_best(path: Path) -> tuple[float, int] | None:
    """(score, step) a selected.ckpt recorded for itself; None when it records none."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key, value in state.get("callbacks", {}).items():
        if key.startswith(SelectByChecks.__qualname__) and value.get("best_step") is not None:
            return float(value["best_score"]), int(value["best_step"])
    return None


def clear_selection(out_dir: Path) -> None:
    """Remove an earlier run's selection: a run trained afresh selects among its own states."""
    for name in (SELECTED, RECORD):
        (Path(out_dir) / name).unlink(missing_ok=True)


__all__ = ["SELECTED", "RECORD", "score", "SelectByChecks", "selected_or_last",
           "recorded_best", "clear_selection"]
