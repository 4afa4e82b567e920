"""Particle-mesh benchmark: our torch PM vs JaxPM (CPU) on the same problem.

    python -m benchmarks.sim_bench                    # 64^3 and 128^3 particles, mesh 2x, 10 steps
    python -m benchmarks.sim_bench --sizes 64 --threads 2

For each size, in separate processes (so peak memory is per code): our run (2LPT + FastPM
KDK) and, when `jaxpm` imports, JaxPM's `lpt` + `pm_forces` stepped with the same KDK
factors from the same initial field. Reported: particle-steps/s, wall time of the evolution
(best of --repeat runs; JaxPM: after jit compilation), peak RSS, the time ratio ours/JaxPM and
max |P_ours(k)/P_jaxpm(k) - 1| for k below half the particle grid's Nyquist frequency.
The physics settings (cosmology, numerics) come from conf/sim/<--sim>.yaml.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"Omega_M": 0.3, "sigma_8": 0.8, "n_s": 0.96}


def _pin(threads: int) -> None:
    """Both codes get the same cores: affinity plus each library's own thread knob."""
    cores = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, set(cores))


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _timed_runs(repeat: int, run):
    """(the last result, the wall time of each) of `repeat` calls of `run`; callers keep the
    best: the machine is shared, the quietest run is the code's own speed."""
    out, walls = None, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = run()
        walls.append(time.perf_counter() - t0)
    return out, walls


def _sim_config(args) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("generate", overrides=[f"sim={args.sim}"])
    sim = OmegaConf.to_container(cfg.sim, resolve=True)
    sim.update(n_particles=args.n, box_size=args.box_per_particle * args.n,
               mesh_factor=args.mesh_factor, n_steps=args.steps, z_init=args.z_init,
               redshifts=[0.0], grid=args.n, n_sub=1, device="cpu", dtype="float32")
    return sim


def worker_ours(args) -> dict:
    _pin(args.threads)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from src.sim.mesh import cic_paint
    from src.sim.nbody import SimSpec, Simulation, particle_steps

    spec = SimSpec.from_config(_sim_config(args))
    sim = Simulation(spec, PARAMS, seed=args.seed)
    # the initial z=0 linear field, shared with JaxPM so both evolve the same universe
    delta = torch.fft.irfftn(sim.initial_field_k(), s=(spec.n_particles,) * 3)
    np.save(args.work / "ic.npy", delta.numpy())
    rss0 = _peak_rss_bytes()
    (pos, _), walls = _timed_runs(args.repeat, sim.evolve)
    wall = min(walls)
    rho = cic_paint(pos, spec.n_mesh)
    np.save(args.work / "rho_ours.npy", rho.numpy())
    return {"code": "ours", "wall_s": wall, "walls_s": walls, "steps": sim.steps_taken,
            "particle_steps_per_s": particle_steps(spec) / wall,
            "peak_rss_bytes": _peak_rss_bytes(), "rss_before_run_bytes": rss0,
            "threads": args.threads, "torch": torch.__version__}


def _xla_cpu_threads(threads: int) -> None:
    """XLA reads its CPU threading flags once, when jax is imported: call this first."""
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"
                               + f" intra_op_parallelism_threads={threads}")


def _kdk_factors(growth, a):
    """The same FastPM KDK factors as src/sim/nbody.py (host-side growth tables), per step."""
    import numpy as np

    ah = 0.5 * (a[:-1] + a[1:])
    k1 = (growth.gp(ah) - growth.gp(a[:-1])) / growth.d1(a[:-1])
    dr = (growth.d1(a[1:]) - growth.d1(a[:-1])) / growth.gp(ah)
    k2 = (growth.gp(a[1:]) - growth.gp(ah)) / growth.d1(a[1:])
    return np.stack([k1, dr, k2], axis=1)


