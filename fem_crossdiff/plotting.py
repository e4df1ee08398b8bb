"""Rank-0 figures of a run (matplotlib, Agg): densities, segregation, particles, diagnostics.

The pipeline has two halves. :class:`FieldSampler` is collective: it gathers the mesh once and,
per picture, the species values to rank 0 through the global dof numbering (1D and 2D meshes:
nodal values; 3D meshes: three mid-plane slices evaluated exactly in the cells of every rank),
so a picture does not depend on the partition. The figure functions then run on rank 0 only and
return the :class:`matplotlib.figure.Figure` (already saved when a path is given), so tests and
notebooks can inspect its panels.

Conventions of every figure: axes in the coordinates (length units) of the mesh, one colour per
species (:data:`SPECIES_COLOURS`, a white-to-colour map for its density), labelled colour bars,
constrained layout, species numbered from 1, and a colour range chosen from the whole run
(``color_range="run"``) or per frame (``"frame"``). Intended for demo-sized meshes (the whole
field lands on rank 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fem_crossdiff import checkpoint as ckpt
from fem_crossdiff.compat import fem

__all__ = ["SPECIES_COLOURS", "COLOR_RANGES", "FieldSampler", "species_label", "gather_p1",
           "snapshot_figure", "slices_figure", "particles_figure", "diagnostics_figure",
           "write_animation", "animation_writer", "plot_species_snapshots", "save_figure"]

#: Colour of species 1, 2, ... (RGB); a species' density map goes from white to its colour, and
#: the segregation view mixes them subtractively (white: empty, dark: overlap).
SPECIES_COLOURS = ((0.12, 0.47, 0.71), (0.84, 0.15, 0.16), (0.17, 0.63, 0.17),
                   (1.00, 0.50, 0.05), (0.58, 0.40, 0.74), (0.55, 0.34, 0.29))
#: Colour ranges: one per species over the whole run, or one per panel.
COLOR_RANGES = ("run", "frame")


def species_label(k: int) -> str:
    """The plot label of species ``k`` (0-based index), numbered from 1: ``rho_1``, ..."""
    return rf"$\rho_{{{k + 1}}}$"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colour(k: int) -> tuple[float, float, float]:
    return SPECIES_COLOURS[k % len(SPECIES_COLOURS)]


def _cmap(k: int):
    from matplotlib.colors import LinearSegmentedColormap

    cmap = LinearSegmentedColormap.from_list(f"species{k + 1}", [(1, 1, 1), _colour(k)])
    return cmap.with_extremes(bad=(1, 1, 1, 0))  # outside the domain: transparent


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG atomically (rank 0 calls this)."""
    path = Path(path)
    ckpt.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    return path


def _finish(fig, path, title: str):
    """Title, save (when ``path`` is given) and close a figure; return it for inspection."""
    if title:
        fig.suptitle(title, fontsize=10)
    if path is not None:
        save_figure(fig, path)
    _plt().close(fig)
    return fig


