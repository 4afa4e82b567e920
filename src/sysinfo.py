"""What machine a job ran on, for metrics.json and the report's 'system' row."""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path

import lightning
import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


def available_memory_bytes() -> int | None:
    """Memory the kernel could hand out now without swapping (MemAvailable), else free pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
