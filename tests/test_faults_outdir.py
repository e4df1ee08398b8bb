"""Output-folder faults: the lock, symbolic links, leftover temporaries, restart numbering.

One run per output folder (the lock), no write through a symbolic link, no leftover
temporaries, and restarts that continue the particle outputs (``fem_crossdiff.outdir``).

The in-process tests run serially and under ``mpiexec -n 2`` (rank 0 plants and checks the
files); the two tests with concurrent ``crossdiff`` processes run from the serial session only.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fem_crossdiff import outdir
from fem_crossdiff.cli import main
from fem_crossdiff.config import to_toml

BIN = Path(sys.executable).parent

STUDY = {
    "model": {"a": [1.0, 2.0], "b": [1.0, 0.5], "m": 2.0, "sigma": 1e-3},
    "geometry": {"builder": "disk", "radius": 1.0, "h": 0.25},
    "initial": [{"profile": "gaussian", "center": [0.3, 0.0], "width": 0.3, "height": 1.0},
                {"profile": "uniform", "value": 0.2}],
    "time": {"T": 0.008, "dt": 1e-3, "adaptive": False},
    "output": {"formats": ["csv"], "progress": False, "checkpoint_every": 2},
}
#: The particles' drift needs ``eps >= 2 h_max``.
PARTICLES = {"N": 200, "seed": 5, "eps": 0.6, "output_every": 2}


def _doc(T=0.008, particles=False, animation=False, **extra) -> dict:
    doc = json.loads(json.dumps(STUDY))
    doc["time"]["T"] = T
    if particles:
        doc["particles"] = dict(PARTICLES)
    if animation:
        doc["output"].update(animation="gif", animation_frames=3)
    for section, values in extra.items():
        doc.setdefault(section, {}).update(values)
    return doc


def _write_study(comm, path: Path, doc: dict) -> Path:
    if comm.rank == 0:
        path.write_text(to_toml(doc))
    comm.barrier()
    return path


def _on_root(comm, fn):
    """``fn()`` on rank 0, its result on every rank."""
    return comm.bcast(fn() if comm.rank == 0 else None, root=0)


def _tree(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (links not followed): file SHA-256, link target or dir."""
    out = {}
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            p = Path(root) / name
            rel = str(p.relative_to(folder))
            if p.is_symlink():
                out[rel] = "link -> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def _run(comm, capsys, *args) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(["run", *map(str, args), "--quiet"], comm=comm)
    return code, _on_root(comm, lambda: _lines(capsys.readouterr().err))


@pytest.fixture
def previous(comm, mpi_tmp_path, capsys):
    """A finished run (8 steps, checkpoints 2, 4, 6, 8) in ``mpi_tmp_path / "out"``."""
    study = _write_study(comm, mpi_tmp_path / "study.toml", _doc())
    out = mpi_tmp_path / "out"
    code, err = _run(comm, capsys, study, "--output", out)
    assert code == 0, err
    return study, out


# --------------------------------------------------------------------------- the lock
def _start(pid: int) -> str | None:
    return outdir._start_time(pid)


def _dead_pid() -> int:
    """The pid of a process that has ended (reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _plant_lock(comm, folder: Path, record: dict | str | None, age: float = 0.0) -> None:
    if comm.rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        text = record if isinstance(record, str) else json.dumps(record)
        (folder / outdir.LOCK_NAME).write_text(text)
        if age:
            t = time.time() - age
            os.utime(folder / outdir.LOCK_NAME, (t, t))
    comm.barrier()


def _live_record() -> dict:
    """A lock of a live process of this host: this test process's parent."""
    ppid = os.getppid()
    return {"pid": ppid, "host": socket.gethostname(), "start": _start(ppid), "since": "x"}


@pytest.mark.parametrize("how", ["plain", "overwrite", "restart"])
def test_live_lock_refuses_before_touching_anything(how, comm, mpi_tmp_path, capsys, previous):
    """A folder held by a live run: exit 2, one line naming the holder; nothing touched."""
    study, out = previous
    _plant_lock(comm, out, _live_record())
    before = _on_root(comm, lambda: _tree(out))
    extra = {"plain": [], "overwrite": ["--overwrite"],
             "restart": ["--restart", out / "checkpoints" / "step_000004.npz"]}[how]
    code, err = _run(comm, capsys, study, "--output", out, *extra)
    assert code == 2
    assert len(err) == 1 and "is in use by another run" in err[0], err
    assert f"pid {_on_root(comm, os.getppid)}" in err[0] and outdir.LOCK_NAME in err[0]
    assert _on_root(comm, lambda: _tree(out)) == before


