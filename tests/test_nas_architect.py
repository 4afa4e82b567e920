"""The architect: alphas move, validation loss drops, network weights are left alone, and the
second-order step matches the exact unrolled gradient."""

import pytest
import torch
from torch.func import functional_call

from src.nas.architect import Architect
from src.nas.supernet import SearchNetwork

# tiny ops: one intra-op thread avoids oversubscription stalls on a shared CPU
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _toy(seed=0, **kw):
    torch.manual_seed(seed)
    net = SearchNetwork(1, 3, C=2, n_cells=2, reductions=[1], stem_multiplier=1,
                        hidden=(8,), **kw)
    x_tr, x_va = torch.randn(4, 1, 4, 4, 4), torch.randn(4, 1, 4, 4, 4)
    # a learnable target: the labels depend on the input
    y_tr = torch.tanh(x_tr.mean(dim=(1, 2, 3, 4))).unsqueeze(1).repeat(1, 3)
    y_va = torch.tanh(x_va.mean(dim=(1, 2, 3, 4))).unsqueeze(1).repeat(1, 3)
    return net, (x_tr, y_tr), (x_va, y_va)


def test_parameter_groups_are_disjoint():
    net, _, _ = _toy(pc_k=2)
    arch = {id(p) for p in net.arch_parameters()}
    weights = {id(p) for p in net.network_parameters()}
    assert len(arch) == 4 and not arch & weights  # alphas + betas (edge normalisation)
    assert arch | weights == {id(p) for p in net.parameters()}


def test_first_order_step_moves_alphas_and_lowers_val_loss():
    net, train, val = _toy()
    w_before = [p.detach().clone() for p in net.network_parameters()]
    a_before = [a.detach().clone() for a in net.arch_parameters()]
    arch = Architect(net, lr=0.05, weight_decay=0.0)
    losses = [arch.step(train, val) for _ in range(6)]
    with torch.no_grad():
        final = float(net.loss(*val))
    assert any(not torch.equal(a, b) for a, b in zip(net.arch_parameters(), a_before, strict=True))
    assert final < losses[0]
    # only alphas changed; the weights' gradients were never written
    assert all(torch.equal(p, q) for p, q in zip(net.network_parameters(), w_before, strict=True))
    assert all(p.grad is None for p in net.network_parameters())


def test_second_order_matches_exact_unrolled_gradient():
    net, train, val = _toy(seed=1)
    net.double()
    train = tuple(t.double() for t in train)
    val = tuple(t.double() for t in val)
    xi, wd = 0.1, 3e-4
    arch = Architect(net, lr=0.0, second_order=True, w_weight_decay=wd, fd_radius=1e-6)
    _, approx = arch._unrolled_grads(train, val, xi, w_optimizer=None)

    # exact: differentiate L_val(w - xi * (dL_train/dw + wd w), alpha) w.r.t. alpha
    names = [n for n, _ in net.named_network_parameters()]
    w = [p for _, p in net.named_network_parameters()]
    alphas = net.arch_parameters()
    arch_names = [n for n, _ in net.named_parameters() if n.startswith("arch.")]
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    dw = torch.autograd.grad(net.loss(*train), w, create_graph=True)
    w_virtual = {n: p - xi * (g + wd * p) for n, p, g in zip(names, w, dw, strict=True)}
    out = functional_call(net, {**w_virtual, **dict(zip(arch_names, alphas, strict=True)), **buffers},
                          (val[0],))
    exact = torch.autograd.grad(torch.nn.functional.mse_loss(out, val[1]), alphas)
    for e, a in zip(exact, approx, strict=True):
        assert torch.allclose(a, e, rtol=1e-3, atol=1e-7), (a - e).abs().max()
    # and the Hessian term matters: it is not just the first-order gradient
    first = torch.autograd.grad(net.loss(*val), alphas)
    assert any(not torch.allclose(f, e, rtol=1e-3, atol=1e-7) for f, e in zip(first, exact, strict=True))


def test_second_order_step_runs_with_momentum_buffers():
    net, train, val = _toy(seed=2)
    w_opt = torch.optim.SGD(net.network_parameters(), lr=0.05, momentum=0.9)
    net.loss(*train).backward()
    w_opt.step()  # creates momentum buffers the virtual step must include
    before = [a.detach().clone() for a in net.arch_parameters()]
    Architect(net, lr=0.01, second_order=True).step(train, val, xi=0.05, w_optimizer=w_opt)
    assert any(not torch.equal(a, b) for a, b in zip(net.arch_parameters(), before, strict=True))


@pytest.mark.parametrize("second_order", [False, True])
def test_architect_step_leaves_batchnorm_running_stats_alone(second_order):
    net, train, val = _toy(seed=3)
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    assert any("running_mean" in n for n in buffers)
    Architect(net, lr=0.01, second_order=second_order).step(train, val, xi=0.05)
    for n, b in net.named_buffers():
        assert torch.equal(b, buffers[n]), n
    # a weight step (train mode) is what moves them
    net.loss(*train).backward()
    assert any(not torch.equal(b, buffers[n]) for n, b in net.named_buffers())


