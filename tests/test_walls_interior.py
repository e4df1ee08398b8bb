"""The default wall treatment is the free-space model (1.5) wherever the walls are out of reach.

``boundary="layer"`` (the default) adds to the symmetrised mollification ``M_s`` a kernel
``F M_s F`` with ``f = 0`` off the wall layer, ``"diagonal-pc"`` a diagonal there; both keep
what remains of ``1 - K 1`` (the quadrature error of ``M_s 1``) on the diagonal. With data
farther than ``2 eps`` from the walls ``g = K P(K rho)`` is then the zero extension's (the
free-space operator's) up to that quadrature error, for a whole run; ``"sinkhorn"`` is not
(its scaling reaches into the interior). ``"diagonal-pc"``'s implicit Jacobian is
``"diagonal"``'s, with the local part moved into the preconditioner, which brings the Krylov
iterations back to those of the zero extension.
"""

from __future__ import annotations

import numpy as np
import pytest

from fem_crossdiff import meshes
from fem_crossdiff.compat import MPI, mesh
from fem_crossdiff.models.nonlocal_system import NonlocalParams
from fem_crossdiff.params import ModelParams, TimeParams
from fem_crossdiff.problem import assemble_jacobian
from fem_crossdiff.solver import CrossDiffusionSolver

COMM = MPI.COMM_WORLD
PARAMS = ModelParams(a=(1.0, 0.5), b=(1.0, 2.0), m=2.0, sigma=0.0)


def _gmax(x) -> float:
    return COMM.allreduce(float(np.max(np.abs(x), initial=0.0)), op=MPI.MAX)


def _bump(centre, radius: float):
    """A smooth bump supported in the ball of ``radius`` (zero, not small, outside)."""
    def f(x):
        r = np.sqrt(sum((x[i] - c) ** 2 for i, c in enumerate(centre)))
        return np.where(r < radius, 0.5 * (1.0 + np.cos(np.pi * r / radius)), 0.0)
    return f


def _run(msh, eps, boundary, init, **nl):
    """``g`` of the initial data and the state after 10 implicit steps, and the solver."""
    s = CrossDiffusionSolver(msh, PARAMS, nonlocal_params=NonlocalParams(
        eps=eps, coupling="implicit", boundary=boundary, **nl))
    s.set_initial(init)
    g0 = s.model.driving_potential(s.rho.x.array.reshape(-1, 2)).copy()
    s.run(TimeParams(T=0.01, dt=1e-3), progress=False)
    return g0, s.rho.x.array.copy(), s


def _interior_defect(pot, dist, eps) -> float:
    """Quadrature error of the free-space operator, ``max |1 - M_s 1|`` beyond ``1.5 eps``.

    With data beyond ``2.5 eps``, ``S`` and ``P(S)`` vanish within ``1.5 eps`` of the walls,
    so ``K - M_s`` only acts through its diagonal beyond ``1.5 eps``: the row-sum defect of
    ``M_s`` there (lumped nodal quadrature in its transpose half, up to 2e-3 on a gmsh disk
    with eps = 3 h).
    """
    one = pot._mollify(np.ones((pot.nown, 1)))[:, 0]  # "zero": M_s itself
    return _gmax((1.0 - one)[dist[: pot.nown] > 1.5 * eps])


CASES = {
    # support [0.25, 0.75]: 2.5 eps from both walls
    "interval": (lambda: mesh.create_interval(COMM, 400, [0.0, 1.0]), 0.1,
                 [_bump((0.5,), 0.25), _bump((0.5,), 0.2)],
                 lambda X: np.minimum(X[:, 0], 1.0 - X[:, 0])),
    # support r < 0.625: 2.5 eps from the circle
    "disk": (lambda: meshes.disk(COMM, radius=1.0, h=0.05).mesh, 0.15,
             [_bump((0.0, 0.0), 0.625), _bump((0.2, 0.0), 0.4)],
             lambda X: 1.0 - np.hypot(X[:, 0], X[:, 1])),
}


def test_default_is_layer():
    """The default treatment is the one the tests below hold to interior exactness."""
    assert NonlocalParams(eps=0.1).boundary == "layer"


