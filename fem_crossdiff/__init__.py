"""fem-crossdiff: multi-species cross-diffusion with volume exclusion on DOLFINx.

Importing the package stays light (no DOLFINx, no MPI): the numpy-only parts such as
:mod:`fem_crossdiff.mollifiers` are shared with the :mod:`particles` package, which must run
without DOLFINx. The solver modules import :mod:`fem_crossdiff.compat` themselves.
"""

__version__ = "0.1.0"
