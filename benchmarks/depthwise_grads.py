"""Where a depthwise 3D conv's training time goes on this CPU, and the faster formulations.

    python benchmarks/depthwise_grads.py                      # the medium net's cube sizes
    python benchmarks/depthwise_grads.py --cubes 56:32:2 --repeats 9
    python benchmarks/depthwise_grads.py --dtype bf16          # torch's bf16 kernels

Per cube (channels:size:batch) and kernel size (3, 5), channels_last_3d, stride 1, medians of
--repeats, in ms: the forward; torch's input gradient and weight gradient
(`aten.convolution_backward`, one output each); the forward conv of the output gradient with the
flipped kernel (= the input gradient); and the weight gradient as one batch-folded forward conv
(`folded_grad_weight`). src/nas/depthwise.py takes the flipped conv always and the folded one
below `_SMALL_CUBE_VOXELS`; `stride2_grad_input` compares torch's strided input gradient with
the transposed conv in the contiguous layout it uses on small output cubes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from src.nas.depthwise import folded_grad_weight  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def time_kernel(k: int, C: int, n: int, batch: int, repeats: int,
                dtype: torch.dtype) -> tuple[float, ...]:
    """(forward, grad_input, grad_weight, flipped forward, folded grad_weight,
    stride-2 grad_input torch, stride-2 transposed conv) in ms."""
    p, cl = k // 2, torch.channels_last_3d
    x = torch.randn(batch, C, n, n, n).to(dtype).contiguous(memory_format=cl)
    w = torch.randn(C, 1, k, k, k).to(dtype).contiguous(memory_format=cl)
    g = torch.randn_like(F.conv3d(x, w, padding=p, groups=C))
    g2 = torch.randn_like(F.conv3d(x, w, stride=2, padding=p, groups=C))
    out_pad = n - ((g2.shape[2] - 1) * 2 - 2 * p + k)

    def backward(grad, stride, mask):
        return torch.ops.aten.convolution_backward(
            grad, x, w, None, [stride] * 3, [p] * 3, [1] * 3, False, [0] * 3, C, mask)

    return (median_ms(lambda: F.conv3d(x, w, padding=p, groups=C), repeats),
            median_ms(lambda: backward(g, 1, [True, False, False]), repeats),
            median_ms(lambda: backward(g, 1, [False, True, False]), repeats),
            median_ms(lambda: F.conv3d(g, w.flip(2, 3, 4), padding=p, groups=C), repeats),
            median_ms(lambda: folded_grad_weight(g, x, w, (p,) * 3, (1,) * 3), repeats),
            median_ms(lambda: backward(g2, 2, [True, False, False]), repeats),
            median_ms(lambda: F.conv_transpose3d(g2.contiguous(), w.contiguous(), None, 2, p,
                                                 out_pad, C), repeats))


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
    cols = ("forward", "grad_input", "grad_weight", "flipped_fwd", "folded_gw",
            "s2_gin_torch", "s2_gin_convT")
    print(f"{'cube':>12} {'k':>2} " + " ".join(f"{c:>12}" for c in cols))
    for cube in args.cubes:
        C, n, batch = (int(v) for v in cube.split(":"))
        for k in (3, 5):
            times = time_kernel(k, C, n, batch, args.repeats, dtype)
            print(f"{cube:>12} {k:>2} " + " ".join(f"{t:>12.2f}" for t in times), flush=True)


if __name__ == "__main__":
    main()
