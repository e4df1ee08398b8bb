"""Smoke test of benchmarks/bench_work_precision.py on tiny meshes (a benchmark, not timed).

The benchmark runs in this process (collectively under ``mpiexec``), with two meshes and two
tolerances: every point has a finite positive error, the errors fall from the coarse to the
fine mesh, the masses are conserved, the figure is written and the last line is the JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from fem_crossdiff.compat import MPI

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))


def test_work_precision_tiny(tmp_path, monkeypatch, capsys):
    import bench_work_precision as bench

    png = tmp_path / "wp.png"
    monkeypatch.setattr(sys, "argv", [
        "bench_work_precision.py", "--meshes", "4,8", "--tols", "1e-2,1e-3",
        "--png", str(png)])
    bench.main()
    if MPI.COMM_WORLD.rank != 0:
        return
    out = capsys.readouterr().out.strip().splitlines()
    data = json.loads(out[-1])
    assert data["bench"] == "work_precision"
    assert png.is_file() and png.stat().st_size > 1000
    assert data["reference"]["n"] == 16
    for prob in ("segregation", "barenblatt"):
        pts = data["points"][prob]
        assert len(pts) == 2 * 2 * 2  # schemes x meshes x tolerances
        for p in pts:
            assert np.isfinite(p["error"]) and 0 < p["error"] < 1
            assert p["seconds"] > 0 and p["mass_drift"] < 1e-10
        for scheme in ("upwind", "muscl"):
            err = {p["n"]: p["error"] for p in pts if p["scheme"] == scheme and p["tol"] == 1e-3}
            assert err[8] < err[4]
        assert data["crossing"][prob]["ratio"] > 0
