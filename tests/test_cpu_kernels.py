"""The compiled CPU depthwise kernels (src/kernels/cpu_kernels.cpp) against float64 autograd."""

import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from src.kernels import cpu_kernels
from src.kernels.depthwise import depthwise_conv3d

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
    assert cpu_kernels.load() is not None


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k,stride,dilation,padding", [
    (3, 1, 1, 1), (5, 1, 1, 2), (3, 1, 2, 2), (5, 1, 2, 4),   # the DARTS ops, 'same'
    (5, 2, 1, 2), (3, 2, 2, 2), (5, 2, 2, 4),                 # their strided versions
    (3, 1, 1, 0), (3, 2, 1, (0, 1, 2)), (2, 3, 1, 1),         # other paddings, even k, stride 3
])
# 27 channels: one 16-lane block, one 8-lane block and 3 single lanes; rows of 29: the gather's
# register-blocked interior (8 outputs at a time) and its edges
@pytest.mark.parametrize("C,size", [(27, (7, 6, 9)), (16, (4, 4, 4)), (27, (3, 4, 29))])
def test_each_kernel_matches_float64(dtype, k, stride, dilation, padding, C, size):
    _check_kernels(dtype, k, stride, dilation, padding, C, size)


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k,stride,dilation", [(3, 1, 9), (5, 2, 9), (7, 1, 3), (5, 1, 5)])
@pytest.mark.parametrize("size", [(6, 6, 1), (4, 4, 4)])
def test_dilation_past_short_rows_matches_float64(dtype, k, stride, dilation, size):
    """Rows too short for all the dilated taps of any output: the gather has no interior."""
    _check_kernels(dtype, k, stride, dilation, dilation * (k // 2), 16, size)


def _check_kernels(dtype, k, stride, dilation, padding, C, size):
    torch.manual_seed(0)
    padding = padding if isinstance(padding, tuple) else (padding,) * 3
    s3, d3 = (stride,) * 3, (dilation,) * 3
    x = torch.randn(2, C, *size).to(dtype).contiguous(memory_format=CL)
    w = torch.randn(C, 1, k, k, k).to(dtype)
    y0, gx0, gw0, g = _reference(x, w, s3, padding, d3)
    g = g.to(dtype).contiguous(memory_format=CL)
    y = cpu_kernels.conv(x, w, s3, padding, d3)
    gx = cpu_kernels.grad_input(g, w, x.shape, s3, padding, d3)
    gw = cpu_kernels.grad_weight(g, x, w, s3, padding, d3)
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
    previous = cpu_kernels.set_enabled(compiled)
    try:
        a, b = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        y = depthwise_conv3d(a, b, stride, padding, dilation)
        y.backward(g.float().contiguous(memory_format=CL))
    finally:
        cpu_kernels.set_enabled(previous)
    for ours, ref in ((y, y0), (a.grad, gx0), (b.grad, gw0)):
        _close(ours.detach(), ref, torch.float32)


@needs_compiler
@pytest.mark.parametrize("stride", [1, 2])
def test_training_path_calls_the_kernel(monkeypatch, stride):
    """With the kernel on, the weight gradient and a dilated conv (strided too) go through it."""
    calls = []
    module = cpu_kernels.load()

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(module, name)

    monkeypatch.setattr(cpu_kernels, "load", lambda: Spy())
    x = torch.randn(1, 4, 8, 8, 8).contiguous(memory_format=CL).requires_grad_(True)
    w = torch.randn(4, 1, 3, 3, 3, requires_grad=True)
    depthwise_conv3d(x, w, stride, 2, 2).sum().backward()
    assert calls.count("gather") == 2 and calls.count("grad_weight") == 1, calls


def test_disabled_or_unsupported_returns_none():
    x = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64)
    w = torch.randn(2, 1, 3, 3, 3, dtype=torch.float64)
    assert cpu_kernels.conv(x, w, (1,) * 3, (1,) * 3, (1,) * 3) is None  # float64
    wide = torch.randn(2, 1, 9, 9, 9)
    assert cpu_kernels.grad_weight(x.float(), x.float(), wide, (1,) * 3, (4,) * 3,
                                     (1,) * 3) is None  # wider than the instantiated 7
    previous = cpu_kernels.set_enabled(False)
    try:
        assert cpu_kernels.load() is None
    finally:
        cpu_kernels.set_enabled(previous)


def test_build_name_tracks_source_and_processor(monkeypatch):
    name = cpu_kernels.build_name()
    assert name.startswith("saih_depthwise_") and name == cpu_kernels.build_name()
    monkeypatch.setattr(cpu_kernels, "cpu_signature", lambda: "another processor")
    assert cpu_kernels.build_name() != name


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
        gw = cpu_kernels.grad_weight(g, x, w, (1,) * 3, (2,) * 3, (1,) * 3)
        gx = cpu_kernels.grad_input(g, w, x.shape, (1,) * 3, (2,) * 3, (1,) * 3)
    finally:
        torch.set_num_threads(n)
    _close(gw, gw0, torch.float32)
    _close(gx, gx0, torch.float32)


def _bn_pair(C, affine, momentum):
    torch.manual_seed(3)
    ref = torch.nn.BatchNorm3d(C, affine=affine, momentum=momentum)
    if affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-0.5, 0.5)
    ours = torch.nn.BatchNorm3d(C, affine=affine, momentum=momentum)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("affine,momentum", [(True, 0.1), (False, None)])
