"""Local system (1.1), positivity-preserving P1 edge fluxes (the default model).

The flux kernel (edge weights, fractional-flow upwinding, the limiter of negative-weight
edges) is :class:`fem_crossdiff.upwind.UpwindFlux`; this class binds it to the interface.
"""

from __future__ import annotations

from fem_crossdiff.models import register
from fem_crossdiff.models.base import Model
from fem_crossdiff.params import ModelParams
from fem_crossdiff.upwind import UpwindFlux, negative_edges_message


@register("upwind")
class LocalUpwind(Model):
    """``R_k,i = sum_j b_k w_ij c_k,up F_ij + sigma w_ij (rho_k,i - rho_k,j)`` on P1 simplices.

    Args:
        V: Blocked P1 space.
        params: Model coefficients.
        negative_edges: Treatment of negative-weight edges, see
            :func:`fem_crossdiff.upwind.edge_weights`.
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
