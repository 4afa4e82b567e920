"""Entry point: a campaign of N-body simulations -> DIR/sim_*.h5 + DIR/manifest.json.

    python generate.py sim=tiny campaign.n_sims=16 paths.data_dir=DIR
    mpirun -n 4 python generate.py sim=small paths.data_dir=DIR   # rank 0 serves ids
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from src.errors import UserError
from src.sim.campaign import run_campaign


def run(cfg: DictConfig) -> dict:
    """Run or complete the configured campaign; returns data_dir, n_files, manifest, ..."""
    sim_cfg = OmegaConf.to_container(cfg.sim, resolve=True)
    camp_cfg = OmegaConf.to_container(cfg.campaign, resolve=True)
    data_dir = Path(str(cfg.paths.data_dir)).expanduser().absolute()
    return run_campaign(sim_cfg, camp_cfg, data_dir)


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    try:
        result = run(cfg)
    except UserError as err:  # bad input or full disk: one line, no traceback
        print(f"generate.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    if result["rank"] == 0:  # under MPI every rank returns; one prints
        extra = f", {result['n_extra']} beyond n_sims not listed" if result["n_extra"] else ""
        print(f"generate.py: {result['n_files']} files in {result['data_dir']} "
              f"({result['n_simulated']} simulated, {result['n_skipped']} already there{extra}, "
              f"{result['mode']}, {result['wall_s']:.1f} s); manifest {result['manifest']}")


if __name__ == "__main__":
    main()
