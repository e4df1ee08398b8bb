"""fem-crossdiff: multi-species cross-diffusion with volume exclusion on DOLFINx.

Layers, each importing only those before it:

1. the core, numpy only (no DOLFINx, no MPI): :mod:`fem_crossdiff.errors`,
   :mod:`fem_crossdiff.laws`, :mod:`fem_crossdiff.params`, :mod:`fem_crossdiff.mollifiers` and
   the particles' numpy core :mod:`fem_crossdiff.particles`;
2. the finite-element side, through :mod:`fem_crossdiff.compat` (the one place that knows the
   import order and the DOLFINx version details): meshes, models, problem, solver, driver,
   observers, measures, and the particles' mesh bridges;
3. the command line :mod:`fem_crossdiff.cli` on everything.

Importing the package itself stays light; ``import fem_crossdiff.solver`` needs no import-order
step from the user.
"""

__version__ = "0.1.0"
