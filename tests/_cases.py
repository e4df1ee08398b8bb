"""Test cases shared by the scheme tests: meshes, fronts and the positivity-and-mass run."""

import numpy as np

from fem_crossdiff.compat import MPI, mesh
from fem_crossdiff.params import ModelParams, TimeParams
from fem_crossdiff.solver import CrossDiffusionSolver


def unit_mesh(dim, n, lo=0.0, hi=1.0, comm=MPI.COMM_WORLD):
    """``[lo, hi]`` with ``n`` cells (1D) or ``[lo, hi]^2`` with ``n x n`` triangle pairs."""
    if dim == 1:
        return mesh.create_interval(comm, n, [lo, hi])
    return mesh.create_rectangle(comm, [[lo, lo], [hi, hi]], [n, n], mesh.CellType.triangle)


#: Where the data of :func:`fronts` jump: between the nodes of the meshes they are used on
#: (12 and 40 cells per unit length). A jump at a node would give that node either value
#: depending on the last bit of the interpolation point computed there, which differs with
#: the cell and the partition (measured: species 2 of mass 0.3229 on one rank, 0.3 on two).
FRONTS = (0.4375, 0.52)


def fronts(x):
    """Two species with compact supports meeting at fronts near x = 0.5.

    Raises:
        ValueError: a point of ``x`` (the mesh nodes) lies on a jump (see :data:`FRONTS`).
    """
    gap = np.min(np.abs(x[0][:, None] - np.array(FRONTS)), initial=np.inf)
    if gap < 1e-6:
        raise ValueError(f"a node at {gap:.1e} from a jump of fronts(): move FRONTS off the mesh "
                         "nodes")
    return [np.where(x[0] < FRONTS[0], 1.0, 0.0),
            np.where(x[0] > FRONTS[1], 0.6, 0.0) + 0.0 * x[1]]


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


def assert_equal_mobilities_energy_and_reduction(msh, scheme, **options):
    """Equal mobilities from :func:`fronts`: energy decrease and the one-species reduction.

    The energy decreases at every step, and ``u = sum_k a_k rho_k`` is the one-species
    solution of the same scheme to 1e-9.

    A scheme with one face fraction correction for all species keeps ``sum_k a_k c_k,f = 1``,
    so the two-species fluxes sum exactly to the one-species ones (Theorem 1.8's reduction).
    ``options`` go to both solvers (``limiter=...``).
    """
    p = ModelParams(a=(1.0, 2.0), b=(0.7, 0.7), m=2.0, sigma=0.0)
    s = CrossDiffusionSolver(msh, p, scheme=scheme, linear_solver="direct", **options)
    s.set_initial([lambda x: fronts(x)[0], lambda x: fronts(x)[1]])
    tp = TimeParams(T=0.02, dt=0.002)
    rows = s.run(tp, progress=False)
    energy = np.array([r["energy"] for r in rows])
    assert np.all(np.diff(energy) < 0.0), np.diff(energy)
    one = CrossDiffusionSolver(msh, ModelParams(a=(1.0,), b=(0.7,), m=2.0, sigma=0.0),
                               scheme=scheme, linear_solver="direct", **options)
    one.set_initial([lambda x: fronts(x)[0] + 2.0 * fronts(x)[1]])
    one.run(tp, progress=False)
    u = s.rho.x.array.reshape(-1, 2) @ np.array(p.a)
    diff = msh.comm.allreduce(float(np.abs(u - one.rho.x.array).max()), op=MPI.MAX)
    assert diff < 1e-9, diff
