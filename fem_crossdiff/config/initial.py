"""Initial data: the ``[[initial]]`` profiles and the safe arithmetic expressions.

The profiles (``x`` the point, ``c`` the centre):

* ``gaussian``: ``height * exp(-|x - c|^2 / (2 width^2)) + background``;
* ``disk``: ``value`` where ``|x - c| < radius``, ``background`` elsewhere (a ball in 3D);
* ``half_plane``: ``value`` where ``normal . x > offset``, ``background`` elsewhere;
* ``uniform``: the constant ``value``;
* ``expression``: ``expr``, an arithmetic expression of ``x, y, z``, parsed with Python's
  ``ast`` and compiled by a whitelist walker into numpy calls (never ``eval``): numbers, the
  names :data:`EXPR_NAMES`, ``+ - * / ** %``, single comparisons (for ``where``) and calls of
  :data:`EXPR_FUNCTIONS` by name; no attribute access, subscripts, strings, lambdas,
  comprehensions, keyword arguments or other names.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .schema import MISSING, ConfigError, nonnegative, number, one_of, positive, table, vector

#: Functions allowed in ``profile = "expression"``, with their arities.
EXPR_FUNCTIONS: dict[str, tuple[Callable, int]] = {
    "exp": (np.exp, 1), "log": (np.log, 1), "sin": (np.sin, 1), "cos": (np.cos, 1),
    "tan": (np.tan, 1), "tanh": (np.tanh, 1), "sqrt": (np.sqrt, 1), "abs": (np.abs, 1),
    "min": (np.minimum, 2), "max": (np.maximum, 2), "where": (np.where, 3),
}
#: Names allowed in expressions: the coordinates and two constants.
EXPR_NAMES = ("x", "y", "z", "pi", "e")
_MAX_EXPR = 2000
_OPS = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide,
        ast.Pow: np.power, ast.Mod: np.mod, ast.USub: np.negative, ast.UAdd: np.positive,
        ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater, ast.GtE: np.greater_equal}


class SafeExpression:
    """An arithmetic expression of ``x, y, z`` evaluated with numpy, without ``eval``.

    Everything but the module's whitelist is rejected when the expression is parsed.

    Args:
        text: The expression, e.g. ``"0.5*exp(-x**2-y**2)"``.
        key: Dotted config key, for error messages.

    Raises:
        ConfigError: on any syntax error or forbidden construct (the message names it).
    """

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
        except (RecursionError, MemoryError, ValueError):
            raise ConfigError(key, text, "is nested too deeply to be parsed") from None
        self._program = self._compile(tree.body)

    def __reduce__(self):
        return (SafeExpression, (self.text, self.key))

    def _reject(self, what: str):
        raise ConfigError(self.key, self.text,
                          f"{what} is not allowed; use numbers, the names "
                          f"{', '.join(EXPR_NAMES)}, + - * / ** % < <= > >= and the functions "
                          f"{', '.join(EXPR_FUNCTIONS)}")

    def _op(self, op) -> Callable:
        if type(op) not in _OPS:
            self._reject(f"the operator {type(op).__name__}")
        return _OPS[type(op)]

    def _source(self, node) -> str:
        text = ast.get_source_segment(self.text.strip(), node) or ""
        return text if len(text) <= 40 else text[:37] + "..."

    def _children(self, node) -> list:
        """Check ``node`` against the whitelist (not its children) and return its operands."""
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                self._reject(f"the constant {node.value!r}")
            return []
        if isinstance(node, ast.Name):
            if node.id not in EXPR_NAMES:
                self._reject(f"the name {node.id!r}")
            return []
        if isinstance(node, ast.BinOp):
            self._op(node.op)
            return [node.left, node.right]
        if isinstance(node, ast.UnaryOp):
            self._op(node.op)
            return [node.operand]
        if isinstance(node, ast.Compare):
            if len(node.ops) != 1 or type(node.ops[0]) not in _OPS:
                self._reject("this comparison")
            return [node.left, node.comparators[0]]
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else None
            if name not in EXPR_FUNCTIONS:
                self._reject(f"the function {name!r}" if name is not None
                             else "calling anything but a named function")
            if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
                self._reject("keyword or starred arguments")
            arity = EXPR_FUNCTIONS[name][1]
            if len(node.args) != arity:
                raise ConfigError(self.key, self.text,
                                  f"{name} takes {arity} argument(s), got {len(node.args)}")
            return list(node.args)
        self._reject(f"{type(node).__name__} ({self._source(node)!r})")

    def _instruction(self, node) -> tuple:
        """The postfix instruction of a checked node: (0, value), (1, name) or (2, fn, arity)."""
        if isinstance(node, ast.Constant):
            try:
                return (0, float(node.value))  # floats only: no exact big-integer powers
            except OverflowError:
                raise ConfigError(self.key, self.text, f"the number {self._source(node)} is "
                                  "beyond the floating-point range") from None
        if isinstance(node, ast.Name):
            return (1, node.id)
        if isinstance(node, ast.Call):
            fn, arity = EXPR_FUNCTIONS[node.func.id]
            return (2, fn, arity)
        if isinstance(node, ast.Compare):
            return (2, _OPS[type(node.ops[0])], 2)
        return (2, _OPS[type(node.op)], 1 if isinstance(node, ast.UnaryOp) else 2)

    def _compile(self, root) -> list[tuple]:
        """The whitelisted tree as a postfix program.

        No recursion: any depth the parser accepts compiles and evaluates.
        """
        program, todo = [], [(root, False)]
        while todo:
            node, ready = todo.pop()
            if ready:
                program.append(self._instruction(node))
                continue
            todo.append((node, True))
            todo.extend((child, False) for child in reversed(self._children(node)))
        return program

    def _run(self, env: dict):
        values: list = []
        for ins in self._program:
            if ins[0] == 0:
                values.append(ins[1])
            elif ins[0] == 1:
                values.append(env[ins[1]])
            else:
                n = ins[2]
                args = values[-n:]
                del values[-n:]
                values.append(ins[1](*args))
        return values[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Evaluate at points ``x`` of shape ``(3, N)`` (DOLFINx layout); returns shape ``(N,)``."""
        x = np.asarray(x, dtype=float)
        zero = np.zeros(x.shape[1])
        rows = [x[i] if i < x.shape[0] else zero for i in range(3)]
        env = {"x": rows[0], "y": rows[1], "z": rows[2], "pi": math.pi, "e": math.e}
        with np.errstate(all="ignore"):  # NaN/inf are reported by the solver's checks
            out = self._run(env)
        return np.array(np.broadcast_to(np.asarray(out, dtype=float), zero.shape))


