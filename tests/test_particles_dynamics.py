"""Particle dynamics: diffusion, walls, rank-independence, Euler-Maruyama order, I/O, errors."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

from fem_crossdiff.compat import MPI
from fem_crossdiff.particles import (
    Box,
    CellListDrift,
    FreeSpace,
    GridDrift,
    ParticleParams,
    QuadratureSpec,
)
from fem_crossdiff.particles.output import ParticleWriter
from fem_crossdiff.particles.rng import partition
from fem_crossdiff.particles.sampling import InverseCDF1D, RejectionSampler
from fem_crossdiff.particles.state import (
    brownian_increments,
    gather_positions,
    init_state,
    state_from_positions,
    step,
)


def _sum(comm, x):
    return comm.allreduce(x, op=MPI.SUM)


def _max(comm, x):
    return comm.allreduce(x, op=MPI.MAX)


def _gauss(center, std, d):
    def sampler(rng, n):
        return center + std * rng.standard_normal((n, d))
    return sampler


def test_pure_diffusion_msd(comm):
    """Pressure off: E|X_t - X_0|^2 = 2 d sigma t within 4 standard errors."""
    n, sigma, dt, steps = 20000, 0.3, 0.05, 10
    params = ParticleParams(n, (1.0,), (1.0,), sigma, 2.0, 0.1)
    dom = FreeSpace(2)
    s0 = init_state(params, _gauss(0.0, 1.0, 2), 3, dom, comm)
    s = s0
    for _ in range(steps):
        s = step(s, dt, params, dom, None, comm)
    sq = np.sum((s.positions - s0.positions) ** 2, axis=-1).ravel()
    mean = _sum(comm, float(sq.sum())) / n
    var = _sum(comm, float(np.sum(sq**2))) / n - mean**2
    exact = 2 * 2 * sigma * dt * steps
    se = np.sqrt(var / n)
    if comm.rank == 0:
        print(f"\nMSD {mean:.5f} vs 2 d sigma t = {exact:.5f} (SE {se:.5f})")
    assert abs(mean - exact) < 4 * se
    assert abs(s.time - dt * steps) < 1e-12


def test_box_reflection_exact_and_invariant_law(comm):
    box = Box((0.0, 0.0), (1.0, 2.0))
    x_new = np.array([[1.3, -0.2], [2.3, 4.5], [-1.7, 2.0], [0.4, -3.9]])
    ref = np.array([[0.7, 0.2], [0.3, 0.5], [0.3, 2.0], [0.4, 0.1]])
    np.testing.assert_allclose(box.reflect(x_new, x_new), ref, atol=1e-14)
    # Steps longer than the box: all particles stay inside; the uniform law is invariant.
    n = 20000
    params = ParticleParams(n, (1.0,), (1.0,), 1.0, 2.0, 0.1)
    s = init_state(params, lambda rng, c: rng.random((c, 2)) * [1.0, 2.0], 9, box, comm)
    for _ in range(10):
        s = step(s, 0.3, params, box, None, comm)
        inside = box.contains(s.positions.reshape(-1, 2))
        assert _sum(comm, int(np.count_nonzero(~inside))) == 0
    mean = np.array([_sum(comm, float(v)) for v in s.of_species(0).sum(axis=0)]) / n
    se = np.array([1.0, 2.0]) / np.sqrt(12 * n)
    assert np.all(np.abs(mean - [0.5, 1.0]) < 4 * se), mean


def test_same_seed_any_number_of_ranks(comm):
    """Distributed run vs a serial run on COMM_SELF: identical streams, trajectories to 1e-8."""
    n = 700  # not a multiple of the ranks, nor of the stream block
    params = ParticleParams(n, (1.0, 0.5), (1.0, 2.0), 0.05, 2.5, 0.2)
    box = Box((-1.0, -1.0), (1.0, 1.0))
    samplers = [RejectionSampler(lambda x: np.exp(-4 * np.sum(x**2, axis=1)), (-1, -1), (1, 1)),
                RejectionSampler(lambda x: 1.0 + x[:, 0], (-1, -1), (1, 1))]
    dist = init_state(params, samplers, 2024, box, comm)
    serial = init_state(params, samplers, 2024, box, None)
    start, stop = partition(n, comm.size, comm.rank)
    assert all(np.array_equal(dist.ids_of_species(k), np.arange(start, stop)) for k in (0, 1))

    def block(a):  # this rank's index block of every species of a serial (2 N, d) array
        return a.reshape(2, n, -1)[:, start:stop].reshape(-1, a.shape[-1])

    same_init = np.array_equal(dist.positions, block(serial.positions))
    same_noise = np.array_equal(brownian_increments(dist, 0.01),
                                block(brownian_increments(serial, 0.01)))
    assert comm.allreduce(same_init and same_noise, op=MPI.LAND)
    drift = GridDrift(16)
    for _ in range(10):
        dist = step(dist, 0.01, params, box, drift, comm)
        serial = step(serial, 0.01, params, box, drift, MPI.COMM_SELF)
    full = gather_positions(dist, comm, root=None)
    moved = float(np.abs(full - gather_positions(init_state(params, samplers, 2024, box, comm),
                                                 comm, root=None)).max())
    err = _max(comm, float(np.abs(full - gather_positions(serial)).max()))
    if comm.rank == 0:
        print(f"\nranks={comm.size}: max |X_dist - X_serial| after 10 steps = {err:.2e}")
    assert err < 1e-8
    assert moved > 0.05  # the comparison is not vacuous


def test_euler_maruyama_strong_order(comm):
    """Additive noise and a smooth drift: EM is Milstein, strong order 1 (not the general 0.5).

    The quadrature drift (cell lists) is a smooth function of all positions (C^infinity
    kernel, S exact), so the theory for order 1.0 applies. Coarse paths use the sums of the
    fine Brownian increments.
    """
    n, T, fine = 60, 0.4, 128
    params = ParticleParams(n, (1.0, 0.5), (1.0, 2.0), 0.1, 2.0, 0.5)
    dom = FreeSpace(1)
    drift = CellListDrift(QuadratureSpec(6, 3))
    s0 = init_state(params, [_gauss(-0.1, 0.15, 1), _gauss(0.2, 0.15, 1)], 77, dom, comm)
    dw = [brownian_increments(s0, T / fine, step_index=j) for j in range(fine)]

    def solve(nsteps):
        r = fine // nsteps
        s = s0
        for j in range(nsteps):
            s = step(s, T / nsteps, params, dom, drift, comm, dW=sum(dw[j * r:(j + 1) * r]))
        return s.positions

    ref = solve(fine)
    levels = [4, 8, 16, 32]
    errs = []
    for ns in levels:
        e2 = _sum(comm, float(np.sum((solve(ns) - ref) ** 2))) / (2 * n)
        errs.append(np.sqrt(e2))
    slope = np.polyfit(np.log(T / np.array(levels)), np.log(errs), 1)[0]
    if comm.rank == 0:
        print(f"\nEM strong errors {errs}, fitted order {slope:.2f}")
    assert abs(slope - 1.0) < 0.3


def test_inverse_cdf_sampler_exact_and_ks(comm):
    tri = InverseCDF1D(np.array([0.0, 2.0]), nodes=np.array([0.0, 1.0]))
    u = np.linspace(0, 1, 101)
    np.testing.assert_allclose(tri.inverse_cdf(u), np.sqrt(u), atol=1e-14)
    dens = InverseCDF1D(lambda x: np.exp(-x**2) * (1.2 + np.sin(3 * x)), lo=-3, hi=3)
    n = 10000
    params = ParticleParams(n, (1.0,), (1.0,), 0.0, 2.0, 0.1)
    s = init_state(params, dens, 1, FreeSpace(1), comm)
    x = np.sort(gather_positions(s, comm, root=None)[0, :, 0])
    emp = np.arange(1, n + 1) / n
    cdf = dens.cdf(x)
    ks = max(np.abs(emp - cdf).max(), np.abs(emp - 1.0 / n - cdf).max()) * np.sqrt(n)
    assert ks < 1.95  # Kolmogorov 0.1% quantile
    assert abs(dens.cdf(np.array([3.0]))[0] - 1.0) < 1e-14


def test_rejection_sampler_moments(comm):
    n = 20000
    params = ParticleParams(n, (1.0,), (1.0,), 0.0, 2.0, 0.1)
    disk = RejectionSampler(lambda x: 1.0 + x[:, 0], (-1, -1), (1, 1),
                            inside=lambda x: np.sum(x**2, axis=1) <= 1.0)
    s = init_state(params, disk, 4, Box((-1, -1), (1, 1)), comm)
    x = s.of_species(0)
    mean_x = _sum(comm, float(x[:, 0].sum())) / n
    r_max = _max(comm, float(np.linalg.norm(x, axis=1).max()))
    # density (1 + x)/pi on the unit disk: E x = 1/4, E x^2 = 1/4, Var x = 3/16
    se = np.sqrt((0.25 - 0.0625) / n)
    assert abs(mean_x - 0.25) < 4 * se
    assert r_max <= 1.0


def test_writer_outputs(comm, mpi_tmp_path):
    n = 50
    params = ParticleParams(n, (1.0, 2.0), (1.0, 1.0), 0.1, 2.0, 0.3)
    dom = FreeSpace(2)
    s = init_state(params, _gauss(0.0, 0.3, 2), 5, dom, comm)
    with ParticleWriter(mpi_tmp_path / "out", every=3, comm=comm, csv_points=True) as w:
        w.write(s)
        for _ in range(6):
            s = step(s, 0.01, params, dom, GridDrift(), comm)
            w.write(s)
    comm.Barrier()
    ok = True
    if comm.rank == 0:
        out = mpi_tmp_path / "out"
        files = sorted(p.name for p in out.glob("positions_*.npz"))
        ok &= files == ["positions_000000.npz", "positions_000003.npz", "positions_000006.npz"]
        with open(out / "diagnostics.csv") as f:
            rows = list(csv.DictReader(f))
        ok &= len(rows) == 7
        last = np.load(out / "positions_000006.npz")["positions"]
        ok &= last.shape == (2, n, 2)
        ok &= abs(float(rows[-1]["mean2_y"]) - last[1, :, 1].mean()) < 1e-12  # species 2
        ok &= abs(float(rows[-1]["second_moment1"]) - np.sum(last[0] ** 2) / n) < 1e-12
        pts = np.loadtxt(out / "points_000006.csv", delimiter=",", skiprows=1)
        ok &= pts.shape == (2 * n, 4)
        ok &= sorted(set(pts[:, 3])) == [1.0, 2.0]  # species numbered from 1
    assert comm.bcast(ok, root=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_particles": 0}, "n_particles"),
        ({"sigma": -0.1}, "sigma"),
        ({"eps": 0.0}, "eps"),
        ({"eps": -1.0}, "eps"),
        ({"m": 1.5}, "m must"),
        ({"a": (1.0, -1.0)}, r"a\[1\]"),
        ({"b": (0.0, 1.0)}, r"b\[0\]"),
        ({"b": (1.0,)}, "equal lengths"),
        ({"kernel": "gauss"}, "kernel"),
    ],
)
def test_bad_parameters(kwargs, match):
    base = {"n_particles": 10, "a": (1.0, 1.0), "b": (1.0, 1.0), "sigma": 0.1, "m": 2.0,
            "eps": 0.1}
    with pytest.raises(ValueError, match=match):
        ParticleParams(**{**base, **kwargs})


def test_bad_densities_and_positions(comm):
    with pytest.raises(ValueError, match="density has negative"):
        InverseCDF1D(lambda x: x, lo=-1, hi=1)
    with pytest.raises(ValueError, match="density has zero mass"):
        InverseCDF1D(np.zeros(5), nodes=np.linspace(0, 1, 5))
    with pytest.raises(ValueError, match="density has non-finite"):
        RejectionSampler(lambda x: np.full(x.shape[0], np.nan), (0, 0), (1, 1))
    with pytest.raises(ValueError, match="density has zero mass"):
        RejectionSampler(lambda x: np.zeros(x.shape[0]), (0, 0), (1, 1))
    params = ParticleParams(100, (1.0,), (1.0,), 0.1, 2.0, 0.1)
    box = Box((0.0,), (1.0,))
    with pytest.raises(ValueError, match="positions"):
        init_state(params, _gauss(0.5, 1.0, 1), 0, box, comm)
    with pytest.raises(ValueError, match="positions"):
        state_from_positions(np.full((1, 10, 1), 1.5), 0, box, comm)
    with pytest.raises(ValueError, match="seed"):
        init_state(params, _gauss(0.5, 0.1, 1), -3, box, comm)
    s = state_from_positions(np.full((1, 10, 1), 0.5), 0, box, comm)
    with pytest.raises(ValueError, match="dt"):
        step(s, 0.0, params, box)


#: Packages that the numpy core must not need (the DOLFINx stack and MPI).
_BLOCKED = ("dolfinx", "petsc4py", "mpi4py", "basix", "ffcx", "ufl", "dolfinx_solver")

#: Run in a fresh interpreter: a finder that refuses the blocked packages, then the imports and
#: one small particle step. Prints OK on success; any failure is a traceback and exit code 1.
_NO_DOLFINX_SCRIPT = """
import importlib.abc
import sys

