"""Parameter errors as data, and the study-file schema derived from the parameter dataclasses.

Pure Python (no mesh is built): every rank runs the same checks.
"""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from fem_crossdiff import config
from fem_crossdiff.compat import unsupported_ghost_mode
from fem_crossdiff.config import ConfigError, SafeExpression, TimeConfig, parse_config, to_toml
from fem_crossdiff.config.schema import MISSING
from fem_crossdiff.errors import ParameterError
from fem_crossdiff.params import ModelParams, TimeParams, finite_number

BASE = {
    "model": {"a": [1.0, 2.0], "b": [1.0, 0.5]},
    "geometry": {"builder": "disk", "radius": 1.0, "h": 0.3},
    "initial": [{"profile": "uniform", "value": 1.0}, {"profile": "uniform", "value": 0.5}],
    "time": {"T": 0.002, "dt": 1e-3},
}


def _error(changes: dict) -> ConfigError:
    """The error of BASE with ``changes``: ``[model]`` and ``[time]`` updated, the rest replaced."""
    doc = {**BASE, **changes}
    for section in ("model", "time"):
        doc[section] = {**BASE[section], **changes.get(section, {})}
    with pytest.raises(ConfigError) as info:
        parse_config(doc, short=True)
    return info.value


@pytest.mark.parametrize("cls,kwargs,key,value,allowed", [
    (ModelParams, dict(a=(1.0, 0.0), b=(1.0, 1.0)), "a[1]", 0.0, "a[1] must be > 0"),
    (ModelParams, dict(a=(1.0,), b=(1.0,), m=1.5), "m", 1.5, "m must be >= 2"),
    (ModelParams, dict(a=(1.0,), b=(1.0,), sigma="x"), "sigma", "x", "sigma must be a real number"),
    (ModelParams, dict(a=(1.0, 1.0), b=(1.0,)), "b", (1.0,), "b must have one mobility per "
     "species (len(a) = 2)"),
    (TimeParams, dict(T=1.0, dt=0.0), "dt", 0.0, "dt must be > 0"),
    (TimeParams, dict(T=float("inf"), dt=0.1), "T", float("inf"), "T must be finite"),
    (TimeParams, dict(T=1.0, dt=0.1, method="rk4"), "method", "rk4", "method must be one of "
     "ie, bdf2"),
    (TimeParams, dict(T=1.0, dt=0.1, dt_max=0.01), "dt_max", 0.01, "dt_max must be >= dt = 0.1"),
])
def test_params_raise_parameter_errors(cls, kwargs, key, value, allowed):
    with pytest.raises(ParameterError) as info:
        cls(**kwargs)
    err = info.value
    assert (err.key, err.value, err.allowed) == (key, value, allowed)
    assert str(err) == f"{key} = {value!r}: {allowed}"


def test_finite_number_refuses_booleans():
    with pytest.raises(ParameterError, match="h = True: h must be a real number"):
        finite_number("h", True)
    assert finite_number("h", 2) == 2.0


def test_config_error_is_a_parameter_error():
    err = ConfigError("time.T", MISSING, "required key is missing")
    assert isinstance(err, ParameterError) and isinstance(err, ValueError)
    assert str(err) == "time.T = <missing>: required key is missing"
    again = pickle.loads(pickle.dumps(err))  # rank 0's verdict is broadcast
    assert type(again) is ConfigError and again.value is MISSING and str(again) == str(err)
    moved = ConfigError("geometry.center", (0.0, 1.0), "x").with_key("short.geometry.center")
    assert type(moved) is ConfigError and str(moved) == "short.geometry.center = [0.0, 1.0]: x"


