# # Study 1: N -> infinity at fixed eps (Proposition 1.2, Remark 1.3)
#
# Particles of (1.6) against the nonlocal finite-element solution of (1.5) at time T, on the
# interval [-0.5, 1.5] with reflecting / no-flux walls (case of `fem_crossdiff.studies`, eps fixed).
# Three errors, each summed over the two species and averaged over independent seeds:
#
# * `w1`: the 1-Wasserstein distance (exact, via quantile functions) between the empirical
#   measure of the particles and the FE density. Sampling noise predicts `W1 ~ N^(-1/2)`
#   (independent of eps in 1D) until the discretisation floor (time step, FE mesh, grid drift).
# * `l1_moll`: `|| V^eps * mu_N - V^eps * rho^eps ||_L1`, the kernel-density error, predicted
#   `~ (N eps^d)^(-1/2)`.
# * `coupling`: `sum_k E sup_t |X_k^i - Y_k^i|^2` with `Y` the McKean-Vlasov process (1.7)
#   driven by the FE field `grad g^eps` (snapshots at every step, `FETimeGradientField`), same
#   initial points and Brownian increments: Proposition 1.2 predicts `C(eps, T) / N` (slope -1),
#   plus a floor from the two different discretisations of the drift (grid vs FE).
#
#     .venv/bin/python demos/study_n_limit.py [outdir] [--quick]
#     .venv/bin/mpiexec -n 2 .venv/bin/python demos/study_n_limit.py
"""Study 1: particle system (1.6) vs nonlocal FE solution of (1.5) as N grows, eps fixed."""

from __future__ import annotations

import sys
import time

import numpy as np

from fem_crossdiff import MPI
from fem_crossdiff import studies as sc
from fem_crossdiff.coupling import FETimeGradientField
from fem_crossdiff.measures import lp_distance, mollified_density
from fem_crossdiff.mollify import MollificationOperator
from fem_crossdiff.particles import (
    FieldDrift,
    GridDrift,
    gather_positions,
    init_state,
)
from fem_crossdiff.particles import step as particle_step


def coupled_run(case, n_particles, eps, seed, grad_g, comm):
    """X of (1.6) and Y of (1.7) with common noise: (positions of X at T, mean sup |X-Y|^2)."""
    params = sc.particle_params(case, n_particles, eps)
    box = case.box()
    x = init_state(params, case.samplers(), seed, box, comm)
    y = x
    drift, field = GridDrift(16.0), FieldDrift(grad_g)
    sup = np.zeros(x.n_local)
    for _ in range(case.n_steps):
        # the same increments for X and Y: the noise is keyed by (species, id, step)
        x = particle_step(x, case.dt, params, box, drift, comm)
        y = particle_step(y, case.dt, params, box, field, comm)
        sup = np.maximum(sup, np.sum((x.positions - y.positions) ** 2, axis=-1))
    tot = comm.allreduce(float(sup.sum()), op=MPI.SUM) / n_particles
    return x, tot


def main(argv=None) -> dict:
    """Run the study; returns the summary (also printed as the last line on rank 0)."""
    args = sc.parse_args(argv, "study_n_limit", __doc__)
    comm = MPI.COMM_WORLD
    t_start = time.perf_counter()
    eps = 0.1
    if args.quick:
        case = sc.Case1D(dt=1e-3)
        cells, ns, seeds = 400, [100, 400, 1600], [1, 2]
    else:
        case = sc.Case1D()
        cells, ns, seeds = 800, [250, 1000, 4000, 16000, 64000], [1, 2, 3, 4]

    # ## Reference: the nonlocal FE solution and its potential at every step
    solver, snaps = sc.fe_solve(case, cells, eps=eps, comm=comm, snapshots=True)
    rho = [solver.species(k) for k in range(case.n)]
    op = MollificationOperator(solver.V0, eps, case.kernel)
    rho_moll = [op(r) for r in rho]
    grad_g = FETimeGradientField(snaps)

    # ## Particles for growing N
    rows = []
    for n in ns:
        w1s, l1s, cps = [], [], []
        for seed in seeds:
            x, cp = coupled_run(case, n, eps, seed, grad_g, comm)
            pos = gather_positions(x, comm, root=None)
            w1s.append(sum(sc.w1_to_fe(pos[k], rho[k]) for k in range(case.n)))
            l1 = 0.0
            for k in range(case.n):
                md = mollified_density(solver.V0, x.of_species(k), eps, case.kernel)
                l1 += lp_distance(md, rho_moll[k], p=1.0)
            l1s.append(l1)
            cps.append(cp)
            sc.say(args, comm, f"N = {n}, seed {seed}: W1 = {w1s[-1]:.3g}", t_start)
        rows.append({"N": n, "eps": eps, "seeds": len(seeds), **sc.seed_stats("w1", w1s),
                     **sc.seed_stats("l1_moll", l1s), **sc.seed_stats("coupling", cps),
                     "kde_prediction": float((n * eps) ** -0.5)})

    N = np.array([r["N"] for r in rows], float)
    w1 = np.array([r["w1"] for r in rows])
    l1 = np.array([r["l1_moll"] for r in rows])
    cp = np.array([r["coupling"] for r in rows])
    slopes = {"w1": sc.fit_slope(N, w1), "l1_moll": sc.fit_slope(N, l1),
              "coupling": sc.fit_slope(N, cp)}
    pred = np.array([r["kde_prediction"] for r in rows])
    se = {k: np.array([r[f"{k}_se"] for r in rows]) for k in ("w1", "l1_moll", "coupling")}
    series = {"W1(mu_N, rho^eps)": (N, w1, slopes["w1"], se["w1"]),
              "L1 of V^eps-mollified": (N, l1, slopes["l1_moll"], se["l1_moll"]),
              "E sup|X-Y|^2 (coupling)": (N, cp, slopes["coupling"], se["coupling"]),
              "(N eps)^-1/2 prediction": (N, pred, -0.5)}
    summary = {"study": "n_limit", "quick": args.quick, "eps": eps, "N": N.tolist(),
               "w1": w1.tolist(), "l1_moll": l1.tolist(), "coupling": cp.tolist(),
               "slope_w1": slopes["w1"], "slope_l1_moll": slopes["l1_moll"],
               "slope_coupling": slopes["coupling"], "predicted_slope_w1_l1": -0.5,
               "predicted_slope_coupling": -1.0,
               "seconds": time.perf_counter() - t_start}
    sc.write_outputs(comm, args.outdir, "study_n_limit", rows, series, "N (particles/species)",
                     f"Study 1: particles vs nonlocal FE, eps={eps}, T={case.T}", summary,
                     ylabel="distance to the FE solution (mean ± s.e. over seeds)")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
