"""Failing safely: errors on one rank end the job, study files run no code, bad input is exit 2.

The one-rank failures run as ``mpiexec -n 2`` (and serial) subprocesses of
``tests/_failsafe_child.py``, launched from the serial test session only, each timed from the
moment of the failure to the end of the job. The in-process tests run serially and under
``mpiexec -n 2``.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fem_crossdiff import failsafe
from fem_crossdiff.cli import main
from fem_crossdiff.config import load_config, to_toml

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "_failsafe_child.py"
BIN = Path(sys.executable).parent
MPIEXEC = BIN / "mpiexec"

SMALL = {
    "model": {"a": [1.0, 2.0], "b": [1.0, 0.5], "m": 2.0, "sigma": 1e-3},
    "geometry": {"builder": "disk", "radius": 1.0, "h": 0.3},
    "initial": [{"profile": "gaussian", "center": [0.0, 0.0], "width": 0.3, "height": 1.0},
                {"profile": "uniform", "value": 0.2}],
    "time": {"T": 0.004, "dt": 1e-3},
    "output": {"formats": ["csv"], "progress": False, "checkpoint_every": 2},
}


def _doc(**sections) -> dict:
    doc = {k: (dict(v) if isinstance(v, dict) else [dict(i) for i in v]) for k, v in SMALL.items()}
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(doc.get(name), dict) and name != "geometry":
            doc[name].update(values)
        else:
            doc[name] = values
    return doc


def _write(comm, path: Path, text: str | bytes) -> Path:
    if comm.rank == 0:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    comm.barrier()
    return path


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "MPI", "HYDRA"))}
    env.pop("CI", None)
    return env


def _serial_only(comm):
    if comm.size > 1:
        pytest.skip("subprocesses (serial and mpiexec -n 2) are launched from the serial run")


def _lines(text: str) -> list[str]:
    """Our messages: MPICH's and hydra's own lines left out."""
    skip = ("Abort(", "[mpiexec@", "===", "=   ", "YOUR APPLICATION", "This typically",
            "Please see")
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(skip)]


# --------------------------------------------------------------------------- one-rank failures
SLOW = pytest.mark.slow  # each subprocess imports DOLFINx: 5-12 s under load
CASES = [  # case, ranks, expected exit code, text of the one message
    ("step", 2, 1, "rank 1: Boom: step failed on one rank"),
    pytest.param("step", 1, 3, "caught on every rank: step failed", marks=SLOW),
    pytest.param("observer", 2, 3, "caught on every rank: output callback failed on one rank "
                 "(from rank 1)", marks=SLOW),
    pytest.param("stuck", 2, 1, "rank 1: Boom: output callback failed", marks=SLOW),
    pytest.param("load", 2, 1, "run failed: Boom: cannot parse on rank 0", marks=SLOW),
    ("csv", 2, 1, "run failed on rank 1: OSError: [Errno 28] No space left on device"),
    pytest.param("csv", 1, 1, "run failed: OSError: [Errno 28] No space left on device",
                 marks=SLOW),
]


def _case_id(c) -> str:
    values = c.values if hasattr(c, "values") else c
    return f"{values[0]}-np{values[1]}"


@pytest.mark.parametrize("case,ranks,code,text", CASES, ids=[_case_id(c) for c in CASES])
def test_failure_on_one_rank_ends_the_job(case, ranks, code, text, comm, tmp_path):
    """The job ends soon after the failure with one message and a non-zero exit code.

    A job left hanging runs into the subprocess timeout; one that ends but takes more than 20
    grace periods (``failsafe.GRACE``) from the failure did not abort as designed. The bound
    is that loose so that a loaded machine cannot fail the test.
    """
    _serial_only(comm)
    study = tmp_path / "small.toml"
    study.write_text(to_toml(_doc()))
    cmd = [sys.executable, str(CHILD), case, str(tmp_path), str(study)]
    if ranks > 1:
        cmd = [str(MPIEXEC), "-n", str(ranks)] + cmd
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    end = time.time()
    marks = [float(p.read_text()) for p in tmp_path.glob("t_fail_*")]
    assert marks, proc.stderr
    lines = _lines(proc.stderr)
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and text in lines[0], proc.stderr
    assert end - min(marks) < 20 * failsafe.GRACE, (end - min(marks), proc.stderr)


def _checksums(folder: Path, hidden: bool = True) -> dict:
    """SHA-256 of every file.

    ``hidden=False`` leaves out the temporary ``.name.tmp`` files of atomic writes under way.
    """
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and (hidden or not p.name.startswith("."))}


@pytest.mark.parametrize("ranks,sig", [(2, signal.SIGINT),
                                       pytest.param(1, signal.SIGTERM, marks=SLOW)],
                         ids=["np2-SIGINT", "np1-SIGTERM"])
def test_signal_is_an_interrupt_with_checkpoints_intact(ranks, sig, comm, tmp_path):
    """SIGINT/SIGTERM: exit 130/143, one message, the checkpoints written before it unchanged."""
    _serial_only(comm)
    out = tmp_path / "out"
    study = tmp_path / "long.toml"
    study.write_text(to_toml(_doc(time={"T": 100.0, "dt": 1e-3},
                                  output={"folder": str(out)})))
    cmd = [str(BIN / "crossdiff"), "run", str(study), "--quiet"]
    if ranks > 1:
        cmd = [str(MPIEXEC), "-n", str(ranks)] + cmd
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        first = out / "checkpoints" / "step_000004.npz"
        deadline = time.time() + 90
        while not first.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert first.exists()
        before = _checksums(out / "checkpoints", hidden=False)  # a write may be under way
        proc.send_signal(sig)
        # the run stops after the current step: without the signal it would go on for minutes
        # (1e5 steps), so the timeout tells a stop from a run that ignored the signal
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, err
    lines = [ln for ln in _lines(err) if "received" not in ln]
    assert len(lines) == 1 and f"interrupted by {signal.Signals(sig).name}" in lines[0], err
    after = _checksums(out / "checkpoints")
    assert not [k for k in after if k.startswith(".")]  # no half-written file left
    assert all(after[k] == v for k, v in before.items())  # nothing written before was touched
    last = sorted((out / "checkpoints").glob("step_*.npz"))[-1]
    with np.load(last) as data:  # the newest one is complete
        assert len(data.files) > 0


# --------------------------------------------------------------------------- in-process
def test_agreement_raises_the_same_error_on_every_rank(comm):
    """An error on the last rank only is raised on every rank, naming that rank."""
    agreement = failsafe.Agreement(comm)
    try:
        error = ValueError("bad on the last rank") if comm.rank == comm.size - 1 else None
        with pytest.raises(ValueError, match="bad on the last rank") as info:
            agreement.check(error)
        if comm.rank != comm.size - 1:
            assert info.value.failed_rank == comm.size - 1
        agreement.check(None)  # and nothing when no rank failed
    finally:
        agreement.free()


def test_unpicklable_error_travels_as_text(comm):
    class Local(Exception):  # defined here: cannot be unpickled elsewhere
        def __reduce__(self):
            raise TypeError("no pickling")

    copy = failsafe.portable(Local("lost type"), 1)
    assert isinstance(copy, failsafe.RemoteError) and "Local on rank 1: lost type" in str(copy)


@pytest.fixture(scope="module")
def small_solver():
    from fem_crossdiff.compat import MPI, mesh
    from fem_crossdiff.params import ModelParams
    from fem_crossdiff.solver import CrossDiffusionSolver

    msh = mesh.create_unit_interval(MPI.COMM_WORLD, 40)
    return CrossDiffusionSolver(msh, ModelParams(a=(1.0,), b=(1.0,), m=2.0, sigma=1e-2))


def test_driver_agrees_on_an_observer_error(small_solver, comm):
    """An observer failing on one rank: the same error on every rank, no hang."""
    from fem_crossdiff import driver
    from fem_crossdiff.observers import CallbackObserver
    from fem_crossdiff.params import TimeParams

    s = small_solver
    s.set_initial([lambda x: 1.0 + 0.5 * x[0]])
    seen = []

    def callback(solver, row):
        seen.append(row["step"])
        if row["step"] == 2 and comm.rank == comm.size - 1:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        driver.run(s, TimeParams(T=0.05, dt=0.005), [CallbackObserver(callback)],
                   progress=False)
    assert seen == [1, 2]  # every rank stopped after the same step
    assert abs(s.t - 0.01) < 1e-12


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler during the test, whatever the process inherited.

    A job started in the background by a non-interactive shell (or under ``nohup``) inherits
    SIGINT ignored, and gmsh's Python API initialised as interruptible leaves SIG_DFL behind:
    the first would swallow the test's signal, the second would kill the test session.
    """
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@pytest.mark.parametrize("handlers", ["library", "cli"])
def test_ctrl_c_inside_newton_is_an_interrupt_not_a_rejection(handlers, small_solver, comm,
                                                               python_sigint):
    """SIGINT during the SNES residual: Interrupted, never a rejected step.

    ``library``: Python's default handler (a script calling the driver): the step under way
    is not taken. ``cli``: :func:`failsafe.interrupt_handlers` (``crossdiff run``): the step
    is finished and the run stops after it. ``signal.raise_signal`` delivers the signal to
    this thread and runs the Python handler before it returns, inside the residual callback
    of the Newton solve, so the test does not depend on when a signal reaches the process.
    """
    from contextlib import nullcontext

    from fem_crossdiff import driver
    from fem_crossdiff.params import TimeParams

    if comm.size > 1:
        pytest.skip("a signal to one process: serial")
    s = small_solver
    s.set_initial([lambda x: 1.0 + 0.5 * x[0]])
    real, calls, rows, taken = s.model.residual, [0], [], []

    def residual(*args):
        calls[0] += 1
        if calls[0] == 5:  # inside a Newton iteration past the first step
            taken.append(len(rows))
            signal.raise_signal(signal.SIGINT)
        return real(*args)

    s.model.residual = residual
    context = failsafe.interrupt_handlers(comm) if handlers == "cli" else nullcontext()
    try:
        with context, pytest.raises(failsafe.Interrupted) as info:
            driver.run(s, TimeParams(T=1.0, dt=0.01), [type("R", (), {
                "step": lambda self, solver, row: rows.append(row)})()], progress=False)
    finally:
        del s.model.residual
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    assert failsafe.interrupt_pending() == 0
    assert info.value.signum == signal.SIGINT
    assert failsafe.exit_code(info.value) == 130
    assert taken and taken[0] >= 1  # the signal came inside the solve of a later step
    assert all(r["rejected"] == 0 for r in rows)  # never taken for a failed step
    # the step under way: dropped by the default handler, finished under the CLI's handlers
    assert len(rows) == taken[0] + (handlers == "cli")
    assert abs(s.t - rows[-1]["t"]) < 1e-15
    assert np.array_equal(s.rho.x.array, s.history[0].x.array)  # the state of the last row


