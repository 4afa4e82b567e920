"""What machine a job ran on, for metrics.json and the report's 'system' row."""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path

import lightning
import torch

from src.util.cpuinfo import cpu_model


def system_info() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "n_cpus": os.cpu_count(),
        "mem_bytes": mem,
        "gpu_name": gpu,
        "n_gpus": torch.cuda.device_count(),
        "gpu_mem_bytes": torch.cuda.get_device_properties(0).total_memory if gpu else None,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
    }


# cgroup v1 writes "no limit" as LONG_MAX rounded to a page; anything this large is no limit
_CGROUP_NO_LIMIT = 1 << 60


def available_memory_bytes(cgroup_root: str | Path = "/sys/fs/cgroup",
                           proc: str | Path = "/proc") -> int | None:
    """Memory this process could take now without swapping or an OOM kill: the smaller of
    MemAvailable (else free pages) and the room left under its memory cgroup's limit (SLURM
    --mem, containers). The roots are parameters so a test can fake them."""
    host = _meminfo_available(Path(proc))
    room = cgroup_memory_room(Path(cgroup_root), Path(proc) / "self" / "cgroup")
    return min((m for m in (host, room) if m is not None), default=None)


def _meminfo_available(proc: Path) -> int | None:
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def cgroup_memory_room(root: Path, self_cgroup: Path) -> int | None:
    """Bytes left under the tightest memory limit of this process's cgroup and its ancestors
    (a SLURM job's limit sits above its step's cgroup); None when no limit is set or readable.
    Inactive page cache counts as room: the kernel reclaims it before an OOM kill."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    paths = {}  # controller -> this process's cgroup path, "" for the v2 unified hierarchy
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(","):
                paths[controller] = parts[2]
    if (root / "cgroup.controllers").is_file():  # v2
        base, files = root, ("memory.max", "memory.current", "inactive_file")
        rel = paths.get("", "/")
    else:  # v1
        base, files = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                        "total_inactive_file")
        rel = paths.get("memory", "/")
    d = base / rel.lstrip("/")
    if not d.is_dir():  # a container sees its own cgroup at the root, the host's path in /proc
        d = base
    rooms = []
    for cgroup in (d, *d.parents):
        room = _cgroup_dir_room(cgroup, *files)
        if room is not None:
            rooms.append(room)
        if cgroup == base:
            break
    return min(rooms, default=None)


def _cgroup_dir_room(d: Path, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    try:
        limit = (d / limit_file).read_text().strip()
        if limit == "max" or int(limit) >= _CGROUP_NO_LIMIT:
            return None
        usage = int((d / usage_file).read_text())
    except (OSError, ValueError):
        return None
    inactive = 0
    try:
        for line in (d / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == inactive_key:
                inactive = int(value)
    except (OSError, ValueError):
        pass
    return max(int(limit) - usage + inactive, 0)
