# # Study 6: mass touching the walls of a disk (and an annulus)
#
# The other studies keep the mass far from the walls. Here the initial mass touches the
# boundary of a gmsh disk of radius 1, where the three models must agree on what a wall is:
# the local system (1.1) with no-flux walls, the nonlocal system (1.5) with the wall-normalised
# kernel (`NonlocalParams(boundary="sinkhorn")`, the default, `docs/walls.md`) and the particle
# system (1.6) with reflecting walls and the drift built from the FE model's own operator
# (`fem_crossdiff.particles.mesh_drift.MeshOperatorDrift`: deposit on P1, the same `K`, the cell
# gradients of `g`).
#
# Case: two species, `a = (1, 1.5)`, `b = (1, 0.5)`, `m = 2`, `sigma = 0.02`; raised-cosine
# bumps of half-width 0.45 centred at `(0.75, 0)` (height 2) and `(0.45, 0.45)` (height 1.5),
# both cut by the wall (masses 0.35 and 0.28 on the polygonal disk).
#
# Four parts:
#
# 1. `uniform_drift`: a constant density must be stationary for the nonlocal FE model on any
#    geometry. Largest relative change of the nodal values of `(0.6, 0.3)` after a few steps
#    (implicit and linear coupling) on the disk and on an annulus (radii 0.4 and 1), default
#    boundary: measured exactly 0 (`g` is constant to 1e-14, the Newton / linear solves leave
#    the state unchanged); with `boundary="zero"` the same measurement gives 4 to 9
#    (`uniform_drift_zero_boundary`). For the particles: `MeshOperatorDrift`'s `grad g` of the
#    nodal constant at random points (round-off: 1e-13), and the rms drift of uniformly
#    distributed particles, which is pure sampling noise (decreases like `N^(-1/2)`; an
#    outward wall drift of order 1 with `boundary="zero"`, `tests/test_particles_walls.py`).
# 2. eps sweep on the disk: `l1_to_local = sum_k ||rho_k^eps - rho_k||_L1` at `T` between the
#    nonlocal (implicit coupling) and the local solution on the same mesh and time step, for
#    decreasing eps (`eps >= 2 h_max` is enforced by the solver); `eps_rate` is the fitted
#    log-log slope. The zero extension (`boundary="zero"`) at one eps is the reference: it
#    pulls mass into the wall and its distance does not vanish with eps (`docs/walls.md`).
# 3. Particles vs the nonlocal FE solution on the disk (mass at the wall), for growing `N`
#    (particles per species, weights `a_l M_l / N` with the masses `M_l` of the FE initial
#    data, `FEDensitySampler.mass`): `w1` is the sliced 1-Wasserstein distance (POT, fixed
#    directions, `fem_crossdiff.particles.distances.sliced_wasserstein`) between each
#    species' particles and its FE density (quadrature points as weighted samples), summed
#    over the species and averaged over seeds; `w1_initial` is the same at `t = 0` (pure
#    sampling error of the same particles: slope -1/2). `coupling` is
#    `sum_k E sup_t |X_k^i - Y_k^i|^2` between the particles `X` and the McKean-Vlasov process
#    `Y` of (1.7) driven by the FE field `grad g` (linear in time between the step snapshots, as
#    `fem_crossdiff.coupling.FETimeGradientField`), with the same initial points and Brownian
#    increments (as `fem_crossdiff.particles.coupling`): Proposition 1.2 predicts `C / N`.
#    Both errors reach a floor: the upwind FE scheme has an `O(h)` numerical diffusion that the
#    particles do not have. Measured (growth of the sliced W1 of species 1 over `[0, t]` at
#    `N = 1e5`, where sampling is small): about `0.09 t` at `h = 0.05`, `0.065 t` at
#    `h = 0.035`, `0.044 t` at `h = 0.025`, independent of dt (1e-3 or 5e-4) and not reduced
#    by the recovered particle gradient: the FE side's O(h). Hence the short
#    horizon `T_particles` of this part and its finer mesh in the full mode. `w1_slope` and
#    `coupling_slope` are fitted over all `N`; `w1_floor` (the growth
#    `w1 - w1_initial` at the largest `N`) estimates the floor and `w1_slope_pre_floor` is fitted
#    over the `N` whose `w1` is above twice the floor.
#    Speed: the particles are located by tracking (`MeshDomain.track`, a walk from the previous
#    cell) and the coupled field is `SnapshotGradientField` (the field of `FETimeGradientField`
#    through `MeshOperatorDrift.gradient_at`), both checked in the run against the collision
#    tree (`inside_test_mismatches`: tracked location against `MeshDomain.contains_collision`;
#    `grad_field_check`: against `FETimeGradientField`).
# 4. A PNG of the three models side by side near the right wall at the end of the eps sweep:
#    the total density `S = a_1 rho_1 + a_2 rho_2` of the local and the nonlocal FE solutions and
#    of the particles (deposited on P1 by `MeshOperatorDrift.deposit`, the density the particle
#    drift sees), with a sample of the particles on top; plus a log-log PNG of the sweeps.
#
# Outputs in `outdir`: `study_walls_uniform.csv`, `study_walls_eps.csv`, `study_walls_n.csv`,
# `study_walls.png` (three panels), `study_walls_rates.png`, and the JSON summary as the last
# line on rank 0 (also returned by `main`). Progress lines go to rank 0's stdout (`--quiet`
# switches them off).
#
# Quick mode (`--quick` or the `CI` environment variable; about 12 s serial): disk
# `h = 0.1`, eps = 0.6, 0.45, 0.3 to `T = 0.05`, particles with `N = 200, 600, 2000`
# (3 seeds) to `T = 0.01`; measured eps_rate 1.56, w1_slope -0.38, coupling_slope -1.03.
# Full mode (the default; 346 s serial on 2 shared cores): uniform data on `h = 0.05`
# (20 steps); eps sweep on `h = 0.035` (eps = 0.4, 0.28, 0.2, 0.14, 0.1, `T = 0.05`,
# `dt = 1e-3`); particles on `h = 0.025`, eps = 0.2, `N = 1e3, 3e3, 1e4, 3e4, 1e5` (6, 4, 3,
# 2, 1 seeds) to `T = 0.01`; PNG with 2e4 particles per species. Measured: uniform_drift 0
# (9.2 with the zero extension), L1 to local 0.170 ... 0.0079 with eps_rate 2.31 (zero
# extension at eps = 0.2: 0.178 against 0.039), W1 0.0106 ... 0.0016 with w1_slope -0.43
# (-0.52 at t = 0, floor 5.6e-4), coupling 2.0e-5 ... 3.9e-7 with coupling_slope -0.86.
#
#     .venv/bin/python demos/study_walls.py [outdir] [--quick] [--quiet]
#     .venv/bin/mpiexec -n 2 .venv/bin/python demos/study_walls.py
"""Study 6: local, nonlocal and particle models with the mass touching the walls of a disk."""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fem_crossdiff import (
    MPI,
    CrossDiffusionSolver,
    ModelParams,
    NonlocalParams,
    TimeParams,
    fem,
    mesh_sizes,
    meshes,
)
from fem_crossdiff import studies as sc
from fem_crossdiff.measures import density_to_weighted_samples, lp_distance
from fem_crossdiff.particles import (
    FieldDrift,
    ParticleParams,
    gather_positions,
    init_state,
)
from fem_crossdiff.particles import step as particle_step
from fem_crossdiff.particles.distances import random_directions, sliced_wasserstein
from fem_crossdiff.particles.mesh_domain import FEDensitySampler, MeshDomain
from fem_crossdiff.particles.mesh_drift import MeshOperatorDrift, SnapshotGradientField

