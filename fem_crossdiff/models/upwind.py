"""Local system (1.1), positivity-preserving P1 edge fluxes on simplices (first order).

Why this scheme. Standard Galerkin (consistent or lumped mass) produces negative densities for
segregated or compactly supported data, and log-density unknowns fail for small ``sigma`` and
at ``sigma = 0`` (measured, see ``docs/positivity.md``). We use an edge-based finite-volume
form of lumped P1 with the stiffness weights ``w_ij = -K_ij`` and fractional-flow upwinding:

    R_k,i = m_i d_t rho_k,i + sum_{j ~ i} G_k,ij,
    G_k,ij = b_k w_ij c_k,up F_ij + sigma w_ij (rho_k,i - rho_k,j),
    F_ij = (S_i + S_j)/2 (P_i - P_j),   c_k = rho_k / S,

where ``up`` is the node with the larger pressure. ``c_k F`` approximates ``rho_k grad P``
(``c_k S = rho_k``), so the scheme is consistent with Definition 1.5, and:

* mass: ``G_k,ji = -G_k,ij`` (each edge moves mass from one node to the other), so every
  species' mass is conserved to round-off at every Newton iterate's converged solution;
* positivity: with ``w_ij >= 0`` (Delaunay triangulations in 2D; right-angled/acute meshes in
  general) the implicit-Euler step is an M-matrix system in each species: where ``rho_k,i = 0``
  the outgoing fluxes vanish (``c_k,i = 0``) and the incoming ones are >= 0, hence
  ``rho_k^{n+1} >= 0`` for every ``sigma >= 0``, including the porous-medium limit ``sigma = 0``;
* equal mobilities: summing ``a_k G_k`` gives exactly the same scheme for ``u = sum a_k rho_k``
  with one species (``sum_k a_k c_k = 1``), the discrete analogue of Theorem 1.8's reduction;
* non-integer ``m``: only nodal values ``P_i = S_i^(m-1)`` appear, never ``S^(m-3)``.

Non-Delaunay meshes (most tetrahedral meshes: about a fifth of the edges of a gmsh ball have
``w_ij < 0``, whatever gmsh's 3D algorithm or optimiser; ``docs/tets.md``). On such an edge the
flux moves mass against the gradient and can empty a node. By default (``negative_edges =
"voronoi"``) the weights on tetrahedra are those of the circumcentric (Voronoi) dual
(:func:`~fem_crossdiff.discretisation.edges.circumcentric_weights`: a two-point flux through the
dual face, >= 0 by construction on Delaunay meshes, negative on about 1% of the edges of gmsh's
default ball), and the fluxes of the remaining negative edges are multiplied by a limiter
``theta_k`` that is 1 unless the node the mass leaves holds less than a quarter of the other
node's density, and vanishes when it is empty
(:func:`~fem_crossdiff.discretisation.edges.positivity_limiter`): positivity and conservation
hold as above. ``"front"`` applies the same limiter to P1's own negative weights (consistent
wherever the density varies by less than a factor 4 across an edge); the older ``"limit"``
limits whenever the source is the emptier node, which is inconsistent (3D Barenblatt rate about
0.75, against 1.5 for ``"voronoi"`` and 1.35 for ``"front"``); dropping those edges leaves an
O(1) error.

The price is first-order numerical diffusion ``~ h |grad P| / 2`` in the species fractions
(the total density ``S`` is transported centrally). BDF2 is not positivity preserving in general
(a negative history coefficient): the stepper checks the minimum and rejects such steps.

The edge weights are computed once per mesh from the owned cells; contributions of edges that
touch ghost vertices are added through PETSc's reverse ghost update (vectors) and off-process
stash (matrices), so the scheme is partition independent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fem_crossdiff.discretisation.edges import limit_fluxes, negative_edges_message
from fem_crossdiff.models import register
from fem_crossdiff.models.base import Model
from fem_crossdiff.models.edge_flux import EdgeFlux
from fem_crossdiff.params import ModelParams

__all__ = ["LocalUpwind", "UpwindFlux", "UpwindState"]


@dataclass(frozen=True)
class UpwindState:
    """Per-edge state of the first-order flux (arrays per edge, ``(E, n)`` or ``(E,)``).

    Attributes:
        r_i, r_j: Densities at the ends.
        S_i, S_j: Total densities ``max(sum_k a_k rho_k, 0)`` at the ends.
        P_i, P_j: Pressures at the ends.
        up_i: The first end is upstream (the larger pressure).
        c: Species fractions at the upstream end.
        inv_S: ``1 / S`` at the upstream end (0 in vacuum).
        F: ``S_m (P_i - P_j)``.
        S_m: ``(S_i + S_j) / 2``.
        dP: ``P_i - P_j``.
        lim: The positivity limiter's ``(theta, G dtheta_i, G dtheta_j)`` or ``None``.
    """

    r_i: np.ndarray
    r_j: np.ndarray
    S_i: np.ndarray
    S_j: np.ndarray
    P_i: np.ndarray
    P_j: np.ndarray
    up_i: np.ndarray
    c: np.ndarray
    inv_S: np.ndarray
    F: np.ndarray
    S_m: np.ndarray
    dP: np.ndarray
    lim: tuple | None


class UpwindFlux(EdgeFlux):
    """Edge-flux residual and Jacobian of the upwind scheme on a blocked P1 space.

    Args:
        V: Blocked P1 space with one component per species.
        params: Model coefficients.
        negative_edges: Treatment of negative-weight edges, see
            :func:`~fem_crossdiff.discretisation.edges.edge_weights`.
    """

    def edge_state(self, rho: np.ndarray) -> tuple[np.ndarray, UpwindState]:
        """Edge fluxes ``G`` (E, n) and the intermediate edge quantities of the Jacobian.

        SNES evaluates the residual and then the Jacobian at the same iterate: the edge terms of
        the last state are kept and reused when ``rho`` is unchanged.
        """
        key = self._cache_key
        if key is not None and np.array_equal(key, rho):
            return self._cache
        p = self.params
        ri, rj = rho[self.I], rho[self.J]
        Si = np.maximum(ri @ self.a, 0.0)
        Sj = np.maximum(rj @ self.a, 0.0)
        Pi, Pj = self.law.pressure(Si), self.law.pressure(Sj)
        up_i = Pi >= Pj
        r_up = np.where(up_i[:, None], ri, rj)
        S_up = np.where(up_i, Si, Sj)
        safe = S_up > 1e-300
        inv_S = np.where(safe, 1.0 / np.where(safe, S_up, 1.0), 0.0)
        c = r_up * inv_S[:, None]  # fractions c_k at the upstream node
        dP = Pi - Pj
        Sm = 0.5 * (Si + Sj)
        F = Sm * dP
        q = (self.b * c) * F[:, None] + p.sigma * (ri - rj)  # G = w q
        G = self.W[:, None] * q
        lim = limit_fluxes(G, q, ri, rj, self.limited, self.beta)
        out = G, UpwindState(r_i=ri, r_j=rj, S_i=Si, S_j=Sj, P_i=Pi, P_j=Pj, up_i=up_i, c=c,
                             inv_S=inv_S, F=F, S_m=Sm, dP=dP, lim=lim)
        self._cache_key = rho.copy()
        self._cache = out
        return out

    def fill_blocks(self, rho: np.ndarray, out: np.ndarray):
        """Write the block-CSR values into ``out`` (nnzb, n * n); work arrays are reused."""
        p, w = self.params, self.W
        s = self.edge_state(rho)[1]
        Si, Sj, up_i, c, inv_S, F, Sm, dP, lim = (s.S_i, s.S_j, s.up_i, s.c, s.inv_S, s.F,
                                                  s.S_m, s.dP, s.lim)
        # Per edge, each block is rank one plus diagonal (why: dF/drho is a multiple of a and
        # dc/drho = (I - c a^T)/S), so J_i[k, l] = u_k a_l beta_i + delta_kl d_i[k] with
        # u_k = b_k w c_k, and likewise for J_j; only n-vectors are summed over edges.
        dPi, dPj = self.law.derivative(Si), self.law.derivative(Sj)
        alpha_i = 0.5 * dP + Sm * dPi
        alpha_j = 0.5 * dP - Sm * dPj
        g = F * inv_S  # upstream derivative of c_k F, without b_k w
        g_i = np.where(up_i, g, 0.0)
        g_j = g - g_i
        beta_i = alpha_i - g_i
        beta_j = alpha_j - g_j
        u = (w[:, None] * self.b) * c  # (E, n)
        wb_g_i = (w * g_i)[:, None] * self.b
        wb_g_j = (w * g_j)[:, None] * self.b
        sw = (p.sigma * w)[:, None]
        di = wb_g_i + sw
        dj = wb_g_j - sw
        if lim is not None:
            # limited edges: theta_k scales row k of both blocks, and d(theta_k)/d(rho_k)
            # adds G_k dtheta_k to the diagonals
            e, (theta, g_dth_i, g_dth_j) = self.limited, lim
            u[e] *= theta
            di[e] = theta * di[e] + g_dth_i
            dj[e] = theta * dj[e] + g_dth_j
        ui = u * beta_i[:, None]
        uj = u * beta_j[:, None]
        self.write_blocks(ui, uj, di, dj, out)


@register("upwind")
class LocalUpwind(Model):
    """``R_k,i = sum_j b_k w_ij c_k,up F_ij + sigma w_ij (rho_k,i - rho_k,j)`` on P1 simplices.

    Args:
        V: Blocked P1 space.
        params: Model coefficients.
        negative_edges: Treatment of negative-weight edges, see
            :func:`~fem_crossdiff.discretisation.edges.edge_weights`.
    """

    def __init__(self, V, params: ModelParams, negative_edges: str = "voronoi"):
        super().__init__(V, params)
        self.negative_edges = negative_edges
        self.flux = UpwindFlux(V, params, negative_edges)

    def residual(self, rho):
        """Edge fluxes summed per node."""
        return self.flux.residual(rho)

    def add_jacobian(self, A, rho):
        """Edge Jacobian blocks."""
        self.flux.add_jacobian(A, rho)

    def describe(self):
        """Non-Delaunay meshes: how many edges, and what is done with them."""
        return negative_edges_message(self.flux.negative_edges, self.negative_edges)
