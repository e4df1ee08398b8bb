"""A full disk or a file-size limit is one clean failure in every writer, with nothing lost.

Each case runs ``crossdiff run`` as a subprocess (serially and under ``mpiexec -n 2``,
launched from the serial test session only) and checks: exit code 1, exactly one line on
stderr naming the file and the cause, no traceback, no colour codes, no abort; every
checkpoint written is byte for byte that of an undisturbed run, the CSV holds whole rows of
that run, and no temporary file is left.

Two ways to fill the disk:

* a tmpfs of a few hundred KB (needs root and ``mount``; skipped with the reason otherwise),
  at sizes that make each writer in turn meet the full disk;
* ``RLIMIT_FSIZE`` set in the child (``tests/_disk_child.py``; no privileges needed), which
  makes writes past the limit fail with ``EFBIG``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fem_crossdiff.config import to_toml

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "_disk_child.py"
BIN = Path(sys.executable).parent
MPIEXEC = BIN / "mpiexec"

STUDY = {
    "model": {"a": [1.0, 2.0], "b": [1.0, 0.5], "m": 2.0, "sigma": 1e-3},
    "geometry": {"builder": "disk", "radius": 1.0, "h": 0.3},
    "initial": [{"profile": "gaussian", "center": [0.0, 0.0], "width": 0.3, "height": 1.0},
                {"profile": "uniform", "value": 0.2}],
    "time": {"T": 0.01, "dt": 1e-3},
    "output": {"formats": ["csv", "vtx"], "progress": False, "checkpoint_every": 2},
    # an explicit limit: the up-front disk estimate (which would refuse these studies on the
    # small disks before they start) is not what these tests exercise, the writers are
    "resources": {"disk_limit_gb": 1.0},
}


def _study(folder: Path, name: str, **output) -> Path:
    doc = {k: (dict(v) if isinstance(v, dict) else [dict(i) for i in v])
           for k, v in STUDY.items()}
    particles = output.pop("particles", None)
    if particles is not None:
        doc["particles"] = particles
    doc["output"].update(output)
    path = folder / name
    path.write_text(to_toml(doc))
    return path


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "MPI", "HYDRA"))}
    env.pop("CI", None)
    env.pop("CROSSDIFF_TRACEBACK", None)
    # matplotlib's own warnings while laying out the snapshot figure (not ours to judge here)
    env["PYTHONWARNINGS"] = "ignore::RuntimeWarning:matplotlib.transforms"
    return env


def _crossdiff(ranks: int, args: list, mode: tuple[str, str] | None = None
               ) -> subprocess.CompletedProcess:
    cmd = ([sys.executable, str(CHILD), *mode, "--"] if mode else
           [sys.executable, "-m", "fem_crossdiff"]) + [str(a) for a in args]
    if ranks > 1:
        cmd = [str(MPIEXEC), "-n", str(ranks)] + cmd
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture
def serial_session(comm):
    if comm.size > 1:
        pytest.skip("subprocesses (serial and mpiexec -n 2) are launched from the serial run")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Undisturbed runs of the study (serial and 2 ranks): ``{ranks: folder}``."""
    from mpi4py import MPI

    if MPI.COMM_WORLD.size > 1:
        return {}
    base = tmp_path_factory.mktemp("reference")
    study = _study(base, "study.toml", formats=["csv"])
    out = {}
    for ranks in (1, 2):
        folder = base / f"np{ranks}"
        proc = _crossdiff(ranks, ["run", study, "--quiet", "--output", folder])
        assert proc.returncode == 0, proc.stderr
        out[ranks] = folder
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_folder(out: Path, ref: Path) -> None:
    """Every checkpoint is the undisturbed run's, the CSV is whole rows of it, no temporaries."""
    hidden = [str(p) for p in out.rglob(".*")]
    assert not hidden, hidden
    for p in sorted((out / "checkpoints").glob("*")):
        assert _sha(p) == _sha(ref / "checkpoints" / p.name), p
    csv = out / "diagnostics.csv"
    if csv.exists():
        text, full = csv.read_text(), (ref / "diagnostics.csv").read_text()
        assert full.startswith(text) and (not text or text.endswith("\n")), text[-200:]
        # the columns of the undisturbed run (rows compared as text: same code, same ranks)


#: Lines of MPICH's own (its report of an ``MPI_Abort``), not ours.
MPICH = ("Abort(", "[mpiexec@", "===", "=   ", "YOUR APPLICATION", "This typically",
         "Please see")


def _one_line(proc: subprocess.CompletedProcess) -> str:
    """The one line of the outcome: the error (stderr), or the summary of ``--quiet``."""
    text = proc.stderr + proc.stdout
    assert "Traceback" not in text and "\x1b" not in text, text
    assert "terminate called" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(MPICH)]
    assert len(lines) == 1, text
    return lines[0]


