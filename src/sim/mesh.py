"""Mesh operations on torch tensors: wave numbers, cloud-in-cell paint/readout, PM forces,
power-spectrum estimate, particle-count histogram and sub-volume split.

Positions are in mesh-cell units, periodic on [0, n). Fourier fields use rfftn layout
(last axis halved), so every transform is real-to-complex.
"""

from __future__ import annotations

import functools
import math

import torch

from src.errors import SimConfigError


def wavenumbers(n: int, device, dtype=torch.float32, spacing: float = 1.0):
    """Angular wave numbers (kx, ky, kz) broadcastable to the rfftn shape [n, n, n//2+1].

    `spacing` is the cell size; 1 gives radians per cell, L/n gives h/Mpc.
    """
    k = torch.fft.fftfreq(n, d=spacing, device=device, dtype=dtype) * (2 * math.pi)
    kz = torch.fft.rfftfreq(n, d=spacing, device=device, dtype=dtype) * (2 * math.pi)
    return k.view(n, 1, 1), k.view(1, n, 1), kz.view(1, 1, -1)


def gradient_kernel(k: torch.Tensor, kind: str) -> torch.Tensor:
    """Real factor g(k) of the derivative i g(k), on a grid of unit spacing (k in rad/cell)."""
    if kind == "exact":
        return k
    if kind == "fd4":  # 4-point finite difference: gentler than exact k near Nyquist
        return (8 * torch.sin(k) - torch.sin(2 * k)) / 6
    raise SimConfigError(f"force.gradient={kind!r} is not one of 'exact', 'fd4'")


def cic_stencil(pos: torch.Tensor, n: int):
    """Flat mesh indices and weights of the 8 CIC corners of every particle: ([8, N], [8, N]).

    Computed once per force evaluation and shared by the paint and the readout (same
    positions); int32 indices when they fit halve the memory traffic of both.
    """
    itype = torch.int32 if n**3 < 2**31 else torch.int64
    base = torch.floor(pos)
    frac = pos - base
    i0 = base.to(itype).remainder_(n)
    i1 = i0 + 1
    i1[i1 == n] = 0
    stride = torch.tensor([n * n, n, 1], dtype=itype, device=pos.device)
    i0 *= stride
    i1 *= stride
    w1, w0 = frac, 1 - frac
    idx = torch.empty(8, pos.shape[0], dtype=itype, device=pos.device)
    wts = torch.empty(8, pos.shape[0], dtype=pos.dtype, device=pos.device)
    ax, wx = (i0[:, 0], i1[:, 0]), (w0[:, 0], w1[:, 0])
    ay, wy = (i0[:, 1], i1[:, 1]), (w0[:, 1], w1[:, 1])
    az, wz = (i0[:, 2], i1[:, 2]), (w0[:, 2], w1[:, 2])
    c = 0
    for a in (0, 1):
        for b in (0, 1):
            ixy = ax[a] + ay[b]
            wxy = wx[a] * wy[b]
            for d in (0, 1):
                torch.add(ixy, az[d], out=idx[c])
                torch.mul(wxy, wz[d], out=wts[c])
                c += 1
    return idx, wts


def cic_paint(pos: torch.Tensor, n: int, dtype=None, stencil=None) -> torch.Tensor:
    """Particle mass (1 each) deposited on an n^3 periodic mesh by cloud-in-cell."""
    idx, wts = stencil if stencil is not None else cic_stencil(pos, n)
    dtype = dtype or pos.dtype
    flat = torch.zeros(n**3, device=pos.device, dtype=dtype)
    # one index_add_ over all 8 corners is faster on CPU than eight small ones
    flat.index_add_(0, idx.view(-1), wts.view(-1).to(dtype))
    return flat.view(n, n, n)


