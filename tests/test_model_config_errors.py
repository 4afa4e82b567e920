"""Bad input of every model family: one ModelConfigError (GenotypeError for a genotype) naming
the culprit, before a layer is built; through the CLI, one line and exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

from src.errors import GenotypeError, ModelConfigError, UserError
from src.layers.genotype import Genotype, load_genotype_file
from src.models.cosmoflow import CosmoFlowNet
from src.models.darts_net import DartsNet
from tests.conftest import ROOT

GOOD = {"normal": [["sep_conv_3", 0], ["dil_conv_3", 1]], "normal_concat": [2],
        "reduce": [["max_pool_3", 0], ["skip_connect", 1]], "reduce_concat": [2]}
SHAPE = {"C": 4, "n_cells": 3, "reductions": [1]}


def _write(path, doc) -> str:
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return str(path)


@pytest.mark.parametrize("genotype,culprit", [
    ({**GOOD, "normal": []}, "genotype.normal has 0 edges"),
    ({**GOOD, "normal": [["sep_conv_3", 0]]}, "genotype.normal has 1 edges"),
    ({**GOOD, "normal_concat": [2, 3]}, r"normal_concat names nodes \[3\]"),
    ({**GOOD, "reduce_concat": []}, "reduce_concat is empty"),
    ({**GOOD, "normal": [["conv_9", 0], ["sep_conv_3", 1]]}, "invalid operation 'conv_9'"),
    ({**GOOD, "reduce": [["max_pool_3", 0], ["skip_connect", 5]]}, "reads node 5"),
    ({**GOOD, "normal": "sep_conv_3"}, "genotype.normal"),
    ({k: v for k, v in GOOD.items() if k != "reduce"}, r"lacks \['reduce'\]"),
    (["not", "a", "mapping"], "a genotype is a mapping"),
])
def test_bad_genotypes_name_the_culprit(tmp_path, genotype, culprit):
    path = _write(tmp_path / "g.yaml", {"genotype": genotype, "network": SHAPE})
    with pytest.raises(GenotypeError, match=culprit):
        DartsNet(1, 16, 3, path)


@pytest.mark.parametrize("text,culprit", [
    ("genotype: [unclosed", "not a readable YAML genotype file"),
    ("network: {C: 4}\n", "has no 'genotype' section"),
    ("- a list\n", "has no 'genotype' section"),
])
def test_bad_genotype_files_name_the_file(tmp_path, text, culprit):
    path = _write(tmp_path / "bad.yaml", text)
    with pytest.raises(GenotypeError, match=culprit) as err:
        load_genotype_file(path)
    assert "bad.yaml" in str(err.value) and "\n" not in str(err.value)  # one line


def test_missing_genotype_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="genotype file not found"):
        DartsNet(1, 16, 3, str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize("kwargs,culprit", [
    ({"C": 0}, r"model.net.C=0 must be >= 1"),
    ({"C": 2.5}, r"model.net.C=2.5 must be an integer"),
    ({"n_cells": 0}, r"model.net.n_cells=0"),
    ({"reductions": [0, 7]}, r"model.net.reductions=\[0, 7\] names cells outside 0..2"),
    ({"reductions": 1}, r"model.net.reductions=1 must be a list"),
    ({"reductions": "abc"}, r"model.net.reductions='abc' must be a list"),
    ({"stem_multiplier": 0}, r"model.net.stem_multiplier=0"),
    ({"hidden": [64, 0]}, r"model.net.hidden=0"),
    ({"hidden": 64}, r"model.net.hidden=64 must be a list"),
    ({"dropout": 1.0}, r"model.net.dropout=1.0"),
    ({"negative_slope": "steep"}, r"model.net.negative_slope='steep' must be a number"),
    ({"output": "relu"}, r"model.net.output='relu'; choose one of \('tanh', 'linear'\)"),
])
def test_bad_darts_net_values_name_their_key(kwargs, culprit):
    with pytest.raises(ModelConfigError, match=culprit):
        DartsNet(1, 16, 3, Genotype.from_dict(GOOD), **{**SHAPE, **kwargs})


def test_width_neither_configured_nor_recorded_is_named(tmp_path):
    path = _write(tmp_path / "g.yaml", {"genotype": GOOD})
    with pytest.raises(ModelConfigError, match="model.net.C is null"):
        DartsNet(1, 16, 3, path)
    assert DartsNet(1, 16, 3, path, C=4, n_cells=2).C == 4


@pytest.mark.parametrize("kwargs,culprit", [
    ({"base_filters": 0}, "model.net.base_filters=0"),
    ({"n_blocks": 5}, "cannot be pooled 5 times"),
    ({"min_spatial": 0}, "model.net.min_spatial=0"),
    ({"hidden": [0]}, "model.net.hidden=0"),
    ({"dropout": -0.1}, "model.net.dropout=-0.1"),
    ({"output": None}, "model.net.output=None"),
])
def test_bad_small_net_values_name_their_key(kwargs, culprit):
    with pytest.raises(ModelConfigError, match=culprit):
        CosmoFlowNet(1, 16, 3, **kwargs)


def test_repeated_parameter_free_op_on_one_input_builds_and_trains():
    """A node with the same pool twice on the same input reuses the first edge's output; the
    result is the sum of the two (2 x pool), and the gradients flow as without the reuse."""
    twice = {**GOOD, "normal": [["avg_pool_3", 0], ["avg_pool_3", 0]]}
    torch.manual_seed(0)
    net = DartsNet(1, 8, 3, Genotype.from_dict(twice), C=4, n_cells=2, reductions=[1])
    cell = net.cells[0]
    assert cell.reuse[:2] == [0, 0]
    x = torch.randn(2, 1, 8, 8, 8, requires_grad=True)
    net(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    s0 = torch.randn(2, 12, 8, 8, 8)
    states = [cell.pre0(s0), cell.pre1(s0)]
    expected = 2 * cell.ops[0](states[0])
    torch.testing.assert_close(cell(s0, s0), expected)


def _train_cli(*args: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args, f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("model,genotype,culprit", [
    ("large", "missing", "genotype file not found"),
    ("medium", {**GOOD, "normal": [["conv_9", 0], ["sep_conv_3", 1]]}, "invalid operation 'conv_9'"),
    ("large", {**GOOD, "normal": []}, "genotype.normal has 0 edges"),
])
def test_cli_bad_genotype_is_one_line_and_exit_2(tiny_data, tmp_path, model, genotype, culprit):
    path = tmp_path / "missing.yaml" if genotype == "missing" else _write(
        tmp_path / "g.yaml", {"genotype": genotype, "network": SHAPE})
    proc = _train_cli(f"model={model}", f"model.net.genotype={path}", f"data.dir={tiny_data}",
                      "logger=none", tmp_path=tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("train.py: error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and culprit in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
