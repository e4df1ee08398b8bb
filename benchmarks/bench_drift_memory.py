"""Benchmark: time and peak memory of the drift evaluations, old code next to the new one.

Each case runs in its own subprocess (peak resident memory from ``getrusage``, CPU time of the
evaluation; the import baseline is printed separately). ``--old PATH`` points at a checkout of
the previous code (``git worktree add /tmp/old main``): its ``particles/drift.py`` is loaded
beside the installed one and the cases it can afford run with both. Cases: the cell-list
quadrature reference in 3D (N = 2000 in the unit ball, eps = 0.4, 0.2, 0.1) and 2D, and
``GridDrift()`` with its defaults in 3D (eps = 0.2, 0.1) with the memory estimate. Old cases
over ``--old-max-gb`` of expected memory are skipped (the issue's measurements: 12.8 GB at
eps = 0.2, MemoryError at 0.1). ``--quick``: the small cases only. ``--accuracy``: the error of
``GridDrift(c)`` against the quadrature reference in 3D and 2D (the table of
``docs/particles-drift.md``). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import time

import numpy as np

# (name, kind, d, N, eps, expected old peak GB)
CASES = [
    ("cell 2D eps=0.05", "cell", 2, 2000, 0.05, 0.5),
    ("cell 3D eps=0.4", "cell", 3, 2000, 0.4, 2.0),
    ("cell 3D eps=0.2", "cell", 3, 2000, 0.2, 12.8),
    ("cell 3D eps=0.1", "cell", 3, 2000, 0.1, 28.8),
    ("grid 3D eps=0.2", "grid", 3, 2000, 0.2, 1.1),
    ("grid 3D eps=0.1", "grid", 3, 2000, 0.1, 4.8),
]
QUICK = ("cell 2D eps=0.05", "cell 3D eps=0.4", "grid 3D eps=0.2")


def _ball(n, d, seed=3):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, d))
    v /= np.linalg.norm(v, axis=1)[:, None]
    return (v * rng.random((n, 1)) ** (1.0 / d))[None]


def _load_drift(old: str | None):
    if old is None:
        from fem_crossdiff.particles import drift
        return drift
    spec = importlib.util.spec_from_file_location("fem_crossdiff.particles._old_drift",
                                                  f"{old}/particles/drift.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def child(kind, d, n, eps, old):
    """One evaluation in this process; prints a JSON line."""
    from fem_crossdiff.particles import ParticleParams

    drift = _load_drift(old)
    x = _ball(n, d)
    params = ParticleParams(n, (1.0,), (1.0,), 0.1, 2.0, eps)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    out = {}
    if kind == "grid":
        fn = drift.GridDrift()
        if old is None:
            cost = fn.cost(x[0].min(axis=0), x[0].max(axis=0), eps)
            out.update(estimate_mb=cost.memory_mb, cells_per_eps=cost.cells_per_eps,
                       shape=cost.shape)
    else:
        fn = drift.CellListDrift()
    t0, w0 = time.process_time(), time.perf_counter()
    g = fn(x, 0.0, params)
    out.update(cpu_s=time.process_time() - t0, wall_s=time.perf_counter() - w0,
               peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
               baseline_mb=base, checksum=float(np.abs(g).sum()))
    print(json.dumps(out))


def accuracy(d, n, eps):
    """Error of GridDrift(c) against the quadrature reference, c = 4 .. 24 (docs table)."""
    from fem_crossdiff.particles import CellListDrift, GridDrift, ParticleParams, QuadratureSpec

    x = _ball(n, d)
    params = ParticleParams(n, (1.0,), (1.0,), 0.1, 2.0, eps)
    ref = CellListDrift(QuadratureSpec(8, 3))(x, 0.0, params)
    other = CellListDrift(QuadratureSpec(4 if d == 3 else 16, 3))(x, 0.0, params)
    scale = np.abs(ref).max()
    print(f"{d}D N={n} eps={eps}: reference 8x3 vs {4 if d == 3 else 16}x3 quadrature "
          f"{np.abs(other - ref).max() / scale:.2e}")
    rows = []
    lo, hi = x[0].min(axis=0), x[0].max(axis=0)
    for c in (4, 6, 8, 12, 16, 24):
        drift = GridDrift(c)
        drift(x, 0.0, params)  # kernel transforms cached
        t0 = time.process_time()
        g = drift(x, 0.0, params)
        cpu = time.process_time() - t0
        err = float(np.abs(g - ref).max() / scale)
        rms = float(np.sqrt(((g - ref) ** 2).sum(-1).mean() / (ref**2).sum(-1).mean()))
        mb = drift.cost(lo, hi, eps).memory_mb
        print(f"  cells_per_eps={c:3d}: max rel. err {err:.2e}, rms {rms:.2e}, cpu {cpu:.3f} s, "
              f"estimate {mb:.0f} MB", flush=True)
        rows.append({"d": d, "cells_per_eps": c, "max_rel_err": err, "rms_rel_err": rms,
                     "cpu_s": cpu, "estimate_mb": mb})
    return rows


def run_case(name, kind, d, n, eps, old):
    cmd = [sys.executable, __file__, "--child", kind, str(d), str(n), str(eps)]
    if old is not None:
        cmd += ["--old", old]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["?"])[-1][:120]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small cases only")
    ap.add_argument("--old", default=None, help="checkout of the previous code")
    ap.add_argument("--old-max-gb", type=float, default=3.0,
                    help="skip old cases expected above this peak")
    ap.add_argument("--accuracy", action="store_true",
                    help="also the grid's error against the quadrature reference, 3D and 2D")
    ap.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        kind, d, n, eps = args.child
        child(kind, int(d), int(n), float(eps), args.old)
        return
    rows = []
    print(f"{'case':18s} {'new cpu s':>10s} {'new peak MB':>12s} {'old cpu s':>10s} "
          f"{'old peak MB':>12s} {'estimate MB':>12s}  (peak RSS incl. import baseline)")
    for name, kind, d, n, eps, old_gb in CASES:
        if args.quick and name not in QUICK:
            continue
        new = run_case(name, kind, d, n, eps, None)
        old = None
        if args.old is not None:
            old = (run_case(name, kind, d, n, eps, args.old) if old_gb <= args.old_max_gb
                   else {"skipped": f"expected {old_gb} GB"})

        def cell(r, key, fmt):
            if r is None:
                return "-"
            if key in r:
                return format(r[key], fmt)
            return "skip" if "skipped" in r else "error" if "error" in r else "-"
        print(f"{name:18s} {cell(new, 'cpu_s', '10.2f'):>10s} {cell(new, 'peak_mb', '12.0f'):>12s}"
              f" {cell(old, 'cpu_s', '10.2f'):>10s} {cell(old, 'peak_mb', '12.0f'):>12s}"
              f" {cell(new, 'estimate_mb', '12.0f'):>12s}", flush=True)
        if old is not None and "checksum" in old and "checksum" in new and kind == "cell":
            print(f"{'':18s} same numbers: |sum|g| new/old - 1| = "
                  f"{abs(new['checksum'] / old['checksum'] - 1):.1e}")
        rows.append({"case": name, "new": new, "old": old})
    acc = (accuracy(3, 2000, 0.3) + accuracy(2, 2000, 0.2)) if args.accuracy else None
    print(json.dumps({"bench": "drift_memory", "quick": bool(args.quick), "cases": rows,
                      "grid_accuracy": acc}))


if __name__ == "__main__":
    main()
