"""Point location by tracking on affine simplex meshes (numpy, vectorised over particles).

A :class:`SimplexTracker` holds, for every cell of the mesh (all ranks' cells, numbered by the
original (input) cell index, so that nothing depends on the partition):

* the affine map to barycentric coordinates, ``lambda(x) = A_c x + b_c`` (``d + 1`` rows;
  row ``i`` belongs to the vertex ``i`` and vanishes on the facet opposite it);
* the facet neighbour table ``neighbour[c, i]``, the cell across facet ``i`` of ``c``, ``-1``
  on the boundary; the outward unit normal of a boundary facet is ``-grad lambda_i / |.|``.

A step ``p -> q`` of a particle in cell ``c`` is walked from ``c`` (:meth:`SimplexTracker.walk`):
along the segment, ``lambda_i`` is linear, so the segment leaves ``c`` through the facet whose
coordinate reaches 0 first, at ``t_i = lambda_i(p) / (lambda_i(p) - lambda_i(q))`` over the
facets with ``lambda_i(q) < 0``. None: ``q`` is in ``c``. An interior facet: the particle moves
to the neighbour (the walk goes on from the crossing point). A boundary facet: ``q`` is
reflected across the facet's plane, the crossing point becomes ``p``, and the walk goes on in the
same cell (corners: several reflections). Every iteration is one numpy pass over the particles
still walking, so the cost is ``O(N)`` times the number of cells crossed. A particle still
walking after ``max_steps`` iterations (rounding at a vertex, for example) is reported as lost;
:class:`~fem_crossdiff.particles.mesh_domain.MeshDomain` then falls back to the collision tree.

Initial location (:meth:`SimplexTracker.locate`): the nearest cell centroid (a k-d tree), then a
walk from that centroid to the point without reflection; points whose straight walk meets the
boundary (non-convex domains, or points outside) are located by a direct barycentric search
over all cells (after an optional inside test).
"""

from __future__ import annotations

import numpy as np

from .kernels import affine as _kernel_affine
from .kernels import walk as _kernel_walk

__all__ = ["SimplexTracker", "INSIDE_TOL", "CHUNK", "facet_neighbours"]

#: Particles per chunk of the vectorised passes: temporaries stay small and are reused (at 2e6
#: particles, one pass over all of them was 1.6 times slower per particle than chunks of 2^15:
#: fresh large arrays are page-faulted and the gathers leave the caches).
CHUNK = 1 << 15

#: Barycentric tolerance: a point with every ``lambda_i >= -INSIDE_TOL`` is in the cell (points
#: on a facet belong to either cell; relative to the cell size, far below any physical scale).
INSIDE_TOL = 1e-12


def facet_neighbours(vid: np.ndarray) -> np.ndarray:
    """Facet neighbours ``(C, d + 1)`` from vertex ids ``(C, d + 1)``; ``-1``: unmatched facet."""
    return _neighbours(np.asarray(vid, dtype=np.int64))


def _neighbours(vid: np.ndarray) -> np.ndarray:
    """Facet neighbours ``(C, d + 1)`` from global vertex ids ``(C, d + 1)``; ``-1``: boundary."""
    ncell, nv = vid.shape
    nbr = np.full((ncell, nv), -1, dtype=np.int64)
    if ncell == 0:
        return nbr
    keys = np.empty((ncell, nv, nv - 1), dtype=np.int64)
    for i in range(nv):
        keys[:, i] = np.delete(vid, i, axis=1)
    keys = np.sort(keys.reshape(ncell * nv, nv - 1), axis=1)
    order = np.lexsort(keys.T[::-1])
    ks = keys[order]
    same = np.all(ks[1:] == ks[:-1], axis=1)
    a, b = order[:-1][same], order[1:][same]
    nbr.reshape(-1)[a] = b // nv
    nbr.reshape(-1)[b] = a // nv
    return nbr