# --------------------------------------------------------------------------- file-size limit
# case id, [output] settings, limit (bytes), the file named, ranks
LIMITS = [
    ("vtx", {"formats": ["csv", "vtx"]}, 100_000, "rho.bp", 1),
    ("vtx-np2", {"formats": ["csv", "vtx"]}, 100_000, "rho.bp", 2),
    ("csv", {"formats": ["csv"], "checkpoint_every": 0}, 1500, "diagnostics.csv", 1),
    ("csv-np2", {"formats": ["csv"], "checkpoint_every": 0}, 1500, "diagnostics.csv", 2),
    ("checkpoint", {"formats": ["csv"]}, 10_000, "checkpoints/step_000002.npz", 1),
    ("checkpoint-np2", {"formats": ["csv"]}, 10_000, "checkpoints/step_000002.npz", 2),
    ("png", {"formats": ["csv", "png"]}, 200_000, "densities.png", 1),
    ("gif", {"formats": ["csv"], "animation": "gif", "animation_frames": 3}, 100_000,
     "animation.gif", 1),
    ("particles", {"formats": ["csv"], "checkpoint_every": 0,
                   "particles": {"N": 3000, "eps": 0.7}}, 60_000,
     "particles/positions_000000.npz", 1),
]


@pytest.mark.parametrize("case,output,limit,name,ranks", LIMITS, ids=[c[0] for c in LIMITS])
def test_file_size_limit_is_one_clean_failure(serial_session, reference, tmp_path, case,
                                              output, limit, name, ranks):
    """``EFBIG`` in each writer: exit 1, one line naming the file; earlier outputs intact."""
    study = _study(tmp_path, "study.toml", **output)
    out = tmp_path / "out"
    proc = _crossdiff(ranks, ["run", study, "--quiet", "--output", out],
                      mode=("rlimit", str(limit)))
    line = _one_line(proc)
    assert proc.returncode == 1, proc.stderr
    assert line.startswith(f"crossdiff: run failed: cannot write {out / name}: File too "
                           "large"), line
    assert "(errno 27)" in line and "unexpected" not in line, line
    _check_folder(out, reference[ranks])
    if case.startswith("checkpoint"):  # the first checkpoint did not fit: none, no torn file
        assert not list(out.glob("checkpoints/*")), list(out.glob("checkpoints/*"))


# --------------------------------------------------------------------------- a full tmpfs
@pytest.fixture
def tmpfs(tmp_path):
    """Mount a tmpfs of a given size in KiB (root only; skipped with the reason otherwise)."""
    mounted = []

    def mount(kib: int) -> Path:
        point = tmp_path / f"disk{uuid.uuid4().hex[:8]}"
        point.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs",
                               str(point)], capture_output=True, text=True)
        if proc.returncode != 0 or not shutil.which("umount"):
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'no umount'})")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        # an aborted job's ranks may still be closing their files: detach lazily then
        if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


LINE = re.compile(r"^crossdiff: run failed: cannot write (\S+): No space left on device")
SIZES = {1: (40, 80, 120, 160, 200, 240, 280, 320), 2: (60, 140, 220)}


@pytest.mark.parametrize("ranks", [1, 2], ids=["np1", "np2"])
def test_full_disk_is_one_clean_failure(serial_session, reference, tmpfs, ranks):
    """VTX, CSV and checkpoints on a small tmpfs of several sizes: exit 0, or 1 with one line.

    Before the space check, ADIOS2's exception escaped its destructor at most of these sizes
    (SIGABRT, exit 134) with its colour codes in the message.
    """
    codes = []
    for kib in SIZES[ranks]:
        disk = tmpfs(kib)
        study = _study(disk.parent, f"study{kib}.toml")
        out = disk / "out"
        proc = _crossdiff(ranks, ["run", study, "--quiet", "--output", out])
        line = _one_line(proc)
        codes.append(proc.returncode)
        assert proc.returncode in (0, 1), (kib, proc.stderr)
        if proc.returncode == 1:
            found = LINE.match(line)
            assert found and Path(found.group(1)).is_relative_to(out), (kib, line)
        _check_folder(out, reference[ranks])
    assert 1 in codes, codes  # the sizes do reach the full disk


@pytest.mark.parametrize("ranks", [1, 2], ids=["np1", "np2"])
def test_writer_failing_after_the_check_does_not_abort(serial_session, reference, tmpfs,
                                                       ranks):
    """The disk fills between the space check and the write: ADIOS2/HDF5 raise, no abort.

    The failed writer is disowned (its destructor would throw again and abort the process):
    exit 1 and one line naming the file. On 2 ranks the other rank may be inside ADIOS2's
    collective step: the failing rank then ends the job through ``MPI_Abort`` after the
    agreement's grace time (``docs/failsafe.md``), still with our one line and exit 1.
    """
    for kib in (40, 80, 160):
        disk = tmpfs(kib)
        study = _study(disk.parent, f"study{kib}.toml", formats=["csv", "vtx", "xdmf"])
        out = disk / "out"
        proc = _crossdiff(ranks, ["run", study, "--quiet", "--output", out],
                          mode=("nocheck", "-"))
        assert proc.returncode == 1, (kib, proc.returncode, proc.stderr)
        line = _one_line(proc)
        assert line.startswith("crossdiff: run failed") and f"cannot write {out}" in line, line
        for p in sorted((out / "checkpoints").glob("*")):
            assert _sha(p) == _sha(reference[ranks] / "checkpoints" / p.name), p
