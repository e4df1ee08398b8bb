# # Nonlocal versus local: the same segregation problem at a few eps
#
# The nonlocal system (1.5) replaces the pressure by `g = V^eps * (sum_l a_l V^eps * rho_l)^(m-1)`.
# Theorem 1.6 says its solutions approach those of the local system (1.1) as `eps -> 0`. Here the
# two-species problem of `demo_segregation.py` is solved on the same gmsh disk with the local
# model and with the nonlocal model (fully implicit coupling) at a few `eps`; the L1 distance
# between them at the final time is written to `distance.csv`, the densities to `nonlocal.png`.
#
#     .venv/bin/python demos/demo_nonlocal.py [output-folder]
#     .venv/bin/mpiexec -n 2 .venv/bin/python demos/demo_nonlocal.py
#
# With the `CI` environment variable set, a coarse mesh and a short time are used.

# +
import csv
import os
import sys
from pathlib import Path

import numpy as np
import ufl

from fem_crossdiff import (
    MPI,
    CrossDiffusionSolver,
    ModelParams,
    NonlocalParams,
    TimeParams,
    fem,
    meshes,
)
from fem_crossdiff.log import demo_options, get_logger
from fem_crossdiff.plotting import plot_species_snapshots

comm = MPI.COMM_WORLD
log = get_logger(comm)
short = bool(os.environ.get("CI"))
outdir, progress = demo_options(sys.argv[1:], "output/nonlocal")  # [outdir] [--quiet]
outdir = Path(outdir)
h = 0.1 if short else 0.035
geo = meshes.disk(comm, radius=1.0, h=h)
params = ModelParams(a=(1.0, 2.0), b=(1.0, 0.5), m=2.0, sigma=1e-3)
T = 0.05 if short else 0.3
time_params = TimeParams(T=T, dt=5e-3, method="ie")
epss = (0.6, 0.45, 0.3) if short else (0.4, 0.25, 0.15, 0.1)
# -


def blob(cx, height):
    def f(x):
        r2 = (x[0] - cx) ** 2 + x[1] ** 2
        return np.where((r2 < 0.4**2) & (np.sign(x[0]) == np.sign(cx)), height, 0.0)
    return f


init = [blob(-0.3, 1.0), blob(0.3, 0.5)]

# ## The local reference

# upwind, the nonlocal model's own scheme: the L1 distances below then measure eps, not the
# difference between the default (muscl) and the upwind scheme
local = CrossDiffusionSolver(geo.mesh, params, scheme="upwind")
local.set_initial(init)
local.run(time_params, csv_path=outdir / "local.csv", progress=progress)

# ## The nonlocal model at a few eps


def l1(s1, s2, k):
    form = fem.form(abs(s1.rho[k] - s2.rho[k]) * ufl.dx)
    return comm.allreduce(fem.assemble_scalar(form), op=MPI.SUM)


table = []
snapshots = [(f"local, t = {T:g}", [local.species(k) for k in range(2)])]
for eps in epss:
    s = CrossDiffusionSolver(geo.mesh, params,
                             nonlocal_params=NonlocalParams(eps=eps, coupling="implicit"))
    s.set_initial(init)
    s.run(time_params, csv_path=outdir / f"nonlocal_eps{eps:g}.csv", progress=progress)
    dist = [l1(s, local, k) for k in range(2)]
    table.append({"eps": eps, "l1_rho1": dist[0], "l1_rho2": dist[1]})
    snapshots.append((f"eps = {eps:g}", [s.species(k) for k in range(2)]))
    log.info("eps = %.3g: L1 distance to local %.3e, %.3e", eps, *dist)

rate = np.polyfit(np.log(epss), np.log([r["l1_rho1"] + r["l1_rho2"] for r in table]), 1)[0]
log.info("fitted rate of the L1 distance in eps: %.2f", rate)
if comm.rank == 0:
    outdir.mkdir(parents=True, exist_ok=True)
    with open(outdir / "distance.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
plot_species_snapshots(snapshots, outdir / "nonlocal.png",
                       title=f"local (first column) and nonlocal at eps = {epss}, t = {T}")
