"""generate.py: campaign through run(cfg) and the CLI, reruns, faults, training on the output.

The process pool, kills and MPI are in test_campaign_workers.py."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from omegaconf import OmegaConf

import generate
from src.errors import DataError, SimConfigError, SimStorageError
from src.sim import datadir as datadir_mod
from src.sim import workers as workers_mod
from src.sim.identity import sample_parameters, validate_ranges
from src.sim.store import (
    read_manifest,
    read_simulation,
    verify_simulation,
    write_manifest,
    write_simulation,
)
from src.util import atomic as atomic_mod

from .conftest import ROOT, SMALL_OVERRIDES, compose_cfg

# 16^3 particles on a 16^3 mesh, 2 steps: as small as a real simulation gets, for quick tests
SHRINK = ["sim=tiny", "sim.n_particles=16", "sim.mesh_factor=1", "sim.box_size=64",
          "sim.grid=16", "sim.n_steps=2", "sim.device=cpu", "campaign.workers=1",
          "campaign.threads_per_worker=1", "campaign.progress=false"]


def gen_cfg(data_dir: Path, *overrides: str):
    return compose_cfg("generate", [*SHRINK, f"paths.data_dir={data_dir}", *overrides])


def cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "generate.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **kw)


DATASET = ["campaign.n_sims=3", "sim.redshifts=[0.0,1.0]"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("gen") / "data"
    result = generate.run(gen_cfg(data_dir, *DATASET))
    return data_dir, result


def test_run_writes_a_verified_contract_dataset(dataset):
    data_dir, result = dataset
    assert result["n_files"] == 3 and result["n_simulated"] == 3
    manifest = read_manifest(data_dir)
    assert manifest["sample_shape"] == [2, 8, 8, 8] and manifest["n_sub"] == 8
    assert manifest["redshifts"] == [0.0, 1.0]
    assert [e["id"] for e in manifest["files"]] == [0, 1, 2]
    for entry in manifest["files"]:
        verify_simulation(data_dir / entry["file"], entry)
        x, y, attrs = read_simulation(data_dir / entry["file"])
        assert x.shape == (8, 2, 8, 8, 8) and x.dtype == np.float32
        np.testing.assert_array_equal(x.sum(axis=(0, 2, 3, 4)), [16**3, 16**3])
        params, seed = sample_parameters(0, entry["id"], manifest["param_ranges"])
        np.testing.assert_array_equal(y, np.float32(list(params.values())))
        assert int(attrs["seed"]) == seed == entry["seed"]
        assert attrs["campaign_sha256"] == manifest["campaign_sha256"]
        for name, (lo, hi) in manifest["param_ranges"].items():
            assert lo <= entry["params"][name] <= hi
        assert entry["timings"]["simulate_s"] > 0 and "evolve_s" in entry["timings"]


def test_parameters_and_seeds_are_a_pure_function_of_campaign_seed_and_id():
    ranges = validate_ranges({"Omega_M": [0.25, 0.35], "sigma_8": [0.78, 0.95], "n_s": [0.9, 1.0]})
    assert sample_parameters(5, 7, ranges) == sample_parameters(5, 7, ranges)
    assert sample_parameters(5, 7, ranges) != sample_parameters(5, 8, ranges)
    assert sample_parameters(5, 7, ranges) != sample_parameters(6, 7, ranges)


def test_same_id_reproduces_bit_for_bit_and_ids_differ(dataset, tmp_path):
    data_dir, _ = dataset
    other = tmp_path / "again"
    generate.run(gen_cfg(other, "campaign.n_sims=2", "sim.redshifts=[0.0,1.0]"))
    x0, y0, _ = read_simulation(data_dir / "sim_000000.h5")
    x0b, y0b, _ = read_simulation(other / "sim_000000.h5")
    np.testing.assert_array_equal(x0, x0b)
    np.testing.assert_array_equal(y0, y0b)
    x1, y1, _ = read_simulation(other / "sim_000001.h5")
    assert not np.array_equal(x0, x1) and not np.array_equal(y0, y1)


def test_rerun_skips_good_files_and_repairs_bad_ones(tmp_path):
    data_dir = tmp_path / "d"
    cfg = gen_cfg(data_dir, "campaign.n_sims=3")
    generate.run(cfg)
    x_before, _, _ = read_simulation(data_dir / "sim_000001.h5")
    again = generate.run(cfg)
    assert again["n_skipped"] == 3 and again["n_simulated"] == 0
    # a corrupt final file and a temporary left by a killed writer
    (data_dir / "sim_000001.h5").write_bytes(b"not hdf5 at all")
    (data_dir / "sim_000002.h5.tmp").write_bytes(b"\x89HDF\r\n")
    repaired = generate.run(cfg)
    assert repaired["n_simulated"] == 1 and repaired["n_skipped"] == 2
    assert repaired["n_files"] == 3 and not list(data_dir.glob("*.tmp"))
    for entry in read_manifest(data_dir)["files"]:
        verify_simulation(data_dir / entry["file"], entry)
    x_after, _, _ = read_simulation(data_dir / "sim_000001.h5")
    np.testing.assert_array_equal(x_before, x_after)


def test_files_of_another_campaign_are_refused(tmp_path):
    data_dir = tmp_path / "d"
    generate.run(gen_cfg(data_dir, "campaign.n_sims=1"))
    with pytest.raises(SimConfigError, match="sim_000000.h5"):
        generate.run(gen_cfg(data_dir, "campaign.n_sims=1", "campaign.seed=1"))
    with h5py.File(data_dir / "sim_000000.h5", "a") as fh:  # a file of an older generate.py
        del fh.attrs["campaign_sha256"]
    with pytest.raises(SimConfigError, match="campaign_sha256 is missing"):
        generate.run(gen_cfg(data_dir, "campaign.n_sims=1"))
    assert (data_dir / "sim_000000.h5").exists()  # refused, never deleted


@pytest.mark.parametrize("override", [
    "campaign.param_ranges.n_s=[0.9,0.99]", "sim.n_steps=3", "sim.z_init=8.0",
    "sim.mesh_factor=2", "sim.lpt_order=1", "sim.redshifts=[0.0,2.0]", "sim.cosmology.h=0.7",
    "sim.dtype=float64", "sim.force.gradient=exact",
])
def test_rerun_with_another_campaign_config_is_refused(dataset, override):
    data_dir, _ = dataset
    before = {p.name: p.read_bytes() for p in data_dir.iterdir() if p.is_file()}
    key = override.split("=")[0]
    base = [o for o in DATASET if not o.startswith(key + "=")]
    with pytest.raises(SimConfigError, match="sim_000000.h5 belongs to another campaign"):
        generate.run(gen_cfg(data_dir, *base, override))
    assert {p.name: p.read_bytes() for p in data_dir.iterdir() if p.is_file()} == before


def test_rerun_ignores_settings_that_do_not_change_the_files(dataset):
    data_dir, _ = dataset
    result = generate.run(gen_cfg(data_dir, *DATASET, "sim.device=auto", "sim.box_size=64.0",
                                  "sim.name=renamed", "campaign.workers=2",
                                  "campaign.threads_per_worker=2", "campaign.progress=true"))
    assert result["n_skipped"] == 3 and result["n_simulated"] == 0


def test_manifest_lists_only_ids_below_n_sims(tmp_path, caplog):
    data_dir = tmp_path / "d"
    generate.run(gen_cfg(data_dir, "campaign.n_sims=3"))
    shrunk = generate.run(gen_cfg(data_dir, "campaign.n_sims=2"))
    assert shrunk["n_files"] == 2 and shrunk["n_extra"] == 1 and shrunk["n_skipped"] == 2
    assert [e["id"] for e in read_manifest(data_dir)["files"]] == [0, 1]
    assert (data_dir / "sim_000002.h5").exists()  # kept for a later, larger run
    assert "1 files beyond campaign.n_sims=2" in caplog.text
    grown = generate.run(gen_cfg(data_dir, "campaign.n_sims=3"))
    assert grown["n_skipped"] == 3 and grown["n_extra"] == 0
    assert [e["id"] for e in read_manifest(data_dir)["files"]] == [0, 1, 2]


def test_a_second_campaign_on_the_same_dir_is_refused(tmp_path):
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    with open(data_dir / ".campaign.lock", "a") as held:  # a campaign in progress
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        (data_dir / "sim_000000.h5.4242.tmp").write_bytes(b"being written")
        with pytest.raises(SimStorageError, match="another campaign is running"):
            generate.run(gen_cfg(data_dir, "campaign.n_sims=1"))
        assert sorted(p.name for p in data_dir.iterdir()) == [
            ".campaign.lock", "sim_000000.h5.4242.tmp"]  # its temporary untouched
    assert generate.run(gen_cfg(data_dir, "campaign.n_sims=1"))["n_files"] == 1


def test_temporary_names_are_unique_per_process(tmp_path, monkeypatch):
    renamed, replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renamed.append(Path(a).name), replace(a, b)))
    write_simulation(tmp_path / "sim_000000.h5", np.zeros((1, 1, 2, 2, 2)), np.zeros(3), {})
    write_manifest(tmp_path, {"files": []})
    assert renamed == [f"sim_000000.h5.{os.getpid()}.tmp", f"manifest.json.{os.getpid()}.tmp"]


@pytest.mark.parametrize(
    "override,error,culprit",
    [
        ("campaign.param_ranges.sigma_8=[0.9,0.8]", SimConfigError, "sigma_8"),
        ("campaign.param_ranges.Omega_M=[0.3,0.3]", SimConfigError, "Omega_M"),
        ("campaign.param_ranges.Omega_M=[0.049,0.3]", SimConfigError,
         r"param_ranges.Omega_M.*sim.cosmology.omega_b"),
        ("sim.n_sub=4", SimConfigError, "n_sub"),
        ("sim.grid=15", SimConfigError, "grid"),
        ("campaign.n_sims=0", SimConfigError, "n_sims"),
        ("campaign.start_method=fork", SimConfigError, "start_method"),
    ],
)
def test_bad_campaign_input_gives_one_clear_error(tmp_path, override, error, culprit):
    with pytest.raises(error, match=culprit):
        generate.run(gen_cfg(tmp_path / "d", override))
    assert not (tmp_path / "d" / "manifest.json").exists()


def test_unwritable_output_dir_is_refused(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(SimStorageError, match="not a writable directory"):
        generate.run(gen_cfg(blocker / "data"))


def test_not_enough_disk_space_is_refused_before_simulating(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(datadir_mod.shutil, "disk_usage",
                        lambda p: usage._replace(free=1000))
    with pytest.raises(SimStorageError, match="MiB free"):
        generate.run(gen_cfg(tmp_path / "d", "campaign.n_sims=2"))


def test_disk_full_while_writing_is_one_clear_error(tmp_path, monkeypatch):
    def full(path, *a, **k):
        raise DataError(f"{path}: could not write") from OSError(errno.ENOSPC, "No space left")

    monkeypatch.setattr(workers_mod, "write_simulation", full)
    with pytest.raises(SimStorageError, match="disk full"):
        generate.run(gen_cfg(tmp_path / "d", "campaign.n_sims=1"))


def test_disk_full_while_writing_the_manifest_is_one_clear_error(tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic_mod, "json", SimpleNamespace(dump=full))
    data_dir = tmp_path / "d"
    with pytest.raises(SimStorageError, match="disk full while writing the manifest"):
        generate.run(gen_cfg(data_dir, "campaign.n_sims=1"))
    assert sorted(p.name for p in data_dir.iterdir()) == [".campaign.lock", "sim_000000.h5"]


def test_cli_bad_input_prints_one_error_line(tmp_path):
    proc = cli(*SHRINK, "sim.n_sub=27", "sim.grid=16", f"paths.data_dir={tmp_path / 'd'}",
               f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "generate.py: error: sim.grid=16 is not divisible by n_sub^(1/3)=3"]


def test_data_module_trains_on_generated_data(tmp_path):
    train = pytest.importorskip("train")
    data_dir = tmp_path / "sims"
    generate.run(gen_cfg(data_dir, "sim.grid=32", "sim.n_particles=32", "sim.box_size=128",
                         "campaign.n_sims=4"))
    cfg = compose_cfg("train", [*SMALL_OVERRIDES, f"data.dir={data_dir}"], tmp_path / "job")
    OmegaConf.resolve(cfg)
    result = train.run(cfg)
    assert result["status"] == "complete", result.get("error")
    assert np.isfinite(result["metrics"]["train/loss"])
    assert result["config"]["input_size"] == 16
