"""The search pipeline behind search.py: model filter -> DARTS search -> width re-fitted to the
found genotype -> genotype YAML with its provenance.

1. model filter (before the search, as in the paper): width for the target with a reference
   cell; 2. DARTS search of a small supernet on the dataset's train/val halves; 3. the width
   re-fitted to the found genotype; 4. OUT/genotype.yaml with its provenance.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from src.errors import SearchError
from src.kernels.depthwise import use_fast_paths
from src.layers.cells import default_reductions
from src.layers.genotype import Genotype, reference_genotype, save_genotype
from src.layers.ops import PRIMITIVES
from src.models.darts_net import DartsNet
from src.nas.model_filter import choose_channels, count_cost
from src.nas.search import CHECKPOINT_NAME, Searcher
from src.nas.supernet import SearchNetwork
from src.sim.store import MANIFEST_NAME, file_checksum
from src.util.devices import resolve_device
from src.util.hydra import instantiate_clear

log = logging.getLogger(__name__)


def _reductions(cfg: DictConfig, n_cells: int) -> list[int]:
    """The configured reduction cells, or DARTS' default placement for another depth."""
    if n_cells == int(cfg.network.n_cells):
        return list(cfg.network.reductions)
    return default_reductions(n_cells)


def network_builder(cfg: DictConfig, genotype: Genotype, in_channels: int, n_params: int):
    """build(C, n_cells) -> the final network of `genotype` at that width and depth."""
    def build(C: int, n_cells: int):
        return DartsNet(in_channels, int(cfg.filter.input_size), n_params, genotype, C=C,
                        n_cells=n_cells, reductions=_reductions(cfg, n_cells),
                        stem_multiplier=int(cfg.network.stem_multiplier))
    return build


def run_filter(cfg: DictConfig, genotype: Genotype, in_channels: int, n_params: int) -> dict:
    f = cfg.filter
    depths = list(f.n_cells) if f.n_cells is not None else int(cfg.network.n_cells)
    size = int(f.input_size)
    return choose_channels(
        network_builder(cfg, genotype, in_channels, n_params), (in_channels, size, size, size),
        float(cfg.target_tflops) * 1e12, tolerance=float(f.tolerance), n_cells=depths,
        c_min=int(f.c_min), c_max=int(f.c_max), c_step=int(f.c_step),
    )


def dataset_record(dm) -> dict:
    manifest_path = Path(dm.data_dir) / MANIFEST_NAME
    digest = file_checksum(manifest_path) if manifest_path.is_file() else None
    return {
        "dir": str(Path(dm.data_dir).resolve()),
        "manifest_sha256": digest,
        "generator": dm.manifest.get("generator"),
        "n_files": len(dm.manifest.get("files", [])),
        "sample_shape": list(dm.sample_shape),
        "n_train_samples": len(dm.train_set),
        "n_val_samples": len(dm.val_set),
    }


def build_searcher(cfg: DictConfig, dm, device: torch.device, out_dir: Path) -> Searcher:
    s = cfg.search
    model = SearchNetwork(dm.sample_shape[0], dm.n_params, C=int(s.C), n_cells=int(s.n_cells),
                          reductions=None if s.reductions is None else list(s.reductions),
                          steps=int(s.steps), multiplier=int(s.multiplier),
                          stem_multiplier=int(s.stem_multiplier), pc_k=int(s.pc_k),
                          edge_norm=s.edge_norm)
    model.to(device)
    searcher = Searcher(
        model, epochs=int(s.epochs), w_lr=float(s.w_lr), w_lr_min=float(s.w_lr_min),
        w_momentum=float(s.w_momentum), w_weight_decay=float(s.w_weight_decay),
        grad_clip=float(s.grad_clip), arch_lr=float(s.arch_lr), arch_betas=list(s.arch_betas),
        arch_weight_decay=float(s.arch_weight_decay), second_order=bool(s.second_order),
        fd_radius=float(s.fd_radius), warmup_epochs=int(s.warmup_epochs), max_skip=s.max_skip,
        early_stop_skips=s.early_stop_skips, max_steps_per_epoch=s.max_steps_per_epoch,
        out_dir=out_dir, progress=bool(cfg.progress),
    )
    resume = cfg.resume
    if resume == "auto":
        resume = out_dir / CHECKPOINT_NAME if (out_dir / CHECKPOINT_NAME).is_file() else None
    elif resume:  # relative to the directory the command is run from
        resume = Path(str(resume)).expanduser().absolute()
    if resume:
        searcher.load(resume)
    return searcher


