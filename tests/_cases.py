"""Test cases shared by the scheme tests: meshes, fronts and the positivity-and-mass run."""

import numpy as np

from fem_crossdiff.compat import MPI, mesh
from fem_crossdiff.params import TimeParams


def unit_mesh(dim, n, lo=0.0, hi=1.0, comm=MPI.COMM_WORLD):
    """``[lo, hi]`` with ``n`` cells (1D) or ``[lo, hi]^2`` with ``n x n`` triangle pairs."""
    if dim == 1:
        return mesh.create_interval(comm, n, [lo, hi])
    return mesh.create_rectangle(comm, [[lo, lo], [hi, hi]], [n, n], mesh.CellType.triangle)


def fronts(x):
    """Two species with compact supports meeting at a front near x = 0.5."""
    return [np.where(x[0] < 0.45, 1.0, 0.0), np.where(x[0] > 0.5, 0.6, 0.0) + 0.0 * x[1]]


def assert_positive_conservative_on_fronts(s, tol=1e-10):
    """Ten implicit-Euler steps from :func:`fronts`: none rejected, min >= -tol max, mass to tol.

    ``tol`` is the Newton tolerance: the exact discrete solution of a positive scheme is >= 0
    and conserves mass exactly.
    """
    s.set_initial([lambda x: fronts(x)[0], lambda x: fronts(x)[1]])
    rows = s.run(TimeParams(T=0.02, dt=0.002), progress=False)
    assert len(rows) == 11  # nothing rejected
    for r in rows:
        for k in (1, 2):
            assert r[f"min_{k}"] >= -tol * r[f"max_{k}"], (r["t"], k, r[f"min_{k}"])
            assert abs(r[f"mass_{k}"] - rows[0][f"mass_{k}"]) <= tol * rows[0][f"mass_{k}"]
