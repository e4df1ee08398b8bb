"""Distances between probability measures given as weighted samples (POT, numpy and scipy).

A *weighted sample* is a pair ``(points, weights)``: ``points`` of shape ``(n,)`` or ``(n, d)``
and nonnegative ``weights`` of shape ``(n,)`` (``None`` means ``1/n`` each). It stands for the
discrete measure ``sum_i w_i delta_{x_i}``: an empirical measure of particles (1.6), or a
finite-element density turned into quadrature points times quadrature weights (see
``fem_crossdiff.measures.density_to_weighted_samples``). Every distance here compares the
*normalised* measures (weights divided by their sum), i.e. probability measures as in the
paper; compare the masses separately with :func:`moments`.

The transport computations are POT's (Python Optimal Transport, ``import ot``, a required
dependency); this module validates and normalises the samples, draws the projections, aligns
the cumulative weights of the two samples (POT integrates between them as computed, so two
representations of one measure would differ by rounding slivers: :func:`_sorted_aligned`) and
adds what POT lacks (the bounded-Lipschitz distance and its bounds, moments):

* :func:`wasserstein_1d`: ``W_p`` on the line, exact for discrete measures
  (``ot.wasserstein_1d``). With ``F^-1`` the (piecewise-constant) quantile functions,
  ``W_p^p = int_0^1 |F_mu^-1(t) - F_nu^-1(t)|^p dt``; both quantile functions are constant
  between consecutive cumulative weights of either sample, so the integral is a finite sum
  (cost ``O((n + m) log(n + m))``).
* :func:`sliced_wasserstein`: ``SW_p^p(mu, nu) = E_theta W_p^p(theta#mu, theta#nu)``, theta
  uniform on the sphere ``S^{d-1}``; estimated, as ``ot.sliced_wasserstein_distance`` does
  with given ``projections``, by the mean of POT's batched ``ot.wasserstein_1d`` over
  ``n_proj`` directions drawn here from an explicit ``numpy.random.Generator`` (POT's
  ``seed`` takes legacy seeds only) or passed in, so that several distances share one
  projection set (the triangle inequality then holds exactly for the estimates). The estimate
  of ``SW_p^p`` is unbiased with Monte Carlo standard error ``std_theta(W_p^p) / sqrt(n_proj)``,
  returned on request. ``SW_p <= W_p``. For a translation ``nu = mu(. - dm)``:
  ``W_p(theta#mu, theta#nu) = |theta . dm|`` so ``SW_2^2 = |dm|^2 / d`` and
  ``SW_1 = |dm| Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2))`` (``2|dm|/pi`` in 2D).
* :func:`wasserstein_exact`: exact ``W_p`` in any dimension by the transport linear program
  (``ot.emd2``, network simplex); meant for small samples (``n * m`` cost entries).
* The bounded-Lipschitz distance of section 1.3,
  ``d(mu, nu) = sup { int f d(mu - nu) : |f| <= 1, Lip(f) <= 1 }`` (Dudley's convention:
  sup-norm and Lipschitz constant both at most 1; if the bound on ``f`` were left free, ``d``
  would equal ``W_1`` for probability measures). Since ``f`` and ``f + c`` give the same
  integral, ``d`` is exactly ``W_1`` for the truncated metric ``min(|x - y|, 2)``, hence
  ``d <= min(W_1, 2)``. :func:`bounded_lipschitz` computes ``d`` exactly (1D: a linear
  program over the values of ``f`` at the atoms, scipy's HiGHS; d-D: the transport problem
  with the truncated cost, ``ot.emd2``, small samples); :func:`bounded_lipschitz_bounds` gives
  a certified *lower* bound (``max_theta d(theta#mu, theta#nu)``: ``f o theta`` is admissible)
  and a certified *upper* bound (the truncated cost of the couplings induced by sorting along
  each direction, POT's 1D transport plans, minimised over the directions) for samples too
  large for the exact program.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import ot
from scipy import sparse
from scipy.optimize import linprog
from scipy.spatial.distance import cdist

__all__ = [
    "Moments",
    "as_weighted_sample",
    "moments",
    "wasserstein_1d",
    "random_directions",
    "sliced_wasserstein",
    "wasserstein_exact",
    "bounded_lipschitz",
    "bounded_lipschitz_1d",
    "bounded_lipschitz_bounds",
]


def as_weighted_sample(
    points: np.ndarray, weights: np.ndarray | None = None, name: str = "points"
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a weighted sample and return ``(points (n, d), weights (n,))``, unnormalised.

    Args:
        points: Array of shape ``(n,)`` (1D) or ``(n, d)``, finite, ``n >= 1``.
        weights: Nonnegative finite weights of shape ``(n,)`` with positive sum, or ``None``
            for equal weights ``1/n``.
        name: Name used in error messages.

    Returns:
        The points as a float array of shape ``(n, d)`` and the weights as a float array.

    Raises:
        ValueError: for a wrong shape, an empty sample, non-finite values, negative weights or
            a zero total weight.
    """
    x = np.asarray(points, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(
            f"{name} must have shape (n,) or (n, d) with n >= 1, got shape {np.shape(points)}"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite")
    n = x.shape[0]
    if weights is None:
        return x, np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=float)
    if w.shape != (n,):
        raise ValueError(f"weights of {name} must have shape ({n},), got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"weights of {name} must be finite")
    if w.min() < 0.0:
        raise ValueError(
            f"weights of {name} must be >= 0, got minimum {w.min():.3e} "
            "(clip negative finite-element densities first)"
        )
    if not w.sum() > 0.0:
        raise ValueError(f"weights of {name} must have a positive sum, got {w.sum()!r}")
    return x, w


def _normalised(points, weights, name):
    x, w = as_weighted_sample(points, weights, name)
    keep = w > 0.0
    x, w = x[keep], w[keep]
    return x, w / w.sum()


def _same_dim(x: np.ndarray, y: np.ndarray) -> int:
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"samples live in different dimensions: {x.shape[1]} and {y.shape[1]}")
    return x.shape[1]


@dataclass(frozen=True)
class Moments:
    """First and second moments of a (possibly unnormalised) weighted sample.

    Attributes:
        mass: Total weight ``sum_i w_i``.
        mean: ``sum_i w_i x_i / mass``, shape ``(d,)``.
        second: Second moment matrix ``sum_i w_i x_i x_i^T / mass``, shape ``(d, d)``.
        covariance: ``second - mean mean^T``.
    """

    mass: float
    mean: np.ndarray
    second: np.ndarray
    covariance: np.ndarray


def moments(points: np.ndarray, weights: np.ndarray | None = None) -> Moments:
    """First and second moments of the measure ``sum_i w_i delta_{x_i}``.

    Args:
        points: Shape ``(n,)`` or ``(n, d)``.
        weights: Nonnegative weights (``None``: ``1/n`` each, so ``mass == 1``).

    Returns:
        The :class:`Moments`, the mean and second moment being those of the normalised measure.
    """
    x, w = as_weighted_sample(points, weights)
    mass = float(w.sum())
    mean = (w @ x) / mass
    second = (x.T * w) @ x / mass
    return Moments(mass, mean, second, second - np.outer(mean, mean))


def _check_p(p: float) -> float:
    p = float(p)
    if not (p >= 1.0 and math.isfinite(p)):
        raise ValueError(f"p must be a finite number >= 1, got {p!r}")
    return p


#: Levels closer than this (in units of _GRID, i.e. 64 ulp of 1) are identified.
_LEVEL_TOL = 64
#: Aligned cumulative weights are integer multiples of _GRID: sums of them are exact.
_GRID = 2.0**-52


def _sorted_aligned(
    px: np.ndarray, wx: np.ndarray, py: np.ndarray, wy: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sorted atoms and weights for POT's 1D transport whose cumulative sums agree.

    POT integrates the quantile functions between the cumulative weights of both samples.
    Cumulative sums of the same measure written differently (atoms permuted, split or
    rescaled) differ by rounding, and the slivers between such near-equal levels pair distinct
    atoms: a spurious ~1e-8 in ``W_2`` of two equal measures. Along each column the levels are
    therefore rounded to integer multiples of ``_GRID = 2^-52``, a level of ``y`` within
    ``_LEVEL_TOL`` grid units of a level of ``x`` is set to it, and the weights are the
    differences of the levels. Every partial sum of such weights is exact, so POT's cumulative
    sums reproduce the aligned levels; each level moves by at most
    ``(_LEVEL_TOL + 1/2) _GRID`` (about 1.4e-14) of mass.

    Args:
        px: Atoms of ``x``, ``(n, K)``: ``K`` projections (columns) of the same sample.
        wx: Probability weights of ``x``, ``(n,)``.
        py: Atoms of ``y``, ``(m, K)``.
        wy: Probability weights of ``y``, ``(m,)``.

    Returns:
        ``(xs, ax, ys, ay)``: each column of the atoms sorted, ``(n, K)`` and ``(m, K)``, and
        the aligned weights in that order (for ``ot.wasserstein_1d(..., require_sort=False)``).
    """
    top = round(1.0 / _GRID)
    # rows = columns of the inputs: contiguous sorts, cumulative sums and searches
    ox = np.argsort(px.T, axis=1, kind="stable")
    oy = np.argsort(py.T, axis=1, kind="stable")
    cx, cy = np.cumsum(wx[ox], axis=1), np.cumsum(wy[oy], axis=1)
    # Dividing by the last sum spreads its rounding (up to ~n ulp) over the levels rather than
    # putting it on the outermost atoms; the top level is then exactly 1 for both.
    ix = np.rint(cx / cx[:, -1:] * top).astype(np.int64)
    iy = np.rint(cy / cy[:, -1:] * top).astype(np.int64)
    for lx, ly in zip(ix, iy, strict=True):
        j = np.searchsorted(lx, ly)  # lx[j - 1] < ly <= lx[j]
        up, down = lx[np.minimum(j, lx.size - 1)], lx[np.maximum(j - 1, 0)]
        near = np.where(up - ly <= ly - down, up, down)
        ly[:] = np.maximum.accumulate(np.where(np.abs(near - ly) <= _LEVEL_TOL, near, ly))
    xs = np.take_along_axis(px.T, ox, axis=1).T
    ys = np.take_along_axis(py.T, oy, axis=1).T
    ax = (np.diff(ix, axis=1, prepend=0) * _GRID).T
    ay = (np.diff(iy, axis=1, prepend=0) * _GRID).T
    return xs, ax, ys, ay


def _wpp(px: np.ndarray, wx: np.ndarray, py: np.ndarray, wy: np.ndarray, p: float) -> np.ndarray:
    """``W_p^p`` along each column of ``px`` ``(n, K)``, ``py`` ``(m, K)`` (POT), ``(K,)``."""
    xs, ax, ys, ay = _sorted_aligned(px, wx, py, wy)
    w = ot.wasserstein_1d(xs, ys, ax, ay, p=p, require_sort=False)
    return np.atleast_1d(np.asarray(w, dtype=float))


def wasserstein_1d(
    x: np.ndarray,
    y: np.ndarray,
    p: float = 2.0,
    wx: np.ndarray | None = None,
    wy: np.ndarray | None = None,
) -> float:
    """Exact ``W_p`` between two weighted samples on the line (``ot.wasserstein_1d``).

    Args:
        x: First sample, shape ``(n,)`` or ``(n, 1)``.
        y: Second sample, shape ``(m,)`` or ``(m, 1)``.
        p: Order ``p >= 1``.
        wx: Weights of ``x`` (``None``: equal); normalised to total mass 1.
        wy: Weights of ``y`` (``None``: equal); normalised to total mass 1.

    Returns:
        ``W_p`` of the normalised measures (exact up to rounding).
    """
    p = _check_p(p)
    x, wx = _normalised(x, wx, "x")
    y, wy = _normalised(y, wy, "y")
    if _same_dim(x, y) != 1:
        raise ValueError(f"wasserstein_1d needs 1D samples, got dimension {x.shape[1]}")
    return float(_wpp(x, wx, y, wy, p)[0]) ** (1.0 / p)


def random_directions(d: int, n_proj: int, rng: np.random.Generator) -> np.ndarray:
    """``n_proj`` independent directions uniform on the unit sphere ``S^{d-1}``.

    Args:
        d: Dimension (>= 1).
        n_proj: Number of directions (>= 1).
        rng: The explicit random generator.

    Returns:
        Array of shape ``(n_proj, d)`` with unit rows (normalised Gaussian vectors).
    """
    if int(d) < 1:
        raise ValueError(f"dimension d must be >= 1, got {d!r}")
    if int(n_proj) < 1:
        raise ValueError(f"n_proj must be >= 1, got {n_proj!r}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    g = rng.standard_normal((int(n_proj), int(d)))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def _directions(d, n_proj, rng, directions):
    if directions is not None:
        th = np.asarray(directions, dtype=float)
        if th.ndim != 2 or th.shape[1] != d or th.shape[0] < 1:
            raise ValueError(f"directions must have shape (n_proj, {d}), got {th.shape}")
        return th / np.linalg.norm(th, axis=1, keepdims=True)
    if rng is None:
        raise ValueError("give either directions or an explicit numpy.random.Generator rng")
    return random_directions(d, n_proj, rng)


def sliced_wasserstein(
    x: np.ndarray,
    y: np.ndarray,
    p: float = 2.0,
    wx: np.ndarray | None = None,
    wy: np.ndarray | None = None,
    n_proj: int = 200,
    rng: np.random.Generator | None = None,
    directions: np.ndarray | None = None,
    return_stderr: bool = False,
) -> float | tuple[float, float]:
    """Monte Carlo sliced Wasserstein distance ``SW_p`` between two weighted samples.

    The estimator is ``(mean_l W_p^p(theta_l#mu, theta_l#nu))^(1/p)`` with each 1D distance
    exact, computed by POT's batched ``ot.wasserstein_1d`` on the projections along the
    directions ``theta_l`` drawn here (or given), so that the result depends only on ``rng``
    or ``directions``. This is ``ot.sliced_wasserstein_distance`` with ``projections``, with
    the weights aligned per direction as in :func:`wasserstein_1d` (equal measures give 0) and
    the slice values kept for the standard error. Its
    ``p``-th power is unbiased for ``SW_p^p`` with standard error
    ``std_l(W_p^p) / sqrt(n_proj)``, i.e. the Monte Carlo error decays like
    ``1/sqrt(n_proj)``. In 1D the two directions ``+-1`` give the same value, so the result is
    the exact ``W_p``.

    Args:
        x: First sample, ``(n, d)``.
        y: Second sample, ``(m, d)``.
        p: Order ``p >= 1``.
        wx: Weights of ``x`` (``None``: equal).
        wy: Weights of ``y`` (``None``: equal).
        n_proj: Number of random directions when ``directions`` is not given.
        rng: Generator drawing the directions (required unless ``directions`` is given;
            :func:`random_directions`). POT's own ``seed`` is not used: it takes legacy
            seeds only.
        directions: A fixed projection set ``(n_proj, d)`` (rows normalised here); share it
            between calls to compare several distances on the same slices.
        return_stderr: Also return the standard error of the estimate of ``SW_p`` (delta
            method: ``stderr(SW_p^p) / (p SW_p^(p-1))``; ``inf`` when the estimate is 0 with a
            nonzero spread, 0 when all slices give 0).

    Returns:
        The estimate of ``SW_p``, or ``(estimate, stderr)``.
    """
    p = _check_p(p)
    x, wx = _normalised(x, wx, "x")
    y, wy = _normalised(y, wy, "y")
    d = _same_dim(x, y)
    th = _directions(d, n_proj, rng, directions)
    vals = _wpp(x @ th.T, wx, y @ th.T, wy, p)  # W_p^p of each slice
    value = float(vals.mean()) ** (1.0 / p)
    if not return_stderr:
        return value
    se_pp = float(vals.std(ddof=1) / math.sqrt(vals.size)) if vals.size > 1 else math.inf
    if se_pp == 0.0:
        return value, 0.0
    se = se_pp / (p * value ** (p - 1.0)) if value > 0.0 else math.inf
    return value, se


def _transport_cost(wx: np.ndarray, wy: np.ndarray, cost: np.ndarray) -> float:
    """Optimal transport cost ``min_pi <pi, cost>`` between two probability vectors (POT).

    Raises:
        RuntimeError: if the network simplex stops early (iteration limit, infeasibility).
    """
    value, log = ot.emd2(wx, wy, cost, numItermax=10_000_000, log=True)
    if log.get("warning") is not None:
        raise RuntimeError(f"transport linear program failed: {log['warning']}")
    return float(value)


def _check_size(n: int, m: int, max_atoms: int) -> None:
    if n * m > max_atoms**2:
        raise ValueError(
            f"exact transport needs n * m <= max_atoms**2 = {max_atoms**2}, got {n} * {m}; "
            "use wasserstein_1d (1D) or the sliced / bounded estimates"
        )


def wasserstein_exact(
    x: np.ndarray,
    y: np.ndarray,
    p: float = 2.0,
    wx: np.ndarray | None = None,
    wy: np.ndarray | None = None,
    max_atoms: int = 3000,
) -> float:
    """Exact ``W_p`` (Euclidean ground cost) in any dimension by the transport linear program.

    Uses POT's ``ot.emd2`` (network simplex) on the full ``n x m`` cost matrix.

    Args:
        x: First sample, ``(n, d)``.
        y: Second sample, ``(m, d)``.
        p: Order ``p >= 1``.
        wx: Weights of ``x`` (``None``: equal).
        wy: Weights of ``y`` (``None``: equal).
        max_atoms: Refuse problems with ``n * m > max_atoms**2`` (memory and time).

    Returns:
        ``W_p`` of the normalised measures.
    """
    p = _check_p(p)
    x, wx = _normalised(x, wx, "x")
    y, wy = _normalised(y, wy, "y")
    _same_dim(x, y)
    _check_size(x.shape[0], y.shape[0], max_atoms)
    return max(_transport_cost(wx, wy, cdist(x, y) ** p), 0.0) ** (1.0 / p)


def _bl_1d(px: np.ndarray, wx: np.ndarray, py: np.ndarray, wy: np.ndarray) -> float:
    """Exact bounded-Lipschitz distance on the line by a linear program over ``f(z_k)``.

    On the sorted atoms ``z_1 < ... < z_K`` of both measures, ``|f| <= 1`` at the atoms and
    ``|f(z_{k+1}) - f(z_k)| <= z_{k+1} - z_k`` are necessary and, by piecewise-linear
    interpolation (constant outside), sufficient for an admissible ``f``.
    """
    z, inv = np.unique(np.concatenate([px, py]), return_inverse=True)
    c = np.bincount(inv, weights=np.concatenate([wx, -wy]), minlength=z.size)
    k = z.size
    if k == 1:
        return 0.0
    gaps = np.diff(z)
    diff = sparse.diags([-np.ones(k - 1), np.ones(k - 1)], [0, 1], shape=(k - 1, k))
    a_ub = sparse.vstack([diff, -diff]).tocsr()
    res = linprog(-c, A_ub=a_ub, b_ub=np.concatenate([gaps, gaps]), bounds=(-1.0, 1.0),
                  method="highs")
    if res.status != 0:
        raise RuntimeError(f"bounded-Lipschitz linear program failed: {res.message}")
    return max(-float(res.fun), 0.0)


def bounded_lipschitz_1d(
    x: np.ndarray, y: np.ndarray, wx: np.ndarray | None = None, wy: np.ndarray | None = None
) -> float:
    """Exact bounded-Lipschitz distance ``d`` (section 1.3, ``|f| <= 1``, ``Lip f <= 1``) in 1D.

    Args:
        x: First sample, shape ``(n,)`` or ``(n, 1)``.
        y: Second sample, shape ``(m,)`` or ``(m, 1)``.
        wx: Weights of ``x`` (``None``: equal).
        wy: Weights of ``y`` (``None``: equal).

    Returns:
        ``d`` of the normalised measures (a linear program with ``n + m`` unknowns).
    """
    x, wx = _normalised(x, wx, "x")
    y, wy = _normalised(y, wy, "y")
    if _same_dim(x, y) != 1:
        raise ValueError(f"bounded_lipschitz_1d needs 1D samples, got dimension {x.shape[1]}")
    return _bl_1d(x[:, 0], wx, y[:, 0], wy)


def bounded_lipschitz(
    x: np.ndarray,
    y: np.ndarray,
    wx: np.ndarray | None = None,
    wy: np.ndarray | None = None,
    max_atoms: int = 3000,
) -> float:
    """Exact bounded-Lipschitz distance ``d`` of section 1.3 in any dimension.

    In 1D this is :func:`bounded_lipschitz_1d`; otherwise ``d`` is computed as the optimal
    transport cost for the truncated metric ``min(|x - y|, 2)`` (Kantorovich-Rubinstein
    duality for that metric; see the module docstring), for small samples.

    Args:
        x: First sample, ``(n, d)``.
        y: Second sample, ``(m, d)``.
        wx: Weights of ``x`` (``None``: equal).
        wy: Weights of ``y`` (``None``: equal).
        max_atoms: Refuse transport problems with ``n * m > max_atoms**2`` (not used in 1D).

    Returns:
        ``d(mu, nu)``, in ``[0, 2]``.
    """
    x, wx = _normalised(x, wx, "x")
    y, wy = _normalised(y, wy, "y")
    if _same_dim(x, y) == 1:
        return _bl_1d(x[:, 0], wx, y[:, 0], wy)
    _check_size(x.shape[0], y.shape[0], max_atoms)
    return max(_transport_cost(wx, wy, np.minimum(cdist(x, y), 2.0)), 0.0)


def bounded_lipschitz_bounds(
    x: np.ndarray,
    y: np.ndarray,
    wx: np.ndarray | None = None,
    wy: np.ndarray | None = None,
    n_proj: int = 32,
    rng: np.random.Generator | None = None,
    directions: np.ndarray | None = None,
) -> tuple[float, float]:
    """Certified lower and upper bounds of the bounded-Lipschitz distance ``d``, for large samples.

    * Lower bound: ``max_theta d_1D(theta#mu, theta#nu)`` over the directions, since
      ``f(theta . x)`` is admissible whenever ``f`` is (each term exact,
      :func:`bounded_lipschitz_1d`).
    * Upper bound: ``min_theta int min(|x - y|, 2) dpi_theta``, ``pi_theta`` being the coupling
      of ``mu`` and ``nu`` that matches their quantiles along ``theta`` (the plan returned by
      ``ot.wasserstein_1d``); any coupling bounds the truncated transport cost, which equals
      ``d``. It is also ``<= 2``.

    Args:
        x: First sample, ``(n, d)``.
        y: Second sample, ``(m, d)``.
        wx: Weights of ``x`` (``None``: equal).
        wy: Weights of ``y`` (``None``: equal).
        n_proj: Number of random directions when ``directions`` is not given.
        rng: Generator for the directions (required unless ``directions`` is given).
        directions: Fixed directions ``(n_proj, d)``.

    Returns:
        ``(lower, upper)`` with ``lower <= d(mu, nu) <= upper``.
    """
    x, wx = _normalised(x, wx, "x")
    y, wy = _normalised(y, wy, "y")
    th = _directions(_same_dim(x, y), n_proj, rng, directions)
    px, py = x @ th.T, y @ th.T
    # The monotone couplings along all directions at once: POT's 1D plans (data, rows, cols).
    _, plans = ot.wasserstein_1d(px, py, wx, wy, p=1, return_plans="coo_tuple")
    lower, upper = 0.0, 2.0
    for k, plan in enumerate(plans):
        lower = max(lower, _bl_1d(px[:, k], wx, py[:, k], wy))
        dist = np.minimum(np.linalg.norm(x[plan.rows] - y[plan.cols], axis=1), 2.0)
        upper = min(upper, float(plan.data @ dist))
    return lower, upper
