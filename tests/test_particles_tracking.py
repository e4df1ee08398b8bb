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
        y, c = dom.track(x, q, cells)
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
        y, c1, lost = tr.walk(x, q, c)
        lost_total += lost.size
        if lost.size:  # the fallback of MeshDomain.track
            y[lost], c1[lost] = dom.track(x[lost], q[lost], c[lost])
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


def test_same_trajectories_on_1_2_3_ranks(comm, tmp_path_factory):
    """FE-operator drift, noise, tracking: the trajectories do not depend on the ranks.

    Each rank count runs :mod:`tests._tracking_ranks` (the script writes the gathered
    positions); this run's communicator is compared with a serial run of the same function
    in-process, and serially the script is launched under ``mpiexec -n 3``.
    """
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import _tracking_ranks as tr_ranks
    finally:
        sys.path.pop(0)
    here = tr_ranks.trajectories(comm)
    ref = tr_ranks.trajectories(MPI.COMM_SELF)
    assert here.shape == ref.shape
    assert np.abs(here - ref).max() < 1e-12, np.abs(here - ref).max()
    assert np.abs(ref[-1] - ref[0]).max() > 0.05  # the particles moved
    if comm.size > 1:
        return
    out = tmp_path_factory.mktemp("ranks") / "x3.npy"
    mpiexec = Path(sys.executable).with_name("mpiexec")
    env = dict(os.environ)
    res = subprocess.run([str(mpiexec), "-n", "3", sys.executable, str(SCRIPT), str(out)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    three = np.load(out)
    assert np.abs(three - ref).max() < 1e-12, np.abs(three - ref).max()
