"""Checks of single config values, one rule for every room: the error names the full key."""

from __future__ import annotations

import math
import operator

from src.errors import ConfigError


def integer(key: str, value, minimum: int = 1, error: type[ConfigError] = ConfigError) -> int:
    """An integer >= `minimum` (bools and fractions refused); `error` naming `key` otherwise."""
    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)
    except TypeError:
        raise error(f"{key}={value!r} must be an integer") from None
    if n < minimum:
        raise error(f"{key}={value!r} must be >= {minimum}")
    return n


def number(key: str, value, low: float | None = None, high: float | None = None,
           high_open: bool = False, error: type[ConfigError] = ConfigError) -> float:
    """A finite number in [low, high] (or [low, high) with `high_open`)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        x = float(value)
    except (TypeError, ValueError):
        raise error(f"{key}={value!r} must be a number") from None
    too_high = high is not None and (x >= high if high_open else x > high)
    if not math.isfinite(x) or (low is not None and x < low) or too_high:
        bounds = f"[{low}, {high}{')' if high_open else ']'}"
        raise error(f"{key}={value!r} must be a finite number in {bounds}")
    return x


def boolean(key: str, value, error: type[ConfigError] = ConfigError) -> bool:
    """true or false, not a string or number that merely looks like one."""
    if not isinstance(value, bool):
        raise error(f"{key}={value!r} must be true or false")
    return value
