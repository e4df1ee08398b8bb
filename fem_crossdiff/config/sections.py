"""The sections of a study file, one frozen dataclass each, validated when constructed.

``[model]`` and ``[time]`` extend :class:`~fem_crossdiff.params.ModelParams` and
:class:`~fem_crossdiff.params.TimeParams` (their fields, defaults and ranges) with strict typing
and dotted keys; :func:`fem_crossdiff.meshes.validate` checks ``[geometry]``.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from fem_crossdiff import params as core
from fem_crossdiff.mollifiers import KERNELS

from . import schema as s
from .schema import MISSING, ConfigError, Section, under

MODEL_TYPES = ("local", "nonlocal")
FORMATS = ("vtx", "xdmf", "csv", "png")
#: Animation formats of ``[output] animation``.
ANIMATIONS = ("none", "gif", "mp4")
_CORE_MODEL_KEYS = tuple(f.name for f in dataclasses.fields(core.ModelParams))


@dataclass(frozen=True)
class ModelConfig(Section, core.ModelParams):
    """``[model]``: a :class:`~fem_crossdiff.params.ModelParams`, the type and the mollifier.

    The keys ``a, b, m, sigma`` are the fields of ``ModelParams``, with its defaults and ranges;
    the nonlocal keys are checked, and their defaults filled in, by ``NonlocalParams``.

    Attributes:
        type: ``"local"`` (1.1) or ``"nonlocal"`` (1.5).
        eps: Mollifier radius ``> 0`` (nonlocal only, required there).
        kernel: Mollifier name (nonlocal only; default ``"bump"``).
        coupling: ``"linear"`` or ``"implicit"`` (nonlocal only; default ``"linear"``).
        allow_small_eps: Accept ``eps`` below two cells (a warning instead of an error;
            nonlocal only; default false).
        subdivisions: Quadrature refinement of the mollification (nonlocal only; default 1).
        boundary: Convolutions at the walls (nonlocal only; ``NonlocalParams``' default).
    """

    type: str = "local"
    eps: float | None = None
    kernel: str | None = None
    coupling: str | None = None
    allow_small_eps: bool | None = None
    subdivisions: int | None = None
    boundary: str | None = None

    section = "model"
    checks = {"type": s.one_of(MODEL_TYPES),
              **dict.fromkeys(("a", "b"), partial(s.numbers, allowed="must be a list of "
                                                  "positive numbers, one per species"))}

    @classmethod
    def nonlocal_keys(cls) -> list[str]:
        """The keys of the nonlocal model: the fields after ``type``."""
        return [k for k in cls.keys() if k not in (*_CORE_MODEL_KEYS, "type")]

    def validate(self) -> None:
        """Nonlocal keys only with ``type = "nonlocal"``; ``eps`` required there."""
        given = {k: getattr(self, k) for k in self.nonlocal_keys() if getattr(self, k) is not None}
        if self.type == "local" and given:
            key = next(iter(given))
            raise ConfigError(f"model.{key}", given[key], 'only allowed with model.type = '
                              '"nonlocal"')
        if self.type == "nonlocal":
            if self.eps is None:
                raise ConfigError("model.eps", MISSING, 'required when model.type = '
                                  '"nonlocal" (mollifier radius > 0)')
            from fem_crossdiff.models.nonlocal_system import NonlocalParams

            filled = NonlocalParams(**given)
            for key in self.nonlocal_keys():
                object.__setattr__(self, key, getattr(filled, key))

    def params(self) -> core.ModelParams:
        """The plain :class:`~fem_crossdiff.params.ModelParams`."""
        return core.ModelParams(**{k: getattr(self, k) for k in _CORE_MODEL_KEYS})

    def nonlocal_params(self):
        """The ``NonlocalParams`` of :mod:`fem_crossdiff.models.nonlocal_system` (nonlocal only)."""
        from fem_crossdiff.models.nonlocal_system import NonlocalParams

        return NonlocalParams(**{k: getattr(self, k) for k in self.nonlocal_keys()})


@dataclass(frozen=True)
class TimeConfig(Section, core.TimeParams):
    """``[time]``: a :class:`~fem_crossdiff.params.TimeParams` read from a study file.

    The keys, defaults and ranges are those of ``TimeParams``.
    """

    section = "time"

    def params(self, dt: float | None = None) -> core.TimeParams:
        """The plain :class:`~fem_crossdiff.params.TimeParams` (optionally another first step)."""
        values = {k: getattr(self, k) for k in self.keys()}
        return core.TimeParams(**{**values, "dt": self.dt if dt is None else dt})


def _petsc(key: str, v: Any) -> tuple[tuple[str, Any], ...]:
    """The ``petsc`` table: allow-listed solver options with checked values only."""
    from fem_crossdiff.petsc_options import check_options

    options = dict(v) if isinstance(v, (list, tuple)) else v
    s.table(key, options, list(options) if isinstance(options, dict) else ())
    for k, value in options.items():
        if not k.replace("_", "").isalnum() or k.startswith("_"):
            raise ConfigError(f"{key}.{k}", value, "PETSc option names are letters, digits "
                              "and '_' (no leading '-' or prefix)")
        if not isinstance(value, (str, int, float, bool)):
            raise ConfigError(f"{key}.{k}", value, "must be a string, number or boolean")
    with under(""):
        checked = check_options(options, key)
    return tuple(sorted(checked.items()))


def _scheme_name(key: str, v: Any) -> str:
    """A registered scheme's name, of some PDE (``StudyConfig`` checks it for the model type)."""
    from fem_crossdiff.models import entries

    names = tuple(dict.fromkeys(e.scheme for e in entries()))
    if not isinstance(v, str) or v not in names:
        raise ConfigError(key, v, "must be one of " + ", ".join(map(repr, names)))
    return v


@dataclass(frozen=True)
class SolverConfig(Section):
    """``[solver]``: discretisation and PETSc options.

    The scheme's own options are the table ``[solver.<scheme>]`` (its fields: ``crossdiff
    keys``); each may also be given directly in ``[solver]`` (``solver.limiter`` for
    ``solver.muscl.limiter``), but not both ways.

    Attributes:
        scheme: The spatial scheme, a registered name of the model type's PDE (``crossdiff
            keys`` lists them with their options; not set: the model type's default).
        degree: Lagrange degree, 1 or 2 (the schemes' supported degrees are listed by
            ``crossdiff keys``; the P1 schemes need 1).
        linear_solver: ``"auto"`` (MUMPS in 1D, else GMRES + GAMG), ``"iterative"`` or
            ``"direct"``.
        petsc: Extra PETSc options (sorted ``(name, value)`` pairs): only the solver settings
            of :data:`fem_crossdiff.petsc_options.ALLOWED`, with checked values.
        positivity_tol: Reject steps with ``min rho_k < -positivity_tol * max rho_k``
            (``>= 0``; raise it where positivity is not guaranteed, e.g. with
            ``negative_edges = "keep"``).
        negative_edges: Edge-flux schemes on non-Delaunay meshes (tetrahedra):
            ``"voronoi"`` (default: circumcentric dual weights, positive), ``"front"``,
            ``"limit"``, ``"drop"`` or ``"keep"`` (see ``docs/tets.md``).
        tables: The ``[solver.<scheme>]`` tables given, as ``(scheme, table)`` pairs.
        aliases: Options of the scheme given directly in ``[solver]``, as ``(key, value)``
            pairs.
    """

    # None: the model type's default (resolved by StudyConfig from the registry)
    scheme: str | None = None
    degree: int = 1
    linear_solver: str = "auto"
    petsc: tuple[tuple[str, Any], ...] = ()
    positivity_tol: float = 1e-10
    negative_edges: str = "voronoi"
    # as given (the resolved options are StudyConfig.options, which compare)
    tables: tuple = dataclasses.field(default=(), compare=False)
    aliases: tuple = dataclasses.field(default=(), compare=False)

    section = "solver"
    hidden = ("tables", "aliases")
    checks = {"scheme": _scheme_name, "degree": s.one_of((1, 2)), "petsc": _petsc,
              "linear_solver": s.one_of(core.LINEAR_SOLVERS), "positivity_tol": s.nonnegative,
              "negative_edges": s.one_of(core.NEGATIVE_EDGE_MODES)}

    @classmethod
    def read(cls, raw: Any, defaults: dict | None = None):
        """The section; ``[solver.<scheme>]`` tables and other keys are kept for the scheme."""
        from fem_crossdiff.models import entries

        if not isinstance(raw, dict):
            return super().read(raw, defaults)
        names = set(e.scheme for e in entries())
        tables, aliases, own = [], [], {}
        for key, value in raw.items():
            if key in cls.keys():
                own[key] = value
            elif key in names:
                if not isinstance(value, dict):
                    raise ConfigError(f"solver.{key}", value, f"must be a table of the "
                                      f"options of scheme {key!r} ([solver.{key}])")
                tables.append((key, dict(value)))
            else:  # an option given directly, or an unknown key: known once the scheme is
                aliases.append((key, value))
        return cls(**{**(defaults or {}), **own}, tables=tuple(tables), aliases=tuple(aliases))


@dataclass(frozen=True)
class ParticlesConfig(Section):
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
    kernel: str = "bump"

    section = "particles"
    checks = {"N": partial(s.integer, lo=1), "seed": partial(s.integer, lo=0),
              "output_every": partial(s.integer, lo=1), "eps": s.positive,
              "kernel": s.one_of(KERNELS)}

    def validate(self) -> None:
        """``eps`` is required (the nonlocal model passes its own)."""
        if self.eps is None:
            raise ConfigError("particles.eps", MISSING, "required with the local model (the "
                              "particles interact through V^eps); defaults to model.eps for "
                              "the nonlocal model")


def _formats(key: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, (list, tuple)):
        raise ConfigError(key, v, f"must be a list drawn from {', '.join(FORMATS)}")
    formats = tuple(s.one_of(FORMATS)(f"{key}[{i}]", f) for i, f in enumerate(v))
    if len(set(formats)) != len(formats):
        raise ConfigError(key, v, "must not repeat a format")
    return formats


@dataclass(frozen=True)
class OutputConfig(Section):
    """``[output]``: where and what to write.

    Attributes:
        folder: Output folder (relative paths are relative to the working directory).
        formats: Subset of :data:`FORMATS`.
        every: Field output (VTX/XDMF) cadence in accepted steps, ``>= 1``.
        checkpoint_every: Checkpoint cadence in accepted steps (0: no checkpoints).
        progress: Progress lines on rank 0.
        animation: ``"gif"`` or ``"mp4"`` (needs ffmpeg): an animation ``animation.gif`` of
            the densities and the segregation view; ``"none"``: no animation.
        animation_frames: Frames of the animation, evenly spaced in time, ``>= 2``.
    """

    folder: str
    formats: tuple[str, ...] = ("vtx", "csv", "png")
    every: int = 1
    checkpoint_every: int = 0
    progress: bool = True
    animation: str = "none"
    animation_frames: int = 40

    section = "output"
    checks = {"folder": s.path_text, "formats": _formats, "every": partial(s.integer, lo=1),
              "checkpoint_every": partial(s.integer, lo=0),
              "animation": s.one_of(ANIMATIONS), "animation_frames": partial(s.integer, lo=2)}


def _stall_timeout(key: str, v: Any, allowed: str = "") -> float:
    from fem_crossdiff.watchdog import check_timeout

    with under(""):
        return check_timeout(key, v)


@dataclass(frozen=True)
class ResourcesConfig(Section):
    """``[resources]``: limits checked before any mesh or particle is made.

    Attributes:
        memory_limit_gb: Refuse a study whose memory estimate exceeds this many GB (all ranks
            together; default: the physical memory of the machines the job runs on, see
            :mod:`fem_crossdiff.resources`).
        disk_limit_gb: Refuse a study whose files are estimated to exceed this many GB
            (default: the free space of the output folder's file system, plus what the folder
            holds already).
        stall_timeout: Seconds without a completed time step after which the job is ended
            with one line instead of hanging (a stopped or stuck rank; ``0``: off; default:
            600 for ``crossdiff run``, off for ``run_study``; see docs/failsafe.md).
    """

    memory_limit_gb: float | None = None
    disk_limit_gb: float | None = None
    stall_timeout: float | None = None

    section = "resources"
    checks = {"memory_limit_gb": s.positive, "disk_limit_gb": s.positive,
              "stall_timeout": partial(_stall_timeout, allowed="must be 0 (off) or a number "
                                       "of seconds in [1, 1e+07]")}


def _family_potentials(key: str, v: Any) -> tuple[str, ...]:
    """One formula of ``x, y, z`` per species (``"0"``: none), each parsed and checked."""
    from fem_crossdiff.family import Potential

    if not isinstance(v, (list, tuple)) or not v:
        raise ConfigError(key, v, "must be a list of formulas of x, y, z, one per species "
                          '("0" for none)')
    out = []
    for k, text in enumerate(v):
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{key}[{k}]", text, 'must be a formula of x, y, z ("0" for none)')
        with under(""):
            Potential(expr=text, key=f"{key}[{k}]")
        out.append(text)
    return tuple(out)


def _family_interactions(key: str, v: Any) -> tuple:
    """``[[family.interactions]]``: ``kernel``, ``length`` and the ``strength`` matrix each."""
    from fem_crossdiff.family import KERNEL_KINDS, Interaction, Kernel

    if not isinstance(v, (list, tuple)):
        raise ConfigError(key, v, "must be an array of tables [[family.interactions]]")
    out = []
    for i, item in enumerate(v):
        where = f"{key}[{i}]"
        s.table(where, item, ("kernel", "length", "strength"), ("kernel", "length", "strength"))
        s.one_of(KERNEL_KINDS)(f"{where}.kernel", item["kernel"])
        with under(""):
            Interaction(Kernel(item["kernel"], item["length"], key=f"{where}"),
                        _tuples(item["strength"]), key=where)
        out.append((("kernel", item["kernel"]), ("length", float(item["length"])),
                    ("strength", _tuples(item["strength"]))))
    return tuple(out)


def _family_growth(key: str, v: Any) -> tuple:
    """``[[family.growth]]``: one table per species (``kind``, ``rate``, ``p_max``, ``expr``)."""
    from fem_crossdiff.family import Growth

    if not isinstance(v, (list, tuple)) or not v:
        raise ConfigError(key, v, "must be an array of tables [[family.growth]], one per "
                          'species (kind = "logistic" with rate = 0 for none)')
    out = []
    for k, item in enumerate(v):
        where = f"{key}[{k}]"
        s.table(where, item, ("kind", "rate", "p_max", "expr"))
        with under(""):
            Growth(**item, key=where)
        out.append(tuple(sorted(item.items())))
    return tuple(out)


@dataclass(frozen=True)
class FamilyConfig(Section):
    """``[family]``: the volume-exclusion family beyond the paper (``docs/family.md``).

    ``d_t rho_k = div(rho_k [b_k grad P + grad Phi_k + grad sum_l W_kl * rho_l]) + sigma_k Lap
    rho_k + rho_k G_k(P)``. Every key is optional; an absent section is the paper's system.

    Attributes:
        sigma: Diffusion per species, ``sigma_k >= 0`` (replaces ``model.sigma``).
        potentials: External potentials ``Phi_k``, one formula of ``x, y, z`` per species
            (``"0"``: none), e.g. ``"0.5 * (x**2 + y**2)"``.
        interactions: Interaction kernels, each a table with ``kernel`` (``"gaussian"``,
            ``"morse"``, ``"bump"``, ``"poly4"``), ``length > 0`` and the ``strength`` matrix
            ``W_kl`` (``n x n``; ``> 0`` repulsive, ``< 0`` attractive).
        growth: Growth laws ``G_k(P)``, one table per species: ``kind = "logistic"`` with
            ``rate`` and ``p_max > 0`` (``G = rate (1 - P / p_max)``), or ``kind = "expr"`` with
            ``expr``, a formula of ``P``.
    """

    sigma: tuple[float, ...] | None = None
    potentials: tuple[str, ...] | None = None
    interactions: tuple | None = None
    growth: tuple | None = None

    section = "family"
    checks = {"sigma": partial(s.numbers, allowed="must be a list of numbers >= 0, one per "
                               "species"),
              "potentials": _family_potentials, "interactions": _family_interactions,
              "growth": _family_growth}

    def family(self, model) -> Any:
        """The :class:`fem_crossdiff.family.Family` for the model (``model.sigma`` by default).

        Raises:
            ConfigError: lists of another length than ``model.a``, keyed ``family.<key>``.
        """
        from fem_crossdiff.family import Family, Growth, Interaction, Kernel, Potential

        n = model.n
        sigma = self.sigma if self.sigma is not None else (model.sigma,) * n
        for name, values in (("sigma", self.sigma), ("potentials", self.potentials),
                             ("growth", self.growth)):
            if values is not None and len(values) != n:
                raise ConfigError(f"family.{name}", list(values), f"needs one entry per species "
                                  f"({n}, the length of model.a)")
        pots = () if self.potentials is None else tuple(
            Potential(expr=e, key=f"family.potentials[{k}]")
            for k, e in enumerate(self.potentials))
        inter = () if self.interactions is None else tuple(
            Interaction(Kernel(dict(i)["kernel"], dict(i)["length"]), dict(i)["strength"],
                        key=f"family.interactions[{j}]")
            for j, i in enumerate(self.interactions))
        growth = () if self.growth is None else tuple(
            Growth(**dict(g), key=f"family.growth[{k}]") for k, g in enumerate(self.growth))
        with under("family"):
            return Family(tuple(sigma), pots, inter, growth)


def _tuples(v):
    return tuple(_tuples(i) for i in v) if isinstance(v, (list, tuple)) else v


@dataclass(frozen=True)
class GeometryConfig:
    """``[geometry]``: a registered gmsh builder with its parameters, or a ``.msh`` file.

    Attributes:
        builder: Name in :data:`fem_crossdiff.meshes.BUILDERS`, or None.
        params: The builder's keyword parameters (sorted ``(name, value)`` pairs, defaults
            filled in).
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
            raise ConfigError("geometry.builder", MISSING if self.builder is None
                              else self.builder, 'give exactly one of geometry.builder = '
                              '"<name>" (with its parameters) or geometry.msh = "<file>"')
        if self.msh is not None:
            if self.gdim is not None:
                s.one_of((1, 2, 3))("geometry.gdim", self.gdim)
            return
        if self.gdim is not None:
            raise ConfigError("geometry.gdim", self.gdim, "only allowed with geometry.msh")
        from fem_crossdiff import meshes

        params = {k: _tuples(v) for k, v in self.params}
        with under("geometry"):
            gdim = meshes.validate(self.builder, **params).gdim
        signature = inspect.signature(meshes.BUILDERS[self.builder]).parameters
        defaults = {k: _tuples(p.default) for k, p in signature.items() if k != "comm"}
        object.__setattr__(self, "params", tuple(sorted({**defaults, **params}.items())))
        object.__setattr__(self, "gdim", int(gdim))

    @classmethod
    def read(cls, raw: Any, base_dir: str | Path, check_files: bool) -> GeometryConfig:
        """The section from its TOML table; a relative ``msh`` is taken from ``base_dir``."""
        if not isinstance(raw, dict) or "msh" not in raw:
            g = s.table("geometry", raw, list(raw) if isinstance(raw, dict) else ())
            return cls(builder=g.get("builder"), gdim=g.get("gdim"),
                       params=tuple((k, v) for k, v in g.items() if k not in ("builder", "gdim")))
        g = s.table("geometry", raw, ("msh", "gdim"))
        path = Path(s.path_text("geometry.msh", g["msh"])).expanduser()
        try:
            path = (path if path.is_absolute() else Path(base_dir) / path).resolve()
        except OSError as err:  # a symlink loop, an unreadable folder
            raise ConfigError("geometry.msh", g["msh"],
                              f"cannot resolve the path ({err})") from None
        if check_files and not path.is_file():
            what = "is a folder, not a mesh file" if path.is_dir() else "mesh file not found"
            raise ConfigError("geometry.msh", g["msh"], f"{what} ({path})")
        return cls(msh=str(path), gdim=g.get("gdim"))

    def build(self, comm):
        """Build or read the mesh (collective).

        Returns:
            The :class:`fem_crossdiff.meshes.Geometry`.
        """
        from fem_crossdiff import meshes

        if self.msh is not None:
            return meshes.read_msh(self.msh, comm, gdim=self.gdim)
        return meshes.build(self.builder, comm, **dict(self.params))
