"""Options of the ``"muscl"`` scheme: the slope limiter (with its tuning numbers), the Jacobian.

Importable without DOLFINx. Every number that changes the scheme's results is a field here,
given per solver (``CrossDiffusionSolver(..., limiter=SmoothSensor(width=(1.0, 0.3)))`` or
``options=MusclOptions(...)``), never a module global: two solvers in one process can differ.
The defaults are the measured choices of ``docs/muscl-newton.md`` and ``docs/schemes.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

from fem_crossdiff.errors import ParameterError

__all__ = ["LIMITER_CLASSES", "Compressive", "Limiter", "Minmod", "MusclOptions", "Sensor",
           "Smooth", "SmoothSensor", "Superbee", "VanAlbada", "VanLeer", "as_limiter",
           "limiter_dict"]


def _band(key: str, value) -> tuple[float, float]:
    """A pair ``0 <= lo < hi`` (a band of scaled jumps, which lie in ``[0, 1]``)."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ParameterError(key, value, "a pair (lo, hi) of numbers, 0 <= lo < hi") from None
    if not 0.0 <= lo < hi:
        raise ParameterError(key, value, "a pair (lo, hi) of numbers, 0 <= lo < hi")
    return lo, hi


def _positive(key: str, value) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ParameterError(key, value, "a number > 0") from None
    if not x > 0.0:
        raise ParameterError(key, value, "a number > 0")
    return x


@dataclass(frozen=True, eq=False)
class Limiter:
    """A slope limiter of the face fractions (``phi(r)`` in ``[0, 2]``).

    A limiter equals another of the same class and values, and its name: ``limiter ==
    "sensor"`` asks for the kind, whatever the tuning (the name is what study files and
    earlier code compare with).

    Class attributes:
        name: The name in study files (:data:`LIMITER_CLASSES`).
        smooth: Without branches: the scaled differences are compared with a scale ``eps``
            per edge and the clamp is a smooth minimum.
    """

    name: ClassVar[str] = ""
    smooth: ClassVar[bool] = False

    def _key(self) -> tuple:
        return (type(self), *(getattr(self, f.name) for f in fields(self)))

    def __eq__(self, other) -> bool:
        if isinstance(other, str):
            return other == self.name
        return isinstance(other, Limiter) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def _tvd(cls_name: str, name: str, doc: str) -> type[Limiter]:
    """A limiter class without tuning numbers (a TVD function of ``r`` alone)."""
    cls = type(cls_name, (Limiter,), {"__doc__": doc, "__module__": __name__,
                                      "__qualname__": cls_name, "name": name})
    return dataclass(frozen=True, eq=False)(cls)


VanLeer = _tvd("VanLeer", "vanleer", "Van Leer's ``(r + |r|) / (1 + |r|)``.")
Minmod = _tvd("Minmod", "minmod", "``max(0, min(1, r))``.")
VanAlbada = _tvd("VanAlbada", "vanalbada", "``(r^2 + r) / (r^2 + 1)`` for ``r > 0``.")
Superbee = _tvd("Superbee", "superbee", "``max(0, min(2 r, 1), min(r, 2))``.")
Compressive = _tvd("Compressive", "compressive",
                   "``min(2 r, 2)^+``, the upper edge of the TVD region (``phi(1) = 2``).")


@dataclass(frozen=True, eq=False)
class Sensor(Limiter):
    """Van Leer's where the jump along the edge is small, a compressive front limiter where large.

    Attributes:
        band: The weight of the front limiter rises from 0 to 1 as the scaled jump ``a_k
            |c_k,dn - c_k,up|`` (in ``[0, 1]``) goes from the first to the second value
            (``docs/schemes.md``).
        slope: The slope ``K`` at ``r = 0`` of the front limiter ``2 tanh(K r / 2)^+``
            (``"compressive"`` has 2): the steeper, the faster a contact's upstream tail
            decays (``docs/schemes.md``).
    """

    name: ClassVar[str] = "sensor"
    band: tuple[float, float] = (0.15, 0.4)
    slope: float = 4.0

    def __post_init__(self):
        object.__setattr__(self, "band", _band("limiter.band", self.band))
        object.__setattr__(self, "slope", _positive("limiter.slope", self.slope))


