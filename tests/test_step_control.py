"""Step-size control from an error estimate of the solution (fem_crossdiff.driver).

The estimate has the order of the method (dt^2 for implicit Euler, dt^3 for BDF2) and the size
of the true local error; the adaptive run takes the same steps on any number of ranks (under
``mpirun -n 2`` the run on all ranks is compared with the same run on one rank, COMM_SELF, on
every rank); rejected steps are logged at INFO with their reason and counted in the rows.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
from scipy.spatial import cKDTree

from fem_crossdiff.compat import MPI, mesh
from fem_crossdiff.driver import SAFETY, next_step
from fem_crossdiff.params import ModelParams, TimeParams
from fem_crossdiff.solver import CrossDiffusionSolver

SMOOTH = ModelParams(a=(1.0, 2.0), b=(1.0, 0.5), m=2.0, sigma=0.05)


def _smooth_initial(x):
    return [0.2 + np.exp(-(x[0] - 0.4) ** 2 / 0.01), 0.3 + 0.2 * np.cos(np.pi * x[0])]


@pytest.fixture(scope="module")
def line_solver():
    """One 1D solver (MUMPS) reused by the tests of this module."""
    msh = mesh.create_interval(MPI.COMM_WORLD, 200, [0.0, 1.0])
    return CrossDiffusionSolver(msh, SMOOTH)


def _start(s):
    s.set_initial([lambda x: _smooth_initial(x)[0], lambda x: _smooth_initial(x)[1]])


def test_error_estimate_has_the_order_of_the_method(line_solver):
    """Fixed steps dt, dt/2, dt/4 to the same time: the estimate falls like dt^(p+1)."""
    s = line_solver
    rates = {}
    for method in ("ie", "bdf2"):
        errs = []
        for dt in (1e-2, 5e-3, 2.5e-3):
            _start(s)
            rows = s.run(TimeParams(T=0.1, dt=dt, method=method), progress=False)
            assert all(r["dt"] == pytest.approx(dt) for r in rows[1:])  # fixed mode
            errs.append(rows[-1]["err_est"])
        rates[method] = np.log2(errs[1] / errs[2])
    assert abs(rates["ie"] - 2.0) < 0.2 and abs(rates["bdf2"] - 3.0) < 0.3, rates


def test_error_estimate_matches_the_local_error(line_solver):
    """One implicit-Euler step: the estimate is the step's true local error within 30 %.

    The reference integrates the same step from the same state with 40 BDF2 substeps.
    """
    s = line_solver
    _start(s)
    dt = 5e-3
    s.run(TimeParams(T=0.05, dt=dt), progress=False)
    saved = [h.x.array.copy() for h in s.history]
    t, dt_prev = s.t, s.dt_prev
    info = s.step(dt, "ie")
    assert info.accepted and info.order == 1 and info.error is not None
    one = s.rho.x.array.copy()
    # restart from y_n with no history: 40 BDF2 substeps (after one implicit-Euler start)
    for h in s.history:
        h.x.array[:] = saved[0]
    s.t, s.dt_prev, s.dt_prev2, s.older = t, None, None, None
    for _ in range(40):
        assert s.step(dt / 40, "bdf2").accepted
    ref = s.rho.x.array
    n, nown = 2, s.V.dofmap.index_map.size_local
    diff = ((one - ref)[: nown * n].reshape(-1, n) ** 2).sum(axis=0)
    size = (ref[: nown * n].reshape(-1, n) ** 2).sum(axis=0)
    s.comm.Allreduce(MPI.IN_PLACE, diff)
    s.comm.Allreduce(MPI.IN_PLACE, size)
    true = float(np.max(np.sqrt(diff / size)))
    assert 0.7 < info.error / true < 1.3, (info.error, true)
    assert saved[1] is not None and dt_prev == pytest.approx(dt)


def test_halving_tol_scales_the_steps(line_solver):
    """BDF2 on a smooth problem: halving tol shortens the steps by about 2^(1/3)."""
    s = line_solver
    runs = []
    for tol in (1e-4, 5e-5):
        _start(s)
        rows = s.run(TimeParams(T=0.2, dt=1e-3, method="bdf2", adaptive=True, tol=tol,
                                grow=1.5), progress=False)
        t = np.array([r["t"] for r in rows[1:]])
        dt = np.array([r["dt"] for r in rows[1:]])
        errs = np.array([r["err_est"] for r in rows[1:]])
        runs.append((t, dt))
        late = t > 0.05
        # the controller holds the estimate near SAFETY^3 tol (never above tol)
        assert np.all(errs <= tol) and np.median(errs[late]) > 0.3 * tol
    (t1, d1), (t2, d2) = runs
    probe = np.linspace(0.08, 0.18, 11)
    ratio = np.interp(probe, t1, d1) / np.interp(probe, t2, d2)
    assert abs(np.median(ratio) - 2 ** (1 / 3)) < 0.06, ratio


def test_controller():
    assert next_step(1.0, 1e-3, 1e-3, 2, 1.5) == pytest.approx(SAFETY)
    assert next_step(1.0, 1e-3 / 8, 1e-3, 2, 3.0) == pytest.approx(2 * SAFETY)  # (1/8)^(-1/3)
    assert next_step(1.0, 1e-9, 1e-3, 2, 1.5) == 1.5  # growth capped
    assert next_step(1.0, 1.0, 1e-3, 1, 1.5) == pytest.approx(0.2)  # reduction capped
    assert next_step(1.0, 0.0, 1e-3, 1, 1.2) == 1.2


# ------------------------------------------------------------------- rank independence
def _adaptive_square(comm):
    msh = mesh.create_unit_square(comm, 20, 20)
    s = CrossDiffusionSolver(msh, ModelParams(a=(1.0, 2.0), b=(1.0, 0.5), m=2.0, sigma=1e-3),
                             linear_solver="iterative")
    s.set_initial([lambda x: np.exp(-((x[0] - 0.4) ** 2 + (x[1] - 0.5) ** 2) / 0.02),
                   lambda x: np.where((x[0] - 0.7) ** 2 + (x[1] - 0.5) ** 2 < 0.04, 0.5, 0.0)])
    # the first dt is too large for tol: the run starts with error rejections
    rows = s.run(TimeParams(T=0.04, dt=1e-3, method="bdf2", adaptive=True, grow=1.5,
                            tol=1e-3), progress=False)
    return s, rows


def test_adaptive_run_is_rank_independent(comm):
    """The run on all ranks against the run on one rank: same steps, same state."""
    s, rows = _adaptive_square(comm)
    ref, ref_rows = _adaptive_square(MPI.COMM_SELF)
    dts = np.array([r["dt"] for r in rows[1:]])
    ref_dts = np.array([r["dt"] for r in ref_rows[1:]])
    assert len(dts) == len(ref_dts) and len(dts) >= 10
    assert [r["rejected"] for r in rows] == [r["rejected"] for r in ref_rows]
    assert sum(r["rejected"] for r in rows) >= 1
    assert dts.max() / dts.min() > 3.0  # the steps really adapted
    assert np.max(np.abs(dts / ref_dts - 1.0)) < 1e-8
    # the final states, dof by dof (matched by coordinates)
    nown = s.V0.dofmap.index_map.size_local
    mine = s.V0.tabulate_dof_coordinates()[:nown]
    _, idx = cKDTree(ref.V0.tabulate_dof_coordinates()).query(mine)
    worst = 0.0
    for k in range(2):
        a = s.rho.x.array[s.species_dofs[k][:nown]]
        b = ref.rho.x.array[ref.species_dofs[k][idx]]
        worst = max(worst, float(np.abs(a - b).max(initial=0.0)) / float(np.abs(b).max()))
    assert comm.allreduce(worst, op=MPI.MAX) < 1e-8
    assert s.t == pytest.approx(ref.t, rel=1e-14)


# ---------------------------------------------------------------------- rejections
class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_rejections_are_logged_and_counted(line_solver, comm, monkeypatch):
    """An error rejection and a Newton failure: INFO lines in words, counted in the rows."""
    s = line_solver
    _start(s)
    real = s._solve
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] == 4:  # the fourth solve "fails" as an iteration limit would
            real()
            return -5, ""
        return real()

    monkeypatch.setattr(s, "_solve", flaky)
    handler = _Lines()
    logger = logging.getLogger("fem_crossdiff")
    logger.addHandler(handler)
    try:
        rows = s.run(TimeParams(T=0.05, dt=5e-3, method="bdf2", adaptive=True, tol=2e-5),
                     progress=False)
    finally:
        logger.removeHandler(handler)
    rejected = [line for line in handler.lines if "rejected" in line]
    total = sum(r["rejected"] for r in rows)
    if comm.rank == 0:
        assert len(rejected) == total
        assert any("Newton reached its iteration limit" in line for line in rejected)
        assert any("estimated local error" in line and "exceeds the tolerance" in line
                   for line in rejected)
    assert total >= 2
    if comm.rank == 0:  # the Newton failure halved the step (shrink = 0.5)
        line = next(x for x in rejected if "Newton" in x)
        before = float(re.search(r"step dt=(\S+) rejected", line).group(1))
        after = float(re.search(r"retrying with dt=(\S+)$", line).group(1))
        assert after / before == pytest.approx(0.5, rel=2e-3), line