def test_msh_check_keeps_the_sigint_handler(comm, mpi_tmp_path, python_sigint):
    """Checking a ``.msh`` study (gmsh in-process, outside ``main``) leaves Ctrl-C to Python."""
    from fem_crossdiff.config import ConfigError
    from fem_crossdiff.study import prepare

    msh = mpi_tmp_path / "nogroups.msh"
    if comm.rank == 0:
        _msh(msh, "nogroups")
    path = _write(comm, mpi_tmp_path / "msh.toml", to_toml(_doc(geometry={"msh": str(msh)})))
    with pytest.raises(ConfigError, match="no physical group"):  # gmsh did read the file
        prepare(load_config(path), comm)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --------------------------------------------------------------------------- bad input: exit 2
def _check(comm, capsys, path, *extra) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(["check", str(path), *extra], comm=comm)
    err = capsys.readouterr().err
    return code, comm.bcast(err.strip().splitlines() if comm.rank == 0 else None, root=0)


PETSC_REFUSED = [  # options that would run code or write files, and bad values
    ({"snes_type": "python"}, "solver.petsc.snes_type", "newtonls"),
    ({"snes_python_type": "os.system"}, "solver.petsc.snes_python_type", "not an allowed"),
    ({"pc_python_type": "builtins.exec"}, "solver.petsc.pc_python_type", "not an allowed"),
    ({"ksp_view": "ascii:/tmp/owned.txt"}, "solver.petsc.ksp_view", "not an allowed"),
    ({"ksp_monitor": "ascii:/tmp/owned.txt"}, "solver.petsc.ksp_monitor", "true or false"),
    ({"options_file": "/etc/passwd"}, "solver.petsc.options_file", "not an allowed"),
    ({"mat_mumps_icntl_1": 6}, "solver.petsc.mat_mumps_icntl_1", "not an allowed"),
    ({"ksp_type": "nosuch"}, "solver.petsc.ksp_type", "gmres"),
    ({"ksp_rtol": -1.0}, "solver.petsc.ksp_rtol", ">= 0"),
    ({"snes_max_it": 1.5}, "solver.petsc.snes_max_it", "integer"),
    ({"pc_type": "shell"}, "solver.petsc.pc_type", "gamg"),
]


