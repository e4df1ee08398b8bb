"""Local system (1.1), upwind P1 edge fluxes with a limited second-order species reconstruction.

The flux kernel is :class:`fem_crossdiff.upwind.MusclFlux` (see ``docs/schemes.md``): the
first-order scheme of :mod:`fem_crossdiff.models.local_upwind` with the upstream species
fractions replaced by limited face values. Positive for every ``sigma >= 0`` with implicit
Euler, conservative, and reducing exactly to the one-species scheme for equal mobilities.
"""

from __future__ import annotations

import numpy as np

from fem_crossdiff.compat import MPI, PETSc, fem, la
from fem_crossdiff.models import register
from fem_crossdiff.models.base import Model
from fem_crossdiff.params import DEFAULT_LIMITER, ModelParams
from fem_crossdiff.upwind import MusclFlux, negative_edges_message

#: Jacobians of :class:`LocalMuscl`.
JACOBIANS = ("exact", "mf", "frozen")
#: Preconditioner matrices of ``jacobian="exact"``: the edge-pattern part ``J_direct`` (the
#: exact ``J`` applied as ``J_direct + E M``) or the assembled exact ``J``.
PRECONDITIONERS = ("direct", "frozen", "upwind", "exact")


class MusclJacobian:
    """Matrix-free Jacobian of the MUSCL fluxes (a petsc4py Python matrix context).

    ``J dx = P dx + [R(rho + e dx) - R(rho)] / e - B dx``: ``P`` is the assembled
    frozen-limiter Jacobian with the time term (also the preconditioner), ``B`` its edge part
    (the same block values, as a local block-CSR matrix) and the difference quotient the
    exact change of the fluxes, limiter and recovered gradients included. Every product
    evaluates the fluxes once (collective: the gradient recovery communicates).
    """

    def __init__(self, P: PETSc.Mat, flux, V):
        self.P, self.flux = P, flux
        self.n = flux.n
        self.work = fem.Function(V)
        self.nown = V.dofmap.index_map.size_local
        self.rho = self.R0 = self.B = None
        self.scale = 1.0

    def release(self) -> None:
        """Drop the references to the model's data (the operator is being freed)."""
        self.P = self.flux = self.work = self.rho = self.R0 = self.B = None

    def update(self, rho_local: np.ndarray) -> None:
        """Set the linearisation point (after the frozen Jacobian was assembled there)."""
        from scipy.sparse import bsr_matrix

        f, n = self.flux, self.n
        self.rho = rho_local.copy()
        self.R0 = f.residual(self.rho)
        N = f.nloc * n
        self.B = bsr_matrix((f._data.reshape(-1, n, n), f._indices, f._indptr), shape=(N, N))
        self.scale = max(f.comm.allreduce(float(np.abs(self.rho).max(initial=0.0)),
                                          op=MPI.MAX), 1e-300)

    def mult(self, mat, x, y):
        """``y = J x``."""
        self.P.mult(x, y)
        xn = x.norm(PETSc.NormType.NORM_INFINITY)
        if xn == 0.0:
            return
        w = self.work.x
        k = self.nown * self.n
        w.array[:k] = x.array_r
        w.scatter_forward()
        dx = w.array.reshape(-1, self.n).copy()
        eps = 1e-7 * self.scale / xn
        R = self.flux.residual(self.rho + eps * dx)
        corr = (R - self.R0) / eps - (self.B @ dx.reshape(-1)).reshape(-1, self.n)
        w.array[:] = corr.reshape(-1)
        w.scatter_reverse(la.InsertMode.add)
        y.array[:] += w.array[:k]


