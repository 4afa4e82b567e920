"""The small CosmoFlow net: blocks per input size, shapes, output range, LARS, schedule."""

from __future__ import annotations

import pytest
import torch

from src.errors import ConfigError, ModelConfigError
from src.models.cosmoflow import CosmoFlowNet, blocks_for_size
from src.models.lars import clip_relative_update_, lars_targets
from src.models.regressor import CosmoRegressor


@pytest.mark.parametrize(("size", "blocks", "out"), [(16, 2, 4), (32, 3, 4), (64, 4, 4), (128, 5, 4), (256, 5, 8)])
def test_blocks_follow_input_size(size, blocks, out):
    assert blocks_for_size(size) == blocks
    net = CosmoFlowNet(4, size, 3)
    assert net.head.layers[0].in_features == 32 * 2 ** (blocks - 1) * out**3


@pytest.mark.parametrize("size", [16, 32])
def test_forward_shape_and_range(size):
    net = CosmoFlowNet(2, size, 3)
    y = net(torch.randn(2, 2, size, size, size) * 100)
    assert y.shape == (2, 3) and y.abs().max() <= 1.2


def test_linear_head_keeps_a_gradient_where_the_tanh_head_has_none():
    # a first update too large for the head pushes its pre-activation far out: tanh then
    # passes no gradient back and the run cannot recover; the linear head still learns
    grads = {}
    for output in ("tanh", "linear"):
        torch.manual_seed(0)
        net = CosmoFlowNet(1, 16, 3, output=output)
        with torch.no_grad():
            net.head.layers[-1].bias.fill_(8.0)  # far beyond tanh's knee
        loss = torch.nn.functional.mse_loss(net(torch.rand(4, 1, 16, 16, 16)), torch.zeros(4, 3))
        loss.backward()
        grads[output] = net.head.layers[-1].weight.grad.abs().max().item()
    assert net.head.bound is None
    assert grads["tanh"] < 1e-4 < grads["linear"]


def test_mlperf_128_parameter_count():
    # conv: sum of (27*c_in + 1)*c_out over 4->32->64->128->256->512; dense 32768->128->64->3
    conv = sum((27 * a + 1) * b for a, b in [(4, 32), (32, 64), (64, 128), (128, 256), (256, 512)])
    dense = (32768 + 1) * 128 + (128 + 1) * 64 + (64 + 1) * 3
    assert sum(p.numel() for p in CosmoFlowNet(4, 128, 3).parameters()) == conv + dense


@pytest.mark.parametrize("size", [4, 6])
def test_too_small_input_is_a_clear_error(size):
    with pytest.raises(ModelConfigError, match=f"input size {size}"):
        CosmoFlowNet(1, size, 3)


def test_negative_slope_below_zero_is_a_clear_error():
    # pool-before-activation would silently change the function for a decreasing activation
    with pytest.raises(ModelConfigError, match="negative_slope=-0.1"):
        CosmoFlowNet(1, 16, 3, negative_slope=-0.1)
    CosmoFlowNet(1, 16, 3, negative_slope=0.0)  # ReLU: still monotone, allowed


def test_lars_caps_the_relative_update():
    w = torch.nn.Parameter(torch.ones(4, 4))
    before = [w.detach().clone()]
    with torch.no_grad():
        w.add_(torch.full((4, 4), 0.5))  # a 50 % step
    ratios = clip_relative_update_([w], before, trust_coefficient=0.01)
    change = float(torch.linalg.vector_norm(w.detach() - before[0]) / torch.linalg.vector_norm(before[0]))
    assert ratios[0] < 1 and change == pytest.approx(0.01, rel=1e-4)
    bias = torch.nn.Parameter(torch.ones(4))
    assert lars_targets([w, bias]) == [w]


def test_small_updates_pass_lars_unchanged():
    w = torch.nn.Parameter(torch.ones(3, 3))
    before = [w.detach().clone()]
    with torch.no_grad():
        w.add_(1e-4)
    expected = w.detach().clone()
    assert clip_relative_update_([w], before, trust_coefficient=0.01) == [1.0]
    assert torch.equal(w, expected)


def _adam(**overrides):
    """The optimizer of conf/optim/adam.yaml (a partial), with `overrides` of its arguments."""
    from functools import partial

    from hydra.utils import instantiate

    from tests.conftest import compose_cfg

    return partial(instantiate(compose_cfg("train", []).optim), **overrides)


def test_warmup_then_cosine_schedule():
    module = CosmoRegressor(CosmoFlowNet(1, 16, 3), ["a", "b", "c"], {k: (0, 1) for k in "abc"},
                            optimizer=_adam(), warmup_steps=4, decay="cosine", min_lr_ratio=0.1)
    factors = [module.lr_factor(s, 14) for s in range(15)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == pytest.approx(1.0) and factors[14] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:], strict=False))


