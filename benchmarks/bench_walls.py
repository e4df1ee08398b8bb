"""Wall treatments of the nonlocal model (1.5) side by side: the figures of ``docs/walls.md``.

Three parts, each a table (rank 0 prints), then one JSON line ``{"bench": "walls", ...}``:

* ``interior``: data farther than ``2.5 eps`` from the walls (1D interval, 2D disk), 10
  implicit steps; per treatment the largest difference to the zero extension (the free-space
  operator) of ``g`` at the start and of the densities at the end, relative to their maxima;
* ``rate``: 1D, mass at the wall, L1 distance to the local model (no-flux walls) at
  ``T = 0.05`` for ``eps = 0.08 / 0.04 / 0.02`` on 800 cells, and the fitted rate;
* ``krylov``: disk ``h = 0.04``, ``eps = 0.15``, two species cut by the wall, 10 implicit
  steps of ``dt = 1e-3`` and of ``dt = 1e-2``: Newton and Krylov iterations per treatment
  (GMRES + GAMG, the default iterative solver).

    .venv/bin/python benchmarks/bench_walls.py [--part interior|rate|krylov|all]

``all`` takes about three minutes on one core; it runs under ``mpiexec`` too.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import fem_crossdiff.compat  # noqa: F401
from fem_crossdiff import meshes
from fem_crossdiff.compat import MPI, mesh
from fem_crossdiff.models.nonlocal_system import BOUNDARIES, NonlocalParams
from fem_crossdiff.params import ModelParams, TimeParams
from fem_crossdiff.solver import CrossDiffusionSolver

comm = MPI.COMM_WORLD
#: Treatments in table order.
TREATMENTS = ("zero", "sinkhorn", "diagonal", "diagonal-pc", "layer")


def say(msg: str) -> None:
    if comm.rank == 0:
        print(msg, flush=True)


def gmax(x) -> float:
    return comm.allreduce(float(np.max(np.abs(x), initial=0.0)), op=MPI.MAX)


def interior_bump(centre, radius: float):
    """``(1 + cos(pi r / radius)) / 2`` for ``r < radius``: smooth, supported in the ball."""
    def f(x):
        r = np.sqrt(sum((x[i] - c) ** 2 for i, c in enumerate(centre)))
        return np.where(r < radius, 0.5 * (1.0 + np.cos(np.pi * r / radius)), 0.0)
    return f


def interior_part() -> dict:
    """Largest relative difference to the zero extension, data 2.5 eps from the walls."""
    p = ModelParams(a=(1.0, 0.5), b=(1.0, 2.0), m=2.0, sigma=0.0)
    cases = {
        # support [0.25, 0.75]: 2.5 eps = 0.25 from both walls
        "interval": (lambda: mesh.create_interval(comm, 400, [0.0, 1.0]), 0.1,
                     [interior_bump((0.5,), 0.25), interior_bump((0.5,), 0.2)]),
        # support r < 0.625: 2.5 eps = 0.375 from the circle
        "disk": (lambda: meshes.disk(comm, radius=1.0, h=0.05).mesh, 0.15,
                 [interior_bump((0.0, 0.0), 0.625), interior_bump((0.2, 0.0), 0.4)]),
    }
    # the disk's cells are cut by the kernel's support: its quadrature defect (M_s 1 - 1 away
    # from the walls, ~1e-5 with the default rule) would hide the walls' effect, so the disk
    # also runs with the "poly4" kernel on a 2x subdivided rule (defect ~1e-8)
    cases["disk poly4/2"] = cases["disk"]
    out = {}
    say("interior exactness: max |X - X_zero| / max |X_zero|, data 2.5 eps from the walls, "
        "10 implicit steps dt = 1e-3")
    say(f"{'case':12s} {'boundary':12s} {'g at t = 0':>12s} {'rho at T':>12s}")
    for name, (make, eps, init) in cases.items():
        msh = make()
        ref = None
        fine = {"kernel": "poly4", "subdivisions": 2} if "poly4" in name else {}
        for b in TREATMENTS:
            s = CrossDiffusionSolver(msh, p, nonlocal_params=NonlocalParams(
                eps=eps, coupling="implicit", boundary=b, **fine))
            s.set_initial(init)
            g0 = s.model.driving_potential(s.rho.x.array.reshape(-1, 2)).copy()
            s.run(TimeParams(T=0.01, dt=1e-3), progress=False)
            x = s.rho.x.array.copy()
            if b == "zero":
                ref = (g0, x)
            dg = gmax(g0 - ref[0]) / gmax(ref[0])
            dx = gmax(x - ref[1]) / gmax(ref[1])
            out[f"{name}/{b}"] = {"g0": dg, "rho_T": dx}
            say(f"{name:12s} {b:12s} {dg:12.1e} {dx:12.1e}")
    return out


def _l1(s, ref) -> float:
    diff = np.abs(s.rho.x.array - ref.rho.x.array)
    mvec = s._mvec
    return comm.allreduce(float(np.sum(mvec * diff[: mvec.size])), op=MPI.SUM)


def rate_part(n: int = 800) -> dict:
    """1D, mass at the wall: L1 distance to the local model for three eps, per treatment."""
    msh = mesh.create_interval(comm, n, [0.0, 1.0])
    p = ModelParams(a=(1.0,), b=(1.0,), m=2.0, sigma=0.01)
    tp = TimeParams(T=0.05, dt=1e-3)
    init = [lambda x: np.where(x[0] < 0.3 + 0.5 / n, 1.0, 0.0) + 0.05]
    local = CrossDiffusionSolver(msh, p, linear_solver="direct")
    local.set_initial(init)
    local.run(tp, progress=False)
    eps = np.array([0.08, 0.04, 0.02])
    out = {}
    say(f"\neps -> 0 with mass at the wall: L1(nonlocal, local), 1D {n} cells, T = 0.05")
    say(f"{'boundary':12s} " + " ".join(f"eps={e:<8g}" for e in eps) + "   rate")
    for b in TREATMENTS:
        l1 = []
        for e in eps:
            s = CrossDiffusionSolver(msh, p, linear_solver="direct", nonlocal_params=(
                NonlocalParams(eps=e, coupling="implicit", boundary=b)))
            s.set_initial(init)
            s.run(tp, progress=False)
            l1.append(_l1(s, local))
        rate = float(np.polyfit(np.log(eps), np.log(l1), 1)[0])
        out[b] = {"l1": l1, "rate": rate}
        say(f"{b:12s} " + " ".join(f"{v:<12.2e}" for v in l1) + f" {rate:6.2f}")
    return out


def krylov_part() -> dict:
    """Newton / Krylov iterations of 10 implicit steps on a disk, per treatment."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demos"))
    from study_walls import initial  # the two bumps cut by the wall

    msh = meshes.disk(comm, radius=1.0, h=0.04).mesh
    p = ModelParams(a=(1.0, 2.0), b=(1.0, 0.5), m=2.0, sigma=0.01)
    out = {}
    say("\nNewton / Krylov iterations, disk h = 0.04, eps = 0.15, 10 implicit steps, "
        "mass cut by the wall (GMRES + GAMG)")
    say(f"{'boundary':12s} {'dt = 1e-3':>16s} {'dt = 1e-2':>16s} {'seconds':>8s}")
    for b in TREATMENTS:
        row, secs = [], 0.0
        for dt in (1e-3, 1e-2):
            s = CrossDiffusionSolver(msh, p, linear_solver="iterative", nonlocal_params=(
                NonlocalParams(eps=0.15, coupling="implicit", boundary=b)))
            s.set_initial(initial())
            newton = krylov = 0
            t0 = time.perf_counter()
            for _ in range(10):
                info = s.step(dt)
                if not info.accepted:
                    newton = krylov = None
                    break
                newton += info.newton_its
                krylov += info.krylov_its
            secs += time.perf_counter() - t0
            row.append((newton, krylov))
        out[b] = {"dt=1e-3": row[0], "dt=1e-2": row[1], "seconds": secs}
        cells = ["failed" if k is None else f"{n} / {k}" for n, k in row]
        say(f"{b:12s} {cells[0]:>16s} {cells[1]:>16s} {secs:8.1f}")
    zero = out["zero"]
    for b in TREATMENTS[1:]:
        for key in ("dt=1e-3", "dt=1e-2"):
            k, k0 = out[b][key][1], zero[key][1]
            out[b][f"krylov_over_zero {key}"] = None if k is None else k / k0
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", default="all", choices=("interior", "rate", "krylov", "all"))
    args = ap.parse_args()
    assert set(TREATMENTS) <= set(BOUNDARIES)
    result = {"bench": "walls", "default": NonlocalParams(eps=1.0).boundary}
    if args.part in ("interior", "all"):
        result["interior"] = interior_part()
    if args.part in ("rate", "all"):
        result["rate"] = rate_part()
    if args.part in ("krylov", "all"):
        result["krylov"] = krylov_part()
    say(json.dumps(result))


if __name__ == "__main__":
    main()