NAME = "study_walls"
#: Coefficients of the case (two species).
MODEL = ModelParams(a=(1.0, 1.5), b=(1.0, 0.5), m=2.0, sigma=0.02)
#: ``(centre, half-width, height)`` of the initial raised-cosine bumps, both cut by the wall.
BUMPS = (((0.75, 0.0), 0.45, 2.0), ((0.45, 0.45), 0.45, 1.5))


@dataclass(frozen=True)
class Settings:
    """Resolution of one mode (see the module prose)."""

    h: float  # disk mesh of the eps sweep and the PNG
    eps: tuple  # eps sweep, decreasing
    eps_zero: float  # eps of the boundary="zero" reference
    T: float  # final time of the eps sweep (and the PNG)
    dt: float
    h_uniform: float  # disk and annulus of part 1
    eps_uniform: float
    uniform_steps: int
    uniform_cloud: tuple  # N of the uniform particle clouds
    h_particles: float  # disk mesh of part 3
    eps_particles: float
    T_particles: float
    dt_particles: float
    n: tuple  # particles per species
    seeds: tuple  # seeds per N (same length as n)
    n_proj: int  # directions of the sliced W1
    n_plot: int  # particles of the PNG


QUICK = Settings(h=0.1, eps=(0.6, 0.45, 0.3), eps_zero=0.3, T=0.05, dt=2.5e-3,
                 h_uniform=0.1, eps_uniform=0.3, uniform_steps=5, uniform_cloud=(2000, 8000),
                 h_particles=0.1, eps_particles=0.3, T_particles=0.01, dt_particles=1e-3,
                 n=(200, 600, 2000), seeds=(3, 3, 3), n_proj=32, n_plot=4000)
