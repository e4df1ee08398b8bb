"""The volume-exclusion family: per-species diffusion, potentials, interactions, growth.

For species ``k = 1..n`` the family extends the paper's system (1.1) by

    d_t rho_k = div( rho_k [ b_k grad P(S) + grad Phi_k + grad sum_l W_kl * rho_l ] )
                + sigma_k Lap rho_k + rho_k G_k(P(S)),          S = sum_l a_l rho_l,

(the paper's case: ``Phi = W = G = 0`` and ``sigma_k = sigma``). This module describes the
ingredients only, as frozen, validated dataclasses that every level (particles today; the FE and
nonlocal levels later) reads the same way. It needs numpy alone (no DOLFINx, no MPI), so that
``fem_crossdiff.particles`` runs without DOLFINx.

* :class:`Expression`: a formula in named variables (``x, y, z`` for a potential, ``P`` for a
  growth law), parsed once by a restricted :mod:`ast` walker (numbers, the variables, ``+ - * /
  **``, and the functions of :data:`FUNCTIONS`; no names, attributes or calls beyond those) and
  evaluated with numpy. Its gradient is the complex-step derivative ``Im f(x + i h e_j) / h``
  with ``h = 1e-30``: exact to rounding for the analytic functions allowed, and for ``abs``,
  ``min``, ``max`` and ``heaviside``, which follow the real part's branch.
* :class:`Potential`: ``Phi_k``, an :class:`Expression` of ``x, y, z`` or a pair of Python
  callables (value, gradient).
* :class:`Kernel` and :class:`Interaction`: ``W_kl = strength[k][l] K``, ``K`` a radial kernel
  of unit mass (Gaussian, exponential "Morse" profile, or one of the compact mollifiers of
  :mod:`fem_crossdiff.mollifiers`). Positive strengths repel, negative ones attract (the drift is
  ``-grad W_kl * rho_l``). The Morse potential of swarming models,
  ``C_r exp(-r / l_r) - C_a exp(-r / l_a)``, is two interactions with ``"morse"`` kernels
  (:func:`morse`).
* :class:`Growth`: ``G_k(P)``, the logistic law ``g_k (1 - P / P_M)`` or an :class:`Expression`
  of ``P``.
* :class:`Family`: the tuple of them for ``n`` species; ``Family.paper(n, sigma)`` is the
  paper's system.

Every check raises :class:`~fem_crossdiff.errors.ParameterError` with the key (``sigma[1]``,
``potentials[0].expr``, ``interactions[0].strength[1][0]``), the value and what is allowed.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fem_crossdiff.errors import ParameterError
from fem_crossdiff.mollifiers import KERNELS as MOLLIFIERS
from fem_crossdiff.mollifiers import get_mollifier

__all__ = [
    "FUNCTIONS",
    "KERNEL_KINDS",
    "GROWTH_KINDS",
    "Expression",
    "Potential",
    "Kernel",
    "Interaction",
    "Growth",
    "Family",
    "morse",
]

_H = 1e-30  # complex step: no cancellation, so any step far below the scale of x is exact


def _heaviside(u):
    return np.where(np.real(u) > 0.0, 1.0, 0.0)


def _abs(u):
    return np.where(np.real(u) < 0.0, -u, u)


def _max(u, v):
    return np.where(np.real(u) >= np.real(v), u, v)


def _min(u, v):
    return np.where(np.real(u) <= np.real(v), u, v)


#: functions an :class:`Expression` may call, with their numbers of arguments (complex-step
#: safe: ``abs``, ``min``, ``max``, ``heaviside`` follow the branch of the real part).
FUNCTIONS: dict[str, tuple[Callable, int]] = {
    "exp": (np.exp, 1), "log": (np.log, 1), "sqrt": (np.sqrt, 1), "sin": (np.sin, 1),
    "cos": (np.cos, 1), "tan": (np.tan, 1), "sinh": (np.sinh, 1), "cosh": (np.cosh, 1),
    "tanh": (np.tanh, 1), "arctan": (np.arctan, 1), "abs": (_abs, 1), "min": (_min, 2),
    "max": (_max, 2), "heaviside": (_heaviside, 1),
}
_CONSTANTS = {"pi": math.pi, "e": math.e}
_BINOPS = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide,
           ast.Pow: np.power}
_ALLOWED_TEXT = ("a formula of {vars} with numbers, + - * / ** and the functions "
                 + ", ".join(FUNCTIONS) + " (constants pi, e)")


def _check_node(node: ast.AST, variables: tuple[str, ...], key: str, text: str) -> None:
    """Raise unless ``node`` uses only the restricted grammar (module docstring)."""
    allowed = _ALLOWED_TEXT.format(vars=", ".join(variables))
    if isinstance(node, ast.Expression):
        return _check_node(node.body, variables, key, text)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ParameterError(key, text, allowed)
        return None
    if isinstance(node, ast.Name):
        if node.id not in variables and node.id not in _CONSTANTS:
            raise ParameterError(key, text, f"{allowed}; unknown name {node.id!r}")
        return None
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        _check_node(node.left, variables, key, text)
        return _check_node(node.right, variables, key, text)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        return _check_node(node.operand, variables, key, text)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in FUNCTIONS and not node.keywords):
        if len(node.args) != FUNCTIONS[node.func.id][1]:
            raise ParameterError(key, text, f"{allowed}; {node.func.id} takes "
                                 f"{FUNCTIONS[node.func.id][1]} argument(s)")
        for a in node.args:
            _check_node(a, variables, key, text)
        return None
    raise ParameterError(key, text, f"{allowed}; not allowed: {ast.dump(node)[:40]}")


def _evaluate(node: ast.AST, env: dict[str, Any]):
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return env[node.id] if node.id in env else _CONSTANTS[node.id]
    if isinstance(node, ast.BinOp):
        return _BINOPS[type(node.op)](_evaluate(node.left, env), _evaluate(node.right, env))
    if isinstance(node, ast.UnaryOp):
        v = _evaluate(node.operand, env)
        return -v if isinstance(node.op, ast.USub) else v
    fn = FUNCTIONS[node.func.id][0]
    return fn(*[_evaluate(a, env) for a in node.args])


@dataclass(frozen=True)
class Expression:
    """A formula of named variables, parsed safely once and evaluated with numpy.

    Attributes:
        text: the formula, e.g. ``"(x**2 + y**2) / 2"`` or ``"1 - P / 2"``.
        variables: the names it may use.
        key: its parameter name in error messages.
    """

    text: str
    variables: tuple[str, ...] = ("x", "y", "z")
    key: str = "expr"
    _tree: ast.Expression = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        allowed = _ALLOWED_TEXT.format(vars=", ".join(self.variables))
        if not isinstance(self.text, str) or not self.text.strip() or len(self.text) > 2000:
            raise ParameterError(self.key, self.text, f"a nonempty string (<= 2000 characters): "
                                 f"{allowed}")
        try:
            tree = ast.parse(self.text.strip(), mode="eval")
        except SyntaxError as exc:
            raise ParameterError(self.key, self.text, f"{allowed} (syntax error: {exc.msg})") \
                from None
        _check_node(tree, tuple(self.variables), self.key, self.text)
        object.__setattr__(self, "variables", tuple(self.variables))
        object.__setattr__(self, "_tree", tree)

    def __call__(self, **values) -> np.ndarray:
        """The formula at the given arrays (broadcast together; missing variables are 0)."""
        env = {v: values.get(v, 0.0) for v in self.variables}
        with np.errstate(all="ignore"):
            out = _evaluate(self._tree.body, env)
        shape = np.broadcast(*[np.asarray(v) for v in env.values()], np.asarray(0.0)).shape
        return np.broadcast_to(out, shape).copy()

    def derivative(self, name: str, **values) -> np.ndarray:
        """``d formula / d name`` at the given real arrays (complex step, exact to rounding)."""
        env = {v: np.asarray(values.get(v, 0.0), dtype=complex) for v in self.variables}
        env[name] = env[name] + 1j * _H
        with np.errstate(all="ignore"):
            out = _evaluate(self._tree.body, env)
        shape = np.broadcast(*env.values()).shape
        return np.broadcast_to(np.imag(out) / _H, shape).copy()


def _finite(key: str, value, allowed: str, lo: float | None = None, strict=False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ParameterError(key, value, allowed)
    v = float(value)
    if not math.isfinite(v) or (lo is not None and (v <= lo if strict else v < lo)):
        raise ParameterError(key, value, allowed)
    return v


_COORDS = ("x", "y", "z")


@dataclass(frozen=True)
class Potential:
    """An external potential ``Phi_k(x)``: an expression of ``x, y, z`` or two callables.

    Attributes:
        expr: the formula (coordinates beyond the space dimension are 0), or ``None``.
        value: ``value(X (M, d)) -> (M,)`` when ``expr`` is ``None``.
        gradient: ``gradient(X (M, d)) -> (M, d)`` when ``expr`` is ``None``.
        key: its parameter name in error messages.
    """

    expr: str | None = None
    value: Callable[[np.ndarray], np.ndarray] | None = None
    gradient: Callable[[np.ndarray], np.ndarray] | None = None
    key: str = "potential"
    _parsed: Expression | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self):
        if self.expr is not None:
            if self.value is not None or self.gradient is not None:
                raise ParameterError(self.key, self.expr, "either expr or (value, gradient), "
                                     "not both")
            object.__setattr__(self, "_parsed", Expression(self.expr, _COORDS,
                                                           f"{self.key}.expr"))
        elif not (callable(self.value) and callable(self.gradient)):
            raise ParameterError(self.key, (self.value, self.gradient),
                                 "an expression of x, y, z (expr) or two callables "
                                 "value(X) -> (M,) and gradient(X) -> (M, d)")

    def _env(self, x: np.ndarray) -> dict:
        return {c: x[:, i] for i, c in enumerate(_COORDS[:x.shape[1]])}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``Phi(X)`` at points ``(M, d)``, shape ``(M,)``."""
        x = np.asarray(x, dtype=float)
        if self._parsed is None:
            return np.asarray(self.value(x), dtype=float).reshape(x.shape[0])
        return self._parsed(**self._env(x)).reshape(x.shape[0])

    def grad(self, x: np.ndarray) -> np.ndarray:
        """``grad Phi(X)`` at points ``(M, d)``, shape ``(M, d)``."""
        x = np.asarray(x, dtype=float)
        if self._parsed is None:
            return np.asarray(self.gradient(x), dtype=float).reshape(x.shape)
        env = self._env(x)
        out = np.empty_like(x)
        for i in range(x.shape[1]):
            out[:, i] = self._parsed.derivative(_COORDS[i], **env).reshape(x.shape[0])
        return out


