"""Placeholder data through the real contract writer: seconds, not an N-body run.

Tests use it to make small HDF5 sets fast. The fields are Poisson-sampled log-normal
densities whose mean, amplitude and spectral slope follow (Omega_M, sigma_8, n_s), so a
network has something learnable; they are not cosmological simulations (generate.py makes those).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from src.sim.store import PARAM_NAMES, rebuild_manifest, sim_filename, write_simulation

DEFAULT_RANGES = {"Omega_M": (0.25, 0.35), "sigma_8": (0.78, 0.95), "n_s": (0.9, 1.0)}


def _field(rng: np.random.Generator, size: int, params: np.ndarray) -> np.ndarray:
    omega_m, sigma_8, n_s = params
    k = np.fft.fftfreq(size)[:, None, None] ** 2
    k = np.sqrt(k + np.fft.fftfreq(size)[None, :, None] ** 2 + np.fft.rfftfreq(size)[None, None, :] ** 2)
    k[0, 0, 0] = 1.0
    amplitude = k ** ((n_s - 4.0) / 2.0)
    amplitude[0, 0, 0] = 0.0
    noise = np.fft.rfftn(rng.standard_normal((size, size, size)))
    delta = np.fft.irfftn(noise * amplitude, s=(size, size, size))
    delta *= 1.5 * sigma_8 / (delta.std() + 1e-12)
    density = np.exp(delta - delta.var() / 2.0) * (8.0 * omega_m / 0.3)
    return rng.poisson(density).astype(np.float32)


def write_synthetic_dataset(
    data_dir: str | Path,
    n_sims: int,
    size: int,
    channels: int = 1,
    n_sub: int = 8,
    seed: int = 0,
    param_ranges: dict | None = None,
) -> Path:
    """Write `n_sims` files of `[n_sub, channels, size, size, size]` and their manifest."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    ranges = {k: tuple(v) for k, v in (param_ranges or DEFAULT_RANGES).items()}
    per_side = round(n_sub ** (1 / 3))
    if per_side**3 != n_sub:
        raise ValueError(f"n_sub={n_sub} is not a cube (1, 8, 27, ...)")
    for sim_id in range(n_sims):
        rng = np.random.default_rng([seed, sim_id])
        params = np.array([rng.uniform(*ranges[n]) for n in PARAM_NAMES], dtype=np.float32)
        full = np.stack([_field(rng, size * per_side, params) for _ in range(channels)])
        subs = [
            full[:, i * size : (i + 1) * size, j * size : (j + 1) * size, k * size : (k + 1) * size]
            for i in range(per_side)
            for j in range(per_side)
            for k in range(per_side)
        ]
        attrs = {"sim_id": sim_id, "seed": seed, "box_size": 0.0, "n_particles": 0,
                 "grid": size * per_side, "steps": 0, "redshifts": [0.0] * channels,
                 "code_version": "synthetic-lognormal"}
        write_simulation(data_dir / sim_filename(sim_id), np.stack(subs), params, attrs)
    header = {
        "param_names": list(PARAM_NAMES),
        "param_ranges": {k: list(v) for k, v in ranges.items()},
        "sample_shape": [channels, size, size, size],
        "n_sub": n_sub,
        "redshifts": [0.0] * channels,
        "generator": "synthetic-lognormal (placeholder, not an N-body simulation)",
    }
    return rebuild_manifest(data_dir, header)
