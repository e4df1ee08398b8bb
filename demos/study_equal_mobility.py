# # Study 5: equal mobilities, the total density is a viscous porous-medium solution (Theorem 1.8)
#
# With `b_1 = ... = b_n = b`, `u = sum_k a_k rho_k` solves the single viscous porous-medium
# equation `d_t u = div(b u grad u^(m-1)) + sigma Lap u` (the key observation of the uniqueness
# proof). We take two species with a = (1, 1.5), b = (0.5, 0.5) (case of
# `fem_crossdiff.studies`) and compare
#
# * `w1`: the particle estimate of u, the measure `sum_k a_k / N sum_i delta_{X_k^i}` of (1.6)
#   with `eps(N)` logarithmic as in study 3, against the local FE solution of the single
#   equation (one species, a = (1,), same b, m, sigma, initial data `sum_k a_k rho_k,0`), in
#   W1 after normalising both to unit mass; sampling predicts `~ N^(-1/2)` above the eps bias;
# * `fe_total_l1`: `||sum_k a_k rho_k,h - u_h||_L1` between the two-species FE solution and the
#   single-equation FE solution on the same mesh: the upwind fluxes of the species sum exactly to
#   the single-species flux when the mobilities agree, so this is at the level of the Newton
#   tolerance, a discrete counterpart of Theorem 1.8.
#
#     .venv/bin/python demos/study_equal_mobility.py [outdir] [--quick]
#     .venv/bin/mpiexec -n 2 .venv/bin/python demos/study_equal_mobility.py
"""Study 5: equal mobilities, particle estimate of sum_k a_k rho_k vs a single VPM solution."""

from __future__ import annotations

import sys
import time

import numpy as np

from fem_crossdiff import MPI, ModelParams, fem
from fem_crossdiff import studies as sc
from fem_crossdiff.measures import density_to_weighted_samples, lp_distance
from fem_crossdiff.particles.distances import wasserstein_1d

EPS_REF, N_REF = 0.1, 100


def main(argv=None) -> dict:
    """Run the study; returns the summary (also printed as the last line on rank 0)."""
    args = sc.parse_args(argv, "study_equal_mobility", __doc__)
    comm = MPI.COMM_WORLD
    t_start = time.perf_counter()
    b = (0.5, 0.5)
    case = sc.Case1D(b=b, dt=1e-3) if args.quick else sc.Case1D(b=b)
    cells, ns, seeds = sc.EPS_OF_N_SWEEP[args.quick]
    a = np.asarray(case.a)

    # ## The single viscous porous-medium equation for u = sum_k a_k rho_k
    init = case.initial()
    vpm_model = ModelParams(a=(1.0,), b=(b[0],), m=case.m, sigma=case.sigma)
    vpm, _ = sc.fe_solve(case, cells, comm=comm, model=vpm_model,
                         initial=[lambda x: sum(ak * f(x) for ak, f in zip(a, init, strict=True))])
    u = vpm.species(0)
    xq, wq = density_to_weighted_samples(u, gather="all", clip_negative=True)

    # ## Discrete check: the two-species FE total equals the single-equation solution
    two, _ = sc.fe_solve(case, cells, comm=comm, msh=vpm.msh)
    total = fem.Function(u.function_space)
    total.x.array[:] = sum(ak * two.species(k).x.array for k, ak in enumerate(a))
    fe_l1 = lp_distance(total, u, p=1.0)

    # ## Particles, eps(N) logarithmic
    rows = []
    for n in ns:
        eps = sc.eps_of_n(n, EPS_REF, N_REF, 1, case.m)
        w1s = []
        for seed in seeds:
            pos = sc.run_particles(case, n, eps, seed, comm)
            pts = pos[:, :, 0].reshape(-1)
            wts = np.repeat(a / n, n)
            w1s.append(wasserstein_1d(pts, xq[:, 0], p=1.0, wx=wts, wy=wq))
            sc.say(args, comm, f"N = {n}, seed {seed}: W1 = {w1s[-1]:.3g}", t_start)
        rows.append({"N": n, "eps": eps, "seeds": len(seeds), **sc.seed_stats("w1", w1s),
                     "fe_total_l1": float(fe_l1)})
    N = np.array(ns, float)
    w1 = np.array([r["w1"] for r in rows])
    slope = sc.fit_slope(N, w1)
    series = {"W1(sum a_k mu_k, u_VPM)": (N, w1, slope, [r["w1_se"] for r in rows]),
              "N^-1/2 from first point": (N, w1[0] * (N[0] / N) ** 0.5, -0.5)}
    summary = {"study": "equal_mobility", "quick": args.quick, "N": N.tolist(),
               "eps": [r["eps"] for r in rows], "w1": w1.tolist(), "slope_w1": slope,
               "fe_total_l1": float(fe_l1), "seconds": time.perf_counter() - t_start}
    sc.write_outputs(comm, args.outdir, "study_equal_mobility", rows, series,
                     "N (particles/species)",
                     f"Study 5: b = {b}, total density vs single VPM, T={case.T}", summary,
                     ylabel="W1 of the total (mean ± s.e.)")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
