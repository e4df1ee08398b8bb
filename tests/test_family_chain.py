"""Particles against FE with every ingredient of the family: one chain, not two codes.

Two species on the line with per-species noise, confining potentials, an attractive Gaussian
interaction matrix and a growth law of the pressure. The pressure's own transport is left out
(``b`` negligible in the FE model, no pressure drift for the particles) so that the particle
system's mean-field limit is exactly the FE model's equation, with no mollifier bias; the growth
law's pressure is the particles' ``eps``-mollified density, which differs from the FE nodal one by
O(eps^2). The weighted empirical measures must approach the FE densities as ``N`` grows, at the
Monte Carlo rate ``N^(-1/2)``: their masses, means and second moments, and the W1 distance of
their distributions. Rank independent: the particles' streams are keyed by particle ids.
"""

from __future__ import annotations

import math

import numpy as np

from fem_crossdiff.compat import MPI, mesh
from fem_crossdiff.family import Family, Growth, Interaction, Kernel, Potential
from fem_crossdiff.params import ModelParams
from fem_crossdiff.particles import FreeSpace, ParticleParams, init_state
from fem_crossdiff.particles.family import GridInteraction, family_state, family_step
from fem_crossdiff.solver import CrossDiffusionSolver

SIGMA = (0.05, 0.1)
FAMILY = Family(SIGMA, potentials=(Potential("x**2 / 2"), Potential("(x - 0.5)**2")),
                interactions=(Interaction(Kernel("gaussian", 0.3), ((-0.5, -0.2), (-0.2, -0.3))),),
                growth=(Growth("expr", expr="1.0 - 0.2 * P"), None))
T, DT = 0.4, 4e-3
CENTRES, WIDTH = (0.0, 0.5), 0.3


def _fe():
    """The FE densities at T (fine mesh, small steps): node coordinates and values (n, nodes)."""
    comm = MPI.COMM_SELF
    msh = mesh.create_interval(comm, 1600, [-4.0, 4.0])
    s = CrossDiffusionSolver(msh, ModelParams((1.0, 1.0), (1e-12, 1e-12), 2.0), scheme="upwind",
                             family=FAMILY, linear_solver="direct")
    s.set_initial([lambda x, c=c: np.exp(-(x[0] - c) ** 2 / (2 * WIDTH ** 2))
                   / math.sqrt(2 * math.pi * WIDTH ** 2) for c in CENTRES])
    steps = int(round(T / (DT / 4)))
    for _ in range(steps):
        assert s.step(T / steps, "bdf2").accepted
    x = s.V0.tabulate_dof_coordinates()[:, 0]
    order = np.argsort(x)
    return x[order], s.rho.x.array.reshape(-1, 2)[order].T.copy()


def _fe_stats(x, rho):
    """Masses, means, second moments and CDFs of the FE densities (trapezoid rule)."""
    out = []
    for r in rho:
        mass = np.trapezoid(r, x)
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (r[1:] + r[:-1]) * np.diff(x))]) / mass
        out.append((mass, np.trapezoid(x * r, x) / mass, np.trapezoid(x * x * r, x) / mass, cdf))
    return out


def _particles(n: int, seed: int, comm):
    """Masses, means, second moments, positions and weights of every species at T."""
    params = ParticleParams(n, (1.0, 1.0), (1.0, 1.0), 0.0, 2.0, 0.05)
    samplers = [lambda r, c, m=m: m + WIDTH * r.standard_normal((c, 1)) for m in CENTRES]
    dom = FreeSpace(1)
    fs = family_state(init_state(params, samplers, seed, dom, comm))
    grid = GridInteraction(16)
    for _ in range(int(round(T / DT))):
        fs = family_step(fs, DT, params, FAMILY, dom, comm=comm, interaction=grid,
                         density="grid", growth_scheme="heun")
    st = fs.particles
    parts = comm.allgather((st.positions[:, 0], st.species, fs.weights))
    x = np.concatenate([p[0] for p in parts])
    sp = np.concatenate([p[1] for p in parts])
    w = np.concatenate([p[2] for p in parts])
    out = []
    for k in range(2):
        xk, wk = x[sp == k], w[sp == k]
        out.append((wk.sum() / n, np.average(xk, weights=wk), np.average(xk * xk, weights=wk),
                    xk, wk))
    return out


def _w1(xk, wk, x, cdf) -> float:
    """W1 between a weighted empirical measure and a CDF on the grid ``x`` (1D: CDF L1)."""
    order = np.argsort(xk)
    emp = np.interp(x, xk[order], np.cumsum(wk[order]) / wk.sum(), left=0.0, right=1.0)
    return float(np.trapezoid(np.abs(emp - cdf), x))


def test_particles_approach_fe_with_every_ingredient(comm):
    x, rho = _fe()
    fe = _fe_stats(x, rho)
    assert fe[0][0] > 1.1  # the growth law acts (species 1 grew by > 10%)
    sizes, seeds = (250, 1000, 4000), (1, 2, 3, 4)
    err = np.zeros((len(sizes), 4))  # rms over seeds of: mass, mean, E x^2, W1 (worst species)
    for i, n in enumerate(sizes):
        rows = []
        for seed in seeds:
            pa = _particles(n, seed, comm)
            rows.append([max(abs(pa[k][j] - fe[k][j]) for k in range(2)) for j in range(3)]
                        + [max(_w1(pa[k][3], pa[k][4], x, fe[k][3]) for k in range(2))])
        err[i] = np.sqrt(np.mean(np.square(rows), axis=0))
    slopes = [np.polyfit(np.log(sizes), np.log(err[:, j]), 1)[0] for j in range(4)]
    if comm.rank == 0:
        print(f"\nparticles vs FE, N = {sizes}: rms errors (mass, mean, E x^2, W1)\n{err}\n"
              f"slopes {np.round(slopes, 2)}")
    # the mean, second moment and W1 converge at the Monte Carlo rate
    for j in (1, 2, 3):
        assert -0.8 < slopes[j] < -0.3, (j, slopes, err)
    assert err[-1, 3] < 0.02
