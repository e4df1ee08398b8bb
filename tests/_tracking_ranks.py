"""Trajectories of a particle run on a disk with the FE-operator drift (for the rank test).

``trajectories(comm)`` returns the gathered positions after each step, ``(steps + 1, n, N, d)``,
on every rank. Run as a script (``mpiexec -n 3 python _tracking_ranks.py out.npy``), rank 0
saves them to ``out.npy``.
"""

from __future__ import annotations

import sys

import numpy as np

from fem_crossdiff import meshes
from fem_crossdiff.compat import MPI, fem
from fem_crossdiff.particles import ParticleParams
from fem_crossdiff.particles.mesh_domain import FEDensitySampler, MeshDomain
from fem_crossdiff.particles.mesh_drift import MeshOperatorDrift
from fem_crossdiff.particles.state import gather_positions, init_state, step


def trajectories(comm, n=3000, steps=8, dt=0.005):
    """Two species, uniform start, sigma large enough that many particles hit the wall."""
    msh = meshes.build("disk", comm, h=0.1).mesh
    dom = MeshDomain(msh)
    V = fem.functionspace(msh, ("Lagrange", 1))
    u = fem.Function(V)
    u.interpolate(lambda x: 1.0 + 0.5 * x[0])
    sampler = FEDensitySampler(u)
    params = ParticleParams(n, (1.0, 0.5), (1.0, 2.0), 0.5, 2.0, 0.3,
                            masses=(sampler.mass, 0.5 * sampler.mass))
    drift = MeshOperatorDrift(V, params)
    state = init_state(params, sampler, 4, dom, comm)
    out = [gather_positions(state, comm, root=None)]
    for _ in range(steps):
        state = step(state, dt, params, dom, drift, comm)
        out.append(gather_positions(state, comm, root=None))
    return np.stack(out)


if __name__ == "__main__":
    x = trajectories(MPI.COMM_WORLD)
    if MPI.COMM_WORLD.rank == 0:
        np.save(sys.argv[1], x)
