"""Fold one or several sweeps into the SAIH summary: summary.md, runs.csv and PNG figures.

    python report.py sweep_dir=SWEEP
    python report.py 'sweep_dir=[SWEEP_A,SWEEP_B]' report.out_dir=OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from src.report.collect import ReportError, collect, write_runs_csv
from src.report.derive import derive
from src.report.figures import make_all
from src.report.summary import render


def _sweep_dirs(value) -> list[Path]:
    if value is None or value == "":
        raise ReportError("sweep_dir is not set (python report.py sweep_dir=SWEEP)")
    items = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    if not items:
        raise ReportError("sweep_dir is an empty list")
    return [Path(str(p)).expanduser() for p in items]


def run(cfg: DictConfig) -> dict:
    """Write the report; returns {"summary": path, "runs_csv": path, "figures": [paths]}."""
    sweeps = _sweep_dirs(OmegaConf.select(cfg, "sweep_dir", throw_on_missing=False))
    rcfg = OmegaConf.to_container(cfg.report, resolve=True)
    rows, notes = collect(sweeps)
    groups = derive(rows, rcfg["keys"]["strong_scaling"], rcfg["keys"]["weak_scaling"])
    out_dir = Path(rcfg["out_dir"]).expanduser() if rcfg.get("out_dir") else sweeps[0] / "report"
    out_dir.mkdir(parents=True, exist_ok=True)

    runs_csv = write_runs_csv(rows, out_dir / "runs.csv")
    figures = make_all(rows, groups, out_dir, rcfg, notes) if rcfg.get("figures", True) else []
    text = render(rows, groups, rcfg, [str(s) for s in sweeps],
                  [f.name for f in figures], notes)
    summary = out_dir / "summary.md"
    summary.write_text(text, encoding="utf-8")
    return {"summary": summary, "runs_csv": runs_csv, "figures": figures}


@hydra.main(version_base="1.3", config_path="conf", config_name="report")
def main(cfg: DictConfig) -> None:
    try:
        result = run(cfg)
    except ReportError as exc:
        # Bad input is the user's to fix: one line, no traceback.
        print(f"report.py: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(result["summary"])


if __name__ == "__main__":
    main()
