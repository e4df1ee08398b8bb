"""A stall watchdog: a job whose steps stop completing ends with one line instead of hanging.

When one rank of an MPI job stops (``SIGSTOP``, a frozen node, a deadlock), the others wait in
their next collective call forever. They cannot act themselves: they block inside PETSc or
DOLFINx (C++ code that holds Python's GIL), so neither a Python thread nor a signal handler of
theirs ever runs again. The watchdog therefore lives outside the rank: a small helper process
per rank (plain Python, standard library only) that the rank sends a heartbeat after every
completed step. When no heartbeat arrives for ``timeout`` seconds, the helper prints one line
naming the timeout key and kills its rank with ``SIGKILL``; the MPI launcher (MPICH's
``mpiexec``) then ends the whole job, the stopped rank included, and reports the killed rank
(exit code 9). A serial run is killed the same way.

A helper whose own rank is stopped (state ``T`` in ``/proc``) waits a while longer, so that
the line comes from a live rank, whose helper ends the job first. The helper exits quietly
when its rank closes the watchdog or dies, so it never outlives the run.

:class:`StallWatchdog` is an observer of :func:`fem_crossdiff.driver.run` (heartbeat at
``start``, every ``step`` and ``finish``; stopped by ``close``). It is per run: nothing global
is changed, and a run without it (the API's default) starts no process.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys

__all__ = ["StallWatchdog", "CLI_STALL_TIMEOUT", "MIN_TIMEOUT", "MAX_TIMEOUT", "check_timeout"]

#: ``[resources] stall_timeout`` of ``crossdiff run`` when the study does not set it (seconds).
CLI_STALL_TIMEOUT = 600.0
#: Smallest timeout (seconds): shorter ones would fire on an ordinary step.
MIN_TIMEOUT = 1.0
#: Largest timeout (seconds, about 115 days).
MAX_TIMEOUT = 1e7

# The helper: fd, parent pid, timeout, the line. Standard library only, started with -I -S,
# so it starts in tens of milliseconds and imports nothing of the project.
_HELPER = r"""
import os, select, signal, sys, time
# Ctrl-C or SIGTERM sent to the job's process group are the rank's to handle: it stops after
# the step and closes the watchdog (or dies), which ends this helper quietly
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
fd, ppid, timeout, line = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]

def stopped():
    try:
        with open(f"/proc/{ppid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False

deadline, extended = time.monotonic() + timeout, False
while True:
    wait = deadline - time.monotonic()
    if wait > 0:
        ready = select.select([fd], [], [], wait)[0]
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if not data or b"q" in data:  # the run closed the watchdog, or died
                sys.exit(0)
            deadline = time.monotonic() + timeout
        continue
    if os.getppid() != ppid:  # the rank is gone (its launcher ended the job)
        sys.exit(0)
    if stopped() and not extended:  # let a live rank's helper speak and end the job
        deadline, extended = time.monotonic() + max(2.0 * timeout, 10.0), True
        continue
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    try:
        os.kill(ppid, signal.SIGKILL)
    except OSError:
        pass
    sys.exit(0)
"""


def check_timeout(key: str, value) -> float:
    """A stall timeout: ``0`` (off) or a number of seconds in ``[MIN_TIMEOUT, MAX_TIMEOUT]``.

    Raises:
        ParameterError: naming ``key``, the value and the allowed range.
    """
    from fem_crossdiff.errors import ParameterError

    allowed = (f"must be 0 (off) or a number of seconds in [{MIN_TIMEOUT:g}, "
               f"{MAX_TIMEOUT:g}]")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParameterError(key, value, allowed)
    try:
        ok = math.isfinite(value) and (value == 0 or MIN_TIMEOUT <= value <= MAX_TIMEOUT)
    except OverflowError:
        ok = False
    if not ok:
        raise ParameterError(key, value, allowed)
    return float(value)


class StallWatchdog:
    """Ends the job when no step completes for ``timeout`` seconds (see the module docstring).

    Args:
        timeout: Seconds without a completed step before the job is ended (``0``: off, then
            the observer does nothing).
        key: The setting's name, quoted in the line.
        prefix: The start of the line (``"crossdiff"`` for the CLI).

    Raises:
        ParameterError: a timeout outside :func:`check_timeout`'s range.
    """

    def __init__(self, timeout: float, key: str = "resources.stall_timeout",
                 prefix: str = "fem_crossdiff"):
        self.timeout = check_timeout(key, timeout)
        self.key, self.prefix = key, prefix
        self._proc = None
        self._sock = None

    @property
    def active(self) -> bool:
        """Whether the helper is running."""
        return self._proc is not None

    def line(self, rank: int) -> str:
        """The line the helper of ``rank`` prints when it ends the job."""
        return (f"{self.prefix}: run stalled on rank {rank}: no time step completed for "
                f"{self.timeout:g} s ({self.key} = {self.timeout:g}; a rank is stopped, or "
                "stuck waiting for the others); ending the job")

    def start(self, solver=None, row=None) -> None:
        """Start the helper (this rank's)."""
        if self.timeout == 0 or self._proc is not None:
            return
        rank = solver.comm.rank if solver is not None else 0
        ours, theirs = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _HELPER, str(theirs.fileno()),
                 str(os.getpid()), repr(self.timeout), self.line(rank)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours

    def beat(self) -> None:
        """A heartbeat: the run is alive (a full or closed channel is ignored)."""
        if self._sock is not None:
            try:
                # MSG_NOSIGNAL: a helper that died must not raise SIGPIPE here (PETSc catches
                # that signal and aborts the job)
                self._sock.send(b".", socket.MSG_NOSIGNAL)
            except OSError:
                pass

    def step(self, solver=None, row=None) -> None:
        """A step completed."""
        self.beat()

    def finish(self, solver=None, row=None) -> None:
        """The loop ended: the final outputs get a full ``timeout`` too."""
        self.beat()

    def close(self) -> None:
        """Stop the helper and wait for it (idempotent)."""
        sock, proc = self._sock, self._proc
        self._sock = self._proc = None
        if sock is not None:
            try:
                sock.send(b"q", socket.MSG_NOSIGNAL)
            except OSError:
                pass
            sock.close()
        if proc is not None:
            try:
                proc.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> StallWatchdog:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        # a watchdog dropped without close (an exception before the loop's close): never
        # leave a helper that could kill a process that goes on
        try:
            self.close()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass

