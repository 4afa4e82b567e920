"""Depthwise 3D convolution with a faster CPU backward.

torch's CPU kernels compute the input gradient of a depthwise (groups == channels) conv3d about
ten times slower than the forward. For stride 1 the input gradient is itself a depthwise
convolution: the correlation of the output gradient with the spatially flipped kernel, same
dilation, at forward speed (strided convs keep torch's backward: zero-insertion measured
slower). The weight gradient stays torch's (`aten.convolution_backward` with only the weight
requested); nothing faster and exact was found. Dilated 'same' convs run as undilated ones
(`_undilated`).

Only CPU tensors that need a gradient take the custom path; CUDA (cuDNN is fine), the meta device
(FLOP counting), no-grad / inference calls and modules carrying hooks (thop, traffic counting)
use the plain `F.conv3d`, so counted FLOPs and module hooks see exactly what they did before.
Set `SAIH_FAST_DEPTHWISE=0` or call `set_fast_depthwise(False)` to disable the custom path.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module

_ENABLED = os.environ.get("SAIH_FAST_DEPTHWISE", "1") not in ("0", "false", "False", "")


def set_fast_depthwise(enabled: bool) -> bool:
    """Switch the custom CPU backward on/off; returns the previous setting."""
    global _ENABLED
    previous, _ENABLED = _ENABLED, bool(enabled)
    return previous


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


def _grad_input(g, w, in_shape, stride, padding, dilation, groups, x_like):
    pads = None
    if all(s == 1 for s in stride):
        pads = _flipped_pads(tuple(in_shape[2:]), tuple(g.shape[2:]), tuple(w.shape[2:]),
                             padding, dilation)
    if pads is None:
        # strided: torch's own kernel (zero-insertion + flipped conv measured slower at 32^3)
        return torch.ops.aten.convolution_backward(
            g, x_like, w, None, list(stride), list(padding), list(dilation), False, [0, 0, 0],
            groups, [True, False, False])[0]
    wf = w.flip(2, 3, 4)
    if all(left == right for left, right in pads):
        return F.conv3d(g, wf, None, 1, [left for left, _ in pads], dilation, groups)
    # F.pad lists the last axis first
    return F.conv3d(F.pad(g, [v for pad in reversed(pads) for v in pad]), wf, None, 1, 0,
                    dilation, groups)


class _DepthwiseConv3dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, stride, padding, dilation):
        groups = x.shape[1]
        ctx.conf = (stride, padding, dilation, groups)
        ctx.save_for_backward(x, w)
        return F.conv3d(x, w, None, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        # match the plain conv: its backward sees grad_output in the input's memory format
        if x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
            g = g.contiguous(memory_format=torch.channels_last_3d)
        else:
            g = g.contiguous()
        gx = gw = None
        with torch.autocast("cpu", enabled=False):
            if ctx.needs_input_grad[0]:
                gx = _grad_input(g, w, x.shape, stride, padding, dilation, groups, x)
                if x.is_contiguous(memory_format=torch.channels_last_3d):
                    gx = gx.contiguous(memory_format=torch.channels_last_3d)
            if ctx.needs_input_grad[1]:
                gw = torch.ops.aten.convolution_backward(
                    g, x, w, None, list(stride), list(padding), list(dilation), False,
                    [0, 0, 0], groups, [False, True, False])[1]
        return gx, gw, None, None, None


def _wants_fast_path(x: torch.Tensor, w: torch.Tensor) -> bool:
    return (_ENABLED and x.device.type == "cpu" and w.device.type == "cpu"
            and torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
            and x.dim() == 5 and w.shape[1] == 1 and w.shape[0] == x.shape[1])


def _memory_format(t: torch.Tensor):
    if t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


def _undilated(x, w, stride, padding, dilation):
    """A 'same'-padded dilated depthwise conv as an undilated one, or None.

    torch's CPU dilated 3D convolutions are slow in both directions. With dilation d and
    padding d * (k // 2) an output voxel only sees input voxels of its own residue mod d:
    - stride d: the conv of the every-d-th-voxel subsample with the undilated kernel;
    - stride 1: space-to-batch into the d^3 residue classes, undilated conv, batch-to-space.
    Same sums in a different order, so equal to float rounding.
    """
    d = dilation[0]
    k = w.shape[2:]
    if (d == 1 or any(v != d for v in dilation) or any(kk % 2 == 0 for kk in k)
            or any(p != d * (kk // 2) for p, kk in zip(padding, k, strict=True))):
        return None
    pad = tuple(kk // 2 for kk in k)
    if all(s == d for s in stride):
        xs = x[:, :, ::d, ::d, ::d]
        return _fast(xs.contiguous(memory_format=_memory_format(x)), w, (1, 1, 1), pad, (1, 1, 1))
    if any(s != 1 for s in stride) or min(x.shape[2:]) < 4 * d:
        # tiny cubes (4^3 at d=2): the residue grids are mostly padding; measured slower
        return None
    B, C, D, H, W = x.shape
    fmt = _memory_format(x)
    xp = F.pad(x, (0, (-W) % d, 0, (-H) % d, 0, (-D) % d))
    Dd, Hd, Wd = (xp.shape[2] // d, xp.shape[3] // d, xp.shape[4] // d)
    xb = (xp.reshape(B, C, Dd, d, Hd, d, Wd, d).permute(0, 3, 5, 7, 1, 2, 4, 6)
          .reshape(B * d ** 3, C, Dd, Hd, Wd).contiguous(memory_format=fmt))
    yb = _fast(xb, w, (1, 1, 1), pad, (1, 1, 1))
    y = (yb.reshape(B, d, d, d, C, Dd, Hd, Wd).permute(0, 4, 5, 1, 6, 2, 7, 3)
         .reshape(B, C, Dd * d, Hd * d, Wd * d)[:, :, :D, :H, :W])
    # the layout torch's conv picks for this dtype/backend (oneDNN: channels_last in, out)
    return y.contiguous(memory_format=_memory_format(yb))


def _fast(x, w, stride, padding, dilation):
    if torch.is_autocast_enabled("cpu"):  # conv3d is autocast to the lower precision on CPU
        dtype = torch.get_autocast_dtype("cpu")
        x, w = x.to(dtype), w.to(dtype)
        with torch.autocast("cpu", enabled=False):
            return _DepthwiseConv3dFn.apply(x, w, stride, padding, dilation)
    return _DepthwiseConv3dFn.apply(x, w, stride, padding, dilation)


def depthwise_conv3d(x, w, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """`F.conv3d(x, w, None, stride, padding, dilation, groups=x.shape[1])` (no bias, integer
    padding), with the fast CPU backward when it applies."""
    stride, padding, dilation = _triple(stride), _triple(padding), _triple(dilation)
    if not _wants_fast_path(x, w):
        return F.conv3d(x, w, None, stride, padding, dilation, x.shape[1])
    y = _undilated(x, w, stride, padding, dilation)
    if y is not None:
        return y
    if any(s != 1 for s in stride):  # torch's own backward: nothing to gain from wrapping it
        return F.conv3d(x, w, None, stride, padding, dilation, x.shape[1])
    return _fast(x, w, stride, padding, dilation)


def _has_hooks(m: nn.Module) -> bool:
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
            or _has_hooks(conv) or not _wants_fast_path(x, conv.weight)):
        return conv(x)
    return depthwise_conv3d(x, conv.weight, conv.stride, conv.padding, conv.dilation)
