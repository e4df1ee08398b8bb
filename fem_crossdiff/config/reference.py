"""The key reference of study files, generated from the schema that validates them.

:func:`key_reference` walks the same objects that :func:`fem_crossdiff.config.parse_config`
uses: the section dataclasses (their fields are the keys, their defaults the defaults, their
annotations the types, their ``checks`` the ranges), the gmsh builders' signatures (the
``[geometry]`` parameters), :data:`~fem_crossdiff.config.PROFILES` (the ``[[initial]]`` keys)
and the top-level sections. The meanings come from the dataclasses' docstrings (``Attributes:``)
and the builders' ``Args:``. ``crossdiff keys`` prints it; ``docs/keys.md`` is a copy that a
test keeps equal to it.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from functools import partial

from fem_crossdiff.params import MAX_DENSITY

from . import schema as s
from .initial import EXPR_FUNCTIONS, EXPR_NAMES, PROFILES
from .sections import (
    FORMATS,
    MODEL_TYPES,
    FamilyConfig,
    ModelConfig,
    OutputConfig,
    ParticlesConfig,
    ResourcesConfig,
    SolverConfig,
    TimeConfig,
)

__all__ = ["key_reference", "section_keys"]


def _doc_entries(obj, header: str = "Attributes") -> dict[str, str]:
    """``name: text`` entries of a Google docstring section, continuation lines joined."""
    out: dict[str, str] = {}
    for cls in (obj.__mro__ if inspect.isclass(obj) else (obj,)):
        doc = inspect.getdoc(cls) or ""
        m = re.search(rf"^{header}:\n((?:[ ]+.*\n?|\n)*)", doc, re.M)
        if not m:
            continue
        name = None
        for line in m.group(1).splitlines():
            item = re.match(r"^    (\w+)(?: \([^)]*\))?: (.*)$", line)
            if item:
                name = item.group(1)
                if name not in out:
                    out[name] = item.group(2).strip()
                else:
                    name = None  # the subclass's text wins
            elif name and line.startswith("     "):
                out[name] += " " + line.strip()
            elif not line.strip():
                name = None
    return {k: re.sub(r":(?:data|class|func|meth):`~?([^`]+)`", r"``\1``", v)
            for k, v in out.items()}


def _type_name(annotation) -> str:
    name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__",
                                                                   str(annotation))
    name = name.removesuffix(" | None")
    return {"float": "number", "int": "integer", "bool": "boolean", "str": "string",
            "tuple[float, ...]": "list of numbers",
            "tuple[str, ...]": "list of strings",
            "tuple[tuple[str, Any], ...]": "table", "tuple": "array of tables"}.get(name, name)


def _allowed(check) -> str:
    """The range or choices a check accepts, in words ("" when the type says it all)."""
    if hasattr(check, "choices"):
        return "one of " + ", ".join(_value(c).strip("`") for c in check.choices)
    if isinstance(check, partial):
        kw = check.keywords
        if check.func is s.number and kw.get("lo") is not None:
            return f"{'>' if kw.get('strict') else '>='} {kw['lo']:g}"
        if check.func is s.integer and kw.get("lo") is not None:
            return f">= {kw['lo']}"
        if "allowed" in kw:
            return kw["allowed"].removeprefix("must be ")
    return ""


#: Ranges that ``TimeParams.__post_init__`` checks against other keys.
_TIME_RANGES = {"dt_min": "0 < dt_min <= dt", "dt_max": ">= dt",
                "grow": "[1, 10] ([1, 1.5] with bdf2)"}


def _documented_range(key: str, text: str) -> str:
    """``>= 2`` from a docstring that says ````m >= 2````."""
    both = re.search(rf"``([^`]*[<>]=? {re.escape(key)} [<>]=? [^`]+)``", text)
    if both:
        return both.group(1)
    one = re.search(rf"``{re.escape(key)} ([<>]=? [^`]+)``", text)
    return one.group(1) if one else ""


def _value(v) -> str:
    from . import _toml_value

    return f"`{_toml_value(s.plain(v))}`"


def _entries(pde: str | None = None, library_only: bool = False) -> list:
    """The registry's entries (only the library's own with ``library_only``)."""
    from fem_crossdiff.models import entries

    return [e for e in entries(pde)
            if not library_only or e.cls.__module__.startswith("fem_crossdiff.")]


def section_keys(cls, library_only: bool = False) -> list[dict]:
    """One entry per TOML key of a section dataclass: key, type, default, allowed, meaning.

    ``library_only``: the schemes of the library alone (``docs/keys.md``), not those a script
    or test registered.
    """
    from fem_crossdiff import mollifiers, params
    from fem_crossdiff.models import nonlocal_system as nonlocal_

    choices = {"kernel": mollifiers.KERNELS, "coupling": params.COUPLINGS,
               "boundary": nonlocal_.BOUNDARIES}
    docs = _doc_entries(cls)
    nonlocal_defaults = {f.name: f.default for f in dataclasses.fields(nonlocal_.NonlocalParams)}
    rows = []
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in cls.keys():
        f = fields[key]
        check = cls.checks.get(key)
        allowed = _allowed(check) if check is not None else ""
        if f.default is not dataclasses.MISSING:
            default = "not set" if f.default is None else _value(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = _value(f.default_factory())
        else:
            default = "required"
        if cls is ModelConfig and key in cls.nonlocal_keys():
            d = nonlocal_defaults.get(key, dataclasses.MISSING)
            default = ("required (nonlocal)" if d is dataclasses.MISSING
                       else f"{_value(d)} (nonlocal)")
            if key in choices:
                allowed = "one of " + ", ".join(f'"{n}"' for n in choices[key])
            elif key == "eps":
                allowed = "> 0, at least two cells (2 h_max) on the mesh"
            elif key == "subdivisions":
                allowed = ">= 1"
        if cls is OutputConfig and key == "formats":
            allowed = "list drawn from " + ", ".join(f'"{x}"' for x in FORMATS)
        if cls is OutputConfig and key == "folder":
            default = "`\"output/<study file stem>\"`"
        if key == "petsc":
            default = "`{}`"
        if cls is SolverConfig and key == "scheme":  # None: resolved per model type
            from fem_crossdiff.models import PDES, default_scheme

            types = [pde for pde in PDES if pde in MODEL_TYPES]
            default = ", ".join(f'`"{default_scheme(pde)}"` ({pde})' for pde in types)
            allowed = "; ".join(", ".join(f'"{e.scheme}"' for e in _entries(pde, library_only))
                                + f" ({pde})" for pde in types)
        if cls is SolverConfig and key == "degree":
            allowed = "one of 1, 2: " + ", ".join(
                f'{" or ".join(map(str, e.degrees))} with "{e.scheme}"'
                for e in _entries("local", library_only))
        if cls is TimeConfig and key == "method":
            allowed = "one of " + ", ".join(f'"{m}"' for m in params.TIME_METHODS)
        if not allowed:  # the parameter class checks it: its documented range
            allowed = _TIME_RANGES.get(key, "") if cls is TimeConfig else ""
            allowed = allowed or _documented_range(key, docs.get(key, ""))
        rows.append({"key": key, "type": _type_name(f.type), "default": default,
                     "allowed": allowed, "meaning": docs.get(key, "")})
    return rows


def option_keys(options_cls) -> list[dict]:
    """One entry per field of a scheme's options dataclass (the keys of ``[solver.<scheme>]``)."""
    from fem_crossdiff.models import options_to_dict

    docs = _doc_entries(options_cls)
    defaults = options_to_dict(options_cls())
    rows = []
    for f in dataclasses.fields(options_cls):
        allowed = ""
        for attr in (f"{f.name.upper()}S", f"{f.name.upper()}_CHOICES"):
            choices = getattr(options_cls, attr, None)
            if isinstance(choices, tuple):
                extra = ('"auto", ' if defaults.get(f.name) == "auto" else "")
                allowed = "one of " + extra + ", ".join(f'"{c}"' for c in choices)
        value = defaults.get(f.name)
        kind = _type_name(f.type)
        if isinstance(value, dict) and "name" in value:  # an object with a name and settings
            kind = "string or table"
            allowed = allowed or _options_allowed(options_cls, f.name)
        rows.append({"key": f.name, "type": kind, "default": _value(value),
                     "allowed": allowed, "meaning": docs.get(f.name, "")})
    return rows


