"""ThroughputMonitor: achieved FLOP/s, MFU, data-wait share and memory of a training run.

Timing model (host clock, one record per train batch):
- a step's *data wait* is the time the loop spends blocked getting the batch. A loader with a
  `fetch_s` counter (src.datamodules.cosmo.TimedDataLoader: time inside `next()`) gives it
  exactly (`data_wait_source = "loader"`); any other loader falls back to the whole gap from
  the end of the previous batch to the start of this one, which also holds the loop's own
  per-step work such as logging (`data_wait_source = "gap"`, an upper bound). The gap is
  reported as `loop_gap_frac` either way;
- a *window* is `window_steps` consecutive steps after `warmup_steps`; its time is the wall
  clock between its two edges minus pauses that are not training (validation, epoch ends,
  checkpointing, our own FLOP counting). On GPU the device is synchronised only at window
  edges, so the per-window sums are exact while no step is slowed down.
- throughput uses the analytic Eq. 1 cost (`flops_per_sample_train`).

Values are reduced across ranks at each window edge (samples/s summed, the rest averaged,
memory maxed), logged from rank 0 to every logger, and the run totals land in `.metrics`
(keys: the DESIGN.md metric names), which train.py merges into metrics.json. A run too
short for a measured window (fast_dev_run) reports its warm-up steps instead, flagged by
`throughput_from_warmup = 1`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from src.dist import machine_leader
from src.perf import flops as perf_flops
from src.perf import memory as perf_memory
from src.perf import peak as perf_peak

log = logging.getLogger(__name__)



@dataclass
class _Window:
    t0: float
    steps: int = 0
    samples: int = 0
    wait_s: float = 0.0
    paused_s: float = 0.0
    fetch0: float | None = None  # the loader's fetch_s when the window opened
    fetched_s: float | None = None  # time blocked in the loader's next() inside the window
    hook_s: float = 0.0  # time inside this monitor's own per-batch hooks

    def elapsed(self, now: float) -> float:
        return max(now - self.t0 - self.paused_s, 1e-12)


@dataclass
class _Totals:
    steps: int = 0
    samples: int = 0
    time_s: float = 0.0
    wait_s: float = 0.0
    gap_s: float = 0.0
    paused_s: float = 0.0
    hook_s: float = 0.0

    def add(self, w: _Window, elapsed: float) -> None:
        self.steps += w.steps
        self.samples += w.samples
        self.time_s += elapsed
        self.wait_s += w.wait_s if w.fetched_s is None else w.fetched_s
        self.gap_s += w.wait_s
        self.paused_s += w.paused_s
        self.hook_s += w.hook_s


def _batch_input(batch):
    """The input tensor of a batch: (x, y), {"x": ...} or a bare tensor."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict):
        for key in ("x", "input", "inputs"):
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
    return None


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
            raise ValueError("need warmup_steps >= 0 and window_steps >= 1")
        self.warmup_steps = int(warmup_steps)
        self.window_steps = int(window_steps)
        self.peak_flops_override = peak_flops
        self.cache_dir = cache_dir
        self.bench_budget_s = bench_budget_s
        self.measure_flops = measure_flops
        self.roofline = roofline
        self.log_windows = log_windows
        self.metrics: dict[str, float | int | str] = {}
        self._reset()

    # ---- state ----------------------------------------------------------------------------

    def _reset(self) -> None:
        self.metrics = {}
        self._static: dict[str, float | int | str] = {}  # per-run constants (flops, memory)
        self._step = 0
        self._window: _Window | None = None
        self._measuring = False
        self._warmup = _Totals()
        self._totals = _Totals()
        self._loader = None  # the train loader, read for its fetch_s counter
        self._prev_end: float | None = None
        self._pause = 0.0  # non-training time since the previous batch ended
        self._val_t0: float | None = None
        self._counted = False
        self._batch_size = 1
        self._device = torch.device("cpu")
        self._dtype = "fp32"

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
                self._measure_peaks()
            if trainer.world_size > 1:
                trainer.strategy.barrier("throughput_peak")

    def _measure_peaks(self) -> None:
        value, source = perf_peak.peak_flops(
            self._device, self._dtype, override=self.peak_flops_override,
            cache_dir=self.cache_dir, budget_s=self.bench_budget_s)
        self._static.update(peak_flops_per_device=value, peak_flops_source=source,
                            peak_flops_dtype=self._dtype)
        if self.roofline:
            bw, bw_source = perf_peak.memory_bandwidth(
                self._device, cache_dir=self.cache_dir, budget_s=self.bench_budget_s)
            self._static.update(mem_bandwidth_bytes_per_s=bw, mem_bandwidth_source=bw_source)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._loader = trainer.train_dataloader
        self._static["data_wait_source"] = "gap" if self._fetch_s() is None else "loader"
        now = time.perf_counter()
        if self._window is None:
            self._open_window(now, measuring=self.warmup_steps == 0)
            self._prev_end = now
        elif self._prev_end is not None:
            # Everything since the last batch (validation, checkpoints, epoch-end hooks) is
            # not training; the first fetch of this epoch still counts as data wait.
            self._pause = now - self._prev_end
        self._val_t0 = None

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._window is not None:
            self._val_t0 = time.perf_counter()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._val_t0 is not None:
            self._pause += time.perf_counter() - self._val_t0
            self._val_t0 = None

    # ---- batch hooks (keep these cheap: they run every step) --------------------------------

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch,
                             batch_idx: int) -> None:
        now = time.perf_counter()
        w = self._window
        if w is None:  # no epoch-start hook ran (should not happen); start measuring here
            self._open_window(now, measuring=self.warmup_steps == 0)
            w, self._prev_end = self._window, now
        gap = now - self._prev_end
        pause = min(self._pause, gap)
        w.wait_s += gap - pause
        w.paused_s += pause
        self._pause = 0.0
        x = _batch_input(batch)
        self._batch_size = int(x.shape[0]) if x is not None and x.dim() > 0 else 1
        if not self._counted:
            self._counted = True
            self._count_static(trainer, pl_module, x)
            w.paused_s += time.perf_counter() - now
        else:
            w.hook_s += time.perf_counter() - now

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        entered = time.perf_counter()
        w = self._window
        if w is None:
            return
        self._step += 1
        w.steps += 1
        w.samples += self._batch_size
        if not self._measuring and self._step >= self.warmup_steps:
            now = self._close_window()
            self._warmup.add(w, w.elapsed(now))
            self._open_window(now, measuring=True)
            if self._device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self._device)
        elif self._measuring and w.steps >= self.window_steps:
            now = self._close_window()
            elapsed = w.elapsed(now)
            self._totals.add(w, elapsed)
            if self.log_windows:
                window = _Totals()
                window.add(w, elapsed)
                self._log(trainer, self._reduce(trainer, pl_module, window))
            self._open_window(now, measuring=True)
        self._prev_end = time.perf_counter()
        self._window.hook_s += self._prev_end - entered

    def _open_window(self, now: float, measuring: bool) -> None:
        self._window = _Window(t0=now, fetch0=self._fetch_s())
        self._measuring = measuring

    def _close_window(self) -> float:
        self._sync()
        now = time.perf_counter()
        w, fetch = self._window, self._fetch_s()
        if w is not None and w.fetch0 is not None and fetch is not None:
            w.fetched_s = fetch - w.fetch0
        return now

    def _fetch_s(self) -> float | None:
        """Seconds the train loader has spent in next() so far, if it keeps that count."""
        value = getattr(self._loader, "fetch_s", None)
        return None if value is None else float(value)

    # ---- once per run: cost model and memory --------------------------------------------------

    def _count_static(self, trainer: Trainer, pl_module: LightningModule, x) -> None:
        net = getattr(pl_module, "net", pl_module)
        if x is None or x.dim() < 2:
            log.warning("ThroughputMonitor: cannot read the input shape from the batch")
            return
        shape = tuple(int(s) for s in x.shape[1:])
        bs = int(x.shape[0])
        dt = perf_peak.PEAK_DTYPES.get(self._dtype)  # the dtype the step computes in
        s = self._static
        try:
            s.update(perf_flops.flops_per_sample(net, shape))
            if self.measure_flops:
                s["flops_per_sample_measured"] = perf_flops.measured_train_flops(net, shape)
            s["arithmetic_intensity"] = perf_flops.arithmetic_intensity(net, shape, bs, dt)
        except Exception as err:  # a cost we cannot count must not stop training
            log.warning("ThroughputMonitor: FLOP counting failed: %s", err)
        s["mem_weights_bytes"] = perf_memory.weights_bytes(net)
        s["mem_gradients_bytes"] = perf_memory.gradients_bytes(net)
        try:
            s["mem_activations_estimate_bytes"] = perf_memory.saved_activation_bytes(
                net, shape, bs, dt)
        except Exception as err:
            log.warning("ThroughputMonitor: activation estimate failed: %s", err)

    # ---- reduction, logging, final metrics ----------------------------------------------------

    def _reduce(self, trainer: Trainer, pl_module: LightningModule, t: _Totals) -> dict:
        """Cross-rank values of one stretch of steps (every rank must call this)."""
        world = max(int(trainer.world_size), 1)
        sps = t.samples / t.time_s if t.time_s > 0 else 0.0
        local = [sps, t.time_s / max(t.steps, 1), t.wait_s / t.time_s if t.time_s else 0.0,
                 float(t.steps), float(t.samples), t.paused_s,
                 t.gap_s / t.time_s if t.time_s else 0.0,
                 t.hook_s / t.time_s if t.time_s else 0.0]
        vec = torch.tensor(local, dtype=torch.float64, device=pl_module.device)
        if world > 1:
            vec = trainer.strategy.reduce(vec, reduce_op="sum")
        (sps_sum, step_sum, wait_sum, steps_sum, samples_sum, paused_sum, gap_sum,
         hook_sum) = vec.tolist()
        out: dict[str, float] = {
            "samples_per_s": sps_sum,
            "samples_per_s_per_device": sps_sum / world,
            "step_time_s": step_sum / world,
            "data_wait_frac": wait_sum / world,
            # whole time between batches (loader + the loop's own per-step work, e.g. logging)
            "loop_gap_frac": gap_sum / world,
            # this monitor's own cost: time inside its per-batch hooks (window edges included)
            "monitor_overhead_frac": hook_sum / world,
            "throughput_steps": steps_sum / world,
            "throughput_samples": samples_sum,
            # time inside the windows that was not training (validation, epoch ends, ...)
            "throughput_paused_s": paused_sum / world,
        }
        f_train = self._static.get("flops_per_sample_train")
        if f_train:
            out["tflops_per_device"] = sps_sum / world * f_train / 1e12
            out["tflops_aggregate"] = sps_sum * f_train / 1e12
            peak = self._static.get("peak_flops_per_device")
            if peak:
                out["mfu"] = out["tflops_per_device"] * 1e12 / peak
        return out

    def _memory(self, trainer: Trainer, pl_module: LightningModule) -> dict:
        s = self._static
        m: dict[str, float | str] = {}
        opt_bytes = perf_memory.optimizer_bytes(trainer.optimizers)
        m["mem_optimizer_bytes"] = opt_bytes
        static = s.get("mem_weights_bytes", 0) + s.get("mem_gradients_bytes", 0) + opt_bytes
        act = s.get("mem_activations_estimate_bytes")
        source = "saved_tensors"
        if self._device.type == "cuda":
            act = max(torch.cuda.max_memory_allocated(self._device) - static, 0)
            source = "cuda_max_allocated"
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

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        w = self._window
        if w is not None and w.steps > 0:  # a partial last window still counts
            now = self._close_window()
            # Whatever ran after the last batch (validation, checkpointing) is not training:
            # on CPU the last batch's end is exact; on GPU its queued work ends by `now`, so
            # only the validation time since then is taken off.
            if self._device.type == "cuda" or self._prev_end is None:
                w.paused_s += self._pause
            else:
                w.paused_s += now - self._prev_end
            self._pause = 0.0
            (self._totals if self._measuring else self._warmup).add(w, w.elapsed(now))
        self._window = None
        totals, from_warmup = self._totals, 0
        if totals.steps == 0:
            totals, from_warmup = self._warmup, 1
        metrics: dict[str, float | int | str] = dict(self._static)
        if totals.steps > 0:
            metrics.update(self._reduce(trainer, pl_module, totals))
            metrics["throughput_from_warmup"] = from_warmup
        metrics.update(self._memory(trainer, pl_module))
        metrics["world_size"] = int(trainer.world_size)
        self.metrics = metrics
        self._log(trainer, metrics)

    def state_dict(self) -> dict:
        return {}  # measurements describe one process's run; nothing to resume