FULL = Settings(h=0.035, eps=(0.4, 0.28, 0.2, 0.14, 0.1), eps_zero=0.2, T=0.05, dt=1e-3,
                h_uniform=0.05, eps_uniform=0.2, uniform_steps=20,
                uniform_cloud=(5000, 20000, 80000),
                h_particles=0.025, eps_particles=0.2, T_particles=0.01, dt_particles=1e-3,
                n=(1000, 3000, 10000, 30000, 100000), seeds=(6, 4, 3, 2, 1), n_proj=64,
                n_plot=20000)


class Progress:
    """Progress lines on rank 0 (``[walls] ...`` with the elapsed time), switchable."""

    def __init__(self, comm, on: bool):
        self.comm, self.on, self.t0 = comm, on, time.perf_counter()

    def __call__(self, msg: str) -> None:
        """Print ``msg`` (rank 0, when on)."""
        if self.on and self.comm.rank == 0:
            print(f"[walls {time.perf_counter() - self.t0:7.1f} s] {msg}", flush=True)


def bump(centre, width: float, height: float):
    """``height (1 + cos(pi r / width)) / 2`` for ``r = |x - centre| < width``, else 0."""

    def f(x):
        r = np.hypot(x[0] - centre[0], x[1] - centre[1])
        return np.where(r < width, 0.5 * height * (1.0 + np.cos(np.pi * r / width)), 0.0)

    return f


def initial() -> list:
    """The initial densities (callables of ``x (gdim, n)``)."""
    return [bump(*b) for b in BUMPS]


def fe_solver(msh, eps: float | None = None, boundary: str = "sinkhorn", init=None,
              coupling: str = "implicit"):
    """Local (``eps=None``) or nonlocal solver (default: implicit coupling), initial data set."""
    kw = {}
    if eps is not None:
        kw["nonlocal_params"] = NonlocalParams(eps=eps, coupling=coupling, boundary=boundary)
    # upwind for both: the nonlocal model's scheme, so eps -> 0 compares like with like
    s = CrossDiffusionSolver(msh, MODEL, scheme="upwind", linear_solver="direct", **kw)
    s.set_initial(initial() if init is None else init)
    return s


def particle_params(n: int, eps: float, masses) -> ParticleParams:
    """Particles of the case: ``N`` per species of weight ``a_l M_l / N``."""
    return ParticleParams(n_particles=n, a=MODEL.a, b=MODEL.b, sigma=MODEL.sigma, m=MODEL.m,
                          eps=eps, kernel="bump", masses=tuple(masses))


def sliced_w1(comm, x: np.ndarray, y: np.ndarray, wy: np.ndarray, directions) -> float:
    """Sliced ``W_1`` on fixed ``directions``, the slices split over the ranks (collective).

    ``x``, ``y``, ``wy`` are the full samples on every rank; each rank takes every
    ``size``-th direction and the mean over the slices is summed over the ranks.
    """
    mine = directions[comm.rank:: comm.size]
    part = 0.0
    if mine.shape[0]:
        part = sliced_wasserstein(x, y, p=1.0, wy=wy, directions=mine) * mine.shape[0]
    return comm.allreduce(part, op=MPI.SUM) / directions.shape[0]


