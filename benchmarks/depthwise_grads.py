"""Where a depthwise 3D conv's training time goes on this CPU, with torch's own kernels.

    python benchmarks/depthwise_grads.py [--channels 56] [--size 32] [--batch 2]

Per kernel size (3, 5), channels_last_3d, medians of --repeats: the forward, torch's input
gradient and weight gradient (`aten.convolution_backward`, one output each), and the forward
conv of the output gradient with the flipped kernel, which equals the input gradient at
stride 1 (what src/nas/depthwise.py computes instead).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def time_kernel(k: int, C: int, n: int, batch: int, repeats: int) -> tuple[float, ...]:
    """(forward, grad_input, grad_weight, flipped forward) in ms for one kernel size."""
    p, cl = k // 2, torch.channels_last_3d
    x = torch.randn(batch, C, n, n, n).contiguous(memory_format=cl)
    w = torch.randn(C, 1, k, k, k).contiguous(memory_format=cl)
    g = torch.randn_like(F.conv3d(x, w, padding=p, groups=C))

    def backward(mask):
        return torch.ops.aten.convolution_backward(
            g, x, w, None, [1] * 3, [p] * 3, [1] * 3, False, [0] * 3, C, mask)

    return (median_ms(lambda: F.conv3d(x, w, padding=p, groups=C), repeats),
            median_ms(lambda: backward([True, False, False]), repeats),
            median_ms(lambda: backward([False, True, False]), repeats),
            median_ms(lambda: F.conv3d(g, w.flip(2, 3, 4), padding=p, groups=C), repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=56)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, depthwise "
          f"C={args.channels}, {args.size}^3, batch {args.batch}, channels_last_3d; "
          f"median ms of {args.repeats}")
    print(f"{'k':>2} {'forward':>9} {'grad_input':>11} {'grad_weight':>12} {'flipped_fwd':>12}")
    for k in (3, 5):
        fwd, gin, gw, flip = time_kernel(k, args.channels, args.size, args.batch, args.repeats)
        print(f"{k:>2} {fwd:>9.1f} {gin:>11.1f} {gw:>12.1f} {flip:>12.1f}")


if __name__ == "__main__":
    main()
