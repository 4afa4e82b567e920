"""Sweep directory -> one flat row (a dict) per job; no pandas.

A sweep is Hydra's multirun dir: ``<sweep>/<job>/metrics.json`` plus ``<sweep>/multirun.yaml``
(layout and schema in docs/contracts.md). A job dir may hold a failed ``metrics.json``, only an
``error.txt``, or nothing yet (job in flight or killed): every such job still gets a row, with
``status`` saying which, so a partial sweep reports.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path
from typing import Any

import yaml

from src.contract import (
    ERROR_FILE,
    METRICS_FILE,
    STATUS_COMPLETE,
    STATUS_FAILED,
    STATUS_MISSING,
    read_job_record,
)
from src.errors import ReportError

# Row keys written first in runs.csv, in this order; the rest follow sorted.
LEAD_COLUMNS = [
    "run_id", "sweep", "job", "status", "error", "model", "num_nodes", "devices", "world_size",
    "emulated", "fraction", "precision", "batch_size", "input_size", "channels",
    "n_train_samples", "n_val_samples", "dataset_bytes", "accelerator",
]
# Not scalar; kept on the row for the figures, never written to the CSV.
NON_CSV_KEYS = {"history", "job_dir"}
# Written when the file is there but read_job_record refuses it.
UNREADABLE = f"unreadable {METRICS_FILE}: truncated or not a JSON object"


def _is_job_dir(path: Path) -> bool:
    # Hydra numbers jobs; a custom hydra.sweep.subdir still leaves a metrics.json or error.txt.
    if not path.is_dir() or path.name.startswith("."):
        return False
    return (
        path.name.isdigit()
        or (path / METRICS_FILE).is_file()
        or (path / ERROR_FILE).is_file()
    )


def _job_sort_key(path: Path) -> tuple:
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Job dirs of one sweep; a single run dir (metrics.json at its top) counts as one job."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.exists():
        raise ReportError(f"sweep dir does not exist: {sweep_dir}")
    if not sweep_dir.is_dir():
        raise ReportError(f"sweep dir is not a directory: {sweep_dir}")
    if (sweep_dir / METRICS_FILE).is_file():
        return [sweep_dir]
    jobs = sorted((p for p in sweep_dir.iterdir() if _is_job_dir(p)), key=_job_sort_key)
    if not jobs:
        raise ReportError(
            f"no job found in sweep dir {sweep_dir} (expected <job>/metrics.json sub-directories)"
        )
    return jobs


def _read_overrides(job_dir: Path) -> str:
    """The job's command-line overrides: they name a job that never wrote metrics.json."""
    # Hydra writes them there unless hydra.output_subdir is null.
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return ""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return ""
    return " ".join(str(x) for x in data) if isinstance(data, list) else ""


def _flatten(prefix: str, value: Any, out: dict) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), sub, out)
    else:
        out[prefix] = value


def _scalars(section: Any) -> dict:
    """The section's plain values; nested ones stay in metrics.json."""
    return {k: v for k, v in (section or {}).items() if not isinstance(v, (dict, list))}


def _merge_record(row: dict, data: dict) -> None:
    row["status"] = str(data.get("status") or STATUS_FAILED)
    row["error"] = data.get("error")
    config: dict = {}
    _flatten("", data.get("config") or {}, config)
    row.update(config)
    row.update(_scalars(data.get("system")))
    row.update(_scalars(data.get("timing")))
    # Metrics last: their names are the project's canonical names (src/contract.py).
    row.update(_scalars(data.get("metrics")))
    row["history"] = data.get("history") or {}


def _merge_error_file(row: dict, error_path: Path) -> None:
    """error.txt marks a job failed unless its metrics.json says complete."""
    if not error_path.is_file() or row["status"] == STATUS_COMPLETE:
        return
    row["status"] = STATUS_FAILED
    if not row["error"]:
        text = error_path.read_text(errors="replace").strip().splitlines()
        row["error"] = text[-1] if text else f"{ERROR_FILE} is empty"


def read_job(sweep_dir: Path, job_dir: Path) -> dict:
    """One row for one job dir, whatever state it is in."""
    row: dict[str, Any] = {
        "sweep": str(sweep_dir),
        "job": job_dir.name if job_dir != sweep_dir else ".",
        "job_dir": str(job_dir),
        "status": STATUS_MISSING,
        "error": None,
        "history": {},
        "overrides": _read_overrides(job_dir),
    }
    metrics_path = job_dir / METRICS_FILE
    if metrics_path.is_file():
        data = read_job_record(metrics_path)
        if data is None:
            # A job killed mid-write leaves a truncated file: report it, don't crash.
            row["status"], row["error"] = STATUS_FAILED, UNREADABLE
        else:
            _merge_record(row, data)
    _merge_error_file(row, job_dir / ERROR_FILE)
    # world_size is in the config section; older or hand-written records may lack it.
    if row.get("world_size") is None and row.get("num_nodes") is not None:
        row["world_size"] = int(row["num_nodes"]) * int(row.get("devices") or 1)
    return row


def _sweep_values(spec: Any) -> int | None:
    """Number of values in one Hydra sweep override; None if not a plain comma list."""
    text = str(spec).strip()
    if any(text.startswith(f) for f in ("range(", "interval(", "glob(", "choice(", "tag(")):
        return None
    depth, count = 0, 1
    for ch in text:
        if ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        elif ch == "," and depth == 0:
            count += 1
    return count


def expected_job_count(sweep_dir: Path) -> int | None:
    """Jobs Hydra meant to launch (from multirun.yaml); None if it can't tell."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    hydra = cfg.get("hydra") or {}
    # Sweeper params first: a command-line override of the same key replaces them (as in Hydra).
    specs: dict[str, Any] = dict((hydra.get("sweeper") or {}).get("params") or {})
    for item in ((hydra.get("overrides") or {}).get("task") or []):
        key, _, value = str(item).partition("=")
        specs[key.lstrip("+~")] = value
    counts = [_sweep_values(v) for v in specs.values()]
    if any(c is None for c in counts):
        return None
    return math.prod(counts) if counts else 1


def collect(sweep_dirs: list[str | Path]) -> tuple[list[dict], list[str]]:
    """Rows for every job of every sweep, and notes about what is missing."""
    if not sweep_dirs:
        raise ReportError("no sweep_dir given")
    rows: list[dict] = []
    notes: list[str] = []
    for sweep in sweep_dirs:
        sweep = Path(sweep).expanduser()
        jobs = find_job_dirs(sweep)
        for job in jobs:
            row = read_job(sweep, job)
            # Job numbers repeat across sweeps; the sweep's name keeps run ids unique.
            row["run_id"] = row["job"] if len(sweep_dirs) == 1 else f"{sweep.name}/{row['job']}"
            rows.append(row)
        expected = expected_job_count(sweep)
        if expected is not None and expected > len(jobs):
            notes.append(
                f"{sweep}: {len(jobs)} of {expected} jobs have a directory; "
                f"{expected - len(jobs)} never started."
            )
    return rows, notes


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def write_runs_csv(rows: list[dict], path: Path) -> Path:
    keys = set(itertools.chain.from_iterable(r.keys() for r in rows)) - NON_CSV_KEYS
    columns = [c for c in LEAD_COLUMNS if c in keys] + sorted(keys - set(LEAD_COLUMNS))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _csv_value(row.get(c)) for c in columns})
    return path
