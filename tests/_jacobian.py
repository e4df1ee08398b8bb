"""The assembled Jacobian of a solver against central differences of its residual."""

import numpy as np

from fem_crossdiff.problem import wrapped_vectors


def fd_jacobian_error(s, eps: float, seed: int) -> float:
    """``|J dx - (F(x + eps dx) - F(x - eps dx)) / (2 eps)| / |...|`` at ``s.rho``.

    ``dx`` is a standard normal direction drawn from ``seed`` over the global vector (the same
    on any number of ranks); ``J`` is the matrix the solver's SNES assembles.
    """
    snes = s.snes
    with wrapped_vectors(s.rho.x) as rho:  # no cached PETSc vector on the Function
        x = rho.copy()
    dx = x.duplicate()
    rng = np.random.default_rng(seed)
    lo, _ = dx.getOwnershipRange()
    dx.array[:] = rng.standard_normal(dx.getSize())[lo:lo + dx.array.size]
    J, P = snes.getJacobian()[:2]
    snes.computeJacobian(x, J, P)
    y = x.duplicate()
    J.mult(dx, y)
    bp, bm = x.duplicate(), x.duplicate()
    snes.computeFunction(x + eps * dx, bp)
    snes.computeFunction(x - eps * dx, bm)
    fd = (bp - bm) / (2 * eps)
    return (y - fd).norm() / fd.norm()
