"""train.run on tiny real HDF5 data: metrics.json, checkpoints, resume, DDP, loggers."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from train import run


def test_run_writes_complete_metrics(train_cfg, tmp_path):
    result = run(train_cfg())
    saved = json.loads((tmp_path / "job" / "metrics.json").read_text())
    assert saved["status"] == "complete"
    assert saved["metrics"] == result["metrics"]
    m = saved["metrics"]
    assert math.isfinite(m["train/loss"]) and math.isfinite(m["val/loss"])
    for name in ("Omega_M", "sigma_8", "n_s"):
        assert m[f"val/mae_{name}"] > 0
        # physical MAE = normalised MAE x half the parameter range
        assert m[f"val/mae_{name}"] < m[f"val/mae_{name}_norm"]
    cfg = saved["config"]
    assert (cfg["model"], cfg["world_size"], cfg["input_size"], cfg["global_step"]) == ("small", 1, 16, 2)
    assert cfg["n_train_samples"] == 56  # 7 of 8 simulations x 8 sub-volumes (split.py)
    assert cfg["data_staged_to"] == "ram"  # stage: auto, and the tiny set fits
    assert [p[0] for p in saved["history"]["train/loss"]] == [1, 2]
    # fit validated at its last step: the final validation is not run a second time
    assert [p[0] for p in saved["history"]["val/loss"]] == [2]
    assert (tmp_path / "job" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "job" / "csv" / "version_0" / "metrics.csv").is_file()


def test_final_validation_runs_when_fit_did_not_validate(train_cfg):
    result = run(train_cfg("+trainer.check_val_every_n_epoch=2"))
    assert [p[0] for p in result["history"]["val/loss"]] == [2]
    assert math.isfinite(result["metrics"]["val/loss"])


def test_resume_from_last_continues_the_run(train_cfg, tmp_path):
    first = run(train_cfg("trainer.max_steps=3", "trainer.max_epochs=5"))
    # A different seed would change a fresh run's first steps; a resumed run keeps them.
    resumed = run(train_cfg("trainer.max_steps=5", "trainer.max_epochs=5", "ckpt_path=last", "seed=7"))
    assert resumed["config"]["global_step"] == 5
    assert resumed["history"]["train/loss"][:3] == first["history"]["train/loss"]
    assert len(resumed["history"]["train/loss"]) == 5


def test_resume_from_last_continues_from_the_latest_epoch(train_cfg, tmp_path):
    """last.ckpt follows the latest epoch even when the best checkpoint stays put (here it is
    the first epoch's by construction: the monitored `epoch` only grows), so ckpt_path=last
    resumes where the run stopped, not at its best epoch."""
    common = ["trainer.max_steps=-1", "trainer.limit_train_batches=2", "logger=none",
              "callbacks.checkpoint.monitor=epoch", "callbacks.checkpoint.mode=min"]
    first = run(train_cfg(*common, "trainer.max_epochs=3"))
    assert first["config"]["global_step"] == 6
    assert [p.name for p in (tmp_path / "job" / "checkpoints").glob("best-*")] == ["best-epoch=000.ckpt"]
    assert torch.load(tmp_path / "job" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    resumed = run(train_cfg(*common, "trainer.max_epochs=4", "ckpt_path=last"))
    assert resumed["config"]["global_step"] == 8 and resumed["config"]["epochs_done"] == 4
    steps = [point[0] for point in resumed["history"]["train/loss"]]
    assert steps == list(range(1, 9))  # the first run's six steps, then two new ones


def test_resume_after_a_mid_epoch_stop_finishes_the_cut_epoch(train_cfg, tmp_path, caplog):
    """A time budget (trainer.max_time) stops a job mid-epoch; Lightning still ends that epoch's
    hooks and latest.ckpt records it as if it had ended. Resumed, the job must finish the cut
    epoch, not skip its remaining batches: three epochs of three batches are nine steps, and
    the cut epoch's resumed part leaves out the one batch of samples already trained."""
    common = ["trainer.max_steps=-1", "trainer.limit_train_batches=3", "trainer.max_epochs=3",
              "logger=none"]
    first = run(train_cfg(*common, "+callbacks.stop._target_=tests.helpers.StopAtStep",
                          "+callbacks.stop.step=4"))
    assert first["config"]["global_step"] == 4  # the first epoch and one batch of the second
    with caplog.at_level("INFO", logger="src.callbacks.checkpoint"):
        resumed = run(train_cfg(*common, "ckpt_path=last"))
    assert "resuming inside epoch 1, cut short after 1 batches" in caplog.text
    assert resumed["config"]["global_step"] == 9 and resumed["config"]["epochs_done"] == 3
    steps = [point[0] for point in resumed["history"]["train/loss"]]
    assert steps == list(range(1, 10))
    # validated at the end of each epoch the run finished, labelled by the epoch's last step
    assert [point[0] for point in resumed["history"]["val/loss"]][-2:] == [6, 9]


def test_logger_none_and_bf16(train_cfg):
    result = run(train_cfg("logger=none", "trainer.precision=bf16-mixed"))
    assert result["config"]["precision"] == "bf16-mixed"
    assert math.isfinite(result["metrics"]["train/loss"])


@pytest.mark.parametrize("native, expected, peak_dtype",
                         [(True, "bf16-mixed", "bf16"), (False, "32-true", "fp32")])
def test_precision_auto_follows_native_bf16_and_a_rerun_skips(train_cfg, tmp_path, monkeypatch,
                                                              native, expected, peak_dtype):
    """The CPU default `trainer.precision: auto` is resolved before training and recorded; the
    finished job is still recognised on a rerun (its hash is of the config as asked)."""
    monkeypatch.setattr("src.training.build.native_bf16", lambda device_type: native)
    cfg = train_cfg("logger=none")
    assert cfg.trainer.precision == "auto"
    result = run(cfg)
    assert result["config"]["precision"] == expected
    assert result["metrics"]["peak_flops_dtype"] == peak_dtype  # MFU against that dtype's peak
    metrics_file = tmp_path / "job" / "metrics.json"
    written = metrics_file.stat().st_mtime_ns
    assert run(train_cfg("logger=none")) == result
    assert metrics_file.stat().st_mtime_ns == written


def test_default_loggers_run_offline_one_wandb_run_per_job(train_cfg, tmp_path, monkeypatch):
    # two jobs in one process, as in a multirun: the second must not reuse the first's run
    monkeypatch.setenv("WANDB_MODE", "offline")
    for job in ("a", "b"):
        run(train_cfg("logger=default", out=tmp_path / job))
    runs = [list((tmp_path / job / "wandb").glob("offline-run-*")) for job in ("a", "b")]
    assert [len(r) for r in runs] == [1, 1]


def test_progress_bar_off_needs_no_other_override(train_cfg):
    # the default callbacks hold a RichProgressBar; Lightning refuses it with the bar disabled
    result = run(train_cfg("+callbacks.progress._target_=lightning.pytorch.callbacks.RichProgressBar"))
    assert result["status"] == "complete"


def test_lars_option_trains(train_cfg):
    result = run(train_cfg("lars=enabled", "schedule.warmup_steps=1"))
    assert math.isfinite(result["metrics"]["train/loss"])


def test_ddp_two_ranks_identical_weights_disjoint_samples(train_cfg, tmp_path):
    out = tmp_path / "ddp"
    cfg = train_cfg(
        "trainer=ddp_sim",
        "+callbacks.probe._target_=tests.helpers.RankProbe",
        f"+callbacks.probe.out_dir={out}",
        out=out,
    )
    result = run(cfg)
    assert result["config"]["world_size"] == 2 and result["config"]["global_step"] == 2
    probes = [json.loads((out / f"probe_rank{r}.json").read_text()) for r in (0, 1)]
    assert {p["world"] for p in probes} == {2}
    a, b = (set(p["positions"]) for p in probes)
    assert a and b and not a & b and len(a) == len(b) == 28
    w0, w1 = (torch.load(out / f"probe_rank{r}.pt") for r in (0, 1))
    initial = None
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key
        initial = key
    assert initial is not None


def test_failed_job_records_its_error(train_cfg, tmp_path):
    with pytest.raises(Exception, match="too small"):
        run(train_cfg("model.net.min_spatial=16"))
    saved = json.loads((tmp_path / "job" / "metrics.json").read_text())
    assert saved["status"] == "failed" and "too small" in saved["error"]
    assert "Traceback" in (tmp_path / "job" / "error.txt").read_text()


def _cli(args, cwd=ROOT, timeout=300):
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_multirun_cli_gives_each_job_its_own_world_size(tiny_data, tmp_path):
    sweep = tmp_path / "sweep"
    proc = _cli(
        [
            "-m",
            f"data.dir={tiny_data}",
            "trainer=ddp_sim",
            "trainer.devices=1,2",
            "data.fraction=1,1/2",
            "trainer.max_steps=1",
            "trainer.limit_val_batches=1",
            "logger=csv",
            "~callbacks.progress",
            "trainer.enable_progress_bar=false",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(sweep.glob("*/metrics.json"))
    assert len(jobs) == 4
    seen = {}
    for path in jobs:
        m = json.loads(path.read_text())
        assert m["status"] == "complete"
        seen[(m["config"]["world_size"], m["config"]["fraction"])] = path.parent
        if m["config"]["world_size"] == 2:  # the second rank really ran, with its own log
            assert "rank 1 of 2 joined" in (path.parent / ".launch" / "rank1.log").read_text()
    assert set(seen) == {(1, 1.0), (2, 1.0), (1, 0.5), (2, 0.5)}


@pytest.mark.parametrize("trainer", ["cpu", "ddp_sim"])
def test_bad_data_dir_is_one_clear_error(tmp_path, trainer):
    out = tmp_path / "job"
    proc = _cli([f"data.dir={tmp_path / 'nowhere'}", f"trainer={trainer}", f"hydra.run.dir={out}"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("train.py: error:")]
    assert len(lines) == 1 and "nowhere" in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert json.loads((out / "metrics.json").read_text())["status"] == "failed"
    assert "nowhere" in (out / "error.txt").read_text()


def test_unknown_model_is_one_clear_error(tiny_data, tmp_path):
    proc = _cli([f"data.dir={tiny_data}", "model=no_such_model", f"hydra.run.dir={tmp_path}"])
    assert proc.returncode != 0
    assert "no_such_model" in proc.stderr and "Traceback" not in proc.stderr
