"""Time stepper for the local system (1.1): implicit Euler / BDF2, Newton (PETSc SNES), MPI.

One :class:`CrossDiffusionSolver` owns the blocked space (one component per species), the
DOLFINx :class:`~dolfinx.fem.petsc.NonlinearProblem` and the time history. The residual is
built by the pure functions of :mod:`fem_crossdiff.forms`; with ``scheme="upwind"`` (the
default, P1 simplices) the transport and diffusion terms are the positivity-preserving edge
fluxes of :mod:`fem_crossdiff.upwind`, added to the assembled form inside the SNES callbacks.

Every SNES solve's converged reason is checked. A step whose Newton iteration fails, or whose
minimum density falls below ``-positivity_tol * max`` (possible with BDF2 or Galerkin), is
rejected and retried with a smaller step; nothing from a rejected step is kept.
"""

from __future__ import annotations

import csv
import itertools
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ufl

from fem_crossdiff import forms
from fem_crossdiff.compat import MPI, PETSc, dolfinx, fem, interpolate_any, io
from fem_crossdiff.log import get_logger
from fem_crossdiff.params import (
    LINEAR_SOLVERS,
    NEGATIVE_EDGE_MODES,
    SCHEMES,
    ModelParams,
    TimeParams,
)
from fem_crossdiff.upwind import UpwindFlux

_ids = itertools.count()


def petsc_defaults(linear_solver: str = "iterative") -> dict:
    """Newton and Krylov defaults: GMRES + GAMG (scalable, no hypre needed) or MUMPS LU.

    GMRES is right-preconditioned so that its tolerance bounds the true linear residual: Newton
    steps are then accurate and the step-size test ``snes_stol`` (needed to stop at the
    round-off floor when very large steps make the absolute tolerance unreachable) cannot
    report convergence for an inexact step.
    """
    if linear_solver not in LINEAR_SOLVERS[1:]:
        raise ValueError(f"linear_solver must be one of {LINEAR_SOLVERS}, got {linear_solver!r}")
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


class _NonlinearProblem(fem.petsc.NonlinearProblem):
    """DOLFINx's ``NonlinearProblem`` whose PETSc objects are released, not destroyed, when freed.

    DOLFINx's ``__del__`` destroys the SNES and matrices explicitly, and destroying them is
    collective (MUMPS finalises with a collective call): when the ranks free a solver at
    different moments (one rank still holds it in a traceback, a plot or a reference cycle) the
    run deadlocks. Left to petsc4py, objects on a parallel communicator go to PETSc's garbage
    list instead, and are destroyed collectively by ``PETSc.garbage_cleanup(comm)``, which every
    :class:`CrossDiffusionSolver` calls when it is created.
    """

    def __del__(self):
        pass


def _weak(method: Callable) -> Callable:
    """``method`` called through a weak reference to its object (``None`` once it is gone).

    PETSc keeps callbacks on the C side, out of reach of Python's cycle collector: a callback
    holding the solver would keep it, its mesh and their duplicated MPI communicators alive
    until MPICH runs out of communicator context ids (exit 15 in a long MPI test run).
    """
    ref = weakref.WeakMethod(method)

    def call(*args):
        bound = ref()
        return None if bound is None else bound(*args)

    return call


@dataclass
class StepInfo:
    """Outcome of one attempted step."""

    accepted: bool
    newton_its: int
    krylov_its: int
    reason: int
    message: str = ""


def _as_initial(data, k: int):
    if isinstance(data, (fem.Function, fem.Expression, ufl.core.expr.Expr)) or callable(data):
        return data
    try:
        return float(data)
    except (TypeError, ValueError):
        raise ValueError(
            f"initial data for species {k} must be a callable of x, a number or an FE "
            f"function, got {type(data).__name__}"
        ) from None


