"""Point location by tracking on mesh domains (:mod:`fem_crossdiff.particles.tracking`).

* the tracked cell of every particle is the cell the collision tree (DOLFINx's
  ``compute_colliding_cells``) finds, over many steps, on a disk, an annulus, a rectangle with
  holes, an L-shape and a ball, and the positions are those of the collision-tree reflection
  (:meth:`MeshDomain.reflect_collision`) wherever that one applies;
* no particle is lost or outside over 1e6 particle-steps;
* reflected Brownian motion tends to the uniform law (chi-square on rings), 2D and 3D;
* the same seed gives the same trajectories (with the FE-operator drift) on 1, 2 and 3 ranks.

The same suite runs serially and under ``mpirun -n 2``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fem_crossdiff import meshes
from fem_crossdiff.compat import MPI, fem, geometry
from fem_crossdiff.particles import ParticleParams
from fem_crossdiff.particles.mesh_domain import FEDensitySampler, MeshDomain
from fem_crossdiff.particles.state import gather_positions, state_from_positions, step

pytest.importorskip("gmsh")

SHAPES = {
    "disk": ("disk", {"h": 0.1}),
    "annulus": ("annulus", {"h": 0.1}),
    "holes": ("rectangle_with_obstacles",
              {"upper": (2.0, 1.0), "obstacles": ((0.5, 0.5, 0.2), (1.4, 0.5, 0.25)),
               "h": 0.08}),
    "lshape": ("l_shape", {"h": 0.08}),
    "ball": ("ball", {"h": 0.25}),
}
CONVEX = ("disk", "ball")


@pytest.fixture(scope="module")
def domains():
    """Meshes and domains built once per module (reused: MPI communicators are finite)."""
    cache = {}

    def get(name):
        if name not in cache:
            builder, kw = SHAPES[name]
            msh = meshes.build(builder, MPI.COMM_WORLD, **kw).mesh
            cache[name] = (msh, MeshDomain(msh))
        return cache[name]

    return get


def _uniform_sampler(msh):
    one = fem.Function(fem.functionspace(msh, ("DG", 0)))
    one.x.array[:] = 1.0
    return FEDensitySampler(one)


def _tree_check(msh, dom, x, cells, comm):
    """Every point lying in an owned cell of this rank: is its tracked cell a colliding one?

    Returns the global numbers of points checked and of disagreements.
    """
    tdim = msh.topology.dim
    ncell = msh.topology.index_map(tdim).size_local
    tree = geometry.bb_tree(msh, tdim, entities=np.arange(ncell, dtype=np.int32))
    pts = np.zeros((x.shape[0], 3))
    pts[:, :dom.dim] = x
    coll = geometry.compute_colliding_cells(msh, geometry.compute_collisions_points(tree, pts),
                                            pts)
    off = np.asarray(coll.offsets)
    arr = np.asarray(coll.array)
    cnt = np.diff(off)
    pid = np.repeat(np.arange(x.shape[0]), cnt)
    hit = dom.local_to_global[arr] == cells[pid]
    agree = np.zeros(x.shape[0], dtype=bool)
    np.logical_or.at(agree, pid, hit)
    checked = cnt > 0
    # a point on a facet shared with another rank's cell may be checked on both ranks
    n_checked = comm.allreduce(int(np.count_nonzero(checked)), op=MPI.SUM)
    n_bad = comm.allreduce(int(np.count_nonzero(checked & ~agree)), op=MPI.SUM)
    return n_checked, n_bad


@pytest.mark.parametrize("name", list(SHAPES))
def test_tracking_agrees_with_collision_tree(domains, name, comm):
    """Same particles on every rank (the tracker is global): each rank checks its own cells."""
    msh, dom = domains(name)
    n, dt = 800 if name == "ball" else 3000, 0.01
    rng = np.random.default_rng(7)
    x = _uniform_sampler(msh)(rng, n)
    cells = dom.locate(x)
    assert np.all(cells >= 0)
    n_checked, n_bad = _tree_check(msh, dom, x, cells, comm)
    assert n_checked >= n and n_bad == 0, (n_checked, n_bad)
    n_walls = n_diff = 0
    for _ in range(6):
        q = x + np.sqrt(2.0 * dt) * rng.standard_normal(x.shape)  # rms ~ h: many cells, walls
        y, c = dom.reflect_tracked(x, q, cells)
        n_checked, n_bad = _tree_check(msh, dom, y, c, comm)
        assert n_checked >= n and n_bad == 0, (n_checked, n_bad)
        assert np.all(dom.contains_collision(y))
        ref = dom.reflect_collision(x, q)
        moved = np.any(np.abs(ref - q) > 0, axis=1)
        n_walls += int(np.count_nonzero(moved))
        diff = np.linalg.norm(y - ref, axis=1) > 1e-9
        if name in CONVEX:
            assert not diff.any(), np.linalg.norm(y - ref, axis=1).max()
        else:
            # Tracking reflects at the first wall the path meets; the collision-tree reference
            # only reflects steps ending outside, so a step through a corner or a hole that ends
            # inside again is left as is there: those are the only differences.
            assert np.all(dom.contains_collision(q[diff])) and not np.any(moved[diff]), name
            n_diff += int(np.count_nonzero(diff))
        x, cells = y, c
    assert n_walls > 100, n_walls  # the walls were really hit
    assert n_diff <= 0.01 * 6 * n, n_diff


def test_no_particle_lost_over_a_million_steps(domains, comm):
    """2e4 particles x 50 steps in the disk (rms step 0.3 h), all kept inside their cell."""
    msh, dom = domains("disk")
    tr = dom.tracker
    rng = np.random.default_rng(3 + comm.rank)
    x = _uniform_sampler(msh)(rng, 20000)
    c = dom.locate(x)
    lost_total = 0
    for _ in range(50):
        q = x + 0.03 * rng.standard_normal(x.shape)
        _, y, c1, lost, out = tr.walk(x, q, c)
        assert out.size == 0  # the whole mesh: no foreign cells
        lost_total += lost.size
        if lost.size:  # the fallback of MeshDomain.reflect_tracked
            y[lost], c1[lost] = dom.reflect_tracked(x[lost], q[lost], c[lost])
        x, c = y, c1
        lam = tr.barycentric(x, c)
        assert lam.min() >= -1e-9
        assert np.linalg.norm(x, axis=1).max() <= 1.0 + 1e-12
    assert lost_total <= 10, lost_total  # rounding only: the fallback catches these


def _chi2_rings(dom, x, n_rings, dim):
    """Chi-square statistic of the radii against the uniform law on the (polygonal) mesh."""
    tr = dom.tracker
    e = tr.verts[:, 1:] - tr.verts[:, :1]
    vol = np.abs(np.linalg.det(e))
    r_cell = np.linalg.norm(tr.centroid, axis=1)
    # rings made of whole cells (by the centroid radius, of about equal volume), so that their
    # exact probability under the uniform law on the mesh is known
    order = np.argsort(r_cell)
    cum = np.cumsum(vol[order]) / vol.sum()
    ring_of_cell = np.empty(tr.ncell, dtype=np.int64)
    ring_of_cell[order] = np.minimum((cum * n_rings).astype(np.int64), n_rings - 1)
    prob = np.bincount(ring_of_cell, weights=vol, minlength=n_rings) / vol.sum()
    counts = np.bincount(ring_of_cell[dom.locate(x)], minlength=n_rings)
    expected = prob * x.shape[0]
    return float(np.sum((counts - expected) ** 2 / expected)), n_rings - 1


@pytest.mark.parametrize("name", ["disk", "ball"])
def test_reflected_brownian_motion_tends_to_uniform(domains, name, comm):
    """All particles start at one point; at t = 2 (relaxation time ~0.3) the law is uniform."""
    from scipy.stats import chi2

    msh, dom = domains(name)
    d = dom.dim
    n = 5000 if d == 2 else 5000
    sigma, dt, steps = 0.5, 0.08, 25
    params = ParticleParams(n, (1.0,), (1.0,), sigma, 2.0, 0.2)
    start = np.zeros((1, n, d))
    start[0, :, 0] = 0.6

    state = state_from_positions(start, 9, dom, comm)
    x0 = gather_positions(state, comm, root=None)[0]
    stat0, dof = _chi2_rings(dom, x0, 8, d)
    assert chi2.sf(stat0, dof) < 1e-6  # the check can fail: a point mass is not uniform
    for _ in range(steps):
        state = step(state, dt, params, dom, None, comm)
    x = gather_positions(state, comm, root=None)[0]
    stat, dof = _chi2_rings(dom, x, 8, d)
    assert chi2.sf(stat, dof) > 1e-3, (stat, dof)


SCRIPT = Path(__file__).with_name("_tracking_ranks.py")


def _rank_script():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import _tracking_ranks as tr_ranks
    finally:
        sys.path.pop(0)
    return tr_ranks


@pytest.fixture(scope="module")
def three_ranks(tmp_path_factory):
    """The script's trajectories on 3 ranks (launched from a serial run only)."""
    if MPI.COMM_WORLD.size > 1:
        return None
    out = tmp_path_factory.mktemp("ranks") / "x3.npz"
    mpiexec = Path(sys.executable).with_name("mpiexec")
    res = subprocess.run([str(mpiexec), "-n", "3", sys.executable, str(SCRIPT), str(out)],
                         capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert res.returncode == 0, res.stderr[-3000:]
    return dict(np.load(out))


@pytest.mark.parametrize("shape", ["disk", "ball"])
def test_same_trajectories_on_1_2_3_ranks(comm, shape, three_ranks):
    """Migration: with the FE-operator drift on, the trajectories do not depend on the ranks.

    To 1e-12. Particles live on the rank owning their cell and migrate every step; their noise
    is keyed by identity. This run's communicator is compared with a serial run of the same function
    in-process, and serially with the script under ``mpiexec -n 3``. The drift moves the
    particles by much more than the tolerance (compared with the run without it), so a
    particle given another's drift, or a lost or duplicated particle, fails the test.
    """
    tr_ranks = _rank_script()
    here = tr_ranks.trajectories(comm, shape)
    ref = tr_ranks.trajectories(MPI.COMM_SELF, shape)
    assert here.shape == ref.shape and np.all(np.isfinite(ref))
    assert np.abs(here - ref).max() < 1e-12, np.abs(here - ref).max()
    assert np.abs(ref[-1] - ref[0]).max() > 0.05  # the particles moved
    free = tr_ranks.trajectories(MPI.COMM_SELF, shape, with_drift=False)
    assert np.abs(free[-1] - ref[-1]).max() > 1e-3  # the drift matters
    if three_ranks is not None:
        three = three_ranks[shape]
        assert np.abs(three - ref).max() < 1e-12, np.abs(three - ref).max()


@pytest.mark.parametrize("name", ["disk", "ball"])
def test_particles_live_on_the_rank_owning_their_cell(domains, name, comm):
    """After each step every particle is in its cell, an owned cell of its rank.

    Also: particle counts, identities and the deposited mass are conserved, and the local
    drift (no routing) equals the routed one.
    """
    from fem_crossdiff.models.nonlocal_system import NonlocalParams
    from fem_crossdiff.particles.mesh_drift import MeshOperatorDrift
    from fem_crossdiff.particles.state import init_state

    msh, _ = domains(name)
    dom = MeshDomain(msh)  # fresh: its whole-mesh tracker must never be built below
    tdim = msh.topology.dim
    nown = msh.topology.index_map(tdim).size_local
    V = fem.functionspace(msh, ("Lagrange", 1))
    sampler = _uniform_sampler(msh)
    n, eps = (2000, 0.3) if name == "disk" else (600, 0.6)
    params = ParticleParams(n, (1.0, 0.5), (1.0, 2.0), 0.3, 2.0, eps,
                            masses=(sampler.mass, 2.0 * sampler.mass))
    # a coarse ball (h_max 0.49): eps = 0.6 spans fewer than two of its largest cells, which
    # does not matter to where the particles live
    if name == "ball":
        with pytest.warns(RuntimeWarning, match="under-resolved"):
            drift = MeshOperatorDrift(V, params, NonlocalParams(eps, allow_small_eps=True))
    else:
        drift = MeshOperatorDrift(V, params)
    state = init_state(params, sampler, 21, dom, comm)
    migrated = 0
    for it in range(4):
        c = state.cells
        assert c is not None and np.all((c >= 0) & (c < nown))
        verts = msh.geometry.x[msh.geometry.dofmaps[0][c]][..., :tdim]
        e = np.transpose(verts[:, 1:] - verts[:, :1], (0, 2, 1))
        xi = np.linalg.solve(e, (state.positions - verts[:, 0])[..., None])[..., 0]
        lam_min = np.minimum(xi.min(axis=1, initial=np.inf), 1.0 - xi.sum(axis=1))
        assert comm.allreduce(float(lam_min.min(initial=0.0)), op=MPI.MIN) >= -1e-9
        ids = comm.allgather((state.species, state.ids))
        sp = np.concatenate([a for a, _ in ids])
        ii = np.concatenate([b for _, b in ids])
        for k in range(2):
            assert np.array_equal(np.sort(ii[sp == k]), np.arange(n))
        v_local = drift.at_cells(state.positions, state.species, c, params, comm)
        mass = comm.allreduce(drift.lumped @ drift.last_density[: drift.nown], op=MPI.SUM)
        assert np.allclose(mass, params.mass, rtol=1e-12, atol=0), mass
        v_routed = drift(state.positions, 0.0, params, comm, species=state.species)
        diff = float(np.abs(v_local - v_routed).max(initial=0.0))
        scale = comm.allreduce(float(np.abs(v_routed).max(initial=0.0)), op=MPI.MAX)
        assert scale > 0.01 and comm.allreduce(diff, op=MPI.MAX) < 1e-12 * scale
        before = {(int(k), int(i)) for k, i in zip(state.species, state.ids, strict=True)}
        state = step(state, 0.01, params, dom, drift, comm)
        after = {(int(k), int(i)) for k, i in zip(state.species, state.ids, strict=True)}
        migrated += comm.allreduce(len(after - before), op=MPI.SUM)
        assert state.step_index == it + 1
    if comm.size > 1:
        assert migrated > 0  # the particles really changed ranks
    # memory per rank ~ cells / P: sampling, location, drift and steps used only the owned
    # cells' tracker
    assert not dom.whole_mesh_built
    assert dom.part_tracker.ncell == nown


@pytest.mark.parametrize("name", ["lshape", "ball"])
def test_partition_tracker_matches_the_whole_mesh(domains, name, comm):
    """The owned-cell tracker's facets: the same neighbours as the whole-mesh tracker.

    Local neighbours are the same cells, foreign slots name the owner rank and its local cell,
    walls are walls; each rank holds only its owned cells (memory per rank falls with ranks).
    """
    msh, dom = domains(name)
    tr, slots = dom.part_tracker, dom.slots
    nown = msh.topology.index_map(msh.topology.dim).size_local
    assert tr.ncell == nown and tr.A.shape[0] == nown
    glob = dom.tracker.neighbour[dom.local_to_global]  # (nown, d + 1), original numbering
    nb = tr.neighbour
    wall = glob < 0
    assert np.array_equal(nb < 0, wall | (nb <= -2)) and np.array_equal(wall, nb == -1)
    local = nb >= 0
    assert np.array_equal(dom.local_to_global[nb[local]], glob[local])
    foreign = nb <= -2
    s = -2 - nb[foreign]
    assert np.array_equal(slots[s, 0], dom.cell_rank[glob[foreign]])
    assert np.array_equal(slots[s, 1], dom.cell_local[glob[foreign]])
    assert np.all(slots[s, 0] != comm.rank)
    held = comm.allgather(tr.ncell)
    assert sum(held) == dom.tracker.ncell
    if comm.size > 1:
        assert np.count_nonzero(foreign) > 0  # the partition has an interface
        assert max(held) < 0.75 * dom.tracker.ncell, held  # ~ cells / P per rank


@pytest.mark.parametrize("name", ["holes", "ball"])
def test_partitioned_walk_equals_the_whole_mesh_walk(domains, name, comm):
    """Handing particles over across the partition: the same ends as the whole-mesh walk.

    The same end points and cells, each particle ending on the rank owning its cell.
    """
    msh, dom = domains(name)
    rng = np.random.default_rng(11)
    n = 600 if name == "ball" else 3000
    x = _uniform_sampler(msh)(rng, n)  # the same points on every rank
    orig = dom.locate(x)
    mine = np.flatnonzero(dom.cell_rank[orig] == comm.rank)
    p, c0 = x[mine], dom.cell_local[orig[mine]]
    q = p + 0.15 * rng.standard_normal(p.shape)  # several cells per step, walls, ranks
    ref_q, ref_c = dom.reflect_tracked(p, q, orig[mine])
    got_q, got_c, got_e = dom.walk_partitioned(p, q, c0, mine[:, None].astype(np.int64))
    # compare by particle: gather (index, q, original cell) everywhere
    ref = comm.allgather((mine, ref_q, ref_c))
    got = comm.allgather((got_e[:, 0], got_q, dom.local_to_global[got_c]))
    rq, rc = np.zeros((n, dom.dim)), np.full(n, -1)
    gq, gc = np.full((n, dom.dim), np.nan), np.full(n, -2)
    for i, a, b in ref:
        rq[i], rc[i] = a, b
    for i, a, b in got:
        assert np.all(gc[i] == -2)  # no particle twice
        gq[i], gc[i] = a, b
    assert np.all(gc >= 0)  # none lost
    assert np.array_equal(gc, rc)
    assert np.abs(gq - rq).max() < 1e-12
    handed = comm.allreduce(int(np.count_nonzero(dom.cell_rank[ref_c] != comm.rank)),
                            op=MPI.SUM)
    if comm.size > 1:
        assert handed > 0.05 * n, handed
