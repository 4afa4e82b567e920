"""Test-only callback, imported by locally launched ranks through the config."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch


class RankProbe(L.Callback):
    """Each rank writes the sample positions it owns and its weights after training."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer, pl_module):
        sampler = trainer.train_dataloader.sampler
        rank = trainer.global_rank
        (self.out_dir / f"probe_rank{rank}.json").write_text(
            json.dumps({"rank": rank, "world": trainer.world_size, "positions": sampler.positions.tolist()})
        )
        torch.save({k: v.detach().cpu() for k, v in pl_module.net.state_dict().items()},
                   self.out_dir / f"probe_rank{rank}.pt")


class StopAtStep(L.Callback):
    """Stops training after a given optimizer step the way Lightning's Timer does when the time
    budget runs out (`should_stop` in `on_train_batch_end`), without depending on the clock."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True
