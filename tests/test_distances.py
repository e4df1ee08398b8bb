"""Distances between weighted samples (particles/distances.py) against closed forms and exact LPs.

The computations are numpy-only and identical on every rank; each assert reads a quantity
max-reduced over the ranks so that all ranks take the same branch under mpirun.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from mpi4py import MPI
from scipy.stats import norm

from fem_crossdiff.particles.distances import (
    bounded_lipschitz,
    bounded_lipschitz_1d,
    bounded_lipschitz_bounds,
    moments,
    random_directions,
    sliced_wasserstein,
    wasserstein_1d,
    wasserstein_exact,
)


def gmax(comm, value) -> float:
    """Max over ranks (the same number on every rank, so every rank takes the same branch)."""
    return comm.allreduce(float(np.max(value)), op=MPI.MAX)


def gaussian_quantile_sample(m: float, s: float, n: int) -> np.ndarray:
    """Deterministic sample ``m + s Phi^-1((i - 1/2) / n)``: equal weights, exact quantiles."""
    return m + s * norm.ppf((np.arange(n) + 0.5) / n)


def test_w2_1d_gaussians_closed_form(comm):
    # W2(N(m1, s1^2), N(m2, s2^2)) = sqrt((m1 - m2)^2 + (s1 - s2)^2).
    (m1, s1), (m2, s2) = (1.0, 2.0), (-0.5, 1.5)
    exact = math.hypot(m1 - m2, s1 - s2)
    x, y = (gaussian_quantile_sample(m, s, 20000) for m, s in ((m1, s1), (m2, s2)))
    rel_q = abs(wasserstein_1d(x, y, 2) - exact) / exact
    # Equal spreads: the quantile samples are translates, W1 = W2 = |m1 - m2| exactly.
    z = gaussian_quantile_sample(m2, s1, 20000)
    err_tr = max(abs(wasserstein_1d(x, z, p) - abs(m1 - m2)) for p in (1, 2))
    # Independent random samples (different sizes): sampling error ~ N^-1/2.
    rng = np.random.default_rng(11)
    xr, yr = m1 + s1 * rng.standard_normal(200_000), m2 + s2 * rng.standard_normal(150_000)
    rel_r = abs(wasserstein_1d(xr, yr, 2) - exact) / exact
    assert gmax(comm, rel_q) < 1e-4  # quantile discretisation only (measured 3.3e-6)
    assert gmax(comm, err_tr) < 1e-12
    assert gmax(comm, rel_r) < 1e-2  # measured ~2e-3


def test_w_1d_quantiles_match_transport_lp(comm):
    rng = np.random.default_rng(5)
    errs = []
    for _ in range(4):
        n, m = rng.integers(5, 60, size=2)
        x, y = rng.normal(size=n), rng.normal(0.4, 1.3, size=m)
        wx, wy = rng.random(n), rng.random(m)
        for p in (1.0, 2.0, 3.0):
            errs.append(abs(wasserstein_1d(x, y, p, wx, wy) - wasserstein_exact(x, y, p, wx, wy)))
        # Exact BL by the 1D LP = transport with the truncated cost (embedding in the plane).
        x2 = np.column_stack([3 * x, np.zeros(n)])
        y2 = np.column_stack([3 * y, np.zeros(m)])
        errs.append(abs(bounded_lipschitz_1d(3 * x, 3 * y, wx, wy)
                        - bounded_lipschitz(x2, y2, wx, wy)))
    assert gmax(comm, errs) < 1e-9


def test_two_point_closed_forms(comm):
    # delta_0 vs (delta_0 + delta_1)/2: half the mass moves by 1.
    x, y, wy = np.array([0.0]), np.array([0.0, 1.0]), np.array([0.5, 0.5])
    errs = [
        wasserstein_1d(x, y, 1, None, wy) - 0.5,
        wasserstein_1d(x, y, 2, None, wy) - math.sqrt(0.5),
        bounded_lipschitz_1d(x, y, None, wy) - 0.5,
        # delta_0 vs delta_3: W1 = 3, but |f| <= 1 caps d at 2.
        wasserstein_1d(x, [3.0], 1) - 3.0,
        bounded_lipschitz_1d(x, [3.0]) - 2.0,
        bounded_lipschitz_1d(x, [0.7]) - 0.7,
    ]
    assert gmax(comm, np.abs(errs)) < 1e-12


def test_identical_measures_give_zero(comm):
    rng = np.random.default_rng(2)
    x1, w1 = rng.normal(size=40), rng.random(40)
    perm = rng.permutation(40)
    # Same measure, other representation: permuted, each atom split into two halves.
    x2, w2 = np.concatenate([x1[perm], x1]), np.concatenate([w1[perm], w1]) / 2
    p2, q2 = rng.normal(size=(40, 2)), rng.random(40)
    p2b, q2b = np.concatenate([p2[perm], p2]), np.concatenate([q2[perm], q2]) * 3.0
    th = random_directions(2, 50, rng)
    vals = [
        wasserstein_1d(x1, x2, 1, w1, w2),
        wasserstein_1d(x1, x2, 2, w1, w2),
        bounded_lipschitz_1d(x1, x2, w1, w2),
        sliced_wasserstein(p2, p2b, 2, q2, q2b, directions=th),
        sliced_wasserstein(p2, p2b, 1, q2, q2b, directions=th),
        bounded_lipschitz(p2, p2b, q2, q2b),
    ]
    # The network simplex returns W2^2 ~ 1e-17 (rounding of the marginals); W2 is its root.
    w2_lp = wasserstein_exact(p2, p2b, 2, q2, q2b)
    assert gmax(comm, vals) < 1e-12
    assert gmax(comm, w2_lp) < 1e-7


def test_triangle_inequality_1d(comm):
    rng = np.random.default_rng(3)
    slack = []
    for _ in range(30):
        a, b, c = ((rng.normal(rng.normal(), 1 + rng.random(), n), rng.random(n))
                   for n in rng.integers(3, 80, size=3))
        for fn in (lambda u, v: wasserstein_1d(u[0], v[0], 1, u[1], v[1]),
                   lambda u, v: wasserstein_1d(u[0], v[0], 2, u[1], v[1]),
                   lambda u, v: bounded_lipschitz_1d(u[0], v[0], u[1], v[1])):
            slack.append(fn(a, c) - fn(a, b) - fn(b, c))
    assert gmax(comm, slack) <= 1e-12


def test_triangle_inequality_sliced_2d(comm):
    rng = np.random.default_rng(4)
    th = random_directions(2, 64, rng)  # one shared projection set: SW is then a metric
    slack = []
    for _ in range(15):
        a, b, c = ((rng.normal(rng.normal(size=2), 1 + rng.random(), (n, 2)), rng.random(n))
                   for n in rng.integers(5, 100, size=3))
        for p in (1, 2):
            def sw(u, v, p=p):
                return sliced_wasserstein(u[0], v[0], p, u[1], v[1], directions=th)

            slack.append(sw(a, c) - sw(a, b) - sw(b, c))
    assert gmax(comm, slack) <= 1e-12


@pytest.mark.parametrize("d", [2, 3])
def test_sliced_translation_closed_form(comm, d):
    # For nu = mu(. - dm): W_p(theta#mu, theta#nu) = |theta . dm|, hence
    # SW2^2 = |dm|^2 E[theta_1^2] = |dm|^2 / d and SW1 = |dm| E|theta_1|.
    rng = np.random.default_rng(10 + d)
    x = rng.normal(size=(500, d)) @ rng.normal(size=(d, d))
    dm = np.arange(1, d + 1) * 0.3
    sw2, se2 = sliced_wasserstein(x, x + dm, 2, n_proj=800, rng=rng, return_stderr=True)
    sw1, se1 = sliced_wasserstein(x, x + dm, 1, n_proj=800, rng=rng, return_stderr=True)
    norm_dm = np.linalg.norm(dm)
    e_abs = math.gamma(d / 2) / (math.sqrt(math.pi) * math.gamma((d + 1) / 2))
    z2, z1 = abs(sw2 - norm_dm / math.sqrt(d)) / se2, abs(sw1 - norm_dm * e_abs) / se1
    # Exact W2 of a translation is |dm|, and SW2 <= W2.
    w2 = wasserstein_exact(x[:200], x[:200] + dm, 2)
    assert gmax(comm, [z1, z2]) < 4.0  # within 4 Monte Carlo standard errors
    assert gmax(comm, [se1 / sw1, se2 / sw2]) < 0.03
    assert gmax(comm, abs(w2 - norm_dm)) < 1e-10
    assert gmax(comm, sw2 - w2) < 0.0


def test_sliced_independent_gaussians_equal_covariance(comm):
    # Equal covariance: every projection is a translation of 1D Gaussians, SW2 = |dm|/sqrt(2).
    rng = np.random.default_rng(21)
    a = np.array([[1.0, 0.3], [0.0, 0.6]])
    dm = np.array([0.8, -0.5])
    x = rng.standard_normal((20_000, 2)) @ a.T
    y = rng.standard_normal((20_000, 2)) @ a.T + dm
    th = random_directions(2, 300, rng)
    sw2 = sliced_wasserstein(x, y, 2, directions=th)
    # Reference with the same directions: the translation case has no sampling error.
    ref = sliced_wasserstein(x, x + dm, 2, directions=th)
    closed = np.linalg.norm(dm) / math.sqrt(2)
    assert gmax(comm, abs(sw2 - ref) / ref) < 0.03  # sampling error of N = 2e4 (measured ~0.5%)
    assert gmax(comm, abs(ref - closed) / closed) < 0.05  # Monte Carlo over 300 directions


def test_sliced_monte_carlo_error_rate(comm):
    # RMS error of the SW2^2 estimate over independent projection sets ~ n_proj^-1/2.
    rng = np.random.default_rng(8)
    x = rng.normal(size=(60, 2))
    dm = np.array([0.6, 0.2])
    exact = dm @ dm / 2
    n_projs = np.array([16, 64, 256, 1024])
    rms = []
    for n_proj in n_projs:
        errs = [sliced_wasserstein(x, x + dm, 2, n_proj=int(n_proj), rng=rng) ** 2 - exact
                for _ in range(25)]
        rms.append(math.sqrt(np.mean(np.square(errs))))
    slope = np.polyfit(np.log(n_projs), np.log(rms), 1)[0]
    assert gmax(comm, abs(slope + 0.5)) < 0.12  # stated band: slope in [-0.62, -0.38]


def test_bounded_lipschitz_bounds_bracket_exact(comm):
    rng = np.random.default_rng(9)
    gaps = []
    for _ in range(5):
        x = rng.normal(size=(120, 2))
        y = rng.normal(rng.normal(size=2), 0.5 + rng.random(), size=(90, 2))
        wx, wy = rng.random(120), rng.random(90)
        exact = bounded_lipschitz(x, y, wx, wy)
        lo, hi = bounded_lipschitz_bounds(x, y, wx, wy, n_proj=24, rng=rng)
        w1 = wasserstein_exact(x, y, 1, wx, wy)
        gaps += [lo - exact, exact - hi, exact - min(w1, 2.0), -lo]
    assert gmax(comm, gaps) < 1e-9


def test_moments_exact(comm):
    m = moments(np.array([0.0, 1.0, 3.0]), np.array([1.0, 1.0, 2.0]))
    m2 = moments(np.array([[0.0, 1.0], [2.0, 3.0]]))
    errs = [m.mass - 4, m.mean[0] - 7 / 4, m.second[0, 0] - 19 / 4, m.covariance[0, 0] - 27 / 16,
            m2.mass - 1, *(m2.mean - [1, 2]), *(m2.covariance.ravel() - [1, 1, 1, 1])]
    assert gmax(comm, np.abs(errs)) < 1e-14


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="must be >= 0"):
        wasserstein_1d([0.0, 1.0], [0.0], 2, wx=[1.0, -0.5])
    with pytest.raises(ValueError, match="different dimensions"):
        sliced_wasserstein(np.zeros((3, 2)), np.zeros((3, 3)), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="p must be"):
        wasserstein_1d([0.0], [1.0], 0.5)
    with pytest.raises(ValueError, match="Generator"):
        sliced_wasserstein(np.zeros((3, 2)), np.ones((3, 2)))