#: interaction kernel profiles (the compact mollifiers by their names).
KERNEL_KINDS = ("gaussian", "morse") + tuple(MOLLIFIERS)


def _sphere_area(d: int) -> float:
    return 2.0 * math.pi ** (d / 2) / math.gamma(d / 2)


@dataclass(frozen=True)
class Kernel:
    """A radial interaction kernel ``K`` of unit mass in ``R^d``.

    * ``"gaussian"``: ``K(x) = (2 pi l^2)^(-d/2) exp(-|x|^2 / (2 l^2))``;
    * ``"morse"``: ``K(x) = exp(-|x| / l) / (|S^(d-1)| (d-1)! l^d)`` (its gradient at 0 is set
      to 0: the particle does not push itself);
    * a mollifier name (``"bump"``, ``"poly4"``): ``V^l`` of :mod:`fem_crossdiff.mollifiers`,
      supported in the ball of radius ``l``.

    Attributes:
        kind: one of :data:`KERNEL_KINDS`.
        length: the length scale ``l > 0``.
        key: its parameter name in error messages.
    """

    kind: str
    length: float
    key: str = "kernel"

    def __post_init__(self):
        if self.kind not in KERNEL_KINDS:
            raise ParameterError(f"{self.key}.kind", self.kind,
                                 f"one of {', '.join(KERNEL_KINDS)}")
        object.__setattr__(self, "length", _finite(f"{self.key}.length", self.length,
                                                    "a finite number > 0", 0.0, strict=True))

    @property
    def support(self) -> float:
        """Radius beyond which ``K`` is zero (``inf`` for the Gaussian and Morse kernels)."""
        return self.length if self.kind in MOLLIFIERS else math.inf

    def value(self, z: np.ndarray) -> np.ndarray:
        """``K(z)`` for offsets ``(..., d)``."""
        z = np.asarray(z, dtype=float)
        d, ell = z.shape[-1], self.length
        r2 = np.einsum("...i,...i->...", z, z)
        if self.kind == "gaussian":
            return (2.0 * math.pi * ell**2) ** (-d / 2) * np.exp(-0.5 * r2 / ell**2)
        if self.kind == "morse":
            c = 1.0 / (_sphere_area(d) * math.gamma(d) * ell**d)
            return c * np.exp(-np.sqrt(r2) / ell)
        return get_mollifier(self.kind).value(z, ell)

    def gradient(self, z: np.ndarray) -> np.ndarray:
        """``grad K(z)`` for offsets ``(..., d)``, same shape."""
        z = np.asarray(z, dtype=float)
        ell = self.length
        if self.kind == "gaussian":
            return (-z / ell**2) * self.value(z)[..., None]
        if self.kind == "morse":
            r = np.sqrt(np.einsum("...i,...i->...", z, z))
            with np.errstate(divide="ignore", invalid="ignore"):
                f = np.where(r > 0.0, -self.value(z) / (ell * np.where(r > 0.0, r, 1.0)), 0.0)
            return f[..., None] * z
        return get_mollifier(self.kind).gradient(z, ell)


