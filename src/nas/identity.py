"""A dataset's identity by content: what a genotype records about the data it was searched on,
and the check that a directory holds that data.

The manifest cannot serve: it embeds per-simulation timings, so regenerating the same data
gives another manifest checksum. The identity hashes what the search read instead: every
file's `x` and `y` arrays (bytes, dtype and shape, one sub-volume at a time so memory stays
flat), the simulation ids, and the dataset-wide fields the labels depend on (parameter names
and ranges, sample shape).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from src.errors import SearchError
from src.sim.store import read_manifest

IDENTITY_VERSION = 1


def _array_digest(dataset: h5py.Dataset) -> str:
    digest = hashlib.sha256(f"{dataset.dtype.str}{tuple(dataset.shape)}".encode())
    if dataset.ndim == 0 or dataset.shape[0] == 0:
        digest.update(np.asarray(dataset[()]).tobytes())
        return digest.hexdigest()
    for k in range(dataset.shape[0]):  # one chunk (sub-volume) at a time
        digest.update(np.ascontiguousarray(dataset[k]).tobytes())
    return digest.hexdigest()


def file_digests(path: Path) -> dict:
    """sha256 of the `x` and of the `y` array of one simulation file."""
    try:
        with h5py.File(path, "r") as fh:
            return {"x_sha256": _array_digest(fh["x"]), "y_sha256": _array_digest(fh["y"])}
    except (OSError, KeyError) as err:
        raise SearchError(f"{path}: not a readable simulation file ({err})") from err


def data_identity(data_dir: str | Path) -> dict:
    """The content identity of the dataset in `data_dir` (see the module docstring)."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    entries = sorted(manifest["files"], key=lambda e: int(e["id"]))
    header = {
        "version": IDENTITY_VERSION,
        "param_names": list(manifest["param_names"]),
        "param_ranges": {k: [float(v) for v in manifest["param_ranges"][k]]
                         for k in manifest["param_names"]},
        "sample_shape": [int(s) for s in manifest["sample_shape"]],
        "sim_ids": [int(e["id"]) for e in entries],
    }
    total = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for entry in entries:
        digests = file_digests(data_dir / entry["file"])
        total.update(f"{int(entry['id'])}:{digests['x_sha256']}:{digests['y_sha256']}".encode())
    return {"content_sha256": total.hexdigest(), "n_files": len(entries),
            "sample_shape": header["sample_shape"], "param_names": header["param_names"],
            "sim_ids": _id_ranges(header["sim_ids"])}


def _id_ranges(ids: list[int]) -> str:
    """Sorted ids as compact ranges ("0-7,9"), short enough to record for a big campaign."""
    out, start = [], None
    for k, i in enumerate(ids):
        if start is None:
            start = i
        if k + 1 == len(ids) or ids[k + 1] != i + 1:
            out.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ",".join(out)


def check_identity(recorded: Mapping | None, data_dir: str | Path, what: str) -> dict:
    """The identity of `data_dir` when it equals `recorded`; SearchError naming what differs."""
    if not isinstance(recorded, Mapping) or "content_sha256" not in recorded:
        raise SearchError(f"{what} records no data identity (provenance.dataset.identity): "
                          "it predates content checksums, search again to get one")
    found = data_identity(data_dir)
    if found["content_sha256"] == recorded["content_sha256"]:
        return found
    differ = [f"{k} {recorded.get(k)!r} recorded, {found[k]!r} in {data_dir}"
              for k in ("n_files", "sim_ids", "sample_shape", "param_names")
              if recorded.get(k) != found[k]]
    detail = "; ".join(differ) if differ else (
        "same simulations and shapes, but their x/y arrays or label ranges differ")
    raise SearchError(f"{what} was not searched on the data in {data_dir}: {detail}")
