"""Bounded memory of the drifts: the chunked cell-list reference and the grid's memory limit.

The cell-list drift must give the brute-force numbers (to rounding) while holding neither the
node lattice nor all the node-particle pairs; the grid drift must estimate its arrays before
allocating them and refuse (or coarsen) past ``memory_limit_mb``, on every rank alike.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest
from _ranks import max_rel_err, split

from fem_crossdiff.errors import ParameterError
from fem_crossdiff.particles import (
    CellListDrift,
    GridDrift,
    ParticleParams,
    QuadratureSpec,
    drift_bruteforce,
)
from fem_crossdiff.particles import drift as drift_mod


def _ball(n, d, seed=3):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, d))
    v /= np.linalg.norm(v, axis=1)[:, None]
    return (v * rng.random((n, 1)) ** (1.0 / d))[None]


def test_cell_list_equals_bruteforce_3d(comm):
    """Two species in the unit ball, 3D, split over the ranks: the brute-force numbers."""
    x = np.concatenate([_ball(150, 3, 1), 0.5 * _ball(150, 3, 2)])
    params = ParticleParams(150, (1.0, 0.6), (1.0, 2.0), 0.1, 2.5, 0.4)
    spec = QuadratureSpec(3, 2)
    ref = drift_bruteforce(x, params, None, spec)
    loc, start, stop = split(x, comm)
    err = max_rel_err(CellListDrift(spec)(loc, 0.0, params, comm), ref, start, stop, comm)
    assert err < 1e-12


def test_cell_list_equals_bruteforce_small_blocks(comm, monkeypatch):
    """Tiny blocks and chunks (many blocks per particle, one particle per chunk): same numbers."""
    monkeypatch.setattr(drift_mod, "_BLOCK_NODES", 13**2)
    monkeypatch.setattr(drift_mod, "_ENTRY_CHUNK", 300)
    x = _ball(400, 2, 5)
    params = ParticleParams(400, (1.0,), (1.0,), 0.1, 3.0, 0.15, "poly4")
    spec = QuadratureSpec(6, 3)
    ref = drift_bruteforce(x, params, None, spec)
    loc, start, stop = split(x, comm)
    err = max_rel_err(CellListDrift(spec)(loc, 0.0, params, comm), ref, start, stop, comm)
    assert err < 1e-12


def test_cell_list_peak_bounded_by_chunk():
    """2D, eps = 0.01 in the unit disk: the traced peak stays within the chunk bound.

    The lattice has 2.4e7 nodes (190 MB for S alone; the former neighbour array 1.7 GB).
    """
    x = _ball(2000, 2, 7)
    params = ParticleParams(2000, (1.0,), (1.0,), 0.1, 2.0, 0.01)
    spec = QuadratureSpec(8, 3)
    axes = drift_mod._lattice_axes(x[0].min(axis=0), x[0].max(axis=0), params.eps, spec)
    nodes = np.prod([a[2].size for a in axes])
    assert nodes > 2e7
    tracemalloc.start()
    try:
        g = CellListDrift(spec)(x, 0.0, params)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # about a dozen float64/int64 arrays of one chunk or one block, plus O(N) arrays
    bound = 16 * 8 * (drift_mod._ENTRY_CHUNK + drift_mod._BLOCK_NODES)
    assert peak < bound and peak < 8 * nodes / 2
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0


@pytest.mark.slow
def test_cell_list_3d_n2000_eps01_within_1gb():
    """The case of the issue (3D, N = 2000 in the unit ball, eps = 0.1): peak RSS < 1 GB."""
    code = textwrap.dedent("""
        import resource
        import numpy as np
        from fem_crossdiff.particles import CellListDrift, ParticleParams
        rng = np.random.default_rng(3)
        v = rng.normal(size=(2000, 3))
        v /= np.linalg.norm(v, axis=1)[:, None]
        x = (v * rng.random((2000, 1)) ** (1 / 3))[None]
        g = CellListDrift()(x, 0.0, ParticleParams(2000, (1.0,), (1.0,), 0.1, 2.0, 0.1))
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    peak_kb = int(out.stdout.split()[-1])
    assert peak_kb < 1_000_000, f"peak RSS {peak_kb / 1e3:.0f} MB"


