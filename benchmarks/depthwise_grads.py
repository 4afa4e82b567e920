"""Where a depthwise 3D conv's training time goes on this CPU, and the faster formulations.

    python -m benchmarks.depthwise_grads                      # the medium net's cube sizes
    python -m benchmarks.depthwise_grads --cubes 56:32:2 --repeats 9
    python -m benchmarks.depthwise_grads --dtype bf16          # torch's bf16 kernels

Per cube (channels:size:batch) and kernel size (3, 5), channels_last_3d, 'same' padding, medians
of --repeats, in ms. Stride 1: the forward; torch's input gradient and weight gradient
(`aten.convolution_backward`, one output each); the forward conv of the output gradient with the
flipped kernel (= the input gradient); the weight gradient as one batch-folded forward conv
(`folded_grad_weight`) and by the compiled kernel (`k_gw`, src/kernels/cpu_kernels.cpp).
Dilation 2 (`d2_`): forward and input gradient by torch and by the compiled gather kernel.
Stride 2 (`s2_`): the input gradient by torch, by the transposed conv in the contiguous layout,
and by the gather kernel; the weight gradient by torch and by the compiled kernel.
src/kernels/depthwise.py uses the compiled kernels wherever they build (`k_` columns), torch's
undilated forward and the flipped conv otherwise; without them, the PyTorch rules in its
docstring. `nan`: the compiled kernel is unavailable here.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from src.kernels import cpu_kernels
from src.kernels.depthwise import folded_grad_weight


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _kernel_ms(fn, repeats: int) -> float:
    return median_ms(fn, repeats) if cpu_kernels.load() is not None else float("nan")


def time_kernel(k: int, C: int, n: int, batch: int, repeats: int,
                dtype: torch.dtype) -> tuple[float, ...]:
    """The times of COLUMNS, in ms."""
    p, cl = k // 2, torch.channels_last_3d
    x = torch.randn(batch, C, n, n, n).to(dtype).contiguous(memory_format=cl)
    w = torch.randn(C, 1, k, k, k).to(dtype).contiguous(memory_format=cl)
    g = torch.randn_like(F.conv3d(x, w, padding=p, groups=C))
    g2 = torch.randn_like(F.conv3d(x, w, stride=2, padding=p, groups=C))
    out_pad = n - ((g2.shape[2] - 1) * 2 - 2 * p + k)
    one, two, pad, pad2 = (1,) * 3, (2,) * 3, (p,) * 3, (2 * p,) * 3

    def backward(grad, stride, dilation, mask):
        return torch.ops.aten.convolution_backward(
            grad, x, w, None, [stride] * 3, [p * dilation] * 3, [dilation] * 3, False, [0] * 3,
            C, mask)

    return (median_ms(lambda: F.conv3d(x, w, padding=p, groups=C), repeats),
            median_ms(lambda: backward(g, 1, 1, [True, False, False]), repeats),
            median_ms(lambda: backward(g, 1, 1, [False, True, False]), repeats),
            median_ms(lambda: F.conv3d(g, w.flip(2, 3, 4), padding=p, groups=C), repeats),
            median_ms(lambda: folded_grad_weight(g, x, w, pad, one), repeats),
            _kernel_ms(lambda: cpu_kernels.grad_weight(g, x, w, one, pad, one), repeats),
            median_ms(lambda: F.conv3d(x, w, None, 1, 2 * p, 2, C), repeats),
            _kernel_ms(lambda: cpu_kernels.conv(x, w, one, pad2, two), repeats),
            median_ms(lambda: backward(g, 1, 2, [True, False, False]), repeats),
            _kernel_ms(lambda: cpu_kernels.grad_input(g, w, x.shape, one, pad2, two), repeats),
            median_ms(lambda: backward(g2, 2, 1, [True, False, False]), repeats),
            median_ms(lambda: F.conv_transpose3d(g2.contiguous(), w.contiguous(), None, 2, p,
                                                 out_pad, C), repeats),
            _kernel_ms(lambda: cpu_kernels.grad_input(g2, w, x.shape, two, pad, one), repeats),
            median_ms(lambda: backward(g2, 2, 1, [False, True, False]), repeats),
            _kernel_ms(lambda: cpu_kernels.grad_weight(g2, x, w, two, pad, one), repeats))


COLUMNS = ("forward", "grad_input", "grad_weight", "flipped", "folded_gw", "k_gw",
           "d2_fwd", "d2_k_fwd", "d2_gin", "d2_k_gin",
           "s2_gin", "s2_convT", "s2_k_gin", "s2_gw", "s2_k_gw")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cubes", nargs="+", default=["448:4:2", "224:8:2", "112:16:2", "56:32:2"],
                        help="channels:size:batch per cube (default: the medium net at 32^3)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, depthwise conv3d, "
          f"channels_last_3d, {args.dtype}, median ms of {args.repeats}")
    print(f"{'cube':>9} {'k':>2} " + " ".join(f"{c:>11}" for c in COLUMNS))
    for cube in args.cubes:
        C, n, batch = (int(v) for v in cube.split(":"))
        for k in (3, 5):
            times = time_kernel(k, C, n, batch, args.repeats, dtype)
            print(f"{cube:>9} {k:>2} " + " ".join(f"{t:>11.2f}" for t in times), flush=True)


if __name__ == "__main__":
    main()
