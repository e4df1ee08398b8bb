"""Pressure laws ``P(S)`` of the volume-exclusion models, the single definition.

The finite-element models (UFL forms and nodal edge fluxes), the nonlocal model and the
particle drift all evaluate the pressure, its derivative and the energy density through one
:class:`PressureLaw` object, so that a new law is one class and special cases of the exponent
live only inside it. The module needs numpy only; the UFL methods take UFL expressions (UFL is
imported by the caller), so particles import it without DOLFINx.

For the law ``P = S^(m-1)`` of system (1.1) the energy density is ``e(S) = S^m / m``, so that
``e'(S) = P(S)`` (the first variation of the interaction energy is the pressure) and the
total density flux ``S grad P = grad Q(S)`` with ``Q(S) = (m-1)/m S^m``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["PressureLaw", "PowerLaw", "TINY"]

#: Smallest total density used inside negative powers (their values at 0 are limits).
TINY = 1e-300


class PressureLaw:
    """Interface of a pressure law: nodal (numpy) and UFL forms of ``P``, ``P'`` and ``e``.

    Every method clips ``S`` at 0 from below, so that slightly negative iterates (round-off,
    Newton) stay real. Subclasses are frozen dataclasses (hashable, comparable, picklable).
    """

    def pressure(self, S: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        """Nodal ``P(S)``."""
        raise NotImplementedError

    def derivative(self, S: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        """Nodal ``P'(S)``."""
        raise NotImplementedError

    def energy_density(self, S: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        """Nodal ``e(S)`` with ``e' = P``, ``e(0) = 0``."""
        raise NotImplementedError

    def ufl_pressure(self, S):  # pragma: no cover - interface
        """``P(S)`` as a UFL expression."""
        raise NotImplementedError

    def ufl_pressure_gradient(self, S):  # pragma: no cover - interface
        """``grad P(S) = P'(S) grad S`` as a UFL expression, finite at ``S = 0``."""
        raise NotImplementedError

    def ufl_energy_density(self, S):  # pragma: no cover - interface
        """``e(S)`` as a UFL expression."""
        raise NotImplementedError


@dataclass(frozen=True)
class PowerLaw(PressureLaw):
    """``P(S) = S^(m-1)``, ``e(S) = S^m / m``, for a real exponent ``m >= 2``.

    Attributes:
        m: The exponent (``m = 2``: a linear pressure, computed without powers).
    """

    m: float = 2.0

    def __post_init__(self):
        m = float(self.m)
        if not (math.isfinite(m) and m >= 2.0):
            # local import: errors depends on nothing, but keep this module dependency-free
            from fem_crossdiff.errors import ParameterError

            raise ParameterError("m", self.m, "a finite number >= 2")
        object.__setattr__(self, "m", m)

    @property
    def linear(self) -> bool:
        """True for ``m = 2``, where ``P = S`` and ``P' = 1``."""
        return self.m == 2.0

    # ------------------------------------------------------------------ nodal
    def pressure(self, S):
        """Nodal ``max(S, 0)^(m-1)``."""
        Sp = np.maximum(S, 0.0)
        return Sp if self.linear else np.power(Sp, self.m - 1.0)

    def derivative(self, S):
        """Nodal ``(m-1) max(S, 0)^(m-2)`` (``1`` for ``m = 2``)."""
        if self.linear:
            return np.ones_like(np.asarray(S, dtype=float))
        return (self.m - 1.0) * np.power(np.maximum(S, 0.0), self.m - 2.0)

    def energy_density(self, S):
        """Nodal ``max(S, 0)^m / m``."""
        return np.power(np.maximum(S, 0.0), self.m) / self.m

    # ------------------------------------------------------------------ UFL
    def ufl_pressure(self, S):
        """``max(S, 0)^(m-1)``."""
        import ufl

        return ufl.max_value(S, 0.0) ** (self.m - 1.0)

    def ufl_pressure_gradient(self, S):
        """``(m-1) S^(m-2) grad S``, written so that the Jacobian is finite at ``S = 0``.

        ``grad(S^(m-1))`` differentiated once more would give ``S^(m-3)``.
        """
        import ufl

        if self.linear:
            return ufl.grad(S)
        return (self.m - 1.0) * ufl.max_value(S, TINY) ** (self.m - 2.0) * ufl.grad(S)

    def ufl_energy_density(self, S):
        """``max(S, 0)^m / m``."""
        import ufl

        return ufl.max_value(S, 0.0) ** self.m / self.m
