"""The table-driven schema of study files: :class:`ConfigError`, strict checks, sections.

A check is ``check(key, value) -> value``: the value normalised (floats, tuples), or a
:class:`ConfigError` naming the dotted ``key``. A :class:`Section` takes its keys, defaults,
required keys and value types from its dataclass fields. TOML has no null: ``None`` in a field
means "not given".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from fem_crossdiff.errors import ParameterError

Check = Callable[[str, Any], Any]


class _Missing:
    def __repr__(self):
        return "<missing>"

    def __reduce__(self):  # one object, also after pickling (MPI broadcasts)
        return "MISSING"


#: The value of a :class:`ConfigError` for a key that is not there (shown as ``<missing>``).
MISSING = _Missing()


def plain(v: Any) -> Any:
    """``v`` with tuples as lists, recursively (TOML data: what a study file can hold)."""
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


class ConfigError(ParameterError):
    """A bad study file: names the dotted key, the value found and what is allowed.

    The message is ``key = value: allowed``, with ``<missing>`` for a missing key and arrays
    shown as TOML lists.

    Attributes:
        key: Dotted path of the offending entry, e.g. ``"initial[1].expr"``.
        value: The value found (:data:`MISSING` when missing).
        allowed: What would be accepted.
    """

    def __init__(self, key: str, value: Any, allowed: str):
        super().__init__(key, plain(value), allowed)


@contextmanager
def under(prefix: str) -> Iterator[None]:
    """Re-raise a library :class:`ParameterError` as a :class:`ConfigError` at ``prefix.key``."""
    try:
        yield
    except ConfigError:
        raise
    except ParameterError as err:
        key = f"{prefix}.{err.key}" if prefix else err.key
        raise ConfigError(key, err.value, err.allowed) from None


# --------------------------------------------------------------------------- value checks
def number(key: str, v: Any, lo: float | None = None, *, strict: bool = False) -> float:
    """A finite real number (not a boolean), ``>= lo`` (``> lo`` if ``strict``)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(key, v, "must be a number")
    try:
        finite = math.isfinite(v)
    except OverflowError:  # an integer beyond the float range
        finite = False
    if not finite:
        raise ConfigError(key, v, "must be finite (an integer beyond the float range is not)")
    if lo is not None and (v <= lo if strict else v < lo):
        raise ConfigError(key, v, f"must be {'>' if strict else '>='} {lo:g}")
    return float(v)


#: The largest integer a study file may give (a signed 64-bit integer, as TOML's).
MAX_INT = 2**63 - 1


