"""Repeats of one job folded into one row: medians, with the spread kept beside them.

A sweep run with `repeat=0,1,2` has three complete jobs per configuration; they share
`repeat_of` (the job's config hash without the repeat index, src/training/records.py). The
report folds each such group into one row whose numbers are the medians of its repeats, and
keeps `<key>_min`/`<key>_max` of the throughput, the `repeats` count and `repeat_spread`
((max - min) / median of the aggregate FLOP/s, or of samples/s without a FLOP count). Every
later table, figure and finding reads the folded rows; the jobs table lists every repeat.
`bounds` gives the error bar of a row: its repeats' min-max, else its windows' min-max.
"""

from __future__ import annotations

from collections import defaultdict

from src.contract import STATUS_COMPLETE
from src.report import derive as d
from src.util.stats import median

# throughput values whose min and max over repeats are kept for the error bars
SPREAD_KEYS = ("tflops_aggregate", "tflops_per_device", "samples_per_s")
# flags that hold for a folded row when any repeat has them, or only when all have them
ANY_OF = ("measurement_contended", "peak_exceeded")
ALL_OF = ("measurement_stable",)


def value_of(row: dict, key: str):
    """The row's own value, or the derived one for the throughput figures."""
    if key == "tflops_aggregate":
        return d.tflops_aggregate(row)
    if key == "tflops_per_device":
        return d.tflops_per_device(row)
    return d.as_float(row.get(key))


def _fold(members: list[dict]) -> dict:
    row = dict(members[0])
    for key in set().union(*members):
        values = [m.get(key) for m in members]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            row[key] = median(float(v) for v in values)
    for key in ANY_OF:
        if any(key in m for m in members):
            row[key] = any(bool(m.get(key)) for m in members)
    for key in ALL_OF:
        if any(key in m for m in members):
            row[key] = all(bool(m.get(key)) for m in members)
    seen = [m.get("contention_seen") for m in members if m.get("contention_seen")]
    row["contention_seen"] = " | ".join(seen)
    for key in SPREAD_KEYS:
        vals = [v for v in (value_of(m, key) for m in members) if v is not None]
        if vals:
            row[key] = median(vals)
            row[f"{key}_min"], row[f"{key}_max"] = min(vals), max(vals)
    ref = "tflops_aggregate" if row.get("tflops_aggregate_min") is not None else "samples_per_s"
    if row.get(f"{ref}_min") is not None and row[ref]:
        row["repeat_spread"] = (row[f"{ref}_max"] - row[f"{ref}_min"]) / row[ref]
    row["repeats"] = len(members)
    row["run_id"] = "+".join(str(m.get("run_id") or m.get("job")) for m in members)
    return row


def fold_repeats(rows: list[dict]) -> list[dict]:
    """Complete rows sharing `repeat_of` become one row each; every other row stays as it is,
    in the order of the first of its group."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in d.complete(rows):
        if row.get("repeat_of"):
            groups[str(row["repeat_of"])].append(row)
    out, done = [], set()
    for row in rows:
        key = str(row.get("repeat_of") or "")
        members = groups.get(key) if row.get("status") == STATUS_COMPLETE else None
        if not members or len(members) < 2:
            out.append(row)
        elif key not in done:
            done.add(key)
            out.append(_fold(members))
    return out


def bounds(row: dict, key: str) -> tuple[float, float] | None:
    """Error bar of `key` (tflops_aggregate or tflops_per_device) for one row: the min-max
    over its repeats, else over its measured windows; None when it has neither."""
    if row.get(f"{key}_min") is not None:
        return row[f"{key}_min"], row[f"{key}_max"]
    value, sps = value_of(row, key), d.as_float(row.get("samples_per_s"))
    lo, hi = d.as_float(row.get("samples_per_s_min")), d.as_float(row.get("samples_per_s_max"))
    if value is None or not sps or lo is None or hi is None:
        return None
    return value * lo / sps, value * hi / sps