# ## 1. Constant densities are stationary (disk and annulus)


def _se(v) -> float:
    """Standard error of the mean over seeds (nan for one seed)."""
    return float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def uniform_part(comm, st: Settings, log) -> tuple[list[dict], dict]:
    """Relative change of a constant density (FE) and the operator drift of constants."""
    rows = []
    out_zero = None
    rng = np.random.default_rng(7)
    geos = {"disk": meshes.disk(comm, radius=1.0, h=st.h_uniform).mesh,
            "annulus": meshes.annulus(comm, inner_radius=0.4, outer_radius=1.0,
                                      h=st.h_uniform).mesh}
    cloud_rms = {}
    for name, msh in geos.items():
        rel = {}
        variants = [("implicit", "sinkhorn"), ("linear", "sinkhorn")]
        if name == "disk":  # the zero extension as a contrast: constants are not stationary
            variants.append(("implicit", "zero"))
        for coupling, boundary in variants:
            s = fe_solver(msh, st.eps_uniform, init=[0.6, 0.3], coupling=coupling,
                          boundary=boundary)
            x0 = s.rho.x.array.copy()
            for _ in range(st.uniform_steps):
                info = s.step(0.02)
                if not info.accepted:
                    raise RuntimeError(f"uniform {name}: step rejected ({info.message})")
            loc = float(np.max(np.abs(s.rho.x.array - x0), initial=0.0))
            rel[coupling if boundary == "sinkhorn" else boundary] = \
                comm.allreduce(loc, op=MPI.MAX) / 0.6
        zero_rel = rel.pop("zero", None)
        s = fe_solver(msh, st.eps_uniform, init=[0.6, 0.3])
        # the particle drift's operator: grad g of the nodal constant at random points
        drift = MeshOperatorDrift.from_potential(s.model.potential)
        g1 = drift.potential(np.ones((drift.nloc, 2)))
        dom = MeshDomain(msh)
        one = fem.Function(s.V0)
        one.x.array[:] = 1.0
        sampler = FEDensitySampler(one)
        pts = sampler(rng, 2000) if comm.rank == 0 else np.zeros((0, 2))
        grad = drift.gradient_at(g1, pts)
        op_grad = comm.allreduce(float(np.max(np.abs(grad), initial=0.0)), op=MPI.MAX)
        # uniformly distributed particles (density (0.6, 0.3)): the drift is sampling noise
        rms = []
        for n in st.uniform_cloud:
            p = particle_params(n, st.eps_uniform, (0.6 * sampler.mass, 0.3 * sampler.mass))
            state = init_state(p, [sampler, sampler], 11, dom, comm)
            v = drift(state.positions, 0.0, p, comm, species=state.species)
            rms.append(float(np.sqrt(comm.allreduce(float(np.sum(v**2)), op=MPI.SUM)
                                     / (2 * n))))
        cloud_rms[name] = rms
        rows.append({"geometry": name, "h": st.h_uniform, "eps": st.eps_uniform,
                     "steps": st.uniform_steps, "rel_change": max(rel.values()),
                     "rel_change_implicit": rel["implicit"], "rel_change_linear": rel["linear"],
                     "operator_grad": op_grad,
                     **{f"cloud_rms_N{n}": r for n, r in zip(st.uniform_cloud, rms,
                                                              strict=True)}})
        if zero_rel is not None:
            rows[-1]["rel_change_zero_boundary"] = zero_rel
            out_zero = zero_rel
        log(f"uniform {name}: relative change {rel['implicit']:.2e} (implicit), "
            f"{rel['linear']:.2e} (linear) after {st.uniform_steps} steps"
            + ("" if zero_rel is None else f" ({zero_rel:.2e} with boundary='zero')")
            + f", operator |grad g(1)| {op_grad:.1e}, uniform-cloud rms drift "
            + ", ".join(f"{r:.3g}" for r in rms) + f" (N = {st.uniform_cloud})")
    out = {"uniform_drift": max(r["rel_change"] for r in rows),
           "uniform_drift_disk": rows[0]["rel_change"],
           "uniform_drift_annulus": rows[1]["rel_change"],
           "uniform_drift_zero_boundary": out_zero,
           "uniform_operator_grad": max(r["operator_grad"] for r in rows),
           "uniform_cloud_n": list(st.uniform_cloud),
           "uniform_cloud_rms_drift": cloud_rms,
           "uniform_cloud_slope": float(np.mean([sc.fit_slope(st.uniform_cloud, v)
                                                 for v in cloud_rms.values()]))}
    return rows, out


