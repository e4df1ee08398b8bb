"""The README's extension promise: a model registered outside the library, with its own options.

The model below is registered in this test module only. Nothing else is changed, yet
``crossdiff check`` accepts it in a study file (its ``[solver.<scheme>]`` table validated by its
options dataclass), ``crossdiff keys`` lists its keys, ``crossdiff run`` runs it (the option
reaching the model: the run equals the built-in scheme with the scaled coefficient), and a run
restarts from its checkpoint, while a restart with another value of its option is refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest

from fem_crossdiff.checkpoint import read_state
from fem_crossdiff.cli import main
from fem_crossdiff.errors import ParameterError
from fem_crossdiff.models import register
from fem_crossdiff.models.upwind import LocalUpwind

SCHEME = "scaled-diffusion-test"


@dataclass(frozen=True)
class ScaledDiffusionOptions:
    """The options of the test model.

    Attributes:
        factor: The diffusion ``sigma`` is multiplied by this factor, ``> 0``.
    """

    factor: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.factor, (int, float)) and self.factor > 0.0):
            raise ParameterError("factor", self.factor, "a number > 0")


@register(SCHEME, options=ScaledDiffusionOptions)
class ScaledDiffusion(LocalUpwind):
    """The upwind scheme with its diffusion scaled by an option (a model written by a user)."""

    def __init__(self, V, params, negative_edges="voronoi", options=None):
        self.options = options or ScaledDiffusionOptions()
        super().__init__(V, dataclasses.replace(params, sigma=params.sigma
                                                * self.options.factor), negative_edges)


STUDY = """\
[model]
a = [1.0, 2.0]
b = [1.0, 0.5]
m = 2.0
sigma = {sigma}

[geometry]
builder = "rectangle"
h = 0.2

[[initial]]
profile = "gaussian"
center = [0.37, 0.41]
width = 0.2
height = 1.0
background = 0.05

[[initial]]
profile = "uniform"
value = 0.2

[time]
T = {T}
dt = 2e-3

[solver]
scheme = "{scheme}"
linear_solver = "direct"
{table}
[output]
formats = ["csv"]
checkpoint_every = 2
progress = false
"""


def _study(comm, path, *, scheme=SCHEME, sigma=0.01, T=0.008, factor=3.0):
    table = f"[solver.{scheme}]\nfactor = {factor}\n" if scheme == SCHEME else ""
    if comm.rank == 0:
        path.write_text(STUDY.format(scheme=scheme, sigma=sigma, T=T, table=table))
    comm.barrier()
    return path


def _state(path):
    info, coords, values = read_state(path)
    order = np.lexsort(coords.T[::-1])
    return info, values[order]


def test_check_and_keys_know_the_registered_model(comm, mpi_tmp_path, capsys):
    good = _study(comm, mpi_tmp_path / "good.toml")
    bad = _study(comm, mpi_tmp_path / "bad.toml", factor=-1.0)
    capsys.readouterr()
    assert main(["check", str(good)], comm=comm) == 0
    assert main(["check", str(bad)], comm=comm) == 2
    err = capsys.readouterr().err
    assert main(["keys"], comm=comm) == 0
    out = capsys.readouterr().out
    if comm.rank == 0:
        assert f"solver.{SCHEME}.factor = -1.0: a number > 0" in err
        assert f"### [solver.{SCHEME}] (local system)" in out
        section = out.split(f"### [solver.{SCHEME}]", 1)[1].split("###", 1)[0]
        assert "| `factor` | number | `1.0` |" in section
        assert f'"{SCHEME}"' in out.split("| `scheme` |", 1)[1].splitlines()[0]


def test_run_and_restart_with_the_registered_model(comm, mpi_tmp_path):
    """The option reaches the model, and a restart continues exactly; another value is refused."""
    study = _study(comm, mpi_tmp_path / "study.toml")
    run = mpi_tmp_path / "run"
    assert main(["run", str(study), "--quiet", "--output", str(run)], comm=comm) == 0
    # the same problem with the built-in upwind scheme and sigma scaled by hand
    ref = _study(comm, mpi_tmp_path / "ref.toml", scheme="upwind", sigma=0.03)
    assert main(["run", str(ref), "--quiet", "--output", str(mpi_tmp_path / "ref")],
                comm=comm) == 0
    final = run / "checkpoints" / "step_000004.npz"
    (info, a), (_, b) = _state(final), _state(mpi_tmp_path / "ref/checkpoints/step_000004.npz")
    (_, start) = _state(run / "checkpoints" / "step_000002.npz")
    assert np.abs(a - b).max() <= 1e-10 * np.abs(b).max()
    assert np.abs(a - start).max() > 1e-4  # the steps moved the state
    # a restart from step 2 ends where the uninterrupted run ended
    again = mpi_tmp_path / "again"
    assert main(["run", str(study), "--quiet", "--output", str(again), "--restart",
                 str(run / "checkpoints" / "step_000002.npz")], comm=comm) == 0
    (_, c) = _state(again / "checkpoints" / "step_000004.npz")
    assert np.abs(a - c).max() <= 1e-12 * np.abs(a).max()
    # the option is part of the run's identity: another factor does not restart
    other = _study(comm, mpi_tmp_path / "other.toml", factor=2.0)
    assert main(["run", str(other), "--quiet", "--output", str(mpi_tmp_path / "x"),
                 "--restart", str(final)], comm=comm) == 2
    assert info.identity[f"options.{SCHEME}.factor"] == "3.0"


def test_api_takes_the_options_by_field_and_rejects_unknown_ones(comm):
    from fem_crossdiff.compat import mesh
    from fem_crossdiff.params import ModelParams
    from fem_crossdiff.solver import CrossDiffusionSolver

    msh = mesh.create_unit_square(comm, 4, 4)
    p = ModelParams(a=(1.0,), b=(1.0,), sigma=0.1)
    s = CrossDiffusionSolver(msh, p, scheme=SCHEME, factor=2.5)
    assert s.options == ScaledDiffusionOptions(2.5)
    assert abs(s.model.flux.params.sigma - 0.25) < 1e-15
    with pytest.raises(ParameterError, match=f"limiter.*not an option of scheme '{SCHEME}'"):
        CrossDiffusionSolver(msh, p, scheme=SCHEME, limiter="vanleer")
    with pytest.raises(ParameterError, match="factor = 0"):
        CrossDiffusionSolver(msh, p, scheme=SCHEME, options={"factor": 0})
