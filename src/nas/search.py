"""The DARTS search loop: alternate architect steps (alphas, on the val half) and weight steps
(on the train half), log alphas + genotype each epoch, checkpoint each epoch, resume.

Collapse guard (documented in docs/models.md):
- `max_skip` caps skip_connects in the derived normal cell (surplus, weakest skips are
  replaced by their edge's best parametric op), always on by default (2);
- `early_stop_skips` (optional) stops the search once the *uncapped* derived normal cell holds
  that many skips, keeping the previous epoch's genotype (DARTS+ style early stopping).

The weights' learning rate follows a cosine from `w_lr` to `w_lr_min` over `epochs`, computed in
closed form from the epoch count, so resuming with more epochs continues a schedule stretched to
the new total instead of replaying the old one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch

from src.errors import SearchError
from src.layers.genotype import Genotype
from src.nas.architect import Architect
from src.nas.supernet import SearchNetwork
from src.util.atomic import atomic_path
from src.util.progress import Progress

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "search_checkpoint.pt"
CHECKPOINT_KEYS = ("model", "w_optimizer", "a_optimizer", "epoch", "history", "rng")


def endless(loader):
    """Batches of `loader`, re-iterating it whenever it runs out (for the architect's val
    batches). Unlike itertools.cycle it keeps no copy of the batches it has yielded."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise SearchError("the validation loader yields no batches")


