"""Reproducible, auditable genotypes: a rerun of the recorded config gives the same genotype,
the file carries alphas, history and the search log's checksum, the data identity is by content
and `search.py verify=` checks it; `search.scale=full` searches the final skeleton."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from search import run as search_run
from src.errors import ConfigError, GenotypeFileNotFound, SearchError
from src.layers.genotype import load_genotype_file
from src.nas.identity import data_identity
from src.sim.store import MANIFEST_NAME
from tests.conftest import ROOT, compose_cfg

# a tiny supernet and a tiny final network (2 cells at 16^3), so both filters count in moments
TINY = ["progress=false", "search.C=4", "search.n_cells=2", "search.reductions=[1]",
        "search.stem_multiplier=1", "search.epochs=2", "search.max_steps_per_epoch=2",
        "data.batch_size=2", "threads=1", "network.n_cells=2", "network.reductions=[1]",
        "filter.input_size=16", "target_tflops=0.0002", "filter.tolerance=0.3", "resume=null"]


def _cfg(data_dir, out: Path, *overrides):
    return compose_cfg("search", [*TINY, f"data.dir={data_dir}", *overrides], out)


def _no_seconds(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.fixture(scope="module")
def searched(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("prov") / "a"
    result = search_run(_cfg(tiny_data, out), command="python search.py (test)")
    return result, load_genotype_file(result["genotype_path"])


def test_rerun_of_the_recorded_config_gives_the_same_genotype(searched, tmp_path):
    _, doc = searched
    prov = doc["provenance"]
    cfg = OmegaConf.create(prov["config"])
    with open_dict(cfg):
        cfg.paths = {"output_dir": str(tmp_path / "b")}
    again = load_genotype_file(search_run(cfg)["genotype_path"])
    assert again["genotype"] == doc["genotype"] and again["network"] == doc["network"]
    assert again["provenance"]["alphas"] == prov["alphas"]  # bit for bit, raw alphas included
    assert _no_seconds(again["provenance"]["history"]) == _no_seconds(prov["history"])
    assert again["provenance"]["dataset"]["identity"] == prov["dataset"]["identity"]


def test_file_records_alphas_history_log_and_command(searched):
    result, doc = searched
    prov = doc["provenance"]
    assert prov["command"] == "python search.py (test)" and prov["search_scale"] == "proxy"
    raw, soft = prov["alphas"]["final_raw"], prov["alphas"]["final_softmax"]
    assert len(raw["alphas_normal"]) == 14 and len(raw["alphas_normal"][0]) == len(prov["ops"])
    assert sum(soft["normal"][0]) == pytest.approx(1, abs=1e-3)
    assert [len(h["alphas"]["reduce"]) for h in prov["history"]] == [14, 14]
    log = Path(result["genotype_path"]).parent / prov["search_log"]["file"]
    assert prov["search_log"]["sha256"] == hashlib.sha256(log.read_bytes()).hexdigest()
    assert prov["search_log"]["n_epochs"] == 2
    assert prov["config"]["search"]["epochs"] == 2 and "paths" not in prov["config"]
    ids = prov["dataset"]
    assert sorted(ids["train_sim_ids"] + ids["val_sim_ids"]) == list(range(8))


def test_identity_ignores_the_manifest_timings_and_sees_the_arrays(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    before = data_identity(data)
    manifest = json.loads((data / MANIFEST_NAME).read_text())
    for entry in manifest["files"]:
        entry["timings"] = {"total": 123.0}  # what a regeneration changes
    (data / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert data_identity(data) == before
    with h5py.File(data / manifest["files"][2]["file"], "r+") as fh:
        fh["x"][0, 0, 0, 0, 0] += 1.0
    assert data_identity(data)["content_sha256"] != before["content_sha256"]


def _verify_cli(genotype: str, data: Path, tmp_path: Path):
    return subprocess.run([sys.executable, str(ROOT / "search.py"), f"verify={genotype}",
                           f"data.dir={data}", f"hydra.run.dir={tmp_path / 'v'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_verify_accepts_the_same_data_and_refuses_other_data(searched, tiny_data, tmp_path):
    result, _ = searched
    path = result["genotype_path"]
    ok = _verify_cli(path, tiny_data, tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"verified: {path}")
    other = tmp_path / "other"
    shutil.copytree(tiny_data, other)
    (other / "sim_000003.h5").unlink()
    manifest = json.loads((other / MANIFEST_NAME).read_text())
    manifest["files"] = [e for e in manifest["files"] if e["id"] != 3]
    (other / MANIFEST_NAME).write_text(json.dumps(manifest))
    bad = _verify_cli(path, other, tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith(f"search.py: error: verify={path} was not searched on the data")
    assert "n_files 8 recorded, 7" in last


def test_verify_refuses_a_file_without_an_identity(tiny_data, tmp_path):
    cfg = _cfg(tiny_data, tmp_path, f"verify={ROOT / 'tests' / 'nope.yaml'}")
    with pytest.raises(GenotypeFileNotFound, match="genotype file not found"):
        search_run(cfg)
    legacy = tmp_path / "old.yaml"
    legacy.write_text("genotype: " + json.dumps(load_genotype_file(
        "genotypes/medium.yaml")["genotype"].to_dict()) + "\n")
    with pytest.raises(SearchError, match="records no data identity"):
        search_run(_cfg(tiny_data, tmp_path, f"verify={legacy}"))


def test_full_scale_searches_the_final_skeleton(tiny_data, tmp_path):
    res = search_run(_cfg(tiny_data, tmp_path / "full", "search.scale=full",
                          "filter.input_size=null", "search.epochs=1"))
    assert res["supernet"] == {"C": res["presearch_filter"]["C"], "n_cells": 2,
                               "reductions": [1], "stem_multiplier": 3}
    prov = load_genotype_file(res["genotype_path"])["provenance"]
    assert prov["search_scale"] == "full" and prov["supernet"]["C"] == res["supernet"]["C"]
    # the full way needs data of the training shape: 16^3 data, a 32^3 target shape
    with pytest.raises(SearchError, match=r"search.scale=full .* is \[1, 16, 16, 16\] and the "
                                          r"filter sizes for \[1, 32, 32, 32\]"):
        search_run(_cfg(tiny_data, tmp_path / "f2", "search.scale=full", "filter.input_size=32"))
    with pytest.raises(ConfigError, match=r"search.scale='paper'; choose one of"):
        search_run(_cfg(tiny_data, tmp_path / "f3", "search.scale=paper"))


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
