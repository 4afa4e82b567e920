"""What one training job is built from: data module, LightningModule, loggers, callbacks, and
the process-wide settings (precision, speed switches) applied before training starts."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from omegaconf import DictConfig, OmegaConf

from src.errors import ConfigError
from src.kernels.depthwise import use_fast_paths
from src.models.regressor import CosmoRegressor
from src.perf.host_malloc import keep_freed_memory
from src.perf.peak import native_bf16
from src.util.devices import auto_device_type
from src.util.hydra import instantiate_clear

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig):
    return instantiate_clear(cfg.data)


def build_module(cfg: DictConfig, dm) -> CosmoRegressor:
    c, d = dm.sample_shape[0], dm.sample_shape[1]
    net = instantiate_clear(cfg.model.net, in_channels=c, input_size=d, n_params=dm.n_params)
    speed = cfg.speed
    if speed.compile:
        net = torch.compile(net)
    if not (cfg.optim.get("_target_") and cfg.optim.get("_partial_")):
        raise ConfigError("optim: needs a _target_ (a torch optimizer class) and _partial_: true, "
                          "so that the module can hand it the net's parameters")
    return CosmoRegressor(net, dm.param_names, dm.param_ranges,
                          optimizer=instantiate_clear(cfg.optim),
                          lars=OmegaConf.to_container(cfg.lars, resolve=True),
                          **OmegaConf.to_container(cfg.schedule, resolve=True),
                          batch_size=dm.batch_size,  # per device: the lr scaling's global batch
                          channels_last=bool(speed.channels_last),
                          # a job saved before the knob existed validated on the cube only
                          val_mirror_images=OmegaConf.select(cfg, "quality.val_mirror_images",
                                                             default=1))


def apply_speed_settings(speed) -> None:
    """Process-wide backend switches from the `speed` config group."""
    if not speed:
        return
    torch.backends.cudnn.benchmark = bool(speed.cudnn_benchmark)
    torch.set_float32_matmul_precision(str(speed.float32_matmul_precision))
    use_fast_paths(speed.cpu_kernels, speed.fast_depthwise)
    apply_malloc_setting(speed)


def apply_malloc_setting(speed) -> None:
    """`speed.malloc_keep_mib` (null: the C library's default)."""
    if speed and speed.malloc_keep_mib is not None:
        keep_freed_memory(speed.malloc_keep_mib)


def build_loggers(cfg: DictConfig) -> list:
    if not cfg.get("logger"):
        return []
    if "wandb" in cfg.logger:
        os.environ.setdefault("WANDB_MODE", "offline")  # never ask for an API key
    return [instantiate(lg) for lg in cfg.logger.values() if lg and "_target_" in lg]


def end_wandb_run() -> None:
    """wandb keeps one run per process: end it, or the next job of a multirun run in this
    process would log into it."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def build_callbacks(cfg: DictConfig) -> list:
    callbacks = [instantiate_clear(cb) for cb in (cfg.get("callbacks") or {}).values()
                 if cb and "_target_" in cb]
    if not cfg.get("trainer", {}).get("enable_progress_bar", True):
        # trainer.enable_progress_bar=false alone must be enough (Lightning refuses a bar callback)
        callbacks = [cb for cb in callbacks if not isinstance(cb, ProgressBar)]
    if not cfg.get("trainer", {}).get("enable_checkpointing", True):
        # the same for trainer.enable_checkpointing=false and the two checkpoint callbacks
        callbacks = [cb for cb in callbacks if not isinstance(cb, ModelCheckpoint)]
    return callbacks


def resolve_precision(cfg: DictConfig) -> None:
    """`trainer.precision: auto` -> bf16-mixed where the accelerator has native bf16, else
    32-true on CPU (emulated bf16 is slower) and 16-mixed on older GPUs. Resolved in place, so
    metrics.json and the report show the precision the job really ran in. The measurements
    behind it: docs/benchmarks.md."""
    if str(cfg.trainer.get("precision")) != "auto":
        return
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    device_type = "cuda" if accelerator in ("gpu", "cuda") else (
        auto_device_type() if accelerator == "auto" else "cpu")
    fallback = "16-mixed" if device_type == "cuda" else "32-true"
    cfg.trainer.precision = "bf16-mixed" if native_bf16(device_type) else fallback
    log.info("trainer.precision=auto -> %s on %s", cfg.trainer.precision, device_type)


def check_strategy(cfg: DictConfig) -> None:
    """DeepSpeed fails deep inside Lightning when it cannot run; say why up front."""
    if not str(cfg.trainer.get("strategy", "")).startswith("deepspeed"):
        return
    try:
        import deepspeed  # noqa: F401
    except Exception as err:  # ImportError, or its CUDA op builder failing at import
        raise ConfigError(
            f"trainer.strategy={cfg.trainer.strategy} needs DeepSpeed, which does not import here "
            f"({type(err).__name__}: {err}); install it with `make install EXTRAS=dev,deepspeed` "
            "on a machine with CUDA, or use trainer=ddp"
        ) from None
    if not torch.cuda.is_available():
        raise ConfigError(f"trainer.strategy={cfg.trainer.strategy} needs a CUDA GPU; none is visible")


def resolve_ckpt(ckpt_path, out_dir: Path) -> str | None:
    """`last` -> this job's last.ckpt if there is one (a fresh start otherwise)."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        last = out_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            log.info("resuming from %s", last)
            return str(last)
        log.info("ckpt_path=last but %s does not exist yet: starting from scratch", last)
        return None
    if not Path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    return str(ckpt_path)
