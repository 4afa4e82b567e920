"""The custom depthwise Conv3d (fast CPU backward) equals torch's conv3d autograd exactly."""

import pytest
import torch
import torch.nn.functional as F

from src.kernels.depthwise import depthwise_conv3d, run_avg_pool, run_depthwise, set_fast_depthwise
from src.layers.ops import make_op

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ref_and_ours(x, w, stride, padding, dilation):
    out = []
    for fn in (lambda a, b: F.conv3d(a, b, None, stride, padding, dilation, a.shape[1]),
               lambda a, b: depthwise_conv3d(a, b, stride, padding, dilation)):
        a = x.detach().clone().requires_grad_(True)
        b = w.detach().clone().requires_grad_(True)
        y = fn(a, b)
        y.backward(_grad_like(y))
        out.append((y, a.grad, b.grad))
    return out


def _grad_like(y):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(y.shape, generator=gen, dtype=y.dtype).contiguous(
        memory_format=_fmt(y))


def _fmt(t):
    if t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("k", [3, 5])
# (5, 6, 7): too small for the space-to-batch rewrite at d=2; (9, 8, 11): odd and large enough;
# (4, 3, 5): the k=5 taps at dilation 2 that only see padding are cropped
@pytest.mark.parametrize("size", [(5, 6, 7), (9, 8, 11), (8, 8, 8), (4, 3, 5)])
def test_matches_torch_autograd_float64(k, dilation, stride, channels_last, size):
    torch.manual_seed(0)
    C = 5
    x = torch.randn(2, C, *size, dtype=torch.float64)
    w = torch.randn(C, 1, k, k, k, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
        w = w.contiguous(memory_format=torch.channels_last_3d)
    padding = dilation * (k // 2)
    (y0, gx0, gw0), (y1, gx1, gw1) = _ref_and_ours(x, w, stride, padding, dilation)
    assert y1.shape == y0.shape and _fmt(y1) == _fmt(y0)
    torch.testing.assert_close(y1, y0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx1, gx0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gw1, gw0, rtol=1e-10, atol=1e-10)
    assert gx1.shape == x.shape and gw1.shape == w.shape


@pytest.mark.parametrize("padding", [0, 1, (2, 0, 1)])
def test_other_paddings_match(padding):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 7, 8, 9, dtype=torch.float64)
    w = torch.randn(3, 1, 3, 3, 3, dtype=torch.float64)
    for stride in (1, 2):
        (y0, gx0, gw0), (y1, gx1, gw1) = _ref_and_ours(x, w, stride, padding, 1)
        torch.testing.assert_close(y1, y0)
        torch.testing.assert_close(gx1, gx0)
        torch.testing.assert_close(gw1, gw0)


def test_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 5, 4, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    for stride, dil in ((1, 1), (2, 2), (1, 2), (2, 1)):
        assert torch.autograd.gradcheck(
            lambda a, b, s=stride, d=dil: depthwise_conv3d(a, b, s, d, d), (x, w))


@pytest.mark.parametrize("name", ["sep_conv_3", "sep_conv_5", "dil_conv_3", "dil_conv_5"])
@pytest.mark.parametrize("stride", [1, 2])
def test_ops_same_as_plain_path(name, stride):
    torch.manual_seed(0)
    op = make_op(name, 4, stride).double()
    x = torch.randn(2, 4, 7, 7, 7, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last_3d)
    grads = []
    for fast in (False, True):
        prev = set_fast_depthwise(fast)
        try:
            op.zero_grad()
            a = x.clone().requires_grad_(True)
            y = op(a)
            (y * torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape).cos()).sum().backward()
            grads.append((y.detach(), a.grad, [p.grad.clone() for p in op.parameters()]))
        finally:
            set_fast_depthwise(prev)
    (y0, g0, p0), (y1, g1, p1) = grads
    torch.testing.assert_close(y1, y0)
    torch.testing.assert_close(g1, g0)
    for a, b in zip(p1, p0, strict=True):
        torch.testing.assert_close(a, b)
    assert list(op.state_dict()) == list(make_op(name, 4, stride).state_dict())


@pytest.mark.parametrize("name,stride", [("sep_conv_5", 1), ("dil_conv_5", 1), ("dil_conv_3", 2)])
def test_bf16_autocast_forward_backward_runs(name, stride):
    torch.manual_seed(0)
    op = make_op(name, 6, stride)
    x = torch.randn(2, 6, 8, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = op(x)
        dw = next(m for m in op.modules() if isinstance(m, torch.nn.Conv3d))
        conf = (dw.stride, dw.padding, dw.dilation)
        ref = F.conv3d(x, dw.weight, None, *conf, 6)
        ours = depthwise_conv3d(x, dw.weight, *conf)
    assert ours.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref.float(), rtol=2e-2, atol=2e-2)
    y.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    w = dw.weight
    assert w.grad is not None and w.grad.dtype == torch.float32 and torch.isfinite(w.grad).all()


