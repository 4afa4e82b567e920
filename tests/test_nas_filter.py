"""The model filter sizes a DARTS network to a target training FLOPs per sample, on meta."""

import pytest

from src.errors import FilterError
from src.layers.genotype import reference_genotype
from src.models.darts_net import DartsNet
from src.nas.model_filter import choose_channels, count_cost
from src.perf.flops import flops_per_sample

# tiny ops: one intra-op thread avoids oversubscription stalls on a shared CPU
pytestmark = pytest.mark.usefixtures("one_torch_thread")

GENOTYPE = reference_genotype("sep_conv_3")
SHAPE = (1, 32, 32, 32)


def _build(C, n_cells):
    # shallow nets: counting cost grows with the module count (16-cell nets: test_nas_models)
    reductions = [0, n_cells // 2]
    return DartsNet(1, 32, 3, GENOTYPE, C=C, n_cells=n_cells, reductions=reductions)


def test_filter_hits_target_within_tolerance_on_meta(monkeypatch):
    built_on = set()
    real_init = DartsNet.__init__

    def spy(self, *a, **kw):
        real_init(self, *a, **kw)
        built_on.add(next(self.parameters()).device.type)

    monkeypatch.setattr(DartsNet, "__init__", spy)
    target = 5e9  # train FLOPs per sample at 32^3
    res = choose_channels(_build, SHAPE, target, tolerance=0.05, n_cells=4, c_min=2, c_max=256)
    assert built_on == {"meta"}  # never a real allocation
    assert res["within_tolerance"] and abs(res["flops_per_sample_train"] / target - 1) <= 0.05
    assert res["flops_per_sample_train"] == 3 * res["flops_per_sample_forward"]
    # the counted value is the project's FLOP counter on the chosen network
    monkeypatch.setattr(DartsNet, "__init__", real_init)
    net = _build(res["C"], 4)
    assert flops_per_sample(net, SHAPE)["flops_per_sample_train"] == res["flops_per_sample_train"]
    # and the neighbours are no closer: the choice is the closest width
    for C in (res["C"] - 1, res["C"] + 1):
        other = count_cost(lambda C=C: _build(C, 4), SHAPE)["flops_per_sample_train"]
        assert abs(other - target) >= abs(res["flops_per_sample_train"] - target)


def test_filter_can_choose_depth_too():
    target = 3e9
    res = choose_channels(_build, SHAPE, target, n_cells=[2, 4], c_min=2, c_max=128)
    assert res["n_cells"] in (2, 4) and res["n_counted"] >= 8  # both depths were sized
    assert abs(res["rel_error"]) <= 0.05


def test_filter_refuses_unreachable_targets():
    with pytest.raises(FilterError, match="within"):
        choose_channels(_build, SHAPE, 1e3, n_cells=2, c_min=2, c_max=64)
    res = choose_channels(_build, SHAPE, 1e3, n_cells=2, c_min=2, c_max=64, strict=False)
    assert res["C"] == 2 and not res["within_tolerance"]


def test_count_cost_reports_parameters():
    rec = count_cost(lambda: _build(4, 2), SHAPE)
    assert rec["n_parameters"] == sum(p.numel() for p in _build(4, 2).parameters())
    assert rec["flops_per_sample_train"] > 0


