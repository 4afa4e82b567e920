"""Checks of a network's config values, shared by every model family: each bad value gets one
ModelConfigError naming its key (`model.net.<key>`) before any layer is built."""

from __future__ import annotations

import math
import operator

from src.errors import ModelConfigError


def count(key: str, value, minimum: int = 1) -> int:
    """An integer >= `minimum` (bools and fractions refused)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)
    except TypeError:
        raise ModelConfigError(f"model.net.{key}={value!r} must be an integer") from None
    if n < minimum:
        raise ModelConfigError(f"model.net.{key}={value!r} must be >= {minimum}")
    return n


def number(key: str, value, low: float | None = None, high: float | None = None,
           high_open: bool = False) -> float:
    """A finite number in [low, high] (or [low, high) with `high_open`)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        x = float(value)
    except (TypeError, ValueError):
        raise ModelConfigError(f"model.net.{key}={value!r} must be a number") from None
    too_high = high is not None and (x >= high if high_open else x > high)
    if not math.isfinite(x) or (low is not None and x < low) or too_high:
        bounds = f"[{low}, {high}{')' if high_open else ']'}"
        raise ModelConfigError(f"model.net.{key}={value!r} must be a finite number in {bounds}")
    return x


def head(hidden, dropout, negative_slope) -> tuple[tuple[int, ...], float, float]:
    """The dense head's (hidden widths, dropout, LeakyReLU slope), checked."""
    try:
        widths = tuple(hidden)
    except TypeError:
        raise ModelConfigError(f"model.net.hidden={hidden!r} must be a list of widths") from None
    widths = tuple(count("hidden", w) for w in widths)
    return widths, number("dropout", dropout, 0.0, 1.0, high_open=True), \
        number("negative_slope", negative_slope)