def test_warmup_takes_at_most_its_share_of_a_short_run():
    module = CosmoRegressor(CosmoFlowNet(1, 16, 3), ["a", "b", "c"], {k: (0, 1) for k in "abc"},
                            optimizer=_adam(), warmup_steps=500, warmup_max_frac=0.1)
    assert [module.lr_factor(s, 40) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]  # 4 = 10 % of 40
    assert module.lr_factor(99, 10000) == pytest.approx(0.2)  # a long run: all 500 steps


@pytest.mark.parametrize("kwargs,culprit", [
    ({"warmup_steps": -1}, "schedule.warmup_steps=-1"),
    ({"warmup_max_frac": 1.5}, "schedule.warmup_max_frac=1.5"),
])
def test_bad_warmup_is_a_clear_error(kwargs, culprit):
    with pytest.raises(ConfigError, match=culprit):
        CosmoRegressor(CosmoFlowNet(1, 16, 3), ["a", "b", "c"], {k: (0, 1) for k in "abc"},
                       optimizer=_adam(), **kwargs)


def test_pool_before_activation_is_the_same_function_and_bf16_pools_in_bf16():
    """conv -> pool -> LeakyReLU equals the paper's conv -> LeakyReLU -> pool exactly (a
    non-decreasing activation commutes with max); under CPU bf16 autocast the pool keeps bf16."""
    torch.manual_seed(0)
    net = CosmoFlowNet(in_channels=1, input_size=16, n_params=3)
    x = torch.randn(2, 1, 16, 16, 16)
    h = x
    for conv, pool, act in zip(*[iter(net.features)] * 3, strict=True):
        h = pool(act(conv(h)))  # the paper's order
    assert torch.equal(net.features(x), h)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv, pool = net.features[0], net.features[1]
        y = conv(x)
        assert y.dtype == torch.bfloat16 and pool(y).dtype == torch.bfloat16
        assert torch.equal(pool(y), torch.nn.functional.max_pool3d(y.float(), 2).bfloat16())


def test_configured_adam_is_fused_and_steps_like_the_per_tensor_adam():
    """conf/optim/adam.yaml asks for torch's fused Adam (one kernel for all tensors); it makes
    the same update as the per-tensor loop."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from tests.conftest import compose_cfg

    optim = OmegaConf.to_container(compose_cfg("train", []).optim, resolve=True)
    assert optim["fused"] is True and optim["_target_"] == "torch.optim.Adam"
    weights = []
    for fused in (False, True):
        torch.manual_seed(0)
        module = CosmoRegressor(CosmoFlowNet(1, 16, 3), ["a", "b", "c"], {k: (0, 1) for k in "abc"},
                                optimizer=_adam(fused=fused))
        module._trainer = SimpleNamespace(estimated_stepping_batches=10, world_size=1)
        opt = module.configure_optimizers()["optimizer"]
        assert opt.defaults["fused"] is fused
        start = torch.cat([p.detach().flatten() for p in module.net.parameters()])
        for _ in range(3):
            opt.zero_grad()
            module.net(torch.randn(2, 1, 16, 16, 16)).square().sum().backward()
            opt.step()
        weights.append(torch.cat([p.detach().flatten() for p in module.net.parameters()]))
    assert (weights[0] - start).abs().max() > 1e-4  # the steps moved the weights
    torch.testing.assert_close(weights[1], weights[0], rtol=1e-5, atol=1e-6)


def test_resumed_optimizer_keeps_this_runs_fused_setting():
    """A checkpoint's optimizer state carries its own `fused`; loading it must not switch this
    run's choice (torch's load_state_dict takes the saved param-group settings)."""
    from types import SimpleNamespace

    names, ranges = ["a", "b", "c"], {k: (0, 1) for k in "abc"}
    old = CosmoRegressor(CosmoFlowNet(1, 16, 3), names, ranges, optimizer=_adam(fused=None))
    old._trainer = SimpleNamespace(estimated_stepping_batches=10, world_size=1)
    checkpoint = {"optimizer_states": [old.configure_optimizers()["optimizer"].state_dict()]}
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["fused"] is None

    new = CosmoRegressor(CosmoFlowNet(1, 16, 3), names, ranges, optimizer=_adam(fused=True))
    new._trainer = SimpleNamespace(estimated_stepping_batches=10, world_size=1)
    opt = new.configure_optimizers()["optimizer"]
    new.on_load_checkpoint(checkpoint)
    opt.load_state_dict(checkpoint["optimizer_states"][0])
    assert all(group["fused"] is True for group in opt.param_groups)
