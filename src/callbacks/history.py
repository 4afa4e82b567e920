"""Curves of logged metrics for metrics.json (the report's loss figure), kept even when
logger=none. A key the module logs per step (`<key>_step`) gets a point after every training
batch; any other key a point after each validation."""

from __future__ import annotations

import lightning as L


class LossHistory(L.Callback):
    def __init__(self, keys=("train/loss", "val/loss")):
        self.keys = tuple(keys)
        self.history: dict[str, list[list[float]]] = {k: [] for k in self.keys}

    def _record(self, trainer, per_step: bool) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        for key in self.keys:
            stepped = f"{key}_step" in metrics
            value = metrics.get(f"{key}_step") if per_step else metrics.get(key)
            if stepped == per_step and value is not None:
                self.history[key].append([int(trainer.global_step), float(value)])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._record(trainer, per_step=True)

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._record(trainer, per_step=False)

    def state_dict(self):
        return {"history": self.history}

    def load_state_dict(self, state_dict):
        self.history = {**{k: [] for k in self.keys}, **state_dict.get("history", {})}
