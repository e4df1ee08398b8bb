"""The ``crossdiff`` command line: example studies run, broken studies are exit code 2."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from fem_crossdiff.cli import main
from fem_crossdiff.config import ConfigError, SafeExpression, load_config, parse_config, to_toml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "demos").glob("*.toml"))


def _nonlocal_available() -> bool:
    try:
        import fem_crossdiff.models.nonlocal_system  # noqa: F401
    except ImportError:
        return False
    return True


def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"segregation_disk.toml", "annulus.toml", "obstacles.toml", "lshape.toml",
            "ball3d.toml", "nonlocal_disk.toml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_check_round_trip(path, comm, capsys, monkeypatch):
    """``check`` prints TOML that validates again to the same resolved configuration."""
    monkeypatch.delenv("CI", raising=False)  # CI=1 would force short mode
    for short in (False, True):
        capsys.readouterr()
        code = main(["check", str(path)] + (["--short"] if short else []), comm=comm)
        out = capsys.readouterr().out
        cfg = load_config(path, short=short)
        same = None
        if comm.rank == 0:
            again = parse_config(tomllib.loads(out), source=str(path), short=False)
            same = again.to_dict() == cfg.to_dict()
        assert code == 0 and comm.bcast(same, root=0)
    full, short_cfg = load_config(path), load_config(path, short=True)
    assert short_cfg.time.T < full.time.T
    assert dict(short_cfg.geometry.params)["h"] > dict(full.geometry.params)["h"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_short(path, comm, mpi_tmp_path, capsys):
    cfg = load_config(path, short=True)
    if cfg.model.type == "nonlocal" and not _nonlocal_available():
        pytest.skip("fem_crossdiff.models.nonlocal_system is not available yet")
    out = mpi_tmp_path / path.stem
    assert main(["run", str(path), "--short", "--quiet", "--output", str(out)], comm=comm) == 0
    said = capsys.readouterr().out.strip().splitlines()
    # --quiet: one line on rank 0, saying where the output went
    if comm.rank == 0:
        assert len(said) == 1 and said[0].endswith(f"; output in {out}"), said
    else:
        assert said == []
    summary = None
    if comm.rank == 0:
        with open(out / "diagnostics.csv", newline="") as f:
            rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
        n = cfg.model.n
        grows = cfg.family_params is not None and cfg.family_params.has_growth
        # with growth laws the masses are not conserved: species 1 must grow (by > 0.1% in
        # the tumour study), else the drift below fails
        drift = (0.0 if rows[-1]["mass_1"] > 1.001 * rows[0]["mass_1"] else 1.0) if grows else (
            max(abs(rows[-1][f"mass_{k}"] / rows[0][f"mass_{k}"] - 1) for k in range(1, n + 1)))
        neg = min(r[f"min_{k}"] / r[f"max_{k}"] for r in rows for k in range(1, n + 1))
        files = {p.name for p in out.iterdir()}
        summary = (len(rows), rows[-1]["t"], drift, neg, files)
    nrows, t_end, drift, neg, files = comm.bcast(summary, root=0)
    assert nrows >= 3 and abs(t_end - cfg.time.T) <= 1e-12
    assert drift < 1e-10
    assert neg > -1e-10
    assert {"config.toml", "diagnostics.csv", "diagnostics.png"} <= files
    if "vtx" in cfg.output.formats:
        assert "rho.bp" in files
    if "xdmf" in cfg.output.formats:
        assert "rho.xdmf" in files
    assert "densities.png" in files  # any dimension (3D: mid-plane slices)
    assert ("densities_slices.png" in files) == (cfg.geometry.gdim == 3)
    assert ("checkpoints" in files) == (cfg.output.checkpoint_every > 0)


BASE = {
    "model": {"a": [1.0, 2.0], "b": [1.0, 0.5], "m": 2.0, "sigma": 1e-3},
    "geometry": {"builder": "disk", "radius": 1.0, "h": 0.3},
    "initial": [{"profile": "gaussian", "center": [0.0, 0.0], "width": 0.3, "height": 1.0},
                {"profile": "uniform", "value": 0.2}],
    "time": {"T": 0.002, "dt": 1e-3},
    "output": {"formats": ["csv"], "progress": False},
}


def _mutate(changes: dict) -> dict:
    doc = {k: (dict(v) if isinstance(v, dict) else [dict(i) for i in v])
           for k, v in BASE.items()}
    for dotted, value in changes.items():
        parts = dotted.split(".")
        target = doc
        for p in parts[:-1]:
            target = target[int(p)] if p.isdigit() else target.setdefault(p, {})
        last = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
        if value is None:
            target.pop(last)
        else:
            target[last] = value
    return doc


BROKEN = [
    ({"model.m": "two"}, "model.m", "must be a number"),
    ({"model.sigma": -1.0}, "model.sigma", ">= 0"),
    ({"model.a": [1.0, -2.0]}, "model.a[1]", "> 0"),
    ({"model.b": [1.0]}, "model.b", "one mobility per species"),
    ({"model.typo": 1}, "model.typo", "unknown key"),
    ({"extra": {"x": 1}}, "extra", "unknown key"),
    ({"model.type": "nonlocal"}, "model.eps", "required"),
    ({"model.eps": 0.1}, "model.eps", "nonlocal"),
    ({"model.type": "nonlocal", "model.eps": 0.1, "model.kernel": "gauss"}, "model.kernel",
     "bump"),
    ({"model.type": "nonlocal", "model.eps": -0.1}, "model.eps", "> 0"),
    ({"model.type": "nonlocal", "model.eps": 0.1, "model.coupling": "x"}, "model.coupling",
     "implicit"),
    ({"time.dt": -1e-3}, "time.dt", "> 0"),
    ({"time.T": None}, "time.T", "missing"),
    ({"time.dt_min": 1.0}, "time.dt_min", "dt_min"),
    ({"time.method": "rk4"}, "time.method", "bdf2"),
    ({"time.adaptive": 1}, "time.adaptive", "true or false"),
    ({"geometry.h": -0.1}, "geometry.h", "> 0"),
    ({"geometry.builder": "torus"}, "geometry.builder", "l_shape"),
    ({"geometry.radius_typo": 1.0}, "geometry.radius_typo", "unknown parameter"),
    ({"geometry": {"msh": "no_such_mesh.msh"}}, "geometry.msh", "not found"),
    ({"initial": [{"profile": "uniform", "value": 1.0}]}, "initial", "one [[initial]]"),
    ({"initial.0.radius": 0.3}, "initial[0].radius", "unknown key"),
    ({"initial.0.width": None}, "initial[0].width", "missing"),
    ({"initial.0.center": [0.0, 0.0, 0.0]}, "initial[0].center", "2 coordinates"),
    ({"initial.1.profile": "cone"}, "initial[1].profile", "gaussian"),
    ({"initial.1": {"profile": "expression", "expr": "__import__('os').getcwd()"}},
     "initial[1].expr", "not allowed"),
    ({"initial.1": {"profile": "expression", "expr": "x.real + 1"}}, "initial[1].expr",
     "Attribute"),
    ({"initial.1": {"profile": "expression", "expr": "(lambda: 1)()"}}, "initial[1].expr",
     "not allowed"),
    ({"initial.1": {"profile": "expression", "expr": "[x for x in y][0]"}}, "initial[1].expr",
     "not allowed"),
    ({"initial.1": {"profile": "expression", "expr": "exp(x, y)"}}, "initial[1].expr",
     "1 argument"),
    ({"initial.1": {"profile": "expression", "expr": "x +"}}, "initial[1].expr",
     "not a valid expression"),
    ({"solver": {"scheme": "upwind", "degree": 2}}, "solver.degree", "galerkin"),
    ({"solver": {"linear_solver": "cg"}}, "solver.linear_solver", "direct"),
    ({"solver": {"negative_edges": "clip"}}, "solver.negative_edges", "limit"),
    ({"solver": {"scheme": "muscl", "limiter": "sensr"}}, "solver.limiter", "sensor"),
    ({"solver": {"scheme": "upwind", "limiter": "sensor"}}, "solver.limiter", "muscl"),
    ({"solver": {"scheme": "muscl", "muscl": {"limiter": "sensor"}, "limiter": "vanleer"}},
     "solver.limiter", "given twice"),
    ({"solver": {"scheme": "muscl", "afc": {"jacobian": "mf"}}}, "solver.afc", "'muscl'"),
    ({"solver": {"muscl": {"limiter": {"name": "sensor", "band": [0.5, 0.2]}}}},
     "solver.muscl.limiter.band", "lo < hi"),
    ({"solver": {"muscl": {"jakobian": "mf"}}}, "solver.muscl.jakobian", "jacobian"),
    ({"solver": {"scheme": "afc", "afc": {"smooth_width": 2.0}}}, "solver.afc.smooth_width",
     "(0, 1)"),
    ({"solver": {"scheme": "galerkn"}}, "solver.scheme", "galerkin"),
    ({"output.formats": ["vtk"]}, "output.formats[0]", "xdmf"),
    ({"output.checkpoint_every": -1}, "output.checkpoint_every", ">= 0"),
    ({"particles": {"N": 0}}, "particles.N", ">= 1"),
    ({"particles": {"N": 10}}, "particles.eps", "required"),
    ({"particles": {"N": 10, "eps": 0.1, "kernel": "box"}}, "particles.kernel", "poly4"),
    ({"short": {"time": {"T": -1.0}}}, "short.time.T", ">= 0"),
    ({"time.dt": True}, "time.dt", "must be a number"),
    ({"model.type": "nonlocal", "model.eps": 0.1, "model.subdivisions": 0},
     "model.subdivisions", ">= 1"),
    ({"geometry": {"builder": "rectangle_with_obstacles", "upper": [2.0, 1.0], "h": 0.3,
                   "obstacles": [[0.5, 0.5, 0.2], [0.8, 0.5, 0.15]]}},
     "geometry.obstacles[1]", "overlaps or touches obstacles[0]"),
    ({"initial.0.profile": None}, "initial[0].profile", "<missing>"),
]


@pytest.mark.parametrize("changes,key,hint", BROKEN, ids=[b[1] + "-" + str(i)
                                                          for i, b in enumerate(BROKEN)])
def test_broken_config_exit_2(changes, key, hint, comm, mpi_tmp_path, capsys):
    path = mpi_tmp_path / "broken.toml"
    if comm.rank == 0:
        path.write_text(to_toml(_mutate(changes)))
    comm.barrier()
    capsys.readouterr()
    code = main(["check", str(path), "--short"], comm=comm)
    err = capsys.readouterr().err
    ok = None
    if comm.rank == 0:
        lines = err.strip().splitlines()
        ok = (len(lines) == 1 and lines[0].startswith("crossdiff: config error")
              and f"{key} = " in lines[0] and hint in lines[0])
    assert code == 2
    assert comm.bcast(ok, root=0), err


def test_base_config_is_valid(comm, mpi_tmp_path):
    path = mpi_tmp_path / "base.toml"
    if comm.rank == 0:
        path.write_text(to_toml(_mutate({})))
    comm.barrier()
    assert main(["check", str(path)], comm=comm) == 0


def test_msh_geometry_runs(comm, mpi_tmp_path):
    """``geometry.msh`` (relative to the study file) reads a gmsh file; centres are checked."""
    from fem_crossdiff import meshes

    meshes.write_msh(mpi_tmp_path / "disk.msh", "disk", comm, radius=1.0, h=0.3)
    doc = _mutate({"geometry": {"msh": "disk.msh", "gdim": 2}})
    good, bad = mpi_tmp_path / "msh.toml", mpi_tmp_path / "msh3d.toml"
    if comm.rank == 0:
        good.write_text(to_toml(doc))
        doc["geometry"].pop("gdim")
        doc["initial"][0]["center"] = [0.0, 0.0, 0.0]  # unknown gdim: checked on the mesh
        bad.write_text(to_toml(doc))
    comm.barrier()
    out = mpi_tmp_path / "msh_out"
    assert main(["run", str(good), "--quiet", "--output", str(out)], comm=comm) == 0
    cfg = load_config(good)
    assert cfg.geometry.msh == str((mpi_tmp_path / "disk.msh").resolve())
    assert main(["run", str(bad), "--quiet", "--output", str(out)], comm=comm) == 2


def test_particles_alongside(comm, mpi_tmp_path):
    """Particles start from the initial densities and follow the PDE's centre of mass."""
    import ufl

    from fem_crossdiff.compat import MPI, fem
    from fem_crossdiff.study import run_study

    # the particles' drift uses the FE mollification operator: eps >= 2 h_max
    doc = _mutate({"particles": {"N": 3000, "seed": 3, "eps": 0.3, "output_every": 5},
                   "initial.0.center": [0.3, 0.1], "time.T": 0.01, "geometry.h": 0.1})
    path = mpi_tmp_path / "particles.toml"
    if comm.rank == 0:
        path.write_text(to_toml(doc))
    comm.barrier()
    res = run_study(load_config(path), comm, quiet=True, output=mpi_tmp_path / "p_out")
    s = res.solver
    x = ufl.SpatialCoordinate(s.msh)
    centre = [[comm.allreduce(fem.assemble_scalar(fem.form(x[i] * s.rho[k] * ufl.dx)),
                              op=MPI.SUM) / s.masses()[k] for i in range(2)] for k in range(2)]
    last = None
    if comm.rank == 0:
        with open(mpi_tmp_path / "p_out" / "particles" / "diagnostics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        last = (len(rows), float(rows[-1]["time"]),
                [[float(rows[-1][f"mean{k + 1}_{c}"]) for c in "xy"] for k in range(2)])
    nrows, t_end, means = comm.bcast(last, root=0)
    assert nrows == len(res.rows) and abs(t_end - 0.01) < 1e-12
    err = np.abs(np.array(means) - np.array(centre)).max()
    assert err < 0.03  # Monte Carlo std of 3000 samples: about 0.01 (measured 0.016)
    assert abs(centre[0][0] - 0.3) < 0.05  # the PDE's species 1 is where it started


