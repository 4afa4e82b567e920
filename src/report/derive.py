"""Quantities derived from the job rows: % of peak, time per epoch, speed-ups, efficiencies.

Definitions (also in docs/report.md):
- throughput of a run = ``tflops_aggregate`` (all ranks); for one model this is the aggregate
  samples/s times a constant, so ratios of it are ratios of samples/s;
- strong scaling: runs with the same global problem (``strong_key``: model, data fraction,
  precision, per-device batch, sample shape, accelerator) and different world sizes;
  ``speedup = tflops_aggregate(run) / tflops_aggregate(baseline)``, baseline = the runs with
  the smallest world size in the group (1 node when the sweep has it, mean if repeated);
  ``ideal_speedup = world_size / baseline world_size``;
  ``scaling_efficiency = speedup / ideal_speedup``;
- weak scaling: runs with the same per-rank problem (``weak_key`` plus the same training
  samples per rank, so the data grows with the ranks) and different world sizes;
  ``weak_scaling_efficiency = tflops_per_device(run) / tflops_per_device(baseline)``;
- ``time_per_epoch_s = n_train_samples / samples_per_s_aggregate`` with
  ``samples_per_s_aggregate = tflops_aggregate * 1e12 / flops_per_sample_train``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from src.contract import STATUS_COMPLETE, check_row_key
from src.util.fractions import parse_fraction


def as_float(value: Any) -> float | None:
    """A finite float, or None (missing, non-numeric, NaN, inf); '1/4' as the user typed it."""
    if value is None or isinstance(value, bool):
        return None
    try:
        value = parse_fraction(value)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def num(row: dict, key: str) -> float | None:
    """The row's `key` as a finite float, or None; a name no job writes is a bug (ContractError)."""
    return as_float(row.get(check_row_key(key)))


