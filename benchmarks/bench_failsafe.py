"""Cost of the rank agreement after every step: the same run with it and without it.

One species on the unit interval (cheap steps, so the agreement's share is the largest it can
be), ``driver.run`` timed with :meth:`fem_crossdiff.failsafe.Agreement.check` as it is and as
a no-op, alternately, best of ``--repeat``. Runs serially or under ``mpiexec``; only rank 0
prints. The last line is one JSON object.

Usage: ``python benchmarks/bench_failsafe.py [--quick] [--cells N] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import json
import time

from fem_crossdiff import driver, failsafe
from fem_crossdiff.compat import MPI, mesh
from fem_crossdiff.params import ModelParams, TimeParams
from fem_crossdiff.solver import CrossDiffusionSolver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (< 30 s)")
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    s = CrossDiffusionSolver(mesh.create_unit_interval(comm, args.cells),
                             ModelParams(a=(1.0,), b=(1.0,), m=2.0, sigma=1e-2))
    tp = TimeParams(T=0.05 if args.quick else 0.2, dt=1e-3)
    real = failsafe.Agreement.check

    def noop(self, error=None, **kwargs):
        if error is not None:
            raise error

    best = {"agreed": float("inf"), "noop": float("inf")}
    steps = 0
    try:
        for _ in range(args.repeat):
            for mode in best:
                failsafe.Agreement.check = real if mode == "agreed" else noop
                s.set_initial([lambda x: 1.0 + 0.5 * x[0]])
                comm.barrier()
                t0 = time.perf_counter()
                rows = driver.run(s, tp, [], progress=False)
                comm.barrier()
                best[mode] = min(best[mode], time.perf_counter() - t0)
                steps = len(rows) - 1
    finally:
        failsafe.Agreement.check = real
    if comm.rank == 0:
        ratio = best["agreed"] / best["noop"]
        per_step = (best["agreed"] - best["noop"]) / steps
        print(f"{steps} steps on {comm.size} rank(s), {args.cells} cells: with agreement "
              f"{best['agreed']:.3f} s, without {best['noop']:.3f} s, ratio {ratio:.3f} "
              f"({per_step * 1e6:.0f} us per step)")
        print(json.dumps({"ranks": comm.size, "steps": steps, "agreed_s": best["agreed"],
                          "noop_s": best["noop"], "ratio": ratio}))


if __name__ == "__main__":
    main()
