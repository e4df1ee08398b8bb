"""Samplers of initial positions, for :func:`fem_crossdiff.particles.state.init_state`.

A sampler is a callable ``sampler(rng, count) -> (count, d)`` drawing i.i.d. points; the state
calls it once per stream block (:mod:`fem_crossdiff.particles.rng`), which keeps initial data
independent of the number of MPI ranks. Densities need not be normalised; negative or
non-finite values and zero mass raise ValueErrors naming ``density``. Sampling from a
finite-element density on a DOLFINx mesh is
:func:`fem_crossdiff.particles.mesh_domain.FEDensitySampler`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["InverseCDF1D", "RejectionSampler", "check_density_values"]


def check_density_values(values: np.ndarray, what: str = "density") -> np.ndarray:
    """Return ``values`` as floats; raise for NaN/inf, negative values or zero mass."""
    v = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{what} has non-finite values (NaN or inf)")
    if np.any(v < 0.0):
        raise ValueError(f"{what} has negative values (min {v.min():.3e}); it must be >= 0")
    if not np.any(v > 0.0):
        raise ValueError(f"{what} has zero mass")
    return v


class InverseCDF1D:
    """Exact inverse-CDF sampling of a piecewise-linear density in 1D.

    The density is the linear interpolant of values ``f_i`` at nodes ``x_i`` (zero outside);
    its CDF is piecewise quadratic and is inverted in closed form, so the samples follow the
    interpolant exactly. A callable density is tabulated on ``n_table`` uniform nodes of
    ``[lo, hi]``.

    Args:
        density: values at ``nodes`` (array) or a callable ``f(x)`` for ``x`` of shape ``(M,)``.
        nodes: increasing node coordinates (for tabulated values).
        lo: left end (for a callable).
        hi: right end (for a callable).
        n_table: number of tabulation nodes (for a callable).
    """

    def __init__(self, density, nodes=None, lo=None, hi=None, n_table: int = 4097):
        if callable(density):
            if lo is None or hi is None or not hi > lo:
                raise ValueError(f"density: a callable needs lo < hi, got lo={lo!r}, hi={hi!r}")
            nodes = np.linspace(float(lo), float(hi), int(n_table))
            values = np.asarray(density(nodes), dtype=float).reshape(-1)
        else:
            if nodes is None:
                raise ValueError("density: tabulated values need their nodes")
            nodes = np.asarray(nodes, dtype=float).reshape(-1)
            values = np.asarray(density, dtype=float).reshape(-1)
        if nodes.size != values.size or nodes.size < 2 or np.any(np.diff(nodes) <= 0):
            raise ValueError("density: nodes must be increasing and match the values (>= 2)")
        self.values = check_density_values(values)
        self.nodes = nodes
        self._h = np.diff(nodes)
        cell_mass = 0.5 * self._h * (values[:-1] + values[1:])
        self._cdf = np.concatenate(([0.0], np.cumsum(cell_mass)))
        self.mass = float(self._cdf[-1])

    def pdf(self, x: np.ndarray) -> np.ndarray:
        """The normalised piecewise-linear density at ``x``."""
        return np.interp(x, self.nodes, self.values, left=0.0, right=0.0) / self.mass

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """Its exact CDF."""
        x = np.clip(np.asarray(x, dtype=float), self.nodes[0], self.nodes[-1])
        i = np.clip(np.searchsorted(self.nodes, x, side="right") - 1, 0, self.nodes.size - 2)
        s = x - self.nodes[i]
        f0 = self.values[i]
        k = (self.values[i + 1] - f0) / self._h[i]
        return (self._cdf[i] + f0 * s + 0.5 * k * s * s) / self.mass

    def inverse_cdf(self, u: np.ndarray) -> np.ndarray:
        """Closed-form inverse of :meth:`cdf` on ``[0, 1]``."""
        target = np.asarray(u, dtype=float) * self.mass
        i = np.clip(np.searchsorted(self._cdf, target, side="right") - 1, 0, self.nodes.size - 2)
        r = np.maximum(target - self._cdf[i], 0.0)
        f0 = self.values[i]
        k = (self.values[i + 1] - f0) / self._h[i]
        # s solves f0 s + k s^2 / 2 = r; this root form is stable for k -> 0 and for f0 = 0.
        den = f0 + np.sqrt(np.maximum(f0 * f0 + 2.0 * k * r, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where(den > 0.0, 2.0 * r / den, 0.0)
        return self.nodes[i] + np.clip(s, 0.0, self._h[i])

    def __call__(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """``count`` samples, shape ``(count, 1)``."""
        return self.inverse_cdf(rng.random(count))[:, None]


class RejectionSampler:
    """Rejection sampling of an analytic density on a box (optionally restricted by ``inside``).

    Proposals are uniform in ``[lo, hi]`` and accepted with probability ``f(x) / bound``. Without
    a given ``bound`` it is 1.25 times the maximum of ``f`` on a probing grid; a proposal with
    ``f > bound`` raises (the bound was wrong, the samples would be biased).

    Args:
        density: ``f(x)`` for ``x`` of shape ``(M, d)``, returning ``(M,)``; unnormalised.
        lo: lower corner of the box.
        hi: upper corner of the box.
        bound: an upper bound of ``f`` on the box (optional).
        inside: optional ``inside(x) -> bool (M,)`` restricting the support (e.g. a disk in its
            bounding box); must not be collective.
        n_probe: probing nodes per direction for the bound and the mass check.
    """

    def __init__(
        self,
        density: Callable[[np.ndarray], np.ndarray],
        lo,
        hi,
        bound: float | None = None,
        inside: Callable[[np.ndarray], np.ndarray] | None = None,
        n_probe: int | None = None,
    ):
        self.lo = np.atleast_1d(np.asarray(lo, dtype=float))
        self.hi = np.atleast_1d(np.asarray(hi, dtype=float))
        if self.lo.shape != self.hi.shape or np.any(self.hi <= self.lo):
            raise ValueError(f"density box needs hi > lo, got lo={lo!r}, hi={hi!r}")
        self.density, self.inside = density, inside
        d = self.lo.size
        n = n_probe or {1: 2001, 2: 201, 3: 41}[d]
        axes = [np.linspace(a, b, n) for a, b in zip(self.lo, self.hi, strict=True)]
        probe = np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")], axis=-1)
        vals = self._f(probe)
        check_density_values(vals)
        self.bound = float(bound) if bound is not None else 1.25 * float(vals.max())
        if not self.bound > 0:
            raise ValueError(f"bound must be > 0, got {bound!r}")

    def _f(self, x):
        v = np.asarray(self.density(x), dtype=float).reshape(-1)
        if self.inside is not None:
            v = np.where(np.asarray(self.inside(x), dtype=bool), v, 0.0)
        return v

    def __call__(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """``count`` accepted samples, shape ``(count, d)``."""
        out, have = [], 0
        d = self.lo.size
        while have < count:
            m = max(64, 2 * (count - have))
            x = self.lo + (self.hi - self.lo) * rng.random((m, d))
            f = self._f(x)
            check_density_values(np.append(f, 1.0))
            if np.any(f > self.bound):
                raise ValueError(
                    f"bound {self.bound:.4g} is below the density ({f.max():.4g}); pass bound="
                )
            acc = x[rng.random(m) * self.bound < f]
            out.append(acc)
            have += acc.shape[0]
        return np.concatenate(out)[:count]
