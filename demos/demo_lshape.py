# # Different mobilities on an L-shaped domain (Remark 1.9)
#
# Uniqueness of weak solutions of (1.1) is proved when all species share one mobility
# (Theorem 1.8); with different mobilities `b_1 != b_2` it is open (Remark 1.9). This demo runs
# that open case on an L-shaped domain with a re-entrant corner: species 1 is a patch of cells
# near the corner, species 2 a Gaussian in the upper-left arm, four times as mobile. With
# little linear diffusion the two stay nearly segregated; we follow their overlap
# `int rho_1 rho_2 dx` (small for segregated species), the masses and the energy.
#
#     .venv/bin/python demos/demo_lshape.py [OUTDIR]
#     .venv/bin/mpiexec -n 2 .venv/bin/python demos/demo_lshape.py
#
# With the `CI` environment variable set, a coarse mesh and a short time are used. Outputs
# (in `output/lshape/`): `rho.bp` (VTX), `diagnostics.csv`, `overlap.csv`, `densities.png`.

# +
import csv
import os
import sys
from pathlib import Path

import numpy as np
import ufl

from fem_crossdiff import MPI, CrossDiffusionSolver, ModelParams, TimeParams, fem, meshes
from fem_crossdiff.log import demo_options, get_logger
from fem_crossdiff.plotting import plot_species_snapshots

comm = MPI.COMM_WORLD
log = get_logger(comm)
short = bool(os.environ.get("CI"))
outdir, progress = demo_options(sys.argv[1:], "output/lshape")  # [outdir] [--quiet]
outdir = Path(outdir)
# -

# ## Geometry, model, initial data
# The L-shape is the unit square minus its top-right quarter; the re-entrant corner is at
# (0.5, 0.5).

geo = meshes.l_shape(comm, size=1.0, cut=0.5, h=0.08 if short else 0.02)
params = ModelParams(a=(1.0, 1.0), b=(1.0, 4.0), m=2.0, sigma=1e-4)
assert not params.equal_mobilities  # the open case of Remark 1.9
T = 0.01 if short else 0.5
time_params = TimeParams(T=T, dt=1e-3, method="bdf2", adaptive=True, dt_max=0.01, grow=1.2)


def patch(x):
    return np.where((x[0] - 0.35) ** 2 + (x[1] - 0.35) ** 2 < 0.12**2, 1.0, 0.0)


def gaussian(x):
    return np.exp(-((x[0] - 0.15) ** 2 + (x[1] - 0.8) ** 2) / (2 * 0.08**2)) + 0.01


solver = CrossDiffusionSolver(geo.mesh, params)
solver.set_initial([patch, gaussian])

# ## Overlap of the two species
# `int rho_1 rho_2 dx` is compiled once and evaluated after every step.

overlap_form = fem.form(solver.rho[0] * solver.rho[1] * ufl.dx)


def overlap():
    return comm.allreduce(fem.assemble_scalar(overlap_form), op=MPI.SUM)


overlaps = [(0.0, overlap())]
snap_times = list(np.linspace(0, T, 4)[1:])
snapshots = [(0.0, [solver.species(k) for k in range(2)])]


def monitor(s, row):
    overlaps.append((s.t, overlap()))
    if snap_times and s.t >= snap_times[0] - 1e-12:
        snapshots.append((s.t, [s.species(k) for k in range(2)]))
        while snap_times and s.t >= snap_times[0] - 1e-12:
            snap_times.pop(0)


rows = solver.run(time_params, csv_path=outdir / "diagnostics.csv", vtx_path=outdir / "rho.bp",
                  output_every=5, callback=monitor, progress=progress)
plot_species_snapshots(snapshots, outdir / "densities.png",
                       title="L-shape, b = (1, 4): uniqueness open (Remark 1.9)")
if comm.rank == 0:
    with open(outdir / "overlap.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t", "overlap"])
        w.writerows(overlaps)

# ## What to check
# Masses are conserved to round-off, densities stay nonnegative, the energy decreases; the
# overlap stays well below `m_1 m_2 / |Omega|` (the value for fully mixed species).

first, last = rows[0], rows[-1]
drift = max(abs(last[f"mass_{k}"] / first[f"mass_{k}"] - 1) for k in (1, 2))
mixed = first["mass_1"] * first["mass_2"] / geo.volume_exact
log.info("steps %d, mass drift %.2e, energy %.5f -> %.5f, overlap / mixed %.3f -> %.3f",
         len(rows) - 1, drift, first["energy"], last["energy"], overlaps[0][1] / mixed,
         overlaps[-1][1] / mixed)
log.info("wrote %s", outdir)