def test_keys_and_defaults_come_from_the_parameter_classes():
    time_fields = [f for f in dataclasses.fields(TimeParams) if f.name != "easy_newton"]
    assert TimeConfig.keys() == [f.name for f in time_fields]
    cfg = parse_config(BASE)
    for f in time_fields:
        if f.default is not dataclasses.MISSING:
            assert getattr(cfg.time, f.name) == f.default, f.name
    model_fields = [f.name for f in dataclasses.fields(ModelParams)]
    assert config.ModelConfig.keys()[: len(model_fields)] == model_fields
    assert isinstance(cfg.model, ModelParams) and isinstance(cfg.time, TimeParams)
    assert cfg.model.params() == ModelParams(a=(1.0, 2.0), b=(1.0, 0.5))
    assert not hasattr(config, "_param_key")
    from fem_crossdiff.models.nonlocal_system import NonlocalParams

    nonlocal_fields = [f.name for f in dataclasses.fields(NonlocalParams)]
    assert config.ModelConfig.nonlocal_keys() == nonlocal_fields  # one field per TOML key


@pytest.mark.parametrize("changes,key", [
    ({"colour": "red"}, "colour"),
    ({"model": {"alpha": 1.0}}, "model.alpha"),
    ({"time": {"easy_newton": 3}}, "time.easy_newton"),
    ({"solver": {"tol": 1e-8}}, "solver.tol"),
    ({"output": {"path": "x"}}, "output.path"),
    ({"particles": {"N": 10, "eps": 0.1, "n": 3}}, "particles.n"),
    ({"initial": [{"profile": "uniform", "value": 1.0, "center": [0.0, 0.0]},
                  {"profile": "uniform", "value": 1.0}]}, "initial[0].center"),
    ({"geometry": {"builder": "disk", "r": 1.0}}, "geometry.r"),
    ({"geometry": {"msh": "disk.msh", "h": 0.1}}, "geometry.h"),
    ({"short": {"time": {"dtt": 1.0}}}, "short.time.dtt"),
    ({"short": {"solution": {}}}, "short.solution"),
])
def test_unknown_keys_at_every_level(changes, key):
    err = _error(changes)
    assert err.key == key and "unknown" in err.allowed, str(err)


@pytest.mark.parametrize("changes,key,allowed", [
    ({"model": {"m": True}}, "model.m", "must be a number"),
    ({"model": {"a": "1, 2"}}, "model.a", "must be a list of positive numbers, one per species"),
    ({"model": {"a": [1.0, "2"]}}, "model.a[1]", "must be a number"),
    ({"model": {"a": []}}, "model.a", "a must hold at least one coefficient"),
    ({"time": {"dt": "1e-3"}}, "time.dt", "must be a number"),
    ({"time": {"method": 2}}, "time.method", "must be a non-empty string"),
    ({"time": {"grow": 2.0, "method": "bdf2"}}, "time.grow", "grow must be in [1, 1.5]"),
    ({"solver": {"degree": True}}, "solver.degree", "must be one of 1, 2"),
    ({"solver": {"petsc": {"ksp_rtol": [1]}}}, "solver.petsc.ksp_rtol", "string, number"),
    ({"output": {"every": 1.0}}, "output.every", "must be an integer"),
    ({"model": {"type": "nonlocal", "eps": 0.2, "subdivisions": 0}}, "model.subdivisions",
     ">= 1"),
    ({"model": {"type": "nonlocal", "eps": 0.2, "allow_small_eps": "yes"}},
     "model.allow_small_eps", "true or false"),
    ({"geometry": {"builder": "disk", "radius": 1.0, "h": 0.3, "center": [0.0, "a"]}},
     "geometry.center[1]", "center[1] must be a real number"),
    ({"geometry": {"builder": "rectangle_with_obstacles", "upper": [2.0, 1.0], "h": 0.3,
                   "obstacles": [[0.5, 0.5, 0.2], [0.8, 0.5, 0.15]]}},
     "geometry.obstacles[1]", "overlaps or touches obstacles[0]"),
    ({"geometry": {"builder": "interval", "h": 0.1, "ghost_mode": "none"},
      "initial": [{"profile": "uniform", "value": 1.0}] * 2}, "geometry.ghost_mode",
     "not supported for 1D"),
    ({"geometry": {"builder": 3}}, "geometry.builder", "builder must be one of annulus"),
    ({"initial": [{"value": 1.0}, {"profile": "uniform", "value": 1.0}]},
     "initial[0].profile", "must be one of 'gaussian'"),
    ({"initial": [{"profile": "uniform", "value": 1.0}]}, "initial", "one [[initial]] table "
     "per species"),
])
def test_messages_name_key_value_and_what_is_allowed(changes, key, allowed):
    err = _error(changes)
    assert err.key == key and allowed in err.allowed, str(err)
    assert str(err).startswith(f"{key} = ")


