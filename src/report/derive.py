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
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Any

from src.report.collect import STATUS_COMPLETE


def num(row: dict, key: str) -> float | None:
    """A finite float from a row, or None (missing, non-numeric, NaN, inf)."""
    value = row.get(key)
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        try:  # a fraction written as the user typed it, '1/4'
            value = float(Fraction(str(value).strip()))
        except (ValueError, ZeroDivisionError):
            return None
    return value if math.isfinite(value) else None


# The triad bandwidth: the throughput callback's name first, the name second.
BANDWIDTH_KEYS = ("mem_bandwidth_bytes_per_s", "bandwidth_bytes_per_s")
# Parameter count, when a job records one ("n_params" is the number of regression targets).
PARAM_COUNT_KEYS = ("num_params", "n_parameters", "param_count")


def first_num(row: dict, keys: Sequence[str]) -> float | None:
    for key in keys:
        value = num(row, key)
        if value is not None:
            return value
    return None


def complete(rows: Iterable[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == STATUS_COMPLETE]


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

    strong_groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in done:
        if world_size(row):
            strong_groups[group_key(row, strong_key)].append(row)
    strong, unmeasured = [], {"strong": 0, "weak": 0}
    for key, members in strong_groups.items():
        if len({world_size(r) for r in members}) < 2:
            continue
        members = [r for r in members if tflops_aggregate(r) is not None]
        if len({world_size(r) for r in members}) < 2:
            unmeasured["strong"] += 1  # several node counts, but no throughput to compare
            continue
        base_ws, base_value, base_rows = _baseline(members, tflops_aggregate)
        for row in members:
            row["speedup"] = tflops_aggregate(row) / base_value
            row["ideal_speedup"] = world_size(row) / base_ws
            row["scaling_efficiency"] = row["speedup"] / row["ideal_speedup"]
            row["scaling_baseline"] = ",".join(_job_label(r) for r in base_rows)
        strong.append({
            "key": dict(zip(strong_key, key, strict=True)),
            "baseline_world_size": base_ws,
            "runs": sorted(members, key=lambda r: (world_size(r), str(r.get("job")))),
        })

    weak_groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in done:
        per_rank = samples_per_rank(row)
        if per_rank is not None:
            weak_groups[group_key(row, weak_key) + (per_rank,)].append(row)
    weak = []
    for key, members in weak_groups.items():
        if len({world_size(r) for r in members}) < 2:
            continue
        members = [r for r in members if tflops_per_device(r) is not None]
        if len({world_size(r) for r in members}) < 2:
            unmeasured["weak"] += 1
            continue
        base_ws, base_value, base_rows = _baseline(members, tflops_per_device)
        for row in members:
            row["weak_scaling_efficiency"] = tflops_per_device(row) / base_value
            row["weak_world_ratio"] = world_size(row) / base_ws
            row["weak_baseline"] = ",".join(_job_label(r) for r in base_rows)
        weak.append({
            "key": dict(zip([*weak_key, "samples_per_rank"], key, strict=True)),
            "baseline_world_size": base_ws,
            "runs": sorted(members, key=lambda r: (world_size(r), str(r.get("job")))),
        })
    return {"strong": strong, "weak": weak, "unmeasured": unmeasured}


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


def fmt_fraction(value: Any) -> str:
    """0.25 -> '1/4'; keeps the sweep's own notation readable."""
    x = num({"v": value}, "v")
    if x is None:
        return "?" if value is None else str(value)
    frac = Fraction(x).limit_denominator(4096)
    if abs(float(frac) - x) > 1e-9 * max(1.0, abs(x)):
        return f"{x:.4g}"
    return str(frac.numerator) if frac.denominator == 1 else f"{frac.numerator}/{frac.denominator}"


def fmt_nodes(row: dict) -> str:
    """Node count, with a dagger when the nodes were emulated on one machine."""
    nodes = num(row, "num_nodes")
    text = "?" if nodes is None else str(int(nodes))
    return text + ("\u2020" if is_emulated(row) else "")
