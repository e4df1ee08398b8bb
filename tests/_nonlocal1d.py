"""1D reference solver of the nonlocal PDE (1.5), giving ``grad g^eps`` for the process (1.7).

A test helper (``tests/test_particles_coupling.py``), not part of the library: the drift of the
nonlinear process in the tests. The pressure is ``params.law`` (:mod:`fem_crossdiff.laws`).

    d_t rho_k = d_x(b_k rho_k d_x g) + sigma d_xx rho_k,
    g = V^eps * (sum_l a_l V^eps * rho_l)^(m-1),

on a large interval ``[-L, L]`` (no-flux ends, far from the mass) by finite volumes on cells of
width ``h = eps / cells_per_eps``. Both convolutions are discrete sums over cell centres with the
kernel sampled at the exact offsets (trapezoidal rule, spectrally accurate for the smooth compact
kernel); ``d_x g`` is evaluated directly at the faces with ``V'`` sampled at half-integer offsets.
The face flux is ``v rho_face - sigma (rho_{i+1} - rho_i) / h`` with ``v = -b_k d_x g`` and the
central ``rho_face`` where the cell Peclet number ``|v| h / sigma <= 2`` (second order and
positive there), upwind elsewhere. Time stepping is Heun's method (SSP-RK2: a convex combination
of positive Euler stages) with ``dt = cfl h / (max|v| + 2 sigma / h)``. The scheme conserves the
mass of every species exactly (telescoping fluxes) and keeps it nonnegative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fem_crossdiff.mollifiers import get_mollifier
from fem_crossdiff.particles.params import ParticleParams
from fem_crossdiff.particles.sampling import InverseCDF1D, check_density_values

__all__ = ["NonlocalFV1D", "NonlocalSolution1D"]


@dataclass(frozen=True)
class NonlocalSolution1D:
    """Snapshots of the 1D nonlocal solution.

    Attributes:
        times: snapshot times, increasing.
        centers: cell centres ``(M,)``.
        rho: densities ``(len(times), n_species, M)``.
        dg: ``d_x g^eps`` at the centres, ``(len(times), M)``.
    """

    times: np.ndarray
    centers: np.ndarray
    rho: np.ndarray
    dg: np.ndarray

    def grad_g(self, t: float, y: np.ndarray) -> np.ndarray:
        """``grad g^eps(t, y)`` for ``y`` of shape ``(P, 1)``: linear in space, linear in time."""
        y = np.asarray(y, dtype=float)
        j = int(np.searchsorted(self.times, t - 1e-12 * max(1.0, abs(t)), side="left"))
        j = min(max(j, 0), self.times.size - 1)
        if abs(self.times[j] - t) <= 1e-12 * max(1.0, abs(t)) or j == 0:
            field = self.dg[j]
        else:
            t0, t1 = self.times[j - 1], self.times[j]
            lam = (t - t0) / (t1 - t0)
            field = (1.0 - lam) * self.dg[j - 1] + lam * self.dg[j]
        return np.interp(y[..., 0], self.centers, field, left=0.0, right=0.0)[..., None]

    def mass(self) -> np.ndarray:
        """Mass of each species at each snapshot, ``(len(times), n_species)``."""
        h = self.centers[1] - self.centers[0]
        return self.rho.sum(axis=-1) * h


@dataclass(frozen=True)
class NonlocalFV1D:
    """Finite-volume solver of (1.5) in 1D (module docstring).

    Attributes:
        params: model parameters (``n_particles`` is not used).
        half_width: the interval is ``[-half_width, half_width]``.
        cells_per_eps: cells per ``eps``.
        cfl: safety factor of the explicit time step (<= 0.5).
    """

    params: ParticleParams
    half_width: float
    cells_per_eps: int = 40
    cfl: float = 0.4

    def __post_init__(self):
        if not (math.isfinite(self.half_width) and self.half_width > 2 * self.params.eps):
            raise ValueError(f"half_width must exceed 2 eps, got {self.half_width!r}")
        if self.cells_per_eps < 4:
            raise ValueError(f"cells_per_eps must be >= 4, got {self.cells_per_eps!r}")
        if not 0 < self.cfl <= 0.5:
            raise ValueError(f"cfl must be in (0, 0.5], got {self.cfl!r}")

    def grid(self) -> tuple[np.ndarray, float]:
        """Cell centres and width."""
        eps = self.params.eps
        h = eps / self.cells_per_eps
        n = 2 * int(math.ceil(self.half_width / h))
        return -0.5 * n * h + h * (np.arange(n) + 0.5), h

    def _kernels(self, h):
        eps = self.params.eps
        kern = get_mollifier(self.params.kernel)
        r = int(math.ceil(eps / h))
        k = np.arange(-r, r + 1) * h
        kc = h * kern.value(k[:, None], eps)
        kcg = h * kern.gradient(k[:, None], eps)[:, 0]
        kf_off = (np.arange(-r - 1, r + 1) + 0.5) * h
        kf = h * kern.gradient(kf_off[:, None], eps)[:, 0]
        return r, kc, kcg, kf

    def _pressure(self, rho, r, kc):
        n = rho.shape[1]
        s = sum(a * np.convolve(rho[k], kc, mode="full")[r:r + n] for k, a in
                enumerate(self.params.a))
        return self.params.law.pressure(s)

    def _rhs(self, rho, h, r, kc, kf):
        p = self._pressure(rho, r, kc)
        n = rho.shape[1]
        gf = np.convolve(p, kf, mode="full")[r + 1:r + n]
        sigma = self.params.sigma
        out = np.empty_like(rho)
        vmax = 0.0
        for k, b in enumerate(self.params.b):
            v = -b * gf
            vmax = max(vmax, float(np.abs(v).max()))
            left, right = rho[k, :-1], rho[k, 1:]
            central = np.abs(v) * h <= 2.0 * sigma
            upwind = np.where(v > 0, left, right)
            face = np.where(central, 0.5 * (left + right), upwind)
            flux = np.zeros(n + 1)
            flux[1:-1] = v * face - sigma * (right - left) / h
            out[k] = -(flux[1:] - flux[:-1]) / h
        return out, vmax

    def initial_cells(self, densities) -> np.ndarray:
        """Cell averages ``(n_species, M)`` of the initial densities, each of unit mass.

        Args:
            densities: per species an
                :class:`~fem_crossdiff.particles.sampling.InverseCDF1D` (exact cell averages of
                its piecewise-linear density, the law the particles sample) or a callable
                ``f(x)`` (midpoint values, normalised).
        """
        x, h = self.grid()
        rows = []
        for dens in densities:
            if isinstance(dens, InverseCDF1D):
                edges = np.concatenate((x - 0.5 * h, [x[-1] + 0.5 * h]))
                row = np.diff(dens.cdf(edges)) / h
            else:
                row = check_density_values(np.asarray(dens(x), dtype=float))
                row = row / (row.sum() * h)
            rows.append(row)
        if len(rows) != self.params.n_species:
            raise ValueError(f"densities: need {self.params.n_species}, got {len(rows)}")
        return np.array(rows)

    def solve(self, densities, times) -> NonlocalSolution1D:
        """Integrate from 0 through the increasing ``times`` (snapshot at each, 0 included)."""
        x, h = self.grid()
        r, kc, kcg, kf = self._kernels(h)
        times = np.asarray(times, dtype=float)
        if times[0] != 0.0 or np.any(np.diff(times) <= 0):
            raise ValueError("times must start at 0 and increase")
        rho = self.initial_cells(densities)
        n = rho.shape[1]
        snaps, dgs = [], []
        sigma = self.params.sigma

        def snapshot(rho):
            snaps.append(rho.copy())
            dgs.append(np.convolve(self._pressure(rho, r, kc), kcg, mode="full")[r:r + n])

        snapshot(rho)
        for t0, t1 in zip(times[:-1], times[1:], strict=True):
            _, vmax = self._rhs(rho, h, r, kc, kf)
            dt_max = self.cfl * h / (1.5 * vmax + 2.0 * sigma / h + 1e-300)
            nsub = max(1, int(math.ceil((t1 - t0) / dt_max)))
            dt = (t1 - t0) / nsub
            for _ in range(nsub):
                k1, _ = self._rhs(rho, h, r, kc, kf)
                r1 = rho + dt * k1
                k2, _ = self._rhs(r1, h, r, kc, kf)
                rho = 0.5 * (rho + r1 + dt * k2)
            snapshot(rho)
        return NonlocalSolution1D(times, x, np.array(snaps), np.array(dgs))
