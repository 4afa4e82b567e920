"""The compiled CPU depthwise kernels (src/nas/depthwise_cpu.cpp) against float64 autograd."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from src.nas import depthwise_cpu
from src.nas.depthwise import depthwise_conv3d

pytestmark = pytest.mark.usefixtures("one_torch_thread")

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                    reason="no C++ compiler: the kernel cannot be built here")

CL = torch.channels_last_3d
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}  # of the reference's largest magnitude


def _reference(x, w, stride, padding, dilation, g_seed=1):
    """y, dx, dw of the plain float64 conv, and the output gradient used."""
    a = x.double().requires_grad_(True)
    b = w.double().requires_grad_(True)
    y = F.conv3d(a, b, None, stride, padding, dilation, x.shape[1])
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(g_seed), dtype=torch.float64)
    y.backward(g)
    return y.detach(), a.grad, b.grad, g


def _close(ours, ref, dtype):
    assert ours.shape == ref.shape
    scale = ref.abs().max().item()
    err = (ours.double() - ref).abs().max().item()
    assert err <= TOL[dtype] * scale, (err, scale)


@needs_compiler
def test_kernel_builds_here():
    assert depthwise_cpu.load() is not None


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k,stride,dilation,padding", [
    (3, 1, 1, 1), (5, 1, 1, 2), (3, 1, 2, 2), (5, 1, 2, 4),   # the DARTS ops, 'same'
    (5, 2, 1, 2), (3, 2, 2, 2), (5, 2, 2, 4),                 # their strided versions
    (3, 1, 1, 0), (3, 2, 1, (0, 1, 2)), (2, 3, 1, 1),         # other paddings, even k, stride 3
])
# 27 channels: one 16-lane block, one 8-lane block and 3 single lanes
@pytest.mark.parametrize("C,size", [(27, (7, 6, 9)), (16, (4, 4, 4))])
def test_each_kernel_matches_float64(dtype, k, stride, dilation, padding, C, size):
    torch.manual_seed(0)
    padding = padding if isinstance(padding, tuple) else (padding,) * 3
    s3, d3 = (stride,) * 3, (dilation,) * 3
    x = torch.randn(2, C, *size).to(dtype).contiguous(memory_format=CL)
    w = torch.randn(C, 1, k, k, k).to(dtype)
    y0, gx0, gw0, g = _reference(x, w, s3, padding, d3)
    g = g.to(dtype).contiguous(memory_format=CL)
    y = depthwise_cpu.conv(x, w, s3, padding, d3)
    gx = depthwise_cpu.grad_input(g, w, x.shape, s3, padding, d3)
    gw = depthwise_cpu.grad_weight(g, x, w, s3, padding, d3)
    assert y.dtype == gx.dtype == gw.dtype == dtype
    assert y.is_contiguous(memory_format=CL) and gx.is_contiguous(memory_format=CL)
    _close(y, y0, dtype)
    _close(gx, gx0, dtype)
    _close(gw, gw0, dtype)


@needs_compiler
@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("stride,dilation", [(1, 1), (1, 2), (2, 1), (2, 2)])
@pytest.mark.parametrize("k", [3, 5])
def test_float32_training_path_with_and_without_the_kernel(compiled, stride, dilation, k):
    """`depthwise_conv3d` in fp32 (the kernels' dtype; the float64 tests cover only the PyTorch
    formulations) equals float64 autograd, through the kernel and through the fallback."""
    torch.manual_seed(0)
    x = torch.randn(2, 21, 9, 8, 10).contiguous(memory_format=CL)
    w = torch.randn(21, 1, k, k, k)
    padding = dilation * (k // 2)
    y0, gx0, gw0, g = _reference(x, w, stride, padding, dilation)
    previous = depthwise_cpu.set_enabled(compiled)
    try:
        a, b = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        y = depthwise_conv3d(a, b, stride, padding, dilation)
        y.backward(g.float().contiguous(memory_format=CL))
    finally:
        depthwise_cpu.set_enabled(previous)
    for ours, ref in ((y, y0), (a.grad, gx0), (b.grad, gw0)):
        _close(ours.detach(), ref, torch.float32)


@needs_compiler
def test_training_path_calls_the_kernel(monkeypatch):
    """With the kernel on, the weight gradient and a dilated conv go through it."""
    calls = []
    module = depthwise_cpu.load()

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(module, name)

    monkeypatch.setattr(depthwise_cpu, "load", lambda: Spy())
    x = torch.randn(1, 4, 8, 8, 8).contiguous(memory_format=CL).requires_grad_(True)
    w = torch.randn(4, 1, 3, 3, 3, requires_grad=True)
    depthwise_conv3d(x, w, 1, 2, 2).sum().backward()
    assert calls.count("gather") == 2 and calls.count("grad_weight") == 1, calls


def test_disabled_or_unsupported_returns_none():
    x = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64)
    w = torch.randn(2, 1, 3, 3, 3, dtype=torch.float64)
    assert depthwise_cpu.conv(x, w, (1,) * 3, (1,) * 3, (1,) * 3) is None  # float64
    wide = torch.randn(2, 1, 9, 9, 9)
    assert depthwise_cpu.grad_weight(x.float(), x.float(), wide, (1,) * 3, (4,) * 3,
                                     (1,) * 3) is None  # wider than the instantiated 7
    previous = depthwise_cpu.set_enabled(False)
    try:
        assert depthwise_cpu.load() is None
    finally:
        depthwise_cpu.set_enabled(previous)


def test_build_name_tracks_source_and_processor(monkeypatch):
    name = depthwise_cpu.build_name()
    assert name.startswith("saih_depthwise_") and name == depthwise_cpu.build_name()
    monkeypatch.setattr(depthwise_cpu, "_cpu_signature", lambda: "another processor")
    assert depthwise_cpu.build_name() != name


@needs_compiler
def test_two_threads_sum_their_buffers():
    """Each thread accumulates the weight gradient into its own buffer: the sum is complete."""
    torch.manual_seed(0)
    x = torch.randn(2, 24, 12, 6, 6).contiguous(memory_format=CL)
    w = torch.randn(24, 1, 5, 5, 5)
    _, gx0, gw0, g = _reference(x, w, (1,) * 3, (2,) * 3, (1,) * 3)
    g = g.float().contiguous(memory_format=CL)
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gw = depthwise_cpu.grad_weight(g, x, w, (1,) * 3, (2,) * 3, (1,) * 3)
        gx = depthwise_cpu.grad_input(g, w, x.shape, (1,) * 3, (2,) * 3, (1,) * 3)
    finally:
        torch.set_num_threads(n)
    _close(gw, gw0, torch.float32)
    _close(gx, gx0, torch.float32)
