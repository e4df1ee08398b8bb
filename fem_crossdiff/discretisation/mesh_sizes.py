"""Mesh sizes reduced over the ranks (scheme independent)."""

from __future__ import annotations

import basix
import numpy as np

from fem_crossdiff.compat import MPI, basix_cell

__all__ = ["mesh_sizes", "owned_cell_geometry"]


def owned_cell_geometry(msh) -> np.ndarray:
    """Geometry node coordinates of the owned cells, shape ``(ncells, nnodes, gdim)``."""
    tdim, gdim = msh.topology.dim, msh.geometry.dim
    ncells = msh.topology.index_map(tdim).size_local
    gdofs = msh.geometry.dofmaps[0][:ncells]
    return msh.geometry.x[gdofs][:, :, :gdim]


def mesh_sizes(msh) -> tuple[float, float]:
    """``(h_max, L)``: the largest cell diameter and the bounding-box diameter (collective).

    Both are reduced over the ranks, so every rank gets the mesh's values whatever the
    partition (``h_max`` is the largest distance between two vertices of a cell).
    """
    gdim = msh.geometry.dim
    G = owned_cell_geometry(msh)
    nv = basix.geometry(basix_cell(msh)).shape[0]
    V = G[:, :nv, :]
    hmax = 0.0
    if V.shape[0]:
        diff = V[:, :, None, :] - V[:, None, :, :]
        hmax = float(np.sqrt(np.einsum("cabi,cabi->cab", diff, diff)).max())
    x = msh.geometry.x[:, :gdim]
    lo = x.min(axis=0) if x.shape[0] else np.full(gdim, np.inf)
    hi = x.max(axis=0) if x.shape[0] else np.full(gdim, -np.inf)
    comm = msh.comm
    lo_g, hi_g = np.empty_like(lo), np.empty_like(hi)
    comm.Allreduce(np.ascontiguousarray(lo), lo_g, op=MPI.MIN)
    comm.Allreduce(np.ascontiguousarray(hi), hi_g, op=MPI.MAX)
    lo, hi = lo_g, hi_g
    return comm.allreduce(hmax, op=MPI.MAX), float(np.linalg.norm(hi - lo))
