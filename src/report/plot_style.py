"""What every figure of the report shares: line labels, markers, legend handles, plain log
ticks, and the marks drawn over a line: min-max error bars (over a run's repeats, else its
measured windows: src.report.repeats.bounds) and red rings on flagged runs (src.report.flags).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from src.report.flags import flagged
from src.report.fmt import DAGGER, fmt_fraction

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]

RING = {"marker": "o", "markersize": 13, "markerfacecolor": "none", "markeredgecolor": "red"}


def scaled(span, factor: float):
    return None if span is None else (span[0] * factor, span[1] * factor)


def errorbars(ax, runs, x_of, y_of, err_of, color) -> None:
    """Min-max bars (over repeats, else over the run's windows: src.report.repeats.bounds)."""
    pts = [(x_of(r), y_of(r), err_of(r)) for r in runs]
    pts = [(x, y, e) for x, y, e in pts if e is not None]
    if pts:
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], fmt="none", ecolor=color,
                    capsize=3, linewidth=1,
                    yerr=[[max(y - e[0], 0) for _, y, e in pts],
                          [max(e[1] - y, 0) for _, y, e in pts]])
    bad = [r for r in runs if flagged(r)]
    if bad:
        ax.plot([x_of(r) for r in bad], [y_of(r) for r in bad], linestyle="none", **RING)


def flagged_handle() -> Line2D:
    return Line2D([], [], linestyle="none", label="flagged: see the summary's Findings", **RING)


def label(key: dict, vary: Sequence[str]) -> str:
    parts = []
    for field in vary:
        value = key.get(field)
        if field == "fraction":
            parts.append(f"frac {fmt_fraction(value)}")
        elif field == "num_nodes":
            parts.append(f"{value} node{'' if str(value) == '1' else 's'}")
        else:
            parts.append(str(value))
    return " \u00b7 ".join(parts) or "all runs"


def varying(rows: list[dict], fields: Sequence[str]) -> list[str]:
    """The fields of a line key that differ between runs; the model always names a line."""
    return [f for f in fields if f == "model" or len({str(r.get(f)) for r in rows}) > 1]


def emulated_handle() -> Line2D:
    return Line2D([], [], color="0.3", marker="o", markerfacecolor="none", linestyle="--",
                  label=f"{DAGGER} emulated nodes (one machine)")


def plain_log_ticks(axis) -> None:
    # '0.2' reads better than '2x10^-1' on a log axis.
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))

    def minor(v, _):  # only 2x and 5x a power of ten, or the labels collide
        return f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v)), 6) in (2, 5) else ""

    axis.set_minor_formatter(FuncFormatter(minor))
