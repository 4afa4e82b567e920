"""search.run end to end on tiny real HDF5 data: filter -> search epoch -> genotype file with
provenance -> resume -> train.py model=medium trains the written genotype."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from search import run as search_run
from src.nas.genotype import load_genotype_file
from src.nas.ops import PRIMITIVES
from tests.conftest import compose_cfg
from train import run as train_run

# the smallest supernet that still has a normal and a reduction cell
TINY = ["progress=false", "search.C=4", "search.n_cells=2", "search.reductions=[1]",
        "search.stem_multiplier=1", "search.epochs=1", "search.max_steps_per_epoch=2",
        "data.batch_size=2", "threads=1"]


def _cfg(data_dir, out: Path, *overrides):
    return compose_cfg("search", [*TINY, f"data.dir={data_dir}", *overrides], out)


def test_search_writes_genotype_resumes_and_trains(tiny_data, train_cfg, tmp_path):
    out = tmp_path / "search"
    first = search_run(_cfg(tiny_data, out, "target_tflops=4"))

    path = Path(first["genotype_path"])
    assert path == out / "genotype.yaml" and path.is_file()
    doc = load_genotype_file(path)
    net, prov = doc["network"], doc["provenance"]
    assert doc["genotype"].to_dict() == first["genotype"]
    assert net["n_cells"] == 16 and net["reductions"] == [0, 4, 12]
    # the filter's choice: 4 TFLOPs per training sample at 128^3 within 5 %
    assert prov["input_size"] == 128 and prov["target_flops_train"] == 4e12
    assert abs(prov["flops_per_sample_train"] / 4e12 - 1) <= 0.05
    assert prov["flops_per_sample_train"] == 3 * prov["flops_per_sample_forward"]
    assert prov["ops"] == list(PRIMITIVES) and prov["seed"] == 0
    assert prov["n_parameters"] > 0 and prov["presearch_filter"]["C"] > 0
    assert prov["dataset"]["n_train_samples"] == prov["dataset"]["n_val_samples"] == 32
    assert prov["at_search_data"]["input_shape"] == [1, 16, 16, 16]

    # per-epoch log: alphas and the current genotype; a checkpoint to resume from
    lines = [json.loads(s) for s in (out / "search_log.jsonl").read_text().splitlines()]
    assert len(lines) == 1
    assert len(lines[0]["alphas"]["normal"]) == 14
    assert len(lines[0]["alphas"]["normal"][0]) == len(PRIMITIVES)
    assert lines[0]["genotype"] == first["genotype"]
    assert (out / "search_checkpoint.pt").is_file()

    # resume (resume=auto): epoch 1 comes from the checkpoint, only epoch 2 runs
    second = search_run(_cfg(tiny_data, out, "target_tflops=4", "search.epochs=2"))
    assert [h["epoch"] for h in second["history"]] == [1, 2]
    assert second["history"][0] == first["history"][0]
    assert len((out / "search_log.jsonl").read_text().splitlines()) == 2

    # the written genotype trains through train.py's model=medium (width shrunk by the CPU
    # knob model.net.C to keep the test fast; the filter's C builds in test_nas_models)
    result = train_run(train_cfg("model=medium", f"model.net.genotype={path}", "model.net.C=8",
                                 "logger=none", out=tmp_path / "train"))
    assert result["status"] == "complete"
    assert math.isfinite(result["metrics"]["train/loss"])
    assert result["config"]["model"] == "medium"


def test_partial_channels_search_epoch(tiny_data, tmp_path):
    out = tmp_path / "pc"
    res = search_run(_cfg(tiny_data, out, "search.C=4", "search.pc_k=2", "search.second_order=true",
                          "network.n_cells=4", "network.reductions=[0,2]",
                          "filter.input_size=16", "target_tflops=0.0002", "filter.tolerance=0.2",
                          "resume=null"))
    state = torch.load(out / "search_checkpoint.pt", weights_only=False)
    assert "arch.betas_normal" in state["model"]  # edge normalisation comes with PC-DARTS
    assert res["network"]["n_cells"] == 4
    assert abs(res["filter"]["rel_error"]) <= 0.2


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
