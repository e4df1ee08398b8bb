"""FE gradient fields for the McKean-Vlasov process (1.7): exactness, MPI, time interpolation."""

from __future__ import annotations

import numpy as np
import pytest

from fem_crossdiff.compat import MPI, fem, mesh
from fem_crossdiff.coupling import FEGradientField, FETimeGradientField
from fem_crossdiff.particles import Box, FieldDrift, ParticleParams, init_state, step
from fem_crossdiff.particles.rng import partition


def _my_points(comm, n_global, d, seed, lo=0.0, hi=1.0):
    """This rank's slice of a fixed global random point set (the same set for any rank count)."""
    pts = lo + (hi - lo) * np.random.default_rng(seed).random((n_global, d))
    start, stop = partition(n_global, comm.size, comm.rank)
    return pts, start, stop


def _global_max(comm, x):
    return comm.allreduce(float(np.max(x)) if np.size(x) else 0.0, op=MPI.MAX)


def _gathered(comm, arr):
    return np.concatenate(comm.allgather(arr), axis=0)


def test_p1_affine_gradient_exact_2d(comm):
    msh = mesh.create_unit_square(comm, 7, 5)
    g = fem.Function(fem.functionspace(msh, ("Lagrange", 1)))
    g.interpolate(lambda x: 0.3 + 2.0 * x[0] - 1.5 * x[1])
    field = FEGradientField(g)
    pts, s0, s1 = _my_points(comm, 2000, 2, seed=3)
    val = field(0.0, pts[s0:s1])
    err = _global_max(comm, np.abs(val - np.array([2.0, -1.5])))
    assert err < 1e-12
    # the gathered result is ordered like the global point set: compare one fixed point
    full = _gathered(comm, val)
    assert full.shape == (2000, 2)


def test_p2_quadratic_gradient_exact_2d(comm):
    msh = mesh.create_unit_square(comm, 6, 6)
    g = fem.Function(fem.functionspace(msh, ("Lagrange", 2)))
    g.interpolate(lambda x: x[0] ** 2 - 3 * x[0] * x[1] + 0.5 * x[1] ** 2 + x[1])
    field = FEGradientField(g)
    pts, s0, s1 = _my_points(comm, 3000, 2, seed=4)
    y = pts[s0:s1]
    exact = np.stack([2 * y[:, 0] - 3 * y[:, 1], -3 * y[:, 0] + y[:, 1] + 1.0], axis=1)
    val = field(0.0, y)
    assert _global_max(comm, np.abs(val - exact)) < 1e-11


def test_p1_gradient_piecewise_and_rank_independent_1d(comm):
    """A P1 interpolant of sin: the gradient equals the cell slope (independent of the ranks)."""
    n = 40
    msh = mesh.create_interval(comm, n, [0.0, 1.0])
    g = fem.Function(fem.functionspace(msh, ("Lagrange", 1)))
    g.interpolate(lambda x: np.sin(3.0 * x[0]))
    field = FEGradientField(g)
    pts, s0, s1 = _my_points(comm, 1000, 1, seed=5)
    val = _gathered(comm, field(0.0, pts[s0:s1]))
    nodes = np.linspace(0.0, 1.0, n + 1)
    k = np.minimum((pts[:, 0] * n).astype(int), n - 1)
    slope = (np.sin(3 * nodes[k + 1]) - np.sin(3 * nodes[k])) / (nodes[k + 1] - nodes[k])
    assert np.max(np.abs(val[:, 0] - slope)) < 1e-10


def test_outside_points_and_empty_ranks(comm):
    msh = mesh.create_unit_square(comm, 4, 4)
    g = fem.Function(fem.functionspace(msh, ("Lagrange", 1)))
    g.interpolate(lambda x: x[0] + 2 * x[1])
    field = FEGradientField(g)
    # rank 0 holds all points (others none); one point is outside, one exactly on a corner
    y = np.array([[0.5, 0.5], [2.0, 0.5], [1.0, 1.0]]) if comm.rank == 0 else np.zeros((0, 2))
    val = field(0.0, y)
    if comm.rank == 0:
        assert np.allclose(val[0], [1.0, 2.0]) and np.allclose(val[2], [1.0, 2.0])
        assert np.all(val[1] == 0.0)
    strict = FEGradientField(g, outside="raise")
    with pytest.raises(ValueError, match="outside the mesh"):
        strict(0.0, y)


def test_time_interpolation_between_snapshots(comm):
    msh = mesh.create_unit_square(comm, 5, 5)
    V = fem.functionspace(msh, ("Lagrange", 1))
    snaps = []
    for t, c in ((0.0, 1.0), (0.5, 3.0), (1.0, -1.0)):
        g = fem.Function(V)
        g.interpolate(lambda x, c=c: c * x[0] - 0.5 * c * x[1])
        snaps.append((t, g))
    field = FETimeGradientField(snaps)
    pts, s0, s1 = _my_points(comm, 500, 2, seed=6)
    y = pts[s0:s1]
    for t, c in ((0.0, 1.0), (0.25, 2.0), (0.5, 3.0), (0.9, -0.2), (2.0, -1.0), (-1.0, 1.0)):
        val = field(t, y)
        assert _global_max(comm, np.abs(val - np.array([c, -0.5 * c]))) < 1e-12
    with pytest.raises(ValueError, match="increasing"):
        FETimeGradientField([snaps[1], snaps[0]])


def test_field_drift_moves_particles_like_constant_field(comm):
    """FieldDrift driven by the FE field: without noise, X(T) = X(0) - b T grad g exactly."""
    msh = mesh.create_unit_square(comm, 6, 6)
    g = fem.Function(fem.functionspace(msh, ("Lagrange", 1)))
    g.interpolate(lambda x: 0.1 * x[0] + 0.05 * x[1])
    params = ParticleParams(n_particles=300, a=(1.0,), b=(2.0,), sigma=0.0, m=2.0, eps=0.1)
    box = Box((0.0, 0.0), (1.0, 1.0))

    def sampler(rng, count):
        return 0.3 + 0.4 * rng.random((count, 2))

    state = init_state(params, sampler, seed=2, domain=box, comm=comm)
    x0 = state.positions.copy()
    drift = FieldDrift(FEGradientField(g))
    for _ in range(4):
        state = step(state, 0.25, params, box, drift, comm)
    err = np.abs(state.positions - (x0 - 2.0 * 1.0 * np.array([0.1, 0.05])))
    assert _global_max(comm, err) < 1e-13
