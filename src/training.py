"""One training job inside one rank: data, model, trainer, fit, metrics.json.

Called in-process when the job has one rank or a cluster launcher (SLURM, torchrun, MPI)
started the ranks, and by `src.launch` in each rank it starts itself otherwise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf

from src.models.cosmoflow import ModelConfigError
from src.models.regressor import CosmoRegressor
from src.perf.host_malloc import MallocConfigError, keep_freed_memory
from src.perf.peak import native_bf16
from src.sim.store import DataError
from src.sysinfo import system_info

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
# bad input (data, model config): one line naming the culprit is enough, no traceback
BAD_INPUT_ERRORS = (DataError, ModelConfigError, MallocConfigError)
ERROR_FILE = "error.txt"


def write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=float))
    os.replace(tmp, path)


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
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    return str(ckpt_path)


def instantiate_clear(node, **kwargs):
    """hydra's instantiate, but our own config errors (ValueError subclasses naming the
    culprit) come out as themselves instead of wrapped in an InstantiationException."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, ValueError):
            raise err.__cause__ from None
        raise


def build_datamodule(cfg: DictConfig):
    return instantiate_clear(cfg.data)


def build_module(cfg: DictConfig, dm) -> CosmoRegressor:
    c, d = dm.sample_shape[0], dm.sample_shape[1]
    net = instantiate_clear(cfg.model.net, in_channels=c, input_size=d, n_params=dm.n_params)
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    speed = cfg.get("speed") or {}
    if speed.get("compile", False):
        net = torch.compile(net)
    return CosmoRegressor(net, dm.param_names, dm.param_ranges, **optim,
                          channels_last=bool(speed.get("channels_last", False)))


def apply_speed_settings(speed) -> None:
    """Process-wide backend switches from the `speed` config group."""
    if not speed:
        return
    torch.backends.cudnn.benchmark = bool(speed.get("cudnn_benchmark", False))
    torch.set_float32_matmul_precision(str(speed.get("float32_matmul_precision", "highest")))
    apply_malloc_setting(speed)


def apply_malloc_setting(speed) -> None:
    """`speed.malloc_keep_mib` (null or absent: the C library's default)."""
    if speed and speed.get("malloc_keep_mib") is not None:
        keep_freed_memory(speed.get("malloc_keep_mib"))


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
    callbacks = [instantiate(cb) for cb in (cfg.get("callbacks") or {}).values()
                 if cb and "_target_" in cb]
    if not cfg.get("trainer", {}).get("enable_progress_bar", True):
        # trainer.enable_progress_bar=false alone must be enough (Lightning refuses a bar callback)
        callbacks = [cb for cb in callbacks if not isinstance(cb, ProgressBar)]
    return callbacks


def config_summary(cfg: DictConfig, trainer, dm) -> dict:
    return {
        "model": cfg.model.name,
        "num_nodes": trainer.num_nodes,
        "devices": trainer.num_devices,
        "world_size": trainer.world_size,
        "fraction": dm.fraction,
        "precision": str(cfg.trainer.precision),
        "batch_size": dm.batch_size,
        "global_batch_size": dm.batch_size * trainer.world_size,
        "input_size": dm.sample_shape[1],
        "channels": dm.sample_shape[0],
        "n_train_samples": dm.n_train_total,
        "n_val_samples": len(dm.val_set),
        "dataset_bytes": dm.train_files_bytes,
        "data_staged_to": str(dm.staged_to or "none"),
        "max_epochs": cfg.trainer.max_epochs,
        "max_steps": cfg.trainer.max_steps,
        "global_step": trainer.global_step,
        "epochs_done": trainer.current_epoch,
        "accelerator": str(cfg.trainer.accelerator),
        "strategy": str(cfg.trainer.strategy),
        "emulated": bool(cfg.get("emulated_nodes", False)),
        "data_dir": str(dm.data_dir),
        "seed": cfg.seed,
    }


def collect_metrics(trainer, callbacks) -> dict:
    metrics = {}
    for key, value in trainer.callback_metrics.items():
        name = key.removesuffix("_epoch")
        if key.endswith("_step"):
            continue
        metrics[name] = float(value)
    for cb in callbacks:
        metrics.update(getattr(cb, "metrics", None) or {})
    return metrics