# --------------------------------------------------------------------------- sampling
class FieldSampler:
    """Collective sampler of scalar fields on one mesh for pictures; the data land on rank 0.

    ``kind`` is ``"line"`` (1D: nodal values), ``"tri"`` (2D triangles or quadrilaterals, the
    latter split in two: nodal values) or ``"slices"`` (3D: the planes ``x = c_x``,
    ``y = c_y``, ``z = c_z`` through the centre of the bounding box, on a grid of about
    ``resolution`` points along the longest side, exact P1 values, NaN outside the domain).

    Args:
        msh: The mesh.
        resolution: Grid points along the longest side of a 3D slice.
    """

    def __init__(self, msh, resolution: int = 64):
        from fem_crossdiff.compat import MPI

        self.msh, self.comm = msh, msh.comm
        tdim = msh.topology.dim
        self.kind = {1: "line", 2: "tri", 3: "slices"}[tdim]
        self.gdim = msh.geometry.dim
        self.V1 = fem.functionspace(msh, ("Lagrange", 1))
        self._tmp = fem.Function(self.V1)
        x = msh.geometry.x[:, : self.gdim]
        lo = x.min(axis=0) if x.size else np.full(self.gdim, np.inf)
        hi = x.max(axis=0) if x.size else np.full(self.gdim, -np.inf)
        self.comm.Allreduce(MPI.IN_PLACE, lo, op=MPI.MIN)
        self.comm.Allreduce(MPI.IN_PLACE, hi, op=MPI.MAX)
        #: Bounding box of the mesh, ``(lo, hi)``.
        self.bbox = (lo, hi)
        imap = self.V1.dofmap.index_map
        self._nown = imap.size_local
        self._glob = imap.local_to_global(np.arange(self._nown + imap.num_ghosts,
                                                    dtype=np.int32))
        self.points = self.cells = None
        if self.kind == "slices":
            self._setup_slices(resolution)
        else:
            self._setup_nodes()

    def _setup_nodes(self):
        ncells = self.msh.topology.index_map(self.msh.topology.dim).size_local
        cells = self._glob[self.V1.dofmap.list[:ncells]]
        X = self.V1.tabulate_dof_coordinates()[: self._nown, : self.gdim]
        parts = self.comm.gather((self._glob[: self._nown], X, cells), root=0)
        if self.comm.rank != 0:
            return
        N = self.V1.dofmap.index_map.size_global
        pts = np.zeros((N, self.gdim))
        for g, x, _ in parts:
            pts[g] = x
        cells = np.concatenate([p[2] for p in parts])
        #: Per gathered cell, the triangles it became (quadrilaterals: two).
        self.cell_of_triangle = np.arange(cells.shape[0])
        if cells.shape[1] == 4:  # DOLFINx quadrilateral: vertices (0, 1, 3, 2) go round
            self.cell_of_triangle = np.repeat(np.arange(cells.shape[0]), 2)
            cells = np.stack([cells[:, [0, 1, 3]], cells[:, [0, 3, 2]]], axis=1).reshape(-1, 3)
        self.points, self.cells = pts, cells

    def _setup_slices(self, resolution: int):
        from fem_crossdiff.coupling import _PointEvaluator

        lo, hi = self.bbox
        self.centre = 0.5 * (lo + hi)
        step = float(np.max(hi - lo)) / max(int(resolution) - 1, 1)
        #: Per plane (normal axis 0, 1, 2): (the two in-plane axes, their grid vectors).
        self.planes = []
        pts = []
        for axis in range(3):
            a, b = [i for i in range(3) if i != axis]
            u = np.linspace(lo[a], hi[a], max(int(round((hi[a] - lo[a]) / step)) + 1, 2))
            v = np.linspace(lo[b], hi[b], max(int(round((hi[b] - lo[b]) / step)) + 1, 2))
            U, Vv = np.meshgrid(u, v, indexing="xy")
            p = np.empty((U.size, 3))
            p[:, axis], p[:, a], p[:, b] = self.centre[axis], U.ravel(), Vv.ravel()
            self.planes.append(((a, b), u, v))
            pts.append(p)
        self._grid = np.concatenate(pts) if self.comm.rank == 0 else np.zeros((0, 3))
        self._eval = _PointEvaluator(self.msh, 1e-10, "zero")
        W = fem.functionspace(self.msh, ("DG", 0))
        self._inside = fem.Function(W)  # 1 in every cell: 0 where a grid point is outside
        self._inside.x.array[:] = 1.0

    def sample(self, funcs: Sequence) -> list | None:
        """Values of each (scalar) function for a picture (collective).

        Returns:
            On rank 0 one entry per function: nodal values ``(N,)`` (``line``, ``tri``) or the
            three slice images ``[(nv, nu), ...]`` (``slices``); ``None`` on other ranks.
        """
        if self.kind == "slices":
            vals = self._eval([*funcs, self._inside], self._grid)
            if self.comm.rank != 0:
                return None
            inside = vals[-1][:, 0] > 0.5
            out = []
            for v in vals[:-1]:
                v = np.where(inside, v[:, 0], np.nan)
                images, start = [], 0
                for _, u, w in self.planes:
                    images.append(v[start:start + u.size * w.size].reshape(w.size, u.size))
                    start += u.size * w.size
                out.append(images)
            return out
        parts = []
        for f in funcs:
            self._tmp.interpolate(f)
            parts.append(self._tmp.x.array[: self._nown].copy())
        gathered = self.comm.gather((self._glob[: self._nown], parts), root=0)
        if self.comm.rank != 0:
            return None
        N = self.V1.dofmap.index_map.size_global
        out = [np.zeros(N) for _ in funcs]
        for g, vs in gathered:
            for o, v in zip(out, vs, strict=True):
                o[g] = v
        return out

    def sample_cells(self, funcs: Sequence) -> list | None:
        """Cell values of DG0 functions, per triangle of :attr:`cells` (collective; 2D only).

        Returns:
            On rank 0 one array per function (``None`` elsewhere).
        """
        ncells = self.msh.topology.index_map(self.msh.topology.dim).size_local
        parts = [f.x.array[f.function_space.dofmap.list[:ncells, 0]].copy() for f in funcs]
        gathered = self.comm.gather(parts, root=0)
        if self.comm.rank != 0:
            return None
        return [np.concatenate([g[i] for g in gathered])[self.cell_of_triangle]
                for i in range(len(funcs))]

    def axis_names(self, plane: int = 2) -> tuple[str, str]:
        """Coordinate names of the picture's axes (for a 3D slice: of its plane)."""
        if self.kind != "slices":
            return ("x", "y")
        a, b = self.planes[plane][0]
        return ("xyz"[a], "xyz"[b])

    def aspect(self, plane: int = 2) -> float:
        """Height over width of a picture of the domain (of a 3D slice: of its plane)."""
        lo, hi = self.bbox
        a, b = (0, 1) if self.kind != "slices" else self.planes[plane][0]
        if self.kind == "line":
            return 0.75
        return float((hi[b] - lo[b]) / max(hi[a] - lo[a], 1e-300))

    def plane_title(self, plane: int) -> str:
        """``"z = 0.5"``: the plane of a 3D slice."""
        return f"{'xyz'[plane]} = {self.centre[plane]:.3g}"