def complete(rows: Iterable[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == STATUS_COMPLETE]


def span(values: Iterable[float | None]) -> tuple[float, float] | None:
    """Min and max of the values that are there; None when none is."""
    vals = [v for v in values if v is not None]
    return (min(vals), max(vals)) if vals else None


def unique(rows: Iterable[dict], key: str) -> list:
    """The distinct set values of `key`, in the order the rows have them."""
    seen: list = []
    for r in rows:
        v = r.get(key)
        if v is not None and v != "" and v not in seen:
            seen.append(v)
    return seen


def models(rows: Iterable[dict]) -> list[str]:
    return [str(m) for m in unique(rows, "model")]


def world_size(row: dict) -> int | None:
    ws = num(row, "world_size")
    if ws is None:
        nodes, devices = num(row, "num_nodes"), num(row, "devices")
        ws = nodes * (devices or 1) if nodes is not None else None
    return int(ws) if ws is not None else None


def is_emulated(row: dict) -> bool:
    value = row.get("emulated")
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def tflops_aggregate(row: dict) -> float | None:
    value = num(row, "tflops_aggregate")
    if value is None:
        per_device, ws = num(row, "tflops_per_device"), world_size(row)
        value = per_device * ws if per_device is not None and ws else None
    return value


def tflops_per_device(row: dict) -> float | None:
    value = num(row, "tflops_per_device")
    if value is None:
        total, ws = num(row, "tflops_aggregate"), world_size(row)
        value = total / ws if total is not None and ws else None
    return value


def pct_of_peak(row: dict) -> float | None:
    mfu = num(row, "mfu")
    if mfu is not None:
        return 100.0 * mfu
    per_device, peak = tflops_per_device(row), num(row, "peak_flops_per_device")
    if per_device is None or not peak:
        return None
    return 100.0 * per_device * 1e12 / peak


def samples_per_s_aggregate(row: dict) -> float | None:
    total, flops = tflops_aggregate(row), num(row, "flops_per_sample_train")
    if total is not None and flops:
        return total * 1e12 / flops
    # Without the FLOP count, fall back on the callback's samples/s (taken as all ranks).
    return num(row, "samples_per_s")


def time_per_epoch_s(row: dict) -> float | None:
    samples, rate = num(row, "n_train_samples"), samples_per_s_aggregate(row)
    if samples is None or not rate:
        return None
    return samples / rate


def group_key(row: dict, fields: Sequence[str]) -> tuple:
    return tuple(_hashable(row.get(f)) for f in fields)


def _hashable(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 12)  # 0.1+0.2 and 0.3 are the same fraction
    if isinstance(value, (list, dict)):
        return repr(value)
    return value


def samples_per_rank(row: dict) -> float | None:
    ws = world_size(row)
    samples = num(row, "n_train_samples")
    if samples is None:
        samples = num(row, "fraction")  # same data dir: the fraction is proportional
    if samples is None or not ws:
        return None
    return round(samples / ws, 9)


def _baseline(members: list[dict], value) -> tuple[int, float, list[dict]] | None:
    """Smallest world size in a group, the mean of its value, and its runs."""
    sized = [(world_size(r), value(r), r) for r in members]
    sized = [s for s in sized if s[0] and s[1] is not None]
    if not sized:
        return None
    base_ws = min(s[0] for s in sized)
    base = [s for s in sized if s[0] == base_ws]
    return base_ws, sum(s[1] for s in base) / len(base), [s[2] for s in base]


def _job_label(row: dict) -> str:
    return str(row.get("run_id") or row.get("job"))


def _strong_columns(row: dict, base_ws: int, base_value: float, base_label: str) -> None:
    row["speedup"] = tflops_aggregate(row) / base_value
    row["ideal_speedup"] = world_size(row) / base_ws
    row["scaling_efficiency"] = row["speedup"] / row["ideal_speedup"]
    row["scaling_baseline"] = base_label


def _weak_columns(row: dict, base_ws: int, base_value: float, base_label: str) -> None:
    row["weak_scaling_efficiency"] = tflops_per_device(row) / base_value
    row["weak_world_ratio"] = world_size(row) / base_ws
    row["weak_baseline"] = base_label


def _scaling(done: list[dict], fields: Sequence[str], key_of: Callable[[dict], tuple | None],
             value: Callable[[dict], float | None], columns: Callable) -> tuple[list[dict], int]:
    """The groups (by `key_of`) measured by `value` at two world sizes or more, each row given
    its `columns` against the group's baseline; and how many groups ran at several world sizes
    without the measurement."""
    by_key: dict[tuple, list[dict]] = defaultdict(list)
    for row in done:
        key = key_of(row)
        if key is not None:
            by_key[key].append(row)
    groups, unmeasured = [], 0
    for key, members in by_key.items():
        if len({world_size(r) for r in members}) < 2:
            continue
        members = [r for r in members if value(r) is not None]
        if len({world_size(r) for r in members}) < 2:
            unmeasured += 1  # several node counts, but nothing to compare
            continue
        base_ws, base_value, base_rows = _baseline(members, value)
        base_label = ",".join(_job_label(r) for r in base_rows)
        for row in members:
            columns(row, base_ws, base_value, base_label)
        groups.append({
            "key": dict(zip(fields, key, strict=True)),
            "baseline_world_size": base_ws,
            "runs": sorted(members, key=lambda r: (world_size(r), str(r.get("job")))),
        })
    return groups, unmeasured


def derive(rows: list[dict], strong_key: Sequence[str], weak_key: Sequence[str]) -> dict:
    """Add the derived columns to every complete row (in place); return the groups.

    Returns ``{"strong": [group, ...], "weak": [group, ...], "unmeasured": {"strong": n,
    "weak": n}}``; a group is ``{"key": dict, "baseline_world_size": int, "runs": [rows sorted
    by world size]}``, only groups with throughput at two world sizes or more are kept, and
    ``unmeasured`` counts the groups that ran at several world sizes without throughput metrics.
    """
    done = complete(rows)
    for row in done:
        row["pct_of_peak"] = pct_of_peak(row)
        row["samples_per_s_aggregate"] = samples_per_s_aggregate(row)
        row["time_per_epoch_s"] = time_per_epoch_s(row)

    def strong_of(row: dict) -> tuple | None:
        return group_key(row, strong_key) if world_size(row) else None

    def weak_of(row: dict) -> tuple | None:
        per_rank = samples_per_rank(row)
        return None if per_rank is None else group_key(row, weak_key) + (per_rank,)

    strong, strong_unmeasured = _scaling(done, strong_key, strong_of, tflops_aggregate,
                                         _strong_columns)
    weak, weak_unmeasured = _scaling(done, [*weak_key, "samples_per_rank"], weak_of,
                                     tflops_per_device, _weak_columns)
    return {"strong": strong, "weak": weak,
            "unmeasured": {"strong": strong_unmeasured, "weak": weak_unmeasured}}


def precision_pairs(rows: list[dict], match_key: Sequence[str]) -> dict[tuple[str, str], list]:
    """Time-per-epoch ratios of matched runs that differ only in precision.

    Returns ``{(a, b): [(ratio, row_a, row_b), ...]}`` with a < b by name and
    ratio = time_per_epoch(a) / time_per_epoch(b) (> 1: b is faster), one entry per matched
    configuration (repeats of a configuration averaged first).
    """
    by_key: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in complete(rows):
        if row.get("precision") is not None and time_per_epoch_s(row):
            by_key[group_key(row, match_key)][str(row["precision"])].append(row)
    pairs: dict[tuple[str, str], list] = defaultdict(list)
    for per_precision in by_key.values():
        names = sorted(per_precision)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                ta = _mean(time_per_epoch_s(r) for r in per_precision[a])
                tb = _mean(time_per_epoch_s(r) for r in per_precision[b])
                pairs[(a, b)].append((ta / tb, per_precision[a][0], per_precision[b][0]))
    return dict(pairs)


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def geometric_mean(values: Iterable[float]) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))
