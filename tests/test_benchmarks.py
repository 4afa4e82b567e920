"""The benchmark scripts behind docs/benchmarks.md still run and print their ratios (tiny sizes;
the numbers themselves are for the machine they are run on, not for a test)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def run_script(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_train_bench_prints_its_ratios(tmp_path):
    out = tmp_path / "bench.json"
    run_script("-m", "benchmarks.train_bench", "--size", "16", "--batch", "2", "--steps", "2",
               "--warmup", "1", "--repeats", "1", "--json", str(out),
               "--override", "trainer.precision=32-true")
    summary = json.loads(out.read_text())
    assert summary["lightning_vs_plain"] > 0 and summary["plain_fp32"] > 0
    assert 0 < summary["mfu"] and 0 <= summary["data_wait_frac"] <= 1
    assert 0 < summary["monitor_overhead_frac"] < 1
    assert summary["peak_flops_dtype"] == "fp32"  # the override reached the Lightning runs
    assert summary["setup"]["override"] == ["trainer.precision=32-true"]


def test_depthwise_grads_times_every_variant():
    out = run_script("-m", "benchmarks.depthwise_grads", "--cubes", "8:4:1", "--repeats", "1")
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("8:4:1")]
    assert [r[1] for r in rows] == ["3", "5"]
    assert all(len(r) == 17 and all(float(v) > 0 for v in r[2:]) for r in rows)  # no nan


def test_op_breakdown_covers_every_mac():
    out = run_script("-m", "benchmarks.op_breakdown", "--size", "16", "--batch", "2",
                     "--repeats", "1")
    rows = [line.split() for line in out.splitlines()[2:] if line.strip()]
    classes = {" ".join(r[:-5]): r[-5:] for r in rows}
    assert {"pointwise", "BN + LeakyReLU", "stem/dense"} <= set(classes)
    assert abs(sum(float(v[1]) for v in classes.values()) - 100) < 0.5  # MAC shares
    assert abs(sum(float(v[2]) for v in classes.values()) - 100) < 0.5  # time shares
    assert all(float(v[3]) > 0 for v in classes.values())


def test_profile_step_reports_the_optimizer_step():
    out = run_script("-m", "benchmarks.profile_step", "--model", "small", "--size", "16",
                     "--no-fused-adam")
    assert "aten::" in out and "optimizer step (per-tensor Adam): " in out


def test_host_malloc_bench_times_both_allocators():
    out = run_script("-m", "benchmarks.host_malloc_bench", "--model", "small", "--size", "16",
                     "--steps", "1", "--repeats", "1")
    lines = {line.split(":")[0].strip(): line for line in out.splitlines()}
    assert "step" in lines["glibc_default"] and "peak RSS" in lines["kept"]
    assert float(lines["step time kept / default"].split()[-1]) > 0


def test_per_simulation_rebuilds_the_job_and_matches_its_val_loss(tiny_data, tmp_path):
    job = tmp_path / "job"
    run_script("train.py", f"data.dir={tiny_data}", f"hydra.run.dir={job}", "logger=csv",
               "trainer.max_epochs=1", "trainer.max_steps=2", "trainer.precision=32-true",
               "trainer.enable_progress_bar=false", "~callbacks.progress", "data.batch_size=2")
    out = run_script("-m", "benchmarks.per_simulation", "--job", str(job))
    rows = json.loads(out.splitlines()[-1])
    logged = json.loads((job / "metrics.json").read_text())["metrics"]["val/loss"]
    sub, pooled = rows["per sub-volume"], rows["per simulation (8 sub-volumes pooled)"]
    # the same weights, split and samples as the job's own last validation
    assert abs(sub["cnn_val_mse"] - logged) < 1e-4 * max(1.0, logged)
    assert all(len(r[k]) == 3 for r in (sub, pooled) for k in ("cnn_r2", "ridge_r2"))
    assert pooled["ridge_val_mse"] > 0 and pooled["cnn_val_mse"] > 0


def test_a_job_validating_on_mirror_images_is_what_the_benchmark_recomputes(tiny_data, tmp_path):
    """quality.val_mirror_images=8: the job's val/loss is the MSE of its predictions averaged
    over each cube's 8 flips, as benchmarks.per_simulation --symmetries 8 recomputes it from
    the weights and the HDF5 files; the cube alone scores differently."""
    job = tmp_path / "job"
    run_script("train.py", f"data.dir={tiny_data}", f"hydra.run.dir={job}", "logger=csv",
               "trainer.max_epochs=1", "trainer.max_steps=2", "trainer.precision=32-true",
               "trainer.enable_progress_bar=false", "~callbacks.progress", "data.batch_size=2",
               "trainer.limit_val_batches=1.0", "quality.val_mirror_images=8")
    logged = json.loads((job / "metrics.json").read_text())["metrics"]["val/loss"]
    recomputed = {}
    for n in (8, 1):
        out = run_script("-m", "benchmarks.per_simulation", "--job", str(job), "--symmetries", str(n))
        recomputed[n] = json.loads(out.splitlines()[-1])["per sub-volume"]["cnn_val_mse"]
    assert abs(recomputed[8] - logged) < 1e-4 * max(1.0, logged)
    assert abs(recomputed[1] - logged) > 1e-6


def test_per_simulation_names_a_job_that_is_not_one(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.per_simulation", "--job",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"--job {tmp_path}: no .hydra/config.yaml" in proc.stderr
