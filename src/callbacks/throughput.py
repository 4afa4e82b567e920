"""ThroughputMonitor: achieved FLOP/s, MFU, data-wait share and memory of a training run.

The Lightning side of the measurement: its hooks feed the timing model of src.perf.timing
(windows, data wait, pauses; described there and in docs/perf.md), count the run's cost once
(src.perf.cost) and look up the device's peaks (src.perf.peak). What needs the trainer's
strategy stays here: the cross-rank reduction at each window edge (samples/s summed, the rest
averaged, memory maxed). Values are logged from rank 0 to every logger, and the run totals
land in `.metrics` (keys: the src/contract.py metric names), which src/training/fit.py merges
into metrics.json. A run too short for a measured window (fast_dev_run) reports its warm-up steps
instead, flagged by `throughput_from_warmup = 1`.

Believability (docs/perf.md): every window's samples/s is kept and the run reports their
spread and `measurement_stable`; the machine leader watches what else used the machine during
the measured windows (src.perf.contention) and the run says when it was contended; a best
window above the device peak makes the leaders measure the peak again, and an MFU above 1 that
survives that is flagged (`peak_exceeded`) and said aloud.
"""

from __future__ import annotations

import logging
import time

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from src.dist import job_root_pid, machine_leader
from src.errors import ConfigError
from src.perf import peak as perf_peak
from src.perf.contention import ContentionWatch, gpu_others
from src.perf.cost import batch_input, run_memory, static_cost
from src.perf.timing import (
    WARMUP_END,
    WINDOW_END,
    StepClock,
    Totals,
    throughput_figures,
    window_figures,
)

