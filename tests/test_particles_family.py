"""The family's particle level against exact references (serial and under mpiexec -n 2).

* growth on uniform data: the logistic ODE, first order (``euler``) and second order (``heun``);
* confinement: sigma = 0, Phi = x^2/2, the compact stationary profile, error O(eps^2);
* potential and noise: the Ornstein-Uhlenbeck stationary law, W1 slope -1/2 in N;
* per-species sigma: variance growth 2 sigma_k t per dimension;
* interactions: two particles under an attractive Gaussian kernel (ODE reference, order 1),
  the Morse equilibrium distance, and a brute-force sum for a compact kernel;
* weights: systematic resampling counts, and rank independence of a run with growth.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.special import erf

from fem_crossdiff.compat import MPI
from fem_crossdiff.errors import ParameterError
from fem_crossdiff.family import Family, Growth, Interaction, Kernel, Potential, morse
from fem_crossdiff.particles import (
    CellListDrift,
    FieldDrift,
    FreeSpace,
    GridDrift,
    ParticleParams,
    QuadratureSpec,
    gather_positions,
    init_state,
    state_from_positions,
)
from fem_crossdiff.particles.family import (
    GridInteraction,
    density_at,
    density_grid,
    effective_sample_size,
    family_state,
    family_step,
    interaction_drift,
    resample,
    weighted_moments,
)
from fem_crossdiff.particles.rng import partition


def _max(comm, x):
    return comm.allreduce(x, op=MPI.MAX)


def _sum(comm, x):
    return comm.allreduce(x, op=MPI.SUM)


def _gather_weights(fs, comm):
    """Global weights ``(n, N)`` in id order (every rank)."""
    st = fs.particles
    parts = comm.allgather((st.species, st.ids, fs.weights))
    out = np.full((st.n_species, st.n_total), np.nan)
    for k, i, w in parts:
        out[k, i] = w
    return out


def _fmt(values, spec=".2e"):
    return "[" + ", ".join(format(v, spec) for v in values) + "]"


def _slope(x, y):
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


# ---------------------------------------------------------------------------------------------
# growth
# ---------------------------------------------------------------------------------------------


def test_logistic_growth_on_uniform_data_rates(comm):
    """Logistic growth, m = 2, G = g (1 - P / P_M): rho' = g rho (1 - a rho / P_M).

    A 1D lattice of spacing eps/20 (poly4 kernel: the lattice sum of V^eps is 1 to 5e-9) in
    free space: particles farther than (evaluations per step) x steps x eps from the edges see
    the uniform density, so their weights follow the ODE's time discretisation alone.
    """
    eps, half, rho0, g, pm, T, a = 0.02, 4.0, 0.5, 1.0, 2.0, 2.0, 2.0
    h = eps / 20
    n = int(round(2 * half / h))
    x = (-half + (np.arange(n) + 0.5) * h)[None, :, None]
    params = ParticleParams(n, (a,), (1.0,), 0.0, 2.0, eps, kernel="poly4",
                            masses=(rho0 * 2 * half,))
    fam = Family((0.0,), growth=(Growth(rate=g, p_max=pm),))
    K = pm / a
    exact = K * rho0 * math.exp(g * T) / (K + rho0 * (math.exp(g * T) - 1.0))
    dom = FreeSpace(1)
    levels = (8, 16, 32, 64)
    for scheme, order in (("euler", 1.0), ("heun", 2.0)):
        errs, spread = [], 0.0
        for steps in levels:
            fs = family_state(state_from_positions(x, 1, dom, comm))
            for _ in range(steps):
                fs = family_step(fs, T / steps, params, fam, dom, comm=comm,
                                 growth_scheme=scheme)
            mid = np.abs(fs.particles.positions[:, 0]) < 0.5
            rho = rho0 * fs.weights[mid]
            errs.append(_max(comm, float(np.abs(rho - exact).max(initial=0.0))))
            lo = -_max(comm, -float(rho.min(initial=np.inf)))
            spread = max(spread, _max(comm, float(rho.max(initial=-np.inf))) - lo)
        rate = -_slope(levels, errs)
        if comm.rank == 0:
            print(f"\nlogistic growth, {scheme}: errors {_fmt(errs)}, "
                  f"rate {rate:.2f}, spread {spread:.1e}")
        assert abs(rate - order) < 0.15
        assert spread < 1e-10  # the interior particles all see the uniform density
        assert errs[-1] < (5e-3 if order == 1 else 1e-4)


# ---------------------------------------------------------------------------------------------
# confinement
# ---------------------------------------------------------------------------------------------


def _compact_cdf(x, C):
    """CDF of rho = (C - x^2/2)_+ (a = b = M = 1, m = 2) on the line."""
    R = math.sqrt(2 * C)
    x = np.clip(x, -R, R)
    return C * (x + R) - (x**3 + R**3) / 6


def _w1_to_cdf(points, cdf, lo, hi):
    grid = np.linspace(lo, hi, 40001)
    emp = np.searchsorted(np.sort(points), grid, side="right") / points.size
    return float(np.trapezoid(np.abs(emp - cdf(grid)), grid))


def test_confinement_compact_stationary_profile(comm):
    """Confinement: sigma = 0, Phi = x^2/2, m = 2, a = b = 1, mass 1: P(rho) = (C - x^2/2)_+.

    C^(3/2) = 3 / (4 sqrt 2) from the mass, support radius R = sqrt(2 C), E x^2 = R^2 / 5.
    The particles relax (T = 8) to the stationary state of the mollified model, which differs
    from the profile by O(eps^2): second moment and W1 shrink with eps at that rate.
    """
    C = (3 / (4 * math.sqrt(2))) ** (2 / 3)
    m2_exact = 2 * C / 5
    n, T = 2000, 8.0
    fam = Family((0.0,), potentials=(Potential("x**2 / 2"),))
    dom = FreeSpace(1)
    epss, m2_err, w1 = (0.2, 0.1, 0.05), [], []
    for eps, dt in zip(epss, (0.02, 0.01, 0.0025), strict=True):
        params = ParticleParams(n, (1.0,), (1.0,), 0.0, 2.0, eps)
        fs = family_state(init_state(params, lambda r, c: r.uniform(-1, 1, (c, 1)), 3, dom, comm))
        for _ in range(int(round(T / dt))):
            fs = family_step(fs, dt, params, fam, dom, pressure=GridDrift(), comm=comm)
        x = gather_positions(fs.particles, comm, root=None)[0, :, 0]
        _, _, m2 = weighted_moments(fs, params, comm)
        m2_err.append(abs(float(m2[0]) - m2_exact))
        w1.append(_w1_to_cdf(x, lambda y: _compact_cdf(y, C), -2.0, 2.0))
    rate = _slope(epss, m2_err)
    if comm.rank == 0:
        print(f"\nconfinement N={n}: eps {epss}: |E x^2 - R^2/5| "
              f"{_fmt(m2_err)} (rate {rate:.2f}), W1 {_fmt(w1)}")
    assert rate > 1.4
    assert m2_err[-1] < 1e-3
    assert w1[0] / w1[1] > 2.0 and w1[1] / w1[2] > 2.0 and w1[-1] < 1.5e-3


def test_confinement_particle_number_sweep(comm):
    """The same at eps = 0.05 over N = 250..2000: W1 falls with N toward the O(eps^2) floor.

    With sigma = 0 the relaxed particles sit nearly at the quantiles of the mollified
    equilibrium (a gradient flow: no sampling noise is left), so W1 falls at least like
    N^(-1/2) until the mollifier's bias (about 6e-4 here) dominates.
    """
    C = (3 / (4 * math.sqrt(2))) ** (2 / 3)
    eps, dt, T = 0.05, 0.0025, 8.0
    fam = Family((0.0,), potentials=(Potential("x**2 / 2"),))
    dom = FreeSpace(1)
    ns, w1 = (250, 500, 1000, 2000), []
    for n in ns:
        params = ParticleParams(n, (1.0,), (1.0,), 0.0, 2.0, eps)
        fs = family_state(init_state(params, lambda r, c: r.uniform(-1, 1, (c, 1)), 3, dom, comm))
        for _ in range(int(round(T / dt))):
            fs = family_step(fs, dt, params, fam, dom, pressure=GridDrift(), comm=comm)
        x = gather_positions(fs.particles, comm, root=None)[0, :, 0]
        w1.append(_w1_to_cdf(x, lambda y: _compact_cdf(y, C), -2.0, 2.0))
    slope = _slope(ns, w1)
    if comm.rank == 0:
        print(f"\nconfinement eps={eps}: N {ns}, W1 {_fmt(w1)}, slope {slope:.2f}")
    assert all(a > b for a, b in zip(w1, w1[1:], strict=False))
    assert slope < -0.4 and w1[-1] < 1e-3


# ---------------------------------------------------------------------------------------------
# potential with noise, per-species sigma
# ---------------------------------------------------------------------------------------------


def test_ou_stationary_law_w1_slope_in_n(comm):
    """Phi = x^2/2, sigma = 1/2, no pressure: X' = (1 - dt) X + sqrt(2 sigma dt) Z.

    The chain's stationary law is N(0, 2 sigma / (2 - dt)) exactly; W1 of the particles to it
    falls like N^(-1/2) (mean over 3 seeds at each N).
    """
    sigma, dt, T = 0.5, 0.1, 8.0
    var = 2 * sigma / (2 - dt)
    fam = Family((sigma,), potentials=(Potential("x**2 / 2"),))
    dom = FreeSpace(1)
    ns = (250, 1000, 4000, 16000)
    w1 = []
    for n in ns:
        params = ParticleParams(n, (1.0,), (1.0,), 0.0, 2.0, 0.1)
        acc = 0.0
        for seed in (1, 2, 3):
            fs = family_state(init_state(params, lambda r, c: r.uniform(-1, 1, (c, 1)), seed,
                                         dom, comm))
            for _ in range(int(round(T / dt))):
                fs = family_step(fs, dt, params, fam, dom, comm=comm)
            x = gather_positions(fs.particles, comm, root=None)[0, :, 0]
            acc += _w1_to_cdf(x, lambda y: 0.5 * (1 + erf(y / math.sqrt(2 * var))), -6, 6)
        w1.append(acc / 3)
    slope = _slope(ns, w1)
    if comm.rank == 0:
        print(f"\nOU stationary law: N {ns}, W1 {_fmt(w1)}, slope {slope:.2f}")
    assert abs(slope + 0.5) < 0.12


def test_per_species_sigma_variance_growth(comm):
    """Free particles: each coordinate's displacement has variance 2 sigma_k t, per species."""
    n, dt, steps = 20000, 0.1, 5
    sig = (0.0, 0.05, 0.4)
    params = ParticleParams(n, (1.0,) * 3, (1.0,) * 3, 0.0, 2.0, 0.1)
    fam = Family(sig)
    dom = FreeSpace(2)
    s0 = family_state(init_state(params, lambda r, c: r.standard_normal((c, 2)), 5, dom, comm))
    fs = s0
    for _ in range(steps):
        fs = family_step(fs, dt, params, fam, dom, comm=comm)
    t = dt * steps
    disp = fs.particles.positions - s0.particles.positions
    for k, s in enumerate(sig):
        dk = disp[fs.particles.species == k]
        if s == 0.0:
            assert _max(comm, float(np.abs(dk).max(initial=0.0))) < 1e-15
            continue
        for c in range(2):
            m2 = _sum(comm, float(np.sum(dk[:, c] ** 2))) / n
            se = 2 * s * t * math.sqrt(2.0 / n)  # sd of a chi-square mean
            assert abs(m2 - 2 * s * t) < 4 * se, (k, c, m2, 2 * s * t)