def _options_allowed(options_cls, name: str) -> str:
    """The choices of an object-valued option, from the options' module (``as_<name>``)."""
    module = inspect.getmodule(options_cls)
    table = getattr(module, f"{name.upper()}_CLASSES", None)
    if not isinstance(table, dict):
        return ""
    return ("a name (its defaults) or a table with `name` and its settings; names: "
            + ", ".join(f'"{k}"' for k in table))


def _scheme_sections(library_only: bool = False) -> list[str]:
    """``### [solver.<scheme>]``: every registered scheme's options, from the registry."""
    from fem_crossdiff.models import NoOptions, options_to_dict

    out = []
    for e in (e for e in _entries(None, library_only) if e.pde in MODEL_TYPES):
        head = f"### [solver.{e.scheme}] ({e.pde} system" + (", the default)" if e.default
                                                             else ")")
        out += [head, "", f"{e.summary} Degrees: {', '.join(map(str, e.degrees))}.", ""]
        if e.options is NoOptions:
            out += ["No options.", ""]
            continue
        out += _table(option_keys(e.options)) + [""]
        for f in dataclasses.fields(e.options):
            value = options_to_dict(e.options()).get(f.name)
            if isinstance(value, dict) and "name" in value:
                out += _object_settings(e.options, f.name)
    return out


def _object_settings(options_cls, name: str) -> list[str]:
    """The settings of each choice of an object-valued option (a limiter's tuning numbers)."""
    module = inspect.getmodule(options_cls)
    table = getattr(module, f"{name.upper()}_CLASSES", {})
    lines = [f"Settings of `{name}` (as `{name} = {{ name = \"...\", ... }}`):", "",
             "| name | setting | default | meaning |", "|---|---|---|---|"]
    for choice, cls in table.items():
        docs = _doc_entries(cls)
        fields = dataclasses.fields(cls)
        if not fields:
            lines.append(f"| `\"{choice}\"` | none | | |")
        for f in fields:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            text = docs.get(f.name, "").replace("|", "\\|")
            lines.append(f"| `\"{choice}\"` | `{f.name}` | {_value(default)} | {text} |")
    return lines + [""]


