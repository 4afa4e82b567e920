"""The medium/large DARTS networks: built from the shipped genotypes through conf/model/*.yaml,
forward + backward at 32^3, and their parameter counts and FLOPs as docs/models.md lists them."""

from __future__ import annotations

import re

import hydra
import pytest
import torch

from src.layers.genotype import REPO_ROOT, load_genotype_file, reference_genotype, save_genotype
from src.models.darts_net import DartsNet
from src.nas.model_filter import count_cost
from src.perf.flops import flops_per_sample
from tests.conftest import compose_cfg

# tiny ops: one intra-op thread avoids oversubscription stalls on a shared CPU
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TARGETS = {"medium": 4e12, "large": 16e12}  # the paper's training FLOPs per sample at 128^3


def _net(model: str, in_channels: int, size: int):
    cfg = compose_cfg("train", [f"model={model}"])
    return hydra.utils.instantiate(cfg.model.net, in_channels=in_channels, input_size=size,
                                   n_params=3)


def _docs_rows() -> list[tuple[str, int, int, int, float, float]]:
    """(model, size, in_channels, parameters, forward GFLOPs, train GFLOPs) from docs/models.md."""
    text = (REPO_ROOT / "docs" / "models.md").read_text()
    rows = []
    pattern = r"^\|\s*(small|medium|large)\s*\|\s*(\d+)\^3\s*\|\s*(\d+)\s*\|\s*([\d,]+)\s*\|" \
              r"\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|"
    for m in re.finditer(pattern, text, flags=re.M):
        rows.append((m[1], int(m[2]), int(m[3]), int(m[4].replace(",", "")), float(m[5]),
                     float(m[6])))
    return rows


def test_genotype_file_supplies_the_network_shape(tmp_path):
    path = save_genotype(tmp_path / "g.yaml", reference_genotype("dil_conv_3"),
                         {"C": 6, "n_cells": 4, "reductions": [0, 2], "stem_multiplier": 2})
    net = DartsNet(2, 8, 3, str(path))
    assert (net.C, net.n_cells, net.reductions) == (6, 4, [0, 2])
    assert net.stem[0].out_channels == 12
    # explicit arguments win over the file (the CPU knob: model.net.C=...)
    assert DartsNet(2, 8, 3, str(path), C=4).C == 4
    y = net(torch.randn(2, 2, 8, 8, 8))
    assert y.shape == (2, 3) and y.abs().max() <= 1.2


@pytest.mark.parametrize("model", ["medium", "large"])
def test_shipped_models_train_step_at_32(model):
    torch.manual_seed(0)
    net = _net(model, 1, 32)
    doc = load_genotype_file(f"genotypes/{model}.yaml")
    assert (net.C, net.n_cells, net.reductions) == (doc["network"]["C"], 16, [0, 4, 12])
    x = torch.randn(1, 1, 32, 32, 32)
    y = net(x)
    assert y.shape == (1, 3) and bool(torch.isfinite(y).all()) and y.abs().max() <= 1.2
    torch.nn.functional.mse_loss(y, torch.zeros_like(y)).backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert net.stem[0].weight.grad.abs().sum() > 0  # the gradient reached the first layer


@pytest.mark.parametrize("model", ["medium", "large"])
def test_shipped_genotypes_hit_paper_targets_at_128(model):
    doc = load_genotype_file(f"genotypes/{model}.yaml")
    prov = doc["provenance"]
    counted = count_cost(lambda: _net(model, 4, 128), (4, 128, 128, 128))
    assert abs(counted["flops_per_sample_train"] / TARGETS[model] - 1) <= 0.05
    # the file's record is what the network costs
    assert counted["flops_per_sample_train"] == prov["flops_per_sample_train"]
    assert counted["n_parameters"] == prov["n_parameters"]
    assert prov["target_flops_train"] == TARGETS[model] and prov["input_size"] == 128
    assert prov["in_channels"] == 4


def test_docs_table_matches_counted_costs():
    rows = _docs_rows()
    # every model at 32^3, 64^3 and 128^3 with the paper's 4 channels, and at 32^3 x 1
    assert {(m, s, c) for m, s, c, *_ in rows} >= {
        (m, s, 4) for m in ("small", "medium", "large") for s in (32, 64, 128)
    } | {(m, 32, 1) for m in ("small", "medium", "large")}
    for model, size, ch, params, fwd_g, train_g in rows:
        counted = count_cost(lambda model=model, size=size, ch=ch: _net(model, ch, size),
                             (ch, size, size, size))
        assert counted["n_parameters"] == params, (model, size, ch)
        assert counted["flops_per_sample_forward"] / 1e9 == pytest.approx(fwd_g, abs=6e-4)
        assert counted["flops_per_sample_train"] / 1e9 == pytest.approx(train_g, abs=6e-4)




def _medium_like(C: int = 4):
    """The medium genotype at a tiny width: its normal cells pool state 0 three times alike."""
    return DartsNet(1, 16, 3, "genotypes/medium.yaml", C=C, n_cells=5, reductions=[0, 2])


def _no_reuse(net: DartsNet) -> DartsNet:
    for cell in net.cells:
        cell.reuse = list(range(len(cell.ops)))
    return net


def test_cells_reuse_repeated_parameter_free_ops():
    net = _medium_like()
    kinds = {cell.reduction: cell.reuse for cell in net.cells}
    # normal: edges 4 and 6 are avg_pool_3 of state 0 like edge 0; max_pool_3 differs
    assert kinds[False] == [0, 1, 2, 3, 0, 5, 0, 7]
    assert kinds[True] == list(range(8))  # every reduce edge has weights


def test_reused_ops_give_the_same_outputs_gradients_and_counts():
    x = torch.randn(2, 1, 16, 16, 16)
    results = []
    for reuse in (True, False):
        torch.manual_seed(0)
        net = _medium_like() if reuse else _no_reuse(_medium_like())
        y = net(x)
        y.square().sum().backward()
        results.append((y.detach(), [p.grad.clone() for p in net.parameters()],
                        flops_per_sample(net, (1, 16, 16, 16))))
    (y0, g0, c0), (y1, g1, c1) = results
    torch.testing.assert_close(y0, y1)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(a, b)
    # thop's hooks see every edge called, as without reuse
    assert c0 == c1
