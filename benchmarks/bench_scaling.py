"""Strong scaling of one implicit step of the local solver, side by side with a Poisson solve.

The same problem as ``bench_local.py`` (two species, P1 upwind, implicit Euler, the same state,
``dt`` and PETSc options) at a fixed size, about 1e6 unknowns (``--quick``: 1e5), on each rank
count of ``--ranks``. Next to it, DOLFINx's own P1 Poisson solve (assembly, GAMG set-up, CG; see
``_poisson.py``) with the same number of unknowns on the same ranks. Speed-ups are relative to the
first rank count; the figure of merit is the step's speed-up divided by the Poisson solve's
(target >= 0.9 at every rank count): it discounts what the machine itself does not scale
(memory bandwidth, oversubscription) and measures what the scheme adds.

The driver launches ``mpiexec -n P python this_script --worker ...`` for every ``P`` (the
``mpiexec`` next to the Python interpreter if there is one) and collects one JSON line per run,
so it runs unchanged with ``--ranks 1,2,4,8,16`` on a larger machine. Times are the fastest of
``--steps`` timed steps and of as many Poisson solves (alternating with the steps, so that
both see the same load), maximum over ranks, after a warm-up.

Usage: ``python benchmarks/bench_scaling.py [--quick] [--ranks 1,2] [--n N] [--steps K]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

#: Cells per side of the unit square: 2 (n + 1)^2 unknowns (two species).
N_FULL = 707  # 1.0e6 unknowns
N_QUICK = 223  # 1.0e5 unknowns


def _mpiexec() -> str:
    local = Path(sys.executable).parent / "mpiexec"
    if local.exists():
        return str(local)
    found = shutil.which("mpiexec")
    if found is None:
        raise RuntimeError("no mpiexec next to the Python interpreter nor on PATH")
    return found


def worker(n: int, dt: float, steps: int) -> None:
    """One rank count: time the step and the Poisson solve; rank 0 prints one JSON line."""
    from bench_local import SOLVER_OPTIONS, time_steps

    from fem_crossdiff.compat import MPI

    comm = MPI.COMM_WORLD
    st = time_steps(comm, n, dt, steps, SOLVER_OPTIONS["default"])
    if comm.rank == 0:
        print(json.dumps({"ranks": comm.size, "unknowns": st["unknowns"],
                          "seconds": st["seconds_min"], "seconds_mean": st["seconds"],
                          "newton": st["newton"], "krylov": st["krylov"],
                          "mass_drift": st["mass_drift"],
                          "poisson_seconds": st["poisson_seconds"],
                          "poisson_unknowns": st["poisson_unknowns"],
                          "poisson_its": st["poisson_its"]}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1e5 unknowns (< 1 minute)")
    parser.add_argument("--ranks", default="1,2", help="comma-separated rank counts")
    parser.add_argument("--n", type=int, default=None, help="cells per side (overrides size)")
    # bench_local.DT; not imported: the driver must not initialise MPI before launching mpiexec
    parser.add_argument("--dt", type=float, default=1e-2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (and Poisson solves)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per rank count")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = args.n or (N_QUICK if args.quick else N_FULL)
    if args.worker:
        worker(n, args.dt, args.steps)
        return
    ranks = [int(r) for r in args.ranks.split(",")]
    if not ranks or min(ranks) < 1:
        raise ValueError(f"--ranks must list positive integers, got {args.ranks!r}")
    mpiexec = _mpiexec()
    print(f"scaling bench: n={n} dt={args.dt} ranks={ranks} ({mpiexec})")
    print(f"{'ranks':>5} {'unknowns':>9} {'step s':>8} {'speed-up':>8} {'Poisson s':>9} "
          f"{'speed-up':>8} {'relative':>8} {'Newton':>6} {'Krylov':>6}", flush=True)
    results = []
    for p in ranks:
        cmd = [mpiexec, "-n", str(p), sys.executable, str(Path(__file__).resolve()), "--worker",
               "--n", str(n), "--dt", str(args.dt), "--steps", str(args.steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise RuntimeError(f"worker on {p} ranks failed (exit {proc.returncode})")
        r = json.loads(lines[-1])
        results.append(r)
        base = results[0]
        sp = base["seconds"] / r["seconds"] * 1.0
        psp = base["poisson_seconds"] / r["poisson_seconds"]
        print(f"{p:5d} {r['unknowns']:9d} {r['seconds']:8.3f} {sp:8.2f} "
              f"{r['poisson_seconds']:9.3f} {psp:8.2f} {sp / psp:8.2f} {r['newton']:6.1f} "
              f"{r['krylov']:6.1f}", flush=True)
    secs = [r["seconds"] for r in results]
    psecs = [r["poisson_seconds"] for r in results]
    speedup = [secs[0] / s for s in secs]
    pspeedup = [psecs[0] / s for s in psecs]
    relative = [a / b for a, b in zip(speedup, pspeedup)]
    ok = all(x >= 0.9 for x in relative)
    print(f"speed-up relative to Poisson's (target >= 0.9 at every rank count): "
          f"{', '.join(f'{x:.2f}' for x in relative)}: {'met' if ok else 'MISSED'}")
    print(json.dumps({
        "bench": "scaling", "quick": bool(args.quick), "n": n,
        "unknowns": results[0]["unknowns"], "dt": args.dt, "ranks": ranks,
        "seconds": secs, "poisson_seconds": psecs, "speedup": speedup,
        "poisson_speedup": pspeedup, "speedup_over_poisson_speedup": relative,
        "newton_its": [r["newton"] for r in results], "krylov_its": [r["krylov"] for r in results],
        "poisson_its": [r["poisson_its"] for r in results],
        "max_mass_drift": max(r["mass_drift"] for r in results),
    }))


if __name__ == "__main__":
    main()
