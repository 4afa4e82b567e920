"""Depthwise 3D convolution with a faster CPU path.

torch 2.13's CPU kernels compute both gradients of a depthwise (groups == channels) conv3d, and
dilated convs in both directions, many times slower than the undilated forward, worst on the
small cubes deep in the network. Here, for CPU tensors that need a gradient:
- the compiled kernels of `cpu_kernels` (built on first use; fp32/bf16) compute every weight
  gradient, the forward of dilated convs (strided ones too: cheaper than running the
  stride == dilation case as an undilated conv on a subsampled copy) and the input gradient of
  strided or dilated ones; the undilated forward and the stride-1 input gradient stay with
  torch (oneDNN), as the correlation of the output gradient with the flipped kernel
  (`_grad_input`);
- without the compiled kernels (no compiler, `speed.cpu_kernels=false`, float64): the weight gradient
  at stride 1 with 5^3 kernels or in bf16 is one forward conv with the batch folded into the
  channels (`folded_grad_weight`), torch's otherwise; the strided input gradient is a transposed
  conv on small cubes; 'same' dilated convs run as undilated ones (`_undilated`);
- kernel taps that only ever see padding are dropped (`_crop_taps`).
Which variant is faster for which kernel and cube size was measured by
`python -m benchmarks.depthwise_grads` (its tables: docs/benchmarks.md, "CPU kernels").

CUDA (cuDNN is fine), the meta device (FLOP counting), no-grad / inference calls and modules
carrying hooks (thop, traffic counting) use the plain `F.conv3d`, so counted FLOPs and module
hooks see exactly what they did before. `speed.fast_depthwise=false` (`set_fast_depthwise(False)`)
disables the whole custom path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module

from src.kernels import cpu_kernels

_ENABLED = True

# Rules of the PyTorch fallback, from benchmarks/depthwise_grads.py (docs/benchmarks.md):
# - the folded weight gradient beats torch's for 5^3 kernels at every cube size in fp32 and
#   loses for 3^3 ones; in bf16 it beats torch's bf16 kernel for 3^3 too;
# - the contiguous transposed conv beats torch's strided input gradient for small output cubes
#   (up to 8^3) and loses above;
# - torch's strided depthwise backward kernels are slower in bf16 than in fp32, casts included.
_FOLD_MIN_TAPS = 4 ** 3
_SMALL_CUBE_VOXELS = 8 ** 3
_LOW_PRECISION = (torch.bfloat16, torch.float16)


def set_fast_depthwise(enabled: bool) -> bool:
    """Switch the custom CPU backward on/off; returns the previous setting."""
    global _ENABLED
    previous, _ENABLED = _ENABLED, bool(enabled)
    return previous


def use_fast_paths(compiled_kernels: bool, fast_depthwise: bool) -> None:
    """The `speed.cpu_kernels` and `speed.fast_depthwise` switches, for training and search."""
    cpu_kernels.set_enabled(bool(compiled_kernels))
    set_fast_depthwise(bool(fast_depthwise))


def _triple(v) -> tuple[int, int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


def _flipped_pads(in_size, out_size, k, padding, dilation):
    """Per axis (left, right) zero padding of a stride-1 grad_output such that its correlation
    with the flipped kernel is grad_input; None where a padding would be negative."""
    pads = []
    for n, no, kk, p, d in zip(in_size, out_size, k, padding, dilation, strict=True):
        left, right = d * (kk - 1) - p, n - no + p
        if left < 0 or right < 0:
            return None
        pads.append((left, right))
    return pads


def _plain(stride, dilation) -> bool:
    return all(s == 1 for s in stride) and all(d == 1 for d in dilation)


def _voxels(t: torch.Tensor) -> int:
    return t.shape[2] * t.shape[3] * t.shape[4]


def _grad_input(g, w, in_shape, stride, padding, dilation, groups, x_like):
    if not _plain(stride, dilation):  # torch's strided/dilated kernels are the slow ones
        gx = cpu_kernels.grad_input(g, w, in_shape, stride, padding, dilation)
        if gx is not None:
            return gx
    pads = None
    if all(s == 1 for s in stride):
        pads = _flipped_pads(tuple(in_shape[2:]), tuple(g.shape[2:]), tuple(w.shape[2:]),
                             padding, dilation)
    if pads is None:
        return _in_fp32(_strided_grad_input, g, w, x_like, stride, padding, dilation, groups)
    wf = w.flip(2, 3, 4)
    if all(left == right for left, right in pads):
        return F.conv3d(g, wf, None, 1, [left for left, _ in pads], dilation, groups)
    # F.pad lists the last axis first
    return F.conv3d(F.pad(g, [v for pad in reversed(pads) for v in pad]), wf, None, 1, 0,
                    dilation, groups)


def _strided_grad_input(g, w, x_like, stride, padding, dilation, groups):
    """A transposed conv in the contiguous layout on small output cubes, torch's kernel
    otherwise."""
    if _voxels(g) <= _SMALL_CUBE_VOXELS:
        out_pad = [n - ((no - 1) * s - 2 * p + d * (kk - 1) + 1) for n, no, s, p, d, kk in
                   zip(x_like.shape[2:], g.shape[2:], stride, padding, dilation, w.shape[2:],
                       strict=True)]
        if all(0 <= op < max(s, d) for op, s, d in zip(out_pad, stride, dilation, strict=True)):
            return F.conv_transpose3d(g.contiguous(), w.contiguous(), None, stride, padding,
                                      out_pad, groups, dilation)
    return torch.ops.aten.convolution_backward(
        g, x_like, w, None, list(stride), list(padding), list(dilation), False, [0, 0, 0],
        groups, [True, False, False])[0]


def _grad_weight(g, x, w, stride, padding, dilation, groups):
    """The compiled kernel (`cpu_kernels`) where it builds; without it, stride 1 with a 5^3
    kernel or in bf16/fp16: `folded_grad_weight`; torch's kernel otherwise (strided, the
    folded conv is dilated by the stride: measured slower)."""
    gw = cpu_kernels.grad_weight(g, x, w, stride, padding, dilation)
    if gw is not None:
        return gw.contiguous(memory_format=memory_format(w))
    taps = w.shape[2] * w.shape[3] * w.shape[4]
    if all(v == 1 for v in stride) and (taps >= _FOLD_MIN_TAPS or w.dtype in _LOW_PRECISION):
        return folded_grad_weight(g, x, w, padding, dilation)
    return _in_fp32(_torch_grad_weight, g, x, w, stride, padding, dilation, groups)


def _torch_grad_weight(g, x, w, stride, padding, dilation, groups):
    return torch.ops.aten.convolution_backward(
        g, x, w, None, list(stride), list(padding), list(dilation), False, [0, 0, 0], groups,
        [False, True, False])[1]


def _in_fp32(fn, *args):
    """`fn` on fp32 copies of bf16/fp16 tensor arguments, its result cast back: torch's CPU
    depthwise backward kernels are slower in bf16 than in fp32, casts included."""
    dtype = next(a.dtype for a in args if isinstance(a, torch.Tensor))
    if dtype not in _LOW_PRECISION:
        return fn(*args)
    return fn(*(a.float() if isinstance(a, torch.Tensor) else a for a in args)).to(dtype)


def folded_grad_weight(g, x, w, padding, dilation):
    """Weight gradient of a stride-1 depthwise conv:
    dW[c, t] = sum over n, s of x_padded[n, c, s + dilation * t] * g[n, c, s],
    as one forward depthwise conv of the padded input with the batch folded into the channels
    and g as the (large) kernel, its dilation as the stride; then the sum over the batch.
    """
    B, C = x.shape[:2]
    xp = F.pad(x, [p for p in reversed(padding) for _ in range(2)])
    folded = F.conv3d(xp.reshape(1, B * C, *xp.shape[2:]).contiguous(),
                      g.reshape(B * C, 1, *g.shape[2:]).contiguous(), None, dilation, 0, 1, B * C)
    k0, k1, k2 = w.shape[2:]
    gw = folded[:, :, :k0, :k1, :k2].reshape(B, C, k0, k1, k2).sum(
        0, dtype=torch.promote_types(w.dtype, torch.float32))  # bf16 grads summed in fp32
    return gw.unsqueeze(1).to(w.dtype).contiguous(memory_format=memory_format(w))


class _DepthwiseConv3dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, stride, padding, dilation):
        groups = x.shape[1]
        ctx.conf = (stride, padding, dilation, groups)
        ctx.save_for_backward(x, w)
        y = None
        if any(d != 1 for d in dilation):
            y = cpu_kernels.conv(x, w, stride, padding, dilation)
        return F.conv3d(x, w, None, stride, padding, dilation, groups) if y is None else y

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        # match the plain conv: its backward sees grad_output in the input's memory format
        g = g.contiguous(memory_format=memory_format(x))
        gx = gw = None
        with torch.autocast("cpu", enabled=False):
            if ctx.needs_input_grad[0]:
                gx = _grad_input(g, w, x.shape, stride, padding, dilation, groups, x)
                if x.is_contiguous(memory_format=torch.channels_last_3d):
                    gx = gx.contiguous(memory_format=torch.channels_last_3d)
            if ctx.needs_input_grad[1]:
                gw = _grad_weight(g, x, w, stride, padding, dilation, groups)
        return gx, gw, None, None, None


def _wants_fast_path(x: torch.Tensor, w: torch.Tensor) -> bool:
    return (_ENABLED and x.device.type == "cpu" and w.device.type == "cpu"
            and torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
            and x.dim() == 5 and w.shape[1] == 1 and w.shape[0] == x.shape[1])


def memory_format(t: torch.Tensor):
    """channels_last_3d for a tensor laid out so (and not also plain contiguous), else
    contiguous_format: the layout torch's convs keep."""
    if t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