class ExactJacobian:
    """The exact Jacobian of the MUSCL fluxes, assembled into the solver's matrix.

    ``J = J_direct + E M``: ``J_direct`` holds the derivatives with respect to the values at
    the ends of every edge (the four ``n x n`` blocks of the edge), ``M`` is the recovered
    gradient operator times ``d c_reg / d rho`` (rows: node, species, direction; columns:
    node, species; one ``(tdim+1)^2`` block per owned cell) and ``E`` the derivative of the
    edge fluxes with respect to the upstream node's gradient (rows: both ends, columns: both
    ends' gradients, every species and direction, so that the pattern does not change when
    the flow or the limiting species does). ``E M`` has the distance-2 pattern (the edge's
    ends and the nodes of the cells around them).

    Why the product is formed by PETSc: the gradient at a node sums cells of several ranks,
    whose nodes need not be ghosts of the rank that owns the edge; ``MatMatMult`` (symbolic
    once, numeric per Newton step, ``MAT_REUSE_MATRIX``) communicates exactly those rows.
    The matrix of the solver gets, once, the union of the edge pattern and of the product's
    (COO preallocation); every assembly then only passes values.

    Args:
        flux: The MUSCL kernel.
        V: The blocked P1 space.
    """

    def __init__(self, flux: MusclFlux, V):
        from fem_crossdiff.upwind import p1_cell_gradients

        self.flux = flux
        comm = V.mesh.comm
        imap = V.dofmap.index_map
        n, gd = flux.n, flux.grad.gdim
        self.n, self.gdim = n, gd
        nown, N = imap.size_local, imap.size_global
        nloc = nown + imap.num_ghosts
        g = imap.local_to_global(np.arange(nloc, dtype=np.int32)).astype(np.int64)
        I, J = g[flux.I], g[flux.J]
        k = np.arange(n)
        dg = np.arange(gd)
        # E: (edge, row end, k, col end, k', dir)
        ends = np.stack([I, J], axis=1)  # (nE, 2)
        nE = I.size
        shapeE = (nE, 2, n, 2, n, gd)
        rowsE = np.broadcast_to((ends[:, :, None, None, None, None] * n
                                 + k[None, None, :, None, None, None]), shapeE)
        colsE = np.broadcast_to(((ends[:, None, None, :, None, None] * n
                                  + k[None, None, None, None, :, None]) * gd
                                 + dg[None, None, None, None, None, :]), shapeE)
        self.E = self._coo(comm, (nown * n, N * n), (nown * n * gd, N * n * gd), rowsE, colsE)
        self._Evals = np.zeros(shapeE)
        # M: (cell, node u, k, dir, node p, l)
        dofs, _, grads, vol = p1_cell_gradients(V)
        nv = dofs.shape[1]
        gd_ = g[dofs]  # (ncells, nv)
        shapeM = (dofs.shape[0], nv, n, gd, nv, n)
        rowsM = np.broadcast_to(((gd_[:, :, None, None, None, None] * n
                                  + k[None, None, :, None, None, None]) * gd
                                 + dg[None, None, None, :, None, None]), shapeM)
        colsM = np.broadcast_to((gd_[:, None, None, None, :, None] * n
                                 + k[None, None, None, None, None, :]), shapeM)
        self.M = self._coo(comm, (nown * n * gd, N * n * gd), (nown * n, N * n), rowsM, colsM)
        # vol_T grad(phi_p)_T / Vol_u: (cell, u, dir, p)
        self._mw = (vol[:, None, None, None] * flux.grad._inv_vol[dofs][:, :, None, None]
                    * np.transpose(grads, (0, 2, 1))[:, None, :, :])
        self._dofs = dofs
        self.C = None
        # the direct blocks: (edge, block (ii, ij, ji, jj), k, l)
        rb = np.stack([I, I, J, J], axis=1)
        cb = np.stack([I, J, I, J], axis=1)
        shapeD = (nE, 4, n, n)
        self._rowsD = np.broadcast_to(rb[:, :, None, None] * n + k[None, None, :, None],
                                      shapeD).ravel()
        self._colsD = np.broadcast_to(cb[:, :, None, None] * n + k[None, None, None, :],
                                      shapeD).ravel()
        self._D = np.empty(shapeD)
        self._ar = np.arange(nE)
        self.coo_handle = None

    @staticmethod
    def _coo(comm, rsize, csize, rows, cols):
        A = PETSc.Mat().create(comm=comm)
        A.setSizes((rsize, csize))
        A.setType(PETSc.Mat.Type.AIJ)
        A.setPreallocationCOO(rows.ravel().astype(PETSc.IntType),
                              cols.ravel().astype(PETSc.IntType))
        return A

    def release(self) -> None:
        """Free the PETSc matrices (collective)."""
        for A in (self.E, self.M, self.C):
            if A is not None:
                A.destroy()
        self.E = self.M = self.C = None

    def _values(self, rho: np.ndarray):
        """Set the values of ``E`` and ``M`` at ``rho``; return the direct blocks ``Ji, Jj``."""
        f = self.flux
        Ji, Jj, Y, kstar, up_i = f.exact_derivatives(rho)
        # E[e, row end, k, up end, k*, :] = +-Y[e, k] d_vec[e]
        Ev = self._Evals
        Ev.fill(0.0)
        ar = self._ar
        up = np.where(up_i, 0, 1)
        val = Y[:, :, None] * f._aux["d_vec"][:, None, :]  # (nE, n, gdim)
        Ev[ar, 0, :, up, kstar, :] = val
        Ev[ar, 1, :, up, kstar, :] = -val
        self.E.setValuesCOO(Ev.reshape(-1), addv=PETSc.InsertMode.INSERT_VALUES)
        dcr = np.transpose(f.c_reg_derivative()[self._dofs], (0, 2, 1, 3))  # (cell, k, p, l)
        Mv = self._mw[:, :, None, :, :, None] * dcr[:, None, :, None, :, :]
        self.M.setValuesCOO(Mv.reshape(-1), addv=PETSc.InsertMode.INSERT_VALUES)
        return Ji, Jj

    def assemble(self, A: PETSc.Mat, rho: np.ndarray) -> None:
        """Set ``A`` to the exact edge Jacobian at ``rho`` (every entry replaced)."""
        Ji, Jj = self._values(rho)
        D = self._D
        D[:, 0] = Ji
        D[:, 1] = Jj
        D[:, 2] = -Ji
        D[:, 3] = -Jj
        if self.C is None:
            self.C = self.E.matMult(self.M)
        else:
            self.E.matMult(self.M, result=self.C)
        indptr, indices, data = self.C.getValuesCSR()
        if self.coo_handle != A.handle:
            lo, _ = self.C.getOwnershipRange()
            rowsC = lo + np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
            A.setPreallocationCOO(
                np.concatenate([self._rowsD, rowsC]).astype(PETSc.IntType),
                np.concatenate([self._colsD, indices]).astype(PETSc.IntType))
            self.coo_handle = A.handle
        A.setValuesCOO(np.concatenate([D.reshape(-1), data]),
                       addv=PETSc.InsertMode.INSERT_VALUES)


