"""Failing safely under MPI: errors agreed on by every rank, abort as a last resort, interrupts.

Under ``mpirun -n P`` an exception raised on some ranks only leaves the others waiting forever
in their next collective call. Two tools prevent that:

* :class:`Agreement`: at a point every rank passes (after each time step, at the end of a
  command), each rank says whether it failed. A rank that did not fail waits for the others;
  a rank that failed waits at most ``grace`` seconds. When every rank arrives, all of them
  raise the same error (that of the lowest failing rank, re-created from its pickle), so the
  caller handles it once, as if it had been collective; rank 0 can print it.
  When the failing rank waits longer, the others are stuck in some collective call it will
  never make: it prints its error (one line) and calls ``MPI_Abort``, which ends the job with
  a non-zero exit code (``2`` for a bad parameter, ``128 + signal`` for an interrupt, else
  ``1``).
* :func:`abort_on_error`: a context manager for scripts and the CLI, an :class:`Agreement` at
  the end of a block (``with abort_on_error(comm): ...``).

Interrupts (SIGINT, SIGTERM) inside :func:`interrupt_handlers` only set a flag: the time loop
(:func:`fem_crossdiff.driver.run`) agrees on it after the current step and every rank raises
:class:`Interrupted` there, so no rank stops inside a collective call and the checkpoints
written so far stay intact. A second signal raises at once (and, under MPI, ends the job
through the agreement's abort). The handler never raises inside PETSc's nonlinear solve on the
first signal, so an interrupt is never mistaken for a failed Newton step.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

__all__ = ["Agreement", "Interrupted", "RemoteError", "abort_on_error", "deferred_interrupts",
           "exit_code",
           "interrupt_handlers", "interrupt_pending", "one_line", "portable",
           "raise_if_interrupted", "reinstall_handlers",
           "GRACE"]

#: Seconds a failing rank waits for the others to reach the same agreement point before it
#: aborts the job (``CROSSDIFF_ABORT_GRACE`` overrides it).
GRACE = 3.0
_SIGNAL_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class Interrupted(KeyboardInterrupt):
    """The run was interrupted by a signal.

    A ``KeyboardInterrupt``, so that ``except Exception`` does not catch it.

    Attributes:
        signum: The signal number; the exit code is ``128 + signum`` (130 for SIGINT, 143 for
            SIGTERM).
    """

    def __init__(self, signum: int = signal.SIGINT):
        self.signum = int(signum)
        super().__init__(f"interrupted by {_SIGNAL_NAMES.get(self.signum, self.signum)}")

    def __reduce__(self):
        return (type(self), (self.signum,))


class RemoteError(RuntimeError):
    """An error raised on another rank whose own type could not be re-created here.

    Attributes:
        rank: The rank that raised it.
        kind: The name of its type.
        text: Its message.
    """

    def __init__(self, rank: int, kind: str, text: str):
        self.rank, self.kind, self.text = rank, kind, text
        super().__init__(f"{kind} on rank {rank}: {text}")

    def __reduce__(self):
        return (type(self), (self.rank, self.kind, self.text))


def exit_code(err: BaseException) -> int:
    """The process exit code for ``err``: 2 bad parameter, ``128 + signal`` interrupt, else 1."""
    from fem_crossdiff.errors import ParameterError

    if isinstance(err, Interrupted):
        return 128 + err.signum
    if isinstance(err, KeyboardInterrupt):
        return 128 + signal.SIGINT
    if isinstance(err, ParameterError):
        return 2
    if isinstance(err, SystemExit):
        return err.code if isinstance(err.code, int) else 1
    return 1


def one_line(err: BaseException) -> str:
    """``err`` as one line: ``Type: message`` (the message's first line) or the message."""
    from fem_crossdiff.errors import ParameterError

    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, (ParameterError, Interrupted, RemoteError)):
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _grace() -> float:
    try:
        return max(float(os.environ.get("CROSSDIFF_ABORT_GRACE", GRACE)), 0.0)
    except ValueError:
        return GRACE


# --------------------------------------------------------------------------- interrupts
_state = {"pending": 0, "rank": 0, "report": None, "active": False}


