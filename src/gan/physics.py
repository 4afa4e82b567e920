"""Physics validation of generated density cubes against simulated ones at matched parameters.

Four measures (docs/gan_validation.md; every knob in conf/gan_validation/default.yaml):
- the power spectrum of the density contrast, as the ratio of the generated to the simulated
  mean P(k) per k-bin up to `pk_k_max_frac` of the Nyquist frequency;
- the one-point distribution of log(1 + counts) over every voxel, as the two-sample
  Kolmogorov-Smirnov distance of the pooled voxels;
- the response to sigma_8 of the per-cube variance of the density contrast in cells of
  `sigma8_cell` Mpc/h (sigma_8 is the rms contrast at 8 Mpc/h; single voxels of a sparse cube
  are Poisson noise whatever sigma_8 is), as the sigma_8 coefficient of a linear fit on the
  three parameters and the relative error of the generated slope;
- peak counts: local maxima of the smoothed density contrast above `peak_nu` standard
  deviations, mean per cube, as the relative error of the generated counts.

`generated[i]` was made at `params[i]`, the parameters of `simulated[i]`: the P(k), slope and
peak errors have standard errors from those pairs, and an error up to `n_sigma` of them is
sampling noise of a finite set of cubes, not the generator's fault (the reported value is the
error beyond it). A check passes when its value is at most its threshold (at the edge: passes).
Every measure is per channel (one per redshift); a check's value is its worst channel.
Writing the result (JSON, markdown table, figure) is src/gan/physics_report.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from src.errors import ConfigError, DataError
from src.sim.mesh import power_spectrum
from src.util.checks import integer, number

PARAM_NAMES = ("Omega_M", "sigma_8", "n_s")
SIGMA_8 = PARAM_NAMES.index("sigma_8")
# key -> (kind, low, high): every key of conf/gan_validation/default.yaml, no other
SCHEMA = {
    "n_sigma": ("number", 0.0, None),
    "pk_k_max_frac": ("fraction", 0.0, 1.0),
    "pk_n_bins": ("bins", 1, None),
    "pk_max_ratio_error": ("number", 0.0, None),
    "one_point_bins": ("int", 1, None),
    "one_point_max_ks": ("number", 0.0, 1.0),
    "sigma8_cell": ("number", 0.0, None),
    "sigma8_max_slope_error": ("number", 0.0, None),
    "peak_smoothing": ("number", 0.0, None),
    "peak_nu": ("levels", None, None),
    "peak_max_rel_error": ("number", 0.0, None),
}


def check_thresholds(thresholds: Mapping) -> dict:
    """The `gan_validation` settings as plain values; ConfigError naming the first bad key."""
    if not isinstance(thresholds, Mapping):
        raise ConfigError(f"gan_validation must be a mapping, not {type(thresholds).__name__}")
    unknown = sorted(set(thresholds) - set(SCHEMA))
    if unknown:
        raise ConfigError(f"gan_validation.{unknown[0]} is not a setting (known: {sorted(SCHEMA)})")
    out = {}
    for key, (kind, low, high) in SCHEMA.items():
        name = f"gan_validation.{key}"
        if key not in thresholds:
            raise ConfigError(f"{name} is missing (conf/gan_validation/default.yaml lists it)")
        value = thresholds[key]
        if kind == "number":
            out[key] = number(name, value, low, high)
        elif kind == "fraction":  # (0, 1]: a k range must hold at least one bin
            out[key] = number(name, value, 0.0, 1.0)
            if out[key] <= 0:
                raise ConfigError(f"{name}={value!r} must be in (0, 1]")
        elif kind == "int":
            out[key] = integer(name, value, low)
        elif kind == "bins":  # null: one bin per fundamental wave number
            out[key] = None if value is None else integer(name, value, low)
        else:
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise ConfigError(f"{name}={value!r} must be a list of numbers")
            levels = [number(f"{name}[{i}]", v) for i, v in enumerate(value)]
            if not levels:
                raise ConfigError(f"{name} is empty: give at least one peak height")
            out[key] = sorted(levels)
    return out


# ---------------------------------------------------------------- the fields
def _contrast(counts: np.ndarray) -> np.ndarray:
    """delta = counts / mean - 1 per cube (N, S, S, S); an empty cube is 0 everywhere."""
    mean = counts.mean(axis=(1, 2, 3), keepdims=True)
    safe = np.where(mean > 0, mean, 1.0)
    return np.where(mean > 0, counts / safe - 1.0, 0.0)


def _smooth(fields: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of (N, S, S, S) periodic fields, `sigma` in voxels (0: unchanged)."""
    if sigma <= 0:
        return fields
    s = fields.shape[-1]
    k = 2 * np.pi * np.fft.fftfreq(s)
    kz = 2 * np.pi * np.fft.rfftfreq(s)
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + kz[None, None, :] ** 2
    kernel = np.exp(-0.5 * sigma**2 * k2)
    return np.fft.irfftn(np.fft.rfftn(fields, axes=(1, 2, 3)) * kernel, s=(s, s, s), axes=(1, 2, 3))


