# # Cross-diffusion in an annulus and around obstacles
#
# Two geometries from the gmsh builders of `meshes`, both with no-flux walls, for system (1.1)
# `d_t rho_k = div(b_k rho_k grad P) + sigma Lap rho_k` with `P = (sum_l a_l rho_l)^(m-1)`:
#
# 1. an **annulus**: a bump of species 1 next to the hole spreads around it and pushes the
#    ring of species 2 that lines the outer wall (the hole is an obstacle the pressure must go
#    around);
# 2. a **channel with circular obstacles**: two species start in strips at the two ends and
#    invade the channel between the obstacles until they meet.
#
# Each run conserves every species' mass (no-flux walls), keeps the densities nonnegative
# (upwind P1 scheme) and decreases the energy A of (1.3).
#
#     .venv/bin/python demos/demo_annulus_obstacles.py [OUTDIR]
#     .venv/bin/mpiexec -n 2 .venv/bin/python demos/demo_annulus_obstacles.py
#
# With the `CI` environment variable set, coarse meshes and short times are used. Outputs (in
# `output/annulus_obstacles/`): `annulus.csv`, `annulus.png`, `obstacles.csv`, `obstacles.png`.

# +
import os
import sys
from pathlib import Path

import numpy as np

from fem_crossdiff import MPI, CrossDiffusionSolver, ModelParams, TimeParams, meshes
from fem_crossdiff.log import demo_options, get_logger
from fem_crossdiff.plotting import plot_species_snapshots

comm = MPI.COMM_WORLD
log = get_logger(comm)
short = bool(os.environ.get("CI"))
outdir, progress = demo_options(sys.argv[1:], "output/annulus_obstacles")  # [outdir] [--quiet]
outdir = Path(outdir)
# -

# ## A driver shared by both geometries
# Snapshots at four times go into one PNG (a row per species); the diagnostics go to CSV.


def simulate(name, geo, params, initial, time_params, title):
    solver = CrossDiffusionSolver(geo.mesh, params)
    solver.set_initial(initial)
    n = params.n
    snap_times = list(np.linspace(0, time_params.T, 4)[1:])
    snapshots = [(0.0, [solver.species(k) for k in range(n)])]

    def keep(s, row):
        if snap_times and s.t >= snap_times[0] - 1e-12:
            snapshots.append((s.t, [s.species(k) for k in range(n)]))
            while snap_times and s.t >= snap_times[0] - 1e-12:
                snap_times.pop(0)

    rows = solver.run(time_params, csv_path=outdir / f"{name}.csv", callback=keep,
                      progress=progress)
    plot_species_snapshots(snapshots, outdir / f"{name}.png", title=title)
    first, last = rows[0], rows[-1]
    drift = max(abs(last[f"mass_{k}"] / first[f"mass_{k}"] - 1) for k in range(1, n + 1))
    min_rel = min(r[f"min_{k}"] / r[f"max_{k}"] for r in rows for k in range(1, n + 1))
    energies = np.array([r["energy"] for r in rows])
    log.info("%s: %d steps, mass drift %.2e, min rho / max rho %.2e, energy %.5f -> %.5f "
             "(largest increase %.1e)", name, len(rows) - 1, drift, min_rel, energies[0],
             energies[-1], max(np.diff(energies).max(), 0.0))
    return rows


# ## Annulus
# The bump of species 1 sits against the hole (radius 0.4); species 2 is a ring of width
# 0.15 at the outer wall. Species 2 is three times as mobile, so it gives way first.

geo = meshes.annulus(comm, inner_radius=0.4, outer_radius=1.0, h=0.15 if short else 0.04)
params = ModelParams(a=(1.0, 1.0), b=(1.0, 3.0), m=2.0, sigma=2e-3)
T = 0.01 if short else 0.6
tp = TimeParams(T=T, dt=1e-3, method="bdf2", adaptive=True, dt_max=0.02, grow=1.2)


def bump(x):
    return np.exp(-((x[0] - 0.6) ** 2 + x[1] ** 2) / (2 * 0.12**2))


def ring(x):
    return np.where(np.hypot(x[0], x[1]) > 0.85, 0.6, 0.0)


simulate("annulus", geo, params, [bump, ring], tp, "annulus: b = (1, 3), m = 2")

# ## Channel with obstacles
# Three circular obstacles in the channel (0, 2) x (0, 1); species 1 starts left of x = 0.4,
# species 2 right of x = 1.6 (the `half_plane` profile of the TOML studies).

geo = meshes.rectangle_with_obstacles(
    comm, lower=(0.0, 0.0), upper=(2.0, 1.0),
    obstacles=((0.7, 0.5, 0.15), (1.3, 0.3, 0.12), (1.3, 0.75, 0.1)),
    h=0.1 if short else 0.03)
params = ModelParams(a=(1.0, 1.5), b=(1.0, 1.0), m=2.0, sigma=1e-3)
T = 0.01 if short else 1.0
tp = TimeParams(T=T, dt=1e-3, method="bdf2", adaptive=True, dt_max=0.02, grow=1.2)
simulate("obstacles", geo, params,
         [lambda x: np.where(x[0] < 0.4, 1.0, 0.0), lambda x: np.where(x[0] > 1.6, 0.8, 0.0)],
         tp, "channel with obstacles: a = (1, 1.5)")
log.info("wrote %s", outdir)
