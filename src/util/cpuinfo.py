"""What /proc/cpuinfo says about this machine's processor (Linux; a fallback elsewhere)."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def _lines() -> list[str]:
    try:
        return CPUINFO.read_text().splitlines()
    except OSError:
        return []


def _fields(name: str) -> list[str]:
    """The values of every `name : value` line, in order (one per logical processor)."""
    out = []
    for line in _lines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            out.append(value.strip())
    return out


def cpu_model() -> str:
    """The processor's model name ("Intel(R) Xeon(R) ..."), or what platform knows."""
    models = _fields("model name")
    return models[0] if models else (platform.processor() or platform.machine())


def cpu_signature() -> str:
    """Model names and instruction-set flags of every kind of processor here: what code
    compiled with -march=native depends on."""
    lines = _lines()
    if not lines:
        return sys.platform
    wanted = ("model name", "flags")
    return "\n".join(sorted({ln for ln in lines if ln.partition(":")[0].strip() in wanted}))
