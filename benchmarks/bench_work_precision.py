"""Work-precision: L1 error at the final time against wall-clock seconds, per scheme.

Which scheme reaches a given accuracy first? For every scheme in ``--schemes`` (default
``upwind`` and ``muscl``, the solver's default), every mesh and every time tolerance
``--tols`` (adaptive steps, ``TimeParams(adaptive=True, tol=...)``), one run to ``T`` is timed
(solver construction, initial data and the time loop: what a user pays; the forms of every
scheme are compiled by an untimed warm-up run first) and its relative L1 error at ``T`` is
measured on two problems:

* ``segregation``: ``bench_local``'s two species on the unit square (``a = (1, 2)``,
  ``b = (1, 0.5)``, ``m = 2``, ``sigma = 1e-3``; species 2 a cap in a disc where species 1
  vanishes) to ``T = 0.1``. There is no exact solution: the reference is a run of the default
  scheme on a mesh finer than every measured one (``--ref-factor`` times the finest, nested:
  the coarse P1 solution is interpolated onto it exactly) with a tenth of the smallest
  tolerance. The error is ``sum_k ||rho_k - ref_k||_L1 / sum_k ||ref_k||_L1`` on the
  reference mesh; errors close to the reference's own (about its mesh's) are not resolved.
* ``barenblatt``: one species, ``a = b = 1``, ``m = 2``, ``sigma = 0``: the 2D Barenblatt
  profile (``fem_crossdiff.exact.barenblatt``, ``C = 0.25``) from profile time ``kappa =
  (m - 1) / m`` to ``t = T = 0.5`` (profile time ``kappa (1 + T)``), on the quarter ``[0, 2.5]^2``
  (the profile is symmetric: the no-flux walls at ``x = 0``, ``y = 0`` are its symmetry
  lines). The error is ``||u - U||_L1 / ||U||_L1`` against the profile itself
  (:func:`fem_crossdiff.measures.exact_lp_error`). With one species the fraction that
  ``muscl`` reconstructs is 1: both schemes compute the same solution, and the panel shows
  what ``muscl``'s machinery costs where it buys nothing. From ``dt0 = 1e-3`` the steps are
  limited by the growth factor rather than by ``tol`` here: the spatial error dominates.

Every run uses implicit Euler by default (``--method``; the schemes' positivity holds for it)
from ``dt = --dt0``. Printed: one table per problem (mesh, tolerance, seconds, error, steps,
rejected steps, Newton iterations), then, per problem, which scheme reaches the finest error
both reach (the smallest error of the scheme that stays coarser, interpolated log-log on the
other's curve) first, and by what factor; a PNG (``--png``, log-log error against seconds, one
panel per problem) and, last, one JSON object with every point.

Timings on a shared machine are noisy; the runs of both schemes alternate on every mesh so
that both see about the same load. Runs serially or under ``mpiexec``; only rank 0 prints.

Usage: ``python benchmarks/bench_work_precision.py [--quick] [--schemes upwind,muscl]
[--meshes 16,32,64] [--tols 1e-2,1e-3] [--problems segregation,barenblatt] [--png FILE]``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import ufl
from bench_local import PARAMS, initial_state

from fem_crossdiff.compat import MPI, fem, mesh
from fem_crossdiff.exact import barenblatt
from fem_crossdiff.measures import exact_lp_error
from fem_crossdiff.params import ModelParams, TimeParams
from fem_crossdiff.solver import CrossDiffusionSolver

COMM = MPI.COMM_WORLD
PROBLEMS = ("segregation", "barenblatt")
#: Final times (short enough for a quick run, long enough for the fronts to move cells).
T_SEG, T_BAR = 0.1, 0.5
#: Barenblatt: exponent, mass constant, quarter-domain side.
M_BAR, C_BAR, L_BAR = 2.0, 0.25, 2.5
KAPPA = (M_BAR - 1.0) / M_BAR


def _mesh(problem: str, n: int):
    if problem == "segregation":
        return mesh.create_unit_square(COMM, n, n)
    return mesh.create_rectangle(COMM, [[0.0, 0.0], [L_BAR, L_BAR]], [n, n])


def scheme_spec(spec: str) -> tuple[str, dict]:
    """``"muscl+predictor=extrapolate+newton_tol_ratio=0.1"`` -> the scheme and solver options.

    Values are read as JSON where they parse (numbers), else kept as strings.
    """
    name, *items = spec.split("+")
    opts = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"scheme spec {spec!r}: {item!r} is not KEY=VALUE")
        try:
            opts[key] = json.loads(value)
        except json.JSONDecodeError:
            opts[key] = value
    return name, opts


def _solver(problem: str, spec: str, n: int) -> CrossDiffusionSolver:
    msh = _mesh(problem, n)
    scheme, opts = scheme_spec(spec)
    if problem == "segregation":
        s = CrossDiffusionSolver(msh, PARAMS, scheme=scheme, **opts)
        s.set_initial([lambda x: initial_state(x)[0], lambda x: initial_state(x)[1]])
    else:
        s = CrossDiffusionSolver(msh, ModelParams(a=(1.0,), b=(1.0,), m=M_BAR, sigma=0.0),
                                 scheme=scheme, **opts)
        s.set_initial([lambda x: barenblatt(x, KAPPA, M_BAR, 2, C_BAR)])
    return s


def run_case(problem: str, scheme: str, n: int, tol: float, method: str, dt0: float):
    """One timed run to ``T``: returns the solver and the run's figures."""
    T = T_SEG if problem == "segregation" else T_BAR
    COMM.Barrier()
    t0 = time.perf_counter()
    s = _solver(problem, scheme, n)
    rows = s.run(TimeParams(T=T, dt=dt0, method=method, adaptive=True, tol=tol),
                 progress=False)
    secs = COMM.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    n = s.params.n
    drift = max(abs(rows[-1][f"mass_{k}"] / rows[0][f"mass_{k}"] - 1) for k in range(1, n + 1))
    return s, {"seconds": secs, "steps": len(rows) - 1,
               "rejected": int(sum(r["rejected"] for r in rows)),
               "newton": int(sum(r["newton_its"] for r in rows)),
               "mass_drift": float(drift),
               "min_density": float(min(r[f"min_{k}"] for r in rows for k in range(1, n + 1)))}


