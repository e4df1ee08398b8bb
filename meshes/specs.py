"""Validated geometry parameters: one frozen dataclass per builder, checked before gmsh runs.

Each spec knows its geometric dimension, its boundary tags (name -> gmsh physical tag), the
exact domain measure and the exact measure of every tagged boundary piece, and how to build its
gmsh model (:meth:`populate`, called on rank 0 only). Validation happens in ``__post_init__``,
i.e. identically on every rank and before any collective or gmsh call, so a bad parameter is a
:class:`~fem_crossdiff.errors.ParameterError` (a ValueError keyed by the builder parameter's
name: ``"h"``, ``"obstacles[1]"``) everywhere and never a hang.

All geometry is built with the OpenCASCADE kernel so that ``order=2`` places the mid-edge
nodes on the true curved boundary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.special import ellipe

from fem_crossdiff.errors import ParameterError
from fem_crossdiff.params import finite_number

__all__ = [
    "IntervalSpec",
    "RectangleSpec",
    "DiskSpec",
    "EllipseSpec",
    "AnnulusSpec",
    "LShapeSpec",
    "ObstaclesSpec",
    "BoxSpec",
    "BallSpec",
]

#: Physical tag of the domain (cells) in every built mesh.
DOMAIN_TAG = 1
_ORDERS = (1, 2)


def _positive(name: str, value) -> float:
    v = finite_number(name, value)
    if not v > 0.0:
        raise ParameterError(name, value, f"{name} must be > 0")
    return v


def _point(name: str, value, dim: int) -> tuple[float, ...]:
    try:
        items = tuple(value)
    except TypeError:
        raise ParameterError(name, value, f"{name} must be a sequence of {dim} numbers") from None
    if len(items) != dim:
        raise ParameterError(name, value, f"{name} must have {dim} coordinates")
    return tuple(finite_number(f"{name}[{i}]", c) for i, c in enumerate(items))


def _order(value) -> int:
    if isinstance(value, bool) or value not in _ORDERS:
        raise ParameterError("order", value, f"order must be one of {', '.join(map(str, _ORDERS))}")
    return int(value)


def _set(obj, **values) -> None:
    # Frozen dataclasses: normalised values (floats, tuples) are stored once, at validation.
    for key, value in values.items():
        object.__setattr__(obj, key, value)


def _check_mesh_size(obj, extent: float) -> None:
    h = _positive("h", obj.h)
    if h > extent:
        raise ParameterError("h", obj.h, f"h must be <= the domain size {extent:g}")
    _set(obj, h=h, order=_order(obj.order))


def _finish(g, dim: int, domain: list[int], boundary: dict[int, list[int]],
            names: dict[str, int]) -> None:
    """Synchronize, create the domain and boundary physical groups, and mesh."""
    g.model.occ.synchronize()
    g.model.addPhysicalGroup(dim, domain, DOMAIN_TAG, name="domain")
    for name, tag in names.items():
        g.model.addPhysicalGroup(dim - 1, boundary[tag], tag, name=name)
    g.model.mesh.generate(dim)


def _classify_by_centre(g, dim: int, entities: Sequence[int], planes: dict[int, tuple[int, float]],
                        tol: float) -> dict[int, list[int]]:
    """Group boundary entities lying on axis planes ``{tag: (axis, value)}``; the rest get 0."""
    groups: dict[int, list[int]] = {tag: [] for tag in planes}
    groups[0] = []
    for ent in entities:
        com = g.model.occ.getCenterOfMass(dim, ent)
        bb = g.model.getBoundingBox(dim, ent)
        lo, hi = bb[:3], bb[3:]
        for tag, (axis, value) in planes.items():
            # Flat on the plane: centre of mass and both bounding-box ends on it.
            if (abs(com[axis] - value) < tol and abs(lo[axis] - value) < 1e3 * tol
                    and abs(hi[axis] - value) < 1e3 * tol):
                groups[tag].append(ent)
                break
        else:
            groups[0].append(ent)
    return groups


def _boundary_of(g, dim: int, tags: list[int]) -> list[int]:
    return [abs(t) for _, t in g.model.getBoundary([(dim, t) for t in tags], oriented=False)]


def _ellipse_perimeter(a: float, b: float) -> float:
    a, b = max(a, b), min(a, b)
    return 4.0 * a * float(ellipe(1.0 - (b / a) ** 2))


def _transfinite_box_edges(g, curves: Sequence[int], h: float) -> None:
    # Node counts from edge lengths: opposite edges have equal length, hence equal counts,
    # which is what a transfinite (structured) surface requires.
    for c in curves:
        n = max(1, math.ceil(g.model.occ.getMass(1, c) / h - 1e-9))
        g.model.mesh.setTransfiniteCurve(c, n + 1)


@dataclass(frozen=True)
class IntervalSpec:
    """The interval ``(a, b)``; boundary points ``left`` (x = a) and ``right`` (x = b).

    Attributes:
        a: Left end.
        b: Right end, > a.
        h: Cell size (uniform cells of size <= h).
        order: Geometry order (1 or 2).
    """

    a: float
    b: float
    h: float
    order: int

    gdim = 1
    boundary_names = {"left": 1, "right": 2}

    def __post_init__(self):
        a, b = finite_number("a", self.a), finite_number("b", self.b)
        if not b > a:
            raise ParameterError("b", self.b, f"b must be > a = {self.a!r}")
        _set(self, a=a, b=b)
        _check_mesh_size(self, b - a)

    def volume(self) -> float:
        """Length of the interval."""
        return self.b - self.a

    def boundary_measures(self) -> dict[str, float]:
        """Counting measure of each boundary point (``ds`` on a vertex integrates to 1)."""
        return {"left": 1.0, "right": 1.0}

    def populate(self, g) -> None:
        """Build the gmsh model (rank 0 only)."""
        occ = g.model.occ
        p0, p1 = occ.addPoint(self.a, 0, 0), occ.addPoint(self.b, 0, 0)
        line = occ.addLine(p0, p1)
        occ.synchronize()
        n = max(1, math.ceil((self.b - self.a) / self.h - 1e-9))
        g.model.mesh.setTransfiniteCurve(line, n + 1)
        _finish(g, 1, [line], {1: [p0], 2: [p1]}, self.boundary_names)


@dataclass(frozen=True)
class RectangleSpec:
    """The rectangle ``(x0, x1) x (y0, y1)``; tags ``left``, ``right``, ``bottom``, ``top``.

    Attributes:
        lower: Lower-left corner ``(x0, y0)``.
        upper: Upper-right corner ``(x1, y1)``, componentwise > lower.
        h: Mesh size.
        order: Geometry order (1 or 2).
        quadrilateral: Structured quadrilateral cells (transfinite + recombine) instead of
            unstructured triangles.
    """

    lower: tuple[float, float]
    upper: tuple[float, float]
    h: float
    order: int
    quadrilateral: bool

    gdim = 2
    boundary_names = {"left": 1, "right": 2, "bottom": 3, "top": 4}

    def __post_init__(self):
        lo, hi = _point("lower", self.lower, 2), _point("upper", self.upper, 2)
        if not (hi[0] > lo[0] and hi[1] > lo[1]):
            raise ParameterError("upper", self.upper, f"upper must be > lower = "
                                 f"{self.lower!r} componentwise")
        if not isinstance(self.quadrilateral, bool):
            raise ParameterError("quadrilateral", self.quadrilateral,
                                 "quadrilateral must be a bool")
        _set(self, lower=lo, upper=hi)
        _check_mesh_size(self, max(hi[0] - lo[0], hi[1] - lo[1]))

    def volume(self) -> float:
        """Area of the rectangle."""
        return (self.upper[0] - self.lower[0]) * (self.upper[1] - self.lower[1])

    def boundary_measures(self) -> dict[str, float]:
        """Length of each side."""
        w, hgt = self.upper[0] - self.lower[0], self.upper[1] - self.lower[1]
        return {"left": hgt, "right": hgt, "bottom": w, "top": w}

    def populate(self, g) -> None:
        """Build the gmsh model (rank 0 only)."""
        (x0, y0), (x1, y1) = self.lower, self.upper
        s = g.model.occ.addRectangle(x0, y0, 0, x1 - x0, y1 - y0)
        g.model.occ.synchronize()
        curves = _boundary_of(g, 2, [s])
        tol = 1e-9 * max(x1 - x0, y1 - y0)
        groups = _classify_by_centre(g, 1, curves, {1: (0, x0), 2: (0, x1), 3: (1, y0),
                                                    4: (1, y1)}, tol)
        if self.quadrilateral:
            _transfinite_box_edges(g, curves, self.h)
            g.model.mesh.setTransfiniteSurface(s)
            g.model.mesh.setRecombine(2, s)
        _finish(g, 2, [s], groups, self.boundary_names)


@dataclass(frozen=True)
class EllipseSpec:
    """The ellipse with semi-axes ``rx`` (along x) and ``ry`` (along y); tag ``boundary``.

    Attributes:
        center: Centre ``(cx, cy)``.
        rx: Semi-axis along x, > 0.
        ry: Semi-axis along y, > 0.
        h: Mesh size.
        order: Geometry order (1 or 2).
    """

    center: tuple[float, float]
    rx: float
    ry: float
    h: float
    order: int

    gdim = 2
    boundary_names = {"boundary": 1}

    def __post_init__(self):
        _set(self, center=_point("center", self.center, 2), rx=_positive("rx", self.rx),
             ry=_positive("ry", self.ry))
        _check_mesh_size(self, 2 * max(self.rx, self.ry))

    def volume(self) -> float:
        """Area ``pi rx ry``."""
        return math.pi * self.rx * self.ry

    def boundary_measures(self) -> dict[str, float]:
        """Perimeter, via the complete elliptic integral of the second kind."""
        return {"boundary": _ellipse_perimeter(self.rx, self.ry)}

    def populate(self, g) -> None:
        """Build the gmsh model (rank 0 only)."""
        cx, cy = self.center
        if self.rx >= self.ry:
            s = g.model.occ.addDisk(cx, cy, 0, self.rx, self.ry)
        else:  # OCC wants the major radius first: rotate the disk's x-axis onto y.
            s = g.model.occ.addDisk(cx, cy, 0, self.ry, self.rx, zAxis=[0, 0, 1], xAxis=[0, 1, 0])
        g.model.occ.synchronize()
        _finish(g, 2, [s], {1: _boundary_of(g, 2, [s])}, self.boundary_names)


@dataclass(frozen=True)
class DiskSpec:
    """The disk of radius ``radius``; tag ``boundary``.

    Attributes:
        center: Centre ``(cx, cy)``.
        radius: Radius, > 0.
        h: Mesh size.
        order: Geometry order (1 or 2).
    """

    center: tuple[float, float]
    radius: float
    h: float
    order: int

    gdim = 2
    boundary_names = {"boundary": 1}

    def __post_init__(self):
        _set(self, center=_point("center", self.center, 2), radius=_positive("radius", self.radius))
        _check_mesh_size(self, 2 * self.radius)

    def volume(self) -> float:
        """Area ``pi r^2``."""
        return math.pi * self.radius**2

    def boundary_measures(self) -> dict[str, float]:
        """Circumference ``2 pi r``."""
        return {"boundary": 2 * math.pi * self.radius}

    def populate(self, g) -> None:
        """Build the gmsh model (rank 0 only)."""
        EllipseSpec(self.center, self.radius, self.radius, self.h, self.order).populate(g)


@dataclass(frozen=True)
class AnnulusSpec:
    """The annulus ``inner_radius < |x - center| < outer_radius``; tags ``inner``, ``outer``.

    Attributes:
        center: Centre ``(cx, cy)``.
        inner_radius: Radius of the hole, > 0.
        outer_radius: Outer radius, > inner_radius.
        h: Mesh size.
        order: Geometry order (1 or 2).
    """

    center: tuple[float, float]
    inner_radius: float
    outer_radius: float
    h: float
    order: int

    gdim = 2
    boundary_names = {"inner": 1, "outer": 2}

    def __post_init__(self):
        r, R = _positive("inner_radius", self.inner_radius), _positive("outer_radius",
                                                                        self.outer_radius)
        if not r < R:
            raise ParameterError("inner_radius", self.inner_radius,
                                 f"inner_radius must be < outer_radius = {self.outer_radius!r}")
        _set(self, center=_point("center", self.center, 2), inner_radius=r, outer_radius=R)
        _check_mesh_size(self, 2 * R)

    def volume(self) -> float:
        """Area ``pi (R^2 - r^2)``."""
        return math.pi * (self.outer_radius**2 - self.inner_radius**2)

    def boundary_measures(self) -> dict[str, float]:
        """Circumferences of the two circles."""
        return {"inner": 2 * math.pi * self.inner_radius,
                "outer": 2 * math.pi * self.outer_radius}

    def populate(self, g) -> None:
        """Build the gmsh model (rank 0 only)."""
        occ = g.model.occ
        cx, cy = self.center
        outer = occ.addDisk(cx, cy, 0, self.outer_radius, self.outer_radius)
        inner = occ.addDisk(cx, cy, 0, self.inner_radius, self.inner_radius)
        out, _ = occ.cut([(2, outer)], [(2, inner)])
        occ.synchronize()
        surfaces = [t for _, t in out]
        # Both circles share the centre of mass: tell them apart by their length.
        split = math.pi * (self.inner_radius + self.outer_radius)
        groups: dict[int, list[int]] = {1: [], 2: []}
        for c in _boundary_of(g, 2, surfaces):
            groups[1 if occ.getMass(1, c) < split else 2].append(c)
        _finish(g, 2, surfaces, groups, self.boundary_names)


@dataclass(frozen=True)
class LShapeSpec:
    """The L-shape ``(0, size)^2`` minus the corner square ``[size - cut, size]^2``.

    The reentrant corner sits at ``(size - cut, size - cut)``. Tags: ``reentrant`` (the two
    edges of length ``cut`` meeting at the reentrant corner) and ``outer`` (the other four).

    Attributes:
        size: Side of the bounding square, > 0.
        cut: Side of the removed square, 0 < cut < size.
        h: Mesh size.
        order: Geometry order (1 or 2).
    """

    size: float
    cut: float
    h: float
    order: int

    gdim = 2
    boundary_names = {"outer": 1, "reentrant": 2}

    def __post_init__(self):
        size, cut = _positive("size", self.size), _positive("cut", self.cut)
        if not cut < size:
            raise ParameterError("cut", self.cut, f"cut must be < size = {self.size!r}")
        _set(self, size=size, cut=cut)
        _check_mesh_size(self, size)

    def volume(self) -> float:
        """Area ``size^2 - cut^2``."""
        return self.size**2 - self.cut**2

    def boundary_measures(self) -> dict[str, float]:
        """Lengths of the outer and reentrant parts of the boundary."""
        return {"outer": 4 * self.size - 2 * self.cut, "reentrant": 2 * self.cut}

    def populate(self, g) -> None:
        """Build the gmsh model (rank 0 only)."""
        occ = g.model.occ
        s, c = self.size, self.size - self.cut
        corners = [(0, 0), (s, 0), (s, c), (c, c), (c, s), (0, s)]
        pts = [occ.addPoint(x, y, 0) for x, y in corners]
        lines = [occ.addLine(pts[i], pts[(i + 1) % 6]) for i in range(6)]
        surface = occ.addPlaneSurface([occ.addCurveLoop(lines)])
        groups = {1: [lines[0], lines[1], lines[4], lines[5]], 2: [lines[2], lines[3]]}
        _finish(g, 2, [surface], groups, self.boundary_names)


@dataclass(frozen=True)
class ObstaclesSpec:
    """A rectangle with circular holes; tags ``left``/``right``/``bottom``/``top``, ``obstacles``.

    Attributes:
        lower: Lower-left corner ``(x0, y0)``.
        upper: Upper-right corner ``(x1, y1)``.
        obstacles: Circles ``((cx, cy, r), ...)``, each strictly inside the rectangle and
            disjoint from the others (closed disks must not touch).
        h: Mesh size.
        order: Geometry order (1 or 2).
    """

    lower: tuple[float, float]
    upper: tuple[float, float]
    obstacles: tuple[tuple[float, float, float], ...]
    h: float
    order: int

    gdim = 2
    boundary_names = {"left": 1, "right": 2, "bottom": 3, "top": 4, "obstacles": 5}

    def __post_init__(self):
        lo, hi = _point("lower", self.lower, 2), _point("upper", self.upper, 2)
        if not (hi[0] > lo[0] and hi[1] > lo[1]):
            raise ParameterError("upper", self.upper, f"upper must be > lower = "
                                 f"{self.lower!r} componentwise")
        try:
            raw = tuple(self.obstacles)
        except TypeError:
            raise ParameterError("obstacles", self.obstacles,
                                 "obstacles must be a sequence of (cx, cy, r)") from None
        if not raw:
            raise ParameterError("obstacles", self.obstacles, "obstacles must hold at least "
                                 "one (cx, cy, r); use rectangle for none")
        circles = []
        for i, ob in enumerate(raw):
            key = f"obstacles[{i}]"
            cx, cy, r = _point(key, ob, 3)
            if not r > 0.0:
                raise ParameterError(key, ob, f"{key} radius must be > 0")
            gap = min(cx - lo[0], hi[0] - cx, cy - lo[1], hi[1] - cy) - r
            if not gap > 0.0:
                raise ParameterError(key, ob, f"{key} overlaps or touches the outer boundary of "
                                     f"({lo[0]:g}, {hi[0]:g}) x ({lo[1]:g}, {hi[1]:g})")
            for j, (dx, dy, dr) in enumerate(circles):
                if not math.hypot(cx - dx, cy - dy) > r + dr:
                    raise ParameterError(key, ob, f"{key} overlaps or touches obstacles[{j}] = "
                                         f"{raw[j]!r}")
            circles.append((cx, cy, r))
        _set(self, lower=lo, upper=hi, obstacles=tuple(circles))
        _check_mesh_size(self, max(hi[0] - lo[0], hi[1] - lo[1]))

    def volume(self) -> float:
        """Rectangle area minus the obstacles' areas."""
        box = (self.upper[0] - self.lower[0]) * (self.upper[1] - self.lower[1])
        return box - sum(math.pi * r**2 for _, _, r in self.obstacles)

    def boundary_measures(self) -> dict[str, float]:
        """Wall lengths and the total circumference of the obstacles."""
        w, hgt = self.upper[0] - self.lower[0], self.upper[1] - self.lower[1]
        return {"left": hgt, "right": hgt, "bottom": w, "top": w,
                "obstacles": sum(2 * math.pi * r for _, _, r in self.obstacles)}

    def populate(self, g) -> None:
        """Build the gmsh model (rank 0 only)."""
        occ = g.model.occ
        (x0, y0), (x1, y1) = self.lower, self.upper
        box = occ.addRectangle(x0, y0, 0, x1 - x0, y1 - y0)
        holes = [(2, occ.addDisk(cx, cy, 0, r, r)) for cx, cy, r in self.obstacles]
        out, _ = occ.cut([(2, box)], holes)
        occ.synchronize()
        surfaces = [t for _, t in out]
        tol = 1e-9 * max(x1 - x0, y1 - y0)
        groups = _classify_by_centre(g, 1, _boundary_of(g, 2, surfaces),
                                     {1: (0, x0), 2: (0, x1), 3: (1, y0), 4: (1, y1)}, tol)
        groups[5] = groups.pop(0)
        _finish(g, 2, surfaces, groups, self.boundary_names)


