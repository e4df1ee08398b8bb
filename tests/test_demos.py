"""Every demo script runs in its short mode (CI=1) and writes its outputs.

Serially each demo is a subprocess, as a user runs it. Under ``mpiexec`` the test suite itself
is parallel: each demo then runs in-process on all ranks (``runpy``), collectively.
"""

from __future__ import annotations

import csv
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMOS = sorted((ROOT / "demos").glob("demo_*.py"))
#: files each demo must write (CSV diagnostics, PNGs for 2D)
EXPECTED = {
    "demo_segregation": ["diagnostics.csv", "densities.png", "diagnostics.png", "animation.gif"],
    "demo_annulus_obstacles": ["annulus.csv", "annulus.png", "obstacles.csv", "obstacles.png"],
    "demo_lshape": ["diagnostics.csv", "overlap.csv", "densities.png"],
    "demo_ball3d": ["diagnostics.csv", "moments.csv"],
    "demo_tumour_growth": ["diagnostics.csv", "densities.png", "growth.png"],
    "demo_cell_sorting": ["diagnostics.csv", "densities.png", "sorting.csv"],
}
#: demos whose masses change (growth laws): their proliferating species must grow instead
GROWING = {"demo_tumour_growth"}


def _run_demo(script: Path, outdir: Path, comm, monkeypatch) -> None:
    if comm.size == 1:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PMI_", "MPI", "HYDRA"))}
        env["CI"] = "1"
        proc = subprocess.run([sys.executable, str(script), str(outdir)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
    else:
        monkeypatch.setenv("CI", "1")
        monkeypatch.setattr(sys, "argv", [str(script), str(outdir)])
        runpy.run_path(str(script), run_name="__main__")
        comm.barrier()


@pytest.mark.parametrize("script", DEMOS, ids=lambda p: p.stem)
def test_demo_short(script, comm, mpi_tmp_path, monkeypatch):
    outdir = mpi_tmp_path / script.stem
    _run_demo(script, outdir, comm, monkeypatch)
    res = None
    if comm.rank == 0:
        # demos not listed must at least write one CSV
        expected = EXPECTED.get(script.stem, [])
        missing = [f for f in expected if not (outdir / f).is_file()]
        if not expected and not list(outdir.glob("*.csv")):
            missing.append("*.csv")
        drifts = []
        for path in outdir.glob("*.csv"):
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            masses = [k for k in rows[0] if k.startswith("mass_")]
            if masses:
                assert len(rows) >= 3
            if script.stem in GROWING and masses:
                assert float(rows[-1]["mass_1"]) > 1.01 * float(rows[0]["mass_1"])
                continue
            drifts += [abs(float(rows[-1][k]) / float(rows[0][k]) - 1) for k in masses]
        res = (missing, max(drifts) if drifts else None)
    missing, drift = comm.bcast(res, root=0)
    assert missing == []
    if script.stem in EXPECTED and script.stem not in GROWING:  # these write mass columns
        assert drift is not None
    assert drift is None or drift < 1e-10
