"""The family's interaction term against a public finite-volume aggregation-diffusion code.

``d_t rho = d_x(rho d_x(W * rho)) + nu d_xx rho`` on [-1, 1] with no-flux walls, ``W = -C K``
an attractive Gaussian of length ``l`` (unit mass), ``rho_0 ~ exp(-20 x^2)`` of unit mass. The
peer is the first-order finite-volume code of https://github.com/strantien/aggregation (explicit
upwind transport under a CFL condition, implicit diffusion, ``aggdiff.solver_evol.Solver``): clone
it and pass its folder. This code runs ``CrossDiffusionSolver(..., family=Family((nu,),
interactions=(Interaction(Kernel("gaussian", l), ((-C,),)),)))`` with a negligible pressure
(``b = 1e-12``), upwind edge fluxes, BDF2 with ``dt ~ h`` and the interaction potential lagged
at each step's start.

Both discretisations are first order, so each is compared with itself on the finest mesh (its
own error), with the other at the same resolution, and through Richardson limits ``2 f_h/2 -
f_h``: agreement means the gap of the limits is well below either code's own error.

Usage: ``python benchmarks/bench_peer_aggregation.py PEER_FOLDER [--quick]`` (serial; the last
line is one JSON object). The peer imports seaborn for its plots only; a stub stands in when
seaborn is not installed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import types

import numpy as np

import fem_crossdiff as fx
from fem_crossdiff.family import Family, Interaction, Kernel

NU, LENGTH, STRENGTH, T = 0.01, 0.15, 1.0, 0.2


def kernel(x):
    """The Gaussian ``K`` of unit mass."""
    return np.exp(-x ** 2 / (2 * LENGTH ** 2)) / math.sqrt(2 * math.pi * LENGTH ** 2)


def grad_w(x):
    """``grad W`` for ``W = -C K`` (the peer's ``fgradW``)."""
    return STRENGTH * x / LENGTH ** 2 * kernel(x)


def peer(folder: str, J: int):
    """The peer's density at T on its ``2J + 1`` cells (cell centres, densities)."""
    sys.modules.setdefault("seaborn", types.ModuleType("seaborn"))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    from aggdiff.solver_evol import Solver

    rho, _ = Solver(NU, grad_w, xmin=-1, xmax=1).compute_solution(J, T=T)
    dx = 2.0 / (2 * J + 1)
    return -1 + (np.arange(2 * J + 1) + 0.5) * dx, rho / dx  # its cell masses sum to 1


def fe(cells: int):
    """This code's density at T on ``cells`` P1 cells (node coordinates, values)."""
    from fem_crossdiff.compat import mesh

    msh = mesh.create_interval(fx.MPI.COMM_SELF, cells, [-1.0, 1.0])
    fam = Family((NU,), interactions=(Interaction(Kernel("gaussian", LENGTH),
                                                  ((-STRENGTH,),)),))
    s = fx.CrossDiffusionSolver(msh, fx.ModelParams(a=(1.0,), b=(1e-12,), m=2.0, sigma=NU),
                                scheme="upwind", family=fam, linear_solver="direct")
    Z = math.sqrt(math.pi / 20) * math.erf(math.sqrt(20))
    s.set_initial([lambda x: np.exp(-20 * x[0] ** 2) / Z])
    steps = cells // 2  # dt = 0.4 / cells ~ h / 5
    for _ in range(steps):
        if not s.step(T / steps, "bdf2").accepted:
            raise RuntimeError(f"a step failed on {cells} cells")
    x = s.V0.tabulate_dof_coordinates()[:, 0]
    order = np.argsort(x)
    return x[order], s.rho.x.array[order].copy()


GRID = np.linspace(-1.0, 1.0, 40001)


def on_grid(f) -> np.ndarray:
    return np.interp(GRID, *f)


def l1(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.trapezoid(np.abs(a - b), GRID))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peer", help="folder of a clone of strantien/aggregation")
    parser.add_argument("--quick", action="store_true", help="two coarser resolutions less")
    args = parser.parse_args()
    cells = (200, 400, 800) if args.quick else (400, 800, 1600)
    t0 = time.perf_counter()
    F = [on_grid(fe(c)) for c in cells]
    P = [on_grid(peer(args.peer, c // 2)) for c in cells]  # 2J + 1 ~ cells
    fe_self = [l1(F[i], F[-1]) for i in range(2)]
    peer_self = [l1(P[i], P[-1]) for i in range(2)]
    gaps = [l1(F[i], P[i]) for i in range(3)]
    limit_gap = l1(2 * F[2] - F[1], 2 * P[2] - P[1])
    print(f"aggregation-diffusion, nu = {NU}, Gaussian W = -{STRENGTH} K_{LENGTH}, T = {T}")
    print(f"{'cells':>8s} {'FE vs finest FE':>16s} {'peer vs finest peer':>20s} "
          f"{'FE vs peer':>12s}")
    for i, c in enumerate(cells):
        own = (f"{fe_self[i]:16.3e} {peer_self[i]:20.3e}" if i < 2 else f"{'':16s} {'':20s}")
        print(f"{c:8d} {own} {gaps[i]:12.3e}")
    print(f"L1 gap of the Richardson limits: {limit_gap:.3e} (peaks {F[-1].max():.2f} FE, "
          f"{P[-1].max():.2f} peer); {time.perf_counter() - t0:.0f} s")
    print(json.dumps({"bench": "peer_aggregation", "cells": list(cells), "fe_self": fe_self,
                      "peer_self": peer_self, "fe_vs_peer": gaps,
                      "richardson_gap": limit_gap}))


if __name__ == "__main__":
    main()
