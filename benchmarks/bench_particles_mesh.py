"""Benchmark: a full particle step on mesh domains (drift, noise, location, reflection).

Two species of ``N`` particles each, uniform in a gmsh disk (2D, ``h = 0.05``) or a gmsh ball
(3D, ``h = 0.15``), the drift of the nonlocal FE operator
(:class:`~fem_crossdiff.particles.mesh_drift.MeshOperatorDrift`, ``eps = 0.2`` / ``0.6``),
Brownian increments and reflection by tracking
(:meth:`~fem_crossdiff.particles.mesh_domain.MeshDomain.track`, the compiled walk of
:mod:`fem_crossdiff.particles.kernels`); ``sigma = 0.1``, ``dt = 1e-3`` (rms step about
``0.3 h``). Reported per particle-step (time of one step divided by ``2 N``, the minimum over
the repeats: robust on a loaded machine), next to:

* the old path at ``N_old`` (collision-tree reflection
  :meth:`~fem_crossdiff.particles.mesh_domain.MeshDomain.reflect_collision` and the drift
  locating the particles by its bounding-box tree), and the new step at the same ``N_old``;
* the compiled walk against the numpy walk
  (:meth:`~fem_crossdiff.particles.tracking.SimplexTracker.walk` with ``kernel=False``) on
  the same steps at the largest ``N``, side by side, with their largest difference;
* where the time of one step goes at the largest ``N`` (``cProfile``: noise, drift with its
  potential, tracking with the walk, the rest), and the counter-based noise
  (:func:`~fem_crossdiff.particles.counter_rng.normals`) for the same particles;
* the first call of the compiled walk in this process (numba's cache, or a compilation) and
  its compilation from scratch, apart from the steady state; the first (warm-up) step;
* the free-space grid step (:class:`~fem_crossdiff.particles.drift.GridDrift` in ``R^2``) at
  the same ``N`` (2D);
* the set-up time of each mesh (the FE operator; not part of the step);
* the same 2D step on 2 ranks at the largest quick ``N`` (``mpiexec -n 2`` of this script as
  a subprocess), ``speedup_2_ranks = t(1 rank) / t(2 ranks)``.

``--quick``: 2D ``N = 1e4, 1e5, 1e6``, 3D ``N = 1e4, 1e5``, 2 repeats, old path at
``N_old = 2000``, 3D operator at ``eps = 0.3`` (:data:`QUICK_EPS_3D`); the default adds
repeats and takes the old path at ``N_old = 1e4`` and ``eps = 0.6``. The last line is one
JSON object.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numba
import numpy as np

from fem_crossdiff import meshes
from fem_crossdiff.compat import MPI, fem
from fem_crossdiff.models.nonlocal_system import NonlocalParams
from fem_crossdiff.particles import FreeSpace, GridDrift, ParticleParams, counter_rng, kernels
from fem_crossdiff.particles.mesh_domain import FEDensitySampler, MeshDomain
from fem_crossdiff.particles.mesh_drift import MeshOperatorDrift
from fem_crossdiff.particles.state import init_state, step

SIGMA, DT = 0.1, 1e-3
CASES = {2: ("disk", {"h": 0.05}, 0.2), 3: ("ball", {"h": 0.15}, 0.6)}
#: ``--quick`` 3D operator radius: at 0.6 the FE operator's set-up (independent of ``N``, not
#: part of the step) took 16 s of CPU, at 0.3 4 s; the step's cost per particle does not depend
#: on ``eps`` (the potential is about 0.01 us per particle-step at ``N = 1e5``). Below the
#: operator's ``2 h_max`` rule: accepted with ``allow_small_eps`` (a cost figure, not accuracy).
QUICK_EPS_3D = 0.3


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


def _setup(comm, dim, eps=None):
    name, kw, eps0 = CASES[dim]
    eps = eps0 if eps is None else eps
    msh = meshes.build(name, comm, **kw).mesh
    dom = MeshDomain(msh)
    one = fem.Function(fem.functionspace(msh, ("DG", 0)))
    one.x.array[:] = 1.0
    sampler = FEDensitySampler(one)
    base = ParticleParams(1000, (1.0, 0.5), (1.0, 2.0), SIGMA, 2.0, eps,
                          masses=(sampler.mass, sampler.mass))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not span two cells")
        drift = MeshOperatorDrift(fem.functionspace(msh, ("Lagrange", 1)), base,
                                  NonlocalParams(eps=eps, allow_small_eps=eps < eps0))
    return msh, dom, sampler, drift, eps


def _time_steps(state, params, dom, drift, comm, repeats, warm_up=True):
    """Best time of one step over ``repeats``; the warm-up step's time; the last state."""
    first = np.nan
    if warm_up:
        t0 = time.perf_counter()
        state = step(state, DT, params, dom, drift, comm)  # first calls, caches
        first = time.perf_counter() - t0
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
    return best, first, state