def test_plain_run_into_a_locked_empty_folder(comm, mpi_tmp_path, capsys):
    """Two runs started together on a new folder: the one finding the lock is refused."""
    study = _write_study(comm, mpi_tmp_path / "study.toml", _doc())
    out = mpi_tmp_path / "fresh"
    _plant_lock(comm, out, _live_record())
    code, err = _run(comm, capsys, study, "--output", out)
    assert code == 2 and len(err) == 1 and "is in use by another run" in err[0], err
    assert _on_root(comm, lambda: sorted(os.listdir(out))) == [outdir.LOCK_NAME]


@pytest.mark.parametrize("kind", ["other host", "unreadable, fresh"])
def test_undecidable_locks_refuse(kind, comm, mpi_tmp_path, capsys, previous):
    """Another host's lock, or one being written (unreadable, young): refused, untouched."""
    study, out = previous
    if kind == "other host":
        _plant_lock(comm, out, {"pid": _dead_pid(), "host": "elsewhere.invalid",
                                "start": "1", "since": "x"})
    else:
        _plant_lock(comm, out, "")
    before = _on_root(comm, lambda: _tree(out))
    code, err = _run(comm, capsys, study, "--output", out, "--overwrite")
    assert code == 2 and len(err) == 1 and "is in use by another run" in err[0], err
    if kind == "other host":
        assert "host elsewhere.invalid" in err[0]
    assert _on_root(comm, lambda: _tree(out)) == before


@pytest.mark.parametrize("kind", ["dead pid", "reused pid", "unreadable, old"])
def test_stale_lock_is_taken_over(kind, comm, mpi_tmp_path, capsys, previous):
    """A lock whose run is gone is taken over, with a warning; the run then goes on."""
    study, out = previous
    host = socket.gethostname()
    record = {"dead pid": {"pid": _on_root(comm, _dead_pid), "host": host, "start": None},
              "reused pid": {"pid": os.getppid(), "host": host, "start": "-1"},
              "unreadable, old": '{"pid": 12'}[kind]
    _plant_lock(comm, out, record, age=3600.0 if kind == "unreadable, old" else 0.0)
    code, err = _run(comm, capsys, study, "--output", out, "--overwrite")
    assert code == 0, err
    assert len(err) == 1 and "took over the stale lock" in err[0], err
    names = _on_root(comm, lambda: sorted(os.listdir(out)))
    assert outdir.LOCK_NAME not in names and "diagnostics.csv" in names  # released at the end
    assert not [n for n in names if outdir.is_temporary(n)]


def test_lock_is_held_during_the_run_and_released_on_errors(comm, mpi_tmp_path, capsys,
                                                            previous, monkeypatch):
    """The lock exists while the steps run, and is gone after a failure or an interrupt."""
    from fem_crossdiff import driver

    study, out = previous
    seen = []

    def failing(s, tp, observers, **kw):
        seen.append(_on_root(comm, lambda: json.loads((out / outdir.LOCK_NAME).read_text())))
        raise exc

    monkeypatch.setattr(driver, "run", failing)
    for exc, code in ((RuntimeError("boom"), 1), (KeyboardInterrupt(), 130)):
        got, err = _run(comm, capsys, study, "--output", out, "--overwrite")
        assert got == code and len(err) == 1, err
        assert _on_root(comm, lambda: (out / outdir.LOCK_NAME).exists()) is False
    root_pid = _on_root(comm, os.getpid)
    assert [r["pid"] for r in seen] == [root_pid, root_pid]
    assert all(r["host"] == socket.gethostname() for r in seen)


def test_refused_folder_releases_the_lock(comm, mpi_tmp_path, capsys, previous):
    """A non-empty folder refused after the lock was taken: the lock goes, nothing else."""
    study, out = previous
    before = _on_root(comm, lambda: _tree(out))
    code, err = _run(comm, capsys, study, "--output", out)
    assert code == 2 and len(err) == 1 and "is not empty" in err[0], err
    assert _on_root(comm, lambda: _tree(out)) == before


