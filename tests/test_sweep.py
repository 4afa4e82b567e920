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


def test_nodes_axis_through_the_cli_emulates_nodes(tiny_data, tmp_path):
    sweep = tmp_path / "sweep"
    args = [sys.executable, "train.py", "-m", f"data.dir={tiny_data}", "trainer=ddp_sim",
            "trainer.devices=1", "trainer.num_nodes=1,2", f"hydra.sweep.dir={sweep}", *QUIET]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.loads((sweep / j / "metrics.json").read_text())["config"] for j in ("0", "1"))
    assert (one["num_nodes"], one["world_size"], one["emulated"]) == (1, 1, False)
    assert (two["num_nodes"], two["devices"], two["world_size"], two["emulated"]) == (2, 1, 2, True)
    assert "rank 1 of 2 joined" in (sweep / "1" / ".launch" / "rank1.log").read_text()
    assert "nodes are emulated" in proc.stderr + proc.stdout


def test_rerun_that_fails_sets_the_old_result_aside(train_cfg, tmp_path):
    run(train_cfg())
    job = tmp_path / "job"
    with pytest.raises(Exception, match="too small"):
        run(train_cfg("model.net.min_spatial=16"))  # same dir, new config, fails
    assert json.loads((job / "metrics.json").read_text())["status"] == "failed"
    assert json.loads((job / "metrics.previous.json").read_text())["status"] == "complete"


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