# ---------------------------------------------------------------------------------------------
# interactions
# ---------------------------------------------------------------------------------------------


def test_two_particles_gaussian_attraction_ode_and_order(comm):
    """Two particles of mass 1, W = -0.2 K_gauss (attractive), 2D.

    The centre of mass stays put; the separation z obeys z' = -0.4 z K(z) / l^2, solved by
    scipy to 1e-12; Euler's error is first order in dt.
    """
    ell, T = 0.5, 1.0
    ker = Kernel("gaussian", ell)
    fam = Family((0.0,), interactions=(Interaction(ker, ((-0.2,),)),))
    params = ParticleParams(2, (1.0,), (1.0,), 0.0, 2.0, 0.1, masses=(2.0,))
    x0 = np.array([[[0.3, 0.1], [-0.2, 0.4]]])
    dom = FreeSpace(2)

    def rhs(_t, z):
        return -0.4 * z * float(ker.value(z[None])[0]) / ell**2

    z_ref = solve_ivp(rhs, (0, T), x0[0, 0] - x0[0, 1], rtol=1e-12, atol=1e-14).y[:, -1]
    levels, errs = (10, 20, 40, 80), []
    for steps in levels:
        fs = family_state(state_from_positions(x0, 0, dom, comm))
        for _ in range(steps):
            fs = family_step(fs, T / steps, params, fam, dom, comm=comm)
        x = gather_positions(fs.particles, comm, root=None)[0]
        assert np.abs(x.mean(axis=0) - x0[0].mean(axis=0)).max() < 1e-14
        errs.append(float(np.linalg.norm(x[0] - x[1] - z_ref)))
    rate = -_slope(levels, errs)
    if comm.rank == 0:
        print(f"\nGaussian attraction: |z_ref| {np.linalg.norm(z_ref):.4f} (from "
              f"{np.linalg.norm(x0[0, 0] - x0[0, 1]):.4f}), errors "
              f"{_fmt(errs, '.1e')}, rate {rate:.2f}")
    assert abs(rate - 1.0) < 0.1
    assert np.linalg.norm(z_ref) < 0.8 * np.linalg.norm(x0[0, 0] - x0[0, 1])


