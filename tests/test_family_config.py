"""``[family]`` in study files: every ingredient validated with its dotted key, and round trips.

The keys build a :class:`fem_crossdiff.family.Family` (the same objects as the API), so a study
file and a script describe one system the same way.
"""

from __future__ import annotations

import copy
import tomllib

import pytest

from fem_crossdiff.config import ConfigError, parse_config, to_toml
from fem_crossdiff.family import Family, Growth, Interaction, Kernel, Potential

BASE = {"model": {"a": [1.0, 1.0], "b": [1.0, 1.0], "sigma": 0.01},
        "geometry": {"builder": "rectangle", "h": 0.2},
        "initial": [{"profile": "uniform", "value": 0.3}, {"profile": "uniform", "value": 0.2}],
        "time": {"T": 0.01, "dt": 1e-3}}
FAMILY = {"sigma": [0.01, 0.0], "potentials": ["0.5 * (x**2 + y**2)", "0"],
          "interactions": [{"kernel": "gaussian", "length": 0.2,
                            "strength": [[-1.0, -0.5], [-0.5, -1.0]]}],
          "growth": [{"kind": "logistic", "rate": 1.0, "p_max": 1.0},
                     {"kind": "expr", "expr": "-0.5 * P"}]}


def _study(**family):
    doc = copy.deepcopy(BASE)
    doc["family"] = {**copy.deepcopy(FAMILY), **family}
    return doc


def test_family_section_builds_the_family_and_round_trips():
    cfg = parse_config(_study(), check_files=False)
    fam = cfg.family_params
    assert isinstance(fam, Family) and fam.sigma == (0.01, 0.0) and fam.has_growth
    assert fam.potentials[0] == Potential(expr="0.5 * (x**2 + y**2)",
                                          key="family.potentials[0]")
    assert fam.interactions[0].kernel == Kernel("gaussian", 0.2)
    assert fam.interactions[0].symmetric
    assert isinstance(fam.growth[1], Growth) and fam.growth[1].expr == "-0.5 * P"
    again = parse_config(tomllib.loads(to_toml(cfg.to_dict())), check_files=False)
    assert again.family_params == fam and again.physics_hash() == cfg.physics_hash()
    # the family is part of what a restart must share
    other = parse_config(_study(sigma=[0.02, 0.0]), check_files=False)
    assert other.physics_hash() != cfg.physics_hash()


def test_no_family_section_is_the_papers_system():
    cfg = parse_config(copy.deepcopy(BASE), check_files=False)
    assert cfg.family is None and cfg.family_params is None
    only_sigma = parse_config({**copy.deepcopy(BASE), "family": {"potentials": ["x", "0"]}},
                              check_files=False)
    assert only_sigma.family_params.sigma == (0.01, 0.01)  # model.sigma by default


@pytest.mark.parametrize("family,key,allowed", [
    ({"sigma": [0.01, -1.0]}, "family.sigma[1]", ">= 0"),
    ({"sigma": [0.01]}, "family.sigma", "one entry per species"),
    ({"potentials": ["0.5"]}, "family.potentials", "one entry per species"),
    ({"potentials": ["x +", "0"]}, "family.potentials[0].expr", "formula"),
    ({"potentials": ["__import__('os')", "0"]}, "family.potentials[0].expr", ""),
    ({"interactions": [{"kernel": "gauss", "length": 0.2, "strength": [[1, 0], [0, 1]]}]},
     "family.interactions[0].kernel", "gaussian"),
    ({"interactions": [{"kernel": "bump", "length": 0.0, "strength": [[1, 0], [0, 1]]}]},
     "family.interactions[0].length", "> 0"),
    ({"interactions": [{"kernel": "bump", "length": 0.2, "strength": [[1.0, 0.5]]}]},
     "family.interactions[0].strength", "square"),
    ({"interactions": [{"kernel": "bump", "length": 0.2, "strength": [[1.0]]}]},
     "family.interactions[0].strength", "2 x 2"),
    ({"interactions": [{"kernel": "bump", "length": 0.2}]},
     "family.interactions[0].strength", "required"),
    ({"growth": [{"kind": "logistic", "rate": 1.0, "p_max": 0.0},
                 {"kind": "logistic"}]}, "family.growth[0].p_max", "> 0"),
    ({"growth": [{"kind": "expr", "expr": "-Q"}, {"kind": "logistic"}]},
     "family.growth[0].expr", "unknown name 'Q'"),
    ({"growth": [{"kind": "sigmoid"}, {"kind": "logistic"}]}, "family.growth[0].kind",
     "logistic"),
    ({"growth": [{"kind": "logistic", "speed": 1.0}, {"kind": "logistic"}]},
     "family.growth[0].speed", "unknown key"),
])
def test_bad_family_entries_name_their_key(family, key, allowed):
    with pytest.raises(ConfigError) as err:
        parse_config(_study(**family), check_files=False)
    assert err.value.key == key, str(err.value)
    assert allowed in str(err.value)


