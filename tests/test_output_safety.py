"""Outputs are never damaged, and initial data that is zero up to round-off is accepted.

Nothing is written before everything is validated, and a run never mixes its files with
another run's.

Every test runs serially and under ``mpirun -n 2`` (rank 0 checks the files).
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest

from fem_crossdiff.cli import main
from fem_crossdiff.compat import MPI

STUDY = """
[model]
a = [1.0, 2.0]
b = [1.0, 0.5]
sigma = 1e-3

[geometry]
builder = "interval"
h = 0.02

[[initial]]
profile = "gaussian"
center = [0.3]
width = 0.1
height = 1.0

[[initial]]
profile = "{second}"
{extra}

[time]
T = {T}
dt = 2e-3

[output]
formats = ["csv"]
checkpoint_every = 2
progress = false
"""
UNIFORM = 'value = 0.4'


def _study(comm, folder: Path, name: str, T=0.01, second="uniform", extra=UNIFORM) -> Path:
    path = folder / name
    if comm.rank == 0:
        path.write_text(STUDY.format(T=T, second=second, extra=extra))
    comm.barrier()
    return path


def _checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _on_root(comm, fn):
    """``fn()`` on rank 0, its result on every rank."""
    return comm.bcast(fn() if comm.rank == 0 else None, root=0)


def _steps(folder: Path) -> list[int]:
    return sorted(int(p.stem[5:]) for p in (folder / "checkpoints").glob("step_*.npz"))


def _run(comm, capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["run", *map(str, args), "--quiet"], comm=comm)
    return code, _on_root(comm, lambda: capsys.readouterr().err)


@pytest.fixture
def previous(comm, mpi_tmp_path):
    """A finished run in ``mpi_tmp_path / "out"`` (T = 0.02: 10 steps, 5 checkpoints)."""
    study = _study(comm, mpi_tmp_path, "long.toml", T=0.02)
    out = mpi_tmp_path / "out"
    assert main(["run", str(study), "--quiet", "--output", str(out)], comm=comm) == 0
    assert _on_root(comm, lambda: _steps(out)) == [2, 4, 6, 8, 10]
    return study, out


def test_failing_runs_leave_outputs_unchanged(comm, mpi_tmp_path, capsys, previous):
    """Bad initial data, a bad mesh file, a missing checkpoint: checksums before == after."""
    study, out = previous
    before = _on_root(comm, lambda: _checksums(out))
    negative = _study(comm, mpi_tmp_path, "negative.toml", second="expression",
                      extra='expr = "x - 0.5"')
    nomesh = mpi_tmp_path / "nomesh.toml"
    if comm.rank == 0:
        nomesh.write_text(study.read_text().replace('builder = "interval"\nh = 0.02',
                                                    'msh = "nothing.msh"'))
        (mpi_tmp_path / "nothing.msh").write_text("$MeshFormat\nnot a mesh\n")
    comm.barrier()
    cases = [
        (negative, "--overwrite"),  # validation fails before the folder is touched
        (nomesh, "--overwrite"),
        (study, "--restart", mpi_tmp_path / "missing.npz"),
        (study, "--overwrite", "--restart", out / "checkpoints" / "step_000004.npz"),
        (negative,),
    ]
    for extra in cases:
        code, err = _run(comm, capsys, extra[0], "--output", out, *extra[1:])
        assert code == 2, (extra, err)
        assert err.count("\n") == 1, err  # one line
        assert _on_root(comm, lambda: _checksums(out)) == before, extra
    assert "initial[1]" in err and "negative" in err


def test_non_empty_folder_is_refused(comm, mpi_tmp_path, capsys, previous):
    study, out = previous
    before = _on_root(comm, lambda: _checksums(out))
    code, err = _run(comm, capsys, study, "--output", out)
    assert code == 2
    assert "output.folder" in err and "not empty" in err
    assert "--overwrite" in err and "--restart" in err
    # a checkpoint of another folder does not allow continuing into this one
    other = mpi_tmp_path / "other"
    assert main(["run", str(study), "--quiet", "--output", str(other)], comm=comm) == 0
    code, err = _run(comm, capsys, study, "--output", out, "--restart",
                     other / "checkpoints" / "step_000004.npz")
    assert code == 2 and "holding its checkpoint" in err
    # an output folder that is a file
    code, err = _run(comm, capsys, study, "--output", out / "config.toml")
    assert code == 2 and "is a file, not a folder" in err
    assert _on_root(comm, lambda: _checksums(out)) == before


def test_overwrite_replaces_the_earlier_run(comm, mpi_tmp_path, capsys, previous):
    """A shorter run with --overwrite leaves none of the longer run's files."""
    _, out = previous
    short = _study(comm, mpi_tmp_path, "short.toml", T=0.006)
    code, _ = _run(comm, capsys, short, "--output", out, "--overwrite")
    assert code == 0
    steps, rows, config = _on_root(comm, lambda: (
        _steps(out), [int(r["step"]) for r in csv.DictReader(open(out / "diagnostics.csv"))],
        (out / "config.toml").read_text()))
    assert steps == [2, 3] and rows == [0, 1, 2, 3] and "T = 0.006" in config
    # files that no run writes are never deleted: --overwrite is refused
    if comm.rank == 0:
        (out / "notes.txt").write_text("mine")
    comm.barrier()
    before = _on_root(comm, lambda: _checksums(out))
    code, err = _run(comm, capsys, short, "--output", out, "--overwrite")
    assert code == 2 and "notes.txt" in err
    assert _on_root(comm, lambda: _checksums(out)) == before


