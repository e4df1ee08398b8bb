"""The stall watchdog: a stopped rank ends the job with one line instead of hanging it forever.

The job-level test launches ``crossdiff run`` under ``mpiexec -n 2`` as a subprocess (from the
serial session only), stops rank 1 with ``SIGSTOP`` once the run is well under way, and checks
that the job ends, with one line naming ``resources.stall_timeout``, MPICH's exit code for a
killed rank and the checkpoints written before the stop untouched. The timeout is far above a
step's time on a loaded machine, and the bound on the job's end far above the timeout, so the
verdict does not depend on timing.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fem_crossdiff.config import ConfigError, parse_config, to_toml
from fem_crossdiff.watchdog import StallWatchdog

BIN = Path(sys.executable).parent
MPIEXEC = BIN / "mpiexec"
KEY = "resources.stall_timeout"

STUDY = {
    "model": {"a": [1.0, 2.0], "b": [1.0, 0.5], "m": 2.0, "sigma": 1e-3},
    "geometry": {"builder": "disk", "radius": 1.0, "h": 0.3},
    "initial": [{"profile": "gaussian", "center": [0.0, 0.0], "width": 0.3, "height": 1.0},
                {"profile": "uniform", "value": 0.2}],
    "time": {"T": 0.004, "dt": 1e-3},
    "output": {"formats": ["csv"], "progress": False, "checkpoint_every": 2},
}


def _study(**sections) -> dict:
    doc = {k: (dict(v) if isinstance(v, dict) else [dict(i) for i in v])
           for k, v in STUDY.items()}
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    return doc


def _serial_only(comm):
    if comm.size > 1:
        pytest.skip("subprocesses (mpiexec -n 2) are launched from the serial run")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "MPI", "HYDRA"))}
    env.pop("CI", None)
    env.pop("CROSSDIFF_TRACEBACK", None)
    return env


def _lines(text: str) -> list[str]:
    """Our messages: MPICH's and hydra's own lines left out."""
    skip = ("Abort(", "[mpiexec@", "===", "=   ", "YOUR APPLICATION", "This typically",
            "Please see")
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(skip)]


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _checksums(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.glob("step_*.npz"))}


# --------------------------------------------------------------------------- the key
@pytest.mark.parametrize("value", [-1, 0.5, 2e7, float("inf"), float("nan"), "600", True])
def test_bad_stall_timeout_is_refused_naming_the_key(value):
    with pytest.raises(ConfigError) as err:
        parse_config(_study(output={"folder": "out"}, resources={"stall_timeout": value}),
                     check_files=False)
    assert err.value.key == KEY
    assert "0 (off)" in err.value.allowed and "[1, 1e+07]" in err.value.allowed


@pytest.mark.parametrize("value", [0, 1, 600, 1e7])
def test_stall_timeout_range_is_accepted(value):
    cfg = parse_config(_study(output={"folder": "out"}, resources={"stall_timeout": value}),
                       check_files=False)
    assert cfg.resources.stall_timeout == pytest.approx(float(value))


# --------------------------------------------------------------------------- the helper
_VICTIM = """
import sys, time
from fem_crossdiff.watchdog import StallWatchdog
w = StallWatchdog(float(sys.argv[1]))
w.start()
print(w._proc.pid, flush=True)
if sys.argv[2] == "beat":
    t0 = time.monotonic()
    while time.monotonic() - t0 < 4 * w.timeout:
        w.beat()
        time.sleep(0.02)
    w.close()
    print("closed", flush=True)
else:
    time.sleep(600)
