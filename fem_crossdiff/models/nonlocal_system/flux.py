"""Upwind P1 edge fluxes driven by a given nodal potential (the transport of (1.5))."""

from __future__ import annotations

import numpy as np

from fem_crossdiff.compat import PETSc
from fem_crossdiff.discretisation.edges import edge_weights, limit_fluxes, limiter_ratio
from fem_crossdiff.discretisation.pattern import BlockPattern
from fem_crossdiff.params import ModelParams

__all__ = ["PotentialFlux"]


class PotentialFlux(BlockPattern):
    """Upwind edge fluxes driven by a given nodal potential ``g``.

    ``G_k,ij = b_k w_ij rho_k,up (g_i - g_j) + sigma w_ij (rho_k,i - rho_k,j)`` with the
    upstream node the one with larger ``g``: linear in ``rho`` for a fixed ``g``, so its
    Jacobian blocks are diagonal (species decouple for a given potential).

    Edges of negative total weight are limited as in the local scheme
    (:func:`fem_crossdiff.discretisation.edges.positivity_limiter`).

    Args:
        V: Blocked P1 space with one component per species.
        params: Model coefficients.
        negative_edges: Treatment of negative-weight edges, see
            :func:`fem_crossdiff.discretisation.edges.edge_weights`.
    """

    def __init__(self, V, params: ModelParams, negative_edges: str = "voronoi"):
        self.params, self.n = params, params.n
        self.I, self.J, self.W, self.limited, self.negative_edges = edge_weights(V, negative_edges)
        self.beta = limiter_ratio(negative_edges)
        self.nloc = V.dofmap.index_map.size_local + V.dofmap.index_map.num_ghosts
        self.b = np.asarray(params.b)
        # scalar CSR pattern of (ii, ij, ji, jj) entries, built once
        I, J, nloc = self.I.astype(np.int64), self.J.astype(np.int64), self.nloc
        keys, self._pos = np.unique(np.concatenate([I * nloc + I, I * nloc + J,
                                                    J * nloc + I, J * nloc + J]),
                                    return_inverse=True)
        self.indptr = np.zeros(nloc + 1, dtype=PETSc.IntType)
        np.cumsum(np.bincount(keys // nloc, minlength=nloc), out=self.indptr[1:])
        self.indices = (keys % nloc).astype(PETSc.IntType)
        self._nnzb = keys.size
        self._cache_key = self._cache = None

    def _edge_terms(self, rho, g):
        """Edge fluxes ``G`` (limited) and what the derivatives need, for ``rho`` and ``g``.

        Kept for the last ``(rho, g)``: the matrix-free Jacobian applies the potential
        derivative once per Krylov iteration at the same state.
        """
        key = self._cache_key
        if key is not None and np.array_equal(key[0], rho) and np.array_equal(key[1], g):
            return self._cache
        dg = g[self.I] - g[self.J]
        up_i = dg >= 0
        ri, rj = rho[self.I], rho[self.J]
        r_up = np.where(up_i[:, None], ri, rj)
        q = self.b * r_up * dg[:, None] + self.params.sigma * (ri - rj)  # G = w q
        G = self.W[:, None] * q
        lim = limit_fluxes(G, q, ri, rj, self.limited, self.beta)
        self._cache_key, self._cache = (rho.copy(), g.copy()), (G, dg, up_i, r_up, lim)
        return self._cache

    def _scatter(self, G):
        R = np.empty((self.nloc, self.n))
        for k in range(self.n):
            R[:, k] = np.bincount(self.I, G[:, k], self.nloc)
            R[:, k] -= np.bincount(self.J, G[:, k], self.nloc)
        return R

    def residual(self, rho, potential):
        """Edge residual for nodal ``rho`` (nloc, n) and potential ``g`` (nloc,)."""
        return self._scatter(self._edge_terms(rho, potential)[0])

    def apply_potential_derivative(self, rho, potential, dpot):
        """Edge residual change for a potential change ``dpot`` (rho, upstream, limiter fixed)."""
        _, _, _, r_up, lim = self._edge_terms(rho, potential)
        ddg = dpot[self.I] - dpot[self.J]
        G = self.b * r_up * (self.W * ddg)[:, None]
        if lim is not None:
            G[self.limited] *= lim[0]
        return self._scatter(G)

    def jacobian_blocks(self, rho, potential):
        """Block-CSR values of the derivative with respect to ``rho`` at fixed ``g``."""
        n, w = self.n, self.W
        _, dg, up_i, _, lim = self._edge_terms(rho, potential)
        diag = self.b[None, :] * (w * dg)[:, None]  # (E, n): d G_k / d rho_k,up
        Ji = np.where(up_i[:, None], diag, 0.0) + self.params.sigma * w[:, None]
        Jj = np.where(up_i[:, None], 0.0, diag) - self.params.sigma * w[:, None]
        if lim is not None:  # d(theta G) = theta dG + G dtheta, species by species
            e, (theta, g_dth_i, g_dth_j) = self.limited, lim
            Ji[e] = theta * Ji[e] + g_dth_i
            Jj[e] = theta * Jj[e] + g_dth_j
        vals = np.concatenate([Ji, Jj, -Ji, -Jj])  # diagonal of each n x n block
        data = np.zeros((self._nnzb, n, n))
        for k in range(n):
            data[:, k, k] = np.bincount(self._pos, vals[:, k], self._nnzb)
        return data

    def local_potential_blocks(self, rho, potential, c, a):
        """Block-CSR values of the derivative through a local potential ``dg_i = c_i a . drho_i``.

        The edge fluxes' change for a potential change that is local (node by node) with
        coefficient ``c`` (nloc,) and species weights ``a`` (n,): full ``n x n`` blocks
        ``b_k w_ij rho_k,up c_p a_l`` (upstream and limiter fixed, as in
        :meth:`apply_potential_derivative`), so that adding them to :meth:`jacobian_blocks`
        puts a local part of the potential's derivative into an assembled matrix.
        """
        n = self.n
        _, _, _, r_up, lim = self._edge_terms(rho, potential)
        wb = self.b[None, :] * r_up * self.W[:, None]  # (E, n): d G_k / d g_i
        if lim is not None:
            wb[self.limited] *= lim[0]
        a = np.asarray(a, dtype=float)
        Ji = wb[:, :, None] * (c[self.I][:, None, None] * a[None, None, :])
        Jj = -wb[:, :, None] * (c[self.J][:, None, None] * a[None, None, :])
        vals = np.concatenate([Ji, Jj, -Ji, -Jj])
        data = np.zeros((self._nnzb, n, n))
        for k in range(n):
            for m in range(n):
                data[:, k, m] = np.bincount(self._pos, vals[:, k, m], self._nnzb)
        return data

    def add_jacobian(self, A: PETSc.Mat, rho, potential, local=None):
        """Set ``A`` to the edge Jacobian (COO assembly, see ``pattern.BlockPattern``).

        Args:
            A: The matrix.
            rho: Nodal densities (nloc, n).
            potential: Nodal potential (nloc,).
            local: Optional ``(c, a)``: also add :meth:`local_potential_blocks`.
        """
        data = self.jacobian_blocks(rho, potential)
        if local is not None:
            data += self.local_potential_blocks(rho, potential, *local)
        self.set_matrix(A, data)
