"""Checkpoints and restarts.

A restarted run ends where the uninterrupted run ends (1e-12), on the same and on a different
number of ranks; bad checkpoints are exit code 2.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from fem_crossdiff.checkpoint import (
    CheckpointError,
    atomic_write,
    load_checkpoint,
    read_state,
)
from fem_crossdiff.cli import main
from fem_crossdiff.compat import MPI
from fem_crossdiff.config import load_config
from fem_crossdiff.study import run_study

STUDY = """
[model]
a = [1.0, 2.0]
b = [1.0, 0.5]
m = 2.0
sigma = 1e-3

[geometry]
builder = "disk"
radius = 1.0
h = {h}

[[initial]]
profile = "gaussian"
center = [-0.3, 0.0]
width = 0.2
height = 1.0

[[initial]]
profile = "disk"
center = [0.3, 0.0]
radius = 0.35
value = 0.5

[time]
T = 0.012
dt = 1e-3
method = "bdf2"
adaptive = true
grow = 1.2

[solver]
linear_solver = "{ls}"

[output]
formats = ["csv"]
checkpoint_every = 3
progress = false
"""


def _write_study(comm, folder: Path, name="study.toml", h=0.15, ls="iterative") -> Path:
    path = folder / name
    if comm.rank == 0:
        path.write_text(STUDY.format(h=h, ls=ls))
    comm.barrier()
    return path


def _final(folder: Path) -> Path:
    return sorted((folder / "checkpoints").glob("step_*.npz"))[-1]


def _compare(a: Path, b: Path) -> tuple[float, float, int, int]:
    (ia, ca, va), (ib, cb, vb) = read_state(a), read_state(b)
    # the dof order depends on the partition: compare by sorted coordinates
    oa = np.lexsort(ca.T[::-1])
    ob = np.lexsort(cb.T[::-1])
    assert np.allclose(ca[oa], cb[ob], atol=1e-14)
    diff = float(np.abs(va[oa] - vb[ob]).max() / np.abs(va).max())
    return diff, abs(ia.t - ib.t), ia.step, ib.step


def _csv_steps(path: Path) -> list[int]:
    with open(path, newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def test_restart_equals_uninterrupted(comm, mpi_tmp_path):
    study = _write_study(comm, mpi_tmp_path)
    full, other = mpi_tmp_path / "full", mpi_tmp_path / "other"
    assert main(["run", str(study), "--output", str(full)], comm=comm) == 0
    final = _final(full)
    reference = mpi_tmp_path / "reference.npz"
    if comm.rank == 0:
        shutil.copy(final, reference)
    comm.barrier()
    # restart into another folder and into the same folder (rows after step 3 are replaced)
    start = full / "checkpoints" / "step_000003.npz"
    assert main(["run", str(study), "--output", str(other), "--restart", str(start)],
                comm=comm) == 0
    assert main(["run", str(study), "--output", str(full), "--restart", str(start)],
                comm=comm) == 0
    res = None
    if comm.rank == 0:
        d1, dt1, s_ref, s1 = _compare(reference, _final(other))
        d2, dt2, _, s2 = _compare(reference, _final(full))
        moved, _, _, _ = _compare(reference, start)
        steps = _csv_steps(full / "diagnostics.csv")
        res = (d1, d2, dt1 + dt2, s_ref, s1, s2, moved, steps)
    d1, d2, dtt, s_ref, s1, s2, moved, steps = comm.bcast(res, root=0)
    assert s_ref >= 6 and s1 == s_ref and s2 == s_ref
    assert moved > 1e-3  # the restart really had steps to take
    assert d1 <= 1e-12 and d2 <= 1e-12 and dtt <= 1e-15
    assert steps == list(range(s_ref + 1))  # whole rows, no duplicates after the restart


def test_restart_n_to_m(comm, mpi_tmp_path):
    """Written on all ranks, restarted on one (COMM_SELF) on every rank."""
    study = _write_study(comm, mpi_tmp_path, ls="direct")
    full = mpi_tmp_path / "full"
    assert main(["run", str(study), "--output", str(full)], comm=comm) == 0
    mine = mpi_tmp_path / f"self_{comm.rank}"
    cfg = load_config(study)
    res = run_study(cfg, MPI.COMM_SELF, restart=full / "checkpoints" / "step_000003.npz",
                    quiet=True, output=mine)
    diff, dt, s_ref, s_self = _compare(_final(full), _final(mine))
    assert res.solver.comm.size == 1
    worst = comm.allreduce(diff, op=MPI.MAX)
    assert comm.allreduce(s_ref == s_self and dt <= 1e-15, op=MPI.LAND)
    assert worst <= 1e-12


def test_bad_restart_is_exit_2(comm, mpi_tmp_path, capsys):
    study = _write_study(comm, mpi_tmp_path)
    run = mpi_tmp_path / "run"
    assert main(["run", str(study), "--output", str(run)], comm=comm) == 0
    start = str(run / "checkpoints" / "step_000003.npz")
    # another model (different mobilities): the hash differs
    other = mpi_tmp_path / "other.toml"
    if comm.rank == 0:
        other.write_text(study.read_text().replace("b = [1.0, 0.5]", "b = [1.0, 0.7]"))
    comm.barrier()
    capsys.readouterr()
    codes = [main(["run", str(other), "--output", str(mpi_tmp_path / "x"), "--restart", start],
                  comm=comm),
             main(["run", str(study), "--output", str(mpi_tmp_path / "y"), "--restart",
                   str(mpi_tmp_path / "missing.npz")], comm=comm)]
    err = capsys.readouterr().err
    ok = comm.bcast("another configuration" in err and "not found" in err
                    and err.count("--restart") == 2 if comm.rank == 0 else None, root=0)
    assert codes == [2, 2] and ok


def test_unmatched_mesh_is_rejected(comm, mpi_tmp_path):
    study = _write_study(comm, mpi_tmp_path)
    coarse = _write_study(comm, mpi_tmp_path, "coarse.toml", h=0.3)
    run = mpi_tmp_path / "run"
    assert main(["run", str(study), "--output", str(run)], comm=comm) == 0
    cfg = load_config(coarse)
    from fem_crossdiff.study import _make_solver

    s = _make_solver(cfg, cfg.geometry.build(comm).mesh)
    with pytest.raises(CheckpointError, match="not the same mesh"):
        load_checkpoint(run / "checkpoints" / "step_000003.npz", s)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "state.npz"
    atomic_write(target, lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.npz"]


# ------------------------------------------------------------------- identity
def _msh_study(comm, folder: Path, mesh_name="disk.msh") -> Path:
    """The study on a gmsh file next to it (relative path)."""
    text = STUDY.format(h=0.15, ls="direct").replace(
        'builder = "disk"\nradius = 1.0\nh = 0.15', f'msh = "{mesh_name}"\ngdim = 2')
    path = folder / "study.toml"
    if comm.rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    comm.barrier()
    return path


def test_moved_mesh_continues(comm, mpi_tmp_path, capsys):
    """The identity holds the mesh's content, not its path: a moved .msh file restarts."""
    from fem_crossdiff import meshes

    first, moved = mpi_tmp_path / "first", mpi_tmp_path / "moved"
    study = _msh_study(comm, first)
    meshes.write_msh(first / "disk.msh", "disk", comm, radius=1.0, h=0.25)
    run = mpi_tmp_path / "run"
    assert main(["run", str(study), "--quiet", "--output", str(run)], comm=comm) == 0
    reference = mpi_tmp_path / "reference.npz"
    if comm.rank == 0:
        shutil.copy(_final(run), reference)
        moved.mkdir()
        shutil.move(first / "disk.msh", moved / "disk.msh")
        shutil.move(study, moved / "study.toml")
    comm.barrier()
    start = run / "checkpoints" / "step_000003.npz"
    assert main(["run", str(moved / "study.toml"), "--quiet", "--output", str(run),
                 "--restart", str(start)], comm=comm) == 0
    res = comm.bcast(_compare(reference, _final(run)) if comm.rank == 0 else None, root=0)
    assert res[0] <= 1e-12 and res[2] == res[3]
    # same path, other content (finer mesh, same dof count impossible): refused by name
    meshes.write_msh(moved / "disk.msh", "disk", comm, radius=1.0, h=0.2)
    capsys.readouterr()
    code = main(["run", str(moved / "study.toml"), "--quiet", "--output", str(run),
                 "--restart", str(start)], comm=comm)
    err = capsys.readouterr().err
    assert code == 2
    assert comm.bcast("not the same mesh" in err if comm.rank == 0 else None, root=0)