def test_runtime_initial_errors_exit_2(comm, mpi_tmp_path, capsys):
    """Initial data that is negative somewhere is found on the mesh and reported by key."""
    path = mpi_tmp_path / "negative.toml"
    if comm.rank == 0:
        path.write_text(to_toml(_mutate({"initial.1": {"profile": "expression",
                                                       "expr": "x - 0.5"}})))
    comm.barrier()
    capsys.readouterr()
    code = main(["run", str(path), "--output", str(mpi_tmp_path / "neg")], comm=comm)
    err = capsys.readouterr().err
    ok = comm.bcast("initial[1]" in err and "negative" in err if comm.rank == 0 else None)
    assert code == 2 and ok


def test_usage_errors_exit_2(comm, capsys):
    assert main(["run"], comm=comm) == 2
    assert main(["frobnicate", "x.toml"], comm=comm) == 2
    assert main(["check", "/no/such/study.toml"], comm=comm) == 2
    err = capsys.readouterr().err
    assert comm.bcast("study file not found" in err if comm.rank == 0 else None)


def test_safe_expression_values():
    x = np.array([[0.0, 0.5, -1.0], [0.0, 1.0, 2.0], [0.0, 0.0, 0.0]])
    f = SafeExpression("0.5*exp(-x**2-y**2)")
    assert np.allclose(f(x), 0.5 * np.exp(-x[0] ** 2 - x[1] ** 2), rtol=1e-15)
    g = SafeExpression("where(x > 0, max(y, 1.5), min(abs(x), 0.25)) + sqrt(pi)*0 + e - e")
    assert np.allclose(g(x), [0.0, 1.5, 0.25])
    assert SafeExpression("2")(x).shape == (3,)
    # huge powers overflow to inf in floating point instead of computing a giant integer
    assert np.isinf(SafeExpression("10**10**10")(x)).all()
    for bad in ("open('f')", "x.__class__", "x[0]", "().__class__", "'a'", "True",
                "f(x)", "sin(x=1)", "x if y else z", "lambda: 0", "y and x", "x == y"):
        with pytest.raises(ConfigError):
            SafeExpression(bad, "initial[0].expr")


