"""The spatial schemes side by side: rates, positivity, front sharpness and cost per step.

For every scheme in ``--schemes`` (default ``upwind`` and ``muscl``):

* Barenblatt (``sigma = 0``, one species, BDF2 with ``dt = 0.4 / n`` on ``[-6, 6]``; 2D on
  ``[-3, 3]^2``): relative L1 error at ``t = 1`` from ``tau = kappa`` and its rate, for
  ``m = 2, 3`` in 1D and ``m = 2`` in 2D; the smallest ``min rho / max rho`` seen;
* segregation (``sigma = 0``, ``m = 2``, ``a = b = (1, 1)``, 1D): a Barenblatt mixture split at
  ``x0 = -0.5`` (species 1 left, 2 right); the overlap ``int rho_1 rho_2`` at ``t = 1`` and its
  rate, and the interface (where ``rho_1 = rho_2``) against the exact path
  ``x(t) = x_h(0) (tau / tau_0)^(1/(m+1))`` of the discrete initial interface, in units of h;
* 3D Barenblatt (``m = 2``) in a gmsh ball, IE with ``dt = h / 4`` (the test's set-up);
* a smooth steady manufactured solution in 2D (``tests``' coefficients), L2 rate;
* cost: the fastest of ``--steps`` implicit-Euler steps on ``bench_local``'s state and
  coefficients (GMRES + GAMG), each scheme timed alternately in one run, at 252k and 1.0M
  unknowns (``--quick``: 33k), as a ratio to the first-order scheme, with Newton iterations.

Only rank 0 prints. The last line is one JSON object. Timings on a shared machine are noisy:
the ratios are measured side by side.

Usage: ``python benchmarks/bench_schemes.py [--quick] [--schemes upwind,muscl] [--steps K]
[--no-3d] [--sizes 354,708] [--cost-only]``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import ufl
from bench_local import DT, PARAMS, initial_state

from fem_crossdiff.compat import MPI, fem, mesh
from fem_crossdiff.params import ModelParams, TimeParams
from fem_crossdiff.solver import CrossDiffusionSolver

COMM = MPI.COMM_WORLD


def barenblatt(x, tau, m, d=1, C=1.0):
    """Barenblatt profile of ``u_t = Lap(u^m)`` at time ``tau``."""
    alpha = d / (d * (m - 1) + 2)
    k = alpha * (m - 1) / (2 * m * d)
    r2 = sum(x[i] ** 2 for i in range(d))
    return tau ** (-alpha) * np.maximum(C - k * r2 * tau ** (-2 * alpha / d), 0.0) ** (
        1 / (m - 1))


def _integral(f) -> float:
    return COMM.allreduce(fem.assemble_scalar(fem.form(f * ufl.dx)), op=MPI.SUM)


def _rate(hs, errs) -> float:
    return float(np.polyfit(np.log(hs), np.log(errs), 1)[0])


def barenblatt_error(scheme, dim, m, n, min_rel):
    """Relative L1 error at t = 1 (BDF2, dt = 0.4 / n in 1D, 0.1 / n in 2D)."""
    C = 1.0 if dim == 1 else (0.25 if m == 2 else 0.2)
    if dim == 1:
        msh, h = mesh.create_interval(COMM, n, [-6.0, 6.0]), 12.0 / n
    else:
        msh = mesh.create_rectangle(COMM, [[-3.0, -3.0], [3.0, 3.0]], [n, n])
        h = 6.0 / n
    kappa = (m - 1) / m
    s = CrossDiffusionSolver(msh, ModelParams(a=(1.0,), b=(1.0,), m=m, sigma=0.0), scheme=scheme)
    s.set_initial([lambda x: barenblatt(x, kappa, m, dim, C)])
    s.run(TimeParams(T=1.0, dt=0.033 * h, method="bdf2"), progress=False,
          callback=lambda sv, row: min_rel.append(row["min_1"] / row["max_1"]))
    ex = fem.Function(s.V0)
    ex.interpolate(lambda x: barenblatt(x, 2 * kappa, m, dim, C))
    return _integral(abs(s.rho[0] - ex)) / _integral(abs(ex)), h


def segregation(scheme, n, min_rel):
    """Overlap and interface offset / h at t = 1."""
    m, x0, beta = 2.0, -0.5, 1.0 / 3.0
    kappa = (m - 1) / m
    msh = mesh.create_interval(COMM, n, [-6.0, 6.0])
    s = CrossDiffusionSolver(msh, ModelParams(a=(1.0, 1.0), b=(1.0, 1.0), m=m, sigma=0.0),
                             scheme=scheme)
    s.set_initial([lambda x: np.where(x[0] < x0, barenblatt(x, kappa, m), 0.0),
                   lambda x: np.where(x[0] >= x0, barenblatt(x, kappa, m), 0.0)])

    def interface():
        X = COMM.allgather(s.V0.tabulate_dof_coordinates()[:, 0])
        r = COMM.allgather(s.rho.x.array.reshape(-1, 2))
        X, r = np.concatenate(X), np.concatenate(r)
        o = np.argsort(X)
        X, d = X[o], (r[:, 0] - r[:, 1])[o]
        k = np.flatnonzero((d[:-1] > 0) & (d[1:] <= 0))[0]
        return X[k] + d[k] / (d[k] - d[k + 1]) * (X[k + 1] - X[k])

    h = 12.0 / n
    xi0 = interface()
    rows = s.run(TimeParams(T=1.0, dt=0.033 * h), progress=False)
    for r in rows:
        min_rel.append(min(r["min_1"] / r["max_1"], r["min_2"] / r["max_2"]))
    newton = float(np.mean([r["newton_its"] for r in rows[1:]]))
    return (_integral(s.rho[0] * s.rho[1]), (interface() - xi0 * 2.0 ** beta) / h, h, newton)


def barenblatt_3d(scheme, h, min_rel):
    """Relative L1 error at t = 1 in a gmsh ball (m = 2, IE, dt = h / 4)."""
    from fem_crossdiff import meshes

    m, C = 2.0, 0.0185
    geo = meshes.ball(COMM, h=h)
    s = CrossDiffusionSolver(geo.mesh, ModelParams(a=(1.0,), b=(1.0,), m=m, sigma=0.0),
                             scheme=scheme)
    kappa = (m - 1) / m
    s.set_initial([lambda x: barenblatt(x, kappa, m, 3, C)])
    s.run(TimeParams(T=1.0, dt=h / 4), progress=False,
          callback=lambda sv, row: min_rel.append(row["min_1"] / row["max_1"]))
    ex = fem.Function(s.V0)
    ex.interpolate(lambda x: barenblatt(x, 2 * kappa, m, 3, C))
    return _integral(abs(s.rho[0] - ex)) / _integral(abs(ex))


MMS = ModelParams(a=(1.0, 0.5), b=(1.0, 2.0), m=2.5, sigma=0.1)


def mms_error(scheme, n):
    """L2 error of the steady manufactured solution on the unit square (tests' set-up)."""
    msh = mesh.create_unit_square(COMM, n, n)
    x = ufl.SpatialCoordinate(msh)
    exact = [1.0 + 0.5 * ufl.cos(ufl.pi * x[0]) * ufl.cos(ufl.pi * x[1]),
             0.8 - 0.3 * ufl.cos(2 * ufl.pi * x[0])]

    def source(xx, t):
        S = sum(a * r for a, r in zip(MMS.a, exact))
        P = S ** (MMS.m - 1)
        return [-ufl.div(MMS.b[k] * r * ufl.grad(P) + MMS.sigma * ufl.grad(r))
                for k, r in enumerate(exact)]

    opts = {"jacobian": "mf"} if scheme == "muscl" else {}
    s = CrossDiffusionSolver(msh, MMS, scheme=scheme, linear_solver="direct", source=source,
                             positivity_tol=None, **opts)
    s.set_initial(exact)
    s.run(TimeParams(T=2e3, dt=1e3, adaptive=True), progress=False)
    return max(np.sqrt(_integral((s.rho[k] - exact[k]) ** 2)) for k in range(2))


def step_costs(schemes, n, steps, dt):
    """Fastest IE step per scheme (alternating), Newton iterations, unknowns.

    A scheme whose step fails (Newton or the linear solve) gets ``None`` and is not timed
    further; the failure is reported.
    """
    msh = mesh.create_unit_square(COMM, n, n)
    solvers, failed = {}, {}
    for sch in schemes:
        s = CrossDiffusionSolver(msh, PARAMS, scheme=sch, linear_solver="iterative")
        s.set_initial([lambda x: initial_state(x)[0], lambda x: initial_state(x)[1]])
        info = s.step(dt, "ie")  # warm-up
        if info.accepted:
            solvers[sch] = s
        else:
            failed[sch] = info.message
    secs = {sch: [] for sch in solvers}
    newton = {sch: [] for sch in solvers}
    for _ in range(steps):
        for sch, s in list(solvers.items()):
            COMM.Barrier()
            t0 = time.perf_counter()
            info = s.step(dt, "ie")
            secs[sch].append(COMM.allreduce(time.perf_counter() - t0, op=MPI.MAX))
            if not info.accepted:
                failed[sch] = info.message
                del solvers[sch]
                continue
            newton[sch].append(info.newton_its)
    V = CrossDiffusionSolver(msh, PARAMS).V
    unknowns = int(V.dofmap.index_map.size_global * V.dofmap.index_map_bs)
    best = {k: (min(v) if k not in failed else None) for k, v in secs.items()}
    best.update({k: None for k in failed})
    its = {k: (float(np.mean(v)) if k not in failed else None) for k, v in newton.items()}
    its.update({k: None for k in failed})
    return unknowns, best, its, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small meshes (< 3 minutes)")
    parser.add_argument("--schemes", default="upwind,muscl")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per scheme and size")
    parser.add_argument("--no-3d", action="store_true", help="skip the gmsh ball")
    parser.add_argument("--sizes", default=None, help="cells per side of the cost meshes")
    parser.add_argument("--cost-only", action="store_true", help="only the cost per step")
    parser.add_argument("--dt", type=float, default=DT, help="time step of the cost steps")
    args = parser.parse_args()
    schemes = args.schemes.split(",")
    q = args.quick
    ns1 = (50, 100, 200) if q else (100, 200, 400)
    ns2 = (16, 32) if q else (24, 48, 96)
    nseg = (75, 150) if q else (150, 300, 600)
    hs3 = (0.3, 0.2) if q else (0.2, 0.14, 0.1)
    nmms = (8, 16) if q else (16, 32, 64)
    sizes = [int(v) for v in args.sizes.split(",")] if args.sizes else (
        [128] if q else [354, 708])
    out = {"bench": "schemes", "schemes": schemes, "quick": q, "ranks": COMM.size}
    for key in ("barenblatt_rate_1d_m2", "barenblatt_rate_1d_m3", "barenblatt_rate_2d",
                "overlap_rate", "overlap", "interface_offset_h", "newton_segregation",
                "barenblatt_rate_3d", "barenblatt_error_3d", "mms_rate_2d", "min_rel",
                "step_cost_ratio", "step_seconds", "newton_step", "unknowns"):
        out[key] = {}

    def say(*a):
        if COMM.rank == 0:
            print(*a, flush=True)

    for sch in [] if args.cost_only else schemes:
        mins: list = []
        for m, key in ((2.0, "barenblatt_rate_1d_m2"), (3.0, "barenblatt_rate_1d_m3")):
            eh = [barenblatt_error(sch, 1, m, n, mins) for n in ns1]
            out[key][sch] = _rate([h for _, h in eh], [e for e, _ in eh])
            say(f"{sch}: Barenblatt 1D m={m:g} errors {[f'{e:.2e}' for e, _ in eh]} "
                f"rate {out[key][sch]:.2f}")
        eh = [barenblatt_error(sch, 2, 2.0, n, mins) for n in ns2]
        out["barenblatt_rate_2d"][sch] = _rate([h for _, h in eh], [e for e, _ in eh])
        say(f"{sch}: Barenblatt 2D m=2 errors {[f'{e:.2e}' for e, _ in eh]} "
            f"rate {out['barenblatt_rate_2d'][sch]:.2f}")
        seg = [segregation(sch, n, mins) for n in nseg]
        out["overlap"][sch] = [v[0] for v in seg]
        out["overlap_rate"][sch] = _rate([v[2] for v in seg], [v[0] for v in seg])
        out["interface_offset_h"][sch] = max(abs(v[1]) for v in seg)
        out["newton_segregation"][sch] = float(np.mean([v[3] for v in seg]))
        say(f"{sch}: segregation overlap {[f'{v[0]:.2e}' for v in seg]} rate "
            f"{out['overlap_rate'][sch]:.2f}, |interface - exact| <= "
            f"{out['interface_offset_h'][sch]:.2f} h, Newton {out['newton_segregation'][sch]:.2f}")
        if not args.no_3d:
            e3 = [barenblatt_3d(sch, h, mins) for h in hs3]
            out["barenblatt_error_3d"][sch] = e3
            out["barenblatt_rate_3d"][sch] = _rate(hs3, e3)
            say(f"{sch}: Barenblatt 3D ball errors {[f'{e:.3f}' for e in e3]} rate "
                f"{out['barenblatt_rate_3d'][sch]:.2f}")
        em = [mms_error(sch, n) for n in nmms]
        out["mms_rate_2d"][sch] = _rate([1.0 / n for n in nmms], em)
        say(f"{sch}: MMS 2D L2 errors {[f'{e:.2e}' for e in em]} rate "
            f"{out['mms_rate_2d'][sch]:.2f}")
        out["min_rel"][sch] = float(min(mins))
        say(f"{sch}: min rho / max rho over all runs {out['min_rel'][sch]:.2e}")
    base = schemes[0]
    out["cost_dt"] = args.dt
    for n in sizes:
        unknowns, secs, newton, failed = step_costs(schemes, n, args.steps, args.dt)
        key = str(unknowns)
        out["unknowns"][key] = unknowns
        out["step_seconds"][key] = secs
        out["newton_step"][key] = newton
        out["step_cost_ratio"][key] = {
            s: (secs[s] / secs[base] if secs[s] is not None and secs[base] else None)
            for s in schemes}
        for sch, msg in failed.items():
            say(f"{sch}: step failed at {unknowns} unknowns, dt={args.dt:g}: {msg}")
        say(f"step at {unknowns} unknowns, dt={args.dt:g}: " + ", ".join(
            f"{s} {secs[s]:.2f} s (Newton {newton[s]:.1f})" for s in schemes
            if secs[s] is not None))
    say(json.dumps(out))


if __name__ == "__main__":
    main()
