"""What a campaign's files are a function of: parameters and seeds per id, and the campaign hash.

Every simulation id gets its parameters (uniform in the configured ranges) and its seed from
numpy's SeedSequence([campaign seed, id]), so any rerun, on any rank or worker, reproduces them
bit for bit. `campaign_digest` names the settings that decide the files' contents; files
written under another digest belong to another campaign.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping

import numpy as np

from src.errors import SimConfigError
from src.sim.store import PARAM_NAMES

GENERATOR = "saih-cosmo particle-mesh (EH98 P(k), 2LPT, FastPM KDK, CIC)"
# sim keys that do not change a simulation's output, so not part of the campaign's identity
_NOT_CAMPAIGN_KEYS = ("device", "name")


def code_version() -> str:
    try:
        from importlib.metadata import version

        return f"saih-cosmo {version('saih-cosmo')}"
    except Exception:  # not installed as a distribution (a bare checkout)
        return "saih-cosmo unknown"


def validate_ranges(ranges: Mapping) -> dict:
    """{name: (low, high)} for exactly PARAM_NAMES, each with low < high."""
    if ranges is None:
        raise SimConfigError("campaign.param_ranges is missing")
    names = set(ranges)
    if names != set(PARAM_NAMES):
        raise SimConfigError(
            f"campaign.param_ranges must name exactly {list(PARAM_NAMES)}, got {sorted(names)}"
        )
    out = {}
    for name in PARAM_NAMES:
        value = ranges[name]
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError) as err:
            raise SimConfigError(
                f"campaign.param_ranges.{name}={value!r} must be [low, high]"
            ) from err
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise SimConfigError(f"campaign.param_ranges.{name}=[{lo}, {hi}]: low must be < high")
        out[name] = (lo, hi)
    if not (0 < out["Omega_M"][0] and out["Omega_M"][1] <= 1):
        raise SimConfigError(f"campaign.param_ranges.Omega_M={list(out['Omega_M'])} must lie in (0, 1]")
    if out["sigma_8"][0] <= 0:
        raise SimConfigError(f"campaign.param_ranges.sigma_8={list(out['sigma_8'])} must be > 0")
    return out


def sample_parameters(campaign_seed: int, sim_id: int, ranges: Mapping) -> tuple[dict, int]:
    """(params, seed) of simulation `sim_id`: a pure function of (campaign seed, id)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(campaign_seed), int(sim_id)]))
    params = {name: float(rng.uniform(*ranges[name])) for name in PARAM_NAMES}
    seed = int(rng.integers(0, 2**63 - 1))
    return params, seed


def campaign_digest(sim_cfg: Mapping, ranges: Mapping, campaign_seed: int) -> str:
    """sha256 of what defines a campaign's files: the sim config (less device and preset
    name), the parameter ranges and the campaign seed. Numbers compare by value (64 == 64.0)."""
    def canon(v):
        if isinstance(v, Mapping):
            return {str(k): canon(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [canon(x) for x in v]
        if isinstance(v, int | float) and not isinstance(v, bool) and float(v) == v:
            return float(v)
        return v

    ident = {"sim": {k: v for k, v in sim_cfg.items() if k not in _NOT_CAMPAIGN_KEYS},
             "param_ranges": ranges, "seed": int(campaign_seed)}
    return hashlib.sha256(json.dumps(canon(ident), sort_keys=True).encode()).hexdigest()


__all__ = ["GENERATOR", "code_version", "validate_ranges", "sample_parameters",
           "campaign_digest"]