@pytest.mark.parametrize("runner", ["module", "script"])
def test_entry_points(runner, comm, tmp_path):
    """``python -m fem_crossdiff`` and the ``crossdiff`` script (serial subprocesses)."""
    if comm.size > 1:
        pytest.skip("subprocesses are launched from the serial run only")
    exe = ([sys.executable, "-m", "fem_crossdiff"] if runner == "module"
           else [str(Path(sys.executable).parent / "crossdiff")])
    if runner == "script" and not Path(exe[0]).exists():
        pytest.skip("the crossdiff console script is not installed in this environment")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "MPI", "HYDRA"))}
    ok = subprocess.run(exe + ["check", str(ROOT / "demos" / "lshape.toml")], env=env,
                        capture_output=True, text=True, timeout=120)
    bad = tmp_path / "bad.toml"
    bad.write_text(to_toml(_mutate({"model.sigma": -1.0})))
    fail = subprocess.run(exe + ["check", str(bad)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert ok.returncode == 0 and 'builder = "l_shape"' in ok.stdout
    assert fail.returncode == 2 and "model.sigma = -1.0" in fail.stderr


def test_muscl_limiter_reaches_the_solver(comm):
    """``solver.limiter`` selects the limiter of ``scheme = "muscl"`` (here ``"sensor"``)."""
    from fem_crossdiff.compat import mesh
    from fem_crossdiff.study import _make_solver

    cfg = parse_config(_mutate({"solver": {"scheme": "muscl", "limiter": "sensor"}}),
                       source="test", short=True)
    s = _make_solver(cfg, mesh.create_unit_square(comm, 4, 4))
    assert s.scheme == "muscl" and s.model.flux.limiter == "sensor"
