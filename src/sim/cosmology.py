"""Flat LambdaCDM background, Eisenstein & Hu (1998) linear P(k), and growth D1, D2, f.

Units: k in h/Mpc, lengths in Mpc/h, P(k) in (Mpc/h)^3, time as the scale factor a,
Hubble rate in units of H0 (E(a) = H/H0). Growth tables are host-side float64 scalars
(they only feed step factors); P(k) is evaluated on torch tensors on any device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from src.errors import SimConfigError


@dataclass(frozen=True)
class Cosmology:
    omega_m: float
    sigma_8: float
    n_s: float
    omega_b: float
    h: float
    t_cmb: float

    def __post_init__(self):
        if not 0.0 < self.omega_m <= 1.0:
            raise SimConfigError(f"Omega_M={self.omega_m} must lie in (0, 1] (flat LCDM)")
        if not 0.0 <= self.omega_b < self.omega_m:
            raise SimConfigError(f"omega_b={self.omega_b} must lie in [0, Omega_M={self.omega_m})")
        if self.sigma_8 <= 0 or self.h <= 0 or self.t_cmb <= 0:
            raise SimConfigError(
                f"sigma_8={self.sigma_8}, h={self.h}, t_cmb={self.t_cmb} must all be > 0"
            )

    @property
    def omega_l(self) -> float:
        return 1.0 - self.omega_m

    def e_of_a(self, a):
        """H(a)/H0 for flat LCDM (radiation neglected: the runs start at z <~ 100)."""
        return np.sqrt(self.omega_m * np.asarray(a, dtype=np.float64) ** -3 + self.omega_l)


# ---------------------------------------------------------------- transfer function
# Equation numbers refer to Eisenstein & Hu 1998, ApJ 496, 605; wm = Omega_M h^2 and
# wb = Omega_b h^2, k in 1/Mpc inside the fit.
@dataclass(frozen=True)
class _EH98Scales:
    """The fit's scales that depend on the cosmology alone (eq. 2-7), in Mpc and 1/Mpc."""

    z_eq: float
    k_eq: float
    z_d: float
    r_d: float
    s: float
    k_silk: float


def _eh98_scales(wm: float, wb: float, theta: float) -> _EH98Scales:
    z_eq = 2.50e4 * wm * theta**-4  # eq. 2
    k_eq = 7.46e-2 * wm * theta**-2  # eq. 3, 1/Mpc
    b1 = 0.313 * wm**-0.419 * (1 + 0.607 * wm**0.674)  # eq. 4
    b2 = 0.238 * wm**0.223
    z_d = 1291 * wm**0.251 / (1 + 0.659 * wm**0.828) * (1 + b1 * wb**b2)

    def r_ratio(z):  # eq. 5: baryon-to-photon momentum density ratio
        return 31.5 * wb * theta**-4 * (z / 1e3) ** -1

    r_d, r_eq = r_ratio(z_d), r_ratio(z_eq)
    s = (2 / (3 * k_eq)) * math.sqrt(6 / r_eq) * math.log(  # eq. 6, sound horizon in Mpc
        (math.sqrt(1 + r_d) + math.sqrt(r_d + r_eq)) / (1 + math.sqrt(r_eq))
    )
    k_silk = 1.6 * wb**0.52 * wm**0.73 * (1 + (10.4 * wm) ** -0.95)  # eq. 7
    return _EH98Scales(z_eq=z_eq, k_eq=k_eq, z_d=z_d, r_d=r_d, s=s, k_silk=k_silk)


