"""Pure UFL form builders for system (1.1) and its energy (1.3).

Every builder is a pure function of its arguments and returns a ``ufl.Form`` (or a UFL
expression), so that local and nonlocal models, Galerkin and upwind schemes are
interchangeable pieces of one time stepper.

Notation: ``rho`` is a blocked P_k function with ``n`` components (one per species),
``S = sum_l a_l rho_l`` and ``P = S^(m-1)``. Time derivatives are written with BDF coefficients
``c = (c0, c1, c2)`` (constants that already contain ``1/dt``), so one compiled form serves
implicit Euler (``c2 = 0``) and variable-step BDF2:
``d_t rho ~ c0 rho^{n+1} + c1 rho^n + c2 rho^{n-1}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import ufl

from fem_crossdiff.params import ModelParams

#: Vertex quadrature: the lumped mass matrix of P1 elements (diagonal, positive).
VERTEX = {"quadrature_rule": "vertex", "quadrature_degree": 1}
#: Smallest density used inside logarithms and negative powers (their values at 0 are limits).
TINY = 1e-300


def total_density(rho, params: ModelParams):
    """``S = sum_l a_l rho_l``."""
    return sum(a * rho[k] for k, a in enumerate(params.a))


def pressure(S, m: float):
    """``P = S^(m-1)``, with ``S`` clipped at 0 so that slightly negative iterates stay real."""
    return ufl.max_value(S, 0.0) ** (m - 1)


def pressure_gradient(S, m: float):
    """``grad P = (m-1) S^(m-2) grad S``.

    Written this way so that the Jacobian stays finite at ``S = 0`` for every ``m >= 2``
    (``S^(m-1)`` inside ``grad`` would give ``S^(m-3)``).
    """
    if m == 2.0:
        return ufl.grad(S)
    return (m - 1) * ufl.max_value(S, TINY) ** (m - 2) * ufl.grad(S)


def time_derivative(rho, history: Sequence, coeffs: Sequence, k: int):
    """``c0 rho_k + c1 rho_k^n + c2 rho_k^{n-1}`` for species ``k``."""
    expr = coeffs[0] * rho[k]
    for c, old in zip(coeffs[1:], history):
        expr = expr + c * old[k]
    return expr


def galerkin_residual(rho, history, coeffs, params: ModelParams, v, source=None,
                      lumped: bool = False) -> ufl.Form:
    """Residual of the weak form of Definition 1.5, standard Galerkin, any degree.

    ``sum_k int d_t rho_k v_k + b_k rho_k grad P . grad v_k + sigma grad rho_k . grad v_k
    - f_k v_k``. The no-flux wall condition is natural (no boundary term). Not positivity
    preserving: use :func:`lumped_time_residual` with the upwind edge fluxes for that.

    Args:
        rho: Blocked function (n components), the unknown.
        history: Previous states ``[rho^n, rho^{n-1}]`` (as many as ``coeffs`` - 1).
        coeffs: BDF constants ``(c0, c1[, c2])``.
        params: Model coefficients.
        v: Test function of the blocked space.
        source: Optional sequence of n UFL source terms (manufactured solutions only).
        lumped: Use vertex quadrature for the time derivative (P1 only).

    Returns:
        The residual form.
    """
    S = total_density(rho, params)
    gradP = pressure_gradient(S, params.m)
    dx = ufl.dx(degree=max(2, 2 * _degree(rho) + 2))
    dxt = ufl.dx(metadata=VERTEX) if lumped else dx
    F = 0
    for k in range(params.n):
        F += time_derivative(rho, history, coeffs, k) * v[k] * dxt
        F += params.b[k] * rho[k] * ufl.inner(gradP, ufl.grad(v[k])) * dx
        if params.sigma > 0:
            F += params.sigma * ufl.inner(ufl.grad(rho[k]), ufl.grad(v[k])) * dx
    return F + source_term(source, v, rho)


def lumped_time_residual(rho, history, coeffs, v, n: int, source=None) -> ufl.Form:
    """The part of the upwind scheme's residual that is a form: the lumped time derivative.

    ``sum_k sum_i m_i (c0 rho_k,i + c1 rho^n_k,i + c2 rho^{n-1}_k,i) v_k,i`` (vertex quadrature,
    so ``m_i > 0`` is the lumped P1 mass) minus an optional source. The transport and diffusion
    terms are edge fluxes, see :mod:`fem_crossdiff.upwind`.
    """
    F = 0
    for k in range(n):
        F += time_derivative(rho, history, coeffs, k) * v[k] * ufl.dx(metadata=VERTEX)
    return F + source_term(source, v, rho)


def source_term(source, v, rho):
    """``- sum_k int f_k v_k`` with a quadrature degree >= 2.

    Degree >= 2 avoids an FFCx 0.11 defect seen here, where a one-point rule in the same form
    as a vertex-rule integral assembles the vertex integral with midpoint values.
    """
    if source is None:
        return 0
    dx = ufl.dx(degree=max(4, 2 * _degree(rho) + 2))
    return -sum(f * v[k] * dx for k, f in enumerate(source))


def energy_form(rho, params: ModelParams, lumped: bool = True) -> ufl.Form:
    """The energy ``A`` of (1.3): ``(1/m) int S^m + sum_k (a_k/b_k) sigma int rho_k log rho_k``.

    With ``lumped=True`` the integrals use vertex quadrature, the discrete energy that the
    P1 upwind scheme dissipates; ``0 log 0 = 0``.
    """
    dx = ufl.dx(metadata=VERTEX) if lumped else ufl.dx(degree=2 * _degree(rho) + 2)
    S = total_density(rho, params)
    E = (1.0 / params.m) * ufl.max_value(S, 0.0) ** params.m * dx
    if params.sigma > 0:
        for k in range(params.n):
            r = ufl.max_value(rho[k], TINY)
            E += (params.a[k] / params.b[k]) * params.sigma * r * ufl.ln(r) * dx
    return E


def _degree(rho) -> int:
    return rho.ufl_function_space().ufl_element().embedded_superdegree
