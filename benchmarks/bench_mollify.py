"""Cost of the mollification operator: build time versus dofs at fixed eps/h, and one apply.

Unit square, P1 triangles, ``eps = 4 h`` (``h = 1/n``), so the number of nonzeros per row is
fixed and the build time should grow linearly with the number of dofs. Runs serially or under
``mpiexec``; only rank 0 prints. The last line is one JSON object.

Usage: ``python benchmarks/bench_mollify.py [--quick] [--kernel bump|poly4]``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from fem_crossdiff.compat import MPI, PETSc, fem, mesh
from fem_crossdiff.mollify import MollificationOperator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 1 minute)")
    parser.add_argument("--kernel", default="bump", choices=["bump", "poly4"])
    parser.add_argument("--eps-over-h", type=float, default=4.0)
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    sizes = [16, 32, 64, 128] if args.quick else [32, 64, 128, 256]
    dofs, build, apply_s, nnz_row = [], [], [], []
    if comm.rank == 0:
        print(f"mollify bench: kernel={args.kernel} eps/h={args.eps_over_h} ranks={comm.size}")
        print(f"{'n':>5} {'dofs':>9} {'nnz/row':>8} {'build s':>9} {'apply s':>10} {'us/dof':>8}")
    for n in sizes:
        msh = mesh.create_unit_square(comm, n, n)
        V = fem.functionspace(msh, ("Lagrange", 1))
        f = fem.Function(V)
        f.interpolate(lambda x: np.sin(3 * x[0]) * np.cos(2 * x[1]))
        out = fem.Function(V)
        comm.Barrier()
        t0 = time.perf_counter()
        op = MollificationOperator(V, args.eps_over_h / n, args.kernel)
        comm.Barrier()
        tb = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        reps = 20
        comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(reps):
            op.apply(f, out)
        comm.Barrier()
        ta = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX) / reps
        N = V.dofmap.index_map.size_global
        nz = op.matrix.getInfo(PETSc.Mat.InfoType.GLOBAL_SUM)["nz_used"] / N
        dofs.append(int(N))
        build.append(round(tb, 4))
        apply_s.append(float(f"{ta:.3e}"))
        nnz_row.append(round(nz, 1))
        if comm.rank == 0:
            print(f"{n:5d} {N:9d} {nz:8.1f} {tb:9.3f} {ta:10.2e} {1e6 * tb / N:8.1f}", flush=True)
    slope = float(np.polyfit(np.log(dofs[1:]), np.log(build[1:]), 1)[0])
    if comm.rank == 0:
        print(f"build-time growth exponent vs dofs (excluding the smallest): {slope:.2f}")
        print(json.dumps({"bench": "mollify", "kernel": args.kernel, "ranks": comm.size,
                          "eps_over_h": args.eps_over_h, "dofs": dofs, "nnz_per_row": nnz_row,
                          "build_seconds": build, "apply_seconds": apply_s,
                          "build_exponent": round(slope, 3)}))


if __name__ == "__main__":
    main()
