"""3D DARTS candidate operations.

The search space of DARTS (Liu et al. 2019) lifted to volumes. Following the SAIH paper every
convolution is followed by BatchNorm and LeakyReLU (conv -> BN -> LeakyReLU) instead of the
ReLU -> conv -> BN order of the 2D original.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.errors import GenotypeError
from src.kernels.depthwise import has_hooks, memory_format, run_avg_pool, run_depthwise
from src.layers.blocks import NEGATIVE_SLOPE, MaxPool3dKeepDtype, bn_act, leaky_relu

# Order matters: it is the column order of the alphas and is written into every genotype file.
PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3",
    "avg_pool_3",
    "skip_connect",
    "sep_conv_3",
    "sep_conv_5",
    "dil_conv_3",
    "dil_conv_5",
)

class DilConv(nn.Sequential):
    """Depthwise k^3 (dilated) + pointwise conv, then BN + LeakyReLU."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True,
                 negative_slope: float = NEGATIVE_SLOPE):
        super().__init__(
            nn.Conv3d(C_in, C_in, kernel_size, stride=stride, padding=padding,
                      dilation=dilation, groups=C_in, bias=False),
            nn.Conv3d(C_in, C_out, 1, bias=False),
            nn.BatchNorm3d(C_out, affine=affine),
            leaky_relu(negative_slope),
        )

    def forward(self, x):
        # the depthwise conv stays a plain nn.Conv3d (state_dict, thop, hooks); on CPU its
        # backward runs through src/kernels/depthwise.py
        return bn_act(self[2], self[3], self[1](run_depthwise(self[0], x)))


class SepConv(nn.Sequential):
    """Two separable blocks as in DARTS; only the first one strides."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True,
                 negative_slope: float = NEGATIVE_SLOPE):
        super().__init__(
            DilConv(C_in, C_in, kernel_size, stride, padding, 1, affine, negative_slope),
            DilConv(C_in, C_out, kernel_size, 1, padding, 1, affine, negative_slope),
        )


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    """The `none` op: zeros of the (possibly strided) output shape."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.0)
        # ceil(d / stride) like every other strided op with padding
        s = self.stride
        return x[:, :, ::s, ::s, ::s].mul(0.0)


