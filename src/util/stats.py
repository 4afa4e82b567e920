"""Median and spread of repeated measurements (windows of a run, repeats of a job)."""

from __future__ import annotations

import math
from collections.abc import Iterable


def median(values: Iterable[float]) -> float | None:
    vals = sorted(values)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def spread(values: Iterable[float]) -> dict | None:
    """Median, min, max, coefficient of variation (sample standard deviation / mean; 0 for
    one value) and count of `values`; None when there are none."""
    vals = [float(v) for v in values]
    if not vals:
        return None
    mean = sum(vals) / len(vals)
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
    return {"median": median(vals), "min": min(vals), "max": max(vals),
            "cv": math.sqrt(var) / mean if mean else 0.0, "n": len(vals)}
