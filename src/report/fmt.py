"""Numbers and Markdown as summary.md and the figures write them.

One place for the look of a number (significant digits, SI prefixes, ranges with an en dash,
data fractions as ratios, emulated node counts with a dagger), so a table, a sentence and a
figure axis never disagree about the same value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Any

from src.report.derive import as_float, is_emulated, num

DAGGER = "\u2020"
EN_DASH = "\u2013"


def fmt_num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if x == 0:
        return "0"
    text = f"{x:.{digits}g}"
    if "e" in text:  # '1e9', not Python's '1e+09'
        mantissa, exp = text.split("e")
        text = f"{mantissa}e{int(exp)}"
    return text


def fmt_range(lo: float | None, hi: float | None, digits: int = 3) -> str:
    if lo is None or hi is None:
        return "n/a"
    a, b = fmt_num(lo, digits), fmt_num(hi, digits)
    return a if a == b else f"{a}{EN_DASH}{b}"


_PREFIXES = [(1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, "")]


def si_scale(value: float) -> tuple[float, str]:
    """The SI factor and prefix that puts ``value`` in [1, 1000)."""
    for factor, prefix in _PREFIXES:
        if abs(value) >= factor:
            return factor, prefix
    return 1.0, ""


def fmt_si_range(lo: float | None, hi: float | None, unit: str) -> str:
    """A range in one SI unit chosen by its upper end, e.g. '12.5-340 GFLOP/s'."""
    if lo is None or hi is None:
        return "n/a"
    factor, prefix = si_scale(hi)
    return f"{fmt_range(lo / factor, hi / factor)} {prefix}{unit}"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for factor, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= factor:
            return f"{fmt_num(n / factor)} {unit}"
    return f"{int(n)} B"


def fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{fmt_num(x)} %"


def fmt_fraction(value: Any) -> str:
    """0.25 -> '1/4'; keeps the sweep's own notation readable."""
    x = as_float(value)
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
    return text + (DAGGER if is_emulated(row) else "")


def shorten(text: Any, limit: int = 120) -> str:
    """One line of at most `limit` characters (an ellipsis marks the cut)."""
    if not text:
        return ""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], body: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in body]
    return "\n".join(lines)