@pytest.mark.parametrize("start", [0.3, 1.5])
def test_morse_equilibrium_distance(comm, start):
    """W = 2 exp(-r/0.2) - exp(-r) in 1D: two particles settle at W'(r) = 0, r* = ln(10) / 4."""
    fam = Family((0.0,), interactions=morse(2.0, 0.2, 1.0, 1.0))
    params = ParticleParams(2, (1.0,), (1.0,), 0.0, 2.0, 0.1, masses=(2.0,))
    dom = FreeSpace(1)
    fs = family_state(state_from_positions(np.array([[[0.0], [start]]]), 0, dom, comm))
    for _ in range(800):
        fs = family_step(fs, 0.01, params, fam, dom, comm=comm)
    x = gather_positions(fs.particles, comm, root=None)[0, :, 0]
    assert abs(abs(x[1] - x[0]) - math.log(10.0) / 4) < 1e-6
    assert abs(x.mean() - start / 2) < 1e-13


@pytest.mark.parametrize("kind", ["bump", "poly4", "morse"])
def test_interaction_drift_against_direct_sum(comm, kind):
    """Two species, asymmetric strengths, weights != 1: the drift equals a direct double loop."""
    n = 150
    rng = np.random.default_rng(3)
    full = rng.uniform(-1, 1, (2, n, 2))
    wfull = rng.uniform(0.5, 2.0, (2, n))
    params = ParticleParams(n, (1.0, 0.5), (1.0, 2.0), 0.0, 2.0, 0.1, masses=(1.0, 3.0))
    strength = ((1.0, -2.0), (0.5, -0.3))
    ker = Kernel(kind, 0.4)
    fam = Family((0.0, 0.0), interactions=(Interaction(ker, strength),))
    start, stop = partition(n, comm.size, comm.rank)
    x = full[:, start:stop].reshape(-1, 2)
    sp = np.repeat([0, 1], stop - start)
    w = wfull[:, start:stop].ravel()
    got = interaction_drift(x, sp, w, params, fam, comm)
    ref = np.zeros_like(x)
    for i in range(x.shape[0]):
        for l in range(2):
            mass = params.mass[l] / n * wfull[l]
            ref[i] -= strength[sp[i]][l] * np.sum(mass[:, None] * ker.gradient(x[i] - full[l]),
                                                  axis=0)
    err = _max(comm, float(np.abs(got - ref).max(initial=0.0)))
    assert err < 1e-12 * _max(comm, float(np.abs(ref).max(initial=1.0)))


