"""The HDF5 data contract: one file per simulation plus a manifest (docs/contracts.md).

Writers are atomic (temporary name unique to the writing process, fsync, rename) so a killed
process never leaves a truncated file under a final name; readers raise `DataError` naming
the culprit file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from src.errors import DataError
from src.util.atomic import atomic_path, write_json_atomic

CONTRACT_VERSION = "1"
PARAM_NAMES = ("Omega_M", "sigma_8", "n_s")
MANIFEST_NAME = "manifest.json"
FILE_PATTERN = "sim_{:06d}.h5"
# attributes of a generated (method "gan") file that its manifest entry repeats
GENERATED_BY = ("generator", "checkpoint_sha256")


def sim_filename(sim_id: int) -> str:
    return FILE_PATTERN.format(int(sim_id))


def file_checksum(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_simulation(path: str | Path, x: np.ndarray, y: np.ndarray, attrs: Mapping) -> dict:
    """Write one simulation file atomically; returns its `sha256` and `bytes`."""
    path = Path(path)
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    if x.ndim != 5 or len(set(x.shape[2:])) != 1:
        raise DataError(f"{path}: x must be [n_sub, C, d, d, d], got shape {tuple(x.shape)}")
    if y.ndim != 1:
        raise DataError(f"{path}: y must be [n_params], got shape {tuple(y.shape)}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise DataError(f"{path}: refusing to write NaN/inf values")
    try:
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as fh:
            fh.create_dataset("x", data=x, chunks=(1, *x.shape[1:]))
            fh.create_dataset("y", data=y)
            for key, value in attrs.items():
                fh.attrs[key] = value
            fh.attrs["contract_version"] = CONTRACT_VERSION
    except OSError as err:
        raise DataError(f"{path}: could not write simulation file ({err})") from err
    return {"sha256": file_checksum(path), "bytes": path.stat().st_size}


def read_simulation(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read a whole simulation file (x, y, attrs); for tests and verification."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as fh:
            return fh["x"][...], fh["y"][...], dict(fh.attrs)
    except (OSError, KeyError) as err:
        raise DataError(f"{path}: not a readable simulation file ({err})") from err


def inspect_simulation(path: str | Path) -> dict:
    """Shapes and labels of a file without reading x (cheap, for set-up checks)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as fh:
            return {
                "x_shape": tuple(fh["x"].shape),
                "y": fh["y"][...].astype(np.float32),
                "attrs": dict(fh.attrs),
            }
    except (OSError, KeyError) as err:
        raise DataError(f"{path}: corrupt or truncated HDF5 file ({err})") from err


