"""Benchmark: a full particle step on mesh domains (drift, noise, location, reflection).

Two species of ``N`` particles each, uniform in a gmsh disk (2D, ``h = 0.05``) or a gmsh ball
(3D, ``h = 0.15``), the drift of the nonlocal FE operator
(:class:`~fem_crossdiff.particles.mesh_drift.MeshOperatorDrift`, ``eps = 0.2`` / ``0.6``),
Brownian increments from the counter-based streams and reflection by tracking
(:meth:`~fem_crossdiff.particles.mesh_domain.MeshDomain.track`); ``sigma = 0.1``,
``dt = 1e-3`` (rms step about ``0.3 h``). Reported per particle-step (time of one step divided
by ``2 N``, the minimum over the repeats: robust on a loaded machine), next to:

* the old path at the smallest ``N`` (collision-tree reflection
  :meth:`~fem_crossdiff.particles.mesh_domain.MeshDomain.reflect_collision` and the drift
  locating the particles by its bounding-box tree: what ``main`` did);
* the free-space grid step (:class:`~fem_crossdiff.particles.drift.GridDrift` in ``R^2``) at
  the same ``N`` (2D);
* the same 2D step on 2 ranks at the largest quick ``N`` (``mpiexec -n 2`` of this script as
  a subprocess), ``speedup_2_ranks = t(1 rank) / t(2 ranks)``.

``--quick``: 2D ``N = 1e4, 1e5, 1e6``, 3D ``N = 1e4, 1e5``, 2 repeats (under two minutes
serial); the default adds repeats. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fem_crossdiff import meshes
from fem_crossdiff.compat import MPI, fem
from fem_crossdiff.particles import FreeSpace, GridDrift, ParticleParams
from fem_crossdiff.particles.mesh_domain import FEDensitySampler, MeshDomain
from fem_crossdiff.particles.mesh_drift import MeshOperatorDrift
from fem_crossdiff.particles.state import init_state, step

SIGMA, DT = 0.1, 1e-3
CASES = {2: ("disk", {"h": 0.05}, 0.2), 3: ("ball", {"h": 0.15}, 0.6)}


class _CollisionTreeDomain:
    """The old path: reflection by collision-tree location, no tracking (no ``track``)."""

    def __init__(self, dom: MeshDomain):
        self.dom, self.dim = dom, dom.dim

    def contains(self, x, comm=None):
        return self.dom.contains_collision(x, comm)

    def bounds(self):
        return self.dom.bounds()

    def reflect(self, x_old, x_new, comm=None):
        return self.dom.reflect_collision(x_old, x_new, comm)


def _setup(comm, dim):
    name, kw, eps = CASES[dim]
    msh = meshes.build(name, comm, **kw).mesh
    dom = MeshDomain(msh)
    one = fem.Function(fem.functionspace(msh, ("DG", 0)))
    one.x.array[:] = 1.0
    sampler = FEDensitySampler(one)
    base = ParticleParams(1000, (1.0, 0.5), (1.0, 2.0), SIGMA, 2.0, eps,
                          masses=(sampler.mass, sampler.mass))
    drift = MeshOperatorDrift(fem.functionspace(msh, ("Lagrange", 1)), base)
    return msh, dom, sampler, drift, eps


def _time_steps(state, params, dom, drift, comm, repeats):
    state = step(state, DT, params, dom, drift, comm)  # warm-up
    best = np.inf
    for _ in range(repeats):
        if comm is not None:
            comm.Barrier()
        t0 = time.perf_counter()
        state = step(state, DT, params, dom, drift, comm)
        dt = time.perf_counter() - t0
        if comm is not None:
            dt = comm.allreduce(dt, op=MPI.MAX)
        best = min(best, dt)
    return best


def mesh_step_us(comm, setup, n, repeats, old=False):
    """Microseconds per particle-step of the full step on the mesh (old or new path)."""
    msh, dom, sampler, drift, eps = setup
    params = ParticleParams(n, (1.0, 0.5), (1.0, 2.0), SIGMA, 2.0, eps,
                            masses=(sampler.mass, sampler.mass))
    domain = dom
    if old:
        domain = _CollisionTreeDomain(dom)
        # the collision-tree reflection may leave a particle outside by more than the drift's
        # 1e-9 (seen in the ball): the old path runs with a looser location tolerance
        drift = MeshOperatorDrift.from_potential(drift.potential, tolerance=0.05)
    state = init_state(params, sampler, 1, domain, comm)
    t = _time_steps(state, params, domain, drift, comm, repeats)
    return 1e6 * t / (2 * n)


def free_space_us(n, repeats):
    """Microseconds per particle-step of the free-space grid step (2D, same cloud shape)."""
    params = ParticleParams(n, (1.0, 0.5), (1.0, 2.0), SIGMA, 2.0, CASES[2][2])

    def sampler(rng, c):
        r, th = np.sqrt(rng.random(c)), 2 * np.pi * rng.random(c)
        return np.stack([r * np.cos(th), r * np.sin(th)], axis=1)

    dom = FreeSpace(2)
    state = init_state(params, sampler, 1, dom)
    return 1e6 * _time_steps(state, params, dom, GridDrift(), None, repeats) / (2 * n)


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(n, repeats):
    """The 2D step under ``mpiexec``: prints one JSON line on rank 0."""
    comm = MPI.COMM_WORLD
    us = mesh_step_us(comm, _setup(comm, 2), n, repeats)
    rss = comm.allreduce(_rss_mb(), op=MPI.MAX)
    if comm.rank == 0:
        print(json.dumps({"ranks": comm.size, "n": n, "us": us, "rss_mb": rss}), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (under two minutes)")
    ap.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--no-mpi", action="store_true", help="skip the 2-rank run")
    args = ap.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 4)
    if args.worker:
        worker(args.worker, repeats)
        return None
    comm = MPI.COMM_WORLD
    if comm.size > 1:
        raise SystemExit("run serially; the 2-rank figure is measured by a subprocess")
    n_2d = [10_000, 100_000, 1_000_000]
    n_3d = [10_000, 100_000]
    res = {"bench": "particles_mesh", "species": 2, "n_2d": n_2d, "n_3d": n_3d,
           "measured_under_load": True}
    for dim, ns in ((2, n_2d), (3, n_3d)):
        setup = _setup(MPI.COMM_SELF, dim)
        us = [mesh_step_us(MPI.COMM_SELF, setup, n, repeats) for n in ns]
        old = mesh_step_us(MPI.COMM_SELF, setup, ns[0], 1, old=True)
        res[f"us_per_particle_step_{dim}d"] = us
        res[f"old_us_per_particle_step_{dim}d_at_n0"] = old
        res[f"speedup_vs_old_{dim}d_at_n0"] = old / us[0]
        res[f"ratio_t10n_tn_{dim}d"] = [10 * us[i + 1] / us[i] for i in range(len(us) - 1)]
        print(f"{dim}D mesh step (us per particle-step): "
              + ", ".join(f"N={n}: {u:.3f}" for n, u in zip(ns, us, strict=True))
              + f"; old path at N={ns[0]}: {old:.2f} (x{old / us[0]:.0f})", flush=True)
    fs = [free_space_us(n, repeats) for n in n_2d]
    res["free_space_us_per_particle_step_2d"] = fs
    print("2D free-space grid step (us per particle-step): "
          + ", ".join(f"N={n}: {u:.3f}" for n, u in zip(n_2d, fs, strict=True)), flush=True)
    res["peak_rss_mb"] = _rss_mb()
    n_mpi = n_2d[-1]
    res["n_mpi"] = n_mpi
    res["us_1_rank"] = res["us_per_particle_step_2d"][-1]
    res["speedup_2_ranks"] = None
    if not args.no_mpi:
        mpiexec = Path(sys.executable).with_name("mpiexec")
        cmd = [str(mpiexec), "-n", "2", sys.executable, __file__, "--worker", str(n_mpi),
               "--repeats", str(repeats)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if out.returncode == 0:
            two = json.loads(out.stdout.strip().splitlines()[-1])
            res["us_2_ranks"] = two["us"]
            res["peak_rss_mb_per_rank_2_ranks"] = two["rss_mb"]
            res["speedup_2_ranks"] = res["us_1_rank"] / two["us"]
            print(f"2D step at N={n_mpi}: 1 rank {res['us_1_rank']:.3f} us, 2 ranks "
                  f"{two['us']:.3f} us per particle-step (speed-up "
                  f"{res['speedup_2_ranks']:.2f})", flush=True)
        else:
            print(f"2-rank run failed: {out.stderr[-2000:]}", flush=True)
    print(json.dumps(res), flush=True)
    return res


if __name__ == "__main__":
    main()