def gather_p1(f: fem.Function) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Gather a scalar function as P1 to rank 0 as ``(points (N, gdim), cells, values (N,))``.

    Returns:
        The triple on rank 0, ``None`` elsewhere (collective: call on every rank).
    """
    s = FieldSampler(f.function_space.mesh)
    vals = s.sample([f])
    return None if vals is None else (s.points, s.cells, vals[0])


# --------------------------------------------------------------------------- drawing helpers
def _ranges(frames, n: int, color_range: str):
    """``vmax[j][k]``: the colour maximum of species ``k`` in frame ``j``."""
    if color_range not in COLOR_RANGES:
        raise ValueError(f"color_range must be one of {COLOR_RANGES}, got {color_range!r}")

    def peak(v):
        arr = np.concatenate([np.ravel(i) for i in v]) if isinstance(v, list) else v
        m = np.nanmax(arr) if np.any(np.isfinite(arr)) else 0.0
        return float(m) if m > 0 else 1.0

    per = [[peak(fr["values"][k]) for k in range(n)] for fr in frames]
    if color_range == "frame":
        return per
    run = [max(p[k] for p in per) for k in range(n)]
    return [run for _ in frames]


def _style(ax, sampler, plane: int = 2):
    xn, yn = sampler.axis_names(plane)
    ax.set_xlabel(xn)
    ax.set_ylabel(yn)
    ax.set_aspect("equal")
    ax.set_facecolor("0.88")  # outside the domain: grey, so that white is density 0 inside
    ax.margins(0.01)  # the domain fills the panel
    ax.tick_params(labelsize=7)


def _draw_species(ax, sampler, value, k: int, vmax: float, plane: int = 2):
    """One species' density in one panel; returns the mappable for the colour bar."""
    if sampler.kind == "tri":
        import matplotlib.tri as mtri

        tri = mtri.Triangulation(sampler.points[:, 0], sampler.points[:, 1], sampler.cells)
        im = ax.tripcolor(tri, value, shading="gouraud", cmap=_cmap(k), vmin=0.0, vmax=vmax)
    else:
        _, u, v = sampler.planes[plane]
        im = ax.imshow(value[plane], origin="lower", extent=(u[0], u[-1], v[0], v[-1]),
                       cmap=_cmap(k), vmin=0.0, vmax=vmax, interpolation="bilinear")
    _style(ax, sampler, plane)
    return im


