"""Time stepping of any model: implicit Euler / BDF2, Newton (PETSc SNES), MPI.

:class:`CrossDiffusionSolver` holds the state (``rho``, the two previous states, the time),
builds the model named in the registry (:mod:`fem_crossdiff.models`) on a blocked space with
one component per species, and the :class:`~fem_crossdiff.problem.CrossDiffusionProblem` of
one step. It names no model: what differs between discretisations is behind the model
interface. The time loop, step control and every output are :func:`fem_crossdiff.driver.run`
and its observers.

Every SNES solve's converged reason is checked. A step whose Newton iteration fails, whose
minimum density falls below ``-positivity_tol * max`` (possible with BDF2 or Galerkin), or that
the model refuses (:meth:`~fem_crossdiff.models.base.Model.check_step`) is rejected; nothing
from a rejected step is kept.
"""

from __future__ import annotations

import dataclasses
import itertools
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import ufl

from fem_crossdiff import failsafe
from fem_crossdiff.compat import MPI, PETSc, fem, interpolate_any, la
from fem_crossdiff.discretisation import forms
from fem_crossdiff.discretisation.spaces import species_spaces
from fem_crossdiff.errors import ParameterError, species_name
from fem_crossdiff.log import get_logger
from fem_crossdiff.models import select_model
from fem_crossdiff.params import (
    LINEAR_SOLVERS,
    MAX_DENSITY,
    ModelParams,
    TimeParams,
    finite_number,
)
from fem_crossdiff.problem import CrossDiffusionProblem
from fem_crossdiff.terms import check_family, with_family

__all__ = ["CrossDiffusionSolver", "StepInfo", "petsc_defaults", "SNES_REASONS", "SIGN_TOL",
           "MAX_DENSITY"]

#: Initial values down to ``-SIGN_TOL * max`` (per species) are round-off and set to 0.
SIGN_TOL = 1e-12
#: Newton's initial guess: the last accepted state, or its extrapolation (docs/step-cost.md).
PREDICTORS = ("previous", "extrapolate")

_ids = itertools.count()


def petsc_defaults(linear_solver: str = "iterative") -> dict:
    """Newton and Krylov defaults: GMRES + GAMG (scalable, no hypre needed) or MUMPS LU.

    GMRES is right-preconditioned so that its tolerance bounds the true linear residual: Newton
    steps are then accurate and the step-size test ``snes_stol`` (needed to stop at the
    round-off floor when very large steps make the absolute tolerance unreachable) cannot
    report convergence for an inexact step.
    """
    if linear_solver not in LINEAR_SOLVERS[1:]:
        raise ParameterError("linear_solver", linear_solver,
                             f"one of {', '.join(LINEAR_SOLVERS)}")
    opts = {
        "snes_type": "newtonls",
        "snes_linesearch_type": "bt",
        "snes_rtol": 1e-10,
        "snes_stol": 1e-12,
        "snes_max_it": 30,
    }
    if linear_solver == "direct":
        opts.update({"ksp_type": "preonly", "pc_type": "lu",
                     "pc_factor_mat_solver_type": "mumps"})
    else:
        # GAMG with ILU(1) (block Jacobi) smoothers: the upwind Jacobian is nonsymmetric and
        # the default Chebyshev/Jacobi smoothing stalls beyond ~3e4 unknowns; ILU(1) instead of
        # ILU(0) cut the growth of Krylov iterations from h to h/4 from x1.58 to x1.37 at
        # 1e6 unknowns, at no extra cost per step (benchmarks/bench_local.py). The
        # interpolation is reused across Newton steps (see ``step`` for when it is rebuilt),
        # and Eisenstat-Walker forcing avoids oversolving early Newton steps (the final
        # residual is still held to the SNES tolerances, so mass conservation is unaffected).
        opts.update({"ksp_type": "gmres", "ksp_pc_side": "right", "ksp_rtol": 1e-10,
                     "ksp_atol": 1e-15, "ksp_max_it": 500, "ksp_gmres_restart": 100,
                     "pc_type": "gamg", "mg_levels_ksp_type": "richardson",
                     "mg_levels_pc_type": "bjacobi", "mg_levels_sub_pc_type": "ilu",
                     "mg_levels_sub_pc_factor_levels": 1,
                     "pc_gamg_reuse_interpolation": True,
                     "snes_ksp_ew": None, "snes_ksp_ew_rtol0": 0.01})
    return opts