class _EvenOddVoxels(torch.autograd.Function):
    """(x[..., ::2, ::2, ::2], x[..., 1::2, 1::2, 1::2]) in x's memory layout. The backward
    writes both gradients into one zero tensor: no full-size pad, slice or stride-2 conv
    gradients to fill, copy and add."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape, ctx.fmt = x.shape, memory_format(x)
        return (x[:, :, ::2, ::2, ::2].contiguous(memory_format=ctx.fmt),
                x[:, :, 1::2, 1::2, 1::2].contiguous(memory_format=ctx.fmt))

    @staticmethod
    def backward(ctx, g_even, g_odd):
        ref = g_even if g_even is not None else g_odd
        if ctx.fmt == torch.channels_last_3d:  # zeros allocated NDHWC, viewed as NCDHW
            B, C, D, H, W = ctx.shape
            gx = ref.new_zeros((B, D, H, W, C)).permute(0, 4, 1, 2, 3)
        else:
            gx = ref.new_zeros(ctx.shape)
        if g_even is not None:
            gx[:, :, ::2, ::2, ::2] = g_even
        if g_odd is not None:
            gx[:, :, 1::2, 1::2, 1::2] = g_odd
        return gx


class FactorizedReduce(nn.Module):
    """Halve the resolution without losing every other voxel: two 1x1 stride-2 convs, the
    second on the input shifted by one voxel along each axis, concatenated on channels."""

    def __init__(self, C_in, C_out, affine=True, negative_slope: float = NEGATIVE_SLOPE):
        super().__init__()
        c1 = C_out // 2
        self.conv_1 = nn.Conv3d(C_in, c1, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv3d(C_in, C_out - c1, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm3d(C_out, affine=affine)
        self.act = leaky_relu(negative_slope)

    def forward(self, x):
        if all(n % 2 == 0 for n in x.shape[2:]) and not (has_hooks(self.conv_1)
                                                          or has_hooks(self.conv_2)):
            # even cube: the stride-2 1x1 convs see exactly the even and the odd voxels
            even, odd = _EvenOddVoxels.apply(x)
            out = torch.cat([F.conv3d(even, self.conv_1.weight),
                             F.conv3d(odd, self.conv_2.weight)], dim=1)
        else:  # odd sizes (and module hooks, e.g. thop, that must see the convs called)
            # pad-then-crop keeps the shifted path the same size as the plain one for odd d
            shifted = F.pad(x, (0, 1, 0, 1, 0, 1))[:, :, 1:, 1:, 1:]
            out = torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1)
        return bn_act(self.bn, self.act, out)


class Pool(nn.Module):
    def __init__(self, kind: str, stride: int):
        super().__init__()
        if kind == "max":
            self.pool = MaxPool3dKeepDtype(3, stride=stride, padding=1)  # bf16 stays bf16
        else:
            # padding excluded from the mean so borders are not darkened
            self.pool = nn.AvgPool3d(3, stride=stride, padding=1, count_include_pad=False)

    def forward(self, x):
        y = run_avg_pool(self.pool, x) if isinstance(self.pool, nn.AvgPool3d) else None
        if y is None:  # CPU training takes the depthwise-conv path above (faster)
            y = self._torch_pool(x)
        # torch's CPU 3D pools return the contiguous layout for channels_last_3d input; a pool
        # output summed with a conv output would then turn the node sum, the cell's concat and
        # the next 1x1 conv's input contiguous too (one layout copy here instead of several)
        if memory_format(x) == torch.channels_last_3d:
            return y.contiguous(memory_format=torch.channels_last_3d)
        return y

    def _torch_pool(self, x):
        if isinstance(self.pool, nn.AvgPool3d) and min(x.shape[2:]) < 3:
            # torch's CPU avg_pool3d refuses inputs smaller than the kernel even with padding
            # (deep cells at small cubes reach 2^3); same result via explicit zero padding
            p = self.pool
            total = F.avg_pool3d(F.pad(x, (1,) * 6), 3, p.stride, 0)
            count = F.avg_pool3d(F.pad(torch.ones_like(x[:1, :1]), (1,) * 6), 3, p.stride, 0)
            return total / count
        return self.pool(x)


# name -> factory(C, stride, affine, negative_slope)
OPS: dict[str, Callable[[int, int, bool, float], nn.Module]] = {
    "none": lambda C, stride, affine, slope: Zero(stride),
    "max_pool_3": lambda C, stride, affine, slope: Pool("max", stride),
    "avg_pool_3": lambda C, stride, affine, slope: Pool("avg", stride),
    "skip_connect": lambda C, stride, affine, slope: (
        Identity() if stride == 1 else FactorizedReduce(C, C, affine, slope)
    ),
    "sep_conv_3": lambda C, stride, affine, slope: SepConv(C, C, 3, stride, 1, affine, slope),
    "sep_conv_5": lambda C, stride, affine, slope: SepConv(C, C, 5, stride, 2, affine, slope),
    "dil_conv_3": lambda C, stride, affine, slope: DilConv(C, C, 3, stride, 2, 2, affine, slope),
    "dil_conv_5": lambda C, stride, affine, slope: DilConv(C, C, 5, stride, 4, 2, affine, slope),
}


def make_op(name: str, C: int, stride: int, affine: bool = True,
            negative_slope: float = NEGATIVE_SLOPE) -> nn.Module:
    if name not in OPS:
        raise GenotypeError(f"unknown operation {name!r}; known: {sorted(OPS)}")
    return OPS[name](C, stride, affine, negative_slope)
