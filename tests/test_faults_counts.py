"""Counts and sizes beyond the machine, and absurd initial data, are refused before any work.

Every count or size key of a study (animation frames, steps, field outputs, checkpoints,
particle outputs, particles, mesh size) is bounded by the memory estimate or by the disk
estimate against the free space of the output folder's file system; initial data that is not
finite or absurdly large is refused naming the species' table (``initial[1]``). Each refusal
is exit code 2 with one line naming the key, before the mesh is built and before
``--overwrite`` touches the earlier run, whose files stay byte for byte as they were.

Every test runs serially and under ``mpirun -n 2`` (rank 0 checks the files).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

from fem_crossdiff import resources, study
from fem_crossdiff.cli import main
from fem_crossdiff.config import ConfigError, parse_config, to_toml
from fem_crossdiff.errors import ParameterError
from fem_crossdiff.params import MAX_DENSITY

STUDY = {
    "model": {"a": [1.0, 2.0], "b": [1.0, 0.5], "sigma": 1e-3},
    "geometry": {"builder": "interval", "h": 0.02},
    "initial": [{"profile": "gaussian", "center": [0.3], "width": 0.1, "height": 1.0},
                {"profile": "uniform", "value": 0.4}],
    "time": {"T": 0.01, "dt": 2e-3},
    "output": {"formats": ["csv"], "checkpoint_every": 2, "progress": False},
}


def _doc(**sections) -> dict:
    doc = {k: (dict(v) if isinstance(v, dict) else [dict(i) for i in v])
           for k, v in STUDY.items()}
    for name, values in sections.items():
        if name == "initial":
            doc["initial"] = values
        else:
            doc.setdefault(name, {}).update(values)
    return doc


def _on_root(comm, fn):
    return comm.bcast(fn() if comm.rank == 0 else None, root=0)


def _write(comm, path: Path, doc: dict) -> Path:
    if comm.rank == 0:
        path.write_text(to_toml(doc))
    comm.barrier()
    return path


def _checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(comm, capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["run", *map(str, args), "--quiet"], comm=comm)
    return code, _on_root(comm, lambda: capsys.readouterr().err)


@pytest.fixture
def previous(comm, mpi_tmp_path):
    """A finished run in ``mpi_tmp_path / "out"`` that ``--overwrite`` would replace."""
    study = _write(comm, mpi_tmp_path / "ok.toml", _doc())
    out = mpi_tmp_path / "out"
    assert main(["run", str(study), "--quiet", "--output", str(out)], comm=comm) == 0
    return out


@pytest.fixture
def no_mesh(monkeypatch):
    """Building the mesh fails the test: the refusals must come before it."""
    def build(cfg, comm):
        raise AssertionError("the mesh was built before the study was refused")

    monkeypatch.setattr(study, "_build_geometry", build)


# key, value, the study's changes (disk limits are given, so the verdict is the machine's
# free space's only where that is what is tested)
REFUSED = [
    ("output.animation_frames", 10**9,
     {"output": {"animation": "gif", "animation_frames": 10**9}}),
    ("time.dt", 1e-12, {"time": {"T": 1.0, "dt": 1e-12, "dt_min": 1e-13}}),
    ("output.checkpoint_every", 1,
     {"time": {"T": 10.0, "dt": 1e-4}, "output": {"checkpoint_every": 1, "formats": []},
      "resources": {"disk_limit_gb": 0.1}}),
    ("output.every", 1,
     {"geometry": {"h": 1e-4}, "time": {"T": 1.0, "dt": 1e-4},
      "output": {"every": 1, "formats": ["vtx"], "checkpoint_every": 0},
      "resources": {"disk_limit_gb": 1.0}}),
    ("particles.output_every", 1,
     {"particles": {"N": 10**6, "eps": 0.1, "output_every": 1},
      "time": {"T": 1.0, "dt": 1e-3}, "output": {"checkpoint_every": 0},
      "resources": {"disk_limit_gb": 1.0}}),
    ("particles.N", 10**12, {"particles": {"N": 10**12, "eps": 0.1}}),
    ("geometry.h", 1e-9, {"geometry": {"h": 1e-9}}),
]


@pytest.mark.parametrize("key,value,changes", REFUSED, ids=[c[0] for c in REFUSED])
def test_count_beyond_the_estimate_is_refused_before_any_work(
        key, value, changes, comm, mpi_tmp_path, capsys, previous, no_mesh):
    before = _on_root(comm, lambda: _checksums(previous))
    study = _write(comm, mpi_tmp_path / "big.toml", _doc(**changes))
    code, err = _run(comm, capsys, study, "--output", previous, "--overwrite")
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"config error in {study}: {key} = " in err, err
    assert "more than the limit" in err, err
    assert _on_root(comm, lambda: _checksums(previous)) == before


def test_disk_default_limit_is_the_free_space(comm, mpi_tmp_path, capsys, previous, no_mesh,
                                               monkeypatch):
    """Without ``disk_limit_gb`` the limit is the free space where the folder lies."""
    seen = []

    def free(folder):
        seen.append(Path(folder))
        return 5e5  # bytes: less than 1001 checkpoints

    monkeypatch.setattr(resources, "free_space", free)
    before = _on_root(comm, lambda: _checksums(previous))
    study = _write(comm, mpi_tmp_path / "big.toml",
                   _doc(time={"T": 1.0, "dt": 1e-3}, output={"checkpoint_every": 1}))
    code, err = _run(comm, capsys, study, "--output", previous, "--overwrite")
    assert code == 2 and "output.checkpoint_every = 1" in err, err
    assert "free space" in err and "disk_limit_gb" in err, err
    assert _on_root(comm, lambda: seen == [previous]) is True  # rank 0 asks, for --output
    assert _on_root(comm, lambda: _checksums(previous)) == before


def test_disk_estimate_counts_each_output():
    cfg = parse_config(_doc(output={"folder": "o", "formats": ["vtx", "csv"], "every": 5,
                                    "checkpoint_every": 2, "animation": "gif",
                                    "animation_frames": 7},
                            particles={"N": 1000, "eps": 0.1, "output_every": 3}),
                       check_files=False)
    d = resources.disk_estimate(cfg)
    assert set(d.parts) == {"fields", "checkpoints", "particles", "csv", "animation"}
    assert resources.expected_steps(cfg) == 5  # T / dt
    # halving a cadence doubles its part (up to the first and last outputs)
    more = parse_config(_doc(output={"folder": "o", "formats": ["vtx", "csv"], "every": 1,
                                     "checkpoint_every": 1, "animation": "gif",
                                     "animation_frames": 14},
                             particles={"N": 2000, "eps": 0.1, "output_every": 1}),
                        check_files=False)
    m = resources.disk_estimate(more)
    for part in ("fields", "checkpoints", "particles"):
        assert m.parts[part] > d.parts[part], part
    assert m.parts["csv"] == pytest.approx(d.parts["csv"])  # same steps
    assert m.parts["animation"] == pytest.approx(2 * d.parts["animation"])


def test_adaptive_steps_are_the_fewest_possible():
    fixed = parse_config(_doc(output={"folder": "o"}, time={"T": 1.0, "dt": 1e-6}),
                         check_files=False)
    adaptive = parse_config(_doc(output={"folder": "o"},
                                 time={"T": 1.0, "dt": 1e-6, "adaptive": True, "grow": 1.25,
                                       "dt_max": 0.1}), check_files=False)
    assert resources.expected_steps(fixed) == pytest.approx(1e6)
    # 1e-6 grows to 0.1 in log(1e5)/log(1.25) ~ 52 steps (covering ~0.5), then 5 of 0.1
    steps = resources.expected_steps(adaptive)
    assert 52 <= steps <= 60
    assert resources.check(adaptive) is not None  # a long adaptive run is not refused


def test_free_space_of_a_folder_yet_to_be_made(tmp_path):
    free = resources.free_space(tmp_path / "a" / "b")
    assert math.isfinite(free) and free > 0


# --------------------------------------------------------------------------- initial data
BAD_INITIAL = [  # second species' table, key, what the message says
    ({"profile": "expression", "expr": "1/(x - x)"}, "initial[1] = ", "NaN/inf"),
    ({"profile": "expression", "expr": "1e300 + x"}, "initial[1] = ", "<= 1e+06"),
    ({"profile": "expression", "expr": "2e6*exp(-x*x)"}, "initial[1] = ", "<= 1e+06"),
    ({"profile": "uniform", "value": 1e300}, "initial[1].value = ", "<= 1e+06"),
    ({"profile": "gaussian", "center": [0.5], "width": 0.1, "height": 1.0,
      "background": 2e6}, "initial[1].background = ", "<= 1e+06"),
]


@pytest.mark.parametrize("second,key,text", BAD_INITIAL,
                         ids=["inf", "1e300-expr", "2e6-expr", "1e300-value", "background"])
def test_absurd_initial_data_names_the_species(second, key, text, comm, mpi_tmp_path, capsys,
                                                previous):
    before = _on_root(comm, lambda: _checksums(previous))
    study = _write(comm, mpi_tmp_path / "bad.toml", _doc(initial=[STUDY["initial"][0],
                                                                  second]))
    code, err = _run(comm, capsys, study, "--output", previous, "--overwrite")
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert key in err and text in err, err
    assert _on_root(comm, lambda: _checksums(previous)) == before


def test_initial_data_at_the_bound_is_accepted(comm):
    """``|rho| = MAX_DENSITY`` is allowed (the check is ``>``, not ``>=``)."""
    cfg = parse_config(_doc(output={"folder": "o"},
                            initial=[STUDY["initial"][0],
                                     {"profile": "uniform", "value": MAX_DENSITY}]),
                       check_files=False)
    assert dict(cfg.initial[1].values)["value"] == MAX_DENSITY
    with pytest.raises(ConfigError) as err:
        parse_config(_doc(output={"folder": "o"},
                          initial=[STUDY["initial"][0],
                                   {"profile": "uniform", "value": 2 * MAX_DENSITY}]),
                     check_files=False)
    assert err.value.key == "initial[1].value"


def test_api_set_initial_names_the_species(comm):
    from fem_crossdiff.compat import mesh
    from fem_crossdiff.params import ModelParams
    from fem_crossdiff.solver import CrossDiffusionSolver

    msh = mesh.create_unit_interval(comm, 20)
    s = CrossDiffusionSolver(msh, ModelParams(a=(1.0, 2.0), b=(1.0, 0.5), sigma=1e-3))
    ok = lambda x: 0.5 + 0 * x[0]  # noqa: E731
    for bad, text in [(lambda x: np.full(x.shape[1], np.nan), "NaN/inf"),
                      (lambda x: np.full(x.shape[1], 3e6), "<= 1e+06")]:
        with pytest.raises(ParameterError) as err:
            s.set_initial([ok, bad])
        assert err.value.key == "initial[1]" and text in err.value.allowed
        with pytest.raises(ParameterError) as err:
            s.set_initial([bad, ok])
        assert err.value.key == "initial[0]"
    s.set_initial([ok, lambda x: np.full(x.shape[1], MAX_DENSITY)])  # the bound itself
