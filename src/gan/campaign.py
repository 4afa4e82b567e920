"""generate.py method=gan: train or load the GAN, validate its physics, then a campaign of
generated files (docs/gan.md).

The files follow the simulations' contract and campaign: ids 0..n_sims-1, each id's parameters
and seed from `sample_parameters(campaign.seed, id)`, the same serial / pool workers, the same
skip-what-is-there resume and manifest (src.sim.campaign). What differs is the per-id writer
(`generate_one`) and what the files say about their origin: `method: "gan"`, the generator's
description and its checkpoint's sha256, in every file's attributes and manifest entry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from src.dist import launched_by_mpi
from src.errors import UserError
from src.gan.nets import GanConfigError
from src.gan.physics import check_thresholds, validate
from src.gan.physics_report import write_validation
from src.gan.reference import VALIDATION_STREAM, set_size, twin_seeds, validation_set
from src.gan.sample import (
    GanCheckpointError,
    LoadedGenerator,
    digest,
    load_generator,
    resolve_device,
)
from src.gan.train_gan import check_train_data, positive_int, train_gan
from src.sim.campaign import Method, run_campaign
from src.sim.datadir import disk_full_means
from src.sim.identity import campaign_digest, sample_parameters, validate_ranges
from src.sim.mesh import cube_root
from src.sim.nbody import SimSpec
from src.sim.store import PARAM_NAMES, sim_filename, write_simulation

log = logging.getLogger(__name__)
METHOD = "gan"


class GanValidationError(UserError):
    """A generator whose cubes failed the physics validation (gan.allow_invalid=false)."""


# ---------------------------------------------------------------- one generated file
_LOADED: dict[tuple, LoadedGenerator] = {}  # per process: workers load the checkpoint once


def _generator(job: Mapping) -> LoadedGenerator:
    key = (job["checkpoint"], job["checkpoint_sha256"], job["device"])
    if key not in _LOADED:
        _LOADED.clear()
        gen = load_generator(job["checkpoint"], job["cube_size"], job["channels"], job["device"])
        # the files say which checkpoint made them: it must be the one that was validated
        if gen.sha256 != job["checkpoint_sha256"]:
            raise GanCheckpointError(
                f"gan.checkpoint={job['checkpoint']} changed since it was validated (sha256 "
                f"{gen.sha256[:12]}..., validated {job['checkpoint_sha256'][:12]}...); rerun")
        _LOADED[key] = gen
    return _LOADED[key]


def sub_seeds(seed: int, n_sub: int) -> list[int]:
    """One noise seed per sub-volume of a file, a pure function of the file's seed."""
    return [int(np.random.default_rng([int(seed), sub]).integers(2**63 - 1))
            for sub in range(n_sub)]


def generate_one(job: Mapping, sim_id: int, local_rank: int = 0) -> dict:
    """Generate id `sim_id` (n_sub cubes at its parameters) and write its file, as
    src.sim.workers.simulate_one does for a simulation."""
    gen = _generator(job)  # loaded once per process: not part of a file's generate_s
    t0 = time.perf_counter()
    params, seed = sample_parameters(job["seed"], sim_id, job["ranges"])
    y = np.array([params[n] for n in PARAM_NAMES], dtype=np.float32)
    x = gen.generate(np.repeat(y[None].astype(np.float64), job["n_sub"], axis=0),
                     sub_seeds(seed, job["n_sub"]), job["sample_batch"])
    timings = {"generate_s": time.perf_counter() - t0}
    attrs = {
        "sim_id": int(sim_id), "seed": seed, "campaign_seed": int(job["seed"]),
        "box_size": job["box_size"], "grid": job["grid"], "redshifts": list(job["redshifts"]),
        "param_names": list(PARAM_NAMES), "device": str(gen.device),
        "code_version": job["code_version"], "campaign_sha256": job["campaign_sha256"],
        # where the file came from (absent or "simulation": an N-body run)
        "method": METHOD, "generator": gen.description,
        "checkpoint_sha256": job["checkpoint_sha256"], "checkpoint": job["checkpoint"],
        "train_data": job["train_data"],
        **{f"timing_{k}": float(v) for k, v in timings.items()},
    }
    path = Path(job["data_dir"]) / sim_filename(sim_id)
    with disk_full_means(f"{path}: disk full while writing generated file {sim_id}; free "
                         f"space in {job['data_dir']} and rerun (finished files are kept)"):
        write_simulation(path, x, y, attrs)
    return {"id": int(sim_id), "file": path.name, "timings": timings}