def _on_fine(coarse: fem.Function, V_fine) -> fem.Function:
    """``coarse`` (P1) interpolated onto the nested finer mesh: exact for nested P1 spaces."""
    f = fem.Function(V_fine)
    msh = V_fine.mesh
    cmap = msh.topology.index_map(msh.topology.dim)
    cells = np.arange(cmap.size_local + cmap.num_ghosts, dtype=np.int32)
    data = fem.create_interpolation_data(V_fine, coarse.function_space, cells, padding=1e-10)
    f.interpolate_nonmatching(coarse, cells, data)
    f.x.scatter_forward()
    return f


def _l1(expr, msh) -> float:
    dx = ufl.Measure("dx", domain=msh, metadata={"quadrature_degree": 4})
    return COMM.allreduce(fem.assemble_scalar(fem.form(abs(expr) * dx)), op=MPI.SUM)


def segregation_error(s: CrossDiffusionSolver, ref: list) -> float:
    """``sum_k ||rho_k - ref_k||_L1 / sum_k ||ref_k||_L1`` on the reference mesh."""
    V = ref[0].function_space
    num = sum(_l1(_on_fine(s.species(k), V) - r, V.mesh) for k, r in enumerate(ref))
    den = sum(_l1(r, V.mesh) for r in ref)
    return num / den


