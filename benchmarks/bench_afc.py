"""The figures of ``bench_schemes.py`` for ``scheme="afc"`` next to ``upwind`` (and ``muscl``).

The cases are ``bench_schemes``' functions (Barenblatt 1D m = 2, 3 and 2D m = 2, BDF2; the
1D segregation overlap and interface; the 3D ball; the 2D steady manufactured solution; one
implicit-Euler step at 33k / 252k unknowns); this script only adds per-scheme constructor
options: ``afc`` and ``muscl`` solve the steady manufactured solution (``dt = 1e3``) with their
matrix-free exact Jacobian (``jacobian="mf"``; the approximate Jacobians do not converge
there). For one species the fractions are 1 and
``afc`` is ``upwind`` exactly, so the Barenblatt figures coincide (``--barenblatt`` runs them
anyway).

Only rank 0 prints. The last line is one JSON object (the keys of ``bench_schemes``).

Usage: ``python benchmarks/bench_afc.py [--quick] [--schemes upwind,afc] [--barenblatt]
[--no-3d] [--cost-only] [--sizes 128,354] [--dt 1e-3] [--steps K]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json

import bench_schemes as bs
import numpy as np

COMM = bs.COMM


@contextlib.contextmanager
def options(per_scheme: dict):
    """Construct ``bench_schemes``' solvers with extra options ``per_scheme[scheme]``."""
    cls = bs.CrossDiffusionSolver

    def make(*args, **kwargs):
        return cls(*args, **{**kwargs, **per_scheme.get(kwargs.get("scheme", "upwind"), {})})

    bs.CrossDiffusionSolver = make
    try:
        yield
    finally:
        bs.CrossDiffusionSolver = cls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small meshes")
    parser.add_argument("--schemes", default="upwind,afc")
    parser.add_argument("--barenblatt", action="store_true", help="also the Barenblatt cases")
    parser.add_argument("--no-3d", action="store_true", help="skip the gmsh ball")
    parser.add_argument("--cost-only", action="store_true", help="only the cost per step")
    parser.add_argument("--sizes", default=None, help="cells per side of the cost meshes")
    parser.add_argument("--dt", type=float, default=1e-3, help="time step of the cost steps")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per scheme and size")
    args = parser.parse_args()
    schemes = args.schemes.split(",")
    q = args.quick
    ns1 = (50, 100, 200) if q else (100, 200, 400)
    ns2 = (16, 32) if q else (24, 48, 96)
    nseg = (75, 150) if q else (75, 150, 300)
    hs3 = (0.3, 0.2) if q else (0.2, 0.14, 0.1)
    nmms = (8, 16) if q else (8, 16, 32)
    sizes = [int(v) for v in args.sizes.split(",")] if args.sizes else (
        [128] if q else [128, 354])
    out = {"bench": "schemes", "schemes": schemes, "quick": q, "ranks": COMM.size}

    def say(*a):
        if COMM.rank == 0:
            print(*a, flush=True)

    def opts(steady=False):
        o = {"afc": {}, "muscl": {}}
        if steady:
            for sch in ("afc", "muscl"):
                o[sch]["jacobian"] = "mf"
        return o

    for sch in [] if args.cost_only else schemes:
        mins: list = []
        with options(opts()):
            if args.barenblatt:
                for m, key in ((2.0, "barenblatt_rate_1d_m2"), (3.0, "barenblatt_rate_1d_m3")):
                    eh = [bs.barenblatt_error(sch, 1, m, n, mins) for n in ns1]
                    out.setdefault(key, {})[sch] = bs._rate([h for _, h in eh],
                                                            [e for e, _ in eh])
                    say(f"{sch}: Barenblatt 1D m={m:g} errors {[f'{e:.2e}' for e, _ in eh]} "
                        f"rate {out[key][sch]:.2f}")
                eh = [bs.barenblatt_error(sch, 2, 2.0, n, mins) for n in ns2]
                out.setdefault("barenblatt_rate_2d", {})[sch] = bs._rate(
                    [h for _, h in eh], [e for e, _ in eh])
                say(f"{sch}: Barenblatt 2D m=2 errors {[f'{e:.2e}' for e, _ in eh]} "
                    f"rate {out['barenblatt_rate_2d'][sch]:.2f}")
            seg = [bs.segregation(sch, n, mins) for n in nseg]
            out.setdefault("overlap", {})[sch] = [v[0] for v in seg]
            out.setdefault("overlap_rate", {})[sch] = bs._rate([v[2] for v in seg],
                                                               [v[0] for v in seg])
            out.setdefault("interface_offset_h", {})[sch] = max(abs(v[1]) for v in seg)
            out.setdefault("newton_segregation", {})[sch] = float(np.mean([v[3] for v in seg]))
            say(f"{sch}: segregation overlap {[f'{v[0]:.2e}' for v in seg]} rate "
                f"{out['overlap_rate'][sch]:.2f}, |interface - exact| <= "
                f"{out['interface_offset_h'][sch]:.2f} h, Newton "
                f"{out['newton_segregation'][sch]:.2f}")
            if not args.no_3d:
                e3 = [bs.barenblatt_3d(sch, h, mins) for h in hs3]
                out.setdefault("barenblatt_rate_3d", {})[sch] = bs._rate(hs3, e3)
                say(f"{sch}: Barenblatt 3D ball errors {[f'{e:.3f}' for e in e3]} rate "
                    f"{out['barenblatt_rate_3d'][sch]:.2f}")
        with options(opts(steady=True)):
            em = [bs.mms_error(sch, n) for n in nmms]
        out.setdefault("mms_rate_2d", {})[sch] = bs._rate([1.0 / n for n in nmms], em)
        say(f"{sch}: MMS 2D L2 errors {[f'{e:.2e}' for e in em]} rate "
            f"{out['mms_rate_2d'][sch]:.2f}")
        out.setdefault("min_rel", {})[sch] = float(min(mins))
        say(f"{sch}: min rho / max rho over all runs {out['min_rel'][sch]:.2e}")
    base = schemes[0]
    out["cost_dt"] = args.dt
    for key in ("step_cost_ratio", "step_seconds", "newton_step", "unknowns"):
        out[key] = {}
    for n in sizes:
        with options(opts()):  # the schemes' steps alternate (side by side)
            unknowns, secs, newton, failed = bs.step_costs(schemes, n, args.steps, args.dt)
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
