"""Mollification ``f -> V^eps * f`` of finite-element functions, for the nonlocal model (1.5).

The nonlocal system (1.5) of Carrillo & Guo needs, at every time step, the regularised
densities ``u_l = V^eps * rho_l`` and the mollified pressure
``g = V^eps * (sum_l a_l u_l)^(m-1)``. On a bounded domain ``Omega`` the densities are
extended by zero outside ``Omega`` before convolving. Because the kernel and the mesh do not
change in time, the convolution is a fixed linear map between dof vectors; this module
assembles it once, as a distributed sparse PETSc matrix, and applies it with ``MatMult``.

Discretisation
--------------
For an input space ``V`` (scalar Lagrange, any degree, any cell type) with basis ``phi_j`` and
an output space ``W`` with dof (interpolation-point) coordinates ``x_i``,

    (V^eps * f_h)(x_i) = sum_j f_j int_Omega V^eps(x_i - y) phi_j(y) dy  =:  sum_j M_ij f_j,

so ``M`` maps the dofs of ``f_h`` (zero outside ``Omega``) to the nodal values of its
mollification. Each integral is a sum over cells of a composite quadrature rule: the reference
cell is split into ``subdivisions**tdim`` congruent sub-cells (Freudenthal/Kuhn subdivision of
simplices, tensor subdivision of quadrilaterals and hexahedra) carrying a basix rule of degree
``quadrature_degree``. Writing ``y_q``, ``w_q`` for all physical quadrature points and weights,
``M = K B`` with the kernel matrix ``K_iq = w_q V^eps(x_i - y_q)`` (nonzero only for
``|x_i - y_q| < eps``) and the interpolation matrix ``B_qj = phi_j(y_q)``; the product is
formed block-wise in row chunks, so ``K`` is never held in full.

Quadrature error. Inside the support ball the ``"poly4"`` kernel is a polynomial of degree 8,
so with the default degree ``8 + p`` (``p`` the degree of ``V``) every cell lying wholly inside
or outside the ball is integrated exactly; the error comes only from the ``O((eps/h)^(d-1))``
cells cut by the sphere ``|x_i - y| = eps``, where the kernel vanishes to fourth order. The
``"bump"`` kernel is ``C^infinity`` with all derivatives vanishing on the sphere, so cut cells
are benign, but its steep profile needs resolution. Both errors decay like a power of
``h / (subdivisions * eps)``. Measured unit-mass defects ``max |M 1 - 1|`` at nodes farther
than ``eps`` from the wall, ``eps = 4 h``, uniform meshes (affine defects are ~2.5x larger):

    ==========================  ==============  ==============  ==============
    case                        subdivisions=1  subdivisions=2  subdivisions=4
    ==========================  ==============  ==============  ==============
    1D P1 bump / poly4          1.8e-5 / 2e-16  2.6e-7 / 4e-16  3.6e-9 / 4e-16
    1D P2 bump / poly4          3.1e-6 / 2.1e-8 1.1e-7 / 7e-16  5.6e-10 / 6e-16
    2D P1 triangles bump/poly4  9.3e-6 / 1.5e-7 2.1e-7 / 6.6e-9 (not measured)
    2D P2 triangles bump/poly4  4.3e-6 / 8.4e-8 1.4e-8 / 1.3e-9 (not measured)
    ==========================  ==============  ==============  ==============

(1D ``poly4`` with ``eps`` a multiple of ``h`` has no cut cells, hence round-off.) Each
doubling of ``subdivisions`` multiplies the build cost by ``2**tdim``. Because every weight
``w_q > 0`` and the kernel is nonnegative, ``M`` has nonnegative entries for P1, so
mollification preserves the sign of densities.

Consequences: at dofs farther than ``eps`` from the boundary, ``M`` reproduces affine
functions to quadrature accuracy (the kernel is even with unit mass), and for smooth ``f``
``M f - f = O(eps^2)`` (plus the interpolation error of ``f_h``). Near the boundary the zero
extension shows: a constant is halved on a flat wall and quartered at a right-angled corner.

Parallel construction
---------------------
Memory per rank is independent of the global mesh size. Every rank publishes two boxes
(``allgather`` of ``4 * gdim`` floats): the box of its owned output dofs and the box of its
quadrature points. A rank sends a cell (its quadrature points, weights and global dof numbers)
only to the ranks whose output box, inflated by ``eps``, meets the cell's box, through a
distributed-graph communicator (``Neighbor_alltoallv``) between ranks whose boxes interact.
Each rank then finds the quadrature points within ``eps`` of its owned output dofs with
``scipy.spatial.cKDTree`` and assembles its owned rows; the result does not depend on the
number of ranks (up to summation order, i.e. to round-off).

Validation happens before any heavy work, on globally reduced data, so that every rank raises
the same error: ``eps`` must be finite, positive and equal on all ranks; the kernel must be
known; ``eps`` must be at least ``2 h_max`` (``h_max`` the largest cell diameter, so that the
kernel spans two cells everywhere; ``allow_small_eps=True`` turns this into a warning); and
``eps`` must not exceed the diameter of the domain's bounding box (such an operator would be
dense, with memory quadratic in the number of dofs, and is always a modelling error here).
"""

