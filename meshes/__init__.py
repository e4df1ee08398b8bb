"""gmsh geometry builders for fem-crossdiff: gmsh on rank 0, DOLFINx meshes on every rank.

Importing this package imports DOLFINx (through :mod:`fem_crossdiff.compat`). Builders:
``interval``, ``rectangle``, ``disk``, ``ellipse``, ``annulus``, ``l_shape``,
``rectangle_with_obstacles``, ``box``, ``ball``; by name via :func:`build` and :data:`BUILDERS`.
User meshes: :func:`read_msh`; gmsh files of built geometries: :func:`write_msh`. Sizes of any
mesh (``h_max``, ``h_min``, the domain's diameter, reduced over the ranks): :func:`mesh_sizes`.
"""

from fem_crossdiff.discretisation.mesh_sizes import MeshSizes, mesh_sizes

from .builders import (
    BUILDERS,
    Geometry,
    GmshError,
    annulus,
    ball,
    box,
    build,
    disk,
    ellipse,
    exterior_facets,
    interval,
    l_shape,
    read_msh,
    rectangle,
    rectangle_with_obstacles,
    validate,
    write_msh,
)
from .specs import (
    DOMAIN_TAG,
    AnnulusSpec,
    BallSpec,
    BoxSpec,
    DiskSpec,
    EllipseSpec,
    IntervalSpec,
    LShapeSpec,
    ObstaclesSpec,
    RectangleSpec,
)

__all__ = [
    "BUILDERS",
    "DOMAIN_TAG",
    "Geometry",
    "GmshError",
    "annulus",
    "ball",
    "box",
    "build",
    "disk",
    "ellipse",
    "exterior_facets",
    "interval",
    "l_shape",
    "mesh_sizes",
    "read_msh",
    "rectangle",
    "rectangle_with_obstacles",
    "validate",
    "write_msh",
    "AnnulusSpec",
    "BallSpec",
    "BoxSpec",
    "DiskSpec",
    "EllipseSpec",
    "IntervalSpec",
    "LShapeSpec",
    "MeshSizes",
    "ObstaclesSpec",
    "RectangleSpec",
]
