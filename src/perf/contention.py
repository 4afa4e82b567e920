"""What else used the machine while we measured: other processes' CPU time, steal, load.

A measurement on a shared machine is only as good as the machine was quiet. From /proc:
- the machine's busy CPU time (`/proc/stat`, every CPU) minus the CPU time of the job's own
  process tree (the tree under `src.dist.job_root_pid`: every rank of this machine and its
  data-loader workers, reaped children included) is what *other* processes took;
- steal time is what the hypervisor gave to other guests;
- the 1-minute load average is kept for the record.
A `Sample` is one reading; `interval` turns two readings into fractions of the machine, and
`ContentionWatch.top` names the processes outside the tree that took the most CPU. On a
CUDA device, `gpu_others` lists other processes on it through NVML where pynvml is installed.
Only Linux has /proc: elsewhere a sample is None and nothing is claimed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class Sample:
    t: float  # time.perf_counter() of the reading
    busy_s: float  # CPU seconds every CPU of the machine spent busy, steal apart
    steal_s: float
    own_s: float  # CPU seconds of the job's process tree, reaped children included
    load1: float
    others: dict[int, tuple[str, float]] = field(default_factory=dict)  # pid -> (name, cpu s)
    ours: set[int] = field(default_factory=set)  # the job's process tree


def _proc_table(proc: Path) -> dict[int, tuple[str, int, float, float]]:
    """pid -> (name, parent pid, CPU seconds incl. reaped children, its own CPU seconds)."""
    table = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            data = Path(entry.path, "stat").read_bytes()
        except OSError:  # gone since the listing
            continue
        close = data.rindex(b")")  # the name may hold spaces and parentheses
        name = data[data.index(b"(") + 1:close].decode(errors="replace")
        fields = data[close + 2:].split()
        # fields from "state": ppid is the 2nd, utime stime cutime cstime the 12th-15th
        own = (int(fields[11]) + int(fields[12])) / _TICK
        table[int(entry.name)] = (name, int(fields[1]),
                                  own + (int(fields[13]) + int(fields[14])) / _TICK, own)
    return table


def _tree(table: dict, root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo.extend(children.get(pid, ()))
    return tree


def _machine_times(proc: Path) -> tuple[float, float]:
    """(busy, steal) CPU seconds of all CPUs since boot, from the first line of /proc/stat."""
    first = (proc / "stat").read_text().split("\n", 1)[0].split()
    # user nice system idle iowait irq softirq steal (guest time is inside user already)
    values = [int(x) / _TICK for x in first[1:9]]
    busy = values[0] + values[1] + values[2] + values[5] + values[6]
    return busy, values[7]


def sample(root: int, proc: str | Path = "/proc") -> Sample | None:
    """One reading for the job whose processes run under `root`; None without /proc."""
    proc = Path(proc)
    try:
        busy, steal = _machine_times(proc)
        load1 = float((proc / "loadavg").read_text().split()[0])
        table = _proc_table(proc)
    except (OSError, ValueError, IndexError):
        return None
    ours = _tree(table, root)
    own = sum(cpu for pid, (_, _, cpu, _) in table.items() if pid in ours)
    # a process's own time only: its reaped children's would land on it at once when reaped
    others = {pid: (name, cpu) for pid, (name, _, _, cpu) in table.items() if pid not in ours}
    return Sample(time.perf_counter(), busy, steal, own, load1, others, ours)


def interval(a: Sample, b: Sample, n_cpus: int) -> dict:
    """What the machine did between two readings, as fractions of its CPU capacity."""
    wall = max(b.t - a.t, 1e-9)
    capacity = wall * max(n_cpus, 1)
    # /proc counts in clock ticks: over a short interval the rounding can pass the capacity
    other = min(max((b.busy_s - a.busy_s) - (b.own_s - a.own_s), 0.0), capacity)
    steal = min(max(b.steal_s - a.steal_s, 0.0), capacity)
    return {"wall_s": wall, "other_cpu_s": other, "other_cpu_frac": other / capacity,
            "steal_frac": steal / capacity,
            "load1": max(a.load1, b.load1)}


def gpu_others(device_index: int, ours: set[int]) -> list[tuple[str, int, int]] | None:
    """(name, pid, bytes used) of other processes on a CUDA device; None without NVML."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except Exception:  # NVML missing, no permission, or a driver without the call
        return None
    out = []
    for p in procs:
        if p.pid in ours:
            continue
        try:
            name = Path(f"/proc/{p.pid}/comm").read_text().strip()
        except OSError:  # another container's process: only NVML knows it
            name = "?"
        out.append((name, int(p.pid), int(p.usedGpuMemory or 0)))
    return out


