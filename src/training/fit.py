"""One training job inside one rank: data, model, trainer, fit, metrics.json.

Called in-process when the job has one rank or a cluster launcher (SLURM, torchrun, MPI)
started the ranks, and by `src.training.launch` in each rank it starts itself otherwise.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from src import contract
from src.dist import emulated_nodes
from src.perf.system import system_info
from src.training.build import (
    apply_speed_settings,
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_module,
    check_strategy,
    end_wandb_run,
    resolve_ckpt,
    resolve_precision,
)
from src.training.records import config_fingerprint, repeat_fingerprint, write_result
from src.util.hydra import instantiate_clear

log = logging.getLogger(__name__)


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
        "data_sources": dict(dm.data_sources),
        "n_val_samples": len(dm.val_set),
        "dataset_bytes": dm.train_files_bytes,
        "data_staged_to": str(dm.staged_to or "none"),
        "max_epochs": cfg.trainer.max_epochs,
        "max_steps": cfg.trainer.max_steps,
        "global_step": trainer.global_step,
        "epochs_done": trainer.current_epoch,
        "accelerator": str(cfg.trainer.accelerator),
        "strategy": str(cfg.trainer.strategy),
        "emulated": emulated_nodes(),
        "data_dir": str(dm.data_dir),
        "seed": cfg.seed,
        "repeat": cfg.get("repeat", 0),
        "repeat_of": repeat_fingerprint(cfg),
    }


def split_summary(dm) -> dict:
    """Which simulations trained and validated, so anyone can recompute a baseline."""
    return {"val_sim_ids": list(dm.val_sim_ids), "train_sim_ids": list(dm.train_sim_ids),
            "val_fraction": dm.val_fraction, "split_seed": dm.split_seed}


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


def fit_job(cfg: DictConfig) -> dict:
    """Train as this rank; rank 0 writes `<output_dir>/metrics.json`. Returns its payload."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_strategy(cfg)
    # of the job as asked (precision: auto), as finished_result() compares it on a rerun
    config_hash = config_fingerprint(cfg)
    resolve_precision(cfg)
    apply_speed_settings(cfg.get("speed"))
    L.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    callbacks = build_callbacks(cfg)
    loggers = build_loggers(cfg)
    trainer = instantiate_clear(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                default_root_dir=str(out_dir))
    try:
        start = time.perf_counter()
        trainer.fit(module, datamodule=dm, ckpt_path=resolve_ckpt(cfg.get("ckpt_path"), out_dir))
        fit_s = time.perf_counter() - start
        metrics = collect_metrics(trainer, callbacks)
        # a validation at the last step already holds the final numbers (a large model's
        # validation can take as long as minutes of training)
        if cfg.get("final_validate", True) and trainer.limit_val_batches != 0 \
                and module.validated_at_step != trainer.global_step:
            trainer.validate(module, datamodule=dm, verbose=False)
            metrics.update(collect_metrics(trainer, []))
        for cb in callbacks:  # scores of the final numbers (src/callbacks/quality.py)
            if hasattr(cb, "finalize_metrics"):
                metrics.update(cb.finalize_metrics(metrics))
    finally:
        end_wandb_run()
    metrics["staging_s"] = dm.staging_s
    metrics["num_params"] = sum(p.numel() for p in module.net.parameters())
    unknown = contract.unknown_metrics(metrics)
    if unknown:
        log.warning("metrics not in the metrics.json contract (src/contract.py): %s", unknown)
    history = next((cb.history for cb in callbacks if hasattr(cb, "history")), {})
    payload = contract.job_record(
        contract.STATUS_COMPLETE, None, config_hash=config_hash, metrics=metrics,
        config=config_summary(cfg, trainer, dm), system=system_info(), history=history,
        split=split_summary(dm),
        timing={"fit_s": fit_s})
    if trainer.is_global_zero:
        write_result(out_dir, payload)
        log.info("metrics written to %s", out_dir / contract.METRICS_FILE)
    return payload