@dataclass(frozen=True, eq=False)
class Smooth(Limiter):
    """Van Leer regularised at the scale ``eps`` per edge, a p-mean with the clamp.

    Attributes:
        k: On an edge of length ``h`` the scaled fraction differences are compared with ``eps
            = (k h / L)^(3/2)`` (Venkatakrishnan's ``eps^2 = (K h)^3``, ``h`` relative to the
            diameter ``L`` of the mesh's bounding box, as the fractions are dimensionless;
            ``docs/muscl-newton.md``).
        p: The power (even) of the smooth minimum with the clamp, ``(x^-p + y^-p)^(-1/p)``:
            the larger, the closer to ``min(x, y)`` (``2^(-1/p)`` of it where ``x = y``) and
            the sharper its turn.
    """

    name: ClassVar[str] = "smooth"
    smooth: ClassVar[bool] = True
    k: float = 4.0
    p: int = 2

    def __post_init__(self):
        object.__setattr__(self, "k", _positive("limiter.k", self.k))
        if not (isinstance(self.p, int) and self.p > 0 and self.p % 2 == 0):
            raise ParameterError("limiter.p", self.p, "an even integer > 0")


@dataclass(frozen=True, eq=False)
class SmoothSensor(Limiter):
    """The sensor's blend of :class:`Smooth` with the front limiter, regularised the same way.

    It takes a sharper minimum with the clamp than :class:`Smooth` (a compact blend, exact
    ``min`` outside a band around the crossing).

    Attributes:
        k: The scale of ``eps``, as :attr:`Smooth.k`.
        width: The relative width of the minimum with the clamp on smooth data and at fronts.
            1 is the widest (a p-mean's curvature, 3 Newton iterations at 1e6 unknowns), 0.2
            nearly ``min`` (the sensor's overlap rate at fronts; ``docs/muscl-newton.md``).
        band: The scaled jumps ``|dn|`` over which the width goes from the first value of
            :attr:`width` to the second: lower than :attr:`sensor_band`, as the clamp binds in
            a contact's thin tails, where the jumps are small.
        sensor_band: The band of the sensor's weight, as :attr:`Sensor.band`.
        slope: The front limiter's slope at ``r = 0``, as :attr:`Sensor.slope`.
    """

    name: ClassVar[str] = "smooth-sensor"
    smooth: ClassVar[bool] = True
    k: float = 4.0
    width: tuple[float, float] = (1.0, 0.2)
    band: tuple[float, float] = (0.008, 0.04)
    sensor_band: tuple[float, float] = (0.15, 0.4)
    slope: float = 4.0

    def __post_init__(self):
        object.__setattr__(self, "k", _positive("limiter.k", self.k))
        try:
            width = tuple(float(w) for w in self.width)
        except (TypeError, ValueError):
            width = ()
        if len(width) != 2 or not all(0.0 < w <= 1.0 for w in width):
            raise ParameterError("limiter.width", self.width,
                                 "a pair of relative widths in (0, 1]")
        object.__setattr__(self, "width", width)
        object.__setattr__(self, "band", _band("limiter.band", self.band))
        object.__setattr__(self, "sensor_band", _band("limiter.sensor_band",
                                                      self.sensor_band))
        object.__setattr__(self, "slope", _positive("limiter.slope", self.slope))


#: Limiter name -> class: the limiters a study file can name.
LIMITER_CLASSES: dict[str, type[Limiter]] = {
    cls.name: cls for cls in (VanLeer, Minmod, VanAlbada, Superbee, Compressive, Sensor,
                              Smooth, SmoothSensor)}


