"""Cost of a step of the volume-exclusion family against the paper's system on the same mesh.

Two species on the unit square (``create_unit_square(n, n)``, crossed diagonals), m = 2, the
same data and step for both runs; the family adds per-species ``sigma_k``, an external
potential per species, a Gaussian and a compact interaction (W symmetric) and logistic growth.
Prints, per scheme, the mean wall time of a step (after one untimed step: JIT, the matrix's
pattern) and the Newton iterations, for the paper's system and for the family.

Usage::

    .venv/bin/python benchmarks/bench_family_fe.py [--n 64] [--steps 5]
    .venv/bin/mpiexec -n 2 .venv/bin/python benchmarks/bench_family_fe.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fem_crossdiff.compat import MPI, mesh
from fem_crossdiff.family import Family, Growth, Interaction, Kernel, Potential
from fem_crossdiff.params import ModelParams
from fem_crossdiff.solver import CrossDiffusionSolver

COMM = MPI.COMM_WORLD
INITIAL = [lambda x: 0.4 + 0.3 * np.sin(3 * x[0]) * np.cos(2 * x[1]),
           lambda x: 0.3 + 0.2 * np.cos(4 * x[0] * x[1])]


def family() -> Family:
    """Every ingredient once (W symmetric)."""
    return Family(
        (0.01, 0.05),
        potentials=(Potential("((x - 0.5)**2 + (y - 0.5)**2) / 2"), Potential("x")),
        interactions=(Interaction(Kernel("gaussian", 0.05), ((0.5, -0.3), (-0.3, 0.2))),
                      Interaction(Kernel("poly4", 0.08), ((-0.2, 0.0), (0.0, 0.3)))),
        growth=(Growth("logistic", rate=1.0, p_max=1.0), Growth("expr", expr="-0.5 * P")))


def timed(solver: CrossDiffusionSolver, steps: int, dt: float) -> tuple[float, float, float]:
    """Mean seconds (max over ranks), Newton and Krylov iterations per step."""
    solver.set_initial(INITIAL)
    solver.step(dt)
    its, kits, t0 = 0, 0, time.perf_counter()
    for _ in range(steps):
        info = solver.step(dt)
        assert info.accepted, info.message
        its += info.newton_its
        kits += info.krylov_its
    sec = COMM.allreduce(time.perf_counter() - t0, op=MPI.MAX) / steps
    return sec, its / steps, kits / steps


def main() -> None:
    """Run the comparison and print a table on rank 0."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="cells per side")
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--dt", type=float, default=0.002, help="step")
    args = ap.parse_args()
    msh = mesh.create_unit_square(COMM, args.n, args.n, diagonal=mesh.DiagonalType.crossed)
    params = ModelParams((1.0, 1.0), (1.0, 1.0), 2.0, 0.01)
    rows = []
    for scheme in ("upwind", "muscl"):
        paper = timed(CrossDiffusionSolver(msh, params, scheme=scheme), args.steps, args.dt)
        fam = timed(CrossDiffusionSolver(msh, params, scheme=scheme, family=family()),
                    args.steps, args.dt)
        rows.append((scheme, paper, fam))
    if COMM.rank == 0:
        print(f"unit square {args.n}x{args.n} crossed, {COMM.size} rank(s), dt {args.dt}")
        print("scheme  paper s/step (Newton, Krylov)  family s/step (Newton, Krylov)  ratio")
        for scheme, (ps, pn, pk), (fs, fn, fk) in rows:
            print(f"{scheme:7s} {ps:10.4f} ({pn:4.1f}, {pk:5.1f})      {fs:10.4f} "
                  f"({fn:4.1f}, {fk:5.1f})       {fs / ps:5.2f}")


if __name__ == "__main__":
    main()