def test_grid_refuses_past_memory_limit(comm):
    """The error names the key, the limit and the estimate, on every rank, before allocating."""
    x = _ball(400, 3)
    loc, _, _ = split(x, comm)
    params = ParticleParams(400, (1.0,), (1.0,), 0.1, 2.0, 0.1)
    drift = GridDrift(16, memory_limit_mb=50.0)
    est = drift.cost(x[0].min(axis=0), x[0].max(axis=0), 0.1)
    assert est.memory_mb > 50.0
    with pytest.raises(ParameterError) as info:
        drift(loc, 0.0, params, comm)
    err = info.value
    assert err.key == "memory_limit_mb" and err.value == 50.0
    assert f"{est.memory_mb:.0f} MB" in err.allowed and "cells_per_eps <=" in err.allowed
    with pytest.raises(ParameterError, match="memory_limit_mb"):
        GridDrift(memory_limit_mb=0.0)


def test_grid_coarsens_to_the_finest_fitting_resolution(comm):
    """``coarsen=True``: the same numbers as the finest ``cells_per_eps`` within the limit."""
    x = _ball(600, 2)
    loc, _, _ = split(x, comm)
    params = ParticleParams(600, (1.0,), (1.0,), 0.1, 2.0, 0.02)
    lo, hi = x[0].min(axis=0), x[0].max(axis=0)
    limit = 0.5 * GridDrift(16).cost(lo, hi, 0.02).memory_mb
    coarse = GridDrift(16, memory_limit_mb=limit, coarsen=True)
    with pytest.raises(ParameterError) as info:
        GridDrift(16, memory_limit_mb=limit)(loc, 0.0, params, comm)
    fit = float(info.value.allowed.split("cells_per_eps <= ")[1].split()[0])
    assert 2.0 < fit < 16.0
    assert GridDrift(fit).cost(lo, hi, 0.02).memory_mb <= limit
    assert GridDrift(fit + 0.5).cost(lo, hi, 0.02).memory_mb > limit
    np.testing.assert_array_equal(coarse(loc, 0.0, params, comm),
                                  GridDrift(fit)(loc, 0.0, params, comm))


@pytest.mark.parametrize(("d", "eps", "cells"), [(3, 0.23, 8.0), (2, 0.05, 16.0)])
def test_grid_estimate_matches_traced_allocation(d, eps, cells):
    """The estimate is within a factor 1.5 of the traced peak of one evaluation."""
    rng = np.random.default_rng(1)
    x = rng.uniform(-1.0, 1.0, (1, 3000, d))
    params = ParticleParams(3000, (1.0,), (1.0,), 0.1, 2.0, eps)
    drift = GridDrift(cells)
    est = drift.cost(x[0].min(axis=0), x[0].max(axis=0), eps).memory_mb
    drift_mod._kernel_ffts.cache_clear()  # the estimate counts the cached kernel transforms
    tracemalloc.start()
    try:
        drift(x, 0.0, params)
        peak = tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()
    assert peak / 1.5 < est < 1.5 * peak


def test_grid_default_resolution_per_dimension():
    """``GridDrift()``: 16 cells per eps in 1D/2D, 8 in 3D; the 3D ball at eps = 0.1 fits."""
    drift = GridDrift()
    assert [drift.resolution(d) for d in (1, 2, 3)] == [16.0, 16.0, 8.0]
    est = drift.cost(-np.ones(3), np.ones(3), 0.1)
    assert est.memory_mb < drift.memory_limit_mb
    assert GridDrift(16).cost(-np.ones(3), np.ones(3), 0.1).memory_mb > drift.memory_limit_mb