@pytest.mark.parametrize("boundary", ["layer", "diagonal-pc"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_default_equals_zero_extension_in_the_interior(case, boundary):
    """Data 2.5 eps from the walls: default == zero extension over a run, to quadrature.

    Measured (relative to the maxima): interval 5e-13 for ``g`` and 1.2e-11 for the state
    after 10 steps (the Newton tolerance), quadrature defect 1e-13; disk 1.7e-5 and 4.1e-6,
    quadrature defect 1.8e-3 (bump kernel, eps = 3 h); the same for both treatments.
    ``"sinkhorn"``: 3.8e-6 and 6.7e-5 on the interval, where the quadrature is exact.
    """
    make, eps, init, distance = CASES[case]
    msh = make()
    g_z, x_z, s = _run(msh, eps, "zero", init)
    g_d, x_d, _ = _run(msh, eps, boundary, init)
    dist = distance(s.V0.tabulate_dof_coordinates())
    quad = _interior_defect(s.model.potential, dist, eps)
    assert quad < 1e-2
    # the data stay out of the walls' reach: the implicit upwind steps spread the support,
    # but what reaches 1.5 eps from a wall stays tiny (measured 1.2e-6 relative on the
    # interval, 1.2e-7 on the disk): its share of the differences is below the bounds
    nown = s.model.potential.nown
    near = np.repeat(dist[:nown] < 1.5 * eps, 2)
    assert _gmax(x_d[: 2 * nown][near]) < 1e-5 * _gmax(x_d)
    # g changes by ~ 2 quad relative (K = M_s + quad on the diagonal, twice), the state by less
    assert _gmax(g_d - g_z) <= (3.0 * quad + 1e-12) * _gmax(g_z)
    assert _gmax(x_d - x_z) <= (3.0 * quad + 1e-9) * _gmax(x_z)
    if case == "interval" and boundary == "layer":  # exact quadrature: Sinkhorn's reach shows
        g_s, x_s, _ = _run(msh, eps, "sinkhorn", init)
        assert _gmax(g_s - g_z) > 1e-7 * _gmax(g_z)
        assert _gmax(x_s - x_z) > 1e3 * _gmax(x_d - x_z)


def _jacobian_action(boundary, msh, init, x_dir):
    """``J x`` of the implicit coupling at the initial state, and the assembled ``P``."""
    s = CrossDiffusionSolver(msh, PARAMS, linear_solver="iterative", nonlocal_params=(
        NonlocalParams(eps=0.3, coupling="implicit", boundary=boundary)))
    s.set_initial(init)
    pb = s.problem
    x = pb.b.duplicate()  # ghosted, as the SNES state
    x.array[:] = s.rho.x.array[: x.getLocalSize()]
    assemble_jacobian(pb._data, s.snes, x, pb._shell, pb.A)
    d = x.duplicate()
    d.array[:] = x_dir[: d.getLocalSize()]
    y = x.duplicate()
    pb._shell.mult(d, y)
    py = x.duplicate()
    pb.A.mult(d, py)
    return y.array.copy(), py.array.copy()


def test_local_part_moves_into_the_preconditioner_only():
    """``"diagonal-pc"`` and ``"diagonal"`` apply the same Jacobian; only ``P`` differs."""
    msh = meshes.disk(COMM, radius=1.0, h=0.1).mesh
    init = [lambda x: 0.2 + np.where(x[0] > 0.5, 0.8, 0.0),
            lambda x: 0.1 + np.where(x[1] > 0.3, 0.6, 0.0)]
    rng = np.random.default_rng(7 + COMM.rank)
    x_dir = rng.standard_normal(10 ** 6)
    J_pc, P_pc = _jacobian_action("diagonal-pc", msh, init, x_dir)
    J_d, P_d = _jacobian_action("diagonal", msh, init, x_dir)
    scale = _gmax(J_d)
    assert scale > 0
    assert _gmax(J_pc - J_d) < 1e-12 * scale
    # the local part is there: P differs, at the wall nodes, by a sizeable share of J
    assert _gmax(P_pc - P_d) > 1e-2 * scale


def test_krylov_iterations_like_zero_extension():
    """Implicit steps with mass cut by the wall: Krylov iterations within 1.3x zero extension's.

    Disk h = 0.06, eps = 0.15, the two bumps of ``demos/study_walls.py``, 5 steps of 5e-3,
    GMRES + GAMG; measured (serial) zero 40, sinkhorn 44, layer 45, diagonal-pc 43, and 232
    for ``"diagonal"`` (diagonal-pc's operator, local part not in the preconditioner).
    """
    msh = meshes.disk(COMM, radius=1.0, h=0.06).mesh
    p = ModelParams(a=(1.0, 2.0), b=(1.0, 0.5), m=2.0, sigma=0.01)
    init = [_raised_cosine((0.75, 0.0), 0.45, 2.0), _raised_cosine((0.45, 0.45), 0.45, 1.5)]
    its = {}
    for b in ("zero", "layer", "diagonal-pc", "diagonal"):
        s = CrossDiffusionSolver(msh, p, linear_solver="iterative", nonlocal_params=(
            NonlocalParams(eps=0.15, coupling="implicit", boundary=b)))
        s.set_initial(init)
        k = 0
        for _ in range(5):
            info = s.step(5e-3)
            assert info.accepted, (b, info)
            k += info.krylov_its
        its[b] = k
    assert its["layer"] <= 1.3 * its["zero"], its
    assert its["diagonal-pc"] <= 1.3 * its["zero"], its
    assert its["diagonal"] > 3 * its["diagonal-pc"], its


def _raised_cosine(centre, width, height):
    """``height (1 + cos(pi r / width)) / 2`` for ``r < width`` (cut by the wall here)."""
    def f(x):
        r = np.hypot(x[0] - centre[0], x[1] - centre[1])
        return np.where(r < width, 0.5 * height * (1.0 + np.cos(np.pi * r / width)), 0.0)
    return f
