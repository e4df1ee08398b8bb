# # Segregation of two species on a disk
#
# Two cell populations with different volume weights `a_k` and mobilities `b_k` start
# segregated on the unit disk (a gmsh geometry) and spread under the common pressure
# `P = (a_1 rho_1 + a_2 rho_2)^(m-1)` of system (1.1), with a little linear diffusion `sigma`.
# No-flux walls conserve each species' mass. The default P1 scheme (`"muscl"`: upwind edge fluxes
# with limited second-order species fractions, `"smooth-sensor"` limiter) keeps both densities
# nonnegative, and the energy A of (1.3) decreases.
#
# Run serially or under MPI:
#
#     .venv/bin/python demos/demo_segregation.py
#     .venv/bin/mpiexec -n 2 .venv/bin/python demos/demo_segregation.py
#
# With the `CI` environment variable set, a coarse mesh and a short time interval are used.
# Outputs (in `output/segregation/`): `rho.bp` (VTX, ParaView), `diagnostics.csv`,
# `densities.png` (snapshots and the segregation view), `diagnostics.png`, `animation.gif`.
# Progress lines go to stderr on rank 0; `--quiet` switches them off.

# +
import os
import sys
from pathlib import Path

import numpy as np

from fem_crossdiff import (
    MPI,
    AnimationObserver,
    CrossDiffusionSolver,
    DiagnosticsPlotObserver,
    ModelParams,
    TimeParams,
    meshes,
)
from fem_crossdiff.log import demo_options, get_logger
from fem_crossdiff.plotting import plot_species_snapshots

comm = MPI.COMM_WORLD
log = get_logger(comm)
short = bool(os.environ.get("CI"))
outdir, progress = demo_options(sys.argv[1:], "output/segregation")  # [outdir] [--quiet]
outdir = Path(outdir)
# -

# ## Geometry and model
# The disk comes from gmsh (on rank 0) and is distributed over the ranks.

geo = meshes.disk(comm, radius=1.0, h=0.1 if short else 0.03)
params = ModelParams(a=(1.0, 2.0), b=(1.0, 0.5), m=2.0, sigma=1e-3)
T = 0.1 if short else 1.0
time_params = TimeParams(T=T, dt=1e-3, method="bdf2", adaptive=True, dt_max=0.02, grow=1.2)

# ## Segregated initial data
# Species 1 fills a blob on the left, species 2 a blob on the right; they meet at x = 0.


def blob(cx, height):
    def f(x):
        r2 = (x[0] - cx) ** 2 + x[1] ** 2
        return np.where((r2 < 0.45**2) & (np.sign(x[0]) == np.sign(cx)), height, 0.0)
    return f


solver = CrossDiffusionSolver(geo.mesh, params)
solver.set_initial([blob(-0.3, 1.0), blob(0.3, 0.5)])

# ## Time stepping with snapshots

snap_times = np.linspace(0, T, 4)[1:]
snapshots = [(0.0, [solver.species(k) for k in range(2)])]


def keep_snapshots(s, row):
    if len(snapshots) <= len(snap_times) and s.t >= snap_times[len(snapshots) - 1] - 1e-12:
        snapshots.append((s.t, [s.species(k) for k in range(2)]))


# The animation and the diagnostics figure are observers of the same time loop.
animation = AnimationObserver(outdir / "animation.gif", T, "gif", count=12 if short else 40)
diagnostics = DiagnosticsPlotObserver(outdir / "diagnostics.png", "segregation on a disk")
rows = solver.run(time_params, csv_path=outdir / "diagnostics.csv", vtx_path=outdir / "rho.bp",
                  output_every=5, callback=keep_snapshots, progress=progress,
                  observers=[animation, diagnostics])
plot_species_snapshots(snapshots, outdir / "densities.png",
                       title="two species, a = (1, 2), b = (1, 0.5), m = 2")

# ## What to check
# Mass drift, the energy decrease and the minimum density over the run.

first, last = rows[0], rows[-1]
drift = max(abs(last[f"mass_{k}"] - first[f"mass_{k}"]) / first[f"mass_{k}"] for k in (1, 2))
min_rel = min(r[f"min_{k}"] / r[f"max_{k}"] for r in rows for k in (1, 2))
log.info("steps %d, relative mass drift %.2e, energy %.5f -> %.5f, min rho / max rho %.2e",
         len(rows) - 1, drift, first["energy"], last["energy"], min_rel)
log.info("wrote %s", outdir)
