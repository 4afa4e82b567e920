"""report.py on synthetic sweeps whose numbers are chosen so every derived value is exact.

The sweep (binary-exact TFLOP/s, so ratios are exact floats):
  job model  nodes frac  precision   TFLOP/s aggregate  per device
  0   small  1     1/4   32-true     0.5                0.5
  1   small  2     1/4   32-true     0.875              0.4375   speed-up 1.75, eff 0.875
  2   small  4     1/4   32-true     1.5                0.375    speed-up 3,    eff 0.75
  3   small  8     1/4   32-true     1.75               0.21875  speed-up 3.5,  eff 0.4375
  4   medium 1     1/4   32-true     1.0                1.0
  5   medium 2     1/4   32-true     2.0                1.0      speed-up 2,    eff 1
  6   small  2     1/2   32-true     0.75               0.375    weak eff vs job 0: 0.75
  7   small  1     1/4   bf16-mixed  1.25               1.25     2.5x faster than job 0
Peak: 2 TFLOP/s per device in 32-true, 4 in bf16-mixed. Nodes > 1 are emulated.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from src.contract import ContractError
from src.errors import ReportError
from src.report.collect import collect
from src.report.derive import num
from src.report.table8 import describe_system

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # report.py is an entry point at the root, not in the package
import report  # noqa: E402

PEAK = {"32-true": 2e12, "bf16-mixed": 4e12}
FLOPS_FWD = {"small": 1e9, "medium": 4e9, "large": 16e9}
AI = {"small": 20.0, "medium": 40.0, "large": 80.0}
JOBS = [
    # model, nodes, fraction, precision, tflops_aggregate, data_wait_frac, val/loss
    ("small", 1, 0.25, "32-true", 0.5, 0.01, 0.5),
    ("small", 2, 0.25, "32-true", 0.875, 0.02, 0.25),
    ("small", 4, 0.25, "32-true", 1.5, 0.03, 0.125),
    ("small", 8, 0.25, "32-true", 1.75, 0.0625, 0.375),
    ("medium", 1, 0.25, "32-true", 1.0, 0.01, 0.0625),
    ("medium", 2, 0.25, "32-true", 2.0, 0.04, 0.1875),
    ("small", 2, 0.5, "32-true", 0.75, 0.01, 0.3125),
    ("small", 1, 0.25, "bf16-mixed", 1.25, 0.01, 0.4375),
]
# As Hydra writes it: 3 models x 4 node counts = 12 jobs.
MULTIRUN_3x4 = ("hydra:\n  overrides:\n    task:\n    - model=small,medium,large\n"
                "    - trainer.num_nodes=1,2,4,8\n")
SAMPLES_PER_FRACTION = 256  # training samples in the full data set


def job_metrics(model, nodes, fraction, precision, agg, wait, val_loss, bandwidth=True) -> dict:
    n_train = int(SAMPLES_PER_FRACTION * fraction)
    metrics = {
        "train/loss": val_loss * 0.5, "val/loss": val_loss, "val/mae_Omega_M": 0.01,
        "flops_per_sample_forward": FLOPS_FWD[model],
        "flops_per_sample_train": 3 * FLOPS_FWD[model],
        "flops_per_sample_measured": 3 * FLOPS_FWD[model],
        "tflops_per_device": agg / nodes, "tflops_aggregate": agg,
        "samples_per_s": agg * 1e12 / (3 * FLOPS_FWD[model]),
        "peak_flops_per_device": PEAK[precision], "peak_flops_source": "table",
        "data_wait_frac": wait, "step_time_s": 0.1,
        "mem_weights_bytes": 4 * 2**20 if model == "small" else 16 * 2**20,
        "mem_activations_bytes": 2**30, "arithmetic_intensity": AI[model],
        "num_params": 1_000_000 if model == "small" else 4_000_000,
    }
    if bandwidth:
        metrics["mem_bandwidth_bytes_per_s"] = 1e11
    return {
        "status": "complete", "error": None, "metrics": metrics,
        "config": {"model": model, "num_nodes": nodes, "devices": 1, "world_size": nodes,
                   "fraction": fraction, "precision": precision, "batch_size": 4,
                   "input_size": 32, "channels": 1, "n_train_samples": n_train,
                   "n_val_samples": n_train // 4, "dataset_bytes": int(fraction * 1e9),
                   "max_epochs": 1, "max_steps": -1, "accelerator": "cpu",
                   "emulated": nodes > 1, "data_dir": "/data/tiny"},
        "system": {"hostname": "node-a", "cpu_model": "Test CPU 9000", "n_cpus": 2,
                   "mem_bytes": 8 * 2**30, "gpu_name": None, "torch": "2.13.0",
                   "lightning": "2.5.0"},
        "history": {"train/loss": [[s, val_loss * (2 - s / 10)] for s in range(0, 11, 2)],
                    "val/loss": [[10, val_loss]]},
        "timing": {"fit_s": 12.5},
    }


def make_sweep(root: Path, bandwidth: bool = True) -> Path:
    root.mkdir(parents=True)
    for i, job in enumerate(JOBS):
        (root / str(i)).mkdir()
        (root / str(i) / "metrics.json").write_text(json.dumps(job_metrics(*job, bandwidth)))
    (root / "multirun.yaml").write_text("hydra:\n  overrides:\n    task: []\n")
    return root


def add_broken_jobs(root: Path) -> None:
    """A failed job, a crashed one (error.txt only), one in flight, one killed mid-write."""
    failed = job_metrics("large", 1, 0.25, "32-true", 9.0, 0.5, 9.0)
    failed.update(status="failed", error="RuntimeError: out of memory")
    (root / "8").mkdir()
    (root / "8" / "metrics.json").write_text(json.dumps(failed))
    (root / "9").mkdir()
    (root / "9" / "error.txt").write_text("Traceback ...\nValueError: bad genotype\n")
    (root / "10" / ".hydra").mkdir(parents=True)
    (root / "10" / ".hydra" / "overrides.yaml").write_text("- model=large\n- trainer.num_nodes=8\n")
    (root / "11").mkdir()
    (root / "11" / "metrics.json").write_text('{"status": "compl')


def cfg_for(sweep, *overrides):
    value = f"[{','.join(map(str, sweep))}]" if isinstance(sweep, list) else str(sweep)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("report", overrides=[f"sweep_dir={value}", *overrides])


def read_csv(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def assert_in_summary(result: dict, *pieces: str) -> None:
    """Each piece stands in summary.md (the failure lists those that do not)."""
    text = result["summary"].read_text()
    assert [p for p in pieces if p not in text] == []


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    sweep = make_sweep(tmp_path_factory.mktemp("full") / "sweep")
    result = report.run(cfg_for(sweep))
    return sweep, result


def test_outputs_land_in_sweep_report_dir(full_report):
    sweep, result = full_report
    assert result["summary"] == sweep / "report" / "summary.md"
    assert result["runs_csv"] == sweep / "report" / "runs.csv"
    assert {p.name for p in result["figures"]} == {
        "aggregate_tflops_vs_nodes.png", "per_device_tflops_vs_nodes.png",
        "per_device_tflops_vs_fraction.png", "speedup_vs_nodes.png", "loss_curves.png",
        "roofline.png"}


def test_runs_csv_has_every_job_metric_and_exact_scaling(full_report):
    _, result = full_report
    rows = {r["job"]: r for r in read_csv(result["runs_csv"])}
    assert set(rows) == {str(i) for i in range(len(JOBS))}
    for name in job_metrics(*JOBS[0])["metrics"]:
        assert name in rows["0"], name
    assert float(rows["3"]["tflops_aggregate"]) == 1.75
    # Strong scaling: aggregate ratio to the 1-node run of the same model/fraction/precision.
    expect = {"0": (1.0, 1.0), "1": (1.75, 0.875), "2": (3.0, 0.75), "3": (3.5, 0.4375),
              "4": (1.0, 1.0), "5": (2.0, 1.0)}
    for job, (speedup, eff) in expect.items():
        assert float(rows[job]["speedup"]) == speedup
        assert float(rows[job]["scaling_efficiency"]) == eff
    # Alone in their strong-scaling group: no speed-up.
    assert rows["6"]["speedup"] == "" and rows["7"]["speedup"] == ""
    # Weak scaling: 64 training samples per rank in job 0 (1 rank) and job 6 (2 ranks).
    assert float(rows["6"]["weak_scaling_efficiency"]) == 0.75
    assert float(rows["0"]["weak_scaling_efficiency"]) == 1.0
    assert rows["1"]["weak_scaling_efficiency"] == ""
    assert float(rows["0"]["pct_of_peak"]) == 25.0
    assert float(rows["7"]["pct_of_peak"]) == 31.25
    # time per epoch = samples / (aggregate FLOP/s / training FLOPs per sample)
    assert float(rows["0"]["time_per_epoch_s"]) == pytest.approx(64 / (0.5e12 / 3e9), rel=1e-12)
    assert rows["3"]["emulated"] == "True" and rows["0"]["emulated"] == "False"


def test_table8_ranges_exact(full_report):
    _, result = full_report
    text = result["summary"].read_text()
    table = {line.split(" | ")[0].strip("| "): line.split(" | ", 1)[1].rstrip(" |")
             for line in text.splitlines() if line.startswith("| ") and " | " in line}
    assert table["Dataset size"] == "0.25\u20130.5 GB; 64\u2013128 training samples + 16\u201332 validation"
    assert table["Model FLOPs"] == "forward 1\u20134 GFLOP/sample; training 3\u201312 GFLOP/sample"
    assert table["Aggregate FLOP/s\u2020"] == "0.5\u20132 TFLOP/s (10.9\u201350 % of peak)"
    assert table["Single-device FLOP/s"] == "0.5\u20131.25 TFLOP/s (25\u201350 % of peak)"
    assert table["Strong-scaling speed-up\u2020"] == (
        "1.75\u20133.5\u00d7 at 2\u20138 nodes\u2020 (efficiency 43.8\u2013100 %)")
    assert table["Weak-scaling efficiency\u2020"] == "75 % at 2 nodes\u2020"
    assert table["Arithmetic intensity"] == "20\u201340 FLOP/byte"
    assert table["Data-loading share"] == "1\u20136.25 % of step time"
    assert table["Loss (final)"] == "train 0.0312\u20130.25; validation 0.0625\u20130.5"
    assert table["Domain"].startswith("Cosmology")
    assert "Test CPU 9000, 2 CPUs, 8 GiB RAM" in table["System"]
    assert "1\u20138 nodes\u2020 (1\u20138 ranks)" in table["System"]
    assert table["Framework"] == "PyTorch 2.13.0 + Lightning 2.5.0; precision 32-true, bf16-mixed"
    assert table["DNN model"].endswith("models: small, medium")


def test_findings_sentences(full_report):
    assert_in_summary(
        full_report[1],
        "The best utilisation is 50 % of peak (1 TFLOP/s per device), reached by medium at "
        "1 node (fraction 1/4, 32-true).",
        "Data loading passes 5 % of the step time in 1 of 8 runs: small at 8\u2020 nodes "
        "(fraction 1/4, 32-true): 6.25 %.",
        "Strong-scaling efficiency drops below 50 % for small at 8\u2020 nodes (fraction 1/4, "
        "32-true): 43.8 % (speed-up 3.5\u00d7 of an ideal 8\u00d7).",
        "bf16-mixed is 2.5\u00d7 faster than 32-true per epoch (geometric mean over 1 "
        "matched configuration).")


def test_tables_3_and_6(full_report):
    assert_in_summary(
        full_report[1], "| small | 1 M | 4 MiB | 1 GFLOP | 3 GFLOP | 3 GFLOP | 1 GiB | 20 |",
        "| medium | 4 M | 16 MiB | 4 GFLOP | 12 GFLOP | 12 GFLOP | 1 GiB | 40 |",
        # Table 6: job 0 (0.384 s/epoch) against job 7 (0.1536 s/epoch).
        "| Model | Nodes | Ranks | Fraction | 32-true (s/epoch) | bf16-mixed (s/epoch) | Speed-up bf16-mixed vs 32-true |",
        "| small | 1 | 1 | 1/4 | 0.384 | 0.154 | 2.5\u00d7 |",
        "| small | 8\u2020 | 8 | 1/4 | 0.11 | n/a | n/a |")


def test_without_throughput_metrics_the_report_says_why(tmp_path):
    """A sweep run without the throughput callback: losses only, and every gap explained."""
    sweep = make_sweep(tmp_path / "sweep")
    for job in sweep.iterdir():
        if job.is_dir():
            data = json.loads((job / "metrics.json").read_text())
            data["metrics"] = {k: data["metrics"][k] for k in ("train/loss", "val/loss")}
            (job / "metrics.json").write_text(json.dumps(data))
    result = report.run(cfg_for(sweep))
    assert [p.name for p in result["figures"]] == ["loss_curves.png"]
    assert_in_summary(
        result, "| Strong-scaling speed-up\u2020 | n/a (no throughput metrics",
        "| Single-device FLOP/s | n/a (no throughput metrics",
        "Runs at several node counts recorded no throughput",
        "Speed-up figure skipped: runs at several node counts recorded no throughput.",
        "Roofline skipped",
        "| Loss (final) | train 0.0312\u20130.25; validation 0.0625\u20130.5 |")


def test_rows_read_the_names_jobs_write(tmp_path):
    """world_size comes from the config section alone; an alias no job writes is a bug."""
    record = job_metrics(*JOBS[3])  # 8 nodes
    del record["config"]["world_size"]
    record["config"]["devices"] = 2
    (tmp_path / "metrics.json").write_text(json.dumps(record))  # a single run dir
    assert collect([tmp_path])[0][0]["world_size"] == 16
    assert num({"mem_bandwidth_bytes_per_s": 1e11, "fraction": "1/4"}, "fraction") == 0.25
    for alias in ("bandwidth_bytes_per_s", "n_parameters", "param_count"):
        with pytest.raises(ContractError, match=alias):
            num({alias: 1.0}, alias)


def test_gpu_system_description():
    rows = [{"status": "complete", "gpu_name": "NVIDIA H100", "gpu_mem_bytes": 80 * 2**30,
             "n_gpus": 4, "cpu_model": "Xeon", "n_cpus": 64, "mem_bytes": 512 * 2**30,
             "hostname": h, "devices": 4, "num_nodes": 2, "world_size": 8, "emulated": False}
            for h in ("n1", "n2")]
    assert describe_system(rows) == (
        "4 \u00d7 NVIDIA H100 (80 GiB) per node; host Xeon, 64 CPUs, 512 GiB RAM; "
        "2 hosts; 2 nodes (8 ranks)")


def test_figures_are_valid_pngs(full_report):
    _, result = full_report
    for path in result["figures"]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.size[0] >= 600 and img.size[1] >= 400, path
        assert f"![{path.name}]({path.name})" in result["summary"].read_text()


def test_partial_sweep_still_reports(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    add_broken_jobs(sweep)
    (sweep / "multirun.yaml").write_text(MULTIRUN_3x4)
    result = report.run(cfg_for(sweep))
    rows = {r["job"]: r for r in read_csv(result["runs_csv"])}
    assert len(rows) == 12
    assert rows["8"]["status"] == "failed" and rows["8"]["error"] == "RuntimeError: out of memory"
    assert rows["9"]["status"] == "failed" and rows["9"]["error"] == "ValueError: bad genotype"
    assert rows["10"]["status"] == "missing"
    assert rows["11"]["status"] == "failed" and "unreadable metrics.json" in rows["11"]["error"]
    # The failed job's numbers stay out of the ranges and scaling.
    assert float(rows["3"]["scaling_efficiency"]) == 0.4375
    text = result["summary"].read_text()
    assert "12 jobs: 8 complete, 3 failed, 1 missing metrics.json." in text
    assert "Aggregate FLOP/s\u2020 | 0.5\u20132 TFLOP/s" in text
    assert "never started" not in text  # all 12 jobs of multirun.yaml have a dir
    assert "no metrics.json (in flight or killed); overrides: model=large trainer.num_nodes=8" in text
    assert len(result["figures"]) == 6 and all(p.stat().st_size > 0 for p in result["figures"])


def test_unstarted_jobs_are_counted_from_multirun_yaml(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    (sweep / "multirun.yaml").write_text(MULTIRUN_3x4)
    text = report.run(cfg_for(sweep, "report.figures=false"))["summary"].read_text()
    assert f"{sweep}: 8 of 12 jobs have a directory; 4 never started." in text


def test_no_bandwidth_skips_roofline_with_note(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", bandwidth=False)
    result = report.run(cfg_for(sweep))
    assert "roofline.png" not in {p.name for p in result["figures"]}
    assert "Roofline skipped: no run recorded mem_bandwidth_bytes_per_s" in result["summary"].read_text()


def test_several_sweeps_and_out_dir(tmp_path):
    a, b = make_sweep(tmp_path / "a"), make_sweep(tmp_path / "b")
    out = tmp_path / "combined"
    result = report.run(cfg_for([a, b], f"report.out_dir={out}", "report.figures=false"))
    assert result["summary"] == out / "summary.md" and result["figures"] == []
    rows = read_csv(result["runs_csv"])
    assert len(rows) == 16 and {r["run_id"] for r in rows} >= {"a/0", "b/0"}
    # Repeated runs average into the baseline, so the speed-ups are unchanged.
    assert {float(r["speedup"]) for r in rows if r["job"] == "3"} == {3.5}
    assert not (a / "report").exists()


def test_bad_input_names_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ReportError, match=str(missing)):
        report.run(cfg_for(missing))
    empty = tmp_path / "empty"
    (empty / "report").mkdir(parents=True)  # an old report dir is not a job
    with pytest.raises(ReportError, match=f"no job found in sweep dir {empty}"):
        report.run(cfg_for(empty))


def test_cli(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    add_broken_jobs(sweep)
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(REPO / "report.py"), f"sweep_dir={sweep}"],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(sweep / "report" / "summary.md")
    assert (sweep / "report" / "runs.csv").is_file()
    # Hydra's own output stays outside the sweep.
    assert not (sweep / ".hydra").exists() and not list(sweep.glob("*.log"))
    assert (tmp_path / "outputs" / "report").is_dir()

    bad = subprocess.run([sys.executable, str(REPO / "report.py"), f"sweep_dir={tmp_path}/nope"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"report.py: error: sweep dir does not exist: {tmp_path}/nope"