class SimplexTracker:
    """Barycentric maps and facet neighbours of an affine simplex mesh (module docstring).

    Args:
        verts: Cell vertices ``(C, d + 1, d)``.
        vertex_ids: Global vertex ids ``(C, d + 1)`` (equal ids: shared vertices).
        max_steps: Walk iterations (cells crossed plus reflections) before a particle counts
            as lost.
        neighbour: A facet neighbour table ``(C, d + 1)`` to use instead of the one matched
            from ``vertex_ids`` (e.g. with foreign slots ``<= -2``, see :meth:`walk`).
    """

    def __init__(self, verts: np.ndarray, vertex_ids: np.ndarray, max_steps: int = 200,
                 neighbour: np.ndarray | None = None):
        verts = np.asarray(verts, dtype=float)
        ncell, nv, d = verts.shape
        if nv != d + 1:
            raise ValueError(f"verts: need simplices (d + 1 vertices in R^d), got {verts.shape}")
        self.dim, self.ncell, self.max_steps = d, ncell, int(max_steps)
        edges = verts[:, 1:] - verts[:, :1]  # (C, d, d): x = x0 + E^T xi
        pull = np.linalg.inv(np.transpose(edges, (0, 2, 1)))  # xi = pull (x - x0)
        A = np.concatenate([-pull.sum(axis=1, keepdims=True), pull], axis=1)  # (C, d + 1, d)
        b = -np.einsum("cjd,cd->cj", A, verts[:, 0])
        b[:, 0] += 1.0
        self.A, self.b = np.ascontiguousarray(A), np.ascontiguousarray(b)
        self.neighbour = (_neighbours(np.asarray(vertex_ids, dtype=np.int64))
                          if neighbour is None else np.asarray(neighbour, dtype=np.int64))
        if self.neighbour.shape != (ncell, nv):
            raise ValueError(f"neighbour: need shape {(ncell, nv)}, got {self.neighbour.shape}")
        self.centroid = verts.mean(axis=1)
        self.verts = verts
        self._kdtree = None

    # ------------------------------------------------------------------ location
    def barycentric(self, x: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """Barycentric coordinates ``(P, d + 1)`` of points ``x (P, d)`` in ``cells (P,)``."""
        if self.kernel:
            return _kernel_affine(self.A, self.b, np.asarray(x, dtype=float),
                                  np.asarray(cells, dtype=np.int64))
        out = np.empty((x.shape[0], self.dim + 1))
        for i0 in range(0, x.shape[0], CHUNK):
            c = cells[i0:i0 + CHUNK]
            out[i0:i0 + CHUNK] = np.einsum("pjd,pd->pj", self.A[c], x[i0:i0 + CHUNK]) \
                + self.b[c]
        return out

    def locate(self, x: np.ndarray, inside=None) -> np.ndarray:
        """Cell of each point ``x (P, d)``; ``-1`` for points outside the mesh.

        Args:
            x: Points.
            inside: Optional ``inside(points) -> mask``: decides the points the walk from the
                nearest centroid does not reach before the search over all cells (so that
                points outside the mesh cost little).
        """
        x = np.asarray(x, dtype=float).reshape(-1, self.dim)
        if x.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        if self._kdtree is None:
            from scipy.spatial import cKDTree

            self._kdtree = cKDTree(self.centroid)
        start = np.asarray(self._kdtree.query(x)[1], dtype=np.int64)
        _, _, cells, bad, out = self.walk(self.centroid[start], x, start, reflect=False)
        bad = np.sort(np.concatenate([bad, out]))
        cells[bad] = -1
        if bad.size and inside is not None:
            bad = bad[inside(x[bad])]
        if bad.size:
            cells[bad] = self.locate_brute(x[bad])
        return cells

    def locate_brute(self, x: np.ndarray, chunk: int = 2_000_000) -> np.ndarray:
        """Cell of each point by testing every cell (the slow path for rare points)."""
        out = np.full(x.shape[0], -1, dtype=np.int64)
        step = max(1, chunk // max(1, self.ncell))
        for i0 in range(0, x.shape[0], step):
            lam = np.einsum("cjd,pd->pcj", self.A, x[i0:i0 + step]) + self.b[None]
            score = lam.min(axis=2)
            j = np.argmax(score, axis=1)
            ok = score[np.arange(j.size), j] >= -1e-9
            out[i0:i0 + step] = np.where(ok, j, -1)
        return out

    # ------------------------------------------------------------------ walk
    #: :meth:`walk` and :meth:`barycentric` by the compiled kernels of
    #: :mod:`fem_crossdiff.particles.kernels` (same numerics, 5 to 8 times faster measured);
    #: ``False``: numpy, the reference.
    kernel = True

    def walk(self, p: np.ndarray, q: np.ndarray, cells: np.ndarray, reflect: bool = True,
             kernel: bool | None = None):
        """Walk the segments ``p -> q`` from ``cells`` (module docstring; ``kernel``: compiled).

        Args:
            p: Start points ``(P, d)``, each in its cell.
            q: End points ``(P, d)``.
            cells: Cells of ``p``.
            reflect: Reflect at boundary facets (``False``: a particle meeting the boundary
                stops and is reported lost, as for location).
            kernel: By :func:`fem_crossdiff.particles.kernels.walk` (default :attr:`kernel`)
                or in numpy.

        Returns:
            ``(p, q, cells, lost, exited)``: for the particles that arrived, ``q`` is the end
            point (reflected) and ``cells`` its cell; ``lost`` are the indices of the lost
            particles (their entries are meaningless); ``exited`` the indices of those that
            crossed a facet into a foreign slot (``neighbour <= -2``): for them ``p`` is the
            crossing point, ``q`` the target reflected so far and ``cells`` the neighbour
            entry ``-2 - slot``, so that the owner of the slot continues the walk from there.
        """
        if self.kernel if kernel is None else kernel:
            return _kernel_walk(self.A, self.b, self.neighbour, p, q, cells, self.max_steps,
                                reflect, INSIDE_TOL)
        p = np.array(p, dtype=float, copy=True)
        q = np.array(q, dtype=float, copy=True)
        c = np.array(cells, dtype=np.int64, copy=True)
        lost, exited = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
        for i0 in range(0, p.shape[0], CHUNK):
            sl = slice(i0, i0 + CHUNK)
            lo, ex = self._walk(p[sl], q[sl], c[sl], reflect)
            lost.append(i0 + lo)
            exited.append(i0 + ex)
        return p, q, c, np.concatenate(lost), np.concatenate(exited)

    def _walk(self, p: np.ndarray, q: np.ndarray, c: np.ndarray, reflect: bool):
        """:meth:`walk` of one chunk, in place on the views ``p``, ``q``, ``c``.

        Returns:
            The indices of the lost and of the exited particles.
        """
        active = np.arange(p.shape[0])
        lost = [np.zeros(0, dtype=np.int64)]
        exited = [np.zeros(0, dtype=np.int64)]
        for _ in range(self.max_steps):
            if active.size == 0:
                break
            ca = c[active]
            Ac, bc = self.A[ca], self.b[ca]
            qa = q[active]
            lq = np.einsum("pjd,pd->pj", Ac, qa) + bc
            outside = lq < -INSIDE_TOL
            moving = np.flatnonzero(outside.any(axis=1))
            if moving.size == 0:
                active = active[:0]
                break
            active, ca, qa, lq = active[moving], ca[moving], qa[moving], lq[moving]
            Ac, bc, outside = Ac[moving], bc[moving], outside[moving]
            pa = p[active]
            lp = np.einsum("pjd,pd->pj", Ac, pa) + bc
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.where(outside, np.maximum(lp, 0.0) / (lp - lq), np.inf)
            f = np.argmin(t, axis=1)
            rows = np.arange(f.size)
            tf = np.clip(t[rows, f], 0.0, 1.0)
            y = pa + tf[:, None] * (qa - pa)
            nb = self.neighbour[ca, f]
            p[active] = y
            inner = nb >= 0
            c[active[inner]] = nb[inner]
            foreign = nb <= -2
            if foreign.any():  # into another rank's cell: stop at the facet, hand over
                c[active[foreign]] = nb[foreign]
                exited.append(active[foreign])
                keep = ~foreign
                active, ca, qa, y, nb, f, Ac = (active[keep], ca[keep], qa[keep], y[keep],
                                                nb[keep], f[keep], Ac[keep])
                inner = inner[keep]
            wall = np.flatnonzero(~inner)
            if wall.size:
                if not reflect:
                    lost.append(active[wall])
                    keep = np.ones(active.size, dtype=bool)
                    keep[wall] = False
                    active = active[keep]
                    continue
                g = Ac[wall, f[wall]]  # grad lambda_f: minus the outward normal direction
                nrm = -g / np.linalg.norm(g, axis=1, keepdims=True)
                iw = active[wall]
                dq = np.einsum("pd,pd->p", qa[wall] - y[wall], nrm)
                q[iw] = qa[wall] - 2.0 * dq[:, None] * nrm
        lost.append(active)
        return np.concatenate(lost), np.concatenate(exited)
