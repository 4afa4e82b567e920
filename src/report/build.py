"""The report pipeline behind report.py: sweep dirs -> job rows -> repeats folded -> derived
columns -> plausibility flags -> runs.csv, figures and summary.md."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from src.errors import ReportError
from src.report.collect import collect, write_runs_csv
from src.report.derive import derive
from src.report.figures import make_all
from src.report.flags import TOLERANCES, flag_rows
from src.report.loss_figure import X_AXES
from src.report.page import render
from src.report.repeats import fold_repeats
from src.util import checks


def sweep_dirs(value) -> list[Path]:
    """`sweep_dir` as given (one path or a list, a config list too) -> the paths; ReportError
    when unset or empty."""
    if OmegaConf.is_list(value):
        value = OmegaConf.to_container(value, resolve=True)
    if value is None or value == "":
        raise ReportError("sweep_dir is not set (python report.py sweep_dir=SWEEP)")
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ReportError("sweep_dir is an empty list")
    return [Path(str(p)).expanduser() for p in items]


def check_settings(rcfg: dict) -> None:
    """The settings this change reads, checked before any file is read: ReportError naming
    the culprit."""
    for key, value in (rcfg.get("tolerances") or {}).items():
        if key not in TOLERANCES:
            raise ReportError(f"report.tolerances.{key} is not one of {sorted(TOLERANCES)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ReportError(f"report.tolerances.{key}={value!r} must be a number >= 0")
    x_axis = rcfg.get("loss_curves_x", "step")
    if x_axis not in X_AXES:
        raise ReportError(f"report.loss_curves_x={x_axis!r} must be one of {sorted(X_AXES)}")
    checks.boolean("report.include_flagged", rcfg.get("include_flagged", False), ReportError)


def build_report(sweeps: list[Path], rcfg: dict) -> dict:
    """Write the report; returns {"summary": path, "runs_csv": path, "figures": [paths]}."""
    check_settings(rcfg)
    jobs, notes = collect(sweeps)
    rows = fold_repeats(jobs)  # one row per configuration from here on
    groups = derive(rows, rcfg["keys"]["strong_scaling"], rcfg["keys"]["weak_scaling"])
    flag_rows(rows, rcfg.get("tolerances") or {})
    out_dir = Path(rcfg["out_dir"]).expanduser() if rcfg.get("out_dir") else sweeps[0] / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_csv = write_runs_csv(rows, out_dir / "runs.csv")
    figures = make_all(rows, groups, out_dir, rcfg, notes) if rcfg.get("figures", True) else []
    text = render(rows, groups, rcfg, [str(s) for s in sweeps], [f.name for f in figures], notes,
                  jobs)
    summary = out_dir / "summary.md"
    summary.write_text(text, encoding="utf-8")
    return {"summary": summary, "runs_csv": runs_csv, "figures": figures}