def _params(n, sampler, eps):
    return ParticleParams(n, (1.0, 0.5), (1.0, 2.0), SIGMA, 2.0, eps,
                          masses=(sampler.mass, sampler.mass))


def mesh_step(comm, setup, n, repeats, old=False, warm_up=True):
    """Microseconds per particle-step of the full step on the mesh (old or new path).

    Returns ``(us, first_step_s, params, state)``. A warm-up step (first calls, caches) is
    taken only when asked: once per mesh, at the smallest ``N``; the old path takes none (it
    compiles nothing, and one step of it at ``N_old`` costs seconds).
    """
    msh, dom, sampler, drift, eps = setup
    params = _params(n, sampler, eps)
    domain = dom
    if old:
        domain = _CollisionTreeDomain(dom)
        # the collision-tree reflection may leave a particle outside by more than the drift's
        # 1e-9 (seen in the ball): the old path runs with a looser location tolerance
        drift = MeshOperatorDrift.from_potential(drift.potential, tolerance=0.05)
    state = init_state(params, sampler, 1, domain, comm)
    t, first, state = _time_steps(state, params, domain, drift, comm, repeats,
                                  warm_up=warm_up and not old)
    return 1e6 * t / (2 * n), first, params, state


def free_space_us(n, repeats, warm_up):
    """Microseconds per particle-step of the free-space grid step (2D, same cloud shape).

    The grid's kernel transforms are cached across calls (same grid for every ``N``): one
    warm-up step, at the smallest ``N``, suffices.
    """
    params = ParticleParams(n, (1.0, 0.5), (1.0, 2.0), SIGMA, 2.0, CASES[2][2])

    def sampler(rng, c):
        r, th = np.sqrt(rng.random(c)), 2 * np.pi * rng.random(c)
        return np.stack([r * np.cos(th), r * np.sin(th)], axis=1)

    dom = FreeSpace(2)
    state = init_state(params, sampler, 1, dom)
    return 1e6 * _time_steps(state, params, dom, GridDrift(), None, repeats,
                             warm_up)[0] / (2 * n)


def walk_side_by_side(dom, state, repeats):
    """Compiled and numpy walk on the same steps of all particles of ``state``.

    Returns ``(us_kernel, us_numpy, max_position_difference, cells_differing)``.
    """
    tr = dom.part_tracker  # the particles' cells are its (rank-local) cells
    d = state.dim
    p = np.asarray(state.positions).reshape(-1, d)
    c = np.asarray(state.cells).reshape(-1)
    rng = np.random.default_rng(5)
    q = p + np.sqrt(2.0 * SIGMA * DT) * rng.standard_normal(p.shape)
    best = {"kernel": np.inf, "numpy": np.inf}
    out = {}
    for _ in range(repeats):
        for name in best:
            t0 = time.perf_counter()
            r = tr.walk(p, q, c, kernel=name == "kernel")
            best[name] = min(best[name], time.perf_counter() - t0)
            out[name] = r[1:4]  # (q, c, lost) of (p, q, c, lost, exited)
    (yk, ck, lk), (yn, cn, ln) = out["kernel"], out["numpy"]
    ok = np.setdiff1d(np.arange(p.shape[0]), np.union1d(lk, ln))
    diff = float(np.abs(yk[ok] - yn[ok]).max(initial=0.0))
    return (1e6 * best["kernel"] / p.shape[0], 1e6 * best["numpy"] / p.shape[0], diff,
            int(np.count_nonzero(ck[ok] != cn[ok])) + abs(lk.size - ln.size))


