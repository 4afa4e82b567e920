"""The generator's physics losses, beside the adversarial one (docs/gan.md).

At the tiny size on CPU a hinge discriminator alone wins from the first epoch and the
generator collapses to empty cubes (docs/benchmarks.md "GAN"). These two terms give it a
direct, non-adversarial pull towards the statistics its cubes are validated on: generated
cube i is made at the parameters of real cube i, so matching them in expectation is
matching the conditional distribution the validation checks.

- spectrum_loss: squared log ratios of the shell-averaged power of the density contrast,
  per |k| shell up to Nyquist, cube to cube and batch mean to batch mean (P(k)).
- one_point_loss: squared difference of the sorted values of log1p(counts), per cube: the
  1-D Wasserstein-2 distance of the one-point distributions, which a Kolmogorov-Smirnov
  distance cannot give a gradient for; of single voxels and, optionally, of the mean counts
  in cells of a few voxels (counts in cells), because the voxels' distribution says nothing
  about how they are arranged (at the tiny size the cells did not mend the generator's
  missing peaks: docs/benchmarks.md "GAN").
Both are differentiable in the generator's output and cost one FFT and one sort per cube.
"""

from __future__ import annotations

import functools

import torch

from src.sim.mesh import wavenumbers


@functools.lru_cache(maxsize=8)
def _shells(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(shell index per rfft mode, rfft multiplicity per mode, modes per shell) for shells
    of unit width in |k| / k_fundamental, 1 .. size/2 (the mean, shell 0, left out). Cached:
    the same for every batch, and asked for twice per generator step."""
    kx, ky, kz = wavenumbers(size, device, torch.float32, spacing=1.0)
    kmag = torch.sqrt(kx * kx + ky * ky + kz * kz) * size / (2 * torch.pi)
    shell = torch.round(kmag).long().reshape(-1)
    weight = torch.full((size // 2 + 1,), 2.0, device=device)
    weight[0] = 1.0
    weight[-1] = 1.0  # size is even (4 * 2^k): the Nyquist plane stands for itself
    weight = weight.expand(size, size, -1).reshape(-1)
    keep = (shell >= 1) & (shell <= size // 2)
    n_shells = size // 2
    count = torch.zeros(n_shells, device=device).index_add_(0, shell[keep] - 1, weight[keep])
    return shell, weight, count


def shell_power(counts: torch.Tensor) -> torch.Tensor:
    """P(k) / volume of each cube's density contrast per |k| shell: [B, S, S, S] -> [B, S/2]."""
    b, size = counts.shape[0], counts.shape[-1]
    mean = counts.mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    power = torch.fft.rfftn(counts / mean - 1.0, dim=(1, 2, 3)).abs().pow(2).reshape(b, -1)
    shell, weight, count = _shells(size, counts.device)
    keep = (shell >= 1) & (shell <= size // 2)
    total = torch.zeros(b, size // 2, device=counts.device, dtype=power.dtype)
    total = total.index_add(1, shell[keep] - 1, power[:, keep] * weight[keep])
    return total / count / size**6  # P(k) / cube volume, as src/sim/mesh.py normalises


def _channel_power(cubes_log: torch.Tensor) -> torch.Tensor:
    """[B, C, S, S, S] log1p(counts) -> shell powers [C, B, S/2]."""
    b, c = cubes_log.shape[:2]
    return shell_power(torch.expm1(cubes_log).transpose(0, 1).flatten(0, 1)).view(c, b, -1)


def spectrum_loss(fake_log: torch.Tensor, real_log: torch.Tensor,
                  pairing: str = "absolute") -> torch.Tensor:
    """Squared log ratios of P(k) per |k| shell, averaged over shells and channels, of each
    generated cube to its real twin (made at the same parameters) plus of the batch means;
    inputs are log1p(counts) cubes [B, C, S, S, S].

    Both terms, because each alone stalled (docs/benchmarks.md "GAN"): one sub-volume's P(k)
    is heavy-tailed (a cube holding a cluster has many times the typical power), so the
    cube-by-cube ratio is matched by a generator whose mean P(k) lies below the simulations'
    (what the validation compares); the batch means alone lose the pairing and made too few
    peaks.

    `pairing`: absolute compares each cube's log P(k) with its twin's. That term is least at
    the mean of log P, not at log of the mean P: in a shell of m independent modes of a
    Gaussian field the two differ by log m - digamma(m), more in the few-mode shells at low k
    and more again for the skewed P(k) of sub-volumes (docs/benchmarks.md "GAN"), and the
    generator then lacks that power against the simulations' mean. relative compares each
    cube's deviation from its batch's mean log P(k) with its twin's: the pairing still says
    which cube has more power (the parameters' response), and the level is left to the batch
    means' term, whose least value is at the mean P."""
    fake, real = _channel_power(fake_log), _channel_power(real_log)
    log_fake, log_real = torch.log(fake + 1e-12), torch.log(real + 1e-12)
    if pairing == "relative":
        log_fake = log_fake - log_fake.mean(1, keepdim=True)
        log_real = log_real - log_real.mean(1, keepdim=True)
    elif pairing != "absolute":
        raise ValueError(f"pairing={pairing!r} must be absolute or relative")
    per_cube = (log_fake - log_real).pow(2).mean()
    batch = (torch.log(fake.mean(1) + 1e-12) - torch.log(real.mean(1) + 1e-12)).pow(2).mean()
    return per_cube + batch


def one_point_loss(fake_log: torch.Tensor, real_log: torch.Tensor,
                   cells: tuple[int, ...] = (1,)) -> torch.Tensor:
    """Mean squared difference of each cube's sorted values (W2^2 of the one-point
    distributions of log1p(counts)), cubes paired by parameters, per channel, averaged over
    the cell sizes `cells` (in voxels; 1: single voxels; c > 1: log1p of the mean count in
    each c^3 cell, so every scale is weighed in the same units)."""
    terms = []
    for cell in cells:
        fake, real = fake_log, real_log
        if cell > 1:
            fake = torch.log1p(torch.nn.functional.avg_pool3d(torch.expm1(fake_log), cell))
            real = torch.log1p(torch.nn.functional.avg_pool3d(torch.expm1(real_log), cell))
        fake = torch.sort(fake.flatten(2), dim=2).values
        real = torch.sort(real.flatten(2), dim=2).values
        terms.append((fake - real).pow(2).mean())
    return torch.stack(terms).mean()


__all__ = ["shell_power", "spectrum_loss", "one_point_loss"]
