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