def cic_readout(fields: torch.Tensor, pos: torch.Tensor, stencil=None) -> torch.Tensor:
    """Interpolate fields [C, n, n, n] to particles by cloud-in-cell -> [N, C]."""
    c, n = fields.shape[0], fields.shape[-1]
    idx, wts = stencil if stencil is not None else cic_stencil(pos, n)
    flat = fields.reshape(c, -1)
    out = torch.zeros(c, pos.shape[0], device=pos.device, dtype=fields.dtype)
    for corner in range(8):
        for ch in range(c):  # per-channel 1-D gathers beat one strided 2-D gather
            out[ch].addcmul_(flat[ch].index_select(0, idx[corner]), wts[corner])
    return out.T


def cic_compensation(n: int, device, dtype) -> torch.Tensor:
    """1 / W_CIC(k)^2 in rfftn layout: undoes the smoothing of a CIC paint."""
    kx, ky, kz = wavenumbers(n, device, dtype)

    def sinc(k):  # torch.sinc(x) = sin(pi x)/(pi x); the CIC window per axis is sinc(k/2pi)^2
        return torch.sinc(k / (2 * math.pi))

    return (sinc(kx) * sinc(ky) * sinc(kz)) ** -2


@functools.lru_cache(maxsize=2)  # small: on a GPU a 1024^3 kernel is 2 GiB
def _force_kernels(n: int, device: str, dtype: torch.dtype, gradient: str, compensate: bool):
    """Potential kernel 1/k^2 (rfftn layout) and i g_i(k) per axis, built once per mesh."""
    kx, ky, kz = wavenumbers(n, device, dtype)
    k2 = kx * kx + ky * ky + kz * kz
    k2[0, 0, 0] = 1.0
    inv = 1.0 / k2
    inv[0, 0, 0] = 0.0  # the mean density exerts no force
    if compensate:
        inv = inv * cic_compensation(n, device, dtype)
    grads = tuple(1j * gradient_kernel(k, gradient) for k in (kx, ky, kz))
    return inv, grads


