"""Does the CNN learn? The small (and optionally medium) model against the baselines measured
in the same run, on the same split, on a dataset this script generates.

    python -m benchmarks.convergence                               # sim=tiny, 384 simulations
    python -m benchmarks.convergence --sims 64 --models small,medium --max-time 00:00:10:00
    python -m benchmarks.convergence --sim-override sim.n_sub=1    # whole 64^3 boxes as samples

Steps: `generate.py sim=<--sim> campaign.n_sims=<--sims>` into <--out>/data (resumable),
then per model one `train.py experiment=convergence` job with early stopping off, so every
model trains for the same wall-time budget (--max-time) or --epochs, whichever ends first.
Printed per model, from its metrics.json: val MSE against the summary-statistics and the
training-mean baselines (their ratio is the benchmark's figure), per parameter the R² of the
CNN and of each baseline (1 - MSE / MSE of the training mean, on the validation set), the
time, epochs and FLOPs to the quality target; then, for two models, their val loss at equal
epochs and at equal wall time (the last validation both reached).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from src.report.quality import last_val_x, val_loss_at

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ("Omega_M", "sigma_8", "n_s")


def _run(args: list[str], timeout_s: float) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True, timeout=timeout_s)


def generate(out: Path, args) -> Path:
    if args.data is not None:  # an existing set, used as it is
        return args.data.expanduser().absolute()
    data = out / "data"
    _run(["generate.py", f"sim={args.sim}", f"campaign.n_sims={args.sims}",
          f"paths.data_dir={data}", *args.sim_override], args.timeout)
    return data


def train(out: Path, data: Path, model: str, args) -> dict:
    job = out / model
    _run(["train.py", "experiment=convergence", f"model={model}", f"data.dir={data}",
          "quality.early_stop=false", f"trainer.max_time={args.max_time}",
          f"trainer.max_epochs={args.epochs}", "logger=csv", f"hydra.run.dir={job}",
          *args.override], args.timeout)
    return json.loads((job / "metrics.json").read_text())


def r2(m: dict, mse_key: str, p: str) -> float | None:
    """R² on the validation set, against the training mean's error there."""
    mse, ref = m.get(mse_key.format(p=p)), m.get(f"baseline_mean_mse_{p}")
    return None if mse is None or not ref else 1.0 - mse / ref


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def report(model: str, record: dict) -> dict:
    m = record["metrics"]
    val, stats, mean = m.get("val/loss"), m.get("baseline_stats_mse"), m.get("baseline_mean_mse")
    row = {"model": model, "val_mse": val, "stats_mse": stats, "mean_mse": mean,
           "cnn_over_stats": val / stats if val and stats else None,
           "epochs": record["config"].get("epochs_done"), "fit_s": record["timing"]["fit_s"]}
    for p in PARAMS:
        row[f"r2_cnn_{p}"] = r2(m, "val/mse_{p}", p)
        row[f"r2_stats_{p}"] = r2(m, "baseline_stats_mse_{p}", p)
    for key in ("target_reached", "time_to_target_s", "epochs_to_target", "flops_to_target"):
        row[key] = m.get(key)
    print(f"\n{model}: val MSE {_fmt(val)} | summary statistics {_fmt(stats)} | training mean "
          f"{_fmt(mean)} | CNN / summary statistics {_fmt(row['cnn_over_stats'])} "
          f"({record['config'].get('n_train_samples')} train / "
          f"{record['config'].get('n_val_samples')} val samples, {row['epochs']} epochs, "
          f"{row['fit_s']:.0f} s)")
    for p in PARAMS:
        print(f"  R² {p:8s} CNN {_fmt(row[f'r2_cnn_{p}'])}  summary statistics "
              f"{_fmt(row[f'r2_stats_{p}'])}")
    print(f"  target reached: {row['target_reached']}; time {_fmt(row['time_to_target_s'])} s, "
          f"epochs {_fmt(row['epochs_to_target'])}, FLOPs {_fmt(row['flops_to_target'])}")
    return row


def compare(a: tuple[str, dict], b: tuple[str, dict]) -> dict:
    """Val loss of two models at the last validation both reached, by step and by time."""
    out = {}
    for axis, name in ((0, "step"), (2, "seconds")):
        ends = [last_val_x(rec, axis) for _, rec in (a, b)]
        if None not in ends:
            limit = min(ends)
            out[name] = {"at": limit, a[0]: val_loss_at(a[1], axis, limit),
                         b[0]: val_loss_at(b[1], axis, limit)}
            print(f"at equal {name} ({limit:.4g}): {a[0]} val MSE {_fmt(out[name][a[0]])}, "
                  f"{b[0]} {_fmt(out[name][b[0]])}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("outputs/bench/convergence"))
    ap.add_argument("--sim", default="tiny")
    ap.add_argument("--sims", type=int, default=384)
    ap.add_argument("--sim-override", action="append", default=[], help="generate.py override")
    ap.add_argument("--data", type=Path, default=None,
                    help="an existing data set instead of generating one")
    ap.add_argument("--models", default="small", help="comma-separated: small,medium")
    ap.add_argument("--max-time", default="00:00:30:00", help="per model, DD:HH:MM:SS")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per command")
    ap.add_argument("--override", action="append", default=[], help="extra train.py override")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = ap.parse_args()
    data = generate(args.out, args)
    records = [(m, train(args.out, data, m, args)) for m in args.models.split(",")]
    rows = [report(m, rec) for m, rec in records]
    summary = {"rows": rows}
    if len(records) >= 2:
        summary["equal"] = compare(records[0], records[1])
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
