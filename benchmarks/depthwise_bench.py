"""Depthwise Conv3d on CPU: our flipped-kernel backward (src/kernels/depthwise.py) vs torch's.

    .venv/bin/python -m benchmarks.depthwise_bench                  # medium net, 32^3, batch 2
    .venv/bin/python -m benchmarks.depthwise_bench --model large --repeats 7

Part 1: forward + backward (grad_input and grad_weight) of every distinct depthwise conv shape
of the network, channels_last_3d like the CPU training default (conf/speed/cpu.yaml).
Part 2: one full training step (forward, MSE loss, backward) of the whole network.
Variants are interleaved per repeat (torch, ours, torch, ours, ...) and medians compared;
`speedup` = torch time / ours.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.profile_step import build_net
from src.kernels.depthwise import depthwise_conv3d, set_fast_depthwise

ROOT = Path(__file__).resolve().parents[1]

CL = torch.channels_last_3d


def depthwise_shapes(net, x):
    """Distinct (C, input spatial, k, stride, padding, dilation) of the depthwise convs, with
    how often each occurs."""
    seen: dict[tuple, int] = {}

    def hook(m, inp, out):
        key = (m.in_channels, tuple(inp[0].shape[2:]), m.kernel_size[0], m.stride[0],
               m.padding[0], m.dilation[0])
        seen[key] = seen.get(key, 0) + 1

    hs = [m.register_forward_hook(hook) for m in net.modules()
          if isinstance(m, torch.nn.Conv3d) and m.groups > 1 and m.groups == m.in_channels]
    with torch.no_grad():
        net(x)
    for h in hs:
        h.remove()
    return seen


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def time_depthwise_convs(shapes: dict, batch: int, repeats: int) -> None:
    """Each depthwise conv shape of the net, torch's kernels against ours, and the total."""
    print("\n== depthwise conv forward+backward (ms, median) ==")
    print(f"{'C':>4} {'in':>12} {'k':>2} {'s':>2} {'d':>2} {'count':>5} {'torch':>8} "
          f"{'ours':>8} {'speedup':>8}")
    tot_torch = tot_ours = 0.0
    for (C, sp, k, s, p, d), count in sorted(shapes.items(), key=lambda kv: -kv[0][1][0]):
        xi = torch.randn(batch, C, *sp).contiguous(memory_format=CL).requires_grad_(True)
        w = torch.randn(C, 1, k, k, k).contiguous(memory_format=CL).requires_grad_(True)
        g = torch.randn_like(F.conv3d(xi.detach(), w.detach(), None, s, p, d, C))

        def plain(xi=xi, w=w, g=g, conf=(s, p, d, C)):
            xi.grad = w.grad = None
            F.conv3d(xi, w, None, *conf).backward(g)

        def ours(xi=xi, w=w, g=g, conf=(s, p, d)):
            xi.grad = w.grad = None
            depthwise_conv3d(xi, w, *conf).backward(g)

        r = interleaved({"torch": plain, "ours": ours}, repeats)
        tot_torch += r["torch"] * count
        tot_ours += r["ours"] * count
        print(f"{C:>4} {'x'.join(map(str, sp)):>12} {k:>2} {s:>2} {d:>2} {count:>5} "
              f"{r['torch']:>8.1f} {r['ours']:>8.1f} {r['torch'] / r['ours']:>7.2f}x")
    print(f"all depthwise convs of one step (count-weighted): torch {tot_torch:.0f} ms, "
          f"ours {tot_ours:.0f} ms, speedup {tot_torch / tot_ours:.2f}x")


def time_step(net, x, batch: int, repeats: int) -> None:
    """One training step of the net with the fast depthwise path off and on."""
    print("\n== full training step: forward + MSE + backward (ms, median) ==")
    y0 = torch.zeros(batch, 3)

    def step():
        net.zero_grad(set_to_none=True)
        F.mse_loss(net(x), y0).backward()

    def step_plain():
        prev = set_fast_depthwise(False)
        try:
            step()
        finally:
            set_fast_depthwise(prev)

    r = interleaved({"torch": step_plain, "ours": step}, repeats)
    print(f"step torch {r['torch']:.0f} ms, ours {r['ours']:.0f} ms, "
          f"speedup {r['torch'] / r['ours']:.2f}x ({(1 - r['ours'] / r['torch']) * 100:.1f} % "
          "less time)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="medium")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--step-repeats", type=int, default=3)
    ap.add_argument("--skip-step", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model={args.model}, "
          f"{args.size}^3, batch {args.batch}, channels_last_3d")

    net = build_net(args.model, args.size)  # channels_last_3d
    x = torch.randn(args.batch, 1, *(args.size,) * 3).contiguous(memory_format=CL)
    shapes = depthwise_shapes(net, x)

    time_depthwise_convs(shapes, args.batch, args.repeats)
    if not args.skip_step:
        time_step(net, x, args.batch, args.step_repeats)


if __name__ == "__main__":
    main()
