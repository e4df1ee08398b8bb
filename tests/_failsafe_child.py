"""Child processes of tests/test_failsafe.py: a failure on one rank, under mpiexec or serial.

Usage: ``python tests/_failsafe_child.py CASE OUT [STUDY]``. The moment of the failure is
written to ``OUT/t_fail_<rank>`` so that the parent can time how long the job takes to end.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mpi4py import MPI

import fem_crossdiff.compat  # noqa: F401  (MPI before DOLFINx)
from fem_crossdiff import cli, failsafe, study

COMM = MPI.COMM_WORLD
CASE, OUT = sys.argv[1], Path(sys.argv[2])
STUDY = sys.argv[3] if len(sys.argv) > 3 else None
FAIL_RANK = COMM.size - 1  # the last rank fails (rank 1 under mpiexec -n 2)


def mark() -> None:
    (OUT / f"t_fail_{COMM.rank}").write_text(repr(time.time()))


class Boom(RuntimeError):
    pass


def small_solver():
    from fem_crossdiff.compat import mesh
    from fem_crossdiff.params import ModelParams
    from fem_crossdiff.solver import CrossDiffusionSolver

    msh = mesh.create_unit_interval(COMM, 40)
    s = CrossDiffusionSolver(msh, ModelParams(a=(1.0,), b=(1.0,), m=2.0, sigma=1e-2))
    s.set_initial([lambda x: 1.0 + 0.5 * x[0]])
    return s


def api_case() -> int:
    from fem_crossdiff import driver
    from fem_crossdiff.observers import CallbackObserver
    from fem_crossdiff.params import TimeParams

    s = small_solver()
    tp = TimeParams(T=0.05, dt=0.005)
    observers = []
    if CASE == "step":  # the step raises on one rank, before its collective solve
        real, calls = s.step, [0]

        def step(dt, method="ie", **kwargs):
            calls[0] += 1
            if calls[0] == 3 and COMM.rank == FAIL_RANK:
                mark()
                raise Boom("step failed on one rank")
            return real(dt, method, **kwargs)
        s.step = step
    else:  # an output callback raises on one rank; in "stuck" the others are in a collective
        def callback(solver, row):
            if row["step"] == 2:
                if COMM.rank == FAIL_RANK:
                    mark()
                    raise Boom("output callback failed on one rank")
                if CASE == "stuck":
                    COMM.barrier()  # as a collective writer would: never matched
        observers.append(CallbackObserver(callback))
    try:
        with failsafe.abort_on_error(COMM):
            driver.run(s, tp, observers, progress=False)
    except Boom as err:  # agreed: every rank gets the same error
        if COMM.rank == 0:
            print(f"caught on every rank: {err} (from rank {getattr(err, 'failed_rank', 0)})",
                  file=sys.stderr, flush=True)
        return 3
    return 0


def cli_case() -> int:
    if CASE == "load":  # an unexpected error while rank 0 reads the study
        def broken(*args, **kwargs):
            mark()
            raise Boom("cannot parse on rank 0")
        study.load_config = broken
        return cli.main(["check", STUDY])
    if CASE == "csv":  # an observer fails on one rank during `crossdiff run`
        from fem_crossdiff import observers

        real = observers.CsvObserver.step

        def step(self, solver, row):
            if row["step"] == 2 and COMM.rank == FAIL_RANK:
                mark()
                raise OSError(28, "No space left on device")
            return real(self, solver, row)
        observers.CsvObserver.step = step
        return cli.main(["run", STUDY, "--quiet", "--output", str(OUT / "run")])
    raise SystemExit(f"unknown case {CASE}")


if __name__ == "__main__":
    code = api_case() if CASE in ("step", "observer", "stuck") else cli_case()
    sys.exit(code)
