"""search.run end to end on tiny real HDF5 data: filter -> search epoch -> genotype file with
provenance -> resume -> train.py model=medium trains the written genotype."""

from __future__ import annotations

import gc
import json
import math
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

from search import run as search_run
from src.errors import SearchError
from src.layers.genotype import load_genotype_file
from src.layers.ops import PRIMITIVES
from src.nas.search import Searcher, endless
from src.nas.supernet import SearchNetwork
from src.util.devices import resolve_device
from tests.conftest import ROOT, compose_cfg
from train import run as train_run

# tiny ops: one intra-op thread avoids oversubscription stalls on a shared CPU (a run with
# torch's default two threads on the loaded 2-core machine took minutes for the tiny searcher)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

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
    # val_fraction 0.5: the split hash puts 3 of the 8 simulations in val (split.py)
    assert (prov["dataset"]["n_train_samples"], prov["dataset"]["n_val_samples"]) == (40, 24)
    # sized for the data's 1 channel at the benchmark's 128^3; costs also at the search data
    # and at the paper's 128^3 with 1 and 4 channels
    costs = prov["costs"]
    assert prov["in_channels"] == 1 and costs["train_shape"]["input_shape"] == [1, 128, 128, 128]
    assert costs["train_shape"]["flops_per_sample_train"] == prov["flops_per_sample_train"]
    assert costs["search_data"]["input_shape"] == [1, 16, 16, 16]
    assert [r["input_shape"][0] for r in costs["reference"]] == [1, 4]
    assert costs["reference"][1]["flops_per_sample_train"] > prov["flops_per_sample_train"]

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


def _batches(n: int, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(2, 1, 4, 4, 4, generator=g), torch.rand(2, 3, generator=g))
            for _ in range(n)]


def _searcher(out: Path, epochs: int, C: int = 2) -> Searcher:
    torch.manual_seed(0)
    net = SearchNetwork(1, 3, C=C, n_cells=2, reductions=[1], stem_multiplier=1, hidden=(8,))
    return Searcher(net, epochs=epochs, out_dir=out, progress=False, fd_radius=0.05)


def test_resume_to_more_epochs_keeps_the_lr_falling(tmp_path):
    train, val = _batches(2, 0), _batches(1, 1)  # 1 val batch for 2 steps: re-iterated
    first = _searcher(tmp_path, epochs=2)
    assert first.architect.fd_radius == 0.05  # search.fd_radius reaches the architect
    first.fit(train, val)
    second = _searcher(tmp_path, epochs=4)
    second.load(first.checkpoint_path)
    second.fit(train, val)
    lrs = [h["lr"] for h in second.history]
    assert [h["epoch"] for h in second.history] == [1, 2, 3, 4]
    assert lrs[:2] == pytest.approx([0.025, 0.013])  # the 2-epoch cosine that ran first
    # then the cosine stretched to 4 epochs, from where it stands: never back up
    assert lrs[2:] == pytest.approx([second.lr_at(2), second.lr_at(3)])
    assert lrs == sorted(lrs, reverse=True), lrs
    assert second.w_optimizer.param_groups[0]["lr"] == lrs[-1]


def test_resume_refuses_another_supernet_and_bad_files(tmp_path):
    _searcher(tmp_path, epochs=1).save()
    ckpt = tmp_path / "search_checkpoint.pt"
    with pytest.raises(SearchError, match=r"C=2 in the checkpoint, 4 here"):
        _searcher(tmp_path, epochs=1, C=4).load(ckpt)
    with pytest.raises(SearchError, match="no such checkpoint file"):
        _searcher(tmp_path, epochs=1).load(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SearchError, match="junk.pt: not a readable search checkpoint"):
        _searcher(tmp_path, epochs=1).load(tmp_path / "junk.pt")


def test_endless_keeps_no_copy_of_the_batches():
    class Fresh:  # a loader whose batches are new tensors each pass, like a DataLoader's
        def __iter__(self):
            return (torch.zeros(1) for _ in range(2))

    it = endless(Fresh())
    first = weakref.ref(next(it))
    for _ in range(5):
        next(it)
    gc.collect()
    assert first() is None  # itertools.cycle would still hold it
    with pytest.raises(SearchError, match="yields no batches"):
        next(endless([]))


def test_relative_resume_path_and_missing_device_are_named(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative resume= resolves against the launch directory
    with pytest.raises(SearchError, match=f"resume={tmp_path / 'runs' / 'ck.pt'}: no such"):
        search_run(_cfg(tiny_data, tmp_path / "out", "resume=runs/ck.pt"))
    with pytest.raises(SearchError, match="device=cuda:99: .* CUDA device"):
        resolve_device("cuda:99", "device", error=SearchError)
    assert resolve_device("cpu", "device", error=SearchError) == torch.device("cpu")


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    missing = tmp_path / "no_such_data"
    proc = subprocess.run([sys.executable, str(ROOT / "search.py"), f"data.dir={missing}",
                           f"hydra.run.dir={tmp_path / 'out'}", "progress=false"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("search.py: error:") and str(missing) in last


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
