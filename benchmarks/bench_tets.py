"""Negative-weight edges on tetrahedra: the treatments side by side on a 3D Barenblatt solution.

For every treatment in ``--modes`` (``negative_edges`` of the upwind scheme; default
``front,limit,voronoi,voronoi@delaunay,keep,drop``; ``@delaunay``: on the ball meshed with
``meshes.ball(..., delaunay=True)``, gmsh's Delaunay tetrahedra without its optimiser) on gmsh
balls of radius 1 with mesh sizes ``--hs``:

* the relative L1 error at ``t = 1`` of the Barenblatt solution (``m = 2``, ``sigma = 0``,
  from ``tau = 1/2``, implicit Euler with ``dt = h / 4``: the set-up of the tests; ``--method
  bdf2``) and its rate (least-squares slope in log-log), against the interpolant of the
  profile (the figure of the issue), against the profile itself, and the interpolant's own
  error against the profile (P1's best-approximation floor); mode suffix ``@dualmass``: the
  dual volumes as masses (see :func:`run_mode`);
* the smallest ``min rho / max rho`` over all steps;
* the cost per step on the finest mesh: wall seconds per step and Newton iterations, and
  its ratio to ``"limit"`` (today's limiter before issue 16), measured in the same run;

and once per mesh size the fraction of edges whose P1 stiffness weight is negative, and the
fraction whose circumcentric dual weight is negative on both balls. Then the
same fraction for gmsh's 3D algorithms and optimisers on one ball (``--mesh-h``): no mesh
option removes the negative edges.

Only rank 0 prints. The last line is one JSON object. Timings on a shared machine are noisy:
the cost ratios are measured side by side in one run.

Usage: ``python benchmarks/bench_tets.py [--quick] [--modes front,limit] [--hs 0.2,0.14,0.1]
[--mesh-h 0.15] [--no-mesh-options] [--method bdf2]``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import ufl

from fem_crossdiff import exact, meshes
from fem_crossdiff.compat import MPI, fem
from fem_crossdiff.discretisation.edges import (
    circumcentric_weights,
    dual_volumes,
    p1_edge_weights,
    total_edge_weights,
)
from fem_crossdiff.measures import exact_lp_error
from fem_crossdiff.params import ModelParams, TimeParams
from fem_crossdiff.solver import CrossDiffusionSolver

COMM = MPI.COMM_WORLD
M, C = 2.0, 0.0185  # support radius 0.53 at tau = 1/2, 0.61 at tau = 1 (ball radius 1)

#: gmsh options tried for the ball (name -> options on top of the builder's size options).
MESH_OPTIONS = {
    "default (Delaunay + optimiser)": {},
    "Delaunay, no optimiser": {"Mesh.Algorithm3D": 1, "Mesh.Optimize": 0},
    "HXT": {"Mesh.Algorithm3D": 10},
    "Frontal": {"Mesh.Algorithm3D": 4},
    "Netgen optimiser": {"Mesh.OptimizeNetgen": 1},
}


def barenblatt(x, tau):
    """Barenblatt profile of ``u_t = Lap(u^2) / 2`` (``div(u grad u)``) in 3D at ``tau``."""
    return exact.barenblatt(x, tau, M, d=3, C=C)


def negative_fraction(msh, dual: bool = False) -> float:
    """Fraction of the edges whose total P1 (or circumcentric dual) weight is negative."""
    V = fem.functionspace(msh, ("Lagrange", 1))
    I, J, W = circumcentric_weights(V)[:3] if dual else p1_edge_weights(V)
    total = total_edge_weights(V, I, J, W)
    g = V.dofmap.index_map.local_to_global(np.arange(V.dofmap.index_map.size_local
                                                     + V.dofmap.index_map.num_ghosts,
                                                     dtype=np.int32)).astype(np.int64)
    n = V.dofmap.index_map.size_global
    lo, hi = np.minimum(g[I], g[J]), np.maximum(g[I], g[J])
    keys = lo * n + hi
    scale = COMM.allreduce(float(np.abs(total).max(initial=0.0)), op=MPI.MAX)
    neg = total < -1e-12 * scale
    # an edge of cells on two ranks appears on both: count unique global edges
    every = COMM.gather(keys, root=0)
    negative = COMM.gather(keys[neg], root=0)
    frac = None
    if COMM.rank == 0:
        frac = np.unique(np.concatenate(negative)).size / np.unique(np.concatenate(every)).size
    return COMM.bcast(frac, root=0)


def run_mode(mode: str, geo, h: float, method: str = "ie"):
    """Errors at t = 1, smallest min/max, seconds and Newton per step, mass drift.

    ``mode`` is a ``negative_edges`` mode with optional suffixes ``@delaunay`` (the mesh: the
    caller passes the Delaunay ball) and ``@dualmass``: the time term's masses are the
    circumcentric dual volumes (:func:`fem_crossdiff.discretisation.edges.dual_volumes`)
    instead of P1's
    lumped masses, the finite-volume scheme on the dual mesh (an experiment: the errors change
    by <= 3%, docs/tets.md). The errors are the relative L1 errors ``interp`` (against the
    interpolant, one-point quadrature), ``exact`` (against the profile,
    :func:`fem_crossdiff.measures.exact_lp_error`) and the interpolant's own ``exact`` error.
    The mass drift is ``|sum_i m_i rho_i - initial| / initial`` with the masses in use.
    """
    name, *tags = mode.split("@")
    s = CrossDiffusionSolver(geo.mesh, ModelParams(a=(1.0,), b=(1.0,), m=M, sigma=0.0),
                             scheme="upwind", negative_edges=name, positivity_tol=None)
    if "dualmass" in tags:
        # the time term's masses (the solver's lumped-mass vector, shared with its time term)
        s.problem.time_term.mass[:] = dual_volumes(s.V0)
    s.set_initial([lambda x: barenblatt(x, 0.5)])
    mass = s.problem.time_term.mass

    def total():
        return COMM.allreduce(float(np.sum(mass * s.rho.x.array[: mass.size])), op=MPI.SUM)

    m0 = total()
    mins = []
    COMM.Barrier()
    t0 = time.perf_counter()
    rows = s.run(TimeParams(T=1.0, dt=h / 4, method=method), progress=False,
                 callback=lambda sv, row: mins.append(row["min_1"] / row["max_1"]))
    wall = COMM.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    ex = fem.Function(s.V0)
    ex.interpolate(lambda x: barenblatt(x, 1.0))
    u = s.species(0)
    err, ref = (COMM.allreduce(fem.assemble_scalar(fem.form(f * ufl.dx)), op=MPI.SUM)
                for f in (abs(u - ex), abs(ex)))
    norm = exact_lp_error(fem.Function(s.V0), lambda x: barenblatt(x, 1.0))
    errors = {"interp": err / ref,
              "exact": exact_lp_error(u, lambda x: barenblatt(x, 1.0)) / norm,
              "interpolant": exact_lp_error(ex, lambda x: barenblatt(x, 1.0)) / norm}
    steps = len(rows) - 1
    newton = float(np.mean([r["newton_its"] for r in rows[1:]]))
    return errors, float(min(mins)), wall / steps, newton, abs(total() - m0) / m0


def mesh_option_fractions(h: float) -> dict:
    """Negative-edge fraction of a ball meshed with each of :data:`MESH_OPTIONS` (rank 0)."""
    out = {}
    if COMM.rank != 0:
        return COMM.bcast(out, root=0)
    import gmsh

    for name, opts in MESH_OPTIONS.items():
        own = not gmsh.isInitialized()
        if own:
            gmsh.initialize(interruptible=False)
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.model.add(f"bench_tets_{len(out)}")
        gmsh.model.occ.addSphere(0.0, 0.0, 0.0, 1.0)
        gmsh.model.occ.synchronize()
        saved = {}
        for key, value in {"Mesh.MeshSizeMax": h, "Mesh.MeshSizeMin": 0.0,
                           "Mesh.MeshSizeFromCurvature": 0.0, **opts}.items():
            saved[key] = gmsh.option.getNumber(key)
            gmsh.option.setNumber(key, value)
        gmsh.model.mesh.generate(3)
        tags, coords, _ = gmsh.model.mesh.getNodes()
        X = coords.reshape(-1, 3)
        index = np.zeros(int(tags.max()) + 1, dtype=np.int64)
        index[tags] = np.arange(tags.size)
        _, nodes = gmsh.model.mesh.getElementsByType(4)
        T = index[np.asarray(nodes, dtype=np.int64).reshape(-1, 4)]
        for key, value in saved.items():
            gmsh.option.setNumber(key, value)
        gmsh.model.remove()
        if own:
            gmsh.finalize()
        W = _serial_weights(X, T)
        out[name] = {"fraction": float(np.mean(W < -1e-12 * np.abs(W).max())),
                     "vertices": int(X.shape[0])}
    return COMM.bcast(out, root=0)


def _serial_weights(X: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Total P1 weights ``-K_ij`` of every edge of the tetrahedra ``T`` (numpy, one rank)."""
    xc = X[T]
    E = np.transpose(xc[:, 1:, :] - xc[:, :1, :], (0, 2, 1))
    EtE = np.einsum("cgi,cgj->cij", E, E)
    Ginv = np.linalg.solve(EtE, np.transpose(E, (0, 2, 1)))
    grads = np.concatenate([-Ginv.sum(axis=1, keepdims=True), Ginv], axis=1)
    vol = np.abs(np.linalg.det(E)) / 6.0
    K = vol[:, None, None] * np.einsum("cpg,cqg->cpq", grads, grads)
    p, q = np.triu_indices(4, k=1)
    I, J = T[:, p].ravel(), T[:, q].ravel()
    keys = np.minimum(I, J) * X.shape[0] + np.maximum(I, J)
    _, inv = np.unique(keys, return_inverse=True)
    return np.bincount(inv, weights=-K[:, p, q].ravel())


