"""Particles on a DOLFINx mesh: reflection at a gmsh disk's boundary, FE-density sampling."""

from __future__ import annotations

import numpy as np
import pytest
import ufl

from fem_crossdiff.compat import MPI, fem, gmshio
from fem_crossdiff.particles import ParticleParams
from fem_crossdiff.particles.mesh_domain import FEDensitySampler, MeshDomain
from fem_crossdiff.particles.state import brownian_increments, gather_positions, init_state, step

gmsh = pytest.importorskip("gmsh")


def _disk_model(h=0.1):
    gmsh.initialize(interruptible=False)
    gmsh.option.setNumber("General.Terminal", 0)
    gmsh.model.add("disk")
    disk = gmsh.model.occ.addDisk(0, 0, 0, 1, 1)
    gmsh.model.occ.synchronize()
    gmsh.model.addPhysicalGroup(2, [disk], 1)
    gmsh.option.setNumber("Mesh.CharacteristicLengthMax", h)
    gmsh.model.mesh.generate(2)


def _disk(comm, h=0.1):
    """Disk mesh on ``comm`` (gmsh on its rank 0)."""
    if comm.rank == 0:
        _disk_model(h)
    data = gmshio.model_to_mesh(gmsh.model if comm.rank == 0 else None, comm, 0, gdim=2)
    if comm.rank == 0:
        gmsh.finalize()
    return data.mesh


def _global(x, comm, op=MPI.MAX):
    return comm.allreduce(x, op=op)


def test_disk_reflection_keeps_particles_inside(comm):
    msh = _disk(comm)
    dom = MeshDomain(msh)
    V0 = fem.functionspace(msh, ("DG", 0))
    one = fem.Function(V0)
    one.x.array[:] = 1.0
    params = ParticleParams(3000, (1.0,), (1.0,), 0.5, 2.0, 0.2)
    state = init_state(params, FEDensitySampler(one), 11, dom, comm)
    n_reflected = 0
    for _ in range(8):
        # rms displacement 0.32 per step: many particles hit the wall
        free = state.positions + np.sqrt(2 * params.sigma) * brownian_increments(state, 0.05)
        n_reflected += int(np.count_nonzero(np.linalg.norm(free, axis=-1) > 1.0))
        state = step(state, 0.05, params, dom, None, comm)
        r = np.linalg.norm(state.positions, axis=-1)
        assert _global(float(r.max()) if r.size else 0.0, comm) <= 1.0 + 1e-9
        inside = dom.contains(state.positions.reshape(-1, 2))
        assert _global(int(np.count_nonzero(~inside)), comm, MPI.SUM) == 0
    # The cloud is spread over the disk (not piled at a wall): E|X|^2 of the uniform law is 1/2.
    m2 = _global(float(np.sum(state.positions**2)), comm, MPI.SUM) / 3000
    assert abs(m2 - 0.5) < 0.03, m2
    assert _global(n_reflected, comm, MPI.SUM) > 1000


def test_fe_density_sampling_mean_and_rank_independence(comm):
    msh = _disk(comm)
    V = fem.functionspace(msh, ("Lagrange", 1))
    u = fem.Function(V)
    u.interpolate(lambda x: 1.0 + x[0])
    x = ufl.SpatialCoordinate(msh)
    mass = comm.allreduce(fem.assemble_scalar(fem.form(u * ufl.dx)), op=MPI.SUM)
    mx = comm.allreduce(fem.assemble_scalar(fem.form(x[0] * u * ufl.dx)), op=MPI.SUM) / mass
    mx2 = comm.allreduce(fem.assemble_scalar(fem.form(x[0] ** 2 * u * ufl.dx)), op=MPI.SUM) / mass
    n = 20000
    params = ParticleParams(n, (1.0,), (1.0,), 0.0, 2.0, 0.2)
    dom = MeshDomain(msh)
    state = init_state(params, FEDensitySampler(u), 5, dom, comm)
    xs = state.positions[:, 0]
    mean = comm.allreduce(float(xs.sum()), op=MPI.SUM) / n
    se = np.sqrt((mx2 - mx**2) / n)
    assert abs(mean - mx) < 4 * se, (mean, mx, se)
    # Same seed on a serial copy of the mesh: identical samples.
    full = gather_positions(state, comm, root=None)
    if comm.rank == 0:
        _disk_model()
    ref_msh = None
    if comm.size > 1:
        # every rank builds its own serial mesh from the same deterministic gmsh model
        if comm.rank != 0:
            _disk_model()
        ref_msh = gmshio.model_to_mesh(gmsh.model, MPI.COMM_SELF, 0, gdim=2).mesh
        gmsh.finalize()
    else:
        gmsh.finalize()
        ref_msh = msh
    Vs = fem.functionspace(ref_msh, ("Lagrange", 1))
    us = fem.Function(Vs)
    us.interpolate(lambda x: 1.0 + x[0])
    ref = gather_positions(init_state(params, FEDensitySampler(us), 5, MeshDomain(ref_msh),
                                      None))
    err = comm.allreduce(float(np.abs(ref - full).max()), op=MPI.MAX)
    assert err < 1e-12


def test_fe_density_bad_values(comm):
    msh = _disk(comm, h=0.3)
    V = fem.functionspace(msh, ("Lagrange", 1))
    u = fem.Function(V)
    u.interpolate(lambda x: x[0])
    with pytest.raises(ValueError, match="density has negative"):
        FEDensitySampler(u)
    u.x.array[:] = 0.0
    with pytest.raises(ValueError, match="density has zero mass"):
        FEDensitySampler(u)
