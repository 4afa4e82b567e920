"""A simulation campaign: ids -> (parameters, seed) -> HDF5 files + manifest.

The pieces, each in its module: what the files are a function of (src.sim.identity), the
checked `campaign` config (src.sim.settings), the data dir with its lock and the files already
there (src.sim.datadir), one simulation and the processes that run them: serial, local pool or
MPI parameter server (src.sim.workers). Here: their order, and the manifest, rebuilt at the
end from the files of ids 0..n_sims-1. Files are written atomically by src.sim.store.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from src.errors import SimError
from src.sim.datadir import disk_full_means, missing_ids, prepare_data_dir, warn_extra_files
from src.sim.identity import GENERATOR, campaign_digest, code_version
from src.sim.nbody import SimSpec, describe
from src.sim.settings import campaign_settings
from src.sim.store import MANIFEST_NAME, PARAM_NAMES, rebuild_manifest
from src.sim.workers import MakeOne, Ranks, simulate_one, workers_for
from src.util.progress import Progress


def _job(sim_cfg: Mapping, settings: Mapping, data_dir: Path) -> dict:
    """What a worker needs to write any file of the campaign (picklable, for processes)."""
    return {"sim": dict(sim_cfg), "seed": settings["seed"], "ranges": settings["ranges"],
            "campaign_sha256": campaign_digest(sim_cfg, settings["ranges"], settings["seed"]),
            "data_dir": str(data_dir), "code_version": code_version()}


def _plan(held: contextlib.ExitStack, job: Mapping, spec: SimSpec, settings: Mapping,
          data_dir: Path):
    """Coordinator set-up: lock the dir (held until `held` closes), find the ids to run."""
    held.enter_context(prepare_data_dir(data_dir))  # closing the lock file releases the lock
    return missing_ids(job, spec, settings, data_dir)


@dataclass(frozen=True)
class Method:
    """How a campaign's files are made; the default is N-body simulation. Another method (the
    GAN, src/gan/campaign.py) brings its own per-id writer and what its job and manifest add;
    ids, parameters, seeds, workers, resume and the manifest stay the campaign's."""

    make_one: MakeOne = simulate_one  # module-level, so pool workers can unpickle it
    job: Mapping = field(default_factory=dict)     # merged into every worker's job
    header: Mapping = field(default_factory=dict)  # merged into the manifest's header
    label: str = "simulating"
    unit: str = "sim"


SIMULATION = Method()


def run_campaign(sim_cfg: Mapping, camp_cfg: Mapping, data_dir,
                 method: Method = SIMULATION) -> dict:
    """Run (or complete) a campaign; returns a summary dict (the same on every MPI rank but for
    `rank`, this process's)."""
    t_start = time.perf_counter()
    spec = SimSpec.from_config(sim_cfg)
    settings = campaign_settings(camp_cfg, spec)
    data_dir = Path(data_dir)
    job = {**_job(sim_cfg, settings, data_dir), **method.job}
    ranks = Ranks.connect(settings["mpi"])
    hosts = ranks.hosts()
    with contextlib.ExitStack() as held:
        # set-up and summary on the coordinator only; each verdict is shared with every rank
        # so that all return or fail alike
        todo, skipped = ranks.agree(lambda: _plan(held, job, spec, settings, data_dir))
        workers = workers_for(ranks, settings, len(todo))
        with Progress(len(todo), f"{method.label} ({workers.mode})", unit=method.unit,
                      enabled=settings["progress"] and ranks.coordinator) as progress:
            infos, errors = workers.map(job, todo, progress, method.make_one)

        def summary() -> dict:
            if errors:
                raise SimError("; ".join(errors))
            ran = {"mode": workers.mode, "ranks": ranks.size, "hosts": hosts}
            manifest = _write_manifest(data_dir, {**_header(spec, {**job, "ran": ran}),
                                                  **method.header}, settings["n_sims"])
            return {
                "data_dir": str(data_dir), "manifest": str(manifest),
                "n_files": settings["n_sims"],
                "n_extra": warn_extra_files(data_dir, settings["n_sims"]),
                "n_simulated": len(infos), "n_skipped": skipped, "mode": workers.mode,
                "ranks": ranks.size, "wall_s": time.perf_counter() - t_start,
                # time spent making the files (in the workers): simulate_s or generate_s
                "sim_s": sum(i["timings"].get("simulate_s", i["timings"].get("generate_s", 0.0))
                             for i in infos),
            }

        result = ranks.agree(summary)
    return {**result, "rank": ranks.rank}


# ---------------------------------------------------------------- manifest
def _header(spec: SimSpec, job: Mapping) -> dict:
    return {
        "param_names": list(PARAM_NAMES),
        "param_ranges": {k: list(v) for k, v in job["ranges"].items()},
        "sample_shape": spec.sample_shape,
        "n_sub": spec.n_sub,
        "redshifts": list(spec.redshifts),
        "generator": f"{GENERATOR}; {describe(spec)}",
        "code_version": job["code_version"],
        "campaign_seed": job["seed"],
        "campaign_sha256": job["campaign_sha256"],
        "sim": job["sim"],
        # how the latest run of the campaign ran: serial, pool or mpi, its ranks and hosts
        "campaign_run": job["ran"],
    }


def _write_manifest(data_dir: Path, header: Mapping, n_sims: int) -> Path:
    """The manifest lists ids 0..n_sims-1 only (the files of this campaign)."""
    with disk_full_means(f"{data_dir / MANIFEST_NAME}: disk full while writing the manifest; "
                         f"free space in {data_dir} and rerun (the simulation files are kept)"):
        return rebuild_manifest(data_dir, header, ids=range(n_sims))


__all__ = ["Method", "SIMULATION", "run_campaign"]
