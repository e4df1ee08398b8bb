"""The drift of (1.6) on a mesh domain from the FE model's own operator (DOLFINx).

:class:`MeshOperatorDrift` is the particle counterpart of the nonlocal FE model
(:mod:`fem_crossdiff.models.nonlocal_system`) on a bounded mesh domain with reflecting walls:
the particles see the same mollification operator ``K`` (with the same treatment of the
walls) as the PDE solver. Each call, collective over the mesh communicator:

1. **Deposit.** The empirical measure of species ``l`` (``N`` particles of weight
   ``w = M_l / N``, ``M_l`` the species mass :attr:`ParticleParams.mass
   <fem_crossdiff.particles.params.ParticleParams.mass>`) is projected on P1 in the lumped
   inner product, ``rho_l,i = sum_p w phi_i(X_p) / m_i`` (``m_i = int phi_i`` the lumped
   mass). Each particle is sent to the rank owning its cell, its P1 basis values (barycentric
   coordinates) are added to the nodes of the cell, and the contributions to nodes shared with
   other ranks are summed by ``scatter_reverse``. The deposit conserves mass exactly:
   ``sum_i m_i rho_l,i = M_l``. The owner is found as in
   :func:`fem_crossdiff.measures.locate_points` (a point belongs to the rank owning the cell
   that contains it), but with the exact barycentric test of the bounding-box candidates on
   these affine simplices instead of DOLFINx's GJK search (ten times faster here): each
   particle goes to the ranks whose owned cells' box holds it (global bounding-box tree), they
   return its best score (smallest barycentric coordinate in their best cell), the best one
   owns it (lowest rank on ties), and one ``Alltoallv`` sends it there, keeping its place in
   the caller's array for the way back. Particles outside the mesh (by more than
   ``tolerance``) raise a ValueError on every rank.
   Particles already held by the rank owning their cell (the state on a
   :class:`~fem_crossdiff.particles.mesh_domain.MeshDomain`, :meth:`MeshOperatorDrift.at_cells`)
   skip the routing: the deposit goes into the local vector and ``scatter_reverse`` alone sums
   the shared nodes.
2. **Potential.** ``g = K P(sum_l a_l K rho_l)`` at the nodes
   (:class:`~fem_crossdiff.models.nonlocal_system.potential.NonlocalPotential`: the same
   matrix, wall normalisation and pressure law as the FE solver; ``NonlocalParams.boundary``
   chooses the walls).
3. **Gradient.** ``-b_k grad g`` at every particle, on the rank owning its cell (sent back to
   the particle's rank by :meth:`MeshOperatorDrift.__call__`). ``gradient="cell"``
   (default): the gradient of the P1 function ``g``, constant on each cell (what the FE
   fluxes see, as :class:`fem_crossdiff.coupling.FEGradientField`); ``gradient="recovered"``:
   the lumped-L2 projection of that piecewise constant gradient on P1 (the cell gradients
   averaged at each node with weights ``|K| / (d + 1)``), interpolated linearly, which is
   second-order accurate in the interior on smooth fields.

The result does not depend on the number of ranks nor on how the particles are split over them
(up to round-off in the summation order, and up to the choice of cell for a particle lying
exactly on a face shared by two cells, where the cell gradient jumps: probability zero for
random positions). Walls: the particles are reflected by
:class:`~fem_crossdiff.particles.mesh_domain.MeshDomain` as with any drift; the free-space
particle-mesh drift :class:`~fem_crossdiff.particles.drift.GridDrift` stays the method for
``R^d``.

Accuracy against the exact (1.6) drift with the same kernel, in the interior. On
``[-1, 1]^2`` (crossed-diagonal meshes of side ``h``), ``eps = 0.2``, bump kernel, ``m = 2``,
one species of mass 0.7, ``N`` particles normal with sd 0.25 cut at radius 0.75, compared with
the quadrature reference (:class:`~fem_crossdiff.particles.drift.CellListDrift`, the numbers
of :func:`~fem_crossdiff.particles.drift.drift_bruteforce`; its own error 5e-4) at the
particles farther than ``2 eps`` from the walls; relative max-norm error
``max_p |v_p - v_p^ref| / max_p |v_p^ref|`` (rms in brackets), ``boundary="sinkhorn"``
(``"zero"`` differs by < 1e-3 there):

    =======  =============================  ===============================
    eps/h    cell, N = 1000 / 64000         recovered, N = 1000 / 64000
    =======  =============================  ===============================
    3        0.17 / 0.22 (0.069 / 0.072)    0.087 / 0.057 (0.040 / 0.033)
    4        0.13 / 0.16 (0.051 / 0.053)    0.054 / 0.033 (0.024 / 0.019)
    5        0.11 / 0.13 (0.040 / 0.042)    0.034 / 0.022 (0.015 / 0.012)
    6        0.080 / 0.11 (0.033 / 0.035)   0.026 / 0.015 (0.011 / 0.0085)
    8        0.068 / 0.079 (0.025 / 0.026)  0.015 / 0.0083 (0.0062 / 0.0048)
    =======  =============================  ===============================

The cell gradient is first order, error about ``0.6 h / eps`` (max) and ``0.2 h / eps``
(rms), whatever ``N`` (N = 4000 and 16000 lie in between): the gradient of the P1 interpolant
of a smooth ``g`` is ``O(h)`` pointwise. The recovered gradient is second order (rms
``0.3 (h / eps)^2``); at small ``N`` its max error grows, as the exact drift of few particles
has structure the P1 deposit smooths out. With ``m = 3`` (``P = S^2``), N = 64000: cell
0.21 / 0.11, recovered 0.058 / 0.015 at ``eps/h`` = 4 / 8 (same orders). The deposit, the two
applications of ``K`` and the nodal pressure are second order.
``tests/test_particles_walls.py`` repeats the case ``eps/h = 5``, ``N = 2000`` (0.107 and
0.033).
"""

