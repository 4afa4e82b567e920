"""Peak FLOP/s and memory bandwidth of a device, each with the source of the number.

Order of precedence for `peak_flops`: the config override (`perf.peak_flops`) > our table of
dense spec-sheet peaks (accelerators) > the median of repeated matmuls (CPU, and any
accelerator the table does not know), cached per machine. Sources are reported as
`"override"`, `"table:<chip>"` or `"measured"`.

A measured peak records its spread, when it was taken and how busy the machine was then
(src.perf.contention). It is measured again when it was taken under load, or when a job's
best window beats it (the peak is then wrong, not the job): `cached_entry`.

The table lives in src/perf/peak_table.py.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path

import torch

from src.dist import job_root_pid
from src.perf import contention
from src.perf.peak_table import PEAK_TABLE, chip_key
from src.util.atomic import write_json_atomic
from src.util.cache import cache_root
from src.util.cpuinfo import cpu_model
from src.util.stats import spread

log = logging.getLogger(__name__)

# 2: entries carry the spread, time and load of their measurement
CACHE_VERSION = 2

# the torch dtype each peak column is measured in
PEAK_DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "tf32": torch.float32,
                 "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device_type: str = "cpu") -> bool:
    """Whether the device multiplies bf16 in hardware: CPUs with AVX512-BF16 or AMX, CUDA
    devices that support it natively. Elsewhere bf16 is emulated and slower than fp32."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private in torch 2.13
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def dtype_key(precision: str | int | None, device_type: str = "cpu") -> str:
    """The peak column a Lightning `precision` runs at: "32-true" -> fp32 (tf32 on CUDA when
    matmul precision allows it), "bf16-*" -> bf16, "16-*" -> fp16, "64-*" -> fp64."""
    p = str(precision or "32-true").lower()
    if p.startswith("bf16"):
        return "bf16"
    if p.startswith("16") or p.startswith("fp16"):
        return "fp16"
    if p.startswith("64"):
        return "fp64"
    if p.startswith("transformer-engine") or "fp8" in p:
        return "fp8"
    # fp32 convolutions run on TF32 tensor cores whenever cuDNN allows it (torch's default),
    # whatever the matmul precision says
    if device_type == "cuda" and (torch.get_float32_matmul_precision() != "highest"
                                  or torch.backends.cudnn.allow_tf32):
        return "tf32"
    return "fp32"


# ---- per-machine cache --------------------------------------------------------------------

def machine_key(device: torch.device | str = "cpu") -> str:
    """What a measured number depends on: host, processor, torch, thread count."""
    device = torch.device(device)
    if device.type == "cpu":
        proc = cpu_model()
        threads = torch.get_num_threads()
    else:
        proc = torch.cuda.get_device_name(device)
        threads = 0
    raw = f"{socket.gethostname()}-{device.type}-{proc}-t{threads}-torch{torch.__version__}"
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", raw)[:200]


def _cache_path(cache_dir: str | os.PathLike | None, device) -> Path:
    return cache_root(cache_dir) / f"peak-{machine_key(device)}.json"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if data.get("version") == CACHE_VERSION else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, data: dict) -> None:
    # Atomic replace: several ranks of one machine may measure and write at once.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {**data, "version": CACHE_VERSION})
    except OSError as err:  # a read-only home must not break training
        log.warning("cannot write peak cache %s: %s", path, err)


