"""The GAN's checkpoint selection by physics checks (src/gan/selection.py, docs/gan.md): the
score, selection sub-volumes apart from the validation's, the selected state sampled from,
its record surviving a resume, and bad settings."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

import generate
from src.gan.nets import GanConfigError
from src.gan.reference import selection_set, training_order, validation_set
from src.gan.selection import RECORD, SELECTED, score
from src.gan.train_gan import check_train_data, train_gan
from src.sim.store import file_checksum, read_simulation

from .test_gan import gan_cfg, gen_cfg

# epochs high: max_steps ends each run (a run stopped mid-epoch counts that epoch as done)
SELECT = ["gan.select_every=1", "gan.n_select=8", "gan.allow_invalid=true", "gan.epochs=10"]


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    data = tmp_path_factory.mktemp("gan_selection") / "sims"
    torch.set_num_threads(1)
    generate.run(gen_cfg(data, "campaign.n_sims=6"))
    return data


def _gan(cfg):
    return (OmegaConf.to_container(cfg.gan, resolve=True),
            OmegaConf.to_container(cfg.gan_validation))


def _record(out):
    return json.loads((out / RECORD).read_text())


def _check(name, value, threshold):
    return {"name": name, "value": value, "threshold": threshold}


def test_score_is_the_worst_check_over_its_threshold():
    passing = {"checks": [_check("pk_ratio", 0.05, 0.1), _check("peak_counts", 0.15, 0.2),
                          _check("sigma8_slope", 0.0, 0.2)]}
    assert score(passing) == pytest.approx(0.75)
    failing = {"checks": [_check("pk_ratio", 0.3, 0.1), _check("one_point_ks", 0.01, 0.05)]}
    assert score(failing) == pytest.approx(3.0)
    assert score({"checks": [_check("one_point_ks", 0.0, 0.0)]}) == 0.0
    assert score({"checks": [_check("one_point_ks", 0.01, 0.0)]}) == math.inf


def test_selection_cubes_follow_the_validation_cubes_in_the_same_order(sims):
    gcfg = {"val_fraction": 0.25, "split_seed": 0, "n_validation": 8, "n_select": 10}
    _, manifest = check_train_data({"train_data": str(sims)})
    order = training_order(sims, manifest, gcfg)
    assert len(order) == len(set(order)) >= 18
    val_x, _ = validation_set(sims, manifest, gcfg)
    sel_x, sel_y = selection_set(sims, manifest, gcfg)
    assert len(val_x) == 8 and len(sel_x) == 10
    for cube, label, (i, sub) in zip(sel_x, sel_y, order[8:18], strict=True):
        x, y = read_simulation(sims / manifest["files"][i]["file"])[:2]
        assert (cube == x[sub]).all() and (label == y).all()
    with pytest.raises(GanConfigError, match=rf"gan.n_select=200: gan.train_data={sims} has "
                                             rf"{len(order)} training sub-volumes"):
        selection_set(sims, manifest, {**gcfg, "n_select": 200})


def test_campaign_samples_from_the_best_checked_state(sims, tmp_path):
    out = tmp_path / "cubes"
    result = generate.run(gan_cfg(sims, out, *SELECT))
    record, selected = _record(out / "gan"), out / "gan" / SELECTED
    assert [h["step"] for h in record["history"]] == [1, 2, 3]
    best = min(record["history"], key=lambda h: h["score"])
    assert (record["selected_step"], record["selected_score"]) == (best["step"], best["score"])
    assert set(best["values"]) == {"pk_ratio", "one_point_ks", "sigma8_slope", "peak_counts"}
    assert torch.load(selected, weights_only=True)["global_step"] == 2 * best["step"]
    assert result["checkpoint"] == str(selected)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["checkpoint_sha256"] == file_checksum(selected)


def test_selection_takes_no_random_numbers_from_the_training(sims, tmp_path):
    weights = []
    for every in (1, 0):
        gcfg, thresholds = _gan(gan_cfg(sims, tmp_path / f"every{every}", *SELECT,
                                        f"gan.select_every={every}"))
        train_gan(gcfg, thresholds)
        last = torch.load(tmp_path / f"every{every}" / "gan" / "last.ckpt", weights_only=True)
        weights.append(last["state_dict"]["generator_ema.head.weight"])
    assert torch.equal(*weights)
    assert not (tmp_path / "every0" / "gan" / SELECTED).exists()


def test_the_selection_record_survives_a_resume(sims, tmp_path):
    gcfg, thresholds = _gan(gan_cfg(sims, tmp_path, *SELECT, "gan.max_steps=2"))
    assert train_gan(gcfg, thresholds).name == SELECTED
    before = _record(tmp_path / "gan")
    gcfg["max_steps"] = 4
    train_gan(gcfg, thresholds)
    after = _record(tmp_path / "gan")
    assert after["history"][:2] == before["history"]
    assert [h["step"] for h in after["history"]] == [1, 2, 3, 4]
    assert after["selected_score"] == min(h["score"] for h in after["history"])
    # n_select decides what the scores mean: a resumed run must keep it
    with pytest.raises(GanConfigError, match="gan.n_select=6, but the checkpoint resumed"):
        train_gan({**gcfg, "n_select": 6, "max_steps": 5}, thresholds)
    # trained afresh, a run selects among its own states only
    train_gan({**gcfg, "resume": False, "max_steps": 1}, thresholds)
    assert [h["step"] for h in _record(tmp_path / "gan")["history"]] == [1]


def test_a_lost_selected_checkpoint_is_selected_again(sims, tmp_path, caplog):
    gcfg, thresholds = _gan(gan_cfg(sims, tmp_path, *SELECT, "gan.max_steps=2"))
    train_gan(gcfg, thresholds)
    (tmp_path / "gan" / SELECTED).unlink()
    gcfg["max_steps"] = 3
    with caplog.at_level("WARNING", logger="src.gan.selection"):
        assert train_gan(gcfg, thresholds).name == SELECTED
    assert f"{tmp_path / 'gan' / SELECTED} is missing; selecting afresh from step 2" in caplog.text
    assert _record(tmp_path / "gan")["selected_step"] == 3


@pytest.mark.parametrize("override, culprit", [
    ("gan.select_every=-1", r"gan.select_every=-1"),
    ("gan.select_every=often", r"gan.select_every='often'"),
    ("gan.n_select=4", r"gan.n_select=4 must be >= 6"),
    ("gan.n_select=500", r"gan.n_select=500: gan.train_data=.* training sub-volumes"),
])
def test_bad_selection_config_is_refused_before_training(sims, tmp_path, override, culprit):
    with pytest.raises(GanConfigError, match=culprit):
        generate.run(gan_cfg(sims, tmp_path, *SELECT, override))
    assert not (tmp_path / "gan" / "last.ckpt").exists()


def test_a_selection_saved_after_the_last_checkpoint_is_kept(sims, tmp_path):
    """A kill between saving selected.ckpt and the next last.ckpt: the resumed run keeps the
    better state it finds on disk, whose record last.ckpt has not seen."""
    gcfg, thresholds = _gan(gan_cfg(sims, tmp_path, *SELECT, "gan.max_steps=2"))
    train_gan(gcfg, thresholds)
    selected = tmp_path / "gan" / SELECTED
    state = torch.load(selected, weights_only=True)
    (key,) = [k for k in state["callbacks"] if k.startswith("SelectByChecks")]
    state["callbacks"][key]["best_score"] = -1.0  # better than any check can score
    torch.save(state, selected)
    sha = file_checksum(selected)
    gcfg["max_steps"] = 3
    assert train_gan(gcfg, thresholds) == selected
    assert file_checksum(selected) == sha
    assert _record(tmp_path / "gan")["selected_score"] == -1.0
