"""Linear Fokker-Planck transport in a given potential (lagged, one evaluation per step).

``d_t rho_k = div(b_k rho_k grad phi) + sigma Lap rho_k`` with ``phi = potential(rho^n)``
evaluated at the previous state: the McKean-Vlasov coupling and tests of the transport.
"""

from __future__ import annotations

from collections.abc import Callable

from fem_crossdiff.discretisation.edges import negative_edges_message
from fem_crossdiff.models import register
from fem_crossdiff.models.base import Model
from fem_crossdiff.models.nonlocal_system.flux import PotentialFlux
from fem_crossdiff.params import ModelParams


@register("upwind", pde="potential", default=True)
class GivenPotential(Model):
    """Upwind P1 fluxes ``b_k w_ij rho_k,up (phi_i - phi_j)`` for a lagged potential ``phi``.

    Args:
        V: Blocked P1 space.
        params: Model coefficients (``a`` and ``m`` unused).
        potential: ``potential(rho_local) -> nodal array`` (owned + ghost values).
        negative_edges: Treatment of negative-weight edges.
    """

    def __init__(self, V, params: ModelParams, potential: Callable,
                 negative_edges: str = "voronoi"):
        super().__init__(V, params)
        self.potential, self.negative_edges = potential, negative_edges
        self.flux = PotentialFlux(V, params, negative_edges)
        self.g = None

    def begin_step(self, rho):
        """Evaluate the potential at the previous state."""
        self.g = self.potential(rho)

    def residual(self, rho):
        """Edge fluxes in the lagged potential."""
        return self.flux.residual(rho, self.g)

    def add_jacobian(self, A, rho):
        """Edge Jacobian (linear in ``rho`` for a fixed potential)."""
        self.flux.add_jacobian(A, rho, self.g)

    def describe(self):
        """Non-Delaunay meshes: how many edges, and what is done with them."""
        return negative_edges_message(self.flux.negative_edges, self.negative_edges)
