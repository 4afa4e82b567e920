"""The timing model of a training run: windows of steps, data wait, pauses (docs/perf.md).

Host clock, one record per train batch:
- a step's *data wait* is the time the loop spends blocked getting the batch. A loader with a
  `fetch_s` counter (`TimedDataLoader` below: time inside `next()`) gives it exactly
  (`data_wait_source = "loader"`); any other loader falls back to the whole gap from the end
  of the previous batch to the start of this one, which also holds the loop's own per-step
  work such as logging (`data_wait_source = "gap"`, an upper bound). The gap is reported as
  `loop_gap_frac` either way;
- a *window* is `window_steps` consecutive steps after `warmup_steps`; its time is the wall
  clock between its two edges minus pauses that are not training (validation, epoch ends,
  checkpointing, the monitor's own FLOP counting). The `sync` given to `StepClock` (a CUDA
  synchronize on GPU) runs only at window edges, so the per-window sums are exact while no
  step is slowed down.

`StepClock` keeps that account from plain calls (no Lightning needed); the ThroughputMonitor
calls it from its hooks and reduces the `Totals` across ranks (`throughput_figures`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch.utils.data import DataLoader

from src.util.stats import spread

WARMUP_END = "warmup_end"  # the warm-up steps are done: the first measured window opens
WINDOW_END = "window_end"  # a measured window closed (its stretch: `StepClock.closed`)


@dataclass
class Window:
    t0: float
    steps: int = 0
    samples: int = 0
    wait_s: float = 0.0
    paused_s: float = 0.0
    fetch0: float | None = None  # the loader's fetch_s when the window opened
    fetched_s: float | None = None  # time blocked in the loader's next() inside the window
    hook_s: float = 0.0  # time inside the monitor's own per-batch hooks

    def elapsed(self, now: float) -> float:
        return max(now - self.t0 - self.paused_s, 1e-12)


@dataclass
class Totals:
    steps: int = 0
    samples: int = 0
    time_s: float = 0.0
    wait_s: float = 0.0
    gap_s: float = 0.0
    paused_s: float = 0.0
    hook_s: float = 0.0

    def add(self, w: Window, elapsed: float) -> None:
        self.steps += w.steps
        self.samples += w.samples
        self.time_s += elapsed
        self.wait_s += w.wait_s if w.fetched_s is None else w.fetched_s
        self.gap_s += w.wait_s
        self.paused_s += w.paused_s
        self.hook_s += w.hook_s

    def local_values(self) -> list[float]:
        """This rank's figures, in the order `throughput_figures` reads their sums."""
        share = (lambda s: s / self.time_s) if self.time_s else (lambda s: 0.0)
        sps = self.samples / self.time_s if self.time_s > 0 else 0.0
        return [sps, self.time_s / max(self.steps, 1), share(self.wait_s), float(self.steps),
                float(self.samples), self.paused_s, share(self.gap_s), share(self.hook_s)]


def throughput_figures(sums: Sequence[float], world: int, flops_train=None, peak=None) -> dict:
    """Metrics from the sums over ranks of `Totals.local_values` (samples/s summed, the
    rest averaged); FLOP/s from the Eq. 1 cost `flops_train`, MFU against `peak`."""
    sps_sum, step_sum, wait_sum, steps_sum, samples_sum, paused_sum, gap_sum, hook_sum = sums
    out: dict[str, float] = {
        "samples_per_s": sps_sum,
        "samples_per_s_per_device": sps_sum / world,
        "step_time_s": step_sum / world,
        "data_wait_frac": wait_sum / world,
        # whole time between batches (loader + the loop's own per-step work, e.g. logging)
        "loop_gap_frac": gap_sum / world,
        # the monitor's own cost: time inside its per-batch hooks (window edges included)
        "monitor_overhead_frac": hook_sum / world,
        "throughput_steps": steps_sum / world,
        "throughput_samples": samples_sum,
        # time inside the windows that was not training (validation, epoch ends, ...)
        "throughput_paused_s": paused_sum / world,
    }
    if flops_train:
        out["tflops_per_device"] = sps_sum / world * flops_train / 1e12
        out["tflops_aggregate"] = sps_sum * flops_train / 1e12
        if peak:
            out["mfu"] = out["tflops_per_device"] * 1e12 / peak
    return out