def _rate(hs, errs) -> float:
    return float(np.polyfit(np.log(hs), np.log(errs), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="h = 0.2, 0.14 (< 2 minutes)")
    parser.add_argument("--modes", default="front,limit,voronoi,voronoi@delaunay,keep,drop")
    parser.add_argument("--hs", default=None, help="mesh sizes (default 0.2,0.14,0.1,0.07)")
    parser.add_argument("--mesh-h", type=float, default=0.15, help="h of the mesh-option study")
    parser.add_argument("--no-mesh-options", action="store_true")
    parser.add_argument("--method", default="ie", help="time integrator (ie, bdf2)")
    args = parser.parse_args()
    modes = args.modes.split(",")
    hs = ([float(v) for v in args.hs.split(",")] if args.hs
          else [0.2, 0.14] if args.quick else [0.2, 0.14, 0.1, 0.07])
    out = {"bench": "tets", "modes": modes, "hs": hs, "quick": args.quick, "ranks": COMM.size,
           "errors": {m: [] for m in modes}, "rate": {}, "min_rel": {}, "negative_fraction": [],
           "negative_fraction_dual": [], "negative_fraction_dual_delaunay": [],
           "step_seconds": {}, "newton_step": {}, "step_cost_ratio": {}, "method": args.method,
           "errors_exact": {m: [] for m in modes}, "rate_exact": {},
           "errors_interpolant": {m: [] for m in modes}, "rate_interpolant": {},
           "mass_drift": {m: 0.0 for m in modes}}

    def say(*a):
        if COMM.rank == 0:
            print(*a, flush=True)

    mins = {m: [] for m in modes}
    for h in hs:
        geo = meshes.ball(COMM, h=h)
        dgeo = meshes.ball(COMM, h=h, delaunay=True)
        fracs = (negative_fraction(geo.mesh), negative_fraction(geo.mesh, dual=True),
                 negative_fraction(dgeo.mesh, dual=True))
        for key, f in zip(("", "_dual", "_dual_delaunay"), fracs, strict=True):
            out["negative_fraction" + key].append(f)
        nv = geo.mesh.topology.index_map(0).size_global
        say(f"h = {h:g}: {nv} vertices; negative edges: P1 {100 * fracs[0]:.1f}%, circumcentric "
            f"dual {100 * fracs[1]:.2f}% (Delaunay ball {100 * fracs[2]:.2f}%)")
        for mode in modes:
            err, mn, sec, newton, drift = run_mode(
                mode, dgeo if "@delaunay" in mode else geo, h, args.method)
            out["errors"][mode].append(err["interp"])
            out["errors_exact"][mode].append(err["exact"])
            out["errors_interpolant"][mode].append(err["interpolant"])
            out["mass_drift"][mode] = max(out["mass_drift"][mode], drift)
            mins[mode].append(mn)
            out["step_seconds"][mode], out["newton_step"][mode] = sec, newton
            say(f"  {mode:24s} L1 error {err['interp']:.4f} (against the profile "
                f"{err['exact']:.4f}, interpolant {err['interpolant']:.4f})  min/max {mn:.1e}  "
                f"mass drift {drift:.1e}  {sec:.3f} s/step  Newton {newton:.2f}")
    base = "limit" if "limit" in modes else modes[0]
    for mode in modes:
        out["min_rel"][mode] = float(min(mins[mode]))
        for key in ("", "_exact", "_interpolant"):
            out["rate" + key][mode] = (_rate(hs, out["errors" + key][mode]) if len(hs) > 1
                                       else None)
        out["step_cost_ratio"][mode] = out["step_seconds"][mode] / out["step_seconds"][base]
    say(f"{'mode':24s} {'rate':>5s} {'exact':>5s} {'interpolant':>11s} {'min/max':>9s} "
        f"{'s/step':>7s} {'Newton':>6s} cost/{base} (h = {hs[-1]:g})")

    def rate_of(mode, key):
        r = out["rate" + key][mode]
        return "  n/a" if r is None else f"{r:5.2f}"

    for mode in modes:
        say(f"{mode:24s} {rate_of(mode, '')} {rate_of(mode, '_exact')} "
            f"{rate_of(mode, '_interpolant'):>11s} "
            f"{out['min_rel'][mode]:9.1e} {out['step_seconds'][mode]:7.3f} "
            f"{out['newton_step'][mode]:6.2f} {out['step_cost_ratio'][mode]:.2f}")
    if not args.no_mesh_options:
        out["mesh_options"] = mesh_option_fractions(args.mesh_h)
        for name, v in out["mesh_options"].items():
            say(f"gmsh {name:32s} h = {args.mesh_h:g}: {100 * v['fraction']:.1f}% negative "
                f"({v['vertices']} vertices)")
    say(json.dumps(out))


if __name__ == "__main__":
    main()
