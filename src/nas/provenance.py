"""What a genotype file records about how it was made: costs at the shapes that matter, the
data by content, the search's alphas and log, the exact config and command.

Everything a reader needs to audit a shipped model, or to rerun its search and get the same
genotype, without the (temporary) search directory.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from src.layers.ops import PRIMITIVES
from src.nas.identity import data_identity
from src.nas.model_filter import count_cost

SEARCH_LOG = "search_log.jsonl"
FILTER_FIELDS = ("target_flops_train", "flops_per_sample_train", "flops_per_sample_forward",
                 "rel_error", "tolerance", "n_parameters")


def costs_at(build: Callable[[list[int]], torch.nn.Module], train_shape: list[int],
             search_shape: list[int], reference_shapes: list[list[int]]) -> dict:
    """FLOPs and parameters of the final network at the shape it is sized for, at the search
    data's shape and at each reference shape (the paper's 128^3, with 1 and 4 channels)."""
    def at(shape):
        return {"input_shape": list(shape), **count_cost(lambda: build(list(shape)), shape)}

    return {"train_shape": at(train_shape), "search_data": at(search_shape),
            "reference": [at(s) for s in reference_shapes]}


def dataset_record(dm) -> dict:
    """The search data: where it was, what it is by content, and how it was split."""
    files = dm.manifest["files"]
    return {
        "dir": str(Path(dm.data_dir).resolve()),
        "identity": data_identity(dm.data_dir),
        "generator": dm.manifest.get("generator"),
        "n_files": len(files),
        "sample_shape": list(dm.sample_shape),
        "n_train_samples": len(dm.train_set),
        "n_val_samples": len(dm.val_set),
        "train_sim_ids": [int(i) for i in dm.train_sim_ids],
        "val_sim_ids": sorted(int(i) for i in dm.val_sim_ids),
    }


def log_record(out_dir: Path) -> dict:
    """The per-epoch search log beside the genotype: its path, checksum and length (a shipped
    genotype carries a copy whose checksum this is)."""
    path = out_dir / SEARCH_LOG
    data = path.read_bytes() if path.is_file() else b""
    return {"file": SEARCH_LOG, "path": str(path), "sha256": hashlib.sha256(data).hexdigest(),
            "n_epochs": len(data.splitlines())}


def recorded_config(cfg: DictConfig) -> dict:
    """The resolved config of the run, without the machine-local output paths: composing it
    again (OmegaConf.create) reruns the same search."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    for key in ("paths", "hydra"):
        plain.pop(key, None)
    return plain


def provenance(cfg: DictConfig, dm, searcher, filters: dict, costs: dict, run: dict) -> dict:
    """The genotype file's `provenance` section. `filters`: the pre-search and final filter
    results; `run`: device, seconds, command and output directory of this search."""
    final, presearch = filters["final"], filters["presearch"]
    shape = costs["train_shape"]["input_shape"]
    return {
        "ops": list(PRIMITIVES),
        "input_size": int(shape[-1]),
        "in_channels": int(shape[0]),
        **{k: final[k] for k in FILTER_FIELDS},
        "costs": costs,
        "presearch_filter": {k: presearch[k] for k in
                             ("C", "n_cells", "flops_per_sample_train", "rel_error")}
                            | {"reference_op": cfg.filter.reference_op},
        "search_scale": str(cfg.search.scale),
        "supernet": dict(searcher.model.config),
        "dataset": dataset_record(dm),
        "seed": int(cfg.seed),
        "command": run["command"],
        "config": recorded_config(cfg),
        "epochs_completed": searcher.epoch,
        "stopped_early": searcher.stopped_early,
        "alphas": {"final_softmax": searcher.model.alphas_table(),
                   "final_raw": searcher.model.arch_state()},
        "search_log": log_record(run["out_dir"]),
        "history": searcher.history,
        "search_seconds": round(run["search_seconds"], 2),
        "device": str(run["device"]),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
