"""Particles on bounded mesh domains: species masses, and the drift from the FE operator.

* masses: particles of weight ``a_l M_l / N`` follow the nonlocal FE model (1.5) for a species
  of mass 0.04 and of mass 1 (the weights used to ignore the mass: both clouds were identical);
* :class:`~fem_crossdiff.particles.mesh_drift.MeshOperatorDrift`: a uniform cloud on a disk is
  (nearly) stationary with the default wall normalisation, the result is rank- and
  split-independent, and its interior error against the exact (1.6) drift is as documented.

The same suite runs serially and under ``mpirun -n 2``.
"""

from __future__ import annotations

import numpy as np
import pytest

from fem_crossdiff.compat import MPI, fem, mesh
from fem_crossdiff.measures import density_moments
from fem_crossdiff.models.nonlocal_system import NonlocalParams
from fem_crossdiff.params import ModelParams
from fem_crossdiff.particles import ParticleParams, drift_bruteforce
from fem_crossdiff.particles.mesh_domain import FEDensitySampler, MeshDomain
from fem_crossdiff.particles.mesh_drift import MeshOperatorDrift
from fem_crossdiff.particles.rng import partition
from fem_crossdiff.particles.state import init_state, step
from fem_crossdiff.solver import CrossDiffusionSolver

EPS = 0.2


def _square(comm, n):
    return mesh.create_rectangle(comm, [[-1.0, -1.0], [1.0, 1.0]], [n, n],
                                 diagonal=mesh.DiagonalType.crossed)


@pytest.fixture(scope="module")
def nonlocal_solver():
    """Nonlocal FE solver on [-1, 1]^2, h = eps / 5 (its operator is shared by the drifts)."""
    comm = MPI.COMM_WORLD
    model = ModelParams(a=(1.0,), b=(1.0,), m=2.0, sigma=0.01)
    return CrossDiffusionSolver(_square(comm, 50), model, nonlocal_params=NonlocalParams(EPS))


def _gauss(s0, mass):
    return lambda x: mass * np.exp(-(x[0] ** 2 + x[1] ** 2) / (2 * s0**2)) / (2 * np.pi * s0**2)


def _second_moment(positions, n_total, comm):
    """``E|X|^2`` of the cloud and its standard error."""
    r2 = np.sum(positions**2, axis=-1).ravel()
    mean = comm.allreduce(float(r2.sum()), op=MPI.SUM) / n_total
    var = comm.allreduce(float(np.sum((r2 - mean) ** 2)), op=MPI.SUM) / (n_total - 1)
    return mean, np.sqrt(var / n_total)


def test_params_masses_validation():
    p = ParticleParams(10, (1.0, 2.0), (1.0, 1.0), 0.1, 2.0, 0.2)
    assert p.masses is None and p.mass == (1.0, 1.0)
    assert p.weights == (0.1, 0.2)
    q = ParticleParams(10, (1.0, 2.0), (1.0, 1.0), 0.1, 2.0, 0.2, masses=[0.5, 4])
    assert q.masses == (0.5, 4.0) and q.mass == (0.5, 4.0) and q.weights == (0.05, 0.8)
    for bad in ((1.0,), (1.0, 0.0), (1.0, -2.0), (1.0, float("nan")), (1.0, float("inf")), 3.0):
        with pytest.raises(ValueError, match="masses"):
            ParticleParams(10, (1.0, 2.0), (1.0, 1.0), 0.1, 2.0, 0.2, masses=bad)


