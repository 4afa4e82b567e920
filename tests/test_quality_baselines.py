"""The baselines and the quality target on synthetic sets with a known answer (no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from src.errors import ConfigError
from src.quality.baselines import (
    Ridge,
    baseline_metrics,
    mean_errors,
    power_spectrum_bins,
    sample_features,
    stats_errors,
)
from src.quality.scores import quality_penalty, skill_metrics
from src.quality.target import QualityTarget


def test_summary_statistics_of_a_hand_made_cube():
    counts = np.zeros((1, 4, 4, 4))
    counts[0, :2] = math.e - 1.0  # half the voxels hold log1p = 1, half are empty
    mean, var, skew, empty, *pk = sample_features(counts, pk_bins=2)
    assert (mean, var, empty) == pytest.approx((0.5, 0.25, 0.5))
    assert skew == pytest.approx(0.0, abs=1e-12)
    assert len(pk) == 2 and pk[0] > 0  # a step along one axis has power at the fundamental
    assert np.all(power_spectrum_bins(np.full((8, 8, 8), 3.0), 3) == 0)  # no fluctuation


def test_mean_baseline_is_the_training_mean():
    y_train = np.array([[0.0, 1.0], [1.0, -1.0]])
    y_val = np.array([[1.0, 0.0], [0.0, 1.0]])
    err = mean_errors(y_train, y_val)  # predicts (0.5, 0) for every validation sample
    np.testing.assert_allclose(err["mse"], [0.25, 0.5])
    np.testing.assert_allclose(err["mae"], [0.5, 0.5])


def test_stats_baseline_recovers_labels_that_its_features_determine():
    """Constant cubes whose label is linear in log1p(counts): the ridge predicts the
    validation labels almost exactly, the training mean does not."""
    rng = np.random.default_rng(0)
    levels = rng.uniform(0, 20, size=60)
    cubes = [np.full((1, 4, 4, 4), c) for c in levels]
    y = np.stack([2 * np.log1p(levels) - 3, -np.log1p(levels)], axis=1)
    feats = np.stack([sample_features(c, pk_bins=2) for c in cubes])
    stats = stats_errors(feats[:40], y[:40], feats[40:], y[40:], alpha=1e-8)
    mean = mean_errors(y[:40], y[40:])
    assert stats["mse"].max() < 1e-10 < mean["mse"].min()
    metrics = baseline_metrics({"mean": mean, "stats": stats}, ["a", "b"])
    assert metrics["baseline_stats_mse"] == pytest.approx(stats["mse"].mean())
    assert set(metrics) >= {"baseline_mean_mse_a", "baseline_stats_mae_b_norm"}


def test_ridge_shrinks_towards_the_mean_and_ignores_constant_features():
    f = np.column_stack([np.arange(10.0), np.ones(10)])
    y = 3 * np.arange(10.0)[:, None]
    strong = Ridge.fit(f, y, alpha=1e9).predict(f)
    np.testing.assert_allclose(strong, np.full_like(y, y.mean()), atol=1e-3)
    np.testing.assert_allclose(Ridge.fit(f, y, alpha=0.0).predict(f), y, atol=1e-9)


def test_skill_and_valid_flops_penalty():
    metrics = {"val/loss": 0.1, "baseline_stats_mse": 0.2, "baseline_mean_mse": 0.4,
               "val/mse_a": 0.3, "baseline_stats_mse_a": 0.2, "baseline_mean_mse_a": 0.3}
    skill = skill_metrics(metrics, ["a"])
    assert skill == pytest.approx({"skill": 0.5, "skill_vs_mean": 0.75, "skill_a": -0.5,
                                   "skill_vs_mean_a": 0.0})
    assert quality_penalty(0.2, 0.1, exponent=5) == pytest.approx(0.5**5)
    assert quality_penalty(0.05, 0.1, exponent=5) == 1.0  # capped: no bonus for beating it
    assert quality_penalty(0.05, 0.1, exponent=1, cap=False) == pytest.approx(2.0)


def test_target_thresholds_and_metrics():
    base = {"baseline_stats_mse": 0.2, "baseline_mean_mae_sigma_8_norm": 0.5}
    assert QualityTarget.from_config({}).threshold(base) == pytest.approx(0.17)
    mae = QualityTarget.from_config({"metric": "val_mae", "param": "sigma_8",
                                     "relative_to": "mean", "factor": 0.5})
    assert mae.threshold(base) == pytest.approx(0.25) and mae.name == "val_mae_sigma_8"
    assert mae.achieved({"val/mae_sigma_8_norm": 0.3}, ["sigma_8"]) == pytest.approx(0.3)
    absolute = QualityTarget.from_config({"metric": "val_mae", "relative_to": None, "value": 0.124})
    assert absolute.threshold({}) == 0.124
    assert absolute.achieved({"val/mae_a_norm": 0.1, "val/mae_b_norm": 0.3}, ["a", "b"]) == \
        pytest.approx(0.2)
    with pytest.raises(ConfigError, match="quality.target.param='h0'"):
        mae.__class__.from_config({"param": "h0"}).check_params(["sigma_8"])


@pytest.mark.parametrize("cfg, match", [
    ({"metric": "accuracy"}, "quality.target.metric='accuracy'"),
    ({"relative_to": "cnn"}, "quality.target.relative_to='cnn'"),
    ({"factor": 0}, "quality.target.factor=0 must be a number > 0"),
    ({"factor": "x"}, "quality.target.factor='x'"),
    ({"relative_to": None}, "either relative_to"),
    ({"relative_to": None, "value": -1}, "quality.target.value=-1"),
    ({"value": 0.1}, "exclude each other"),
    ({"metrc": "val_mse"}, "unknown keys"),
])
def test_bad_target_is_one_clear_config_error(cfg, match):
    with pytest.raises(ConfigError, match=match):
        QualityTarget.from_config(cfg)