class StepClock:
    """Windows of `window_steps` batches after `warmup_steps`, with the data wait, the gaps
    and the pauses of each; `sync()` runs at every window edge."""

    def __init__(self, warmup_steps: int, window_steps: int,
                 sync: Callable[[], None] | None = None):
        self.warmup_steps, self.window_steps = warmup_steps, window_steps
        self._sync = sync or (lambda: None)
        self.window: Window | None = None
        self.measuring = False
        self.warmup, self.totals = Totals(), Totals()
        self.closed: Totals | None = None  # the stretch the last WINDOW_END closed
        self.loader = None  # the train loader, read for its fetch_s counter
        self._step = 0
        self._prev_end: float | None = None
        self._pause = 0.0  # non-training time since the previous batch ended
        self._val_t0: float | None = None

    def fetch_s(self) -> float | None:
        """Seconds the train loader has spent in next() so far, if it keeps that count."""
        value = getattr(self.loader, "fetch_s", None)
        return None if value is None else float(value)

    def _open(self, now: float, measuring: bool) -> None:
        self.window = Window(t0=now, fetch0=self.fetch_s())
        self.measuring = measuring

    def _close(self) -> float:
        self._sync()
        now = time.perf_counter()
        w, fetch = self.window, self.fetch_s()
        if w is not None and w.fetch0 is not None and fetch is not None:
            w.fetched_s = fetch - w.fetch0
        return now

    # ---- epoch and validation edges ---------------------------------------------------------

    def start_epoch(self, loader) -> str:
        """A train epoch starts reading `loader`; returns the data wait source it allows."""
        self.loader = loader
        now = time.perf_counter()
        if self.window is None:
            self._open(now, measuring=self.warmup_steps == 0)
            self._prev_end = now
        elif self._prev_end is not None:
            # Everything since the last batch (validation, checkpoints, epoch-end hooks) is
            # not training; the first fetch of this epoch still counts as data wait.
            self._pause = now - self._prev_end
        self._val_t0 = None
        return "gap" if self.fetch_s() is None else "loader"

    def start_validation(self) -> None:
        if self.window is not None:
            self._val_t0 = time.perf_counter()

    def end_validation(self) -> None:
        if self._val_t0 is not None:
            self._pause += time.perf_counter() - self._val_t0
            self._val_t0 = None

    # ---- per batch (cheap: these run every step) ---------------------------------------------

    def start_batch(self) -> float:
        """A batch arrived: book the gap since the last one as wait or pause; returns now."""
        now = time.perf_counter()
        if self.window is None:  # no epoch start was seen (should not happen): start here
            self._open(now, measuring=self.warmup_steps == 0)
            self._prev_end = now
        w = self.window
        gap = now - self._prev_end
        pause = min(self._pause, gap)
        w.wait_s += gap - pause
        w.paused_s += pause
        self._pause = 0.0
        return now

    def pause_since(self, t0: float) -> None:
        """Time since `t0` was not training (the once-per-run counting)."""
        self.window.paused_s += time.perf_counter() - t0

    def hook_since(self, t0: float) -> None:
        """Time since `t0` was the monitor's own per-batch work."""
        self.window.hook_s += time.perf_counter() - t0

    def end_batch(self, batch_size: int) -> str | None:
        """Count a finished batch; at a window edge close the window and open the next.
        Returns WARMUP_END, WINDOW_END or None."""
        w = self.window
        self._step += 1
        w.steps += 1
        w.samples += batch_size
        if not self.measuring and self._step >= self.warmup_steps:
            now = self._close()
            self.warmup.add(w, w.elapsed(now))
            self._open(now, measuring=True)
            return WARMUP_END
        if self.measuring and w.steps >= self.window_steps:
            now = self._close()
            elapsed = w.elapsed(now)
            self.totals.add(w, elapsed)
            self.closed = Totals()
            self.closed.add(w, elapsed)
            self._open(now, measuring=True)
            return WINDOW_END
        return None

    def after_batch(self, entered: float) -> None:
        """The batch-end hook that began at `entered` is done: its time is the monitor's."""
        self._prev_end = time.perf_counter()
        self.window.hook_s += self._prev_end - entered

    # ---- end of the run ----------------------------------------------------------------------

    def finish(self, exact_last_end: bool) -> tuple[Totals, int]:
        """Close the run: (the totals to report, 1 if they are the warm-up steps' else 0).
        `exact_last_end`: the last batch's end time is when its work ended (not on GPU)."""
        w = self.window
        if w is not None and w.steps > 0:  # a partial last window still counts
            now = self._close()
            # Whatever ran after the last batch (validation, checkpointing) is not training:
            # on CPU the last batch's end is exact; on GPU its queued work ends by `now`, so
            # only the validation time since then is taken off.
            if not exact_last_end or self._prev_end is None:
                w.paused_s += self._pause
            else:
                w.paused_s += now - self._prev_end
            self._pause = 0.0
            (self.totals if self.measuring else self.warmup).add(w, w.elapsed(now))
        self.window = None
        if self.totals.steps == 0:
            return self.warmup, 1
        return self.totals, 0


class TimedDataLoader(DataLoader):
    """A DataLoader that adds up the seconds spent blocked in `next()` (`fetch_s`): the
    loader's real share of a training step, apart from the loop's other work between steps
    (`StepClock` reads it for `data_wait_frac`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fetch_s = 0.0

    def __iter__(self):
        return _TimedIterator(super().__iter__(), self)


class _TimedIterator:
    def __init__(self, iterator, owner: TimedDataLoader):
        self._iterator, self._owner = iterator, owner

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        try:
            return next(self._iterator)
        finally:
            self._owner.fetch_s += time.perf_counter() - start

    def __len__(self) -> int:
        return len(self._iterator)


def window_figures(rates: Sequence[float], world: int, flops_train=None, peak=None,
                   max_cv: float = 0.1, min_windows: int = 3) -> dict:
    """The spread of a run's windows, from each window's samples/s summed over ranks: median,
    min, max, coefficient of variation, their count, and `measurement_stable` (at least
    `min_windows` windows and a CV of at most `max_cv`). The best window's FLOP/s per device
    and MFU are there to check the peak: a window above it means the peak is wrong."""
    s = spread(rates)
    if s is None:
        return {"throughput_windows": 0, "measurement_stable": False,
                "measurement_note": "no measured window"}
    note = ""
    if s["n"] < min_windows:
        note = f"only {s['n']} measured window(s), fewer than {min_windows}"
    elif s["cv"] > max_cv:
        note = (f"samples/s varied by {100 * s['cv']:.3g} % (CV) over {s['n']} windows, "
                f"above {100 * max_cv:.3g} %")
    out: dict[str, float | int | bool | str] = {
        "samples_per_s_median": s["median"], "samples_per_s_min": s["min"],
        "samples_per_s_max": s["max"], "samples_per_s_cv": s["cv"], "throughput_windows": s["n"],
        "measurement_stable": not note, "measurement_note": note,
    }
    if flops_train:
        out["tflops_per_device_best"] = s["max"] / world * flops_train / 1e12
        if peak:
            out["mfu_best_window"] = out["tflops_per_device_best"] * 1e12 / peak
    return out
