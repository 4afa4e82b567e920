"""The `campaign` config, checked once: every bad value is one SimConfigError naming its key."""

from __future__ import annotations

from collections.abc import Mapping

from src.errors import SimConfigError
from src.sim.identity import validate_ranges
from src.sim.nbody import SimSpec
from src.util.checks import integer

# no fork: a forked child copies torch's thread pools and their locks in whatever state the
# parent left them, which can hang it
START_METHODS = ("spawn", "forkserver")
MPI_MODES = ("auto", "true", "false")


def campaign_settings(camp: Mapping, spec: SimSpec) -> dict:
    """The campaign's settings as a plain dict (picklable: it travels to workers and ranks)."""
    def get(key):
        if key not in camp:
            raise SimConfigError(f"campaign.{key} is missing from the config")
        return camp[key]

    n_sims = integer("campaign.n_sims", get("n_sims"), 1, SimConfigError)
    workers = integer("campaign.workers", get("workers"), 1, SimConfigError)
    threads = get("threads_per_worker")
    if threads is not None:  # null: torch's default
        threads = integer("campaign.threads_per_worker", threads, 1, SimConfigError)
    method = get("start_method")
    if method not in START_METHODS:
        raise SimConfigError(f"campaign.start_method={method!r} must be one of {START_METHODS}")
    mode = str(get("mpi")).lower()
    if mode not in MPI_MODES:
        raise SimConfigError(f"campaign.mpi={get('mpi')!r} must be auto, true or false")
    margin = float(get("disk_margin"))
    if margin < 1:
        raise SimConfigError(f"campaign.disk_margin={margin} must be >= 1")
    ranges = validate_ranges(get("param_ranges"))
    omega_b = spec.fixed.get("omega_b")
    if omega_b is not None and ranges["Omega_M"][0] <= float(omega_b):
        raise SimConfigError(
            f"campaign.param_ranges.Omega_M={list(ranges['Omega_M'])}: low must be > "
            f"sim.cosmology.omega_b={omega_b} (baryons are part of the matter)"
        )
    return {
        "n_sims": n_sims, "seed": int(get("seed")), "ranges": ranges,
        "workers": workers, "threads": threads, "start_method": method, "mpi": mode,
        "progress": bool(get("progress")), "verify_existing": bool(get("verify_existing")),
        "disk_margin": margin,
    }


__all__ = ["campaign_settings", "START_METHODS", "MPI_MODES"]