#: SNES converged reasons in words (negative: diverged), for messages.
SNES_REASONS = {
    -1: "the function evaluation failed", -2: "too many function evaluations",
    -3: "the linear solve failed", -4: "the residual became NaN or inf",
    -5: "Newton reached its iteration limit", -6: "the line search failed",
    -7: "the step became too small (inner solve)", -8: "the trust region collapsed",
    -100: "PETSc raised an error",
}


@dataclass
class StepInfo:
    """Outcome of one attempted step.

    Attributes:
        error: The step's estimated local error (:meth:`CrossDiffusionSolver.error_estimate`),
            None where the history is too short or the solve failed.
        order: The order of the method that took the step (1: implicit Euler, 2: BDF2).
    """

    accepted: bool
    newton_its: int
    krylov_its: int
    reason: int
    message: str = ""
    error: float | None = None
    order: int = 1


def _as_initial(data, k: int):
    if isinstance(data, (fem.Function, fem.Expression, ufl.core.expr.Expr)) or callable(data):
        return data
    try:
        return float(data)
    except (TypeError, ValueError):
        raise ParameterError(f"initial[{k}]", type(data).__name__,
                             f"initial data for {species_name(k)} must be a callable of x, a "
                             "number or an FE function") from None


class CrossDiffusionSolver:
    """Solver for ``d_t rho_k = div(b_k rho_k grad P(rho)) + sigma Lap rho_k`` with no-flux walls.

    Args:
        msh: A DOLFINx mesh (interval, triangle, tetrahedron; quadrilateral/hexahedron with
            ``scheme="galerkin"``).
        params: Model coefficients.
        degree: Lagrange degree (1 or 2; only models listing it in ``degrees`` accept 2).
        scheme: The scheme's registry name (:mod:`fem_crossdiff.models`) within the PDE: for the
            local system ``"muscl"`` (default: positivity preserving, limited second-order
            species fractions, P1 simplices), ``"upwind"`` (positivity preserving, first
            order), ``"afc"``, ``"galerkin"`` (P1/P2), or any registered model;
            ``nonlocal_params`` and ``potential`` select the nonlocal and given-potential
            PDEs, whose scheme is ``"upwind"`` (the default).
        linear_solver: ``"iterative"`` (GMRES + GAMG), ``"direct"`` (MUMPS) or ``"auto"``
            (direct on intervals, where it is optimal and AMG is weak; iterative otherwise).
        petsc_options: Extra PETSc options, overriding the defaults.
        source: Optional ``source(x, t) -> [f_1, ..., f_n]`` of UFL expressions (for
            manufactured solutions; ``t`` is a ``fem.Constant`` holding the new time).
        positivity_tol: Reject steps with ``min rho_k < -positivity_tol * max rho_k``
            (``None`` disables the check).
        potential: Optional ``potential(rho_local) -> nodal array`` (owned + ghost values),
            evaluated once per step at the previous state: the species are then transported by
            upwind fluxes ``b_k rho_k grad potential`` (model ``"potential"``).
        nonlocal_params: Solve the nonlocal model (1.5) (model ``"nonlocal"``).
        negative_edges: Upwind models on non-Delaunay meshes, see
            :func:`fem_crossdiff.discretisation.edges.edge_weights`.
        options: The scheme's options (its entry's dataclass, e.g.
            :class:`~fem_crossdiff.models.muscl.MusclOptions`, or a mapping of its fields as in
            a study file's ``[solver.<scheme>]``; default: its defaults).
        family: The volume-exclusion family (:class:`~fem_crossdiff.family.Family`:
            per-species ``sigma_k``, potentials, interaction kernels, growth laws), added to
            a positive lumped P1 edge scheme as the terms of :mod:`fem_crossdiff.terms`; the
            model then diffuses with ``min_k sigma_k`` (``params.sigma`` must be 0 or that).
        predictor: Newton's initial guess (docs/step-cost.md): ``"previous"`` (default, the
            last accepted state) or ``"extrapolate"`` (the line through the last two accepted
            states at the new time, clipped at 0 and scaled per species to the last state's
            mass; from the last state when the history is too short, and again from the last
            state when Newton fails from the prediction). The converged solution is the
            same to the Newton tolerance.
        newton_tol_ratio: With an error tolerance (``step(..., error_tol=tol)``, the adaptive
            driver), Newton also stops once an update is below ``newton_tol_ratio * tol``
            relative to the iterate (PETSc's ``snes_stol`` for that step), and the species
            are then scaled to the masses the exact solution of the step has, so mass stays
            conserved to round-off. ``None`` (default): only the fixed residual tolerance.
            ``0 < newton_tol_ratio <= 1``.
        option_fields: Single fields of the options, replacing those of ``options`` (e.g.
            ``limiter=SmoothSensor(width=(1.0, 0.3))`` with ``"muscl"``).

    Attributes:
        scheme: The scheme in use; ``pde``: its PDE; ``options``: its options (validated).
    """

    def __init__(self, msh, params: ModelParams, degree: int = 1, scheme: str | None = None,
                 linear_solver: str = "auto", petsc_options: dict | None = None,
                 source: Callable | None = None, positivity_tol: float | None = 1e-10,
                 potential: Callable | None = None, nonlocal_params=None,
                 negative_edges: str = "voronoi", options=None, family=None,
                 predictor: str = "previous", newton_tol_ratio: float | None = None,
                 **option_fields):
        if not isinstance(params, ModelParams):
            raise TypeError("params must be a ModelParams")
        if predictor not in PREDICTORS:
            raise ParameterError("predictor", predictor, f"one of {', '.join(PREDICTORS)}")
        if newton_tol_ratio is not None:
            ratio = finite_number("newton_tol_ratio", newton_tol_ratio)
            if not 0.0 < ratio <= 1.0:
                raise ParameterError("newton_tol_ratio", newton_tol_ratio,
                                     "0 < newton_tol_ratio <= 1 (or None)")
            newton_tol_ratio = ratio
        self.predictor, self.newton_tol_ratio = predictor, newton_tol_ratio
        #: Steps whose Newton iteration started from the extrapolation (``"extrapolate"``).
        self.predicted_starts = 0
        found, kwargs = select_model(scheme, nonlocal_params=nonlocal_params,
                                     potential=potential, negative_edges=negative_edges,
                                     options=options, **option_fields)
        cls = found.cls
        if degree not in found.degrees:
            # no scheme named: say which scheme takes the degree (P2 is "galerkin" only)
            hint = ("" if scheme is not None else
                    f" (the default scheme; pass scheme='galerkin' for degree={degree})")
            raise ParameterError("degree", degree, f"scheme {found.scheme!r} supports degree="
                                 + " or ".join(map(str, found.degrees)) + hint)
        if linear_solver not in LINEAR_SOLVERS:
            raise ParameterError("linear_solver", linear_solver,
                                 f"one of {', '.join(LINEAR_SOLVERS)}")
        if family is not None:  # the model diffuses with min sigma_k, a term the rest
            check_family(family, params.n, found, degree, params.sigma)
            params = dataclasses.replace(params, sigma=min(family.sigma))
        self.family = family
        self.msh, self.params, self.degree = msh, params, degree
        self.scheme, self.pde = found.scheme, found.pde
        self.options = kwargs.get("options") or found.make_options()
        self.comm = msh.comm
        n = params.n
        self.V, self.V0, self.species_dofs = species_spaces(msh, degree, n)
        self.rho = fem.Function(self.V, name="rho")
        self.history = [fem.Function(self.V, name="rho_n"), fem.Function(self.V, name="rho_nm1")]
        self.c = [fem.Constant(msh, PETSc.ScalarType(0.0)) for _ in range(3)]
        self.t = 0.0
        self.t_const = fem.Constant(msh, PETSc.ScalarType(0.0))
        #: Last accepted step (None: the next step is a start-up implicit-Euler step).
        self.dt_prev: float | None = None
        #: The step before it and the state before ``history[1]`` (all dofs), for the error
        #: estimate of BDF2 (None until two steps were accepted).
        self.dt_prev2: float | None = None
        self.older: np.ndarray | None = None
        #: The step size the driver tries next (after growth), for checkpoints.
        self.next_dt: float | None = None
        self.positivity_tol = positivity_tol
        if linear_solver == "auto":
            linear_solver = "direct" if msh.topology.dim == 1 else "iterative"
        self.model = cls(self.V, params, **_accepted(cls, kwargs, V0=self.V0,
                                                     linear_solver=linear_solver))
        self.model = with_family(self.model, family, self.V0, negative_edges)
        self.lumped = self.model.lumped
        v = ufl.TestFunction(self.V)
        src = None if source is None else source(ufl.SpatialCoordinate(msh), self.t_const)
        if src is not None and len(src) != n:
            raise ParameterError("source", f"{len(src)} expressions",
                                 f"one expression per species ({n})")
        time_form = forms.time_residual(self.rho, self.history, self.c, v, n, self.lumped, src)
        source_form = None if src is None else forms.source_term(src, v, self.rho)
        described = self.model.describe()
        if described:
            get_logger(self.comm).info("%s", described)
        opts = petsc_defaults(linear_solver)
        opts.update(getattr(self.model, "petsc_overrides", {}))
        self.prefix = f"crossdiff_{next(_ids)}_"
        # lumped (or row-summed) mass of every dof: the scale of the Newton tolerance, and the
        # constant time-term diagonal of lumped models
        dxm = ufl.dx(metadata=forms.VERTEX) if self.lumped else ufl.dx
        mvec = fem.assemble_vector(fem.form(ufl.TestFunction(self.V0) * dxm))
        mvec.scatter_reverse(la.InsertMode.add)
        self._mvec = np.repeat(mvec.array[: self.V0.dofmap.index_map.size_local], n)
        if self.model.matrix_free and opts["ksp_type"] == "preonly":
            # the factorised matrix is only the preconditioner: a Krylov method applies J
            opts.update({"ksp_type": "gmres", "ksp_pc_side": "right", "ksp_rtol": 1e-10})
        opts.update(petsc_options or {})
        if opts.get("pc_type") != "gamg":  # a user override: drop the multigrid settings
            opts = {k: v for k, v in opts.items()
                    if not k.startswith(("mg_levels_", "pc_gamg_"))}
        self._auto_atol = "snes_atol" not in opts
        self._stol = float(opts.get("snes_stol", 1e-8))  # PETSc's default when not set
        # GAMG prolongators kept across Newton steps go stale when the state changes a lot
        # (a large first step from rough data made GMRES stagnate at 1.3e5 unknowns): a step
        # whose linear solve fails is retried once with the hierarchy rebuilt at every Newton
        # step, and it is rebuilt before the next step when Krylov iterations per Newton step
        # more than double against the last rebuild
        self._reuse_pc = opts.get("pc_type") == "gamg" and str(
            opts.get("pc_gamg_reuse_interpolation", "false")).lower() in ("true", "1", "yes")
        self.pc_stale, self._pc_baseline = False, None
        self.mass_tol = 1e-13
        self.problem = CrossDiffusionProblem(
            time_form, self.rho, self.model, mass=self._mvec if self.lumped else None,
            history=self.history, source_form=source_form, petsc_options_prefix=self.prefix,
            petsc_options=opts)
        # options read lazily (multigrid levels) stay in PETSc's global database: remove this
        # solver's options with it, so nothing leaks or is reported as unused at exit
        weakref.finalize(self, _clear_options, self.prefix)
        self.snes = self.problem.solver
        self._mass_forms = [fem.form(self.rho[k] * dxm) for k in range(n)]

    # ----------------------------------------------------------------- state
    def set_initial(self, data: Sequence) -> None:
        """Set ``rho_k(0)`` from callables of x, numbers, FE functions or UFL expressions.

        Raises:
            ParameterError: wrong number of species, negative, NaN/inf or absurd values
                (``|rho| >`` :data:`MAX_DENSITY`), or zero mass, keyed ``initial[k]`` (the
                same verdict on every rank: the checks are reduced over the communicator).
        """
        n = self.params.n
        if isinstance(data, (str, bytes)) or not isinstance(data, Sequence) or len(data) != n:
            got = len(data) if isinstance(data, Sequence) else type(data).__name__
            raise ParameterError("initial", got,
                                 f"initial data must give one entry per species ({n})")
        data = [_as_initial(d, k) for k, d in enumerate(data)]
        for k, d in enumerate(data):
            fk = fem.Function(self.V0)
            interpolate_any(fk, d)
            self.rho.x.array[self.species_dofs[k]] = fk.x.array
        self.rho.x.scatter_forward()
        local = self.rho.x.array[: self._nowned() * n].reshape(-1, n)
        bad = np.zeros(n, dtype=np.int64)
        big = np.zeros(n)
        with np.errstate(invalid="ignore"):
            bad[:] = np.count_nonzero(~np.isfinite(local), axis=0)
            finite = np.where(np.isfinite(local), np.abs(local), 0.0)
            if finite.size:
                big[:] = finite.max(axis=0)
        self.comm.Allreduce(MPI.IN_PLACE, bad, op=MPI.SUM)
        self.comm.Allreduce(MPI.IN_PLACE, big, op=MPI.MAX)
        for k in range(n):  # the same verdict on every rank: reduced values
            if bad[k]:
                raise ParameterError(f"initial[{k}]", f"{int(bad[k])} NaN/inf nodal values",
                                     f"initial data of {species_name(k)} must be finite "
                                     "(no NaN/inf)")
            if big[k] > MAX_DENSITY:
                raise ParameterError(f"initial[{k}]", float(big[k]),
                                     f"initial data of {species_name(k)} reaches |rho| = "
                                     f"{big[k]:.3g}; densities must be <= {MAX_DENSITY:g} "
                                     "at every node (rescale the data)")
        mins, maxs = self.extrema()
        for k in range(n):
            # interpolated data that is zero up to round-off (1 - x**2 - y**2 on the unit
            # disk: -2.2e-16) is zero; anything below that is refused
            if mins[k] < -SIGN_TOL * max(maxs[k], 0.0):
                raise ParameterError(f"initial[{k}]", float(mins[k]),
                                     f"initial data of {species_name(k)} is negative (min "
                                     f"{mins[k]:.3e}, max {maxs[k]:.3e}); densities must be "
                                     f">= 0 (values down to -{SIGN_TOL:g} * max are taken "
                                     "as round-off and set to 0)")
            if mins[k] < 0:
                vals = self.rho.x.array[self.species_dofs[k]]
                self.rho.x.array[self.species_dofs[k]] = np.maximum(vals, 0.0)
                get_logger(self.comm).debug(
                    "initial data of %s: round-off negatives (min %.3e, max %.3e) "
                    "set to 0", species_name(k), mins[k], maxs[k])
        masses = self.masses()
        for k in range(n):
            if not masses[k] > 0:
                raise ParameterError(f"initial[{k}]", float(masses[k]),
                                     f"initial data of {species_name(k)} has zero mass")
        for h in self.history:
            h.x.array[:] = self.rho.x.array
        self.t = 0.0
        self.dt_prev = self.dt_prev2 = self.older = None

    def _nowned(self) -> int:
        return self.V.dofmap.index_map.size_local

    def species(self, k: int) -> fem.Function:
        """A copy of species ``k`` as a scalar function (for output and comparisons)."""
        f = fem.Function(self.V0, name=f"rho_{k + 1}")
        f.x.array[:] = self.rho.x.array[self.species_dofs[k]]
        return f

    def masses(self) -> np.ndarray:
        """``int rho_k`` for every species (lumped quadrature for lumped models)."""
        return np.array([self.comm.allreduce(fem.assemble_scalar(f), op=MPI.SUM)
                         for f in self._mass_forms])

    def energy(self) -> float:
        """The model's discrete energy (``A`` of (1.3), ``A_eps`` of (1.4) for (1.5))."""
        return self.model.energy(self.rho)

    def extrema(self) -> tuple[np.ndarray, np.ndarray]:
        """Global minimum and maximum of every species (nodal values)."""
        n = self.params.n
        local = self.rho.x.array[: self._nowned() * n].reshape(-1, n)
        empty = local.shape[0] == 0
        mn = np.full(n, np.inf) if empty else local.min(axis=0)
        mx = np.full(n, -np.inf) if empty else local.max(axis=0)
        self.comm.Allreduce(MPI.IN_PLACE, mn, op=MPI.MIN)
        self.comm.Allreduce(MPI.IN_PLACE, mx, op=MPI.MAX)
        return mn, mx

    def potential_field(self) -> fem.Function:
        """The driving potential ``g`` of the current state as a P1 function (nonlocal model)."""
        values = self.model.driving_potential(self.rho.x.array.reshape(-1, self.params.n))
        if values is None:
            raise ParameterError("potential_field", self.scheme,
                                 "a model driven by a potential (nonlocal_params)")
        g = fem.Function(self.V0, name="g")
        g.x.array[:] = values
        return g

    # ----------------------------------------------------------------- stepping
    def _set_coefficients(self, dt: float, method: str) -> None:
        if method == "bdf2" and self.dt_prev is not None:
            w = dt / self.dt_prev
            c0, c1, c2 = (1 + 2 * w) / (1 + w), -(1 + w), w * w / (1 + w)
        else:
            c0, c1, c2 = 1.0, -1.0, 0.0
        for const, val in zip(self.c, (c0, c1, c2)):
            const.value = val / dt
        self.problem.set_time_coefficients(c0 / dt, c1 / dt, c2 / dt)

    def step(self, dt: float, method: str = "ie", error_tol: float | None = None) -> StepInfo:
        """Attempt one step of size ``dt``; on failure the state is left unchanged.

        Args:
            dt: Step size.
            method: ``"ie"`` or ``"bdf2"``.
            error_tol: Reject the step when its estimated local error exceeds this (None:
                the estimate is reported, never used to reject).

        Returns:
            What happened: accepted or not, Newton and Krylov iterations, SNES reason, the
            error estimate.
        """
        order = 2 if method == "bdf2" and self.dt_prev is not None else 1
        self._set_coefficients(dt, method)
        self.t_const.value = self.t + dt
        if self._auto_atol:
            # Mass drift per step is dt * sum_i R_i <= dt sqrt(N) |R|; this absolute
            # tolerance keeps it near mass_tol * mass (relative) per step at any dt and h.
            owned = self.history[0].x.array[: self._mvec.size]
            scale = np.sqrt(self.comm.allreduce(float(np.sum((self._mvec * owned) ** 2)),
                                                op=MPI.SUM))
            self.snes.setTolerances(atol=max(self.mass_tol * scale / dt, 1e-300))
        # inexact Newton: the iteration error need not be far below the time error it is
        # accepted with (the masses are restored after, see _restore_masses)
        inexact = self.newton_tol_ratio is not None and error_tol is not None
        self.snes.setTolerances(stol=self.newton_tol_ratio * error_tol if inexact
                                else self._stol)
        n = self.params.n
        self.model.begin_step(self.history[0].x.array.reshape(-1, n))
        guard = self.model.energy_guard
        e_before = self.energy() if guard else None
        fresh = self.pc_stale or self._pc_baseline is None
        if self.pc_stale:
            self.rebuild_pc()
        start = self._prediction(dt) if self.predictor == "extrapolate" else None
        reason, msg = self._solve() if start is None else self._solve(start)
        its, kits = self.snes.getIterationNumber(), self.snes.getLinearSolveIterations()
        if reason == PETSc.SNES.ConvergedReason.DIVERGED_LINEAR_SOLVE and self._reuse_pc:
            self.problem.multigrid.every_newton = True
            try:
                reason, msg = self._solve()  # from the last state, whatever the start was
            finally:
                self.problem.multigrid.every_newton = False
            its += self.snes.getIterationNumber()
            kits += self.snes.getLinearSolveIterations()
            self.pc_stale = True  # the next step starts from a hierarchy of its own state
        elif reason <= 0 and start is not None:  # the predicted start failed: the safe one
            reason, msg = self._solve()
            its += self.snes.getIterationNumber()
            kits += self.snes.getLinearSolveIterations()
        elif self._reuse_pc and reason > 0:
            per_newton = kits / max(self.snes.getIterationNumber(), 1)
            if fresh:
                self._pc_baseline = per_newton
            elif per_newton > 2.0 * self._pc_baseline + 2.0:
                self.pc_stale = True
        ok = reason > 0 and self.comm.allreduce(
            bool(np.all(np.isfinite(self.rho.x.array))), op=MPI.LAND)
        if ok and inexact:
            self._restore_masses()
        if not ok and not msg:
            msg = f"Newton failed: {SNES_REASONS.get(reason, 'diverged')} (SNES reason {reason})"
        if ok and guard:
            msg = self.model.check_step(e_before, self.energy())
            ok = msg is None
        if ok and self.positivity_tol is not None:
            mn, mx = self.extrema()
            if np.any(mn < -self.positivity_tol * np.maximum(mx, 1e-300)):
                ok, msg = False, f"negative density {mn.min():.3e}"
        err = self.error_estimate(dt, method) if ok else None
        if ok and error_tol is not None and err is not None and err > error_tol:
            ok, msg = False, (f"estimated local error {err:.3e} exceeds the tolerance "
                              f"{error_tol:.3e}")
        if not ok:
            self.rho.x.array[:] = self.history[0].x.array
            return StepInfo(False, its, kits, reason, msg or "", err, order)
        if self.dt_prev is not None:  # history[1] is a computed state: keep it for BDF2
            self.older = self.history[1].x.array.copy()
        self.dt_prev2 = self.dt_prev
        self.history[1].x.array[:] = self.history[0].x.array
        self.history[0].x.array[:] = self.rho.x.array
        self.t += dt
        self.dt_prev = dt
        return StepInfo(True, its, kits, reason, error=err, order=order)

    def error_estimate(self, dt: float, method: str = "ie") -> float | None:
        """Estimated local error of the step of size ``dt`` just solved into ``rho`` (collective).

        Milne's device: the solution is compared with the polynomial extrapolation of the
        previous states, whose error has the same order and a known ratio to the method's.
        For implicit Euler (order 1) the predictor is linear through ``y_n, y_{n-1}`` and the
        error is ``dt / (2 dt + h_1)`` of the difference; for variable-step BDF2 (order 2) it
        is quadratic through ``y_n, y_{n-1}, y_{n-2}`` and the error is ``A / (A + B)`` of it,
        ``A = dt (1 + w) / (1 + 2 w)``, ``w = dt / h_1``, ``B = dt + h_1 + h_2`` (``h_1, h_2``
        the previous steps); both reduce to the classic constants 1/3 and 2/11 at constant
        steps. The norm is the discrete l2 norm of each species relative to that of the new
        solution, the largest over species: sums over owned dofs, reduced over all ranks, so
        the estimate does not depend on the partition beyond round-off.

        Returns:
            The estimate, or None where the history is too short (the first step; the second
            with BDF2, which needs three previous states).
        """
        h1 = self.dt_prev
        n, nown = self.params.n, self._nowned()
        if h1 is None:
            return None
        y = self.rho.x.array[: nown * n]
        y0 = self.history[0].x.array[: nown * n]
        y1 = self.history[1].x.array[: nown * n]
        if method == "bdf2":
            h2 = self.dt_prev2
            if h2 is None or self.older is None:
                return None
            y2 = self.older[: nown * n]
            pred = ((dt + h1) * (dt + h1 + h2) / (h1 * (h1 + h2)) * y0
                    - dt * (dt + h1 + h2) / (h1 * h2) * y1
                    + dt * (dt + h1) / ((h1 + h2) * h2) * y2)
            w = dt / h1
            a = dt * (1 + w) / (1 + 2 * w)
            factor = a / (a + dt + h1 + h2)
        else:
            pred = y0 + (dt / h1) * (y0 - y1)
            factor = dt / (2 * dt + h1)
        sums = np.concatenate([np.sum(((y - pred) * factor).reshape(-1, n) ** 2, axis=0),
                               np.sum(y.reshape(-1, n) ** 2, axis=0)])
        self.comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
        err, size = np.sqrt(sums[:n]), np.sqrt(sums[n:])
        return float(np.max(err / np.maximum(size, 1e-300)))

    def _prediction(self, dt: float) -> np.ndarray | None:
        """Newton's start for a step of size ``dt``: the extrapolated last two states (all dofs).

        The line through ``y_n`` and ``y_{n-1}`` at ``t + dt`` is clipped at 0 (a start with
        negative densities would leave the positive cone the schemes' fluxes are built for)
        and each species is scaled back to the mass of ``y_n``, which the clipping raised:
        the step's mass balance then holds from the first iterate on. None when only one
        state is known.
        """
        if self.dt_prev is None:
            return None
        y0, y1 = self.history[0].x.array, self.history[1].x.array
        pred = y0 + (dt / self.dt_prev) * (y0 - y1)
        np.maximum(pred, 0.0, out=pred)
        n, k = self.params.n, self._mvec.size
        sums = np.concatenate([(self._mvec * pred[:k]).reshape(-1, n).sum(axis=0),
                               (self._mvec * y0[:k]).reshape(-1, n).sum(axis=0)])
        self.comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
        for s in range(n):
            if sums[s] > 0.0:
                pred[self.species_dofs[s]] *= sums[n + s] / sums[s]
        # a stiff transient (a large step right after rough data) can make the line a worse
        # start than the last state: measured, the first extrapolated step at dt D / h^2 ~ 30
        # started at 4.5 times the residual and took two more Newton iterations. The start
        # with the smaller residual is taken (two residual evaluations, a fraction of one
        # Newton iteration).
        try:
            if not self._residual_norm(pred) < self._residual_norm(y0):  # NaN: not taken
                return None
        except PETSc.Error:  # a model that refuses the state: the safe start, as on failure
            return None
        self.predicted_starts += 1
        return pred

    def _residual_norm(self, state: np.ndarray) -> float:
        """``|F(state)|_2`` of the step being solved (collective; ``rho`` is overwritten)."""
        self.rho.x.array[:] = state
        x, f = self.problem.x, self.problem.b
        fem.petsc.assign(self.rho, x)
        self.snes.computeFunction(x, f)
        return f.norm()

    def _restore_masses(self) -> None:
        """Scale each species to the mass that the step's exact solution has (collective).

        The residual's sum over a species' dofs is affine in the state with slope ``c0 m``
        (``c0`` the BDF coefficient over ``dt``, ``m`` the row sums of the mass matrix): the
        fluxes cancel edge by edge. It vanishes at the exact solution; after an inexact Newton
        stop it is ``d_k``, and scaling species ``k`` by ``1 - d_k / (c0 M_k)`` (``M_k`` its
        mass) makes it vanish again, a change of the order of the Newton tolerance that keeps
        the sign of every value.
        """
        n, k = self.params.n, self._mvec.size
        res = self.snes.getFunction()[0].array_r[:k]  # the residual at the final iterate
        rho = self.rho.x.array
        sums = np.concatenate([res.reshape(-1, n).sum(axis=0),
                               (self._mvec * rho[:k]).reshape(-1, n).sum(axis=0)])
        self.comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
        c0 = float(self.c[0].value)
        for s in range(n):
            if sums[n + s] > 0.0:
                rho[self.species_dofs[s]] *= 1.0 - sums[s] / (c0 * sums[n + s])

    def _solve(self, start: np.ndarray | None = None) -> tuple[int, str]:
        """One SNES solve from ``start`` (None: the last state); the reason and a message."""
        # initial guess: the prediction, or the last accepted state
        self.rho.x.array[:] = self.history[0].x.array if start is None else start
        try:
            with failsafe.deferred_interrupts():  # Ctrl-C is not a failed Newton step
                self.problem.solve()
        except PETSc.Error as err:  # e.g. a zero pivot in MUMPS: treat as a failed step
            if failsafe.interrupt_pending():  # a second signal raised inside a callback
                self.rho.x.array[:] = self.history[0].x.array
                raise failsafe.Interrupted(failsafe.interrupt_pending()) from None
            return -100, f"PETSc error: {err}"
        except KeyboardInterrupt:  # the step is not taken: the state stays the last accepted
            self.rho.x.array[:] = self.history[0].x.array
            raise
        return self.snes.getConvergedReason(), ""

    def rebuild_pc(self) -> None:
        """Drop the multigrid hierarchy: the next linear solve builds it from scratch."""
        self.problem.multigrid.rebuild(self.snes)
        self.pc_stale = False

    def run(self, time_params: TimeParams, csv_path=None, vtx_path=None, output_every: int = 1,
            progress: bool = True, callback: Callable | None = None,
            observers: Sequence = ()) -> list[dict]:
        """Integrate to ``time_params.T`` (see :func:`fem_crossdiff.driver.run`).

        Args:
            time_params: Final time, step and method.
            csv_path: Diagnostics CSV (rank 0 writes it; one row per accepted step plus t = 0).
            vtx_path: VTX folder (``.bp``) for the species fields, every ``output_every`` steps
                and at the final time.
            output_every: Field output cadence in accepted steps.
            progress: Log progress lines on rank 0.
            callback: ``callback(solver, row)`` after every accepted step.
            observers: Further observers (:mod:`fem_crossdiff.observers`).

        Returns:
            The diagnostics rows.
        """
        from fem_crossdiff import driver
        from fem_crossdiff import observers as obs

        extra = list(observers)
        if csv_path is not None:
            extra.append(obs.CsvObserver(csv_path))
        if vtx_path is not None:
            extra.append(obs.FieldObserver(vtx_path, "vtx", every=output_every))
        if callback is not None:
            extra.append(obs.CallbackObserver(callback))
        return driver.run(self, time_params, extra, progress=progress)


def _accepted(cls, options: dict, **context) -> dict:
    """The options and context values that ``cls``'s constructor takes."""
    import inspect

    names = inspect.signature(cls.__init__).parameters
    out = dict(options)
    out.update({k: v for k, v in context.items() if k in names})
    return out


def _clear_options(prefix: str) -> None:
    opts = PETSc.Options()
    for name in list(opts.getAll()):
        if name.startswith(prefix):
            opts.delValue(name)
