"""Does a GAN help? Its physics, its speed against the simulation's, and the small model
trained on simulations only vs simulations + GAN cubes (the same simulations), in one run.

    python -m benchmarks.gan_bench                                 # sim=tiny, 64 simulations
    python -m benchmarks.gan_bench --sims 8 --gan-files 8 --gan-epochs 1 --epochs 1 \\
        --sim-override sim.n_particles=16 --sim-override sim.grid=32 \\
        --sim-override sim.mesh_factor=1 --sim-override sim.box_size=64 \\
        --sim-override sim.n_steps=2 --gan-override gan.n_validation=16 \\
        --gan-override gan.n_select=16 --out /tmp/gan_toy              # toy size: minutes

Steps, each a command printed before it runs (resumable but for the timing simulations):
1. `generate.py` of --sims simulations into <--out>/sims (or --data DIR, used as it is);
2. --time-sims fresh simulations (a new campaign seed, the directory emptied first) to time
   the simulation; cubes/s = sub-volumes / the workers' simulate_s;
3. `generate.py method=gan` on the simulations (trains, validates, --gan-files files; written
   even when the validation fails, so the comparison can be made: the table says whether it
   passed), timed the same way from the files' generate_s. When the GAN selected its
   checkpoint by its checks (gan.select_every > 0), the selection's scores are printed and the
   last weights are validated too, on the same validation cubes and noise, so what the
   selection changed is seen in the same run;
4. `train.py experiment=convergence quality.early_stop=false` on the simulations alone and with
   `data.extra_train_dirs=[<gan dir>]`; printed: val MSE against the summary-statistics and
   training-mean baselines of the simulations-only run (the same validation simulations).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from src.gan.campaign import check_physics
from src.gan.sample import load_generator, resolve_device
from src.gan.selection import RECORD
from src.gan.train_gan import LAST
from src.sim.nbody import SimSpec

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], timeout_s: float) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True, timeout=timeout_s)


def _manifest(data: Path) -> dict:
    return json.loads((data / "manifest.json").read_text())


def cubes_per_s(data: Path, timing: str) -> tuple[float, int, float]:
    """(cubes/s, cubes, seconds) from the per-file worker timings of a campaign's files."""
    files = _manifest(data)["files"]
    cubes = sum(int(e["n_sub"]) for e in files)
    seconds = sum(float(e["timings"][timing]) for e in files)
    return cubes / seconds, cubes, seconds


def train(out: Path, name: str, data: Path, extra: list[str], args) -> dict:
    job = out / name
    _run(["train.py", "experiment=convergence", "model=small", f"data.dir={data}",
          "quality.early_stop=false", f"trainer.max_time={args.max_time}",
          f"trainer.max_epochs={args.epochs}", "logger=csv", f"hydra.run.dir={job}",
          *extra, *args.override], args.timeout)
    return json.loads((job / "metrics.json").read_text())