class CrossDiffusionSolver:
    """Solver for ``d_t rho_k = div(b_k rho_k grad P(rho)) + sigma Lap rho_k`` with no-flux walls.

    Args:
        msh: A DOLFINx mesh (interval, triangle, tetrahedron; quadrilateral/hexahedron with
            ``scheme="galerkin"``).
        params: Model coefficients.
        degree: Lagrange degree (1 or 2; the upwind scheme needs 1).
        scheme: ``"upwind"`` (positivity preserving, P1 simplices) or ``"galerkin"``.
        linear_solver: ``"iterative"`` (GMRES + GAMG), ``"direct"`` (MUMPS) or ``"auto"``
            (direct on intervals, where it is optimal and AMG is weak; iterative otherwise).
        petsc_options: Extra PETSc options, overriding the defaults.
        source: Optional ``source(x, t) -> [f_1, ..., f_n]`` of UFL expressions (for
            manufactured solutions; ``t`` is a ``fem.Constant`` holding the new time).
        positivity_tol: Reject steps with ``min rho_k < -positivity_tol * max rho_k``
            (``None`` disables the check).
        potential: Optional callable ``potential(rho_local) -> nodal array`` (owned + ghost
            values) of a driving potential, evaluated once per step at the previous state: the
            species are then transported by plain upwind fluxes ``b_k rho_k grad potential``
            (a linear Fokker-Planck step) instead of the local pressure.
        nonlocal_params: Solve the nonlocal model (1.5) instead of (1.1), see
            :mod:`fem_crossdiff.nonlocal_`.
        negative_edges: Upwind scheme on non-Delaunay meshes (typical for tetrahedra),
            edges with negative stiffness weight: ``"limit"`` (default) keeps their
            consistent weights and limits their fluxes next to vacuum, which keeps
            positivity (:func:`fem_crossdiff.upwind.positivity_limiter`); ``"drop"`` leaves
            them out (positive, but a consistency error that does not vanish under
            refinement); ``"keep"`` uses them unchanged (consistent, positivity not
            guaranteed: the positivity check rejects steps instead).
    """

    def __init__(self, msh, params: ModelParams, degree: int = 1, scheme: str = "upwind",
                 linear_solver: str = "auto", petsc_options: dict | None = None,
                 source: Callable | None = None, positivity_tol: float | None = 1e-10,
                 potential: Callable | None = None, nonlocal_params=None,
                 negative_edges: str = "limit"):
        if not isinstance(params, ModelParams):
            raise TypeError("params must be a ModelParams")
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        if degree not in (1, 2):
            raise ValueError(f"degree must be 1 or 2, got {degree!r}")
        if negative_edges not in NEGATIVE_EDGE_MODES:
            raise ValueError(f"negative_edges must be one of {NEGATIVE_EDGE_MODES}, "
                             f"got {negative_edges!r}")
        if scheme == "upwind" and degree != 1:
            raise ValueError("scheme='upwind' needs degree=1 (use scheme='galerkin' for P2)")
        if (potential is not None or nonlocal_params is not None) and scheme != "upwind":
            raise ValueError("a potential or the nonlocal model needs scheme='upwind'")
        if potential is not None and nonlocal_params is not None:
            raise ValueError("give either potential or nonlocal_params, not both")
        self.msh, self.params, self.degree, self.scheme = msh, params, degree, scheme
        self.comm = msh.comm
        n = params.n
        self.V = fem.functionspace(msh, ("Lagrange", degree, (n,)))
        self.rho = fem.Function(self.V, name="rho")
        # scalar space of one species and the dofs of each species in V (collapsed once)
        if n == 1:
            self.V0 = fem.functionspace(msh, ("Lagrange", degree))
            self._sub_dofs = [np.arange(self.V0.dofmap.index_map.size_local
                                        + self.V0.dofmap.index_map.num_ghosts, dtype=np.int32)]
        else:
            subs = [self.V.sub(k).collapse() for k in range(n)]
            self.V0 = subs[0][0]
            self._sub_dofs = [np.asarray(d, dtype=np.int32).ravel() for _, d in subs]
        self.history = [fem.Function(self.V, name="rho_n"), fem.Function(self.V, name="rho_nm1")]
        self.c = [fem.Constant(msh, PETSc.ScalarType(0.0)) for _ in range(3)]
        self.t = 0.0
        self.t_const = fem.Constant(msh, PETSc.ScalarType(0.0))
        self._dt_prev: float | None = None  # None: the next step is a start-up (IE) step
        #: The step size :meth:`run` would try next (after growth), for checkpoints.
        self.next_dt: float | None = None
        self.positivity_tol = positivity_tol
        self.nonlocal_params = nonlocal_params
        self.nonlocal_model = None
        self._energy_guard = (nonlocal_params is not None
                              and nonlocal_params.coupling == "linear")
        self.potential = potential
        # "frozen": potential from the previous state, once per step; "implicit": every call
        self._potential_mode = None if potential is None else "frozen"
        v = ufl.TestFunction(self.V)
        x = ufl.SpatialCoordinate(msh)
        src = None if source is None else source(x, self.t_const)
        if src is not None and len(src) != n:
            raise ValueError(f"source must return {n} expressions, got {len(src)}")
        self.lumped = scheme == "upwind"
        if nonlocal_params is not None:
            from fem_crossdiff.nonlocal_ import NonlocalPotential

            self.nonlocal_model = NonlocalPotential(self.V0, params, nonlocal_params)
            self.potential = self.nonlocal_model
            self._potential_mode = ("implicit" if nonlocal_params.coupling == "implicit"
                                    else "frozen")
        if scheme == "upwind":
            F = forms.lumped_time_residual(self.rho, self.history, self.c, v, n, src)
            if self.potential is None:
                self.flux = UpwindFlux(self.V, params, negative_edges)
            else:
                from fem_crossdiff.nonlocal_ import PotentialFlux

                self.flux = PotentialFlux(self.V, params, negative_edges)
            if self.flux.negative_edges:
                get_logger(self.comm).info(
                    "mesh is not Delaunay: about %d edges have negative stiffness weight; %s",
                    self.flux.negative_edges, {
                        "limit": "their fluxes are limited next to vacuum to keep positivity",
                        "drop": "they are left out of the fluxes (positive, not consistent)",
                        "keep": "positivity is not guaranteed there"}[negative_edges])
        else:
            F = forms.galerkin_residual(self.rho, self.history, self.c, params, v, src)
            self.flux = None
        if linear_solver == "auto":
            linear_solver = "direct" if msh.topology.dim == 1 else "iterative"
        opts = petsc_defaults(linear_solver)
        if nonlocal_params is not None and nonlocal_params.coupling == "implicit" and \
                opts["ksp_type"] == "preonly":
            # the Jacobian is a matrix-free shell and the factorised matrix only its
            # preconditioner: a Krylov method must apply the shell
            opts.update({"ksp_type": "gmres", "ksp_pc_side": "right", "ksp_rtol": 1e-10})
        opts.update(petsc_options or {})
        if opts.get("pc_type") != "gamg":  # a user override: drop the multigrid settings
            opts = {k: v for k, v in opts.items()
                    if not k.startswith(("mg_levels_", "pc_gamg_"))}
        self._auto_atol = "snes_atol" not in opts
        # GAMG prolongators kept across Newton steps go stale when the state changes a lot
        # (a large first step from rough data made GMRES stagnate at 1.3e5 unknowns): a step
        # whose linear solve fails is retried once with the hierarchy rebuilt at every Newton
        # step, and it is rebuilt before the next step when Krylov iterations per Newton step
        # more than double against the last rebuild
        self._reuse_pc = opts.get("pc_type") == "gamg" and str(
            opts.get("pc_gamg_reuse_interpolation", "false")).lower() in ("true", "1", "yes")
        self._pc_stale, self._pc_baseline, self._pc_every_newton = False, None, False
        self.mass_tol = 1e-13
        self.prefix = f"crossdiff_{next(_ids)}_"
        PETSc.garbage_cleanup(self.comm)  # collective: the solvers freed since the last one
        self.problem = _NonlinearProblem(
            F, self.rho, petsc_options_prefix=self.prefix, petsc_options=opts)
        # options read lazily (multigrid levels) stay in PETSc's global database: remove this
        # solver's options with it, so nothing leaks or is reported as unused at exit
        weakref.finalize(self, _clear_options, self.prefix)
        if self.flux is not None:
            self._attach_upwind()
        self.snes = self.problem.solver
        self._ksp_its = 0
        self.snes.setMonitor(_weak(self._monitor))
        self.snes.setUpdate(_weak(self._newton_update))
        # diagnostics forms, compiled once
        self._mass_forms = [fem.form(self.rho[k] * ufl.dx(metadata=forms.VERTEX)
                                     if self.lumped else self.rho[k] * ufl.dx)
                            for k in range(n)]
        self._energy_form = fem.form(forms.energy_form(self.rho, params, lumped=self.lumped))
        self._frozen_potential = None
        # lumped (or row-summed) mass of every dof, for the scale of the Newton tolerance
        Vs = self.V0
        dxm = ufl.dx(metadata=forms.VERTEX) if self.lumped else ufl.dx
        mvec = fem.assemble_vector(fem.form(ufl.TestFunction(Vs) * dxm))
        mvec.scatter_reverse(dolfinx.la.InsertMode.add)
        self._mvec = np.repeat(mvec.array[: Vs.dofmap.index_map.size_local], n)

    # ----------------------------------------------------------------- SNES callbacks
    def _attach_upwind(self):
        problem = self.problem
        residual, jacobian = _weak(self._upwind_residual), _weak(self._upwind_jacobian)
        problem.solver.setFunction(residual, problem.b)
        if self._potential_mode == "implicit":
            from fem_crossdiff.nonlocal_ import NonlocalJacobian

            self._shell_ctx = NonlocalJacobian(problem.A, self.flux, self.nonlocal_model, self.V)
            shell = PETSc.Mat().createPython(problem.A.getSizes(), self._shell_ctx,
                                             comm=self.comm)
            shell.setUp()
            self._shell = shell
            problem.solver.setJacobian(jacobian, shell, problem.A)
        else:
            problem.solver.setJacobian(jacobian, problem.A, problem.P_mat)

    def _upwind_residual(self, snes, x, b):
        problem, u = self.problem, self.rho
        dolfinx.la.petsc._ghost_update(x, PETSc.InsertMode.INSERT, PETSc.ScatterMode.FORWARD)
        fem.petsc.assign(x, u)
        with b.localForm() as bl:
            bl.set(0.0)
            fem.petsc.assemble_vector(b, problem.F)
            rho = u.x.array.reshape(-1, self.params.n)
            pot = self._current_potential(rho)
            R = self.flux.residual(rho) if pot is None else self.flux.residual(rho, pot)
            bl.array_w[:] += R.reshape(-1)
        b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)

    def _upwind_jacobian(self, snes, x, J, P):
        problem, u = self.problem, self.rho
        dolfinx.la.petsc._ghost_update(x, PETSc.InsertMode.INSERT, PETSc.ScatterMode.FORWARD)
        fem.petsc.assign(x, u)
        A = problem.A  # the assembled (frozen-potential) Jacobian; P for a shell J
        A.zeroEntries()
        fem.petsc.assemble_matrix(A, problem.J)
        rho = u.x.array.reshape(-1, self.params.n)
        pot = self._current_potential(rho)
        if pot is None:
            self.flux.add_jacobian(A, rho)
        else:
            self.flux.add_jacobian(A, rho, pot)
        A.assemble()
        if self._potential_mode == "implicit":
            self._shell_ctx.update(rho, pot)
            J.assemble()

    def _current_potential(self, rho):
        if self._potential_mode is None:
            return None
        if self._potential_mode == "implicit":
            return self.potential(rho)
        if self._frozen_potential is None:
            self._frozen_potential = self.potential(rho)
        return self._frozen_potential

    def potential_field(self) -> fem.Function:
        """``g^eps`` of the current state as a P1 function (nonlocal model only)."""
        if self.nonlocal_model is None:
            raise ValueError("potential_field needs the nonlocal model (nonlocal_params)")
        self.nonlocal_model(self.rho.x.array.reshape(-1, self.params.n))
        g = fem.Function(self.V0, name="g")
        g.x.array[:] = self.nonlocal_model.g.x.array
        return g

    def _newton_update(self, snes, it):
        if self._pc_every_newton:
            self._rebuild_pc()

    def _monitor(self, snes, it, norm):
        if it > 0:
            self._ksp_its += snes.getKSP().getIterationNumber()

    # ----------------------------------------------------------------- state
    def set_initial(self, data: Sequence) -> None:
        """Set ``rho_k(0)`` from callables of x, numbers, FE functions or UFL expressions.

        Raises:
            ValueError: wrong number of species, negative or NaN values, or zero mass (the same
                verdict on every rank: the checks are reduced over the communicator).
        """
        n = self.params.n
        if isinstance(data, (str, bytes)) or not isinstance(data, Sequence) or len(data) != n:
            got = len(data) if isinstance(data, Sequence) else type(data).__name__
            raise ValueError(f"initial data must give one entry per species ({n}), got {got}")
        data = [_as_initial(d, k) for k, d in enumerate(data)]
        for k, d in enumerate(data):
            fk = fem.Function(self.V0)
            interpolate_any(fk, d)
            self.rho.x.array[self._sub_dofs[k]] = fk.x.array
        self.rho.x.scatter_forward()
        local = self.rho.x.array[: self._nowned() * n].reshape(-1, n)
        bad_nan = self.comm.allreduce(int(np.count_nonzero(~np.isfinite(local))), op=MPI.SUM)
        if bad_nan:
            raise ValueError(f"initial data has {bad_nan} NaN/inf nodal values")
        mins, _ = self.extrema()
        for k in range(n):
            if mins[k] < 0:
                raise ValueError(
                    f"initial data of species {k} is negative (min {mins[k]:.3e}); "
                    "densities must be >= 0")
        masses = self.masses()
        for k in range(n):
            if not masses[k] > 0:
                raise ValueError(f"initial data of species {k} has zero mass")
        for h in self.history:
            h.x.array[:] = self.rho.x.array
        self.t = 0.0
        self._dt_prev = None

    def _nowned(self) -> int:
        return self.V.dofmap.index_map.size_local

    def species(self, k: int) -> fem.Function:
        """A copy of species ``k`` as a scalar function (for output and comparisons)."""
        f = fem.Function(self.V0, name=f"rho_{k + 1}")
        f.x.array[:] = self.rho.x.array[self._sub_dofs[k]]
        return f

    def masses(self) -> np.ndarray:
        """``int rho_k`` for every species (lumped quadrature for the upwind scheme)."""
        return np.array([self.comm.allreduce(fem.assemble_scalar(f), op=MPI.SUM)
                         for f in self._mass_forms])

    def energy(self) -> float:
        """The energy ``A`` of (1.3), or ``A_eps`` of (1.4) for the nonlocal model."""
        if self.nonlocal_model is not None:
            return self.nonlocal_model.energy(self.rho.x.array.reshape(-1, self.params.n))
        return self.comm.allreduce(fem.assemble_scalar(self._energy_form), op=MPI.SUM)

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

    # ----------------------------------------------------------------- stepping
    def _set_coefficients(self, dt: float, method: str) -> None:
        if method == "bdf2" and self._dt_prev is not None:
            w = dt / self._dt_prev
            c0, c1, c2 = (1 + 2 * w) / (1 + w), -(1 + w), w * w / (1 + w)
        else:
            c0, c1, c2 = 1.0, -1.0, 0.0
        for const, val in zip(self.c, (c0, c1, c2)):
            const.value = val / dt

    def step(self, dt: float, method: str = "ie") -> StepInfo:
        """Attempt one step of size ``dt``; on failure the state is left unchanged.

        Returns:
            What happened: accepted or not, Newton and Krylov iterations, SNES reason.
        """
        self._set_coefficients(dt, method)
        self.t_const.value = self.t + dt
        if self._auto_atol:
            # Mass drift per step is dt * sum_i R_i <= dt sqrt(N) |R|; this absolute
            # tolerance keeps it near mass_tol * mass (relative) per step at any dt and h.
            owned = self.history[0].x.array[: self._mvec.size]
            scale = np.sqrt(self.comm.allreduce(float(np.sum((self._mvec * owned) ** 2)),
                                                op=MPI.SUM))
            self.snes.setTolerances(atol=max(self.mass_tol * scale / dt, 1e-300))
        self._ksp_its = 0
        self._frozen_potential = None
        if self._energy_guard:
            self._energy_prev = self.energy()
        fresh = self._pc_stale or self._pc_baseline is None
        if self._pc_stale:
            self._rebuild_pc()
        reason, msg = self._solve()
        its = self.snes.getIterationNumber()
        if reason == PETSc.SNES.ConvergedReason.DIVERGED_LINEAR_SOLVE and self._reuse_pc:
            self._pc_every_newton = True
            try:
                reason, msg = self._solve()
            finally:
                self._pc_every_newton = False
            its += self.snes.getIterationNumber()
            self._pc_stale = True  # the next step starts from a hierarchy of its own state
        elif self._reuse_pc and reason > 0:
            per_newton = self._ksp_its / max(self.snes.getIterationNumber(), 1)
            if fresh:
                self._pc_baseline = per_newton
            elif per_newton > 2.0 * self._pc_baseline + 2.0:
                self._pc_stale = True
        ok = reason > 0 and self.comm.allreduce(
            bool(np.all(np.isfinite(self.rho.x.array))), op=MPI.LAND)
        if ok and self._energy_guard:
            # the lagged potential of the linear nonlocal coupling is only conditionally
            # stable: an energy increase is the symptom, so such a step is retried smaller
            # with sigma > 0 upwinding has no exact dissipation identity for the entropy
            # part, so only increases beyond a small relative slack count
            slack = 1e-12 if self.params.sigma == 0 else 1e-6
            e_new = self.energy()
            if e_new > self._energy_prev + slack * abs(self._energy_prev):
                ok, msg = False, f"energy increased ({self._energy_prev:.6e} -> {e_new:.6e})"
        if ok and self.positivity_tol is not None:
            mn, mx = self.extrema()
            if np.any(mn < -self.positivity_tol * np.maximum(mx, 1e-300)):
                ok, msg = False, f"negative density {mn.min():.3e}"
        if not ok:
            self.rho.x.array[:] = self.history[0].x.array
            return StepInfo(False, its, self._ksp_its, reason, msg or f"SNES reason {reason}")
        self.history[1].x.array[:] = self.history[0].x.array
        self.history[0].x.array[:] = self.rho.x.array
        self.t += dt
        self._dt_prev = dt
        return StepInfo(True, its, self._ksp_its, reason)

    def _solve(self) -> tuple[int, str]:
        """One SNES solve from the previous state; returns the reason and an error message."""
        self.rho.x.array[:] = self.history[0].x.array  # initial guess: the previous state
        try:
            self.problem.solve()
        except PETSc.Error as err:  # e.g. a zero pivot in MUMPS: treat as a failed step
            return -100, str(err)
        return self.snes.getConvergedReason(), ""

    def _rebuild_pc(self) -> None:
        """Drop the multigrid hierarchy: the next linear solve builds it from scratch."""
        self.snes.getKSP().getPC().reset()
        self._pc_stale = False

    def run(self, time_params: TimeParams, csv_path: str | Path | None = None,
            vtx_path: str | Path | None = None, output_every: int = 1,
            progress: bool = True, callback: Callable | None = None) -> list[dict]:
        """Integrate from the current time to ``time_params.T``.

        Args:
            time_params: Final time, step and method.
            csv_path: Diagnostics CSV (rank 0 writes it; one row per accepted step plus t = 0).
            vtx_path: VTX folder (``.bp``) for the species fields, every ``output_every`` steps.
            output_every: Output cadence in accepted steps.
            progress: Log progress lines on rank 0.
            callback: ``callback(solver, row)`` after every accepted step.

        Returns:
            The diagnostics rows.

        Raises:
            RuntimeError: if the step falls below ``dt_min``.
        """
        tp = time_params
        log = get_logger(self.comm)
        dt = tp.dt
        dt_max = tp.dt_max if tp.dt_max is not None else max(tp.T, tp.dt)
        rows = [self._row(0.0, 0, 0, 0)]
        writer = _CsvWriter(csv_path, self.comm, list(rows[0]))
        writer.write(rows[0])
        outs = [self.species(k) for k in range(self.params.n)]
        vtx = None
        if vtx_path is not None:
            vtx = io.VTXWriter(self.comm, str(vtx_path), outs, engine="BP4")
            vtx.write(self.t)
        nstep, t0 = 0, time.perf_counter()
        try:
            while self.t < tp.T - 1e-12 * max(tp.T, 1.0):
                dt = min(dt, tp.T - self.t, dt_max)
                info = self.step(dt, tp.method)
                if not info.accepted:
                    dt *= tp.shrink
                    log.debug("t=%.4g: step rejected (%s), dt -> %.3g", self.t, info.message, dt)
                    if dt < tp.dt_min:
                        raise RuntimeError(
                            f"time step fell below dt_min = {tp.dt_min} at t = {self.t} "
                            f"({info.message})")
                    continue
                nstep += 1
                # the step the loop tries next (public for checkpoints and restarts)
                easy = tp.adaptive and info.newton_its <= tp.easy_newton
                self.next_dt = dt * tp.grow if easy else dt
                row = self._row(dt, info.newton_its, info.krylov_its, nstep)
                rows.append(row)
                writer.write(row)
                if callback is not None:
                    callback(self, row)
                if vtx is not None and nstep % output_every == 0:
                    for k, f in enumerate(outs):
                        f.x.array[:] = self.species(k).x.array
                    vtx.write(self.t)
                if progress and (nstep % 10 == 0 or self.t >= tp.T - 1e-12):
                    log.info("step %d t=%.4g dt=%.3g newton=%d krylov=%d min=%.2e (%.1fs)",
                             nstep, self.t, dt, info.newton_its, info.krylov_its,
                             min(row[f"min_{k + 1}"] for k in range(self.params.n)),
                             time.perf_counter() - t0)
                dt = self.next_dt
        finally:
            writer.close()
            if vtx is not None:
                vtx.close()
        return rows

    def _row(self, dt, newton, krylov, step) -> dict:
        mass = self.masses()
        mn, mx = self.extrema()
        row = {"step": step, "t": self.t, "dt": dt, "energy": self.energy()}
        for k in range(self.params.n):
            row[f"mass_{k + 1}"] = mass[k]
        for k in range(self.params.n):
            row[f"min_{k + 1}"] = mn[k]
            row[f"max_{k + 1}"] = mx[k]
        row["newton_its"], row["krylov_its"] = newton, krylov
        return row


def _clear_options(prefix: str) -> None:
    opts = PETSc.Options()
    for name in list(opts.getAll()):
        if name.startswith(prefix):
            opts.delValue(name)


class _CsvWriter:
    """Rank-0 CSV writer, flushed every row so that an interrupted run keeps whole rows."""

    def __init__(self, path, comm, fields):
        self.file = None
        if path is not None and comm.rank == 0:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "w", newline="")
            self.writer = csv.DictWriter(self.file, fieldnames=fields)
            self.writer.writeheader()

    def write(self, row):
        if self.file is not None:
            self.writer.writerow({k: (f"{v:.16e}" if isinstance(v, float) else v)
                                  for k, v in row.items()})
            self.file.flush()

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None
