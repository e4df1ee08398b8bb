# # Study 4: propagation of chaos, the two-particle marginal factorises (Corollary 1.11)
#
# For exchangeable particles the two-particle marginal `rho^(2),N` tends to `rho ⊗ rho`; the
# simplest witness is the covariance of two tagged particles' positions at time T,
# `cov(X^1(T), X^2(T))`, which vanishes for the product law. Independent initial data give
# zero covariance at t = 0; the interaction creates a correlation of order 1/N (the pressure
# pushes particles apart: negative covariance). We estimate it over R independent runs.
#
# Independent runs are simulated *at once*: R replicas of the N-particle system, each in its
# own copy of the interval (reflecting walls), the copies separated by more than the kernel
# support, so that no particle of one replica feels another. With weights `a_l R / (R N) =
# a_l / N` every replica is exactly the system (1.6) with N particles, and the counter-based
# random streams of `particles.rng` make the replicas independent (disjoint global indices)
# and the result independent of the number of MPI ranks.
#
# Estimators (species 1):
# * `cov_tagged`: sample covariance over the R replicas of particles 1 and 2 (literally the
#   two-particle marginal), with its standard error: noisy, `O(Var / sqrt(R))`.
# * `cov_pairs`: the same covariance averaged over all pairs i != j (exchangeability):
#   `B - W / N` with `B` the between-replica variance of the replica means and `W` the mean
#   within-replica variance (unbiased: `E B = Var/N + (N-1)/N cov`, `E W = Var - cov`); its
#   standard error is `sqrt(2 / (R - 1)) B`, of relative size `O(R^(-1/2))` whatever N.
# The fitted slope of `|cov_pairs|` against N is compared with the predicted -1.
#
#     .venv/bin/python demos/study_chaos.py [outdir] [--quick]
#     .venv/bin/mpiexec -n 2 .venv/bin/python demos/study_chaos.py
"""Study 4: covariance of two tagged particles across independent runs tends to 0 like 1/N."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace

import numpy as np

from fem_crossdiff import MPI
from fem_crossdiff import studies as sc
from fem_crossdiff.particles import Box, GridDrift, gather_positions, init_state
from fem_crossdiff.particles import step as particle_step


@dataclass(frozen=True)
class ReplicaBoxes:
    """``R`` disjoint copies ``[lo + r s, hi + r s]`` of an interval, each with reflecting walls.

    Attributes:
        lo: Left wall of copy 0.
        hi: Right wall of copy 0.
        copies: Number of copies ``R``.
        spacing: Shift ``s`` between copies (``> hi - lo``).
    """

    lo: float
    hi: float
    copies: int
    spacing: float

    def __post_init__(self):
        if not self.hi > self.lo:
            raise ValueError(f"need hi > lo, got lo={self.lo}, hi={self.hi}")
        if self.copies < 1:
            raise ValueError(f"copies must be >= 1, got {self.copies}")
        if not self.spacing > self.hi - self.lo:
            raise ValueError(f"spacing must exceed hi - lo = {self.hi - self.lo}, "
                             f"got {self.spacing}")

    @property
    def dim(self) -> int:
        """Space dimension (1)."""
        return 1

    def bounds(self):
        """Bounding interval of all copies."""
        return (np.array([self.lo]),
                np.array([self.hi + (self.copies - 1) * self.spacing]))

    def copy_of(self, x: np.ndarray) -> np.ndarray:
        """Index of the copy a point lies in (or next to)."""
        gap = self.spacing - (self.hi - self.lo)
        r = np.floor((np.asarray(x)[..., 0] - self.lo + 0.5 * gap) / self.spacing)
        return np.clip(r, 0, self.copies - 1).astype(np.int64)

    def contains(self, x: np.ndarray, comm=None) -> np.ndarray:
        """Points inside their copy."""
        x = np.asarray(x, dtype=float)
        y = x[..., 0] - self.copy_of(x) * self.spacing
        return (y >= self.lo) & (y <= self.hi)

    def reflect(self, x_old: np.ndarray, x_new: np.ndarray, comm=None) -> np.ndarray:
        """Reflect each step at the walls of the copy the particle started in."""
        shift = (self.copy_of(x_old) * self.spacing)[:, None]
        box = Box((self.lo,), (self.hi,))
        return box.reflect(np.asarray(x_old) - shift, np.asarray(x_new) - shift) + shift


def covariances(pos: np.ndarray, n: int, copies: int, spacing: float) -> dict:
    """Tagged-pair and all-pairs covariance estimates from positions ``(R N,)``."""
    x = pos.reshape(copies, n) - spacing * np.arange(copies)[:, None]
    tag = np.cov(x[:, 0], x[:, 1], ddof=1)[0, 1]
    var = x.var(ddof=1)
    se_tag = var / np.sqrt(copies - 1)  # |cov| << Var: se of a sample covariance ~ Var/sqrt(R)
    means = x.mean(axis=1)
    b = means.var(ddof=1)
    w = x.var(axis=1, ddof=1).mean()
    return {"cov_tagged": float(tag), "cov_tagged_se": float(se_tag),
            "cov_pairs": float(b - w / n), "cov_pairs_se": float(np.sqrt(2 / (copies - 1)) * b),
            "var": float(var)}


def main(argv=None) -> dict:
    """Run the study; returns the summary (also printed as the last line on rank 0)."""
    args = sc.parse_args(argv, "study_chaos", __doc__)
    comm = MPI.COMM_WORLD
    t_start = time.perf_counter()
    eps = 0.1
    if args.quick:
        case = sc.Case1D(dt=1e-3)
        ns, copies = [16, 32, 64, 128], 300
    else:
        case = sc.Case1D()
        ns, copies = [16, 32, 64, 128, 256, 512], 2000
    spacing = (case.hi - case.lo) + 2 * eps + 0.1
    rows = []
    for n in ns:
        dom = ReplicaBoxes(case.lo, case.hi, copies, spacing)
        params = sc.particle_params(case, copies * n, eps, a=tuple(copies * a for a in case.a))
        state = init_state(params, case.samplers(), 11, Box((case.lo,), (case.hi,)), comm)
        shifted = state.positions + ((state.ids // n) * spacing)[:, None]
        shifted.setflags(write=False)
        state = replace(state, positions=shifted)
        drift = GridDrift(16.0)
        for _ in range(case.n_steps):
            state = particle_step(state, case.dt, params, dom, drift, comm)
        pos = gather_positions(state, comm, root=None)
        row = {"N": n, "replicas": copies}
        row.update(covariances(pos[0, :, 0], n, copies, spacing))
        row["N_cov_pairs"] = n * row["cov_pairs"]
        rows.append(row)
        sc.say(args, comm, f"N = {n}: cov = {row['cov_pairs']:.3g}", t_start)
    N = np.array(ns, float)
    cp = np.array([r["cov_pairs"] for r in rows])
    slope = sc.fit_slope(N, np.abs(cp))
    series = {"|cov| all pairs": (N, np.abs(cp), slope, [r["cov_pairs_se"] for r in rows]),
              "|cov| tagged pair": (N, np.abs([r["cov_tagged"] for r in rows]), None),
              "tagged-pair std. error": (N, np.array([r["cov_tagged_se"] for r in rows]),
                                         None)}
    summary = {"study": "chaos", "quick": args.quick, "N": N.tolist(), "replicas": copies,
               "cov_pairs": cp.tolist(), "cov_pairs_se": [r["cov_pairs_se"] for r in rows],
               "cov_tagged": [r["cov_tagged"] for r in rows], "slope_cov_pairs": slope,
               "predicted_slope": -1.0, "seconds": time.perf_counter() - t_start}
    sc.write_outputs(comm, args.outdir, "study_chaos", rows, series, "N (particles/species)",
                     f"Study 4: covariance of two particles at T={case.T}, {copies} runs",
                     summary, ylabel="|covariance| (± s.e.)")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
