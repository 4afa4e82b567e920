"""The conditional 3D GAN's two networks (docs/gan.md).

Generator: (noise z, the 3 parameters normalised to [-1, 1]) -> a [C, S, S, S] cube of
log1p(voxel counts); counts = expm1(output). The output goes through softplus, so it is never
negative and expm1 of it is a non-negative count, as in a simulation. S = 4 * 2^k.

Discriminator: (cube in log1p units, parameters) -> one score per cube; a projection
discriminator (Miyato & Koyama 2018): score = w . h + <embed(params), h>, which conditions
more stably than feeding the parameters as input channels alone. Spectral norm on every
layer bounds its Lipschitz constant, the usual companion of the hinge loss (src/gan/module.py).
With `smoothing` > 0 it also sees each cube's Gaussian-smoothed density contrast in its own
standard deviations (`smoothed_contrast`), the field the peak check counts maxima of.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from src.errors import ConfigError
from src.sim.mesh import wavenumbers

BASE = 4  # side of the generator's first volume and the discriminator's last

# The generator's later keys' values before each existed: what a checkpoint trained before
# the key was added was built with (src/gan/sample.py, src/gan/train_gan.py)
GENERATOR_KEYS_BEFORE = {"periodic": True, "pixel_norm_from": 0, "modulate": False}


class GanConfigError(ConfigError):
    """A `gan.*` value or a generator checkpoint that cannot be used as configured."""


def n_stages(cube_size: int) -> int:
    """Doublings from 4^3 to cube_size^3; GanConfigError unless cube_size = 4 * 2^k, k >= 1."""
    k = math.log2(cube_size / BASE) if cube_size >= BASE else -1
    if cube_size < 2 * BASE or k != int(k):
        raise GanConfigError(f"cube side {cube_size}: the GAN needs 8, 16, 32, 64, ... (4 * 2^k)")
    return int(k)


def stage_widths(width: int, min_width: int, stages: int) -> list[int]:
    """Channels per stage: `width` at 4^3, halved per doubling, never below `min_width`."""
    return [max(int(width) >> i, int(min_width)) for i in range(stages + 1)]


def check_pixel_norm_from(value: int, cube_size: int) -> int:
    """`gan.pixel_norm_from`: a generator block of cube_size's (or their count, for none)."""
    stages = n_stages(cube_size)
    if not 0 <= value <= stages:
        raise GanConfigError(f"gan.pixel_norm_from={value!r}: a cube side of {cube_size} has "
                             f"generator blocks 0..{stages - 1}; give one of them, or {stages} "
                             "for no PixelNorm")
    return value


def generator_padding(periodic: bool) -> str:
    """Padding of the generator's convs. A whole simulation box is periodic: circular. A
    sub-volume cut from one is not (its faces are where the cut was). A periodic generator
    trained on sub-volumes stayed short of their power in the fundamental shell; replicate
    padding raised it (docs/benchmarks.md "GAN") without the dark rim zero padding would
    paint."""
    return "circular" if periodic else "replicate"