def _jaxpm_force(nm: int, mass: float):
    import jax.numpy as jnp
    from jaxpm.distributed import fft3d, ifft3d
    from jaxpm.kernels import fftk, gradient_kernel, invlaplace_kernel
    from jaxpm.painting import _cic_paint_impl, _cic_read_impl

    def force(pos):
        # jaxpm.pm.pm_forces step by step: its public cic_paint/cic_read assume as many
        # particles as mesh cells, so a 2x force mesh needs the single-device kernels
        delta_k = fft3d(_cic_paint_impl(jnp.zeros((nm, nm, nm)), pos) * mass)
        kvec = fftk(delta_k)
        pot_k = delta_k * invlaplace_kernel(kvec)
        return jnp.stack([_cic_read_impl(ifft3d(-gradient_kernel(kvec, i) * pot_k).real, pos)
                          for i in range(3)], axis=-1)

    return force


def _jaxpm_evolve(cosmo, spec, a_init: float, factors):
    """JaxPM's 2LPT start, then our KDK steps with JaxPM's forces: ic -> final positions."""
    import jax
    import jax.numpy as jnp
    from jaxpm.pm import lpt

    n, nm = spec.n_particles, spec.n_mesh
    scale = nm / n
    force = _jaxpm_force(nm, scale**3)  # JaxPM paints unit masses: mean density 1 on the mesh

    @jax.jit
    def evolve(ic):
        dx, p, _ = lpt(cosmo, ic, a=a_init, order=spec.lpt_order)
        grid = jnp.stack(jnp.meshgrid(*[jnp.arange(n, dtype=jnp.float32)] * 3, indexing="ij"), -1)
        pos = ((grid + dx) * scale + 0.5).reshape(-1, 3) % nm  # same half-cell offset as ours
        mom = (p * scale).reshape(-1, 3)

        def step(state, f):
            pos, mom, frc = state
            mom = mom + frc * f[0]
            pos = (pos + mom * f[1]) % nm
            frc = force(pos)
            mom = mom + frc * f[2]
            return (pos, mom, frc), None

        (pos, mom, _), _ = jax.lax.scan(step, (pos, mom, force(pos)), factors)
        return pos

    return evolve


def worker_jaxpm(args) -> dict:
    _pin(args.threads)
    _xla_cpu_threads(args.threads)
    import jax
    import jax.numpy as jnp
    import jax_cosmo as jc
    import numpy as np
    from jaxpm.painting import _cic_paint_impl

    from src.sim.cosmology import Growth, cosmology_from
    from src.sim.nbody import SimSpec, particle_steps

    spec = SimSpec.from_config(_sim_config(args))
    ours = cosmology_from(PARAMS, spec.fixed)
    cosmo = jc.Cosmology(Omega_c=ours.omega_m - ours.omega_b, Omega_b=ours.omega_b, h=ours.h,
                         n_s=ours.n_s, sigma8=ours.sigma_8, Omega_k=0.0, w0=-1.0, wa=0.0)
    a = spec.time_grid()
    factors = jnp.asarray(_kdk_factors(Growth(ours, spec.growth_numerics), a), dtype=jnp.float32)
    evolve = _jaxpm_evolve(cosmo, spec, float(a[0]), factors)
    ic = jnp.asarray(np.load(args.work / "ic.npy"))
    t0 = time.perf_counter()
    jax.block_until_ready(evolve(ic))
    compile_and_run = time.perf_counter() - t0
    pos, walls = _timed_runs(args.repeat, lambda: jax.block_until_ready(evolve(ic)))
    wall = min(walls)
    nm = spec.n_mesh
    rho = _cic_paint_impl(jnp.zeros((nm, nm, nm)), pos)
    np.save(args.work / "rho_jaxpm.npy", np.asarray(rho))
    return {"code": "jaxpm", "wall_s": wall, "walls_s": walls, "first_call_s": compile_and_run,
            "steps": len(a) - 1, "particle_steps_per_s": particle_steps(spec) / wall,
            "peak_rss_bytes": _peak_rss_bytes(), "threads": args.threads,
            "jax": jax.__version__}


