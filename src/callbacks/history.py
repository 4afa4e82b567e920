"""Loss curves for metrics.json (the report's loss figure), kept even when logger=none."""

from __future__ import annotations

import lightning as L


class LossHistory(L.Callback):
    def __init__(self, keys=("train/loss", "val/loss")):
        self.keys = tuple(keys)
        self.history: dict[str, list[list[float]]] = {k: [] for k in self.keys}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get("train/loss_step")
            if value is not None:
                self.history["train/loss"].append([int(trainer.global_step), float(value)])

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.is_global_zero and not trainer.sanity_checking:
            value = trainer.callback_metrics.get("val/loss")
            if value is not None:
                self.history["val/loss"].append([int(trainer.global_step), float(value)])

    def state_dict(self):
        return {"history": self.history}

    def load_state_dict(self, state_dict):
        self.history = state_dict.get("history", self.history)
