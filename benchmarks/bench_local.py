"""Cost of one implicit step of the local solver (1.1) against one DOLFINx Poisson solve.

Two species on the unit square, P1 upwind scheme, implicit Euler, ``a = (1, 2)``,
``b = (1, 0.5)``, ``m = 2``, ``sigma = 1e-3``. The state is smooth and positive with a segregated
region: species 2 is a compactly supported cap in a disc where species 1 vanishes. For every mesh
``h, h/2, h/4`` one warm-up step is taken (form JIT, first PETSc set-up), then ``--steps`` steps
are timed; the reference is one P1 Poisson solve (matrix and rhs assembly, GAMG set-up, CG, see
``_poisson.py``) with the same number of unknowns, timed on the same machine in the same run.
The figure of merit is the ratio step / Poisson (fastest timed step over fastest Poisson solve,
the pair least disturbed by other load on a shared machine); the Newton and Krylov counts show
whether the solver is mesh independent. Mass conservation per step is measured, not assumed.

Time step. The Jacobian is ``M / dt + K(rho)`` with ``K ~ D / h^2`` (``D = b rho P'`` about 1
here). The default ``dt = 1e-2`` keeps ``dt D / h^2 >= 300`` on every mesh, the diffusion-
dominated regime in which the multigrid's mesh independence is what is measured. With a small
``dt`` (``--dt 1e-4``: ``dt D / h^2 = 3`` on the coarsest full-size mesh) the coarse meshes are
mass dominated and need about one Krylov iteration per Newton step whatever the
preconditioner, so the growth from ``h`` to ``h/4`` then measures the change of regime (the
README lists both). ``--dt-exponent 2`` keeps ``dt / h^2`` fixed instead.

Runs serially or under ``mpiexec``; only rank 0 prints. The last line is one JSON object.

Usage: ``python benchmarks/bench_local.py [--quick] [--dt DT] [--dt-exponent Q] [--steps K]
[--solver default|sor|ilu0] [--scheme upwind|muscl|afc] [--compare]``. ``--scheme`` (default
``upwind``, whose figures the README quotes) measures another P1 scheme on the same state, with
its default options (``muscl``: the solver's default scheme and its ``smooth-sensor`` limiter).

``--compare`` measures the step as before (the solver's defaults) and with the step-cost
options of ``NEW_STEP`` (``docs/step-cost.md``) in the same process: on every mesh both solvers
take the warm-up step, then their timed steps alternate (previous, new, Poisson, ...), so both
see the same load; a row per variant, their step-time ratio, and ``"compare"`` in the JSON.
``--variant KEY=VALUE`` (repeatable) replaces the new variant's options.

Peak resident memory (``ru_maxrss`` of the process, the largest over ranks) is reported per
unknown of the finest mesh after its steps. It is a process-wide peak: it includes the Poisson
reference and, with ``--compare``, both solvers; measure it without ``--compare``.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
from _poisson import PoissonReference, square_side_for

from fem_crossdiff.compat import MPI, mesh
from fem_crossdiff.models import entries
from fem_crossdiff.params import ModelParams
from fem_crossdiff.solver import CrossDiffusionSolver

PARAMS = ModelParams(a=(1.0, 2.0), b=(1.0, 0.5), m=2.0, sigma=1e-3)
#: Default time step (diffusion-dominated on every mesh, see the module docstring).
DT = 1e-2

#: Linear-solver options, measured with this benchmark. The Jacobian is a nonsymmetric, strongly
#: coupled 2x2 block system (the diffusion acts through ``S = a . rho`` only), on which GAMG's
#: default Chebyshev/Jacobi smoother (it assumes a symmetric operator) lets GMRES stall (500+
#: iterations, no convergence, at 1e5 unknowns). ``sor``: SOR smoothing and Eisenstat-Walker
#: forcing (no 1e-10 Krylov tolerance in early Newton steps, where it is wasted); ``tuned``:
#: ILU(0) smoothing per rank, a tighter first forcing term (a loose first solve cost one more
#: Newton step on fine meshes) and GAMG's prolongators kept across Newton steps (only the
#: Galerkin products are recomputed). The SNES absolute tolerance, set per step from the mass
#: scale, is left untouched: mass stays conserved to ~1e-13 relative per step.
SOR = {
    "mg_levels_ksp_type": "richardson",
    "mg_levels_pc_type": "sor",
    "snes_ksp_ew": None,
}
#: ``default``: the solver's own defaults (``petsc_defaults``), which adopted the ``tuned`` set
#: measured here, then ILU(1) smoothing per rank: Eisenstat-Walker forcing with a tight first
#: term, GAMG prolongators kept across Newton steps (rebuilt when they go stale).
#: ``ilu0``: the defaults with ILU(0) instead of ILU(1) smoothing (the previous default: more,
#: cheaper iterations; growth x1.58 against x1.37 from h to h/4 at dt = 1e-2, 1e6 unknowns).
ILU0 = {"mg_levels_sub_pc_factor_levels": 0}
SOLVER_OPTIONS = {"default": {}, "sor": SOR, "ilu0": ILU0}
#: ``--compare``: the new step's keyword arguments of ``CrossDiffusionSolver`` (the previous
#: step is the solver's defaults). ``newton_tol_ratio`` acts only with an error tolerance
#: (adaptive steps), which this fixed-step benchmark does not use: bench_work_precision.py
#: measures it.
NEW_STEP = {"predictor": "extrapolate"}


def peak_rss_kb(comm) -> float:
    """Peak resident memory of this process in KB, the largest over ranks (Linux: KB units)."""
    return comm.allreduce(float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
                          op=MPI.MAX)


def initial_state(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smooth positive mixture with a segregated disc: species 2 only inside, 1 only outside.

    Species 1 is a smooth positive field vanishing in the disc ``|x - (0.7, 0.5)| < 0.2``;
    species 2 is a cap supported in the disc of radius 0.25; they overlap in a thin ring, so the
    total density stays positive (no vacuum) while the supports are segregated.
    """
    r = np.sqrt((x[0] - 0.7) ** 2 + (x[1] - 0.5) ** 2)
    t = np.clip((0.25 - r) / 0.05, 0.0, 1.0)
    inside = t * t * (3.0 - 2.0 * t)  # smooth step from 0 (r >= 0.25) to 1 (r <= 0.2)
    background = 0.5 + 0.25 * np.cos(2 * np.pi * x[0]) * np.cos(2 * np.pi * x[1])
    return background * (1.0 - inside), 0.4 * inside * (1.5 - (r / 0.25) ** 2)