def _matrix(key: str, value, n: int | None) -> tuple[tuple[float, ...], ...]:
    allowed = "a square matrix of finite numbers (one row and column per species)"
    try:
        rows = [list(r) for r in value]
    except TypeError:
        raise ParameterError(key, value, allowed) from None
    if not rows or any(len(r) != len(rows) for r in rows) or (n is not None and len(rows) != n):
        raise ParameterError(key, value, allowed + (f", {n} x {n}" if n else ""))
    return tuple(tuple(_finite(f"{key}[{k}][{l}]", v, "a finite number")
                       for l, v in enumerate(r)) for k, r in enumerate(rows))


@dataclass(frozen=True)
class Interaction:
    """``W_kl = strength[k][l] K``: the drift of species ``k`` is ``-sum_l grad W_kl * rho_l``.

    Attributes:
        kernel: the profile ``K``.
        strength: ``n x n`` matrix; ``> 0`` repulsive, ``< 0`` attractive, 0 none.
        key: its parameter name in error messages.
    """

    kernel: Kernel
    strength: tuple[tuple[float, ...], ...]
    key: str = "interaction"

    def __post_init__(self):
        if not isinstance(self.kernel, Kernel):
            raise ParameterError(f"{self.key}.kernel", self.kernel, "a Kernel")
        object.__setattr__(self, "strength", _matrix(f"{self.key}.strength", self.strength,
                                                     None))

    @property
    def n_species(self) -> int:
        """Number of species the matrix is for."""
        return len(self.strength)

    @property
    def symmetric(self) -> bool:
        """Whether ``W_kl = W_lk`` (the gradient-flow case)."""
        s = np.asarray(self.strength)
        return bool(np.array_equal(s, s.T))