@dataclass(frozen=True)
class BoxSpec:
    """The box ``lower < x < upper`` in 3D; its six faces are tagged.

    Tags: ``left``/``right`` (x = x0 / x1), ``front``/``back`` (y = y0 / y1),
    ``bottom``/``top`` (z = z0 / z1).

    Attributes:
        lower: Corner ``(x0, y0, z0)``.
        upper: Opposite corner ``(x1, y1, z1)``, componentwise > lower.
        h: Mesh size.
        order: Geometry order (1 or 2).
    """

    lower: tuple[float, float, float]
    upper: tuple[float, float, float]
    h: float
    order: int

    gdim = 3
    boundary_names = {"left": 1, "right": 2, "front": 3, "back": 4, "bottom": 5, "top": 6}

    def __post_init__(self):
        lo, hi = _point("lower", self.lower, 3), _point("upper", self.upper, 3)
        if not all(b > a for a, b in zip(lo, hi, strict=True)):
            raise ParameterError("upper", self.upper, f"upper must be > lower = "
                                 f"{self.lower!r} componentwise")
        _set(self, lower=lo, upper=hi)
        _check_mesh_size(self, max(b - a for a, b in zip(lo, hi, strict=True)))

    def volume(self) -> float:
        """Volume of the box."""
        return math.prod(b - a for a, b in zip(self.lower, self.upper, strict=True))

    def boundary_measures(self) -> dict[str, float]:
        """Area of each face."""
        dx, dy, dz = (b - a for a, b in zip(self.lower, self.upper, strict=True))
        return {"left": dy * dz, "right": dy * dz, "front": dx * dz, "back": dx * dz,
                "bottom": dx * dy, "top": dx * dy}

    def populate(self, g) -> None:
        """Build the gmsh model (rank 0 only)."""
        lo, hi = self.lower, self.upper
        v = g.model.occ.addBox(*lo, *(b - a for a, b in zip(lo, hi, strict=True)))
        g.model.occ.synchronize()
        planes = {1: (0, lo[0]), 2: (0, hi[0]), 3: (1, lo[1]), 4: (1, hi[1]), 5: (2, lo[2]),
                  6: (2, hi[2])}
        tol = 1e-9 * max(b - a for a, b in zip(lo, hi, strict=True))
        groups = _classify_by_centre(g, 2, _boundary_of(g, 3, [v]), planes, tol)
        _finish(g, 3, [v], groups, self.boundary_names)


