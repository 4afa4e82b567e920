"""Numbers a user can believe: window spread, contention from /proc, peaks a job cannot beat."""

import os
import subprocess
import sys

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from src.callbacks.throughput import ThroughputMonitor
from src.perf import contention
from src.perf.timing import window_figures
from src.util.stats import spread

# ---- pure pieces ----------------------------------------------------------------------------


def test_spread_of_windows():
    assert spread([]) is None
    s = spread([2.0, 4.0, 6.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (4.0, 2.0, 6.0, 3)
    assert s["cv"] == pytest.approx(0.5)  # sample sd 2 / mean 4
    assert spread([5.0])["cv"] == 0.0


def test_window_figures_judge_stability():
    steady = window_figures([10.0, 10.2, 9.9, 10.1], world=2, flops_train=1e9, peak=1e10,
                            max_cv=0.1, min_windows=3)
    assert steady["measurement_stable"] is True and steady["throughput_windows"] == 4
    assert steady["samples_per_s_median"] == pytest.approx(10.05)
    # the best window per device: 10.2 samples/s over 2 ranks at 1 GFLOP each
    assert steady["tflops_per_device_best"] == pytest.approx(5.1e-3)
    assert steady["mfu_best_window"] == pytest.approx(0.51)
    noisy = window_figures([10.0, 2.0, 10.0, 9.0], 1, max_cv=0.1, min_windows=3)
    assert noisy["measurement_stable"] is False and noisy["samples_per_s_cv"] > 0.1
    few = window_figures([10.0, 10.0], 1, max_cv=0.1, min_windows=3)
    assert few["measurement_stable"] is False and few["samples_per_s_cv"] == 0.0
    assert "fewer than 3" in few["measurement_note"] and "CV" in noisy["measurement_note"]
    assert steady["measurement_note"] == ""
    assert window_figures([], 1)["measurement_stable"] is False


def _fake_proc(root, busy, steal, procs, load=1.5):
    """A /proc with a first /proc/stat line and (pid, name, ppid, CPU ticks) processes."""
    root.mkdir(exist_ok=True)
    (root / "stat").write_text(f"cpu  {busy} 0 0 1000 0 0 0 {steal} 0 0\ncpu0 1 2 3\n")
    (root / "loadavg").write_text(f"{load} 0.5 0.4 1/80 123\n")
    for pid, name, ppid, ticks in procs:
        (root / str(pid)).mkdir(exist_ok=True)
        # name with a space and a parenthesis: the parser must take the last ')'
        (root / str(pid) / "stat").write_text(
            f"{pid} ({name}) S {ppid} 1 1 0 -1 0 0 0 0 0 {ticks} 0 0 0 20 0 1 0 0\n")


def test_contention_from_proc(tmp_path, monkeypatch):
    monkeypatch.setattr(contention, "_TICK", 100)
    proc = tmp_path / "proc"
    ours = [(10, "python", 1, 0), (11, "pt worker (1)", 10, 0)]
    _fake_proc(proc, busy=0, steal=0, procs=[*ours, (20, "stress", 1, 0)])
    a = contention.sample(10, proc)
    assert a.ours == {10, 11} and set(a.others) == {20}
    # one second later: the job took 1.2 CPU s (both processes), stress 0.9, steal 0.1
    _fake_proc(proc, busy=210, steal=10, load=3.0,
               procs=[(10, "python", 1, 100), (11, "pt worker (1)", 10, 20), (20, "stress", 1, 90)])
    b = contention.sample(10, proc)
    b.t = a.t + 1.0
    iv = contention.interval(a, b, n_cpus=2)
    assert iv["other_cpu_s"] == pytest.approx(0.9)
    assert iv["other_cpu_frac"] == pytest.approx(0.45) and iv["steal_frac"] == pytest.approx(0.05)
    assert iv["load1"] == 3.0
    # the watch names the busiest other process, also one that ended before the last reading
    _fake_proc(proc, busy=0, steal=0, procs=[*ours, (20, "stress", 1, 0)])
    watch = contention.ContentionWatch(root=10, n_cpus=2, min_interval_s=0.0, proc=proc)
    watch.start()
    _fake_proc(proc, busy=210, steal=10, procs=[*ours, (20, "stress", 1, 90), (21, "cc1", 1, 30)])
    watch.tick(force=True)
    (proc / "20" / "stat").unlink()
    (proc / "20").rmdir()
    watch.tick(force=True)
    watch.first.t = watch.last.t - 1.0
    assert watch.top() == [("stress", 20, pytest.approx(0.9)), ("cc1", 21, pytest.approx(0.3))]


def test_contention_watch_judges_intervals(tmp_path):
    watch = contention.ContentionWatch(root=1, n_cpus=2, max_other_cpu_frac=0.2)
    watch.intervals = [
        {"wall_s": 1.0, "other_cpu_s": 0.1, "other_cpu_frac": 0.05, "steal_frac": 0.0,
         "load1": 1.0},
        {"wall_s": 1.0, "other_cpu_s": 1.0, "other_cpu_frac": 0.5, "steal_frac": 0.0,
         "load1": 2.5},
    ]
    m = watch.summary()
    assert m["measurement_contended"] is True and m["contention_intervals_busy"] == 1
    assert m["contention_other_cpu_frac"] == pytest.approx(1.1 / 4)
    assert m["contention_other_cpu_frac_max"] == 0.5 and m["contention_load_avg"] == 2.5
    assert "1 of 2 intervals" in m["contention_seen"]
    watch.intervals = watch.intervals[:1]
    assert watch.summary()["measurement_contended"] is False


# ---- a real short job with a competitor during part of its windows ---------------------------

FEATURES = 4096


class Dense(L.LightningModule):
    """Big enough matmuls that a window takes tens of milliseconds on two cores."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, 1024), nn.ReLU(), nn.Linear(1024, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def start_competitor(n_procs: int) -> list[int]:
    """CPU-bound processes outside this process's tree (their shell parent exits at once, so
    they belong to init), each ending by itself within a minute in any case."""
    loop = "import time\nend = time.time() + 60\nwhile time.time() < end: pass"
    out = subprocess.run(
        ["sh", "-c", 'for i in $(seq "$1"); do "$0" -c "$2" >/dev/null 2>&1 & echo $!; done',
         sys.executable, str(n_procs), loop],
        capture_output=True, text=True, check=True, timeout=30, stdin=subprocess.DEVNULL)
    return [int(p) for p in out.stdout.split()]


class CompetitorDuring(L.Callback):
    """Runs the competitor from train batch `start` to batch `stop`."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop, self.pids, self.started = start, stop, [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.start:
            self.pids = start_competitor(os.cpu_count() or 2)
            self.started = list(self.pids)
        elif batch_idx == self.stop:
            self.kill()

    def kill(self):
        for pid in self.pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        self.pids = []


@pytest.mark.timeout(300)
def test_competing_process_is_seen_in_spread_and_contention(tmp_path):
    mon = ThroughputMonitor(warmup_steps=2, window_steps=3, peak_flops=1e13, roofline=False,
                            measure_flops=False,
                            contention={"min_interval_s": 0.05, "max_other_cpu_frac": 0.2})
    competitor = CompetitorDuring(start=14, stop=26)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(40 * 64, FEATURES, generator=g), torch.rand(40 * 64, 3))
    trainer = L.Trainer(accelerator="cpu", devices=1, callbacks=[mon, competitor], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, max_steps=38)
    try:
        trainer.fit(Dense(), DataLoader(data, batch_size=64))
    finally:
        competitor.kill()
    m = mon.metrics
    assert m["throughput_windows"] == 12
    assert m["samples_per_s_min"] < m["samples_per_s_median"] <= m["samples_per_s_max"]
    assert m["samples_per_s_cv"] > 0.1 and m["measurement_stable"] is False
    assert m["measurement_contended"] is True and m["contention_intervals_busy"] >= 1
    # the busiest processes outside the job are named; the competitor is among those seen
    # (on a machine busy with more than this test, others may be busier)
    assert "busiest: " in m["contention_seen"]
    # named even when they ended before the last reading
    assert set(competitor.started) <= {pid for _, pid, _ in mon._watch.top(k=1000)}
    assert m["contention_other_cpu_frac_max"] > 0.2


