# # Tumour growth: proliferating and quiescent cells under pressure-limited growth
#
# A member of the volume-exclusion family beyond the paper's system (1.1): each species
# grows with a law of the common pressure, `d_t rho_k = div(b_k rho_k grad P) + sigma_k Lap
# rho_k + rho_k G_k(P)`, `P = rho_1 + rho_2` (m = 2). Proliferating cells (species 1) divide
# until the pressure reaches `P_M = 1` (`G_1 = 2 (1 - P)`); quiescent cells (species 2) grow
# slowly and die where the pressure exceeds 0.6 (`G_2 = 0.5 (1 - P / 0.6)`). The study is the
# TOML file `demos/tumour_growth.toml` (its `[family]` section holds the growth laws); this
# script runs it exactly as `crossdiff run` would and plots the populations' masses.
#
#     .venv/bin/python demos/demo_tumour_growth.py
#     .venv/bin/mpiexec -n 2 .venv/bin/python demos/demo_tumour_growth.py
#
# With `CI` set the study's `[short]` mode is used (coarse mesh, short time). Outputs (in
# `output/tumour_growth/`): what the study writes (`diagnostics.csv`, `densities.png`,
# `diagnostics.png`, `animation.gif`) and `growth.png`, the masses over time.

# +
import sys
from pathlib import Path

import fem_crossdiff as fx
from fem_crossdiff.log import demo_options
from fem_crossdiff.plotting import save_figure

comm = fx.MPI.COMM_WORLD
outdir, progress = demo_options(sys.argv[1:], "output/tumour_growth")  # [outdir] [--quiet]
study = fx.load_study(Path(__file__).with_name("tumour_growth.toml"), comm=comm)
# -

# ## Run
# The growth term is implicit where it removes cells and explicit where it adds them, so the
# densities stay nonnegative at any step; the masses are no longer conserved, they follow the
# growth laws.

result = study.run(output=outdir, overwrite=True, quiet=not progress)
rows = result.rows

# ## The populations over time
# The proliferating mass grows until the core reaches the homeostatic pressure and only the
# rim keeps growing; the quiescent population dies in the crowded core.

if comm.rank == 0:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    t = [r["t"] for r in rows]
    for k, name in ((1, "proliferating"), (2, "quiescent")):
        ax.plot(t, [r[f"mass_{k}"] for r in rows], label=name)
    ax.set_xlabel("t")
    ax.set_ylabel("mass")
    ax.legend()
    ax.set_title(study.config.title)
    save_figure(fig, Path(outdir) / "growth.png")
    print(f"masses at t = {rows[-1]['t']:.3g}: " + ", ".join(
        f"{rows[-1][f'mass_{k}']:.4g} (from {rows[0][f'mass_{k}']:.4g})" for k in (1, 2)))