@pytest.mark.parametrize("petsc,key,hint", PETSC_REFUSED, ids=[p[1] for p in PETSC_REFUSED])
def test_petsc_options_allow_list(petsc, key, hint, comm, mpi_tmp_path, capsys):
    path = _write(comm, mpi_tmp_path / "petsc.toml", to_toml(_doc(solver={"petsc": petsc})))
    code, lines = _check(comm, capsys, path, "--no-mesh")
    assert code == 2 and len(lines) == 1 and f"{key} = " in lines[0] and hint in lines[0], lines


def test_allowed_petsc_options_reach_the_solver(comm, mpi_tmp_path):
    from fem_crossdiff.study import prepare

    doc = _doc(solver={"petsc": {"ksp_type": "fgmres", "snes_rtol": 1e-9,
                                 "snes_ksp_ew": False, "ksp_monitor": False}})
    path = _write(comm, mpi_tmp_path / "ok.toml", to_toml(doc))
    _, s = prepare(load_config(path), comm)
    assert s.snes.getKSP().getType() == "fgmres"
    assert s.snes.getTolerances()[0] == 1e-9
    assert not s.snes.getKSP().getMonitor()


def test_parallel_petsc_settings_checked_on_the_job(comm, mpi_tmp_path, capsys):
    doc = _doc(solver={"petsc": {"pc_type": "ilu"}})
    path = _write(comm, mpi_tmp_path / "ilu.toml", to_toml(doc))
    code, lines = _check(comm, capsys, path)
    if comm.size == 1:
        assert code == 0
    else:
        assert code == 2 and "solver.petsc.pc_type = 'ilu'" in lines[0] and "bjacobi" in lines[0]