log = logging.getLogger(__name__)


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
        max_cv: windows' samples/s coefficient of variation above which a run is unstable.
        min_windows: fewer measured windows than this cannot show a run is stable.
        contention: `src.perf.contention.ContentionWatch` thresholds (max_other_cpu_frac,
            max_steal_frac, min_interval_s); the first also marks a peak measured under load.
        peak_repeats: at least this many timed matmuls behind a measured peak (its median).
    """

    def __init__(self, warmup_steps: int = 2, window_steps: int = 10,
                 peak_flops: float | None = None, cache_dir: str | None = None,
                 bench_budget_s: float = 0.4, measure_flops: bool = True,
                 roofline: bool = True, log_windows: bool = True, max_cv: float = 0.1,
                 min_windows: int = 3, contention: dict | None = None, peak_repeats: int = 5):
        super().__init__()
        contention = dict(contention or {})
        if warmup_steps < 0 or window_steps < 1 or max_cv < 0 or min_windows < 1 \
                or peak_repeats < 1 or set(contention) - CONTENTION_KEYS:
            raise ConfigError(
                "callbacks.throughput: need warmup_steps >= 0, window_steps >= 1, max_cv >= 0, "
                f"min_windows >= 1, peak_repeats >= 1 and contention keys among "
                f"{sorted(CONTENTION_KEYS)}; got {warmup_steps}, {window_steps}, {max_cv}, "
                f"{min_windows}, {peak_repeats}, {sorted(contention)}")
        self.warmup_steps, self.window_steps = int(warmup_steps), int(window_steps)
        self.max_cv, self.min_windows = float(max_cv), int(min_windows)
        self._contention = contention
        max_load = float(contention.get("max_other_cpu_frac", 0.2))
        # the arguments of src.perf.peak.device_peaks, as configured
        self._peak_args = {"override": peak_flops, "cache_dir": cache_dir,
                           "budget_s": bench_budget_s, "roofline": roofline,
                           "min_repeats": int(peak_repeats), "max_load": max_load}
        self.measure_flops, self.log_windows = measure_flops, log_windows
        self.metrics: dict[str, float | int | str] = {}
        self._reset()

    def _reset(self) -> None:
        self.metrics = {}
        self._static: dict[str, float | int | str] = {}  # per-run constants (flops, memory)
        self._clock = StepClock(self.warmup_steps, self.window_steps, sync=self._sync)
        self._counted, self._batch_size = False, 1
        self._device, self._dtype = torch.device("cpu"), "fp32"
        self._rates: list[float] = []  # this rank's samples/s of every full window
        self._watch: ContentionWatch | None = None  # on the machine leader only

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
                # a follower only reads what its leader just measured, loaded or not
                args = self._peak_args if leader else {**self._peak_args,
                                                       "max_load": float("inf")}
                self._static.update(perf_peak.device_peaks(self._device, self._dtype, **args))
            if trainer.world_size > 1:
                trainer.strategy.barrier("throughput_peak")
        if leader:
            self._watch = ContentionWatch(job_root_pid(), **self._contention)

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
        elif edge == WINDOW_END:
            closed = self._clock.closed
            self._rates.append(closed.samples / closed.time_s if closed.time_s > 0 else 0.0)
            if self.log_windows:
                self._log(trainer, self._reduce(trainer, pl_module, closed))
        if self._watch is not None and self._clock.measuring:
            # a reading scans the process table: not training, and not the per-step hook
            # cost either, so it is a pause of the window it falls in
            t0 = time.perf_counter()
            if self._watch.first is None:
                self._watch.start()  # the first measured window opens
            else:
                self._watch.tick()
            self._clock.pause_since(t0)
            entered += time.perf_counter() - t0
        self._clock.after_batch(entered)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        totals, from_warmup = self._clock.finish(exact_last_end=self._device.type != "cuda")
        metrics: dict[str, float | int | str] = dict(self._static)
        if totals.steps > 0:
            metrics.update(self._reduce(trainer, pl_module, totals))
            metrics["throughput_from_warmup"] = from_warmup
        metrics.update(self._spread(trainer, pl_module))
        metrics.update(self._contended(trainer, pl_module))
        self._check_peak(trainer, metrics)
        metrics.update(self._memory(trainer, pl_module))
        self.metrics = metrics
        self._log(trainer, metrics)
        if trainer.is_global_zero:
            warn_implausible(metrics)

    # ---- cross-rank reduction and logging -----------------------------------------------------

    def _reduce(self, trainer: Trainer, pl_module: LightningModule, t: Totals) -> dict:
        """Cross-rank values of one stretch of steps (every rank must call this)."""
        world = max(int(trainer.world_size), 1)
        return throughput_figures(self._sum(trainer, pl_module, t.local_values()), world,
                                  flops_train=self._static.get("flops_per_sample_train"),
                                  peak=self._static.get("peak_flops_per_device"))

    def _sum(self, trainer: Trainer, pl_module: LightningModule, values: list[float]) -> list:
        """`values` summed over every rank (every rank must call this)."""
        vec = torch.tensor(values, dtype=torch.float64, device=pl_module.device)
        if trainer.world_size > 1:
            vec = trainer.strategy.reduce(vec, reduce_op="sum")
        return vec.tolist()

    def _spread(self, trainer: Trainer, pl_module: LightningModule) -> dict:
        """Every full window's samples/s over all ranks (the ranks ran the same windows)."""
        rates = self._sum(trainer, pl_module, self._rates) if self._rates else []
        return window_figures(rates, max(int(trainer.world_size), 1),
                              self._static.get("flops_per_sample_train"),
                              self._static.get("peak_flops_per_device"),
                              self.max_cv, self.min_windows)

    def _contended(self, trainer: Trainer, pl_module: LightningModule) -> dict:
        """What else used the machines: each leader's sums, added over the job's machines."""
        watch = self._watch
        if watch is not None:
            watch.tick(force=True)
        mine = watch.sums() if watch is not None else [0.0] * 5
        totals = self._sum(trainer, pl_module, mine)
        if watch is None or not totals[3]:
            return {}
        gpu = None
        if self._device.type == "cuda" and watch.last is not None:
            gpu = gpu_others(self._device.index or 0, watch.last.ours)
        return watch.summary(totals, gpu)

    def _check_peak(self, trainer: Trainer, metrics: dict) -> None:
        """A best window above the peak means the peak is wrong: the leaders measure it again
        (every rank sees the same reduced numbers, so all take this branch or none)."""
        best, peak = metrics.get("tflops_per_device_best"), metrics.get("peak_flops_per_device")
        if not best or not peak or best * 1e12 <= peak:
            return
        if metrics.get("peak_flops_source") == "measured":
            leader = machine_leader(trainer.global_rank, trainer.local_rank)
            if leader:
                self._static.update(perf_peak.device_peaks(
                    self._device, self._dtype, **{**self._peak_args, "roofline": False},
                    force=True))
                metrics.update({k: v for k, v in self._static.items() if k.startswith("peak_")})
            if trainer.world_size > 1:
                trainer.strategy.barrier("throughput_peak_again")
        peak = metrics["peak_flops_per_device"]
        for key, rate in (("mfu", "tflops_per_device"), ("mfu_best_window", "tflops_per_device_best")):
            if metrics.get(rate) is not None:
                metrics[key] = metrics[rate] * 1e12 / peak
        metrics["peak_exceeded"] = best * 1e12 > peak

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


CONTENTION_KEYS = frozenset(("max_other_cpu_frac", "max_steal_frac", "min_interval_s"))


def warn_implausible(m: dict) -> None:
    """Say on the console what makes a run's numbers doubtful (metrics.json keeps the flags)."""
    if m.get("measurement_contended"):
        log.warning("throughput measured under contention: %s", m.get("contention_seen"))
    if m.get("measurement_note") and m.get("throughput_windows"):
        log.warning("throughput not shown stable: %s (callbacks.throughput.max_cv, "
                    "min_windows)", m["measurement_note"])
    if m.get("peak_exceeded"):
        log.warning("the best window ran at %.3g FLOP/s per device, above the peak %.3g (%s): "
                    "MFU above 1 means the peak is wrong; set perf.peak_flops",
                    m["tflops_per_device_best"] * 1e12, m["peak_flops_per_device"],
                    m.get("peak_flops_source"))