from __future__ import annotations

import numpy as np

from fem_crossdiff.compat import MPI, fem, geometry, la
from fem_crossdiff.models.nonlocal_system import NonlocalParams
from fem_crossdiff.models.nonlocal_system.potential import NonlocalPotential
from fem_crossdiff.params import ModelParams

from . import kernels
from .drift import Particles
from .mesh_domain import best_candidates
from .params import ParticleParams
from .tracking import CHUNK

#: P1 basis values, deposit and gradients by the compiled kernels of
#: :mod:`fem_crossdiff.particles.kernels` (``False``: numpy, the reference).
KERNELS = True

__all__ = ["MeshOperatorDrift", "SnapshotGradientField", "GRADIENTS"]

#: Evaluations of ``grad g`` at the particles (see the module docstring).
GRADIENTS = ("cell", "recovered")


def _p1_space(space):
    """The scalar P1 space of ``space`` (a mesh or such a space), checked."""
    if hasattr(space, "dofmap"):
        V0 = space
    else:
        V0 = fem.functionspace(space, ("Lagrange", 1))
    msh = V0.mesh
    el = V0.element.basix_element
    if V0.dofmap.index_map_bs != 1 or len(V0.element.value_shape) != 0 or el.degree != 1 \
            or el.discontinuous:
        raise ValueError("space: need a mesh or a scalar continuous P1 function space")
    tdim, gdim = msh.topology.dim, msh.geometry.dim
    if tdim != gdim:
        raise ValueError(f"space: need gdim == tdim, got gdim={gdim}, tdim={tdim}")
    if msh.topology.cell_name() not in ("interval", "triangle", "tetrahedron") \
            or msh.geometry.cmaps[0].degree != 1:
        raise ValueError("space: need an affine simplex mesh (intervals, triangles, tetrahedra)")
    if [list(d) for d in el.entity_dofs[0]] != [[v] for v in range(tdim + 1)]:
        raise ValueError("space: P1 dofs must follow the cell's vertex order")
    return V0


def _model_and_nonlocal(params, nonlocal_params) -> tuple[ModelParams, NonlocalParams]:
    if isinstance(params, ParticleParams):
        model = ModelParams(a=params.a, b=params.b, m=params.m, sigma=params.sigma)
        if nonlocal_params is None:
            nonlocal_params = NonlocalParams(eps=params.eps, kernel=params.kernel)
        elif (nonlocal_params.eps, nonlocal_params.kernel) != (params.eps, params.kernel):
            raise ValueError(
                f"nonlocal_params (eps={nonlocal_params.eps}, kernel={nonlocal_params.kernel!r})"
                f" disagree with the particle parameters (eps={params.eps}, "
                f"kernel={params.kernel!r})"
            )
        return model, nonlocal_params
    if isinstance(params, ModelParams):
        if not isinstance(nonlocal_params, NonlocalParams):
            raise ValueError("nonlocal_params: a NonlocalParams is needed with ModelParams")
        return params, nonlocal_params
    raise TypeError(f"params must be a ParticleParams or a ModelParams, got {type(params)}")