def short_fit(tmp_path, mon: ThroughputMonitor) -> dict:
    """Seven steps of the dense module: warm-up and three 2-step windows."""
    data = TensorDataset(torch.randn(16 * 8, FEATURES), torch.rand(16 * 8, 3))
    trainer = L.Trainer(accelerator="cpu", devices=1, callbacks=[mon], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, max_steps=7)
    trainer.fit(Dense(), DataLoader(data, batch_size=8))
    return mon.metrics


def test_a_best_window_above_the_peak_is_flagged(tmp_path):
    """With a peak override (nothing to measure again) far below what the job reaches."""
    mon = ThroughputMonitor(warmup_steps=1, window_steps=2, peak_flops=1.0, roofline=False)
    m = short_fit(tmp_path, mon)
    assert m["peak_exceeded"] is True and m["mfu"] > 1 and m["mfu_best_window"] >= m["mfu"]


def test_a_measured_peak_beaten_by_a_job_is_measured_again(tmp_path):
    from src.perf import peak

    cache = tmp_path / "cache"
    low = {"value": 1.0, "min": 1.0, "max": 1.0, "repeats": 5, "other_cpu_frac": 0.0,
           "measured_at": "2026-01-01T00:00:00+00:00"}
    peak._write_cache(peak._cache_path(cache, "cpu"), {"matmul_fp32": low})
    mon = ThroughputMonitor(warmup_steps=1, window_steps=2, cache_dir=str(cache),
                            bench_budget_s=0.05, roofline=False)
    m = short_fit(tmp_path, mon)
    assert m["peak_flops_remeasured"] == "exceeded by a job"
    assert m["peak_flops_per_device"] > 1e6  # a real matmul rate replaced the bogus one
    assert m["mfu"] == pytest.approx(m["tflops_per_device"] * 1e12 / m["peak_flops_per_device"])
    assert m["peak_exceeded"] is (m["mfu_best_window"] > 1)


def test_other_processes_on_the_gpu_through_nvml(monkeypatch):
    """gpu_others with a stand-in for pynvml (no GPU here): our own pids are left out."""
    import types

    procs = [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=2**30),
             types.SimpleNamespace(pid=999999, usedGpuMemory=3 * 2**20)]
    fake = types.SimpleNamespace(nvmlInit=lambda: None,
                                 nvmlDeviceGetHandleByIndex=lambda i: f"gpu{i}",
                                 nvmlDeviceGetComputeRunningProcesses=lambda h: procs)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert contention.gpu_others(0, ours={os.getpid()}) == [("?", 999999, 3 * 2**20)]
    watch = contention.ContentionWatch(root=1, n_cpus=2)
    watch.intervals = [{"wall_s": 1.0, "other_cpu_s": 0.0, "other_cpu_frac": 0.0,
                        "steal_frac": 0.0, "load1": 0.5}]
    m = watch.summary(gpu=[("python", 42, 2**30)])
    assert m["measurement_contended"] is True and m["contention_gpu_processes"] == 1
    assert "other processes on the GPU: python (pid 42, 1024 MiB)" in m["contention_seen"]
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: nothing claimed
    assert contention.gpu_others(0, ours=set()) is None
