"""Tests of the mollification operator ``f -> V^eps * f`` (fem_crossdiff.mollify).

Every assertion is on globally reduced numbers, so the file runs unchanged serially and under
``mpiexec -n 2``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.spatial import cKDTree

from fem_crossdiff.compat import MPI, fem, mesh
from fem_crossdiff.errors import ParameterError
from fem_crossdiff.laws import PowerLaw
from fem_crossdiff.models.nonlocal_system import NonlocalParams
from fem_crossdiff.models.nonlocal_system.potential import NonlocalPotential
from fem_crossdiff.mollifiers import get_mollifier
from fem_crossdiff.mollify import MollificationOperator, composite_quadrature
from fem_crossdiff.params import ModelParams


def _square(comm, n, cell=mesh.CellType.triangle, L=1.0):
    return mesh.create_rectangle(comm, [[-L, -L], [L, L]], [n, n], cell)


def _owned_coords(V):
    n = V.dofmap.index_map.size_local
    return V.tabulate_dof_coordinates()[:n, : V.mesh.geometry.dim], n


def _gmax(comm, values):
    return comm.allreduce(float(np.max(values, initial=0.0)), op=MPI.MAX)


def _gsum(comm, value):
    return comm.allreduce(value, op=MPI.SUM)


def test_composite_quadrature_exact_and_positive():
    import basix

    # x^4 y^3 (z^2) has degree 7 (9): integrated exactly by degree-9 sub-rules; exact values
    # from the Dirichlet/Beta integrals.
    exact = {basix.CellType.triangle: 24 * 6 / 362880, basix.CellType.quadrilateral: 1 / 20,
             basix.CellType.tetrahedron: 24 * 6 * 2 / 479001600}
    for cell, val in exact.items():
        for r in (1, 2, 3):
            X, w = composite_quadrature(cell, 9, r)
            f = X[:, 0] ** 4 * X[:, 1] ** 3 * (X[:, 2] ** 2 if X.shape[1] == 3 else 1.0)
            assert abs(f @ w - val) < 1e-13 * val
            assert np.all(w > 0)


# Measured quadrature defects at interior nodes (eps = 4h): 1D with 4 subdivisions <= 4e-9;
# 2D triangles/quads with 2 subdivisions: bump <= 2.2e-7, poly4 <= 1.6e-8 (P1 and P2).
_TOL = {(1, "bump"): 1e-8, (1, "poly4"): 1e-8, (2, "bump"): 1e-6, (2, "poly4"): 5e-8}


@pytest.mark.parametrize("kernel", ["bump", "poly4"])
@pytest.mark.parametrize(("case", "degree"), [("interval", 1), ("interval", 2), ("triangle", 1),
                                              ("triangle", 2), ("quadrilateral", 1)])
def test_unit_mass_affine_reproduction_and_wall(comm, kernel, case, degree):
    if case == "interval":
        dim, n, r = 1, 64, 4
        msh = mesh.create_interval(comm, n, [-1.0, 1.0])
    else:
        dim, n, r = 2, 16, 2
        msh = _square(comm, n, getattr(mesh.CellType, case))
    h = 2.0 / n
    eps = 4 * h
    V = fem.functionspace(msh, ("Lagrange", degree))
    op = MollificationOperator(V, eps, kernel, subdivisions=r)
    x, nl = _owned_coords(V)
    tol = _TOL[(dim, kernel)]

    one = fem.Function(V)
    one.x.array[:] = 1.0
    m1 = op(one).x.array[:nl]
    aff = fem.Function(V)
    aff.interpolate(lambda y: 1.0 + 2.0 * y[0] - (0.5 * y[1] if dim == 2 else 0.0))
    ma = op(aff).x.array[:nl]

    dist_wall = np.min(1.0 - np.abs(x), axis=1)
    inner = dist_wall > eps + 1e-12
    assert _gsum(comm, int(inner.sum())) > 0
    # Unit mass and evenness (first moment zero) of the kernel, through the operator.
    assert _gmax(comm, np.abs(m1[inner] - 1.0)) < tol
    assert _gmax(comm, np.abs(ma[inner] - aff.x.array[:nl][inner])) < 3 * tol
    # Zero extension: never more than the full mass, exactly half on a flat wall (even kernel)
    # and a quarter at a right-angled corner.
    assert _gmax(comm, m1 - 1.0) < tol
    on_wall = dist_wall < 1e-12
    n_corner = np.sum(np.abs(x) > 1 - 1e-12, axis=1)
    flat = on_wall & (np.sum(np.abs(x) < 1 - eps - 1e-12, axis=1) == dim - 1)
    assert _gsum(comm, int(flat.sum())) > 0
    assert _gmax(comm, np.abs(m1[flat] - 0.5)) < tol
    if dim == 2:
        corner = n_corner == 2
        assert _gsum(comm, int(corner.sum())) == 4
        assert _gmax(comm, np.abs(m1[corner] - 0.25)) < tol
    # In 1D the mass seen from a node grows monotonically with its distance to the wall.
    if dim == 1:
        order = np.argsort(dist_wall)
        assert comm.allreduce(bool(np.all(np.diff(m1[order]) >= -tol)), op=MPI.LAND)


def test_affine_reproduction_3d(comm):
    # A tiny tetrahedral mesh: eps = 3 edge lengths is below 2 h_max (cube diagonals), so the
    # check is waived with allow_small_eps and must warn.
    msh = mesh.create_box(comm, [[-1.0] * 3, [1.0] * 3], [8, 8, 8])
    V = fem.functionspace(msh, ("Lagrange", 1))
    with pytest.warns(RuntimeWarning, match="allow_small_eps|2\\*h_max"):
        op = MollificationOperator(V, 0.75, "poly4", allow_small_eps=True)
    f = fem.Function(V)
    f.interpolate(lambda y: 1.0 + y[0] - 2.0 * y[1] + 0.5 * y[2])
    g = op(f)
    x, nl = _owned_coords(V)
    inner = np.all(np.abs(x) <= 0.25 + 1e-12, axis=1)
    assert _gsum(comm, int(inner.sum())) == 27
    # Measured 1.2e-6 (degree-9 rule, cut cells dominate).
    assert _gmax(comm, np.abs(g.x.array[:nl] - f.x.array[:nl])[inner]) < 1e-5


@pytest.mark.parametrize("kernel", ["bump", "poly4"])
@pytest.mark.parametrize("dim", [1, 2])
def test_converges_to_identity_like_eps_squared(comm, kernel, dim):
    if dim == 1:
        msh = mesh.create_interval(comm, 400, [-1.0, 1.0])
        epss = np.array([0.05, 0.1, 0.2])
    else:
        msh = _square(comm, 24)
        epss = np.array([0.25, 0.35, 0.5])
    V = fem.functionspace(msh, ("Lagrange", 2))
    f = fem.Function(V)
    f.interpolate(lambda y: np.cos(y[0]) * (np.cos(y[1]) if dim == 2 else 1.0))
    x, nl = _owned_coords(V)
    errs = []
    for eps in epss:
        g = MollificationOperator(V, eps, kernel)(f)
        inner = np.all(np.abs(x) < 1.0 - eps, axis=1)
        errs.append(_gmax(comm, np.abs(g.x.array[:nl] - f.x.array[:nl])[inner]))
    rate = np.polyfit(np.log(epss), np.log(errs), 1)[0]
    assert 1.7 <= rate <= 2.3, (rate, errs)
    # Leading term: V^eps*f - f = eps^2 M2/(2d) Lap f, with |Lap f| = d at the origin, where
    # M2 = int |x|^2 V is computed from the kernel's radial profile.
    kern = get_mollifier(kernel)
    area = 2.0 if dim == 1 else 2.0 * np.pi
    M2 = area * quad(lambda s: s ** (dim + 1) * kern.radial(np.array(s), 1.0, dim), 0, 1)[0]
    assert abs(errs[0] / epss[0] ** 2 / (M2 / 2.0) - 1.0) < 0.05


@pytest.mark.parametrize("dim", [1, 2])
def test_parallel_matches_serial_build(comm, dim):
    eps = 0.8
    if dim == 1:
        make = lambda c: mesh.create_interval(c, 40, [0.0, 1.0])  # noqa: E731
        V_deg = 2
    else:
        make = lambda c: mesh.create_unit_square(c, 16, 16)  # noqa: E731
        V_deg = 1
    expr = lambda y: np.sin(3 * y[0]) + y[1] ** 2 + 0.5  # noqa: E731
    Vw = fem.functionspace(make(comm), ("Lagrange", V_deg))
    Vs = fem.functionspace(make(MPI.COMM_SELF), ("Lagrange", V_deg))
    xw, nw = _owned_coords(Vw)
    # eps must exceed the width of a partition for the exchange to matter.
    width = float(np.min(xw.max(axis=0) - xw.min(axis=0))) if nw else np.inf
    assert eps > comm.allreduce(width, op=MPI.MIN) or comm.size == 1
    gw, gs = [], []
    for V, out in ((Vw, gw), (Vs, gs)):
        f = fem.Function(V)
        f.interpolate(expr)
        op = MollificationOperator(V, eps, "bump")
        out.append(op(f))
        # Several fields at once (dense block) agree with separate applies.
        nloc = V.dofmap.index_map.size_local
        two = op.apply_array(np.stack([f.x.array[:nloc], 2 * f.x.array[:nloc]], axis=1))
        err = np.max(np.abs(two - np.stack([out[0].x.array[:nloc]] * 2, axis=1)
                            * np.array([1.0, 2.0])), initial=0.0)
        assert _gmax(comm, err) < 1e-13
        # A blocked (vector) function is mollified component-wise.
        Vb = fem.functionspace(V.mesh, ("Lagrange", V_deg, (2,)))
        fb, gb = fem.Function(Vb), fem.Function(Vb)
        fb.interpolate(lambda y: np.stack([expr(y), -expr(y)]))
        op.apply_blocked(fb, gb)
        blk = gb.x.array[: 2 * nloc].reshape(nloc, 2)
        err = np.max(np.abs(blk - out[0].x.array[:nloc, None] * np.array([1.0, -1.0])),
                     initial=0.0)
        assert _gmax(comm, err) < 1e-13
    xs, ns = _owned_coords(Vs)
    dist, idx = cKDTree(xs).query(xw)
    assert _gmax(comm, dist) < 1e-12
    diff = np.abs(gw[0].x.array[:nw] - gs[0].x.array[:ns][idx])
    assert _gmax(comm, diff) < 1e-12
    assert _gmax(comm, np.abs(gw[0].x.array[:nw])) > 0.1


def test_mollified_pressure(comm):
    # The nonlocal model's pressure g = K P(S), S = sum_l a_l K rho_l, with P the model's
    # PowerLaw (the only pressure formula), on a state that is not constant.
    msh = _square(comm, 16)
    V = fem.functionspace(msh, ("Lagrange", 1))
    eps, a, m, c = 0.375, (1.0, 2.0), 3.0, (0.3, 0.5)
    params = ModelParams(a=a, b=(1.0, 1.0), m=m)
    pot = NonlocalPotential(V, params, NonlocalParams(eps=eps, kernel="poly4", subdivisions=2))
    assert pot.law == PowerLaw(m)
    x_all = V.tabulate_dof_coordinates()[:, 0]
    rho = np.stack([ck * (1.0 + 0.5 * x_all) for ck in c], axis=1)  # owned + ghost rows
    before = rho.copy()
    g = pot(rho)
    assert np.array_equal(rho, before)  # the state is an input only
    x, nl = _owned_coords(V)
    dist_wall = np.min(1.0 - np.abs(x), axis=1)

    def K(values):
        xv, yv = pot.M.createVecRight(), pot.M.createVecLeft()
        xv.array[:] = values
        pot.M.mult(xv, yv)
        return yv.array.copy()

    S = sum(ak * K(rho[:nl, k]) for k, ak in enumerate(a))
    assert _gmax(comm, np.abs(pot.S - S)) < 1e-14
    assert _gmax(comm, np.abs(g[:nl] - K(S ** (m - 1.0)))) < 1e-13
    # the kernel reproduces affine data (it is even with unit mass) away from the walls
    far = dist_wall > 2 * eps
    S_affine = sum(ak * ck * (1.0 + 0.5 * x[:, 0]) for ak, ck in zip(a, c, strict=True))
    assert _gmax(comm, np.abs(S[far] - S_affine[far])) < 1e-6
    # the raw operator (zero extension) keeps constants farther than eps from the walls
    for k, ck in enumerate(c):
        r = fem.Function(V)
        r.x.array[:] = ck
        assert _gmax(comm, np.abs(pot.op(r).x.array[:nl][dist_wall > eps] - ck)) < 1e-7
    # constants: K 1 = 1 at every node (walls too), so g = S0^(m-1) and the lumped energy
    # is |Omega| S0^m / m
    S0 = a[0] * c[0] + a[1] * c[1]
    const = np.tile(np.asarray(c), (x_all.shape[0], 1))
    g0 = pot(const)
    assert _gmax(comm, np.abs(g0[:nl] - S0 ** (m - 1.0))) < 1e-12
    assert pot.energy(const) == pytest.approx(4.0 * S0**m / m, rel=1e-12)


def test_invalid_input_raises_everywhere(comm):
    msh = _square(comm, 8)
    V = fem.functionspace(msh, ("Lagrange", 1))
    for bad in (0.0, -1.0, float("nan"), float("inf"), "abc"):
        with pytest.raises(ValueError, match="eps"):
            MollificationOperator(V, bad)
    with pytest.raises(ValueError, match="allowed: bump, poly4"):
        MollificationOperator(V, 0.5, "gauss")
    with pytest.raises(ValueError, match="allow_small_eps"):
        MollificationOperator(V, 0.3)  # 2 h_max = 2 * sqrt(2) / 4 = 0.707
    with pytest.raises(ValueError, match="diameter"):
        MollificationOperator(V, 3.0)
    with pytest.raises(ValueError, match="subdivisions"):
        MollificationOperator(V, 1.0, subdivisions=0)
    Vv = fem.functionspace(msh, ("Lagrange", 1, (2,)))
    with pytest.raises(ValueError, match="scalar"):
        MollificationOperator(Vv, 1.0)
    Vd = fem.functionspace(msh, ("DG", 1))
    with pytest.raises(ValueError, match="continuous Lagrange"):
        MollificationOperator(Vd, 1.0)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        MollificationOperator(V, 0.5, allow_small_eps=True)
    assert any("2*h_max" in str(w.message) for w in rec)
    # the pressure's coefficients are refused by the model's parameters, before any operator
    with pytest.raises(ParameterError, match="m must be >= 2"):
        ModelParams(a=(1.0,), b=(1.0,), m=1.5)
    with pytest.raises(ParameterError, match="one mobility per species"):
        ModelParams(a=(1.0, 1.0), b=(1.0,))
    with pytest.raises(ParameterError, match=r"a\[0\] must be > 0"):
        ModelParams(a=(-1.0,), b=(1.0,))


def test_output_space_may_differ(comm):
    # P2 input, P1 output: the P1 result equals the P2 -> P2 result at the shared vertices.
    msh = _square(comm, 12)
    V2 = fem.functionspace(msh, ("Lagrange", 2))
    V1 = fem.functionspace(msh, ("Lagrange", 1))
    f = fem.Function(V2)
    f.interpolate(lambda y: np.exp(y[0]) * (1 + y[1] ** 2))
    g1 = MollificationOperator(V2, 0.5, "poly4", V_out=V1)(f)
    op22 = MollificationOperator(V2, 0.5, "poly4")
    g2 = op22(f)
    assert op22.matrix.getSize() == (V2.dofmap.index_map.size_global,) * 2
    # Compare through point evaluation-free means: the P1 interpolant of the P2 result.
    g2_on_1 = fem.Function(V1)
    g2_on_1.interpolate(g2)
    n1 = V1.dofmap.index_map.size_local
    assert _gmax(comm, np.abs(g1.x.array[:n1] - g2_on_1.x.array[:n1])) < 1e-13
    assert _gmax(comm, np.abs(g1.x.array[:n1])) > 1.0