def test_lock_takeover_races(tmp_path):
    """Two processes taking over one stale lock: exactly one holds it (no MPI)."""
    folder = tmp_path / "out"
    folder.mkdir()
    stale = {"pid": _dead_pid(), "host": socket.gethostname(), "start": None}
    (folder / outdir.LOCK_NAME).write_text(json.dumps(stale))
    a, b = outdir.FolderLock(folder), outdir.FolderLock(folder)
    b._record = dict(b._record, pid=os.getppid(), start=_start(os.getppid()))
    # b takes over first; a then finds b's (live) lock and, trying again, is refused
    b.acquire()
    assert b.held and b.taken_over is not None
    with pytest.raises(outdir.LockedError, match=f"pid {os.getppid()}"):
        a.acquire()
    # a takeover that finds a fresh lock in place of the stale one puts it back
    rec = a._read(folder / outdir.LOCK_NAME)
    a._take_over(stale, "test")
    assert a.taken_over is None and a._read(folder / outdir.LOCK_NAME) == rec
    assert sorted(os.listdir(folder)) == [outdir.LOCK_NAME]
    a.release()  # not held by a: b's lock stays
    assert (folder / outdir.LOCK_NAME).exists()
    b.release()
    assert not (folder / outdir.LOCK_NAME).exists()


# --------------------------------------------------------------------------- two processes
def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "MPI", "HYDRA"))}
    env.pop("CI", None)
    return env


def _serial_only(comm):
    if comm.size > 1:
        pytest.skip("crossdiff subprocesses are launched from the serial run")


def test_two_plain_runs_started_together(comm, tmp_path):
    """Two ``crossdiff run`` on one new folder at once: one runs, the other exits 2."""
    _serial_only(comm)
    out = tmp_path / "out"
    study = tmp_path / "long.toml"
    study.write_text(to_toml(_doc(T=0.03, output={"folder": str(out)})))
    cmd = [str(BIN / "crossdiff"), "run", str(study), "--quiet"]
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    finally:
        for p in procs:
            p.kill()
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    loser = _lines(next(err for code, err in results if code == 2))
    assert len(loser) == 1 and ("is in use by another run" in loser[0]
                                or "is not empty" in loser[0]), loser
    assert "Traceback" not in loser[0]
    with open(out / "diagnostics.csv", newline="") as f:  # one run's rows, once each
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == list(range(31))
    assert not (out / outdir.LOCK_NAME).exists()


