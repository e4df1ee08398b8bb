"""Nonlocal model (1.5) cost: operator build vs DOFs, and one step vs one local step.

Two species on the unit square, P1, eps = 4h. Prints a table and, as the last line, a JSON
object ``{"bench": "nonlocal", "nonlocal_over_local": ..., "implicit_over_local": ...,
"build_seconds": [...], "dofs": [...]}``. ``--quick`` stays under a minute.

    .venv/bin/python benchmarks/bench_nonlocal.py [--quick]
"""

import argparse
import json
import time

import numpy as np

import fem_crossdiff.compat  # noqa: F401
from fem_crossdiff.compat import MPI, mesh
from fem_crossdiff.models.nonlocal_system import NonlocalParams
from fem_crossdiff.params import ModelParams
from fem_crossdiff.solver import CrossDiffusionSolver

comm = MPI.COMM_WORLD
PARAMS = ModelParams(a=(1.0, 2.0), b=(1.0, 0.5), m=2.0, sigma=1e-3)
INIT = [lambda x: 0.2 + np.where(x[0] < 0.45, 0.8, 0.0) * np.exp(-4 * (x[1] - 0.5) ** 2),
        lambda x: 0.1 + np.where(x[0] > 0.55, 0.5, 0.0) + 0.0 * x[1]]


def timed_step(s, dt=2e-3, repeats=2):
    s.step(dt)  # warm-up: JIT, GAMG set-up paths
    t0 = time.perf_counter()
    for _ in range(repeats):
        info = s.step(dt)
        assert info.accepted, info
    return (time.perf_counter() - t0) / repeats, info


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--linear-solver", default="auto", choices=("auto", "iterative", "direct"),
                    help="the same linear solver for the local and nonlocal steps")
    args = ap.parse_args()
    ns = (16, 32, 64) if args.quick else (16, 32, 64, 128)
    dofs, build, local_t, lin_t, imp_t, its = [], [], [], [], [], []
    # warm-up: JIT compilation and first-call costs stay out of the build timings
    CrossDiffusionSolver(mesh.create_unit_square(comm, 8, 8), PARAMS,
                         nonlocal_params=NonlocalParams(eps=0.5))
    for n in ns:
        msh = mesh.create_unit_square(comm, n, n)
        eps = 4.0 / n
        # the nonlocal steps are upwind: the local step they are compared with is too
        loc = CrossDiffusionSolver(msh, PARAMS, scheme="upwind", linear_solver=args.linear_solver)
        loc.set_initial(INIT)
        t_loc, _ = timed_step(loc)
        comm.Barrier()
        t0 = time.perf_counter()
        lin = CrossDiffusionSolver(msh, PARAMS, linear_solver=args.linear_solver,
                                   nonlocal_params=NonlocalParams(eps=eps))
        comm.Barrier()
        t_build = time.perf_counter() - t0
        lin.set_initial(INIT)
        t_lin, info_lin = timed_step(lin)
        imp = CrossDiffusionSolver(msh, PARAMS, linear_solver=args.linear_solver,
                                   nonlocal_params=NonlocalParams(
            eps=eps, coupling="implicit"))
        imp.set_initial(INIT)
        t_imp, info_imp = timed_step(imp)
        dofs.append(loc.V.dofmap.index_map.size_global * PARAMS.n)
        build.append(t_build)
        local_t.append(t_loc)
        lin_t.append(t_lin)
        imp_t.append(t_imp)
        its.append((info_lin.newton_its, info_imp.newton_its, info_imp.krylov_its))
        if comm.rank == 0:
            print(f"n={n:4d} dofs={dofs[-1]:8d} eps={eps:.4f} build={t_build:7.3f}s "
                  f"local step={t_loc:.4f}s linear step={t_lin:.4f}s "
                  f"implicit step={t_imp:.4f}s (newton {its[-1][1]}, krylov {its[-1][2]})",
                  flush=True)
    growth = np.polyfit(np.log(dofs), np.log(build), 1)[0]
    result = {"bench": "nonlocal", "ranks": comm.size, "dofs": dofs, "build_seconds": build,
              "build_exponent": growth, "local_step_seconds": local_t,
              "linear_step_seconds": lin_t, "implicit_step_seconds": imp_t,
              "nonlocal_over_local": lin_t[-1] / local_t[-1],
              "implicit_over_local": imp_t[-1] / local_t[-1]}
    if comm.rank == 0:
        print(f"build time grows like dofs^{growth:.2f}; linear nonlocal step / local step = "
              f"{result['nonlocal_over_local']:.2f} (target <= 2); implicit / local = "
              f"{result['implicit_over_local']:.2f}")
        print(json.dumps(result))


if __name__ == "__main__":
    main()