def compare_power(work: Path, n: int, box: float) -> dict:
    import numpy as np
    import torch

    from src.sim.mesh import power_spectrum

    out = {}
    for code in ("ours", "jaxpm"):
        rho = torch.from_numpy(np.load(work / f"rho_{code}.npy")).double()
        out[code] = power_spectrum(rho / rho.mean() - 1, box)
    k, p_ours, _ = out["ours"]
    _, p_jax, _ = out["jaxpm"]
    k_half_nyq = 0.5 * math.pi * n / box
    low = k < k_half_nyq
    ratio = (p_ours[low] / p_jax[low]).numpy()
    return {"pk_max_abs_dev": float(np.abs(ratio - 1).max()),
            "pk_mean_ratio": float(ratio.mean()), "k_max": float(k[low].max()),
            "n_bins": int(low.sum())}


def _spawn(mode: str, args, work: Path) -> dict | None:
    cmd = [sys.executable, "-m", __spec__.name, "--worker", mode, "--n", str(args.n), "--work", str(work),
           *_common(args)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"[{mode} n={args.n}] failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _common(args) -> list[str]:
    return ["--threads", str(args.threads), "--steps", str(args.steps),
            "--mesh-factor", str(args.mesh_factor), "--box-per-particle", str(args.box_per_particle),
            "--z-init", str(args.z_init), "--sim", args.sim, "--seed", str(args.seed),
            "--repeat", str(args.repeat)]


def _jaxpm_importable() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import jaxpm.pm, jax_cosmo"],
                           capture_output=True, text=True)
    return probe.returncode == 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--mesh-factor", type=float, default=2.0)
    ap.add_argument("--box-per-particle", type=float, default=2.0, help="Mpc/h per particle")
    ap.add_argument("--z-init", type=float, default=9.0)
    ap.add_argument("--sim", default="tiny", help="conf/sim preset for physics and numerics")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per code (best is kept)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--no-jaxpm", action="store_true")
    ap.add_argument("--worker", choices=["ours", "jaxpm"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        fn = worker_ours if args.worker == "ours" else worker_jaxpm
        print(json.dumps(fn(args)))
        return 0

    use_jax = not args.no_jaxpm and _jaxpm_importable()
    rows = []
    for n in args.sizes:
        args.n = n
        with tempfile.TemporaryDirectory(prefix="sim_bench_") as tmp:
            work = Path(tmp)
            ours = _spawn("ours", args, work)
            if ours is None:
                return 1
            row = {"n_particles": n, "n_mesh": int(n * args.mesh_factor), "steps": ours["steps"],
                   "threads": args.threads, "ours": ours}
            if use_jax:
                jaxpm = _spawn("jaxpm", args, work)
                if jaxpm is not None:
                    row["jaxpm"] = jaxpm
                    row["time_ratio_ours_over_jaxpm"] = ours["wall_s"] / jaxpm["wall_s"]
                    row.update(compare_power(work, n, args.box_per_particle * n))
            rows.append(row)
        _print_row(row)
    if not use_jax:
        print("jaxpm not importable: JaxPM columns skipped (pip install jaxpm 'setuptools<81')")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def _print_row(row: dict) -> None:
    gib = 2**30
    o = row["ours"]
    print(f"N={row['n_particles']}^3 mesh={row['n_mesh']}^3 steps={row['steps']} "
          f"threads={row['threads']}")
    print(f"  ours : {o['wall_s']:8.2f} s  {o['particle_steps_per_s']:.3e} particle-steps/s  "
          f"peak RSS {o['peak_rss_bytes'] / gib:.2f} GiB")
    if "jaxpm" in row:
        j = row["jaxpm"]
        print(f"  jaxpm: {j['wall_s']:8.2f} s  {j['particle_steps_per_s']:.3e} particle-steps/s  "
              f"peak RSS {j['peak_rss_bytes'] / gib:.2f} GiB  (first call incl. jit "
              f"{j['first_call_s']:.2f} s)")
        print(f"  time ours/jaxpm = {row['time_ratio_ours_over_jaxpm']:.3f}   "
              f"P(k) ours/jaxpm for k <= {row['k_max']:.3f} h/Mpc ({row['n_bins']} bins): "
              f"max |ratio-1| = {row['pk_max_abs_dev']:.4f}, mean ratio {row['pk_mean_ratio']:.4f}")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
