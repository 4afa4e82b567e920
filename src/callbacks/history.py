"""Curves of logged metrics for metrics.json (the report's loss figure), kept even when
logger=none. A key the module logs per step (`<key>_step`) gets a point after every training
batch; any other key a point after each validation. A point is [global step, value, seconds
since the fit started] (the report can draw curves against wall time)."""

from __future__ import annotations

import time

import lightning as L


class LossHistory(L.Callback):
    def __init__(self, keys=("train/loss", "val/loss")):
        self.keys = tuple(keys)
        self.history: dict[str, list[list[float]]] = {k: [] for k in self.keys}
        self._t0 = time.perf_counter()
        self._offset = 0.0  # wall time of the run this one resumed

    def on_fit_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    def _record(self, trainer, per_step: bool) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        for key in self.keys:
            stepped = f"{key}_step" in metrics
            value = metrics.get(f"{key}_step") if per_step else metrics.get(key)
            if stepped == per_step and value is not None:
                self.history[key].append([int(trainer.global_step), float(value),
                                          self._offset + time.perf_counter() - self._t0])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._record(trainer, per_step=True)

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._record(trainer, per_step=False)

    def state_dict(self):
        return {"history": self.history}

    def load_state_dict(self, state_dict):
        self.history = {**{k: [] for k in self.keys}, **state_dict.get("history", {})}
        # a resumed run's clock goes on from the last point it kept
        times = [p[2] for points in self.history.values() for p in points if len(p) > 2]
        self._offset = max(times, default=0.0)