def test_changed_dt_is_refused(comm, mpi_tmp_path, capsys):
    """time.dt is part of the identity: the message names the key and both values."""
    study = _write_study(comm, mpi_tmp_path)
    run = mpi_tmp_path / "run"
    assert main(["run", str(study), "--quiet", "--output", str(run)], comm=comm) == 0
    other = mpi_tmp_path / "other.toml"
    if comm.rank == 0:
        other.write_text(study.read_text().replace("dt = 1e-3", "dt = 2e-3"))
    comm.barrier()
    before = _checksums(run) if comm.rank == 0 else None
    capsys.readouterr()
    code = main(["run", str(other), "--quiet", "--output", str(run), "--restart",
                 str(run / "checkpoints" / "step_000003.npz")], comm=comm)
    err = capsys.readouterr().err
    assert code == 2
    if comm.rank == 0:
        assert "time.dt: 0.001 in the checkpoint, 0.002 now" in err, err
        assert "time.T" not in err.split("(")[0]
        assert _checksums(run) == before  # the refused restart wrote nothing
    # a longer T continues (T is not in the identity)
    longer = mpi_tmp_path / "longer.toml"
    if comm.rank == 0:
        longer.write_text(study.read_text().replace("T = 0.012", "T = 0.015"))
    comm.barrier()
    assert main(["run", str(longer), "--quiet", "--output", str(run), "--restart",
                 str(_final(run))], comm=comm) == 0


def test_mesh_hash_is_partition_independent(comm):
    from fem_crossdiff.checkpoint import mesh_hash
    from fem_crossdiff.compat import mesh

    world = mesh.create_unit_square(comm, 7, 5)
    alone = mesh.create_unit_square(MPI.COMM_SELF, 7, 5)
    other = mesh.create_unit_square(MPI.COMM_SELF, 5, 7)
    shifted = mesh.create_unit_square(MPI.COMM_SELF, 7, 5)
    shifted.geometry.x[0, 0] += 1e-9
    h = mesh_hash(world)
    assert h == mesh_hash(alone)
    assert comm.allreduce(h == mesh_hash(world), op=MPI.LAND)
    assert h != mesh_hash(other) and h != mesh_hash(shifted)


def _checksums(folder: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
