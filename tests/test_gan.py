"""generate.py method=gan on a tiny real simulation set: training, resume, contract files, the
data module's extra training dirs, the physics gate and bad input (docs/gan.md).

Physics validation itself (known synthetic answers) is tested in test_gan_physics.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

import generate
import train
from src.callbacks.quality import QualityMonitor
from src.datamodules.cosmo import CosmoDataModule
from src.errors import ConfigError
from src.gan.campaign import GanValidationError
from src.gan.module import CosmoGAN
from src.gan.nets import GanConfigError
from src.gan.sample import GanCheckpointError, load_generator
from src.gan.train_gan import train_gan
from src.sim.identity import sample_parameters
from src.sim.store import file_checksum, read_manifest, read_simulation, verify_simulation

from .conftest import ROOT, SMALL_OVERRIDES, compose_cfg

# 16^3 particles painted on 32^3 voxels, 2 steps, 8 sub-volumes of 16^3: a real simulation
# in a fraction of a second
SIM = ["sim=tiny", "sim.n_particles=16", "sim.mesh_factor=1", "sim.box_size=64", "sim.grid=32",
       "sim.n_steps=2", "sim.device=cpu", "campaign.workers=1", "campaign.threads_per_worker=1",
       "campaign.progress=false"]
# a GAN small enough for a few steps in a second or two
GAN = ["gan.noise_dim=8", "gan.width=16", "gan.min_width=4", "gan.batch_size=8",
       "gan.epochs=1", "gan.max_steps=3", "gan.progress=false", "gan.n_validation=8",
       "gan.sample_batch=8", "gan.device=cpu", "gan.accelerator=cpu", "campaign.n_sims=3",
       "campaign.seed=1", "gan.select_every=0"]  # selection: tests/test_gan_selection.py


def gen_cfg(data_dir: Path, *overrides: str):
    return compose_cfg("generate", [*SIM, f"paths.data_dir={data_dir}", *overrides])


def gan_cfg(sims: Path, out: Path, *overrides: str):
    return gen_cfg(out, "method=gan", *GAN, f"gan.train_data={sims}", *overrides)


@pytest.fixture(scope="module")
def sims(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("gan") / "sims"
    torch.set_num_threads(1)
    generate.run(gen_cfg(data, "campaign.n_sims=6"))
    return data


@pytest.fixture(scope="module")
def gan_run(sims):
    """A 3-step GAN and 3 files (allow_invalid: whether 8 cubes of 16^3 after 3 steps pass
    the physics checks is not what these tests are about)."""
    out = sims.parent / "gan_cubes"
    return out, generate.run(gan_cfg(sims, out, "gan.allow_invalid=true"))


def test_gan_writes_contract_files_that_say_where_they_came_from(sims, gan_run):
    out, result = gan_run
    ckpt = out / "gan" / "last.ckpt"
    assert result["method"] == "gan" and result["n_generated"] == 3 and result["trained"]
    assert all(Path(p).is_file() for p in result["validation_paths"])
    validation = json.loads((out / "gan" / "gan_validation.json").read_text())
    assert result["validation_passed"] is validation["passed"]
    assert result["validation_failed"] == [c["name"] for c in validation["checks"]
                                           if not c["passed"]]
    manifest, sim_manifest = read_manifest(out), read_manifest(sims)
    assert manifest["gan_validation_passed"] is validation["passed"]
    assert manifest["method"] == "gan" and manifest["checkpoint_sha256"] == file_checksum(ckpt)
    assert manifest["sample_shape"] == sim_manifest["sample_shape"] == [1, 16, 16, 16]
    for entry in manifest["files"]:
        y = verify_simulation(out / entry["file"], entry, True, manifest["sample_shape"], 3)
        params, seed = sample_parameters(1, entry["id"], manifest["param_ranges"])
        np.testing.assert_array_equal(y, np.float32(list(params.values())))
        x, _, attrs = read_simulation(out / entry["file"])
        assert x.shape == (8, 1, 16, 16, 16) and (x >= 0).all()
        np.testing.assert_array_equal(x, np.floor(x))  # dequantized: integer counts
        assert attrs["method"] == entry["method"] == "gan" and int(attrs["seed"]) == seed
        assert attrs["checkpoint_sha256"] == entry["checkpoint_sha256"] == file_checksum(ckpt)
        assert entry["generator"] == attrs["generator"] and "GAN" in entry["generator"]
    assert {e["method"] for e in sim_manifest["files"]} == {"simulation"}


def test_rerun_keeps_the_checkpoint_and_skips_the_files(sims, gan_run):
    out, _ = gan_run
    sha = file_checksum(out / "gan" / "last.ckpt")
    again = generate.run(gan_cfg(sims, out, "gan.allow_invalid=true"))
    assert again["n_skipped"] == 3 and again["n_generated"] == 0
    assert file_checksum(out / "gan" / "last.ckpt") == sha


def test_extra_train_dirs_add_training_samples_only(sims, gan_run, tmp_path):
    out, _ = gan_run
    plain = CosmoDataModule(dir=str(sims), batch_size=2)
    mixed = CosmoDataModule(dir=str(sims), batch_size=2, extra_train_dirs=[str(out)])
    plain.setup(), mixed.setup()
    n_sim = plain.n_train_total
    assert mixed.data_sources == {"simulation": n_sim, "gan": 3 * 8}
    assert mixed.n_train_total == n_sim + 24 and len(mixed.val_set) == len(plain.val_set)
    assert mixed.val_sim_ids == plain.val_sim_ids and mixed.train_sim_ids == plain.train_sim_ids
    x, y = mixed.train_set[len(mixed.train_set) - 1]  # a GAN sample, labels by sims' ranges
    assert x.shape == (1, 16, 16, 16) and bool((y.abs() <= 1).all())
    cfg = compose_cfg("train", [*SMALL_OVERRIDES, f"data.dir={sims}",
                                f"data.extra_train_dirs=[{out}]"], tmp_path / "job")
    record = train.run(cfg)
    assert record["status"] == "complete"
    assert record["config"]["data_sources"] == {"simulation": n_sim, "gan": 24}
    saved = json.loads((tmp_path / "job" / "metrics.json").read_text())
    assert saved["config"]["data_sources"]["gan"] == 24


def test_baselines_fit_on_the_simulations_only(sims, gan_run):
    """Generated cubes join the training set, not the baselines a quality target is relative
    to: a job with extra_train_dirs has the baselines of the same job without them."""
    out, _ = gan_run
    plain = CosmoDataModule(dir=str(sims), batch_size=2)
    mixed = CosmoDataModule(dir=str(sims), batch_size=2, extra_train_dirs=[str(out)])
    plain.setup(), mixed.setup()
    assert len(mixed.train_set) > len(plain.train_set) == plain.n_primary_train
    assert mixed.n_primary_train == plain.n_primary_train
    monitor = QualityMonitor()
    alone, with_gan = monitor._compute_baselines(plain), monitor._compute_baselines(mixed)
    alone.pop("baseline_s"), with_gan.pop("baseline_s")
    assert alone["baseline_train_samples"] == plain.n_primary_train
    assert {"baseline_mean_mse", "baseline_stats_mse"} <= set(alone)
    assert with_gan == alone


def test_extra_train_dir_of_another_shape_is_refused(sims, tmp_path):
    other = tmp_path / "other"
    generate.run(gen_cfg(other, "campaign.n_sims=2", "sim.grid=16"))
    with pytest.raises(ValueError, match=f"data.extra_train_dirs: {other} has sample_shape"):
        CosmoDataModule(dir=str(sims), extra_train_dirs=[str(other)])


def test_resume_continues_from_last_ckpt_written_every_epoch(sims, tmp_path, monkeypatch):
    from omegaconf import OmegaConf
    cfg = gan_cfg(sims, tmp_path, "gan.max_steps=-1")
    gcfg = OmegaConf.to_container(cfg.gan, resolve=True)
    thresholds = OmegaConf.to_container(cfg.gan_validation)
    saves = []
    real = L.Trainer.save_checkpoint
    monkeypatch.setattr(L.Trainer, "save_checkpoint",
                        lambda self, path, *a, **k: (saves.append(Path(path).name),
                                                     real(self, path, *a, **k))[1])
    gcfg["epochs"] = 2
    ckpt = train_gan(gcfg, thresholds)
    first = torch.load(ckpt, weights_only=True)
    batches = first["global_step"] // 4  # 2 optimizer steps per batch, 2 epochs
    assert first["global_step"] == 4 * batches > 0
    assert saves.count("last.ckpt") == 3  # the end of each epoch, and the end of training
    gcfg["epochs"] = 3
    resumed = torch.load(train_gan(gcfg, thresholds), weights_only=True)
    assert resumed["global_step"] == 6 * batches and resumed["epoch"] == first["epoch"] + 1
    gcfg["resume"] = False
    afresh = torch.load(train_gan(gcfg, thresholds), weights_only=True)
    assert afresh["global_step"] == 6 * batches
    assert not torch.equal(afresh["state_dict"]["generator.head.weight"],
                           resumed["state_dict"]["generator.head.weight"])


def test_failing_generator_is_refused_unless_allowed(sims, gan_run, tmp_path):
    out, _ = gan_run
    ckpt = out / "gan" / "last.ckpt"
    target = tmp_path / "refused"
    # no sampling noise forgiven and no distance allowed: only the simulations themselves
    # would pass, so this generator fails however well 3 steps trained it
    strict = ["gan_validation.n_sigma=0", "gan_validation.one_point_max_ks=0"]
    with pytest.raises(GanValidationError, match="failed the physics validation") as err:
        generate.run(gan_cfg(sims, target, f"gan.checkpoint={ckpt}", *strict))
    failed = [c["name"] for c in json.loads((target / "gan" / "gan_validation.json")
                                            .read_text())["checks"] if not c["passed"]]
    assert failed and all(name in str(err.value) for name in failed)
    assert not list(target.glob("sim_*.h5"))
    allowed = generate.run(gan_cfg(sims, tmp_path / "allowed", f"gan.checkpoint={ckpt}",
                                   *strict, "gan.allow_invalid=true"))
    assert allowed["validation_passed"] is False and allowed["n_generated"] == 3


@pytest.mark.parametrize("override, culprit", [
    ("gan.train_data=null", "gan.train_data is not set"),
    ("gan.train_data=/nonexistent/sims", "gan.train_data=/nonexistent/sims: no such directory"),
])
def test_bad_train_data_is_one_clear_error(sims, tmp_path, override, culprit):
    with pytest.raises(GanConfigError, match=culprit):
        generate.run(gan_cfg(sims, tmp_path / "out", override))


@pytest.mark.parametrize("override, culprit", [
    ("gan.width=8", r"gan.width=8, but .*last.ckpt was trained with width=16"),
    ("gan.val_fraction=0.5", r"gan.val_fraction=0.5, but .*last.ckpt was trained with"),
    ("gan.d_smoothing=0.0", r"gan.d_smoothing=0.0, but .*last.ckpt was trained with d_smoothing"),
    ("campaign.seed=0", r"campaign.seed=0 and campaign.param_ranges are gan.train_data"),
    ("gan.n_validation=4", r"gan.n_validation=4 must be >= 6"),
    ("gan_validation.pk_n_bins=0", r"gan_validation.pk_n_bins"),
])
def test_bad_config_is_refused_before_training(sims, gan_run, override, culprit):
    """A resumed checkpoint trained otherwise, cubes at the simulations' own parameters, too
    few validation cubes or a bad threshold: one error, and the trained GAN left as it was."""
    out, _ = gan_run
    sha = file_checksum(out / "gan" / "last.ckpt")
    with pytest.raises(ConfigError, match=culprit):
        generate.run(gan_cfg(sims, out, "gan.allow_invalid=true", override))
    assert file_checksum(out / "gan" / "last.ckpt") == sha


def test_checkpoint_for_another_cube_size_is_refused(sims, tmp_path):
    module = CosmoGAN(cube_size=8, channels=1, param_names=["Omega_M", "sigma_8", "n_s"],
                      param_ranges=read_manifest(sims)["param_ranges"], noise_dim=4, width=8,
                      min_width=4)
    ckpt = tmp_path / "gan8.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()},
               ckpt)
    assert load_generator(ckpt, 8, 1).net.cube_size == 8
    with pytest.raises(GanCheckpointError, match=rf"{ckpt}: makes cubes of cube_size=8 .*"
                                                 r"target data has cube_size=16"):
        generate.run(gan_cfg(sims, tmp_path / "out", f"gan.checkpoint={ckpt}"))


def test_cli_exits_2_naming_the_culprit(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "generate.py", "method=gan", "gan.train_data=/nonexistent/sims",
         f"paths.data_dir={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "gan.train_data=/nonexistent/sims: no such directory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_gan_curve_validates_along_training(sims, tmp_path):
    out = tmp_path / "curve"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gan_curve", "--data", str(sims), "--steps", "2",
         "--every", "1", "--n-validation", "8", "--out", str(out), "--set", "noise_dim=8",
         "--set", "width=16", "--set", "min_width=4", "--set", "batch_size=8",
         "--set", "accelerator=cpu"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1", "2"]
    for step in (1, 2):
        result = json.loads((out / f"validation_{step}.json").read_text())
        assert {c["name"] for c in result["checks"]} == {"pk_ratio", "one_point_ks",
                                                         "sigma8_slope", "peak_counts"}
