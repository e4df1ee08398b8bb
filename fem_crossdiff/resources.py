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

The counts of a run are bounded the same way: the animation's frames (``output.animation_frames``:
the frame times, the sampled values and, for a GIF, every frame's pixels held until the end)
and the diagnostics rows kept in memory (one per step; the steps are estimated from
``time.T`` and ``time.dt``, for an adaptive run from the fastest growth of the step) count
against the memory limit. :func:`disk_estimate` counts what the run writes (field outputs
every ``output.every`` steps, checkpoints every ``output.checkpoint_every`` steps, all kept,
particle positions every ``particles.output_every`` steps, the CSV rows, the animation) and
:func:`check` refuses a study whose files exceed the free space of the output folder's file
system (plus what the folder holds already, which ``--overwrite`` replaces), or ``[resources]
disk_limit_gb``, naming the key that drives the largest part.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from fem_crossdiff.errors import ParameterError

__all__ = ["Estimate", "estimate", "disk_estimate", "check", "machine_memory", "free_space",
           "expected_steps"]

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
#: Bytes of one frame time still to be reached (a Python float in a list).
_TARGET_BYTES = 32.0
#: Pixels of one animation frame per species panel (about 310 x 390 at 90 dpi), 4 bytes each;
#: the GIF writer keeps every frame until it writes the file.
_FRAME_PIXELS_PER_PANEL = 1.2e5
#: Bytes of one diagnostics row kept in memory per column (a dict entry and its float), and
#: the copies kept (the time loop's rows and the diagnostics plot's).
_ROW_BYTES_PER_COLUMN, _ROW_COPIES = 120.0, 2
#: Bytes of one CSV value on disk (a 17-digit float and its separator).
_CSV_BYTES = 25.0
#: Bytes of a compressed frame in an animation file (GIF; an MP4 frame is smaller).
_ANIMATION_FRAME_BYTES = 2e5
#: Bytes of the pictures written at the end (PNGs) and of a file's own overhead.
_PICTURE_BYTES, _FILE_BYTES = 5e6, 2048.0


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
    out = getattr(cfg, "output", None)
    steps = expected_steps(cfg)
    if out is not None and out.animation != "none":
        count = float(out.animation_frames)
        held = count if steps is None else min(count, steps + 2.0)
        pixels = _FRAME_PIXELS_PER_PANEL * (n + (1 if n > 1 else 0)) * 4.0 \
            if out.animation == "gif" else 0.0
        parts["frames"] = count * _TARGET_BYTES + held * (pixels + vertices * n * 8.0)
        keys["frames"] = "output.animation_frames"
    if steps is not None:
        parts["rows"] = (steps + 1.0) * (14 + 4 * n) * _ROW_BYTES_PER_COLUMN * _ROW_COPIES
        keys["rows"] = "time.dt"
    biggest = max((k for k in parts if k != "base"), key=parts.get)
    return Estimate(total=float(sum(parts.values())), parts=parts, cells=cells,
                    unknowns=unknowns, driver=keys[biggest])


def expected_steps(cfg) -> float | None:
    """The time steps of a study from ``time.T`` and ``time.dt`` (None: no ``[time]``).

    A fixed step takes ``ceil(T / dt)`` steps; an adaptive one is counted as if every step
    grew by ``grow`` up to ``dt_max`` (the fewest steps it can take), so the guard never
    refuses a run for steps it may not take.
    """
    tc = getattr(cfg, "time", None)
    if tc is None:
        return None
    T, dt = float(tc.T), float(tc.dt)
    if T <= 0.0:
        return 0.0
    if not tc.adaptive:
        return float(math.ceil(T / dt * (1.0 - 1e-12)))
    dt_max = float(tc.dt_max) if tc.dt_max is not None else T
    grow = max(float(tc.grow), 1.0 + 1e-9)
    # geometric growth from dt to dt_max: k steps cover dt (grow^k - 1) / (grow - 1)
    k_max = max(math.log(max(dt_max / dt, 1.0)) / math.log(grow), 0.0)
    covered = dt * (grow ** k_max - 1.0) / (grow - 1.0)
    if covered >= T:
        return float(math.ceil(math.log(T * (grow - 1.0) / dt + 1.0) / math.log(grow)))
    return float(math.ceil(k_max + (T - covered) / dt_max))