def measured_entry(measure: Callable[[], list[float]], pick: str = "median") -> dict:
    """Run `measure` (rates of repeated timings) and describe the result: the `pick`ed
    value, its spread, when, and what else used the machine meanwhile."""
    before = contention.sample(job_root_pid())
    rates = measure()
    after = contention.sample(job_root_pid())
    s = spread(rates)
    entry = {"value": s[pick], "min": s["min"], "max": s["max"], "repeats": s["n"],
             "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if before and after:
        iv = contention.interval(before, after, os.cpu_count() or 1)
        entry.update(other_cpu_frac=iv["other_cpu_frac"], load_avg=iv["load1"])
    return entry


def _better(old: dict | None, new: dict, max_load: float) -> dict:
    """Of two measurements of one ceiling, the one to keep: a quiet one over one taken under
    load, else the higher (a ceiling measured too low inflates every later MFU)."""
    if old is None:
        return new
    old_quiet = old.get("other_cpu_frac", 0.0) <= max_load
    new_quiet = new.get("other_cpu_frac", 0.0) <= max_load
    if old_quiet != new_quiet:
        return new if new_quiet else old
    return new if new["value"] >= old["value"] else old


def cached_entry(cache_dir, device, key: str, measure: Callable[[], dict], force: bool = False,
                 max_load: float = 0.2) -> dict:
    """The cached measurement `key` of this machine, measured when missing, when `force`d
    (a job beat it) or when the cached one was taken while other processes used more than
    `max_load` of the CPUs. Adds `remeasured`: why it was measured again ("" if it was not)."""
    path = _cache_path(cache_dir, device)
    old = _read_cache(path).get(key)
    loaded = old is not None and old.get("other_cpu_frac", 0.0) > max_load
    if old is not None and not force and not loaded:
        return {**old, "remeasured": ""}
    new = measure()
    data = _read_cache(path)  # re-read after measuring: keep keys another rank wrote
    prior = data.get(key, old)
    if force and prior is not None:  # a job beat the old value: it is wrong, however quiet
        data[key] = new if new["value"] >= prior["value"] else prior
    else:
        data[key] = _better(prior, new, max_load)
    _write_cache(path, data)
    reason = "" if old is None else ("exceeded by a job" if force else "measured under load")
    return {**data[key], "remeasured": reason}


# ---- micro-benchmarks ---------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rates(device: torch.device | str = "cpu", dtype: str = "fp32",
                 budget_s: float = 0.4, min_repeats: int = 5) -> list[float]:
    """FLOP/s of repeated square matmuls. The size starts large enough to fill the cores (1024
    on CPU, 2048 on GPU: a noisy first timing must not pin it small) and grows until one matmul
    takes >= 5 ms, so call overhead is negligible; then repeats until `budget_s` is spent and
    at least `min_repeats` timings are in."""
    device = torch.device(device)
    tdtype = PEAK_DTYPES[dtype]
    prev = None
    if dtype in ("tf32", "fp32") and device.type == "cuda":
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    try:
        n_max = 2048 if device.type == "cpu" else 16384
        n = 1024 if device.type == "cpu" else 2048
        t_deadline = time.perf_counter() + budget_s
        while True:
            a = torch.randn(n, n, device=device).to(tdtype)
            b = torch.randn(n, n, device=device).to(tdtype)
            torch.mm(a, b)  # warm-up: allocator, kernel choice
            _sync(device)
            t0 = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            dt = time.perf_counter() - t0
            if dt >= 5e-3 or n >= n_max or time.perf_counter() > t_deadline:
                break
            n *= 2
        times = [dt]
        while time.perf_counter() < t_deadline or len(times) < min_repeats:
            t0 = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            times.append(time.perf_counter() - t0)
        return [2.0 * n**3 / t for t in times]
    finally:
        if prev is not None:
            torch.backends.cuda.matmul.allow_tf32 = prev


def triad_rates(device: torch.device | str = "cpu", budget_s: float = 0.4,
                n: int | None = None) -> list[float]:
    """STREAM-triad bytes/s of repeated a = b + s*c over fp32 arrays far larger than the
    caches; counts 3 arrays x 4 bytes per element (two reads, one write), as STREAM does."""
    device = torch.device(device)
    n = n or (2**24 if device.type == "cpu" else 2**27)
    b = torch.ones(n, device=device)
    c = torch.ones(n, device=device)
    a = torch.empty(n, device=device)
    torch.add(b, c, alpha=3.0, out=a)
    _sync(device)
    rates, t_deadline = [], time.perf_counter() + budget_s
    while len(rates) < 3 or (time.perf_counter() < t_deadline and len(rates) < 200):
        t0 = time.perf_counter()
        torch.add(b, c, alpha=3.0, out=a)
        _sync(device)
        rates.append(3 * 4 * n / (time.perf_counter() - t0))
    return rates