def _t0(q: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:  # eq. 19-20
    lg = torch.log(math.e + 1.8 * beta * q)
    c = 14.2 / alpha + 386.0 / (1 + 69.9 * q**1.08)
    return lg / (lg + c * q * q)


def _cdm_transfer(q: torch.Tensor, ks: torch.Tensor, wm: float, fb: float) -> torch.Tensor:
    """T_c, the CDM part (eq. 11-12, 17-18)."""
    fc = 1.0 - fb
    a1 = (46.9 * wm) ** 0.670 * (1 + (32.1 * wm) ** -0.532)  # eq. 11
    a2 = (12.0 * wm) ** 0.424 * (1 + (45.0 * wm) ** -0.582)
    alpha_c = a1**-fb * a2 ** (-(fb**3))
    bb1 = 0.944 / (1 + (458 * wm) ** -0.708)  # eq. 12
    bb2 = (0.395 * wm) ** -0.0266
    beta_c = 1.0 / (1 + bb1 * (fc**bb2 - 1))
    f = 1.0 / (1 + (ks / 5.4) ** 4)  # eq. 18
    return f * _t0(q, 1.0, beta_c) + (1 - f) * _t0(q, alpha_c, beta_c)  # eq. 17


def _baryon_transfer(kk: torch.Tensor, q: torch.Tensor, ks: torch.Tensor, wm: float, fb: float,
                     sc: _EH98Scales) -> torch.Tensor:
    """T_b, the baryon part with its acoustic wiggles and Silk damping (eq. 14-15, 21-24)."""
    y = (1 + sc.z_eq) / (1 + sc.z_d)  # eq. 15
    sq = math.sqrt(1 + y)
    g_y = y * (-6 * sq + (2 + 3 * y) * math.log((sq + 1) / (sq - 1)))
    alpha_b = 2.07 * sc.k_eq * sc.s * (1 + sc.r_d) ** -0.75 * g_y  # eq. 14
    beta_node = 8.41 * wm**0.435  # eq. 23
    beta_b = 0.5 + fb + (3 - 2 * fb) * math.sqrt((17.2 * wm) ** 2 + 1)  # eq. 24
    s_tilde = sc.s / (1 + (beta_node / ks) ** 3) ** (1.0 / 3.0)  # eq. 22
    x = kk * s_tilde
    j0 = torch.where(x.abs() < 1e-6, 1 - x * x / 6, torch.sin(x) / x)
    return (
        _t0(q, 1.0, 1.0) / (1 + (ks / 5.2) ** 2)
        + alpha_b / (1 + (beta_b / ks) ** 3) * torch.exp(-((kk / sc.k_silk) ** 1.4))
    ) * j0  # eq. 21


def eisenstein_hu_transfer(k: torch.Tensor, cosmo: Cosmology) -> torch.Tensor:
    """Eisenstein & Hu (1998) CDM+baryon transfer function (with acoustic wiggles).

    `k` in h/Mpc (any shape, any device); computed in float64, returned in k's dtype.
    """
    kd = k.to(torch.float64)
    h, om = cosmo.h, cosmo.omega_m
    wm = om * h * h
    wb = cosmo.omega_b * h * h
    fb = cosmo.omega_b / om
    fc = 1.0 - fb
    sc = _eh98_scales(wm, wb, cosmo.t_cmb / 2.7)

    kk = (kd * h).clamp_min(1e-12)  # 1/Mpc; clamp keeps k=0 finite (T -> 1 there)
    q = kk / (13.41 * sc.k_eq)  # eq. 10
    ks = kk * sc.s
    t = fb * _baryon_transfer(kk, q, ks, wm, fb, sc) + fc * _cdm_transfer(q, ks, wm, fb)  # eq. 16
    return t.to(k.dtype)


def tophat_window(x: torch.Tensor) -> torch.Tensor:
    """Fourier transform of a spherical top-hat, W(x) = 3 (sin x - x cos x) / x^3."""
    small = x.abs() < 1e-3  # series avoids catastrophic cancellation near 0
    xs = torch.where(small, torch.ones_like(x), x)
    w = 3 * (torch.sin(xs) - xs * torch.cos(xs)) / xs**3
    return torch.where(small, 1 - x * x / 10, w)


def sigma_r(power_fn, radius: float, k_min: float, k_max: float, n_k: int) -> float:
    """RMS of the field smoothed by a top-hat of `radius` Mpc/h (Simpson rule in ln k)."""
    if n_k % 2 == 0:
        n_k += 1  # Simpson needs an odd number of nodes
    lnk = torch.linspace(math.log(k_min), math.log(k_max), n_k, dtype=torch.float64)
    k = torch.exp(lnk)
    integrand = k**3 * power_fn(k) * tophat_window(k * radius) ** 2 / (2 * math.pi**2)
    w = torch.ones(n_k, dtype=torch.float64)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    dlnk = (lnk[-1] - lnk[0]) / (n_k - 1)
    return float(torch.sqrt((w * integrand).sum() * dlnk / 3.0))


class LinearPower:
    """P(k) = A k^n_s T(k)^2 at z = 0 with A chosen so that sigma(8 Mpc/h) = sigma_8."""

    def __init__(self, cosmo: Cosmology, numerics: Mapping):
        self.cosmo = cosmo
        self._amp = 1.0
        self._quad = (float(numerics["k_min"]), float(numerics["k_max"]), int(numerics["n_k"]))
        self.r8 = float(numerics["sigma_radius"])
        s = sigma_r(self, self.r8, *self._quad)
        self._amp = (cosmo.sigma_8 / s) ** 2

    def __call__(self, k: torch.Tensor) -> torch.Tensor:
        kd = k.to(torch.float64)
        t = eisenstein_hu_transfer(kd, self.cosmo)
        p = self._amp * kd.clamp_min(0) ** self.cosmo.n_s * t * t
        return p.to(k.dtype)

    def sigma(self, radius: float) -> float:
        return sigma_r(self, radius, *self._quad)


# ---------------------------------------------------------------- growth
class Growth:
    """D1, D2 (normalised D1(a=1) = 1, D2 -> -3/7 D1^2 early) and f1, f2 from their ODEs.

    ODEs in x = ln a with E(a) flat LCDM:
      D1'' + (2 + dlnE/dlna) D1' = 1.5 Om(a) D1
      D2'' + (2 + dlnE/dlna) D2' = 1.5 Om(a) (D2 - D1^2)
    started in matter domination (D1 = a, D2 = -3/7 a^2) and integrated with RK4.
    """

    def __init__(self, cosmo: Cosmology, numerics: Mapping):
        self.cosmo = cosmo
        a_min = float(numerics["a_min"])
        n = int(numerics["n_steps"])
        if not 0 < a_min < 1 or n < 16:
            raise SimConfigError(f"growth numerics a_min={a_min}, n_steps={n} are unusable")
        om, ol = cosmo.omega_m, cosmo.omega_l

        def rhs(x, y):
            a3 = math.exp(-3 * x)
            e2 = om * a3 + ol
            om_a = om * a3 / e2
            dlne = -1.5 * om_a
            d1, v1, d2, v2 = y
            return (
                v1,
                -(2 + dlne) * v1 + 1.5 * om_a * d1,
                v2,
                -(2 + dlne) * v2 + 1.5 * om_a * (d2 - d1 * d1),
            )

        xs = np.linspace(math.log(a_min), 0.0, n + 1)
        hstep = xs[1] - xs[0]
        y = (a_min, a_min, -3 / 7 * a_min**2, -6 / 7 * a_min**2)
        table = np.empty((n + 1, 4))
        table[0] = y
        for i in range(n):
            x = xs[i]
            k1 = rhs(x, y)
            k2 = rhs(x + hstep / 2, tuple(v + hstep / 2 * d for v, d in zip(y, k1, strict=True)))
            k3 = rhs(x + hstep / 2, tuple(v + hstep / 2 * d for v, d in zip(y, k2, strict=True)))
            k4 = rhs(x + hstep, tuple(v + hstep * d for v, d in zip(y, k3, strict=True)))
            y = tuple(
                v + hstep / 6 * (a + 2 * b + 2 * c + d)
                for v, a, b, c, d in zip(y, k1, k2, k3, k4, strict=True)
            )
            table[i + 1] = y
        d1_today = table[-1, 0]
        self._lna = xs
        self._h = hstep
        self._d1 = table[:, 0] / d1_today
        self._v1 = table[:, 1] / d1_today  # dD1/dlna, for Hermite interpolation
        self._d2 = table[:, 2] / d1_today**2
        self._v2 = table[:, 3] / d1_today**2

    def _locate(self, a):
        a = np.asarray(a, dtype=np.float64)
        lna = np.log(a)
        if np.any(lna < self._lna[0] - 1e-12) or np.any(lna > 1e-12):
            raise SimConfigError(
                f"scale factor {a} outside the growth table [{math.exp(self._lna[0])}, 1]"
            )
        i = np.clip(np.searchsorted(self._lna, lna) - 1, 0, len(self._lna) - 2)
        return i, (lna - self._lna[i]) / self._h

    def _hermite(self, a, y, dy):
        """Cubic Hermite in ln a from values and exact derivatives: O(h^4) accurate."""
        i, t = self._locate(a)
        t2, t3 = t * t, t * t * t
        h = self._h
        return ((2 * t3 - 3 * t2 + 1) * y[i] + (t3 - 2 * t2 + t) * h * dy[i]
                + (-2 * t3 + 3 * t2) * y[i + 1] + (t3 - t2) * h * dy[i + 1])

    def _dhermite(self, a, y, dy):
        i, t = self._locate(a)
        t2 = t * t
        h = self._h
        return ((6 * t2 - 6 * t) * y[i] / h + (3 * t2 - 4 * t + 1) * dy[i]
                + (-6 * t2 + 6 * t) * y[i + 1] / h + (3 * t2 - 2 * t) * dy[i + 1])

    def d1(self, a):
        return self._hermite(a, self._d1, self._v1)

    def d2(self, a):
        return self._hermite(a, self._d2, self._v2)

    def f1(self, a):
        return self._dhermite(a, self._d1, self._v1) / self.d1(a)

    def f2(self, a):
        return self._dhermite(a, self._d2, self._v2) / self.d2(a)

    def gp(self, a):
        """a^3 E dD1/da = a^2 E f1 D1: the momentum that linear theory assigns per unit Psi1."""
        return a**2 * self.cosmo.e_of_a(a) * self.f1(a) * self.d1(a)

    def gp2(self, a):
        return a**2 * self.cosmo.e_of_a(a) * self.f2(a) * self.d2(a)


def cosmology_from(params: Mapping, fixed: Mapping) -> Cosmology:
    """Build a Cosmology from sampled (Omega_M, sigma_8, n_s) and the fixed config values."""
    return Cosmology(
        omega_m=float(params["Omega_M"]),
        sigma_8=float(params["sigma_8"]),
        n_s=float(params["n_s"]),
        omega_b=float(fixed["omega_b"]),
        h=float(fixed["h"]),
        t_cmb=float(fixed["t_cmb"]),
    )
