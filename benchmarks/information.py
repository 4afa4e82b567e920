"""How much do the summary statistics of one sample say about its parameters? A ceiling check
for the quality target: the ridge of the quality baselines on each sample's statistics, on
quadratic features of them (a nonlinear regression of the same numbers), and on the statistics
averaged over the sub-volumes of each simulation (the volume of the whole box).

    python -m benchmarks.information --data DIR          # a generate.py set, e.g. sim=tiny

If the ridge on whole-box statistics is far better than on single sub-volumes while the
quadratic ridge is not, the sub-volume's own sample variance, not the regression, limits what
any model can learn from one sample (docs/benchmarks.md "Does the small model learn?").
Same split (data.val_fraction, data.split_seed), features and R² as the training jobs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from src.datamodules.split import split_simulations
from src.quality.baselines import mean_errors, sample_features, stats_errors
from src.sim.store import normalise_labels, read_manifest, read_simulation


def features_and_labels(data: Path, pk_bins: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """[sims, n_sub, features] and normalised labels [sims, P] of every file in the manifest."""
    manifest = read_manifest(data)
    names = manifest["param_names"]
    feats, params, ids = [], [], []
    for entry in manifest["files"]:
        x, _, _ = read_simulation(data / entry["file"])
        feats.append(np.stack([sample_features(sub, pk_bins) for sub in x]))
        params.append([entry["params"][p] for p in names])
        ids.append(int(entry["id"]))
    return np.stack(feats), normalise_labels(params, names, manifest["param_ranges"]), ids


def quadratic(f: np.ndarray) -> np.ndarray:
    """Standardised features and all their pairwise products."""
    z = (f - f.mean(axis=0)) / np.where(f.std(axis=0) > 0, f.std(axis=0), 1.0)
    i, j = np.triu_indices(z.shape[1])
    return np.hstack([z, z[:, i] * z[:, j]])


def fit(f_tr, y_tr, f_va, y_va, alpha: float) -> dict:
    mse = stats_errors(f_tr, y_tr, f_va, y_va, alpha)["mse"]
    ref = mean_errors(y_tr, y_va)["mse"]
    return {"val_mse": float(mse.mean()), "r2": [float(v) for v in 1 - mse / ref],
            "mean_mse": float(ref.mean())}


def fit_per_sub_volume(feats, y, tr, va, alpha: float) -> dict:
    """`fit` with every sub-volume of `feats` [sims, n_sub, F] a sample, its simulation's labels."""
    n_sub = feats.shape[1]
    return fit(feats[tr].reshape(-1, feats.shape[-1]), np.repeat(y[tr], n_sub, axis=0),
               feats[va].reshape(-1, feats.shape[-1]), np.repeat(y[va], n_sub, axis=0), alpha)


def fit_per_simulation(feats, y, tr, va, alpha: float) -> dict:
    """`fit` on each simulation's statistics averaged over its sub-volumes."""
    return fit(feats[tr].mean(axis=1), y[tr], feats[va].mean(axis=1), y[va], alpha)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--val-fraction", type=float, default=0.25)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--pk-bins", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=1.0, help="ridge penalty (quadratic: x10)")
    args = ap.parse_args()
    feats, y, ids = features_and_labels(args.data, args.pk_bins)
    tr, va = split_simulations(ids, args.val_fraction, args.split_seed, args.data)
    n_sub, n_feat = feats.shape[1], feats.shape[2]
    quad = quadratic(feats.reshape(-1, n_feat)).reshape(len(ids), n_sub, -1)
    rows = {
        "sub-volume statistics (the quality baseline)":
            fit_per_sub_volume(feats, y, tr, va, args.alpha),
        "quadratic in them": fit_per_sub_volume(quad, y, tr, va, 10 * args.alpha),
        f"averaged over each simulation's {n_sub} sub-volumes":
            fit_per_simulation(feats, y, tr, va, args.alpha),
    }
    print(f"{args.data}: {len(tr)} train / {len(va)} val simulations, {n_sub} sub-volume(s) "
          f"each, {n_feat} features")
    for name, row in rows.items():
        r2 = ", ".join(f"{v:.3f}" for v in row["r2"])
        print(f"  ridge on {name}: val MSE {row['val_mse']:.4f} (training mean "
              f"{row['mean_mse']:.4f}), R² {r2}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
