"""Progress of long work: a rich bar on a terminal, a periodic plain log line elsewhere.

Under mpirun, SLURM or a pipe there is no terminal to redraw a bar on, so progress is a log
line every `interval_s` seconds (and one at the end) with the count, the rate since the start
and the time left. The rate counts only this run's items: a resumed campaign's files that
were already there are not in `total`, so they cannot inflate it.
"""

from __future__ import annotations

import logging
import sys
import time

from src.dist import under_batch_system

log = logging.getLogger(__name__)


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """`advance()` once per finished item; `close()` (or leave the `with` block) at the end."""

    def __init__(self, total: int, label: str, unit: str = "it", enabled: bool = True,
                 interval_s: float = 30.0, terminal: bool | None = None):
        self.total, self.label, self.unit = int(total), label, unit
        self.done, self.info = 0, ""
        self.interval_s = float(interval_s)
        self._t0 = self._last = time.monotonic()
        self._bar = self._task = None
        self._enabled = enabled and self.total > 0
        if terminal is None:
            terminal = sys.stderr.isatty() and not under_batch_system()
        if self._enabled and terminal:
            self._start_bar()

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[info]}"),
                                 console=Console(file=sys.stderr))
        self._task = self._bar.add_task(self.label, total=self.total, rate="", info="")
        self._bar.start()

    def rate(self) -> float:
        """Items per second since the start."""
        return self.done / max(time.monotonic() - self._t0, 1e-9)

    def advance(self, n: int = 1, info: str = "") -> None:
        self.done += n
        self.info = info
        if not self._enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, advance=n, info=info,
                             rate=f"{self.rate():.2f} {self.unit}/s")
        elif time.monotonic() - self._last >= self.interval_s:
            self._log_line()

    def _log_line(self) -> None:
        self._last = time.monotonic()
        rate = self.rate()
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = _clock(left) if left != float("inf") else "?"
        extra = f", {self.info}" if self.info else ""
        log.info("%s: %d/%d, %.3g %s/s, %s elapsed, ETA %s%s", self.label, self.done, self.total,
                 rate, self.unit, _clock(self._last - self._t0), eta, extra)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self._enabled and self.done:
            self._log_line()
        self._enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
