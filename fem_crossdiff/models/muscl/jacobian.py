"""The exact Jacobian of the ``"muscl"`` fluxes: assembled (distance-2 pattern) or in factors.

``J = J_direct + E M`` (``docs/schemes.md``): :class:`ExactJacobian` assembles the product
with PETSc, :class:`ExactOperator` applies it matrix-free with an edge-pattern matrix as
preconditioner.
"""

from __future__ import annotations

import numpy as np

from fem_crossdiff.compat import PETSc, fem, la
from fem_crossdiff.discretisation.edges import p1_cell_gradients
from fem_crossdiff.models.muscl.flux import MusclFlux

__all__ = ["ExactJacobian", "ExactOperator"]


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
        self._mw = (vol[:, None, None, None] * flux.grad.inv_vol[dofs][:, :, None, None]
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
        val = Y[:, :, None] * f.state.d_vec[:, None, :]  # (nE, n, gdim)
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
    recovered gradient of ``d c_reg / d rho . x``
    (:class:`fem_crossdiff.discretisation.gradients.NodalGradient`,
    collective) taken at the upstream node of each edge, along the edge, for the limiting
    species ``k*``, times ``Y`` (:meth:`.flux.MusclFlux.exact_derivatives`).

    Why not the assembled product of :class:`ExactJacobian`: forming ``E M`` (``MatMatMult``),
    its values and the union pattern's COO transfer cost more per Newton step than this
    product per Krylov iteration (compiled edge loops, :mod:`.kernels`), and the
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
        self._point = (f.c_reg_derivative(), Y, up, kstar, f.state.d_vec)
        nb = (f.nnzb, n * n)
        if self._pdata is None:
            self._pdata = np.empty(nb)
        if pmat == "direct":
            f.write_dense(Ji, Jj, self._pdata)
            f.set_matrix(A, self._pdata)
            self._diff = None
            return
        s = f.edge_state(rho)[1]
        ci, cj, Si, Sj, inv_i, inv_j = s.c_i, s.c_j, s.S_i, s.S_j, s.inv_i, s.inv_j
        up_i, phi, cf, F, Sm, dP, lim = s.up_i, s.phi, s.c_f, s.F, s.S_m, s.dP, s.lim
        if pmat == "upwind":  # c_f = c_up: the held-factor blocks with phi = 0
            phi, cf = np.zeros_like(phi), s.c_up
        # the factors of EdgeFlux.held_factor_blocks, compiled (kernels.held_blocks)
        from fem_crossdiff.models.muscl.kernels import block_slots, held_blocks

        ui, uj, di, dj = (np.empty_like(ci) for _ in range(4))
        held_blocks(ci, cj, inv_i, inv_j, up_i, phi, cf, F, Sm, dP, f.law.derivative(Si),
                    f.law.derivative(Sj), f.W, f.b, float(f.params.sigma), ui, uj, di, dj)
        f.limit_factors(lim, ui, uj, di, dj)
        # A's block-CSR values and J_direct - A per edge (A's blocks are u a^T + diag(d)),
        # applied edge by edge in mult: one compiled pass (the numpy write_blocks and
        # difference took 0.15 s per Newton step at 252k unknowns)
        block_slots(f.I, f.J, *self._slots(), ui, uj, di, dj, f.a, Ji, Jj,
                    self._pdata.reshape(-1, n, n))
        f.set_matrix(A, self._pdata)
        self._diff = (Ji, Jj)

    def _slots(self) -> tuple:
        """Block-CSR slots of the blocks ``(i, j)``, ``(j, i)`` per edge and ``(i, i)`` per node.

        The inverse of the flux's ``slots`` (the layout of
        :meth:`fem_crossdiff.discretisation.pattern.EdgeBlocks.write_blocks`: rows ``[0, E)``
        the blocks ``(i, j)``, ``[E, 2E)`` the blocks ``(j, i)``, then the diagonal blocks in
        the order of ``diag_node``); built once.
        """
        if self._slot_maps is None:
            f = self.flux
            nE = f.I.size
            where = np.empty(f.slots.size, dtype=np.int64)
            where[f.slots] = np.arange(f.slots.size)
            diag = np.full(f.nloc, -1, dtype=np.int64)
            diag[f.diag_node] = where[2 * nE:]
            self._slot_maps = (where[:nE].copy(), where[nE:2 * nE].copy(), diag)
        return self._slot_maps

    def mult(self, mat, x, y):
        """``y = J x`` (collective)."""
        from fem_crossdiff.models.muscl.kernels import (
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