def _composite(sampler, values, vmaxes, plane: int = 2, res: int = 200):
    """The segregation view as an RGBA image and its extent.

    Each species tints white towards its colour in proportion to ``rho_k / vmax_k``
    (subtractive mixing: overlaps darken), transparent outside the domain.
    """
    if sampler.kind == "tri":
        import matplotlib.tri as mtri

        tri = mtri.Triangulation(sampler.points[:, 0], sampler.points[:, 1], sampler.cells)
        lo, hi = sampler.points.min(axis=0), sampler.points.max(axis=0)
        pad = 1e-9 * (hi - lo)  # grid points exactly on the hull can fall outside
        lo, hi = lo + pad, hi - pad
        step = float(np.max(hi - lo)) / (res - 1)
        u = np.linspace(lo[0], hi[0], max(int(round((hi[0] - lo[0]) / step)) + 1, 2))
        v = np.linspace(lo[1], hi[1], max(int(round((hi[1] - lo[1]) / step)) + 1, 2))
        U, V = np.meshgrid(u, v)
        fields = [np.ma.filled(mtri.LinearTriInterpolator(tri, val)(U, V), np.nan)
                  for val in values]
    else:
        _, u, v = sampler.planes[plane]
        fields = [val[plane] for val in values]
    inside = np.isfinite(fields[0])
    rgb = np.ones(fields[0].shape + (3,))
    for k, (f, vmax) in enumerate(zip(fields, vmaxes, strict=True)):
        frac = np.clip(np.nan_to_num(f) / vmax, 0.0, 1.0)[..., None]
        rgb *= 1.0 - frac * (1.0 - np.asarray(_colour(k)))
    rgba = np.concatenate([rgb, inside[..., None].astype(float)], axis=-1)
    return rgba, (u[0], u[-1], v[0], v[-1])


def _draw_composite(ax, sampler, values, vmaxes, plane: int = 2):
    from matplotlib.patches import Patch

    rgba, extent = _composite(sampler, values, vmaxes, plane)
    ax.imshow(rgba, origin="lower", extent=extent, interpolation="bilinear")
    _style(ax, sampler, plane)
    ax.legend(handles=[Patch(color=_colour(k), label=species_label(k))
                       for k in range(len(values))], fontsize=7, loc="upper right",
              framealpha=0.7)


def _frame_label(fr) -> str:
    t = fr["t"]
    return t if isinstance(t, str) else f"t = {t:.3g}"


# --------------------------------------------------------------------------- figures
def snapshot_figure(sampler: FieldSampler, frames: list[dict], path: str | Path | None = None,
                    title: str = "", color_range: str = "run", plane: int = 2):
    """Densities at a few times: one row per species plus the segregation view (rank 0).

    Args:
        sampler: The (rank-0 side of the) sampler that produced the frames.
        frames: ``[{"t": time or label, "values": sampler.sample(species)}, ...]``.
        path: PNG file to write (None: just return the figure).
        title: Figure title.
        color_range: ``"run"`` (one range per species, shared by the frames, one colour bar
            per row) or ``"frame"`` (one range and one colour bar per panel).
        plane: 3D only: the slice shown (normal axis 0, 1 or 2).

    Returns:
        The figure: ``n`` species rows (plus one composite row when ``n > 1``) by one column per
        frame in 2D/3D; one panel per frame with all species in 1D.
    """
    plt = _plt()
    n = len(frames[0]["values"])
    ncol = len(frames)
    if sampler.kind == "line":
        fig, axes = plt.subplots(1, ncol, figsize=(3.4 * ncol, 3.0), squeeze=False,
                                 layout="constrained", sharey=color_range == "run")
        order = np.argsort(sampler.points[:, 0])
        for j, fr in enumerate(frames):
            ax = axes[0, j]
            for k in range(n):
                ax.plot(sampler.points[order, 0], fr["values"][k][order], color=_colour(k),
                        label=species_label(k))
            ax.set_xlabel("x")
            ax.set_ylabel("density")
            ax.set_title(_frame_label(fr), fontsize=9)
            ax.legend(fontsize=7)
    else:
        vmax = _ranges(frames, n, color_range)
        rows = n + (1 if n > 1 else 0)
        height = float(np.clip(2.9 * sampler.aspect(plane), 1.2, 3.6)) + 0.75
        fig, axes = plt.subplots(rows, ncol, figsize=(2.9 * ncol + 0.8, height * rows),
                                 squeeze=False, layout="constrained")
        where = f", {sampler.plane_title(plane)}" if sampler.kind == "slices" else ""
        for j, fr in enumerate(frames):
            for k in range(n):
                ax = axes[k, j]
                im = _draw_species(ax, sampler, fr["values"][k], k, vmax[j][k], plane)
                ax.set_title(f"{species_label(k)}, {_frame_label(fr)}{where}", fontsize=9)
                if color_range == "frame":
                    fig.colorbar(im, ax=ax, shrink=0.85).set_label(species_label(k))
                elif j == ncol - 1:
                    fig.colorbar(im, ax=list(axes[k]), shrink=0.85).set_label(
                        f"density {species_label(k)}")
            if n > 1:
                ax = axes[n, j]
                _draw_composite(ax, sampler, fr["values"], vmax[j], plane)
                ax.set_title(f"segregation, {_frame_label(fr)}", fontsize=9)
    return _finish(fig, path, title)