def time_steps(comm, n: int, dt: float, steps: int, options: dict,
               scheme: str = "upwind", variants: list[dict] | None = None) -> list[dict]:
    """One warm-up step, then ``steps`` timed steps, each followed by a timed Poisson solve.

    The Poisson reference has the same number of unknowns; alternating the two keeps them under
    the same load when the machine is shared. ``variants``: the solver keyword arguments of
    each variant measured (default one: the solver's defaults); their steps alternate too.

    Returns:
        Per variant: unknowns; seconds per step (mean and minimum over the timed steps, maximum
        over ranks); Newton and Krylov iterations per step (means); the largest relative mass
        change in a step; the smallest density seen over the timed steps; the Poisson solve's
        fastest time, unknowns, CG iterations and relative L2 error.
    """
    variants = variants or [{}]
    msh = mesh.create_unit_square(comm, n, n)
    solvers = []
    for kwargs in variants:
        s = CrossDiffusionSolver(msh, PARAMS, scheme=scheme, linear_solver="iterative",
                                 petsc_options=options, **kwargs)
        s.set_initial([lambda x: initial_state(x)[0], lambda x: initial_state(x)[1]])
        solvers.append(s)
    s = solvers[0]
    unknowns = int(s.V.dofmap.index_map.size_global * s.V.dofmap.index_map_bs)
    ref = PoissonReference(comm, square_side_for(unknowns))  # includes its untimed solve
    for s in solvers:
        info = s.step(dt, "ie")  # warm-up: JIT, PETSc first use, GAMG structures
        if not info.accepted:
            raise RuntimeError(f"warm-up step failed at n={n}: {info.message}")
    stats = [{"secs": [], "newton": [], "krylov": [], "drift": 0.0, "min": np.inf}
             for _ in solvers]
    psecs, pits = [], 0
    for _ in range(steps):
        for s, st in zip(solvers, stats):
            m0 = s.masses()
            comm.Barrier()
            t0 = time.perf_counter()
            info = s.step(dt, "ie")
            st["secs"].append(comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))
            if not info.accepted:
                raise RuntimeError(f"timed step failed at n={n}: {info.message}")
            st["newton"].append(info.newton_its)
            st["krylov"].append(info.krylov_its)
            st["drift"] = max(st["drift"], float(np.max(np.abs(s.masses() - m0) / m0)))
            st["min"] = min(st["min"], float(s.extrema()[0].min()))
        t, pits = ref.timed_solve()
        psecs.append(t)
    perr = ref.error()
    return [{"unknowns": unknowns, "seconds": float(np.mean(st["secs"])),
             "seconds_min": float(np.min(st["secs"])), "newton": float(np.mean(st["newton"])),
             "krylov": float(np.mean(st["krylov"])), "mass_drift": st["drift"],
             "min_density": st["min"],
             "poisson_seconds": float(np.min(psecs)), "poisson_unknowns": ref.unknowns,
             "poisson_its": int(pits), "poisson_error": perr} for st in stats]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="up to ~1e5 unknowns (< 1 minute)")
    parser.add_argument("--dt", type=float, default=DT, help="time step on the coarsest mesh")
    parser.add_argument("--dt-exponent", type=float, default=0.0,
                        help="dt on mesh h_k is dt (h_k / h_0)^q: 0 fixed (default), 1 fixed "
                             "CFL number, 2 fixed dt/h^2 (same operator regime on every mesh)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mesh")
    parser.add_argument("--solver", default="default", choices=sorted(SOLVER_OPTIONS),
                        help="PETSc options passed to the solver")
    parser.add_argument("--scheme", default="upwind",
                        choices=[e.scheme for e in entries("local") if e.positive],
                        help="P1 scheme (default upwind, the figures the README quotes)")
    parser.add_argument("--coarsest", type=int, default=None,
                        help="cells per side of the coarsest mesh h (then h/2, h/4)")
    parser.add_argument("--compare", action="store_true",
                        help="the previous step (solver defaults) and the new one (NEW_STEP) "
                             "side by side in this run")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE",
                        help="with --compare: an option of the new variant (replaces "
                             f"NEW_STEP = {NEW_STEP})")
    args = parser.parse_args()
    new_step = dict(NEW_STEP)
    if args.variant:
        new_step = {}
        for item in args.variant:
            key, sep, value = item.partition("=")
            if not sep:
                parser.error(f"--variant {item!r}: expected KEY=VALUE")
            try:
                new_step[key] = json.loads(value)
            except json.JSONDecodeError:
                new_step[key] = value
    variants = [{}, new_step] if args.compare else [{}]
    labels = ["previous", "new"] if args.compare else [args.scheme]
    comm = MPI.COMM_WORLD
    rss_import_kb = peak_rss_kb(comm)  # the interpreter, DOLFINx, PETSc: before any mesh
    n0 = args.coarsest or (56 if args.quick else 177)
    sizes = [n0, 2 * n0, 4 * n0]
    options = SOLVER_OPTIONS[args.solver]
    dts = [args.dt * (n0 / n) ** args.dt_exponent for n in sizes]
    if comm.rank == 0:
        print(f"local step bench: ranks={comm.size} scheme={args.scheme} dt={dts} "
              f"solver={args.solver} "
              f"options={options}"
              + (f" compare: previous = defaults, new = {new_step}" if args.compare else ""))
        print(f"{'variant':>8} {'n':>5} {'unknowns':>9} {'step s':>8} {'Poisson s':>9} "
              f"{'ratio':>6} {'Newton':>6} {'Krylov':>7} {'Kr/Nw':>6} {'P its':>5} "
              f"{'mass drift':>10} {'min rho':>9}", flush=True)
    per_variant = [[] for _ in variants]
    for n, dt in zip(sizes, dts):
        for rows, label, st in zip(per_variant, labels,
                                   time_steps(comm, n, dt, args.steps, options, args.scheme,
                                              variants)):
            # fastest timed step over fastest Poisson solve: the pair least disturbed by load
            ratio = st["seconds_min"] / st["poisson_seconds"]
            rows.append({**st, "n": n, "ratio": ratio})
            ps = {"seconds": st["poisson_seconds"], "iterations": st["poisson_its"]}
            if comm.rank == 0:
                print(f"{label:>8} {n:5d} {st['unknowns']:9d} {st['seconds_min']:8.3f} "
                      f"{ps['seconds']:9.3f} {ratio:6.2f} {st['newton']:6.1f} "
                      f"{st['krylov']:7.1f} {st['krylov'] / st['newton']:6.2f} "
                      f"{ps['iterations']:5d} {st['mass_drift']:10.1e} "
                      f"{st['min_density']:9.2e}", flush=True)
    rss_kb = peak_rss_kb(comm)
    rows = per_variant[-1] if args.compare else per_variant[0]
    rss_per_unknown = rss_kb * comm.size / rows[-1]["unknowns"]  # KiB
    rss_above_import = (rss_kb - rss_import_kb) * comm.size / rows[-1]["unknowns"]
    if comm.rank == 0:
        print(f"peak RSS {rss_kb / 1024:.0f} MB (largest rank), {rss_per_unknown:.2f} KiB per "
              f"unknown of the finest mesh ({rows[-1]['unknowns']} unknowns, x{comm.size} "
              f"ranks{'; both variants in one process' if args.compare else ''}); "
              f"{rss_above_import:.2f} KiB above the {rss_import_kb / 1024:.0f} MB after "
              "imports")
    compare = None
    if args.compare:
        old, new = per_variant
        compare = {"new_options": new_step,
                   "step_seconds_previous": [r["seconds_min"] for r in old],
                   "step_seconds_new": [r["seconds_min"] for r in new],
                   "new_over_previous": [b["seconds_min"] / a["seconds_min"]
                                         for a, b in zip(old, new)],
                   "newton_previous": [r["newton"] for r in old],
                   "newton_new": [r["newton"] for r in new],
                   "krylov_previous": [r["krylov"] for r in old],
                   "krylov_new": [r["krylov"] for r in new],
                   "step_over_poisson_previous": [r["ratio"] for r in old],
                   "step_over_poisson_new": [r["ratio"] for r in new],
                   "max_mass_drift_new": max(r["mass_drift"] for r in new),
                   "min_density_new": min(r["min_density"] for r in new)}
        if comm.rank == 0:
            print("new / previous step time per mesh (fastest step each, same run): "
                  + ", ".join(f"{r:.2f}" for r in compare["new_over_previous"]))
    kr_growth = rows[-1]["krylov"] / rows[0]["krylov"]
    kr_per_newton = [r["krylov"] / r["newton"] for r in rows]
    if comm.rank == 0:
        print(f"step / Poisson at {rows[-1]['unknowns']} unknowns: {rows[-1]['ratio']:.2f} "
              f"(target <= 5): {'met' if rows[-1]['ratio'] <= 5 else 'MISSED'}")
        print(f"Krylov iterations per step h -> h/4: x{kr_growth:.2f}, per Newton step "
              f"x{kr_per_newton[-1] / kr_per_newton[0]:.2f} (target <= 1.5): "
              f"{'met' if kr_growth <= 1.5 else 'MISSED'}")
    print_json = {
        "bench": "local", "ranks": comm.size, "scheme": args.scheme, "dt": dts,
        "solver": args.solver,
        "quick": bool(args.quick), "n": sizes,
        "unknowns": rows[-1]["unknowns"], "unknowns_per_mesh": [r["unknowns"] for r in rows],
        "step_seconds": [r["seconds_min"] for r in rows],
        "step_seconds_mean": [r["seconds"] for r in rows],
        "poisson_seconds": [r["poisson_seconds"] for r in rows],
        "step_over_poisson": rows[-1]["ratio"],
        "step_over_poisson_per_mesh": [r["ratio"] for r in rows],
        "newton_its": [r["newton"] for r in rows], "krylov_its": [r["krylov"] for r in rows],
        "krylov_per_newton": kr_per_newton, "krylov_growth_h_to_h4": kr_growth,
        "poisson_its": [r["poisson_its"] for r in rows],
        "poisson_rel_l2_error": [r["poisson_error"] for r in rows],
        "max_mass_drift": max(r["mass_drift"] for r in rows),
        "min_density": min(r["min_density"] for r in rows),
        "peak_rss_kb_per_unknown": rss_per_unknown,
        "peak_rss_kb_per_unknown_above_imports": rss_above_import,
        "compare": compare,
    }
    if comm.rank == 0:
        print(json.dumps(print_json))


if __name__ == "__main__":
    main()
