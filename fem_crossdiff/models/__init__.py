"""The model registry: one entry per (PDE, scheme), the only list of models and their options.

A model is one class decorated with :func:`register`, in the library or in user code; nothing
else changes. The solver, the study-file schema (``[solver] scheme`` and the ``[solver.<scheme>]``
option tables), ``crossdiff keys``, the CLI, the checkpoint identity and the benchmarks all read
the entries here. An entry holds:

* ``pde``: which equation the model discretises, one of :data:`PDES`: ``"local"`` (the local
  system (1.1)), ``"nonlocal"`` (the nonlocal system (1.5), selected by ``nonlocal_params`` or
  ``model.type = "nonlocal"``) or ``"potential"`` (linear transport in a potential given by the
  caller);
* ``scheme``: the spatial discretisation's name, unique within its PDE;
* ``options``: a frozen dataclass of everything the scheme may set besides the model
  coefficients (validated with :class:`~fem_crossdiff.errors.ParameterError`, importable without
  DOLFINx); the model's constructor receives it as ``options=`` (:class:`NoOptions`: none);
* ``degrees``: the Lagrange degrees it supports (the class attribute ``degrees``);
* ``default``: whether it is the PDE's scheme when none is named (one per PDE).

The built-in entries are loaded on first use (the model modules import DOLFINx; this module
does not): ``("local", "muscl")`` (the default), ``("local", "upwind")``, ``("local", "afc")``,
``("local", "galerkin")``, ``("nonlocal", "upwind")`` and ``("potential", "upwind")``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fem_crossdiff.errors import ParameterError

__all__ = ["PDES", "ModelEntry", "NoOptions", "default_scheme", "entries", "entry",
           "get_model", "options_from_dict", "options_to_dict", "register", "schemes",
           "select_model"]

#: The equations a model can discretise (the first key of a registry entry).
PDES = ("local", "nonlocal", "potential")


@dataclass(frozen=True)
class NoOptions:
    """The options of a scheme that has none."""


@dataclass(frozen=True)
class ModelEntry:
    """One registered model.

    Attributes:
        pde: One of :data:`PDES`.
        scheme: The scheme's name (``[solver] scheme``, ``CrossDiffusionSolver(scheme=...)``).
        cls: The model class.
        options: Its options dataclass (:class:`NoOptions` if it has none).
        degrees: Supported Lagrange degrees.
        default: The PDE's scheme when none is named.
    """

    pde: str
    scheme: str
    cls: type
    options: type
    degrees: tuple[int, ...]
    default: bool

    @property
    def summary(self) -> str:
        """The first line of the model's docstring."""
        return (self.cls.__doc__ or "").strip().splitlines()[0] if self.cls.__doc__ else ""

    @property
    def positive(self) -> bool:
        """The scheme keeps every density nonnegative (the class attribute ``positive``)."""
        return bool(getattr(self.cls, "positive", False))

    def option_names(self) -> tuple[str, ...]:
        """The options' field names."""
        return tuple(f.name for f in dataclasses.fields(self.options))

    def make_options(self, given: Any = None, **fields) -> Any:
        """The options: ``given`` with ``fields`` replacing its values.

        ``given`` is an instance, a mapping as in a study file, or None for the defaults.

        Raises:
            ParameterError: a value out of range, an unknown field (naming the allowed ones)
                or ``given`` of another type.
        """
        if given is None:
            opts = self.options()
        elif isinstance(given, self.options):
            opts = given
        elif isinstance(given, Mapping):
            opts = options_from_dict(self.options, given)
        else:
            raise ParameterError("options", type(given).__name__,
                                 f"a {self.options.__name__} (the options of scheme "
                                 f"{self.scheme!r}) or a table of its fields")
        names = self.option_names()
        for key, value in fields.items():
            if key not in names:
                raise ParameterError(key, value, f"not an option of scheme {self.scheme!r} "
                                     f"({self.pde} system); its options: "
                                     + (", ".join(names) or "none"))
        return dataclasses.replace(opts, **fields) if fields else opts


#: (pde, scheme) -> entry, in registration order.
_ENTRIES: dict[tuple[str, str], ModelEntry] = {}


def register(scheme: str, *, pde: str = "local", options: type = NoOptions,
             default: bool = False):
    """Class decorator adding a model to the registry.

    Args:
        scheme: The scheme's name within ``pde`` (letters, digits, ``-`` and ``_``: it is a
            TOML key, ``[solver.<scheme>]``).
        pde: One of :data:`PDES`.
        options: A frozen dataclass of the model's options (its fields are the keys of
            ``[solver.<scheme>]``); the model's constructor takes it as ``options=``.
        default: Make it the PDE's scheme when none is named (replaces the previous one).

    Raises:
        ValueError: another class under the same key, an unknown PDE, a bad name or options
            that are not a frozen dataclass.
    """
    if pde not in PDES:
        raise ValueError(f"pde = {pde!r}: one of {', '.join(PDES)}")
    if not (isinstance(scheme, str) and scheme and scheme.replace("-", "").replace(
            "_", "").isalnum()):
        raise ValueError(f"scheme = {scheme!r}: letters, digits, '-' and '_' (a TOML key)")
    if not (dataclasses.is_dataclass(options) and isinstance(options, type)
            and options.__dataclass_params__.frozen):
        raise ValueError(f"options = {options!r}: a frozen dataclass")

    def add(cls):
        key = (pde, scheme)
        if key in _ENTRIES and _ENTRIES[key].cls is not cls:
            raise ValueError(f"a model is already registered as scheme {scheme!r} of the {pde} "
                             f"system ({_ENTRIES[key].cls})")
        cls.name = scheme
        cls.pde = pde
        if default:
            for k, e in list(_ENTRIES.items()):
                if e.pde == pde and e.default:
                    _ENTRIES[k] = dataclasses.replace(e, default=False)
        _ENTRIES[key] = ModelEntry(pde, scheme, cls, options,
                                   tuple(getattr(cls, "degrees", (1,))), default)
        return cls

    return add


