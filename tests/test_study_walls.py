"""Quick mode of demos/study_walls.py: mass touching the walls of a disk (and an annulus).

The study runs once per session in its ``--quick`` settings (all ranks call ``main``, the
outputs go to a folder shared by the ranks); the tests check its summary, its JSON last line,
its CSVs and its PNG. Results do not depend on the number of ranks (counter-based random
streams, partition-independent FE), so the same bands hold serially and under ``mpiexec``.

Measured, quick mode (disk h = 0.1, T = 0.05; particles N = 200, 600, 2000, 3 seeds, to
T = 0.01):

* uniform data: relative change 0 (disk and annulus, implicit and linear coupling),
  4.1 with ``boundary="zero"``; ``MeshOperatorDrift`` ``|grad g(1)|`` 5e-14;
* eps = 0.6 / 0.45 / 0.3: L1 to local 0.231 / 0.176 / 0.080, eps_rate 1.56; the zero extension
  at eps = 0.3: 0.135;
* W1 0.0251 / 0.0175 / 0.0104 (slope -0.38; at t = 0: slope -0.46); coupling
  1.9e-5 / 7.9e-6 / 1.8e-6 (slope -1.03) (Brownian increments keyed by particle id).

Measured, full mode (``.venv/bin/python demos/study_walls.py``, serial, see the module prose):
346 s on 2 shared cores. Uniform data: relative change 0 (h = 0.05, 20 steps), 9.2 with
``boundary="zero"``, operator ``|grad g(1)|`` 1.4e-13, uniform-cloud rms drift
0.34 / 0.19 / 0.076 for N = 5e3 / 2e4 / 8e4 (slope -0.50). eps = 0.4 / 0.28 / 0.2 / 0.14 / 0.1
on h = 0.035: L1 to local 0.170 / 0.087 / 0.039 / 0.0135 / 0.0079, eps_rate 2.31 (the zero
extension at eps = 0.2: 0.178). Particles (h = 0.025, eps = 0.2, T = 0.01), N = 1e3 ... 1e5:
W1 0.0106 / 0.0068 / 0.0035 / 0.0022 / 0.0016, w1_slope -0.43 (t = 0: -0.52), floor 5.6e-4;
coupling 2.0e-5 / 8.5e-6 / 2.1e-6 / 1.0e-6 / 3.9e-7, coupling_slope -0.86.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "demos" / "study_walls.py"
COMM = MPI.COMM_WORLD


def _decreasing(v) -> bool:
    return bool(np.all(np.diff(np.asarray(v, float)) < 0))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """``(summary, stdout of rank 0, outdir)`` of one quick run on all ranks."""
    path = tmp_path_factory.mktemp("walls") if COMM.rank == 0 else None
    outdir = Path(COMM.bcast(str(path) if path is not None else None, root=0)) / "out"
    # run from the file (no import from demos/), as tests/test_studies.py does
    mod = runpy.run_path(str(SCRIPT), run_name="study_walls")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        summary = mod["main"]([str(outdir), "--quick"])
    COMM.barrier()
    return summary, buf.getvalue(), outdir


def test_json_last_line_and_keys(study):
    summary, out, _ = study
    if COMM.rank == 0:
        lines = out.strip().splitlines()
        assert lines[0].startswith("[walls")  # progress lines come first
        parsed = json.loads(lines[-1])
        assert parsed == json.loads(json.dumps(summary))
    else:
        assert out == ""  # only rank 0 prints
    for key in ("study", "uniform_drift", "eps", "l1_to_local", "eps_rate", "n", "w1",
                "w1_slope", "coupling_slope"):
        assert key in summary, key
    assert summary["study"] == "walls" and summary["quick"] is True
    assert summary["ranks"] == COMM.size
    assert len(summary["eps"]) == len(summary["l1_to_local"]) == 3
    assert len(summary["n"]) == len(summary["w1"]) == 3


def test_uniform_density_is_stationary(study):
    s, _, _ = study
    assert s["uniform_drift"] < 1e-11  # measured 0 (disk, annulus; implicit, linear)
    assert s["uniform_drift_disk"] < 1e-11 and s["uniform_drift_annulus"] < 1e-11
    # the measurement sees a wall artefact when there is one: the zero extension moves it
    assert s["uniform_drift_zero_boundary"] > 0.5  # measured 4.1
    assert s["uniform_operator_grad"] < 1e-11  # MeshOperatorDrift: measured 5e-14
    # uniformly distributed particles: the drift is sampling noise, it decreases with N
    for rms in s["uniform_cloud_rms_drift"].values():
        assert _decreasing(rms)
    assert -0.8 < s["uniform_cloud_slope"] < -0.2  # measured -0.46 (N^(-1/2))


def test_eps_sweep_converges_to_local(study):
    s, _, _ = study
    assert _decreasing(s["l1_to_local"])  # 0.231, 0.176, 0.080
    assert 1.2 < s["eps_rate"] < 3.5  # measured 1.56 (full mode: see the docstring)
    assert s["l1_to_local"][-1] < 0.12
    # the zero extension at the same eps is farther from the local model (mass in the wall)
    zero = s["l1_zero_boundary"]
    assert zero["eps"] == s["eps"][-1]
    assert zero["l1"] > 1.4 * s["l1_sinkhorn_at_zero_eps"]  # measured 0.135 vs 0.080


def test_particles_approach_fe(study):
    s, _, _ = study
    assert s["n"] == sorted(s["n"]) and s["n"][0] < s["n"][-1]
    assert _decreasing(s["w1"])  # 0.0251, 0.0175, 0.0104
    assert _decreasing(s["w1_initial"])
    assert -0.7 < s["w1_slope"] < -0.25  # measured -0.38
    assert -0.7 < s["w1_initial_slope"] < -0.3  # measured -0.46 (sampling: -1/2)
    assert 0.0 <= s["w1_floor"] < 0.5 * s["w1"][-1]
    assert _decreasing(s["coupling"])  # 1.9e-5, 7.9e-6, 1.8e-6
    assert -1.4 < s["coupling_slope"] < -0.7  # measured -1.03 (Proposition 1.2: -1)
    # the McKean-Vlasov field is FETimeGradientField's, the fast inside test the base class's
    assert s["grad_field_check"] < 1e-10
    assert s["inside_test_mismatches"] == 0


#: serial quick-mode figures (2 ranks agree to 1e-14); the band allows small library changes
SERIAL_QUICK = {"l1_to_local": [0.23087001883562, 0.17643053540092, 0.07977160041748],
                "w1": [0.02508823300838, 0.01751338136636, 0.01038092639912],
                "coupling": [1.90805361436e-05, 7.85676470447e-06, 1.80561897312e-06]}


def test_rank_independent(study):
    s, _, _ = study
    for key, ref in SERIAL_QUICK.items():
        assert np.allclose(s[key], ref, rtol=2e-3, atol=0), (key, s[key])


def test_outputs_written(study):
    s, _, outdir = study
    res = None
    if COMM.rank == 0:
        import matplotlib.image as mpimg

        with open(outdir / "study_walls_eps.csv", newline="") as fh:
            eps_rows = list(csv.DictReader(fh))
        with open(outdir / "study_walls_n.csv", newline="") as fh:
            n_rows = list(csv.DictReader(fh))
        with open(outdir / "study_walls_uniform.csv", newline="") as fh:
            uni = list(csv.DictReader(fh))
        img = mpimg.imread(outdir / "study_walls.png")
        rates = mpimg.imread(outdir / "study_walls_rates.png")
        res = (len(eps_rows), [r["boundary"] for r in eps_rows],
               [float(r["w1"]) for r in n_rows], [r["geometry"] for r in uni],
               img.shape, rates.shape)
    n_eps, boundaries, w1, geos, shape, rshape = COMM.bcast(res, root=0)
    assert n_eps == 4 and boundaries == ["sinkhorn"] * 3 + ["zero"]
    assert np.allclose(w1, s["w1"], rtol=1e-12)
    assert geos == ["disk", "annulus"]
    assert s["png_panels"] == 3  # local, nonlocal, particles
    assert Path(s["png"]) == outdir / "study_walls.png"
    assert shape[1] > 2.5 * shape[0]  # three panels side by side
    assert len(rshape) == 3 and rshape[0] > 100


@pytest.mark.skipif(COMM.size > 1, reason="a user's serial run (subprocess)")
def test_script_quick_mode_from_ci(tmp_path):
    """``CI=1 python demos/study_walls.py outdir --quiet``: quick mode, JSON is the only output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "MPI", "HYDRA"))}
    env["CI"] = "1"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "o"), "--quiet"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    s = json.loads(lines[0])
    assert s["quick"] is True and s["uniform_drift"] < 1e-11
    assert (tmp_path / "o" / "study_walls.png").is_file()