# ---------------------------------------------------------------- validation
def check_physics(gen: LoadedGenerator, train_dir: Path, manifest: Mapping, spec: SimSpec,
                  gcfg: Mapping, thresholds: Mapping, out_dir: Path) -> dict:
    """Validate the generator against the training simulations; write the table and figure
    to `out_dir`; refuse a failing generator unless gan.allow_invalid."""
    simulated, params = validation_set(train_dir, manifest, gcfg)
    seeds = twin_seeds(int(gcfg["seed"]), VALIDATION_STREAM, len(params))
    generated = gen.generate(params, seeds, int(gcfg["sample_batch"]))
    box = spec.box_size / cube_root(spec.n_sub)
    result = validate(simulated, generated, params, dict(thresholds), box)
    paths = write_validation(out_dir, result)
    failed = [c["name"] for c in result["checks"] if not c["passed"]]
    log.info("GAN physics validation: %s (%s)", "passed" if result["passed"] else
             f"failed {failed}", out_dir)
    if not result["passed"] and not gcfg["allow_invalid"]:
        raise GanValidationError(
            f"generator {gen.path} failed the physics validation ({', '.join(failed)}; see "
            f"{paths[1] if len(paths) > 1 else out_dir}); train it "
            f"longer or set gan.allow_invalid=true to generate anyway")
    return {"result": result, "paths": paths, "failed": failed}


# ---------------------------------------------------------------- the flow
def _checked_ranges(camp: Mapping, gen: LoadedGenerator) -> dict:
    """campaign.param_ranges, which must lie within the ranges the GAN was trained on."""
    ranges = validate_ranges(camp.get("param_ranges"))
    for i, name in enumerate(gen.param_names):
        lo, hi = ranges[name]
        if lo < gen.lo[i] - 1e-9 or hi > gen.hi[i] + 1e-9:
            raise GanConfigError(
                f"campaign.param_ranges.{name}=[{lo}, {hi}] reaches beyond the range the "
                f"generator {gen.path} was trained on, [{gen.lo[i]}, {gen.hi[i]}]")
    return ranges


def _checked_checkpoint(gen: LoadedGenerator, train_dir: Path, gcfg: Mapping) -> None:
    """A given gan.checkpoint trained on train_data must have trained on the same split, or
    its training saw simulations that are validation ones here."""
    hp = gen.hparams
    if str(hp.get("train_data", "")) != str(train_dir):
        log.warning("gan.checkpoint=%s was trained on %s, not gan.train_data=%s: whether its "
                    "training saw the validation simulations cannot be checked", gen.path,
                    hp.get("train_data") or "(unrecorded)", train_dir)
        return
    for key in ("val_fraction", "split_seed"):
        if hp.get(key) is not None and float(hp[key]) != float(gcfg[key]):
            raise GanConfigError(
                f"gan.checkpoint={gen.path} was trained with gan.{key}={hp[key]}, this run has "
                f"gan.{key}={gcfg[key]}: its training saw other simulations than this split's "
                "training side; set them equal")


