"""Benchmark: many mesh + solver cases in one MPI process, as a geometry sweep runs them.

Each case builds a gmsh geometry (disk, rectangle or annulus, h = 0.12-0.2), a study (local,
every 4th nonlocal; every 3rd with the particle system; every 5th with VTX fields, PNG
snapshots and checkpoints) and runs it through the same path as ``crossdiff run`` for a few
implicit steps, then drops everything. Every ``--every`` cases it records rank 0's resident
memory, the largest over the ranks, and the wall time per case, and at the end it probes how
many MPI communicators are still free (each leaked one brings MPICH closer to its limit of
about 2048 and the "Too many communicators" abort).

    mpiexec -n 2 python benchmarks/bench_sweep.py --cases 2000
    mpiexec -n 2 python benchmarks/bench_sweep.py --quick         (200 cases)

Printed: a table of (case, memory, seconds per case) and the ratios memory(last) /
memory(after 20 cases) and time per case (last block) / time per case (cases 20-40); the last
line is one JSON object. ``--csv`` writes the table.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import fem_crossdiff.compat  # noqa: F401  (MPI before DOLFINx)
from fem_crossdiff.compat import MPI, PETSc
from fem_crossdiff.config import parse_config
from fem_crossdiff.study import run_study

try:
    from fem_crossdiff.problem import free_communicators, free_released
except ImportError:  # the code before solvers freed what they hold (for side-by-side runs)
    def free_released(comm):
        PETSc.garbage_cleanup(comm)

    def free_communicators(comm, limit: int = 4096) -> int:
        handler = comm.Get_errhandler()
        comm.Set_errhandler(MPI.ERRORS_RETURN)
        made = []
        while len(made) < limit:
            try:
                made.append(comm.Dup())
            except MPI.Exception:
                break
        for c in made:
            c.Free()
        comm.Set_errhandler(handler)
        return comm.allreduce(len(made), op=MPI.MIN)

GEOMETRIES = (
    {"builder": "disk", "radius": 1.0},
    {"builder": "rectangle", "lower": [0.0, 0.0], "upper": [1.5, 1.0]},
    {"builder": "annulus", "inner_radius": 0.4, "outer_radius": 1.0},
)


def study(i: int, folder: Path) -> dict:
    """The study file of case ``i`` (deterministic, the same on every rank)."""
    geo = dict(GEOMETRIES[i % len(GEOMETRIES)])
    geo["h"] = 0.12 + 0.08 * ((i * 7) % 11) / 10
    raw = {
        "model": {"a": [1.0, 2.0], "b": [1.0, 0.5], "m": 2.0, "sigma": 1e-3},
        "geometry": geo,
        "initial": [
            {"profile": "expression", "expr": "0.5 + 0.25 * tanh(4 * x)"},
            {"profile": "expression", "expr": "0.25 - 0.1 * tanh(4 * x)"},
        ],
        "time": {"T": 3e-3, "dt": 1e-3, "method": "ie", "adaptive": False},
        "output": {"folder": str(folder), "formats": ["csv"], "progress": False},
    }
    if i % 4 == 3:
        raw["model"]["type"] = "nonlocal"
        raw["model"]["eps"] = 0.6
    if i % 3 == 1:
        raw["particles"] = {"N": 200, "seed": i, "eps": 0.6, "output_every": 1}
    if i % 5 == 2:
        raw["output"].update({"formats": ["vtx", "csv", "png"], "every": 1,
                              "checkpoint_every": 1})
    return raw


def rss_mb() -> float:
    """Current resident memory of this process in MB (Linux /proc, else the peak)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024



def sweep(n: int, every: int, comm, root: Path, echo=True) -> list[dict]:
    """Run ``n`` cases; a row every ``every`` cases (and after case 20)."""
    rows = []
    t0 = last = time.perf_counter()
    last_i = 0
    for i in range(n):
        folder = root / f"case_{i:05d}"
        cfg = parse_config(study(i, folder), source=f"case {i}")
        run_study(cfg, comm, quiet=True, overwrite=True)
        del cfg
        done = i + 1
        if done % every == 0 or done == 20 or done == n:
            gc.collect()
            free_released(comm)
            now = time.perf_counter()
            mem = rss_mb()
            row = {"case": done, "rss_mb_rank0": round(comm.bcast(mem, root=0), 1),
                   "rss_mb_max": round(comm.allreduce(mem, op=MPI.MAX), 1),
                   "s_per_case": round(comm.allreduce((now - last) / (done - last_i),
                                                      op=MPI.MAX), 4),
                   "elapsed_s": round(now - t0, 1)}
            rows.append(row)
            last, last_i = now, done
            if echo and comm.rank == 0:
                print(f"{row['case']:6d} {row['rss_mb_rank0']:9.1f} {row['rss_mb_max']:9.1f} "
                      f"{row['s_per_case']:9.4f} {row['elapsed_s']:9.1f}", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=2000)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--quick", action="store_true", help="200 cases, a row every 20")
    p.add_argument("--csv", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.cases, args.every = 200, 20
    comm = MPI.COMM_WORLD
    free0 = free_communicators(comm)
    tmp = tempfile.mkdtemp(prefix="sweep_") if comm.rank == 0 else None
    root = Path(comm.bcast(tmp, root=0))
    if comm.rank == 0:
        print(f"{comm.size} ranks, {args.cases} cases in {root}; free communicators {free0}")
        print(f"{'case':>6s} {'rss0 MB':>9s} {'rssmax MB':>9s} {'s/case':>9s} {'elapsed':>9s}",
              flush=True)
    rows = sweep(args.cases, args.every, comm, root)
    free1 = free_communicators(comm)
    first = next(r for r in rows if r["case"] == 20)
    block = [r for r in rows if r["case"] > 20]
    early = block[0]["s_per_case"] if block else first["s_per_case"]
    result = {"ranks": comm.size, "cases": args.cases,
              "rss_first20_mb": first["rss_mb_max"], "rss_last_mb": rows[-1]["rss_mb_max"],
              "rss_ratio": round(rows[-1]["rss_mb_max"] / first["rss_mb_max"], 3),
              "s_per_case_early": early, "s_per_case_last": rows[-1]["s_per_case"],
              "time_ratio": round(rows[-1]["s_per_case"] / early, 3),
              "free_communicators_before": free0, "free_communicators_after": free1}
    if comm.rank == 0:
        if args.csv is not None:
            import csv

            with open(args.csv, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
