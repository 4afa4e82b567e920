"""3D DARTS operations keep (stride 1) or halve, rounding up (stride 2), the cube."""

import math

import pytest
import torch

from src.layers.ops import PRIMITIVES, FactorizedReduce, Pool, make_op
from src.nas.supernet import MixedOp, channel_shuffle

# tiny ops: one intra-op thread avoids oversubscription stalls on a shared CPU
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("d", [8, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", PRIMITIVES)
def test_op_shapes(name, stride, d):
    C = 4
    op = make_op(name, C, stride)
    x = torch.randn(2, C, d, d, d)
    y = op(x)
    e = math.ceil(d / stride)
    assert y.shape == (2, C, e, e, e)
    if name == "none":
        assert torch.count_nonzero(y) == 0
    if name == "skip_connect" and stride == 1:
        assert torch.equal(y, x)


def test_convolutions_are_separable_and_dilated():
    sep = make_op("sep_conv_5", 6, 1)
    convs = [m for m in sep.modules() if isinstance(m, torch.nn.Conv3d)]
    # two (depthwise 5^3, pointwise 1^3) pairs, each followed by BN + LeakyReLU
    assert [c.kernel_size for c in convs] == [(5, 5, 5), (1, 1, 1)] * 2
    assert [c.groups for c in convs] == [6, 1, 6, 1]
    dil = make_op("dil_conv_3", 6, 1)
    assert next(m for m in dil.modules() if isinstance(m, torch.nn.Conv3d)).dilation == (2, 2, 2)
    kinds = [type(m).__name__ for m in dil.children()]
    assert kinds == ["Conv3d", "Conv3d", "BatchNorm3d", "LeakyReLU"]


def test_factorized_reduce_odd_channels_and_sizes():
    fr = FactorizedReduce(3, 5)
    assert fr(torch.randn(1, 3, 7, 7, 7)).shape == (1, 5, 4, 4, 4)


def test_avg_pool_small_cube_matches_padded_mean():
    # torch's CPU avg_pool3d rejects cubes below 3^3; the fallback must equal the exact mean
    x = torch.randn(1, 2, 2, 2, 2)
    y = Pool("avg", 1)(x)
    # every voxel of a 2^3 cube sees the whole cube in its 3^3 window (padding excluded)
    expected = x.mean(dim=(2, 3, 4), keepdim=True).expand_as(x)
    assert torch.allclose(y, expected, atol=1e-6)
    assert Pool("avg", 2)(x).shape == (1, 2, 1, 1, 1)


@pytest.mark.parametrize("pc_k", [1, 2])
@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_op_shapes_partial_channels(pc_k, stride):
    op = MixedOp(8, stride, pc_k)
    w = torch.softmax(torch.randn(len(PRIMITIVES)), 0)
    y = op(torch.randn(2, 8, 6, 6, 6), w)
    assert y.shape == (2, 8, 6 // stride, 6 // stride, 6 // stride)


def test_channel_shuffle_is_a_permutation():
    x = torch.arange(8.0).view(1, 8, 1, 1, 1)
    y = channel_shuffle(x, 2).flatten().tolist()
    assert y == [0, 4, 1, 5, 2, 6, 3, 7]




@pytest.mark.parametrize("channels_last", [False, True])
def test_factorized_reduce_even_path_equals_the_padded_one(channels_last):
    """Even cubes take the even/odd-voxel path; values and all gradients equal the original
    pad-and-stride formulation (taken when the convs carry hooks)."""
    torch.manual_seed(0)
    fr = FactorizedReduce(3, 5).double()
    x = torch.randn(2, 3, 6, 4, 8, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    results = []
    for hooked in (False, True):
        handles = [fr.conv_1.register_forward_hook(lambda m, i, o: None)] if hooked else []
        fr.zero_grad()
        a = x.clone().requires_grad_(True)
        y = fr(a)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
        results.append((y.detach(), a.grad, [p.grad.clone() for p in fr.parameters()]))
        for h in handles:
            h.remove()
    (y0, g0, p0), (y1, g1, p1) = results
    assert y0.shape == (2, 5, 3, 2, 4)
    torch.testing.assert_close(y0, y1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g0, g1, rtol=1e-12, atol=1e-12)
    for a, b in zip(p0, p1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    if channels_last:
        assert g0.is_contiguous(memory_format=torch.channels_last_3d)