# ## 2. eps -> 0 with the mass at the wall


def l1_to(s1, s2) -> list[float]:
    """``||rho_k - rho'_k||_L1`` per species."""
    return [float(lp_distance(s1.species(k), s2.species(k), p=1.0)) for k in range(MODEL.n)]


def eps_part(comm, st: Settings, log):
    """Nonlocal (sinkhorn, and zero at one eps) vs local at ``T`` on one disk mesh."""
    msh = meshes.disk(comm, radius=1.0, h=st.h).mesh
    hm = mesh_sizes(msh).h_max  # the solver's eps >= 2 h_max uses it
    tp = TimeParams(T=st.T, dt=st.dt)
    local = fe_solver(msh)
    local.run(tp, progress=False)
    log(f"eps sweep: local solution on h = {st.h} (h_max {hm:.3f}) to T = {st.T}")
    rows, last = [], None
    for eps in st.eps:
        s = fe_solver(msh, eps)
        s.run(tp, progress=False)
        d = l1_to(s, local)
        rows.append({"boundary": "sinkhorn", "eps": eps, "h_max": hm, "l1": sum(d),
                     "l1_rho1": d[0], "l1_rho2": d[1]})
        log(f"eps sweep: eps = {eps:g}: L1 to local {sum(d):.3e}")
        last = s
    z = fe_solver(msh, st.eps_zero, boundary="zero")
    z.run(tp, progress=False)
    d = l1_to(z, local)
    rows.append({"boundary": "zero", "eps": st.eps_zero, "h_max": hm, "l1": sum(d),
                 "l1_rho1": d[0], "l1_rho2": d[1]})
    log(f"eps sweep: boundary='zero' at eps = {st.eps_zero:g}: L1 to local {sum(d):.3e}")
    return rows, local, last


# ## 3. Particles vs the nonlocal FE solution, N -> infinity


def coupled_run(params, dom, samplers, seed, drift, field, n_steps, dt, comm):
    """X of (1.6) and Y of (1.7), same initial points and increments.

    Returns:
        ``(positions of X at 0, positions of X at T, sum_k mean_i sup_t |X - Y|^2)``.
    """
    x = init_state(params, samplers, seed, dom, comm)
    x0 = x
    y = x
    sup = 0.0
    for _ in range(n_steps):
        # the same increments for X and Y: the noise is keyed by (species, id, step)
        x = particle_step(x, dt, params, dom, drift, comm)
        y = particle_step(y, dt, params, dom, field, comm)
        # X and Y migrate independently on the mesh: compare the gathered positions
        d2 = np.sum((gather_positions(x, comm, root=None)
                     - gather_positions(y, comm, root=None)) ** 2, axis=-1)
        sup = np.maximum(sup, d2)
    tot = float(np.sum(sup)) / params.n_particles
    return gather_positions(x0, comm, root=None), gather_positions(x, comm, root=None), tot


