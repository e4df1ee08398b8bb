"""The default scheme: ``"muscl"`` with the ``"smooth-sensor"`` limiter, in the API and the TOML.

The old default ``"upwind"`` stays selectable by name and keeps its first-order (more diffusive)
segregation front; the nonlocal model keeps its only (upwind) scheme without naming it; P2 still
needs ``scheme="galerkin"``, with an error that says so.
"""

from __future__ import annotations

import numpy as np
import pytest
import ufl

from fem_crossdiff.compat import MPI, fem, mesh
from fem_crossdiff.config import ConfigError, parse_config
from fem_crossdiff.config.reference import option_keys, section_keys
from fem_crossdiff.config.sections import SolverConfig
from fem_crossdiff.errors import ParameterError
from fem_crossdiff.models import default_scheme, entry
from fem_crossdiff.params import ModelParams, TimeParams
from fem_crossdiff.solver import CrossDiffusionSolver
from fem_crossdiff.study import _make_solver

COMM = MPI.COMM_WORLD
PARAMS = ModelParams(a=(1.0, 1.0), b=(1.0, 1.0), m=2.0, sigma=0.0)

#: A local study without ``scheme`` or ``limiter`` (two species on a small square).
STUDY = {
    "model": {"a": [1.0, 1.0], "b": [1.0, 1.0], "m": 2.0, "sigma": 0.0},
    "geometry": {"builder": "rectangle", "h": 0.5},
    "initial": [{"profile": "uniform", "value": 0.3}, {"profile": "uniform", "value": 0.2}],
    "time": {"T": 0.002, "dt": 1e-3},
    "output": {"formats": ["csv"], "progress": False},
}


@pytest.fixture(scope="module")
def square():
    return mesh.create_unit_square(COMM, 4, 4)


def test_documented_default_is_the_api_default(square):
    """No ``scheme``: muscl with smooth-sensor, as the registry, the docs and keys.md state."""
    assert default_scheme("local") == "muscl"
    assert entry(None, "local").options().limiter.name == "smooth-sensor"
    s = CrossDiffusionSolver(square, PARAMS)
    assert s.scheme == "muscl" and s.model.flux.limiter == "smooth-sensor"
    doc = " ".join(CrossDiffusionSolver.__doc__.split())
    assert '``"muscl"`` (default:' in doc
    # the key reference (docs/keys.md) states both defaults, from the registry
    rows = {r["key"]: r for r in section_keys(SolverConfig)}
    assert rows["scheme"]["default"] == '`"muscl"` (local), `"upwind"` (nonlocal)'
    opts = {r["key"]: r for r in option_keys(entry("muscl").options)}
    assert opts["limiter"]["default"].startswith('`{ name = "smooth-sensor"')


def test_toml_default_reaches_the_solver(square):
    """A study without ``[solver] scheme`` runs muscl / smooth-sensor; a named upwind stays."""
    cfg = parse_config(STUDY, source="test", short=True)
    assert cfg.solver.scheme is None and cfg.entry.scheme == "muscl"
    s = _make_solver(cfg, square)
    assert s.scheme == "muscl" and s.model.flux.limiter == "smooth-sensor"
    named = parse_config({**STUDY, "solver": {"scheme": "upwind"}}, source="test", short=True)
    assert _make_solver(named, square).scheme == "upwind"


def test_nonlocal_keeps_upwind_without_naming_it():
    """The nonlocal model (upwind only) needs no ``scheme``; naming muscl is still an error."""
    nonlocal_ = {**STUDY, "model": {**STUDY["model"], "type": "nonlocal", "eps": 0.1}}
    cfg = parse_config(nonlocal_, source="test", short=True)
    assert cfg.solver.scheme is None and (cfg.entry.pde, cfg.entry.scheme) == ("nonlocal",
                                                                                "upwind")
    with pytest.raises(ConfigError, match="solver.scheme.*'upwind'.*nonlocal"):
        parse_config({**nonlocal_, "solver": {"scheme": "muscl"}}, source="test", short=True)
    with pytest.raises(ConfigError, match="solver.limiter.*option of scheme 'muscl'"):
        parse_config({**nonlocal_, "solver": {"limiter": "vanleer"}}, source="test", short=True)


def test_degree_2_without_scheme_is_a_clear_error(square):
    """As with the old default (upwind is P1 only): degree 2 asks for ``scheme="galerkin"``."""
    with pytest.raises(ParameterError, match="scheme='galerkin' for degree=2"):
        CrossDiffusionSolver(square, PARAMS, degree=2)
    assert CrossDiffusionSolver(square, PARAMS, degree=2, scheme="galerkin").degree == 2
    with pytest.raises(ConfigError, match="solver.degree"):
        parse_config({**STUDY, "solver": {"degree": 2}}, source="test", short=True)


def _front(scheme: str | None, n: int = 200):
    """Overlap int rho_1 rho_2, masses before/after, min/max after a 1D segregation run.

    Two touching blocks of equal mobility at sigma = 0 (direct solver on the interval): the
    overlap grows only through the scheme's numerical diffusion of the species fractions.
    """
    kw = {} if scheme is None else {"scheme": scheme}
    s = CrossDiffusionSolver(mesh.create_interval(COMM, n, [-1.0, 1.0]), PARAMS, **kw)
    bump = lambda x: np.maximum(0.0, 0.8 - x[0] ** 2)  # noqa: E731
    jump = 0.1 + 1.0 / n  # half a cell off the node at 0.1
    s.set_initial([lambda x: np.where(x[0] < jump, bump(x), 0.0),
                   lambda x: np.where(x[0] >= jump, bump(x), 0.0)])
    m0 = s.masses()
    rows = s.run(TimeParams(T=0.2, dt=4e-3), progress=False)
    overlap = COMM.allreduce(fem.assemble_scalar(fem.form(s.rho[0] * s.rho[1] * ufl.dx)),
                             op=MPI.SUM)
    return overlap, m0, s.masses(), s.extrema(), max(r["newton_its"] for r in rows), s.scheme


def test_upwind_by_name_is_more_diffusive_than_the_default():
    """``scheme="upwind"`` is still selectable and smears the front more than the default.

    Measured (n = 200, T = 0.2, dt = 4e-3): overlap 1.93e-3 (default) against 4.29e-3
    (upwind), ratio 0.45; at most 4 Newton iterations per step for both.
    """
    up, dflt = _front("upwind"), _front(None)
    assert (up[-1], dflt[-1]) == ("upwind", "muscl")
    for overlap, m0, m1, (mn, mx), _, _ in (up, dflt):
        assert overlap > 0.0
        np.testing.assert_allclose(m1, m0, rtol=1e-11)
        assert np.all(mn >= -1e-12 * mx)
    assert dflt[0] < 0.7 * up[0], (up[0], dflt[0])
    assert dflt[4] <= up[4] + 1, (up[4], dflt[4])