def config_fingerprint(cfg: DictConfig) -> str:
    """Hash of what defines the job (not where it writes), to recognise a finished job."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("paths", None)
    plain.pop("ckpt_path", None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


def finished_result(cfg: DictConfig) -> dict | None:
    """The saved payload when this exact job already completed in its output dir."""
    path = Path(cfg.paths.output_dir) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if saved.get("status") == "complete" and saved.get("config_hash") == config_fingerprint(cfg):
        return saved
    return None


def resolve_precision(cfg: DictConfig) -> None:
    """`trainer.precision: auto` -> bf16-mixed where the accelerator has native bf16, else
    32-true on CPU (emulated bf16 is slower) and 16-mixed on older GPUs. Resolved in place, so
    metrics.json and the report show the precision the job really ran in. The measurements
    behind it: docs/benchmarks.md."""
    if str(cfg.trainer.get("precision")) != "auto":
        return
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    device_type = "cuda" if on_gpu else "cpu"
    fallback = "16-mixed" if on_gpu else "32-true"
    cfg.trainer.precision = "bf16-mixed" if native_bf16(device_type) else fallback
    log.info("trainer.precision=auto -> %s on %s", cfg.trainer.precision, device_type)


def check_strategy(cfg: DictConfig) -> None:
    """DeepSpeed fails deep inside Lightning when it cannot run; say why up front."""
    if not str(cfg.trainer.get("strategy", "")).startswith("deepspeed"):
        return
    try:
        import deepspeed  # noqa: F401
    except Exception as err:  # ImportError, or its CUDA op builder failing at import
        raise RuntimeError(
            f"trainer.strategy={cfg.trainer.strategy} needs DeepSpeed, which does not import here "
            f"({type(err).__name__}: {err}); install it with `make install EXTRAS=dev,deepspeed` "
            "on a machine with CUDA, or use trainer=ddp"
        ) from None
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"trainer.strategy={cfg.trainer.strategy} needs a CUDA GPU; none is visible")


def fit_job(cfg: DictConfig) -> dict:
    """Train as this rank; rank 0 writes `<output_dir>/metrics.json`. Returns its payload."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_strategy(cfg)
    # of the job as asked (precision: auto), as finished_result() compares it on a rerun
    config_hash = cfg.get("config_hash") or config_fingerprint(cfg)
    resolve_precision(cfg)
    apply_speed_settings(cfg.get("speed"))
    L.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    callbacks = build_callbacks(cfg)
    loggers = build_loggers(cfg)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                          default_root_dir=str(out_dir))
    try:
        start = time.perf_counter()
        trainer.fit(module, datamodule=dm, ckpt_path=resolve_ckpt(cfg.get("ckpt_path"), out_dir))
        fit_s = time.perf_counter() - start
        metrics = collect_metrics(trainer, callbacks)
        if cfg.get("final_validate", True) and trainer.limit_val_batches != 0:
            trainer.validate(module, datamodule=dm, verbose=False)
            metrics.update(collect_metrics(trainer, []))
    finally:
        end_wandb_run()
    metrics["staging_s"] = dm.staging_s
    metrics["num_params"] = sum(p.numel() for p in module.net.parameters())
    history = next((cb.history for cb in callbacks if hasattr(cb, "history")), {})
    payload = {
        "status": "complete",
        "error": None,
        "config_hash": config_hash,
        "metrics": metrics,
        "config": config_summary(cfg, trainer, dm),
        "system": system_info(),
        "history": history,
        "timing": {"fit_s": fit_s},
    }
    if trainer.is_global_zero:
        write_json_atomic(out_dir / METRICS_FILE, payload)
        log.info("metrics written to %s", out_dir / METRICS_FILE)
    return payload


def set_aside_stale_result(out_dir: Path) -> None:
    """A job about to (re)run must not leave an older run's result in place: if it is killed,
    the report would count that result as this job's. The old files are renamed, not lost."""
    for name in (METRICS_FILE, ERROR_FILE):
        path = out_dir / name
        if path.is_file():
            path.replace(path.with_name(f"{path.stem}.previous{path.suffix}"))


def record_failure(out_dir: Path, err: BaseException) -> None:
    """Leave the error in the job dir so a sweep can go on and the report can say why."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(traceback.format_exception(err))
    (out_dir / ERROR_FILE).write_text(text)
    write_json_atomic(out_dir / METRICS_FILE,
                      {"status": "failed", "error": f"{type(err).__name__}: {err}", "metrics": {}})
