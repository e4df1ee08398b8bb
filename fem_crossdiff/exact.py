"""Exact solutions for verification: the Barenblatt profile and manufactured sources.

The tests and the benchmarks measure the schemes against these; keeping one copy here means a
figure in ``benchmarks/`` and the test that guards it use the same profile.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import ufl

from fem_crossdiff.params import ModelParams


def barenblatt(x, tau: float, m: float, d: int = 1, C: float = 1.0) -> np.ndarray:
    """Barenblatt profile of ``u_t = Lap(u^m)`` at time ``tau`` (``C`` sets the mass).

    ``U(x, tau) = tau^(-alpha) (C - k |x|^2 tau^(-2 alpha / d))_+^(1 / (m - 1))`` with
    ``alpha = d / (d (m - 1) + 2)`` and ``k = alpha (m - 1) / (2 m d)``. The local system with
    one species, ``a = b = 1`` and ``sigma = 0`` is ``u_t = div(u grad u^(m-1)) = ((m-1)/m)
    Lap(u^m)``, so its solution from ``U(., tau_0)`` is ``U(., tau_0 + (m-1)/m t)``.

    Args:
        x: Points, shape ``(gdim, N)`` (DOLFINx's interpolation layout); the first ``d``
            rows are used.
        tau: Profile time, > 0.
        m: Exponent, > 1.
        d: Space dimension of the profile.
        C: Mass constant.
    """
    alpha = d / (d * (m - 1) + 2)
    k = alpha * (m - 1) / (2 * m * d)
    r2 = sum(x[i] ** 2 for i in range(d))
    return tau ** (-alpha) * np.maximum(C - k * r2 * tau ** (-2 * alpha / d), 0.0) ** (
        1 / (m - 1))


def steady_source(params: ModelParams, exact: Sequence) -> Callable:
    """The source ``f_k = -div(b_k rho_k grad P + sigma grad rho_k)`` making ``exact`` steady.

    Args:
        params: The model's coefficients.
        exact: One UFL expression per species (nonnegative, no-flux at the walls).

    Returns:
        A ``source(x, t)`` callable for :class:`fem_crossdiff.solver.CrossDiffusionSolver`.
    """
    def source(x, t):
        S = sum(a * r for a, r in zip(params.a, exact))
        P = S ** (params.m - 1)
        return [-ufl.div(params.b[k] * r * ufl.grad(P) + params.sigma * ufl.grad(r))
                for k, r in enumerate(exact)]

    return source
