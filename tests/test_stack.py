"""The numerical stack: imports, SNES, gmsh -> distributed mesh, VTX under MPI, rank invariance."""

from __future__ import annotations

import numpy as np
import pytest
import ufl

from fem_crossdiff.compat import (
    MPI,
    PETSc,
    check_versions,
    dolfinx,
    fem,
    gmshio,
    io,
    mesh,
    version_report,
)


def test_versions():
    check_versions()
    rep = version_report()
    assert rep["dolfinx"].startswith(("0.10", "0.11"))
    assert rep["petsc_scalar"] == "real"
    assert int(rep["petsc"].split(".")[1]) >= 20


def _nonlinear_poisson(comm, n=24):
    """-div((1 + u^2) grad u) = f, u = 0 on the boundary; returns (u, its, reason)."""
    msh = mesh.create_unit_square(comm, n, n)
    V = fem.functionspace(msh, ("Lagrange", 2))
    u, v = fem.Function(V), ufl.TestFunction(V)
    x = ufl.SpatialCoordinate(msh)
    f = 10 * ufl.sin(ufl.pi * x[0]) * ufl.sin(ufl.pi * x[1])
    F = ((1 + u**2) * ufl.inner(ufl.grad(u), ufl.grad(v)) - f * v) * ufl.dx
    msh.topology.create_connectivity(1, 2)
    dofs = fem.locate_dofs_topological(V, 1, mesh.exterior_facet_indices(msh.topology))
    bc = fem.dirichletbc(0.0, dofs, V)
    prefix = f"stack_{id(u)}_"
    problem = fem.petsc.NonlinearProblem(
        F, u, bcs=[bc], petsc_options_prefix=prefix,
        petsc_options={"snes_type": "newtonls", "snes_rtol": 1e-12, "snes_atol": 1e-13,
                       "ksp_type": "preonly", "pc_type": "lu",
                       "pc_factor_mat_solver_type": "mumps"},
    )
    problem.solve()
    return u, problem.solver.getIterationNumber(), problem.solver.getConvergedReason()


def _functionals(u):
    comm = u.function_space.mesh.comm
    x = ufl.SpatialCoordinate(u.function_space.mesh)
    forms = [u * ufl.dx, u**2 * ufl.dx, u * x[0] ** 3 * ufl.dx,
             ufl.inner(ufl.grad(u), ufl.grad(u)) * ufl.dx]
    return np.array([comm.allreduce(fem.assemble_scalar(fem.form(f)), op=MPI.SUM) for f in forms])


def test_snes_converges(comm):
    u, its, reason = _nonlinear_poisson(comm)
    assert reason > 0, f"SNES diverged with reason {reason}"
    assert 2 <= its <= 8
    assert _functionals(u)[0] > 0.1


def test_rank_invariance():
    """The same solve on COMM_WORLD and on COMM_SELF agrees to 1e-10 (trivially serial at n=1)."""
    u_w, _, r_w = _nonlinear_poisson(MPI.COMM_WORLD)
    u_s, _, r_s = _nonlinear_poisson(MPI.COMM_SELF)
    assert r_w > 0 and r_s > 0
    fw, fs = _functionals(u_w), _functionals(u_s)
    np.testing.assert_allclose(fw, fs, rtol=1e-10, atol=1e-12)


def test_gmsh_disk_distributed(comm):
    gmsh = pytest.importorskip("gmsh")
    if comm.rank == 0:
        gmsh.initialize(interruptible=False)
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.model.add("disk")
        disk = gmsh.model.occ.addDisk(0, 0, 0, 1, 1)
        gmsh.model.occ.synchronize()
        gmsh.model.addPhysicalGroup(2, [disk], 1)
        curves = [c[1] for c in gmsh.model.getBoundary([(2, disk)], oriented=False)]
        gmsh.model.addPhysicalGroup(1, curves, 7)
        gmsh.option.setNumber("Mesh.CharacteristicLengthMax", 0.1)
        gmsh.model.mesh.generate(2)
    data = gmshio.model_to_mesh(gmsh.model if comm.rank == 0 else None, comm, 0, gdim=2)
    if comm.rank == 0:
        gmsh.finalize()
    msh, ft = data.mesh, data.facet_tags
    area = comm.allreduce(fem.assemble_scalar(fem.form(1.0 * ufl.dx(domain=msh))), op=MPI.SUM)
    ds = ufl.Measure("ds", domain=msh, subdomain_data=ft)
    perim = comm.allreduce(fem.assemble_scalar(fem.form(1.0 * ds(7))), op=MPI.SUM)
    assert abs(area - np.pi) < 0.01
    assert abs(perim - 2 * np.pi) < 0.01
    ncells = msh.topology.index_map(2).size_local
    assert comm.allreduce(ncells > 0, op=MPI.LAND), "a rank got no cells"


def test_vtx_under_mpi(comm, mpi_tmp_path):
    msh = mesh.create_unit_square(comm, 8, 8)
    V = fem.functionspace(msh, ("Lagrange", 1))
    u = fem.Function(V)
    u.interpolate(lambda x: x[0] + x[1])
    path = mpi_tmp_path / "u.bp"
    with io.VTXWriter(comm, str(path), [u]) as vtx:
        vtx.write(0.0)
        vtx.write(1.0)
    comm.Barrier()
    assert comm.allreduce(path.exists(), op=MPI.LAND)


def test_petsc_has_gamg_and_mumps():
    ksp = PETSc.KSP().create(MPI.COMM_SELF)
    pc = ksp.getPC()
    pc.setType("gamg")
    assert pc.getType() == "gamg"
    assert dolfinx.has_petsc