class ContentionWatch:
    """Readings at most every `min_interval_s` across a measured span, judged against the
    thresholds: an interval where other processes took more than `max_other_cpu_frac` of the
    machine's CPU (or steal passed `max_steal_frac`) makes the measurement *contended*."""

    def __init__(self, root: int, n_cpus: int | None = None, max_other_cpu_frac: float = 0.2,
                 max_steal_frac: float = 0.05, min_interval_s: float = 1.0,
                 proc: str | Path = "/proc"):
        self.root, self.n_cpus = root, n_cpus or os.cpu_count() or 1
        self.max_other, self.max_steal = max_other_cpu_frac, max_steal_frac
        self.min_interval_s, self.proc = min_interval_s, proc
        self.first: Sample | None = None
        self.last: Sample | None = None
        self.intervals: list[dict] = []
        # pid -> [name, CPU s when first seen (0 if born since the start), CPU s last seen]:
        # a process that ended before the last reading is still named
        self.seen: dict[int, list] = {}

    def _remember(self, s: Sample) -> None:
        for pid, (name, cpu) in s.others.items():
            if pid in self.seen:
                self.seen[pid][2] = cpu
            else:
                self.seen[pid] = [name, cpu if s is self.first else 0.0, cpu]

    def start(self) -> None:
        self.first = self.last = sample(self.root, self.proc)
        self.intervals, self.seen = [], {}
        if self.first is not None:
            self._remember(self.first)

    def top(self, k: int = 3) -> list[tuple[str, int, float]]:
        """(name, pid, CPUs used on average over the span) of the busiest other processes."""
        if self.first is None or self.last is None:
            return []
        wall = max(self.last.t - self.first.t, 1e-9)
        used = [(name, pid, (last - base) / wall) for pid, (name, base, last) in self.seen.items()
                if last > base]
        return sorted(used, key=lambda x: -x[2])[:k]

    def tick(self, force: bool = False) -> None:
        """A reading now, if the last one is `min_interval_s` old (or `force`)."""
        if self.last is None or (not force
                                 and time.perf_counter() - self.last.t < self.min_interval_s):
            return
        now = sample(self.root, self.proc)
        if now is not None:
            self.intervals.append(interval(self.last, now, self.n_cpus))
            self.last = now
            self._remember(now)

    def busy(self, iv: dict) -> bool:
        return iv["other_cpu_frac"] > self.max_other or iv["steal_frac"] > self.max_steal

    def sums(self) -> list[float]:
        """[other CPU s, capacity CPU s, steal frac x capacity, intervals, busy intervals],
        summed over machines by the caller."""
        capacity = sum(iv["wall_s"] for iv in self.intervals) * self.n_cpus
        return [sum(iv["other_cpu_s"] for iv in self.intervals), capacity,
                sum(iv["steal_frac"] * iv["wall_s"] * self.n_cpus for iv in self.intervals),
                float(len(self.intervals)), float(sum(self.busy(iv) for iv in self.intervals))]

    def summary(self, totals: list[float] | None = None, gpu: list | None = None) -> dict:
        """Metrics of the span; `totals`: `sums()` added over every machine of the job."""
        if not self.intervals:
            return {}
        other_s, capacity, steal_s, n, n_busy = totals or self.sums()
        worst = max(self.intervals, key=lambda iv: iv["other_cpu_frac"])
        out = {"contention_other_cpu_frac": other_s / capacity if capacity else 0.0,
               "contention_other_cpu_frac_max": worst["other_cpu_frac"],
               "contention_steal_frac": steal_s / capacity if capacity else 0.0,
               "contention_load_avg": max(iv["load1"] for iv in self.intervals),
               "contention_intervals": int(n), "contention_intervals_busy": int(n_busy)}
        if gpu:
            out["contention_gpu_processes"] = len(gpu)
        contended = n_busy > 0 or bool(gpu)
        out["measurement_contended"] = contended
        out["contention_seen"] = self.describe(out, gpu) if contended else ""
        return out

    def describe(self, m: dict, gpu: list | None) -> str:
        """One sentence naming what was seen, for the console and metrics.json."""
        cpus = m["contention_other_cpu_frac"] * self.n_cpus
        parts = [f"other processes used {cpus:.2g} of {self.n_cpus} CPUs on average "
                 f"({100 * m['contention_other_cpu_frac']:.2g} %), over "
                 f"{100 * self.max_other:.2g} % in {m['contention_intervals_busy']} of "
                 f"{m['contention_intervals']} intervals (worst "
                 f"{100 * m['contention_other_cpu_frac_max']:.2g} %)"]
        top = self.top()
        if top:
            parts.append("busiest: " + ", ".join(f"{name} (pid {pid}) {c:.2g} CPUs"
                                                 for name, pid, c in top))
        if m["contention_steal_frac"] > self.max_steal:
            parts.append(f"steal {100 * m['contention_steal_frac']:.2g} %")
        parts.append(f"load average up to {m['contention_load_avg']:.3g}")
        if gpu:
            parts.append("other processes on the GPU: " + ", ".join(
                f"{name} (pid {pid}, {used / 2**20:.0f} MiB)" for name, pid, used in gpu))
        return "; ".join(parts)
