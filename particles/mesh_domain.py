"""DOLFINx bridge: reflecting walls at the boundary of any mesh, sampling from FE densities.

The only module of :mod:`fem_crossdiff.particles` that needs DOLFINx (through
:mod:`fem_crossdiff.compat`).

Location and reflection by tracking (:class:`MeshDomain`, :meth:`MeshDomain.track`): each rank
holds a :class:`~fem_crossdiff.particles.tracking.SimplexTracker` of its owned cells only
(:func:`partition_tracker`: barycentric maps and facet neighbours; a facet shared with another
rank's cell points to a foreign slot, the owner rank and its local cell, found by matching the
facets' global vertex ids across ranks, whatever the ghost mode). Each particle lives on the rank
owning its cell and keeps that (local) cell in the
:class:`~fem_crossdiff.particles.state.ParticleState`; a step ``p -> q`` is walked from that cell
through facet neighbours, reflecting ``q`` at each boundary facet the path meets (the exact
specular reflection of the straight path). A particle reaching a foreign cell stops on the facet
and is handed over to its owner, which continues the walk
(:meth:`MeshDomain.walk_partitioned`, rounds until no rank has particles in flight): after the
step every particle is on the rank owning its cell, so that
:meth:`~fem_crossdiff.particles.mesh_drift.MeshOperatorDrift.at_cells` evaluates the drift where
the particles are. Initial data are sent to their cells' owners by :meth:`MeshDomain.distribute`
(collective location, :meth:`MeshDomain.owners`: global bounding-box tree, then an exact
barycentric test on the candidate ranks). Cost: one numpy pass over the particles per cell
crossed (the walk alone measured 1.2-1.4 us per particle-step on a loaded machine, against 12-78
us per point for the collision tree; ``benchmarks/bench_particles_mesh.py``). Particles the walk
loses (rounding, at most a few per million particle-steps) take the collision-tree path below.
The tracker of the whole mesh (:attr:`MeshDomain.tracker`, original cell order, every rank) is
built only on demand, for the reference paths (:meth:`MeshDomain.locate`,
:meth:`MeshDomain.contains`, :meth:`MeshDomain.reflect_tracked`) and the tests.

Reflection by the collision tree (:meth:`MeshDomain.reflect_collision`, the reference): the
exterior facets of the (affine simplex) mesh are gathered on every rank at construction, so that
reflections need no communication and do not depend on the partition. After a step ``p -> q``,
particles that left the mesh are located: a particle in a local cell (``bb_tree``,
``compute_collisions_points``, ``compute_colliding_cells``) is inside; the others are classified by
the parity of the crossings of a fixed ray with the boundary facets (``determine_point_ownership``
is not used: it assigns points outside the mesh to a nearby cell). For those outside, the first
boundary facet crossed by the segment ``p -> q`` is found (smallest segment parameter over all
facets whose plane is crossed outward, with the hit inside the facet), ``q`` is reflected across
the facet plane and the crossing point becomes the new ``p``; this repeats (corners may need
several reflections) until every particle is inside. As a last resort (no crossing found because of
rounding, or too many reflections) the particle is put at the nearest boundary point, moved
``1e-6`` of the way to the centroid of the adjacent cell, which is strictly inside.

Sampling (:class:`FEDensitySampler`): from a DG0 or P1 function ``u >= 0``: the cell data are
gathered on every rank in the order of the original (input) cell indices, so the samples do not
depend on the partition; cells are chosen by their mass, points are uniform in the simplex
(sorted uniforms give uniform barycentric coordinates), and for P1 a point is accepted with
probability ``u(point) / max(vertex values)`` (redrawn in the same cell otherwise). The sampler
also gives the mass ``int u`` (:attr:`FEDensitySampler.mass`), the species mass ``M_l`` of
:class:`~fem_crossdiff.particles.params.ParticleParams`.

The drift of (1.6) built from the FE model's own operator (deposit on P1, the nonlocal
potential, cell-wise gradients) is :mod:`fem_crossdiff.particles.mesh_drift`.
"""

from __future__ import annotations

import math

import numpy as np

from fem_crossdiff.compat import MPI, geometry, mesh

from . import kernels
from .sampling import check_density_values
from .tracking import SimplexTracker, facet_neighbours

__all__ = ["MeshDomain", "FEDensitySampler", "best_candidates", "migrate", "partition_tracker"]


def _gather_rows(comm, arr: np.ndarray) -> np.ndarray:
    parts = comm.allgather(np.ascontiguousarray(arr))
    return np.concatenate(parts, axis=0)