from __future__ import annotations

import itertools
import math
import time
import warnings

import basix
import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from fem_crossdiff.compat import MPI, PETSc, basix_cell, fem
from fem_crossdiff.discretisation.mesh_sizes import mesh_sizes, owned_cell_geometry
from fem_crossdiff.errors import ParameterError
from fem_crossdiff.mollifiers import Mollifier, get_mollifier
from fem_crossdiff.problem import wrapped_vectors

__all__ = ["MollificationOperator", "composite_quadrature", "lumped_symmetric"]

#: Number of (output dof, quadrature point) pairs processed at once; bounds peak memory.
_PAIRS_PER_CHUNK = 4_000_000


# --------------------------------------------------------------------------------------------
# Reference quadrature
# --------------------------------------------------------------------------------------------
def _subcells(cell: basix.CellType, r: int) -> list[np.ndarray]:
    """Vertices of a subdivision of the reference cell into ``r**tdim`` congruent pieces.

    Simplices use the Freudenthal (Kuhn) subdivision of ``{1 >= z_1 >= ... >= z_d >= 0}``,
    mapped to the reference simplex by ``x_d = z_d, x_i = z_i - z_{i+1}`` (volume preserving).
    Tensor cells return the ``2**d`` corners of each sub-box in basix order.
    """
    d = {basix.CellType.interval: 1, basix.CellType.triangle: 2,
         basix.CellType.tetrahedron: 3, basix.CellType.quadrilateral: 2,
         basix.CellType.hexahedron: 3}[cell]
    pieces = []
    if cell in (basix.CellType.quadrilateral, basix.CellType.hexahedron):
        corners = np.array(list(itertools.product((0, 1), repeat=d)))[:, ::-1]
        for k in itertools.product(range(r), repeat=d):
            pieces.append((np.asarray(k) + corners) / r)
        return pieces
    for k in itertools.product(range(r), repeat=d):
        for perm in itertools.permutations(range(d)):
            z = [np.asarray(k, dtype=float)]
            for axis in perm:
                step = z[-1].copy()
                step[axis] += 1.0
                z.append(step)
            z = np.array(z) / r
            c = z.mean(axis=0)
            # A Kuhn simplex lies in the region iff its centroid does (the region is a union
            # of Kuhn simplices), and the centroid is never on a separating hyperplane.
            if c[0] < 1.0 and np.all(np.diff(c) < 0.0) and c[-1] > 0.0:
                x = z.copy()
                x[:, :-1] = z[:, :-1] - z[:, 1:]
                pieces.append(x)
    return pieces


