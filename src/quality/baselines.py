"""What a CNN must beat, on the same split: the training-mean predictor and a ridge regression
on summary statistics of each sub-volume.

Numpy only, on plain arrays: the quality callback reads the samples and hands them over, and
anyone can recompute a baseline from the validation ids metrics.json records (docs/report.md).
Labels are the normalised ones the network regresses ([-1, 1] per parameter).

Summary statistics of one sub-volume `[C, d, d, d]` of particle counts, per channel: the mean,
variance and skewness of log1p(counts), the fraction of empty voxels, and the log power of the
overdensity in `pk_bins` shells of |k| (a coarse P(k)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MOMENTS = ("log1p_mean", "log1p_var", "log1p_skew", "empty_frac")


def power_spectrum_bins(counts: np.ndarray, n_bins: int) -> np.ndarray:
    """log10(1 + mean |FFT(delta)|^2 / d^3) in `n_bins` equal shells of |k| between the
    fundamental and the Nyquist frequency; delta = counts / mean - 1 (0 for an empty cube)."""
    d = counts.shape[0]
    mean = counts.mean()
    delta = counts / mean - 1.0 if mean > 0 else np.zeros_like(counts, dtype=np.float64)
    power = np.abs(np.fft.rfftn(delta)) ** 2 / delta.size
    k1 = np.fft.fftfreq(d) * d
    kz = np.fft.rfftfreq(d) * d
    k = np.sqrt(k1[:, None, None] ** 2 + k1[None, :, None] ** 2 + kz[None, None, :] ** 2)
    edges = np.linspace(1.0, d / 2.0, n_bins + 1)
    shell = np.digitize(k, edges) - 1
    out = np.zeros(n_bins)
    for b in range(n_bins):
        inside = shell == b
        if b == n_bins - 1:  # the last shell includes the Nyquist edge itself
            inside |= k == edges[-1]
        out[b] = power[inside].mean() if inside.any() else 0.0
    return np.log10(1.0 + out)


def sample_features(x: np.ndarray, pk_bins: int = 4) -> np.ndarray:
    """The summary statistics of one sub-volume `[C, d, d, d]` of counts (module docstring)."""
    feats = []
    for counts in np.asarray(x, dtype=np.float64):
        logs = np.log1p(np.maximum(counts, 0.0))
        mean, var = logs.mean(), logs.var()
        skew = ((logs - mean) ** 3).mean() / var**1.5 if var > 0 else 0.0
        feats += [mean, var, skew, float((counts == 0).mean())]
        if pk_bins:
            feats += list(power_spectrum_bins(counts, pk_bins))
    return np.asarray(feats)


def feature_names(channels: int, pk_bins: int) -> list[str]:
    per = [*MOMENTS, *(f"pk_{b}" for b in range(pk_bins))]
    return [f"c{c}_{name}" for c in range(channels) for name in per]


@dataclass
class Ridge:
    """y ~ standardised features @ w + b, fitted with an L2 penalty `alpha` on w."""

    mu: np.ndarray
    sd: np.ndarray
    w: np.ndarray
    b: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, y: np.ndarray, alpha: float) -> Ridge:
        f = np.asarray(features, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        mu, sd = f.mean(axis=0), f.std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)  # a constant feature carries nothing; keep it finite
        z = (f - mu) / sd
        b = y.mean(axis=0)
        # least squares on [z; sqrt(alpha) I]: the ridge solution, and with alpha 0 and a
        # constant (all-zero) column the minimum-norm one instead of a singular solve
        n_feat = z.shape[1]
        a = np.vstack([z, np.sqrt(alpha) * np.eye(n_feat)])
        rhs = np.vstack([y - b, np.zeros((n_feat, y.shape[1]))])
        w = np.linalg.lstsq(a, rhs, rcond=None)[0]
        return cls(mu, sd, w, b)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return ((np.asarray(features, dtype=np.float64) - self.mu) / self.sd) @ self.w + self.b


def errors(pred: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Per-parameter mse and mae of predictions `[n, P]` against labels `[n, P]`."""
    diff = np.asarray(pred, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    return {"mse": (diff**2).mean(axis=0), "mae": np.abs(diff).mean(axis=0)}


def mean_errors(y_train, y_val) -> dict[str, np.ndarray]:
    """Errors of predicting the mean training label for every validation sample."""
    y_val = np.asarray(y_val, np.float64)
    mean = np.asarray(y_train, np.float64).mean(axis=0)
    return errors(np.broadcast_to(mean, y_val.shape), y_val)


def stats_errors(f_train, y_train, f_val, y_val, alpha: float = 1.0) -> dict[str, np.ndarray]:
    """Errors of the summary-statistics ridge fitted on (f_train, y_train)."""
    return errors(Ridge.fit(f_train, y_train, alpha).predict(f_val), y_val)


def baseline_metrics(result: dict, param_names) -> dict[str, float]:
    """metrics.json names of {kind: errors} (kind: mean, stats): baseline_<kind>_mse (mean over the
    parameters, as val/loss), and per parameter baseline_<kind>_mse_<p> and _mae_<p>_norm."""
    metrics = {}
    for kind, err in result.items():
        metrics[f"baseline_{kind}_mse"] = float(err["mse"].mean())
        metrics[f"baseline_{kind}_mae_norm"] = float(err["mae"].mean())
        for i, name in enumerate(param_names):
            metrics[f"baseline_{kind}_mse_{name}"] = float(err["mse"][i])
            metrics[f"baseline_{kind}_mae_{name}_norm"] = float(err["mae"][i])
    return metrics