def migrate(comm, dest: np.ndarray, x: np.ndarray, cells: np.ndarray, extra: np.ndarray):
    """Send the rows with ``dest != comm.rank`` to ``dest`` (one ``Alltoallv`` of just those).

    Args:
        comm: The communicator.
        dest: ``(M,)`` destination rank of each row.
        x: ``(M, d)`` floats.
        cells: ``(M,)`` integers (the cells in the destination's numbering).
        extra: ``(M, k)`` integers.

    Returns:
        ``(x, cells, extra)``: the rows kept, then the rows received (by source rank, in the
        senders' order).
    """
    d, k = x.shape[1], extra.shape[1]
    go = dest != comm.rank
    keep = ~go
    idx = np.flatnonzero(go)
    order = idx[np.argsort(dest[idx], kind="stable")]
    send_counts = np.bincount(dest[order], minlength=comm.size).astype(np.int64)
    recv_counts = np.empty(comm.size, dtype=np.int64)
    comm.Alltoall(send_counts, recv_counts)
    w = d + 1 + k  # integers travel as their bit patterns in float64 words: exact
    send = np.empty((order.size, w))
    send[:, :d] = x[order]
    send[:, d] = cells[order].astype(np.int64).view(np.float64)
    send[:, d + 1:] = np.ascontiguousarray(extra[order], dtype=np.int64).view(np.float64)
    recv = np.empty((int(recv_counts.sum()), w))
    sdispl = np.concatenate(([0], np.cumsum(send_counts)[:-1]))
    rdispl = np.concatenate(([0], np.cumsum(recv_counts)[:-1]))
    comm.Alltoallv([send, (send_counts * w, sdispl * w), MPI.DOUBLE],
                   [recv, (recv_counts * w, rdispl * w), MPI.DOUBLE])
    ints = np.ascontiguousarray(recv[:, d:]).view(np.int64)
    return (np.concatenate([x[keep], recv[:, :d]]),
            np.concatenate([cells[keep].astype(np.int64), ints[:, 0]]),
            np.concatenate([extra[keep].astype(np.int64), ints[:, 1:]]))


def partition_tracker(msh) -> tuple[SimplexTracker, np.ndarray]:
    """The tracker of this rank's owned cells, with foreign slots across the partition.

    Facets are matched by their global (input) vertex ids: first among the owned cells, then
    the unmatched ones across ranks at a rendezvous rank (the one numbered ``smallest vertex id
    mod P``), so that nothing depends on the ghost mode and no rank holds more than its share
    of the partition's facets. A facet matched on another rank becomes the neighbour entry
    ``-2 - s`` of foreign slot ``s``; a facet matched nowhere is a wall (``-1``).

    Returns:
        ``(tracker, slots)``: the :class:`SimplexTracker` of the owned cells in local order
        and ``slots (S, 2)``, the owner rank and its local cell index of each foreign slot.
        Collective.
    """
    comm, tdim = msh.comm, msh.topology.dim
    ncell = msh.topology.index_map(tdim).size_local
    verts = _cell_vertices(msh, np.arange(ncell, dtype=np.int32)).reshape(ncell, tdim + 1, tdim)
    vid = np.asarray(msh.geometry.input_global_indices, dtype=np.int64)[
        msh.geometry.dofmaps[0][:ncell]].reshape(ncell, tdim + 1)
    nbr = facet_neighbours(vid)
    slots = np.zeros((0, 2), dtype=np.int64)
    if comm.size > 1:
        cc, ff = np.nonzero(nbr == -1)
        keys = np.sort(np.stack([np.delete(vid[c], f) for c, f in zip(cc, ff, strict=True)])
                       if cc.size else np.zeros((0, tdim), dtype=np.int64), axis=1)
        dest = keys[:, 0] % comm.size if cc.size else np.zeros(0, dtype=np.int64)
        out = [np.concatenate([keys[dest == r], np.stack([cc, ff], axis=1)[dest == r]], axis=1)
               for r in range(comm.size)]
        got = comm.alltoall(out)  # rows: facet key, local cell, local facet; once, at setup
        rows = np.concatenate(got) if got else np.zeros((0, tdim + 2), dtype=np.int64)
        src = np.concatenate([np.full(len(g), r, dtype=np.int64) for r, g in enumerate(got)])
        order = np.lexsort(rows[:, :tdim].T[::-1])
        ks = rows[order, :tdim]
        same = np.flatnonzero(np.all(ks[1:] == ks[:-1], axis=1))
        a, b = order[same], order[same + 1]
        reply = [[] for _ in range(comm.size)]
        for i, j in ((a, b), (b, a)):  # to the owner of i: its cell, facet, and j's rank, cell
            for r in range(comm.size):
                m = src[i] == r
                reply[r].append(np.stack([rows[i[m], tdim], rows[i[m], tdim + 1], src[j[m]],
                                          rows[j[m], tdim]], axis=1))
        back = comm.alltoall([np.concatenate(x) for x in reply])
        match = np.concatenate(back) if back else np.zeros((0, 4), dtype=np.int64)
        slots = np.ascontiguousarray(match[:, 2:4], dtype=np.int64)
        nbr[match[:, 0], match[:, 1]] = -2 - np.arange(match.shape[0], dtype=np.int64)
    return SimplexTracker(verts, vid, neighbour=nbr), slots


def _cell_vertices(msh, cells: np.ndarray) -> np.ndarray:
    gdim = msh.geometry.dim
    dofs = msh.geometry.dofmaps[0][cells]
    return msh.geometry.x[dofs][..., :gdim]


