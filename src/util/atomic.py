"""Atomic file writes: a temporary name beside the target, fsync, rename.

A reader (or a rerun after a kill) sees the old file or the new one, never half of one. The
temporary name carries the writer's pid, so two processes writing the same target never
share a temporary; leftovers of a killed writer end in TMP_SUFFIX and can be swept.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

TMP_SUFFIX = ".tmp"


def temporary_name(final: Path) -> Path:
    """`final`'s temporary name, unique to this process."""
    return final.with_name(f"{final.name}.{os.getpid()}{TMP_SUFFIX}")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write `final`'s content to; on success it replaces `final`
    (after an fsync), on any error it is removed and the error propagates."""
    final = Path(final)
    tmp = temporary_name(final)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, payload, indent: int | None = 1) -> Path:
    """`payload` as JSON (numpy/torch scalars as floats)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=indent, default=float)
    return Path(path)


def copy_atomic(source: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy `source` to `dest` (data and times); several processes may copy the same file."""
    with atomic_path(dest) as tmp:
        shutil.copy2(source, tmp)
    return Path(dest)