#: Parts of one step in the profile: label, then ``(module file, function)`` of which the one
#: of largest cumulative time counts (the outermost of nested ones; the names of the present
#: code and of the per-particle noise of :mod:`~fem_crossdiff.particles.counter_rng`).
PARTS = (
    ("noise", (("state.py", "brownian_increments"), ("counter_rng.py", "normals"))),
    ("drift", (("mesh_drift.py", "at_cells"), ("mesh_drift.py", "__call__"))),
    ("potential", (("nonlocal_.py", "__call__"),)),
    ("track", (("mesh_domain.py", "track"),)),
    ("walk", (("kernels.py", "walk"),)),
)


def profile_step(state, params, dom, drift, comm):
    """Seconds of one step and of its parts (cumulative, by ``cProfile``; see :data:`PARTS`).

    ``rest`` is the step less noise, drift and tracking (the copies and Python of ``step``);
    the potential is part of the drift, the walk part of the tracking.
    """
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    step(state, DT, params, dom, drift, comm)
    prof.disable()
    total = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats
    out = {"step": total}
    for label, where in PARTS:
        out[label] = max(sum(v[3] for (f, _, func), v in stats.items()
                             if f.endswith(fname) and func == name) for fname, name in where)
    out["rest"] = total - out["noise"] - out["drift"] - out["track"]
    return out


def counter_noise_us(state, repeats):
    """Microseconds per particle for the counter-based normals of all species (same ids)."""
    d = state.dim
    counter_rng.normals(1, 1, 0, 0, state.ids[:4], d)  # first call: numba's cache or compiling
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for k in range(state.n_species):
            counter_rng.normals(state.seed, 1, k, state.step_index, state.ids_of_species(k), d)
        best = min(best, time.perf_counter() - t0)
    return 1e6 * best / max(1, state.positions.shape[0])


def walk_first_call():
    """Seconds of the first call of the compiled walk here, and whether numba compiled it.

    A one-triangle walk with the types of the real calls; at the start of the process, so
    that it pays for loading the cached machine code (or for compiling, without a cache).
    """
    A = np.array([[[-1.0, -1.0], [1.0, 0.0], [0.0, 1.0]]])
    b = np.array([[1.0, 0.0, 0.0]])
    p = np.full((1, 2), 0.25)
    t0 = time.perf_counter()
    kernels.walk(A, b, -np.ones((1, 3), dtype=np.int64), p, p + 1.0, np.zeros(1, np.int64))
    t = time.perf_counter() - t0
    return t, sum(kernels.walk_status.stats.cache_misses.values()) > 0


def walk_compile_s():
    """Seconds to compile the walk from scratch (a fresh, uncached dispatcher)."""
    fresh = numba.njit(kernels.walk_status.py_func)
    t0 = time.perf_counter()
    for sig in kernels.walk_status.signatures:
        fresh.compile(sig)
    return time.perf_counter() - t0


_T0 = time.perf_counter()


