"""The numerical stack: the lock, imports, SNES, gmsh -> distributed mesh, VTX under MPI, ranks."""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import ufl
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

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

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
# scripts/setup.sh writes this stamp into the venv it made from the lock, and only there
SETUP_STAMP = Path(sys.prefix) / ".fem-crossdiff-installed"


def _lock_pins(text: str) -> dict[str, tuple[Version, Requirement]]:
    """The pins of a lock file: canonical name -> (pinned version, requirement with its marker)."""
    pins = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith(("#", " ")):
            continue  # comments and uv's indented "# via" annotations
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            raise ValueError(f"{LOCK.name}: {line!r} is not an exact pin (name==version)")
        name = canonicalize_name(req.name)
        if name in pins:
            raise ValueError(f"{LOCK.name}: {req.name} is pinned twice")
        pins[name] = (Version(specs[0].version), req)
    return pins


def _applies(req: Requirement) -> bool:
    return req.marker is None or req.marker.evaluate()


def test_lock_parser_rejects_loose_pins():
    with pytest.raises(ValueError, match="not an exact pin"):
        _lock_pins("numpy>=2\n")
    with pytest.raises(ValueError, match="pinned twice"):
        _lock_pins("numpy==2.0\nNumPy==2.1\n")
    pins = _lock_pins("# c\nfoo==1.0 ; sys_platform == 'win32'\n    # via bar\nBar_Baz==2.0\n")
    assert set(pins) == {"foo", "bar-baz"} and pins["bar-baz"][0] == Version("2")


def test_lock_satisfies_pyproject():
    """Every requirement of pyproject.toml is pinned in the lock at a version its range allows.

    All extras and the build back-end count: editing pyproject.toml without `make lock` fails here.
    """
    pins = _lock_pins(LOCK.read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = list(project["project"]["dependencies"]) + list(project["build-system"]["requires"])
    for extra in project["project"]["optional-dependencies"].values():
        wanted += extra
    wanted.append("pip")  # set-up installs pip itself at its locked version first
    problems = []
    for line in wanted:
        req = Requirement(line)
        if not _applies(req):
            continue
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req.name} is not in the lock")
        elif not req.specifier.contains(pin[0], prereleases=True):
            problems.append(f"{req.name}=={pin[0]} is outside pyproject.toml's {req.specifier}")
    assert not problems, f"{LOCK} is stale, run `make lock`: " + "; ".join(problems)


@pytest.mark.skipif(not SETUP_STAMP.is_file(),
                    reason="this environment was not made by scripts/setup.sh from the lock")
def test_installed_versions_equal_lock():
    """The venv holds exactly the locked versions, and every requirement they have is locked.

    A drifted .venv (say, a manual `pip install -U numpy`) fails here.
    """
    pins = _lock_pins(LOCK.read_text())
    problems = []
    for name, (version, req) in sorted(pins.items()):
        if not _applies(req):
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name} is locked at {version} but not installed")
            continue
        if Version(installed) != version:
            problems.append(f"{name} {installed} is installed, the lock says {version}")
            continue
        for dep in metadata.requires(name) or []:
            dep_req = Requirement(dep)
            # a dependency behind an extra is not installed unless someone asked for that extra
            if dep_req.marker is not None and not dep_req.marker.evaluate({"extra": ""}):
                continue
            if canonicalize_name(dep_req.name) not in pins:
                problems.append(f"{name} needs {dep_req.name}, which the lock does not pin")
    fix = "rm .venv/.fem-crossdiff-installed && make setup"
    assert not problems, f"the venv differs from the lock; reinstall it with `{fix}`: " + "; ".join(
        problems)


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