def verify_simulation(path: str | Path, entry: Mapping | None = None, full: bool = True,
                      sample_shape=None, n_params: int | None = None) -> np.ndarray:
    """Check one simulation file and return its labels y; DataError naming the file and what
    is wrong. Always: the file is there and opens, y is finite. With `entry` (its manifest
    entry) and `full`: the checksum. With `sample_shape`: x is [n_sub, *sample_shape] (n_sub
    from the entry when it says). With `n_params`: y has that many values. With `full`: x is
    finite, scanned one sub-volume at a time so memory stays flat."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: listed in the manifest but missing")
    entry = entry or {}
    if full and entry.get("sha256") and file_checksum(path) != entry["sha256"]:
        raise DataError(f"{path}: checksum differs from the manifest (corrupt or truncated)")
    info = inspect_simulation(path)
    n_sub = int(entry.get("n_sub", info["x_shape"][0]))
    if sample_shape is not None:
        expect = (n_sub, *(int(s) for s in sample_shape))
        if tuple(info["x_shape"]) != expect:
            raise DataError(f"{path}: x has shape {tuple(info['x_shape'])}, the manifest says "
                            f"{expect}")
    if n_params is not None and info["y"].shape != (n_params,):
        raise DataError(
            f"{path}: y has shape {info['y'].shape}, the manifest names {n_params} parameters"
        )
    if not np.isfinite(info["y"]).all():
        raise DataError(f"{path}: y holds NaN/inf")
    if full:
        _check_finite_x(path, n_sub)
    return info["y"]


def _check_finite_x(path: Path, n_sub: int) -> None:
    """Scan x for NaN/inf one sub-volume (one HDF5 chunk) at a time: memory stays flat."""
    with h5py.File(path, "r") as fh:
        for sub in range(n_sub):
            if not np.isfinite(fh["x"][sub]).all():
                raise DataError(f"{path}: NaN/inf in x, sub-volume {sub}")


def write_manifest(data_dir: str | Path, manifest: Mapping) -> Path:
    data_dir = Path(data_dir)
    final = data_dir / MANIFEST_NAME
    payload = dict(manifest)
    payload.setdefault("contract_version", CONTRACT_VERSION)
    payload["files"] = sorted(payload.get("files", []), key=lambda e: int(e["id"]))
    try:
        write_json_atomic(final, payload)
    except OSError as err:
        raise DataError(f"{final}: could not write the manifest ({err})") from err
    return final


def read_manifest(data_dir: str | Path) -> dict:
    """Load and sanity-check the manifest; every problem names the path."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data dir {data_dir} does not exist (generate it with generate.py)")
    path = data_dir / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{path}: no manifest in the data dir (generate it with generate.py)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: manifest is not valid JSON ({err})") from err
    for key in ("param_names", "param_ranges", "sample_shape", "files"):
        if key not in manifest:
            raise DataError(f"{path}: manifest lacks the '{key}' field")
    if not manifest["files"]:
        raise DataError(f"{path}: manifest lists no simulation files")
    for name in manifest["param_names"]:
        lo, hi = manifest["param_ranges"].get(name, (None, None))
        if lo is None or not float(lo) < float(hi):
            raise DataError(f"{path}: parameter range of {name} must be [low, high] with low < high")
    return manifest


def normalise_labels(raw: np.ndarray, param_names, param_ranges: Mapping) -> np.ndarray:
    """Physical parameters [..., P] mapped onto [-1, 1] by the manifest's ranges.

    The one place the training labels and every baseline that reads the files take them
    from, so a baseline recomputed from the HDF5 files scores the labels the net saw.
    """
    lo = np.array([float(param_ranges[n][0]) for n in param_names], dtype=np.float32)
    hi = np.array([float(param_ranges[n][1]) for n in param_names], dtype=np.float32)
    return (2.0 * (np.asarray(raw, dtype=np.float32) - lo) / (hi - lo) - 1.0).astype(np.float32)


def rebuild_manifest(data_dir: str | Path, header: Mapping, ids=None) -> Path:
    """Recreate the manifest from the files (the files are the truth, not the old list).

    `header` holds the dataset-wide fields (param_names, param_ranges, sample_shape, ...);
    `ids` limits the manifest to those simulation ids (default: every `sim_*.h5` present).
    Per-simulation timings come from the files' `timing_*` attributes, so they survive a
    rebuild after a killed campaign.
    """
    data_dir = Path(data_dir)
    names = list(header.get("param_names", PARAM_NAMES))
    if ids is None:
        paths = sorted(data_dir.glob("sim_*.h5"))
    else:
        paths = [data_dir / sim_filename(i) for i in ids]
    entries = []
    for path in paths:
        info = inspect_simulation(path)
        attrs = info["attrs"]
        sim_id = int(attrs["sim_id"])
        entries.append(
            {
                "id": sim_id,
                "file": path.name,
                "params": {n: float(v) for n, v in zip(names, info["y"], strict=True)},
                "seed": int(attrs.get("seed", -1)),
                "n_sub": int(info["x_shape"][0]),
                "sha256": file_checksum(path),
                "bytes": path.stat().st_size,
                "timings": {
                    k.removeprefix("timing_"): float(v)
                    for k, v in attrs.items()
                    if k.startswith("timing_")
                },
                # how the file was made: "simulation" (N-body; files without the attribute)
                # or "gan", which also names its generator and that checkpoint's sha256
                "method": str(attrs.get("method", "simulation")),
                **{key: str(attrs[key]) for key in GENERATED_BY if key in attrs},
            }
        )
    return write_manifest(data_dir, {**header, "files": entries})