def barenblatt_error(s: CrossDiffusionSolver) -> float:
    """``||u - U||_L1 / ||U||_L1`` at ``T`` against the profile (quarter domain)."""
    tau = KAPPA * (1.0 + T_BAR)

    def exact(x):
        return barenblatt(x, tau, M_BAR, 2, C_BAR)

    u = s.species(0)
    zero = fem.Function(u.function_space)
    return exact_lp_error(u, exact) / exact_lp_error(zero, exact)


def crossing(points_a: list, points_b: list) -> dict | None:
    """Seconds each scheme needs for the finest error both reach, and their ratio.

    The target is the larger of the two schemes' smallest errors; the seconds of the scheme
    that reaches further are interpolated log-log along its error-sorted points (its work
    to reach that error), the other's are those of its most accurate point.
    """
    if not points_a or not points_b:
        return None
    ea, eb = min(p["error"] for p in points_a), min(p["error"] for p in points_b)
    target = max(ea, eb)

    def seconds_for(points):
        # the cheapest point at least as accurate as the target, else log-log interpolation
        # between the most accurate point above it and the cheapest below it
        below = [p for p in points if p["error"] <= target * (1 + 1e-12)]
        best = min(below, key=lambda p: p["seconds"])
        above = [p for p in points if p["error"] > target and p["seconds"] < best["seconds"]]
        if not above:
            return best["seconds"]
        hi = min(above, key=lambda p: p["error"])
        w = np.log(hi["error"] / target) / np.log(hi["error"] / best["error"])
        return float(np.exp((1 - w) * np.log(hi["seconds"]) + w * np.log(best["seconds"])))

    sa, sb = seconds_for(points_a), seconds_for(points_b)
    return {"error": float(target), "seconds": [sa, sb], "ratio": sb / sa}


