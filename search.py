"""3D DARTS search with a FLOPs filter in front; writes a genotype YAML that conf/model/*.yaml
can name.

    python search.py target_tflops=4 data.dir=DIR hydra.run.dir=OUT
    python search.py target_tflops=16 data.dir=DIR resume=OUT/search_checkpoint.pt

A relative `resume=` path (like every path here) resolves against the directory the command is
run from. Bad input (no data, an unreachable target, a missing or mismatching checkpoint, a
device that is not there) ends in one line on stderr naming the culprit and exit code 2.

1. model filter (before the search, as in the paper): width for the target with a reference
   cell; 2. DARTS search of a small supernet on the dataset's train/val halves; 3. the width
   re-fitted to the found genotype; 4. OUT/genotype.yaml with its provenance.
"""

from __future__ import annotations

import datetime as _dt
import logging
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from src.datamodules.cosmo import CosmoDataModule
from src.models.darts_net import DartsNet
from src.nas.genotype import Genotype, reference_genotype, save_genotype
from src.nas.model_filter import FilterError, choose_channels, count_cost
from src.nas.ops import PRIMITIVES
from src.nas.search import CHECKPOINT_NAME, Searcher, SearchError
from src.nas.supernet import SearchNetwork, default_reductions
from src.sim.store import DataError, file_checksum
from src.training import build_datamodule

log = logging.getLogger(__name__)


def _reductions(cfg: DictConfig, n_cells: int) -> list[int]:
    """The configured reduction cells, or DARTS' default placement for another depth."""
    if n_cells == int(cfg.network.n_cells):
        return list(cfg.network.reductions)
    return default_reductions(n_cells)


def _network_builder(cfg: DictConfig, genotype: Genotype, in_channels: int, n_params: int):
    def build(C: int, n_cells: int):
        return DartsNet(in_channels, int(cfg.filter.input_size), n_params, genotype, C=C,
                        n_cells=n_cells, reductions=_reductions(cfg, n_cells),
                        stem_multiplier=int(cfg.network.stem_multiplier))
    return build


def _filter(cfg: DictConfig, genotype: Genotype, in_channels: int, n_params: int) -> dict:
    f = cfg.filter
    depths = list(f.n_cells) if f.n_cells is not None else int(cfg.network.n_cells)
    size = int(f.input_size)
    return choose_channels(
        _network_builder(cfg, genotype, in_channels, n_params), (in_channels, size, size, size),
        float(cfg.target_tflops) * 1e12, tolerance=float(f.tolerance), n_cells=depths,
        c_min=int(f.c_min), c_max=int(f.c_max), c_step=int(f.c_step),
    )


def _dataset_record(dm: CosmoDataModule) -> dict:
    manifest_path = Path(dm.data_dir) / "manifest.json"
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


def _device(name: str) -> torch.device:
    """`auto` -> cuda when there is one, else cpu; an explicit device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise SearchError(f"device={name}: not a torch device ({err})") from err
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (device.index or 0) >= n:
            raise SearchError(f"device={name}: {n} CUDA device(s) visible here "
                              "(use device=auto or device=cpu)")
    return device


def run(cfg: DictConfig) -> dict:
    t_start = time.perf_counter()
    device = _device(str(cfg.device))
    out_dir = Path(cfg.paths.output_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(cfg.seed))
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    s = cfg.search

    dm = build_datamodule(cfg)
    dm.setup("fit")
    in_channels = dm.sample_shape[0]
    filter_channels = int(cfg.filter.in_channels or in_channels)

    model = SearchNetwork(in_channels, dm.n_params, C=int(s.C), n_cells=int(s.n_cells),
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
        fd_radius=float(s.fd_radius),
        warmup_epochs=int(s.warmup_epochs), max_skip=s.max_skip,
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
    # 1. the filter before the search (the paper's order); the genotype is unknown yet, so a
    #    reference cell stands in. A resumed search keeps the choice it recorded.
    presearch = searcher.meta.get("presearch")
    fsize = int(cfg.filter.input_size)
    if presearch is None or (presearch["target_flops_train"], presearch["input_shape"]) != (
            float(cfg.target_tflops) * 1e12, [filter_channels, fsize, fsize, fsize]):
        presearch = _filter(cfg, reference_genotype(cfg.filter.reference_op, int(s.steps)),
                            filter_channels, dm.n_params)
        searcher.meta["presearch"] = presearch
    log.info("pre-search filter (%s cell): C=%d", cfg.filter.reference_op, presearch["C"])

    # 2. the search
    t_search = time.perf_counter()
    genotype = searcher.fit(dm.train_dataloader(), dm.val_dataloader())
    search_s = time.perf_counter() - t_search

    # 3. the width re-fitted to the genotype actually found
    final = _filter(cfg, genotype, filter_channels, dm.n_params)
    n_cells = int(final["n_cells"])
    reductions = _reductions(cfg, n_cells)
    build = _network_builder(cfg, genotype, in_channels, dm.n_params)
    at_data = count_cost(lambda: build(final["C"], n_cells), dm.sample_shape)

    network = {
        "C": final["C"], "n_cells": n_cells, "reductions": reductions,
        "stem_multiplier": int(cfg.network.stem_multiplier),
    }
    provenance = {
        "ops": list(PRIMITIVES),
        "input_size": int(cfg.filter.input_size),
        "in_channels": filter_channels,
        "target_flops_train": final["target_flops_train"],
        "flops_per_sample_train": final["flops_per_sample_train"],
        "flops_per_sample_forward": final["flops_per_sample_forward"],
        "rel_error": final["rel_error"],
        "tolerance": final["tolerance"],
        "n_parameters": final["n_parameters"],
        "at_search_data": {"input_shape": list(dm.sample_shape), **at_data},
        "presearch_filter": {k: presearch[k] for k in
                             ("C", "n_cells", "flops_per_sample_train", "rel_error")}
                            | {"reference_op": cfg.filter.reference_op},
        "dataset": _dataset_record(dm),
        "seed": int(cfg.seed),
        "search": OmegaConf.to_container(s, resolve=True),
        "epochs_completed": searcher.epoch,
        "stopped_early": searcher.stopped_early,
        "history": searcher.history,
        "search_seconds": round(search_s, 2),
        "device": str(device),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    path = save_genotype(out_dir / cfg.genotype_file, genotype, network, provenance)
    log.info("genotype written to %s", path)
    return {
        "genotype_path": str(path),
        "genotype": genotype.to_dict(),
        "network": network,
        "filter": final,
        "presearch_filter": presearch,
        "history": searcher.history,
        "seconds": round(time.perf_counter() - t_start, 2),
    }


@hydra.main(version_base="1.3", config_path="conf", config_name="search")
def main(cfg: DictConfig) -> None:
    try:
        result = run(cfg)
    except (DataError, FilterError, SearchError) as err:  # bad input: one line, no traceback
        print(f"search.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"genotype: {result['genotype_path']}")


if __name__ == "__main__":
    main()
