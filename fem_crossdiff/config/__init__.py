"""TOML study files: parsing, validation with dotted-key errors, defaults, short mode.

A study file has the sections ``[model]``, ``[geometry]``, ``[[initial]]`` (one table per
species), ``[time]``, ``[solver]``, ``[particles]`` (optional), ``[output]`` and ``[short]``
(optional overrides, deep-merged into the other sections in short mode: coarse mesh, small T).
Every problem is a :class:`ConfigError` (a :class:`~fem_crossdiff.errors.ParameterError`)
naming the dotted key (``model.a[1]``, ``initial[0].expr``), the offending value and what is
allowed; unknown keys are errors at every level. Validation depends only on the file (and, for
``geometry.msh``, on the file system), so it gives the same verdict on every MPI rank. A
relative ``geometry.msh`` path is taken relative to the study file; ``output.folder`` relative
to the working directory.


This module holds the whole study (:class:`StudyConfig`, reading and writing TOML); the
sections are in :mod:`.sections` and :mod:`.initial` (the initial profiles), the error and the
table-driven schema, which takes keys, defaults and types from dataclass fields, in
:mod:`.schema`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .initial import EXPR_FUNCTIONS, PROFILES, InitialConfig, SafeExpression
from .schema import MISSING, ConfigError, plain, table, under
from .sections import (
    FORMATS,
    FamilyConfig,
    GeometryConfig,
    ModelConfig,
    OutputConfig,
    ParticlesConfig,
    ResourcesConfig,
    SolverConfig,
    TimeConfig,
)

__all__ = ["ConfigError", "FamilyConfig", "ModelConfig", "GeometryConfig", "InitialConfig",
           "TimeConfig", "SolverConfig", "ParticlesConfig", "OutputConfig", "ResourcesConfig",
           "StudyConfig",
           "SafeExpression",
           "load_config", "parse_config", "short_mode_requested", "to_toml", "EXPR_FUNCTIONS",
           "FORMATS", "PROFILES"]

SECTIONS = ("title", "model", "family", "geometry", "initial", "time", "solver", "particles",
            "output", "resources", "short")
#: Largest study file read (bytes).
MAX_FILE_BYTES = 2**20
#: Deepest nesting of tables and arrays a study file may have (the deepest legal one has 4).
MAX_DEPTH = 16


def _values(section) -> dict:
    """The TOML keys of a section that are set, as plain data."""
    return {k: plain(getattr(section, k)) for k in section.keys()
            if getattr(section, k) is not None}


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
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    family: FamilyConfig | None = None
    title: str = ""
    source: str = ""
    short: bool = False
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    #: The registry entry of the scheme (resolved from ``solver.scheme`` and ``model.type``).
    entry: Any = field(init=False, repr=False)
    #: The scheme's options (``[solver.<scheme>]`` and the flat aliases, validated).
    options: Any = field(init=False, repr=False)

    #: The :class:`fem_crossdiff.family.Family` of ``[family]`` (None: the paper's system).
    family_params: Any = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "family_params", None if self.family is None
                           else self.family.family(self.model))
        fam = self.family_params
        if self.particles is not None and fam is not None and fam.has_growth:
            raise ConfigError("family.growth", "[...]", "not with [particles]: the particles "
                              "alongside a mesh run carry no weights yet (growth acts through "
                              "particle weights; fem_crossdiff.particles.family runs it in free "
                              "space or a box)")
        entry, options = _resolve_scheme(self.model.type, self.solver)
        object.__setattr__(self, "entry", entry)
        object.__setattr__(self, "options", options)
        if len(self.initial) != self.model.n:
            raise ConfigError("initial", f"{len(self.initial)} table(s)",
                              f"needs one [[initial]] table per species ({self.model.n}, the "
                              "length of model.a)")

    def to_dict(self) -> dict:
        """The resolved configuration as plain TOML-compatible data (defaults included)."""
        g = self.geometry
        geometry = ({"msh": g.msh} | ({"gdim": g.gdim} if g.gdim is not None else {})
                    if g.msh is not None else {"builder": g.builder, **dict(g.params)})
        out = {"title": self.title} if self.title else {}
        out.update(model={"type": self.model.type, **_values(self.model)}, geometry=geometry,
                   initial=[{"profile": i.profile, **dict(i.values)} for i in self.initial],
                   time=_values(self.time),
                   solver=self._solver_dict())
        if self.family is not None:
            out["family"] = {k: _family_value(v) for k, v in _values(self.family).items()}
        if self.particles is not None:
            out["particles"] = _values(self.particles)
        out["output"] = _values(self.output)
        if _values(self.resources):
            out["resources"] = _values(self.resources)
        return plain(out)

    def _solver_dict(self) -> dict:
        from fem_crossdiff.models import options_to_dict

        out = {**_values(self.solver), "petsc": dict(self.solver.petsc)}
        options = options_to_dict(self.options)
        if options:  # the scheme's table, every option written out
            out[self.entry.scheme] = options
        return out

    def physics_hash(self) -> str:
        """A 16-hex-digit SHA-256 of what a restart must share with the run it continues.

        That is the model, geometry, initial data, solver and time stepping except ``T`` and
        the first step ``dt`` (a restart takes its step from the checkpoint).
        """
        d = self.to_dict()
        for key in ("T", "dt"):  # a restart takes its step from the checkpoint
            d["time"].pop(key)
        for key in ("output", "title", "particles", "resources"):
            d.pop(key, None)
        text = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _family_value(v):
    """``[family]`` values as TOML data: the tables of interactions and growth as dicts."""
    if isinstance(v, list) and v and isinstance(v[0], list) and v[0] and isinstance(
            v[0][0], list) and len(v[0][0]) == 2 and isinstance(v[0][0][0], str):
        return [{k: x for k, x in item} for item in v]
    return v


def _resolve_scheme(model_type: str, solver: SolverConfig):
    """The registry entry and options of a study's scheme (errors keyed by the TOML key)."""
    from fem_crossdiff.errors import ParameterError
    from fem_crossdiff.models import entries, entry

    try:
        found = entry(solver.scheme, model_type)
    except ParameterError:
        names = ", ".join(repr(e.scheme) for e in entries(model_type))
        raise ConfigError("solver.scheme", solver.scheme,
                          f"must be one of {names} with model.type = {model_type!r}") from None
    if solver.degree not in found.degrees:
        others = [e.scheme for e in entries(model_type) if solver.degree in e.degrees]
        hint = f" (use {', '.join(map(repr, others))})" if others else ""
        raise ConfigError("solver.degree", solver.degree,
                          f"must be {' or '.join(map(str, found.degrees))} with solver.scheme = "
                          f"{found.scheme!r}" + (" (the default)" if solver.scheme is None
                                                 else "") + hint)
    given = {}
    for name, values in solver.tables:
        if name != found.scheme:
            raise ConfigError(f"solver.{name}", values, f"options of scheme {name!r}, but the "
                              f"scheme is {found.scheme!r}"
                              + (" (the default)" if solver.scheme is None else ""))
        given = values
    names = found.option_names()
    aliases = {}
    for key, value in solver.aliases:
        if key not in names:
            allowed = ", ".join(SolverConfig.keys())
            owners = [f"{e.scheme!r} (model.type = {e.pde!r})" for e in entries()
                      if key in e.option_names()]
            where = f"; {key!r} is an option of scheme {' and '.join(owners)}" if owners else ""
            takes = (f"scheme {found.scheme!r} takes {' '.join(names)} in [solver."
                     f"{found.scheme}] or here" if names else
                     f"scheme {found.scheme!r} has no options")
            raise ConfigError(f"solver.{key}", value, f"unknown key ({takes}{where}); allowed "
                              f"in [solver]: {allowed}")
        if key in given:
            raise ConfigError(f"solver.{key}", value, f"given twice: also as "
                              f"solver.{found.scheme}.{key}")
        aliases[key] = value
    with under(f"solver.{found.scheme}"):
        options = found.make_options(given)
    with under("solver"):
        options = found.make_options(options, **aliases)
    return found, options


