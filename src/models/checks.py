"""Checks of a network's config values, shared by every model family: each bad value gets one
ModelConfigError naming its key (`model.net.<key>`) before any layer is built."""

from __future__ import annotations

from src.errors import ModelConfigError
from src.layers.blocks import OUTPUTS
from src.util import checks


def count(key: str, value, minimum: int = 1) -> int:
    """`model.net.<key>`: an integer >= `minimum` (bools and fractions refused)."""
    return checks.integer(f"model.net.{key}", value, minimum, ModelConfigError)


def number(key: str, value, low: float | None = None, high: float | None = None,
           high_open: bool = False) -> float:
    """`model.net.<key>`: a finite number in [low, high] (or [low, high) with `high_open`)."""
    return checks.number(f"model.net.{key}", value, low, high, high_open, ModelConfigError)


def head(hidden, dropout, negative_slope) -> tuple[tuple[int, ...], float, float]:
    """The dense head's (hidden widths, dropout, LeakyReLU slope), checked."""
    try:
        widths = tuple(hidden)
    except TypeError:
        raise ModelConfigError(f"model.net.hidden={hidden!r} must be a list of widths") from None
    widths = tuple(count("hidden", w) for w in widths)
    return widths, number("dropout", dropout, 0.0, 1.0, high_open=True), \
        number("negative_slope", negative_slope)


def output(value) -> str:
    """`model.net.output`: the head's last activation, one of OUTPUTS."""
    if value not in OUTPUTS:
        raise ModelConfigError(f"model.net.output={value!r}; choose one of {OUTPUTS}")
    return value
