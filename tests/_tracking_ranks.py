"""Trajectories of particle runs on a disk and a ball with the FE-operator drift (rank test).

``trajectories(comm, shape)`` returns the gathered positions after each step,
``(steps + 1, n, N, d)``, on every rank. Run as a script (``mpiexec -n 3 python
_tracking_ranks.py out.npz``), rank 0 saves those of every shape to ``out.npz``.
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

#: mesh builder, its arguments, particles per species, eps (>= 2 h), steps, dt
SHAPES = {
    "disk": ("disk", {"h": 0.1}, 3000, 0.3, 8, 0.005),
    "ball": ("ball", {"h": 0.15}, 1000, 0.6, 5, 0.005),
}


def trajectories(comm, shape="disk", with_drift=True):
    """Two species, non-uniform start, sigma large enough that many particles hit the wall.

    The drift is strong (masses 40 and 20 times the density's): its part of the motion is
    comparable with the noise, so a wrong drift of any particle shows.
    """
    builder, kw, n, eps, steps, dt = SHAPES[shape]
    msh = meshes.build(builder, comm, **kw).mesh
    dom = MeshDomain(msh)
    V = fem.functionspace(msh, ("Lagrange", 1))
    u = fem.Function(V)
    u.interpolate(lambda x: 1.0 + 0.5 * x[0])
    sampler = FEDensitySampler(u)
    params = ParticleParams(n, (1.0, 0.5), (1.0, 2.0), 0.5, 2.0, eps,
                            masses=(40.0 * sampler.mass, 20.0 * sampler.mass))
    drift = MeshOperatorDrift(V, params) if with_drift else None
    state = init_state(params, sampler, 4, dom, comm)
    out = [gather_positions(state, comm, root=None)]
    for _ in range(steps):
        state = step(state, dt, params, dom, drift, comm)
        out.append(gather_positions(state, comm, root=None))
    return np.stack(out)


if __name__ == "__main__":
    res = {name: trajectories(MPI.COMM_WORLD, name) for name in SHAPES}
    if MPI.COMM_WORLD.rank == 0:
        np.savez(sys.argv[1], **res)
