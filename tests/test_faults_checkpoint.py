"""Checkpoints that load but cannot be right are refused before a restart touches anything.

A checkpoint carries a SHA-256 of its content; its content is validated (finite values and
time, ``step >= 0``, shapes, distinct points) when it is read. A restart from a tampered
checkpoint inside the run's folder exits 2 with one line, and every file of the folder is
byte for byte what it was: no later checkpoint deleted, no CSV row cut, nothing renumbered.

Every test runs serially and under ``mpirun -n 2`` (rank 0 tampers and checks the files).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest

from fem_crossdiff.checkpoint import CheckpointError, content_checksum, read_state
from fem_crossdiff.cli import main

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
profile = "uniform"
value = 0.4

[time]
T = 0.02
dt = 2e-3

[output]
formats = ["csv"]
checkpoint_every = 2
progress = false
"""


def _on_root(comm, fn):
    """``fn()`` on rank 0, its result on every rank."""
    return comm.bcast(fn() if comm.rank == 0 else None, root=0)


def _checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: np.array(z[k]) for k in z.files}


def _save(path: Path, arrays: dict, checksum: bool = True) -> None:
    """Write ``arrays`` as a checkpoint, with a matching checksum unless ``checksum=False``."""
    arrays = dict(arrays)
    if checksum:
        arrays["checksum"] = np.array(content_checksum(arrays))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


@pytest.fixture
def run(comm, mpi_tmp_path):
    """A finished run in ``mpi_tmp_path / "out"`` (10 steps, checkpoints 2, 4, ..., 10)."""
    study = mpi_tmp_path / "study.toml"
    if comm.rank == 0:
        study.write_text(STUDY)
    comm.barrier()
    out = mpi_tmp_path / "out"
    assert main(["run", str(study), "--quiet", "--output", str(out)], comm=comm) == 0
    return study, out


def _set(name, value):
    def edit(a):
        a[name] = np.array(value, dtype=a[name].dtype)
    return edit


def _nan_density(a):
    a["values"][5, 1, 0] = np.nan


def _wrong_shape(a):
    a["values"] = a["values"][:, :, :3].copy()


def _too_few_points(a):
    a["coords"], a["values"] = a["coords"][:-4].copy(), a["values"][:-4].copy()


def _duplicate_point(a):
    a["coords"][1] = a["coords"][0]


def _permuted(a):
    a["coords"] = a["coords"][::-1].copy()


def _flipped_bit(a):
    raw = a["values"].reshape(-1).view(np.uint8)  # a view: the flip lands in the array
    raw[1001] ^= 0x10


def _no_checksum(a):
    a.pop("checksum")


def _float_step(a):
    a["step"] = np.array(float(a["step"]))


# name, edit, recompute the checksum, expected text of the one line
TAMPERED = [
    ("nan-density", _nan_density, True, "values of species 2 hold 1 non-finite entries"),
    ("nan-time", _set("t", np.nan), True, "time t = nan is not finite"),
    ("negative-step", _set("step", -3), True, "step = -3 is negative"),
    ("zero-next-dt", _set("next_dt", 0.0), True, "next_dt = 0.0 is not a finite step > 0"),
    ("negative-dt-prev", _set("dt_prev", -1e-3), True, "dt_prev = -0.001 is neither"),
    ("wrong-shape", _wrong_shape, True, "values has shape"),
    ("too-few-points", _too_few_points, True, "dofs per species, this mesh has"),
    ("duplicate-point", _duplicate_point, True, "2 points coincide"),
    ("permuted-coords", _permuted, False, "does not match its checksum"),
    ("flipped-bit", _flipped_bit, False, "does not match its checksum"),
    ("edited-time", _set("t", 0.0075), False, "does not match its checksum"),
    ("no-checksum", _no_checksum, False, "no content checksum"),
    ("float-step", _float_step, True, "step must be one int"),
]