"""


def test_no_heartbeat_kills_the_process_with_one_line(comm):
    """A process that stops beating is killed within the timeout, after one line."""
    _serial_only(comm)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _VICTIM, "2", "stall"], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert time.monotonic() - t0 < 100.0  # not the victim's own 600 s sleep
    lines = _lines(proc.stderr)
    assert len(lines) == 1 and "run stalled on rank 0" in lines[0], proc.stderr
    assert f"{KEY} = 2" in lines[0] and "Traceback" not in proc.stderr
    helper = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 30.0
    while _alive(helper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(helper)  # the helper does not outlive its rank


def test_beating_process_is_never_killed_and_its_helper_ends(comm):
    """Heartbeats far more often than the timeout: no line, exit 0, the helper gone."""
    _serial_only(comm)
    proc = subprocess.run([sys.executable, "-c", _VICTIM, "5", "beat"], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[1] == "closed" and not _lines(proc.stderr), proc.stderr
    assert not _alive(int(proc.stdout.split()[0]))


def test_watchdog_off_starts_nothing():
    w = StallWatchdog(0)
    w.start()
    assert not w.active
    w.beat()
    w.close()


def test_run_with_watchdog_finishes_and_leaves_no_process(comm, mpi_tmp_path):
    """A normal run with the watchdog on (as ``crossdiff run`` has it): no helper left after."""
    from fem_crossdiff.study import run_study

    folder = mpi_tmp_path / "out"
    cfg = parse_config(_study(output={"folder": str(folder)}, resources={"stall_timeout": 300}),
                       check_files=False)
    before = set(_children(os.getpid()))
    result = run_study(cfg, comm, quiet=True)
    assert result.rows[-1]["t"] == pytest.approx(0.004)
    assert set(_children(os.getpid())) - before == set()


# --------------------------------------------------------------------------- the job
def test_sigstop_of_one_rank_ends_the_job_with_one_line(comm, tmp_path):
    """``mpiexec -n 2``, rank 1 stopped: the job ends (exit 9), one line, checkpoints intact."""
    _serial_only(comm)
    out = tmp_path / "out"
    study = tmp_path / "long.toml"
    timeout = 20  # a step takes well under a second, a few seconds on a loaded machine
    study.write_text(to_toml(_study(time={"T": 100.0}, output={"folder": str(out)},
                                    resources={"stall_timeout": timeout})))
    cmd = [str(MPIEXEC), "-n", "2", str(BIN / "crossdiff"), "run", str(study), "--quiet"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        first = out / "checkpoints" / "step_000004.npz"
        deadline = time.monotonic() + 240
        while not first.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert first.exists() and proc.poll() is None, proc.poll()
        ranks = [r for proxy in _children(proc.pid) for r in _children(proxy)]
        env = {}
        for r in ranks:
            with open(f"/proc/{r}/environ", "rb") as f:
                env[r] = f.read()
        (rank1,) = [r for r in ranks if b"PMI_RANK=1\0" in env[r]]
        helpers = [h for r in ranks for h in _children(r)]
        assert len(helpers) == 2  # one watchdog helper per rank
        os.kill(rank1, signal.SIGSTOP)
        t0 = time.monotonic()
        before = _checksums(out / "checkpoints")  # every write has ended: rank 1 is stopped
        _, err = proc.communicate(timeout=timeout + 200)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert elapsed < timeout + 150, elapsed
    assert proc.returncode == 9, err  # hydra: a rank killed by SIGKILL
    lines = _lines(err)
    assert len(lines) == 1 and "run stalled on rank 0" in lines[0], err
    assert f"{KEY} = {timeout}" in lines[0] and "Traceback" not in err
    after = _checksums(out / "checkpoints")
    assert all(after.get(k) == v for k, v in before.items())
    for pid in [*ranks, *helpers]:  # nothing of the job is left, the stopped rank included
        deadline = time.monotonic() + 30.0
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), pid


def test_restart_may_change_the_resources_limits(comm, mpi_tmp_path, capsys):
    """``[resources]`` changes no result: a restart with another stall timeout continues."""
    from fem_crossdiff.cli import main

    study = mpi_tmp_path / "s.toml"
    out = mpi_tmp_path / "out"
    if comm.rank == 0:
        study.write_text(to_toml(_study(output={"folder": str(out)})))
    comm.barrier()
    assert main(["run", str(study), "--quiet"], comm=comm) == 0
    if comm.rank == 0:
        study.write_text(to_toml(_study(time={"T": 0.006}, output={"folder": str(out)},
                                        resources={"stall_timeout": 300,
                                                   "disk_limit_gb": 10.0})))
    comm.barrier()
    capsys.readouterr()
    code = main(["run", str(study), "--quiet", "--restart",
                 str(out / "checkpoints" / "step_000004.npz")], comm=comm)
    err = comm.bcast(capsys.readouterr().err if comm.rank == 0 else None, root=0)
    assert code == 0, err