class ExactOperator:
    """``J x = A x + (J_direct - A) x + E M x``: the exact Jacobian, never assembled.

    A petsc4py Python matrix context. ``A`` is the solver's matrix, an edge-pattern matrix
    (the preconditioner: ``J_direct``, the frozen-limiter or the first-order scheme's
    Jacobian, with the time term), the difference ``J_direct - A`` is applied edge by edge
    from its per-edge blocks (none when ``A = J_direct``), and ``E M x`` as what it is: the
    recovered gradient of ``d c_reg / d rho . x`` (:class:`fem_crossdiff.upwind.NodalGradient`,
    collective) taken at the upstream node of each edge, along the edge, for the limiting
    species ``k*``, times ``Y`` (:meth:`fem_crossdiff.upwind.MusclFlux.exact_derivatives`).

    Why not the assembled product of :class:`ExactJacobian`: forming ``E M`` (``MatMatMult``),
    its values and the union pattern's COO transfer cost more per Newton step than this
    product per Krylov iteration (compiled edge loops, :mod:`.muscl_kernels`), and the
    distance-2 pattern makes the multigrid set-up dearer; why the first-order Jacobian as
    preconditioner: GAMG on ``J_direct`` or on the frozen matrix broke down on data with
    exact zeros (``docs/schemes.md``, "Cost").

    Args:
        P: The solver's matrix (filled by :meth:`assemble`).
        flux: The MUSCL kernel.
        V: The blocked P1 space.
    """

    def __init__(self, P: PETSc.Mat, flux: MusclFlux, V):
        self.P, self.flux = P, flux
        self.n = flux.n
        self.work = fem.Function(V)
        self.nown = V.dofmap.index_map.size_local
        self._pdata = self._diff = self._point = self._dc = self._slot_maps = None

    def release(self) -> None:
        """Drop the references to the model's data (the operator is being freed)."""
        self.P = self.flux = self.work = self._point = self._diff = None

    def assemble(self, A: PETSc.Mat, rho: np.ndarray, pmat: str = "direct") -> None:
        """Linearise at ``rho``: ``A`` gets the matrix ``pmat``, the operator ``J``'s factors.

        ``pmat``: ``"direct"`` (``A = J_direct``), ``"frozen"`` (``phi`` and the gradients
        held) or ``"upwind"`` (the first-order scheme's Jacobian at ``rho``: ``c_f = c_up``).
        """
        f, n = self.flux, self.n
        Ji, Jj, Y, kstar, up_i = f.exact_derivatives(rho)
        up = np.where(up_i, f.I, f.J)
        self._point = (f.c_reg_derivative(), Y, up, kstar, f._aux["d_vec"])
        nb = (f._nnzb, n * n)
        if self._pdata is None:
            self._pdata = np.empty(nb)
        if pmat == "direct":
            f._write_dense(Ji, Jj, self._pdata)
            f.set_matrix(A, self._pdata)
            self._diff = None
            return
        ci, cj, Si, Sj, inv_i, inv_j, up_i, phi, cf, F, Sm, dP, lim = f._edge_terms(rho)[1][:13]
        if pmat == "upwind":  # c_f = c_up: the held-factor blocks with phi = 0
            phi, cf = np.zeros_like(phi), f._aux["c_up"]
        # the factors of UpwindFlux._held_factor_blocks, compiled (muscl_kernels.held_blocks)
        from fem_crossdiff.models.muscl_kernels import block_slots, held_blocks

        ui, uj, di, dj = (np.empty_like(ci) for _ in range(4))
        held_blocks(ci, cj, inv_i, inv_j, up_i, phi, cf, F, Sm, dP, f.law.derivative(Si),
                    f.law.derivative(Sj), f.W, f.b, float(f.params.sigma), ui, uj, di, dj)
        f._limit_factors(lim, ui, uj, di, dj)
        # A's block-CSR values and J_direct - A per edge (A's blocks are u a^T + diag(d)),
        # applied edge by edge in mult: one compiled pass (the numpy _write_blocks and
        # difference took 0.15 s per Newton step at 252k unknowns)
        block_slots(f.I, f.J, *self._slots(), ui, uj, di, dj, f.a, Ji, Jj,
                    self._pdata.reshape(-1, n, n))
        f.set_matrix(A, self._pdata)
        self._diff = (Ji, Jj)

    def _slots(self) -> tuple:
        """Block-CSR slots of the blocks ``(i, j)``, ``(j, i)`` per edge and ``(i, i)`` per node.

        The inverse of the flux's gather (:meth:`fem_crossdiff.upwind.UpwindFlux._write_blocks`'
        layout: rows ``[0, E)`` the blocks ``(i, j)``, ``[E, 2E)`` the blocks ``(j, i)``, then
        the diagonal blocks in the order of ``_diag_node``); built once.
        """
        if self._slot_maps is None:
            f = self.flux
            nE = f.I.size
            where = np.empty(f._gather.size, dtype=np.int64)
            where[f._gather] = np.arange(f._gather.size)
            diag = np.full(f.nloc, -1, dtype=np.int64)
            diag[f._diag_node] = where[2 * nE:]
            self._slot_maps = (where[:nE].copy(), where[nE:2 * nE].copy(), diag)
        return self._slot_maps

    def mult(self, mat, x, y):
        """``y = J x`` (collective)."""
        from fem_crossdiff.models.muscl_kernels import (
            edge_blocks_apply,
            edge_gradient_terms,
            node_products,
        )

        self.P.mult(x, y)
        dcreg, Y, up, kstar, d_vec = self._point
        f, n, k = self.flux, self.n, self.nown * self.n
        w = self.work.x
        w.array[:k] = x.array_r
        w.scatter_forward()
        dx = w.array.reshape(-1, n).copy()
        if self._dc is None:
            self._dc = np.empty_like(dx)
        node_products(dcreg, dx, self._dc)
        g = f.grad(self._dc)  # (nloc, n, gdim), ghosts complete
        out = w.array.reshape(-1, n)
        out[:] = 0.0
        if self._diff is not None:
            edge_blocks_apply(f.I, f.J, *self._diff, dx, out)
        edge_gradient_terms(f.I, f.J, up, kstar, Y, d_vec, g, out)
        w.scatter_reverse(la.InsertMode.add)
        y.array[:] += w.array[:k]


