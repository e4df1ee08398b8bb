"""The ``"muscl"`` model: binds :class:`.flux.MusclFlux` and its Jacobians to the interface."""

from __future__ import annotations

from fem_crossdiff.compat import PETSc
from fem_crossdiff.discretisation.edges import negative_edges_message
from fem_crossdiff.models import register
from fem_crossdiff.models.base import Model
from fem_crossdiff.models.jacobians import MatrixFreeJacobian
from fem_crossdiff.models.muscl.flux import MusclFlux
from fem_crossdiff.models.muscl.jacobian import ExactJacobian, ExactOperator
from fem_crossdiff.models.muscl.options import MusclOptions
from fem_crossdiff.params import ModelParams

__all__ = ["LocalMuscl"]


@register("muscl", options=MusclOptions, default=True)
class LocalMuscl(MatrixFreeJacobian, Model):
    """``R_k,i = sum_j b_k w_ij c_k,f F_ij + sigma w_ij (rho_k,i - rho_k,j)`` on P1 simplices.

    Args:
        V: Blocked P1 space.
        params: Model coefficients.
        negative_edges: Treatment of negative-weight edges, see
            :func:`fem_crossdiff.discretisation.edges.edge_weights`.
        linear_solver: The solver's resolved linear solver (``"direct"`` or
            ``"iterative"``), for ``preconditioner="auto"``.
        options: The scheme's :class:`~fem_crossdiff.models.muscl.options.MusclOptions`
            (default: its defaults): the limiter, the Jacobian (``"exact"``, ``"frozen"``
            or ``"mf"``) and the preconditioner. ``jacobian="exact"`` (default): Newton
            measured 4.0 iterations per step against 3.5 for upwind on bench_local's state,
            2.0 against 2.0 on 1D segregation; ``"frozen"``, the frozen-limiter matrix:
            Newton converges linearly, 21.5 iterations on bench_local's state; ``"mf"``:
            matrix-free, exact up to a difference quotient, preconditioned by the frozen
            matrix. The preconditioner is the matrix the linear solver factorises or builds
            its multigrid on, for ``jacobian="exact"``: ``"upwind"`` (the first-order
            scheme's Jacobian at the iterate; the exact ``J`` is applied by
            :class:`ExactOperator`), ``"direct"`` (the edge-pattern part ``J_direct``),
            ``"frozen"``, or ``"exact"`` (``J`` assembled with its distance-2 pattern,
            :class:`ExactJacobian`, and used by the solver itself). ``"auto"`` (default):
            ``"exact"`` with a direct solver (one factorisation, no Krylov iterations), else
            ``"upwind"`` (GAMG on ``J`` or ``J_direct`` broke down on data with exact zeros;
            ``docs/schemes.md``, "Cost").

    Attributes:
        options: The options in effect (validated, the limiter as an object).
    """

    def __init__(self, V, params: ModelParams, negative_edges: str = "voronoi",
                 linear_solver: str = "iterative", options: MusclOptions | None = None):
        self.options = options if options is not None else MusclOptions()
        preconditioner = self.options.preconditioner
        if preconditioner == "auto":  # a factorisation takes the exact J itself
            preconditioner = "exact" if linear_solver == "direct" else "upwind"
        self.preconditioner = preconditioner
        super().__init__(V, params)
        self.negative_edges = negative_edges
        self.flux = MusclFlux(V, params, negative_edges, self.options.limiter)
        self.jacobian = self.options.jacobian
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