def test_family_objects_from_python_equal_the_study_files():
    """The API builds the same Family the study file does."""
    fam = Family((0.01, 0.0), (Potential(expr="0.5 * (x**2 + y**2)"), Potential(expr="0")),
                 (Interaction(Kernel("gaussian", 0.2), ((-1.0, -0.5), (-0.5, -1.0))),),
                 (Growth("logistic", 1.0, 1.0), Growth("expr", expr="-0.5 * P")))
    cfg = parse_config(_study(), check_files=False)
    assert [p.expr for p in fam.potentials] == [p.expr for p in cfg.family_params.potentials]
    assert [(w.kernel, w.strength) for w in fam.interactions] == [
        (w.kernel, w.strength) for w in cfg.family_params.interactions]
    assert fam.sigma == cfg.family_params.sigma


def test_particles_with_growth_are_refused_before_any_mesh():
    doc = _study()
    doc["particles"] = {"N": 100, "eps": 0.3}
    with pytest.raises(ConfigError) as err:
        parse_config(doc, check_files=False)
    assert err.value.key == "family.growth" and "weights" in str(err.value)
    doc["family"].pop("growth")
    assert parse_config(doc, check_files=False).family_params.has_growth is False


def test_cli_runs_the_family_as_the_api_does(comm, mpi_tmp_path):
    """``crossdiff run`` of a study with ``[family]`` equals the API with the same Family."""
    from dataclasses import replace

    import numpy as np

    from fem_crossdiff.checkpoint import read_state
    from fem_crossdiff.cli import main
    from fem_crossdiff.compat import MPI
    from fem_crossdiff.solver import CrossDiffusionSolver
    from fem_crossdiff.study import load_study

    doc = _study(interactions=[{"kernel": "bump", "length": 0.45,
                                "strength": [[-0.5, -0.2], [-0.2, -0.3]]}])
    doc["initial"][0] = {"profile": "gaussian", "center": [0.41, 0.37], "width": 0.2,
                         "height": 0.8, "background": 0.05}
    doc["time"] = {"T": 0.006, "dt": 2e-3}
    doc["solver"] = {"scheme": "upwind", "linear_solver": "direct"}
    doc["output"] = {"formats": ["csv"], "progress": False, "checkpoint_every": 3}
    path = mpi_tmp_path / "family.toml"
    if comm.rank == 0:
        path.write_text(to_toml(doc))
    comm.barrier()
    out = mpi_tmp_path / "run"
    assert main(["run", str(path), "--quiet", "--output", str(out)], comm=comm) == 0
    cfg = load_study(path, short=False, comm=comm).config
    s = CrossDiffusionSolver(cfg.geometry.build(comm).mesh, replace(cfg.model.params(),
                                                                    sigma=0.0),
                             scheme="upwind", linear_solver="direct", family=cfg.family_params)
    s.set_initial([ic.function(2) for ic in cfg.initial])
    before = s.masses()
    for _ in range(3):
        assert s.step(2e-3).accepted
    after = s.masses()
    nown = s.V0.dofmap.index_map.size_local
    owned = s.rho.x.array[: 2 * nown].reshape(nown, 2)
    api = np.array([comm.allreduce(float(owned[:, k].sum()), op=MPI.SUM) for k in range(2)])
    res = None
    if comm.rank == 0:
        info, _, values = read_state(out / "checkpoints" / "step_000003.npz")
        res = (info.t, values[:, :, 0].sum(axis=0).tolist())
    t, cli = comm.bcast(res, root=0)
    assert abs(t - s.t) < 1e-15
    assert np.allclose(api, cli, rtol=1e-10)  # the same nodal values summed
    # the growth laws act: species 1 grows (P < p_max), species 2 dies (G = -0.5 P)
    assert after[0] > before[0] * (1 + 1e-4) and after[1] < before[1] * (1 - 1e-5)