def particle_part(comm, st: Settings, log):
    """W1 to the FE density and the coupling error for growing N."""
    msh = meshes.disk(comm, radius=1.0, h=st.h_particles).mesh
    eps, dt = st.eps_particles, st.dt_particles
    n_steps = int(round(st.T_particles / dt))
    s = fe_solver(msh, eps)
    samplers = [FEDensitySampler(s.species(k)) for k in range(MODEL.n)]
    masses = [smp.mass for smp in samplers]
    fe0 = [density_to_weighted_samples(s.species(k), gather="all", clip_negative=True)
           for k in range(MODEL.n)]
    snaps = [(0.0, s.potential_field())]
    s.run(TimeParams(T=n_steps * dt, dt=dt), progress=False,
          callback=lambda so, row: snaps.append((so.t, so.potential_field())))
    feT = [density_to_weighted_samples(s.species(k), gather="all", clip_negative=True)
           for k in range(MODEL.n)]
    log(f"particles: FE nonlocal solution on h = {st.h_particles}, eps = {eps}, "
        f"{n_steps} steps to T = {st.T_particles}; masses {masses[0]:.4f}, {masses[1]:.4f}")
    dom = MeshDomain(msh)
    # the FE solve is finished: the drift may now use (and overwrite) its potential's state
    drift = MeshOperatorDrift.from_potential(s.model.potential)
    grad_g = SnapshotGradientField(drift, snaps)
    check_pts = samplers[0](np.random.default_rng(3), 500) if comm.rank == 0 \
        else np.zeros((0, 2))
    field_check = grad_g.check(comm, check_pts)
    field = FieldDrift(grad_g)
    directions = random_directions(2, st.n_proj, np.random.default_rng(2024))
    rows = []
    for n, n_seeds in zip(st.n, st.seeds, strict=True):
        params = particle_params(n, eps, masses)
        w1s, w10s, cps = [], [], []
        t0 = time.perf_counter()
        for seed in range(1, n_seeds + 1):
            x0, xT, cp = coupled_run(params, dom, samplers, seed, drift, field, n_steps, dt,
                                     comm)
            w10s.append(sum(sliced_w1(comm, x0[k], *fe0[k], directions)
                            for k in range(MODEL.n)))
            w1s.append(sum(sliced_w1(comm, xT[k], *feT[k], directions)
                           for k in range(MODEL.n)))
            cps.append(cp)
        rows.append({"N": n, "seeds": n_seeds, "w1": float(np.mean(w1s)), "w1_se": _se(w1s),
                     "w1_initial": float(np.mean(w10s)), "coupling": float(np.mean(cps)),
                     "coupling_se": _se(cps)})
        log(f"particles: N = {n} ({n_seeds} seeds, {time.perf_counter() - t0:.1f} s): "
            f"W1 {rows[-1]['w1']:.3e} (t = 0: {rows[-1]['w1_initial']:.3e}), "
            f"coupling {rows[-1]['coupling']:.3e}")
    # tracked location against the collision tree, at points inside and just across the wall
    probe = np.concatenate([check_pts, check_pts / np.maximum(
        np.linalg.norm(check_pts, axis=1, keepdims=True), 1e-300) * 1.002]) \
        if check_pts.size else check_pts
    mism = int(np.count_nonzero((dom.locate(probe) >= 0) != dom.contains_collision(probe)))
    checks = {"grad_field_check": field_check,
              "inside_test_mismatches": comm.allreduce(mism, op=MPI.SUM)}
    return rows, checks


# ## 4. The three models near the wall (PNG)