def test_fused_bn_leaky_relu_matches_torch(dtype, affine, momentum):
    """Output, input and parameter gradients, running statistics and the batch count equal
    torch's BatchNorm3d + LeakyReLU in training mode, over two steps (float64 reference)."""
    C, slope = 27, 0.3
    ref, ours = _bn_pair(C, affine, momentum)
    ref = ref.double()
    for step in range(2):
        x = (torch.randn(2, C, 5, 6, 7) * 3 + 2).to(dtype).contiguous(memory_format=CL)
        g = torch.randn(x.shape).to(dtype).contiguous(memory_format=CL)
        a = x.double().requires_grad_(True)
        y0 = F.leaky_relu(ref(a), slope)
        y0.backward(g.double())
        b = x.clone().requires_grad_(True)
        y1 = cpu_kernels.bn_leaky_relu(b, ours, slope)
        assert y1 is not None and y1.dtype == dtype and y1.is_contiguous(memory_format=CL)
        y1.backward(g)
        _close(y1.detach(), y0.detach(), dtype)
        _close(b.grad, a.grad, dtype)
        if affine:
            _close(ours.weight.grad, ref.weight.grad, dtype)
            _close(ours.bias.grad, ref.bias.grad, dtype)
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(ours.running_mean.double(), ref.running_mean, rtol=tol, atol=tol)
        torch.testing.assert_close(ours.running_var.double(), ref.running_var, rtol=tol, atol=tol)
        assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == step + 1


def test_fused_bn_leaky_relu_declines_eval_and_contiguous_layout():
    bn = torch.nn.BatchNorm3d(4)
    x = torch.randn(2, 4, 3, 3, 3)
    assert cpu_kernels.bn_leaky_relu(x, bn, 0.3) is None  # NCDHW: the row view would copy
    bn.eval()
    assert cpu_kernels.bn_leaky_relu(x.contiguous(memory_format=CL), bn, 0.3) is None


@needs_compiler
def test_darts_op_uses_the_fused_kernel_and_thop_hooks_do_not(monkeypatch):
    from src.layers.ops import make_op

    calls = []
    real = cpu_kernels.bn_leaky_relu
    monkeypatch.setattr(cpu_kernels, "bn_leaky_relu",
                        lambda *a: calls.append(1) or real(*a))
    op = make_op("sep_conv_3", 4, 1)
    x = torch.randn(2, 4, 6, 6, 6).contiguous(memory_format=CL)
    op(x)
    assert len(calls) == 2  # two DilConv blocks
    bn = next(m for m in op.modules() if isinstance(m, torch.nn.BatchNorm3d))
    handle = bn.register_forward_hook(lambda m, i, o: None)
    calls.clear()
    op(x)
    handle.remove()
    assert len(calls) == 1  # the hooked block called its modules


@needs_compiler
def test_dilated_conv_under_bf16_autocast_takes_the_kernel():
    """Under autocast the input (bf16) and the weight (fp32) differ in dtype until the conv
    casts them: the kernel must still be chosen over the space-to-batch rewrite."""
    import src.kernels.depthwise as dw

    x = torch.randn(2, 4, 8, 8, 8).to(torch.bfloat16).contiguous(memory_format=CL)
    w = torch.randn(4, 1, 3, 3, 3, requires_grad=True)
    assert cpu_kernels.applies(x, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cpu_kernels.applies(torch.randn(1, 4, 8, 8, 8), w)
        assert dw._undilated(x, w, (1,) * 3, (2,) * 3, (2,) * 3) is None
        y = depthwise_conv3d(x.requires_grad_(True), w, 1, 2, 2)
    assert y.dtype == torch.bfloat16
    assert not cpu_kernels.applies(x.double(), w.double())
    assert not cpu_kernels.applies(x, torch.randn(4, 1, 9, 9, 9))


def test_build_dir_falls_back_to_temp_when_home_cache_is_read_only(monkeypatch, tmp_path):
    home = tmp_path / "home"
    monkeypatch.setattr(cpu_kernels, "cache_root", lambda: home / "cache")
    monkeypatch.setattr(cpu_kernels.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    assert cpu_kernels._build_dir("k").parent.parent == home / "cache"
    real_access = os.access
    monkeypatch.setattr(cpu_kernels.os, "access",
                        lambda p, mode: False if str(p).startswith(str(home)) else real_access(p, mode))
    assert cpu_kernels._build_dir("k2").is_relative_to(tmp_path / "tmp")
    monkeypatch.setattr(cpu_kernels.os, "access", lambda p, mode: False)
    with pytest.raises(OSError, match="no writable directory"):
        cpu_kernels._build_dir("k3")