def slices_figure(sampler: FieldSampler, frame: dict, path: str | Path | None = None,
                  title: str = ""):
    """3D: the three mid-plane slices of every species at one time (rank 0).

    Returns:
        The figure: one row per species (plus the segregation view when ``n > 1``), one column
        per plane ``x = c_x``, ``y = c_y``, ``z = c_z``.
    """
    plt = _plt()
    n = len(frame["values"])
    vmax = _ranges([frame], n, "run")[0]
    rows = n + (1 if n > 1 else 0)
    fig, axes = plt.subplots(rows, 3, figsize=(9.5, 2.9 * rows), squeeze=False,
                             layout="constrained")
    for p in range(3):
        for k in range(n):
            im = _draw_species(axes[k, p], sampler, frame["values"][k], k, vmax[k], p)
            axes[k, p].set_title(f"{species_label(k)}, {sampler.plane_title(p)}", fontsize=9)
            if p == 2:
                fig.colorbar(im, ax=list(axes[k]), shrink=0.85).set_label(
                    f"density {species_label(k)}")
        if n > 1:
            _draw_composite(axes[n, p], sampler, frame["values"], vmax, p)
            axes[n, p].set_title(f"segregation, {sampler.plane_title(p)}", fontsize=9)
    fig.suptitle(f"{title + ', ' if title else ''}{_frame_label(frame)}", fontsize=10)
    if path is not None:
        save_figure(fig, path)
    plt.close(fig)
    return fig


def particles_figure(sampler: FieldSampler, density: list, positions: np.ndarray,
                     empirical: list, path: str | Path | None = None, title: str = "",
                     max_points: int = 20000, seed: int = 0):
    """Particles over the FE density, and the FE density next to the empirical measure (2D).

    Args:
        sampler: A ``"tri"`` sampler.
        density: Per species, the FE density's nodal values (``sampler.sample``).
        positions: Particle positions ``(n, N, 2)`` (all ranks' particles).
        empirical: Per species, the projected empirical measure per triangle (DG0 histogram
            scaled to the species' mass, ``sampler.sample_cells``).
        path: PNG file (None: just return the figure).
        title: Figure title.
        max_points: At most this many particles per species are drawn (a random subset).
        seed: Seed of that subset's choice.

    Returns:
        The figure: row 1 the particle cloud over each species' FE density, row 2 the
        projected empirical measure, one column per species, one colour bar per column.
    """
    import matplotlib.tri as mtri

    plt = _plt()
    n = len(density)
    height = float(np.clip(3.4 * sampler.aspect(), 1.4, 4.0)) + 0.8
    fig, axes = plt.subplots(2, n, figsize=(3.4 * n + 0.6, 2 * height + 0.6), squeeze=False,
                             layout="constrained")
    tri = mtri.Triangulation(sampler.points[:, 0], sampler.points[:, 1], sampler.cells)
    rng = np.random.default_rng(seed)
    for k in range(n):
        vmax = float(max(np.max(density[k]), 1e-300))
        im = _draw_species(axes[0, k], sampler, density[k], k, vmax)
        pts = positions[k]
        if pts.shape[0] > max_points:
            pts = pts[rng.choice(pts.shape[0], max_points, replace=False)]
        axes[0, k].scatter(pts[:, 0], pts[:, 1], s=1.0, color="k", alpha=0.5, linewidths=0)
        axes[0, k].set_title(f"{species_label(k)}: FE density and {positions.shape[1]} "
                             "particles", fontsize=9)
        axes[1, k].tripcolor(tri, facecolors=empirical[k], cmap=_cmap(k), vmin=0.0, vmax=vmax)
        _style(axes[1, k], sampler)
        axes[1, k].set_title(f"{species_label(k)}: projected empirical measure", fontsize=9)
        fig.colorbar(im, ax=list(axes[:, k]), shrink=0.8, location="bottom").set_label(
            f"density {species_label(k)}")
    return _finish(fig, path, title)