@pytest.mark.parametrize("m", [2.0, 3.0])
def test_free_space_drifts_scale_with_the_masses(comm, m):
    """Weights ``a_l M_l / N``: the drift of a species of mass M is M^(m-1) times that of M = 1.

    (The weights used to be ``a_l / N`` whatever the mass: the two drifts were equal.)
    """
    from fem_crossdiff.particles import CellListDrift, GridDrift, QuadratureSpec

    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 0.3, (1, 400, 2))
    start, stop = partition(400, comm.size, comm.rank)
    unit = ParticleParams(400, (1.0,), (1.0,), 0.0, m, 0.3)
    light = ParticleParams(400, (1.0,), (1.0,), 0.0, m, 0.3, masses=(0.04,))
    spec = QuadratureSpec(4, 2)
    drifts = (GridDrift(8.0), CellListDrift(spec),
              lambda y, t, p, c: drift_bruteforce(y, p, c, spec))
    for drift in drifts:
        v1 = drift(x[:, start:stop], 0.0, unit, comm)
        v2 = drift(x[:, start:stop], 0.0, light, comm)
        scale = comm.allreduce(float(np.abs(v1).max(initial=0.0)), op=MPI.MAX)
        err = comm.allreduce(float(np.abs(v2 - 0.04 ** (m - 1) * v1).max(initial=0.0)),
                             op=MPI.MAX)
        assert scale > 0.1 and err < 1e-12 * scale, (drift, err, scale)


def test_masses_particles_follow_the_fe_model(comm, nonlocal_solver):
    """Mass 0.04 and mass 1: the particle E|X|^2 agrees with the PDE's, and they differ.

    Gaussian (s0 = 0.2) on [-1, 1]^2 as a P1 function, N = 4000 particles sampled from it,
    20 steps of 5e-4 with the FE operator's drift and reflecting walls, next to the FE model.
    Measured (z = (particles - PDE) / standard error): mass 0.04: PDE 0.0820, particles
    0.0823 (z +0.3); mass 1: PDE 0.1092, particles 0.1074 (z -1.3), the gap is the upwind
    scheme's O(h) numerical diffusion (the free-space grid drift gives 0.1076). The particle
    moments of the two masses differ by 18 standard errors; with the weights a_l / N of
    before, the mass-0.04 cloud was the mass-1 cloud.
    """
    s = nonlocal_solver
    dom = MeshDomain(s.msh)
    drift = MeshOperatorDrift.from_potential(s.model.potential)
    n, dt, steps = 4000, 5e-4, 20
    moments = {}
    for mass in (0.04, 1.0):
        u = fem.Function(s.V0)
        u.interpolate(_gauss(0.2, mass))
        sampler = FEDensitySampler(u)
        assert abs(sampler.mass / mass - 1.0) < 1e-3
        s.set_initial([u])
        for _ in range(steps):
            assert s.step(dt).accepted
        pde = float(np.trace(density_moments(s.species(0)).second))
        params = ParticleParams(n, (1.0,), (1.0,), 0.01, 2.0, EPS, masses=(sampler.mass,))
        state = init_state(params, sampler, 3, dom, comm)
        for _ in range(steps):
            state = step(state, dt, params, dom, drift, comm)
        m2, se = _second_moment(state.positions, n, comm)
        moments[mass] = (m2, se, pde)
        assert abs(m2 - pde) < 3.0 * se, (mass, m2, pde, se)
    (m_small, se_small, p_small), (m_one, se_one, p_one) = moments[0.04], moments[1.0]
    assert p_one - p_small > 0.02  # the PDE: the pressure of mass 1 spreads it much faster
    assert m_one - m_small > 10.0 * np.hypot(se_small, se_one), moments


def _disk(comm):
    from fem_crossdiff import meshes

    return meshes.build("disk", comm, h=0.1).mesh


