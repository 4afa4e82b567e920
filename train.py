"""Train one CosmoFlow-family model and write the job's metrics.json.

    python train.py model=small data.dir=data/tiny data.fraction=1/4 trainer.max_epochs=1 hydra.run.dir=OUT
    python train.py -m model=small data.fraction=1,0.5 trainer=ddp_sim
    python train.py -m model=small,medium,large trainer.num_nodes=1,2,4,8
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from src.contract import METRICS_FILE
from src.dist import global_rank
from src.errors import UserError
from src.training.job import run_job


def run(cfg: DictConfig) -> dict:
    """Run the job (skipped when already complete); returns its metrics.json payload."""
    return run_job(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    if cfg.get("sweep_group") is None and hydra_cfg.mode == RunMode.MULTIRUN:
        cfg.sweep_group = Path(hydra_cfg.sweep.dir).name
    try:
        result = run(cfg)
    except UserError as err:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # Hydra records the failed job and goes on with the sweep
        # bad input or a failed rank: one line naming the culprit (details in error.txt)
        print(f"train.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    if global_rank() == 0:  # the rank that wrote it; the others' dirs hold no metrics.json
        print(f"metrics: {Path(cfg.paths.output_dir) / METRICS_FILE}")
    return result


if __name__ == "__main__":
    main()
