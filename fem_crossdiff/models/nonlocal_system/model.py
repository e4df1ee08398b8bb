"""Nonlocal system (1.5): upwind P1 fluxes in the mollified pressure ``g``.

The potential ``g = M_s (a . M_s rho)^(m-1)`` and its derivative are
:class:`.potential.NonlocalPotential`; the fluxes :class:`.flux.PotentialFlux`. Two time
couplings (see :mod:`fem_crossdiff.models.nonlocal_system`): ``"linear"`` lags ``g`` (one
linear solve per step, only conditionally stable, so steps that raise the energy are
rejected), ``"implicit"`` solves with ``g`` of the new state and a matrix-free Jacobian.
"""

from __future__ import annotations

from fem_crossdiff.compat import PETSc
from fem_crossdiff.discretisation.edges import negative_edges_message
from fem_crossdiff.log import get_logger
from fem_crossdiff.models import register
from fem_crossdiff.models.base import Model
from fem_crossdiff.models.nonlocal_system.flux import PotentialFlux
from fem_crossdiff.models.nonlocal_system.params import NonlocalParams
from fem_crossdiff.models.nonlocal_system.potential import NonlocalJacobian, NonlocalPotential
from fem_crossdiff.params import ModelParams


@register("upwind", pde="nonlocal", default=True)
class Nonlocal(Model):
    """The nonlocal model with the coupling of ``nonlocal_params.coupling``.

    Args:
        V: Blocked P1 space.
        params: Model coefficients.
        nonlocal_params: Mollifier and coupling.
        V0: The scalar P1 space with the layout of one species.
        negative_edges: Treatment of negative-weight edges.
    """

    def __init__(self, V, params: ModelParams, nonlocal_params: NonlocalParams, V0,
                 negative_edges: str = "voronoi"):
        super().__init__(V, params)
        self.nl, self.negative_edges = nonlocal_params, negative_edges
        self.implicit = nonlocal_params.coupling == "implicit"
        self.potential = NonlocalPotential(V0, params, nonlocal_params)
        self.flux = PotentialFlux(V, params, negative_edges)
        self.g = None
        self._ctx = None
        self._local = None
        self._warned = False

    @property
    def energy_guard(self) -> bool:
        """The lagged coupling is only conditionally stable: guard its steps."""
        return not self.implicit

    @property
    def matrix_free(self) -> bool:
        """The implicit coupling's Jacobian is applied matrix-free."""
        return self.implicit

    #: Share of the mass within eps of a wall above which the zero extension warns.
    WALL_SHARE_WARNING = 0.01

    def begin_step(self, rho):
        """The lagged potential of the previous state (linear coupling).

        With the zero extension, warn once when a noticeable share of the mass lies within
        ``eps`` of a wall (the model then differs from the bounded-domain one there).
        """
        if self.nl.boundary == "zero" and not self._warned:
            share = self.potential.wall_mass_share(rho)
            if share > self.WALL_SHARE_WARNING:
                self._warned = True
                get_logger(self.V.mesh.comm).warning(
                    "nonlocal model with boundary='zero': %.1f%% of the mass lies within "
                    "eps = %g of a wall, where the zero extension pulls mass into the wall; "
                    "boundary='layer' is the bounded-domain model", 100 * share,
                    self.nl.eps)
        self.g = None if self.implicit else self.potential(rho)

    def _g(self, rho):
        return self.potential(rho) if self.implicit else self.g

    def residual(self, rho):
        """Edge fluxes in ``g`` (of the previous state, or of ``rho``)."""
        return self.flux.residual(rho, self._g(rho))

    def add_jacobian(self, A, rho):
        """The frozen-``g`` Jacobian (the whole Jacobian for the linear coupling).

        With the implicit coupling and ``boundary="diagonal-pc"`` the local part of the
        potential's derivative at the walls is added (the preconditioner then sees it).
        """
        g = self._g(rho)
        c = self.potential.local_coefficient() if self.implicit else None
        self._local = None if c is None else c[: self.potential.nown].copy()
        self.flux.add_jacobian(A, rho, g, None if c is None else (c, self.params.a))

    def jacobian_operator(self, A):
        """The matrix-free Jacobian of the implicit coupling (``None`` for linear)."""
        if not self.implicit:
            return None
        self._ctx = NonlocalJacobian(A, self.flux, self.potential, self.V)
        shell = PETSc.Mat().createPython(A.getSizes(), self._ctx, comm=A.comm)
        shell.setUp()
        return shell

    def update_operator(self, rho):
        """Linearise the matrix-free Jacobian at ``rho``."""
        if self._ctx is not None:
            self._ctx.update(rho, self.potential(rho), self._local)

    def driving_potential(self, rho):
        """``g`` of the state ``rho``."""
        return self.potential(rho)

    def energy(self, rho):
        """The discrete regularised energy ``A_eps`` of (1.4)."""
        n = self.params.n
        return self.potential.energy(rho.x.array.reshape(-1, n))

    def check_step(self, energy_before, energy_after):
        """Reject energy increases of the lagged coupling.

        With ``sigma > 0`` upwinding has no exact dissipation identity for the entropy part, so
        only increases beyond a small relative slack count.
        """
        slack = 1e-12 if self.params.sigma == 0 else 1e-6
        if energy_after > energy_before + slack * abs(energy_before):
            return f"energy increased ({energy_before:.6e} -> {energy_after:.6e})"
        return None

    def describe(self):
        """Non-Delaunay meshes: how many edges, and what is done with them."""
        return negative_edges_message(self.flux.negative_edges, self.negative_edges)