def _geometry_rows() -> list[tuple[str, list[dict]]]:
    from fem_crossdiff import meshes

    out = []
    for name in meshes.BUILDERS:
        fn = meshes.BUILDERS[name]
        docs = _doc_entries(fn, "Args")
        rows = []
        for key, p in inspect.signature(fn).parameters.items():
            if key == "comm":
                continue
            ann = p.annotation if p.annotation is not inspect.Parameter.empty else ""
            kind = _type_name(ann).replace("Sequence[Sequence[float]]", "list of lists of numbers")
            rows.append({"key": key, "type": kind.replace("Sequence[float]", "list of numbers"),
                         "default": ("required" if p.default is inspect.Parameter.empty
                                     else _value(p.default)),
                         "allowed": "", "meaning": docs.get(key, "")})
        out.append((name, rows))
    return out


def _table(rows: list[dict]) -> list[str]:
    lines = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for r in rows:
        cells = [f"`{r['key']}`", r["type"], r["default"], r["allowed"], r["meaning"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def key_reference(library_only: bool = False) -> str:
    """The key reference of study files as Markdown (what ``crossdiff keys`` prints).

    Args:
        library_only: Leave out the schemes registered outside the library (``docs/keys.md``
            is the library's own reference; ``crossdiff keys`` shows every registered one).
    """
    from . import SECTIONS

    out = ["# Study file keys", "",
           "Generated by `crossdiff keys` from the schema that validates study files "
           "(`fem_crossdiff.config`); regenerate with `crossdiff keys > docs/keys.md`. "
           "Unknown keys, wrong types and values outside these ranges stop `crossdiff check` "
           "and `crossdiff run` with exit code 2 and a message naming the dotted key.", "",
           "Top-level entries: " + ", ".join(f"`{k}`" for k in SECTIONS) + ". `title` is a "
           "string; `[model]`, `[geometry]`, `[[initial]]` and `[time]` are required; "
           "`[short]` holds overrides of any other section, deep-merged in short mode "
           "(`--short` or a non-empty `CI` environment variable).", ""]
    sections = [(ModelConfig, "Model coefficients of (1.1); `type = \"nonlocal\"` adds the "
                 "mollifier keys of (1.5)."),
                (FamilyConfig, "Optional: per-species diffusion, external potentials, "
                 "interaction kernels and growth (the family beyond the paper's system; "
                 "docs/family.md)."),
                (TimeConfig, "Time stepping."),
                (SolverConfig, "Discretisation and linear solver."),
                (ParticlesConfig, "Optional: the particle system (1.6) run alongside."),
                (OutputConfig, "Optional: what is written where."),
                (ResourcesConfig, "Optional: limits checked before any mesh or particle is "
                 "made (docs/failsafe.md).")]
    for cls, text in sections:
        out += [f"## [{cls.section}]", "", text, ""] + _table(
            section_keys(cls, library_only)) + [""]
        if cls is SolverConfig:
            out += _scheme_sections(library_only)
    out += ["## [geometry]", "",
            'Either `builder = "<name>"` with that builder\'s parameters below, or '
            '`msh = "<file>"` (a gmsh file, relative to the study file) with an optional '
            "`gdim` (1, 2 or 3).", ""]
    for name, rows in _geometry_rows():
        out += [f"### builder = \"{name}\"", ""] + _table(rows) + [""]
    out += ["## [[initial]]", "",
            "One table per species, in the order of `model.a`, each with a `profile`:", "",
            "| profile | required keys | optional keys (default) |", "|---|---|---|"]
    for profile, (required, optional) in PROFILES.items():
        opt = ", ".join(f"`{k}` ({_value(v)})" for k, v in optional.items()) or "none"
        out.append(f"| `{profile}` | {', '.join(f'`{k}`' for k in required)} | {opt} |")
    out += ["", "`center` and `normal` are lists of as many numbers as the geometry has "
            "dimensions (`normal` nonzero); `width`, `radius` > 0; `height`, `value`, "
            f"`background` in [0, {MAX_DENSITY:g}] and the main value (`height` or `value`) "
            "> 0. `expr` is an arithmetic expression of "
            + ", ".join(f"`{n}`" for n in EXPR_NAMES)
            + " with `+ - * / ** %`, comparisons and the functions "
            + ", ".join(f"`{f}`" for f in EXPR_FUNCTIONS) + ".", "",
            "On the mesh, every nodal value of each species' initial data (any profile, "
            "expressions included) must be finite, >= 0 (down to round-off) and at most "
            f"{MAX_DENSITY:g} in magnitude, and each species needs positive mass; otherwise "
            "`crossdiff check` and `crossdiff run` stop with exit code 2 and a message naming "
            "the species' table (`initial[0]`, `initial[1]`, ...), before anything in the "
            "output folder is touched.", ""]
    return "\n".join(out)