def fd4_gradient(phi: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """12 x the 4-point central difference of a periodic field along each axis -> out [3, ...].

    Its Fourier symbol is 12 i (8 sin k - sin 2k) / 6 = 12 i g_fd4(k): the same operator as the
    spectral 'fd4' kernel, at the cost of a few array passes instead of two extra inverse FFTs.
    """
    n = phi.shape[-1]
    p = torch.nn.functional.pad(phi[None, None], (2, 2) * 3, mode="circular")[0, 0]
    core = slice(2, n + 2)
    for axis in range(3):
        def shifted(s, axis=axis):
            idx = [core, core, core]
            idx[axis] = slice(2 + s, n + 2 + s)
            return p[tuple(idx)]

        torch.sub(shifted(1), shifted(-1), out=out[axis])
        out[axis].mul_(8).sub_(shifted(2)).add_(shifted(-2))
    return out


def pm_forces(pos: torch.Tensor, n_mesh: int, mean_count: float, gradient: str,
              compensate: bool) -> torch.Tensor:
    """F = -grad inv_laplace(delta) at the particles, in mesh-cell units -> [N, 3].

    With x in cells this F equals D1 * Psi1 in linear theory, so dp/da = 1.5 Om F / (a^2 E).
    """
    stencil = cic_stencil(pos, n_mesh)
    rho = cic_paint(pos, n_mesh, stencil=stencil)
    inv, grads = _force_kernels(n_mesh, str(pos.device), pos.dtype, gradient, compensate)
    # F_k = i g(k) delta_k / k^2  (Psi = i k delta / k^2 for delta = -div Psi); the 1/mean
    # turns counts into 1 + delta, whose k=0 term the kernel drops
    pot = torch.fft.rfftn(rho)
    del rho
    pot *= inv
    shape = (n_mesh,) * 3
    comps = torch.empty(3, *shape, dtype=pos.dtype, device=pos.device)
    if gradient == "fd4":  # one inverse FFT, then the difference stencil in real space
        pot /= 12 * mean_count
        fd4_gradient(torch.fft.irfftn(pot, s=shape), comps)
    else:
        pot /= mean_count
        for i, g in enumerate(grads):
            torch.fft.irfftn(pot * g, s=shape, out=comps[i])
    del pot
    return cic_readout(comps, pos, stencil=stencil)


def power_spectrum(field: torch.Tensor, box_size: float, n_bins: int | None = None,
                   k_max: float | None = None):
    """Spherically averaged P(k) of a real overdensity field on an n^3 grid.

    Returns (k_centre [h/Mpc], P [(Mpc/h)^3], n_modes) with linear bins of width k_f;
    modes are counted with their rfft multiplicity so the estimate equals a full-FFT one.
    """
    n = field.shape[-1]
    delta_k = torch.fft.rfftn(field.to(torch.float64))
    volume = box_size**3
    power = delta_k.abs() ** 2 * volume / n**6
    kx, ky, kz = wavenumbers(n, field.device, torch.float64, spacing=box_size / n)
    kmag = torch.sqrt(kx * kx + ky * ky + kz * kz)
    # rfft stores half the modes: planes 0 and Nyquist once, the others stand for two
    weight = torch.full((n // 2 + 1,), 2.0, dtype=torch.float64, device=field.device)
    weight[0] = 1.0
    if n % 2 == 0:
        weight[-1] = 1.0
    weight = weight.expand_as(kmag)
    k_f = 2 * math.pi / box_size
    k_max = k_max if k_max is not None else k_f * (n // 2)
    n_bins = n_bins or int(round(k_max / k_f))
    edges = torch.linspace(0.5 * k_f, k_max + 0.5 * k_f, n_bins + 1, dtype=torch.float64,
                           device=field.device)
    which = torch.bucketize(kmag.reshape(-1), edges) - 1
    keep = (which >= 0) & (which < n_bins)
    which, w = which[keep], weight.reshape(-1)[keep]
    count = torch.zeros(n_bins, dtype=torch.float64, device=field.device)
    count.index_add_(0, which, w)
    psum = torch.zeros_like(count).index_add_(0, which, w * power.reshape(-1)[keep])
    ksum = torch.zeros_like(count).index_add_(0, which, w * kmag.reshape(-1)[keep])
    good = count > 0
    return (ksum[good] / count[good]).cpu(), (psum[good] / count[good]).cpu(), count[good].cpu()


def histogram(pos: torch.Tensor, n_mesh: int, grid: int) -> torch.Tensor:
    """Particle counts on a grid^3 mesh (nearest grid point; integer counts, exact total)."""
    cell = torch.floor(pos * (grid / n_mesh)).long().remainder_(grid)
    flat = (cell[:, 0] * grid + cell[:, 1]) * grid + cell[:, 2]
    counts = torch.bincount(flat, minlength=grid**3)
    return counts.view(grid, grid, grid)


def cube_root(n_sub: int) -> int:
    """Sub-volumes per side; raises unless n_sub is a cube (1, 8, 27, ...)."""
    m = round(n_sub ** (1 / 3)) if n_sub > 0 else 0
    if n_sub < 1 or m**3 != n_sub:
        raise SimConfigError(f"sim.n_sub={n_sub} is not a cube (1, 8, 27, 64, ...)")
    return m


def split_subvolumes(volume: torch.Tensor, n_sub: int) -> torch.Tensor:
    """[..., d, d, d] -> [n_sub, ..., d/m, d/m, d/m], sub-volumes in (i, j, k) row-major order."""
    m = cube_root(n_sub)
    d = volume.shape[-1]
    if d % m:
        raise SimConfigError(f"sim.grid={d} is not divisible by n_sub^(1/3)={m}")
    s = d // m
    lead = volume.shape[:-3]
    v = volume.reshape(*lead, m, s, m, s, m, s)
    nl = len(lead)
    perm = [nl, nl + 2, nl + 4, *range(nl), nl + 1, nl + 3, nl + 5]
    return v.permute(*perm).reshape(n_sub, *lead, s, s, s)