class _Routed:
    """Points of the caller moved to the ranks owning their cells, and the way back."""

    def __init__(self, comm, order, send_counts, recv_counts, payload, cells):
        self.comm, self.order = comm, order
        self.send_counts, self.recv_counts = send_counts, recv_counts
        self.sdispl = np.concatenate(([0], np.cumsum(send_counts)[:-1]))
        self.rdispl = np.concatenate(([0], np.cumsum(recv_counts)[:-1]))
        self.payload, self.cells = payload, cells

    def back(self, values: np.ndarray, n_points: int) -> np.ndarray:
        """Send ``values (R, c)`` of the received points back, in the caller's order."""
        if self.comm.size == 1:
            return np.ascontiguousarray(values)
        c = values.shape[1]
        back = np.empty((self.order.size, c))
        self.comm.Alltoallv(
            [np.ascontiguousarray(values), (self.recv_counts * c, self.rdispl * c), MPI.DOUBLE],
            [back, (self.send_counts * c, self.sdispl * c), MPI.DOUBLE])
        out = np.empty((n_points, c))
        out[self.order] = back
        return out


class MeshOperatorDrift:
    """Drift ``-b_k grad g`` of (1.6) with ``g`` from the nonlocal FE operator (module docstring).

    A drift callable for :func:`fem_crossdiff.particles.state.step`:
    ``drift(positions, t, params, comm, species=None)`` (layouts:
    :class:`~fem_crossdiff.particles.drift.Particles`); collective over the mesh communicator
    (``comm`` must be it, or congruent to it, when the mesh is distributed). The particles may
    be split over the ranks in any way.

    Args:
        space: The mesh (an affine simplex mesh, ``gdim == tdim``) or its scalar P1 space.
        params: :class:`~fem_crossdiff.particles.params.ParticleParams` (``a``, ``m``,
            ``eps``, ``kernel`` define the operator) or :class:`~fem_crossdiff.params.ModelParams`
            (then ``nonlocal_params`` is required).
        nonlocal_params: The operator's
            :class:`~fem_crossdiff.models.nonlocal_system.NonlocalParams`;
            default with ``ParticleParams``: ``NonlocalParams(params.eps, params.kernel)``
            (``boundary="layer"``, the FE solver's default).
        gradient: ``"cell"`` or ``"recovered"``, see the module docstring.
        tolerance: Points outside the mesh by less than this (in barycentric coordinates of
            the nearest cell, i.e. relative to the cell size) count as inside its cell
            (reflected particles may sit on the walls); points farther outside raise a
            ValueError on every rank.

    Use :meth:`from_potential` to share the operator of an existing
    :class:`~fem_crossdiff.models.nonlocal_system.potential.NonlocalPotential` (e.g.
    ``solver.model.potential`` of a nonlocal :class:`~fem_crossdiff.solver.CrossDiffusionSolver`);
    a call of the drift overwrites the potential's last state (``S``, ``g``), so call it between
    solver steps.

    Attributes:
        potential: The :class:`~fem_crossdiff.models.nonlocal_system.potential.NonlocalPotential`.
        V0: The scalar P1 space.
        last_density: Nodal densities ``(nloc, n)`` (owned + ghost) of the last call.
        last_potential: Nodal ``g`` (owned + ghost) of the last call.
    """

    def __init__(self, space, params, nonlocal_params: NonlocalParams | None = None, *,
                 gradient: str = "cell", tolerance: float = 1e-9):
        V0 = _p1_space(space)
        model, nl = _model_and_nonlocal(params, nonlocal_params)
        self._setup(NonlocalPotential(V0, model, nl), gradient, tolerance)

    @classmethod
    def from_potential(cls, potential: NonlocalPotential, *, gradient: str = "cell",
                       tolerance: float = 1e-9) -> MeshOperatorDrift:
        """The drift of an existing potential (same operator, no rebuild)."""
        obj = cls.__new__(cls)
        _p1_space(potential.V0)
        obj._setup(potential, gradient, tolerance)
        return obj

    def _setup(self, potential: NonlocalPotential, gradient: str, tolerance: float):
        if gradient not in GRADIENTS:
            raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
        tolerance = float(tolerance)
        if not (np.isfinite(tolerance) and 0.0 <= tolerance < 0.1):
            raise ValueError(f"tolerance must be a finite number in [0, 0.1), got {tolerance!r}")
        self.potential, self.gradient, self.tolerance = potential, gradient, tolerance
        V0 = self.V0 = potential.V0
        msh = self.msh = V0.mesh
        self.comm = msh.comm
        self.dim = msh.geometry.dim
        tdim, gdim = msh.topology.dim, msh.geometry.dim
        self.index_map = V0.dofmap.index_map
        self.nown = self.index_map.size_local
        self.nloc = self.nown + self.index_map.num_ghosts
        self.lumped = np.asarray(potential.lumped, dtype=float)
        ncell = msh.topology.index_map(tdim).size_local
        self.owned = np.arange(ncell, dtype=np.int32)
        geo = msh.geometry
        xg = geo.x[geo.dofmaps[0][:ncell]][:, :, :gdim]
        self._x0 = xg[:, 0, :]
        edges = xg[:, 1:, :] - xg[:, :1, :]  # (c, d, gdim): x = x0 + E^T xi
        # xi = pullback (x - x0); grad phi_k = row k - 1 of pullback, grad phi_0 = -sum
        self._pullback = np.linalg.inv(np.transpose(edges, (0, 2, 1))) if ncell else \
            np.zeros((0, tdim, gdim))
        self._cell_grad = np.concatenate(
            [-self._pullback.sum(axis=1, keepdims=True), self._pullback], axis=1)
        self._dofs = np.asarray(V0.dofmap.list[:ncell], dtype=np.int64).reshape(ncell, tdim + 1)
        self._vertex_weight = np.abs(np.linalg.det(edges)) / float(np.prod(
            np.arange(1, tdim + 1))) / (tdim + 1) if ncell else np.zeros(0)
        hmax = float(np.linalg.norm(edges, axis=-1).max()) if ncell else 0.0
        hmax = self.comm.allreduce(hmax, op=MPI.MAX)
        self._tree = geometry.bb_tree(msh, tdim, entities=self.owned,
                                      padding=2.0 * self.tolerance * hmax)
        self._global_tree = self._tree.create_global_tree(self.comm) if self.comm.size > 1 \
            else None
        self.last_density = None
        self.last_potential = None

    def __repr__(self):
        nl = self.potential.nl
        return (f"MeshOperatorDrift(dim={self.dim}, eps={nl.eps}, kernel={nl.kernel!r}, "
                f"boundary={nl.boundary!r}, gradient={self.gradient!r})")

    # ------------------------------------------------------------------ routing
    def _local_best(self, x3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Best owned cell of each point and its score (smallest barycentric coordinate).

        Candidates from the bounding-box tree, then an exact barycentric test (affine
        simplices): the score is ``>= 0`` inside a cell, ``-inf`` without candidates.
        """
        if self.owned.size == 0:
            return np.full(x3.shape[0], -np.inf), np.full(x3.shape[0], -1, dtype=np.int32)

        def score(pid, c):
            xi = np.einsum("rkg,rg->rk", self._pullback[c], x3[pid, : self.dim] - self._x0[c])
            return np.minimum(1.0 - xi.sum(axis=1), xi.min(axis=1))

        best, cells = best_candidates(self._tree, x3, score)
        return best, cells.astype(np.int32)

    def _owners(self, x3: np.ndarray) -> np.ndarray:
        """Rank owning the cell of each point (collective); -1 for points outside the mesh.

        Each point goes to every rank whose owned cells' bounding box holds it, which returns
        its best score; the owner is the rank of the best score (the lowest rank on ties).
        """
        comm, size = self.comm, self.comm.size
        npts = x3.shape[0]
        cand = geometry.compute_collisions_points(self._global_tree, x3)
        off = np.asarray(cand.offsets, dtype=np.int64)
        ranks = np.asarray(cand.array, dtype=np.int64)
        pid = np.repeat(np.arange(npts), np.diff(off))
        order = np.lexsort((pid, ranks))
        send_counts = np.bincount(ranks, minlength=size).astype(np.int64)
        recv_counts = np.empty(size, dtype=np.int64)
        comm.Alltoall(send_counts, recv_counts)
        sdispl = np.concatenate(([0], np.cumsum(send_counts)[:-1]))
        rdispl = np.concatenate(([0], np.cumsum(recv_counts)[:-1]))
        send = np.ascontiguousarray(x3[pid[order]])
        recv = np.empty((int(recv_counts.sum()), 3))
        comm.Alltoallv([send, (send_counts * 3, sdispl * 3), MPI.DOUBLE],
                       [recv, (recv_counts * 3, rdispl * 3), MPI.DOUBLE])
        rscore = np.ascontiguousarray(self._local_best(recv)[0])
        back = np.empty(order.size)
        comm.Alltoallv([rscore, (recv_counts, rdispl), MPI.DOUBLE],
                       [back, (send_counts, sdispl), MPI.DOUBLE])
        pr, rk = pid[order], ranks[order]
        best = np.lexsort((rk, -back, pr))  # by point, best score, then lowest rank
        owner = np.full(npts, -1, dtype=np.int64)
        cnt = np.bincount(pr, minlength=npts)
        has = cnt > 0
        first = best[np.concatenate(([0], np.cumsum(cnt)[:-1]))[has]]
        ok = back[first] >= -self.tolerance
        owner[np.flatnonzero(has)[ok]] = rk[first[ok]]
        return owner

    def _route(self, pts: np.ndarray, extra: np.ndarray) -> _Routed:
        """Send ``pts (P, d)`` with ``extra (P, e)`` columns to the owners of their cells."""
        comm, size, d = self.comm, self.comm.size, self.dim
        npts = pts.shape[0]
        x3 = np.zeros((npts, 3))
        x3[:, :d] = pts
        if size == 1:  # no ownership round: the located cells are final
            score, cells = self._local_best(x3)
            lost = int(np.count_nonzero(score < -self.tolerance))
            if lost:
                raise ValueError(f"positions: {lost} particles lie outside the mesh "
                                 f"(tolerance {self.tolerance:g} in barycentric coordinates)")
            payload = np.concatenate([x3, extra], axis=1)
            return _Routed(comm, np.arange(npts), np.array([npts]), np.array([npts]), payload,
                           cells)
        owner = self._owners(x3)
        lost = comm.allreduce(int(np.count_nonzero(owner < 0)), op=MPI.SUM)
        if lost:
            raise ValueError(f"positions: {lost} particles lie outside the mesh (tolerance "
                             f"{self.tolerance:g} in barycentric coordinates)")
        order = np.argsort(owner, kind="stable")
        send_counts = np.bincount(owner, minlength=size).astype(np.int64)
        recv_counts = np.empty(size, dtype=np.int64)
        comm.Alltoall(send_counts, recv_counts)
        c = 3 + extra.shape[1]
        send = np.ascontiguousarray(np.concatenate([x3, extra], axis=1)[order])
        recv = np.empty((int(recv_counts.sum()), c))
        sdispl = np.concatenate(([0], np.cumsum(send_counts)[:-1]))
        rdispl = np.concatenate(([0], np.cumsum(recv_counts)[:-1]))
        comm.Alltoallv([send, (send_counts * c, sdispl * c), MPI.DOUBLE],
                       [recv, (recv_counts * c, rdispl * c), MPI.DOUBLE])
        return _Routed(comm, order, send_counts, recv_counts, recv,
                       self._local_best(recv[:, :3])[1])

    def _barycentric(self, cells: np.ndarray, x3: np.ndarray) -> np.ndarray:
        """P1 basis values ``(R, d + 1)`` at points ``x3`` in owned ``cells``."""
        if KERNELS:
            return kernels.barycentric(self._pullback, self._x0, x3, cells)
        d = self.dim
        out = np.empty((cells.size, d + 1))
        for i0 in range(0, cells.size, CHUNK):  # chunks: see tracking.CHUNK
            c = cells[i0:i0 + CHUNK]
            xi = np.einsum("rkg,rg->rk", self._pullback[c], x3[i0:i0 + CHUNK, :d] - self._x0[c])
            out[i0:i0 + CHUNK, 0] = 1.0 - xi.sum(axis=1)
            out[i0:i0 + CHUNK, 1:] = xi
        return out

    # ------------------------------------------------------------------ pieces
    def _deposit_routed(self, routed: _Routed, n: int, lam: np.ndarray) -> np.ndarray:
        """Lumped-L2 projection of the routed weighted points (columns ``w``, ``species``)."""
        w = routed.payload[:, 3]
        k = routed.payload[:, 4].astype(np.int64)
        vec = la.vector(self.index_map, bs=n)
        vec.array[:] = 0.0
        if KERNELS:
            kernels.deposit(self._dofs, routed.cells, lam, w, k, n, vec.array)
        else:
            for i0 in range(0, routed.cells.size, CHUNK):
                sl = slice(i0, i0 + CHUNK)
                idx = self._dofs[routed.cells[sl]] * n + k[sl, None]
                vec.array[:] += np.bincount(idx.ravel(), weights=(lam[sl] * w[sl, None]).ravel(),
                                            minlength=self.nloc * n)
        vec.scatter_reverse(la.InsertMode.add)
        rho = vec.array.reshape(self.nloc, n)
        rho[: self.nown] /= self.lumped[:, None]
        vec.scatter_forward()
        return rho.copy()

    def _nodal_gradient(self, g: np.ndarray) -> np.ndarray:
        """Lumped-L2 projection on P1 of the cell gradients of ``g``, ``(nloc, gdim)``."""
        d = self.dim
        grad = np.einsum("cjg,cj->cg", self._cell_grad, g[self._dofs])
        vec = la.vector(self.index_map, bs=d)
        contrib = (self._vertex_weight[:, None, None] * grad[:, None, :]).repeat(
            self._dofs.shape[1], axis=1)  # (c, d + 1, gdim)
        idx = (self._dofs[:, :, None] * d + np.arange(d)[None, None, :]).ravel()
        vec.array[:] = np.bincount(idx, weights=contrib.ravel(), minlength=self.nloc * d)
        vec.scatter_reverse(la.InsertMode.add)
        G = vec.array.reshape(self.nloc, d)
        G[: self.nown] /= self.lumped[:, None]
        vec.scatter_forward()
        return G.copy()

    def _gradient_routed(self, g: np.ndarray, cells: np.ndarray, lam: np.ndarray):
        G = self._nodal_gradient(g) if self.gradient == "recovered" else None
        if KERNELS:
            return (kernels.cell_gradient(self._cell_grad, self._dofs, g, cells) if G is None
                    else kernels.recovered_gradient(G, self._dofs, lam, cells))
        out = np.empty((cells.size, self.dim))
        for i0 in range(0, cells.size, CHUNK):
            sl = slice(i0, i0 + CHUNK)
            c = cells[sl]
            if G is None:
                out[sl] = np.einsum("rjg,rj->rg", self._cell_grad[c], g[self._dofs[c]])
            else:
                out[sl] = np.einsum("rj,rjg->rg", lam[sl], G[self._dofs[c]])
        return out

    def _check_positions(self, positions, params: ParticleParams, comm, species=None):
        if not isinstance(params, ParticleParams):
            raise TypeError(f"params must be a ParticleParams, got {type(params)}")
        parts = Particles(positions, params, species)
        if parts.pts.shape[1] != self.dim:
            raise ValueError(f"positions: dimension {parts.pts.shape[1]} != mesh dimension "
                             f"{self.dim}")
        bad = self.comm.allreduce(int(np.count_nonzero(~np.isfinite(parts.pts))), op=MPI.SUM)
        if bad:  # reduced: every rank raises
            raise ValueError(f"positions must be finite ({bad} non-finite coordinates)")
        if comm is None and self.comm.size > 1:
            raise ValueError("comm: the mesh is distributed; pass its communicator (a serial "
                             "particle state would be counted once per rank)")
        if comm is not None and comm.size != self.comm.size:
            raise ValueError(f"comm: size {comm.size} differs from the mesh communicator's "
                             f"{self.comm.size}")
        pm, nl = self.potential.params, self.potential.nl
        ok = (params.n_species == pm.n and np.allclose(params.a, pm.a, rtol=1e-13, atol=0)
              and params.m == pm.m and params.eps == nl.eps and params.kernel == nl.kernel)
        if not ok:
            raise ValueError(
                f"params (a={params.a}, m={params.m}, eps={params.eps}, kernel={params.kernel!r})"
                f" disagree with the operator (a={pm.a}, m={pm.m}, eps={nl.eps}, "
                f"kernel={nl.kernel!r})")
        counts = np.bincount(parts.species, minlength=params.n_species).astype(np.int64)
        total = np.empty_like(counts)
        self.comm.Allreduce(counts, total, op=MPI.SUM)
        if np.any(total != params.n_particles):
            raise ValueError(f"positions: {total.tolist()} particles per species over the "
                             f"ranks, but params.n_particles = {params.n_particles}")
        return parts

    def _routed_species(self, parts: Particles, params: ParticleParams) -> _Routed:
        w = np.asarray(params.mass, dtype=float)[parts.species] / params.n_particles
        return self._route(parts.pts, np.stack([w, parts.species.astype(float)], axis=1))

    # ------------------------------------------------------------------ public
    def deposit(self, positions: np.ndarray, params: ParticleParams, comm=None,
                species=None) -> np.ndarray:
        """Nodal densities ``rho_l,i = sum_p (M_l / N) phi_i(X_p) / m_i``, shape ``(nloc, n)``.

        Owned + ghost rows of the P1 space (collective); particles anywhere on any rank
        (layouts: :class:`~fem_crossdiff.particles.drift.Particles`).
        """
        parts = self._check_positions(positions, params,
                                      comm if comm is not None else self.comm, species)
        routed = self._routed_species(parts, params)
        lam = self._barycentric(routed.cells, routed.payload[:, :3])
        return self._deposit_routed(routed, params.n_species, lam)

    def gradient_at(self, g: np.ndarray, points: np.ndarray) -> np.ndarray:
        """``grad g`` (cell or recovered, see ``gradient``) at this rank's ``points (P, d)``.

        Args:
            g: Nodal values (owned + ghost) of a P1 function on :attr:`V0`.
            points: Any points of the mesh held by this rank (collective).

        Returns:
            ``(P, d)``, in the order of ``points``.
        """
        g = np.asarray(g, dtype=float).reshape(-1)
        if g.size != self.nloc:
            raise ValueError(f"g must hold the {self.nloc} owned + ghost nodal values")
        pts = np.asarray(points, dtype=float).reshape(-1, self.dim)
        routed = self._route(pts, np.zeros((pts.shape[0], 0)))
        lam = self._barycentric(routed.cells, routed.payload[:, :3])
        return routed.back(self._gradient_routed(g, routed.cells, lam), pts.shape[0])

    def __call__(self, positions, t, params: ParticleParams, comm=None,
                 species=None) -> np.ndarray:
        """Drift ``-b_k grad g(X_k^i)`` of particles held on any rank, shaped as ``positions``.

        Each particle is routed to its cell's owner and its drift back (layouts:
        :class:`~fem_crossdiff.particles.drift.Particles`).
        """
        parts = self._check_positions(positions, params, comm, species)
        routed = self._routed_species(parts, params)
        lam = self._barycentric(routed.cells, routed.payload[:, :3])
        rho = self._deposit_routed(routed, params.n_species, lam)
        grad = routed.back(self._gradient_routed(self._potential(rho), routed.cells, lam),
                           parts.pts.shape[0])
        return parts.drift(params, grad)

    def at_cells(self, positions, species, cells, params: ParticleParams,
                 comm=None) -> np.ndarray:
        """The drift of particles held by the rank owning their cells: no routing at all.

        The deposit goes into the local P1 vector (``scatter_reverse`` adds the contributions
        to shared nodes), the gradient is taken on the owned cells. Collective.

        Args:
            positions: ``(M, d)`` local particles.
            species: ``(M,)`` their species.
            cells: ``(M,)`` local cells (owned by this rank) containing them, as kept by
                :class:`~fem_crossdiff.particles.mesh_domain.MeshDomain` on this mesh.
            params: Particle parameters.
            comm: Communicator (as for :meth:`__call__`).

        Returns:
            ``(M, d)``.
        """
        parts = self._check_positions(positions, params, comm, species)
        c = np.asarray(cells, dtype=np.int64).reshape(-1)
        if c.size != parts.pts.shape[0]:
            raise ValueError(f"cells: need one per particle ({parts.pts.shape[0]}), "
                             f"got {c.size}")
        bad = self.comm.allreduce(int(np.count_nonzero((c < 0) | (c >= self.owned.size))),
                                  op=MPI.SUM)
        if bad:
            raise ValueError(f"cells: {bad} cells are not owned by the particle's rank "
                             f"(allowed: 0 <= cell < owned cells)")
        x3 = np.zeros((c.size, 3))
        x3[:, :self.dim] = parts.pts
        w = np.asarray(params.mass, dtype=float)[parts.species] / params.n_particles
        local = _Routed(self.comm, np.arange(c.size), np.array([c.size]), np.array([c.size]),
                        np.concatenate([x3, w[:, None], parts.species[:, None]], axis=1),
                        c.astype(np.int32))
        lam = self._barycentric(local.cells, x3)
        rho = self._deposit_routed(local, params.n_species, lam)
        grad = self._gradient_routed(self._potential(rho), local.cells, lam)
        return parts.drift(params, grad)

    def _potential(self, rho: np.ndarray) -> np.ndarray:
        g = self.potential(rho)
        self.last_density, self.last_potential = rho, g
        return g


class SnapshotGradientField:
    """``grad g(t, y)`` of FE snapshots ``(t_j, g_j)``, linear in time, as a ``grad_g`` field.

    The field of :class:`fem_crossdiff.coupling.FETimeGradientField` (the cell gradients of the
    P1 snapshots, linear interpolation in time; :meth:`check` compares the two), evaluated by
    :meth:`MeshOperatorDrift.gradient_at`, whose exact barycentric location of the
    bounding-box candidates is about ten times faster than DOLFINx's GJK test. For
    :class:`~fem_crossdiff.particles.drift.FieldDrift` (e.g. a particle run coupled to the FE
    solution).

    Args:
        drift: A :class:`MeshOperatorDrift` on the snapshots' P1 space.
        snapshots: ``[(t_j, g_j)]`` with increasing ``t_j`` and P1 ``fem.Function`` s ``g_j``.
    """

    def __init__(self, drift: MeshOperatorDrift, snapshots):
        self.drift = drift
        self.snapshots = list(snapshots)
        self.times = np.array([t for t, _ in self.snapshots], dtype=float)
        if self.times.size == 0 or np.any(np.diff(self.times) <= 0):
            raise ValueError("snapshots: need at least one, with increasing times")
        self.values = [np.asarray(g.x.array, dtype=float).copy() for _, g in self.snapshots]
        if any(v.size != drift.nloc for v in self.values):
            raise ValueError("snapshots must live on the drift's P1 space")

    def __call__(self, t: float, y: np.ndarray) -> np.ndarray:
        """Collective: every rank calls with its own points ``(M, d)``."""
        times = self.times
        if t <= times[0]:
            return self.drift.gradient_at(self.values[0], y)
        j = int(np.clip(np.searchsorted(times, t, side="right") - 1, 0, times.size - 1))
        if j == times.size - 1 or abs(t - times[j]) <= 1e-12 * max(1.0, abs(t)):
            return self.drift.gradient_at(self.values[j], y)
        lam = (t - times[j]) / (times[j + 1] - times[j])
        if abs(1.0 - lam) * (times[j + 1] - times[j]) <= 1e-12 * max(1.0, abs(t)):
            return self.drift.gradient_at(self.values[j + 1], y)
        g = (1.0 - lam) * self.values[j] + lam * self.values[j + 1]  # P1: linear in g
        return self.drift.gradient_at(g, y)

    def check(self, comm, points: np.ndarray) -> float:
        """Largest ``|difference|`` with ``FETimeGradientField`` at ``points`` (collective)."""
        from fem_crossdiff.coupling import FETimeGradientField

        ref = FETimeGradientField(self.snapshots)
        ts = [self.times[0], self.times[-1]]
        if self.times.size > 1:
            ts.insert(1, 0.5 * (self.times[0] + self.times[1]))
        err = 0.0
        for t in ts:
            d = np.abs(self(t, points) - ref(t, points))
            err = max(err, float(np.max(d, initial=0.0)))
        return comm.allreduce(err, op=MPI.MAX)