def _broadcast(params: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return params[:, :, None, None, None].expand(-1, -1, *like.shape[2:])


def smoothed_contrast(cubes_log: torch.Tensor, sigma: float) -> torch.Tensor:
    """[B, C, S, S, S] log1p(counts) -> the density contrast counts / mean - 1 of each cube and
    channel, Gaussian-smoothed (sigma in voxels, periodic, as src/gan/physics.py smooths) and
    divided by its own standard deviation. Differentiable in the input.

    Why the discriminator gets it: raw (dequantized) voxels hold about one particle plus
    uniform noise of the same size, and a few 3^3 convs with a handful of channels did not
    learn to tell a clump of a few particles from isolated ones there (the generator made
    too few of the former and too many of the latter: docs/benchmarks.md "GAN"). Smoothed,
    the noise is averaged out and the clumps are what is left."""
    size = cubes_log.shape[-1]
    counts = torch.expm1(cubes_log)
    mean = counts.mean(dim=(2, 3, 4), keepdim=True).clamp_min(1e-6)
    kx, ky, kz = wavenumbers(size, cubes_log.device, cubes_log.dtype)
    kernel = torch.exp(-0.5 * sigma**2 * (kx * kx + ky * ky + kz * kz))
    field = torch.fft.irfftn(torch.fft.rfftn(counts / mean - 1.0, dim=(2, 3, 4)) * kernel,
                             s=(size, size, size), dim=(2, 3, 4))
    std = field.std(dim=(2, 3, 4), keepdim=True, correction=0)  # as numpy, as the check
    return field / std.clamp_min(1e-6)


class PixelNorm(nn.Module):
    """Each voxel's feature vector scaled to unit RMS (ProGAN). Not BatchNorm: a cube must not
    depend on the others in its batch, or sample.py's cubes would change with the batch size
    and eval-mode running statistics would differ from what the generator trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class GenBlock(nn.Module):
    """x2 nearest upsample + two 3^3 convs. Upsample+conv rather than transposed convs: no
    checkerboard pattern, which would show up as a spike in P(k) at the voxel scale. The
    parameters join every block as constant channels, so each scale can follow them.

    Noise injection (StyleGAN): after each conv a fresh white-noise field, scaled per channel
    by a learnt weight, is added. The noise vector alone fixes only the 4^3 stem, and
    upsampling convs cannot make new randomness at the voxel scale, where a sparse cube's
    structure (single particles, halo cores) lives."""

    N_NOISE = 2  # noise fields per block, one per conv

    def __init__(self, c_in: int, c_out: int, n_params: int, padding_mode: str = "circular",
                 pixel_norm: bool = True, modulate: bool = False):
        super().__init__()
        self.conv1 = nn.Conv3d(c_in + n_params, c_out, 3, padding=1, padding_mode=padding_mode)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1, padding_mode=padding_mode)
        self.noise_weight = nn.Parameter(torch.zeros(self.N_NOISE, 1, c_out, 1, 1, 1))
        self.act = nn.LeakyReLU(0.2)
        self.norm = PixelNorm() if pixel_norm else nn.Identity()
        # FiLM: the parameters scale each output channel by 1 + a(params). Joined as constant
        # channels they can only shift features, and PixelNorm then rescales every voxel to
        # unit RMS, so how strongly a cube fluctuates could not follow sigma_8 directly.
        # Zero-initialised: the block starts as the unmodulated one.
        self.modulation = nn.Linear(n_params, c_out) if modulate else None
        if self.modulation is not None:
            nn.init.zeros_(self.modulation.weight)
            nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, params: torch.Tensor, noise: list) -> torch.Tensor:
        x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv1(torch.cat([x, _broadcast(params, x)], dim=1))
        x = self.norm(self.act(x + self.noise_weight[0] * noise[0]))
        x = self.conv2(x)
        x = self.norm(self.act(x + self.noise_weight[1] * noise[1]))
        if self.modulation is None:
            return x
        return x * (1.0 + self.modulation(params))[:, :, None, None, None]


class Generator(nn.Module):
    """(z [B, noise_dim], params [B, n_params] in [-1, 1]) -> log1p counts [B, C, S, S, S].

    `pixel_norm_from`: the first block (0 = the 8^3 one) whose features PixelNorm rescales.
    Rescaling every voxel to unit RMS also fixes how strongly the coarsest features vary from
    place to place, that is the power of the largest scales; a generator normalised from the
    first block stayed short of the simulations' power in the fundamental shell, and none at
    all let the large scales run away (docs/benchmarks.md "GAN"). `modulate`: the parameters
    also scale every block's output channels (GenBlock)."""

    def __init__(self, cube_size: int, channels: int = 1, noise_dim: int = 64, width: int = 64,
                 min_width: int = 8, n_params: int = 3, periodic: bool = True,
                 pixel_norm_from: int = 0, modulate: bool = False):
        super().__init__()
        pad = generator_padding(periodic)
        widths = stage_widths(width, min_width, n_stages(cube_size))
        check_pixel_norm_from(pixel_norm_from, cube_size)
        self.cube_size, self.channels, self.noise_dim = int(cube_size), int(channels), int(noise_dim)
        self.n_params = int(n_params)
        self.stem = nn.Sequential(nn.Linear(noise_dim + n_params, widths[0] * BASE**3),
                                  nn.LeakyReLU(0.2))
        self.blocks = nn.ModuleList(GenBlock(a, b, n_params, pad, i >= pixel_norm_from, modulate)
                                    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:],
                                                                   strict=True)))
        self.head = nn.Conv3d(widths[-1], channels, 3, padding=1, padding_mode=pad)

    def draw_noise(self, n: int, generator: torch.Generator | None = None,
                   device=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(z [n, noise_dim], the blocks' noise fields [n, 1, s, s, s], coarse to fine): all
        the randomness of n cubes, drawn in a fixed order so that one seeded `generator`
        makes the same cubes every time (src/gan/sample.py)."""
        # unseeded (training): drawn where the network runs, no copy per step; seeded: on the
        # CPU, whose generator makes the same numbers on every machine
        where = device if generator is None else None
        z = torch.randn(n, self.noise_dim, generator=generator, device=where)
        fields = [torch.randn(n, 1, s, s, s, generator=generator, device=where)
                  for s in self.noise_sides() for _ in range(GenBlock.N_NOISE)]
        if device is None or where is not None:
            return z, fields
        return z.to(device), [f.to(device) for f in fields]

    def noise_sides(self) -> list[int]:
        return [BASE * 2 ** (i + 1) for i in range(len(self.blocks))]

    def forward(self, z: torch.Tensor, params: torch.Tensor,
                noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        if noise is None:  # training: fresh noise from the global RNG
            noise = self.draw_noise(z.shape[0], device=z.device)[1]
        x = self.stem(torch.cat([z, params], dim=1)).view(z.shape[0], -1, BASE, BASE, BASE)
        for i, block in enumerate(self.blocks):
            x = block(x, params, noise[GenBlock.N_NOISE * i:GenBlock.N_NOISE * (i + 1)])
        return nn.functional.softplus(self.head(x))  # log1p(counts) >= 0


class Discriminator(nn.Module):
    """(log1p cube [B, C, S, S, S], params [B, n_params]) -> score [B] (hinge: real > 0)."""

    def __init__(self, cube_size: int, channels: int = 1, width: int = 64, min_width: int = 8,
                 n_params: int = 3, periodic: bool = True, smoothing: float = 0.0):
        super().__init__()
        self.smoothing = float(smoothing)
        pad = "circular" if periodic else "zeros"  # zeros: an edge is an edge, not a seam
        widths = stage_widths(width, min_width, n_stages(cube_size))[::-1]  # small -> wide
        c_in = 2 * channels if self.smoothing > 0 else channels
        layers = [spectral_norm(nn.Conv3d(c_in, widths[0], 3, padding=1,
                                          padding_mode=pad)), nn.LeakyReLU(0.2)]
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [spectral_norm(nn.Conv3d(a, b, 4, stride=2, padding=1,
                                               padding_mode=pad)), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        feat = widths[-1] * BASE**3
        self.linear = spectral_norm(nn.Linear(feat, 1))
        self.embed = spectral_norm(nn.Linear(n_params, feat, bias=False))  # the projection

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        if self.smoothing > 0:
            x = torch.cat([x, smoothed_contrast(x, self.smoothing)], dim=1)
        h = self.features(x).flatten(1)
        return self.linear(h).squeeze(1) + (self.embed(params) * h).sum(dim=1)


__all__ = ["GanConfigError", "Generator", "Discriminator", "n_stages", "stage_widths",
           "smoothed_contrast"]