@pytest.mark.parametrize("kind, order", [("gaussian", 2.0), ("poly4", 1.7), ("morse", 0.5)])
def test_grid_interaction_converges_to_the_pair_sums(comm, kind, order):
    """The particle-mesh interaction against the pair sums: O(h^2) (Morse: O(h) or slower)."""
    n = 500
    rng = np.random.default_rng(5)
    full = rng.normal(0.0, 0.3, (2, n, 2))
    wfull = rng.uniform(0.5, 2.0, (2, n))
    params = ParticleParams(n, (1.0, 0.5), (1.0, 2.0), 0.0, 2.0, 0.1, masses=(1.0, 3.0))
    fam = Family((0.0, 0.0), interactions=(
        Interaction(Kernel(kind, 0.2), ((1.0, -2.0), (0.5, -0.3))),))
    start, stop = partition(n, comm.size, comm.rank)
    x = full[:, start:stop].reshape(-1, 2)
    sp = np.repeat([0, 1], stop - start)
    w = wfull[:, start:stop].ravel()
    ref = interaction_drift(x, sp, w, params, fam, comm)
    scale = _max(comm, float(np.abs(ref).max(initial=0.0)))
    levels, errs = (4, 8, 16), []
    for c in levels:
        got = GridInteraction(c)(x, sp, w, params, fam, comm)
        errs.append(_max(comm, float(np.abs(got - ref).max(initial=0.0))) / scale)
    rate = -_slope(levels, errs)
    if comm.rank == 0:
        print(f"\ngrid interaction, {kind}: cells per length {levels}, relative errors "
              f"{_fmt(errs)}, rate {rate:.2f}")
    assert rate > order - 0.3 and errs[-1] < 0.03