def _bad_files(tmp: Path) -> list[tuple[str, bytes | str, str, str]]:
    """(id, file content, key in the message, hint)."""
    base = to_toml(_doc())
    deep = "x = " + "[" * 2000 + "]" * 2000 + "\n"
    return [
        ("not-utf8", base.encode() + b'title = "\xff\xfe"\n', "<file>", "not UTF-8"),
        ("deep-nesting", deep, "<file>", "deeper than"),
        ("int-beyond-float", base.replace("radius = 1.0", "radius = " + "9" * 400),
         "geometry.radius", "finite"),
        ("int-beyond-int64", base.replace("checkpoint_every = 2", "checkpoint_every = "
                                          + "9" * 30), "output.checkpoint_every", "<="),
        ("huge-int-in-expr", to_toml(_doc(initial=[
            {"profile": "expression", "expr": "1 + " + "9" * 400}, SMALL["initial"][1]])),
         "initial[0].expr", "floating-point range"),
        ("nul-in-msh", to_toml(_doc(geometry={"msh": "a\0b.msh"})), "geometry.msh", "NUL"),
        ("unknown-user", to_toml(_doc(geometry={"msh": "~nosuchuser/m.msh"})),
         "geometry.msh", "unknown user"),
        ("msh-is-folder", to_toml(_doc(geometry={"msh": str(tmp)})), "geometry.msh",
         "is a folder"),
        ("output-is-file", to_toml(_doc(output={"folder": str(tmp / "a_file")})),
         "output.folder", "is a file"),
        ("output-under-file", to_toml(_doc(output={"folder": str(tmp / "a_file" / "x")})),
         "output.folder", "lies under"),
        ("output-not-writable", to_toml(_doc(output={"folder": "/proc/crossdiff/x"})),
         "output.folder", "cannot be written"),
        ("output-unknown-user", to_toml(_doc(output={"folder": "~nosuchuser/x"})),
         "output.folder", "unknown user"),
        ("short-broken", to_toml(_doc(short={"time": {"T": -1.0}})), "short.time.T", ">= 0"),
        ("short-unknown", to_toml(_doc(short={"time": {"TT": 1.0}})), "short.time.TT",
         "unknown key"),
        ("many-particles", to_toml(_doc(particles={"N": 10**9, "eps": 0.7})), "particles.N",
         "GB"),
        ("tiny-h", to_toml(_doc(geometry={"builder": "disk", "radius": 1.0, "h": 1e-5})),
         "geometry.h", "more than the limit"),
        ("memory-limit", to_toml(_doc(resources={"memory_limit_gb": 1e-3})), "geometry.h",
         "resources.memory_limit_gb"),
        # found on the mesh, by check as by run
        ("negative-data", to_toml(_doc(initial=[SMALL["initial"][0], {
            "profile": "expression", "expr": "x - 0.5"}])), "initial[1]", "negative"),
        ("zero-mass", to_toml(_doc(initial=[SMALL["initial"][0], {
            "profile": "disk", "center": [5.0, 5.0], "radius": 0.1, "value": 1.0}])),
         "initial[1]", "zero mass"),
        ("nonlocal-eps-small", to_toml(_doc(model={"type": "nonlocal", "eps": 0.05})),
         "model.eps", ">= 2 h_max"),
        ("particles-eps-small", to_toml(_doc(particles={"N": 100, "eps": 0.2})),
         "particles.eps", "2 h_max"),
    ]