@dataclass(frozen=True)
class BallSpec:
    """The ball of radius ``radius`` in 3D; tag ``boundary``.

    Attributes:
        center: Centre ``(cx, cy, cz)``.
        radius: Radius, > 0.
        h: Mesh size.
        order: Geometry order (1 or 2).
        delaunay: Keep gmsh's Delaunay tetrahedra (``Mesh.Algorithm3D = 1``) and skip its
            optimiser (``Mesh.Optimize = 0``), which moves the mesh away from Delaunay.
    """

    center: tuple[float, float, float]
    radius: float
    h: float
    order: int
    delaunay: bool = False

    gdim = 3
    boundary_names = {"boundary": 1}

    def __post_init__(self):
        _set(self, center=_point("center", self.center, 3), radius=_positive("radius", self.radius))
        _check_mesh_size(self, 2 * self.radius)
        if not isinstance(self.delaunay, bool):
            raise ParameterError("delaunay", self.delaunay, "delaunay must be a bool")

    @property
    def gmsh_options(self) -> dict[str, float]:
        """The gmsh options on top of the size options (empty: gmsh's defaults)."""
        return {"Mesh.Algorithm3D": 1, "Mesh.Optimize": 0} if self.delaunay else {}

    def volume(self) -> float:
        """Volume ``4/3 pi r^3``."""
        return 4.0 / 3.0 * math.pi * self.radius**3

    def boundary_measures(self) -> dict[str, float]:
        """Surface area ``4 pi r^2``."""
        return {"boundary": 4.0 * math.pi * self.radius**2}

    def populate(self, g) -> None:
        """Build the gmsh model (rank 0 only)."""
        v = g.model.occ.addSphere(*self.center, self.radius)
        g.model.occ.synchronize()
        _finish(g, 3, [v], {1: _boundary_of(g, 3, [v])}, self.boundary_names)
