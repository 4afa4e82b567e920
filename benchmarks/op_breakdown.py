"""Where a DARTS net's training FLOPs and time go, by operation class.

    python -m benchmarks.op_breakdown --model medium --size 32 --batch 2
    python -m benchmarks.op_breakdown --model medium --size 32 --batch 2 --bf16

Every Conv3d and BatchNorm3d + LeakyReLU pair the net calls is timed alone, forward + backward
(input gradients on as inside the net, off for the first conv; the same code path: the DARTS ops' depthwise and fused
BN paths), and the times are summed per class: pointwise (1x1) convs, depthwise convs by
kernel / dilation / stride, the stem, BN + LeakyReLU. Printed per class: calls, share of the
multiply-adds, share of the summed time, and GFLOP/s (6 x MACs / time, Eq. 1's convention).
The summed time leaves out what runs between ops (additions, concatenations, the optimizer).
The process runs with the CPU defaults' settings (conf/speed/cpu.yaml), as training does.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path

import torch

from benchmarks.profile_step import apply_cpu_speed_settings, build_net, step_args
from src.kernels.depthwise import run_depthwise
from src.layers.blocks import bn_act

ROOT = Path(__file__).resolve().parents[1]

CL = torch.channels_last_3d


def op_class(conv: torch.nn.Conv3d) -> str:
    if conv.groups > 1:
        return f"dw k{conv.kernel_size[0]} d{conv.dilation[0]} s{conv.stride[0]}"
    return "pointwise" if conv.kernel_size[0] == 1 else "stem/dense"


def conv_macs(conv: torch.nn.Conv3d, in_shape) -> int:
    out = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
           zip(in_shape[2:], conv.padding, conv.dilation, conv.kernel_size, conv.stride,
               strict=True)]
    k3 = conv.kernel_size[0] * conv.kernel_size[1] * conv.kernel_size[2]
    return in_shape[0] * conv.out_channels * (conv.in_channels // conv.groups) * k3 * (
        out[0] * out[1] * out[2])


def median_s(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    args = step_args(__doc__, [("--repeats", {"type": int, "default": 3})])
    apply_cpu_speed_settings()
    net = build_net(args.model, args.size)

    # the input shape of every conv and BN call, from one no-grad forward with hooks
    calls = []
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append((m, i[0].shape)))
             for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.BatchNorm3d))]
    with torch.no_grad():
        net(torch.randn(args.batch, 1, args.size, args.size, args.size).contiguous(
            memory_format=CL))
    for h in hooks:
        h.remove()
    act = torch.nn.LeakyReLU(0.3)

    first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d))

    def timed(module, shape) -> float:
        # the net's first conv reads the data: no input gradient there
        x = torch.randn(shape).contiguous(memory_format=CL).requires_grad_(module is not first)
        if isinstance(module, torch.nn.BatchNorm3d):
            def op(t):
                return bn_act(module, act, t)
        elif module.groups > 1:
            def op(t):
                return run_depthwise(module, t)
        else:
            op = module

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                y = op(x)
            y.backward(torch.ones_like(y))
        return median_s(step, args.repeats)

    macs, secs, count, cache = Counter(), Counter(), Counter(), {}
    for module, shape in calls:
        if len(shape) != 5:
            continue
        name = op_class(module) if isinstance(module, torch.nn.Conv3d) else "BN + LeakyReLU"
        count[name] += 1
        if isinstance(module, torch.nn.Conv3d):
            macs[name] += conv_macs(module, shape)
        key = (name, tuple(shape), getattr(module, "out_channels", 0))
        if key not in cache:
            cache[key] = timed(module, shape)
        secs[name] += cache[key]
    total_macs, total_s = sum(macs.values()), sum(secs.values())
    print(f"model={args.model} {args.size}^3 batch {args.batch}, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}, {torch.get_num_threads()} threads: "
          f"{total_macs / 1e9:.2f} GMAC forward, summed op time {total_s:.3f} s")
    print(f"{'class':>16} {'calls':>6} {'MAC %':>7} {'time %':>7} {'time s':>8} {'GFLOP/s':>8}")
    for name in sorted(secs, key=lambda n: -secs[n]):
        gflops = 6 * macs[name] / secs[name] / 1e9 if macs[name] else float("nan")
        print(f"{name:>16} {count[name]:>6} {100 * macs[name] / total_macs:>7.1f} "
              f"{100 * secs[name] / total_s:>7.1f} {secs[name]:>8.3f} {gflops:>8.1f}")


if __name__ == "__main__":
    main()
