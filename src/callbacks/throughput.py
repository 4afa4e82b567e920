"""ThroughputMonitor: achieved FLOP/s, MFU, data-wait share and memory of a training run.

The Lightning side of the measurement: its hooks feed the timing model of src.perf.timing
(windows, data wait, pauses; described there and in docs/perf.md), count the run's cost once
(src.perf.cost) and look up the device's peaks (src.perf.peak). What needs the trainer's
strategy stays here: the cross-rank reduction at each window edge (samples/s summed, the rest
averaged, memory maxed). Values are logged from rank 0 to every logger, and the run totals
land in `.metrics` (keys: the src/contract.py metric names), which src/training/fit.py merges
into metrics.json. A run too short for a measured window (fast_dev_run) reports its warm-up steps
instead, flagged by `throughput_from_warmup = 1`.
"""

from __future__ import annotations

import time

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from src.dist import machine_leader
from src.errors import ConfigError
from src.perf import peak as perf_peak
from src.perf.cost import batch_input, run_memory, static_cost
from src.perf.timing import WARMUP_END, WINDOW_END, StepClock, Totals, throughput_figures


class ThroughputMonitor(Callback):
    """Measure samples/s, TFLOP/s, MFU, data-wait share, step time and memory.

    Args:
        warmup_steps: train batches ignored before the first window (compilation,
            allocator and cuDNN autotuning settle there).
        window_steps: batches per measured window; metrics are logged after each window.
        peak_flops: per-device peak FLOP/s override (the `perf.peak_flops` config value).
        cache_dir: where measured CPU/GPU peaks and bandwidth are cached per machine.
        bench_budget_s: seconds per micro-benchmark (peak per dtype, triad) when not cached.
        measure_flops: also run torch's FlopCounterMode for `flops_per_sample_measured`.
        roofline: also probe memory bandwidth (triad, cached) for the roofline.
        log_windows: log every window's values to the loggers (the totals are always kept).
    """

    def __init__(self, warmup_steps: int = 2, window_steps: int = 10,
                 peak_flops: float | None = None, cache_dir: str | None = None,
                 bench_budget_s: float = 0.4, measure_flops: bool = True,
                 roofline: bool = True, log_windows: bool = True):
        super().__init__()
        if warmup_steps < 0 or window_steps < 1:
            raise ConfigError(f"callbacks.throughput: need warmup_steps >= 0 and window_steps >= 1, "
                              f"got {warmup_steps} and {window_steps}")
        self.warmup_steps, self.window_steps = int(warmup_steps), int(window_steps)
        # the arguments of src.perf.peak.device_peaks, as configured
        self._peak_args = {"override": peak_flops, "cache_dir": cache_dir,
                           "budget_s": bench_budget_s, "roofline": roofline}
        self.measure_flops, self.log_windows = measure_flops, log_windows
        self.metrics: dict[str, float | int | str] = {}
        self._reset()

    def _reset(self) -> None:
        self.metrics = {}
        self._static: dict[str, float | int | str] = {}  # per-run constants (flops, memory)
        self._clock = StepClock(self.warmup_steps, self.window_steps, sync=self._sync)
        self._counted, self._batch_size = False, 1
        self._device, self._dtype = torch.device("cpu"), "fp32"

    def _sync(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    # ---- fit-level hooks --------------------------------------------------------------------

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset()
        self._device = pl_module.device
        self._dtype = perf_peak.dtype_key(trainer.precision, self._device.type)
        # One rank per machine benchmarks (ranks of one machine would contend); the others then
        # read its cached numbers. Emulated nodes share one machine: only global rank 0.
        leader = machine_leader(trainer.global_rank, trainer.local_rank)
        for turn in (0, 1):
            if leader == (turn == 0):
                self._static.update(perf_peak.device_peaks(self._device, self._dtype,
                                                           **self._peak_args))
            if trainer.world_size > 1:
                trainer.strategy.barrier("throughput_peak")

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._static["data_wait_source"] = self._clock.start_epoch(trainer.train_dataloader)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._clock.start_validation()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._clock.end_validation()

    # ---- batch hooks (keep these cheap: they run every step) --------------------------------

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch,
                             batch_idx: int) -> None:
        now = self._clock.start_batch()
        x = batch_input(batch)
        self._batch_size = int(x.shape[0]) if x is not None and x.dim() > 0 else 1
        if not self._counted:
            self._counted = True
            net = getattr(pl_module, "net", pl_module)
            self._static.update(static_cost(net, x, self._dtype, self.measure_flops))
            self._clock.pause_since(now)
        else:
            self._clock.hook_since(now)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        entered = time.perf_counter()
        if self._clock.window is None:
            return
        edge = self._clock.end_batch(self._batch_size)
        if edge == WARMUP_END and self._device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self._device)
        elif edge == WINDOW_END and self.log_windows:
            self._log(trainer, self._reduce(trainer, pl_module, self._clock.closed))
        self._clock.after_batch(entered)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        totals, from_warmup = self._clock.finish(exact_last_end=self._device.type != "cuda")
        metrics: dict[str, float | int | str] = dict(self._static)
        if totals.steps > 0:
            metrics.update(self._reduce(trainer, pl_module, totals))
            metrics["throughput_from_warmup"] = from_warmup
        metrics.update(self._memory(trainer, pl_module))
        self.metrics = metrics
        self._log(trainer, metrics)

    # ---- cross-rank reduction and logging -----------------------------------------------------

    def _reduce(self, trainer: Trainer, pl_module: LightningModule, t: Totals) -> dict:
        """Cross-rank values of one stretch of steps (every rank must call this)."""
        world = max(int(trainer.world_size), 1)
        vec = torch.tensor(t.local_values(), dtype=torch.float64, device=pl_module.device)
        if world > 1:
            vec = trainer.strategy.reduce(vec, reduce_op="sum")
        return throughput_figures(vec.tolist(), world,
                                  flops_train=self._static.get("flops_per_sample_train"),
                                  peak=self._static.get("peak_flops_per_device"))

    def _memory(self, trainer: Trainer, pl_module: LightningModule) -> dict:
        """Optimizer state of this rank; activations: the largest of any rank."""
        opt_bytes, act, source = run_memory(self._static, trainer.optimizers, self._device)
        m: dict[str, float | str] = {"mem_optimizer_bytes": opt_bytes}
        if act is not None:
            vec = torch.tensor([float(act)], dtype=torch.float64, device=pl_module.device)
            if trainer.world_size > 1:
                vec = trainer.strategy.reduce(vec, reduce_op="max")
            m["mem_activations_bytes"] = vec.item()
            m["mem_activations_source"] = source
        return m

    def _log(self, trainer: Trainer, values: dict) -> None:
        if not trainer.is_global_zero:
            return
        numeric = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
        for logger in trainer.loggers:
            logger.log_metrics(numeric, step=trainer.global_step)

    def state_dict(self) -> dict:
        return {}  # measurements describe one process's run; nothing to resume