@pytest.mark.parametrize("name,edit,recompute,text", TAMPERED, ids=[c[0] for c in TAMPERED])
def test_tampered_checkpoint_is_refused_before_any_change(comm, capsys, run, name, edit,
                                                          recompute, text):
    """Exit 2, one line naming the file and the fault; the folder is byte for byte as before."""
    study, out = run
    start = out / "checkpoints" / "step_000004.npz"
    if comm.rank == 0:
        arrays = _arrays(start)
        edit(arrays)
        _save(start, arrays, checksum=recompute)
    comm.barrier()
    before = _on_root(comm, lambda: _checksums(out))
    capsys.readouterr()
    code = main(["run", str(study), "--quiet", "--output", str(out), "--restart", str(start)],
                comm=comm)
    err = _on_root(comm, lambda: capsys.readouterr().err)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and text in lines[0] and str(start) in lines[0], err
    assert lines[0].startswith("crossdiff: restart error in ")
    assert _on_root(comm, lambda: _checksums(out)) == before


def test_checksum_covers_every_entry(comm, run):
    """Written checkpoints verify; any changed entry, even reordered points, changes the sum."""
    _, out = run
    if comm.rank != 0:
        return
    path = out / "checkpoints" / "step_000006.npz"
    info, coords, values = read_state(path)
    assert info.step == 6 and coords.shape[0] == values.shape[0] > 10
    arrays = _arrays(path)
    stored = str(arrays["checksum"])
    assert stored == content_checksum(arrays)
    for key in sorted(arrays):
        if key == "checksum":
            continue
        other = dict(arrays)
        other[key] = _changed(arrays[key])
        assert content_checksum(other) != stored, key


def _changed(a: np.ndarray) -> np.ndarray:
    """Another value of the same type: reversed rows, a toggled flag, another number or text."""
    if a.ndim:
        return a[::-1].copy()
    if a.dtype == bool:
        return np.array(not a.item())
    if a.dtype.kind in "iu":
        return np.array(a.item() + 1, dtype=a.dtype)
    if a.dtype.kind == "f":
        return np.array(1.0 if np.isnan(a) else a.item() * 2 + 1, dtype=a.dtype)
    return np.array(str(a) + " ")


def test_version_2_checkpoint_continues_with_a_warning(comm, capsys, run):
    """Files written before checksums (format 2) are validated, restarted, and warned about."""
    study, out = run
    start = out / "checkpoints" / "step_000004.npz"
    final_before = _on_root(comm, lambda: _arrays(out / "checkpoints" / "step_000010.npz"))
    if comm.rank == 0:
        arrays = _arrays(start)
        arrays.pop("checksum")
        arrays["version"] = np.array(2)
        _save(start, arrays, checksum=False)
    comm.barrier()
    capsys.readouterr()
    code = main(["run", str(study), "--quiet", "--output", str(out), "--restart", str(start)],
                comm=comm)
    err = _on_root(comm, lambda: capsys.readouterr().err)
    assert code == 0, err
    assert "has no content checksum (format version 2" in err
    if comm.rank == 0:
        after = _arrays(out / "checkpoints" / "step_000010.npz")
        scale = np.abs(final_before["values"]).max()
        assert np.abs(after["values"] - final_before["values"]).max() <= 1e-12 * scale
        assert int(after["version"]) == 3


def test_version_2_with_bad_content_is_still_refused(comm, capsys, run):
    """No checksum does not mean no checks: NaN densities in a format-2 file are refused."""
    study, out = run
    start = out / "checkpoints" / "step_000004.npz"
    if comm.rank == 0:
        arrays = _arrays(start)
        arrays.pop("checksum")
        arrays["version"] = np.array(2)
        arrays["values"][0, 0, 2] = np.inf
        _save(start, arrays, checksum=False)
    comm.barrier()
    before = _on_root(comm, lambda: _checksums(out))
    capsys.readouterr()
    code = main(["run", str(study), "--quiet", "--output", str(out), "--restart", str(start)],
                comm=comm)
    err = _on_root(comm, lambda: capsys.readouterr().err)
    assert code == 2
    assert "values of species 1 hold 1 non-finite entries" in err
    assert _on_root(comm, lambda: _checksums(out)) == before


def test_read_state_refuses_a_plain_array(tmp_path):
    """An ``.npy`` renamed to ``.npz`` (one array, no archive) is an unreadable checkpoint."""
    path = tmp_path / "step_000002.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_state(path)