class MatrixFreeJacobian:
    """``jacobian="mf"`` for a model with an edge ``flux``: the exact Jacobian matrix-free.

    A mixin of the models with a reconstructed face fraction (``LocalMuscl``, ``LocalAfc``):
    the model sets ``jacobian``, ``flux`` and ``_ctx = None``; the shell applies
    :class:`MusclJacobian` and is preconditioned by the assembled matrix ``A``.
    """

    @property
    def matrix_free(self) -> bool:
        """The exact Jacobian is applied matrix-free (``jacobian="mf"``)."""
        return self.jacobian == "mf"

    def jacobian_operator(self, A):
        """The matrix-free Jacobian, preconditioned by ``A`` (``None`` unless ``"mf"``)."""
        if self.jacobian != "mf":
            return None
        self._ctx = MusclJacobian(A, self.flux, self.V)
        shell = PETSc.Mat().createPython(A.getSizes(), self._ctx, comm=A.comm)
        shell.setUp()
        return shell

    def update_operator(self, rho):
        """Linearise the matrix-free Jacobian at ``rho``."""
        if self._ctx is not None:
            self._ctx.update(rho)


@register("muscl")
class LocalMuscl(MatrixFreeJacobian, Model):
    """``R_k,i = sum_j b_k w_ij c_k,f F_ij + sigma w_ij (rho_k,i - rho_k,j)`` on P1 simplices.

    Args:
        V: Blocked P1 space.
        params: Model coefficients.
        negative_edges: Treatment of negative-weight edges, see
            :func:`fem_crossdiff.upwind.edge_weights`.
        limiter: Slope limiter, one of :data:`fem_crossdiff.upwind.LIMITERS` (default
            ``"smooth-sensor"``, :data:`fem_crossdiff.params.DEFAULT_LIMITER`).
        jacobian: ``"exact"`` (default: the exact Jacobian; Newton measured 4.0 iterations
            per step against 3.5 for upwind on bench_local's state, 2.0 against 2.0 on 1D
            segregation), ``"frozen"`` (the frozen-limiter matrix; Newton converges linearly,
            21.5 iterations on bench_local's state) or ``"mf"`` (matrix-free, exact up to a
            difference quotient, preconditioned by the frozen matrix).
        preconditioner: The matrix the linear solver factorises or builds its multigrid on,
            for ``jacobian="exact"``: ``"upwind"`` (the first-order scheme's Jacobian at the
            iterate; the exact ``J`` is applied by :class:`ExactOperator`), ``"direct"``
            (the edge-pattern part ``J_direct``), ``"frozen"``, or ``"exact"`` (``J``
            assembled with its distance-2 pattern, :class:`ExactJacobian`, and used by the
            solver itself). ``"auto"`` (default): ``"exact"`` with a direct solver (one
            factorisation, no Krylov iterations), else ``"upwind"`` (GAMG on ``J`` or
            ``J_direct`` broke down on data with exact zeros; ``docs/schemes.md``, "Cost").
        linear_solver: The solver's resolved linear solver (``"direct"`` or
            ``"iterative"``), for ``preconditioner="auto"``.
    """

    def __init__(self, V, params: ModelParams, negative_edges: str = "voronoi",
                 limiter: str = DEFAULT_LIMITER, jacobian: str = "exact",
                 preconditioner: str = "auto", linear_solver: str = "iterative"):
        from fem_crossdiff.errors import ParameterError
        from fem_crossdiff.upwind import LIMITERS

        if limiter not in LIMITERS:
            raise ParameterError("limiter", limiter, f"one of {', '.join(LIMITERS)}")
        if jacobian not in JACOBIANS:
            raise ParameterError("jacobian", jacobian, f"one of {', '.join(JACOBIANS)}")
        if preconditioner not in ("auto", *PRECONDITIONERS):
            raise ParameterError("preconditioner", preconditioner,
                                 f"auto or one of {', '.join(PRECONDITIONERS)}")
        if preconditioner == "auto":  # a factorisation takes the exact J itself
            preconditioner = "exact" if linear_solver == "direct" else "upwind"
        self.preconditioner = preconditioner
        super().__init__(V, params)
        self.negative_edges = negative_edges
        self.flux = MusclFlux(V, params, negative_edges, limiter)
        self.jacobian = jacobian
        self._ctx = None
        self._exact = None

    @property
    def _split(self) -> bool:
        """The exact ``J`` is applied as ``J_direct + E M``, ``J_direct`` the assembled matrix."""
        return self.jacobian == "exact" and self.preconditioner != "exact"

    @property
    def matrix_free(self) -> bool:
        """``jacobian="mf"``, or the exact ``J`` applied in factors (a Krylov method needed)."""
        return self.jacobian == "mf" or self._split

    @property
    def petsc_overrides(self) -> dict:
        """Solver defaults of this model (before the user's options).

        With the exact ``J`` applied in factors, multigrid smooths the finest level with the
        preconditioner matrix, not with ``J`` (``pc_use_amat`` false): measured, smoothing
        with ``J`` cost five extra products per Krylov iteration and broke down with the
        first-order preconditioner (``docs/schemes.md``, "Cost").
        """
        return {"pc_use_amat": False} if self._split else {}

    def jacobian_operator(self, A):
        """The exact ``J`` in factors, preconditioned by ``J_direct`` in ``A`` (or ``"mf"``)."""
        if not self._split:
            return super().jacobian_operator(A)
        self._ctx = ExactOperator(A, self.flux, self.V)
        shell = PETSc.Mat().createPython(A.getSizes(), self._ctx, comm=A.comm)
        shell.setUp()
        return shell

    def update_operator(self, rho):
        """Linearise the matrix-free Jacobian at ``rho`` (the factors are set with ``A``)."""
        if self.jacobian == "mf":
            super().update_operator(rho)

    def begin_step(self, rho):
        """Fix the density scale of the slopes' vacuum regularisation for this step."""
        self.flux.set_vacuum_scale(rho)

    def residual(self, rho):
        """Edge fluxes summed per node."""
        return self.flux.residual(rho)

    def add_jacobian(self, A, rho):
        """The exact Jacobian (``"exact"``), else the frozen-limiter edge blocks."""
        if self._split:
            self._ctx.assemble(A, rho, self.preconditioner)
        elif self.jacobian == "exact":
            if self._exact is None:
                self._exact = ExactJacobian(self.flux, self.V)
            self._exact.assemble(A, rho)
        else:
            self.flux.add_jacobian(A, rho)

    def describe(self):
        """Non-Delaunay meshes: how many edges, and what is done with them."""
        return negative_edges_message(self.flux.negative_edges, self.negative_edges)
