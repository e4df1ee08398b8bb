"""Barenblatt error measures: the L1 error against the profile and P1's best-approximation floor.

For ``m = 3`` the Barenblatt profile is Hoelder-1/2 at its front (``u ~ s^(1/2)``): no P1
function approximates it better than ``~ h^(3/2)`` in L1 on a uniform mesh, which the nodal
interpolant shows (``fem_crossdiff.measures.exact_lp_error``); the pressure ``u^(m-1)`` is
Lipschitz and is approximated at second order. See ``docs/barenblatt.md``.
"""

from __future__ import annotations

import numpy as np
import pytest

from fem_crossdiff.compat import MPI, fem, mesh
from fem_crossdiff.exact import barenblatt
from fem_crossdiff.measures import exact_lp_error
from fem_crossdiff.params import ModelParams, TimeParams
from fem_crossdiff.solver import CrossDiffusionSolver

COMM = MPI.COMM_WORLD


def _mesh(d, n):
    if d == 1:
        return mesh.create_interval(COMM, n, [-6.0, 6.0])
    return mesh.create_rectangle(COMM, [[-3.0, -3.0], [3.0, 3.0]], [n, n])


@pytest.mark.parametrize("d, m, C, mass", [
    (1, 2.0, 1.0, 4.0 / 3.0 * np.sqrt(12.0)),  # int (1 - x^2/12)_+ = 4/3 R, R = sqrt(12)
    (1, 3.0, 1.0, np.pi / 2.0 * np.sqrt(12.0)),  # int sqrt(1 - x^2/12)_+ = pi R / 2
    (2, 2.0, 0.25, np.pi / 2.0),  # pi R^2 C / 2 with R^2 = C / k = 4
])
def test_exact_lp_error_resolves_the_front(d, m, C, mass):
    """The composite rule at the front integrates the kinked profile to ~1e-6 (one rule: 1e-4)."""
    msh = _mesh(d, 101 if d == 1 else 25)
    zero = fem.Function(fem.functionspace(msh, ("Lagrange", 1)))
    got = exact_lp_error(zero, lambda x: barenblatt(x, 1.0, m, d, C))
    plain = exact_lp_error(zero, lambda x: barenblatt(x, 1.0, m, d, C), subdivisions=1)
    assert abs(got - mass) < 2e-6 * mass, (got, mass)
    # the front is what needs the composite rule: one Gauss rule errs 30x to 1000x more
    assert abs(plain - mass) > 10 * abs(got - mass), (plain, got, mass)


def test_exact_lp_error_where_and_l2():
    """``where`` restricts the integral (away from the front); p = 2 against a closed form."""
    V = fem.functionspace(_mesh(1, 101), ("Lagrange", 1))
    zero = fem.Function(V)
    R = np.sqrt(12.0)

    def profile(x):
        return barenblatt(x, 1.0, 2.0)

    a, h = 0.8 * R, 12.0 / 101  # int_{-a}^{a} (1 - x^2 / 12) = 2a - a^3 / 18
    got = exact_lp_error(zero, profile, where=lambda x: np.abs(x[0]) < a)
    # the two cells cut by |x| = a get the plain rule: each misses at most h/2 * u(a)
    assert abs(got - (2 * a - a ** 3 / 18)) < h * profile(np.array([[a]])), got
    # ||u||_2^2 = int (1 - x^2/12)^2 = 16 R / 15
    l2 = exact_lp_error(zero, profile, p=2.0)
    assert abs(l2 ** 2 - 16.0 * R / 15.0) < 1e-6 * R, l2
    one = fem.Function(V)
    one.interpolate(profile)  # the interpolant of a parabola errs by h^2 / 12 |u''| (L1)
    err = exact_lp_error(one, profile, where=lambda x: np.abs(x[0]) < a)
    assert abs(err - 2 * a * h ** 2 / 72.0) < 0.05 * err, err  # u'' = 1/6


def _interpolant_errors(d, m, ns, C):
    """Relative L1 errors of the interpolant of u and of the pressure u^(m-1), at tau = 1."""
    eu, ep = [], []
    for n in ns:
        V = fem.functionspace(_mesh(d, n), ("Lagrange", 1))
        out = []
        for power in (1.0, m - 1.0):
            def f(x, power=power):
                return barenblatt(x, 1.0, m, d, C) ** power

            g = fem.Function(V)
            g.interpolate(f)
            out.append(exact_lp_error(g, f) / exact_lp_error(fem.Function(V), f))
        eu.append(out[0])
        ep.append(out[1])
    return eu, ep


def _fit(ns, errs):
    return float(-np.polyfit(np.log(ns), np.log(errs), 1)[0])


@pytest.mark.parametrize("d, ns, C", [(1, (200, 400, 800, 1600, 3200), 1.0),
                                      (2, (24, 48, 96), 0.2)])
def test_interpolant_rate_m3_is_three_halves(d, ns, C):
    """For m = 3 the interpolant converges like h^1.5 in L1 (below 1.7), its pressure like h^2."""
    eu, ep = _interpolant_errors(d, 3.0, ns, C)
    ru, rp = _fit(ns, eu), _fit(ns, ep)
    assert 1.3 <= ru <= 1.65, (eu, ru)
    assert rp >= 1.8, (ep, rp)


@pytest.mark.parametrize("m", [2.0, 3.0])
def test_scheme_against_the_interpolant_1d(m):
    """The scheme against the profile: second order for m = 2, at the interpolant's floor for 3.

    BDF2, n = 100, 200 in 1D; the L1 error against the profile itself.
    """
    kappa = (m - 1) / m
    ns, es, ei = (100, 200), [], []
    for n in ns:
        s = CrossDiffusionSolver(_mesh(1, n), ModelParams(a=(1.0,), b=(1.0,), m=m, sigma=0.0))
        s.set_initial([lambda x: barenblatt(x, kappa, m)])
        s.run(TimeParams(T=1.0, dt=0.066 * 12.0 / n, method="bdf2"), progress=False)

        def f(x):
            return barenblatt(x, 2 * kappa, m)

        ex = fem.Function(s.V0)
        ex.interpolate(f)
        norm = exact_lp_error(fem.Function(s.V0), f)
        es.append(exact_lp_error(s.species(0), f) / norm)
        ei.append(exact_lp_error(ex, f) / norm)
        mn, mx = s.extrema()
        assert mn[0] >= -1e-12 * mx[0]
    rate = _fit(ns, es)
    if m == 2.0:
        assert rate >= 1.7, (es, rate)
    else:
        # no P1 function does much better than its interpolant: the scheme cannot reach 1.7
        assert all(e >= 0.8 * i for e, i in zip(es, ei)), (es, ei)
        assert rate <= 1.65, (es, rate)