def _spectra(counts: np.ndarray, box_size: float, n_bins, k_max: float):
    """k centres and the P(k) of each cube's density contrast, (n_k,) and (N, n_k)."""
    out, k = [], None
    for delta in _contrast(counts):
        k, p, _ = power_spectrum(torch.from_numpy(delta), box_size, n_bins, k_max)
        out.append(p.numpy())
    return k.numpy(), np.stack(out)


def _local_maxima(fields: np.ndarray) -> np.ndarray:
    """Mask of voxels above all 26 periodic neighbours, (N, S, S, S)."""
    peak = np.ones(fields.shape, dtype=bool)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dz in (-1, 0, 1):
                if dx or dy or dz:
                    peak &= fields > np.roll(fields, (dx, dy, dz), axis=(1, 2, 3))
    return peak


def _peak_heights(counts: np.ndarray, sigma: float) -> list[np.ndarray]:
    """Per cube, the heights (in the cube's own standard deviations) of its smoothed density
    contrast's local maxima: the amplitude is the other checks' job, this one the shape."""
    field = _smooth(_contrast(counts), sigma)
    std = field.std(axis=(1, 2, 3), keepdims=True)
    nu = field / np.where(std > 0, std, 1.0)
    mask = _local_maxima(nu)
    return [nu[i][mask[i]] for i in range(len(nu))]


# ---------------------------------------------------------------- the measures
def _excess(error: np.ndarray, se: np.ndarray, n_sigma: float) -> np.ndarray:
    """The part of an error beyond `n_sigma` standard errors (0 when within them)."""
    return np.maximum(0.0, np.abs(error) - n_sigma * se)