def best_candidates(tree, x3: np.ndarray, score) -> tuple[np.ndarray, np.ndarray]:
    """Best bounding-box candidate cell of each point ``x3 (P, 3)`` and its score.

    Args:
        tree: DOLFINx bounding-box tree of the cells to search.
        x3: Points, padded to three coordinates.
        score: ``score(pid, cells) -> (K,)`` of the candidate pairs (point index, cell); the
            smallest barycentric coordinate: ``>= 0`` inside.

    Returns:
        ``(score, cell)`` per point: the best candidate (``-inf`` and ``-1`` without one).
    """
    npts = x3.shape[0]
    best = np.full(npts, -np.inf)
    cells = np.full(npts, -1, dtype=np.int64)
    if npts == 0:
        return best, cells
    cand = geometry.compute_collisions_points(tree, x3)
    off = np.asarray(cand.offsets, dtype=np.int64)
    c = np.asarray(cand.array, dtype=np.int64)
    if c.size == 0:
        return best, cells
    cnt = np.diff(off)
    pid = np.repeat(np.arange(npts), cnt)
    sc = score(pid, c)
    o = np.lexsort((-sc, pid))  # by point, best score first
    has = cnt > 0
    first = o[off[:-1][has]]
    best[has], cells[has] = sc[first], c[first]
    return best, cells


