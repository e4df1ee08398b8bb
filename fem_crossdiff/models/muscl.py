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
from fem_crossdiff.params import ModelParams
from fem_crossdiff.upwind import MusclFlux, negative_edges_message

#: Jacobians of :class:`LocalMuscl`.
JACOBIANS = ("mf", "frozen")


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


@register("muscl")
class LocalMuscl(Model):
    """``R_k,i = sum_j b_k w_ij c_k,f F_ij + sigma w_ij (rho_k,i - rho_k,j)`` on P1 simplices.

    Args:
        V: Blocked P1 space.
        params: Model coefficients.
        negative_edges: Treatment of negative-weight edges, see
            :func:`fem_crossdiff.upwind.edge_weights`.
        limiter: Slope limiter, one of :data:`fem_crossdiff.upwind.LIMITERS`.
        jacobian: ``"frozen"`` (default: the frozen-limiter matrix; Newton converges
            linearly, measured 1.5-2.3 times the first-order scheme's iterations, and can fail
            on very large steps) or ``"mf"`` (matrix-free, exact up to a difference quotient,
            preconditioned by the frozen-limiter matrix: quadratic Newton with the direct
            solver, one flux evaluation per Krylov iteration; with GMRES + GAMG it stalled on
            compactly supported 2D data, measured).
    """

    def __init__(self, V, params: ModelParams, negative_edges: str = "voronoi",
                 limiter: str = "vanleer", jacobian: str = "frozen"):
        from fem_crossdiff.errors import ParameterError
        from fem_crossdiff.upwind import LIMITERS

        if limiter not in LIMITERS:
            raise ParameterError("limiter", limiter, f"one of {', '.join(LIMITERS)}")
        if jacobian not in JACOBIANS:
            raise ParameterError("jacobian", jacobian, f"one of {', '.join(JACOBIANS)}")
        super().__init__(V, params)
        self.negative_edges = negative_edges
        self.flux = MusclFlux(V, params, negative_edges, limiter)
        self.jacobian = jacobian
        self._ctx = None

    def begin_step(self, rho):
        """Fix the density scale of the slopes' vacuum regularisation for this step."""
        self.flux.set_vacuum_scale(rho)

    def residual(self, rho):
        """Edge fluxes summed per node."""
        return self.flux.residual(rho)

    def add_jacobian(self, A, rho):
        """Frozen-limiter edge Jacobian blocks."""
        self.flux.add_jacobian(A, rho)

    @property
    def matrix_free(self) -> bool:
        """The exact Jacobian is applied matrix-free (``jacobian="mf"``)."""
        return self.jacobian == "mf"

    def jacobian_operator(self, A):
        """The matrix-free Jacobian, preconditioned by ``A`` (``None`` when frozen)."""
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

    def describe(self):
        """Non-Delaunay meshes: how many edges, and what is done with them."""
        return negative_edges_message(self.flux.negative_edges, self.negative_edges)
