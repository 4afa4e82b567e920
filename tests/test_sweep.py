"""Sweeps: emulated nodes, resume skips finished jobs, a failed job does not stop the sweep."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from train import run

QUIET = ["logger=csv", "~callbacks.progress", "trainer.enable_progress_bar=false",
         "trainer.max_steps=1", "trainer.limit_val_batches=1", "data.batch_size=2"]


def test_two_emulated_nodes(train_cfg):
    result = run(train_cfg("trainer=ddp_sim", "trainer.devices=1", "trainer.num_nodes=2"))
    cfg = result["config"]
    assert (cfg["num_nodes"], cfg["devices"], cfg["world_size"], cfg["emulated"]) == (2, 1, 2, True)


def test_failed_job_does_not_stop_the_sweep_and_rerun_skips_finished(tiny_data, tmp_path):
    sweep = tmp_path / "sweep"
    # min_spatial=16 cannot build on 16^3 cubes: job 1 fails, job 0 must still complete
    args = [sys.executable, "train.py", "-m", f"data.dir={tiny_data}", "model.net.min_spatial=4,16",
            f"hydra.sweep.dir={sweep}", *QUIET]
    first = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode != 0  # the sweep reports its failure...
    ok, bad = (json.loads((sweep / j / "metrics.json").read_text()) for j in ("0", "1"))
    assert ok["status"] == "complete"  # ...after running every job
    assert bad["status"] == "failed" and "too small" in bad["error"]
    assert "ModelConfigError" in (sweep / "1" / "error.txt").read_text()
    stamp = (sweep / "0" / "metrics.json").stat().st_mtime_ns

    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert f"skipping {sweep / '0'}" in again.stderr + again.stdout
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == stamp
    assert json.loads((sweep / "1" / "metrics.json").read_text())["status"] == "failed"


def test_changed_config_is_not_skipped(train_cfg):
    first = run(train_cfg())
    second = run(train_cfg("optim.lr=0.01"))
    assert first["config_hash"] != second["config_hash"]
    assert run(train_cfg("optim.lr=0.01"))["timing"] == second["timing"]  # same job: skipped


def test_slurm_launcher_takes_nodes_and_tasks_from_the_trainer():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from tests.conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", ["hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=4",
                                "trainer.devices=2"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (4, 2, 2)
