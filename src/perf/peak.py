"""Peak FLOP/s and memory bandwidth of a device, each with the source of the number.

Order of precedence for `peak_flops`: the config override (`perf.peak_flops`) > our table of
dense spec-sheet peaks (accelerators) > a short measured matmul benchmark (CPU, and any
accelerator the table does not know), cached per machine. Sources are reported as
`"override"`, `"table:<chip>"` or `"measured"`.

Why our own table and not `lightning.fabric.utilities.throughput.get_available_flops`: it
returns None on CPU; it looks H200 up under the keys "h200 sxm1"/"h200 nvl1", which a real
"NVIDIA H200" device name never matches, and its H200 and H100 NVL rows are the
*with-sparsity* figures (2x the dense peak a CNN can reach).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from src.util.atomic import write_json_atomic
from src.util.cache import cache_root
from src.util.cpuinfo import cpu_model

log = logging.getLogger(__name__)

CACHE_VERSION = 1

T = 1e12
# Dense (no structured sparsity) peak FLOP/s per torch device, per dtype. Where a spec sheet
# prints "X | 2X with sparsity" we keep X. fp32 is the non-tensor-core (CUDA core) rate on
# NVIDIA; "tf32" is what fp32 matmuls reach when TF32 is allowed.
PEAK_TABLE: dict[str, dict[str, float]] = {
    # NVIDIA V100 datasheet (volta-v100-datasheet-update-us-1165301-r5): SXM2 / PCIe.
    # No bf16/tf32 hardware: those dtypes are left out so they fall back to measurement.
    "V100-SXM": {"fp64": 7.8 * T, "fp32": 15.7 * T, "fp16": 125 * T},
    "V100-PCIe": {"fp64": 7.0 * T, "fp32": 14.0 * T, "fp16": 112 * T},
    # NVIDIA A100 datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4): same for SXM/PCIe;
    # TF32 156 (312 sparse), BF16/FP16 312 (624 sparse).
    "A100": {"fp64": 19.5 * T, "fp32": 19.5 * T, "tf32": 156 * T, "bf16": 312 * T,
             "fp16": 312 * T},
    # NVIDIA H100 datasheet (h100-datasheet-2430615): SXM TF32 494.7 (989 sparse),
    # BF16/FP16 989.4 (1979 sparse), FP8 1978.9; PCIe TF32 378, BF16 756, FP8 1513;
    # NVL (per GPU) TF32 417.5, BF16 835.5, FP8 1670.5. fp64 is the tensor-core rate.
    "H100-SXM": {"fp64": 67 * T, "fp32": 67 * T, "tf32": 494.7 * T, "bf16": 989.4 * T,
                 "fp16": 989.4 * T, "fp8": 1978.9 * T},
    "H100-PCIe": {"fp64": 51 * T, "fp32": 51 * T, "tf32": 378 * T, "bf16": 756 * T,
                  "fp16": 756 * T, "fp8": 1513 * T},
    "H100-NVL": {"fp64": 60 * T, "fp32": 60 * T, "tf32": 417.5 * T, "bf16": 835.5 * T,
                 "fp16": 835.5 * T, "fp8": 1670.5 * T},
    # NVIDIA H200 datasheet (hpc-datasheet-sc23-h200-datasheet-3002446): SXM TF32 989 and
    # BF16 1979 are *with sparsity*; dense is half. NVL: BF16 1671 sparse -> 835.5 dense.
    "H200-SXM": {"fp64": 67 * T, "fp32": 67 * T, "tf32": 494.7 * T, "bf16": 989.4 * T,
                 "fp16": 989.4 * T, "fp8": 1978.9 * T},
    "H200-NVL": {"fp64": 60 * T, "fp32": 60 * T, "tf32": 417.5 * T, "bf16": 835.5 * T,
                 "fp16": 835.5 * T, "fp8": 1670.5 * T},
    # NVIDIA L4 datasheet: FP32 30.3, TF32 60 (120 sparse), BF16/FP16 121 (242), FP8 242.5.
    "L4": {"fp32": 30.3 * T, "tf32": 60 * T, "bf16": 121 * T, "fp16": 121 * T,
           "fp8": 242.5 * T},
    # NVIDIA L40S datasheet: FP32 91.6, TF32 183 (366 sparse), BF16/FP16 362.05 (733), FP8 733.
    "L40S": {"fp32": 91.6 * T, "tf32": 183 * T, "bf16": 362.05 * T, "fp16": 362.05 * T,
             "fp8": 733 * T},
    # AMD Instinct MI250X datasheet: per OAM module FP32 matrix 95.7, FP64 matrix 95.7,
    # BF16/FP16 383. The module is two GCDs and torch sees each GCD as one device: halved.
    "MI250X": {"fp64": 47.85 * T, "fp32": 47.85 * T, "bf16": 191.5 * T, "fp16": 191.5 * T},
    # AMD Instinct MI300X datasheet: FP32 matrix 163.4, TF32 653.7 (1307.4 sparse),
    # BF16/FP16 1307.4 (2614.9 sparse), FP8 2614.9, FP64 matrix 163.4.
    "MI300X": {"fp64": 163.4 * T, "fp32": 163.4 * T, "tf32": 653.7 * T, "bf16": 1307.4 * T,
               "fp16": 1307.4 * T, "fp8": 2614.9 * T},
}

# the torch dtype each peak column is measured in
PEAK_DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "tf32": torch.float32,
           "bf16": torch.bfloat16, "fp16": torch.float16}


def chip_key(device_name: str) -> str | None:
    """Map a torch device name ("NVIDIA H100 80GB HBM3", "Tesla V100-SXM2-16GB", ...) to a
    PEAK_TABLE key, or None. Order matters: "gh200" contains "h200", "l40s" contains "l4"."""
    n = device_name.lower()
    if "gh200" in n:
        return "H100-SXM"  # GH200's GPU has the H100 SXM compute rates
    if "h200" in n:
        return "H200-NVL" if "nvl" in n else "H200-SXM"
    if "h100" in n:
        if "nvl" in n:
            return "H100-NVL"
        return "H100-PCIe" if ("pcie" in n or "hbm2e" in n) else "H100-SXM"
    if "a100" in n:
        return "A100"
    if "v100" in n:
        return "V100-PCIe" if "pcie" in n else "V100-SXM"
    if "l40s" in n:
        return "L40S"
    if re.search(r"\bl4\b", n):
        return "L4"
    if "mi300x" in n:
        return "MI300X"
    if "mi250x" in n:
        return "MI250X"
    return None


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


def _cached(cache_dir, device, key: str, measure):
    path = _cache_path(cache_dir, device)
    data = _read_cache(path)
    if key in data:
        return data[key]
    value = float(measure())
    data = _read_cache(path)  # re-read after measuring: keep keys another rank wrote
    data[key] = value
    _write_cache(path, data)
    return value


# ---- micro-benchmarks ---------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_flops(device: torch.device | str = "cpu", dtype: str = "fp32",
                         budget_s: float = 0.4) -> float:
    """Best-of-N square matmul FLOP/s. The size starts large enough to fill the cores (1024 on
    CPU, 2048 on GPU: a noisy first timing must not pin it small) and grows until one matmul
    takes >= 5 ms, so call overhead is negligible; then repeats until `budget_s` is spent."""
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
        best = dt
        while time.perf_counter() < t_deadline:
            t0 = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        return 2.0 * n**3 / best
    finally:
        if prev is not None:
            torch.backends.cuda.matmul.allow_tf32 = prev


def measure_triad_bandwidth(device: torch.device | str = "cpu", budget_s: float = 0.4,
                            n: int | None = None) -> float:
    """STREAM-triad bytes/s: a = b + s*c over fp32 arrays far larger than the caches;
    counts 3 arrays x 4 bytes per element (two reads, one write), as STREAM does."""
    device = torch.device(device)
    n = n or (2**24 if device.type == "cpu" else 2**27)
    b = torch.ones(n, device=device)
    c = torch.ones(n, device=device)
    a = torch.empty(n, device=device)
    torch.add(b, c, alpha=3.0, out=a)
    _sync(device)
    best, t_deadline = float("inf"), time.perf_counter() + budget_s
    reps = 0
    while reps < 3 or time.perf_counter() < t_deadline:
        t0 = time.perf_counter()
        torch.add(b, c, alpha=3.0, out=a)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
        reps += 1
        if reps >= 200:
            break
    return 3 * 4 * n / best


# ---- public API ---------------------------------------------------------------------------

def peak_flops(device: torch.device | str = "cpu", dtype: str = "fp32",
               override: float | Mapping | None = None, cache_dir: str | None = None,
               budget_s: float = 0.4) -> tuple[float, str]:
    """(peak FLOP/s of one device for `dtype`, source). See the module docstring.
    `override` is one number for every dtype, or {dtype: FLOP/s} for some of them."""
    if isinstance(override, Mapping):
        override = override.get(dtype)
    if override:
        return float(override), "override"
    device = torch.device(device)
    if device.type != "cpu":
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        chip = chip_key(name)
        if chip and dtype in PEAK_TABLE[chip]:
            return PEAK_TABLE[chip][dtype], f"table:{chip}"
        log.warning("no spec-sheet peak for %r (%s); measuring a matmul", name, dtype)
    if dtype not in PEAK_DTYPES:
        dtype = "fp32"  # fp8 has no portable matmul to measure
    value = _cached(cache_dir, device, f"matmul_{dtype}",
                    lambda: measure_matmul_flops(device, dtype, budget_s))
    return value, "measured"


def memory_bandwidth(device: torch.device | str = "cpu", override: float | None = None,
                     cache_dir: str | None = None, budget_s: float = 0.4) -> tuple[float, str]:
    """(bytes/s of the triad probe, source), cached per machine; for the roofline."""
    if override:
        return float(override), "override"
    device = torch.device(device)
    value = _cached(cache_dir, device, "triad", lambda: measure_triad_bandwidth(device, budget_s))
    return value, "measured"


def device_peaks(device: torch.device | str, dtype: str, override: float | Mapping | None = None,
                 cache_dir: str | None = None, budget_s: float = 0.4,
                 roofline: bool = True) -> dict:
    """The ceilings of one device under their metric names: its peak FLOP/s for `dtype`
    and, with `roofline`, its memory bandwidth (each measured once per machine, cached)."""
    value, source = peak_flops(device, dtype, override=override, cache_dir=cache_dir,
                               budget_s=budget_s)
    out: dict[str, float | str] = {"peak_flops_per_device": value, "peak_flops_source": source,
                                   "peak_flops_dtype": dtype}
    if roofline:
        bw, bw_source = memory_bandwidth(device, cache_dir=cache_dir, budget_s=budget_s)
        out.update(mem_bandwidth_bytes_per_s=bw, mem_bandwidth_source=bw_source)
    return out