def _say(msg: str):
    """Print with the seconds since the start (the parts of the benchmark's own time)."""
    print(f"[{time.perf_counter() - _T0:5.0f} s] {msg}", flush=True)


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(n, repeats):
    """The 2D step under ``mpiexec``: prints one JSON line on rank 0.

    No warm-up step, as for the serial figure at the same ``N``: the first of the repeats
    takes the first calls.
    """
    comm = MPI.COMM_WORLD
    us = mesh_step(comm, _setup(comm, 2), n, repeats, warm_up=False)[0]
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
    wall0 = time.perf_counter()
    first, compiled = walk_first_call()
    n_2d = [10_000, 100_000, 1_000_000]
    n_3d = [10_000, 100_000]
    n_old = 2000 if args.quick else 10_000
    res = {"bench": "particles_mesh", "species": 2, "n_2d": n_2d, "n_3d": n_3d,
           "n_old": n_old, "load_average_1min": os.getloadavg()[0],
           "walk_first_call_s": first, "walk_first_call_compiled": compiled}
    _say(f"compiled walk, first call in this process: {first:.2f} s "
          f"({'compiled' if compiled else 'loaded from numba cache'})")
    for dim, ns in ((2, n_2d), (3, n_3d)):
        t0 = time.perf_counter()
        eps = QUICK_EPS_3D if (args.quick and dim == 3) else CASES[dim][2]
        res[f"eps_{dim}d"] = eps
        setup = _setup(MPI.COMM_SELF, dim, eps)
        res[f"setup_s_{dim}d"] = time.perf_counter() - t0
        _say(f"{dim}D set-up (mesh, tracker, FE operator; not timed in the step): "
             f"{res[f'setup_s_{dim}d']:.1f} s")
        us, firsts = [], []
        for i, n in enumerate(ns):
            u, f, params, state = mesh_step(MPI.COMM_SELF, setup, n, repeats, warm_up=i == 0)
            us.append(u)
            firsts.append(f)
        first_step = firsts[0]
        new_old = mesh_step(MPI.COMM_SELF, setup, n_old, repeats, warm_up=False)[0]
        old = mesh_step(MPI.COMM_SELF, setup, n_old, 1, old=True)[0]
        res[f"us_per_particle_step_{dim}d"] = us
        res[f"first_step_s_{dim}d"] = first_step
        res[f"us_per_particle_step_{dim}d_at_n_old"] = new_old
        res[f"old_us_per_particle_step_{dim}d"] = old
        res[f"speedup_vs_old_{dim}d"] = old / new_old
        res[f"ratio_t10n_tn_{dim}d"] = [10 * us[i + 1] / us[i] for i in range(len(us) - 1)]
        _say(f"{dim}D mesh step (us per particle-step): "
              + ", ".join(f"N={n}: {u:.3f}" for n, u in zip(ns, us, strict=True))
              + "; t(10N)/t(N): "
              + ", ".join(f"{r:.1f}" for r in res[f"ratio_t10n_tn_{dim}d"])
              + f"; first (warm-up) step {first_step:.2f} s at N={ns[0]}")
        _say(f"{dim}D at N={n_old}: old path {old:.2f}, new {new_old:.3f} us per particle-step "
              f"(x{old / new_old:.0f})")
        # the largest N: walk side by side, profile, counter-based noise
        dom, drift = setup[1], setup[3]
        uk, un, diff, ndiff = walk_side_by_side(dom, state, 1 if args.quick else repeats)
        res[f"walk_kernel_us_{dim}d"], res[f"walk_numpy_us_{dim}d"] = uk, un
        res[f"walk_max_difference_{dim}d"], res[f"walk_cells_differing_{dim}d"] = diff, ndiff
        _say(f"{dim}D walk alone at N={ns[-1]} (us per particle): compiled {uk:.3f}, numpy "
              f"{un:.3f} (x{un / uk:.1f}); largest difference {diff:.1e}, cells differing "
              f"{ndiff}")
        prof = profile_step(state, params, dom, drift, MPI.COMM_SELF)
        per = {k: 1e6 * v / (2 * ns[-1]) for k, v in prof.items()}
        res[f"profile_us_per_particle_step_{dim}d"] = per
        cn = counter_noise_us(state, repeats)
        res[f"counter_rng_us_per_particle_{dim}d"] = cn
        _say(f"{dim}D one step at N={ns[-1]} (us per particle-step, cProfile): "
              + ", ".join(f"{k} {v:.3f}" for k, v in per.items())
              + f"; counter-based normals alone {cn:.3f}")
        del state
    fs = [free_space_us(n, repeats, i == 0) for i, n in enumerate(n_2d)]
    res["free_space_us_per_particle_step_2d"] = fs
    _say("2D free-space grid step (us per particle-step): "
          + ", ".join(f"N={n}: {u:.3f}" for n, u in zip(n_2d, fs, strict=True)))
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
            _say(f"2D step at N={n_mpi}: 1 rank {res['us_1_rank']:.3f} us, 2 ranks "
                  f"{two['us']:.3f} us per particle-step (speed-up "
                  f"{res['speedup_2_ranks']:.2f})")
        else:
            _say(f"2-rank run failed: {out.stderr[-2000:]}")
    res["walk_compile_s"] = walk_compile_s()
    _say(f"compiled walk, compilation from scratch: {res['walk_compile_s']:.2f} s (once per "
          f"installation: numba caches it)")
    res["wall_s"] = time.perf_counter() - wall0
    _say(f"benchmark wall time {res['wall_s']:.0f} s; load average {os.getloadavg()[0]:.2f} "
         f"(at the start: {res['load_average_1min']:.2f}) on {os.cpu_count()} cores")
    print(json.dumps(res), flush=True)
    return res


if __name__ == "__main__":
    main()
