"""The quality axis on tiny real runs: baselines on the job's own split, a target that is
reached (early stop) and one that is not, Valid FLOP/s, the MLPerf HPC log through MLCommons'
own compliance checker, a resumed job's baselines and earlier log, and one clear error for a bad
`quality` config."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from src.sim.store import read_manifest, read_simulation
from tests.conftest import ROOT
from train import run

EPOCHS = ["trainer.max_steps=-1", "trainer.limit_train_batches=2", "quality.early_stop=true"]


def _absolute_target(value) -> list[str]:
    return ["quality.target.relative_to=null", f"quality.target.value={value}"]


def _training_mean_mse(data_dir, val_ids) -> float:
    """The training-mean baseline recomputed from the HDF5 files and the recorded val ids."""
    manifest = read_manifest(data_dir)
    lo, hi = (np.array([manifest["param_ranges"][p][i] for p in manifest["param_names"]])
              for i in (0, 1))
    labels = {e["id"]: 2 * (read_simulation(data_dir / e["file"])[1] - lo) / (hi - lo) - 1
              for e in manifest["files"]}
    train = np.stack([y for i, y in labels.items() if i not in val_ids])
    val = np.stack([labels[i] for i in val_ids])
    return float(((val - train.mean(axis=0)) ** 2).mean())


def test_target_reached_stops_early_and_records_time_to_target(train_cfg, tiny_data, tmp_path,
                                                               caplog):
    with caplog.at_level("INFO", logger="src.callbacks.quality"):
        result = run(train_cfg(*EPOCHS, "trainer.max_epochs=3", *_absolute_target(100)))
    m, split = result["metrics"], result["split"]
    assert result["config"]["global_step"] == 2  # stopped after the first epoch's validation
    assert m["target_reached"] is True and m["quality_target"] == 100
    assert m["samples_to_target"] == 4 and m["time_to_target_s"] > 0
    assert m["epochs_to_target"] == pytest.approx(4 / result["config"]["n_train_samples"])
    assert m["flops_to_target"] == pytest.approx(4 * m["flops_per_sample_train"])
    assert m["quality_penalty"] == 1.0 and m["valid_tflops_aggregate"] == m["tflops_aggregate"]
    # the baselines on the same split, and the skill against them
    assert m["baseline_mean_mse"] == pytest.approx(
        _training_mean_mse(tiny_data, split["val_sim_ids"]), rel=1e-5)
    assert m["baseline_stats_mse"] > 0 and m["baseline_train_samples"] == 56
    assert m["skill"] == pytest.approx(1 - m["val/loss"] / m["baseline_stats_mse"])
    for p in ("Omega_M", "sigma_8", "n_s"):
        assert m[f"skill_vs_mean_{p}"] == pytest.approx(
            1 - m[f"val/mse_{p}"] / m[f"baseline_mean_mse_{p}"])
    saved = json.loads((tmp_path / "job" / "metrics.json").read_text())
    assert saved["split"] == split and split["val_sim_ids"] == [7]
    # the log says at the start what the job has to beat, with the numbers metrics.json keeps
    assert (f"summary-statistics ridge {m['baseline_stats_mse']:.4g} (fitted on 56 training "
            f"samples") in caplog.text
    assert f"training mean val MSE {m['baseline_mean_mse']:.4g}" in caplog.text
    _check_mllog(tmp_path / "job" / "mllog.txt", tmp_path, status="success")


def _check_mllog(path, cwd, status):
    lines = [json.loads(ln.removeprefix(":::MLLOG ")) for ln in path.read_text().splitlines()]
    keys = [ln["key"] for ln in lines]
    assert keys.count("run_start") == keys.count("run_stop") == 1
    assert lines[keys.index("run_stop")]["metadata"]["status"] == status
    assert {"eval_error", "global_batch_size", "opt_base_learning_rate", "seed",
            "submission_benchmark", "staging_start", "epoch_stop"} <= set(keys)
    proc = subprocess.run([sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage",
                           "hpc", "--ruleset", "3.0.0", str(path)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert "open_cosmoflow.yaml" in out, out  # every rule file of the open division ran
    # The one rule a tiny run cannot honestly pass: MLPerf's eval_error target of 0.124
    # (docs/report.md). Every other rule passes.
    failures = re.findall(r"(Failed checks for .*|Required .*)", out)
    assert failures == ["Failed checks for eval_error : v['value'] <= 0.124 and v['value'] > 0."], out


def test_target_not_reached_penalises_valid_flops_and_warns_on_saturation(train_cfg, caplog):
    with pytest.warns(UserWarning, match="saturate the tanh"), \
            caplog.at_level("INFO", logger="src.callbacks.quality"):
        result = run(train_cfg(*EPOCHS, "trainer.max_epochs=2", *_absolute_target(1e-9),
                               "optim.lr=0.05", "model.net.output=tanh"))
    m = result["metrics"]
    assert result["config"]["global_step"] == 4  # the whole budget: never reached
    assert m["target_reached"] is False and "time_to_target_s" not in m
    assert m["quality_achieved"] == m["val/loss"] and m["quality_best"] > 1e-9
    assert m["quality_penalty"] == pytest.approx((1e-9 / m["val/loss"]) ** 5)
    assert m["valid_tflops_aggregate"] == pytest.approx(m["tflops_aggregate"] * m["quality_penalty"])
    # one progress line per validation of the fit while the target is out of reach
    progress = re.findall(r"quality target val_mse <= 1e-09: \S+ at epoch (\d)", caplog.text)
    assert progress == ["0", "1"], caplog.text


def _epochs_logged(path) -> list[int]:
    lines = [json.loads(ln.removeprefix(":::MLLOG ")) for ln in path.read_text().splitlines()]
    return [ln["metadata"]["epoch_num"] for ln in lines if ln["key"] == "epoch_stop"]


def test_resumed_job_reuses_its_baselines_and_keeps_its_earlier_mllog(train_cfg, tiny_data,
                                                                       tmp_path, caplog):
    common = ["trainer.max_steps=-1", "trainer.limit_train_batches=2", *_absolute_target(1e-9)]
    first = run(train_cfg(*common, "trainer.max_epochs=1"))
    with caplog.at_level("INFO", logger="src.callbacks.quality"):
        resumed = run(train_cfg(*common, "trainer.max_epochs=2", "ckpt_path=last"))
    assert resumed["config"]["global_step"] == 4
    assert "restored from the checkpoint" in caplog.text
    kept = [k for k in first["metrics"] if k.startswith("baseline_")]
    assert "baseline_stats_mse" in kept
    assert {k: resumed["metrics"][k] for k in kept} == {k: first["metrics"][k] for k in kept}
    job = tmp_path / "job"
    assert _epochs_logged(job / "mllog.1.txt") == [1] and _epochs_logged(job / "mllog.txt") == [2]
    # another split: the checkpoint's baselines do not belong to it, so they are fitted again
    caplog.clear()
    with caplog.at_level("INFO", logger="src.callbacks.quality"):
        other = run(train_cfg(*common, "trainer.max_epochs=3", "ckpt_path=last",
                              "data.val_fraction=0.5"))
    assert "restored" not in caplog.text and "quality baselines" in caplog.text
    val_ids = other["split"]["val_sim_ids"]
    assert len(val_ids) > 1 and val_ids != first["split"]["val_sim_ids"]  # the first's: [7]
    assert other["metrics"]["baseline_mean_mse"] == pytest.approx(
        _training_mean_mse(tiny_data, val_ids), rel=1e-5)
    assert _epochs_logged(job / "mllog.2.txt") == [2] and _epochs_logged(job / "mllog.txt") == [3]


@pytest.mark.parametrize("override, named", [
    ("quality.target.metric=accuracy", "quality.target.metric='accuracy'"),
    ("quality.val_mirror_images=5", "quality.val_mirror_images=5"),
])
def test_bad_quality_config_is_one_clear_error(tiny_data, tmp_path, override, named):
    proc = subprocess.run(
        [sys.executable, "train.py", f"data.dir={tiny_data}", override,
         f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("train.py: error:")]
    assert len(lines) == 1 and named in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