# --------------------------------------------------------------------------- parsing
def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = (_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict)
                  else copy.deepcopy(v))
    return out


def _section(raw: dict, name: str, required: bool = True):
    if name not in raw and required:
        raise ConfigError(name, MISSING, f"the section [{name}] is required")
    return raw.get(name, {})


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
    _check_depth(raw)
    table("", raw, SECTIONS)
    base = _parse(raw, base_dir, source, False, check_files)  # errors name the base keys
    if "short" not in raw:
        return base
    # the [short] overrides are checked in both modes: a file is valid as a whole
    over = table("short", raw["short"], [s for s in SECTIONS if s != "short"])
    try:
        merged = _merge({k: v for k, v in raw.items() if k != "short"}, over)
        shortened = _parse(merged, base_dir, source, True, check_files)
    except ConfigError as err:
        raise ConfigError(f"short.{err.key}", err.value, err.allowed) from None
    return shortened if short else base


def _check_depth(raw) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` (before anything recurses into it)."""
    todo = [(raw, 0, "")]
    while todo:
        item, depth, key = todo.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(key or "<file>", "...", f"nests tables/arrays deeper than "
                              f"{MAX_DEPTH} levels")
        if isinstance(item, dict):
            todo.extend((v, depth + 1, f"{key}.{k}" if key else str(k)) for k, v in item.items())
        elif isinstance(item, list):
            todo.extend((v, depth + 1, f"{key}[{i}]") for i, v in enumerate(item))


def _parse(raw: dict, base_dir, source: str, short: bool, check_files: bool) -> StudyConfig:
    title = raw.get("title", "")
    if not isinstance(title, str):
        raise ConfigError("title", title, "must be a string")
    model = ModelConfig.read(_section(raw, "model"))
    geometry = GeometryConfig.read(_section(raw, "geometry"), base_dir, check_files)
    tables = raw.get("initial", MISSING)
    if not isinstance(tables, list):
        raise ConfigError("initial", tables, f"must be an array of tables [[initial]], one per "
                          f"species ({model.n})")
    initial = [InitialConfig.read(t, f"initial[{k}]", geometry.gdim) for k, t in enumerate(tables)]
    time = TimeConfig.read(_section(raw, "time"))
    solver = SolverConfig.read(_section(raw, "solver", required=False))
    particles = None
    if "particles" in raw:
        own = {"eps": model.eps, "kernel": model.kernel} if model.type == "nonlocal" else {}
        particles = ParticlesConfig.read(raw["particles"], defaults=own)
    stem = Path(source).stem if source else "study"
    output = OutputConfig.read(_section(raw, "output", required=False),
                               defaults={"folder": f"output/{stem}"})
    resources = ResourcesConfig.read(_section(raw, "resources", required=False))
    family = FamilyConfig.read(raw["family"]) if "family" in raw else None
    return StudyConfig(model=model, geometry=geometry, initial=tuple(initial), time=time,
                       solver=solver, output=output, particles=particles, resources=resources,
                       family=family, title=title, source=str(source), short=short)


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
    if not isinstance(path, (str, Path)) or not str(path) or "\0" in str(path):
        raise ConfigError("<file>", str(path), "must be the name of a study file")
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("<file>", str(path), "study file not found") from None
    except IsADirectoryError:
        raise ConfigError("<file>", str(path), "is a folder, not a study file") from None
    except OSError as err:
        raise ConfigError("<file>", str(path), f"cannot be read ({err.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError("<file>", str(path), f"is larger than {MAX_FILE_BYTES // 2**20} MiB "
                          "(a study file is a few lines of TOML)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError("<file>", str(path), f"is not UTF-8 text (byte {err.start}: "
                          f"{data[err.start:err.start + 1]!r})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("<file>", str(path), f"is not valid TOML ({err})") from None
    except RecursionError:
        raise ConfigError("<file>", str(path), f"nests tables/arrays deeper than {MAX_DEPTH} "
                          "levels") from None
    except ValueError as err:  # e.g. an integer of more digits than Python converts
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
    if isinstance(v, dict):  # an inline table
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(key: str) -> str:
    """A bare key where TOML allows one, else a quoted key."""
    return key if key and key.replace("-", "").replace("_", "").isalnum() else json.dumps(key)


def to_toml(data: dict) -> str:
    """Write plain nested data (as from :meth:`StudyConfig.to_dict`) as TOML text."""
    lines: list[str] = []

    def write(d: dict, name: str = "", array: bool = False) -> None:
        if name:
            lines.append(f"\n[[{name}]]" if array else f"\n[{name}]")
        subs = {k: v for k, v in d.items() if isinstance(v, dict)
                or (isinstance(v, list) and v and isinstance(v[0], dict))}
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in d.items()
                     if k not in subs and v is not None)
        for k, v in subs.items():
            for item in v if isinstance(v, list) else [v]:
                write(item, f"{name}.{k}" if name else k, isinstance(v, list))

    write(data)
    return "\n".join(lines).lstrip("\n") + "\n"