def test_bad_inputs_are_one_line_exit_2(comm, mpi_tmp_path, capsys, monkeypatch):
    """Every class of bad input: exit 2, one line naming the key, the value and the rule."""
    from fem_crossdiff import study

    if comm.rank == 0:
        (mpi_tmp_path / "a_file").write_text("not a folder")
    comm.barrier()
    built = []
    build = study._build_geometry

    def no_mesh(cfg, comm):  # the oversized cases must be refused before any mesh exists
        built.append(cfg)
        raise RuntimeError("a mesh was built")

    failures = []
    for name, text, key, hint in _bad_files(mpi_tmp_path):
        path = _write(comm, mpi_tmp_path / f"{name}.toml", text)
        heavy = name in ("many-particles", "tiny-h")  # particles come after the mesh
        monkeypatch.setattr(study, "_build_geometry", no_mesh if heavy else build)
        built.clear()
        code, lines = _check(comm, capsys, path)
        ok = (code == 2 and len(lines) == 1 and lines[0].startswith("crossdiff: config error")
              and f"{key} = " in lines[0] and hint in lines[0] and not built)
        if not ok:
            failures.append((name, code, lines))
    assert not failures, "\n".join(map(str, failures))


def test_long_expression_chain_checks_and_runs(comm, mpi_tmp_path, capsys):
    """A 1200-deep legal chain (a RecursionError before) is checked and run to the end."""
    chain = "-" * 1200 + "(" + "+".join(["0.1"] * 150) + " + 0*x) + 25"
    doc = _doc(initial=[SMALL["initial"][0], {"profile": "expression", "expr": chain}],
               output={"folder": str(mpi_tmp_path / "chain"), "checkpoint_every": 0})
    path = _write(comm, mpi_tmp_path / "chain.toml", to_toml(doc))
    assert _check(comm, capsys, path)[0] == 0
    from fem_crossdiff.study import run_study

    res = run_study(load_config(path), comm, quiet=True)
    assert abs(res.rows[-1]["t"] - 0.004) < 1e-12
    assert abs(res.rows[0]["min_2"] - 40.0) < 1e-9 and abs(res.rows[0]["max_2"] - 40.0) < 1e-9


