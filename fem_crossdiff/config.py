"""TOML study files: parsing, validation with dotted-key errors, defaults, short mode.

A study file has the sections ``[model]``, ``[geometry]``, ``[[initial]]`` (one table per
species), ``[time]``, ``[solver]``, ``[particles]`` (optional), ``[output]`` and ``[short]``
(optional overrides, deep-merged into the other sections in short mode: coarse mesh, small T).
Every problem is a :class:`ConfigError` naming the dotted key (``model.a[1]``,
``initial[0].expr``), the offending value and what is allowed; unknown keys are errors at every
level. Validation depends only on the file (and, for ``geometry.msh``, on the file system), so
it gives the same verdict on every MPI rank. A relative ``geometry.msh`` path is taken relative
to the study file; ``output.folder`` relative to the working directory.

Initial profiles (``x`` the point, ``c`` the centre):

* ``gaussian``: ``height * exp(-|x - c|^2 / (2 width^2)) + background``;
* ``disk``: ``value`` where ``|x - c| < radius``, ``background`` elsewhere (a ball in 3D);
* ``half_plane``: ``value`` where ``normal . x > offset``, ``background`` elsewhere;
* ``uniform``: the constant ``value``;
* ``expression``: ``expr``, an arithmetic expression in ``x, y, z, pi, e`` with the functions
  of :data:`EXPR_FUNCTIONS`, evaluated by a whitelist walker over Python's ``ast`` (never
  ``eval``): no attribute access, subscripts, lambdas, comprehensions or other names.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import inspect
import json
import math
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from fem_crossdiff.mollifiers import KERNELS
from fem_crossdiff.params import (
    COUPLINGS,
    LINEAR_SOLVERS,
    NEGATIVE_EDGE_MODES,
    SCHEMES,
    TIME_METHODS,
    ModelParams,
    TimeParams,
)

__all__ = [
    "ConfigError",
    "ModelConfig",
    "GeometryConfig",
    "InitialConfig",
    "TimeConfig",
    "SolverConfig",
    "ParticlesConfig",
    "OutputConfig",
    "StudyConfig",
    "SafeExpression",
    "load_config",
    "parse_config",
    "short_mode_requested",
    "to_toml",
    "EXPR_FUNCTIONS",
    "FORMATS",
    "PROFILES",
]

MODEL_TYPES = ("local", "nonlocal")
_NONLOCAL_KEYS = ("eps", "kernel", "coupling", "allow_small_eps", "subdivisions")
FORMATS = ("vtx", "xdmf", "csv", "png")
SECTIONS = ("title", "model", "geometry", "initial", "time", "solver", "particles", "output",
            "short")
#: profile -> (required keys, optional keys with defaults)
PROFILES: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "gaussian": (("center", "width", "height"), {"background": 0.0}),
    "disk": (("center", "radius", "value"), {"background": 0.0}),
    "half_plane": (("normal", "value"), {"offset": 0.0, "background": 0.0}),
    "uniform": (("value",), {}),
    "expression": (("expr",), {}),
}
#: Functions allowed in ``profile = "expression"``, with their arities.
EXPR_FUNCTIONS: dict[str, tuple[Callable, int]] = {
    "exp": (np.exp, 1), "log": (np.log, 1), "sin": (np.sin, 1), "cos": (np.cos, 1),
    "tan": (np.tan, 1), "tanh": (np.tanh, 1), "sqrt": (np.sqrt, 1), "abs": (np.abs, 1),
    "min": (np.minimum, 2), "max": (np.maximum, 2), "where": (np.where, 3),
}
EXPR_NAMES = ("x", "y", "z", "pi", "e")
_MAX_EXPR = 2000


class ConfigError(ValueError):
    """A bad study file: names the dotted key, the value found and what is allowed.

    Attributes:
        key: Dotted path of the offending entry, e.g. ``"initial[1].expr"``.
        value: The value found (``None`` when missing).
        allowed: What would be accepted.
    """

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        shown = "<missing>" if value is _MISSING else _show(value)
        super().__init__(f"{key} = {shown}: {allowed}")

    def __reduce__(self):
        return (ConfigError, (self.key, self.value, self.allowed))


class _Missing:
    def __repr__(self):
        return "<missing>"


_MISSING = _Missing()


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------- scalar checks
def _float(key: str, v: Any, *, lo: float | None = None, lo_open: bool = False,
           hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(key, v, "must be a number")
    f = float(v)
    if not math.isfinite(f):
        raise ConfigError(key, v, "must be finite")
    if lo is not None and (f <= lo if lo_open else f < lo):
        raise ConfigError(key, v, f"must be {'>' if lo_open else '>='} {lo:g}")
    if hi is not None and f > hi:
        raise ConfigError(key, v, f"must be <= {hi:g}")
    return f


def _int(key: str, v: Any, *, lo: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(key, v, "must be an integer")
    if lo is not None and v < lo:
        raise ConfigError(key, v, f"must be an integer >= {lo}")
    return int(v)


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(key, v, "must be true or false")
    return v


def _choice(key: str, v: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in choices:
        raise ConfigError(key, v, f"must be one of {', '.join(map(repr, choices))}")
    return v


def _vector(key: str, v: Any, dim: int | None = None) -> tuple[float, ...]:
    if not isinstance(v, (list, tuple)) or not 1 <= len(v) <= 3:
        raise ConfigError(key, v, "must be a list of 1 to 3 numbers")
    vec = tuple(_float(f"{key}[{i}]", c) for i, c in enumerate(v))
    if dim is not None and len(vec) != dim:
        raise ConfigError(key, v, f"must have {dim} coordinates (the geometry is {dim}D)")
    return vec


def _table(key: str, v: Any, allowed: tuple[str, ...] | list[str],
           required: tuple[str, ...] = ()) -> dict:
    if not isinstance(v, dict):
        raise ConfigError(key, v, "must be a table")
    for k in v:
        if k not in allowed:
            where = f"[{key}]" if key else "the top level"
            raise ConfigError(f"{key}.{k}" if key else k, v[k],
                              f"unknown key; allowed in {where}: {', '.join(allowed)}")
    for k in required:
        if k not in v:
            raise ConfigError(f"{key}.{k}" if key else k, _MISSING, "required key is missing")
    return v


def _param_key(section: str, message: str, names) -> str:
    # The parameter classes start their messages with the parameter name ("dt_min must ...").
    head = message.split(" ", 1)[0].split("[", 1)[0]
    return f"{section}.{head}" if head in names else section


# --------------------------------------------------------------------------- expression
class SafeExpression:
    """An arithmetic expression of ``x, y, z`` evaluated with numpy, without ``eval``.

    Only numbers, the names :data:`EXPR_NAMES`, the operators ``+ - * / ** %``, comparisons
    (for ``where``) and calls of :data:`EXPR_FUNCTIONS` by name are accepted; everything else
    (attributes, subscripts, strings, lambdas, comprehensions, keyword arguments, other names)
    is rejected when the expression is parsed.

    Args:
        text: The expression, e.g. ``"0.5*exp(-x**2-y**2)"``.
        key: Dotted config key, for error messages.

    Raises:
        ConfigError: on any syntax error or forbidden construct (the message names it).
    """

    _BINOPS = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply,
               ast.Div: np.divide, ast.Pow: np.power, ast.Mod: np.mod}
    _UNARY = {ast.USub: np.negative, ast.UAdd: np.positive}
    _CMP = {ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater,
            ast.GtE: np.greater_equal}

    def __init__(self, text: str, key: str = "expr"):
        self.text, self.key = text, key
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(key, text, "must be a non-empty string expression")
        if len(text) > _MAX_EXPR:
            raise ConfigError(key, text, f"must be at most {_MAX_EXPR} characters")
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as err:
            raise ConfigError(key, text, f"is not a valid expression ({err.msg})") from None
        self._body = tree.body
        self._check(self._body)

    def _reject(self, node, what: str):
        raise ConfigError(self.key, self.text,
                          f"{what} is not allowed; use numbers, the names "
                          f"{', '.join(EXPR_NAMES)}, + - * / ** % < <= > >= and the functions "
                          f"{', '.join(EXPR_FUNCTIONS)}")

    def _check(self, node) -> None:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                self._reject(node, f"the constant {node.value!r}")
        elif isinstance(node, ast.Name):
            if node.id not in EXPR_NAMES:
                self._reject(node, f"the name {node.id!r}")
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in self._BINOPS:
                self._reject(node, f"the operator {type(node.op).__name__}")
            self._check(node.left)
            self._check(node.right)
        elif isinstance(node, ast.UnaryOp):
            if type(node.op) not in self._UNARY:
                self._reject(node, f"the operator {type(node.op).__name__}")
            self._check(node.operand)
        elif isinstance(node, ast.Compare):
            if len(node.ops) != 1 or type(node.ops[0]) not in self._CMP:
                self._reject(node, "this comparison")
            self._check(node.left)
            self._check(node.comparators[0])
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in EXPR_FUNCTIONS:
                what = (f"the function {node.func.id!r}" if isinstance(node.func, ast.Name)
                        else "calling anything but a named function")
                self._reject(node, what)
            if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
                self._reject(node, "keyword or starred arguments")
            arity = EXPR_FUNCTIONS[node.func.id][1]
            if len(node.args) != arity:
                raise ConfigError(self.key, self.text,
                                  f"{node.func.id} takes {arity} argument(s), "
                                  f"got {len(node.args)}")
            for a in node.args:
                self._check(a)
        else:
            self._reject(node, f"{type(node).__name__} ({ast.unparse(node)!r})")

    def _eval(self, node, env: dict[str, np.ndarray]):
        if isinstance(node, ast.Constant):
            return float(node.value)  # floats only: no exact big-integer powers
        if isinstance(node, ast.Name):
            return env[node.id]
        if isinstance(node, ast.BinOp):
            return self._BINOPS[type(node.op)](self._eval(node.left, env),
                                               self._eval(node.right, env))
        if isinstance(node, ast.UnaryOp):
            return self._UNARY[type(node.op)](self._eval(node.operand, env))
        if isinstance(node, ast.Compare):
            return self._CMP[type(node.ops[0])](self._eval(node.left, env),
                                                self._eval(node.comparators[0], env))
        fn = EXPR_FUNCTIONS[node.func.id][0]
        return fn(*[self._eval(a, env) for a in node.args])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Evaluate at points ``x`` of shape ``(3, N)`` (DOLFINx layout); returns shape ``(N,)``."""
        x = np.asarray(x, dtype=float)
        zero = np.zeros(x.shape[1])
        rows = [x[i] if i < x.shape[0] else zero for i in range(3)]
        env = {"x": rows[0], "y": rows[1], "z": rows[2], "pi": math.pi, "e": math.e}
        with np.errstate(all="ignore"):  # NaN/inf are reported by the solver's checks
            out = self._eval(self._body, env)
        return np.array(np.broadcast_to(np.asarray(out, dtype=float), zero.shape))