#: profile -> (required keys, optional keys with defaults)
PROFILES: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "gaussian": (("center", "width", "height"), {"background": 0.0}),
    "disk": (("center", "radius", "value"), {"background": 0.0}),
    "half_plane": (("normal", "value"), {"offset": 0.0, "background": 0.0}),
    "uniform": (("value",), {}),
    "expression": (("expr",), {}),
}


def _density(key: str, v: Any, dim: int | None) -> float:
    """A density value: ``0 <= v <= MAX_DENSITY``."""
    from fem_crossdiff.params import MAX_DENSITY

    value = nonnegative(key, v)
    if value > MAX_DENSITY:
        raise ConfigError(key, v, f"must be <= {MAX_DENSITY:g} (densities are O(1); rescale "
                          "the data)")
    return value


def _nonzero(key: str, v: Any, dim: int | None) -> tuple[float, ...]:
    if not any(vec := vector(key, v, dim)):
        raise ConfigError(key, v, "must be a nonzero vector")
    return vec


#: The check of each profile key, ``check(key, value, gdim)``.
_CHECKS: dict[str, Callable[[str, Any, int | None], Any]] = {
    "center": vector, "normal": _nonzero, "offset": lambda k, v, d: number(k, v),
    "expr": lambda k, v, d: SafeExpression(v, k).text,
    **dict.fromkeys(("width", "radius"), lambda k, v, d: positive(k, v)),
    **dict.fromkeys(("height", "value", "background"), _density),
}


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
        profile = one_of(tuple(PROFILES))(f"{self.key}.profile", self.profile)
        required, optional = PROFILES[profile]
        raw = dict(self.values)
        table(self.key, {"profile": profile, **raw}, ("profile", *required, *optional),
              required)
        out = {k: _CHECKS[k](f"{self.key}.{k}", v, self.gdim)
               for k, v in {**optional, **raw}.items()}
        main = "height" if profile == "gaussian" else "value"
        if main in out and out[main] <= 0.0:
            raise ConfigError(f"{self.key}.{main}", out[main], "must be > 0 (a species needs "
                              "positive mass)")
        object.__setattr__(self, "values", tuple(sorted(out.items())))

    @classmethod
    def read(cls, raw: Any, key: str, gdim: int | None) -> InitialConfig:
        """One ``[[initial]]`` table, at dotted ``key``, checked against ``gdim`` if known."""
        tab = table(key, raw, list(raw) if isinstance(raw, dict) else ())
        return cls(profile=tab.get("profile", MISSING), key=key, gdim=gdim,
                   values=tuple((k, v) for k, v in tab.items() if k != "profile"))

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
                raise ConfigError(f"{self.key}.{k}", v[k],
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
