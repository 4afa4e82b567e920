"""The HDF5 contract writer/reader: atomic files, manifest rebuilt from the files."""

from __future__ import annotations

import numpy as np
import pytest

from src.errors import DataError
from src.sim.store import (
    normalise_labels,
    read_manifest,
    read_simulation,
    rebuild_manifest,
    sim_filename,
    verify_simulation,
    write_simulation,
)

HEADER = {"param_names": ["Omega_M", "sigma_8", "n_s"],
          "param_ranges": {"Omega_M": [0.25, 0.35], "sigma_8": [0.78, 0.95], "n_s": [0.9, 1.0]},
          "sample_shape": [2, 4, 4, 4], "n_sub": 8}


def _write(tmp_path, sim_id, value=1.0):
    x = np.full((8, 2, 4, 4, 4), value, np.float32)
    y = np.array([0.3, 0.8, 0.95], np.float32)
    attrs = {"sim_id": sim_id, "seed": 10 + sim_id, "timing_total_s": 1.5}
    return write_simulation(tmp_path / sim_filename(sim_id), x, y, attrs)


def test_round_trip_and_no_temporary_left(tmp_path):
    info = _write(tmp_path, 3, value=2.0)
    x, y, attrs = read_simulation(tmp_path / "sim_000003.h5")
    assert x.shape == (8, 2, 4, 4, 4) and float(x.max()) == 2.0
    np.testing.assert_allclose(y, [0.3, 0.8, 0.95])
    assert attrs["sim_id"] == 3 and attrs["contract_version"] == "1"
    assert len(info["sha256"]) == 64 and info["bytes"] > 0
    assert not list(tmp_path.glob("*.tmp"))


def test_manifest_is_rebuilt_from_files(tmp_path):
    for i in (2, 0, 1):
        _write(tmp_path, i)
    (tmp_path / "sim_000009.h5.tmp").write_bytes(b"half-written")  # a killed writer's leftover
    rebuild_manifest(tmp_path, HEADER)
    manifest = read_manifest(tmp_path)
    assert [e["id"] for e in manifest["files"]] == [0, 1, 2]
    assert manifest["files"][1]["timings"] == {"total_s": 1.5}
    assert manifest["files"][2]["seed"] == 12
    verify_simulation(tmp_path / "sim_000001.h5", manifest["files"][1])


def test_writer_refuses_nan_and_bad_shapes(tmp_path):
    with pytest.raises(DataError, match="NaN/inf"):
        write_simulation(tmp_path / "a.h5", np.full((1, 1, 2, 2, 2), np.nan), np.zeros(3), {})
    with pytest.raises(DataError, match="x must be"):
        write_simulation(tmp_path / "a.h5", np.zeros((1, 2, 2, 2)), np.zeros(3), {})
    assert not list(tmp_path.iterdir())


def test_verify_names_a_replaced_file(tmp_path):
    entry = _write(tmp_path, 0)
    _write(tmp_path, 0, value=5.0)
    with pytest.raises(DataError, match="sim_000000.h5: checksum differs"):
        verify_simulation(tmp_path / "sim_000000.h5", entry)


def test_unwritable_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="could not write"):
        _write(tmp_path / "missing_dir", 0)


def test_labels_map_the_manifest_ranges_onto_minus_one_to_one():
    names, ranges = HEADER["param_names"], HEADER["param_ranges"]
    raw = np.array([[0.25, 0.78, 0.9], [0.35, 0.95, 1.0], [0.30, 0.865, 0.95]])
    out = normalise_labels(raw, names, ranges)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[-1, -1, -1], [1, 1, 1], [0, 0, 0]], atol=1e-6)
    # the order of param_names, not of the dict, picks each column's range
    swapped = normalise_labels(raw[:, ::-1], names[::-1], ranges)
    np.testing.assert_allclose(swapped, out[:, ::-1], atol=1e-6)