class MeshDomain:
    """A DOLFINx mesh as a particle domain with specularly reflecting boundary.

    Args:
        msh: an affine simplex mesh (intervals, triangles, tetrahedra) with ``gdim == tdim``.
        max_reflections: reflections per step before the projection fallback.
    """

    def __init__(self, msh, max_reflections: int = 20):
        tdim, gdim = msh.topology.dim, msh.geometry.dim
        if tdim != gdim:
            raise ValueError(f"msh: need gdim == tdim, got gdim={gdim}, tdim={tdim}")
        self.msh, self.dim, self.max_reflections = msh, gdim, int(max_reflections)
        comm = self.comm = msh.comm
        msh.topology.create_connectivity(tdim - 1, tdim)
        facets = mesh.exterior_facet_indices(msh.topology)
        facets = facets[facets < msh.topology.index_map(tdim - 1).size_local]
        fgeo = mesh.entities_to_geometry(msh, tdim - 1, facets.astype(np.int32))
        fv = msh.geometry.x[fgeo][..., :gdim].reshape(len(facets), tdim, gdim)
        f2c = msh.topology.connectivity(tdim - 1, tdim)
        cells = np.array([f2c.links(f)[0] for f in facets], dtype=np.int32)
        cent = (_cell_vertices(msh, cells).mean(axis=1) if len(cells)
                else np.zeros((0, gdim)))
        fv, cent = _gather_rows(comm, fv), _gather_rows(comm, cent)
        order = np.lexsort(fv.mean(axis=1).T[::-1])
        self.fv, self.cell_centroid = fv[order], cent[order]
        self.normal = self._outward_normals()
        ncell = msh.topology.index_map(tdim).size_local
        vols = self._local_sizes(msh, ncell)
        hmin = comm.allreduce(float(vols.min()) if vols.size else np.inf, op=MPI.MIN)
        self.hmin = hmin
        self._tree = geometry.bb_tree(msh, tdim)
        xg = msh.geometry.x[:, :gdim]
        lo, hi = np.empty(gdim), np.empty(gdim)
        comm.Allreduce(np.ascontiguousarray(xg.min(axis=0)), lo, op=MPI.MIN)
        comm.Allreduce(np.ascontiguousarray(xg.max(axis=0)), hi, op=MPI.MAX)
        self._bounds = (lo, hi)
        self._whole = None  # the whole-mesh tracker, built on first use (collective)
        #: the tracker of the owned cells and its foreign slots (``partition_tracker``)
        self.part_tracker, self.slots = partition_tracker(msh)
        ncell = self.part_tracker.ncell
        hmax = comm.allreduce(float(vols.max()) if vols.size else 0.0, op=MPI.MAX)
        self._owned_tree = geometry.bb_tree(msh, tdim, entities=np.arange(ncell, dtype=np.int32),
                                            padding=1e-8 * hmax)
        self._global_tree = (self._owned_tree.create_global_tree(comm) if comm.size > 1
                             else None)

    @property
    def whole_mesh_built(self) -> bool:
        """Whether the whole-mesh tracker (:attr:`tracker`) exists on this rank."""
        return self._whole is not None

    @property
    def tracker(self) -> SimplexTracker:
        """The whole-mesh tracker (original cell order), built on first use (collective).

        For the reference paths and the tests (:meth:`locate`, :meth:`contains`,
        :meth:`reflect_tracked`); the particle step never needs it (memory per rank
        ~ cells / P: :attr:`part_tracker`).
        """
        if self._whole is None:
            self._build_tracker()
        return self._whole

    @property
    def cell_rank(self) -> np.ndarray:
        """Owner rank of every cell (original order); builds :attr:`tracker`."""
        self.tracker  # noqa: B018
        return self._cell_rank

    @property
    def cell_local(self) -> np.ndarray:
        """Local index on its owner of every cell (original order); builds :attr:`tracker`."""
        self.tracker  # noqa: B018
        return self._cell_local

    @property
    def local_to_global(self) -> np.ndarray:
        """Original index of each owned local cell; builds :attr:`tracker`."""
        self.tracker  # noqa: B018
        return self._local_to_global

    def _build_tracker(self):
        """The global :class:`SimplexTracker` (cells in the original order, on every rank)."""
        msh, comm, tdim = self.msh, self.msh.comm, self.msh.topology.dim
        ncell = msh.topology.index_map(tdim).size_local
        cells = np.arange(ncell, dtype=np.int32)
        verts = _cell_vertices(msh, cells).reshape(ncell, tdim + 1, self.dim)
        gdofs = msh.geometry.dofmaps[0][:ncell]
        vid = np.asarray(msh.geometry.input_global_indices, dtype=np.int64)[gdofs]
        orig = np.asarray(msh.topology.original_cell_index[:ncell], dtype=np.int64)
        rank = np.full(ncell, comm.rank, dtype=np.int64)
        verts, vid, orig, rank, local = (
            _gather_rows(comm, a) for a in (verts, vid, orig, rank, cells.astype(np.int64)))
        order = np.argsort(orig, kind="stable")
        self._whole = SimplexTracker(verts[order], vid[order])
        self._cell_rank, self._cell_local = rank[order], local[order]
        self._local_to_global = np.empty(ncell, dtype=np.int64)
        mine = np.flatnonzero(self._cell_rank == comm.rank)
        self._local_to_global[self._cell_local[mine]] = mine

    def locate(self, x: np.ndarray) -> np.ndarray:
        """Cell (original index, partition independent) of each point ``x (P, d)``; -1 outside.

        By the whole-mesh :attr:`tracker` (collective the first time: it is built on demand;
        the particle step uses :meth:`owners` instead).
        """
        return self.tracker.locate(np.asarray(x, dtype=float).reshape(-1, self.dim),
                                   inside=self.contains_collision)

    def reflect_tracked(self, x_old: np.ndarray, x_new: np.ndarray,
                        cells: np.ndarray | None = None):
        """Reflect the steps ``x_old -> x_new`` by tracking; returns ``(x, cells)``.

        Not collective, no migration: original cell indices in the whole-mesh tracker (the
        walk of :meth:`track`).

        Args:
            x_old: Start points ``(P, d)`` inside the mesh.
            x_new: Unreflected end points ``(P, d)``.
            cells: Cells of ``x_old`` (original indices, as returned before); ``None``: located.

        Returns:
            The reflected end points and their cells. Particles lost by the walk (rounding)
            are reflected by :meth:`reflect_collision` and located directly.
        """
        p = np.array(x_old, dtype=float).reshape(-1, self.dim)
        q = np.array(x_new, dtype=float).reshape(-1, self.dim)
        if cells is None:
            c = self.locate(p)
        else:  # stale cells (positions replaced by hand) are located again: the walk needs p in c
            c = np.array(cells, dtype=np.int64).reshape(-1)
            if c.size != p.shape[0]:
                raise ValueError(f"cells: need one per point ({p.shape[0]}), got {c.size}")
            ok = (c >= 0) & (c < self.tracker.ncell)
            stale = np.flatnonzero(~ok)
            okc = np.flatnonzero(ok)
            lam = self.tracker.barycentric(p[okc], c[okc])
            stale = np.concatenate([stale, okc[lam.min(axis=1) < -1e-9]])
            if stale.size:
                c[stale] = self.locate(p[stale])
        bad = np.flatnonzero(c < 0)
        if bad.size:  # start points outside by rounding: moved just inside
            p[bad] = self._project_inside(p[bad])
            c[bad] = self.locate(p[bad])
        _, q, c, lost, _ = self.tracker.walk(p, q, c)
        if lost.size:
            q[lost] = self.reflect_collision(p[lost], np.array(x_new, dtype=float).reshape(
                -1, self.dim)[lost])
            cl = self.tracker.locate_brute(q[lost])
            miss = cl < 0
            if miss.any():
                q[lost[miss]] = self._project_inside(q[lost[miss]])
                cl[miss] = self.tracker.locate_brute(q[lost[miss]])
            c[lost] = cl
        return q, c

    # ------------------------------------------------------------------ ownership
    def distribute(self, x: np.ndarray, extra: np.ndarray):
        """Send points to the ranks owning their cells (collective).

        Args:
            x: ``(M, d)`` points held by this rank (any rank may hold any point).
            extra: ``(M, k)`` integers travelling with the points (species, ids).

        Returns:
            ``(x, cells, extra)`` of the points this rank owns now, ``cells`` local cell
            indices.

        Raises:
            ValueError: on every rank, when points lie outside the mesh (parameter
                ``positions``).
        """
        x = np.asarray(x, dtype=float).reshape(-1, self.dim)
        owner, cell = self.owners(x)
        bad = self.comm.allreduce(int(np.count_nonzero(owner < 0)), op=MPI.SUM)
        if bad:
            raise ValueError(f"positions: {bad} particle(s) lie outside the domain {self!r}")
        return self._send(owner, x, cell, np.asarray(extra, dtype=np.int64))

    def track(self, x_old: np.ndarray, x_new: np.ndarray, cells, extra: np.ndarray):
        """Walk the steps ``x_old -> x_new``, reflecting at the walls, and migrate (collective).

        Args:
            x_old: ``(M, d)`` start points, owned by this rank.
            x_new: ``(M, d)`` unreflected end points.
            cells: ``(M,)`` local cells of ``x_old`` (``None``, or stale entries: located).
            extra: ``(M, k)`` integers travelling with the particles (species, ids).

        Returns:
            ``(x, cells, extra)`` of the particles this rank owns after the step: those whose
            end cell is owned elsewhere went there in one ``Alltoallv`` (only they move).
        """
        extra = np.asarray(extra, dtype=np.int64)
        p = np.asarray(x_old, dtype=float).reshape(-1, self.dim)
        q = np.asarray(x_new, dtype=float).reshape(-1, self.dim)
        ok = np.zeros(p.shape[0], dtype=bool)
        c = np.zeros(p.shape[0], dtype=np.int64)
        if cells is not None:  # cells that hold their particle walk on the partition
            c = np.asarray(cells, dtype=np.int64).reshape(-1)
            if c.size != p.shape[0]:
                raise ValueError(f"cells: need one per point ({p.shape[0]}), got {c.size}")
            tr = self.part_tracker
            ok = kernels.in_cell(tr.A, tr.b, np.ascontiguousarray(p), c, 1e-9)
        any_stale = not ok.all()
        if self.comm.size > 1:  # _settle is collective: every rank takes it, or none
            any_stale = self.comm.allreduce(any_stale, op=MPI.LOR)
        if not any_stale:  # the usual case (cells kept by the previous step): no copies
            return self.walk_partitioned(p, q, c, extra)
        todo = np.flatnonzero(~ok)  # stale cells (positions set by hand): the reference path
        stale = self._settle(p[todo], q[todo], extra[todo])
        walked = self.walk_partitioned(p[ok], q[ok], c[ok], extra[ok])
        return tuple(np.concatenate([a, b]) for a, b in zip(walked, stale, strict=True))

    def walk_partitioned(self, p: np.ndarray, q: np.ndarray, cells: np.ndarray,
                         extra: np.ndarray):
        """Walk ``p -> q`` on this rank's cells, handing particles over across the partition.

        A particle reaching a facet of another rank's cell stops there
        (:meth:`SimplexTracker.walk`, ``exited``) and is sent to that rank with its crossing
        point, its target reflected so far and the foreign cell; the receiver continues the
        walk. Rounds repeat until no rank has particles in flight (one ``allreduce`` each).
        Particles the walk loses (rounding, a few per million particle-steps) are reflected
        by the collision tree and sent to their owners (:meth:`_settle`). Collective.

        Returns:
            ``(q, cells, extra)`` of the particles that ended in this rank's cells.
        """
        comm, d, tr = self.comm, self.dim, self.part_tracker
        out, lost_p, lost_q, lost_e = [], [], [], []
        c = np.asarray(cells, dtype=np.int64)
        while True:
            p1, q1, c1, lost, exited = tr.walk(p, q, c)
            if lost.size or exited.size:
                here = np.ones(p.shape[0], dtype=bool)
                here[lost] = here[exited] = False
                out.append((q1[here], c1[here], extra[here]))
            else:  # all arrived (most rounds of most steps): no copies
                out.append((q1, c1, extra))
            lost_p.append(p[lost])
            lost_q.append(q[lost])
            lost_e.append(extra[lost])
            flying = comm.allreduce(int(exited.size), op=MPI.SUM) if comm.size > 1 else 0
            if flying == 0:
                break
            slot = -2 - c1[exited]
            pq, c, extra = migrate(comm, self.slots[slot, 0],
                                   np.concatenate([p1[exited], q1[exited]], axis=1),
                                   self.slots[slot, 1], extra[exited])
            p, q = pq[:, :d], pq[:, d:]
        n_lost = sum(a.shape[0] for a in lost_p)
        if comm.size > 1 or n_lost:  # _settle is collective
            out.append(self._settle(np.concatenate(lost_p), np.concatenate(lost_q),
                                    np.concatenate(lost_e)))
        out = [o for o in out if o[0].shape[0]] or out[:1]
        if len(out) == 1:
            return out[0]
        return tuple(np.concatenate([o[i] for o in out]) for i in range(3))

    def _settle(self, p: np.ndarray, q: np.ndarray, extra: np.ndarray):
        """Reflect ``p -> q`` by the collision tree and send the ends to their owners."""
        q = self.reflect_collision(p, q)
        owner, cell = self.owners(q)
        miss = np.flatnonzero(owner < 0)  # outside by rounding: moved just inside
        if self.comm.allreduce(int(miss.size), op=MPI.SUM):
            q[miss] = self._project_inside(q[miss])
            owner[miss], cell[miss] = self.owners(q[miss])
        return self._send(owner, q, cell, extra)

    def _send(self, owner, x, cell, extra):
        if self.comm.size == 1:
            return x, cell.astype(np.int64), extra
        return migrate(self.comm, owner, x, cell, extra)

    def owners(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Owner rank and its local cell of each point ``x (P, d)``; ``(-1, -1)`` outside.

        Collective, memory per rank ~ cells / P: each point goes to the ranks whose owned cells'
        bounding box holds it (DOLFINx's global bounding-box tree), which test their candidate
        cells exactly (barycentric coordinates, tolerance ``1e-9``) and return the best score;
        the best owns the point (the lowest rank on ties). Points outside the mesh get -1.
        """
        x = np.asarray(x, dtype=float).reshape(-1, self.dim)
        comm, size = self.comm, self.comm.size
        x3 = np.zeros((x.shape[0], 3))
        x3[:, :self.dim] = x
        if size == 1:
            score, cell = self._local_best(x3)
            ok = score >= -1e-9
            return np.where(ok, 0, -1), np.where(ok, cell, -1)
        cand = geometry.compute_collisions_points(self._global_tree, x3)
        off = np.asarray(cand.offsets, dtype=np.int64)
        ranks = np.asarray(cand.array, dtype=np.int64)
        pid = np.repeat(np.arange(x.shape[0]), np.diff(off))
        order = np.lexsort((pid, ranks))
        send_counts = np.bincount(ranks, minlength=size).astype(np.int64)
        recv_counts = np.empty(size, dtype=np.int64)
        comm.Alltoall(send_counts, recv_counts)
        sdispl = np.concatenate(([0], np.cumsum(send_counts)[:-1]))
        rdispl = np.concatenate(([0], np.cumsum(recv_counts)[:-1]))
        recv = np.empty((int(recv_counts.sum()), 3))
        comm.Alltoallv([np.ascontiguousarray(x3[pid[order]]), (send_counts * 3, sdispl * 3),
                        MPI.DOUBLE], [recv, (recv_counts * 3, rdispl * 3), MPI.DOUBLE])
        score, cell = self._local_best(recv)
        res = np.ascontiguousarray(np.stack([score, cell.astype(float)], axis=1))
        back = np.empty((order.size, 2))
        comm.Alltoallv([res, (recv_counts * 2, rdispl * 2), MPI.DOUBLE],
                       [back, (send_counts * 2, sdispl * 2), MPI.DOUBLE])
        pr, rk = pid[order], ranks[order]
        best = np.lexsort((rk, -back[:, 0], pr))  # by point, best score, then lowest rank
        owner = np.full(x.shape[0], -1, dtype=np.int64)
        cells = np.full(x.shape[0], -1, dtype=np.int64)
        cnt = np.bincount(pr, minlength=x.shape[0])
        has = np.flatnonzero(cnt > 0)
        first = best[np.concatenate(([0], np.cumsum(cnt)[:-1]))[has]]
        ok = back[first, 0] >= -1e-9
        owner[has[ok]] = rk[first[ok]]
        cells[has[ok]] = back[first[ok], 1].astype(np.int64)
        return owner, cells

    def _local_best(self, x3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Best owned cell of each point and its score (smallest barycentric coordinate)."""
        if self.part_tracker.ncell == 0:
            return np.full(x3.shape[0], -np.inf), np.full(x3.shape[0], -1, dtype=np.int64)
        return best_candidates(self._owned_tree, x3, lambda pid, c: self.part_tracker.barycentric(
            x3[pid, :self.dim], c).min(axis=1))

    @staticmethod
    def _local_sizes(msh, ncell):
        if ncell == 0:
            return np.zeros(0)
        v = _cell_vertices(msh, np.arange(ncell, dtype=np.int32))
        return np.linalg.norm(v[:, 1] - v[:, 0], axis=-1)

    def _outward_normals(self) -> np.ndarray:
        fv, d = self.fv, self.dim
        if d == 1:
            n = np.ones((fv.shape[0], 1))
        elif d == 2:
            t = fv[:, 1] - fv[:, 0]
            n = np.stack([t[:, 1], -t[:, 0]], axis=-1)
        else:
            n = np.cross(fv[:, 1] - fv[:, 0], fv[:, 2] - fv[:, 0])
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        inward = np.einsum("ij,ij->i", self.cell_centroid - fv[:, 0], n) > 0
        n[inward] *= -1.0
        return n

    def __repr__(self):
        return f"MeshDomain(dim={self.dim}, boundary_facets={self.fv.shape[0]})"

    def bounds(self):
        """Bounding box ``(lo, hi)`` of the mesh."""
        return self._bounds

    def contains(self, x: np.ndarray, comm=None) -> np.ndarray:
        """Mask of the points inside the mesh (the same answer on any rank).

        Collective the first time (builds the whole-mesh :attr:`tracker`).

        By location in the global tracker (:meth:`locate`); points that the straight walk from
        the nearest cell centroid cannot reach are decided by :meth:`contains_collision`.
        """
        x = np.asarray(x, dtype=float).reshape(-1, self.dim)
        return self.tracker.locate(x, inside=self.contains_collision) >= 0

    def contains_collision(self, x: np.ndarray, comm=None) -> np.ndarray:
        """:meth:`contains` by the collision tree and ray parity (the reference).

        Points in a local cell (``bb_tree`` + ``compute_colliding_cells``, exact up to the GJK
        tolerance) are inside; the others (outside, or in another rank's cells) are classified
        by the parity of the crossings of a fixed ray with the gathered boundary facets.
        """
        x = np.asarray(x, dtype=float).reshape(-1, self.dim)
        inside = np.zeros(x.shape[0], dtype=bool)
        if x.shape[0]:
            pts = np.zeros((x.shape[0], 3))
            pts[:, :self.dim] = x
            cand = geometry.compute_collisions_points(self._tree, pts)
            cells = geometry.compute_colliding_cells(self.msh, cand, pts)
            inside = np.diff(np.asarray(cells.offsets)) > 0
        rest = np.flatnonzero(~inside)
        if rest.size:
            inside[rest] = self._ray_parity(x[rest])
        return inside

    def _ray_parity(self, x: np.ndarray) -> np.ndarray:
        """Odd number of boundary crossings of the ray ``x + t r``, ``t > 0`` (``r`` generic)."""
        fv, d = self.fv, self.dim
        if d == 1:
            lo, hi = self._bounds
            return (x[:, 0] >= lo[0]) & (x[:, 0] <= hi[0])
        out = np.zeros(x.shape[0], dtype=bool)
        step = max(1, 2_000_000 // max(1, fv.shape[0]))
        if d == 2:
            r = np.array([math.cos(0.5), math.sin(0.5)])
            a, e = fv[:, 0], fv[:, 1] - fv[:, 0]
            den = r[0] * e[:, 1] - r[1] * e[:, 0]
            with np.errstate(divide="ignore", invalid="ignore"):
                for i0 in range(0, x.shape[0], step):
                    w = a[None] - x[i0:i0 + step, None, :]
                    t = (w[..., 0] * e[:, 1] - w[..., 1] * e[:, 0]) / den
                    s = (w[..., 0] * r[1] - w[..., 1] * r[0]) / den
                    hit = (t > 0) & (s >= 0) & (s < 1)
                    out[i0:i0 + step] = np.count_nonzero(hit, axis=1) % 2 == 1
            return out
        r = np.array([0.5, 0.3 * math.sqrt(2.0), 0.1 * math.sqrt(3.0)])
        v0, e1, e2 = fv[:, 0], fv[:, 1] - fv[:, 0], fv[:, 2] - fv[:, 0]
        h = np.cross(r, e2)
        a = np.einsum("fd,fd->f", e1, h)
        with np.errstate(divide="ignore", invalid="ignore"):
            f = 1.0 / a
            for i0 in range(0, x.shape[0], step):
                sv = x[i0:i0 + step, None, :] - v0[None]
                u = f * np.einsum("pfd,fd->pf", sv, h)
                q = np.cross(sv, e1[None])
                v = f * (q @ r)
                t = f * np.einsum("pfd,fd->pf", q, e2)
                hit = (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
                out[i0:i0 + step] = np.count_nonzero(hit, axis=1) % 2 == 1
        return out

    def _facet_params(self, y: np.ndarray) -> np.ndarray:
        """Coordinates ``(P, F, d-1)`` of points ``y (P, F, d)`` in the facets' edge frames."""
        e = self.fv[:, 1:] - self.fv[:, :1]  # (F, d-1, d)
        gram = np.einsum("fad,fbd->fab", e, e)
        rhs = np.einsum("fad,pfd->pfa", e, y - self.fv[None, :, 0])
        return np.einsum("fab,pfb->pfa", np.linalg.inv(gram), rhs)

    def _first_crossing(self, p: np.ndarray, q: np.ndarray):
        """Index of the first facet crossed outward by ``p -> q`` and the hit; -1 if none."""
        fidx = np.full(p.shape[0], -1)
        hit = np.zeros_like(p)
        if p.shape[0] == 0 or self.fv.shape[0] == 0:
            return fidx, hit
        tol = 1e-10
        n, v0 = self.normal, self.fv[:, 0]
        for i0 in range(0, p.shape[0], 256):
            pp, qq = p[i0:i0 + 256], q[i0:i0 + 256]
            dn = (qq - pp) @ n.T  # (P, F)
            num = np.einsum("fd,fd->f", v0, n)[None, :] - pp @ n.T
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.where(dn > 0, num / dn, np.inf)
            ok = (t >= -tol) & (t <= 1.0 + tol)
            y = pp[:, None, :] + np.clip(t, 0.0, 1.0)[..., None] * (qq - pp)[:, None, :]
            if self.dim > 1:
                s = self._facet_params(y)
                ok &= np.all(s >= -tol, axis=-1) & (s.sum(axis=-1) <= 1.0 + tol)
            t = np.where(ok, t, np.inf)
            j = np.argmin(t, axis=1)
            found = np.isfinite(t[np.arange(j.size), j])
            fidx[i0:i0 + 256] = np.where(found, j, -1)
            hit[i0:i0 + 256] = y[np.arange(j.size), j]
        return fidx, hit

    def _project_inside(self, q: np.ndarray) -> np.ndarray:
        """Nearest boundary point, moved slightly towards the adjacent cell's centroid."""
        if q.shape[0] == 0:
            return q
        v0 = self.fv[:, 0]
        y = q[:, None, :] - np.einsum("pfd,fd->pf", q[:, None, :] - v0[None], self.normal)[
            ..., None] * self.normal[None]
        if self.dim > 1:
            s = np.clip(self._facet_params(y), 0.0, None)
            tot = s.sum(axis=-1, keepdims=True)
            s = np.where(tot > 1.0, s / np.maximum(tot, 1e-300), s)
            e = self.fv[:, 1:] - self.fv[:, :1]
            y = v0[None] + np.einsum("pfa,fad->pfd", s, e)
        dist = np.linalg.norm(q[:, None, :] - y, axis=-1)
        j = np.argmin(dist, axis=1)
        yb = y[np.arange(j.size), j]
        return yb + 1e-6 * (self.cell_centroid[j] - yb)

    def reflect(self, x_old: np.ndarray, x_new: np.ndarray, comm=None) -> np.ndarray:
        """Reflect the steps ``x_old -> x_new`` at the mesh boundary (not collective).

        By tracking (:meth:`track`, locating the start points first); the particle state
        keeps the cells between steps, so :func:`~fem_crossdiff.particles.state.step` calls
        :meth:`track` directly.
        """
        return self.reflect_tracked(x_old, x_new)[0]

    def reflect_collision(self, x_old: np.ndarray, x_new: np.ndarray, comm=None) -> np.ndarray:
        """The reflection by collision-tree location (the reference, and the lost-walk fallback).

        Reflects only steps ending outside the mesh (a step leaving and re-entering it between
        two points inside is not reflected), at the first boundary facet crossed.
        """
        p = np.array(x_old, dtype=float).reshape(-1, self.dim)
        q = np.array(x_new, dtype=float).reshape(-1, self.dim)
        for _ in range(self.max_reflections):
            out = np.flatnonzero(~self.contains_collision(q))
            if out.size == 0:
                return q
            j, y = self._first_crossing(p[out], q[out])
            found = j >= 0
            o, jf, yf = out[found], j[found], y[found]
            nrm = self.normal[jf]
            q[o] = q[o] - 2.0 * np.einsum("pd,pd->p", q[o] - yf, nrm)[:, None] * nrm
            p[o] = yf
            lost = out[~found]
            q[lost] = self._project_inside(q[lost])
        out = np.flatnonzero(~self.contains_collision(q))
        q[out] = self._project_inside(q[out])
        return q


class FEDensitySampler:
    """Sampler ``(rng, count) -> (count, d)`` from a DG0 or P1 density ``u >= 0`` on a mesh.

    The samples follow the normalised density ``u / int u``; the mass ``int u`` is
    :attr:`mass`, to be passed on as the species mass of the particle system, e.g.
    ``ParticleParams(..., masses=tuple(s.mass for s in samplers))`` (particles of weight
    ``a_l M_l / N``, :mod:`fem_crossdiff.particles.params`).

    Args:
        u: a scalar ``fem.Function`` in a DG0 or (continuous or discontinuous) P1 space.

    Attributes:
        mass: ``int u`` over the mesh (exact for DG0 and P1 on affine cells, summed in the
            original cell order: the same on any number of ranks).
        cell_mass: ``int_K u`` of every cell, in the original cell order.
        dim: space dimension.

    Raises:
        ValueError: for other spaces, negative or non-finite values, or zero mass (``density``).
    """

    def __init__(self, u):
        V = u.function_space
        msh = V.mesh
        tdim, gdim = msh.topology.dim, msh.geometry.dim
        degree = V.element.basix_element.degree
        if degree not in (0, 1) or (V.dofmap.index_map_bs != 1):
            raise ValueError(f"density: need a scalar DG0 or P1 function, got degree {degree}")
        u.x.scatter_forward()
        ncell = msh.topology.index_map(tdim).size_local
        cells = np.arange(ncell, dtype=np.int32)
        verts = _cell_vertices(msh, cells).reshape(ncell, tdim + 1, gdim)
        dofs = V.dofmap.list[:ncell]
        vals = u.x.array[dofs].reshape(ncell, -1).astype(float)
        orig = np.asarray(msh.topology.original_cell_index[:ncell], dtype=np.int64)
        comm = msh.comm
        verts, vals, orig = (_gather_rows(comm, verts), _gather_rows(comm, vals),
                             _gather_rows(comm, orig))
        order = np.argsort(orig, kind="stable")
        self.verts, self.vals = verts[order], check_density_values(vals[order])
        e = self.verts[:, 1:] - self.verts[:, :1]
        vol = np.abs(np.linalg.det(e)) / math.factorial(tdim) if tdim > 1 else np.abs(e[:, 0, 0])
        self.cell_mass = vol * self.vals.mean(axis=1)
        self._cdf = np.cumsum(self.cell_mass)
        self.mass = float(self._cdf[-1])
        if not self.mass > 0:
            raise ValueError("density has zero mass")
        self.dim = gdim

    def _uniform_in(self, rng, cells):
        d = self.verts.shape[1] - 1
        e = np.sort(rng.random((cells.size, d)), axis=1)
        lam = np.diff(np.concatenate([np.zeros((cells.size, 1)), e, np.ones((cells.size, 1))],
                                     axis=1), axis=1)
        return lam, np.einsum("pv,pvd->pd", lam, self.verts[cells])

    def __call__(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """``count`` samples, shape ``(count, d)``."""
        cells = np.searchsorted(self._cdf, rng.random(count) * self.mass, side="right")
        cells = np.minimum(cells, self._cdf.size - 1)
        lam, x = self._uniform_in(rng, cells)
        if self.vals.shape[1] == 1:
            return x
        todo = np.arange(count)
        vmax = self.vals.max(axis=1)
        while todo.size:
            c = cells[todo]
            f = np.einsum("pv,pv->p", lam, self.vals[c])
            rej = rng.random(todo.size) * vmax[c] >= f
            todo = todo[rej]
            if todo.size:
                lam, x[todo] = self._uniform_in(rng, cells[todo])
        return x
