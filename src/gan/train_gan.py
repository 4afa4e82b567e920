"""Train the conditional GAN on a simulation set as a Lightning job (docs/gan.md).

Data: CosmoDataModule on `gan.train_data` (log1p cubes, labels in [-1, 1]) with the split of
the training jobs, so the GAN sees only their training simulations. Checkpoints: last.ckpt in
`gan.out_dir` at the end of every epoch (and at the end of training); `gan.resume` continues
from it. Returns the checkpoint to sample from: the state chosen by its physics checks
(selected.ckpt, src/gan/selection.py) when `gan.select_every` > 0, else last.ckpt.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from src.datamodules.cosmo import CosmoDataModule
from src.errors import DataError
from src.gan.module import CosmoGAN
from src.gan.nets import GENERATOR_KEYS_BEFORE, GanConfigError, check_pixel_norm_from
from src.gan.reference import SELECTION_STREAM, selection_set, twin_seeds
from src.gan.selection import SelectByChecks, clear_selection, selected_or_last
from src.sim.mesh import cube_root
from src.sim.nbody import SimSpec
from src.sim.store import read_manifest
from src.util import checks

log = logging.getLogger(__name__)
LAST = "last.ckpt"


def check_train_data(gcfg: Mapping) -> tuple[Path, dict]:
    """(dir, manifest) of `gan.train_data`: a generate.py simulation set, else one error."""
    raw = gcfg.get("train_data")
    if raw in (None, ""):
        raise GanConfigError("gan.train_data is not set: name the DIR of a simulation set "
                             "(generate.py sim=... paths.data_dir=DIR) to train and validate on")
    path = Path(str(raw)).expanduser().absolute()
    if not path.is_dir():
        raise GanConfigError(f"gan.train_data={path}: no such directory")
    try:
        manifest = read_manifest(path)
    except DataError as err:
        raise GanConfigError(f"gan.train_data={path}: {err}") from err
    if manifest.get("method", "simulation") != "simulation" or "sim" not in manifest:
        raise GanConfigError(f"gan.train_data={path}: not a generate.py simulation set (its "
                             "manifest has no `sim` config, or it was itself generated)")
    return path, manifest


def gan_datamodule(gcfg: Mapping, data_dir: Path) -> CosmoDataModule:
    return CosmoDataModule(
        dir=str(data_dir), batch_size=int(gcfg["batch_size"]),
        val_fraction=float(gcfg["val_fraction"]), split_seed=int(gcfg["split_seed"]),
        transform="log1p", augment=bool(gcfg["augment"]), num_workers=int(gcfg["num_workers"]),
        stage=None, verify="full", seed=int(gcfg["seed"]))


def resolve_periodic(gcfg: Mapping, manifest: Mapping) -> bool:
    """`gan.periodic`: true / false, or auto: periodic exactly when the training cubes are
    whole simulation boxes (n_sub = 1), not sub-volumes cut from them (src/gan/nets.py)."""
    value = gcfg.get("periodic", "auto")
    if isinstance(value, bool):
        return value
    if value != "auto":
        raise GanConfigError(f"gan.periodic={value!r} must be auto, true or false")
    n_sub = {int(e.get("n_sub", 1)) for e in manifest.get("files", [])}
    return n_sub == {1}


def build_gan(gcfg: Mapping, dm: CosmoDataModule, description: str) -> CosmoGAN:
    """The CosmoGAN of `gan.*` for dm's cubes; gan.periodic already resolved to a bool."""
    if not isinstance(gcfg.get("periodic"), bool):
        raise GanConfigError(f"gan.periodic={gcfg.get('periodic')!r}: resolve it with "
                             "resolve_periodic before building the GAN")
    channels, size = dm.sample_shape[0], dm.sample_shape[1]
    norm_from = pixel_norm_from(gcfg, size)  # checked before the networks are built
    return CosmoGAN(cube_size=size, channels=channels, param_names=list(dm.param_names),
                    param_ranges={k: list(v) for k, v in dm.param_ranges.items()},
                    noise_dim=int(gcfg["noise_dim"]), width=int(gcfg["width"]),
                    min_width=int(gcfg["min_width"]), lr_g=float(gcfg["lr_g"]),
                    lr_d=float(gcfg["lr_d"]), betas=[float(b) for b in gcfg["betas"]],
                    dequantize=bool(gcfg["dequantize"]), periodic=bool(gcfg["periodic"]),
                    pk_weight=checks.number("gan.pk_weight", gcfg.get("pk_weight"), 0.0,
                                            error=GanConfigError),
                    one_point_weight=checks.number("gan.one_point_weight",
                                                   gcfg.get("one_point_weight"), 0.0,
                                                   error=GanConfigError),
                    one_point_cells=cell_sizes(gcfg, size),
                    lr_schedule=lr_schedule(gcfg), pk_pairing=pk_pairing(gcfg),
                    d_smoothing=checks.number("gan.d_smoothing", _opt_in(gcfg, "d_smoothing"),
                                              0.0, error=GanConfigError),
                    pixel_norm_from=norm_from,
                    modulate=checks.boolean("gan.modulate", _opt_in(gcfg, "modulate"),
                                            GanConfigError),
                    ema_ramp=checks.number("gan.ema_ramp", _opt_in(gcfg, "ema_ramp"), 2.0,
                                           error=GanConfigError),
                    ema_decay=checks.number("gan.ema_decay", gcfg.get("ema_decay"), 0.0, 1.0,
                                            high_open=True, error=GanConfigError),
                    train_data=str(dm.data_dir), description=description,
                    val_fraction=float(gcfg["val_fraction"]), split_seed=int(gcfg["split_seed"]))


