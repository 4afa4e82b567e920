"""Print this machine's measured peak FLOP/s (matmul, fp32 and bf16) and triad bandwidth.

    python -m benchmarks.peak_bench [--budget 0.4] [--threads N] [--write-cache] [--cache-dir D]

Always measures afresh (the training callback reads the per-machine cache instead);
`--write-cache` stores the fresh numbers there, e.g. after the cache was filled on a busy
machine. On a CUDA machine the GPU is measured too, next to its spec-sheet table entry.
"""

from __future__ import annotations

import argparse
import time

import torch

from src.perf import peak
from src.util.cache import DEFAULT_CACHE_DIR
from src.util.cpuinfo import cpu_model


def bench(device: torch.device, budget: float) -> dict:
    """Cache entries (median matmul FLOP/s with spread, best triad bytes/s) by cache key."""
    out = {}
    dtypes = ("fp32", "bf16", "tf32") if device.type == "cuda" else ("fp32", "bf16")
    for dtype in dtypes:
        out[f"matmul_{dtype}"] = peak.measured_entry(
            lambda dtype=dtype: peak.matmul_rates(device, dtype, budget))
    out["triad"] = peak.measured_entry(lambda: peak.triad_rates(device, budget), pick="max")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=0.4, help="seconds per benchmark")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--write-cache", action="store_true", help="store results in the cache")
    ap.add_argument("--cache-dir", default=None, help=f"default {DEFAULT_CACHE_DIR}")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda", 0))
    for device in devices:
        name = cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(device)
        threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
        t0 = time.perf_counter()
        res = bench(device, args.budget)
        took = time.perf_counter() - t0
        print(f"{device.type}: {name}{threads}  (machine key {peak.machine_key(device)})")
        for key, e in res.items():
            load = f", other processes {100 * e['other_cpu_frac']:.1f} % of the CPUs" \
                if "other_cpu_frac" in e else ""
            if key == "triad":
                print(f"  triad bandwidth      {e['value'] / 1e9:10.2f} GB/s (best of "
                      f"{e['repeats']}){load}")
            else:
                dtype = key.split("_", 1)[1]
                print(f"  peak {dtype:5s} measured {e['value'] / 1e12:10.4f} TFLOP/s (median of "
                      f"{e['repeats']}, {e['min'] / 1e12:.4f}-{e['max'] / 1e12:.4f}){load}")
        chip = peak.chip_key(name) if device.type == "cuda" else None
        if chip:
            row = ", ".join(f"{k} {v / 1e12:g}" for k, v in peak.PEAK_TABLE[chip].items())
            print(f"  spec sheet ({chip}, dense TFLOP/s): {row}")
        print(f"  ({took:.2f} s)")
        if args.write_cache:
            path = peak._cache_path(args.cache_dir, device)
            peak._write_cache(path, {**peak._read_cache(path), **res})
            print(f"  cached in {path}")


if __name__ == "__main__":
    main()
