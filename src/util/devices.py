"""`auto` device choice, one rule for every room: CUDA when this process sees a GPU, else CPU."""

from __future__ import annotations

import torch

from src.errors import ConfigError


def auto_device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(name, key: str, local_rank: int = 0,
                   error: type[ConfigError] = ConfigError) -> torch.device:
    """`auto` -> CUDA when visible, else CPU; a bare `cuda` picks this local rank's GPU
    (round-robin). An explicit device must exist here; `error` (naming `key`) otherwise."""
    name = str(name)
    if name == "auto":
        name = auto_device_type()
    if name == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise error(f"{key}={name!r} is not a torch device ({err})") from err
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (device.index or 0) >= n:
            raise error(f"{key}={name}: {n} CUDA device(s) visible here "
                        f"(use {key}=auto or {key}=cpu)")
    return device
