"""Seeded Gaussian random field and Lagrangian perturbation theory (1LPT/2LPT) displacements.

Fields live on the particle lattice (n^3 for n^3 particles) of a box of side L [Mpc/h].
Convention (Scoccimarro 1998): x = q + D1 Psi1 + D2 Psi2 with delta = -div Psi1 and
D2 ~ -3/7 D1^2 < 0, Psi1 = -grad phi1, Psi2 = +grad phi2, lap phi1 = delta,
lap phi2 = sum_{i<j} (phi1_ii phi1_jj - phi1_ij^2).
"""

from __future__ import annotations

import torch

from src.sim.mesh import wavenumbers


def white_noise(n: int, seed: int, device, dtype) -> torch.Tensor:
    """Unit-variance Gaussian noise drawn on the CPU generator so every device gets the same
    numbers for the same seed (CUDA generators draw different streams)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return torch.randn((n, n, n), generator=gen, dtype=torch.float32).to(device=device,
                                                                         dtype=dtype)


def linear_delta_k(noise: torch.Tensor, power_fn, box_size: float) -> torch.Tensor:
    """rfftn of the z=0 linear density field with power spectrum power_fn (h/Mpc -> (Mpc/h)^3).

    FFT convention: <|delta_fft|^2> = P(k) n^6 / V, and <|fft(noise)|^2> = n^3.
    The Nyquist planes are zeroed: their derivative has no consistent real counterpart.
    """
    n = noise.shape[-1]
    kx, ky, kz = wavenumbers(n, noise.device, torch.float64, spacing=box_size / n)
    kmag = torch.sqrt(kx * kx + ky * ky + kz * kz)
    amp = torch.sqrt(power_fn(kmag) * n**3 / box_size**3)
    amp[0, 0, 0] = 0.0  # the mean density is fixed, not random
    delta_k = torch.fft.rfftn(noise) * amp.to(noise.dtype)
    if n % 2 == 0:
        delta_k[n // 2] = 0
        delta_k[:, n // 2] = 0
        delta_k[..., n // 2] = 0
    return delta_k


def _inv_k2(kx, ky, kz):
    k2 = kx * kx + ky * ky + kz * kz
    k2[0, 0, 0] = 1.0
    inv = 1.0 / k2
    inv[0, 0, 0] = 0.0
    return inv


def lpt_displacements(delta_k: torch.Tensor, box_size: float, order: int):
    """Psi1 (and Psi2 for order 2) on the lattice in Mpc/h, each [3, n, n, n]."""
    n = delta_k.shape[0]
    real = delta_k.real.dtype
    shape = (n, n, n)
    kx, ky, kz = wavenumbers(n, delta_k.device, real, spacing=box_size / n)
    ks = (kx, ky, kz)
    inv = _inv_k2(kx, ky, kz)
    phi_term = delta_k * inv  # = -phi1_k
    psi1 = torch.stack([torch.fft.irfftn(1j * k * phi_term, s=shape) for k in ks])
    if order == 1:
        return psi1, None
    # phi1_ij = -k_i k_j phi1_k = k_i k_j delta_k / k^2
    diag = [torch.fft.irfftn(k * k * phi_term, s=shape) for k in ks]
    source = diag[0] * diag[1] + diag[0] * diag[2] + diag[1] * diag[2]
    del diag
    for i, j in ((0, 1), (0, 2), (1, 2)):
        source -= torch.fft.irfftn(ks[i] * ks[j] * phi_term, s=shape) ** 2
    src_k = torch.fft.rfftn(source)
    del source
    # phi2_k = -src_k / k^2 ; Psi2 = +grad phi2 -> i k phi2_k = -i k src_k / k^2
    psi2 = torch.stack([torch.fft.irfftn(-1j * k * src_k * inv, s=shape) for k in ks])
    return psi1, psi2


def lattice(n: int, spacing: float, device, dtype) -> torch.Tensor:
    """Unperturbed particle positions q on the n^3 lattice, [n^3, 3], in the units of spacing."""
    r = torch.arange(n, device=device, dtype=dtype) * spacing
    gx, gy, gz = torch.meshgrid(r, r, r, indexing="ij")
    return torch.stack([gx, gy, gz], dim=-1).reshape(-1, 3)
