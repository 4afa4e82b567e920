"""Does the CNN's edge survive averaging over a simulation? A finished training job's weights
against the summary-statistics ridge, per sub-volume and with each validation simulation's
sub-volumes pooled (the CNN's predictions averaged; the ridge fitted on averaged statistics).

    python -m benchmarks.per_simulation --job outputs/.../small     # a train.py job directory
    python -m benchmarks.per_simulation --job J --symmetries 8      # each cube's 8 mirror images

With --symmetries 8 or 48 the CNN's prediction for a sub-volume is the mean over its mirror
images (src/util/symmetry.py), as a job with `quality.val_mirror_images` validates. The ridge's
statistics (moments, the empty fraction, P(k)) are the same on every image: averaging gives
it nothing.

The job's own saved config (.hydra/config.yaml) rebuilds its data module and net, so the split,
transform and labels are the job's; its latest.ckpt (the weights at the end of training, the
ones metrics.json's val MSE measures) is evaluated in float32 without augmentation. Printed per
way: val MSE of the CNN and the ridge, their ratio, and R² per parameter against the training
mean (docs/benchmarks.md "Does the small model learn?").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from benchmarks.information import features_and_labels, fit_per_simulation, fit_per_sub_volume
from src.datamodules.split import split_simulations
from src.quality.baselines import errors, mean_errors
from src.training.build import build_datamodule, build_module
from src.util.symmetry import COUNTS


def cnn_predictions(job: Path, ckpt: str, symmetries: int = 1
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Per validation sub-volume: predictions (the mean over `symmetries` mirror images),
    labels, file index; and the job's data config."""
    cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
    cfg.speed.compile = False  # eager weights load the same state dict
    dm = build_datamodule(cfg)
    dm.setup("fit")
    module = build_module(cfg, dm)
    state = torch.load(job / "checkpoints" / ckpt, map_location="cpu", weights_only=False)
    module.load_state_dict(state["state_dict"])
    module.eval()
    loader = torch.utils.data.DataLoader(dm.val_set, batch_size=32)
    preds, labels = [], []
    with torch.no_grad():
        for x, y in loader:
            preds.append(module.mirrored(x, symmetries))
            labels.append(y)
    return (torch.cat(preds).numpy(), torch.cat(labels).numpy(), dm.val_set.index[:, 0],
            OmegaConf.to_container(cfg.data, resolve=True))


def per_simulation(values: np.ndarray, file_idx: np.ndarray) -> np.ndarray:
    """The mean of `values` over each simulation's rows, in order of first appearance."""
    order = list(dict.fromkeys(file_idx.tolist()))
    return np.stack([values[file_idx == f].mean(axis=0) for f in order])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", type=Path, required=True, help="a finished train.py job directory")
    ap.add_argument("--ckpt", default="latest.ckpt", help="a file in the job's checkpoints/")
    ap.add_argument("--pk-bins", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=1.0, help="the ridge penalty")
    ap.add_argument("--symmetries", type=int, choices=COUNTS, default=1,
                    help="average the CNN over each cube's mirror images (1: the cube only)")
    args = ap.parse_args()
    for need in (args.job / ".hydra" / "config.yaml", args.job / "checkpoints" / args.ckpt):
        if not need.is_file():
            ap.error(f"--job {args.job}: no {need.relative_to(args.job)} (a finished train.py job?)")
    pred, y, file_idx, data_cfg = cnn_predictions(args.job, args.ckpt, args.symmetries)
    data = Path(data_cfg["dir"])
    feats, y_sim, ids = features_and_labels(data, args.pk_bins)
    tr, va = split_simulations(ids, data_cfg["val_fraction"], data_cfg["split_seed"], data)
    n_sub = feats.shape[1]
    ref = mean_errors(y_sim[tr], y)["mse"]  # the training mean's MSE (equal n_sub per simulation)
    y_pooled = per_simulation(y, file_idx)
    if not np.allclose(y_pooled, y_sim[va], atol=1e-5):
        raise SystemExit(f"{args.job}: the job's validation simulations are not the ridge's")
    ref_pooled = mean_errors(y_sim[tr], y_pooled)["mse"]
    rows = {}
    for name, cnn_mse, ref_mse, ridge in [
        ("per sub-volume", errors(pred, y)["mse"], ref,
         fit_per_sub_volume(feats, y_sim, tr, va, args.alpha)),
        (f"per simulation ({n_sub} sub-volumes pooled)",
         errors(per_simulation(pred, file_idx), y_pooled)["mse"], ref_pooled,
         fit_per_simulation(feats, y_sim, tr, va, args.alpha)),
    ]:
        rows[name] = {"cnn_val_mse": float(cnn_mse.mean()), "ridge_val_mse": ridge["val_mse"],
                      "cnn_r2": [float(v) for v in 1 - cnn_mse / ref_mse], "ridge_r2": ridge["r2"]}
    logged = json.loads((args.job / "metrics.json").read_text())["metrics"].get("val/loss")
    print(f"{args.job} ({args.ckpt}) on {data}: {len(va)} validation simulations, {n_sub} "
          f"sub-volume(s) each; the CNN over {args.symmetries} mirror image(s) of each; the "
          f"job's own last val/loss {logged}")
    for name, row in rows.items():
        cnn_r2 = ", ".join(f"{v:.3f}" for v in row["cnn_r2"])
        ridge_r2 = ", ".join(f"{v:.3f}" for v in row["ridge_r2"])
        print(f"  {name}: CNN val MSE {row['cnn_val_mse']:.4f} (R² {cnn_r2}) | ridge "
              f"{row['ridge_val_mse']:.4f} (R² {ridge_r2}) | CNN / ridge "
              f"{row['cnn_val_mse'] / row['ridge_val_mse']:.3f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
