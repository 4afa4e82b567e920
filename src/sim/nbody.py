"""Particle-mesh N-body evolution (kick-drift-kick with FastPM factors) from 2LPT initial
conditions, snapshot histograms and sub-volume split: one simulation, config in, array out.

State: positions x in force-mesh cells, momenta p = a^2 dx/dt (t in 1/H0). Equations
dx/da = p / (a^3 E), dp/da = 1.5 Om F / (a^2 E) with F = -grad inv_lap(delta).
FastPM (Feng et al. 2016) replaces the naive step factors by ratios of growth functions
so that the Zel'dovich (linear) solution is followed exactly whatever the step size:
  drift a_i->a_f with p(a_c):  dx = p * (D1(a_f) - D1(a_i)) / Gp(a_c),   Gp = a^3 E dD1/da
  kick  a_i->a_f with F(a_c):  dp = F * (Gp(a_f) - Gp(a_i)) / D1(a_c)
(in linear theory F = D1 Psi1 and p = Gp Psi1).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from src.errors import SimConfigError
from src.sim.cosmology import Growth, LinearPower, cosmology_from
from src.sim.initial import lattice, linear_delta_k, lpt_displacements, white_noise
from src.sim.mesh import cube_root, histogram, pm_forces, split_subvolumes
from src.util.devices import resolve_device

DTYPES = ("float32", "float64")  # torch dtypes the particles and meshes may use
_GRADIENTS = ("fd4", "exact")


@dataclass(frozen=True)
class SimSpec:
    """A validated simulation configuration (everything but the sampled parameters)."""

    box_size: float
    n_particles: int
    n_mesh: int
    n_steps: int
    z_init: float
    redshifts: tuple
    grid: int
    n_sub: int
    lpt_order: int
    device: str
    dtype: str
    gradient: str
    cic_compensation: bool
    fixed: Mapping
    power_numerics: Mapping
    growth_numerics: Mapping

    @classmethod
    def from_config(cls, cfg: Mapping) -> SimSpec:
        def get(key):
            if key not in cfg or cfg[key] is None:
                raise SimConfigError(f"sim.{key} is missing from the sim config")
            return cfg[key]

        box = float(get("box_size"))
        if not box > 0:
            raise SimConfigError(f"sim.box_size={box} must be > 0 (Mpc/h)")
        n_p = get("n_particles")
        if not isinstance(n_p, int) or n_p < 4 or n_p % 2:
            raise SimConfigError(f"sim.n_particles={n_p} must be an even integer >= 4 (per side)")
        factor = float(get("mesh_factor"))
        n_mesh = n_p * factor
        if factor < 1 or n_mesh != int(n_mesh) or int(n_mesh) % 2:
            raise SimConfigError(
                f"sim.mesh_factor={factor}: the force mesh n_particles*mesh_factor={n_mesh} "
                "must be an even integer with mesh_factor >= 1"
            )
        steps = get("n_steps")
        if not isinstance(steps, int) or steps < 1:
            raise SimConfigError(f"sim.n_steps={steps} must be a positive integer")
        z_init = float(get("z_init"))
        zs = tuple(float(z) for z in get("redshifts"))
        if not zs:
            raise SimConfigError("sim.redshifts is empty: give at least one snapshot redshift")
        if len(set(zs)) != len(zs):
            raise SimConfigError(f"sim.redshifts={list(zs)} has duplicates")
        if min(zs) < 0 or max(zs) > z_init:
            raise SimConfigError(f"sim.redshifts={list(zs)} must lie in [0, z_init={z_init}]")
        grid = get("grid")
        if not isinstance(grid, int) or grid < 1:
            raise SimConfigError(f"sim.grid={grid} must be a positive integer (voxels per side)")
        n_sub = get("n_sub")
        m = cube_root(int(n_sub))
        if grid % m:
            raise SimConfigError(f"sim.grid={grid} is not divisible by n_sub^(1/3)={m}")
        order = get("lpt_order")
        if order not in (1, 2):
            raise SimConfigError(f"sim.lpt_order={order} must be 1 or 2")
        dtype = str(get("dtype"))
        if dtype not in DTYPES:
            raise SimConfigError(f"sim.dtype={dtype!r} is not one of {list(DTYPES)}")
        force = get("force")
        if force.get("gradient") not in _GRADIENTS:
            raise SimConfigError(f"sim.force.gradient={force.get('gradient')!r} not in {_GRADIENTS}")
        numerics = get("numerics")
        return cls(
            box_size=box, n_particles=n_p, n_mesh=int(n_mesh), n_steps=steps, z_init=z_init,
            redshifts=zs, grid=grid, n_sub=int(n_sub), lpt_order=order,
            device=str(get("device")), dtype=dtype, gradient=str(force["gradient"]),
            cic_compensation=bool(force.get("cic_compensation", False)),
            fixed=dict(get("cosmology")), power_numerics=dict(numerics["power"]),
            growth_numerics=dict(numerics["growth"]),
        )

    @property
    def sample_shape(self) -> list:
        s = self.grid // cube_root(self.n_sub)
        return [len(self.redshifts), s, s, s]

    def time_grid(self) -> np.ndarray:
        """Scale factors of the step boundaries: linear in a, plus every snapshot time."""
        a_init = 1.0 / (1.0 + self.z_init)
        a = np.linspace(a_init, 1.0, self.n_steps + 1)
        snaps = 1.0 / (1.0 + np.asarray(self.redshifts))
        return np.unique(np.round(np.concatenate([a, snaps]), 12))


class Simulation:
    """One N-body run for given (Omega_M, sigma_8, n_s) and seed."""

    def __init__(self, spec: SimSpec, params: Mapping, seed: int, local_rank: int = 0):
        self.spec = spec
        self.params = dict(params)
        self.seed = int(seed)
        self.device = resolve_device(spec.device, "sim.device", local_rank, error=SimConfigError)
        self.dtype = getattr(torch, spec.dtype)
        self.cosmo = cosmology_from(params, spec.fixed)
        self.power = LinearPower(self.cosmo, spec.power_numerics)
        self.growth = Growth(self.cosmo, spec.growth_numerics)
        self.timings: dict = {}
        self.steps_taken = 0

    # -- initial conditions
    def initial_field_k(self) -> torch.Tensor:
        s = self.spec
        noise = white_noise(s.n_particles, self.seed, self.device, self.dtype)
        return linear_delta_k(noise, self.power, s.box_size)

    def initial_state(self, a_init: float):
        """2LPT positions (mesh cells, wrapped) and FastPM momenta at a_init."""
        s = self.spec
        delta_k = self.initial_field_k()
        psi1, psi2 = lpt_displacements(delta_k, s.box_size, s.lpt_order)
        del delta_k
        to_cells = s.n_mesh / s.box_size
        g = self.growth
        disp = psi1.reshape(3, -1).T * (float(g.d1(a_init)) * to_cells)
        mom = psi1.reshape(3, -1).T * (float(g.gp(a_init)) * to_cells)
        if psi2 is not None:
            psi2 = psi2.reshape(3, -1).T
            disp += psi2 * (float(g.d2(a_init)) * to_cells)
            mom += psi2 * (float(g.gp2(a_init)) * to_cells)
        q = lattice(s.n_particles, s.n_mesh / s.n_particles, self.device, self.dtype)
        # half a cell off the mesh nodes: on a node CIC responds to a small displacement
        # with |psi| (a one-sided difference, ~10% force error at the first steps)
        q += 0.5
        pos = (q + disp).remainder_(s.n_mesh)
        return pos, mom

    # -- forces and steps
    def force(self, pos: torch.Tensor) -> torch.Tensor:
        s = self.spec
        mean = (s.n_particles / s.n_mesh) ** 3
        return pm_forces(pos, s.n_mesh, mean, s.gradient, s.cic_compensation)

    def evolve(self, on_snapshot=None):
        """Run from z_init to the last snapshot; calls on_snapshot(z, pos) at each snapshot.

        Returns (pos, mom) at the final time. KDK: one force evaluation per step.
        """
        s, g = self.spec, self.growth
        a_grid = s.time_grid()
        a_snap = {round(1.0 / (1.0 + z), 12): z for z in s.redshifts}
        a_end = max(a_snap)  # the run stops at the latest snapshot
        pos, mom = self.initial_state(float(a_grid[0]))
        if round(float(a_grid[0]), 12) in a_snap and on_snapshot:
            on_snapshot(a_snap[round(float(a_grid[0]), 12)], pos)
        # F is D1 * Psi1 in linear theory; the 1.5 Om factor is inside dGp/da
        force = self.force(pos)
        steps = 0
        for a0, a1 in zip(a_grid[:-1], a_grid[1:], strict=True):
            if a0 >= a_end:
                break
            ah = 0.5 * (a0 + a1)
            mom += force * float((g.gp(ah) - g.gp(a0)) / g.d1(a0))
            pos += mom * float((g.d1(a1) - g.d1(a0)) / g.gp(ah))
            pos.remainder_(s.n_mesh)
            force = self.force(pos)
            mom += force * float((g.gp(a1) - g.gp(ah)) / g.d1(a1))
            steps += 1
            key = round(float(a1), 12)
            if key in a_snap and on_snapshot:
                on_snapshot(a_snap[key], pos)
        self.steps_taken = steps
        return pos, mom

    def run(self) -> np.ndarray:
        """Full pipeline -> float32 voxel counts [n_sub, C, d/m, d/m, d/m] (C = redshifts)."""
        s = self.spec
        t0 = time.perf_counter()
        hists: dict = {}

        def keep(z, pos):
            hists[z] = histogram(pos, s.n_mesh, s.grid)

        self.evolve(keep)
        t1 = time.perf_counter()
        volume = torch.stack([hists[z] for z in s.redshifts]).to(torch.float32)
        x = split_subvolumes(volume, s.n_sub).cpu().numpy()
        t2 = time.perf_counter()
        self.timings = {"evolve_s": t1 - t0, "histogram_s": t2 - t1}
        return x


def particle_steps(spec: SimSpec) -> int:
    """Particle updates of one run (particles x steps), the benchmark's work unit."""
    return spec.n_particles**3 * (len(spec.time_grid()) - 1)


def describe(spec: SimSpec) -> str:
    return (f"{spec.n_particles}^3 particles, {spec.n_mesh}^3 force mesh, "
            f"{spec.box_size:g} Mpc/h, {spec.n_steps} steps, z={list(spec.redshifts)}, "
            f"{spec.grid}^3 voxels -> {spec.n_sub} x {spec.grid // cube_root(spec.n_sub)}^3")


__all__ = ["SimSpec", "Simulation", "particle_steps", "describe"]