def presearch_filter(cfg: DictConfig, searcher: Searcher, in_channels: int, n_params: int):
    """The filter before the search (the paper's order); the genotype is unknown yet, so a
    reference cell stands in. A resumed search keeps the choice it recorded."""
    presearch = searcher.meta.get("presearch")
    size = int(cfg.filter.input_size)
    asked = (float(cfg.target_tflops) * 1e12, [in_channels, size, size, size])
    if presearch is None or (presearch["target_flops_train"], presearch["input_shape"]) != asked:
        presearch = run_filter(cfg, reference_genotype(cfg.filter.reference_op,
                                                       int(cfg.search.steps)),
                               in_channels, n_params)
        searcher.meta["presearch"] = presearch
    log.info("pre-search filter (%s cell): C=%d", cfg.filter.reference_op, presearch["C"])
    return presearch


def provenance(cfg, dm, device, searcher, presearch, final, at_data, search_s,
               filter_channels) -> dict:
    fields = ("target_flops_train", "flops_per_sample_train", "flops_per_sample_forward",
              "rel_error", "tolerance", "n_parameters")
    return {
        "ops": list(PRIMITIVES),
        "input_size": int(cfg.filter.input_size),
        "in_channels": filter_channels,
        **{k: final[k] for k in fields},
        "at_search_data": {"input_shape": list(dm.sample_shape), **at_data},
        "presearch_filter": {k: presearch[k] for k in
                             ("C", "n_cells", "flops_per_sample_train", "rel_error")}
                            | {"reference_op": cfg.filter.reference_op},
        "dataset": dataset_record(dm),
        "seed": int(cfg.seed),
        "search": OmegaConf.to_container(cfg.search, resolve=True),
        "epochs_completed": searcher.epoch,
        "stopped_early": searcher.stopped_early,
        "history": searcher.history,
        "search_seconds": round(search_s, 2),
        "device": str(device),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }


def run_search(cfg: DictConfig) -> dict:
    """Filter, search, re-fit, write the genotype; returns its path, the genotype and records."""
    t_start = time.perf_counter()
    device = resolve_device(cfg.device, "device", error=SearchError)
    out_dir = Path(cfg.paths.output_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(cfg.seed))
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    use_fast_paths(cfg.speed.cpu_kernels, cfg.speed.fast_depthwise)
    dm = instantiate_clear(cfg.data)
    dm.setup("fit")
    in_channels = dm.sample_shape[0]
    filter_channels = int(cfg.filter.in_channels or in_channels)
    searcher = build_searcher(cfg, dm, device, out_dir)
    presearch = presearch_filter(cfg, searcher, filter_channels, dm.n_params)

    t_search = time.perf_counter()
    genotype = searcher.fit(dm.train_dataloader(), dm.val_dataloader())
    search_s = time.perf_counter() - t_search

    final = run_filter(cfg, genotype, filter_channels, dm.n_params)
    n_cells = int(final["n_cells"])
    build = network_builder(cfg, genotype, in_channels, dm.n_params)
    at_data = count_cost(lambda: build(final["C"], n_cells), dm.sample_shape)
    network = {"C": final["C"], "n_cells": n_cells, "reductions": _reductions(cfg, n_cells),
               "stem_multiplier": int(cfg.network.stem_multiplier)}
    record = provenance(cfg, dm, device, searcher, presearch, final, at_data, search_s,
                        filter_channels)
    path = save_genotype(out_dir / cfg.genotype_file, genotype, network, record)
    log.info("genotype written to %s", path)
    return {"genotype_path": str(path), "genotype": genotype.to_dict(), "network": network,
            "filter": final, "presearch_filter": presearch, "history": searcher.history,
            "seconds": round(time.perf_counter() - t_start, 2)}