# ---- public API ---------------------------------------------------------------------------

def peak_entry(device: torch.device | str = "cpu", dtype: str = "fp32",
               override: float | Mapping | None = None, cache_dir: str | None = None,
               budget_s: float = 0.4, min_repeats: int = 5, force: bool = False,
               max_load: float = 0.2) -> dict:
    """The peak FLOP/s of one device for `dtype`: {"value", "source", ...}; a measured one also
    has its spread, time, load and `remeasured` (`cached_entry`). See the module docstring.
    `override` is one number for every dtype, or {dtype: FLOP/s} for some of them."""
    if isinstance(override, Mapping):
        override = override.get(dtype)
    if override:
        return {"value": float(override), "source": "override"}
    device = torch.device(device)
    if device.type != "cpu":
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        chip = chip_key(name)
        if chip and dtype in PEAK_TABLE[chip]:
            return {"value": PEAK_TABLE[chip][dtype], "source": f"table:{chip}"}
        log.warning("no spec-sheet peak for %r (%s); measuring a matmul", name, dtype)
    if dtype not in PEAK_DTYPES:
        dtype = "fp32"  # fp8 has no portable matmul to measure
    entry = cached_entry(cache_dir, device, f"matmul_{dtype}", lambda: measured_entry(
        lambda: matmul_rates(device, dtype, budget_s, min_repeats)), force, max_load)
    return {**entry, "source": "measured"}


def peak_flops(device: torch.device | str = "cpu", dtype: str = "fp32",
               override: float | Mapping | None = None, cache_dir: str | None = None,
               budget_s: float = 0.4) -> tuple[float, str]:
    """(peak FLOP/s of one device for `dtype`, source): `peak_entry` in short."""
    entry = peak_entry(device, dtype, override, cache_dir, budget_s)
    return entry["value"], entry["source"]


def memory_bandwidth(device: torch.device | str = "cpu", override: float | None = None,
                     cache_dir: str | None = None, budget_s: float = 0.4,
                     max_load: float = 0.2) -> tuple[float, str]:
    """(bytes/s of the triad probe, source), cached per machine; for the roofline."""
    if override:
        return float(override), "override"
    device = torch.device(device)
    entry = cached_entry(cache_dir, device, "triad", lambda: measured_entry(
        lambda: triad_rates(device, budget_s), pick="max"), max_load=max_load)
    return entry["value"], "measured"


def peak_metrics(entry: dict, dtype: str) -> dict:
    """A `peak_entry` under its metrics.json names."""
    out: dict[str, float | str] = {"peak_flops_per_device": entry["value"],
                                   "peak_flops_source": entry["source"],
                                   "peak_flops_dtype": dtype}
    if "measured_at" in entry:
        out.update(peak_flops_measured_at=entry["measured_at"],
                   peak_flops_repeats=entry["repeats"],
                   peak_flops_spread=(entry["max"] - entry["min"]) / entry["value"],
                   peak_flops_remeasured=entry["remeasured"])
        if "other_cpu_frac" in entry:
            out["peak_flops_other_cpu_frac"] = entry["other_cpu_frac"]
    return out


def device_peaks(device: torch.device | str, dtype: str, override: float | Mapping | None = None,
                 cache_dir: str | None = None, budget_s: float = 0.4, roofline: bool = True,
                 min_repeats: int = 5, force: bool = False, max_load: float = 0.2) -> dict:
    """The ceilings of one device under their metric names: its peak FLOP/s for `dtype`
    and, with `roofline`, its memory bandwidth (each measured once per machine, cached)."""
    out = peak_metrics(peak_entry(device, dtype, override, cache_dir, budget_s, min_repeats,
                                  force, max_load), dtype)
    if roofline:
        bw, bw_source = memory_bandwidth(device, cache_dir=cache_dir, budget_s=budget_s,
                                         max_load=max_load)
        out.update(mem_bandwidth_bytes_per_s=bw, mem_bandwidth_source=bw_source)
    return out