def plot_part(comm, st: Settings, local, nonlocal_, outdir: Path, log) -> int:
    """Particles to ``T`` on the sweep mesh, then the three-panel PNG; returns the panel count.

    Collective; rank 0 draws. The particle density is the P1 deposit of the particles
    (:meth:`MeshOperatorDrift.deposit`), the density their drift sees.
    """
    from fem_crossdiff.plotting import gather_p1

    msh = nonlocal_.msh
    eps = nonlocal_.model.potential.nl.eps
    dt = st.dt
    n_steps = int(round(st.T / dt))
    s0 = fe_solver(msh, eps)  # the initial data, for the samplers
    samplers = [FEDensitySampler(s0.species(k)) for k in range(MODEL.n)]
    params = particle_params(st.n_plot, eps, [smp.mass for smp in samplers])
    drift = MeshOperatorDrift.from_potential(s0.model.potential)
    dom = MeshDomain(msh)
    state = init_state(params, samplers, 99, dom, comm)
    for _ in range(n_steps):
        state = particle_step(state, dt, params, dom, drift, comm)
    rho_p = drift.deposit(state.positions, params, comm, species=state.species)
    fields = [fem.Function(s0.V0) for _ in range(3)]
    for f, s in zip(fields[:2], (local, nonlocal_), strict=True):
        f.x.array[:] = sum(MODEL.a[k] * s.species(k).x.array for k in range(MODEL.n))
    fields[2].x.array[:] = rho_p @ np.asarray(MODEL.a)
    data = [gather_p1(f) for f in fields]
    pos = gather_positions(state, comm, root=0)
    log(f"plot: {st.n_plot} particles per species to T = {st.T} on the sweep mesh, eps = {eps}")
    panels = 0
    if comm.rank == 0:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.tri as mtri

        titles = ["local (1.1)", f"nonlocal (1.5), eps = {eps:g}",
                  f"particles (1.6), N = {st.n_plot}, P1 deposit"]
        vmax = max(float(d[2].max()) for d in data)
        fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.6), sharex=True, sharey=True)
        th = np.linspace(-0.6, 1.8, 200)
        for ax, (pts, cells, vals), title in zip(axes, data, titles, strict=True):
            tri = mtri.Triangulation(pts[:, 0], pts[:, 1], cells)
            im = ax.tripcolor(tri, vals, shading="gouraud", vmin=0.0, vmax=vmax, cmap="viridis")
            ax.plot(np.cos(th), np.sin(th), "w-", lw=1.0)
            ax.set_title(title, fontsize=10)
            ax.set_xlim(0.15, 1.05)
            ax.set_ylim(-0.5, 0.95)
            ax.set_aspect("equal")
            ax.set_xlabel("x")
            panels += 1
        axes[0].set_ylabel("y")
        rng = np.random.default_rng(0)
        for k, (c, mk) in enumerate((("w", "."), ("r", "."))):
            idx = rng.choice(pos.shape[1], size=min(300, pos.shape[1]), replace=False)
            axes[2].plot(pos[k, idx, 0], pos[k, idx, 1], mk, color=c, ms=1.5,
                         label=f"species {k + 1} (sample)")
        axes[2].legend(loc="lower left", fontsize=7, markerscale=4)
        cb = fig.colorbar(im, ax=list(axes), shrink=0.85)
        cb.set_label(f"S = a1 rho1 + a2 rho2 at t = {st.T:g}")
        fig.suptitle("Mass at the wall of the unit disk: the three models near the right wall",
                     fontsize=11)
        outdir.mkdir(parents=True, exist_ok=True)
        fig.savefig(outdir / f"{NAME}.png", dpi=100)
        plt.close(fig)
    return comm.bcast(panels, root=0)


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rank 0: a CSV of ``rows`` (the keys of the first row)."""
    keys = list(rows[0])
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def plot_rates(path: Path, eps_rows, n_rows, summary) -> None:
    """Rank 0: log-log PNG of the eps sweep and the N sweep with their fitted slopes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10.5, 4.2))
    e = np.array([r["eps"] for r in eps_rows if r["boundary"] == "sinkhorn"])
    l1 = np.array([r["l1"] for r in eps_rows if r["boundary"] == "sinkhorn"])
    a1.loglog(e, l1, "o-", label=f"sinkhorn (slope {summary['eps_rate']:.2f})")
    z = [r for r in eps_rows if r["boundary"] == "zero"]
    a1.loglog([z[0]["eps"]], [z[0]["l1"]], "s", color="C3", label="zero extension")
    a1.loglog(e, l1[-1] * (e / e[-1]) ** 2, "k:", label="eps^2")
    a1.set_xlabel("eps")
    a1.set_ylabel("sum_k ||rho_k^eps - rho_k||_L1 at T")
    a1.set_title("nonlocal vs local FE, mass at the wall", fontsize=9)
    N = np.array([r["N"] for r in n_rows], float)
    a2.errorbar(N, [r["w1"] for r in n_rows], yerr=[r["w1_se"] for r in n_rows], fmt="o-",
                capsize=3, label=f"sliced W1 at T (slope {summary['w1_slope']:.2f})")
    a2.loglog(N, [r["w1_initial"] for r in n_rows], "o--",
              label=f"sliced W1 at t = 0 (slope {summary['w1_initial_slope']:.2f})")
    a2.errorbar(N, [r["coupling"] for r in n_rows], yerr=[r["coupling_se"] for r in n_rows],
                fmt="s-", capsize=3,
                label=f"E sup|X-Y|^2 (slope {summary['coupling_slope']:.2f})")
    a2.set_xscale("log")
    a2.set_yscale("log")
    a2.set_xticks(N, [f"{n:g}" for n in N])
    a2.set_xlabel("N (particles per species)")
    a2.set_ylabel("distance to the FE solution (mean ± s.e. over seeds)")
    a2.set_title("particles vs nonlocal FE on the disk", fontsize=9)
    from matplotlib.ticker import NullFormatter

    for ax in (a1, a2):
        ax.xaxis.set_minor_formatter(NullFormatter())  # overlapping minor labels
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    """Run the study; returns the summary (also printed as the last line on rank 0)."""
    args = sc.parse_args(argv, NAME, __doc__)
    comm = MPI.COMM_WORLD
    st = QUICK if args.quick else FULL
    log = Progress(comm, not args.quiet)
    t_start = time.perf_counter()
    log(f"{'quick' if args.quick else 'full'} mode, {comm.size} rank(s), output {args.outdir}")

    uniform_rows, uniform = uniform_part(comm, st, log)
    eps_rows, local, nonlocal_ = eps_part(comm, st, log)
    n_rows, checks = particle_part(comm, st, log)
    panels = plot_part(comm, st, local, nonlocal_, args.outdir, log)

    sink = [r for r in eps_rows if r["boundary"] == "sinkhorn"]
    e = np.array([r["eps"] for r in sink])
    l1 = np.array([r["l1"] for r in sink])
    N = np.array([r["N"] for r in n_rows], float)
    w1 = np.array([r["w1"] for r in n_rows])
    w10 = np.array([r["w1_initial"] for r in n_rows])
    cp = np.array([r["coupling"] for r in n_rows])
    floor = max(float(w1[-1] - w10[-1]), 0.0)
    pre = w1 > 2.0 * floor
    pre[:2] = True  # at least two points
    zero = next(r for r in eps_rows if r["boundary"] == "zero")
    summary = {
        "study": "walls", "quick": args.quick, "ranks": comm.size,
        **uniform,
        "h": st.h, "T": st.T, "dt": st.dt,
        "eps": e.tolist(), "l1_to_local": l1.tolist(), "eps_rate": sc.fit_slope(e, l1),
        "l1_zero_boundary": {"eps": zero["eps"], "l1": zero["l1"]},
        "l1_sinkhorn_at_zero_eps": next(r["l1"] for r in sink if r["eps"] == zero["eps"]),
        "h_particles": st.h_particles, "eps_particles": st.eps_particles,
        "T_particles": st.T_particles, "dt_particles": st.dt_particles,
        "n": [int(v) for v in N], "seeds": list(st.seeds),
        "w1": w1.tolist(), "w1_initial": w10.tolist(), "w1_slope": sc.fit_slope(N, w1),
        "w1_initial_slope": sc.fit_slope(N, w10), "w1_floor": floor,
        "w1_slope_pre_floor": sc.fit_slope(N[pre], w1[pre]), "n_pre_floor": int(pre.sum()),
        "coupling": cp.tolist(), "coupling_slope": sc.fit_slope(N, cp),
        **checks,
        "png": str(args.outdir / f"{NAME}.png"), "png_panels": panels,
        "seconds": time.perf_counter() - t_start,
    }
    if comm.rank == 0:
        args.outdir.mkdir(parents=True, exist_ok=True)
        write_csv(args.outdir / f"{NAME}_uniform.csv", uniform_rows)
        write_csv(args.outdir / f"{NAME}_eps.csv", eps_rows)
        write_csv(args.outdir / f"{NAME}_n.csv", n_rows)
        plot_rates(args.outdir / f"{NAME}_rates.png", eps_rows, n_rows, summary)
        print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