def as_limiter(value) -> Limiter:
    """A limiter object from a name (its defaults) or a limiter object (itself).

    Raises:
        ParameterError: neither a limiter object nor a known name.
    """
    if isinstance(value, Limiter) and type(value) is not Limiter:
        return value
    if isinstance(value, dict):  # a study file's table: name = "...", then the tuning numbers
        values = dict(value)
        name = values.pop("name", None)
        cls = LIMITER_CLASSES.get(name) if isinstance(name, str) else None
        if cls is None:
            raise ParameterError("limiter.name", name, f"one of {', '.join(LIMITER_CLASSES)}")
        names = [f.name for f in fields(cls)]
        for key, v in values.items():
            if key not in names:
                raise ParameterError(f"limiter.{key}", v, f"not a setting of limiter {name!r}; "
                                     "its settings: " + (", ".join(names) or "none"))
        return cls(**values)
    cls = LIMITER_CLASSES.get(value) if isinstance(value, str) else None
    if cls is None:
        raise ParameterError("limiter", value, f"one of {', '.join(LIMITER_CLASSES)}, a "
                             "table with its name and settings, or a limiter object "
                             "(fem_crossdiff.models.muscl.options)")
    return cls()


def limiter_dict(limiter: Limiter) -> dict:
    """A limiter as a study file's table: its name and every tuning number."""
    return {"name": limiter.name, **{f.name: list(v) if isinstance(v := getattr(limiter, f.name),
                                                                    tuple) else v
                                     for f in fields(limiter)}}


@dataclass(frozen=True)
class MusclOptions:
    """Everything a ``"muscl"`` solver may set besides the model coefficients.

    Attributes:
        limiter: The slope limiter, a :class:`Limiter` (a name gives its defaults).
        jacobian: ``"exact"`` (the exact Jacobian, few Newton iterations), ``"frozen"`` (the
            frozen-limiter matrix; Newton converges linearly) or ``"mf"`` (matrix-free, a
            difference quotient, preconditioned by the frozen matrix).
        preconditioner: The matrix the linear solver factorises or builds its multigrid on
            with ``jacobian = "exact"``: ``"upwind"`` (the first-order scheme's Jacobian),
            ``"direct"`` (the edge-pattern part of ``J``), ``"frozen"`` or ``"exact"`` (``J``
            assembled, distance-2 pattern); ``"auto"``: ``"exact"`` with a direct solver,
            else ``"upwind"``.
    """

    JACOBIANS: ClassVar[tuple[str, ...]] = ("exact", "mf", "frozen")
    #: The edge-pattern part ``J_direct`` (the exact ``J`` applied as ``J_direct + E M``),
    #: the frozen-limiter or first-order matrix, or the assembled exact ``J``.
    PRECONDITIONERS: ClassVar[tuple[str, ...]] = ("direct", "frozen", "upwind", "exact")

    limiter: Limiter = field(default_factory=SmoothSensor)
    jacobian: str = "exact"
    preconditioner: str = "auto"

    @classmethod
    def from_dict(cls, values) -> MusclOptions:
        """The options from a study file's ``[solver.muscl]`` table.

        ``limiter`` is a name (its defaults) or a table with ``name`` and the limiter's settings.

        Raises:
            ParameterError: an unknown key or a bad value, keyed by the field.
        """
        names = [f.name for f in fields(cls)]
        for key, value in values.items():
            if key not in names:
                raise ParameterError(key, value, f"unknown option; allowed: {', '.join(names)}")
        return cls(**values)

    def to_dict(self) -> dict:
        """The options as a study file's table (:meth:`from_dict` reads it back)."""
        return {"limiter": limiter_dict(self.limiter), "jacobian": self.jacobian,
                "preconditioner": self.preconditioner}

    def __post_init__(self):
        object.__setattr__(self, "limiter", as_limiter(self.limiter))
        if self.jacobian not in self.JACOBIANS:
            raise ParameterError("jacobian", self.jacobian,
                                 f"one of {', '.join(self.JACOBIANS)}")
        if self.preconditioner not in ("auto", *self.PRECONDITIONERS):
            raise ParameterError("preconditioner", self.preconditioner,
                                 f"auto or one of {', '.join(self.PRECONDITIONERS)}")
