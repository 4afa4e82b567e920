"""A trained generator from its checkpoint, and cubes from it for given parameters and seeds.

Cubes are a pure function of (checkpoint, parameters, seed): the noise of each cube comes
from its own seeded torch generator and the generator has no batch statistics (PixelNorm),
so the batch size and the device do not change which cube a seed gives (up to float rounding).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from src.gan.nets import GENERATOR_KEYS_BEFORE, GanConfigError, Generator
from src.sim.store import PARAM_NAMES, file_checksum

PREFIX = "generator."  # the generator's weights in a CosmoGAN checkpoint ...
EMA_PREFIX = "generator_ema."  # ... and their moving average, which is what cubes come from


class GanCheckpointError(GanConfigError):
    """A generator checkpoint that is missing, unreadable or made for other cubes."""


class LoadedGenerator:
    """The generator of one checkpoint, in eval mode, with what its files must record."""

    def __init__(self, path: Path, net: Generator, hparams: Mapping, sha256: str):
        self.path, self.net, self.hparams, self.sha256 = path, net, dict(hparams), sha256
        self.param_names = list(hparams["param_names"])
        ranges = hparams["param_ranges"]
        self.lo = np.array([float(ranges[n][0]) for n in self.param_names])
        self.hi = np.array([float(ranges[n][1]) for n in self.param_names])

    @property
    def description(self) -> str:
        return str(self.hparams.get("description") or "saih-cosmo conditional 3D GAN")

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def normalise(self, params: np.ndarray) -> np.ndarray:
        """Physical (Omega_M, sigma_8, n_s) -> [-1, 1] by the training set's ranges."""
        return 2.0 * (np.asarray(params, dtype=np.float64) - self.lo) / (self.hi - self.lo) - 1.0

    @torch.no_grad()
    def generate(self, params: np.ndarray, seeds, batch: int = 16) -> np.ndarray:
        """Counts [N, C, S, S, S] (float32, >= 0; integers when the GAN was trained dequantized)
        for params [N, 3] (physical units) and one seed per cube."""
        params = np.atleast_2d(np.asarray(params, dtype=np.float64))
        seeds = [int(s) for s in np.broadcast_to(np.asarray(seeds), (len(params),))]
        # each cube's noise (vector and fields) from its own seeded RNG: a pure function of
        # its seed, whatever the batch it is made in
        draws = [self.net.draw_noise(1, torch.Generator().manual_seed(s % 2**63)) for s in seeds]
        y = torch.from_numpy(self.normalise(params).astype(np.float32))
        out = []
        for i in range(0, len(params), max(1, int(batch))):
            part = draws[i:i + batch]
            z = torch.cat([d[0] for d in part]).to(self.device)
            fields = [torch.cat([d[1][j] for d in part]).to(self.device)
                      for j in range(len(part[0][1]))]
            logc = self.net(z, y[i:i + batch].to(self.device), fields)
            counts = torch.expm1(logc).float()
            if self.hparams.get("dequantize", False):  # it learnt log1p(n + u): n = floor
                counts = torch.floor(counts)
            out.append(counts.cpu().numpy())
        return np.concatenate(out).astype(np.float32)


def _load(path: Path) -> dict:
    try:
        # weights_only: a checkpoint is data, not code; ours holds tensors and plain values
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise GanCheckpointError(f"gan.checkpoint={path}: not a readable GAN checkpoint "
                                 f"({type(err).__name__}: {err})") from err


def load_generator(path, cube_size: int | None = None, channels: int | None = None,
                   device: str = "cpu") -> LoadedGenerator:
    """The generator of checkpoint `path`; GanCheckpointError naming it and both sizes when it
    makes cubes of another side or channel count than the target."""
    path = Path(str(path)).expanduser().absolute()
    if not path.is_file():
        raise GanCheckpointError(f"gan.checkpoint={path}: no such file")
    ckpt = _load(path)
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, Mapping) else None
    state = ckpt.get("state_dict") if isinstance(ckpt, Mapping) else None
    keys = ("cube_size", "channels", "noise_dim", "width", "min_width", "param_names",
            "param_ranges")
    if not hp or not state or any(k not in hp for k in keys):
        raise GanCheckpointError(f"gan.checkpoint={path}: not a CosmoGAN checkpoint (no "
                                 "generator hyper-parameters or weights)")
    if list(hp["param_names"]) != list(PARAM_NAMES):
        raise GanCheckpointError(f"gan.checkpoint={path}: conditions on {list(hp['param_names'])}"
                                 f", the data contract has {list(PARAM_NAMES)}")
    for what, want in (("cube_size", cube_size), ("channels", channels)):
        if want is not None and int(hp[what]) != int(want):
            raise GanCheckpointError(
                f"gan.checkpoint={path}: makes cubes of {what}={hp[what]} ({hp['channels']} x "
                f"{hp['cube_size']}^3), the target data has {what}={want} ({channels} x "
                f"{cube_size}^3); train a GAN on data of that size")
    built = {**GENERATOR_KEYS_BEFORE, **{k: hp[k] for k in GENERATOR_KEYS_BEFORE if k in hp}}
    net = Generator(int(hp["cube_size"]), int(hp["channels"]), int(hp["noise_dim"]),
                    int(hp["width"]), int(hp["min_width"]), len(hp["param_names"]),
                    bool(built["periodic"]), int(built["pixel_norm_from"]),
                    bool(built["modulate"]))
    prefix = EMA_PREFIX if any(k.startswith(EMA_PREFIX) for k in state) else PREFIX
    weights = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    try:
        net.load_state_dict(weights)
    except RuntimeError as err:
        raise GanCheckpointError(f"gan.checkpoint={path}: generator weights do not fit its "
                                 f"hyper-parameters ({err})") from err
    net.eval().to(torch.device(device))
    return LoadedGenerator(path, net, hp, file_checksum(path))


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise GanConfigError(f"gan.device={name}: no CUDA device is visible")
    if not (name == "cpu" or str(name).startswith("cuda")):
        raise GanConfigError(f"gan.device={name!r}: choose auto, cpu or cuda[:N]")
    return str(name)


def digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


__all__ = ["GanCheckpointError", "LoadedGenerator", "load_generator", "resolve_device", "digest"]
