"""Benchmark of the particle system (1.6): cost per time step of the O(N) grid drift.

2D, two species in the unit box with reflecting walls, m = 2 and m = 3, eps = 0.1, grid
spacing h = eps/16. Reports the time per Euler-Maruyama step (drift + noise + walls) for
N = 1e4 .. 1e6 particles per species (``--quick``: up to 1e5), the scaling t(10N)/t(N), and the
speed-up of the grid drift over the brute-force quadrature drift at N = 2e4 per species
(quadrature 4 cells per eps, 2x2 Gauss points: a coarse reference, itself about 3% off; the
full run also compares with the cell-list reference at 8 cells per eps, 3x3 points). The last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from fem_crossdiff.particles import (
    Box,
    CellListDrift,
    GridDrift,
    ParticleParams,
    QuadratureSpec,
    drift_bruteforce,
)
from fem_crossdiff.particles.state import gather_positions, init_state, step

EPS = 0.1
BOX = Box((0.0, 0.0), (1.0, 1.0))
SAMPLERS = [lambda rng, n: 0.1 + 0.5 * rng.random((n, 2)),
            lambda rng, n: 0.4 + 0.5 * rng.random((n, 2))]


def _params(n, m):
    return ParticleParams(n, (1.0, 0.5), (1.0, 2.0), 1e-3, m, EPS)


def time_steps(n, m, repeats):
    params = _params(n, m)
    state = init_state(params, SAMPLERS, 1, BOX)
    drift = GridDrift(16)
    state = step(state, 1e-4, params, BOX, drift)  # warm-up (kernel transforms cached)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state = step(state, 1e-4, params, BOX, drift)
        times.append(time.perf_counter() - t0)
    return float(np.min(times))  # min: robust on a shared, loaded machine


def time_drifts(n, accurate):
    params = _params(n, 2.0)
    state = init_state(params, SAMPLERS, 1, BOX)
    x = gather_positions(state)  # the (n, N, d) block layout of the drifts
    grid = GridDrift(16)
    grid(x, 0.0, params)
    t0 = time.perf_counter()
    for _ in range(3):
        g = grid(x, 0.0, params)
    t_grid = (time.perf_counter() - t0) / 3
    t0 = time.perf_counter()
    ref = drift_bruteforce(x, params, None, QuadratureSpec(4, 2))
    t_bf = time.perf_counter() - t0
    rel = float(np.abs(g - ref).max() / np.abs(ref).max())
    rel_fine = None
    if accurate:  # the 4x2 reference is itself ~3% off; a finer one shows the grid's own error
        fine = CellListDrift(QuadratureSpec(8, 3))(x, 0.0, params)
        rel_fine = float(np.abs(g - fine).max() / np.abs(fine).max())
    return t_grid, t_bf, rel, rel_fine


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="N up to 1e5 (under a minute)")
    args = ap.parse_args()
    ns = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    out_n, out_m, out_t = [], [], []
    ratios = {}
    for m in (2.0, 3.0):
        for n in ns:
            t = time_steps(n, m, repeats=9 if n <= 100_000 else 4)
            out_n.append(n)
            out_m.append(m)
            out_t.append(t)
            print(f"m={m:g} N={n:>8d} per species: {t * 1e3:8.2f} ms/step")
        ts = out_t[-len(ns):]
        ratios[f"m={m:g}"] = [ts[i + 1] / ts[i] for i in range(len(ts) - 1)]
        print(f"m={m:g} t(10N)/t(N): {', '.join(f'{r:.2f}' for r in ratios[f'm={m:g}'])}")
    n_bf = 20_000
    t_grid, t_bf, rel, rel_fine = time_drifts(n_bf, accurate=not args.quick)
    speedup = t_bf / t_grid
    print(f"N={n_bf} per species: grid drift {t_grid * 1e3:.2f} ms, brute force {t_bf:.2f} s, "
          f"speed-up {speedup:.0f}x, max rel. difference {rel:.2e} (reference 4x2 quadrature)")
    if rel_fine is not None:
        print(f"grid vs cell-list reference, 8x3 quadrature: max rel. diff. {rel_fine:.2e}")
    print(json.dumps({
        "bench": "particles", "d": 2, "species": 2, "eps": EPS, "grid_cells_per_eps": 16,
        "n": out_n, "m": out_m, "seconds_per_step": out_t, "t10N_over_tN": ratios,
        "bruteforce_n": n_bf, "bruteforce_seconds": t_bf, "grid_drift_seconds": t_grid,
        "speedup_vs_bruteforce": speedup, "grid_vs_bruteforce_max_rel_diff": rel,
        "grid_vs_quadrature8x3_max_rel_diff": rel_fine,
        "quick": bool(args.quick),
    }))


if __name__ == "__main__":
    main()