@pytest.mark.parametrize("stride,dilation", [(1, 1), (1, 2), (2, 1), (2, 2)])
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("size", [4, 8, 17])
def test_bf16_gradients_match_float64(k, stride, dilation, size):
    """bf16 tensors take their own rules (folded weight gradient for 3^3 too, torch's strided
    kernels in fp32): both gradients stay within bf16 rounding of the float64 autograd ones."""
    torch.manual_seed(0)
    cl = torch.channels_last_3d
    x = torch.randn(2, 6, size, size, size).to(torch.bfloat16).contiguous(memory_format=cl)
    w = torch.randn(6, 1, k, k, k).to(torch.bfloat16)
    padding = dilation * (k // 2)
    a, b = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    y = depthwise_conv3d(a, b, stride, padding, dilation)
    g = _grad_like(y)
    y.backward(g)
    a0, b0 = x.double().requires_grad_(True), w.double().requires_grad_(True)
    y0 = F.conv3d(a0, b0, None, stride, padding, dilation, 6)
    y0.backward(g.double())
    gx0, gw0 = a0.grad, b0.grad
    assert a.grad.dtype == b.grad.dtype == torch.bfloat16
    for ours, ref in ((y, y0), (a.grad, gx0), (b.grad, gw0)):
        scale = ref.abs().max().item()
        assert (ours.double() - ref).abs().max().item() <= 2e-2 * scale, (ours.shape, scale)


def test_plain_path_for_meta_no_grad_and_hooks(monkeypatch):
    import src.kernels.depthwise as dw

    def boom(*a, **k):
        raise AssertionError("custom path taken")

    monkeypatch.setattr(dw._DepthwiseConv3dFn, "apply", boom)
    conv = torch.nn.Conv3d(3, 3, 3, padding=1, groups=3, bias=False)
    run_depthwise(conv.to("meta"), torch.empty(1, 3, 4, 4, 4, device="meta"))
    conv = conv.to_empty(device="cpu")
    with torch.no_grad():
        run_depthwise(conv, torch.randn(1, 3, 4, 4, 4))
    calls = []
    conv.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    run_depthwise(conv, torch.randn(1, 3, 4, 4, 4))
    assert calls == [(1, 3, 4, 4, 4)]


@pytest.mark.parametrize("stride,dilation", [(1, 1), (1, 2), (2, 2), (2, 1)])
def test_float32_channels_last_layout_and_values(stride, dilation):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 10, 11).contiguous(memory_format=torch.channels_last_3d)
    w = torch.randn(8, 1, 5, 5, 5).contiguous(memory_format=torch.channels_last_3d)
    (y0, gx0, gw0), (y1, gx1, gw1) = _ref_and_ours(x, w, stride, 2 * dilation, dilation)
    assert _fmt(y1) == _fmt(y0) == torch.channels_last_3d
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx1, gx0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gw1, gw0, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(2, 2, 2), (5, 6, 7), (8, 8, 8)])
def test_avg_pool_op_as_depthwise_conv_matches_torch(stride, size, channels_last):
    """The DARTS avg_pool_3 op takes the depthwise-conv path on CPU training: same values and
    input gradient as padding-excluded avg_pool3d, channels_last kept."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    op = make_op("avg_pool_3", 4, stride)
    ref = op.pool
    xs = [x.detach().clone().requires_grad_(True) for _ in range(2)]
    if min(size) >= 3:
        y0 = ref(xs[0])
    else:  # torch refuses cubes below the kernel size: reference by explicit padding
        total = F.avg_pool3d(F.pad(xs[0], (1,) * 6), 3, stride, 0)
        y0 = total / F.avg_pool3d(F.pad(torch.ones_like(xs[0]), (1,) * 6), 3, stride, 0)
    y1 = op(xs[1])
    torch.testing.assert_close(y1, y0, rtol=1e-12, atol=1e-12)
    g = _grad_like(y0)
    y0.backward(g)
    y1.backward(g)
    torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=1e-12, atol=1e-12)
    if channels_last:
        assert y1.is_contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():  # inference keeps torch's pool (and what thop counts)
        assert run_avg_pool(ref, x) is None


def test_avg_pool_fast_path_declines_hooks_meta_and_other_pools():
    """run_avg_pool returns None (torch's pool runs) where the conv rewrite would change what
    a hook or FLOP counter sees, or would not be the same pool."""
    x = torch.randn(1, 3, 5, 5, 5, requires_grad=True)
    pool = torch.nn.AvgPool3d(3, 1, 1, count_include_pad=False)
    assert run_avg_pool(pool, x) is not None
    assert run_avg_pool(pool, torch.empty(1, 3, 5, 5, 5, device="meta", requires_grad=True)) is None
    for other in (torch.nn.AvgPool3d(3, 1, 1),  # count_include_pad=True
                  torch.nn.AvgPool3d(3, 1, 1, count_include_pad=False, ceil_mode=True),
                  torch.nn.AvgPool3d(2, 1, 0, count_include_pad=False)):
        assert run_avg_pool(other, x) is None
    handle = pool.register_forward_hook(lambda m, i, o: None)
    try:
        assert run_avg_pool(pool, x) is None
    finally:
        handle.remove()
    prev = set_fast_depthwise(False)
    try:
        assert run_avg_pool(pool, x) is None
    finally:
        set_fast_depthwise(prev)