def plot(path: str, results: dict, schemes: list) -> None:
    """Error against seconds, log-log, one panel per problem (rank 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = list(results)
    fig, axes = plt.subplots(1, len(probs), figsize=(5.5 * len(probs), 4.2), squeeze=False)
    markers = {}
    for ax, prob in zip(axes[0], probs):
        pts = results[prob]
        tols = sorted({p["tol"] for p in pts}, reverse=True)
        for si, scheme in enumerate(schemes):
            for ti, tol in enumerate(tols):
                sel = sorted((p for p in pts if p["scheme"] == scheme and p["tol"] == tol),
                             key=lambda p: p["n"])
                if not sel:
                    continue
                style = ("-", "--", ":", "-.")[ti % 4]
                markers.setdefault(scheme, "os^vD"[si % 5])
                ax.loglog([p["seconds"] for p in sel], [p["error"] for p in sel],
                          style, marker=markers[scheme], color=f"C{si}",
                          label=f"{scheme}, tol={tol:g}")
                for p in sel:
                    ax.annotate(str(p["n"]), (p["seconds"], p["error"]), fontsize=7,
                                textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel("wall-clock seconds (construction + run to T)")
        ax.set_ylabel("relative L1 error at T")
        ax.set_title(prob)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="meshes 12, 24, 48, reference 96 (under three minutes)")
    parser.add_argument("--schemes", default="upwind,muscl",
                        help="scheme specs, comma separated; a spec may add solver options, "
                             "e.g. muscl+newton_tol_ratio=0.1 (the first two are compared)")
    parser.add_argument("--meshes", default=None,
                        help="cells per side, comma separated (default 32,64,128; quick "
                             "12,24,48)")
    parser.add_argument("--tols", default="1e-2,1e-3", help="adaptive time tolerances")
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--method", default="ie", choices=("ie", "bdf2"))
    parser.add_argument("--dt0", type=float, default=1e-3, help="first step")
    parser.add_argument("--ref-factor", type=int, default=2,
                        help="segregation reference mesh = this times the finest mesh")
    parser.add_argument("--png", default="work_precision.png", help="figure ('' for none)")
    args = parser.parse_args()
    schemes = [v.strip() for v in args.schemes.split(",") if v.strip()]
    meshes = [int(v) for v in (args.meshes or ("12,24,48" if args.quick else "32,64,128"))
              .split(",")]
    tols = _floats(args.tols)
    problems = [v.strip() for v in args.problems.split(",") if v.strip()]
    for name in problems:
        if name not in PROBLEMS:
            parser.error(f"--problems: {name!r} is not one of {', '.join(PROBLEMS)}")
    if len(meshes) < 1 or any(n < 2 for n in meshes) or not tols or any(
            not 0 < t < 1 for t in tols) or args.ref_factor < 1:
        parser.error("need meshes >= 2 cells per side, tolerances in (0, 1), --ref-factor "
                     ">= 1")
    say = print if COMM.rank == 0 else (lambda *a, **k: None)
    say(f"work-precision: ranks={COMM.size} schemes={schemes} meshes={meshes} tols={tols} "
        f"method={args.method} dt0={args.dt0:g}", flush=True)
    t_start = time.perf_counter()
    for prob in problems:  # untimed warm-up: form compilation of every scheme and problem
        for scheme in schemes:
            s = _solver(prob, scheme, 4)
            s.step(1e-4)
    results, summary, reference = {}, {}, {}
    for prob in problems:
        ref = None
        if prob == "segregation":
            nref = args.ref_factor * max(meshes)
            tref = min(tols) / 10
            s, st = run_case(prob, "muscl", nref, tref, args.method, args.dt0)
            ref = [s.species(k) for k in range(PARAMS.n)]
            reference = {"scheme": "muscl", "n": nref, "tol": tref, **st}
            say(f"segregation reference: muscl n={nref} tol={tref:g} {st['seconds']:.1f} s, "
                f"{st['steps']} steps", flush=True)
            del s
        say(f"\n{prob} (T = {T_SEG if prob == 'segregation' else T_BAR:g})")
        say(f"{'scheme':>8} {'n':>4} {'tol':>7} {'seconds':>8} {'L1 error':>9} {'steps':>5} "
            f"{'rej':>4} {'Newton':>6} {'mass drift':>10} {'min rho':>9}", flush=True)
        pts = []
        for n in meshes:
            for tol in tols:
                for scheme in schemes:
                    s, st = run_case(prob, scheme, n, tol, args.method, args.dt0)
                    err = segregation_error(s, ref) if ref is not None else barenblatt_error(s)
                    del s
                    pts.append({"scheme": scheme, "n": n, "tol": tol, "error": float(err), **st})
                    say(f"{scheme:>8} {n:4d} {tol:7.0e} {st['seconds']:8.2f} {err:9.3e} "
                        f"{st['steps']:5d} {st['rejected']:4d} {st['newton']:6d} "
                        f"{st['mass_drift']:10.1e} {st['min_density']:9.2e}", flush=True)
        results[prob] = pts
        if len(schemes) >= 2:
            a, b = schemes[0], schemes[1]
            c = crossing([p for p in pts if p["scheme"] == a],
                         [p for p in pts if p["scheme"] == b])
            summary[prob] = c
            if c is not None:
                say(f"{prob}: finest error both reach {c['error']:.3e}: {a} {c['seconds'][0]:.2f}"
                    f" s, {b} {c['seconds'][1]:.2f} s ({b} / {a} = {c['ratio']:.2f})")
    if args.png and COMM.rank == 0:
        plot(args.png, results, schemes)
        say(f"figure: {args.png}")
    say(f"total {time.perf_counter() - t_start:.1f} s")
    say(json.dumps({"bench": "work_precision", "ranks": COMM.size, "method": args.method,
                    "schemes": schemes, "meshes": meshes, "tols": tols,
                    "T": {"segregation": T_SEG, "barenblatt": T_BAR},
                    "reference": reference, "points": results, "crossing": summary}))


if __name__ == "__main__":
    main()
