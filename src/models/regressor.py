"""CosmoRegressor: the one LightningModule for parameter regression.

MSE on labels normalised to [-1, 1]; validation MAE per parameter in normalised and physical
units; the configured optimizer (`optim`, a Hydra `_partial_`: it gets the parameters here)
with an optional LARS trust ratio on its update (`lars`); linear warm-up then a configurable
decay (`schedule`), scaled with the global batch (`schedule.lr_scaling`); a warning when the
predictions saturate a bounded (tanh) head; validation predictions averaged over mirror images
of each cube (`quality.val_mirror_images`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import OmegaConf
from torch import nn

from src.errors import ConfigError
from src.models.lars import clip_relative_update_, lars_targets
from src.util.symmetry import COUNTS, mirror_images

DECAYS = ("constant", "cosine", "linear")
LR_SCALINGS = ("none", "linear", "sqrt")
# a prediction this close to the head's bound sits where tanh has next to no gradient
SATURATED = 0.99
SATURATION_EARLY_STEPS, SATURATION_EVERY = 16, 64


def lr_scale(rule: str, global_batch: int, reference_batch: int) -> float:
    """Multiplier of optim.lr for a global batch: linear (Goyal et al.), sqrt (for adaptive
    optimizers, Krizhevsky's rule) or none, relative to the batch the lr was set for."""
    ratio = global_batch / reference_batch
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


def _describe(optimizer) -> dict:
    """{"class": "torch.optim.adam.Adam", "lr": ..., ...} of a functools.partial optimizer."""
    func = getattr(optimizer, "func", optimizer)
    name = f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', repr(func))}"
    keywords = getattr(optimizer, "keywords", {}) or {}
    return {"class": name, **{k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
                              for k, v in keywords.items()}}


class CosmoRegressor(L.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        param_names: list[str],
        param_ranges: dict,
        optimizer: Callable[..., torch.optim.Optimizer],
        lars: dict | None = None,
        warmup_steps: int = 0,
        warmup_max_frac: float = 1.0,
        decay: str = "cosine",
        min_lr_ratio: float = 0.01,
        lr_scaling: str = "none",
        lr_reference_batch: int = 4,
        batch_size: int = 1,
        channels_last: bool = False,
        val_mirror_images: int = 1,
    ):
        super().__init__()
        if val_mirror_images not in COUNTS:
            raise ConfigError(f"quality.val_mirror_images={val_mirror_images!r}; choose one of "
                              f"{COUNTS} (the cube only, its axis flips, flips x axis orders)")
        if decay not in DECAYS:
            raise ConfigError(f"schedule.decay={decay!r}; choose one of {DECAYS}")
        if lr_scaling not in LR_SCALINGS:
            raise ConfigError(f"schedule.lr_scaling={lr_scaling!r}; choose one of {LR_SCALINGS}")
        if int(warmup_steps) < 0 or not 0.0 <= float(warmup_max_frac) <= 1.0:
            raise ConfigError(f"schedule.warmup_steps={warmup_steps} must be >= 0 and "
                              f"schedule.warmup_max_frac={warmup_max_frac} in [0, 1]")
        if int(lr_reference_batch) < 1:
            raise ConfigError(f"schedule.lr_reference_batch={lr_reference_batch} must be >= 1")
        self.save_hyperparameters(ignore=["net", "optimizer"])
        # the optimizer as plain values, so checkpoints and loggers keep its settings
        self.hparams["optimizer"] = _describe(optimizer)
        self.optimizer = optimizer
        self.net = net
        self.param_names = list(param_names)
        # half-widths map a normalised error back to physical units
        half = [(param_ranges[n][1] - param_ranges[n][0]) / 2.0 for n in self.param_names]
        self.register_buffer("half_range", torch.tensor(half, dtype=torch.float32), persistent=False)
        self.lars = dict(lars or {})
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last_3d)
        self.channels_last = channels_last
        self.val_mirror_images = val_mirror_images
        self._saturation_warned = False
        # the step of the last validation in fit: the final one (src/training/fit.py) is
        # skipped when the weights have not moved since
        self.validated_at_step: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.net(x)

    def mirrored(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """The mean float32 prediction over the first n mirror images of each cube."""
        return torch.stack([self(image).float() for image in mirror_images(x, n)]).mean(0)

    def training_step(self, batch, batch_idx):
        x, y = batch
        pred = self(x).float()
        self._warn_if_saturated(pred)
        loss = nn.functional.mse_loss(pred, y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(x))
        return loss

    def _warn_if_saturated(self, pred: torch.Tensor) -> None:
        """Once per run: most predictions at a bounded head's bound means it has next to no
        gradient left, and the run may never recover (a learning rate too high for it)."""
        bound = getattr(getattr(self.net, "head", None), "bound", None)
        step = self.global_step
        # reading the fraction syncs a GPU: every step early on, where a high lr kills the
        # head, and then only now and then
        if bound is None or self._saturation_warned or (
                step >= SATURATION_EARLY_STEPS and step % SATURATION_EVERY):
            return
        frac = float((pred.detach().abs() > SATURATED * bound).float().mean())
        if frac > 0.5:
            self._saturation_warned = True
            rank_zero_warn(
                f"step {self.global_step}: {frac:.0%} of the predictions saturate the tanh x "
                f"{bound} output head, whose gradient then vanishes; lower optim.lr, raise "
                "schedule.warmup_steps or set model.net.output=linear")

    def validation_step(self, batch, batch_idx):
        x, y = batch
        pred = self.mirrored(x, self.val_mirror_images)
        n = len(x)
        self.log("val/loss", nn.functional.mse_loss(pred, y), prog_bar=True, sync_dist=True, batch_size=n)
        abs_err = (pred - y).abs().mean(dim=0)
        sq_err = ((pred - y) ** 2).mean(dim=0)
        for i, name in enumerate(self.param_names):
            # per-parameter MSE: the skill against the baselines (src/callbacks/quality.py)
            self.log(f"val/mse_{name}", sq_err[i], sync_dist=True, batch_size=n)
            self.log(f"val/mae_{name}_norm", abs_err[i], sync_dist=True, batch_size=n)
            self.log(f"val/mae_{name}", abs_err[i] * self.half_range[i], sync_dist=True, batch_size=n)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validated_at_step = int(self.global_step)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        if not self.lars.get("enabled", False):
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        params = lars_targets(self.net.parameters())
        before = [p.detach().clone() for p in params]
        out = super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        clip_relative_update_(params, before, self.lars["trust_coefficient"], self.lars.get("eps", 1e-8))
        return out

    def lr_factor(self, step: int, total: int) -> float:
        """Multiplier of the base learning rate at optimizer step `step` of `total`."""
        # a short run (a demo, a few epochs) keeps most of its steps at the full rate
        warm = min(int(self.hparams.warmup_steps), int(self.hparams.warmup_max_frac * total))
        if step < warm:
            return (step + 1) / warm
        if self.hparams.decay == "constant" or total <= warm:
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        floor = self.hparams.min_lr_ratio
        if self.hparams.decay == "linear":
            return floor + (1 - floor) * (1 - progress)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # torch's load_state_dict replaces the param groups' settings with the saved ones: keep
        # this run's fused choice (a checkpoint from before it would turn the fused kernel off)
        fused = getattr(self.optimizer, "keywords", {}).get("fused")
        for state in checkpoint.get("optimizer_states", []):
            for group in state.get("param_groups", []):
                if "fused" in group:
                    group["fused"] = fused

    def configure_optimizers(self):
        opt = self.optimizer(self.net.parameters())
        hp = self.hparams
        factor = lr_scale(hp.lr_scaling, hp.batch_size * self.trainer.world_size,
                          int(hp.lr_reference_batch))
        for group in opt.param_groups:  # before the scheduler records it as initial_lr
            group["lr"] *= factor
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: self.lr_factor(step, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