def validate_last(gan_out: Path, sims: Path, run_config: Path) -> dict | None:
    """Print the checkpoint selection's record, then validate last.ckpt as generate.py
    validated the selected state (its own config `run_config`, as Hydra saved it: the same
    cubes, noise and thresholds) into gan_out/last_weights; None when the GAN sampled from
    its last weights anyway."""
    record = gan_out / RECORD
    if not record.is_file():
        return None
    rec = json.loads(record.read_text())
    print(f"checkpoint selection on {rec['n_select']} training sub-volumes apart from the "
          f"validation's: step {rec['selected_step']} (score {rec['selected_score']:.3f}; <= 1: "
          "all four checks pass)")
    for h in rec["history"]:
        slope = h.get("sigma8_slope")
        print(f"  step {h['step']}: score {h['score']:.3f} "
              + " ".join(f"{k} {v:.3f}" for k, v in h["values"].items())
              + (f" | sigma_8 slope {slope['generated']} (simulated {slope['simulated']})"
                 if slope else ""))
    cfg = OmegaConf.to_container(OmegaConf.load(run_config), resolve=True)
    gcfg, thresholds = {**cfg["gan"], "allow_invalid": True}, cfg["gan_validation"]
    manifest = _manifest(sims)
    gen = load_generator(gan_out / LAST, device=resolve_device(str(gcfg["device"])))
    result = check_physics(gen, sims, manifest, SimSpec.from_config(dict(manifest["sim"])), gcfg,
                           thresholds, gan_out / "last_weights")["result"]
    print(f"the last weights (step {rec['history'][-1]['step']}) on the validation cubes: "
          + ("passed" if result["passed"] else "FAILED") + "; "
          + ", ".join(f"{c['name']} {c['value']:.3f}" for c in result["checks"]))
    return result


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("outputs/bench/gan"))
    ap.add_argument("--data", type=Path, default=None, help="an existing simulation set")
    ap.add_argument("--sim", default="tiny")
    ap.add_argument("--sims", type=int, default=64)
    ap.add_argument("--sim-override", action="append", default=[], help="generate.py override")
    ap.add_argument("--time-sims", type=int, default=2, help="fresh simulations to time")
    ap.add_argument("--gan-files", type=int, default=64, help="GAN files (n_sub cubes each)")
    ap.add_argument("--gan-epochs", type=int, default=20)
    ap.add_argument("--gan-override", action="append", default=[], help="extra gan.* override")
    ap.add_argument("--epochs", type=int, default=30, help="train.py epochs per model")
    ap.add_argument("--max-time", default="00:00:30:00", help="train.py budget, DD:HH:MM:SS")
    ap.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per command")
    ap.add_argument("--override", action="append", default=[], help="extra train.py override")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()
    out = args.out.absolute()
    sim_args = [f"sim={args.sim}", *args.sim_override]
    sims = args.data.absolute() if args.data else out / "sims"
    if args.data is None:
        _run(["generate.py", *sim_args, f"campaign.n_sims={args.sims}",
              f"paths.data_dir={sims}"], args.timeout)
    # the simulation's speed, from simulations run now (not from an old manifest)
    timing_dir = out / "sim_timing"
    shutil.rmtree(timing_dir, ignore_errors=True)
    sim_cfg = _manifest(sims)["sim"]
    sim_again = [f"sim={args.sim}", *args.sim_override] if args.data is None else \
        [f"sim.{k}={json.dumps(v).replace(' ', '')}" for k, v in sim_cfg.items()
         if not isinstance(v, dict)]
    _run(["generate.py", *sim_again, f"campaign.n_sims={args.time_sims}", "campaign.seed=12345",
          "campaign.workers=1", f"paths.data_dir={timing_dir}"], args.timeout)
    sim_rate, sim_cubes, sim_s = cubes_per_s(timing_dir, "simulate_s")
    gan_dir, gan_run_dir = out / "gan", out / "gan_run"
    _run(["generate.py", "method=gan", f"gan.train_data={sims}", f"paths.data_dir={gan_dir}",
          f"hydra.run.dir={gan_run_dir}",
          "campaign.seed=1", f"campaign.n_sims={args.gan_files}", "campaign.workers=1",
          f"gan.epochs={args.gan_epochs}", "gan.allow_invalid=true", *args.gan_override],
         args.timeout)
    gan_rate, gan_cubes, gan_s = cubes_per_s(gan_dir, "generate_s")
    validation = json.loads((gan_dir / "gan" / "gan_validation.json").read_text())
    print("\nphysics validation (" + ("passed" if validation["passed"] else "FAILED") + "):")
    print((gan_dir / "gan" / "gan_validation.md").read_text())
    last = validate_last(gan_dir / "gan", sims, gan_run_dir / ".hydra" / "config.yaml")
    print(f"speed: simulation {sim_rate:.4g} cubes/s ({sim_cubes} cubes in {sim_s:.3g} s), "
          f"GAN {gan_rate:.4g} cubes/s ({gan_cubes} cubes in {gan_s:.3g} s): "
          f"x{gan_rate / sim_rate:.4g} (one worker process each, this machine)")
    base = train(out, "sims_only", sims, [], args)
    mixed = train(out, "sims_plus_gan", sims, [f"data.extra_train_dirs=[{gan_dir}]"], args)
    ref = base["metrics"]
    rows = []
    for name, rec in (("simulations only", base), ("simulations + GAN", mixed)):
        m, c = rec["metrics"], rec["config"]
        val = m.get("val/loss")
        row = {"run": name, "val_mse": val, "data_sources": c.get("data_sources"),
               "epochs": c.get("epochs_done"), "fit_s": rec["timing"]["fit_s"],
               "over_stats": val / ref["baseline_stats_mse"] if val and ref.get(
                   "baseline_stats_mse") else None,
               "over_mean": val / ref["baseline_mean_mse"] if val and ref.get(
                   "baseline_mean_mse") else None}
        rows.append(row)
        print(f"{name}: val MSE {_fmt(val)} | / summary statistics {_fmt(row['over_stats'])} "
              f"| / training mean {_fmt(row['over_mean'])} | train samples "
              f"{row['data_sources']} | {row['epochs']} epochs, {row['fit_s']:.0f} s")
    print(f"baselines (simulations-only run): summary statistics "
          f"{_fmt(ref.get('baseline_stats_mse'))}, training mean "
          f"{_fmt(ref.get('baseline_mean_mse'))}")
    if args.json:
        args.json.write_text(json.dumps({
            "validation_passed": validation["passed"], "checks": validation["checks"],
            "sim_cubes_per_s": sim_rate, "gan_cubes_per_s": gan_rate,
            "speed_ratio": gan_rate / sim_rate, "rows": rows,
            "last_weights_checks": last["checks"] if last else None}, indent=2))


if __name__ == "__main__":
    main()