def test_uniform_cloud_on_disk_is_nearly_stationary(comm):
    """Constant densities are stationary for the wall-normalised operator (Sinkhorn).

    Exactly for the nodal constant (|grad g| ~ 1e-14); for N uniform particles the drift is
    sampling noise: measured rms |drift| 0.24, 0.14, 0.058 for N = 5000, 20000, 80000
    (~N^(-1/2)), mean radial drift within eps of the wall -0.002 at N = 20000. With
    ``boundary="zero"`` the same particles feel an outward wall drift of 2.0 (rms 1.5), the
    scale of ``|grad g| ~ 1 / eps`` for the density 1.
    """
    msh = _disk(comm)
    dom = MeshDomain(msh)
    V = fem.functionspace(msh, ("Lagrange", 1))
    one = fem.Function(V)
    one.x.array[:] = 1.0
    sampler = FEDensitySampler(one)  # uniform on the (polygonal) disk, density 1
    eps = 0.3
    base = ParticleParams(1000, (1.0,), (1.0,), 0.0, 2.0, eps, masses=(sampler.mass,))
    drifts = {b: MeshOperatorDrift(V, base, NonlocalParams(eps, boundary=b))
              for b in ("sinkhorn", "zero")}
    dr = drifts["sinkhorn"]
    g1 = dr.potential(np.ones((dr.nloc, 1)))
    walls = dom.fv.mean(axis=1) * (1.0 - 1e-3) if comm.rank == 0 else np.zeros((0, 2))
    grad = dr.gradient_at(g1, walls)
    assert comm.allreduce(float(np.abs(grad).max(initial=0.0)), op=MPI.MAX) < 1e-12

    def stats(drift, n):
        p = ParticleParams(n, (1.0,), (1.0,), 0.0, 2.0, eps, masses=(sampler.mass,))
        x = init_state(p, sampler, 1, dom, comm).positions
        v = drift(x[None], 0.0, p, comm)[0]
        r = np.linalg.norm(x, axis=1)
        band = r > 1.0 - eps
        loc = [float(np.sum(v**2)), float(np.sum(np.sum(v[band] * x[band], 1) / r[band])),
               float(np.count_nonzero(band))]
        tot = comm.allreduce(np.array(loc), op=MPI.SUM)
        # rms drift and mean radial (outward) drift in the wall band
        return np.sqrt(tot[0] / n), tot[1] / tot[2]

    rms_5k, _ = stats(dr, 5000)
    rms_20k, radial_20k = stats(dr, 20000)
    rms_zero, radial_zero = stats(drifts["zero"], 20000)
    assert rms_20k < 0.2 and abs(radial_20k) < 0.02, (rms_20k, radial_20k)
    assert 1.4 < rms_5k / rms_20k < 2.8, (rms_5k, rms_20k)  # noise: ~ N^(-1/2)
    assert radial_zero > 1.5 and rms_zero > 1.0, (rms_zero, radial_zero)  # the check can fail


