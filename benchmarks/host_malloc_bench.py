"""Training step time with glibc's default malloc vs freed memory kept for reuse
(`speed.malloc_keep_mib`, src/perf/host_malloc.py).

    python -m benchmarks.host_malloc_bench --model medium --size 32 --batch 2
    python -m benchmarks.host_malloc_bench --model medium --size 64 --steps 2 --repeats 2
    python -m benchmarks.host_malloc_bench --model medium --bf16

The setting is process-wide and cannot be undone, so each variant runs in its own fresh
process, alternating (default, kept, default, kept, ...); each process times `--steps` steps
of forward, MSE, backward and fused Adam (channels_last_3d, as the CPU defaults) after two
warm-up steps, and before those a fresh 44 MiB tensor's allocation + fill (the page-fault cost
itself). Printed: the medians per variant (and the process's peak resident memory) and the
ratio of step times.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.profile_step import make_train_step, step_args
from src.perf.host_malloc import keep_freed_memory

ROOT = Path(__file__).resolve().parents[1]

FILL_MIB = 44  # the medium net's 32^3 stem output at batch 2 (168 channels, fp32)


def child(args) -> dict:
    if args.keep_mib:
        assert keep_freed_memory(args.keep_mib), "glibc's mallopt refused the setting"
    torch.manual_seed(0)
    step = make_train_step(args.model, args.size, args.batch, args.bf16)

    def fill():
        torch.empty(FILL_MIB << 18).fill_(1.0)  # 4-byte floats

    times = {"step_s": [], "fill_ms": []}
    # the fill first, while the heap is fresh (later it may be served from freed step memory)
    for fn, key, n, warm in ((fill, "fill_ms", 9, 1), (step, "step_s", args.steps, 2)):
        for _ in range(warm):
            fn()
        for _ in range(n):
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {"step_s": statistics.median(times["step_s"]),
            "fill_ms": 1e3 * statistics.median(times["fill_ms"]),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    args = step_args(__doc__, [
        ("--steps", {"type": int, "default": 5, "help": "timed steps per process"}),
        ("--repeats", {"type": int, "default": 3, "help": "processes per variant"}),
        ("--keep-mib", {"type": int, "default": 1024,
                        "help": "the kept variant's speed.malloc_keep_mib (conf/speed/cpu.yaml)"}),
        ("--child", {"action": "store_true", "help": argparse.SUPPRESS}),
    ])
    if args.child:
        print(json.dumps(child(args)))
        return

    common = [sys.executable, "-m", __spec__.name, "--child", "--model", args.model, "--size",
              str(args.size), "--batch", str(args.batch), "--steps", str(args.steps)]
    common += ["--bf16"] if args.bf16 else []
    variants = {"glibc_default": ["--keep-mib", "0"], "kept": ["--keep-mib", str(args.keep_mib)]}
    results: dict[str, list[dict]] = {k: [] for k in variants}
    for rep in range(args.repeats):
        for name, extra in variants.items():
            out = subprocess.run(common + extra, check=True, capture_output=True, text=True,
                                 cwd=ROOT)
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"repeat {rep} {name}: step {results[name][-1]['step_s']:.3f} s, "
                  f"{FILL_MIB} MiB alloc+fill {results[name][-1]['fill_ms']:.2f} ms", flush=True)
    keys = ("step_s", "fill_ms", "peak_rss_mib")
    med = {name: {key: statistics.median(r[key] for r in rs) for key in keys}
           for name, rs in results.items()}
    print(f"model={args.model} {args.size}^3 batch {args.batch} "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}, {torch.get_num_threads()} threads, "
          f"medians of {args.repeats} processes x {args.steps} steps")
    for name, m in med.items():
        print(f"  {name:>14}: step {m['step_s']:.3f} s, {FILL_MIB} MiB alloc+fill "
              f"{m['fill_ms']:.2f} ms, peak RSS {m['peak_rss_mib']:.0f} MiB")
    print(f"  step time kept / default: {med['kept']['step_s'] / med['glibc_default']['step_s']:.3f}")


if __name__ == "__main__":
    main()
