"""Compiled particle kernels (:mod:`fem_crossdiff.particles.kernels`).

* the compiled walk gives the numpy walk's positions (to 1e-12) and cells (identical) over many
  steps on a disk, an annulus, a rectangle with holes, an L-shape and a ball;
* the foreign-slot contract: with the cells cut into two parts (one per rank under
  ``mpirun -n 2``, both on one rank serially) and the facets between them marked as foreign
  slots, walking each part, sending the exited particles to the other part and continuing them
  from their crossing points ends where the walk on the whole mesh ends;
* no particle lost or outside over 1e6 particle-steps with the compiled walk;
* the P1 kernels (basis values, deposit, cell and recovered gradients) give the drift of the
  numpy code.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_particles_tracking as _tracking
from test_particles_tracking import SHAPES, _uniform_sampler

from fem_crossdiff.compat import MPI, fem
from fem_crossdiff.particles import ParticleParams, kernels, mesh_drift
from fem_crossdiff.particles.mesh_drift import MeshOperatorDrift
from fem_crossdiff.particles.tracking import INSIDE_TOL

pytest.importorskip("gmsh")

#: the meshes and domains of the tracking tests, built once per module
domains = _tracking.domains


def _kwalk(tr, p, q, c, reflect=True, cells=None, nbr=None):
    """The compiled walk on the whole mesh, or on the ``cells`` with the table ``nbr``."""
    A, b = (tr.A, tr.b) if cells is None else (tr.A[cells], tr.b[cells])
    return kernels.walk(A, b, tr.neighbour if nbr is None else nbr, p, q, c, tr.max_steps,
                        reflect, INSIDE_TOL)


def _walk3(tr, p, q, c, reflect=True, kernel=None):
    """``(q, cells, lost)`` of :meth:`SimplexTracker.walk` (``kernel=False``: numpy)."""
    return tr.walk(p, q, c, reflect, kernel=kernel)[1:4]


@pytest.mark.parametrize("name", list(SHAPES))
def test_kernel_walk_agrees_with_numpy_walk(domains, name, comm):
    """Ten steps of rms about ``h`` (many cells crossed, many walls and corners hit)."""
    msh, dom = domains(name)
    tr = dom.tracker
    n = 2000 if name == "ball" else 4000
    rng = np.random.default_rng(11 + comm.rank)
    x = _uniform_sampler(msh)(rng, n)
    c = dom.locate(x)
    walls = 0
    for _ in range(10):
        q = x + 0.1 * rng.standard_normal(x.shape)
        y0, c0, lost0 = _walk3(tr, x, q, c, kernel=False)
        p1, y1, c1, lost1, exited = _kwalk(tr, x, q, c)
        assert exited.size == 0 and lost1.tolist() == sorted(lost0.tolist())
        assert lost0.size == 0, lost0.size  # lost particles would have meaningless entries
        assert np.array_equal(c1, c0)
        assert np.abs(y1 - y0).max() <= 1e-12
        walls += int(np.count_nonzero(np.any(y1 != q, axis=1)))
        x, c = y1, c1
    assert walls > 0.02 * 10 * n, walls  # the walls were really hit
    # SimplexTracker.walk dispatches to the kernel by default
    assert tr.kernel and np.array_equal(_walk3(tr, x, x + 0.05, c)[0],
                                        _kwalk(tr, x, x + 0.05, c)[1])


def test_kernel_walk_without_reflection_loses_at_walls(domains):
    """``reflect=False`` (location): a step through a wall is lost, as in the numpy walk."""
    msh, dom = domains("lshape")
    tr = dom.tracker
    rng = np.random.default_rng(5)
    x = _uniform_sampler(msh)(rng, 3000)
    c = dom.locate(x)
    q = x + 0.2 * rng.standard_normal(x.shape)
    y0, c0, lost0 = _walk3(tr, x, q, c, reflect=False, kernel=False)
    _, y1, c1, lost1, _ = _kwalk(tr, x, q, c, reflect=False)
    assert lost0.size > 100 and lost1.tolist() == sorted(lost0.tolist())
    keep = np.setdiff1d(np.arange(x.shape[0]), lost0)
    assert np.array_equal(c1[keep], c0[keep]) and np.array_equal(y1[keep], q[keep])


def _split_tables(tr, part):
    """Per part, its cells (global numbers) and its neighbour table in local numbers.

    A facet towards the other part becomes the foreign slot ``-2 - (global cell across)``.
    """
    out = []
    for k in (0, 1):
        cells = np.flatnonzero(part == k)
        local = np.full(tr.ncell, -1, dtype=np.int64)
        local[cells] = np.arange(cells.size)
        g = tr.neighbour[cells]
        nbr = np.where(g < 0, -1, np.where(part[np.maximum(g, 0)] == k,
                                           local[np.maximum(g, 0)], -2 - g))
        out.append((cells, local, nbr))
    return out


@pytest.mark.parametrize("name", ["disk", "holes", "ball"])
def test_foreign_slots_continue_the_walk(domains, name, comm):
    """Two parts (cut by the centroids' first coordinate), exchanged between ranks.

    Part ``k`` lives on rank ``k % size``; each round every rank walks the particles of its
    parts, the exited ones go (crossing point, reflected target, cell across) to the owner of
    the other part, until no particle exits on any rank. The end points and cells are those of
    the walk on the whole mesh, and many particles cross between the parts.
    """
    msh, dom = domains(name)
    tr = dom.tracker
    part = (tr.centroid[:, 0] > np.median(tr.centroid[:, 0])).astype(np.int64)
    tables = _split_tables(tr, part)
    n = 1500 if name == "ball" else 3000
    rng = np.random.default_rng(23)  # the same particles on every rank: rank k takes part k
    x = _uniform_sampler(msh)(rng, n)
    c = dom.locate(x)
    q = x + 0.15 * rng.standard_normal(x.shape)
    _, y_ref, c_ref, lost, _ = _kwalk(tr, x, q, c)
    assert lost.size == 0
    size, rank = comm.size, comm.rank
    mine = [k for k in (0, 1) if k % size == rank]
    # per part: (particle ids, p, q, global cells)
    todo = {k: (np.flatnonzero(part[c] == k), x[part[c] == k], q[part[c] == k],
                c[part[c] == k]) for k in mine}
    done_id, done_q, done_c = [], [], []
    crossings, rounds = 0, 0
    while True:
        send = [[] for _ in range(size)]
        for k, (ids, p, qq, cg) in todo.items():
            cells, local, nbr = tables[k]
            p1, q1, c1, lost, exited = _kwalk(tr, p, qq, local[cg], cells=cells, nbr=nbr)
            assert lost.size == 0
            stay = np.setdiff1d(np.arange(ids.size), exited)
            done_id.append(ids[stay])
            done_q.append(q1[stay])
            done_c.append(cells[c1[stay]])
            assert np.all(c1[exited] <= -2)
            across = -2 - c1[exited]
            assert np.all(part[across] == 1 - k)
            # the crossing point lies on the shared facet: in both cells
            lam = tr.barycentric(p1[exited], across)
            assert lam.min(initial=0.0) >= -1e-9
            crossings += exited.size
            send[(1 - k) % size].append((1 - k, ids[exited], p1[exited], q1[exited], across))
        recv = comm.alltoall(send)
        todo = {}
        for msgs in recv:
            for k, ids, p, qq, cg in msgs:
                if k in todo:
                    o = todo[k]
                    ids, p, qq, cg = (np.concatenate([a, b]) for a, b in zip(o, (ids, p, qq, cg),
                                                                              strict=True))
                todo[k] = (ids, p, qq, cg)
        rounds += 1
        if comm.allreduce(sum(v[0].size for v in todo.values()), op=MPI.SUM) == 0:
            break
        assert rounds < 50
    # a rank past the two parts (3 ranks and more) ends with nothing of its own
    ids = np.concatenate(done_id) if done_id else np.empty(0, dtype=np.int64)
    yq = np.concatenate(done_q) if done_q else np.empty((0, x.shape[1]))
    cc = np.concatenate(done_c) if done_c else np.empty(0, dtype=np.int64)
    parts_ids = comm.allgather(ids)
    all_ids = np.concatenate(parts_ids)
    assert np.array_equal(np.sort(all_ids), np.arange(n))  # every particle ends exactly once
    assert np.array_equal(cc, c_ref[ids])
    assert np.abs(yq - y_ref[ids]).max(initial=0.0) <= 1e-12
    assert comm.allreduce(crossings, op=MPI.SUM) > 0.05 * n


def test_no_particle_lost_or_outside_over_a_million_kernel_steps(domains, comm):
    """2e4 particles x 50 steps in the disk (rms step 0.3 h) with the compiled walk alone."""
    msh, dom = domains("disk")
    tr = dom.tracker
    rng = np.random.default_rng(31 + comm.rank)
    x = _uniform_sampler(msh)(rng, 20000)
    c = dom.locate(x)
    for _ in range(50):
        q = x + 0.03 * rng.standard_normal(x.shape)
        _, x, c, lost, exited = _kwalk(tr, x, q, c)
        assert lost.size == 0 and exited.size == 0
        assert np.all((c >= 0) & (c < tr.ncell))
        assert tr.barycentric(x, c).min() >= -1e-9
        assert np.linalg.norm(x, axis=1).max() <= 1.0 + 1e-12


@pytest.mark.parametrize("gradient", ["cell", "recovered"])
def test_p1_kernels_give_the_numpy_drift(domains, gradient, comm, monkeypatch):
    """Deposit and drift of :class:`MeshOperatorDrift` with and without the kernels."""
    msh, _ = domains("disk")
    params = ParticleParams(1000, (1.0, 0.5), (1.0, 2.0), 0.1, 2.0, 0.3)
    drift = MeshOperatorDrift(fem.functionspace(msh, ("Lagrange", 1)), params, gradient=gradient)
    rng = np.random.default_rng(41)
    x = np.stack([_uniform_sampler(msh)(rng, 1000) for _ in range(2)])
    lo, hi = (1000 * comm.rank) // comm.size, (1000 * (comm.rank + 1)) // comm.size
    x = x[:, lo:hi]
    out = {}
    for flag in (True, False):
        monkeypatch.setattr(mesh_drift, "KERNELS", flag)
        out[flag] = (drift.deposit(x, params, comm), drift(x, 0.0, params, comm))
    for a, b in zip(out[True], out[False], strict=True):
        scale = np.abs(b).max()
        assert scale > 0 and np.abs(a - b).max() <= 1e-12 * scale
