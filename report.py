"""Fold one or several sweeps into the SAIH summary: summary.md, runs.csv and PNG figures
(the pipeline: src/report/build.py).

    python report.py sweep_dir=SWEEP
    python report.py 'sweep_dir=[SWEEP_A,SWEEP_B]' report.out_dir=OUT
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from src.errors import UserError
from src.report.build import build_report, sweep_dirs


def run(cfg: DictConfig) -> dict:
    """Write the report; returns {"summary": path, "runs_csv": path, "figures": [paths]}."""
    value = OmegaConf.select(cfg, "sweep_dir", throw_on_missing=False)
    return build_report(sweep_dirs(value), OmegaConf.to_container(cfg.report, resolve=True))


@hydra.main(version_base="1.3", config_path="conf", config_name="report")
def main(cfg: DictConfig) -> None:
    try:
        result = run(cfg)
    except UserError as err:
        # Bad input is the user's to fix: one line, no traceback.
        print(f"report.py: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(result["summary"])


if __name__ == "__main__":
    main()
