"""Drift of (1.6): grid (FFT) and cell-list methods against the brute-force quadrature reference.

Particles are split over the ranks (contiguous blocks); the reference is computed serially on
all particles by every rank, so the distributed evaluation is checked as well.
"""

from __future__ import annotations

import numpy as np
import pytest
from _ranks import max_rel_err, split

from fem_crossdiff.compat import MPI
from fem_crossdiff.particles import (
    CellListDrift,
    FieldDrift,
    GridDrift,
    ParticleParams,
    QuadratureSpec,
    drift_bruteforce,
)


def _cloud_1d(n):
    rng = np.random.default_rng(42)
    return np.stack([rng.normal(-0.1, 0.3, (n, 1)), rng.uniform(-0.4, 0.6, (n, 1))])


def _cloud_2d(n):
    rng = np.random.default_rng(7)
    r = 0.5 * np.sqrt(rng.random(n))
    th = 2 * np.pi * rng.random(n)
    return np.stack([r * np.cos(th), r * np.sin(th)], axis=-1)[None]


@pytest.mark.parametrize("m", [2.0, 2.5])
def test_grid_matches_bruteforce_1d(comm, m):
    """N = 3000 per species, two species: error 4e-3 at h = eps/16 and O(h^2) convergence."""
    x = _cloud_1d(3000)
    params = ParticleParams(3000, (1.0, 0.5), (1.0, 2.0), 0.1, m, 0.25)
    loc, start, stop = split(x, comm)
    ref = drift_bruteforce(x, params, None, QuadratureSpec(32, 4))
    errs = [max_rel_err(GridDrift(c)(loc, 0.0, params, comm), ref, start, stop, comm)
            for c in (8, 16, 32)]
    slope = np.polyfit(np.log([8, 16, 32]), np.log(errs), 1)[0]
    if comm.rank == 0:
        print(f"\n1D m={m}: grid rel. max errors h=eps/8,16,32: {errs}, order {-slope:.2f}")
    assert errs[1] < 4e-3
    assert errs[2] < 1e-3
    assert -slope > 1.7


@pytest.mark.parametrize(("m", "kernel"), [(2.0, "bump"), (2.5, "poly4")])
def test_grid_matches_bruteforce_2d(comm, m, kernel):
    """N = 1000 in a disk, eps = 0.25: relative max error < 1e-2 at h = eps/16."""
    x = _cloud_2d(1000)
    params = ParticleParams(1000, (1.0,), (1.0,), 0.1, m, 0.25, kernel)
    loc, start, stop = split(x, comm)
    ref = drift_bruteforce(x, params, None, QuadratureSpec(8, 3))
    e8 = max_rel_err(GridDrift(8)(loc, 0.0, params, comm), ref, start, stop, comm)
    e16 = max_rel_err(GridDrift(16)(loc, 0.0, params, comm), ref, start, stop, comm)
    if comm.rank == 0:
        print(f"\n2D m={m} {kernel}: grid rel. max errors h=eps/8: {e8:.2e}, eps/16: {e16:.2e}")
    assert e16 < 1e-2
    assert e16 < 0.5 * e8


@pytest.mark.parametrize("d", [1, 2])
def test_cell_list_equals_bruteforce(comm, d):
    x = _cloud_1d(2000) if d == 1 else _cloud_2d(600)
    params = ParticleParams(x.shape[1], (1.0, 0.7)[: x.shape[0]], (1.0, 3.0)[: x.shape[0]],
                            0.1, 2.5, 0.2)
    spec = QuadratureSpec(8, 3)
    loc, start, stop = split(x, comm)
    ref = drift_bruteforce(x, params, None, spec)
    err = max_rel_err(CellListDrift(spec)(loc, 0.0, params, comm), ref, start, stop, comm)
    # the distributed brute force (node sums split over ranks) agrees as well
    err_bf = max_rel_err(drift_bruteforce(loc, params, comm, spec), ref, start, stop, comm)
    if comm.rank == 0:
        print(f"\n{d}D cell list vs brute force: {err:.2e}; distributed brute force {err_bf:.2e}")
    assert err < 1e-10
    assert err_bf < 1e-10


def test_drift_translation_and_momentum(comm):
    """Exact invariances of the grid drift: translation by a grid vector; sum_k (a_k/b_k) F_k ~ 0.

    For one species the total interaction force sum_i drift_i is O(h^2) small (action-reaction
    holds for the continuous integral, int S grad S^(m-1) = 0 up to the grid error).
    """
    x = _cloud_2d(800)
    params = ParticleParams(800, (1.0,), (1.0,), 0.1, 3.0, 0.25)
    drift = GridDrift(16)
    loc, start, stop = split(x, comm)
    f0 = drift(loc, 0.0, params, comm)
    shift = 37 * drift.spacing(params.eps) * np.array([1.0, -2.0])
    f1 = drift(loc + shift, 0.0, params, comm)
    scale = comm.allreduce(float(np.abs(f0).max()) if f0.size else 0.0, op=MPI.MAX)
    diff = comm.allreduce(float(np.abs(f1 - f0).max()) if f0.size else 0.0, op=MPI.MAX)
    total = np.zeros(2)
    comm.Allreduce(f0.sum(axis=(0, 1)), total, op=MPI.SUM)
    assert diff < 1e-10 * scale
    assert np.abs(total).max() / 800 < 5e-3 * scale


def test_bad_positions_shape():
    params = ParticleParams(10, (1.0, 1.0), (1.0, 1.0), 0.1, 2.0, 0.2)
    with pytest.raises(ValueError, match="positions"):
        GridDrift()(np.zeros((1, 10, 2)), 0.0, params)
    with pytest.raises(ValueError, match="cells_per_eps"):
        GridDrift(1.0)


def test_flat_layout_with_a_species_absent_here():
    """The flat layout with no particle of one species on this rank.

    As happens once particles live with their cells (regression: FieldDrift failed there).
    """
    params = ParticleParams(3, (1.0, 0.5), (1.0, 2.0), 0.1, 2.0, 0.3)
    x = np.array([[0.1, 0.2], [0.3, -0.1], [-0.2, 0.0]])
    sp = np.zeros(3, dtype=np.int64)
    field = FieldDrift(lambda t, y: np.stack([y[:, 0] ** 2, y[:, 1]], axis=1))
    v = field(x, 0.0, params, None, species=sp)
    assert v.shape == (3, 2)
    np.testing.assert_allclose(v, -np.stack([x[:, 0] ** 2, x[:, 1]], axis=1), rtol=1e-15)
    w = field(x[::-1], 0.0, params, None, species=np.array([1, 1, 1]))
    np.testing.assert_allclose(w, -2.0 * np.stack([x[::-1, 0] ** 2, x[::-1, 1]], axis=1))
    with pytest.raises(ValueError, match="species"):
        field(x, 0.0, params, None, species=np.array([0, 2, 0]))