# The opt-in keys' values before each existed: what build_gan takes when a hand-built gan.*
# mapping leaves one out, and what a checkpoint trained before it was added was trained with
OPT_IN_DEFAULTS = {"lr_schedule": "constant", "one_point_cells": [1], "d_smoothing": 0.0,
                   "pk_pairing": "absolute", "ema_ramp": 10.0,
                   "pixel_norm_from": GENERATOR_KEYS_BEFORE["pixel_norm_from"],
                   "modulate": GENERATOR_KEYS_BEFORE["modulate"]}


def _opt_in(mapping: Mapping, key: str):
    return mapping.get(key, OPT_IN_DEFAULTS[key])


def _choice(gcfg: Mapping, key: str, choices: tuple[str, ...]) -> str:
    """`gan.<key>`: one of `choices`."""
    value = _opt_in(gcfg, key)
    if value not in choices:
        raise GanConfigError(f"gan.{key}={value!r} must be {' or '.join(choices)}")
    return str(value)


def lr_schedule(gcfg: Mapping) -> str:
    return _choice(gcfg, "lr_schedule", ("constant", "cosine"))


def pk_pairing(gcfg: Mapping) -> str:
    return _choice(gcfg, "pk_pairing", ("absolute", "relative"))


def pixel_norm_from(gcfg: Mapping, cube_size: int) -> int:
    value = checks.integer("gan.pixel_norm_from", _opt_in(gcfg, "pixel_norm_from"), 0,
                           GanConfigError)
    return check_pixel_norm_from(value, cube_size)


def cell_sizes(gcfg: Mapping, cube_size: int) -> list[int]:
    """`gan.one_point_cells`: a non-empty list of cell sides (voxels) that divide the cube."""
    value = _opt_in(gcfg, "one_point_cells")
    if isinstance(value, (int, str)) or not value:
        raise GanConfigError(f"gan.one_point_cells={value!r} must be a non-empty list of cell "
                             "sides in voxels, e.g. [1, 2, 4]")
    cells = [checks.integer("gan.one_point_cells", c, 1, GanConfigError) for c in value]
    bad = [c for c in cells if cube_size % c]
    if bad:
        raise GanConfigError(f"gan.one_point_cells={cells}: {bad} do not divide the cube side "
                             f"{cube_size}")
    return cells


def describe(gcfg: Mapping, dm: CosmoDataModule) -> str:
    c, s = dm.sample_shape[0], dm.sample_shape[1]
    return (f"saih-cosmo conditional 3D GAN (hinge + spectral norm, projection discriminator), "
            f"noise {gcfg['noise_dim']}, width {gcfg['width']}-{gcfg['min_width']}, "
            f"{c} x {s}^3, trained on {dm.data_dir}")


def positive_int(gcfg: Mapping, key: str) -> int:
    """`gan.<key>`: an integer >= 1 (the house check, naming the key)."""
    return checks.integer(f"gan.{key}", gcfg.get(key), 1, GanConfigError)


# what a resumed run must share with the checkpoint: the networks, the optimizers (whose
# state, learning rates included, is restored from it) and the simulations it trains on
RESUME_KEYS = ("noise_dim", "width", "min_width", "dequantize", "periodic", "lr_g", "lr_d",
               "lr_schedule", "betas", "pk_weight", "one_point_weight", "one_point_cells",
               "d_smoothing", "pk_pairing", "pixel_norm_from", "modulate", "train_data",
               "val_fraction", "split_seed")


def _plain(key: str, value):
    """A RESUME_KEYS value in a form that compares equal across YAML, Hydra and torch.load."""
    if key == "betas":
        return [float(v) for v in value]
    if key == "one_point_cells":
        return [int(v) for v in value]
    if key in ("train_data", "lr_schedule", "pk_pairing"):
        return str(value)
    return bool(value) if key in ("dequantize", "periodic") else float(value)


def _resumable(ckpt: Path, gcfg: Mapping, data_dir: Path) -> dict:
    """The checkpoint to resume, read; GanConfigError naming the first `gan.*` value it was
    not trained with (a resumed run would fail to load it, or silently keep the old value)."""
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        hp = dict(state["hyper_parameters"])
    except Exception as err:
        raise GanConfigError(f"{ckpt}: not a readable GAN checkpoint to resume ({type(err).__name__}:"
                             f" {err}); delete it or set gan.resume=false") from err
    want = {**gcfg, "train_data": str(data_dir)}
    for key in RESUME_KEYS:
        if key in OPT_IN_DEFAULTS:  # added later: an older checkpoint trained without it
            have, new = _opt_in(hp, key), _opt_in(want, key)
        elif hp.get(key) is None:  # not recorded (an older checkpoint)
            continue
        else:
            have, new = hp[key], want[key]
        if _plain(key, have) != _plain(key, new):
            raise GanConfigError(
                f"gan.{key}={new!r}, but {ckpt} was trained with {key}={have!r}: set it back, "
                "or gan.resume=false (or another gan.out_dir) to train afresh")
    return state


