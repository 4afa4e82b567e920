"""Fractions as users write them: `1/32`, `0.25`, `1`."""

from __future__ import annotations

from fractions import Fraction


def parse_fraction(value) -> float:
    """`1/32`, `0.25`, 1 -> float; ValueError (naming the value) for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number or a ratio like 1/32")
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(Fraction(str(value).strip()))
    except (ValueError, ZeroDivisionError) as err:
        raise ValueError(f"{value!r} is not a number or a ratio like 1/32") from err
