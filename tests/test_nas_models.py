"""The medium/large DARTS networks: built from the shipped genotypes through conf/model/*.yaml,
forward + backward at 32^3, and their parameter counts and FLOPs as docs/models.md lists them."""

from __future__ import annotations

import hashlib
import re

import hydra
import pytest
import torch

from src.errors import ModelConfigError
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
    # sized for the shape it trains on: sim=paper's 1 channel at 128^3
    assert prov["target_flops_train"] == TARGETS[model] and prov["input_size"] == 128
    assert prov["in_channels"] == 1
    # the file's records are what the network costs, at 128^3 with 1 and with 4 channels
    refs = {r["input_shape"][0]: r for r in prov["costs"]["reference"]}
    for ch in (1, 4):
        counted = count_cost(lambda ch=ch: _net(model, ch, 128), (ch, 128, 128, 128))
        assert abs(counted["flops_per_sample_train"] / TARGETS[model] - 1) <= 0.05
        assert counted["flops_per_sample_train"] == refs[ch]["flops_per_sample_train"]
        assert counted["n_parameters"] == refs[ch]["n_parameters"]
    assert refs[1]["flops_per_sample_train"] == prov["flops_per_sample_train"]
    # reproducible and auditable: alphas, their history, the shipped search log, the data
    assert len(prov["alphas"]["final_raw"]["alphas_normal"]) == 14
    assert len(prov["history"]) == prov["epochs_completed"] == prov["search_log"]["n_epochs"]
    assert all("alphas" in h for h in prov["history"])
    log = REPO_ROOT / "genotypes" / f"{model}.search_log.jsonl"
    assert hashlib.sha256(log.read_bytes()).hexdigest() == prov["search_log"]["sha256"]
    assert len(prov["dataset"]["identity"]["content_sha256"]) == 64
    assert prov["command"].startswith(f"python search.py target_tflops={TARGETS[model] / 1e12:g}")


def test_head_pool_choices_and_their_first_dense_layer():
    g = reference_genotype("sep_conv_3")
    kw = {"C": 2, "n_cells": 3, "reductions": [0, 2]}  # 16^3 -> 8^3 -> 4^3, 4 * 2 * 4 channels
    firsts = {hp: DartsNet(1, 16, 3, g, head_pool=hp, **kw).head.layers[0].in_features
              for hp in (0, 1, 2)}
    assert firsts == {0: 32 * 4 ** 3, 1: 32, 2: 32 * 2 ** 3}
    net = DartsNet(1, 16, 3, g, head_pool=0, **kw)
    assert net(torch.randn(2, 1, 16, 16, 16)).shape == (2, 3)
    with pytest.raises(ModelConfigError, match=r"head_pool=5: the last cell's map is only 4\^3"):
        DartsNet(1, 16, 3, g, head_pool=5, **kw)


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


# a cell whose normal edges pool state 0 three times alike (the medium cell shipped before)
REUSE_GENOTYPE = {
    "normal": [["avg_pool_3", 0], ["dil_conv_3", 1], ["max_pool_3", 0], ["dil_conv_5", 1],
               ["avg_pool_3", 0], ["sep_conv_3", 1], ["avg_pool_3", 0], ["dil_conv_5", 1]],
    "normal_concat": [2, 3, 4, 5],
    "reduce": [["dil_conv_5", 0], ["sep_conv_5", 1], ["sep_conv_5", 1], ["sep_conv_3", 2],
               ["sep_conv_3", 2], ["dil_conv_5", 3], ["dil_conv_3", 3], ["sep_conv_3", 4]],
    "reduce_concat": [2, 3, 4, 5],
}


def _medium_like(C: int = 4):
    """REUSE_GENOTYPE at a tiny width."""
    return DartsNet(1, 16, 3, REUSE_GENOTYPE, C=C, n_cells=5, reductions=[0, 2])


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


def test_model_table_counts_both_heads():
    from benchmarks.model_table import measure

    gap, flat = (measure("medium", 1, 32, hp) for hp in (1, 0))
    C = load_genotype_file("genotypes/medium.yaml")["network"]["C"]
    # the last cell has 4 nodes x 8C channels on a 4^3 map at 32^3; the first dense layer has
    # 128 units: flattening adds (64 - 1) x 32C x 128 weights and next to no FLOPs
    assert flat["parameters"] - gap["parameters"] == 63 * 32 * C * 128
    assert flat["train_tflops"] == pytest.approx(gap["train_tflops"], rel=5e-3)
    assert flat["activations_mb"] > gap["activations_mb"] > 0 and gap["intensity"] > 0


def test_docs_paper_table_matches_the_genotype_records():
    """docs/models.md's table beside the paper (python -m benchmarks.model_table) against the
    costs each genotype file records at 128^3 (no recount: the files are checked above)."""
    text = (REPO_ROOT / "docs" / "models.md").read_text()
    # | model | C_in | head_pool 1 | parameters "19.73 M" | paper | train TFLOPs |
    pattern = (r"^\|\s*(medium|large)\s*\|\s*([14])\s*\|\s*1\s*\|\s*([\d.]+) M\s*\|[^|]*\|"
               r"\s*([\d.]+)\s*\|")
    rows = re.findall(pattern, text, flags=re.M)
    assert {(m, int(c)) for m, c, *_ in rows} == {(m, c) for m in TARGETS for c in (1, 4)}
    for model, ch, params_m, train_t in rows:
        refs = load_genotype_file(f"genotypes/{model}.yaml")["provenance"]["costs"]["reference"]
        ref = next(r for r in refs if r["input_shape"] == [int(ch), 128, 128, 128])
        assert float(params_m) == pytest.approx(ref["n_parameters"] / 1e6, abs=0.006)
        assert float(train_t) == pytest.approx(ref["flops_per_sample_train"] / 1e12, abs=6e-4)