class Searcher:
    """Owns the supernet, both optimisers and the schedule; `fit()` runs the epochs."""

    def __init__(self, model: SearchNetwork, epochs: int, w_lr: float = 0.025,
                 w_lr_min: float = 1e-3, w_momentum: float = 0.9, w_weight_decay: float = 3e-4,
                 grad_clip: float = 5.0, arch_lr: float = 3e-4, arch_betas=(0.5, 0.999),
                 arch_weight_decay: float = 1e-3, second_order: bool = False,
                 fd_radius: float = 0.01,
                 warmup_epochs: int = 0, max_skip: int | None = 2,
                 early_stop_skips: int | None = None, max_steps_per_epoch: int | None = None,
                 out_dir: str | Path = ".", progress: bool = True):
        self.model = model
        self.epochs, self.grad_clip = int(epochs), grad_clip
        self.warmup_epochs, self.max_skip = int(warmup_epochs), max_skip
        self.early_stop_skips, self.max_steps = early_stop_skips, max_steps_per_epoch
        self.out_dir, self.progress = Path(out_dir), progress
        self.w_lr, self.w_lr_min = float(w_lr), float(w_lr_min)
        self.w_optimizer = torch.optim.SGD(model.network_parameters(), lr=w_lr,
                                           momentum=w_momentum, weight_decay=w_weight_decay)
        self.architect = Architect(model, arch_lr, arch_betas, arch_weight_decay, second_order,
                                   w_momentum, w_weight_decay, fd_radius)
        self.epoch = 0  # epochs completed
        self.history: list[dict] = []
        self.stopped_early = False
        self.best_genotype: Genotype | None = None
        self.meta: dict = {}  # caller's records that must survive a resume (the filter's choice)

    # --- checkpointing --------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def lr_at(self, epoch: int) -> float:
        """The weights' lr in epoch `epoch` (0-based): cosine annealing over `self.epochs`."""
        t = min(epoch, self.epochs) / max(1, self.epochs)
        return self.w_lr_min + (self.w_lr - self.w_lr_min) * (1 + math.cos(math.pi * t)) / 2

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "w_optimizer": self.w_optimizer.state_dict(),
            "a_optimizer": self.architect.optimizer.state_dict(),
            "supernet": getattr(self.model, "config", None),
            "epoch": self.epoch,
            "history": self.history,
            "stopped_early": self.stopped_early,
            "genotype": self.best_genotype.to_dict() if self.best_genotype else None,
            "rng": torch.get_rng_state(),
            "meta": self.meta,
        }

    def save(self) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.checkpoint_path) as tmp:  # a killed run never leaves half a file
            torch.save(self.state_dict(), tmp)
        return self.checkpoint_path

    def load(self, path: str | Path) -> None:
        """Continue from a checkpoint of the same supernet (SearchError otherwise)."""
        path = Path(path)
        if not path.is_file():
            raise SearchError(f"resume={path}: no such checkpoint file")
        device = next(self.model.parameters()).device
        try:
            state = torch.load(path, map_location=device, weights_only=False)
        except Exception as err:  # truncated file, not a torch file, ...
            raise SearchError(f"resume={path}: not a readable search checkpoint ({err})") from err
        missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
        if missing:
            raise SearchError(f"resume={path}: not a search checkpoint (no {', '.join(missing)})")
        ours, theirs = getattr(self.model, "config", None), state.get("supernet")
        if ours is not None and theirs is not None and ours != theirs:
            diff = "; ".join(f"{k}={theirs.get(k)!r} in the checkpoint, {ours.get(k)!r} here"
                             for k in ours if ours.get(k) != theirs.get(k))
            raise SearchError(f"resume={path}: the checkpoint is of another supernet: {diff}")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:  # an old checkpoint without a recorded config
            raise SearchError(f"resume={path}: the checkpoint does not fit this supernet "
                              f"({err})") from err
        self.w_optimizer.load_state_dict(state["w_optimizer"])
        self.architect.optimizer.load_state_dict(state["a_optimizer"])
        # no scheduler state: fit() sets the lr from lr_at(epoch), for the new total of epochs
        self.epoch, self.history = int(state["epoch"]), list(state["history"])
        self.stopped_early = bool(state.get("stopped_early", False))
        g = state.get("genotype")
        self.best_genotype = Genotype.from_dict(g) if g else None
        torch.set_rng_state(state["rng"].cpu())
        self.meta = dict(state.get("meta", {}))
        log.info("resumed the search from %s after epoch %d", path, self.epoch)

    # --- the loop ---------------------------------------------------------------------
    def _weight_step(self, x, y) -> float:
        self.w_optimizer.zero_grad(set_to_none=True)
        loss = self.model.loss(x, y)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.network_parameters(), self.grad_clip)
        self.w_optimizer.step()
        return float(loss.detach())

    def fit(self, train_loader, val_loader) -> Genotype:
        n_batches = len(train_loader)
        steps = n_batches if self.max_steps is None else min(n_batches, int(self.max_steps))
        while self.epoch < self.epochs and not self.stopped_early:
            t0 = time.perf_counter()
            lr = self.lr_at(self.epoch)
            with Progress(steps, f"search epoch {self.epoch + 1}/{self.epochs}", "step",
                          enabled=self.progress) as bar:
                w_losses, a_losses = self._run_epoch(train_loader, val_loader, steps, lr, bar)
            self.epoch += 1
            self._end_epoch(w_losses, a_losses, lr, time.perf_counter() - t0)
            self.save()
        return self.best_genotype if self.best_genotype is not None else self.model.genotype(
            self.max_skip)

    def _run_epoch(self, train_loader, val_loader, steps: int, lr: float, bar: Progress):
        """One epoch: per train batch an architect step on a val batch (after the warm-up)
        and a weight step; returns (weight losses, architect losses)."""
        self.model.train()
        for group in self.w_optimizer.param_groups:
            group["lr"] = lr
        search_alphas = self.epoch >= self.warmup_epochs
        for loader in (train_loader, val_loader):
            # a fresh shuffle each epoch (and the same one again after a resume)
            if hasattr(getattr(loader, "sampler", None), "set_epoch"):
                loader.sampler.set_epoch(self.epoch)
        val_iter = endless(val_loader)
        device = next(self.model.parameters()).device
        w_losses, a_losses = [], []
        for step, (x, y) in enumerate(train_loader):
            if step >= steps:
                break
            x, y = x.to(device), y.to(device)
            if search_alphas:
                xv, yv = (t.to(device) for t in next(val_iter))
                a_losses.append(self.architect.step((x, y), (xv, yv), xi=lr,
                                                    w_optimizer=self.w_optimizer))
            w_losses.append(self._weight_step(x, y))
            bar.advance(info=f"loss {w_losses[-1]:.4f}")
        return w_losses, a_losses

    def _end_epoch(self, w_losses, a_losses, lr, seconds) -> None:
        capped = self.model.genotype(self.max_skip)
        raw = self.model.genotype(None)
        n_skip = raw.count("skip_connect")
        if self.early_stop_skips is not None and n_skip >= int(self.early_stop_skips) \
                and self.best_genotype is not None:
            self.stopped_early = True
            log.warning("early stop after epoch %d: the normal cell holds %d skip_connects; "
                        "keeping the genotype of epoch %d", self.epoch, n_skip, self.epoch - 1)
        else:
            self.best_genotype = capped
        rec = {
            "epoch": self.epoch,
            "lr": lr,
            "train_loss": _mean(w_losses),
            "arch_val_loss": _mean(a_losses),
            "seconds": round(seconds, 3),
            "skips_in_normal_uncapped": n_skip,
            "genotype": capped.to_dict(),
            "alphas": self.model.alphas_table(),
            "stopped_early": self.stopped_early,
        }
        # the history travels into the genotype file: the softmaxed alphas of every epoch let
        # a reader follow how the cell was chosen without the search directory
        self.history.append({k: rec[k] for k in ("epoch", "lr", "train_loss", "arch_val_loss",
                                                  "seconds", "skips_in_normal_uncapped",
                                                  "alphas")})
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "search_log.jsonl", "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        log.info("epoch %d: train loss %.4f, arch val loss %.4f, %.1f s", self.epoch,
                 rec["train_loss"], rec["arch_val_loss"], seconds)
        log.info("epoch %d alphas (softmax, rows = edges, cols = ops): %s", self.epoch,
                 json.dumps(rec["alphas"]))
        log.info("epoch %d genotype: %s", self.epoch, json.dumps(rec["genotype"]))


def _mean(values) -> float:
    return float(sum(values) / len(values)) if values else math.nan
