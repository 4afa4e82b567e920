"""The model filter: pick the width (and optionally depth) that makes one training sample cost
a target number of FLOPs (Eq. 1: 3 x forward = 3 x 2 x MACs).

Networks are built on the meta device and counted with `src.perf.flops` (the one FLOP
counter of the project), so even a 16-TFLOP network is sized in well under a second per try.
Cost grows monotonically with C: for each depth a quadratic fit of three counts guesses the
width, a bisection around the guess finds the two widths that bracket the target, and the
closer one wins.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from src.errors import FilterError
from src.perf.flops import flops_per_sample

log = logging.getLogger(__name__)


def count_cost(build: Callable[[], nn.Module], input_shape: Sequence[int]) -> dict:
    """Train/forward FLOPs per sample and the parameter count of `build()`, on the meta device."""
    with torch.device("meta"):
        net = build()
    out = dict(flops_per_sample(net, tuple(input_shape)))
    out["n_parameters"] = int(sum(p.numel() for p in net.parameters()))
    return out


def choose_channels(
    build: Callable[[int, int], nn.Module],
    input_shape: Sequence[int],
    target_flops_train: float,
    tolerance: float = 0.05,
    n_cells: int | Sequence[int] = 16,
    c_min: int = 1,
    c_max: int = 1024,
    c_step: int = 1,
    strict: bool = True,
) -> dict:
    """Return the (C, n_cells) whose counted training FLOPs are closest to the target.

    `build(C, n_cells)` makes the network; `n_cells` may be a list of depths to try (the
    "and, if asked, the number of cells" of the issue); `c_step` restricts C to multiples
    (e.g. of the partial-channel factor). With `strict`, raise FilterError when the best
    choice misses the target by more than `tolerance` (relative).
    """
    depths = [int(n_cells)] if isinstance(n_cells, int) else [int(n) for n in n_cells]
    tried: list[dict] = []
    cache: dict[tuple[int, int], dict] = {}

    def cost(C: int, n: int) -> dict:
        if (C, n) not in cache:
            rec = count_cost(lambda: build(C, n), input_shape)
            rec.update(C=C, n_cells=n,
                       rel_error=rec["flops_per_sample_train"] / target_flops_train - 1.0)
            cache[(C, n)] = rec
            tried.append(rec)
        return cache[(C, n)]

    lo = max(c_step, (c_min + c_step - 1) // c_step * c_step)
    hi = c_max // c_step * c_step
    best: dict | None = None
    for n in depths:
        flops = lambda C, n=n: cost(C, n)["flops_per_sample_train"]  # noqa: E731
        for C in _bracket(flops, lo, hi, target_flops_train, c_step):
            rec = cost(C, n)
            if best is None or abs(rec["rel_error"]) < abs(best["rel_error"]):
                best = rec
    assert best is not None
    result = _result(best, input_shape, target_flops_train, tolerance, len(tried))
    log.info("model filter: C=%d n_cells=%d -> %.4g train FLOPs/sample (target %.4g, %+.2f%%)",
             result["C"], result["n_cells"], result["flops_per_sample_train"],
             target_flops_train, 100 * result["rel_error"])
    if strict and not result["within_tolerance"]:
        raise FilterError(
            f"no width in [{c_min}, {c_max}] x depth {depths} hits {target_flops_train:.4g} "
            f"train FLOPs/sample within {tolerance:.0%}: closest is C={result['C']}, "
            f"n_cells={result['n_cells']} at {result['flops_per_sample_train']:.4g} "
            f"({result['rel_error']:+.1%})"
        )
    return result


def _result(best: dict, input_shape, target: float, tolerance: float, n_counted: int) -> dict:
    return {
        "C": best["C"],
        "n_cells": best["n_cells"],
        "input_shape": list(input_shape),
        "target_flops_train": float(target),
        "flops_per_sample_train": int(best["flops_per_sample_train"]),
        "flops_per_sample_forward": int(best["flops_per_sample_forward"]),
        "n_parameters": best["n_parameters"],
        "rel_error": float(best["rel_error"]),
        "tolerance": float(tolerance),
        "within_tolerance": abs(best["rel_error"]) <= tolerance,
        "n_counted": n_counted,
    }


def _bracket(flops, lo: int, hi: int, target: float, c_step: int) -> list[int]:
    """The widths (multiples of c_step in [lo, hi]) whose cost brackets the target: a guess
    from a quadratic fit, a doubling search to cost(a) < target <= cost(b), then a bisection.
    One width when even the narrowest is too costly or the widest too cheap."""
    guess = _quadratic_guess(flops, lo, hi, target, c_step)
    a, b = guess, guess
    width = c_step
    while a > lo and flops(a) >= target:
        a = max(lo, a - width)
        width *= 2
    width = c_step
    while b < hi and flops(b) < target:
        b = min(hi, b + width)
        width *= 2
    if flops(a) >= target:
        return [a]
    if flops(b) < target:
        return [b]
    while b - a > c_step:
        mid = (a + b) // 2 // c_step * c_step
        mid = min(max(mid, a + c_step), b - c_step)
        if flops(mid) < target:
            a = mid
        else:
            b = mid
    return [a, b]


def _quadratic_guess(flops, lo: int, hi: int, target: float, c_step: int) -> int:
    """Convolution cost is a quadratic in the width (pointwise C^2 terms, depthwise and stem C
    terms, a constant head): fit it through three counts and solve for the target."""
    import numpy as np

    pts = sorted({max(lo, min(hi, c)) for c in (8, 16, 32)})
    if len(pts) < 3:
        return max(lo, min(hi, pts[-1]))
    A = np.array([[c * c, c, 1.0] for c in pts])
    qa, qb, qc = np.linalg.solve(A, np.array([flops(c) for c in pts]))
    roots = [r.real for r in np.roots([qa, qb, qc - target]) if abs(r.imag) < 1e-9 and r.real > 0]
    guess = max(roots) if roots else hi
    guess = int(round(guess / c_step)) * c_step
    return max(lo, min(hi, guess))