def diagnostics_figure(rows: list[dict], n: int, path: str | Path | None = None,
                       title: str = ""):
    """The diagnostics rows over time (rank 0): conservation, energy, steps, solver effort.

    Args:
        rows: Diagnostics rows (:func:`fem_crossdiff.driver.diagnostics_row`), first the
            initial state.
        n: Number of species.
        path: PNG file (None: just return the figure).
        title: Figure title.

    Returns:
        The figure with six panels: relative mass drift, energy, time step (rejected steps
        marked), Newton and Krylov iterations per step, minimum and maximum density.
    """
    plt = _plt()
    t = np.array([r["t"] for r in rows], float)
    steps = rows[1:]
    ts = t[1:]
    fig, ax = plt.subplots(2, 3, figsize=(12, 6.2), layout="constrained")
    ax = ax.ravel()
    for k in range(n):
        c = _colour(k)
        m = np.array([r[f"mass_{k + 1}"] for r in rows], float)
        ax[0].semilogy(t, np.maximum(np.abs(m / m[0] - 1.0), 1e-17), color=c,
                       label=species_label(k))
        ax[4].plot(t, [r[f"min_{k + 1}"] for r in rows], color=c, label=species_label(k))
        ax[5].plot(t, [r[f"max_{k + 1}"] for r in rows], color=c, label=species_label(k))
    ax[0].set(title="relative mass drift", ylabel="|M(t) / M(0) - 1|")
    ax[1].plot(t, [r["energy"] for r in rows], "k")
    ax[1].set(title="energy", ylabel="A(rho)")
    if steps:
        dt = np.array([r["dt"] for r in steps], float)
        rej = np.array([int(r.get("rejected", 0) or 0) for r in steps])
        ax[2].semilogy(ts, dt, "k.-", ms=3, label="accepted dt")
        if rej.any():
            ax[2].semilogy(ts[rej > 0], dt[rej > 0], "rx", ms=6,
                           label=f"after rejections ({int(rej.sum())} in all)")
        ax[2].legend(fontsize=7)
        newton = [int(r.get("newton_its", 0) or 0) for r in steps]
        krylov = [int(r.get("krylov_its", 0) or 0) for r in steps]
        ax[3].plot(ts, newton, "k.-", ms=3, label="Newton")
        ax[3].set_ylabel("Newton iterations per step")
        twin = ax[3].twinx()
        twin.plot(ts, krylov, ".-", color="tab:orange", ms=3, label="Krylov")
        twin.set_ylabel("Krylov iterations per step", color="tab:orange")
        twin.tick_params(labelsize=7)
        from matplotlib.ticker import MaxNLocator

        for a in (ax[3], twin):
            a.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax[2].set(title="time step", ylabel="dt")
    ax[3].set_title("solver iterations")
    ax[4].set(title="minimum density", ylabel="min rho_k")
    ax[5].set(title="maximum density", ylabel="max rho_k")
    for a in ax:
        a.set_xlabel("t")
        a.tick_params(labelsize=7)
    for a in (ax[0], ax[4], ax[5]):
        a.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    if path is not None:
        save_figure(fig, path, dpi=100)
    plt.close(fig)
    return fig