def test_pressure_drifts_take_weights(comm):
    """Weights 2 on every particle = masses doubled, for the grid and the quadrature drifts."""
    n = 400
    rng = np.random.default_rng(1)
    full = rng.normal(0, 0.3, (2, n, 2))
    p1 = ParticleParams(n, (1.0, 0.5), (1.0, 2.0), 0.0, 2.0, 0.2, masses=(1.0, 1.0))
    p2 = ParticleParams(n, (1.0, 0.5), (1.0, 2.0), 0.0, 2.0, 0.2, masses=(2.0, 2.0))
    start, stop = partition(n, comm.size, comm.rank)
    x = full[:, start:stop].reshape(-1, 2)
    sp = np.repeat([0, 1], stop - start)
    for drift in (GridDrift(), CellListDrift(QuadratureSpec(4, 2))):
        a = drift(x, 0.0, p1, comm, species=sp, weights=np.full(x.shape[0], 2.0))
        b = drift(x, 0.0, p2, comm, species=sp)
        c = drift(x, 0.0, p1, comm, species=sp)
        scale = _max(comm, float(np.abs(b).max(initial=0.0)))
        assert _max(comm, float(np.abs(a - b).max(initial=0.0))) < 1e-12 * scale
        assert _max(comm, float(np.abs(a - c).max(initial=0.0))) > 0.1 * scale
    # S at the particles: the exact particle sum
    s = density_at(x, sp, np.ones(x.shape[0]), p1, comm)
    from fem_crossdiff.mollifiers import get_mollifier

    v = get_mollifier("bump")
    ref = sum(p1.weights[l] * v.value(x[:, None, :] - full[l][None], 0.2).sum(axis=1)
              for l in range(2))
    assert _max(comm, float(np.abs(s - ref).max(initial=0.0))) < 1e-12 * float(ref.max())


def test_density_grid_converges_to_the_particle_sum(comm):
    """S at the particles by the grid route: O(h^2) against the exact particle sum."""
    n = 3000
    params = ParticleParams(n, (1.0, 0.5), (1.0, 2.0), 0.0, 2.0, 0.2)
    st = init_state(params, lambda r, c: 0.4 * r.standard_normal((c, 2)), 2, FreeSpace(2), comm)
    w = np.exp(0.3 * st.positions[:, 0])
    exact = density_at(st.positions, st.species, w, params, comm)
    scale = _max(comm, float(exact.max(initial=0.0)))
    errs = []
    for cpe in (4, 8, 16):
        grid = density_grid(st.positions, st.species, w, params, comm, GridDrift(cpe))
        errs.append(_max(comm, float(np.abs(grid - exact).max(initial=0.0))) / scale)
    if comm.rank == 0:
        print(f"\nS by the grid, cells per eps 4, 8, 16: relative errors {_fmt(errs)}")
    assert errs[1] / errs[2] > 3.0 and errs[2] < 5e-3


# ---------------------------------------------------------------------------------------------
# weights: resampling, rank independence
# ---------------------------------------------------------------------------------------------


def test_systematic_resampling_counts_and_mass(comm):
    """Each parent gets floor or ceil of N w_i / W offspring; mass kept; ids 0..N-1."""
    n = 1000
    ids = np.arange(n, dtype=float)
    wfull = np.exp(-ids / 150.0) * (1.0 + 0.5 * np.sin(ids))
    dom = FreeSpace(1)
    params = ParticleParams(n, (1.0,), (1.0,), 0.0, 2.0, 0.1)
    st = state_from_positions(ids[None, :, None], 11, dom, comm)
    fs = family_state(st, wfull[st.ids])
    ess = effective_sample_size(fs, 0, comm)
    assert abs(ess - wfull.sum() ** 2 / np.dot(wfull, wfull)) < 1e-9 * n
    new = resample(fs, 0, comm)
    x = gather_positions(new.particles, comm, root=None)[0, :, 0]
    parent = np.rint(x).astype(int)
    counts = np.bincount(parent, minlength=n)
    expect = n * wfull / wfull.sum()
    assert np.all(counts >= np.floor(expect - 1e-9)) and np.all(counts <= np.ceil(expect + 1e-9))
    assert counts.sum() == n and np.all(np.diff(parent) >= 0)
    w = _gather_weights(new, comm)
    assert abs(w.sum() - wfull.sum()) < 1e-12 * wfull.sum()
    assert np.ptp(w) < 1e-15 * w.max()
    mass0, _, _ = weighted_moments(fs, params, comm)
    mass1, _, _ = weighted_moments(new, params, comm)
    assert abs(mass1[0] - mass0[0]) < 1e-12 * mass0[0]
    # the same offspring on one rank
    serial = resample(family_state(state_from_positions(ids[None, :, None], 11, dom), wfull), 0)
    assert np.array_equal(np.rint(serial.particles.positions[:, 0]).astype(int), parent)


