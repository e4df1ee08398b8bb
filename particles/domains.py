"""Particle domains: the whole space and boxes with reflecting walls.

A reflecting wall is the particle counterpart of the no-flux boundary condition of the PDE. The
mesh domain (any DOLFINx mesh) lives in :mod:`fem_crossdiff.particles.mesh_domain`, the only
module here that needs DOLFINx. Every domain offers ``dim``, ``bounds()``, ``contains(x, comm)``
and ``reflect(x_old, x_new, comm)``; the last two may be collective (mesh domain).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FreeSpace", "Box", "check_inside"]


@dataclass(frozen=True)
class FreeSpace:
    """The whole space R^d (nothing to reflect).

    Attributes:
        dim: space dimension 1, 2 or 3.
    """

    dim: int

    def __post_init__(self):
        if self.dim not in (1, 2, 3):
            raise ValueError(f"dim must be 1, 2 or 3, got {self.dim!r}")

    def bounds(self):
        """``None``: the domain is unbounded."""
        return None

    def contains(self, x: np.ndarray, comm=None) -> np.ndarray:
        """All finite points are inside."""
        return np.all(np.isfinite(np.asarray(x, dtype=float)), axis=-1)

    def reflect(self, x_old: np.ndarray, x_new: np.ndarray, comm=None) -> np.ndarray:
        """Identity (no walls)."""
        return np.asarray(x_new, dtype=float)


@dataclass(frozen=True)
class Box:
    """The closed box ``[lo, hi]`` with specular reflection at its walls.

    Repeated reflection across walls ``lo`` and ``hi`` is the folding of the real line with
    period ``2 (hi - lo)``, applied per coordinate in closed form: no particle is ever lost or
    left outside, whatever the step length.

    Attributes:
        lo: lower corner, one entry per dimension.
        hi: upper corner (``hi > lo`` componentwise).
    """

    lo: tuple[float, ...]
    hi: tuple[float, ...]

    def __post_init__(self):
        lo = tuple(float(v) for v in np.atleast_1d(self.lo))
        hi = tuple(float(v) for v in np.atleast_1d(self.hi))
        if len(lo) != len(hi) or len(lo) not in (1, 2, 3):
            raise ValueError(f"Box lo and hi must have the same length 1..3, got {lo!r}, {hi!r}")
        if not all(np.isfinite(lo + hi)) or not all(h > l for l, h in zip(lo, hi, strict=True)):
            raise ValueError(f"Box needs finite hi > lo componentwise, got lo={lo!r}, hi={hi!r}")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    @property
    def dim(self) -> int:
        """Space dimension."""
        return len(self.lo)

    def bounds(self):
        """``(lo, hi)`` as arrays."""
        return np.array(self.lo), np.array(self.hi)

    def contains(self, x: np.ndarray, comm=None) -> np.ndarray:
        """Boolean mask of the points in the closed box."""
        x = np.asarray(x, dtype=float)
        lo, hi = self.bounds()
        return np.all((x >= lo) & (x <= hi), axis=-1)

    def reflect(self, x_old: np.ndarray, x_new: np.ndarray, comm=None) -> np.ndarray:
        """Specular reflection of the step ``x_old -> x_new`` at the walls (repeated)."""
        x = np.array(x_new, dtype=float)
        lo, hi = self.bounds()
        out = np.flatnonzero(~self.contains(x))  # usually few: fold only those
        length = hi - lo
        y = np.mod(x[out] - lo, 2.0 * length)
        y = np.where(y > length, 2.0 * length - y, y)
        x[out] = np.clip(lo + y, lo, hi)
        return x


def check_inside(domain, positions: np.ndarray, comm=None) -> None:
    """Raise a ValueError if any particle position lies outside ``domain`` (on any rank).

    Collective when ``comm`` is given (all ranks raise together).
    """
    x = np.asarray(positions, dtype=float)
    d = x.shape[-1]
    inside = domain.contains(x.reshape(-1, d), comm)
    bad = int(np.count_nonzero(~inside))
    if comm is not None:
        from mpi4py import MPI

        bad = comm.allreduce(bad, op=MPI.SUM)
    if bad:
        raise ValueError(f"positions: {bad} particle(s) lie outside the domain {domain!r}")
