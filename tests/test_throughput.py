"""ThroughputMonitor in real (tiny) Lightning runs on CPU."""

import csv
import json
import time

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from src.callbacks.throughput import ThroughputMonitor

C, D, B, N_PARAMS = 1, 8, 4, 3
DESIGN_NAMES = [
    "flops_per_sample_forward", "flops_per_sample_train", "flops_per_sample_measured",
    "samples_per_s", "tflops_per_device", "tflops_aggregate", "mfu", "peak_flops_per_device",
    "peak_flops_source", "data_wait_frac", "step_time_s", "mem_weights_bytes",
    "mem_activations_bytes", "arithmetic_intensity",
]


def tiny_net():
    return nn.Sequential(
        nn.Conv3d(C, 4, 3, padding=1), nn.LeakyReLU(0.3), nn.MaxPool3d(2),
        nn.Flatten(), nn.Linear(4 * (D // 2) ** 3, N_PARAMS),
    )


# forward MACs of tiny_net for one sample, by hand
TINY_MACS = 4 * D**3 * C * 27 + 4 * (D // 2) ** 3 * N_PARAMS


class Cubes(Dataset):
    def __init__(self, n, sleep_s=0.0):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, C, D, D, D, generator=g)
        self.y = torch.rand(n, N_PARAMS, generator=g) * 2 - 1
        self.sleep_s = sleep_s

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if self.sleep_s:
            time.sleep(self.sleep_s)  # a slow reader
        return self.x[i], self.y[i]


class Tiny(L.LightningModule):
    def __init__(self, val_sleep_s=0.0):
        super().__init__()
        self.net = tiny_net()
        self.val_sleep_s = val_sleep_s

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        time.sleep(self.val_sleep_s)  # validation must not count as training time
        x, y = batch
        self.log("val/loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def fit(tmp_path, monitor, n=64, sleep_s=0.0, val=False, val_sleep_s=0.0, logger=False, **kw):
    torch.manual_seed(0)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, callbacks=[monitor], logger=logger,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, num_sanity_val_steps=0,
        limit_val_batches=1 if val else 0, **kw,
    )
    train = DataLoader(Cubes(n, sleep_s), batch_size=B)
    vals = DataLoader(Cubes(8), batch_size=B) if val else None
    trainer.fit(Tiny(val_sleep_s), train, vals)
    return monitor.metrics


def test_metrics_after_fit(tmp_path):
    mon = ThroughputMonitor(warmup_steps=2, window_steps=3, peak_flops=1e11, roofline=False)
    logger = CSVLogger(tmp_path, name="csv")
    m = fit(tmp_path, mon, max_steps=8, logger=logger)
    assert set(DESIGN_NAMES) <= set(m)
    assert m["flops_per_sample_forward"] == 2 * TINY_MACS
    assert m["flops_per_sample_train"] == 6 * TINY_MACS
    assert m["throughput_steps"] == 6 and m["throughput_samples"] == 6 * B
    assert m["throughput_from_warmup"] == 0
    assert m["peak_flops_source"] == "override" and m["peak_flops_per_device"] == 1e11
    assert m["samples_per_s"] > 0 and m["samples_per_s"] == m["samples_per_s_per_device"]
    assert m["step_time_s"] == pytest.approx(B / m["samples_per_s"], rel=1e-6)
    assert m["tflops_per_device"] == pytest.approx(m["samples_per_s"] * 6 * TINY_MACS / 1e12)
    assert m["tflops_aggregate"] == pytest.approx(m["tflops_per_device"])
    assert m["mfu"] == pytest.approx(m["tflops_per_device"] * 1e12 / 1e11)
    assert 0 <= m["data_wait_frac"] < 1
    n_weights = sum(p.numel() for p in tiny_net().parameters())
    assert m["mem_weights_bytes"] == m["mem_gradients_bytes"] == 4 * n_weights
    assert m["mem_optimizer_bytes"] >= 2 * 4 * n_weights  # Adam: two moments
    assert m["mem_activations_source"] == "saved_tensors"
    assert m["mem_activations_bytes"] > 4 * B * 4 * D**3  # at least the conv output
    assert m["arithmetic_intensity"] > 0
    # logged from rank 0 to the logger: per window and the totals at the end
    with open(logger.log_dir + "/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("mfu")]
    assert len(rows) == 3  # two full windows + the final totals


def test_activation_estimate_by_hand(tmp_path):
    mon = ThroughputMonitor(warmup_steps=0, window_steps=1, peak_flops=1e11, roofline=False,
                            measure_flops=False)
    m = fit(tmp_path, mon, max_steps=1)
    # autograd keeps: the input (conv weight grad), the conv output (LeakyReLU grad), the
    # LeakyReLU output and pool indices (int64) for the pool grad, the pooled output (Linear
    # weight grad). The label-side loss lives outside `net`.
    x = B * C * D**3
    conv = B * 4 * D**3
    pooled = B * 4 * (D // 2) ** 3
    expected = 4 * (x + 2 * conv + pooled) + 8 * pooled
    assert m["mem_activations_estimate_bytes"] == expected
    assert m["mem_activations_bytes"] == expected


def test_data_wait_is_seen(tmp_path):
    mon = ThroughputMonitor(warmup_steps=1, window_steps=3, peak_flops=1e11, roofline=False)
    m = fit(tmp_path, mon, n=16, sleep_s=0.02, max_steps=4)  # >= 80 ms of reading per batch
    # wait per step, whatever the (shared, noisy) CPU does to the compute part
    assert 0.075 <= m["data_wait_frac"] * m["step_time_s"] < m["step_time_s"]


class SlowLogger(CSVLogger):
    """Per-step logging that costs 30 ms: loop work between batches, not data loading."""

    delay_s = 0.03

    def log_metrics(self, metrics, step=None):
        time.sleep(self.delay_s)
        super().log_metrics(metrics, step)


def test_timed_loader_separates_data_wait_from_loop_work(tmp_path):
    from src.perf.timing import TimedDataLoader

    def run(sleep_s, logger):
        mon = ThroughputMonitor(warmup_steps=1, window_steps=4, peak_flops=1e11, roofline=False,
                                log_windows=False)
        torch.manual_seed(0)
        trainer = L.Trainer(accelerator="cpu", devices=1, callbacks=[mon], logger=logger,
                            log_every_n_steps=1, max_steps=5, limit_val_batches=0,
                            enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=tmp_path)
        loader = TimedDataLoader(Cubes(32, sleep_s), batch_size=B)
        trainer.fit(Tiny(), loader)
        assert loader.fetch_s >= 5 * B * sleep_s  # every fetch went through the counter
        return mon.metrics

    slow_log = run(0.0, SlowLogger(tmp_path))
    assert slow_log["data_wait_source"] == "loader"
    step = slow_log["step_time_s"]
    assert slow_log["loop_gap_frac"] * step >= 0.025  # the logging is between the batches...
    assert slow_log["data_wait_frac"] * step < 0.01  # ...but it is not data wait
    slow_data = run(0.01, False)  # >= 40 ms of reading per batch
    assert slow_data["data_wait_frac"] * slow_data["step_time_s"] >= 0.035


def test_monitor_overhead_is_its_own_hook_time(tmp_path):
    """monitor_overhead_frac counts the time inside the monitor's per-batch hooks: its window
    logging through a 30 ms logger shows, Lightning's own per-step logging does not."""

    def run(log_windows):
        mon = ThroughputMonitor(warmup_steps=1, window_steps=1, peak_flops=1e11, roofline=False,
                                log_windows=log_windows)
        trainer = L.Trainer(accelerator="cpu", devices=1, callbacks=[mon],
                            logger=SlowLogger(tmp_path), log_every_n_steps=1, max_steps=5,
                            limit_val_batches=0, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=tmp_path)
        trainer.fit(Tiny(), DataLoader(Cubes(32), batch_size=B))
        return mon.metrics

    log_s = SlowLogger.delay_s
    # a 30 ms log at each window edge, inside our hook; a log is timed in the window it opens,
    # so 3 of the 4 one-step windows hold one (the last edge's log comes after the run). A sleep
    # never ends early and load only adds time, so 3/4 of a log per step is a hard floor (the
    # 1e-9 is float rounding of frac x step time); unmeasured hooks would give microseconds.
    logging_windows = run(True)
    hook_per_step = logging_windows["monitor_overhead_frac"] * logging_windows["step_time_s"]
    assert hook_per_step >= 3 / 4 * log_s * (1 - 1e-9)
    quiet = run(False)  # only timestamps: microseconds, though Lightning logs (30 ms) per step
    assert quiet["loop_gap_frac"] * quiet["step_time_s"] >= 0.025
    # Lightning's per-step log, if counted, would add a whole log per step; half a log leaves
    # room for a loaded machine descheduling us inside the (microsecond) hooks
    assert 0 < quiet["monitor_overhead_frac"] * quiet["step_time_s"] < log_s / 2


def test_validation_is_not_training_time(tmp_path):
    mon = ThroughputMonitor(warmup_steps=1, window_steps=100, peak_flops=1e11, roofline=False)
    # a 0.5 s validation after batches 2, 4 and 6: all inside the (partial) measured window
    m = fit(tmp_path, mon, n=24, val=True, val_sleep_s=0.5, max_steps=6, val_check_interval=2)
    assert m["throughput_steps"] == 5  # one partial window, reported
    assert 1.5 <= m["throughput_paused_s"] < 1.5 + 5 * m["step_time_s"] + 0.5
    # counted as data wait it would be >= 1.5 s against 5 short steps
    assert m["data_wait_frac"] < 0.5


def test_multi_epoch_and_fast_dev_run(tmp_path):
    mon = ThroughputMonitor(warmup_steps=2, window_steps=4, peak_flops=1e11, roofline=False)
    m = fit(tmp_path / "a", mon, n=12, max_epochs=3)  # 3 batches per epoch, windows span epochs
    assert m["throughput_steps"] == 7
    assert m["throughput_paused_s"] > 0  # two epoch boundaries inside the measured steps

    mon = ThroughputMonitor(warmup_steps=5, window_steps=10, peak_flops=1e11, roofline=False)
    m = fit(tmp_path / "b", mon, fast_dev_run=True)
    assert m["throughput_from_warmup"] == 1  # too short to warm up: report what it has
    assert m["throughput_steps"] == 1 and m["samples_per_s"] > 0 and m["mfu"] > 0


def test_measured_peak_and_roofline(tmp_path):
    mon = ThroughputMonitor(warmup_steps=1, window_steps=2, cache_dir=str(tmp_path / "cache"),
                            bench_budget_s=0.05)
    m = fit(tmp_path, mon, max_steps=3, precision="bf16-mixed")
    assert m["peak_flops_source"] == "measured" and m["peak_flops_dtype"] == "bf16"
    assert m["peak_flops_per_device"] > 1e8
    assert m["mem_bandwidth_source"] == "measured" and m["mem_bandwidth_bytes_per_s"] > 1e8
    assert list((tmp_path / "cache").iterdir())  # cached for the next run on this machine


def test_bad_arguments():
    with pytest.raises(ValueError):
        ThroughputMonitor(warmup_steps=-1)
    with pytest.raises(ValueError):
        ThroughputMonitor(window_steps=0)
    for bad in ({"max_cv": -0.1}, {"min_windows": 0}, {"peak_repeats": 0},
                {"contention": {"max_other_cpu": 0.2}}):
        with pytest.raises(ValueError, match="callbacks.throughput"):
            ThroughputMonitor(**bad)


class DumpingMonitor(ThroughputMonitor):
    """Writes rank 0's metrics to a file: forked ranks are other processes."""

    def __init__(self, out, **kw):
        super().__init__(**kw)
        self.out = str(out)

    def on_train_end(self, trainer, pl_module):
        super().on_train_end(trainer, pl_module)
        if trainer.is_global_zero:
            with open(self.out, "w") as f:  # the world size is metrics.json's "config"
                json.dump({**self.metrics, "world_size": trainer.world_size}, f)


@pytest.mark.timeout(120)  # a forked rank that hangs must not stall the suite
def test_two_ranks_reduce(tmp_path):
    out = tmp_path / "m.json"
    mon = DumpingMonitor(out, warmup_steps=1, window_steps=2, peak_flops=1e11, roofline=False)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_fork", callbacks=[mon], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, limit_val_batches=0, max_steps=5,
    )
    trainer.fit(Tiny(), DataLoader(Cubes(64), batch_size=B))
    m = json.loads(out.read_text())
    assert m["world_size"] == 2
    assert m["throughput_steps"] == 4 and m["throughput_samples"] == 2 * 4 * B  # both ranks
    assert m["samples_per_s"] == pytest.approx(2 * m["samples_per_s_per_device"])
    assert m["tflops_aggregate"] == pytest.approx(2 * m["tflops_per_device"])
    assert m["mfu"] == pytest.approx(m["tflops_per_device"] * 1e12 / 1e11)