@pytest.mark.parametrize("density", ["exact", "grid"])
def test_growth_pressure_resampling_rank_independent(comm, density):
    """Every ingredient at once: the run on all ranks equals the run on one rank.

    Two species, pressure, potential, interaction, noise, growth and resampling (to
    round-off; resampling did happen); S and the interaction by pair sums, or both by grids.
    """
    n = 600
    params = ParticleParams(n, (1.0, 0.5), (1.0, 2.0), 0.0, 2.0, 0.15, masses=(1.0, 0.5))
    fam = Family((0.01, 0.03), potentials=(Potential("x**2 / 2"), None),
                 interactions=(Interaction(Kernel("gaussian", 0.3), ((0.0, -0.5), (-0.5, 0.0))),),
                 growth=(Growth(rate=4.0, p_max=0.8), Growth("expr", expr="1 - P")))
    dom = FreeSpace(1)
    samp = [lambda r, c: r.normal(0.0, 0.3, (c, 1)), lambda r, c: r.normal(0.3, 0.2, (c, 1))]
    dist = family_state(init_state(params, samp, 7, dom, comm))
    ser = family_state(init_state(params, samp, 7, dom, None))

    def advance(fs, c):
        return family_step(fs, 0.01, params, fam, dom, pressure=GridDrift(), comm=c,
                           resample_below=0.9, density=density,
                           interaction=GridInteraction() if density == "grid" else None)

    for _ in range(40):
        dist, ser = advance(dist, comm), advance(ser, MPI.COMM_SELF)
    xd = gather_positions(dist.particles, comm, root=None)
    xs = gather_positions(ser.particles)
    wd, ws = _gather_weights(dist, comm), _gather_weights(ser, MPI.COMM_SELF)
    if comm.rank == 0:
        print(f"\nrun with every ingredient: {ser.resamplings} resamplings, max differences "
              f"{np.abs(xd - xs).max():.1e} (positions), {np.abs(wd - ws).max():.1e} (weights)")
    assert dist.resamplings == ser.resamplings >= 1
    assert np.abs(xd - xs).max() < 1e-8 and np.abs(wd - ws).max() < 1e-8 * ws.max()
    mass, _, _ = weighted_moments(dist, params, comm)
    assert mass[0] > 1.05 and 0.0 < mass[1]  # the first species grew under low pressure


def test_step_errors(comm):
    params = ParticleParams(10, (1.0,), (1.0,), 0.0, 2.0, 0.1)
    dom = FreeSpace(1)
    fs = family_state(init_state(params, lambda r, c: r.random((c, 1)), 1, dom, comm))
    grow = Family((0.0,), growth=(Growth(rate=1.0),))
    cases = [
        (dict(dt=0.0), "dt"),
        (dict(growth_scheme="rk4"), "growth_scheme"),
        (dict(density="fft"), "density"),
        (dict(interaction="grid"), "interaction"),
        (dict(resample_below=1.5), "resample_below"),
        (dict(family=Family((0.0, 0.0))), "family.sigma"),
        (dict(pressure=FieldDrift(lambda t, y: 0 * y)), "pressure"),
        (dict(domain=type("Tracking", (), {"track": None, "dim": 1})()), "domain"),
    ]
    for kw, key in cases:
        args = dict(dt=0.1, family=grow, domain=dom, growth_scheme="euler", resample_below=0.5)
        args.update(kw)
        with pytest.raises(ParameterError) as err:
            family_step(fs, args.pop("dt"), params, args.pop("family"), args.pop("domain"),
                        comm=comm, **args)
        assert err.value.key == key
    with pytest.raises(ParameterError) as err:
        family_state(fs.particles, -np.ones(fs.particles.n_local))
    assert err.value.key == "weights"