def integer(key: str, v: Any, lo: int | None = None, hi: int = MAX_INT) -> int:
    """An integer (not a boolean), ``>= lo`` and ``<= hi`` (at most :data:`MAX_INT`)."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(key, v, "must be an integer")
    if lo is not None and v < lo:
        raise ConfigError(key, v, f"must be an integer >= {lo}")
    if v > hi:
        raise ConfigError(key, v, f"must be an integer <= {hi}")
    return v


def path_text(key: str, v: Any) -> str:
    """A file or folder name: a non-empty string without NUL whose ``~user`` (if any) exists."""
    text = string(key, v)
    if "\0" in text:
        raise ConfigError(key, v, "must be a path without NUL characters")
    if text.startswith("~"):
        from pathlib import Path

        try:
            Path(text).expanduser()
        except RuntimeError:
            raise ConfigError(key, v, f"names the home folder of an unknown user "
                              f"({text.split('/', 1)[0]})") from None
    return text


def boolean(key: str, v: Any) -> bool:
    """``true`` or ``false``."""
    if not isinstance(v, bool):
        raise ConfigError(key, v, "must be true or false")
    return v


def string(key: str, v: Any) -> str:
    """A non-empty string."""
    if not isinstance(v, str) or not v:
        raise ConfigError(key, v, "must be a non-empty string")
    return v


def one_of(choices: tuple) -> Check:
    """The check that a value is one of ``choices`` (booleans never pass for integers)."""
    def check(key: str, v: Any) -> Any:
        if isinstance(v, (bool, list, dict)) or v not in choices:
            raise ConfigError(key, v, f"must be one of {', '.join(map(repr, choices))}")
        return v
    check.choices = choices  # read by the key reference (fem_crossdiff.config.reference)
    return check


def numbers(key: str, v: Any, allowed: str = "must be a list of numbers") -> tuple[float, ...]:
    """A list of numbers (ranges are the parameter class's)."""
    if not isinstance(v, (list, tuple)):
        raise ConfigError(key, v, allowed)
    return tuple(number(f"{key}[{i}]", x) for i, x in enumerate(v))


def vector(key: str, v: Any, dim: int | None = None) -> tuple[float, ...]:
    """A point or direction: 1 to 3 numbers, ``dim`` of them when the dimension is known."""
    if not isinstance(v, (list, tuple)) or not 1 <= len(v) <= 3:
        raise ConfigError(key, v, "must be a list of 1 to 3 numbers")
    vec = numbers(key, v)
    if dim is not None and len(vec) != dim:
        raise ConfigError(key, v, f"must have {dim} coordinates (the geometry is {dim}D)")
    return vec


def table(key: str, v: Any, allowed, required=()) -> dict:
    """A TOML table whose keys are all ``allowed`` and include the ``required`` ones."""
    if not isinstance(v, dict):
        raise ConfigError(key or "<file>", v, "must be a table")
    for k in v:
        if k not in allowed:
            where = f"[{key}]" if key else "the top level"
            raise ConfigError(f"{key}.{k}" if key else k, v[k],
                              f"unknown key; allowed in {where}: {', '.join(allowed)}")
    for k in required:
        if k not in v:
            raise ConfigError(f"{key}.{k}" if key else k, MISSING, "required key is missing")
    return v


# --------------------------------------------------------------------------- sections
#: The strict check of each field annotation (``X | None``: the check of ``X``).
BY_TYPE: dict[str, Check] = {"float": number, "int": integer, "bool": boolean, "str": string,
                             "tuple[float, ...]": numbers}


def _type_name(t: Any) -> str:
    name = t if isinstance(t, str) else getattr(t, "__name__", str(t))
    return name.removesuffix(" | None")


class Section:
    """Mixin of the frozen section dataclasses: keys, defaults and types from their fields.

    Class attributes (not fields): ``section``, the TOML table; ``checks``, key -> check where
    the annotation's is not enough (ranges, choices); ``hidden``, fields that are not TOML
    keys. Validation: the strict checks, then the parameter base class's ``__post_init__``
    (if any) and :meth:`validate`, their errors keyed ``section.key``.
    """

    section = ""
    checks: dict[str, Check] = {}
    hidden: tuple[str, ...] = ()

    @classmethod
    def keys(cls) -> list[str]:
        """The TOML keys: the fields but the hidden ones, in field order."""
        return [f.name for f in dataclasses.fields(cls) if f.name not in cls.hidden]

    @classmethod
    def read(cls, raw: Any, defaults: dict | None = None):
        """The section from its TOML table (unknown keys are errors; ``defaults`` fill in)."""
        defaults = defaults or {}
        required = [f.name for f in dataclasses.fields(cls) if f.name in cls.keys()
                    and f.name not in defaults and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        return cls(**{**defaults, **table(cls.section, raw, cls.keys(), required)})

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name not in self.hidden and value is not None:
                check = self.checks.get(f.name) or BY_TYPE[_type_name(f.type)]
                object.__setattr__(self, f.name, check(f"{self.section}.{f.name}", value))
        with under(self.section):
            getattr(super(), "__post_init__", lambda: None)()
            self.validate()

    def validate(self) -> None:
        """Checks across keys, after the strict checks (none here)."""


positive = partial(number, lo=0.0, strict=True)
nonnegative = partial(number, lo=0.0)