def test_missing_values_and_sections():
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "time": {"T": 1.0}})
    assert str(info.value) == "time.dt = <missing>: required key is missing"
    doc = {k: v for k, v in BASE.items() if k != "time"}
    with pytest.raises(ConfigError, match=r"^time = <missing>: the section \[time\] is required"):
        parse_config(doc)


def test_resolved_config_round_trips():
    from fem_crossdiff.models.nonlocal_system import NonlocalParams

    doc = {**BASE, "model": {**BASE["model"], "type": "nonlocal", "eps": 0.3},
           "solver": {"petsc": {"ksp_rtol": 1e-9, "pc_type": "lu"}},
           "particles": {"N": 10}}
    cfg = parse_config(doc)
    assert (cfg.model.kernel, cfg.model.coupling, cfg.model.subdivisions) == ("bump", "linear", 1)
    assert cfg.model.nonlocal_params() == NonlocalParams(eps=0.3)  # every default filled in
    assert (cfg.particles.eps, cfg.particles.kernel) == (0.3, "bump")  # from the model
    import tomllib

    again = parse_config(tomllib.loads(to_toml(cfg.to_dict())))
    assert again == cfg and again.physics_hash() == cfg.physics_hash()


def test_safe_expression_pickles():
    f = SafeExpression("x + 2*y", "initial[0].expr")
    g = pickle.loads(pickle.dumps(f))
    import numpy as np

    pts = np.array([[1.0, 2.0], [0.5, 0.0], [0.0, 0.0]])
    assert np.array_equal(f(pts), g(pts)) and g.key == "initial[0].expr"


def test_unsupported_ghost_mode():
    assert unsupported_ghost_mode("none", 1) is not None
    assert unsupported_ghost_mode("none", 2) is None
    assert unsupported_ghost_mode("shared_facet", 1) is None
    assert unsupported_ghost_mode("none", None) is None


# --------------------------------------------------------------------------- failsafe checks
@pytest.mark.parametrize("options,key,allowed", [
    ({"snes_type": "python"}, "solver.petsc.snes_type", "must be one of newtonls"),
    ({"pc_type": "python"}, "solver.petsc.pc_type", "must be one of"),
    ({"ksp_type": "python"}, "solver.petsc.ksp_type", "must be one of"),
    ({"snes_python_type": "m"}, "solver.petsc.snes_python_type", "not an allowed PETSc option"),
    ({"log_view": "ascii:/tmp/x"}, "solver.petsc.log_view", "not an allowed PETSc option"),
    ({"ksp_view": True}, "solver.petsc.ksp_view", "not an allowed PETSc option"),
    ({"snes_monitor": "ascii:/tmp/x"}, "solver.petsc.snes_monitor", "true or false"),
    ({"ksp_rtol": 1.0}, "solver.petsc.ksp_rtol", "< 1"),
    ({"ksp_rtol": 10**400}, "solver.petsc.ksp_rtol", "< 1"),
    ({"ksp_max_it": 0}, "solver.petsc.ksp_max_it", "from 1 to"),
    ({"ksp_max_it": True}, "solver.petsc.ksp_max_it", "integer"),
    ({"mg_levels_pc_type": "shell"}, "solver.petsc.mg_levels_pc_type", "must be one of"),
    ({"mat_mumps_icntl_14": -5}, "solver.petsc.mat_mumps_icntl_14", "from 0 to"),
    ({"mat_mumps_icntl_4": 3}, "solver.petsc.mat_mumps_icntl_4", "not an allowed"),
])
def test_petsc_allow_list(options, key, allowed):
    err = _error({"solver": {"petsc": options}})
    assert err.key == key and allowed in err.allowed, str(err)


