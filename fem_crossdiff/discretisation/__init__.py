"""Scheme-independent machinery: spaces, forms, edge weights, block patterns, gradients, sizes.

Every edge-flux model (:mod:`fem_crossdiff.models`) is written on these pieces; nothing here
imports a model.

* :mod:`.edges`: P1 stiffness and circumcentric (Voronoi) edge weights, the treatment of
  negative-weight edges and their positivity limiter;
* :mod:`.pattern`: the block-CSR pattern of edge Jacobians and its public writers;
* :mod:`.gradients`: recovered nodal gradients of P1 data;
* :mod:`.spaces`: the blocked species space and its scalar component space;
* :mod:`.forms`: the UFL forms (time derivative, Galerkin weak form of the local system,
  sources, energy) and the vertex quadrature of lumped masses;
* :mod:`.mesh_sizes`: the largest and smallest cells and the bounding-box diameter, reduced
  over ranks (public as :func:`fem_crossdiff.mesh_sizes`).
"""

from __future__ import annotations

from fem_crossdiff.discretisation.edges import (
    circumcentric_weights,
    dual_volumes,
    edge_weights,
    limit_fluxes,
    limiter_ratio,
    negative_edges_message,
    p1_cell_gradients,
    p1_edge_weights,
    positivity_limiter,
    total_edge_weights,
)
from fem_crossdiff.discretisation.gradients import NodalGradient
from fem_crossdiff.discretisation.mesh_sizes import MeshSizes, mesh_sizes
from fem_crossdiff.discretisation.pattern import BlockPattern, EdgeBlocks

__all__ = ["BlockPattern", "MeshSizes", "EdgeBlocks", "NodalGradient", "circumcentric_weights",
           "dual_volumes", "edge_weights", "limit_fluxes", "limiter_ratio", "mesh_sizes",
           "negative_edges_message", "p1_cell_gradients", "p1_edge_weights",
           "positivity_limiter", "total_edge_weights"]