def _finished(state: Mapping, epochs: int, max_steps: int) -> bool:
    """Whether the checkpoint has trained `epochs` epochs or `max_steps` generator steps (its
    global_step counts both optimizers: two per batch)."""
    steps, epoch = int(state.get("global_step", 0)), int(state.get("epoch", 0))
    return epoch >= epochs or (max_steps > 0 and steps >= 2 * max_steps)


def selection(gcfg: Mapping, data_dir: Path, manifest: Mapping, thresholds: Mapping,
              out_dir: Path) -> SelectByChecks | None:
    """The checkpoint-selection callback of `gan.select_every` / `gan.n_select` (None: 0,
    keep the last weights); its sub-volumes are read, and their number checked, here."""
    every = checks.integer("gan.select_every", gcfg.get("select_every", 0), 0, GanConfigError)
    if every == 0:
        return None
    simulated, params = selection_set(data_dir, manifest, gcfg)
    spec = SimSpec.from_config(dict(manifest["sim"]))
    return SelectByChecks(every, simulated, params,
                          twin_seeds(int(gcfg["seed"]), SELECTION_STREAM, len(params)),
                          thresholds, spec.box_size / cube_root(spec.n_sub), out_dir,
                          positive_int(gcfg, "sample_batch"))


def train_gan(gcfg: Mapping, thresholds: Mapping) -> Path:
    """Train (or finish training) the GAN of `gan.*`; returns the checkpoint to sample from
    (selected.ckpt or last.ckpt in gan.out_dir). `thresholds`: the gan_validation settings,
    which the checkpoint selection scores against."""
    data_dir, manifest = check_train_data(gcfg)
    gcfg = {**gcfg, "periodic": resolve_periodic(gcfg, manifest)}
    for key in ("epochs", "batch_size", "noise_dim", "width", "min_width"):
        positive_int(gcfg, key)
    out_dir = Path(str(gcfg["out_dir"])).expanduser().absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    select = selection(gcfg, data_dir, manifest, thresholds, out_dir)
    every = select.every if select is not None else 0
    last = out_dir / LAST
    resume = last if gcfg["resume"] and last.is_file() else None
    max_steps = int(gcfg["max_steps"])
    state = _resumable(last, gcfg, data_dir) if resume is not None else None
    if state is not None and _finished(state, int(gcfg["epochs"]), max_steps):
        # nothing left to train: leave the checkpoint (and its sha256, in every generated
        # file's attributes) untouched, so a rerun of the campaign resumes instead of
        # refusing its files
        log.info("GAN: %s already trained to gan.epochs / gan.max_steps", last)
        return selected_or_last(out_dir, last, every)
    log.info("GAN: %s from %s", f"resuming {last}" if resume else "training afresh", data_dir)
    if resume is None:
        clear_selection(out_dir)
    L.seed_everything(int(gcfg["seed"]), workers=True)
    if gcfg.get("threads"):
        torch.set_num_threads(int(gcfg["threads"]))
    dm = gan_datamodule(gcfg, data_dir)
    module = build_gan(gcfg, dm, describe(gcfg, dm))
    # No monitor (a GAN's losses do not rank checkpoints): top-1 keeps the newest epoch's
    # file. Not save_top_k=0: ModelCheckpoint then never writes last.ckpt at an epoch's end
    # (it writes "last" only in a step that saved a top-k file; tests/test_gan.py counts).
    # No version counter: last.ckpt is always the newest state.
    checkpoint = ModelCheckpoint(dirpath=out_dir, save_last=True, every_n_epochs=1,
                                 save_top_k=1, monitor=None, enable_version_counter=False)
    trainer = L.Trainer(
        accelerator=str(gcfg["accelerator"]), devices=gcfg["devices"],
        precision=gcfg["precision"], max_epochs=int(gcfg["epochs"]),
        # manual optimization counts both optimizers' steps: two per batch
        max_steps=2 * max_steps if max_steps > 0 else -1,
        limit_val_batches=0, num_sanity_val_steps=0,
        callbacks=[checkpoint, *([select] if select is not None else [])],
        logger=CSVLogger(str(out_dir), name="", version=""), log_every_n_steps=1,
        enable_progress_bar=bool(gcfg["progress"]), default_root_dir=str(out_dir),
        enable_model_summary=False)
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None)
    # the final state, also when max_steps ended an epoch early (weights_only=False: all of it)
    trainer.save_checkpoint(last, weights_only=False)
    return selected_or_last(out_dir, last, every)


__all__ = ["LAST", "RESUME_KEYS", "positive_int", "check_train_data", "gan_datamodule",
           "resolve_periodic", "build_gan", "describe", "train_gan"]
