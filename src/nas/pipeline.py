"""The search pipeline behind search.py: model filter -> DARTS search -> width re-fitted to the
found genotype -> genotype YAML with its provenance; and the check of a genotype file against
a dataset (`verify=`).

1. model filter (before the search, as in the paper): width for the target with a reference
   cell, at the shape the final network trains on; 2. DARTS search on the dataset's train/val
   halves, of a supernet at that width and the full depth (`search.scale=full`, the paper's
   way) or of a small proxy supernet (`proxy`); 3. the width re-fitted to the found genotype;
   4. OUT/genotype.yaml with its provenance (src/nas/provenance.py).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from src.errors import ConfigError, SearchError
from src.kernels.depthwise import use_fast_paths
from src.layers.cells import default_reductions
from src.layers.genotype import Genotype, load_genotype_file, reference_genotype, save_genotype
from src.models.darts_net import DartsNet
from src.nas.identity import check_identity
from src.nas.model_filter import choose_channels
from src.nas.provenance import costs_at, provenance
from src.nas.search import CHECKPOINT_NAME, Searcher
from src.nas.supernet import SearchNetwork
from src.util.devices import resolve_device
from src.util.hydra import instantiate_clear

log = logging.getLogger(__name__)

SCALES = ("proxy", "full")


def _reductions(cfg: DictConfig, n_cells: int) -> list[int]:
    """The configured reduction cells, or DARTS' default placement for another depth."""
    if n_cells == int(cfg.network.n_cells):
        return list(cfg.network.reductions)
    return default_reductions(n_cells)


def train_shape(cfg: DictConfig, sample_shape) -> list[int]:
    """[C_in, d, d, d] the final network is sized for: filter.in_channels / filter.input_size
    where set, else the dataset's own channels and cube size."""
    channels = int(cfg.filter.in_channels or sample_shape[0])
    size = int(cfg.filter.input_size or sample_shape[-1])
    return [channels, size, size, size]


def network_builder(cfg: DictConfig, genotype: Genotype, n_params: int, shape: list[int]):
    """build(C, n_cells) -> the final network of `genotype` for inputs of `shape`."""
    def build(C: int, n_cells: int):
        return DartsNet(shape[0], shape[-1], n_params, genotype, C=C, n_cells=n_cells,
                        reductions=_reductions(cfg, n_cells),
                        stem_multiplier=int(cfg.network.stem_multiplier),
                        head_pool=cfg.network.head_pool)
    return build


def run_filter(cfg: DictConfig, genotype: Genotype, n_params: int, shape: list[int]) -> dict:
    f = cfg.filter
    depths = list(f.n_cells) if f.n_cells is not None else int(cfg.network.n_cells)
    return choose_channels(
        network_builder(cfg, genotype, n_params, shape), shape,
        float(cfg.target_tflops) * 1e12, tolerance=float(f.tolerance), n_cells=depths,
        c_min=int(f.c_min), c_max=int(f.c_max), c_step=int(f.c_step),
    )


def check_scale(cfg: DictConfig, data_shape, shape: list[int]) -> None:
    """A known `search.scale`; `full` also needs data of the training shape (checked before
    any counting, so a wrong pairing fails at once)."""
    scale = cfg.search.scale
    if scale not in SCALES:
        raise ConfigError(f"search.scale={scale!r}; choose one of {list(SCALES)}")
    if scale == "full" and list(data_shape) != shape:
        raise SearchError(
            f"search.scale=full searches the final network on its own input, but the data in "
            f"{cfg.data.dir} is {list(data_shape)} and the filter sizes for {shape}: search on "
            "data of that shape, set filter.input_size/in_channels=null, or use search.scale=proxy")


def supernet_shape(cfg: DictConfig, presearch: dict) -> dict:
    """C, n_cells, reductions, stem_multiplier of the supernet `search.scale` asks for."""
    s = cfg.search
    pc_k = int(s.pc_k)  # partial channels need C divisible by k
    if s.scale == "proxy":
        C = int(s.C)
        if s.proxy_divisor is not None:  # the target's own width, scaled down
            C = max(pc_k, round(int(presearch["C"]) / float(s.proxy_divisor) / pc_k) * pc_k)
        return {"C": C, "n_cells": int(s.n_cells),
                "reductions": None if s.reductions is None else list(s.reductions),
                "stem_multiplier": int(s.stem_multiplier)}
    n_cells = int(presearch["n_cells"])
    return {"C": math.ceil(int(presearch["C"]) / pc_k) * pc_k, "n_cells": n_cells,
            "reductions": _reductions(cfg, n_cells),
            "stem_multiplier": int(cfg.network.stem_multiplier)}