def test_continue_drops_the_later_files(comm, mpi_tmp_path, capsys, previous):
    """--restart from step 4 to a shorter T: no checkpoint beyond the new final state."""
    _, out = previous
    short = _study(comm, mpi_tmp_path, "long.toml", T=0.012)  # same study, T only differs
    code, _ = _run(comm, capsys, short, "--output", out, "--restart",
                   out / "checkpoints" / "step_000004.npz")
    assert code == 0
    steps, rows = _on_root(comm, lambda: (
        _steps(out), [int(r["step"]) for r in csv.DictReader(open(out / "diagnostics.csv"))]))
    assert steps == [2, 4, 6] and rows == list(range(7))


# ---------------------------------------------------------------- sign of initial data
def test_round_off_negatives_are_zero(comm):
    """``1 - x^2 - y^2`` on the unit disk: boundary nodes give -2e-16, accepted as 0."""
    from fem_crossdiff import meshes
    from fem_crossdiff.errors import ParameterError
    from fem_crossdiff.params import ModelParams
    from fem_crossdiff.solver import SIGN_TOL, CrossDiffusionSolver

    msh = meshes.build("disk", comm, radius=1.0, h=0.3).mesh
    x = msh.geometry.x
    raw = comm.allreduce(float(np.min(1.0 - x[:, 0] ** 2 - x[:, 1] ** 2)), op=MPI.MIN)
    assert -1e-15 < raw < 0.0  # the case is real: round-off below zero on the boundary
    s = CrossDiffusionSolver(msh, ModelParams(a=(1.0, 1.0), b=(1.0, 1.0)))
    bump = lambda x: 1.0 - x[0] ** 2 - x[1] ** 2  # noqa: E731
    s.set_initial([bump, lambda x: 0.5 + 0.0 * x[0]])
    mn, mx = s.extrema()
    assert mn[0] == 0.0 and mx[0] > 0.9
    # a real negative (beyond SIGN_TOL * max) is refused, naming species and value
    with pytest.raises(ParameterError, match=r"species 2 is negative \(min -1\.000e-06"):
        s.set_initial([bump, lambda x: np.where(x[0] > 0.9, -1e-6, 0.5)])
    scale = 0.5 * SIGN_TOL * 100  # 50 SIGN_TOL * max: refused too
    with pytest.raises(ParameterError, match="initial data of species 1 is negative"):
        s.set_initial([lambda x: bump(x) - scale, lambda x: 0.5 + 0.0 * x[0]])