def morse(c_rep: float, l_rep: float, c_att: float, l_att: float,
          n: int = 1) -> tuple[Interaction, Interaction]:
    """The Morse potential ``C_r exp(-r / l_r) - C_a exp(-r / l_a)`` between all species.

    Two :class:`Interaction` terms with ``"morse"`` kernels; the kernels have unit mass, so the
    strengths are ``C |S^(d-1)| (d-1)! l^d``, which depends on the dimension: this returns
    the 1D strengths (``2 C l``); for another dimension build the two terms directly.

    Args:
        c_rep: ``C_r >= 0``.
        l_rep: ``l_r > 0``.
        c_att: ``C_a >= 0``.
        l_att: ``l_a > 0``.
        n: number of species (every pair interacts alike).
    """
    c_rep = _finite("c_rep", c_rep, "a finite number >= 0", 0.0)
    c_att = _finite("c_att", c_att, "a finite number >= 0", 0.0)
    rep, att = 2.0 * c_rep * l_rep, -2.0 * c_att * l_att
    return (Interaction(Kernel("morse", l_rep, "morse.l_rep"), ((rep,) * n,) * n),
            Interaction(Kernel("morse", l_att, "morse.l_att"), ((att,) * n,) * n))


#: growth law kinds.
GROWTH_KINDS = ("logistic", "expr")


