"""The family's particle step on a mesh domain (particles living on their cells' ranks)."""

from __future__ import annotations

import numpy as np
import pytest

from fem_crossdiff import meshes
from fem_crossdiff.compat import fem
from fem_crossdiff.errors import ParameterError
from fem_crossdiff.family import Family, Growth, Interaction, Kernel, Potential
from fem_crossdiff.particles import FreeSpace, ParticleParams, gather_positions
from fem_crossdiff.particles.family import family_state, family_step
from fem_crossdiff.particles.mesh_domain import MeshDomain
from fem_crossdiff.particles.mesh_drift import MeshOperatorDrift
from fem_crossdiff.particles.state import state_from_positions, step


def _disk(comm, h=0.1):
    """Unit disk mesh on ``comm`` (the library's gmsh builder, meshed on rank 0)."""
    return meshes.disk(comm, radius=1.0, h=h).mesh


def test_mesh_domain_matches_free_space_away_from_the_wall(comm):
    """Confined particles that never reach the wall: the same paths in a disk and in R^2.

    Two species, per-species sigma, a potential per species and an attraction between the
    species (pair sums over the gathered cloud); on the disk the particles live on the ranks of
    their cells and migrate, in free space they stay in index blocks. The Brownian streams are
    keyed by particle id, so both runs see the same noise.
    """
    n = 400
    rng = np.random.default_rng(4)
    r, th = 0.6 * np.sqrt(rng.random((2, n))), 2 * np.pi * rng.random((2, n))
    x0 = np.stack([r * np.cos(th), r * np.sin(th)], axis=-1)
    params = ParticleParams(n, (1.0, 1.0), (1.0, 1.0), 0.0, 2.0, 0.1)
    fam = Family((0.01, 0.03), potentials=(Potential("(x**2 + y**2) / 2"),
                                           Potential("(x - 0.1)**2 + y**2 / 2")),
                 interactions=(Interaction(Kernel("gaussian", 0.3), ((0.0, -0.2), (-0.2, 0.0))),))
    disk, free = MeshDomain(_disk(comm)), FreeSpace(2)
    a = family_state(state_from_positions(x0, 9, disk, comm))
    b = family_state(state_from_positions(x0, 9, free, comm))
    for _ in range(30):
        a = family_step(a, 0.02, params, fam, disk, comm=comm)
        b = family_step(b, 0.02, params, fam, free, comm=comm)
    xa = gather_positions(a.particles, comm, root=None)
    xb = gather_positions(b.particles, comm, root=None)
    assert np.linalg.norm(xb, axis=-1).max() < 0.95  # the comparison holds: no wall was met
    assert np.abs(xa - xb).max() < 1e-12
    assert np.abs(xb - x0).max() > 0.05
    # growth needs the weights to migrate with the particles: refused before any work
    with pytest.raises(ParameterError) as err:
        family_step(a, 0.02, params, Family((0.0, 0.0), growth=(Growth(rate=1.0), None)),
                    disk, comm=comm)
    assert err.value.key == "domain"


def test_paper_family_on_a_mesh_is_the_paper_step(comm, monkeypatch):
    """Family.paper with the FE-operator drift: the same paths as state.step (its own cells).

    The routed evaluation is switched off: both steps must take the drift on the particles'
    own cells (``at_cells``).
    """
    n = 300
    rng = np.random.default_rng(8)
    r, th = 0.8 * np.sqrt(rng.random((2, n))), 2 * np.pi * rng.random((2, n))
    x0 = np.stack([r * np.cos(th), r * np.sin(th)], axis=-1)
    params = ParticleParams(n, (1.0, 0.5), (1.0, 2.0), 0.05, 2.0, 0.3)
    msh = _disk(comm)
    disk = MeshDomain(msh)
    drift = MeshOperatorDrift(fem.functionspace(msh, ("Lagrange", 1)), params)
    a = family_state(state_from_positions(x0, 3, disk, comm))
    b = state_from_positions(x0, 3, disk, comm)

    def routed(*args, **kwargs):
        raise AssertionError("the drift was routed instead of taken on the particles' cells")

    monkeypatch.setattr(MeshOperatorDrift, "__call__", routed)
    for _ in range(10):
        a = family_step(a, 0.01, params, Family.paper(2, params.sigma), disk, pressure=drift,
                        comm=comm)
        b = step(b, 0.01, params, disk, drift, comm)
    xa = gather_positions(a.particles, comm, root=None)
    xb = gather_positions(b, comm, root=None)
    assert np.abs(xa - xb).max() < 1e-12
    assert np.abs(xb - x0).max() > 0.01
