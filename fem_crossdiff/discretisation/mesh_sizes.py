"""Cell and domain sizes of a distributed mesh, reduced over all ranks.

The library's size rules are stated with these numbers: the nonlocal model and the particles'
mollifier need ``eps >= 2 h_max`` (the kernel must span two cells everywhere), and the
mollification operator refuses an ``eps`` larger than the domain's ``diameter`` (the operator
would be dense). Users choosing ``eps`` read the same numbers here instead of from DOLFINx
internals, so a value accepted by this check is accepted by the solver.
"""

from __future__ import annotations

from typing import NamedTuple

import basix
import numpy as np

from fem_crossdiff.compat import MPI, basix_cell

__all__ = ["MeshSizes", "mesh_sizes", "owned_cell_geometry"]


def owned_cell_geometry(msh) -> np.ndarray:
    """Geometry node coordinates of the owned cells, shape ``(ncells, nnodes, gdim)``."""
    tdim, gdim = msh.topology.dim, msh.geometry.dim
    ncells = msh.topology.index_map(tdim).size_local
    gdofs = msh.geometry.dofmaps[0][:ncells]
    return msh.geometry.x[gdofs][:, :, :gdim]


class MeshSizes(NamedTuple):
    """Global sizes of a mesh (the same numbers on every rank).

    Attributes:
        h_max: The largest cell diameter, a cell's diameter being the largest distance between
            two of its vertices (the longest edge of a triangle or tetrahedron, the longest
            diagonal of a quadrilateral or hexahedron).
        h_min: The smallest cell diameter, in the same sense.
        diameter: The diameter of the domain's axis-aligned bounding box.
    """

    h_max: float
    h_min: float
    diameter: float


def mesh_sizes(msh) -> MeshSizes:
    """Return the largest and smallest cell diameters and the domain's diameter.

    Collective: every rank of the mesh's communicator must call it, and all get the same
    numbers. Only the cells' vertices count (the corners of a curved, higher-order cell), so
    ``h_max`` is the number that ``eps >= 2 h_max`` is checked against by the nonlocal model,
    the particles and ``crossdiff check``.

    Args:
        msh: A :class:`dolfinx.mesh.Mesh`, or a :class:`fem_crossdiff.meshes.Geometry` (its
            ``mesh`` is used).

    Returns:
        A :class:`MeshSizes` ``(h_max, h_min, diameter)``.

    Raises:
        TypeError: ``msh`` is neither a DOLFINx mesh nor a geometry holding one.
    """
    msh = getattr(msh, "mesh", msh)  # a Geometry holds its mesh; a DOLFINx Mesh has no .mesh
    if not (hasattr(msh, "topology") and hasattr(msh, "geometry") and hasattr(msh, "comm")):
        raise TypeError(f"mesh_sizes needs a DOLFINx mesh or a meshes.Geometry, got "
                        f"{type(msh).__name__}")
    gdim = msh.geometry.dim
    nverts = basix.geometry(basix_cell(msh)).shape[0]
    corners = owned_cell_geometry(msh)[:, :nverts, :]  # owned cells: each counted once
    ncells = corners.shape[0]
    h_max, h_min = 0.0, np.inf  # neutral values for a rank that owns no cell
    if ncells:
        diff = corners[:, :, None, :] - corners[:, None, :, :]
        h_cell = np.sqrt(np.einsum("cabi,cabi->cab", diff, diff)).max(axis=(1, 2))
        h_max, h_min = float(h_cell.max()), float(h_cell.min())
    x = msh.geometry.x[:, :gdim]
    lo = x.min(axis=0) if x.shape[0] else np.full(gdim, np.inf)
    hi = x.max(axis=0) if x.shape[0] else np.full(gdim, -np.inf)
    comm = msh.comm
    lo_g, hi_g = np.empty_like(lo), np.empty_like(hi)
    comm.Allreduce(np.ascontiguousarray(lo), lo_g, op=MPI.MIN)
    comm.Allreduce(np.ascontiguousarray(hi), hi_g, op=MPI.MAX)
    return MeshSizes(h_max=float(comm.allreduce(h_max, op=MPI.MAX)),
                     h_min=float(comm.allreduce(h_min, op=MPI.MIN)),
                     diameter=float(np.linalg.norm(hi_g - lo_g)))