@dataclass(frozen=True)
class Growth:
    """A growth law ``G_k(P)`` (``rho_k G_k(P(S))`` in the equation, weights at particle level).

    Attributes:
        kind: ``"logistic"``: ``G = rate (1 - P / p_max)``; ``"expr"``: ``G = expr(P)``.
        rate: ``g_k`` (logistic), any finite number.
        p_max: the homeostatic pressure ``P_M > 0`` (logistic).
        expr: a formula of ``P`` (kind ``"expr"``).
        key: its parameter name in error messages.
    """

    kind: str = "logistic"
    rate: float = 0.0
    p_max: float = 1.0
    expr: str | None = None
    key: str = "growth"
    _parsed: Expression | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self):
        if self.kind not in GROWTH_KINDS:
            raise ParameterError(f"{self.key}.kind", self.kind, f"one of {', '.join(GROWTH_KINDS)}")
        if self.kind == "logistic":
            object.__setattr__(self, "rate", _finite(f"{self.key}.rate", self.rate,
                                                     "a finite number"))
            object.__setattr__(self, "p_max", _finite(f"{self.key}.p_max", self.p_max,
                                                      "a finite number > 0", 0.0, strict=True))
        else:
            object.__setattr__(self, "_parsed", Expression(self.expr, ("P",), f"{self.key}.expr"))

    def __call__(self, p: np.ndarray) -> np.ndarray:
        """``G(P)`` at pressures ``p`` (same shape)."""
        p = np.asarray(p, dtype=float)
        if self._parsed is not None:
            return self._parsed(P=p)
        return self.rate * (1.0 - p / self.p_max)

    @property
    def is_zero(self) -> bool:
        """Whether this law is ``G = 0`` identically (logistic with rate 0)."""
        return self.kind == "logistic" and self.rate == 0.0


@dataclass(frozen=True)
class Family:
    """The family's ingredients for ``n`` species (module docstring for the equation).

    Attributes:
        sigma: diffusion coefficients ``sigma_k >= 0``, one per species.
        potentials: one :class:`Potential` (or ``None``: ``Phi_k = 0``) per species; an empty
            tuple for none at all.
        interactions: :class:`Interaction` terms, each ``n x n``; ``W`` is their sum.
        growth: one :class:`Growth` (or ``None``: ``G_k = 0``) per species; empty for none.
    """

    sigma: tuple[float, ...]
    potentials: tuple[Potential | None, ...] = ()
    interactions: tuple[Interaction, ...] = ()
    growth: tuple[Growth | None, ...] = ()

    def __post_init__(self):
        try:
            sig = tuple(self.sigma)
        except TypeError:
            raise ParameterError("sigma", self.sigma, "a sequence of numbers >= 0, one per "
                                 "species") from None
        if not sig:
            raise ParameterError("sigma", self.sigma, "at least one entry (one per species)")
        sig = tuple(_finite(f"sigma[{k}]", s, "a finite number >= 0", 0.0)
                    for k, s in enumerate(sig))
        object.__setattr__(self, "sigma", sig)
        n = len(sig)
        for name, kind in (("potentials", Potential), ("growth", Growth)):
            vals = tuple(getattr(self, name))
            if vals and len(vals) != n:
                raise ParameterError(name, vals, f"one entry per species ({n}) or none")
            for k, v in enumerate(vals):
                if v is not None and not isinstance(v, kind):
                    raise ParameterError(f"{name}[{k}]", v, f"a {kind.__name__} or None")
            object.__setattr__(self, name, vals)
        inter = tuple(self.interactions)
        for i, w in enumerate(inter):
            if not isinstance(w, Interaction):
                raise ParameterError(f"interactions[{i}]", w, "an Interaction")
            if w.n_species != n:
                raise ParameterError(f"interactions[{i}].strength", w.strength,
                                     f"a {n} x {n} matrix (one row and column per species)")
        object.__setattr__(self, "interactions", inter)

    @classmethod
    def paper(cls, n: int, sigma: float) -> Family:
        """The paper's system: ``sigma_k = sigma``, no potential, interaction or growth."""
        return cls((sigma,) * int(n))

    @property
    def n_species(self) -> int:
        """Number of species ``n``."""
        return len(self.sigma)

    @property
    def has_growth(self) -> bool:
        """Whether some ``G_k`` is not identically zero."""
        return any(g is not None and not g.is_zero for g in self.growth)

    def potential(self, k: int) -> Potential | None:
        """``Phi_k`` or ``None``."""
        return self.potentials[k] if self.potentials else None

    def growth_law(self, k: int) -> Growth | None:
        """``G_k`` or ``None`` (zero)."""
        g = self.growth[k] if self.growth else None
        return None if g is None or g.is_zero else g

