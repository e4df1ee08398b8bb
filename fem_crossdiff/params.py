"""Validated, immutable parameters of the cross-diffusion models and of time stepping.

Validation happens in ``__post_init__``, before any mesh or solver exists, and depends only on
the arguments, so every MPI rank raises the same error at the same point (no rank is left
waiting in a collective call). Every error is a :class:`~fem_crossdiff.errors.ParameterError`
whose ``key`` is the field's name (``"dt"``, ``"a[1]"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fem_crossdiff.errors import ParameterError
from fem_crossdiff.laws import PowerLaw

#: Largest initial density accepted, ``|rho_k| <= MAX_DENSITY`` at every node: the model's
#: densities are O(1) (volume fractions under volume exclusion), and far larger values only
#: come from a mistake; they would overflow the energy's ``rho^m`` terms (1e6^m overflows a
#: double for m > 51) and the Newton system's scaling long before anything is learnt.
MAX_DENSITY = 1e6


def finite_number(name: str, value) -> float:
    """``float(value)``, or a :class:`ParameterError` keyed ``name`` if not a finite real number."""
    if isinstance(value, bool):
        raise ParameterError(name, value, f"{name} must be a real number, not a boolean")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ParameterError(name, value, f"{name} must be a real number") from None
    except OverflowError:  # an integer beyond the float range
        raise ParameterError(name, value, f"{name} must be finite") from None
    if not math.isfinite(v):
        raise ParameterError(name, value, f"{name} must be finite")
    return v


def _positive_tuple(name: str, values) -> tuple[float, ...]:
    if isinstance(values, (int, float)):
        values = (values,)
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ParameterError(name, values, f"{name} must be a sequence of positive numbers")
    vals = tuple(finite_number(f"{name}[{i}]", v) for i, v in enumerate(values))
    for i, v in enumerate(vals):
        if v <= 0.0:
            raise ParameterError(f"{name}[{i}]", v, f"{name}[{i}] must be > 0")
    return vals


@dataclass(frozen=True)
class ModelParams:
    """Coefficients of system (1.1): ``d_t rho_k = div(b_k rho_k grad P) + sigma Lap rho_k``.

    Attributes:
        a: Volume weights ``a_k > 0`` in ``P = (sum_l a_l rho_l)^(m-1)``, one per species.
        b: Mobilities ``b_k > 0``, one per species (same length as ``a``).
        m: Pressure exponent, real, ``m >= 2``.
        sigma: Linear diffusion ``sigma >= 0`` (``0`` is the porous-medium limit).
    """

    a: tuple[float, ...]
    b: tuple[float, ...]
    m: float = 2.0
    sigma: float = 0.0

    def __post_init__(self):
        a = _positive_tuple("a", self.a)
        b = _positive_tuple("b", self.b)
        if len(a) == 0:
            raise ParameterError("a", self.a, "a must hold at least one coefficient (one per "
                                 "species)")
        if len(b) != len(a):
            raise ParameterError("b", self.b, f"b must have one mobility per species "
                                 f"(len(a) = {len(a)})")
        m = finite_number("m", self.m)
        if m < 2.0:
            raise ParameterError("m", self.m, "m must be >= 2")
        sigma = finite_number("sigma", self.sigma)
        if sigma < 0.0:
            raise ParameterError("sigma", self.sigma, "sigma must be >= 0")
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "m", m)
        object.__setattr__(self, "sigma", sigma)

    @property
    def n(self) -> int:
        """Number of species."""
        return len(self.a)

    @property
    def law(self) -> PowerLaw:
        """The pressure law ``P = S^(m-1)`` (:class:`fem_crossdiff.laws.PowerLaw`)."""
        return PowerLaw(self.m)

    @property
    def equal_mobilities(self) -> bool:
        """True when all ``b_k`` coincide (the uniqueness setting of Theorem 1.8)."""
        return max(self.b) == min(self.b)


TIME_METHODS = ("ie", "bdf2")
#: Linear solvers: MUMPS in 1D and GMRES + GAMG otherwise (auto), or forced.
LINEAR_SOLVERS = ("auto", "iterative", "direct")
#: Time coupling of the nonlocal potential (:mod:`fem_crossdiff.models.nonlocal_system`).
COUPLINGS = ("linear", "implicit")
#: Treatments of edges whose total stiffness weight is negative (non-Delaunay meshes: about a
#: fifth of the edges of a gmsh tetrahedral ball, whatever gmsh's algorithm; upwind and muscl
#: schemes). All but "keep" keep every density >= 0. ``"voronoi"`` (the default) takes on
#: tetrahedra the weights of the circumcentric (Voronoi) dual instead of ``-K_ij``: >= 0 by
#: construction on Delaunay meshes (``meshes.ball(..., delaunay=True)``), negative on about 1%
#: of the edges of gmsh's default ball, whose fluxes are limited as in "front" (in 1D/2D the
#: dual weights are P1's). ``"front"`` keeps P1's weights and limits the fluxes of negative ones
#: only where the node the mass leaves holds less than a quarter of the other node's density,
#: i.e. next to vacuum fronts (:func:`fem_crossdiff.discretisation.edges.positivity_limiter`
#: with ``beta = 1/4``); ``"limit"`` limits them wherever the source is the emptier node (``beta
#: = 1``: positive, but an O(1) truncation error, 3D rate about 0.75); ``"drop"`` leaves those
#: edges out (positive but inconsistent); ``"keep"`` uses them as they are (consistent,
#: undershoots of several percent at fronts). ``docs/tets.md`` has the figures.
NEGATIVE_EDGE_MODES = ("voronoi", "front", "limit", "drop", "keep")


@dataclass(frozen=True)
class TimeParams:
    """Time stepping: final time, initial step, method and step control.

    Attributes:
        T: Final time, ``T >= 0``.
        dt: (Initial) step, ``dt > 0``.
        method: ``"ie"`` (implicit Euler) or ``"bdf2"`` (variable-step BDF2, started by one
            implicit Euler step).
        adaptive: Choose each step from an estimate of the local time-stepping error (see
            ``tol``; docs/step-control.md); failed steps are always retried with a smaller
            step and never accepted. ``False``: every step is ``dt`` (shorter only after a
            failure).
        dt_min: Smallest step before giving up (a RuntimeError).
        dt_max: Largest step (``None``: ``T``).
        grow: Largest growth factor of the step from one step to the next in adaptive mode
            (``>= 1``; at most 1.5 for BDF2, whose variable-step stability needs bounded ratios).
        shrink: Step reduction factor after a failed Newton solve or a refused state
            (``0 < shrink < 1``).
        tol: Adaptive mode: tolerance ``0 < tol < 1`` on the estimated local error of a step,
            relative to the solution (discrete l2 norm per species, the largest over species);
            a step whose estimate exceeds it is rejected and retried smaller.
    """

    T: float
    dt: float
    method: str = "ie"
    adaptive: bool = False
    dt_min: float = 1e-10
    dt_max: float | None = None
    grow: float = 1.25
    shrink: float = 0.5
    tol: float = 1e-3

    def __post_init__(self):
        T = finite_number("T", self.T)
        if T < 0.0:
            raise ParameterError("T", self.T, "T must be >= 0")
        dt = finite_number("dt", self.dt)
        if dt <= 0.0:
            raise ParameterError("dt", self.dt, "dt must be > 0")
        if self.method not in TIME_METHODS:
            raise ParameterError("method", self.method,
                                 f"method must be one of {', '.join(TIME_METHODS)}")
        dt_min = finite_number("dt_min", self.dt_min)
        if not 0.0 < dt_min <= dt:
            raise ParameterError("dt_min", self.dt_min, f"dt_min must satisfy 0 < dt_min <= dt "
                                 f"= {dt:g}")
        dt_max = None if self.dt_max is None else finite_number("dt_max", self.dt_max)
        if dt_max is not None and dt_max < dt:
            raise ParameterError("dt_max", self.dt_max, f"dt_max must be >= dt = {dt:g}")
        grow = finite_number("grow", self.grow)
        limit = 1.5 if self.method == "bdf2" else 10.0
        if not 1.0 <= grow <= limit:
            raise ParameterError("grow", self.grow, f"grow must be in [1, {limit:g}] for method "
                                 f"{self.method!r}")
        shrink = finite_number("shrink", self.shrink)
        if not 0.0 < shrink < 1.0:
            raise ParameterError("shrink", self.shrink, "shrink must be in (0, 1)")
        tol = finite_number("tol", self.tol)
        if not 0.0 < tol < 1.0:
            raise ParameterError("tol", self.tol, "tol must be in (0, 1) (a relative error)")
        values = dict(T=T, dt=dt, dt_min=dt_min, dt_max=dt_max, grow=grow, shrink=shrink,
                      tol=tol)
        for name, value in values.items():
            object.__setattr__(self, name, value)