def test_overwrite_of_a_running_job_is_refused(comm, tmp_path):
    """``--overwrite`` against a live (here: stopped) run: exit 2, every file unchanged."""
    _serial_only(comm)
    out = tmp_path / "out"
    study = tmp_path / "long.toml"
    study.write_text(to_toml(_doc(T=100.0, output={"folder": str(out)})))
    first = subprocess.Popen([str(BIN / "crossdiff"), "run", str(study), "--quiet"],
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        ckpt = out / "checkpoints" / "step_000004.npz"
        deadline = time.time() + 120
        while not ckpt.exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert ckpt.exists(), first.stderr.read() if first.poll() is not None else ""
        first.send_signal(signal.SIGSTOP)  # the run holds the lock, and writes nothing now
        before = _tree(out)
        assert json.loads((out / outdir.LOCK_NAME).read_text())["pid"] == first.pid
        proc = subprocess.run([str(BIN / "crossdiff"), "run", str(study), "--quiet",
                               "--overwrite"], env=_env(), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2, proc.stderr
        err = _lines(proc.stderr)
        assert len(err) == 1 and f"pid {first.pid}" in err[0], err
        assert _tree(out) == before
    finally:
        first.kill()
        first.wait()
    # killed: its lock is stale, and the next --overwrite takes it over
    short = tmp_path / "short.toml"
    short.write_text(to_toml(_doc(T=0.004, output={"folder": str(out)})))
    proc = subprocess.run([str(BIN / "crossdiff"), "run", str(short), "--quiet",
                           "--overwrite"], env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"took over the stale lock of crossdiff pid {first.pid}" in proc.stderr
    assert not (out / outdir.LOCK_NAME).exists()


# --------------------------------------------------------------------------- symbolic links
LINKS = {  # name in the folder -> where it points (relative to the outside folder or "")
    "particles/diagnostics.csv": "victim.csv",
    "particles/positions_000004.npz": "victim.npz",
    "particles/positions_000006.npz": "victim.npz",
    "diagnostics.csv": "victim.csv",
    "checkpoints/step_000008.npz": "victim.npz",
    "animation.gif": "created.gif",  # dangling: must not create it
    f"{outdir.TMP_PREFIX}4242-animation.gif": "created.gif",
    ".animation.tmp.gif": "created.gif",  # the fixed temporary name of earlier versions
    "particles": "victims",  # the folder itself
}


@pytest.fixture
def with_particles(comm, mpi_tmp_path, capsys):
    """A finished run with particles and a GIF (8 steps, positions every 2 steps)."""
    study = _write_study(comm, mpi_tmp_path / "particles.toml",
                         _doc(particles=True, animation=True))
    out = mpi_tmp_path / "pout"
    code, err = _run(comm, capsys, study, "--output", out)
    assert code == 0, err
    return study, out


@pytest.mark.parametrize("name", list(LINKS))
def test_restart_refuses_planted_links(name, comm, mpi_tmp_path, capsys, with_particles):
    """A link planted in the folder before --restart: exit 2, one line naming it.

    No file inside or outside the folder changes, and nothing is created outside.
    """
    study, out = with_particles
    outside = mpi_tmp_path / "outside"
    link = out / name
    if comm.rank == 0:
        (outside / "victims").mkdir(parents=True)
        (outside / "victims" / "diagnostics.csv").write_text("precious\n")
        (outside / "victim.csv").write_text("step,time\nprecious\n")
        (outside / "victim.npz").write_bytes(b"precious bytes")
        if link.is_dir() and not link.is_symlink():
            os.rename(link, out / "particles.moved")  # kept aside, compared too
        elif link.exists():
            link.unlink()
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(outside / LINKS[name])
    comm.barrier()
    before = _on_root(comm, lambda: (_tree(out), _tree(outside)))
    code, err = _run(comm, capsys, study, "--output", out, "--restart",
                     out / "checkpoints" / "step_000004.npz")
    assert code == 2, err
    assert len(err) == 1 and "symbolic link" in err[0] and name in err[0], err
    assert _on_root(comm, lambda: (_tree(out), _tree(outside))) == before
    assert _on_root(comm, lambda: (outside / "created.gif").exists()) is False


def test_safe_writers_never_follow_links(tmp_path):
    """The writers of ``outdir`` refuse a link at the file and at its folder (no MPI)."""
    folder, outside = tmp_path / "out", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("precious")
    (folder / "a.csv").symlink_to(victim)
    (folder / "dangling.npz").symlink_to(outside / "new.npz")
    (folder / "sub").symlink_to(outside)
    with pytest.raises(outdir.UnsafePathError, match="symbolic link"):
        outdir.atomic_write(folder / "a.csv", lambda f: f.write(b"x"))
    with pytest.raises(outdir.UnsafePathError):
        outdir.atomic_write(folder / "dangling.npz", lambda f: f.write(b"x"))
    with pytest.raises(outdir.UnsafePathError):
        outdir.open_append(folder / "a.csv")
    with pytest.raises(outdir.UnsafePathError):
        outdir.open_append(folder / "dangling.npz", truncate=True)
    with pytest.raises(outdir.UnsafePathError):
        outdir.atomic_write(folder / "sub" / "x.npz", lambda f: f.write(b"x"))
    # a link planted at the temporary's own name is removed, not written through
    tmp = outdir.temporary_path(folder / "b.npz")
    tmp.symlink_to(victim)
    outdir.atomic_write(folder / "b.npz", lambda f: f.write(b"new"))
    assert (folder / "b.npz").read_bytes() == b"new" and not (folder / "b.npz").is_symlink()
    assert victim.read_text() == "precious" and sorted(os.listdir(outside)) == ["victim.txt"]
    assert sorted(os.listdir(folder)) == ["a.csv", "b.npz", "dangling.npz", "sub"]
    assert outdir.find_links(folder) == ["a.csv", "dangling.npz", "sub"]


# --------------------------------------------------------------------------- temporaries
def test_leftover_temporaries_are_removed_at_restart(comm, mpi_tmp_path, capsys, previous):
    """Temporaries of a killed run (this version's and older names) go at the next run."""
    study, out = previous
    planted = [f"checkpoints/{outdir.TMP_PREFIX}4242-step_000006.npz",
               ".step_000002.npz.tmp4242", f"{outdir.TMP_PREFIX}4242-diagnostics.png"]
    if comm.rank == 0:
        for name in planted:
            (out / name).write_bytes(b"half a file")
    comm.barrier()
    before = _on_root(comm, lambda: _tree(out))
    code, err = _run(comm, capsys, study, "--output", out, "--restart",
                     out / "checkpoints" / "step_000004.npz")
    assert code == 0, err
    after = _on_root(comm, lambda: _tree(out))
    assert not [n for n in after if outdir.is_temporary(Path(n).name)]
    for name in ("checkpoints/step_000002.npz", "checkpoints/step_000004.npz"):
        assert after[name] == before[name]  # the restart point and before: untouched


# --------------------------------------------------------------------------- restart numbering
def _particle_files(out: Path) -> dict[str, str]:
    return {k: v for k, v in _tree(out / "particles").items()}


def test_restart_continues_particle_numbering(comm, mpi_tmp_path, capsys, with_particles):
    """--restart from step 4 keeps the particle files up to step 4 byte for byte.

    The new ones are numbered 5, 6, ... with times going on from t(4).
    """
    study, out = with_particles
    before = _on_root(comm, lambda: _particle_files(out))
    assert sorted(before) == ["diagnostics.csv"] + [f"positions_{s:06d}.npz"
                                                    for s in (0, 2, 4, 6, 8)]
    rows0 = _on_root(comm, lambda: list(csv.DictReader(open(out / "particles" /
                                                            "diagnostics.csv"))))
    code, err = _run(comm, capsys, study, "--output", out, "--restart",
                     out / "checkpoints" / "step_000004.npz")
    assert code == 0, err
    after = _on_root(comm, lambda: _particle_files(out))
    assert sorted(after) == sorted(before)
    for s in (0, 2, 4):  # earlier files: never rewritten
        assert after[f"positions_{s:06d}.npz"] == before[f"positions_{s:06d}.npz"]
    for s in (6, 8):  # written by the continued run (re-sampled particles)
        assert after[f"positions_{s:06d}.npz"] != before[f"positions_{s:06d}.npz"]

    def info():
        out_ = {}
        for s in (4, 6, 8):
            with np.load(out / "particles" / f"positions_{s:06d}.npz") as z:
                out_[s] = (int(z["step"]), float(z["time"]))
        rows = list(csv.DictReader(open(out / "particles" / "diagnostics.csv")))
        return out_, rows

    files, rows = _on_root(comm, info)
    assert [int(r["step"]) for r in rows] == list(range(9))
    assert rows[:5] == rows0[:5]  # the earlier rows up to the restart point, unchanged
    times = [float(r["time"]) for r in rows]
    assert all(b > a for a, b in zip(times, times[1:]))
    assert abs(times[8] - 0.008) < 1e-12 and abs(times[4] - 0.004) < 1e-12
    assert files[6][0] == 6 and files[8][0] == 8
    assert abs(files[6][1] - times[6]) < 1e-12 and abs(files[8][1] - times[8]) < 1e-12


APPEARING = {  # link planted after the check -> exit code (0: a later file, only unlinked)
    "diagnostics.csv": 1, "particles/diagnostics.csv": 1, "particles": 1, "checkpoints": 1,
    "animation.gif": 1, "particles/positions_000006.npz": 0, "checkpoints/step_000006.npz": 0,
}


@pytest.mark.parametrize("name", list(APPEARING))
def test_link_appearing_during_the_run_is_not_followed(name, comm, mpi_tmp_path, capsys,
                                                       with_particles, monkeypatch):
    """A link that the check before the restart did not see (planted later) is not followed.

    The writer refuses it (exit 1, one line naming it), or the restart drops it with the
    later outputs it stands for (exit 0); nothing outside the folder changes either way.
    """
    study, out = with_particles
    outside = mpi_tmp_path / "outside"
    link = out / name
    if comm.rank == 0:
        (outside / "dir").mkdir(parents=True)
        for victim in ("victim", "dir/diagnostics.csv", "dir/positions_000008.npz",
                       "dir/step_000006.npz"):
            (outside / victim).write_bytes(b"precious bytes")
        if link.is_dir():
            os.rename(link, out / f"{name}.moved")
        else:
            link.unlink()
        target = {"animation.gif": "created.gif", "particles": "dir", "checkpoints": "dir"}
        link.symlink_to(outside / target.get(name, "victim"))
    comm.barrier()
    before = _on_root(comm, lambda: _tree(outside))
    monkeypatch.setattr(outdir, "find_links", lambda folder: [])
    where = "checkpoints.moved" if name == "checkpoints" else "checkpoints"
    code, err = _run(comm, capsys, study, "--output", out, "--restart",
                     out / where / "step_000004.npz")
    assert code == APPEARING[name], err
    if code:
        assert len(err) == 1 and "refusing to write through a symbolic link" in err[0], err
        assert str(link) in err[0] and "unexpected" not in err[0]
    else:
        assert _on_root(comm, lambda: link.is_file() and not link.is_symlink())
    assert _on_root(comm, lambda: _tree(outside)) == before