def _pk_measure(sim, gen, box_size: float, t: dict) -> dict:
    s = sim.shape[-1]
    k_f = 2 * math.pi / box_size
    k_max = t["pk_k_max_frac"] * k_f * (s // 2)
    k, p_sim = _spectra(sim, box_size, t["pk_n_bins"], k_max)
    _, p_gen = _spectra(gen, box_size, t["pk_n_bins"], k_max)
    n = len(sim)
    ratio = p_gen.mean(0) / p_sim.mean(0)
    # the ratio of sums errs by the sum of the pairs' differences; its spread is their scatter
    diff = p_gen - p_sim
    se = np.sqrt(((diff - diff.mean(0)) ** 2).sum(0) * n / (n - 1)) / p_sim.sum(0)
    return {"k": k, "sim": p_sim.mean(0), "gen": p_gen.mean(0), "ratio": ratio, "se": se,
            "excess": _excess(ratio - 1.0, se, t["n_sigma"])}


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance, exact with ties (integer counts have many)."""
    a, b = np.sort(a), np.sort(b)
    at = np.union1d(a, b)
    cdf_a = np.searchsorted(a, at, side="right") / a.size
    cdf_b = np.searchsorted(b, at, side="right") / b.size
    return float(np.abs(cdf_a - cdf_b).max())


def _wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """W1 between two samples: the mean gap of their quantile functions (on 1001 quantiles)."""
    q = np.linspace(0, 1, 1001)
    return float(np.abs(np.quantile(a, q) - np.quantile(b, q)).mean())


def _varies(x: np.ndarray) -> np.ndarray:
    """Per column, whether it spreads beyond rounding (a constant parameter leaves the fit)."""
    return np.ptp(x, axis=0) > 1e-9 * np.maximum(np.abs(x).max(axis=0), 1.0)


def _slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(sigma_8 coefficient, its standard error, intercept at the other parameters' means) of
    y on the centred parameters: Omega_M and n_s in the fit take their scatter out of the
    slope's noise (they change the variance too) without biasing it, as they are drawn apart."""
    keep = _varies(x)
    design = np.column_stack([np.ones(len(x)), (x - x.mean(0))[:, keep]])
    col = 1 + int(keep[:SIGMA_8].sum())
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    dof = len(x) - design.shape[1]
    resid = y - design @ coef
    cov = np.linalg.pinv(design.T @ design) * (resid @ resid) / dof
    slope = float(coef[col])
    return slope, float(math.sqrt(max(cov[col, col], 0.0))), float(y.mean() - slope * x[:, SIGMA_8].mean())


def cell_variance(counts: np.ndarray, cell: int) -> np.ndarray:
    """Per cube [N, S, S, S], the variance of the density contrast of the counts summed in
    cells of `cell`^3 voxels (the cube side cut to a multiple of it); 0 for an empty cube."""
    n, side = counts.shape[0], counts.shape[1] // cell * cell
    c = np.maximum(counts[:, :side, :side, :side], 0).astype(np.float64)
    m = side // cell
    cells = c.reshape(n, m, cell, m, cell, m, cell).sum(axis=(2, 4, 6)).reshape(n, -1)
    mean = cells.mean(axis=1, keepdims=True)
    delta = np.divide(cells, mean, out=np.zeros_like(cells), where=mean > 0) - (mean > 0)
    return delta.var(axis=1)


def _sigma8_measure(sim, gen, params, box_size: float, t: dict) -> dict:
    # cells of about sigma8_cell Mpc/h, at least one voxel, at most half the cube
    side = sim.shape[1]
    cell = int(min(max(1, round(t["sigma8_cell"] * side / box_size)), max(1, side // 2)))
    var_sim, var_gen = cell_variance(sim, cell), cell_variance(gen, cell)
    b_s, se_s, a_s = _slope(params, var_sim)
    b_g, se_g, a_g = _slope(params, var_gen)
    excess = float(_excess(np.array(b_g - b_s), np.array(math.hypot(se_s, se_g)), t["n_sigma"]))
    rel = excess / abs(b_s) if b_s else (0.0 if excess == 0 else math.inf)
    return {"cell_voxels": cell, "var_sim": var_sim, "var_gen": var_gen, "slope_sim": b_s,
            "slope_gen": b_g,
            "se_sim": se_s, "se_gen": se_g, "intercept_sim": a_s, "intercept_gen": a_g,
            "rel_error": rel}


def _peak_measure(sim, gen, t: dict) -> dict:
    levels = np.asarray(t["peak_nu"])
    h_sim = _peak_heights(sim, t["peak_smoothing"])
    h_gen = _peak_heights(gen, t["peak_smoothing"])
    n_sim = np.array([[(h >= nu).sum() for nu in levels] for h in h_sim], dtype=float)
    n_gen = np.array([[(h >= nu).sum() for nu in levels] for h in h_gen], dtype=float)
    diff = n_gen - n_sim
    se = diff.std(0, ddof=1) / math.sqrt(len(diff))
    excess = _excess(diff.mean(0), se, t["n_sigma"])
    mean_sim = n_sim.mean(0)
    # a level no simulated cube reaches has no relative error to measure: left unchecked (NaN)
    rel = np.where(mean_sim > 0, excess / np.where(mean_sim > 0, mean_sim, 1.0), np.nan)
    all_sim, all_gen = np.concatenate(h_sim), np.concatenate(h_gen)
    top = max(all_sim.max(initial=0.0), all_gen.max(initial=0.0), levels[-1]) + 1e-9
    edges = np.linspace(min(0.0, levels[0]), top, 41)
    # peak heights histogrammed per cube (the figure), not listed: a 64^3 cube has thousands
    return {"sim": mean_sim, "gen": n_gen.mean(0), "se": se, "rel_error": rel,
            "height_bins": edges,
            "heights_sim": np.histogram(all_sim, edges)[0] / len(h_sim),
            "heights_gen": np.histogram(all_gen, edges)[0] / len(h_gen)}


# ---------------------------------------------------------------- validate
def _check_inputs(simulated, generated, params, box_size) -> tuple[np.ndarray, ...]:
    sim = np.asarray(simulated, dtype=np.float64)
    gen = np.asarray(generated, dtype=np.float64)
    par = np.asarray(params, dtype=np.float64)
    if sim.ndim != 5 or sim.shape[2] != sim.shape[3] or sim.shape[3] != sim.shape[4]:
        raise DataError(f"simulated cubes have shape {sim.shape}, not (N, C, S, S, S)")
    if gen.shape != sim.shape:
        raise DataError(f"generated cubes have shape {gen.shape}, the simulated ones {sim.shape}: "
                        "validation compares them one to one")
    if par.shape != (len(sim), len(PARAM_NAMES)):
        raise DataError(f"params have shape {par.shape}, expected ({len(sim)}, 3): "
                        f"one row of {', '.join(PARAM_NAMES)} per cube")
    # the slope fit needs more cubes than its 4 coefficients, and sigma_8 must vary
    if len(sim) < 6:
        raise DataError(f"{len(sim)} cube pairs are too few to validate: at least 6")
    if not _varies(par)[SIGMA_8]:
        raise DataError("every cube has the same sigma_8: the variance-vs-sigma_8 response "
                        "needs cubes that span it")
    if not (math.isfinite(box_size) and box_size > 0):
        raise DataError(f"box_size={box_size!r} must be a positive number (Mpc/h)")
    return sim, gen, par


def _worst(values, channels: int) -> tuple[float, str]:
    """The largest value over channels and which channel has it; NaN (unchecked) is skipped."""
    per = []
    for v in values:
        a = np.atleast_1d(np.asarray(v, dtype=float))
        a = a[~np.isnan(a)]
        per.append(float(a.max()) if a.size else 0.0)
    c = int(np.argmax(per))
    return per[c], (f"worst: channel {c}" if channels > 1 else "")


def _check(name: str, values, threshold: float, channels: int, what: str) -> dict:
    value, where = _worst(values, channels)
    return {"name": name, "value": value, "threshold": threshold, "passed": bool(value <= threshold),
            "what": what + (f" ({where})" if where else "")}


def _plain(x):
    """numpy -> lists and floats, so the result is JSON as it is."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else (None if math.isnan(x) else float(x))
    if isinstance(x, np.integer):
        return int(x)
    return x


def validate(simulated, generated, params, thresholds: dict, box_size: float) -> dict:
    """Compare generated cubes with simulated ones at matched parameters (module docstring).

    simulated, generated: (N, C, S, S, S) raw particle counts, generated[i] made at params[i];
    params: (N, 3) Omega_M, sigma_8, n_s; thresholds: the gan_validation config as a dict;
    box_size: side of one cube in Mpc/h. Curves are per channel (a leading channel axis)."""
    t = check_thresholds(thresholds)
    sim, gen, par = _check_inputs(simulated, generated, params, float(box_size))
    channels = sim.shape[1]
    top = max(np.log1p(np.maximum(sim, 0)).max(), np.log1p(np.maximum(gen, 0)).max(), 1e-6)
    edges = np.linspace(0.0, top, t["one_point_bins"] + 1)
    pk, one, s8, peaks = [], [], [], []
    for c in range(channels):
        s, g = sim[:, c], gen[:, c]
        pk.append(_pk_measure(s, g, box_size, t))
        ls, lg = np.log1p(np.maximum(s, 0)).ravel(), np.log1p(np.maximum(g, 0)).ravel()
        one.append({"sim": np.histogram(ls, edges, density=True)[0],
                    "gen": np.histogram(lg, edges, density=True)[0],
                    "ks": _ks(ls, lg), "wasserstein": _wasserstein(ls, lg)})
        s8.append(_sigma8_measure(s, g, par, box_size, t))
        peaks.append(_peak_measure(s, g, t))
    checks = [
        _check("pk_ratio", [p["excess"] for p in pk], t["pk_max_ratio_error"], channels,
               f"max over k <= {t['pk_k_max_frac']:g} k_Nyquist of abs(P_gen / P_sim - 1), "
               f"beyond {t['n_sigma']:g} standard errors"),
        _check("one_point_ks", [o["ks"] for o in one], t["one_point_max_ks"], channels,
               "Kolmogorov-Smirnov distance of the log(1 + counts) voxels"),
        _check("sigma8_slope", [r["rel_error"] for r in s8], t["sigma8_max_slope_error"],
               channels, "abs(slope_gen - slope_sim) / abs(slope_sim) of var(contrast in sigma8_cell cells) on "
               f"sigma_8, beyond {t['n_sigma']:g} standard errors"),
        _check("peak_counts", [p["rel_error"] for p in peaks], t["peak_max_rel_error"], channels,
               f"max over nu in {t['peak_nu']} of abs(n_gen - n_sim) / n_sim, peaks per cube, "
               f"beyond {t['n_sigma']:g} standard errors"),
    ]
    stack = lambda items, key: [i[key] for i in items]  # noqa: E731  (one channel axis first)
    result = {
        "passed": all(c["passed"] for c in checks),
        "checks": checks,
        "n_cubes": len(sim), "channels": channels, "size": sim.shape[-1],
        "box_size": float(box_size), "thresholds": t,
        "pk": {"k": pk[0]["k"], **{key: stack(pk, key)
                                   for key in ("sim", "gen", "ratio", "se", "excess")}},
        "one_point": {"bins": edges, **{key: stack(one, key)
                                        for key in ("sim", "gen", "ks", "wasserstein")}},
        "sigma8_response": {"sigma_8": par[:, SIGMA_8], **{key: stack(s8, key) for key in s8[0]}},
        "peaks": {"nu": t["peak_nu"], **{key: stack(peaks, key) for key in peaks[0]}},
    }
    return _plain(result)
