"""One class per spatial discretisation, behind :class:`~fem_crossdiff.models.base.Model`.

The registry maps the names used by the API and the TOML files to the classes. A new model is
one class decorated with :func:`register` (in the library or in user code); nothing else
changes. Built in:

* ``"upwind"``: local system (1.1), positivity-preserving P1 edge fluxes (first order);
* ``"muscl"``: local system (1.1), upwind fluxes with limited second-order species fractions
  (the default, :data:`fem_crossdiff.params.DEFAULT_SCHEME`);
* ``"afc"``: local system (1.1), upwind fluxes with algebraic flux correction of the fractions;
* ``"galerkin"``: local system (1.1), standard Galerkin P1/P2;
* ``"nonlocal"``: nonlocal system (1.5), linear or implicit coupling;
* ``"potential"``: linear transport in a given lagged potential.
"""

from __future__ import annotations

from fem_crossdiff.errors import ParameterError

__all__ = ["register", "get_model", "model_names", "select_model", "MODELS"]

#: name -> model class
MODELS: dict[str, type] = {}


def register(name: str):
    """Class decorator adding a model to the registry under ``name``."""

    def add(cls):
        if name in MODELS and MODELS[name] is not cls:
            raise ValueError(f"a model named {name!r} is already registered ({MODELS[name]})")
        cls.name = name
        MODELS[name] = cls
        return cls

    return add


def get_model(name: str) -> type:
    """The model class registered under ``name``."""
    _load_builtin()
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise ParameterError("scheme", name, f"one of {', '.join(model_names())}") from None


def model_names() -> tuple[str, ...]:
    """The registered names."""
    _load_builtin()
    return tuple(MODELS)


def select_model(name: str | None = None, *, nonlocal_params=None, potential=None,
                 negative_edges: str = "voronoi", **options) -> tuple[type, dict]:
    """The model class and constructor options for the API's keywords.

    ``nonlocal_params`` selects ``"nonlocal"`` and ``potential`` selects ``"potential"``
    (both upwind discretisations, so ``name`` must then be ``"upwind"`` or ``None``).
    ``name=None`` is :data:`fem_crossdiff.params.DEFAULT_SCHEME` for the local system. Options
    a model's constructor does not take are errors, except ``negative_edges`` at its default.

    Raises:
        ParameterError: unknown model, conflicting or unknown options.
    """
    import inspect

    from fem_crossdiff.params import DEFAULT_SCHEME, NEGATIVE_EDGE_MODES

    if nonlocal_params is not None and potential is not None:
        raise ParameterError("potential", "given with nonlocal_params",
                             "either potential or nonlocal_params, not both")
    if nonlocal_params is not None or potential is not None:
        # both are upwind discretisations: the local system's default does not apply
        if name not in (None, "upwind"):
            raise ParameterError("scheme", name,
                                 "'upwind' (a potential or the nonlocal model needs it)")
        name = "nonlocal" if nonlocal_params is not None else "potential"
        options["nonlocal_params" if nonlocal_params is not None else "potential"] = (
            nonlocal_params if nonlocal_params is not None else potential)
    cls = get_model(DEFAULT_SCHEME if name is None else name)
    if negative_edges not in NEGATIVE_EDGE_MODES:
        raise ParameterError("negative_edges", negative_edges,
                             f"one of {', '.join(NEGATIVE_EDGE_MODES)}")
    takes = inspect.signature(cls.__init__).parameters
    if "negative_edges" in takes:
        options["negative_edges"] = negative_edges
    for key, value in options.items():
        if key not in takes:
            raise ParameterError(key, value, f"not an option of model {name!r}")
    return cls, options


def _load_builtin() -> None:
    # imported on first use: the model modules import DOLFINx, the registry does not
    from fem_crossdiff.models import local_galerkin, upwind  # noqa: F401
    from fem_crossdiff.models.afc import model as _afc  # noqa: F401
    from fem_crossdiff.models.muscl import model as _muscl  # noqa: F401
    from fem_crossdiff.models.nonlocal_system import given as _given  # noqa: F401
    from fem_crossdiff.models.nonlocal_system import model as _nonlocal  # noqa: F401