def disk_estimate(cfg) -> Estimate:
    """What a validated study writes into its output folder, in bytes (no communication).

    ``parts``: ``"fields"`` (VTX/XDMF, every ``output.every`` steps), ``"checkpoints"`` (every
    ``output.checkpoint_every`` steps, all kept), ``"particles"`` (positions every
    ``particles.output_every`` steps), ``"csv"``, ``"animation"`` and ``"pictures"``.
    """
    gdim, cells, vertices, mesh_key = _mesh_size(cfg)
    n = cfg.model.n
    unknowns = vertices * n * (cfg.solver.degree ** gdim)
    out = cfg.output
    steps = expected_steps(cfg) or 0.0
    parts, keys = {}, {}
    fields = [f for f in ("vtx", "xdmf") if f in out.formats]
    if fields:
        mesh_bytes = cells * (gdim + 1) * 8.0 + vertices * gdim * 8.0
        parts["fields"] = len(fields) * (mesh_bytes + (steps // out.every + 2.0)
                                         * (vertices * n * 8.0 + _FILE_BYTES))
        keys["fields"] = "output.every"
    if out.checkpoint_every:
        # coordinates, the state and up to two earlier ones (BDF2)
        one = vertices * gdim * 8.0 + unknowns * 3 * 8.0 + _FILE_BYTES
        parts["checkpoints"] = (steps // out.checkpoint_every + 2.0) * one
        keys["checkpoints"] = "output.checkpoint_every"
    if cfg.particles is not None:
        p = cfg.particles
        parts["particles"] = (steps // p.output_every + 2.0) * (
            float(p.N) * n * gdim * 8.0 + _FILE_BYTES)
        keys["particles"] = "particles.output_every"
    if "csv" in out.formats:
        parts["csv"] = (steps + 1.0) * (14 + 4 * n) * _CSV_BYTES
        keys["csv"] = "time.dt"
    if out.animation != "none":
        parts["animation"] = float(out.animation_frames) * _ANIMATION_FRAME_BYTES
        keys["animation"] = "output.animation_frames"
    if "png" in out.formats:
        parts["pictures"] = _PICTURE_BYTES
        keys["pictures"] = "output.formats"
    if not parts:
        return Estimate(total=0.0, parts={}, cells=cells, unknowns=unknowns, driver=mesh_key)
    biggest = max(parts, key=parts.get)
    return Estimate(total=float(sum(parts.values())), parts=parts, cells=cells,
                    unknowns=unknowns, driver=keys[biggest])


def free_space(folder) -> float:
    """Bytes a run may write into ``folder`` (``inf`` where it cannot be found).

    The free space of its file system (of its nearest existing parent) plus the files the
    folder holds already (``--overwrite`` replaces them).
    """
    import shutil
    from pathlib import Path

    try:
        probe = Path(folder).expanduser().absolute()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = float(shutil.disk_usage(probe).free)
        held = 0.0
        if Path(folder).is_dir() and not Path(folder).is_symlink():
            for p in Path(folder).rglob("*"):
                if p.is_file() and not p.is_symlink():
                    held += p.stat().st_size
        return free + held
    except (OSError, ValueError):
        return math.inf


def _ball_vertices(cfg, gdim: int, vertices: float, volume_hd: float, eps: float) -> float:
    """Vertices within ``eps`` of a vertex (at most all of them)."""
    g = cfg.geometry
    if g.msh is not None:
        return min(vertices, 200.0)  # the file's h is unknown before reading it
    h = float(dict(g.params)["h"])
    ball = {1: 2.0 * eps, 2: math.pi * eps**2, 3: 4.0 / 3.0 * math.pi * eps**3}[gdim]
    density = vertices / (volume_hd * h**gdim)
    return min(vertices, max(1.0, ball * density))


def _value(cfg, key: str):
    """The study's value of a dotted key that drives an estimate."""
    section, name = key.split(".", 1)
    if section == "geometry":
        return cfg.geometry.msh if name == "msh" else dict(cfg.geometry.params).get(name)
    return getattr(getattr(cfg, section, None), name, None)


def check(cfg, limit_bytes: float | None = None, *, machines: int = 1,
          folder=None, disk_limit_bytes: float | None = None) -> Estimate:
    """Refuse a study whose estimate exceeds its memory limit, or its files the free space.

    Args:
        cfg: The study.
        limit_bytes: The limit (default: ``[resources] memory_limit_gb``, else
            ``machines`` x :func:`machine_memory`).
        machines: Distinct machines the job runs on (for the default limit).
        folder: The output folder; given, the files of the run (:func:`disk_estimate`) are
            checked against ``disk_limit_bytes``.
        disk_limit_bytes: The disk limit (default: ``[resources] disk_limit_gb``, else
            :func:`free_space` of ``folder``).

    Returns:
        The memory :class:`Estimate`.

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
        value = _value(cfg, est.driver)
        what = ", ".join(f"{k} {v / 1e9:.3g} GB" for k, v in est.parts.items() if v >= 1e8)
        source = ("resources.memory_limit_gb" if given is not None else "the memory of the "
                  "machines of this job; [resources] memory_limit_gb sets another limit")
        raise ParameterError(est.driver, value,
                             f"the study needs about {est.total / 1e9:.3g} GB ({what}; "
                             f"{est.cells:.3g} cells, {est.unknowns:.3g} unknowns), more than "
                             f"the limit of {limit_bytes / 1e9:.3g} GB ({source})")
    if folder is not None and getattr(cfg, "output", None) is not None:
        _check_disk(cfg, folder, disk_limit_bytes)
    return est


def _check_disk(cfg, folder, limit_bytes: float | None) -> None:
    disk = disk_estimate(cfg)
    given = getattr(getattr(cfg, "resources", None), "disk_limit_gb", None)
    if limit_bytes is None:
        limit_bytes = given * 1e9 if given is not None else free_space(folder)
    if disk.total > limit_bytes:
        what = ", ".join(f"{k} {_size(v)}" for k, v in disk.parts.items()
                         if v >= 0.05 * disk.total)
        source = ("resources.disk_limit_gb" if given is not None else f"the free space for "
                  f"{folder}; [resources] disk_limit_gb sets another limit")
        raise ParameterError(disk.driver, _value(cfg, disk.driver),
                             f"the run writes about {_size(disk.total)} ({what}; about "
                             f"{expected_steps(cfg) or 0:.3g} steps), more than the limit of "
                             f"{_size(limit_bytes)} ({source})")


def _size(nbytes: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes / 1e3:.3g} kB"