BLOCKED = set(BLOCKED_NAMES)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, f"loaded at start-up, cannot be blocked: {loaded}"


class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the numpy core must not import it")
        return None


sys.meta_path.insert(0, Refuse())
try:
    import ufl  # noqa: F401
except ImportError:
    pass
else:
    raise AssertionError("the blocking finder does not work")

import numpy as np

import fem_crossdiff
import fem_crossdiff.errors
import fem_crossdiff.laws
import fem_crossdiff.mollifiers
import fem_crossdiff.params
import fem_crossdiff.particles
from fem_crossdiff.particles import (
    coupling, distances, domains, drift, output, params, rng, sampling, state,
)

p = params.ParticleParams(12, (1.0, 0.5), (1.0, 2.0), 0.01, 3.0, 0.2)
assert isinstance(p.law, fem_crossdiff.laws.PowerLaw) and p.law.m == 3.0
box = domains.Box((0.0, 0.0), (1.0, 1.0))
s0 = state.init_state(p, lambda g, n: 0.3 + 0.4 * g.random((n, 2)), 1, box)
s1 = state.step(s0, 1e-3, p, box, drift.GridDrift(8))
assert s1.step_index == 1 and s1.positions.shape == (24, 2)
assert np.all(np.isfinite(s1.positions)) and np.any(s1.positions != s0.positions)
free = domains.FreeSpace(1)
q = params.ParticleParams(8, (1.0,), (1.0,), 0.0, 2.0, 0.5)
t0 = state.state_from_positions(np.linspace(-0.2, 0.2, 8)[None, :, None], 0, free)
t1 = state.step(t0, 1e-2, q, free, drift.GridDrift(8))
assert np.all(np.diff(t1.positions[:, 0]) > np.diff(t0.positions[:, 0]))  # spreads
assert distances.wasserstein_1d(t0.of_species(0), t1.of_species(0), 1) > 0.0
leaked = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
assert not leaked, f"imported: {leaked}"
print("OK")
""".replace("BLOCKED_NAMES", repr(_BLOCKED))


def test_core_imports_without_dolfinx(comm):
    """The numpy core imports and steps with DOLFINx, PETSc, MPI and UFL made unimportable."""
    ok, msg = None, None
    if comm.rank == 0:
        res = subprocess.run([sys.executable, "-c", _NO_DOLFINX_SCRIPT], capture_output=True,
                             text=True, timeout=240)
        ok = res.returncode == 0 and res.stdout.strip().endswith("OK")
        msg = (res.stdout + res.stderr)[-3000:]
    ok, msg = comm.bcast((ok, msg), root=0)
    assert ok, msg


def test_step_is_pure(comm):
    params = ParticleParams(40, (1.0,), (1.0,), 0.2, 2.0, 0.3)
    dom = FreeSpace(2)
    s0 = init_state(params, _gauss(0.0, 0.3, 2), 8, dom, comm)
    before = s0.positions.copy()
    s1 = step(s0, 0.1, params, dom, GridDrift(), comm)
    s1b = step(s0, 0.1, params, dom, GridDrift(), comm)
    assert np.array_equal(s0.positions, before) and s0.step_index == 0 and s0.time == 0.0
    assert not s0.positions.flags.writeable
    assert np.array_equal(s1.positions, s1b.positions) and s1.step_index == 1
    moved = _max(comm, float(np.abs(s1.positions - before).max()) if before.size else 0.0)
    assert moved > 0.01
