"""Local system (1.1), upwind P1 edge fluxes with algebraic flux correction of the fractions.

The flux kernel is :class:`fem_crossdiff.afc.AfcFlux` (see ``docs/afc.md``): the first-order
scheme of :mod:`fem_crossdiff.models.local_upwind` plus the antidiffusive fluxes towards the
central species fractions, limited by a Zalesak-type limiter with local bounds and one
correction factor per edge for all species. Positive for every ``sigma >= 0`` with implicit
Euler, conservative, and reducing exactly to the one-species scheme for equal mobilities.
"""

from __future__ import annotations

import numpy as np

from fem_crossdiff.models import register
from fem_crossdiff.models.base import Model
from fem_crossdiff.models.muscl import MatrixFreeJacobian
from fem_crossdiff.params import ModelParams

#: Jacobians of :class:`LocalAfc`.
JACOBIANS = ("edge", "mf")
#: Assembled matrices of :class:`LocalAfc` (with ``"mf"``: the preconditioner).
PRECONDITIONERS = ("edge", "upwind")


@register("afc")
class LocalAfc(MatrixFreeJacobian, Model):
    """``R_k,i = sum_j b_k w_ij c_k,f F_ij + sigma w_ij (rho_k,i - rho_k,j)``, AFC face fractions.

    Args:
        V: Blocked P1 space.
        params: Model coefficients.
        negative_edges: Treatment of negative-weight edges, see
            :func:`fem_crossdiff.upwind.edge_weights` (those edges stay first order).
        jacobian: ``"edge"`` (default: the first-order scheme's edge pattern, exact but for
            the dependence of the Zalesak factors on the nodes' neighbourhoods, which is held;
            Newton converges linearly, measured contraction about 0.25 per iteration) or
            ``"mf"`` (exact up to a difference quotient, applied matrix-free and
            preconditioned by the edge matrix; one flux evaluation per Krylov iteration).
        preconditioner: The assembled matrix: ``"edge"`` (default, the edge Jacobian) or,
            with ``jacobian="mf"`` only, ``"upwind"`` (the first-order scheme's Jacobian at
            the iterate, as ``muscl``'s default: multigrid on an M-matrix-like operator).
    """

    def __init__(self, V, params: ModelParams, negative_edges: str = "voronoi",
                 jacobian: str = "edge", preconditioner: str = "edge"):
        from fem_crossdiff.afc import AfcFlux
        from fem_crossdiff.errors import ParameterError

        if jacobian not in JACOBIANS:
            raise ParameterError("jacobian", jacobian, f"one of {', '.join(JACOBIANS)}")
        if preconditioner not in PRECONDITIONERS or (preconditioner == "upwind"
                                                     and jacobian != "mf"):
            raise ParameterError("preconditioner", preconditioner,
                                 "edge, or upwind with jacobian='mf'")
        self.preconditioner = preconditioner
        super().__init__(V, params)
        self.negative_edges = negative_edges
        self.flux = AfcFlux(V, params, negative_edges)
        self.jacobian = jacobian
        self._ctx = None

    def residual(self, rho):
        """Edge fluxes summed per node."""
        return self.flux.residual(rho)

    @property
    def petsc_overrides(self) -> dict:
        """Multigrid smooths with the assembled matrix, not the shell (``"upwind"``)."""
        return {"pc_use_amat": False} if self.preconditioner == "upwind" else {}

    def add_jacobian(self, A, rho):
        """Edge Jacobian blocks (Zalesak factors held), or the first-order scheme's."""
        f = self.flux
        if self.preconditioner != "upwind":
            f.add_jacobian(A, rho)
            return
        terms = f._edge_terms(rho)[1]
        # c_f = c_up: the held-factor blocks with alpha = 0 (the matrix-free correction
        # subtracts these same blocks, f._data)
        terms = (*terms[:7], np.zeros_like(terms[7]), terms[13][3], *terms[9:13])
        ui, uj, di, dj, _ = f._held_factor_blocks(terms)
        if f._data is None:
            f._data = np.empty((f._nnzb, f.n * f.n))
        f._write_blocks(ui, uj, di, dj, f._data)
        f.set_matrix(A, f._data)

    def describe(self):
        """Non-Delaunay meshes: how many edges, and what is done with them."""
        from fem_crossdiff.upwind import negative_edges_message

        msg = negative_edges_message(self.flux.negative_edges, self.negative_edges)
        return None if msg is None else msg + " (and stay first order)"
