"""UFL form builders for system (1.1) and its energy (1.3).

Notation: ``rho`` is a blocked P_k function with ``n`` components (one per species),
``S = sum_l a_l rho_l`` and ``P`` the pressure law of the parameters (``S^(m-1)``). Time
derivatives are written with BDF coefficients ``c = (c0, c1, c2)`` (constants that already
contain ``1/dt``), so one compiled form serves implicit Euler (``c2 = 0``) and variable-step
BDF2: ``d_t rho ~ c0 rho^{n+1} + c1 rho^n + c2 rho^{n-1}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import ufl

from fem_crossdiff.compat import MIN_DEGREE_BESIDE_VERTEX_RULE
from fem_crossdiff.laws import TINY
from fem_crossdiff.params import ModelParams

#: Vertex quadrature: the lumped mass matrix of P1 elements (diagonal, positive).
VERTEX = {"quadrature_rule": "vertex", "quadrature_degree": 1}


def total_density(rho, params: ModelParams):
    """``S = sum_l a_l rho_l``."""
    return sum(a * rho[k] for k, a in enumerate(params.a))


def time_derivative(rho, history: Sequence, coeffs: Sequence, k: int):
    """``c0 rho_k + c1 rho_k^n + c2 rho_k^{n-1}`` for species ``k``."""
    expr = coeffs[0] * rho[k]
    for c, old in zip(coeffs[1:], history):
        expr = expr + c * old[k]
    return expr


def time_residual(rho, history, coeffs, v, n: int, lumped: bool, source=None) -> ufl.Form:
    """The time term ``sum_k int d_t rho_k v_k`` minus an optional source.

    With ``lumped`` the integral uses vertex quadrature (P1: ``m_i > 0`` the lumped mass).
    """
    dxt = ufl.dx(metadata=VERTEX) if lumped else ufl.dx(degree=2 * _degree(rho) + 2)
    F = sum(time_derivative(rho, history, coeffs, k) * v[k] * dxt for k in range(n))
    return F + source_term(source, v, rho)


def galerkin_spatial(rho, params: ModelParams, v) -> ufl.Form:
    """Transport and diffusion of the weak form of Definition 1.5, any degree.

    ``sum_k int b_k rho_k grad P . grad v_k + sigma grad rho_k . grad v_k``. The no-flux wall
    condition is natural (no boundary term).
    """
    S = total_density(rho, params)
    gradP = params.law.ufl_pressure_gradient(S)
    dx = ufl.dx(degree=max(2, 2 * _degree(rho) + 2))
    F = 0
    for k in range(params.n):
        F += params.b[k] * rho[k] * ufl.inner(gradP, ufl.grad(v[k])) * dx
        if params.sigma > 0:
            F += params.sigma * ufl.inner(ufl.grad(rho[k]), ufl.grad(v[k])) * dx
    return F


def source_term(source, v, rho):
    """``- sum_k int f_k v_k`` (at least :data:`compat.MIN_DEGREE_BESIDE_VERTEX_RULE`)."""
    if source is None:
        return 0
    dx = ufl.dx(degree=max(4, MIN_DEGREE_BESIDE_VERTEX_RULE, 2 * _degree(rho) + 2))
    return -sum(f * v[k] * dx for k, f in enumerate(source))


def energy_form(rho, params: ModelParams, lumped: bool = True) -> ufl.Form:
    """The energy ``A`` of (1.3): ``int e(S) + sum_k (a_k/b_k) sigma int rho_k log rho_k``.

    ``e`` is the energy density of the pressure law (``S^m / m``). With ``lumped=True`` the
    integrals use vertex quadrature, the discrete energy that the P1 upwind scheme dissipates;
    ``0 log 0 = 0``.
    """
    dx = ufl.dx(metadata=VERTEX) if lumped else ufl.dx(degree=2 * _degree(rho) + 2)
    E = params.law.ufl_energy_density(total_density(rho, params)) * dx
    if params.sigma > 0:
        for k in range(params.n):
            r = ufl.max_value(rho[k], TINY)
            E += (params.a[k] / params.b[k]) * params.sigma * r * ufl.ln(r) * dx
    return E


def _degree(rho) -> int:
    return rho.ufl_function_space().ufl_element().embedded_superdegree