def build_searcher(cfg: DictConfig, dm, supernet: dict, device, out_dir: Path) -> Searcher:
    s = cfg.search
    model = SearchNetwork(dm.sample_shape[0], dm.n_params, **supernet, steps=int(s.steps),
                          multiplier=int(s.multiplier), pc_k=int(s.pc_k), edge_norm=s.edge_norm)
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


def _setup(cfg: DictConfig):
    """Device, output dir, seed, threads, fast paths and the prepared data module."""
    device = resolve_device(cfg.device, "device", error=SearchError)
    out_dir = Path(cfg.paths.output_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    use_fast_paths(cfg.speed.cpu_kernels, cfg.speed.fast_depthwise)
    dm = instantiate_clear(cfg.data)
    dm.setup("fit")
    return device, out_dir, dm


def run_search(cfg: DictConfig, command: str | None = None) -> dict:
    """Filter, search, re-fit, write the genotype; returns its path, the genotype and records.
    `command`: the command line that ran it (recorded in the file)."""
    t_start = time.perf_counter()
    device, out_dir, dm = _setup(cfg)
    shape = train_shape(cfg, dm.sample_shape)
    check_scale(cfg, dm.sample_shape, shape)
    # the paper's order: the filter sizes a stand-in cell before the search (deterministic,
    # so a resumed search gets the same choice)
    presearch = run_filter(cfg, reference_genotype(cfg.filter.reference_op, int(cfg.search.steps)),
                           dm.n_params, shape)
    log.info("pre-search filter (%s cell): C=%d", cfg.filter.reference_op, presearch["C"])
    supernet = supernet_shape(cfg, presearch)
    torch.manual_seed(int(cfg.seed))  # after the filter: the supernet's init is the seed's alone
    searcher = build_searcher(cfg, dm, supernet, device, out_dir)
    searcher.meta["presearch"] = presearch

    t_search = time.perf_counter()
    genotype = searcher.fit(dm.train_dataloader(), dm.val_dataloader())
    search_s = time.perf_counter() - t_search

    final = run_filter(cfg, genotype, dm.n_params, shape)
    n_cells = int(final["n_cells"])
    network = {"C": final["C"], "n_cells": n_cells, "reductions": _reductions(cfg, n_cells),
               "stem_multiplier": int(cfg.network.stem_multiplier),
               "head_pool": cfg.network.head_pool}
    costs = costs_at(lambda s: network_builder(cfg, genotype, dm.n_params, s)(final["C"], n_cells),
                     shape, list(dm.sample_shape), [list(r) for r in cfg.filter.reference_shapes])
    record = provenance(cfg, dm, searcher, {"presearch": presearch, "final": final}, costs,
                        {"device": device, "search_seconds": search_s, "command": command,
                         "out_dir": out_dir})
    path = save_genotype(out_dir / cfg.genotype_file, genotype, network, record)
    log.info("genotype written to %s", path)
    return {"genotype_path": str(path), "genotype": genotype.to_dict(), "network": network,
            "filter": final, "presearch_filter": presearch, "supernet": supernet,
            "history": searcher.history, "seconds": round(time.perf_counter() - t_start, 2)}


def run_verify(cfg: DictConfig) -> dict:
    """`verify=GENOTYPE data.dir=DIR`: the data identity the file records is DIR's (by content);
    SearchError naming what differs otherwise."""
    doc = load_genotype_file(str(Path(str(cfg.verify)).expanduser().absolute()))
    dataset = doc["provenance"].get("dataset") or {}
    found = check_identity(dataset.get("identity"), cfg.data.dir, f"verify={doc['path']}")
    return {"genotype_path": doc["path"], "data_dir": str(cfg.data.dir), "identity": found}