def entries(pde: str | None = None) -> tuple[ModelEntry, ...]:
    """The registered entries (of one PDE, or all), by PDE, the default first, then by name.

    The order does not depend on which modules registered first (keys and messages list the
    same way in every process).
    """
    _load_builtin()
    return tuple(sorted((e for e in _ENTRIES.values() if pde is None or e.pde == pde),
                        key=lambda e: (PDES.index(e.pde), not e.default, e.scheme)))


def schemes(pde: str = "local") -> tuple[str, ...]:
    """The scheme names of one PDE."""
    return tuple(e.scheme for e in entries(pde))


def default_scheme(pde: str = "local") -> str:
    """The scheme of ``pde`` when none is named."""
    found = [e.scheme for e in entries(pde) if e.default]
    return found[-1] if found else schemes(pde)[0]


def entry(scheme: str | None = None, pde: str = "local") -> ModelEntry:
    """The entry of ``scheme`` (None: the default) of ``pde``.

    Raises:
        ParameterError: keyed ``scheme`` (or ``pde``), naming the registered choices.
    """
    if pde not in PDES:
        raise ParameterError("pde", pde, f"one of {', '.join(PDES)}")
    _load_builtin()
    name = default_scheme(pde) if scheme is None else scheme
    try:
        return _ENTRIES[(pde, name)]
    except (KeyError, TypeError):
        raise ParameterError("scheme", scheme, f"one of {', '.join(map(repr, schemes(pde)))} "
                             f"(the schemes of the {pde} system)") from None


def get_model(scheme: str | None = None, pde: str = "local") -> type:
    """The model class of ``scheme`` of ``pde`` (see :func:`entry`)."""
    return entry(scheme, pde).cls


def options_from_dict(cls: type, values: Mapping) -> Any:
    """An options dataclass from a table (a study file's ``[solver.<scheme>]``).

    A class may define ``from_dict(values)`` for fields that are objects (the muscl limiter);
    otherwise the table's keys are the fields.

    Raises:
        ParameterError: an unknown key (naming the allowed ones) or a bad value, keyed by the
            field.
    """
    if hasattr(cls, "from_dict"):
        return cls.from_dict(values)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in values.items():
        if key not in names:
            raise ParameterError(key, value, "unknown option; allowed: "
                                 + (", ".join(names) or "none"))
    try:
        return cls(**values)
    except TypeError as err:  # a wrong type the dataclass does not check itself
        raise ParameterError(next(iter(values), "options"), dict(values), str(err)) from None


def options_to_dict(options: Any) -> dict:
    """The options as plain TOML data (``options_from_dict`` reads it back)."""
    if hasattr(options, "to_dict"):
        return options.to_dict()
    out = {}
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def select_model(scheme: str | None = None, *, nonlocal_params=None, potential=None,
                 negative_edges: str = "voronoi", options: Any = None,
                 **fields) -> tuple[ModelEntry, dict]:
    """The registry entry and constructor keywords for the API's arguments.

    ``nonlocal_params`` selects the nonlocal PDE and ``potential`` the given-potential one; the
    scheme is then one of theirs (None: their default). ``options`` and ``fields`` make the
    scheme's options (:meth:`ModelEntry.make_options`).

    Raises:
        ParameterError: unknown scheme, conflicting arguments, unknown or bad options.
    """
    import inspect

    from fem_crossdiff.params import NEGATIVE_EDGE_MODES

    if nonlocal_params is not None and potential is not None:
        raise ParameterError("potential", "given with nonlocal_params",
                             "either potential or nonlocal_params, not both")
    pde = ("nonlocal" if nonlocal_params is not None
           else "potential" if potential is not None else "local")
    found = entry(scheme, pde)
    if negative_edges not in NEGATIVE_EDGE_MODES:
        raise ParameterError("negative_edges", negative_edges,
                             f"one of {', '.join(NEGATIVE_EDGE_MODES)}")
    opts = found.make_options(options, **fields)
    takes = inspect.signature(found.cls.__init__).parameters
    kwargs: dict[str, Any] = {}
    if found.options is not NoOptions:
        kwargs["options"] = opts
    if "negative_edges" in takes:
        kwargs["negative_edges"] = negative_edges
    if nonlocal_params is not None:
        kwargs["nonlocal_params"] = nonlocal_params
    if potential is not None:
        kwargs["potential"] = potential
    return found, kwargs


def _load_builtin() -> None:
    # imported on first use: the model modules import DOLFINx, the registry does not
    from fem_crossdiff.models import galerkin, upwind  # noqa: F401
    from fem_crossdiff.models.afc import model as _afc  # noqa: F401
    from fem_crossdiff.models.muscl import model as _muscl  # noqa: F401
    from fem_crossdiff.models.nonlocal_system import given as _given  # noqa: F401
    from fem_crossdiff.models.nonlocal_system import model as _nonlocal  # noqa: F401
