"""Rank-0 plots of P1 fields on triangle meshes (matplotlib, Agg backend).

Fields are gathered to rank 0 through the global dof numbering, so the picture does not
depend on the partition. Intended for demo-sized meshes (the whole field lands on rank 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fem_crossdiff.compat import fem


def gather_p1(f: fem.Function) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Gather a scalar P1 function to rank 0 as ``(points (N, gdim), cells (M, 3), values (N,))``.

    Returns:
        The triple on rank 0, ``None`` elsewhere (collective: call on every rank).
    """
    V = f.function_space
    msh = V.mesh
    comm = msh.comm
    imap = V.dofmap.index_map
    nown = imap.size_local
    glob = imap.local_to_global(np.arange(nown + imap.num_ghosts, dtype=np.int32))
    tdim = msh.topology.dim
    ncells = msh.topology.index_map(tdim).size_local
    cells = glob[V.dofmap.list[:ncells]]
    X = V.tabulate_dof_coordinates()[:nown, : msh.geometry.dim]
    parts = comm.gather((glob[:nown], X, f.x.array[:nown].copy(), cells), root=0)
    if comm.rank != 0:
        return None
    N = imap.size_global
    pts = np.zeros((N, X.shape[1]))
    vals = np.zeros(N)
    for g, x, v, _ in parts:
        pts[g], vals[g] = x, v
    return pts, np.concatenate([p[3] for p in parts]), vals


def plot_species_snapshots(snapshots: list[tuple[float, list[fem.Function]]], path: str | Path,
                           title: str = "") -> None:
    """Save a grid of tripcolor plots: one row per species, one column per time (rank 0 writes).

    Args:
        snapshots: ``[(t, [rho_1, ..., rho_n]), ...]`` with scalar P1 functions on triangles;
            ``t`` is a time or a column label (a string).
        path: PNG file.
        title: Figure title.
    """
    gathered = [(t, [gather_p1(f) for f in fs]) for t, fs in snapshots]
    if gathered[0][1][0] is None:  # not rank 0
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.tri as mtri

    n = len(gathered[0][1])
    ncol = len(gathered)
    fig, axes = plt.subplots(n, ncol, figsize=(3.2 * ncol, 3.0 * n), squeeze=False)
    for k in range(n):
        vmax = max(g[1][k][2].max() for g in gathered)
        for j, (t, data) in enumerate(gathered):
            pts, cells, vals = data[k]
            ax = axes[k, j]
            tri = mtri.Triangulation(pts[:, 0], pts[:, 1], cells)
            im = ax.tripcolor(tri, vals, shading="gouraud", vmin=0.0, vmax=vmax, cmap="viridis")
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            label = t if isinstance(t, str) else f"t = {t:.3g}"
            ax.set_title(f"rho_{k + 1}, {label}", fontsize=9)
        fig.colorbar(im, ax=list(axes[k]), shrink=0.8)
    if title:
        fig.suptitle(title)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
