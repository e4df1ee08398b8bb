"""The ``"afc"`` model: binds :class:`.flux.AfcFlux` to the interface (see the package)."""

from __future__ import annotations

import dataclasses

import numpy as np

from fem_crossdiff.discretisation.edges import negative_edges_message
from fem_crossdiff.models import register
from fem_crossdiff.models.afc.flux import AfcFlux
from fem_crossdiff.models.afc.options import AfcOptions
from fem_crossdiff.models.base import Model
from fem_crossdiff.models.jacobians import MatrixFreeJacobian
from fem_crossdiff.params import ModelParams


@register("afc", options=AfcOptions)
class LocalAfc(MatrixFreeJacobian, Model):
    """``R_k,i = sum_j b_k w_ij c_k,f F_ij + sigma w_ij (rho_k,i - rho_k,j)``, AFC face fractions.

    Args:
        V: Blocked P1 space.
        params: Model coefficients.
        negative_edges: Treatment of negative-weight edges, see
            :func:`fem_crossdiff.discretisation.edges.edge_weights` (those edges stay first
            order).
        options: The scheme's :class:`~fem_crossdiff.models.afc.options.AfcOptions`
            (default: its defaults). ``jacobian``: ``"edge"`` (default: the first-order
            scheme's edge pattern, exact but for the dependence of the Zalesak factors on the
            nodes' neighbourhoods, which is held; Newton converges linearly, measured
            contraction about 0.25 per iteration) or ``"mf"`` (exact up to a difference
            quotient, applied matrix-free and preconditioned by the edge matrix; one flux
            evaluation per Krylov iteration). ``preconditioner``, the assembled matrix:
            ``"edge"`` (default, the edge Jacobian) or, with ``jacobian="mf"`` only,
            ``"upwind"`` (the first-order scheme's Jacobian at the iterate, as ``muscl``'s
            default: multigrid on an M-matrix-like operator). ``smooth_width``: the
            limiter's smoothing.

    Attributes:
        options: The options in effect.
    """

    def __init__(self, V, params: ModelParams, negative_edges: str = "voronoi",
                 options: AfcOptions | None = None):
        self.options = options if options is not None else AfcOptions()
        self.preconditioner = self.options.preconditioner
        super().__init__(V, params)
        self.negative_edges = negative_edges
        self.flux = AfcFlux(V, params, negative_edges, self.options.smooth_width)
        self.jacobian = self.options.jacobian
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
        state = f.edge_state(rho)[1]
        # c_f = c_up: the held-factor blocks with alpha = 0 (the matrix-free correction
        # subtracts these same blocks, f.block_values)
        upwind = dataclasses.replace(state, phi=np.zeros_like(state.phi), c_f=state.c_up)
        ui, uj, di, dj, _ = f.held_factor_blocks(upwind)
        f.set_blocks(A, ui, uj, di, dj)

    def describe(self):
        """Non-Delaunay meshes: how many edges, and what is done with them."""
        msg = negative_edges_message(self.flux.negative_edges, self.negative_edges)
        return None if msg is None else msg + " (and stay first order)"
