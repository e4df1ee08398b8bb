"""The interface every spatial discretisation provides to the problem and the stepper.

A model is one class that turns the blocked function ``rho`` (one component per species) into
the spatial part of the residual of a cross-diffusion system, its Jacobian and its energy. The
time derivative (lumped or consistent mass, implicit Euler / BDF2 coefficients) and any source
term belong to the problem; a model never sees ``dt``. A model may give its spatial part as a
UFL form (:meth:`Model.form`, assembled by DOLFINx), as nodal contributions computed with numpy
(:meth:`Model.residual`, :meth:`Model.add_jacobian`), or both, and may provide a matrix-free
Jacobian (:meth:`Model.jacobian_operator`) preconditioned by the assembled one.

Arrays passed to the nodal methods are the local nodal values ``(nloc, n)`` (owned then ghost
nodes, species in columns) of a P1 blocked space; residual contributions are returned for all
local nodes and summed over ranks by the problem (PETSc's reverse ghost update).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fem_crossdiff.params import ModelParams

__all__ = ["FaceState", "Model"]


@dataclass(frozen=True)
class FaceState:
    """Per-edge state of a face-fraction flux ``G = b w c_f F + sigma w (rho_i - rho_j)``.

    The public state of the edge fluxes with a reconstructed face fraction ``c_f = c_up +
    phi / 2 (c_dn - c_up)``: what their Jacobians need besides the fluxes. Arrays are per
    edge, ``(E, n)`` for species quantities and ``(E,)`` otherwise; subclasses add what a
    scheme's exact Jacobian needs.

    Attributes:
        c_i, c_j: Species fractions at the first and second end.
        S_i, S_j: Total densities ``max(sum_k a_k rho_k, 0)`` at the ends.
        inv_i, inv_j: ``1 / S`` at the ends (0 in vacuum).
        up_i: The first end is upstream (the larger pressure).
        phi: The reconstruction factor of the face fraction, per edge.
        c_f: The face fractions.
        F: ``S_m (P_i - P_j)``.
        S_m: ``(S_i + S_j) / 2``.
        dP: ``P_i - P_j``.
        lim: The positivity limiter's ``(theta, G dtheta_i, G dtheta_j)`` on the limited
            edges (:func:`fem_crossdiff.discretisation.edges.limit_fluxes`), or ``None``.
    """

    c_i: np.ndarray
    c_j: np.ndarray
    S_i: np.ndarray
    S_j: np.ndarray
    inv_i: np.ndarray
    inv_j: np.ndarray
    up_i: np.ndarray
    phi: np.ndarray
    c_f: np.ndarray
    F: np.ndarray
    S_m: np.ndarray
    dP: np.ndarray
    lim: tuple | None


class Model:
    """Base class of the models: defaults for everything a model need not provide.

    Class attributes:
        name: The scheme's registry name (set by :func:`fem_crossdiff.models.register`).
        pde: The equation it discretises (set by :func:`~fem_crossdiff.models.register`).
        positive: The scheme keeps every density nonnegative (benchmarks compare these).
        lumped: The time derivative uses the lumped (vertex-quadrature) mass; the model's
            Jacobian then has no form part and the constant time term is added by the problem
            as a diagonal, assembled once.
        degrees: Lagrange degrees the model supports.

    Args:
        V: The blocked space (one component per species).
        params: Model coefficients.
    """

    name: ClassVar[str] = ""
    pde: ClassVar[str] = "local"
    positive: ClassVar[bool] = True
    lumped: ClassVar[bool] = True
    degrees: ClassVar[tuple[int, ...]] = (1,)

    #: The stepper evaluates :meth:`energy` before and after each step and asks
    #: :meth:`check_step` (for schemes whose stability is only conditional).
    energy_guard: ClassVar[bool] = False

    def __init__(self, V, params: ModelParams):
        self.V, self.params = V, params
        self._energy_form = None

    # ------------------------------------------------------------------ residual pieces
    def form(self, rho, v):
        """The spatial part of the residual that is a UFL form (``None``: none)."""
        return None

    def begin_step(self, rho: np.ndarray) -> None:
        """Called once per attempted step with the previous state (lagged quantities)."""

    def residual(self, rho: np.ndarray) -> np.ndarray | None:
        """Nodal residual contributions ``(nloc, n)`` at ``rho`` (``None``: none)."""
        return None

    def add_jacobian(self, A, rho: np.ndarray) -> None:
        """Write the nodal Jacobian into ``A`` (the caller assembles and adds the time term).

        Called only for models without a form part (a form's UFL derivative is then the whole
        Jacobian), on a matrix nothing else is assembled into, so the model may set every entry
        (the upwind fluxes use COO assembly).
        """

    @property
    def matrix_free(self) -> bool:
        """True when :meth:`jacobian_operator` returns an operator (it needs a Krylov method)."""
        return False

    def jacobian_operator(self, A):
        """A matrix-free Jacobian (``PETSc.Mat`` of type python) with ``A`` as preconditioner.

        ``None`` (the default): ``A`` is the Jacobian.
        """
        return None

    def update_operator(self, rho: np.ndarray) -> None:
        """Set the linearisation point of :meth:`jacobian_operator`."""

    # ------------------------------------------------------------------ diagnostics
    def driving_potential(self, rho: np.ndarray) -> np.ndarray | None:
        """Nodal values (owned + ghost) of the potential that transports the state, if any."""
        return None

    def energy(self, rho) -> float:
        """The energy ``A`` of (1.3) of the state ``rho`` (a blocked function), collective.

        With :attr:`lumped` the integrals use vertex quadrature: the discrete energy that the
        P1 upwind scheme dissipates.
        """
        from fem_crossdiff.compat import MPI, fem
        from fem_crossdiff.discretisation import forms

        if self._energy_form is None:
            self._energy_form = fem.form(forms.energy_form(rho, self.params,
                                                           lumped=self.lumped))
        comm = self.V.mesh.comm
        return comm.allreduce(fem.assemble_scalar(self._energy_form), op=MPI.SUM)

    def check_step(self, energy_before: float, energy_after: float) -> str | None:
        """Why an otherwise converged step must be rejected, or ``None`` to accept it."""
        return None

    def describe(self) -> str | None:
        """A line for the log about the discretisation on this mesh (``None``: nothing)."""
        return None
