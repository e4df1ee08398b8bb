"""A memory estimate of a study before any mesh or particle exists, and the guard that uses it.

:func:`estimate` counts, from the study file alone (no gmsh, no DOLFINx), the cells and
vertices a builder's mesh will have (domain measure over the cell measure of size ``h``), the
unknowns (vertices x species, more for P2), the bytes of the Newton system and its solver per
unknown, gmsh's own meshing memory, the nonlocal mollification matrix (the vertices within
``eps`` of each vertex) and the particles (``N`` x species x dimension, with the work arrays
of a step). :func:`check` refuses a study whose estimate exceeds ``[resources]
memory_limit_gb`` (default: the physical memory of the machines of the job) with a
:class:`~fem_crossdiff.errors.ParameterError` naming the key that drives the estimate, in well
under a second. The constants are rough (a factor of 2 either way); the guard is against
``h = 1e-5`` or ``N = 1e9``, not a budget.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from fem_crossdiff.errors import ParameterError

__all__ = ["Estimate", "estimate", "check", "machine_memory"]

#: Cells per unit measure of a mesh of size h, times h^d (equilateral simplices).
_CELLS_PER_HD = {1: 1.0, 2: 4.0 / math.sqrt(3.0), 3: 6.0 * math.sqrt(2.0)}
#: Vertices per cell of a large simplicial mesh.
_VERTICES_PER_CELL = {1: 1.0, 2: 0.5, 3: 1.0 / 5.5}
#: Bytes per unknown of a step: the Jacobian and its preconditioner (GAMG with ILU(1)
#: smoothers, or a MUMPS factor), GMRES(100) vectors, forms, mesh and function data (2D:
#: measured 2.6 kB, peak RSS of a two-species disk run at h = 0.01 against h = 0.02).
_BYTES_PER_UNKNOWN = {1: 3000.0, 2: 3000.0, 3: 8000.0}
#: Bytes gmsh needs per cell while meshing (rank 0).
_GMSH_BYTES_PER_CELL = {1: 200.0, 2: 400.0, 3: 700.0}
#: Bytes of the mollification matrix per stored entry (value, column, assembly work).
_BYTES_PER_ENTRY = 40.0
#: Bytes per sub-cell of the mollifier's composite quadrature (points, weights, values).
_QUADRATURE_BYTES = 200.0
#: Bytes per particle coordinate (position, noise, drift, sorting and output buffers).
_BYTES_PER_COORD = 80.0
#: What the interpreter, DOLFINx and PETSc take per rank before any mesh.
_BASE_BYTES = 200e6


@dataclass(frozen=True)
class Estimate:
    """The estimate of one study.

    Attributes:
        total: Bytes, all ranks together.
        parts: Bytes per part (``"mesh"``, ``"solver"``, ``"mollifier"``, ``"particles"``,
            ``"base"``).
        cells: Estimated cells of the mesh.
        unknowns: Estimated unknowns of the Newton system.
        driver: The TOML key whose value drives the largest part (for messages).
    """

    total: float
    parts: dict = field(default_factory=dict)
    cells: float = 0.0
    unknowns: float = 0.0
    driver: str = "geometry.h"


def machine_memory() -> float:
    """Physical memory of this machine in bytes (``inf`` where it cannot be found)."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE")) * float(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return math.inf


def _mesh_size(cfg) -> tuple[int, float, float, str]:
    """(gdim, cells, vertices, driving key) of the study's mesh, before it is made."""
    g = cfg.geometry
    if g.msh is not None:
        # a mesh file: about 60 bytes of ASCII (or 30 of binary) per vertex and cell line
        size = os.path.getsize(g.msh) if os.path.isfile(g.msh) else 0
        cells = size / 40.0
        gdim = g.gdim or 3
        return gdim, cells, cells * _VERTICES_PER_CELL[gdim] + 1, "geometry.msh"
    from fem_crossdiff import meshes

    spec = meshes.validate(g.builder, **dict(g.params))
    gdim, h = int(spec.gdim), float(spec.h)
    cells = spec.volume() * _CELLS_PER_HD[gdim] / h**gdim
    return gdim, cells, cells * _VERTICES_PER_CELL[gdim] + 1, "geometry.h"


def estimate(cfg) -> Estimate:
    """The memory estimate of a validated study (:class:`~fem_crossdiff.config.StudyConfig`).

    Depends only on the study (no communication, no mesh).
    """
    gdim, cells, vertices, mesh_key = _mesh_size(cfg)
    n = cfg.model.n
    unknowns = vertices * n * (cfg.solver.degree ** gdim)
    parts = {"base": _BASE_BYTES, "mesh": cells * _GMSH_BYTES_PER_CELL[gdim],
             "solver": unknowns * _BYTES_PER_UNKNOWN[gdim]}
    keys = {"base": mesh_key, "mesh": mesh_key, "solver": mesh_key}
    volume = cells / _CELLS_PER_HD[gdim]  # in units of h^d: vertices per ball below
    if cfg.model.type == "nonlocal":
        parts["mollifier"] = vertices * _ball_vertices(cfg, gdim, vertices, volume,
                                                       cfg.model.eps) * _BYTES_PER_ENTRY
        keys["mollifier"] = "model.eps"
        # the composite quadrature: subdivisions^d sub-cells per cell, a few points each
        parts["quadrature"] = cells * float(cfg.model.subdivisions) ** gdim * _QUADRATURE_BYTES
        keys["quadrature"] = "model.subdivisions"
    if cfg.particles is not None:
        p = cfg.particles
        parts["particles"] = float(p.N) * n * gdim * _BYTES_PER_COORD
        keys["particles"] = "particles.N"
        if p.eps is not None:  # the particles' drift uses the FE mollification operator
            parts["mollifier"] = parts.get("mollifier", 0.0) + vertices * _ball_vertices(
                cfg, gdim, vertices, volume, p.eps) * _BYTES_PER_ENTRY
            keys.setdefault("mollifier", "particles.eps")
    biggest = max((k for k in parts if k != "base"), key=parts.get)
    return Estimate(total=float(sum(parts.values())), parts=parts, cells=cells,
                    unknowns=unknowns, driver=keys[biggest])


def _ball_vertices(cfg, gdim: int, vertices: float, volume_hd: float, eps: float) -> float:
    """Vertices within ``eps`` of a vertex (at most all of them)."""
    g = cfg.geometry
    if g.msh is not None:
        return min(vertices, 200.0)  # the file's h is unknown before reading it
    h = float(dict(g.params)["h"])
    ball = {1: 2.0 * eps, 2: math.pi * eps**2, 3: 4.0 / 3.0 * math.pi * eps**3}[gdim]
    density = vertices / (volume_hd * h**gdim)
    return min(vertices, max(1.0, ball * density))


def check(cfg, limit_bytes: float | None = None, *, machines: int = 1) -> Estimate:
    """Refuse a study whose estimate exceeds its memory limit.

    Args:
        cfg: The study.
        limit_bytes: The limit (default: ``[resources] memory_limit_gb``, else
            ``machines`` x :func:`machine_memory`).
        machines: Distinct machines the job runs on (for the default limit).

    Returns:
        The :class:`Estimate`.

    Raises:
        ParameterError: keyed by the TOML key that drives the estimate, with the estimate,
            the limit and how to raise it.
    """
    est = estimate(cfg)
    res = getattr(cfg, "resources", None)
    given = getattr(res, "memory_limit_gb", None)
    if limit_bytes is None:
        limit_bytes = given * 1e9 if given is not None else machines * machine_memory()
    if est.total > limit_bytes:
        value = {"geometry.h": dict(cfg.geometry.params).get("h"),
                 "geometry.msh": cfg.geometry.msh,
                 "model.eps": cfg.model.eps,
                 "model.subdivisions": cfg.model.subdivisions,
                 "particles.N": getattr(cfg.particles, "N", None),
                 "particles.eps": getattr(cfg.particles, "eps", None)}[est.driver]
        what = ", ".join(f"{k} {v / 1e9:.3g} GB" for k, v in est.parts.items() if v >= 1e8)
        source = ("resources.memory_limit_gb" if given is not None else "the memory of the "
                  "machines of this job; [resources] memory_limit_gb sets another limit")
        raise ParameterError(est.driver, value,
                             f"the study needs about {est.total / 1e9:.3g} GB ({what}; "
                             f"{est.cells:.3g} cells, {est.unknowns:.3g} unknowns), more than "
                             f"the limit of {limit_bytes / 1e9:.3g} GB ({source})")
    return est
