"""Nonlinear process (1.7) and Proposition 1.2: E sup|X - Y|^2 = O(1/N) at fixed eps, T.

``Y`` is driven by grad g^eps of the 1D finite-volume reference solution of (1.5) started from
the same initial law the particles sample; ``X`` and ``Y`` share initial positions and noise.
"""

from __future__ import annotations

import numpy as np
from _nonlocal1d import NonlocalFV1D

from fem_crossdiff.particles import FreeSpace, GridDrift, ParticleParams
from fem_crossdiff.particles.coupling import coupling_error
from fem_crossdiff.particles.sampling import InverseCDF1D

DENSITIES = [
    InverseCDF1D(lambda x: np.exp(-((x + 0.2) ** 2) / (2 * 0.3**2)), lo=-1.5, hi=1.5),
    InverseCDF1D(lambda x: np.exp(-((x - 0.3) ** 2) / (2 * 0.25**2)), lo=-1.5, hi=1.5),
]
BASE = ParticleParams(1, (1.0, 0.5), (1.0, 2.0), 0.1, 2.5, 0.5)


def test_nonlocal_reference_conservative_positive_convergent():
    times = np.linspace(0.0, 0.5, 6)
    sols = {c: NonlocalFV1D(BASE, 4.0, c).solve(DENSITIES, times) for c in (10, 20, 40)}
    fine = sols[40]
    np.testing.assert_allclose(fine.mass(), 1.0, atol=1e-12)
    assert fine.rho.min() >= 0.0
    # the pressure spreads both species: second moments grow
    m2 = np.sum(fine.rho * fine.centers**2, axis=-1) * (fine.centers[1] - fine.centers[0])
    assert np.all(np.diff(m2, axis=0) > 0)

    def at_fine(sol, t_idx):
        return sol.grad_g(times[t_idx], fine.centers[:, None])[:, 0]

    e10 = np.abs(at_fine(sols[10], -1) - fine.dg[-1]).max()
    e20 = np.abs(at_fine(sols[20], -1) - fine.dg[-1]).max()
    assert e20 < 0.4 * e10, (e10, e20)
    assert e20 < 2e-2 * np.abs(fine.dg[-1]).max()


def test_coupling_error_rate_in_n(comm):
    T, dt = 0.5, 0.01
    steps = int(round(T / dt))
    sol = NonlocalFV1D(BASE, 4.0, 40).solve(DENSITIES, dt * np.arange(steps + 1))
    ns = [50, 100, 200, 400, 800]
    means, ses = [], []
    for n in ns:
        params = ParticleParams(n, BASE.a, BASE.b, BASE.sigma, BASE.m, BASE.eps)
        mean, se = coupling_error(params, FreeSpace(1), DENSITIES, range(16), sol.grad_g, dt,
                                  steps, GridDrift(32), comm)
        means.append(mean)
        ses.append(se)
    slope = np.polyfit(np.log(ns), np.log(means), 1)[0]
    if comm.rank == 0:
        print(f"\nE sup|X-Y|^2 for N={ns}: {np.array(means)}, N*E: {np.array(means) * ns}, "
              f"slope {slope:.3f}")
    assert -1.3 <= slope <= -0.7
    assert np.all(np.array(ses) < 0.35 * np.array(means))  # the estimates are resolved
