"""Jacobians shared by the models: a matrix-free difference quotient of an edge flux.

:class:`DifferenceJacobian` applies the exact Jacobian of any edge flux
(:class:`fem_crossdiff.models.edge_flux.EdgeFlux`) matrix-free, preconditioned by the flux's
assembled matrix; :class:`MatrixFreeJacobian` is the mixin that gives a model the
``jacobian="mf"`` option with it.
"""

from __future__ import annotations

import numpy as np

from fem_crossdiff.compat import MPI, PETSc, fem, la

__all__ = ["DifferenceJacobian", "MatrixFreeJacobian"]


class DifferenceJacobian:
    """Matrix-free Jacobian of edge fluxes (a petsc4py Python matrix context).

    ``J dx = P dx + [R(rho + e dx) - R(rho)] / e - B dx``: ``P`` is the assembled
    Jacobian with the time term (also the preconditioner), ``B`` its edge part (the flux's
    ``block_values``, as a local block-CSR matrix) and the difference quotient the exact
    change of the fluxes, limiter and recovered gradients included. Every product evaluates
    the fluxes once (collective when the flux communicates).
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
        """Set the linearisation point (after the assembled Jacobian was written there)."""
        from scipy.sparse import bsr_matrix

        f, n = self.flux, self.n
        self.rho = rho_local.copy()
        self.R0 = f.residual(self.rho)
        N = f.nloc * n
        self.B = bsr_matrix((f.block_values.reshape(-1, n, n), f.indices, f.indptr),
                            shape=(N, N))
        comm = self.work.function_space.mesh.comm
        self.scale = max(comm.allreduce(float(np.abs(self.rho).max(initial=0.0)),
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



class MatrixFreeJacobian:
    """``jacobian="mf"`` for a model with an edge ``flux``: the exact Jacobian matrix-free.

    A mixin of the models with a reconstructed face fraction (``LocalMuscl``, ``LocalAfc``):
    the model sets ``jacobian``, ``flux`` and ``_ctx = None``; the shell applies
    :class:`DifferenceJacobian` and is preconditioned by the assembled matrix ``A``.
    """

    @property
    def matrix_free(self) -> bool:
        """The exact Jacobian is applied matrix-free (``jacobian="mf"``)."""
        return self.jacobian == "mf"

    def jacobian_operator(self, A):
        """The matrix-free Jacobian, preconditioned by ``A`` (``None`` unless ``"mf"``)."""
        if self.jacobian != "mf":
            return None
        self._ctx = DifferenceJacobian(A, self.flux, self.V)
        shell = PETSc.Mat().createPython(A.getSizes(), self._ctx, comm=A.comm)
        shell.setUp()
        return shell

    def update_operator(self, rho):
        """Linearise the matrix-free Jacobian at ``rho``."""
        if self._ctx is not None:
            self._ctx.update(rho)