def composite_quadrature(cell: basix.CellType, degree: int,
                         subdivisions: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Composite quadrature rule on a basix reference cell.

    Args:
        cell: The basix cell type (interval, triangle, tetrahedron, quadrilateral, hexahedron).
        degree: Polynomial degree integrated exactly on each sub-cell (>= 1).
        subdivisions: Number of sub-cells per reference edge (>= 1).

    Returns:
        Points of shape ``(nq, tdim)`` and positive weights of shape ``(nq,)`` summing to the
        reference-cell volume.

    Raises:
        ValueError: for a degree or subdivision count below 1.
    """
    if int(degree) < 1:
        raise ValueError(f"quadrature_degree must be an integer >= 1, got {degree!r}")
    if int(subdivisions) < 1:
        raise ValueError(f"subdivisions must be an integer >= 1, got {subdivisions!r}")
    X, w = basix.make_quadrature(cell, int(degree))
    simplex = cell not in (basix.CellType.quadrilateral, basix.CellType.hexahedron)
    pts, wts = [], []
    for verts in _subcells(cell, int(subdivisions)):
        if simplex:
            A = (verts[1:] - verts[0]).T
            pts.append(verts[0] + X @ A.T)
            wts.append(w * abs(np.linalg.det(A)))
        else:
            lo, hi = verts[0], verts[-1]
            pts.append(lo + X * (hi - lo))
            wts.append(w * np.prod(hi - lo))
    return np.concatenate(pts), np.concatenate(wts)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def _check_space(V, role: str) -> None:
    el = V.element
    if tuple(el.value_shape) != () or V.dofmap.index_map_bs != 1:
        raise ValueError(f"{role} must be a scalar Lagrange space, got value shape "
                         f"{tuple(el.value_shape)} and block size {V.dofmap.index_map_bs}")
    bel = el.basix_element
    if bel.family != basix.ElementFamily.P or bel.discontinuous:
        raise ValueError(f"{role} must be a continuous Lagrange space, got family {bel.family}")
    if el.needs_dof_transformations:
        raise ValueError(f"{role}: elements needing dof transformations are not supported")
    msh = V.mesh
    if msh.geometry.dim != msh.topology.dim:
        raise ValueError(f"{role}: the mesh must not be a manifold (gdim="
                         f"{msh.geometry.dim}, tdim={msh.topology.dim})")


def _box(points: np.ndarray, gdim: int) -> np.ndarray:
    if points.shape[0] == 0:
        return np.concatenate([np.full(gdim, np.inf), np.full(gdim, -np.inf)])
    return np.concatenate([points.min(axis=0), points.max(axis=0)])


def _boxes_meet(lo_a, hi_a, lo_b, hi_b) -> np.ndarray:
    """Elementwise intersection test of boxes (broadcasting over leading axes)."""
    return np.all((lo_a <= hi_b) & (lo_b <= hi_a), axis=-1)


# --------------------------------------------------------------------------------------------
# The operator
# --------------------------------------------------------------------------------------------
class MollificationOperator:
    """The linear map ``f_h -> (V^eps * f_h)(x_i)`` as a distributed PETSc AIJ matrix.

    ``f_h`` lives in a scalar Lagrange space ``V`` and is extended by zero outside the mesh;
    the result is the vector of nodal values at the dofs ``x_i`` of ``V_out`` (``V`` by
    default; ``V_out`` may even live on another mesh over the same communicator). See the
    module docstring for the quadrature, its error and the parallel algorithm.

    Attributes:
        matrix: The PETSc ``Mat`` (``MPIAIJ`` in parallel) of shape ``(dim V_out, dim V)``,
            usable directly in Newton Jacobians of the nonlocal model.
        eps: The mollification radius.
        kernel: The :class:`~fem_crossdiff.mollifiers.Mollifier` used.
        V: Input function space.
        V_out: Output function space.
        build_seconds: Wall time of the construction on this rank.
    """

    def __init__(self, V, eps: float, kernel: str | Mollifier = "bump", *, V_out=None,
                 quadrature_degree: int | None = None, subdivisions: int = 1,
                 allow_small_eps: bool = False):
        """Assemble the operator (collective on ``V.mesh.comm``).

        Args:
            V: Scalar continuous Lagrange space of the functions to mollify.
            eps: Support radius of ``V^eps``; finite, positive, the same on every rank.
            kernel: Kernel name (see :data:`fem_crossdiff.mollifiers.KERNELS`) or instance.
            V_out: Scalar Lagrange space whose dofs receive the result (default ``V``).
            quadrature_degree: Degree of the cell rule (default ``8 + degree(V)``, exact for
                the ``"poly4"`` kernel on cells inside the support ball).
            subdivisions: Sub-cells per reference edge of the composite rule (default 1).
            allow_small_eps: Warn instead of raising when ``eps < 2 h_max``.

        Raises:
            ValueError: for a non-positive, non-finite or rank-dependent ``eps``, an unknown
                kernel, an unsupported space, ``eps < 2 h_max`` (unless ``allow_small_eps``)
                or ``eps`` larger than the diameter of the domain's bounding box.
        """
        t0 = time.perf_counter()
        V_out = V if V_out is None else V_out
        comm = V.mesh.comm
        try:
            eps_f = float(eps)
        except (TypeError, ValueError):
            eps_f = math.nan
        # Reduce before raising, so that an eps bad on one rank only fails on every rank.
        valid = _comm_all(comm, math.isfinite(eps_f) and eps_f > 0.0)
        if not valid:
            raise ParameterError("eps", eps, "a finite number > 0 on every rank")
        lo, hi = comm.allreduce(eps_f, op=MPI.MIN), comm.allreduce(eps_f, op=MPI.MAX)
        if lo != hi:
            raise ParameterError("eps", eps, f"equal on all ranks (got values in [{lo}, {hi}])")
        self.kernel = get_mollifier(kernel)
        _check_space(V, "V")
        _check_space(V_out, "V_out")
        if V_out.mesh.comm.size != comm.size or V_out.mesh.geometry.dim != V.mesh.geometry.dim:
            raise ValueError("V_out must live on the same communicator and dimension as V")
        if int(subdivisions) < 1:
            raise ValueError(f"subdivisions must be an integer >= 1, got {subdivisions!r}")
        p = V.element.basix_element.degree
        degree = 8 + p if quadrature_degree is None else int(quadrature_degree)
        if degree < 1:
            raise ValueError(f"quadrature_degree must be an integer >= 1, got {degree!r}")

        sizes = mesh_sizes(V.mesh)
        hmax, diam = sizes.h_max, sizes.diameter
        if eps_f > diam:
            raise ParameterError(
                "eps", eps_f, f"at most the domain diameter {diam:g} (the operator would be "
                "dense)")
        if eps_f < 2.0 * hmax:
            msg = (f"eps={eps_f:g} < 2*h_max={2.0 * hmax:g}: the kernel does not span two "
                   "cells of the coarsest part of the mesh, so V^eps is under-resolved")
            if not allow_small_eps:
                raise ParameterError(
                    "eps", eps_f, f">= 2 h_max = {2.0 * hmax:g}, so that the kernel spans two "
                    "cells of the coarsest part of the mesh; refine the mesh, enlarge eps or "
                    "pass allow_small_eps=True")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)

        self.eps = eps_f
        self.V, self.V_out = V, V_out
        self.quadrature_degree, self.subdivisions = degree, int(subdivisions)
        self.h_max = hmax
        self.matrix = self._assemble(comm)
        self.build_seconds = time.perf_counter() - t0

    # ---------------------------------------------------------------- construction
    def _local_quadrature(self):
        """Quadrature points, weights and dof numbers of this rank's owned cells."""
        V = self.V
        msh = V.mesh
        gdim = msh.geometry.dim
        cell = basix_cell(msh)
        X, w = composite_quadrature(cell, self.quadrature_degree, self.subdivisions)
        cmap = msh.geometry.cmaps[0]
        cel = basix.create_element(basix.ElementFamily.P, cell, cmap.degree,
                                   basix.LagrangeVariant(cmap.variant))
        tab = cel.tabulate(1, X)[..., 0]  # (1 + tdim, nq, nnodes)
        G = owned_cell_geometry(msh)  # (ncells, nnodes, gdim)
        Y = np.einsum("qn,cng->cqg", tab[0], G)
        J = np.einsum("tqn,cng->cqgt", tab[1:], G)
        detJ = np.abs(np.linalg.det(J)) if G.shape[0] else np.zeros((0, X.shape[0]))
        W = w[None, :] * detJ
        phi = V.element.basix_element.tabulate(0, X)[0, :, :, 0]  # (nq, ndofs_cell)
        ncells = G.shape[0]
        dofs = V.dofmap.list[:ncells]
        gdofs = V.dofmap.index_map.local_to_global(dofs.ravel()).reshape(dofs.shape)
        return Y.reshape(ncells, -1, gdim), W, gdofs.astype(np.int64), phi

    def _exchange(self, comm, Y, W, gdofs, out_coords):
        """Send each owned cell to every rank whose eps-inflated output box it meets."""
        gdim = out_coords.shape[1]
        ncells, nq = W.shape
        out_box = _box(out_coords, gdim)
        q_box = _box(Y.reshape(-1, gdim), gdim)
        boxes = np.asarray(comm.allgather(np.concatenate([out_box, q_box])))
        out_lo, out_hi = boxes[:, :gdim] - self.eps, boxes[:, gdim:2 * gdim] + self.eps
        q_lo, q_hi = boxes[:, 2 * gdim:3 * gdim], boxes[:, 3 * gdim:]
        me = comm.rank
        # Both sides evaluate the same test on the same gathered floats, so the send and
        # receive lists agree without further communication.
        dests = [r for r in range(comm.size) if r != me
                 and _boxes_meet(q_lo[me], q_hi[me], out_lo[r], out_hi[r])]
        srcs = [r for r in range(comm.size) if r != me
                and _boxes_meet(q_lo[r], q_hi[r], out_lo[me], out_hi[me])]
        if comm.size == 1:
            return Y, W, gdofs
        graph = comm.Create_dist_graph_adjacent(srcs, dests, reorder=False)
        try:
            c_lo, c_hi = Y.min(axis=1), Y.max(axis=1)
            send_cells = [np.flatnonzero(_boxes_meet(c_lo, c_hi, out_lo[r], out_hi[r]))
                          for r in dests]
            counts_out = np.array([len(s) for s in send_cells], dtype=np.int64)
            counts_in = np.zeros(len(srcs), dtype=np.int64)
            graph.Neighbor_alltoall(counts_out, counts_in)
            order = np.concatenate(send_cells) if send_cells else np.zeros(0, dtype=np.int64)
            order = order.astype(np.int64)
            nflt = nq * (gdim + 1)
            fsend = np.ascontiguousarray(
                np.concatenate([Y[order].reshape(len(order), -1), W[order]], axis=1)).ravel()
            isend = np.ascontiguousarray(gdofs[order]).ravel()
            nd = gdofs.shape[1]
            frecv = np.empty(int(counts_in.sum()) * nflt, dtype=np.float64)
            irecv = np.empty(int(counts_in.sum()) * nd, dtype=np.int64)
            graph.Neighbor_alltoallv([fsend, (counts_out * nflt, None), MPI.DOUBLE],
                                     [frecv, (counts_in * nflt, None), MPI.DOUBLE])
            graph.Neighbor_alltoallv([isend, (counts_out * nd, None), MPI.INT64_T],
                                     [irecv, (counts_in * nd, None), MPI.INT64_T])
        finally:
            graph.Free()
        frecv = frecv.reshape(-1, nflt)
        Yr = frecv[:, :nq * gdim].reshape(-1, nq, gdim)
        Wr = frecv[:, nq * gdim:]
        return (np.concatenate([Y, Yr]), np.concatenate([W, Wr]),
                np.concatenate([gdofs, irecv.reshape(-1, nd)]))

    def _assemble(self, comm):
        V, V_out = self.V, self.V_out
        gdim = V.mesh.geometry.dim
        imap_out = V_out.dofmap.index_map
        n_rows = imap_out.size_local
        X_out = V_out.tabulate_dof_coordinates()[:n_rows, :gdim]
        Y, W, gdofs, phi = self._local_quadrature()
        Y, W, gdofs = self._exchange(comm, Y, W, gdofs, X_out)
        ncells, nq = W.shape
        nd = phi.shape[1]
        # Compress the global column numbers present on this rank, so that no work array
        # has the global problem size.
        cols, inv = np.unique(gdofs, return_inverse=True)
        inv = inv.reshape(gdofs.shape)
        B = sp.csr_matrix(
            (np.tile(phi, (ncells, 1)).ravel(), np.repeat(inv, nq, axis=0).ravel(),
             np.arange(0, ncells * nq * nd + 1, nd)), shape=(ncells * nq, cols.size))
        Yf, Wf = Y.reshape(-1, gdim), W.ravel()
        tree_q = cKDTree(Yf)
        d = gdim
        # Rows per chunk from the density of quadrature points around a few sample rows.
        if n_rows:
            sample = X_out[np.linspace(0, n_rows - 1, min(n_rows, 16)).astype(int)]
            per_row = max(1, int(np.max(tree_q.query_ball_point(sample, self.eps,
                                                                return_length=True))))
        else:
            per_row = 1
        chunk = max(1, _PAIRS_PER_CHUNK // per_row)
        blocks = []
        for start in range(0, n_rows, chunk):
            Xc = X_out[start:start + chunk]
            pairs = cKDTree(Xc).sparse_distance_matrix(tree_q, self.eps, output_type="ndarray")
            vals = Wf[pairs["j"]] * self.kernel.radial(pairs["v"], self.eps, d)
            K = sp.csr_matrix((vals, (pairs["i"], pairs["j"])), shape=(Xc.shape[0], Yf.shape[0]))
            blocks.append(K @ B)
        M = (sp.vstack(blocks, format="csr") if blocks
             else sp.csr_matrix((0, cols.size)))
        M.sum_duplicates()
        M.sort_indices()
        indices = cols[M.indices]
        imap_in = V.dofmap.index_map
        A = PETSc.Mat().createAIJ(
            size=((n_rows, imap_out.size_global), (imap_in.size_local, imap_in.size_global)),
            csr=(M.indptr.astype(PETSc.IntType), indices.astype(PETSc.IntType),
                 M.data.astype(PETSc.ScalarType)), comm=comm)
        A.assemble()
        return A

    # ---------------------------------------------------------------- application
    def apply(self, f, out) -> None:
        """Set ``out`` to the nodal values of ``V^eps * f`` (collective).

        Args:
            f: A :class:`dolfinx.fem.Function` on ``V``.
            out: A :class:`dolfinx.fem.Function` on ``V_out`` (overwritten, ghosts updated).
        """
        with wrapped_vectors(f.x, out.x) as (x, y):
            self.matrix.mult(x, y)
        out.x.scatter_forward()

    def __call__(self, f):
        """Return a new function on ``V_out`` holding ``V^eps * f``."""
        out = fem.Function(self.V_out)
        self.apply(f, out)
        return out

    def apply_array(self, x: np.ndarray) -> np.ndarray:
        """Mollify several fields at once (one ``MatMatMult`` with a dense block).

        Args:
            x: Owned dof values, shape ``(n_owned(V),)`` or ``(n_owned(V), ncomp)``.

        Returns:
            Owned values on ``V_out`` with the matching shape.
        """
        x = np.asarray(x, dtype=PETSc.ScalarType)
        vec = x.ndim == 1
        X = x[:, None] if vec else x
        n_in = self.V.dofmap.index_map.size_local
        if X.shape[0] != n_in:
            raise ValueError(f"x must have {n_in} owned rows on this rank, got {X.shape[0]}")
        comm = self.V.mesh.comm
        ncomp = X.shape[1]
        Xm = PETSc.Mat().createDense(((n_in, None), (None, ncomp)),
                                     array=np.asfortranarray(X),
                                     comm=comm)
        Xm.assemble()
        Ym = self.matrix.matMult(Xm)
        Yarr = Ym.getDenseArray(readonly=True).copy()
        Xm.destroy()
        Ym.destroy()
        return Yarr[:, 0] if vec else Yarr

    def apply_blocked(self, f, out) -> None:
        """Mollify every component of a blocked (vector) Lagrange function.

        ``f`` and ``out`` must be on blocked spaces (``shape=(n,)``) whose scalar dof layout is
        that of ``V`` and ``V_out`` respectively (same mesh and element).

        Args:
            f: Blocked function whose components are mollified.
            out: Blocked function receiving the results (ghosts updated).
        """
        bs_in, bs_out = f.function_space.dofmap.index_map_bs, out.function_space.dofmap.index_map_bs
        ok = (bs_in == bs_out
              and f.function_space.dofmap.index_map.size_local
              == self.V.dofmap.index_map.size_local
              and out.function_space.dofmap.index_map.size_local
              == self.V_out.dofmap.index_map.size_local
              and np.array_equal(f.function_space.dofmap.list, self.V.dofmap.list))
        if not _comm_all(self.V.mesh.comm, ok):
            raise ValueError("apply_blocked: f and out must be blocked copies of V and V_out")
        n_in = self.V.dofmap.index_map.size_local
        n_out = self.V_out.dofmap.index_map.size_local
        X = f.x.array[:n_in * bs_in].reshape(n_in, bs_in)
        out.x.array[:n_out * bs_out] = self.apply_array(X).ravel()
        out.x.scatter_forward()


def _comm_all(comm, flag: bool) -> bool:
    """Logical AND of ``flag`` over all ranks of ``comm`` (collective)."""
    return bool(comm.allreduce(int(bool(flag)), op=MPI.MIN))


def lumped_symmetric(M, lumped: np.ndarray):
    """``M_s = (M + D^-1 M^T D) / 2``: ``M`` symmetrised in the lumped inner product.

    ``D = diag(lumped)`` (owned values). ``D M_s`` is symmetric, so a transport driven by
    ``M_s`` applied to densities is the gradient of an energy (and keeps constants where ``M``
    does, up to its own row sums). ``M`` is left unchanged; the caller owns the new matrix.
    """
    Mt = M.transpose(PETSc.Mat())  # out of place: transpose() alone overwrites M
    dvec = M.createVecLeft()
    dvec.array[:] = lumped
    dinv = dvec.copy()
    dinv.reciprocal()
    Mt.diagonalScale(dinv, dvec)
    Ms = M.copy()
    Ms.axpy(1.0, Mt, structure=PETSc.Mat.Structure.DIFFERENT_NONZERO_PATTERN)
    Ms.scale(0.5)
    for obj in (Mt, dvec, dinv):
        obj.destroy()
    return Ms
