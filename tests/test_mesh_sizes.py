"""``meshes.mesh_sizes`` on meshes whose cell diameters are known in closed form.

The graded square has its largest and smallest cells at opposite walls, so under ``mpiexec``
they are owned by different ranks and only the global reduction gives both numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fem_crossdiff.compat import MPI, fem, mesh
from fem_crossdiff.meshes import Geometry, MeshSizes, mesh_sizes
from fem_crossdiff.mollify import MollificationOperator

REL = 1e-12


def _check(sizes, h_max, h_min, diameter):
    assert isinstance(sizes, MeshSizes)
    assert sizes.h_max == pytest.approx(h_max, rel=REL)
    assert sizes.h_min == pytest.approx(h_min, rel=REL)
    assert sizes.diameter == pytest.approx(diameter, rel=REL)


@pytest.mark.parametrize("n", [4, 9])
def test_unit_square_triangles(comm, n):
    # every cell is half of an (1/n x 1/n) square: its diameter is the square's diagonal
    msh = mesh.create_unit_square(comm, n, n)
    _check(mesh_sizes(msh), math.sqrt(2.0) / n, math.sqrt(2.0) / n, math.sqrt(2.0))


def test_graded_square_reduces_over_ranks(comm):
    n = 8
    msh = mesh.create_unit_square(comm, n, n)
    msh.geometry.x[:, 0] = msh.geometry.x[:, 0] ** 2  # column i is (2i+1)/n^2 wide
    widest, narrowest = (2 * n - 1) / n**2, 1.0 / n**2
    sizes = mesh_sizes(msh)
    _check(sizes, math.hypot(widest, 1.0 / n), math.hypot(narrowest, 1.0 / n), math.sqrt(2.0))
    # the same numbers on every rank
    for value in sizes:
        assert comm.allreduce(value, op=MPI.MAX) == pytest.approx(
            comm.allreduce(value, op=MPI.MIN), rel=1e-15)
    # and DOLFINx's own cell diameter agrees on the largest cell
    tdim = msh.topology.dim
    cells = np.arange(msh.topology.index_map(tdim).size_local, dtype=np.int32)
    local = float(msh.h(tdim, cells).max()) if cells.size else 0.0
    assert sizes.h_max == pytest.approx(comm.allreduce(local, op=MPI.MAX), rel=REL)


def test_quadrilaterals_interval_and_tetrahedra(comm):
    quads = mesh.create_unit_square(comm, 6, 6, mesh.CellType.quadrilateral)
    _check(mesh_sizes(quads), math.sqrt(2.0) / 6, math.sqrt(2.0) / 6, math.sqrt(2.0))
    line = mesh.create_interval(comm, 10, [0.0, 2.0])
    _check(mesh_sizes(line), 0.2, 0.2, 2.0)
    # the unit cube's six tetrahedra per cube all contain the cube's main diagonal
    cube = mesh.create_unit_cube(comm, 3, 3, 3)
    _check(mesh_sizes(cube), math.sqrt(3.0) / 3, math.sqrt(3.0) / 3, math.sqrt(3.0))


def test_geometry_wrapper_and_bad_input(comm):
    msh = mesh.create_unit_square(comm, 5, 3)
    geo = Geometry(mesh=msh, cell_tags=None, facet_tags=None, boundary_names={},
                   volume_exact=1.0)
    assert tuple(mesh_sizes(geo)) == pytest.approx(tuple(mesh_sizes(msh)), rel=1e-15)
    _check(mesh_sizes(msh), math.hypot(0.2, 1 / 3), math.hypot(0.2, 1 / 3), math.sqrt(2.0))
    with pytest.raises(TypeError, match="mesh_sizes needs a DOLFINx mesh.*got list"):
        mesh_sizes([1.0, 2.0])


def test_the_operator_checks_the_same_h_max(comm):
    # the number users read is the one the nonlocal model's eps >= 2 h_max rule uses
    n = 8
    msh = mesh.create_unit_square(comm, n, n)
    V = fem.functionspace(msh, ("Lagrange", 1))
    h_max = mesh_sizes(msh).h_max
    op = MollificationOperator(V, 2.2 * h_max)
    assert op.h_max == pytest.approx(h_max, rel=REL)
    with pytest.raises(ValueError, match=r"2 h_max = 0\.3535"):
        MollificationOperator(V, 1.8 * h_max)
