"""Where per-machine results are kept between runs (measured peaks, compiled kernels)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CACHE_DIR = "~/.cache/saih-cosmo"


def cache_root(configured: str | os.PathLike | None = None) -> Path:
    """The configured cache directory (`perf.cache_dir`), or the default, with ~ expanded."""
    return Path(os.path.expanduser(str(configured or DEFAULT_CACHE_DIR)))