def _check_not_at_train_params(camp: Mapping, manifest: Mapping, train_dir: Path) -> None:
    """The campaign seed and ranges of train_data would put the generated cubes at exactly its
    simulations' parameters, validation ones included: their labels would leak into training."""
    seed, theirs = camp.get("seed"), manifest.get("campaign_seed")
    if seed is None or theirs is None or str(seed) != str(theirs):
        return
    ranges, recorded = validate_ranges(camp.get("param_ranges")), manifest.get("param_ranges", {})
    if all(n in recorded and list(map(float, ranges[n])) == list(map(float, recorded[n]))
           for n in PARAM_NAMES):
        raise GanConfigError(
            f"campaign.seed={seed} and campaign.param_ranges are gan.train_data={train_dir}'s: "
            "the generated cubes would sit at its simulations' parameters, validation ones "
            "included; choose another campaign.seed")


def run_gan_campaign(cfg: DictConfig) -> dict:
    gcfg = OmegaConf.to_container(cfg.gan, resolve=True)
    # every setting checked before a long training, not after it
    thresholds = check_thresholds(OmegaConf.to_container(cfg.gan_validation, resolve=True))
    set_size(gcfg, "n_validation")
    positive_int(gcfg, "sample_batch")
    device = resolve_device(str(gcfg["device"]))
    camp = OmegaConf.to_container(cfg.campaign, resolve=True)
    data_dir = Path(str(cfg.paths.data_dir)).expanduser().absolute()
    if launched_by_mpi() and str(camp.get("mpi")).lower() != "false":
        raise GanConfigError("method=gan runs without MPI (serial or campaign.workers pool): "
                             "launch it as one process, or set campaign.mpi=false")
    train_dir, manifest = check_train_data(gcfg)
    if data_dir == train_dir:
        raise GanConfigError(f"paths.data_dir={data_dir} is gan.train_data: generated files "
                             "go to a directory of their own (mix them with "
                             "data.extra_train_dirs)")
    _check_not_at_train_params(camp, manifest, train_dir)
    sim_cfg = dict(manifest["sim"])
    spec = SimSpec.from_config(sim_cfg)
    channels, size = int(spec.sample_shape[0]), int(spec.sample_shape[1])
    out_dir = Path(str(gcfg["out_dir"])).expanduser().absolute()
    t0 = time.perf_counter()
    trained = not gcfg.get("checkpoint")
    ckpt = train_gan(gcfg, thresholds) if trained else Path(str(gcfg["checkpoint"]))
    train_s = time.perf_counter() - t0
    gen = load_generator(ckpt, size, channels, device)
    if not trained:
        _checked_checkpoint(gen, train_dir, gcfg)
    ranges = _checked_ranges(camp, gen)
    out_dir.mkdir(parents=True, exist_ok=True)
    physics = check_physics(gen, train_dir, manifest, spec, gcfg, thresholds, out_dir)
    job = {
        "checkpoint": str(gen.path), "checkpoint_sha256": gen.sha256, "device": device,
        "cube_size": size, "channels": channels, "n_sub": spec.n_sub,
        "sample_batch": int(gcfg["sample_batch"]), "box_size": spec.box_size,
        "grid": spec.grid, "redshifts": list(spec.redshifts), "train_data": str(train_dir),
        # another checkpoint makes other files: a rerun with it refuses the old ones
        "campaign_sha256": digest(campaign_digest(sim_cfg, ranges, int(camp["seed"])),
                                  METHOD, gen.sha256),
    }
    header = {"method": METHOD, "generator": gen.description,
              "checkpoint_sha256": gen.sha256, "checkpoint": str(gen.path),
              "train_data": str(train_dir), "gan_validation_passed": physics["result"]["passed"]}
    method = Method(make_one=generate_one, job=job, header=header, label="generating",
                    unit="file")
    result = run_campaign(sim_cfg, camp, data_dir, method)
    return {**result, "method": METHOD, "checkpoint": str(gen.path), "trained": trained,
            "train_s": train_s, "validation_passed": physics["result"]["passed"],
            "validation_failed": physics["failed"], "validation_paths": [str(p) for p in physics["paths"]],
            "n_generated": result["n_simulated"]}


__all__ = ["GanValidationError", "generate_one", "sub_seeds", "check_physics",
           "run_gan_campaign"]