def _positions(n, seed):
    """Two species of ``n`` particles in [-1, 1]^2, near the walls too."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(-0.999, 0.999, (n, 2)),
                     np.clip(rng.normal(0.2, 0.35, (n, 2)), -0.999, 0.999)])


@pytest.mark.parametrize("gradient", ["cell", "recovered"])
def test_mesh_drift_rank_and_split_independent(comm, gradient):
    """Same particles, split over the ranks in three ways and on a serial mesh: same drift."""
    n, eps = 1500, 0.25
    params = ParticleParams(n, (1.0, 0.6), (1.0, 2.5), 0.0, 2.0, eps, masses=(0.8, 2.0))
    x = _positions(n, 5)
    nl = NonlocalParams(eps)
    dist = MeshOperatorDrift(_square(comm, 20), params, nl, gradient=gradient)
    size, rank = comm.size, comm.rank
    splits = {
        "blocks": np.arange(*partition(n, size, rank)),
        "last rank": np.arange(n) if rank == size - 1 else np.arange(0),
        "interleaved": np.arange(rank, n, size),
    }
    results = {}
    for name, idx in splits.items():
        v = dist(x[:, idx], 0.0, params, comm)
        # the deposit conserves every species' mass exactly
        mass = comm.allreduce(dist.lumped @ dist.last_density[: dist.nown], op=MPI.SUM)
        assert np.allclose(mass, params.mass, rtol=1e-13, atol=0), mass
        parts = comm.gather((idx, v), root=0)
        if rank == 0:
            full = np.zeros_like(x)
            for i, vi in parts:
                full[:, i] = vi
            results[name] = full
    serial = MeshOperatorDrift(_square(MPI.COMM_SELF, 20), params, nl, gradient=gradient)
    ref = serial(x, 0.0, params, MPI.COMM_SELF)
    err = 0.0
    if rank == 0:
        scale = np.abs(ref).max()
        assert scale > 0.1
        err = max(float(np.abs(r - ref).max()) / scale for r in results.values())
    err = comm.bcast(err, root=0)
    assert err < 1e-12, err


def test_mesh_drift_interior_accuracy(comm, nonlocal_solver):
    """Interior error against the exact (1.6) drift (quadrature reference), h = eps / 5.

    The cloud of the accuracy study of :mod:`fem_crossdiff.particles.mesh_drift` (normal,
    sd 0.25, cut at radius 0.75; errors at the particles farther than 2 eps from the walls),
    N = 2000, mass 0.7. Measured relative max-norm errors: cell gradients 0.107, recovered
    0.033 (the study: 0.11 - 0.13 and 0.022 - 0.034 for N = 1000 - 64000 at this h).
    """
    n = 2000
    rng = np.random.default_rng(n)
    x = rng.normal(0.0, 0.25, (4 * n, 2))
    x = x[np.linalg.norm(x, axis=1) < 0.75][:n][None]
    params = ParticleParams(n, (1.0,), (1.0,), 0.01, 2.0, EPS, masses=(0.7,))
    start, stop = partition(n, comm.size, comm.rank)
    xl = x[:, start:stop]
    inner = np.all(np.abs(xl[0]) < 1.0 - 2 * EPS, axis=1)
    ref = drift_bruteforce(xl, params, comm)[0, inner]
    scale = comm.allreduce(float(np.abs(ref).max(initial=0.0)), op=MPI.MAX)
    errs = {}
    for gradient in ("cell", "recovered"):
        dr = MeshOperatorDrift.from_potential(nonlocal_solver.model.potential,
                                              gradient=gradient)
        v = dr(xl, 0.0, params, comm)
        e = float(np.linalg.norm(v[0, inner] - ref, axis=-1).max(initial=0.0))
        errs[gradient] = comm.allreduce(e, op=MPI.MAX) / scale
    if comm.rank == 0:
        print(f"\ninterior relative max errors, h = eps/5, N = {n}: {errs}")
    assert errs["cell"] < 0.15 and errs["recovered"] < 0.045, errs
    # the drift of (1.6) with m = 2 is linear in the masses
    p2 = ParticleParams(n, (1.0,), (1.0,), 0.01, 2.0, EPS, masses=(1.4,))
    v2 = dr(xl, 0.0, p2, comm)
    d = comm.allreduce(float(np.abs(v2 - 2.0 * v).max(initial=0.0)), op=MPI.MAX)
    assert d < 1e-10 * scale


def test_mesh_drift_rejects_bad_input(comm):
    """Particles outside the mesh, inconsistent parameters or counts: ValueError on all ranks."""
    eps = 0.25
    params = ParticleParams(4, (1.0,), (1.0,), 0.0, 2.0, eps)
    dr = MeshOperatorDrift(_square(comm, 20), params)
    x = np.array([[[0.1, 0.2], [-0.5, 0.5], [0.9, -0.9], [0.0, 0.0]]])
    start, stop = partition(4, comm.size, comm.rank)
    assert np.all(np.isfinite(dr(x[:, start:stop], 0.0, params, comm)))
    out = x.copy()
    out[0, 2] = [1.0 + 1e-3, 0.0]
    with pytest.raises(ValueError, match="outside the mesh"):
        dr(out[:, start:stop], 0.0, params, comm)
    for bad in (ParticleParams(4, (2.0,), (1.0,), 0.0, 2.0, eps),
                ParticleParams(4, (1.0,), (1.0,), 0.0, 2.0, 0.3),
                ParticleParams(5, (1.0,), (1.0,), 0.0, 2.0, eps)):
        with pytest.raises(ValueError):
            dr(x[:, start:stop], 0.0, bad, comm)
    with pytest.raises(ValueError, match="disagree"):
        MeshOperatorDrift(_square(comm, 20), params, NonlocalParams(0.3))
