"""The memory pre-flight of a job whose ranks start on this machine, and the timeout of
every wait on other ranks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from src.errors import LaunchError, MemoryFitError
from src.training.collective import open_job_group
from src.training.preflight import check_memory, rank_memory
from tests.conftest import ROOT
from tests.test_sweep import QUIET


def test_estimate_counts_every_part_and_grows_with_the_batch(train_cfg):
    small, big = rank_memory(train_cfg()), rank_memory(train_cfg("data.batch_size=8"))
    assert set(small) == {"runtime", "weights", "gradients", "optimizer", "activations"}
    assert big["activations"] > small["activations"] > 0
    assert small["optimizer"] == 2 * small["gradients"]


def test_job_that_cannot_fit_names_the_numbers(train_cfg):
    cfg = train_cfg("trainer=ddp_sim")
    per_rank = sum(rank_memory(cfg).values())
    check_memory(cfg, 2, available=int(2 * per_rank * 1.5) + 1)  # fits: no error
    with pytest.raises(MemoryFitError, match=r"2 ranks x .* launch.memory_margin=1.5 .* GiB are"):
        check_memory(cfg, 2, available=2 * per_rank)


def test_memory_margin_null_turns_the_check_off(train_cfg):
    check_memory(train_cfg("launch.memory_margin=null"), 64, available=1)


def test_job_too_big_for_the_machine_fails_alone_with_one_line(tiny_data, tmp_path):
    out = tmp_path / "job"
    args = [sys.executable, "train.py", f"data.dir={tiny_data}", "trainer=ddp_sim",
            "launch.memory_margin=1e9", f"hydra.run.dir={out}", *QUIET]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("train.py: error:")]
    assert len(lines) == 1 and "GiB are available" in lines[0], proc.stderr[-3000:]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["status"] == "failed" and "MemoryFitError" in saved["error"]
    assert not (out / ".launch").exists()  # no rank was started


def test_rank_whose_peers_never_join_stops_with_a_clear_error(train_cfg, monkeypatch):
    monkeypatch.setenv("SAIH_LAUNCHED", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "0")
    with pytest.raises(LaunchError, match=r"rank 0 of 2: .* within launch.timeout_s=1"):
        open_job_group(train_cfg("launch.timeout_s=1"))