def test_petsc_allowed_values_normalised():
    from fem_crossdiff.petsc_options import to_petsc

    cfg = parse_config({**BASE, "solver": {"petsc": {
        "ksp_type": "FGMRES", "snes_atol": 0, "ksp_monitor": True,
        "snes_converged_reason": False, "snes_ksp_ew": False, "pc_gamg_reuse_interpolation": True,
        "mat_mumps_icntl_14": 50}}})
    opts = dict(cfg.solver.petsc)
    assert opts["ksp_type"] == "fgmres"
    assert opts["snes_atol"] == 0.0 and isinstance(opts["snes_atol"], float)
    petsc = to_petsc(opts)
    # a monitor is a flag without value (never a viewer/file name); false leaves it out
    assert petsc["ksp_monitor"] is None and "snes_converged_reason" not in petsc
    assert petsc["snes_ksp_ew"] is False and petsc["pc_gamg_reuse_interpolation"] is True
    assert petsc["mat_mumps_icntl_14"] == 50


@pytest.mark.parametrize("changes,key,allowed", [
    ({"output": {"every": 2**63}}, "output.every", "<= 9223372036854775807"),
    ({"time": {"T": 10**400}}, "time.T", "finite"),
    ({"geometry": {"builder": "disk", "radius": 10**400, "h": 0.3}}, "geometry.radius",
     "finite"),
    ({"output": {"folder": "out\0put"}}, "output.folder", "NUL"),
    ({"resources": {"memory_limit_gb": 0.0}}, "resources.memory_limit_gb", "> 0"),
    ({"resources": {"memory": 1.0}}, "resources.memory", "unknown key"),
    ({"short": {"time": {"dt": -1.0}}}, "short.time.dt", "> 0"),  # checked in full mode too
])
def test_failsafe_value_checks(changes, key, allowed):
    doc = {**BASE, **changes}
    if "time" in changes:
        doc["time"] = {**BASE["time"], **changes["time"]}
    with pytest.raises(ConfigError) as info:
        parse_config(doc, short=False)
    err = info.value
    assert err.key == key and allowed in err.allowed, str(err)


def test_memory_estimate_scales_with_h_and_n():
    from fem_crossdiff import resources

    def est(h, n=None):
        doc = {**BASE, "geometry": {"builder": "disk", "radius": 1.0, "h": h}}
        if n is not None:
            doc["particles"] = {"N": n, "eps": 0.5}
        return resources.estimate(parse_config(doc))

    a, b = est(0.02), est(0.01)
    assert 3.9 < b.cells / a.cells < 4.1  # cells ~ h^-2 in 2D
    assert abs(b.cells - 3.14159 * 4 / 3**0.5 / 0.01**2) < 1.0
    p1, p2 = est(0.1, 10**6), est(0.1, 2 * 10**6)
    assert abs(p2.parts["particles"] / p1.parts["particles"] - 2.0) < 1e-12
    assert est(0.1, 10**9).driver == "particles.N" and est(1e-5).driver == "geometry.h"
    doc = {**BASE, "model": {**BASE["model"], "type": "nonlocal", "eps": 0.5,
                             "subdivisions": 10**6}}
    with pytest.raises(ParameterError, match="more than the limit") as info:
        resources.check(parse_config(doc), 1e9)
    assert info.value.key == "model.subdivisions"


def test_expressions_of_any_parsable_depth():
    x = np.array([[0.25, 0.5], [0.0, 1.0], [0.0, 0.0]])
    deep = SafeExpression("-" * 1500 + "x")  # even: x itself
    assert np.array_equal(deep(x), x[0])
    long = SafeExpression("+".join(["x"] * 900))
    assert np.allclose(long(x), 900 * x[0], rtol=1e-14)
    nested = SafeExpression("exp(" * 3 + "0" + ")" * 3)
    assert np.allclose(nested(x), np.exp(np.exp(1.0)))