# --------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: coefficients of (1.1) and, for ``type = "nonlocal"``, the mollifier.

    Attributes:
        a: Volume weights, one per species (their count is the number of species).
        b: Mobilities, same length as ``a``.
        m: Pressure exponent, ``m >= 2``.
        sigma: Linear diffusion, ``>= 0``.
        type: ``"local"`` (1.1) or ``"nonlocal"`` (1.5).
        eps: Mollifier radius ``> 0`` (nonlocal only, required there).
        kernel: Mollifier name (nonlocal only; default ``"bump"``).
        coupling: ``"linear"`` or ``"implicit"`` (nonlocal only; default ``"linear"``).
        allow_small_eps: Accept ``eps`` below two cells (a warning instead of an error;
            nonlocal only; default false).
        subdivisions: Quadrature refinement of the mollification (nonlocal only; default 1).
    """

    a: tuple[float, ...]
    b: tuple[float, ...]
    m: float = 2.0
    sigma: float = 0.0
    type: str = "local"
    eps: float | None = None
    kernel: str | None = None
    coupling: str | None = None
    allow_small_eps: bool | None = None
    subdivisions: int | None = None

    def __post_init__(self):
        for name in ("a", "b"):
            vals = getattr(self, name)
            if not isinstance(vals, (list, tuple)) or len(vals) == 0:
                raise ConfigError(f"model.{name}", vals,
                                  "must be a non-empty list of positive numbers, one per species")
            _set(self, **{name: tuple(_float(f"model.{name}[{i}]", v, lo=0.0, lo_open=True)
                                      for i, v in enumerate(vals))})
        if len(self.b) != len(self.a):
            raise ConfigError("model.b", list(self.b),
                              f"must have one mobility per species (len(model.a) = "
                              f"{len(self.a)})")
        _set(self, m=_float("model.m", self.m, lo=2.0),
             sigma=_float("model.sigma", self.sigma, lo=0.0),
             type=_choice("model.type", self.type, MODEL_TYPES))
        if self.type == "local":
            for name in _NONLOCAL_KEYS:
                if getattr(self, name) is not None:
                    raise ConfigError(f"model.{name}", getattr(self, name),
                                      'only allowed with model.type = "nonlocal"')
            return
        if self.eps is None:
            raise ConfigError("model.eps", _MISSING, 'required when model.type = "nonlocal" '
                              "(mollifier radius > 0)")
        _set(self, eps=_float("model.eps", self.eps, lo=0.0, lo_open=True),
             kernel=_choice("model.kernel", "bump" if self.kernel is None else self.kernel,
                            KERNELS),
             coupling=_choice("model.coupling",
                              "linear" if self.coupling is None else self.coupling, COUPLINGS),
             allow_small_eps=_bool("model.allow_small_eps", False if self.allow_small_eps is None
                                   else self.allow_small_eps),
             subdivisions=_int("model.subdivisions",
                               1 if self.subdivisions is None else self.subdivisions, lo=1))

    @property
    def n(self) -> int:
        """Number of species."""
        return len(self.a)

    def params(self) -> ModelParams:
        """The validated :class:`~fem_crossdiff.params.ModelParams`."""
        return ModelParams(a=self.a, b=self.b, m=self.m, sigma=self.sigma)

    def nonlocal_params(self):
        """The ``NonlocalParams`` of :mod:`fem_crossdiff.nonlocal_` (nonlocal models only).

        Raises:
            RuntimeError: the nonlocal module is not available in this installation.
        """
        try:
            from fem_crossdiff.nonlocal_ import NonlocalParams
        except ImportError as err:
            raise RuntimeError(f'model.type = "nonlocal" needs fem_crossdiff.nonlocal_, which '
                               f"cannot be imported here ({err})") from None
        return NonlocalParams(eps=self.eps, kernel=self.kernel, coupling=self.coupling,
                              allow_small_eps=self.allow_small_eps,
                              subdivisions=self.subdivisions)


@dataclass(frozen=True)
class GeometryConfig:
    """``[geometry]``: a registered gmsh builder with its parameters, or a ``.msh`` file.

    Attributes:
        builder: Name in :data:`meshes.BUILDERS`, or None.
        params: The builder's keyword parameters (sorted ``(name, value)`` pairs).
        msh: Absolute path of a gmsh file, or None.
        gdim: Geometric dimension: the builder's, or the one given with ``msh`` (None: the
            file's topological dimension, known only once read).
    """

    builder: str | None = None
    params: tuple[tuple[str, Any], ...] = ()
    msh: str | None = None
    gdim: int | None = None

    def __post_init__(self):
        if (self.builder is None) == (self.msh is None):
            raise ConfigError("geometry.builder", self.builder,
                              'give exactly one of geometry.builder = "<name>" (with its '
                              'parameters) or geometry.msh = "<file>"')
        if self.msh is not None:
            if self.params:
                k = self.params[0][0]
                raise ConfigError(f"geometry.{k}", self.params[0][1],
                                  "unknown key; with geometry.msh only gdim is allowed")
            if not isinstance(self.msh, str):
                raise ConfigError("geometry.msh", self.msh, "must be a file path string")
            if self.gdim is not None and (isinstance(self.gdim, bool)
                                          or self.gdim not in (1, 2, 3)):
                raise ConfigError("geometry.gdim", self.gdim, "must be 1, 2 or 3")
            return
        import meshes

        if not isinstance(self.builder, str) or self.builder not in meshes.BUILDERS:
            raise ConfigError("geometry.builder", self.builder,
                              f"must be one of {', '.join(sorted(meshes.BUILDERS))}")
        if self.gdim is not None:
            raise ConfigError("geometry.gdim", self.gdim, "only allowed with geometry.msh")
        signature = inspect.signature(meshes.BUILDERS[self.builder]).parameters
        allowed = [p for p in signature if p != "comm"]
        params = {}
        for k, v in self.params:
            if k not in allowed:
                raise ConfigError(f"geometry.{k}", v, f"unknown parameter of builder "
                                  f"{self.builder!r}; allowed: {', '.join(allowed)}")
            params[k] = _tuples(v)
        try:
            spec = meshes.validate(self.builder, **params)
        except (ValueError, TypeError) as err:
            key = _param_key("geometry", str(err), allowed)
            raise ConfigError(key, params.get(key.split(".", 1)[-1], self.builder),
                              str(err)) from None
        defaults = {k: _tuples(list(p.default)) if isinstance(p.default, tuple) else p.default
                    for k, p in signature.items() if k != "comm"}
        _set(self, params=tuple(sorted({**defaults, **params}.items())), gdim=int(spec.gdim))

    def build(self, comm):
        """Build or read the mesh (collective).

        Returns:
            The :class:`meshes.Geometry`.
        """
        import meshes

        if self.msh is not None:
            return meshes.read_msh(self.msh, comm, gdim=self.gdim)
        return meshes.build(self.builder, comm, **dict(self.params))


def _tuples(v):
    return tuple(_tuples(i) for i in v) if isinstance(v, list) else v


@dataclass(frozen=True)
class InitialConfig:
    """One ``[[initial]]`` table: the initial density of one species.

    Attributes:
        profile: One of :data:`PROFILES`.
        values: The profile's parameters (sorted ``(name, value)`` pairs, defaults filled in).
        key: The dotted key of this table (``initial[k]``), for messages.
        gdim: Geometric dimension the vectors were checked against (None: unknown yet).
    """

    profile: str
    values: tuple[tuple[str, Any], ...]
    key: str = "initial[0]"
    gdim: int | None = None

    def __post_init__(self):
        profile = _choice(f"{self.key}.profile", self.profile, tuple(PROFILES))
        required, optional = PROFILES[profile]
        raw = dict(self.values)
        _table(self.key, {"profile": profile, **raw}, ("profile", *required, *optional),
               required)
        vals = {**optional, **raw}
        out: dict[str, Any] = {}
        for k, v in vals.items():
            key = f"{self.key}.{k}"
            if k in ("center", "normal"):
                out[k] = _vector(key, v, self.gdim)
                if k == "normal" and not any(out[k]):
                    raise ConfigError(key, v, "must be a nonzero vector")
            elif k in ("width", "radius"):
                out[k] = _float(key, v, lo=0.0, lo_open=True)
            elif k in ("height", "value", "background"):
                out[k] = _float(key, v, lo=0.0)
            elif k == "offset":
                out[k] = _float(key, v)
            elif k == "expr":
                SafeExpression(v, key)
                out[k] = v
        if profile in ("gaussian", "disk", "uniform", "half_plane"):
            main = out["height"] if profile == "gaussian" else out["value"]
            if main <= 0.0:
                name = "height" if profile == "gaussian" else "value"
                raise ConfigError(f"{self.key}.{name}", main, "must be > 0 (a species needs "
                                  "positive mass)")
        _set(self, profile=profile, values=tuple(sorted(out.items())))

    def function(self, gdim: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
        """The profile as a callable of DOLFINx points ``x`` (shape ``(3, N)``).

        Args:
            gdim: The mesh's geometric dimension, checked against the vectors of the profile.

        Raises:
            ConfigError: a centre or normal whose length differs from ``gdim``.
        """
        v = dict(self.values)
        for k in ("center", "normal"):
            if k in v and gdim is not None and len(v[k]) != gdim:
                raise ConfigError(f"{self.key}.{k}", list(v[k]),
                                  f"must have {gdim} coordinates (the mesh is {gdim}D)")
        if self.profile == "expression":
            return SafeExpression(v["expr"], f"{self.key}.expr")
        if self.profile == "uniform":
            value = v["value"]
            return lambda x: np.full(x.shape[1], value)

        def offset_of(x, vec):
            vec = np.asarray(vec)
            return x[: vec.size].T - vec if self.profile != "half_plane" else x[: vec.size].T @ vec

        bg = v["background"]
        if self.profile == "gaussian":
            c, w, h = v["center"], v["width"], v["height"]
            return lambda x: h * np.exp(-np.sum(offset_of(x, c) ** 2, axis=1) / (2 * w * w)) + bg
        if self.profile == "disk":
            c, r, val = v["center"], v["radius"], v["value"]
            return lambda x: np.where(np.sum(offset_of(x, c) ** 2, axis=1) < r * r, val, bg)
        nrm, off, val = v["normal"], v["offset"], v["value"]
        return lambda x: np.where(offset_of(x, nrm) > off, val, bg)


@dataclass(frozen=True)
class TimeConfig(TimeParams):
    """``[time]``: a :class:`~fem_crossdiff.params.TimeParams` read from a study file.

    The fields and their ranges are those of ``TimeParams`` (``easy_newton`` is not a key);
    this class adds the file's strict typing (no strings for numbers, real booleans) and names
    the offending key (``time.dt``) in its errors.
    """

    def __post_init__(self):
        _set(self, T=_float("time.T", self.T), dt=_float("time.dt", self.dt),
             method=_choice("time.method", self.method, TIME_METHODS),
             adaptive=_bool("time.adaptive", self.adaptive),
             dt_min=_float("time.dt_min", self.dt_min), grow=_float("time.grow", self.grow),
             shrink=_float("time.shrink", self.shrink))
        if self.dt_max is not None:
            _set(self, dt_max=_float("time.dt_max", self.dt_max))
        try:
            super().__post_init__()
        except ValueError as err:
            key = _param_key("time", str(err), TIME_KEYS)
            raise ConfigError(key, getattr(self, key.split(".")[-1], None), str(err)) from None

    def params(self, dt: float | None = None) -> TimeParams:
        """The plain :class:`~fem_crossdiff.params.TimeParams` (optionally another first step)."""
        values = {k: getattr(self, k) for k in TIME_KEYS}
        return TimeParams(**{**values, "dt": self.dt if dt is None else dt})


#: ``[time]`` keys: the fields of :class:`~fem_crossdiff.params.TimeParams` but ``easy_newton``.
TIME_KEYS = tuple(f.name for f in fields(TimeParams) if f.name != "easy_newton")


@dataclass(frozen=True)
class SolverConfig:
    """``[solver]``: discretisation and PETSc options.

    Attributes:
        scheme: ``"upwind"`` (P1, positivity preserving) or ``"galerkin"``.
        degree: Lagrange degree, 1 or 2 (``upwind`` needs 1).
        linear_solver: ``"auto"`` (MUMPS in 1D, else GMRES + GAMG), ``"iterative"`` or
            ``"direct"``.
        petsc: Extra PETSc options (sorted ``(name, value)`` pairs), passed through.
        positivity_tol: Reject steps with ``min rho_k < -positivity_tol * max rho_k``
            (``>= 0``; raise it where positivity is not guaranteed, e.g. with
            ``negative_edges = "keep"``).
        negative_edges: Upwind scheme on non-Delaunay meshes: ``"limit"`` (default),
            ``"drop"`` or ``"keep"`` (see :class:`~fem_crossdiff.solver.CrossDiffusionSolver`).
    """

    scheme: str = "upwind"
    degree: int = 1
    linear_solver: str = "auto"
    petsc: tuple[tuple[str, Any], ...] = ()
    positivity_tol: float = 1e-10
    negative_edges: str = "limit"

    def __post_init__(self):
        _set(self, positivity_tol=_float("solver.positivity_tol", self.positivity_tol, lo=0.0))
        _set(self, scheme=_choice("solver.scheme", self.scheme, SCHEMES),
             linear_solver=_choice("solver.linear_solver", self.linear_solver, LINEAR_SOLVERS),
             negative_edges=_choice("solver.negative_edges", self.negative_edges,
                                    NEGATIVE_EDGE_MODES))
        if isinstance(self.degree, bool) or self.degree not in (1, 2):
            raise ConfigError("solver.degree", self.degree, "must be 1 or 2")
        if self.scheme == "upwind" and self.degree != 1:
            raise ConfigError("solver.degree", self.degree,
                              'must be 1 with solver.scheme = "upwind" (use "galerkin" for P2)')
        for k, v in self.petsc:
            key = f"solver.petsc.{k}"
            if not k.replace("_", "").isalnum() or k.startswith("_"):
                raise ConfigError(key, v, "PETSc option names are letters, digits and '_' "
                                  "(no leading '-' or prefix)")
            if not isinstance(v, (str, int, float, bool)):
                raise ConfigError(key, v, "must be a string, number or boolean")
        _set(self, petsc=tuple(sorted(self.petsc)))


@dataclass(frozen=True)
class ParticlesConfig:
    """``[particles]``: the interacting particle system (1.6), run alongside the PDE.

    The particles start as samples of the initial densities and take one Euler-Maruyama step
    per accepted PDE step (same ``dt``), interacting through ``V^eps``.

    Attributes:
        N: Particles per species, ``>= 1``.
        seed: Seed of the random streams, ``>= 0``.
        output_every: Position output cadence in steps, ``>= 1``.
        eps: Mollifier radius ``> 0`` (default: ``model.eps`` for the nonlocal model; required
            for the local model).
        kernel: Mollifier name (default: ``model.kernel``, or ``"bump"``).
    """

    N: int
    seed: int = 0
    output_every: int = 1
    eps: float | None = None
    kernel: str | None = None

    def __post_init__(self):
        _int("particles.N", self.N, lo=1)
        _int("particles.seed", self.seed, lo=0)
        _int("particles.output_every", self.output_every, lo=1)
        if self.eps is None:
            raise ConfigError("particles.eps", _MISSING, "required with the local model (the "
                              "particles interact through V^eps); defaults to model.eps for "
                              "the nonlocal model")
        _set(self, eps=_float("particles.eps", self.eps, lo=0.0, lo_open=True),
             kernel=_choice("particles.kernel", "bump" if self.kernel is None else self.kernel,
                            KERNELS))


@dataclass(frozen=True)
class OutputConfig:
    """``[output]``: where and what to write.

    Attributes:
        folder: Output folder (relative paths are relative to the working directory).
        formats: Subset of :data:`FORMATS`.
        every: Field output (VTX/XDMF) cadence in accepted steps, ``>= 1``.
        checkpoint_every: Checkpoint cadence in accepted steps (0: no checkpoints).
        progress: Progress lines on rank 0.
    """

    folder: str
    formats: tuple[str, ...] = ("vtx", "csv", "png")
    every: int = 1
    checkpoint_every: int = 0
    progress: bool = True

    def __post_init__(self):
        if not isinstance(self.folder, str) or not self.folder:
            raise ConfigError("output.folder", self.folder, "must be a non-empty path string")
        if not isinstance(self.formats, (list, tuple)):
            raise ConfigError("output.formats", self.formats,
                              f"must be a list drawn from {', '.join(FORMATS)}")
        for i, f in enumerate(self.formats):
            _choice(f"output.formats[{i}]", f, FORMATS)
        if len(set(self.formats)) != len(self.formats):
            raise ConfigError("output.formats", list(self.formats), "must not repeat a format")
        _set(self, formats=tuple(self.formats))
        _int("output.every", self.every, lo=1)
        _int("output.checkpoint_every", self.checkpoint_every, lo=0)
        _bool("output.progress", self.progress)


@dataclass(frozen=True)
class StudyConfig:
    """A validated study: every section with its defaults filled in.

    Attributes:
        model: ``[model]``.
        geometry: ``[geometry]``.
        initial: One ``[[initial]]`` per species.
        time: ``[time]``.
        solver: ``[solver]``.
        output: ``[output]``.
        particles: ``[particles]`` or None.
        title: Free text.
        source: The TOML file ("" if parsed from a dict).
        short: Whether the ``[short]`` overrides were applied.
    """

    model: ModelConfig
    geometry: GeometryConfig
    initial: tuple[InitialConfig, ...]
    time: TimeConfig
    solver: SolverConfig
    output: OutputConfig
    particles: ParticlesConfig | None = None
    title: str = ""
    source: str = ""
    short: bool = False
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if self.model.type == "nonlocal" and self.solver.scheme != "upwind":
            raise ConfigError("solver.scheme", self.solver.scheme,
                              'must be "upwind" with model.type = "nonlocal"')
        if len(self.initial) != self.model.n:
            raise ConfigError("initial", f"{len(self.initial)} table(s)",
                              f"needs one [[initial]] table per species ({self.model.n}, the "
                              "length of model.a)")

    def to_dict(self) -> dict:
        """The resolved configuration as plain TOML-compatible data (defaults included)."""
        model = {k: getattr(self.model, k) for k in ("type", "a", "b", "m", "sigma")}
        if self.model.type == "nonlocal":
            model.update({k: getattr(self.model, k) for k in _NONLOCAL_KEYS})
        g = self.geometry
        geometry = ({"msh": g.msh} | ({"gdim": g.gdim} if g.gdim is not None else {})
                    if g.msh is not None else {"builder": g.builder, **dict(g.params)})
        t = self.time
        time = {k: getattr(t, k) for k in TIME_KEYS if getattr(t, k) is not None}
        s = self.solver
        solver = {"scheme": s.scheme, "degree": s.degree, "linear_solver": s.linear_solver,
                  "positivity_tol": s.positivity_tol, "negative_edges": s.negative_edges,
                  "petsc": dict(s.petsc)}
        o = self.output
        out = {"title": self.title} if self.title else {}
        out.update(model=model, geometry=geometry,
                   initial=[{"profile": i.profile, **dict(i.values)} for i in self.initial],
                   time=time, solver=solver)
        if self.particles is not None:
            p = self.particles
            out["particles"] = {"N": p.N, "seed": p.seed, "output_every": p.output_every,
                                "eps": p.eps, "kernel": p.kernel}
        out["output"] = {"folder": o.folder, "formats": list(o.formats), "every": o.every,
                         "checkpoint_every": o.checkpoint_every, "progress": o.progress}
        return _plain(out)

    def physics_hash(self) -> str:
        """A 16-hex-digit SHA-256 of what a restart must share with the run it continues.

        That is the model, geometry, initial data, solver and time stepping except ``T`` and
        the first step ``dt`` (a restart takes its step from the checkpoint).
        """
        d = self.to_dict()
        d["time"].pop("T")
        d["time"].pop("dt")  # a restart takes its step from the checkpoint
        d.pop("output")
        d.pop("title", None)
        d.pop("particles", None)
        text = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _set(obj, **values) -> None:
    # Frozen dataclasses: normalised values are stored once, during validation.
    for key, value in values.items():
        object.__setattr__(obj, key, value)


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


# --------------------------------------------------------------------------- parsing
def _merge(base: dict, over: dict, key: str = "short") -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, f"{key}.{k}")
        else:
            out[k] = copy.deepcopy(v)
    return out


def _section(raw: dict, name: str, allowed, required=()) -> dict:
    if name not in raw:
        if required or name in ("model", "geometry", "time"):
            raise ConfigError(name, _MISSING, f"the section [{name}] is required")
        return {}
    return _table(name, raw[name], allowed, required)


def _kwargs(table: dict, names) -> dict:
    return {k: table[k] for k in names if k in table}


def parse_config(raw: dict, *, base_dir: str | Path = ".", source: str = "",
                 short: bool = False, check_files: bool = True) -> StudyConfig:
    """Validate a parsed TOML document.

    Args:
        raw: The document (as from ``tomllib``).
        base_dir: Folder against which a relative ``geometry.msh`` is resolved.
        source: Name of the file, recorded in the result and used for the default folder.
        short: Apply the ``[short]`` overrides.
        check_files: Check that ``geometry.msh`` exists (call on one rank, then share).

    Returns:
        The :class:`StudyConfig`.

    Raises:
        ConfigError: naming the dotted key, the value and what is allowed.
    """
    _table("", raw, SECTIONS)
    if "short" in raw:
        over = _table("short", raw["short"], [s for s in SECTIONS if s != "short"])
        if short:
            _parse(raw, base_dir, source, False, check_files)  # errors name the base keys
            try:
                merged = _merge({k: v for k, v in raw.items() if k != "short"}, over)
                return _parse(merged, base_dir, source, True, check_files)
            except ConfigError as err:
                raise ConfigError(f"short.{err.key}", err.value, err.allowed) from None
    return _parse(raw, base_dir, source, False, check_files)


def _parse(raw: dict, base_dir, source: str, short: bool, check_files: bool) -> StudyConfig:
    title = raw.get("title", "")
    if not isinstance(title, str):
        raise ConfigError("title", title, "must be a string")
    keys = ("type", "a", "b", "m", "sigma", *_NONLOCAL_KEYS)
    model = ModelConfig(**_kwargs(_section(raw, "model", keys, ("a", "b")), keys))
    g = _section(raw, "geometry", _geometry_keys(raw.get("geometry")))
    if "msh" in g:
        path = g["msh"]
        if isinstance(path, str):
            p = Path(path).expanduser()
            p = p if p.is_absolute() else (Path(base_dir) / p)
            path = str(p.resolve())
            if check_files and not p.is_file():
                raise ConfigError("geometry.msh", g["msh"], f"mesh file not found ({path})")
        geometry = GeometryConfig(msh=path, gdim=g.get("gdim"),
                                  params=tuple((k, v) for k, v in g.items()
                                               if k not in ("msh", "gdim")))
    else:
        geometry = GeometryConfig(builder=g.get("builder"), gdim=g.get("gdim"),
                                  params=tuple((k, v) for k, v in g.items()
                                               if k not in ("builder", "gdim")))
    if "initial" not in raw:
        raise ConfigError("initial", _MISSING, f"one [[initial]] table per species is required "
                          f"({model.n})")
    init_raw = raw["initial"]
    if not isinstance(init_raw, list):
        raise ConfigError("initial", init_raw, "must be an array of tables [[initial]]")
    initial = []
    for k, tab in enumerate(init_raw):
        key = f"initial[{k}]"
        if not isinstance(tab, dict):
            raise ConfigError(key, tab, "must be a table")
        if "profile" not in tab:
            raise ConfigError(f"{key}.profile", _MISSING,
                              f"required; one of {', '.join(PROFILES)}")
        initial.append(InitialConfig(profile=tab["profile"], key=key, gdim=geometry.gdim,
                                     values=tuple((a, b) for a, b in tab.items()
                                                  if a != "profile")))
    t = _section(raw, "time", TIME_KEYS, ("T", "dt"))
    time = TimeConfig(**t)
    s = _section(raw, "solver", ("scheme", "degree", "linear_solver", "positivity_tol",
                                 "negative_edges", "petsc"))
    petsc = s.get("petsc", {})
    _table("solver.petsc", petsc, list(petsc))
    for k, v in petsc.items():
        if isinstance(v, dict):
            raise ConfigError(f"solver.petsc.{k}", v, "must be a string, number or boolean")
    solver = SolverConfig(**_kwargs(s, ("scheme", "degree", "linear_solver", "positivity_tol",
                                        "negative_edges")),
                          petsc=tuple(petsc.items()))
    particles = None
    if "particles" in raw:
        p = _section(raw, "particles", ("N", "seed", "output_every", "eps", "kernel"), ("N",))
        if model.type == "nonlocal":
            p = {"eps": model.eps, "kernel": model.kernel, **p}
        particles = ParticlesConfig(**p)
    o = _section(raw, "output", ("folder", "formats", "every", "checkpoint_every", "progress"))
    stem = Path(source).stem if source else "study"
    output = OutputConfig(**{"folder": f"output/{stem}", **o})
    return StudyConfig(model=model, geometry=geometry, initial=tuple(initial), time=time,
                       solver=solver, output=output, particles=particles, title=title,
                       source=str(source), short=short)


def _geometry_keys(g) -> list[str]:
    # Builder parameters are open-ended here and checked against the builder's signature.
    if isinstance(g, dict) and "msh" in g:
        return ["msh", "gdim"]
    return ["builder", "gdim", *(k for k in (g or {}) if k not in ("builder", "gdim", "msh"))]


def short_mode_requested(flag: bool = False) -> bool:
    """Short mode: the ``--short`` flag or a non-empty ``CI`` environment variable."""
    return bool(flag or os.environ.get("CI"))


def load_config(path: str | Path, *, short: bool = False, check_files: bool = True
                ) -> StudyConfig:
    """Read and validate a TOML study file.

    Args:
        path: The file.
        short: Apply its ``[short]`` overrides.
        check_files: Check that ``geometry.msh`` exists.

    Returns:
        The :class:`StudyConfig`.

    Raises:
        ConfigError: unreadable file, TOML syntax error, or any invalid entry.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("<file>", str(path), "study file not found") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("<file>", str(path), f"is not valid TOML ({err})") from None
    return parse_config(raw, base_dir=path.parent, source=str(path), short=short,
                        check_files=check_files)


# --------------------------------------------------------------------------- TOML output
def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(data: dict) -> str:
    """Write plain nested data (as from :meth:`StudyConfig.to_dict`) as TOML text."""
    lines: list[str] = []

    def table(d: dict, name: str, array: bool = False):
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        subs = {k: v for k, v in d.items() if isinstance(v, dict)}
        if name:
            lines.append(f"\n[[{name}]]" if array else f"\n[{name}]")
        for k, v in scalars.items():
            if v is not None:
                lines.append(f"{k} = {_toml_value(v)}")
        for k, v in subs.items():
            table(v, f"{name}.{k}" if name else k)

    top = {k: v for k, v in data.items()
           if not isinstance(v, dict) and not (isinstance(v, list) and v
                                               and isinstance(v[0], dict))}
    table(top, "")
    for k, v in data.items():
        if isinstance(v, dict):
            table(v, k)
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                table(item, k, array=True)
    return "\n".join(lines).lstrip("\n") + "\n"
