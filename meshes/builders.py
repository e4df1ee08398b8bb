"""gmsh geometry builders distributed with DOLFINx, a registry, and ``.msh`` file I/O.

Every builder validates its parameters on all ranks first (a
:class:`~fem_crossdiff.errors.ParameterError`, keyed by the parameter's name, everywhere and
before any gmsh or MPI call), runs gmsh on rank 0 only, and distributes the mesh with
``gmshio.model_to_mesh``; the mesh is therefore identical for any number of ranks. The result
is a :class:`Geometry`: the mesh, its cell and facet tags, the boundary tag names and the
exact domain and boundary measures (for checks and convergence studies). Meshes are ghosted
with ``shared_facet`` by default, like DOLFINx's own ``create_unit_square`` (interior-facet
integrals then work in parallel); ``ghost_mode="none"`` is available for 2D/3D.

Example:
    >>> geo = build("annulus", MPI.COMM_WORLD, inner_radius=0.3, h=0.05)
    >>> ds = geo.ds()
    >>> inner = ds(geo.boundary_names["inner"])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ufl

from fem_crossdiff.compat import gmshio, unsupported_ghost_mode
from fem_crossdiff.compat import mesh as dmesh
from fem_crossdiff.errors import ParameterError

from ._session import GmshError, run_on_root
from .specs import (
    AnnulusSpec,
    BallSpec,
    BoxSpec,
    DiskSpec,
    EllipseSpec,
    IntervalSpec,
    LShapeSpec,
    ObstaclesSpec,
    RectangleSpec,
)

__all__ = [
    "Geometry",
    "GmshError",
    "BUILDERS",
    "build",
    "interval",
    "rectangle",
    "disk",
    "ellipse",
    "annulus",
    "l_shape",
    "rectangle_with_obstacles",
    "box",
    "ball",
    "read_msh",
    "write_msh",
    "exterior_facets",
]


@dataclass(frozen=True, eq=False)
class Geometry:
    """A distributed mesh with its tags and, for built geometries, exact measures.

    Attributes:
        mesh: The distributed :class:`dolfinx.mesh.Mesh`.
        cell_tags: Cell tags (``domain`` = 1 for built geometries), or None.
        facet_tags: Boundary facet tags, or None if the mesh has none.
        boundary_names: Boundary tag name -> integer tag, e.g. ``{"inner": 1, "outer": 2}``.
        volume_exact: Exact length/area/volume of the domain, None for meshes read from files.
        boundary_exact: Exact measure of each tagged boundary piece (counting measure for the
            points of an interval); empty for meshes read from files.
        name: Builder name, or the file name for :func:`read_msh`.
    """

    mesh: Any
    cell_tags: Any
    facet_tags: Any
    boundary_names: dict[str, int]
    volume_exact: float | None
    boundary_exact: dict[str, float] = field(default_factory=dict)
    name: str = ""

    def tag(self, name: str) -> int:
        """Return the integer tag of a boundary piece.

        Args:
            name: A key of :attr:`boundary_names`.

        Returns:
            The facet tag value.

        Raises:
            KeyError: ``name`` is not a boundary of this geometry (the message lists them).
        """
        try:
            return self.boundary_names[name]
        except KeyError:
            raise KeyError(f"geometry {self.name!r} has no boundary {name!r}; "
                           f"it has {sorted(self.boundary_names)}") from None

    def dx(self) -> ufl.Measure:
        """Cell measure with the cell tags as subdomain data."""
        return ufl.Measure("dx", domain=self.mesh, subdomain_data=self.cell_tags)

    def ds(self) -> ufl.Measure:
        """Exterior facet measure with the facet tags as subdomain data."""
        return ufl.Measure("ds", domain=self.mesh, subdomain_data=self.facet_tags)


def _mesh_options(h: float) -> dict[str, float]:
    # Only the maximum size is imposed: OCC point sizes default to "infinite", so gmsh meshes
    # at size h everywhere, curved boundaries included.
    return {"Mesh.MeshSizeMax": h, "Mesh.MeshSizeMin": 0.0, "Mesh.MeshSizeFromCurvature": 0.0}


#: Accepted ``ghost_mode`` values (as for ``dolfinx.mesh.create_unit_square``).
GHOST_MODES = ("shared_facet", "none")


def _check_ghost_mode(ghost_mode: str, tdim: int | None) -> None:
    if ghost_mode not in GHOST_MODES:
        raise ParameterError("ghost_mode", ghost_mode,
                             f"ghost_mode must be one of {', '.join(GHOST_MODES)}")
    reason = unsupported_ghost_mode(ghost_mode, tdim)
    if reason is not None:
        raise ParameterError("ghost_mode", ghost_mode, reason)


def _partitioner(comm, ghost_mode: str):
    if comm.size == 1:
        return None
    return dmesh.create_cell_partitioner(getattr(dmesh.GhostMode, ghost_mode), 2)


def _to_mesh_data(comm, gdim: int, ghost_mode: str) -> Callable[[Any], Any]:
    partitioner = _partitioner(comm, ghost_mode)
    return lambda model: gmshio.model_to_mesh(model, comm, 0, gdim=gdim, partitioner=partitioner)


def _populate_with_order(spec) -> Callable[[Any], None]:
    def populate(g) -> None:
        spec.populate(g)
        if spec.order > 1:
            g.model.mesh.setOrder(spec.order)
    return populate


def _realise(name: str, spec, comm, ghost_mode: str) -> Geometry:
    _check_ghost_mode(ghost_mode, spec.gdim)
    options = {**_mesh_options(spec.h), **getattr(spec, "gmsh_options", {})}
    data = run_on_root(comm, name, _populate_with_order(spec),
                       _to_mesh_data(comm, spec.gdim, ghost_mode), options)
    return Geometry(mesh=data.mesh, cell_tags=data.cell_tags, facet_tags=data.facet_tags,
                    boundary_names=dict(spec.boundary_names), volume_exact=spec.volume(),
                    boundary_exact=spec.boundary_measures(), name=name)


def interval(comm, *, a: float = 0.0, b: float = 1.0, h: float = 0.05,
             order: int = 1, ghost_mode: str = "shared_facet") -> Geometry:
    """The interval ``(a, b)`` (gmsh 1D line, uniform cells); tags ``left``, ``right``.

    Args:
        comm: MPI communicator (collective).
        a: Left end.
        b: Right end, > a.
        h: Cell size, > 0; cells have size ``(b - a) / ceil((b - a) / h)``.
        order: Geometry order, 1 or 2.
        ghost_mode: Only ``"shared_facet"``: DOLFINx mis-detects exterior facets of 1D
            meshes ghosted with ``"none"`` (:func:`fem_crossdiff.compat.unsupported_ghost_mode`).

    Returns:
        The distributed :class:`Geometry` (gdim 1).
    """
    return _realise("interval", IntervalSpec(a, b, h, order), comm, ghost_mode)


def rectangle(comm, *, lower: Sequence[float] = (0.0, 0.0), upper: Sequence[float] = (1.0, 1.0),
              h: float = 0.1, order: int = 1, quadrilateral: bool = False,
              ghost_mode: str = "shared_facet") -> Geometry:
    """The rectangle ``lower < x < upper``; tags ``left``, ``right``, ``bottom``, ``top``.

    Args:
        comm: MPI communicator (collective).
        lower: Corner ``(x0, y0)``.
        upper: Corner ``(x1, y1)``, componentwise > lower.
        h: Mesh size, > 0.
        order: Geometry order, 1 or 2.
        quadrilateral: Structured quadrilaterals (transfinite, recombined) instead of triangles.
        ghost_mode: ``"shared_facet"`` (default, as DOLFINx's built-in meshes) or
            ``"none"``.

    Returns:
        The distributed :class:`Geometry`.
    """
    spec = RectangleSpec(lower, upper, h, order, quadrilateral)
    return _realise("rectangle", spec, comm, ghost_mode)


def disk(comm, *, center: Sequence[float] = (0.0, 0.0), radius: float = 1.0, h: float = 0.1,
         order: int = 1, ghost_mode: str = "shared_facet") -> Geometry:
    """The disk ``|x - center| < radius``; tag ``boundary``.

    Args:
        comm: MPI communicator (collective).
        center: Centre ``(cx, cy)``.
        radius: Radius, > 0.
        h: Mesh size, > 0.
        order: Geometry order, 1 or 2 (2 puts edge midpoints on the circle).
        ghost_mode: ``"shared_facet"`` (default, as DOLFINx's built-in meshes) or
            ``"none"``.

    Returns:
        The distributed :class:`Geometry`.
    """
    return _realise("disk", DiskSpec(center, radius, h, order), comm, ghost_mode)


def ellipse(comm, *, center: Sequence[float] = (0.0, 0.0), rx: float = 1.0, ry: float = 0.5,
            h: float = 0.1, order: int = 1, ghost_mode: str = "shared_facet") -> Geometry:
    """The ellipse with semi-axes ``rx`` (along x) and ``ry`` (along y); tag ``boundary``.

    Args:
        comm: MPI communicator (collective).
        center: Centre ``(cx, cy)``.
        rx: Semi-axis along x, > 0.
        ry: Semi-axis along y, > 0 (either may be the larger).
        h: Mesh size, > 0.
        order: Geometry order, 1 or 2.
        ghost_mode: ``"shared_facet"`` (default, as DOLFINx's built-in meshes) or
            ``"none"``.

    Returns:
        The distributed :class:`Geometry`.
    """
    return _realise("ellipse", EllipseSpec(center, rx, ry, h, order), comm, ghost_mode)


def annulus(comm, *, center: Sequence[float] = (0.0, 0.0), inner_radius: float = 0.5,
            outer_radius: float = 1.0, h: float = 0.1, order: int = 1,
            ghost_mode: str = "shared_facet") -> Geometry:
    """The annulus ``inner_radius < |x - center| < outer_radius``; tags ``inner``, ``outer``.

    Args:
        comm: MPI communicator (collective).
        center: Centre ``(cx, cy)``.
        inner_radius: Radius of the hole, > 0.
        outer_radius: Outer radius, > inner_radius.
        h: Mesh size, > 0.
        order: Geometry order, 1 or 2.
        ghost_mode: ``"shared_facet"`` (default, as DOLFINx's built-in meshes) or
            ``"none"``.

    Returns:
        The distributed :class:`Geometry`.
    """
    spec = AnnulusSpec(center, inner_radius, outer_radius, h, order)
    return _realise("annulus", spec, comm, ghost_mode)


def l_shape(comm, *, size: float = 1.0, cut: float = 0.5, h: float = 0.1,
            order: int = 1, ghost_mode: str = "shared_facet") -> Geometry:
    """The L-shape ``(0, size)^2`` minus ``[size - cut, size]^2``; tags ``outer``, ``reentrant``.

    Args:
        comm: MPI communicator (collective).
        size: Side of the bounding square, > 0.
        cut: Side of the removed top-right square, 0 < cut < size.
        h: Mesh size, > 0.
        order: Geometry order, 1 or 2.
        ghost_mode: ``"shared_facet"`` (default, as DOLFINx's built-in meshes) or
            ``"none"``.

    Returns:
        The distributed :class:`Geometry`; ``reentrant`` is the two edges meeting at the
        reentrant corner ``(size - cut, size - cut)``.
    """
    return _realise("l_shape", LShapeSpec(size, cut, h, order), comm, ghost_mode)


def rectangle_with_obstacles(
    comm, *, lower: Sequence[float] = (0.0, 0.0), upper: Sequence[float] = (2.0, 1.0),
    obstacles: Sequence[Sequence[float]] = ((0.5, 0.5, 0.2),), h: float = 0.1, order: int = 1,
    ghost_mode: str = "shared_facet",
) -> Geometry:
    """A rectangle with circular holes; tags ``left``/``right``/``bottom``/``top``, ``obstacles``.

    Args:
        comm: MPI communicator (collective).
        lower: Corner ``(x0, y0)``.
        upper: Corner ``(x1, y1)``, componentwise > lower.
        obstacles: Circles ``(cx, cy, r)``: each strictly inside the rectangle, pairwise
            disjoint (touching is rejected too).
        h: Mesh size, > 0.
        order: Geometry order, 1 or 2.
        ghost_mode: ``"shared_facet"`` (default, as DOLFINx's built-in meshes) or
            ``"none"``.

    Returns:
        The distributed :class:`Geometry`; all obstacle circles share the tag ``obstacles``.
    """
    spec = ObstaclesSpec(lower, upper, obstacles, h, order)
    return _realise("rectangle_with_obstacles", spec, comm, ghost_mode)


def box(comm, *, lower: Sequence[float] = (0.0, 0.0, 0.0),
        upper: Sequence[float] = (1.0, 1.0, 1.0), h: float = 0.2, order: int = 1,
        ghost_mode: str = "shared_facet") -> Geometry:
    """The 3D box ``lower < x < upper`` with its six faces tagged.

    Args:
        comm: MPI communicator (collective).
        lower: Corner ``(x0, y0, z0)``.
        upper: Corner ``(x1, y1, z1)``, componentwise > lower.
        h: Mesh size, > 0.
        order: Geometry order, 1 or 2.
        ghost_mode: ``"shared_facet"`` (default, as DOLFINx's built-in meshes) or
            ``"none"``.

    Returns:
        The distributed :class:`Geometry`; tags ``left``/``right`` (x), ``front``/``back`` (y),
        ``bottom``/``top`` (z).
    """
    return _realise("box", BoxSpec(lower, upper, h, order), comm, ghost_mode)


def ball(comm, *, center: Sequence[float] = (0.0, 0.0, 0.0), radius: float = 1.0,
         h: float = 0.2, order: int = 1, delaunay: bool = False,
         ghost_mode: str = "shared_facet") -> Geometry:
    """The 3D ball ``|x - center| < radius``; tag ``boundary``.

    Args:
        comm: MPI communicator (collective).
        center: Centre ``(cx, cy, cz)``.
        radius: Radius, > 0.
        h: Mesh size, > 0.
        order: Geometry order, 1 or 2.
        delaunay: Delaunay tetrahedra without gmsh's optimiser (the mesh a circumcentric
            dual needs: :func:`fem_crossdiff.discretisation.edges.circumcentric_weights`).
        ghost_mode: ``"shared_facet"`` (default, as DOLFINx's built-in meshes) or
            ``"none"``.

    Returns:
        The distributed :class:`Geometry`.
    """
    return _realise("ball", BallSpec(center, radius, h, order, delaunay), comm, ghost_mode)


#: Builder name -> builder function; every builder is ``f(comm, **params) -> Geometry``.
BUILDERS: dict[str, Callable[..., Geometry]] = {
    "interval": interval,
    "rectangle": rectangle,
    "disk": disk,
    "ellipse": ellipse,
    "annulus": annulus,
    "l_shape": l_shape,
    "rectangle_with_obstacles": rectangle_with_obstacles,
    "box": box,
    "ball": ball,
}


def _lookup(name: str, params: dict[str, Any]) -> Callable[..., Geometry]:
    if not isinstance(name, str) or name not in BUILDERS:
        raise ParameterError("builder", name,
                             f"builder must be one of {', '.join(sorted(BUILDERS))}")
    builder = BUILDERS[name]
    allowed = [p for p in inspect.signature(builder).parameters if p != "comm"]
    for key in params:
        if key not in allowed:
            raise ParameterError(key, params[key], f"unknown parameter of builder {name!r}; "
                                 f"allowed: {', '.join(allowed)}")
    return builder


def build(name: str, comm, **params) -> Geometry:
    """Build a registered geometry by name.

    Args:
        name: A key of :data:`BUILDERS`.
        comm: MPI communicator (collective).
        **params: Keyword parameters of that builder.

    Returns:
        The distributed :class:`Geometry`.

    Raises:
        ParameterError: unknown builder name (keyed ``builder``) or parameter (keyed by its
            name), or a bad parameter value (on every rank, before gmsh runs).
    """
    return _lookup(name, params)(comm, **params)


def write_msh(path: str | Path, name: str, comm, **params) -> Path:
    """Write a registered geometry's gmsh mesh to a ``.msh`` file (gmsh runs on rank 0).

    Args:
        path: Output file; its folder must exist (as seen from rank 0).
        name: A key of :data:`BUILDERS`.
        comm: MPI communicator (collective: every rank returns once the file is written).
        **params: Keyword parameters of that builder.

    Returns:
        The path written.

    Raises:
        ParameterError: as for :func:`build`.
        GmshError: on every rank, if gmsh failed on rank 0 (e.g. unwritable path).
    """
    _lookup(name, params)
    spec = _make_spec(name, params)
    path = Path(path)

    def populate(g) -> None:
        _populate_with_order(spec)(g)
        g.write(str(path))

    run_on_root(comm, name, populate, lambda model: None, _mesh_options(spec.h))
    return path


def validate(name: str, **params):
    """Check a builder name and its parameters without running gmsh (no communication).

    Returns:
        The validated parameter spec the builder would use (defaults filled in).

    Raises:
        ParameterError: unknown builder or parameter, or a bad value (keyed as for
            :func:`build`).
    """
    _lookup(name, params)
    spec = _make_spec(name, params)
    _check_ghost_mode(params.get("ghost_mode", GHOST_MODES[0]), spec.gdim)  # built: tdim = gdim
    return spec


def _make_spec(name: str, params: dict[str, Any]):
    """The validated spec a builder would use, from its defaults overridden by ``params``."""
    values = {k: params.get(k, p.default)
              for k, p in inspect.signature(BUILDERS[name]).parameters.items()
              if k not in ("comm", "ghost_mode")}
    return _SPECS[name](**values)


_SPECS = {
    "interval": IntervalSpec,
    "rectangle": RectangleSpec,
    "disk": DiskSpec,
    "ellipse": EllipseSpec,
    "annulus": AnnulusSpec,
    "l_shape": LShapeSpec,
    "rectangle_with_obstacles": ObstaclesSpec,
    "box": BoxSpec,
    "ball": BallSpec,
}


def read_msh(path: str | Path, comm, gdim: int | None = None,
             ghost_mode: str = "shared_facet") -> Geometry:
    """Read a gmsh ``.msh`` file on rank 0 and distribute it.

    The file must define physical groups (they become the cell and facet tags); facet physical
    groups with names appear in :attr:`Geometry.boundary_names` (unnamed ones as ``"tag_<n>"``).
    Like ``gmshio.read_from_msh``, but errors on rank 0 (missing or corrupt file) raise on
    every rank instead of leaving the others waiting, and a caller's gmsh session is respected.

    Args:
        path: The ``.msh`` file (visible from rank 0).
        comm: MPI communicator (collective).
        gdim: Geometric dimension of the coordinates kept (1, 2 or 3); None takes the model's
            topological dimension.
        ghost_mode: ``"shared_facet"`` (default) or ``"none"`` (not for 1D meshes).

    Returns:
        The distributed :class:`Geometry` (``volume_exact`` None, ``boundary_exact`` empty).

    Raises:
        FileNotFoundError: on every rank, naming the path, if rank 0 cannot see the file.
        ParameterError: ``gdim`` not in (1, 2, 3), or a bad ``ghost_mode``.
        GmshError: on every rank, if gmsh cannot read the file.
        RuntimeError: the file has no physical groups.
    """
    if gdim is not None and (isinstance(gdim, bool) or gdim not in (1, 2, 3)):
        raise ParameterError("gdim", gdim, "gdim must be 1, 2, 3 or None")
    _check_ghost_mode(ghost_mode, None)
    path = Path(path)
    exists = comm.bcast(path.is_file() if comm.rank == 0 else None, root=0)
    if not exists:
        raise FileNotFoundError(f"gmsh mesh file not found: {str(path)!r}")
    found: dict[str, Any] = {}

    def populate(g) -> None:
        g.merge(str(path))
        tdim = g.model.getDimension()
        # Read the facet groups from gmsh itself: model_to_mesh keys its physical_groups by
        # name, so several unnamed groups would collide there.
        groups = [(g.model.getPhysicalName(dim, tag), tag)
                  for dim, tag in g.model.getPhysicalGroups(tdim - 1)] if tdim > 0 else []
        found.update(tdim=tdim, groups=groups)

    def consume(model):
        tdim, groups = comm.bcast((found.get("tdim"), found.get("groups")), root=0)
        _check_ghost_mode(ghost_mode, tdim)
        found.update(groups=groups)
        return gmshio.model_to_mesh(model, comm, 0, gdim=gdim if gdim is not None else tdim,
                                    partitioner=_partitioner(comm, ghost_mode))

    data = run_on_root(comm, path.name, populate, consume)
    names = {(name or f"tag_{tag}"): int(tag) for name, tag in found["groups"]}
    return Geometry(mesh=data.mesh, cell_tags=data.cell_tags, facet_tags=data.facet_tags,
                    boundary_names=names, volume_exact=None, boundary_exact={}, name=path.name)


def exterior_facets(geo: Geometry):
    """Local indices of the owned exterior facets of ``geo.mesh`` (for boundary checks).

    Args:
        geo: A geometry.

    Returns:
        Sorted int32 array of owned exterior facet indices on this rank.
    """
    msh = geo.mesh
    tdim = msh.topology.dim
    msh.topology.create_connectivity(tdim - 1, tdim)
    facets = dmesh.exterior_facet_indices(msh.topology)
    return facets[facets < msh.topology.index_map(tdim - 1).size_local]

