"""Compactly supported mollifiers ``V^eps(x) = eps^-d V(x/eps)``: the single definition.

Both the finite-element side (mollified pressure projections, the nonlocal model (1.5)) and
the :mod:`fem_crossdiff.particles` package (the drift of (1.6)) evaluate kernels through this
module, which depends on numpy and scipy only, so that particles run without DOLFINx.

Every kernel is radial, even, nonnegative, supported in the closed ball of radius ``eps`` and
normalised to unit mass in dimension ``d`` (1, 2 or 3):

* ``"bump"``: the C_c^infinity bump of the paper, ``V(x) = C_d exp(-1 / (1 - |x|^2))``;
  its constant has no closed form and is computed once per dimension by adaptive quadrature
  of the radial integral (relative accuracy ~1e-13).
* ``"poly4"``: ``V(x) = C_d (1 - |x|^2)^4``, a C^3 compact polynomial kernel with
  ``C_d^-1 = pi^(d/2) Gamma(5) / Gamma(5 + d/2)``; cheaper and exactly integrable.

A new kernel is one new :class:`Mollifier` subclass registered in ``_REGISTRY``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np

__all__ = ["Mollifier", "BumpMollifier", "PolynomialMollifier", "get_mollifier", "KERNELS"]


def _check_dim(d: int) -> int:
    if d not in (1, 2, 3):
        raise ValueError(f"dimension d must be 1, 2 or 3, got {d!r}")
    return int(d)


def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not (eps > 0.0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    return eps


def _sphere_area(d: int) -> float:
    """Surface measure of the unit sphere S^{d-1} (2 points in 1D)."""
    return 2.0 * math.pi ** (d / 2) / math.gamma(d / 2)


@dataclass(frozen=True)
class Mollifier:
    """A radial kernel profile ``phi(s)``, ``s = |x|^2 < 1``, normalised per dimension.

    Subclasses define ``_profile(s)`` and ``_dprofile(s)`` (derivative in ``s``) for
    ``0 <= s < 1``; outside the unit ball the kernel is zero.
    """

    name: str = "abstract"

    def _profile(self, s: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _dprofile(self, s: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _unnormalised_mass(self, d: int) -> float:
        from scipy.integrate import quad

        val, _ = quad(lambda r: r ** (d - 1) * float(self._profile(np.array(r * r))),
                      0.0, 1.0, epsabs=0.0, epsrel=1e-13, limit=200)
        return _sphere_area(d) * val

    def constant(self, d: int) -> float:
        """Normalisation constant ``C_d`` such that ``V`` has unit mass in R^d."""
        return _constant(self, _check_dim(d))

    def radial(self, r: np.ndarray, eps: float, d: int) -> np.ndarray:
        """``V^eps`` as a function of the distance ``r >= 0``."""
        eps = _check_eps(eps)
        s = (np.asarray(r, dtype=float) / eps) ** 2
        out = np.zeros_like(s)
        inside = s < 1.0
        out[inside] = self._profile(s[inside])
        return out * (self.constant(d) / eps**d)

    def value(self, x: np.ndarray, eps: float) -> np.ndarray:
        """``V^eps(x)`` for points ``x`` of shape ``(..., d)``."""
        x = np.asarray(x, dtype=float)
        d = x.shape[-1]
        return self.radial(np.sqrt(np.einsum("...i,...i->...", x, x)), eps, d)

    def gradient(self, x: np.ndarray, eps: float) -> np.ndarray:
        """``grad V^eps(x)``, shape ``(..., d)``: ``2 C_d eps^-d-2 phi'(|x/eps|^2) x``."""
        eps = _check_eps(eps)
        x = np.asarray(x, dtype=float)
        d = x.shape[-1]
        s = np.einsum("...i,...i->...", x, x) / eps**2
        ds = np.zeros_like(s)
        inside = s < 1.0
        ds[inside] = self._dprofile(s[inside])
        return (2.0 * self.constant(d) / eps ** (d + 2)) * ds[..., None] * x


@cache
def _constant(kernel: Mollifier, d: int) -> float:
    return 1.0 / kernel._unnormalised_mass(d)


@dataclass(frozen=True)
class BumpMollifier(Mollifier):
    """The C_c^infinity bump ``exp(-1/(1-|x|^2))`` used in the paper."""

    name: str = "bump"

    def _profile(self, s):
        s = np.asarray(s, dtype=float)
        with np.errstate(divide="ignore", over="ignore"):
            return np.where(s < 1.0, np.exp(-1.0 / np.maximum(1.0 - s, 1e-300)), 0.0)

    def _dprofile(self, s):
        s = np.asarray(s, dtype=float)
        t = np.maximum(1.0 - s, 1e-300)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            val = -np.exp(-1.0 / t) / t**2
        return np.where(s < 1.0, np.nan_to_num(val), 0.0)


@dataclass(frozen=True)
class PolynomialMollifier(Mollifier):
    """``(1 - |x|^2)^p`` with ``p = 4`` (C^3, compact support)."""

    name: str = "poly4"
    power: int = 4

    def _profile(self, s):
        return np.clip(1.0 - np.asarray(s, dtype=float), 0.0, None) ** self.power

    def _dprofile(self, s):
        return -self.power * np.clip(1.0 - np.asarray(s, dtype=float), 0.0, None) ** (
            self.power - 1
        )

    def _unnormalised_mass(self, d: int) -> float:
        p = self.power
        return math.pi ** (d / 2) * math.gamma(p + 1) / math.gamma(p + 1 + d / 2)


_REGISTRY: dict[str, Mollifier] = {"bump": BumpMollifier(), "poly4": PolynomialMollifier()}
KERNELS = tuple(_REGISTRY)


def get_mollifier(name: str | Mollifier) -> Mollifier:
    """Return the kernel called ``name`` (or ``name`` itself if it is a Mollifier).

    Raises:
        ValueError: for an unknown name, listing the allowed ones.
    """
    if isinstance(name, Mollifier):
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown mollifier {name!r}; allowed: {', '.join(KERNELS)}"
        ) from None