# --------------------------------------------------------------------------- animation
def animation_writer(fmt: str, fps: int = 10):
    """The matplotlib writer of ``"gif"`` (Pillow) or ``"mp4"`` (ffmpeg).

    Raises:
        ValueError: unknown format, or ``"mp4"`` without an ffmpeg executable.
    """
    from matplotlib import animation

    if fmt == "gif":
        return animation.PillowWriter(fps=fps)
    if fmt == "mp4":
        if not animation.writers.is_available("ffmpeg"):
            raise ValueError('mp4 needs an ffmpeg executable on PATH; use "gif"')
        return animation.FFMpegWriter(fps=fps)
    raise ValueError(f'animation format must be "gif" or "mp4", got {fmt!r}')


def write_animation(sampler: FieldSampler, frames: list[dict], path: str | Path,
                    fmt: str = "gif", fps: int = 10, title: str = "", plane: int = 2):
    """Animate the frames of a run (rank 0): species panels and the segregation view.

    The colour range of each species is taken from the whole run, so frames compare.

    Args:
        sampler: The sampler that produced the frames.
        frames: ``[{"t": time, "values": ...}, ...]`` as for :func:`snapshot_figure`.
        path: Output file (``.gif`` or ``.mp4``), written atomically.
        fmt: ``"gif"`` or ``"mp4"``.
        fps: Frames per second.
        title: Title, followed by the time of each frame.
        plane: 3D only: the slice shown.

    Returns:
        The figure of the last frame.
    """
    plt = _plt()
    writer = animation_writer(fmt, fps)
    n = len(frames[0]["values"])
    line = sampler.kind == "line"
    ncol = 1 if line else n + (1 if n > 1 else 0)
    height = float(np.clip(3.4 * sampler.aspect(plane), 1.4, 4.0)) + 0.9
    fig, axes = plt.subplots(1, ncol, figsize=(3.4 * ncol + 0.6, height), squeeze=False,
                             layout="constrained")
    axes = axes[0]
    vmax = _ranges(frames, n, "run")[0]
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    if not line:
        for k in range(n):
            fig.colorbar(ScalarMappable(Normalize(0.0, vmax[k]), _cmap(k)), ax=axes[k],
                         shrink=0.85).set_label(f"density {species_label(k)}")
    head = fig.suptitle("", fontsize=10)

    def draw(fr):
        for ax in axes:
            ax.clear()
        if line:
            order = np.argsort(sampler.points[:, 0])
            for k in range(n):
                axes[0].plot(sampler.points[order, 0], fr["values"][k][order],
                             color=_colour(k), label=species_label(k))
            axes[0].set(xlabel="x", ylabel="density", ylim=(0.0, 1.05 * max(vmax)))
            axes[0].legend(fontsize=7)
        else:
            for k in range(n):
                _draw_species(axes[k], sampler, fr["values"][k], k, vmax[k], plane)
                axes[k].set_title(species_label(k), fontsize=9)
            if n > 1:
                _draw_composite(axes[n], sampler, fr["values"], vmax, plane)
                axes[n].set_title("segregation", fontsize=9)
        head.set_text(f"{title + ', ' if title else ''}{_frame_label(fr)}")

    from fem_crossdiff import outdir

    path = Path(path)
    # the writer opens the file by name: give it a fresh regular file of ours (never a planted
    # link), and rename it only onto a destination that is not a link
    tmp = outdir.reserve_temporary(path)
    try:
        with writer.saving(fig, str(tmp), dpi=90):
            for fr in frames:
                draw(fr)
                writer.grab_frame()
        outdir.replace_file(tmp, path)
    finally:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
    plt.close(fig)
    return fig


def plot_species_snapshots(snapshots: list[tuple[float, list[fem.Function]]], path: str | Path,
                           title: str = "", color_range: str = "run") -> None:
    """Snapshots given as functions: ``[(t, [rho_1, ..., rho_n]), ...]`` (collective).

    The functions are sampled (collective) and drawn by :func:`snapshot_figure` on rank 0.

    Args:
        snapshots: Times (or column labels) and the species functions at those times.
        path: PNG file.
        title: Figure title.
        color_range: ``"run"`` or ``"frame"``.
    """
    sampler = FieldSampler(snapshots[0][1][0].function_space.mesh)
    frames = [{"t": t, "values": sampler.sample(fs)} for t, fs in snapshots]
    if sampler.comm.rank == 0:
        snapshot_figure(sampler, frames, path, title=title, color_range=color_range)
