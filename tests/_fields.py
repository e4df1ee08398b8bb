"""Helpers shared by the solver tests (imported by test modules, not collected)."""

from __future__ import annotations

import numpy as np
import ufl

from fem_crossdiff.compat import MPI, fem


def functionals(s) -> np.ndarray:
    """Partition-independent integrals of every species of a solver, for rank comparisons."""
    x = ufl.SpatialCoordinate(s.msh)
    y = x[1] if s.msh.geometry.dim > 1 else x[0]
    out = []
    for k in range(s.params.n):
        for f in (s.rho[k], s.rho[k] * x[0] ** 2, s.rho[k] ** 2, s.rho[k] * y ** 3):
            out.append(s.comm.allreduce(fem.assemble_scalar(fem.form(f * ufl.dx)), op=MPI.SUM))
    return np.array(out)