def _undilated(x, w, stride, padding, dilation):
    """A 'same'-padded dilated depthwise conv as an undilated one, or None.

    torch's CPU dilated 3D convolutions are slow in both directions. With dilation d and
    padding d * (k // 2) an output voxel only sees input voxels of its own residue mod d:
    - stride d: the conv of the every-d-th-voxel subsample with the undilated kernel;
    - stride 1: space-to-batch into the d^3 residue classes, undilated conv, batch-to-space.
    Same sums in a different order, so equal to float rounding. Where the compiled kernels run,
    None: their gather form computes the dilated conv directly, faster than both rewrites.
    """
    d = dilation[0]
    k = w.shape[2:]
    if (d == 1 or any(v != d for v in dilation) or any(kk % 2 == 0 for kk in k)
            or any(p != d * (kk // 2) for p, kk in zip(padding, k, strict=True))
            or cpu_kernels.applies(x, w)):
        return None
    pad = tuple(kk // 2 for kk in k)
    if all(s == d for s in stride):
        xs = x[:, :, ::d, ::d, ::d]
        return _fast(xs.contiguous(memory_format=memory_format(x)), w, (1, 1, 1), pad, (1, 1, 1))
    if any(s != 1 for s in stride) or min(x.shape[2:]) < 4 * d:
        # tiny cubes (4^3 at d=2): the residue grids are mostly padding, measured slower
        return None
    B, C, D, H, W = x.shape
    fmt = memory_format(x)
    xp = F.pad(x, (0, (-W) % d, 0, (-H) % d, 0, (-D) % d))
    Dd, Hd, Wd = (xp.shape[2] // d, xp.shape[3] // d, xp.shape[4] // d)
    xb = (xp.reshape(B, C, Dd, d, Hd, d, Wd, d).permute(0, 3, 5, 7, 1, 2, 4, 6)
          .reshape(B * d ** 3, C, Dd, Hd, Wd).contiguous(memory_format=fmt))
    yb = _fast(xb, w, (1, 1, 1), pad, (1, 1, 1))
    y = (yb.reshape(B, d, d, d, C, Dd, Hd, Wd).permute(0, 4, 5, 1, 6, 2, 7, 3)
         .reshape(B, C, Dd * d, Hd * d, Wd * d)[:, :, :D, :H, :W])
    # the layout torch's conv picks for this dtype/backend (oneDNN: channels_last in, out)
    return y.contiguous(memory_format=memory_format(yb))


def _fast(x, w, stride, padding, dilation):
    if torch.is_autocast_enabled("cpu"):  # conv3d is autocast to the lower precision on CPU
        dtype = torch.get_autocast_dtype("cpu")
        x, w = x.to(dtype), w.to(dtype)
        with torch.autocast("cpu", enabled=False):
            return _DepthwiseConv3dFn.apply(x, w, stride, padding, dilation)
    return _DepthwiseConv3dFn.apply(x, w, stride, padding, dilation)


def _crop_taps(x, w, stride, padding, dilation):
    """Drop the kernel taps of a stride-1 'same' conv that only ever see padding.

    A tap at offset dilation * (j - k // 2) reaches the input only if that offset is below the
    cube's size: a 5^3 kernel at dilation 2 on a 4^3 cube is a 3^3 one. Same output with fewer
    multiply-adds; the dropped taps get a zero gradient through the slice. (Counted FLOPs keep
    the whole kernel, the convention of thop and the paper's Eq. 1.)
    """
    if any(s != 1 for s in stride):
        return w, padding
    keep, new_padding = [], []
    for n, kk, p, d in zip(x.shape[2:], w.shape[2:], padding, dilation, strict=True):
        drop = max(0, kk // 2 - (n - 1) // d) if kk % 2 and p == d * (kk // 2) else 0
        keep.append(slice(drop, kk - drop))
        new_padding.append(p - d * drop)
    if all(sl.start == 0 for sl in keep):
        return w, padding
    return w[:, :, keep[0], keep[1], keep[2]], tuple(new_padding)


def depthwise_conv3d(x, w, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """`F.conv3d(x, w, None, stride, padding, dilation, groups=x.shape[1])` (no bias, integer
    padding), with the fast CPU backward when it applies."""
    stride, padding, dilation = _triple(stride), _triple(padding), _triple(dilation)
    if not _wants_fast_path(x, w):
        return F.conv3d(x, w, None, stride, padding, dilation, x.shape[1])
    w, padding = _crop_taps(x, w, stride, padding, dilation)
    y = _undilated(x, w, stride, padding, dilation)
    if y is not None:
        return y
    return _fast(x, w, stride, padding, dilation)


def has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None)
                or _module._global_forward_hooks or _module._global_forward_pre_hooks
                or _module._global_backward_hooks
                or getattr(_module, "_global_backward_pre_hooks", None))


def run_depthwise(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """Call the depthwise `nn.Conv3d` module `conv` on `x`, through the fast path when it applies.

    The module itself stays a plain `nn.Conv3d` (same parameters, state_dict keys and FLOP
    counting); a module with hooks, a bias, non-zero padding mode or string padding is simply
    called.
    """
    if (conv.bias is not None or conv.padding_mode != "zeros" or isinstance(conv.padding, str)
            or conv.groups != conv.in_channels or conv.out_channels != conv.in_channels
            or has_hooks(conv) or not _wants_fast_path(x, conv.weight)):
        return conv(x)
    return depthwise_conv3d(x, conv.weight, conv.stride, conv.padding, conv.dilation)


def run_avg_pool(pool: nn.AvgPool3d, x: torch.Tensor) -> torch.Tensor | None:
    """`pool(x)` for a 'same'-padded, padding-excluded average pool as a depthwise conv with a
    kernel of ones divided by the in-bounds tap count, or None where the fast path does not apply.

    torch's CPU avg_pool3d (and its backward) is several times slower than the depthwise conv
    with the same taps, and returns the contiguous layout for channels_last_3d input. Under
    bf16 autocast the result is bf16 like a conv's (autocast runs torch's pool in fp32): the
    training forward and an inference forward of the same op then differ by bf16 rounding.
    """
    k, stride, pad = _triple(pool.kernel_size), _triple(pool.stride), _triple(pool.padding)
    if (pool.count_include_pad or pool.ceil_mode or pool.divisor_override is not None
            or any(kk % 2 == 0 or p != kk // 2 for kk, p in zip(k, pad, strict=True))
            or has_hooks(pool) or not _wants_fast_path(x, x.new_empty(x.shape[1], 1, *k))):
        return None
    ones = x.new_ones(x.shape[1], 1, *k)
    total = depthwise_conv3d(x, ones, stride, pad)
    count = F.conv3d(x.new_ones(1, 1, *x.shape[2:]), ones[:1], None, stride, pad)
    return total / count
