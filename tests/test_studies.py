"""Quick modes of the propagation-of-chaos studies (demos/study_*.py): errors and fitted slopes.

Each study runs its ``--quick`` settings (all ranks call ``main``; the outputs go to a folder
shared by the ranks). The bands are wide enough for the sampling noise of the quick settings
(few seeds) and were checked against the measured values stated next to each assert; results
do not depend on the number of ranks (counter-based random streams).
"""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest

from fem_crossdiff import studies as sc

DEMOS = Path(__file__).resolve().parents[1] / "demos"


def _run(name, outdir, comm):
    # the study scripts are run from their files (no import from demos/); they share their
    # set-up through the library module fem_crossdiff.studies
    mod = runpy.run_path(str(DEMOS / f"{name}.py"), run_name=name)
    summary = mod["main"]([str(outdir / name), "--quick"])
    csv = outdir / name / f"{name}.csv"
    png = outdir / name / f"{name}.png"
    comm.barrier()
    assert csv.exists() and png.exists()
    return summary


def test_case_and_helpers():
    case = sc.Case1D()
    assert case.n == 2 and case.n_steps == 100
    x = np.linspace(case.lo, case.hi, 200001)
    assert case.masses() == (1.0, 1.0)
    assert sc.particle_params(case, 10, 0.1).mass == case.masses()
    for f, mass in zip(case.initial(), case.masses(), strict=True):  # unit mass, inside walls
        y = f(x)
        assert abs(np.sum((y[1:] + y[:-1]) / 2) * (x[1] - x[0]) - mass) < 1e-8
        assert y[0] == 0.0 and y[-1] == 0.0
    with pytest.raises(ValueError):
        sc.Case1D(a=(1.0,), b=(0.5, 0.25))
    with pytest.raises(ValueError):
        sc.Case1D(dt=0.1)
    assert sc.fit_slope([1, 10, 100], [3.0, 0.3, 0.03]) == pytest.approx(-1.0)
    st = sc.seed_stats("w1", [1.0, 3.0])
    assert st == {"w1": 2.0, "w1_se": pytest.approx(1.0)}
    assert sc.kappa(1, 2.0) == 6.0
    assert sc.eps_of_n(100, 0.1, 100, 1, 2.0) == pytest.approx(0.1)
    assert sc.eps_of_n(10000, 0.1, 100, 1, 2.0) == pytest.approx(0.1 * 0.5 ** (1 / 6))
    args = sc.parse_args(["out/x", "--quick"], "x", "doc")
    assert args.quick and args.outdir == Path("out/x")


def _decreasing(v):
    v = np.asarray(v)
    return bool(np.all(np.diff(v) < 0))


def test_study_n_limit(comm, mpi_tmp_path):
    s = _run("study_n_limit", mpi_tmp_path, comm)
    # measured (quick): w1 0.021 -> 0.0080, l1 0.13 -> 0.048, coupling 1.1e-3 -> 7.1e-5
    assert _decreasing(s["w1"]) and _decreasing(s["l1_moll"]) and _decreasing(s["coupling"])
    assert -0.7 < s["slope_w1"] < -0.2  # -0.35: N^(-1/2) bent by the dt/mesh floor
    assert -0.7 < s["slope_l1_moll"] < -0.2  # -0.37
    assert -1.3 < s["slope_coupling"] < -0.7  # -0.98 (Proposition 1.2: -1)


def test_study_eps_limit(comm, mpi_tmp_path):
    s = _run("study_eps_limit", mpi_tmp_path, comm)
    # measured (quick, 400 cells): l1 0.25 -> 0.044 -> 0.0072
    assert _decreasing(s["l1"]) and _decreasing(s["w1"])
    assert 1.0 < s["slope_l1"] < 3.5  # ~2.6: faster than the O(eps) of the literature
    assert s["l1"][-1] < 0.02


def test_study_joint_limit(comm, mpi_tmp_path):
    s = _run("study_joint_limit", mpi_tmp_path, comm)
    assert _decreasing(s["eps"])
    # measured (quick): w1 0.021, 0.011, 0.0079, 0.0049; slope -0.34
    assert _decreasing(s["w1"])
    assert -0.7 < s["slope_w1"] < -0.15
    assert s["w1"][-1] < 0.4 * s["w1"][0]


def test_study_chaos(comm, mpi_tmp_path):
    s = _run("study_chaos", mpi_tmp_path, comm)
    cov = np.asarray(s["cov_pairs"])
    se = np.asarray(s["cov_pairs_se"])
    # measured (quick): cov -1.1e-3 ... -1.4e-4 (repulsion: negative), slope -1.01
    assert np.all(cov < -3 * se)
    assert _decreasing(np.abs(cov))
    assert -1.3 < s["slope_cov_pairs"] < -0.7


def test_study_equal_mobility(comm, mpi_tmp_path):
    s = _run("study_equal_mobility", mpi_tmp_path, comm)
    # two-species FE total == single VPM solution (upwind fluxes add up exactly): 2e-16
    assert s["fe_total_l1"] < 1e-8
    # measured (quick): w1 8.7e-3, 4.2e-3, 3.3e-3, 1.8e-3; slope -0.36
    assert _decreasing(s["w1"])
    assert -0.7 < s["slope_w1"] < -0.15
