"""The one time loop of the API and the CLI: step control, logging, observers.

:func:`run` advances a :class:`~fem_crossdiff.solver.CrossDiffusionSolver` to the final time.
After the initial state and every accepted step it builds one diagnostics row
(:func:`diagnostics_row`, the single definition of a row) and hands it to every observer
(:mod:`fem_crossdiff.observers`): CSV, fields, pictures, checkpoints, particles and progress
are observers, so adding an output never touches the loop.

Step control: a rejected step (Newton failure, negative density, a model's refusal, an error
estimate above ``tol``) is logged at INFO with its reason in words, counted in the next row's
``rejected`` column, and retried smaller (``dt * shrink`` after a failure, the controller's
step after an error rejection); below ``dt_min`` the run stops with :class:`StepSizeError`.
With ``adaptive``, every step is chosen from the estimated local error of the previous one
(:meth:`~fem_crossdiff.solver.CrossDiffusionSolver.error_estimate`) by the elementary
controller ``dt_new = dt * clamp(SAFETY * (tol / err)^(1 / (p + 1)), MIN_FACTOR, grow)``
(``p`` the order). The estimate is a norm of the solution reduced over all ranks, so the same
run on any number of ranks takes the same steps to solver tolerance (Newton iteration counts,
which depend on the partition through the multigrid smoother, play no part). Start-up steps
without enough history for an estimate keep ``dt`` (one step with implicit Euler, two with
BDF2). See docs/step-control.md.

Errors and interrupts: after the start and every attempted step the ranks agree
(:class:`fem_crossdiff.failsafe.Agreement`): an exception raised on some ranks only (in a step
or an observer) is raised on every rank, or, when the other ranks are stuck in a collective
call, the job is aborted within seconds; a SIGINT/SIGTERM caught by
:func:`fem_crossdiff.failsafe.interrupt_handlers` stops every rank after the same step with
:class:`~fem_crossdiff.failsafe.Interrupted`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from fem_crossdiff import failsafe
from fem_crossdiff.log import get_logger
from fem_crossdiff.params import TimeParams

__all__ = ["run", "diagnostics_row", "StepSizeError", "row_fields", "next_step", "SAFETY",
           "MIN_FACTOR"]

#: Safety factor of the step controller (aims below the tolerance to avoid rejections).
SAFETY = 0.9
#: Smallest factor by which the controller reduces a step (large estimates are unreliable).
MIN_FACTOR = 0.2


class StepSizeError(RuntimeError):
    """The step size fell below ``dt_min``: the run cannot continue (same on every rank).

    Attributes:
        t: Time reached.
        dt: The rejected step size.
        reason: Why the last step was rejected, in words.
    """

    def __init__(self, t: float, dt: float, dt_min: float, reason: str):
        self.t, self.dt, self.dt_min, self.reason = t, dt, dt_min, reason
        super().__init__(f"time step fell below dt_min = {dt_min:g} at t = {t:.6g} "
                         f"(last rejection: {reason})")

    def __reduce__(self):
        # picklable as itself: the ranks agree on errors by pickle (fem_crossdiff.failsafe),
        # and every rank then raises a StepSizeError, not a RemoteError in its place
        return type(self), (self.t, self.dt, self.dt_min, self.reason)


def row_fields(n: int) -> list[str]:
    """Column names of a diagnostics row for ``n`` species (species numbered from 1)."""
    return (["step", "t", "dt", "energy"] + [f"mass_{k}" for k in range(1, n + 1)]
            + [c for k in range(1, n + 1) for c in (f"min_{k}", f"max_{k}")]
            + ["newton_its", "krylov_its", "rejected", "err_est"])


def diagnostics_row(solver, step: int, dt: float, newton: int = 0, krylov: int = 0,
                    rejected: int = 0, err_est: float | None = None) -> dict:
    """The diagnostics of the current state (collective): one row of the CSV.

    ``rejected`` counts the attempts rejected before this step was accepted; ``err_est`` is the
    step's estimated local error (0 where none was estimated: start-up steps, the first row).
    """
    mass = solver.masses()
    mn, mx = solver.extrema()
    row = {"step": step, "t": solver.t, "dt": dt, "energy": solver.energy()}
    n = solver.params.n
    row.update({f"mass_{k + 1}": float(mass[k]) for k in range(n)})
    for k in range(n):
        row[f"min_{k + 1}"], row[f"max_{k + 1}"] = float(mn[k]), float(mx[k])
    row.update(newton_its=newton, krylov_its=krylov, rejected=rejected,
               err_est=0.0 if err_est is None else float(err_est))
    return row


def run(solver, time_params: TimeParams, observers: Sequence = (), *, progress: bool = True,
        step0: int = 0) -> list[dict]:
    """Integrate from the solver's current time to ``time_params.T`` (collective).

    Args:
        solver: The stepper.
        time_params: Final time, initial step, method and step control.
        observers: Objects with any of ``start(solver, row)``, ``step(solver, row)``,
            ``finish(solver, row)`` and ``close()`` (see :mod:`fem_crossdiff.observers`);
            ``close`` is called even when the run fails.
        progress: Log a progress line on rank 0 every 10 steps and at the end.
        step0: Number of the current state (a restart continues the numbering).

    Returns:
        The rows of this call, the current state first.

    Raises:
        StepSizeError: the step fell below ``dt_min``.
        Interrupted: a pending SIGINT/SIGTERM (see :mod:`fem_crossdiff.failsafe`).
    """
    tp = time_params
    log = get_logger(solver.comm)
    dt = tp.dt
    dt_max = tp.dt_max if tp.dt_max is not None else max(tp.T, tp.dt)
    solver.next_dt = dt
    rows = [diagnostics_row(solver, step0, solver.dt_prev or 0.0)]
    observers = list(observers)
    t0 = time.perf_counter()
    # Every rank agrees after the start and after every attempted step: an error on one rank
    # only (an observer, a model check) is raised on all of them, or ends the job (see
    # fem_crossdiff.failsafe); a pending SIGINT/SIGTERM stops every rank at the same step.
    agreement = failsafe.Agreement(solver.comm)
    # writers failing inside a collective call agree through it too (fem_crossdiff.diskio)
    outer = failsafe._state.get("agreement")
    failsafe._state["agreement"] = agreement
    failsafe.reinstall_handlers()  # gmsh, run before us, resets SIGTERM's handler
    state = {"nstep": step0, "rejected": 0, "dt": dt}
    error_tol = tp.tol if tp.adaptive else None

    def attempt() -> None:
        dt = min(state["dt"], tp.T - solver.t, dt_max)
        info = solver.step(dt, tp.method, error_tol=error_tol)
        if not info.accepted:
            state["rejected"] += 1
            if error_tol is not None and info.error is not None and info.error > error_tol:
                new_dt = next_step(dt, info.error, tp.tol, info.order, 1.0)
            else:
                new_dt = dt * tp.shrink
            log.info("t=%.6g: step dt=%.3g rejected (%s); retrying with dt=%.3g",
                     solver.t, dt, info.message, new_dt)
            if new_dt < tp.dt_min:
                raise StepSizeError(solver.t, new_dt, tp.dt_min, info.message)
            state["dt"] = new_dt
            return
        state["nstep"] += 1
        nstep = state["nstep"]
        if error_tol is not None and info.error is not None:
            # no growth right after a rejection: the estimate just proved optimistic
            solver.next_dt = next_step(dt, info.error, tp.tol, info.order,
                                       1.0 if state["rejected"] else tp.grow)
        else:
            solver.next_dt = dt
        row = diagnostics_row(solver, nstep, dt, info.newton_its, info.krylov_its,
                              state["rejected"], info.error)
        state["rejected"] = 0
        rows.append(row)
        _call(observers, "step", solver, row)
        done = solver.t >= tp.T - 1e-12 * max(tp.T, 1.0)
        if progress and ((nstep - step0) % 10 == 0 or done):
            n = solver.params.n
            log.info("step %d t=%.4g dt=%.3g newton=%d krylov=%d min=%.2e (%.1fs)",
                     nstep, solver.t, dt, info.newton_its, info.krylov_its,
                     min(row[f"min_{k + 1}"] for k in range(n)),
                     time.perf_counter() - t0)
        state["dt"] = solver.next_dt

    try:
        _agreed(agreement, _call, observers, "start", solver, rows[0])
        while solver.t < tp.T - 1e-12 * max(tp.T, 1.0):
            _agreed(agreement, attempt)
        _agreed(agreement, _call, observers, "finish", solver, rows[-1])
    finally:
        try:
            _call(observers, "close")
        finally:
            failsafe._state["agreement"] = outer
            agreement.free()
    return rows


def next_step(dt: float, err: float, tol: float, order: int, grow: float) -> float:
    """The elementary controller: ``dt * clamp(SAFETY (tol/err)^(1/(order+1)), MIN_FACTOR, grow)``.

    The local error of a method of order ``p`` scales like ``dt^(p+1)``, so this step would
    bring the estimate to ``SAFETY^(p+1) tol``.
    """
    factor = grow if err <= 0.0 else SAFETY * (tol / err) ** (1.0 / (order + 1))
    return dt * min(max(factor, MIN_FACTOR), grow)


def _agreed(agreement, fn, *args) -> None:
    """``fn(*args)``, then every rank agrees on its outcome (see :mod:`.failsafe`)."""
    error = None
    try:
        fn(*args)
    except (Exception, KeyboardInterrupt) as err:  # interrupts too: agreed, not swallowed
        error = err
    agreement.check(error)


def _call(observers, name: str, *args) -> None:
    """Call ``name`` of every observer that has it.

    After an error the remaining observers are still called, then the first error is raised:
    the collective ones among them (fields, checkpoints) keep every rank in step even when
    one observer fails on one rank only.
    """
    error = None
    for obs in observers:
        method = getattr(obs, name, None)
        if method is not None:
            try:
                method(*args)
            except Exception as err:  # noqa: BLE001 (raised below, after the others)
                error = error or err
    if error is not None:
        raise error
