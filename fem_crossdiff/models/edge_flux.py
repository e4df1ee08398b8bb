"""Edge-flux base: ``G_k,ij = b_k w_ij c_k F_ij + sigma w_ij (rho_k,i - rho_k,j)``.

Shared by the local system's P1 edge schemes (``upwind``, ``muscl``, ``afc``), which differ only
in the species fraction ``c_k`` on the edge: the upstream value, or a face value ``c_f = c_up
+ phi / 2 (c_dn - c_up)`` reconstructed by a limiter. This module holds what they share: the
residual (fluxes summed per node), the Jacobian written into the solver's matrix, and the
blocks of a face fraction with ``phi`` held (:meth:`EdgeFlux.held_factor_blocks`). A scheme
subclasses :class:`EdgeFlux` in its own module and gives :meth:`EdgeFlux.edge_state` and
:meth:`EdgeFlux.fill_blocks`.
"""

from __future__ import annotations

import numpy as np

from fem_crossdiff.compat import PETSc, fem
from fem_crossdiff.discretisation.pattern import EdgeBlocks
from fem_crossdiff.models.base import FaceState
from fem_crossdiff.params import ModelParams

__all__ = ["EdgeFlux"]


class EdgeFlux(EdgeBlocks):
    """Edge-flux residual and Jacobian on a blocked P1 space (a scheme subclasses it).

    Attributes:
        params: Model coefficients.
        b: Mobilities ``b_k``.
        law: The pressure law.
        block_values: The block-CSR values ``(nnzb, n * n)`` last written by
            :meth:`add_jacobian` or :meth:`set_blocks` (``None`` before).

    Args:
        V: Blocked P1 space with one component per species.
        params: Model coefficients.
        negative_edges: Treatment of negative-weight edges, see
            :func:`fem_crossdiff.discretisation.edges.edge_weights`.
    """

    def __init__(self, V: fem.FunctionSpace, params: ModelParams,
                 negative_edges: str = "voronoi"):
        self.params = params
        super().__init__(V, params.a, negative_edges)
        self.b = np.asarray(params.b)
        self.law = params.law
        self._cache_key = None
        self._cache = None
        self.block_values = None

    def edge_state(self, rho: np.ndarray):
        """Edge fluxes ``G`` ``(E, n)`` and the scheme's per-edge state at ``rho``.

        SNES evaluates the residual and then the Jacobian at the same iterate: a scheme keeps
        the result of the last state and returns it while ``rho`` is unchanged.
        """
        raise NotImplementedError

    def fill_blocks(self, rho: np.ndarray, out: np.ndarray) -> None:
        """Write the scheme's block-CSR Jacobian values into ``out`` ``(nnzb, n * n)``."""
        raise NotImplementedError

    def residual(self, rho: np.ndarray) -> np.ndarray:
        """Edge part of the residual on local (owned + ghost) nodes, shape ``(nloc, n)``.

        Args:
            rho: Local nodal values, shape ``(nloc, n)``.
        """
        return self.sum_to_nodes(self.edge_state(rho)[0])

    def jacobian_blocks(self, rho: np.ndarray) -> np.ndarray:
        """Block-CSR values ``(nnzb, n, n)`` of the edge part of the Jacobian."""
        out = np.empty((self.nnzb, self.n * self.n))
        self.fill_blocks(rho, out)
        return out.reshape(-1, self.n, self.n)

    def _values(self) -> np.ndarray:
        if self.block_values is None:
            self.block_values = np.empty((self.nnzb, self.n * self.n))
        return self.block_values

    def add_jacobian(self, A: PETSc.Mat, rho: np.ndarray):
        """Set ``A`` to the edge Jacobian (COO assembly: it replaces every entry of ``A``)."""
        self.fill_blocks(rho, self._values())
        self.set_matrix(A, self.block_values)

    def set_blocks(self, A: PETSc.Mat, ui: np.ndarray, uj: np.ndarray, di: np.ndarray,
                   dj: np.ndarray) -> None:
        """Set ``A`` to the blocks ``J_end = u_end a^T + diag(d_end)`` (into ``block_values``)."""
        self.write_blocks(ui, uj, di, dj, self._values())
        self.set_matrix(A, self.block_values)

    def held_factor_blocks(self, state: FaceState):
        """Edge blocks of a face fraction ``c_f = c_up + phi/2 (c_dn - c_up)``, ``phi`` held.

        Returns:
            ``(u_i, u_j, d_i, d_j, b w)``: ``J_end = u_end a^T + diag(d_end)`` for the layout of
            :meth:`write_blocks`, and the per-edge mobility weights ``b_k w_e``.
        """
        p, w = self.params, self.W
        s = state
        ci, cj, Si, Sj, inv_i, inv_j = s.c_i, s.c_j, s.S_i, s.S_j, s.inv_i, s.inv_j
        up_i, phi, cf, F, Sm, dP = s.up_i, s.phi, s.c_f, s.F, s.S_m, s.dP
        dPi, dPj = self.law.derivative(Si), self.law.derivative(Sj)
        alpha_i = 0.5 * dP + Sm * dPi  # dF / dS at either end
        alpha_j = 0.5 * dP - Sm * dPj
        # d c_f / d rho_end = lam_end (I - c_end a^T) / S_end, lam = 1 - phi/2 upstream,
        # phi/2 downstream; so J_end = b w (c_f alpha_end - lam_end g_end c_end) a^T
        # + diag(b w lam_end g_end) with g_end = F / S_end.
        lam_i = np.where(up_i, 1.0 - 0.5 * phi, 0.5 * phi)
        lam_j = 1.0 - lam_i
        gi = lam_i * F * inv_i
        gj = lam_j * F * inv_j
        bw = w[:, None] * self.b
        ui = bw * (cf * alpha_i[:, None] - gi[:, None] * ci)
        uj = bw * (cf * alpha_j[:, None] - gj[:, None] * cj)
        sw = (p.sigma * w)[:, None]
        di = bw * gi[:, None] + sw
        dj = bw * gj[:, None] - sw
        self.limit_factors(s.lim, ui, uj, di, dj)
        return ui, uj, di, dj, bw

    def limit_factors(self, lim, ui, uj, di, dj) -> None:
        """Apply the positivity flux limiter ``theta`` to block factors, in place.

        ``G_lim = theta G`` on the limited edges, so ``J_end = theta J_end + dtheta/drho G``
        with the second term diagonal (``lim = (theta, G dtheta_i, G dtheta_j)`` from
        :func:`~fem_crossdiff.discretisation.edges.limit_fluxes`; nothing to do when ``lim``
        is None).
        """
        if lim is None:
            return
        e, (theta, g_dth_i, g_dth_j) = self.limited, lim
        ui[e] *= theta
        uj[e] *= theta
        di[e] = theta * di[e] + g_dth_i
        dj[e] = theta * dj[e] + g_dth_j