def test_config_path_problems(comm, mpi_tmp_path, capsys):
    for path, hint in ((mpi_tmp_path, "is a folder"), (mpi_tmp_path / "none.toml", "not found")):
        code, lines = _check(comm, capsys, path)
        assert code == 2 and len(lines) == 1 and hint in lines[0], lines


def _msh(path: Path, kind: str) -> None:
    import gmsh

    gmsh.initialize(["-noenv"], readConfigFiles=False, interruptible=False)  # SIGINT kept
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.model.add(kind)
        if kind == "mixed":
            a = gmsh.model.occ.addRectangle(0, 0, 0, 1, 1)
            b = gmsh.model.occ.addRectangle(1, 0, 0, 1, 1)
            gmsh.model.occ.fragment([(2, a)], [(2, b)])
            gmsh.model.occ.synchronize()
            gmsh.model.mesh.setRecombine(2, b)
            gmsh.model.addPhysicalGroup(2, [a, b], 1)
        else:
            gmsh.model.occ.addRectangle(0, 0, 0, 1, 1)
            gmsh.model.occ.synchronize()
        gmsh.option.setNumber("Mesh.MeshSizeMax", 0.3)
        gmsh.model.mesh.generate(2)
        gmsh.write(str(path))
    finally:
        gmsh.finalize()


@pytest.mark.parametrize("kind,hint", [("nogroups", "no physical group"),
                                       ("mixed", "mixes cell types")])
def test_bad_msh_files(kind, hint, comm, mpi_tmp_path, capsys):
    msh = mpi_tmp_path / f"{kind}.msh"
    if comm.rank == 0:
        _msh(msh, kind)
    doc = _doc(geometry={"msh": str(msh)})
    path = _write(comm, mpi_tmp_path / f"{kind}.toml", to_toml(doc))
    for command in ("check", "run"):
        capsys.readouterr()
        code = main([command, str(path), "--output", str(mpi_tmp_path / "o")] if command == "run"
                    else [command, str(path)], comm=comm)
        err = capsys.readouterr().err
        lines = comm.bcast(err.strip().splitlines() if comm.rank == 0 else None, root=0)
        assert code == 2 and len(lines) == 1 and "geometry.msh = " in lines[0], lines
        assert hint in lines[0]


def test_failing_run_leaves_existing_outputs_unchanged(comm, mpi_tmp_path, capsys):
    """A refused run writes nothing into a folder holding another run's outputs.

    Refused on the mesh (negative data), by the allow-list and by the memory guard.
    """
    out = mpi_tmp_path / "kept"
    good = _write(comm, mpi_tmp_path / "good.toml", to_toml(_doc(output={"folder": str(out)})))
    assert main(["run", str(good), "--quiet"], comm=comm) == 0
    before = comm.bcast(_checksums(out) if comm.rank == 0 else None, root=0)
    assert "config.toml" in before and any(k.startswith("checkpoints/") for k in before)
    bad = [_doc(initial=[SMALL["initial"][0], {"profile": "expression", "expr": "x - 0.5"}]),
           _doc(solver={"petsc": {"snes_type": "python"}}),
           _doc(particles={"N": 10**9, "eps": 0.7})]
    for k, doc in enumerate(bad):
        doc["output"]["folder"] = str(out)
        path = _write(comm, mpi_tmp_path / f"bad{k}.toml", to_toml(doc))
        assert main(["run", str(path), "--quiet"], comm=comm) == 2
        after = comm.bcast(_checksums(out) if comm.rank == 0 else None, root=0)
        assert after == before
