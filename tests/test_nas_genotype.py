"""Genotypes: derivation from alphas, the skip cap, YAML round trip, path resolution."""

import pytest
import torch

from src.layers.genotype import REPO_ROOT, Genotype, load_genotype_file, resolve_path, save_genotype
from src.layers.ops import PRIMITIVES
from src.nas.derive import derive_cell, derive_genotype

N_EDGES = 14  # 2 + 3 + 4 + 5 edges for 4 intermediate nodes
OP = {name: i for i, name in enumerate(PRIMITIVES)}


def _weights(choices: dict[int, tuple[str, float]]) -> torch.Tensor:
    """Edge weights: every edge prefers `none` a lot, listed edges get (op, strength)."""
    w = torch.full((N_EDGES, len(PRIMITIVES)), 0.01)
    w[:, OP["none"]] = 0.9  # none must never decide which edges are kept
    for edge, (op, strength) in choices.items():
        w[edge, OP[op]] = strength
    return w


def test_derive_top2_edges_ignore_none():
    # node 2 <- edges 0, 1; node 3 <- edges 2..4; node 4 <- 5..8; node 5 <- 9..13
    w = _weights({0: ("sep_conv_3", 0.5), 1: ("max_pool_3", 0.4),
                  2: ("dil_conv_5", 0.3), 4: ("sep_conv_5", 0.6), 3: ("avg_pool_3", 0.1),
                  6: ("dil_conv_3", 0.5), 8: ("sep_conv_3", 0.4),
                  9: ("sep_conv_5", 0.2), 13: ("max_pool_3", 0.7)})
    cell = derive_cell(w, steps=4)
    assert cell == (("sep_conv_3", 0), ("max_pool_3", 1),
                    ("dil_conv_5", 0), ("sep_conv_5", 2),
                    ("dil_conv_3", 1), ("sep_conv_3", 3),
                    ("sep_conv_5", 0), ("max_pool_3", 4))


def test_skip_cap_replaces_weakest_skips():
    w = _weights({e: ("skip_connect", 0.5 + 0.01 * e) for e in range(N_EDGES)})
    w[:, OP["sep_conv_3"]] = 0.2  # the runner-up op on every edge
    uncapped = derive_cell(w, 4)
    assert sum(op == "skip_connect" for op, _ in uncapped) == 8
    capped = derive_cell(w, 4, max_skip=2)
    ops = [op for op, _ in capped]
    assert ops.count("skip_connect") == 2
    # the two strongest skips (highest edge index = last node) survive
    assert ops[-2:] == ["skip_connect", "skip_connect"]
    assert [j for _, j in capped] == [j for _, j in uncapped]


def test_derive_genotype_from_raw_alphas_with_edge_betas():
    torch.manual_seed(0)
    a_n, a_r = torch.randn(N_EDGES, len(PRIMITIVES)), torch.randn(N_EDGES, len(PRIMITIVES))
    b = torch.zeros(N_EDGES)
    b[0] = -50.0  # edge normalisation can veto an edge whatever its op weights say
    g = derive_genotype(a_n, a_r, betas_normal=b, betas_reduce=torch.zeros(N_EDGES))
    assert g.steps == 4 and g.normal_concat == (2, 3, 4, 5)
    assert all(op != "none" for op, _ in g.normal + g.reduce)
    # node 2 has only the two input edges, so both stay; the vetoed one is still kept
    assert [j for _, j in g.normal[:2]] == [0, 1]


def test_yaml_round_trip(tmp_path):
    g = Genotype([("sep_conv_3", 0), ("skip_connect", 1), ("dil_conv_5", 2), ("max_pool_3", 0),
                  ("sep_conv_5", 1), ("avg_pool_3", 3), ("dil_conv_3", 4), ("sep_conv_3", 2)],
                 [2, 3, 4, 5],
                 [("max_pool_3", 0), ("sep_conv_5", 1), ("skip_connect", 2), ("dil_conv_3", 1),
                  ("sep_conv_3", 0), ("avg_pool_3", 3), ("dil_conv_5", 4), ("sep_conv_3", 1)],
                 [2, 3, 4, 5])
    path = save_genotype(tmp_path / "g.yaml", g, {"C": 12, "n_cells": 16, "reductions": (0, 4, 12)},
                         {"seed": torch.tensor(3), "torch": torch.__version__})
    doc = load_genotype_file(path)
    assert doc["genotype"] == g
    assert doc["network"] == {"C": 12, "n_cells": 16, "reductions": [0, 4, 12]}
    assert doc["provenance"]["seed"] == 3
    assert Genotype.from_dict(g.to_dict()) == g


def test_invalid_genotypes_are_rejected():
    with pytest.raises(ValueError, match="does not exist"):
        Genotype([("sep_conv_3", 0), ("sep_conv_3", 2)], [2], [("sep_conv_3", 0), ("sep_conv_3", 1)], [2])
    with pytest.raises(ValueError, match="invalid operation"):
        Genotype([("none", 0), ("sep_conv_3", 1)], [2], [("sep_conv_3", 0), ("sep_conv_3", 1)], [2])


def test_relative_paths_resolve_against_the_repo_not_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_path("genotypes/medium.yaml") == REPO_ROOT / "genotypes" / "medium.yaml"
    assert resolve_path(tmp_path / "x.yaml") == tmp_path / "x.yaml"
    assert load_genotype_file("genotypes/medium.yaml")["genotype"].steps == 4
    with pytest.raises(FileNotFoundError):
        load_genotype_file("genotypes/does_not_exist.yaml")