def interrupt_pending() -> int:
    """The signal number received and not yet acted on (0 if none)."""
    return _state["pending"]


def raise_if_interrupted() -> None:
    """Raise :class:`Interrupted` if a signal is pending (a local check: no communication)."""
    if _state["pending"]:
        raise Interrupted(_state["pending"])


def _handler(signum, frame):
    if _state["pending"]:  # a second signal: stop now
        raise Interrupted(signum)
    _state["pending"] = signum
    if _state["rank"] == 0:
        sys.stderr.write(f"[fem-crossdiff] {_SIGNAL_NAMES.get(signum, signum)} received: "
                         "stopping after the current step (again to stop at once)\n")
        sys.stderr.flush()


@contextmanager
def interrupt_handlers(comm=None) -> Iterator[None]:
    """SIGINT and SIGTERM set a flag that the time loop acts on after the current step.

    The previous handlers are restored on exit. Outside the main thread this does nothing
    (Python only delivers signals there).

    Args:
        comm: The communicator (only rank 0 prints that a signal arrived).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in _SIGNAL_NAMES}
    _state.update(pending=0, rank=0 if comm is None else comm.rank, active=True)
    try:
        reinstall_handlers()
        yield
    finally:
        _state["active"] = False
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        _state["pending"] = 0


def reinstall_handlers() -> None:
    """Install the handlers of :func:`interrupt_handlers` again, if it is active.

    Libraries may replace signal handlers behind Python's back (gmsh resets SIGTERM to its
    default when it initialises), so the time loop calls this when it starts.
    """
    if _state["active"] and threading.current_thread() is threading.main_thread():
        for s in _SIGNAL_NAMES:
            signal.signal(s, _handler)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold a Ctrl-C back until the end of the block (for PETSc solves with Python callbacks).

    A ``KeyboardInterrupt`` raised inside a PETSc callback is turned by petsc4py into a PETSc
    error, which a solver would take for a failed step. Inside this block, when SIGINT still
    has Python's default handler, the signal only sets the flag of :func:`interrupt_pending`;
    :class:`Interrupted` is raised when the block ends. With :func:`interrupt_handlers`
    active (or another handler installed, or outside the main thread) it does nothing.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def defer(signum, frame):
        _state["pending"] = signum

    signal.signal(signal.SIGINT, defer)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if _state["pending"]:
            signum, _state["pending"] = _state["pending"], 0
            raise Interrupted(signum)


# --------------------------------------------------------------------------- agreement
def portable(err: BaseException, rank: int) -> BaseException:
    """``err`` if it survives pickling, else a :class:`RemoteError` with its text."""
    try:
        copy = pickle.loads(pickle.dumps(err))
        if type(copy) is type(err) and str(copy) == str(err):
            return err
    except Exception:  # noqa: BLE001 (any unpicklable error is replaced by its text)
        pass
    return RemoteError(rank, type(err).__name__, str(err))


def _default_report(err: BaseException, rank: int, grace: float) -> str:
    return (f"fem_crossdiff: error on rank {rank}: {one_line(err)} (the other ranks did not "
            f"reach the same point within {grace:g} s: aborting the job)")


class Agreement:
    """Collective verdicts on errors, on a private duplicate of ``comm``.

    Every rank calls :meth:`check` at the same points, with the error it raised since the last
    point or None. See the module docstring for what happens.

    Args:
        comm: The communicator (serial: no communication at all).
        grace: Seconds a failing rank waits for the others before aborting (default
            :data:`GRACE`, or ``$CROSSDIFF_ABORT_GRACE``).
        report: ``report(err, rank, grace) -> str``, the line a rank prints before it aborts.
    """

    def __init__(self, comm, grace: float | None = None,
                 report: Callable[[BaseException, int, float], str] | None = None):
        self.comm = comm
        self.grace = _grace() if grace is None else float(grace)
        # nested agreements (the time loop's) report as the enclosing abort_on_error asks
        self.report = report or _state["report"] or _default_report
        self._dup = comm.Dup() if comm.size > 1 else None

    def free(self) -> None:
        """Release the duplicated communicator."""
        if self._dup is not None:
            self._dup.Free()
            self._dup = None

    def __enter__(self) -> Agreement:
        return self

    def __exit__(self, *exc) -> None:
        self.free()

    def abort(self, err: BaseException) -> None:
        """Print ``err`` (one line, this rank) and end the whole job with its exit code."""
        from fem_crossdiff.compat import MPI

        code = exit_code(err)
        try:
            if not _state.get("aborting"):  # one message, even if called again meanwhile
                _state["aborting"] = True
                sys.stdout.flush()
                sys.stderr.write(self.report(err, self.comm.rank, self.grace) + "\n")
                if os.environ.get("CROSSDIFF_TRACEBACK"):
                    traceback.print_exception(err, file=sys.stderr)
                sys.stderr.flush()
        finally:
            try:
                MPI.COMM_WORLD.Abort(code)
            finally:
                # MPICH's MPI_Abort may return while the process manager kills the job: never
                # go back to the code that failed
                os._exit(code)

    def check(self, error: BaseException | None = None, *, interrupts: bool = True) -> None:
        """Agree on the errors of every rank (collective).

        Args:
            error: This rank's error since the last check, or None.
            interrupts: Also act on a pending signal (raise :class:`Interrupted` everywhere).

        Raises:
            BaseException: the lowest failing rank's error, on every rank (this rank's own
                object where it failed); :class:`Interrupted` when a signal is pending on any
                rank and no rank failed.
        """
        pending = _state["pending"] if interrupts else 0
        if self._dup is None:
            if error is not None:
                raise error
            if pending:
                raise Interrupted(pending)
            return
        send = np.array([error is not None, pending], dtype=np.int64)
        recv = np.zeros((self.comm.size, 2), dtype=np.int64)
        req = self._dup.Iallgather(send, recv)
        if error is None:
            # as fast as a blocking collective (polling with sleeps cost 50 ms per step on a
            # loaded machine); a signal's flag is set meanwhile, its handler runs after
            req.Wait()
        else:  # only a failing rank needs a deadline
            deadline = time.monotonic() + self.grace
            delay = 0.0
            while not req.Test():
                if time.monotonic() > deadline:
                    self.abort(error)
                time.sleep(delay)
                delay = min(2 * delay + 1e-5, 2e-3)
        failed = np.flatnonzero(recv[:, 0])
        if failed.size:
            root = int(failed[0])
            agreed = self._dup.bcast(portable(error, root) if root == self.comm.rank
                                     else None, root=root)
            if error is not None and root == self.comm.rank:
                raise error
            agreed.failed_rank = root
            raise agreed
        if interrupts and recv[:, 1].any():
            raise Interrupted(int(recv[:, 1].max()))


@contextmanager
def abort_on_error(comm, grace: float | None = None,
                   report: Callable[[BaseException, int, float], str] | None = None
                   ) -> Iterator[Agreement]:
    """Run a block on every rank; an error on some ranks only never leaves the others hanging.

    At the end of the block every rank takes part in an :class:`Agreement`: an error raised on
    every rank (or on some, while the others finished the block) is re-raised on every rank;
    a rank whose error the others do not come to agree on within ``grace`` seconds (they are
    stuck in a collective call) prints it and aborts the job. Use it around the whole
    collective work of a script::

        with failsafe.abort_on_error(MPI.COMM_WORLD):
            main()

    Args:
        comm: The communicator.
        grace: See :class:`Agreement`.
        report: See :class:`Agreement`; also used by the agreements made inside the block
            (the time loop's).

    Yields:
        The :class:`Agreement` (its :meth:`~Agreement.check` may be called inside the block
        at further points that every rank passes).
    """
    agreement = Agreement(comm, grace, report)
    outer = _state["report"]
    _state["report"] = agreement.report
    try:
        try:
            yield agreement
        except GeneratorExit:
            raise
        except BaseException as err:  # noqa: BLE001 (every error, interrupts included)
            agreement.check(err)
            raise
        agreement.check(None, interrupts=False)
    finally:
        _state["report"] = outer
        agreement.free()
