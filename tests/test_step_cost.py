"""Options that make a step cheaper: the extrapolated Newton start and the inexact Newton stop.

Neither may change what a step computes beyond Newton's tolerance: the same solution (to the
tolerance the option allows), mass conserved to round-off, no accepted negative density. Bad
values raise ParameterError before any work. Runs serially and under ``mpiexec -n 2``.
"""

from __future__ import annotations

import numpy as np
import pytest

from fem_crossdiff.compat import MPI, mesh
from fem_crossdiff.errors import ParameterError
from fem_crossdiff.params import ModelParams, TimeParams
from fem_crossdiff.solver import CrossDiffusionSolver

PARAMS = ModelParams(a=(1.0, 2.0), b=(1.0, 0.5), m=2.0, sigma=1e-3)


def _initial(x):
    """Two species with a segregated disc (species 1 vanishes in it, species 2 outside)."""
    r = np.sqrt((x[0] - 0.6) ** 2 + (x[1] - 0.5) ** 2)
    inside = np.clip((0.3 - r) / 0.1, 0.0, 1.0)
    return [(0.5 + 0.2 * np.cos(np.pi * x[0])) * (1.0 - inside), 0.4 * inside]


def _solver(scheme, n=16, **kwargs):
    msh = mesh.create_unit_square(MPI.COMM_WORLD, n, n)
    s = CrossDiffusionSolver(msh, PARAMS, scheme=scheme, linear_solver="iterative", **kwargs)
    s.set_initial([lambda x: _initial(x)[0], lambda x: _initial(x)[1]])
    return s


def _rel_diff(a, b) -> float:
    """The largest |a - b| over the largest |b|, over all ranks (owned and ghost values alike)."""
    comm = MPI.COMM_WORLD
    num = comm.allreduce(float(np.max(np.abs(a.rho.x.array - b.rho.x.array))), op=MPI.MAX)
    den = comm.allreduce(float(np.max(np.abs(b.rho.x.array))), op=MPI.MAX)
    return num / den


@pytest.mark.parametrize("key, value", [
    ("predictor", "linear"), ("predictor", None), ("newton_tol_ratio", 0.0),
    ("newton_tol_ratio", -0.1), ("newton_tol_ratio", 1.5), ("newton_tol_ratio", float("nan")),
    ("newton_tol_ratio", True), ("newton_tol_ratio", "0.1x")])
def test_bad_values_raise(key, value):
    msh = mesh.create_unit_square(MPI.COMM_WORLD, 2, 2)
    with pytest.raises(ParameterError) as err:
        CrossDiffusionSolver(msh, PARAMS, **{key: value})
    assert err.value.key == key


@pytest.mark.parametrize("scheme", ["upwind", "muscl"])
def test_predictor_keeps_the_solution(scheme):
    """Fixed steps from the extrapolation: the states of the default start, masses exact."""
    ref, pred = _solver(scheme), _solver(scheme, predictor="extrapolate")
    m0 = ref.masses()
    for _ in range(6):
        a, b = ref.step(2e-3), pred.step(2e-3)
        assert a.accepted and b.accepted
    assert pred.predicted_starts >= 1  # the extrapolation was the start of some step
    assert _rel_diff(pred, ref) < 1e-8
    assert np.max(np.abs(pred.masses() / m0 - 1.0)) < 1e-12
    assert pred.extrema()[0].min() >= -1e-10 * pred.extrema()[1].max()


@pytest.mark.parametrize("scheme", ["upwind", "muscl"])
def test_inexact_newton_adaptive(scheme):
    """Adaptive run with the Newton stop tied to tol: fewer iterations, same answer to tol."""
    tol = 1e-2  # loose: the early stop leaves residuals whose mass defect is ~1e-9 per step
    tp = TimeParams(T=0.05, dt=1e-3, adaptive=True, tol=tol)
    ref = _solver(scheme, n=32)
    fast = _solver(scheme, n=32, newton_tol_ratio=0.1, predictor="extrapolate")
    m0 = ref.masses()
    rows_ref = ref.run(tp, progress=False)
    rows = fast.run(tp, progress=False)
    newton_ref = sum(r["newton_its"] for r in rows_ref)
    newton = sum(r["newton_its"] for r in rows)
    assert newton < newton_ref
    # the Newton error is below 0.1 tol per step, relative to the state
    assert _rel_diff(fast, ref) < tol
    # the masses are restored after the early stop: conserved to round-off over the run
    assert np.max(np.abs(fast.masses() / m0 - 1.0)) < 1e-12
    for r in rows:
        for k in (1, 2):
            assert r[f"min_{k}"] >= -1e-10 * r[f"max_{k}"]


def test_inexact_newton_needs_a_tolerance():
    """Without an error tolerance (fixed steps) the option leaves the step as it was."""
    ref, other = _solver("upwind"), _solver("upwind", newton_tol_ratio=0.5)
    for _ in range(3):
        a, b = ref.step(2e-3), other.step(2e-3)
        assert a.newton_its == b.newton_its
    assert _rel_diff(other, ref) < 1e-12


def _adaptive(comm, **kwargs):
    msh = mesh.create_unit_square(comm, 20, 20)
    s = CrossDiffusionSolver(msh, PARAMS, linear_solver="iterative", **kwargs)
    s.set_initial([lambda x: _initial(x)[0], lambda x: _initial(x)[1]])
    rows = s.run(TimeParams(T=0.03, dt=1e-3, adaptive=True, grow=1.5, tol=1e-3),
                 progress=False)
    return s, rows


def test_predictor_adaptive_run_is_rank_independent():
    """With the extrapolated start, all ranks and one rank still take the same steps."""
    s, rows = _adaptive(MPI.COMM_WORLD, predictor="extrapolate")
    ref, ref_rows = _adaptive(MPI.COMM_SELF, predictor="extrapolate")
    assert s.predicted_starts >= 1
    dts = np.array([r["dt"] for r in rows[1:]])
    ref_dts = np.array([r["dt"] for r in ref_rows[1:]])
    assert len(dts) == len(ref_dts) and len(dts) >= 8
    assert np.max(np.abs(dts / ref_dts - 1.0)) < 1e-8
    for k in (1, 2):
        assert rows[-1][f"mass_{k}"] == pytest.approx(ref_rows[-1][f"mass_{k}"], rel=1e-12)
        assert rows[-1][f"max_{k}"] == pytest.approx(ref_rows[-1][f"max_{k}"], rel=1e-8)
