"""Every bad input of the foundation issue: one clear error naming the culprit, before training."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from src.datamodules.cosmo import CosmoDataModule
from src.errors import DataError
from src.sim.store import write_manifest
from src.sim.synthetic import write_synthetic_dataset
from train import run


@pytest.fixture
def data_copy(tiny_data, tmp_path):
    target = tmp_path / "data"
    shutil.copytree(tiny_data, target)
    return target


def setup_dm(path, world=1, **kwargs):
    dm = CosmoDataModule(str(path), **kwargs)
    dm.trainer = SimpleNamespace(global_rank=0, world_size=world)
    dm.setup("fit")
    return dm


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nope'} does not exist"):
        CosmoDataModule(str(tmp_path / "nope"))


def test_empty_manifest(data_copy):
    manifest = json.loads((data_copy / "manifest.json").read_text())
    write_manifest(data_copy, {**manifest, "files": []})
    with pytest.raises(DataError, match="manifest.json: manifest lists no simulation files"):
        CosmoDataModule(str(data_copy))


def test_manifest_without_data_dir_manifest(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="no manifest"):
        CosmoDataModule(str(tmp_path / "d"))


def test_truncated_file_fails_checksum(data_copy):
    victim = data_copy / "sim_000003.h5"
    victim.write_bytes(victim.read_bytes()[:2000])
    with pytest.raises(DataError, match="sim_000003.h5: checksum differs"):
        setup_dm(data_copy)


def test_truncated_file_fails_even_without_checksums(data_copy):
    victim = data_copy / "sim_000003.h5"
    victim.write_bytes(victim.read_bytes()[:2000])
    with pytest.raises(DataError, match="sim_000003.h5: corrupt or truncated"):
        setup_dm(data_copy, verify="shapes")


def _rewrite(path, x=None, y=None):
    with h5py.File(path, "r+") as fh:
        if x is not None:
            del fh["x"]
            fh["x"] = x
        if y is not None:
            del fh["y"]
            fh["y"] = y


def test_x_shape_disagrees_with_manifest(data_copy):
    _rewrite(data_copy / "sim_000001.h5", x=np.ones((8, 1, 8, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"sim_000001.h5: x has shape \(8, 1, 8, 8, 8\)"):
        setup_dm(data_copy, verify="shapes")


def test_y_shape_disagrees_with_manifest(data_copy):
    _rewrite(data_copy / "sim_000002.h5", y=np.ones(2, np.float32))
    with pytest.raises(DataError, match="sim_000002.h5: y has shape"):
        setup_dm(data_copy, verify="shapes")


def test_nan_in_data(data_copy):
    x = np.ones((8, 1, 16, 16, 16), np.float32)
    x[5, 0, 1, 2, 3] = np.nan
    _rewrite(data_copy / "sim_000004.h5", x=x)
    # drop the checksums so the NaN scan, not the checksum, is what catches it
    manifest = json.loads((data_copy / "manifest.json").read_text())
    for entry in manifest["files"]:
        entry.pop("sha256")
    write_manifest(data_copy, manifest)
    with pytest.raises(DataError, match="sim_000004.h5: NaN/inf in x, sub-volume 5"):
        setup_dm(data_copy, verify="full")


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5, "abc", "1/0"])
def test_fraction_outside_unit_interval(tiny_data, fraction):
    with pytest.raises(DataError, match=f"data.fraction={fraction!r}"):
        CosmoDataModule(str(tiny_data), fraction=fraction)


def test_fraction_that_starves_a_rank(tmp_path):
    write_synthetic_dataset(tmp_path, n_sims=4, size=8, n_sub=1, seed=0)
    with pytest.raises(DataError, match="fewer than the 4 rank"):
        setup_dm(tmp_path, world=4, fraction="1/2")


def test_d_too_small_for_model_fails_before_training(train_cfg, tmp_path):
    write_synthetic_dataset(tmp_path / "d4", n_sims=4, size=4, seed=0)
    with pytest.raises(ValueError, match="input size 4"):
        run(train_cfg(f"data.dir={tmp_path / 'd4'}"))
    assert not (tmp_path / "job" / "checkpoints").exists()


def test_unknown_transform(tiny_data):
    with pytest.raises(DataError, match="data.transform='sqrt'"):
        CosmoDataModule(str(tiny_data), transform="sqrt")
