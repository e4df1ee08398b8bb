"""Negative-weight edges on tetrahedra: ``"voronoi"`` (the default) and ``"front"``.

A gmsh ball is not Delaunay: about a fifth of its edges have negative P1 stiffness weights.
``"voronoi"`` replaces the weights by those of the circumcentric dual (nonnegative on Delaunay
meshes); ``"front"`` keeps P1's and limits the fluxes of negative edges only next to vacuum
(:func:`fem_crossdiff.discretisation.edges.positivity_limiter` with ``beta = 1/4``); both limit
the fluxes of the negative edges that remain.
"""

from __future__ import annotations

import numpy as np
import pytest
import ufl
from _fields import functionals

from fem_crossdiff import meshes
from fem_crossdiff.compat import MPI, fem, la
from fem_crossdiff.config import ConfigError, parse_config
from fem_crossdiff.discretisation.edges import (
    LIMITER_RATIO,
    circumcentric_weights,
    dual_volumes,
    limiter_ratio,
    p1_edge_weights,
    positivity_limiter,
    total_edge_weights,
)
from fem_crossdiff.discretisation.forms import VERTEX
from fem_crossdiff.errors import ParameterError
from fem_crossdiff.exact import barenblatt
from fem_crossdiff.models.upwind import UpwindFlux
from fem_crossdiff.params import ModelParams, TimeParams
from fem_crossdiff.solver import CrossDiffusionSolver

COMM = MPI.COMM_WORLD


@pytest.fixture(scope="module")
def ball():
    """A coarse gmsh ball (h = 0.25, ~350 vertices, a quarter of the edges negative)."""
    return meshes.ball(COMM, radius=1.0, h=0.25)


def _barenblatt(x, tau):
    """The 3D Barenblatt profile (m = 2) with support radius 0.53 at ``tau = 1/2``."""
    return barenblatt(x, tau, 2.0, d=3, C=0.0185)


def test_front_limiter_values_and_derivatives():
    """With beta = 1/4: the full flux up to a density ratio 4, then ratio / beta, 0 from vacuum."""
    assert limiter_ratio("front") == 0.25 and limiter_ratio("limit") == 1.0
    assert limiter_ratio("voronoi") == 0.25
    assert limiter_ratio("keep") == 0.0 and limiter_ratio("drop") == 0.0
    q = np.array([[-1.0], [-1.0], [-1.0], [1.0], [-1.0], [-1.0]])  # q < 0: mass leaves i
    ri = np.array([[2.0], [1.0], [1.0], [1.0], [0.0], [-0.5]])
    rj = np.array([[1.0], [3.0], [8.0], [8.0], [3.0], [1.0]])
    theta, d_i, d_j = positivity_limiter(q, ri, rj, beta=0.25)
    np.testing.assert_allclose(theta.ravel(), [1.0, 1.0, 0.5, 1.0, 0.0, 0.0])
    old, _, _ = positivity_limiter(q, ri, rj)  # beta = 1: the "limit" mode
    np.testing.assert_allclose(old.ravel(), [1.0, 1.0 / 3, 0.125, 1.0, 0.0, 0.0])
    # derivatives against central differences where theta is smooth (rows 0-3)
    h = 1e-7
    for d, shift in ((d_i, (h, 0.0)), (d_j, (0.0, h))):
        tp, _, _ = positivity_limiter(q, ri + shift[0], rj + shift[1], beta=0.25)
        tm, _, _ = positivity_limiter(q, ri - shift[0], rj - shift[1], beta=0.25)
        np.testing.assert_allclose(d[:4], ((tp - tm) / (2 * h))[:4], atol=1e-6)
    np.testing.assert_allclose(d_i[2], [1.0 / 2.0])  # d(rho_s / (beta rho_o)) / d rho_s
    np.testing.assert_allclose(d_j[2], [-1.0 / 16.0])


def _interior(V):
    """Local nodes strictly inside the unit ball (the sphere's nodes have |x| = 1)."""
    X = V.tabulate_dof_coordinates()
    return np.linalg.norm(X, axis=1) < 1.0 - 1e-6


def test_circumcentric_weights_regular_tetrahedron():
    """One regular tetrahedron: every dual piece is the P1 weight (1/6 here), volumes |T|/4."""
    from fem_crossdiff.compat import mesh as dmesh

    x = np.array([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    cells = np.array([[0, 1, 2, 3]], dtype=np.int64) if MPI.COMM_SELF.rank == 0 else None
    import basix.ufl

    el = basix.ufl.element("Lagrange", "tetrahedron", 1, shape=(3,))
    msh = dmesh.create_mesh(MPI.COMM_SELF, cells, el, x)
    V = fem.functionspace(msh, ("Lagrange", 1))
    I, J, W, vol = circumcentric_weights(V)
    _, _, Wp1 = p1_edge_weights(V)
    np.testing.assert_allclose(W, np.full(6, 1.0 / 6.0), rtol=1e-12)
    np.testing.assert_allclose(W, Wp1, rtol=1e-12)
    np.testing.assert_allclose(vol, np.full(4, 8.0 / 3.0 / 4.0), rtol=1e-12)  # |T| = 8/3


@pytest.fixture(scope="module")
def delaunay_ball():
    """The same ball meshed with gmsh's Delaunay tetrahedra and no optimiser."""
    return meshes.ball(COMM, radius=1.0, h=0.25, delaunay=True)


def test_circumcentric_weights_on_a_delaunay_ball(delaunay_ball):
    """Nonnegative dual weights where P1's are negative, a closed dual, a partition of the ball.

    On the Delaunay ball about a fifth of the P1 weights are negative and at most 1% of the
    circumcentric ones (boundary edges whose cells have their circumcentre outside); every
    interior node's dual cell closes (``sum_j w_ij (x_j - x_i) = 0``) and the dual volumes
    add up to the mesh volume.
    """
    V = fem.functionspace(delaunay_ball.mesh, ("Lagrange", 1))
    I, J, W, vol = circumcentric_weights(V)
    Ip, Jp, Wp = p1_edge_weights(V)
    np.testing.assert_array_equal(I, Ip)
    np.testing.assert_array_equal(J, Jp)
    fractions = []
    for w in (W, Wp):
        total = total_edge_weights(V, I, J, w)
        owned = I < V.dofmap.index_map.size_local
        neg = COMM.allreduce(int(np.count_nonzero((total < 0.0) & owned)))
        fractions.append(neg / COMM.allreduce(int(np.count_nonzero(owned))))
    assert fractions[1] > 0.15 and fractions[0] < 0.01
    ones = fem.Function(V)
    ones.x.array[:] = 1.0
    volume = COMM.allreduce(fem.assemble_scalar(fem.form(ones * ufl.dx)), op=MPI.SUM)
    # vol holds the pieces of this rank's owned cells (at owned and ghost nodes)
    np.testing.assert_allclose(COMM.allreduce(float(vol.sum()), op=MPI.SUM), volume, rtol=1e-12)
    if COMM.size == 1:  # the first moment closes only with the weights of all cells
        X = V.tabulate_dof_coordinates()
        lin = np.zeros((X.shape[0], 3))
        for g in range(3):
            np.add.at(lin[:, g], I, W * (X[J, g] - X[I, g]))
            np.add.at(lin[:, g], J, W * (X[I, g] - X[J, g]))
        inner = _interior(V)
        assert np.abs(lin[inner]).max() < 1e-12 * np.abs(W).max()


def test_dual_volumes_partition_and_rank_invariance(ball):
    """Dual volumes summed over ranks: positive, a partition of the ball, partition independent.

    On all ranks and on one rank (matched by vertex coordinates) they agree to round-off;
    every one lies within a factor 3 of P1's lumped mass (measured: 0.6 to 2.8 on gmsh balls).
    """
    V = fem.functionspace(ball.mesh, ("Lagrange", 1))
    vol = dual_volumes(V)
    lumped = fem.assemble_vector(fem.form(ufl.TestFunction(V) * ufl.dx(metadata=VERTEX)))
    lumped.scatter_reverse(la.InsertMode.add)
    nown = V.dofmap.index_map.size_local
    ratio = vol / lumped.array[:nown]
    assert COMM.allreduce(float(ratio.min(initial=np.inf)), op=MPI.MIN) > 1.0 / 3.0
    assert COMM.allreduce(float(ratio.max(initial=0.0)), op=MPI.MAX) < 3.0
    volume = COMM.allreduce(float(lumped.array[:nown].sum()), op=MPI.SUM)
    np.testing.assert_allclose(COMM.allreduce(float(vol.sum()), op=MPI.SUM), volume,
                               rtol=1e-12)
    out = []
    for comm in (COMM, MPI.COMM_SELF):
        Vc = fem.functionspace(meshes.ball(comm, radius=1.0, h=0.3).mesh, ("Lagrange", 1))
        own = Vc.dofmap.index_map.size_local
        X = np.concatenate(COMM.allgather(Vc.tabulate_dof_coordinates()[:own]))
        v = np.concatenate(COMM.allgather(dual_volumes(Vc)))
        if comm is MPI.COMM_SELF:  # every rank holds the whole serial mesh: take rank 0's
            X, v = X[: X.shape[0] // COMM.size], v[: v.size // COMM.size]
        order = np.lexsort(np.round(X, 10).T)
        out.append((X[order], v[order]))
    np.testing.assert_allclose(out[0][0], out[1][0], atol=1e-12)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-10)


def test_front_is_the_consistent_scheme_where_data_vary_slowly(ball):
    """Slowly varying data: "front" is exactly the consistent scheme, "limit" is not.

    With ``S^2`` linear (m = 2, sigma = 0) the consistent weights give a zero residual at
    interior nodes (P1 reproduces linear functions: ``sum_j w_ij (x_j - x_i) = 0``); "front"
    keeps that (density ratios below 4), "limit" does not (its O(1) truncation error).
    """
    V = fem.functionspace(ball.mesh, ("Lagrange", 1, (1,)))
    p = ModelParams(a=(1.0,), b=(1.0,), m=2.0, sigma=0.0)
    X = V.tabulate_dof_coordinates()
    rho = np.sqrt(1.0 + 0.6 * X[:, 0] + 0.3 * X[:, 1])[:, None]  # S^2 / 2 = F's potential
    inner = _interior(V)
    owned = np.arange(X.shape[0]) < V.dofmap.index_map.size_local
    out = {}
    for mode in ("keep", "front", "limit"):
        flux = UpwindFlux(V, p, mode)
        assert flux.negative_edges > 0
        R = flux.residual(rho)[:, 0]
        # the edge residual of owned nodes is complete only after the reverse scatter, so
        # compare nodes whose edges are all local: interior nodes with every cell owned here
        scale = COMM.allreduce(float(np.abs(flux.W).max()), op=MPI.MAX)
        out[mode] = R, scale
    # sum_j w_ij (x_j - x_i) = 0 (the first moment; weights summed over this rank's cells)
    flux = UpwindFlux(V, p, "keep")
    lin = np.zeros((X.shape[0], 3))
    for g in range(3):
        np.add.at(lin[:, g], flux.I, flux.W * (X[flux.J, g] - X[flux.I, g]))
        np.add.at(lin[:, g], flux.J, flux.W * (X[flux.I, g] - X[flux.J, g]))
    if COMM.size == 1:  # partial weights on several ranks: the sums close only serially
        assert np.abs(lin[inner & owned]).max() < 1e-12 * out["keep"][1]
        R_keep, scale = out["keep"]
        assert np.abs(R_keep[inner]).max() < 1e-12 * scale
        np.testing.assert_array_equal(out["front"][0], R_keep)
        assert np.abs(out["limit"][0][inner]).max() > 1e-3 * scale
    else:  # rank by rank the edge fluxes of "front" and "keep" still coincide
        np.testing.assert_array_equal(out["front"][0], out["keep"][0])


@pytest.mark.parametrize("scheme,mode", [("upwind", "front"), ("muscl", "front"),
                                         ("upwind", "voronoi"), ("muscl", "voronoi")])
def test_positivity_and_mass_on_a_3d_front(ball, delaunay_ball, scheme, mode):
    """Two segregated species on the ball (default mode) stay >= 0 with exact masses.

    Every step is accepted, and the limiter really acts (some theta strictly in (0, 1)): on
    a quarter of the edges for "front", on the few negative dual weights for "voronoi".
    """
    p = ModelParams(a=(1.0, 2.0), b=(1.0, 0.5), m=2.0, sigma=0.0)
    # muscl: positive for the exact nonlinear solution; its Newton iterates stop at -3e-10 of
    # the maximum ("limit": -8e-11), so its bound is the solver's default tolerance
    tol = 1e-12 if scheme == "upwind" else 1e-9
    msh = (ball if mode == "front" else delaunay_ball).mesh
    s = CrossDiffusionSolver(msh, p, scheme=scheme, positivity_tol=tol, negative_edges=mode)
    flux = s.model.flux
    assert flux.negative_edges > 0 and flux.beta == LIMITER_RATIO[mode]
    s.set_initial([lambda x: np.where(x[0] < -0.1, 1.0, 0.0),
                   lambda x: np.where(x[0] > 0.1, 0.5, 0.0)])
    rows = s.run(TimeParams(T=0.05, dt=0.01), progress=False)
    assert len(rows) == 6 and all(r["rejected"] == 0 for r in rows)
    for r in rows:
        for k in (1, 2):
            assert r[f"min_{k}"] >= -tol * r[f"max_{k}"]
            assert abs(r[f"mass_{k}"] - rows[0][f"mass_{k}"]) <= 1e-10 * rows[0][f"mass_{k}"]
    _, state = flux.edge_state(s.rho.x.array.reshape(-1, 2))
    theta = state.lim[0]  # the limiter's theta on the negative edges
    active = COMM.allreduce(int(np.count_nonzero((theta > 0.0) & (theta < 1.0))))
    assert active > 0


@pytest.mark.parametrize("mode", ["front", "voronoi"])
def test_rank_invariance(mode):
    """Two steps on all ranks and on one rank agree to 1e-8."""
    p = ModelParams(a=(1.0, 2.0), b=(1.0, 0.5), m=2.0, sigma=0.0)
    out = []
    for comm in (COMM, MPI.COMM_SELF):
        geo = meshes.ball(comm, radius=1.0, h=0.3, delaunay=mode == "voronoi")
        s = CrossDiffusionSolver(geo.mesh, p, negative_edges=mode)
        s.set_initial([lambda x: _barenblatt(x, 0.5), lambda x: np.where(x[0] > 0.2, 0.3, 0.0)])
        for _ in range(2):
            assert s.step(0.02, "ie").accepted
        out.append(functionals(s))
    np.testing.assert_allclose(out[0], out[1], rtol=1e-8, atol=1e-10)


def test_bad_negative_edges(ball):
    """API and TOML: a clear error naming the key, the value and the allowed modes."""
    p = ModelParams(a=(1.0,), b=(1.0,))
    with pytest.raises(ParameterError, match=r"negative_edges = 'fronts': one of voronoi, "
                                             r"front, limit, drop, keep"):
        CrossDiffusionSolver(ball.mesh, p, negative_edges="fronts")
    doc = {"model": {"a": [1.0], "b": [1.0]}, "geometry": {"builder": "ball", "h": 0.3},
           "initial": [{"profile": "uniform", "value": 1.0}], "time": {"T": 0.1, "dt": 0.01}}
    assert parse_config(doc).solver.negative_edges == "voronoi"
    with pytest.raises(ConfigError, match=r"solver\.negative_edges = 'fronts': must be one "
                                          r"of 'voronoi', 'front', 'limit'"):
        parse_config({**doc, "solver": {"negative_edges": "fronts"}})


def _barenblatt_3d(h: float, mode: str) -> tuple[float, float]:
    """Relative L1 error at t = 1 (from tau = 1/2, IE, dt = h / 4) and the smallest min/max."""
    geo = meshes.ball(COMM, h=h)
    s = CrossDiffusionSolver(geo.mesh, ModelParams(a=(1.0,), b=(1.0,), m=2.0, sigma=0.0),
                             negative_edges=mode, positivity_tol=1e-12)
    s.set_initial([lambda x: _barenblatt(x, 0.5)])
    mins = []
    s.run(TimeParams(T=1.0, dt=h / 4), progress=False,
          callback=lambda sv, row: mins.append(row["min_1"] / row["max_1"]))
    ex = fem.Function(s.V0)
    ex.interpolate(lambda x: _barenblatt(x, 1.0))
    err, ref = (COMM.allreduce(fem.assemble_scalar(fem.form(f * ufl.dx)), op=MPI.SUM)
                for f in (abs(s.rho[0] - ex), abs(ex)))
    return err / ref, min(mins)


@pytest.mark.slow
def test_barenblatt_3d_rate_against_limit():
    """3D Barenblatt (m = 2) in a gmsh ball: "voronoi" and "front" converge at rate >= 1, >= 0.

    Measured (h = 0.2, 0.14, 0.1, default gmsh ball): voronoi 0.093, 0.056, 0.036 (rate
    1.37); front 0.094, 0.057, 0.039 (1.28); limit 0.095, 0.065, 0.056 (0.76).
    """
    hs = (0.2, 0.14, 0.1)
    rates = {}
    for mode in ("voronoi", "front", "limit"):
        res = [_barenblatt_3d(h, mode) for h in hs]
        errs = [e for e, _ in res]
        assert min(m for _, m in res) >= -1e-12
        rates[mode] = float(np.polyfit(np.log(hs), np.log(errs), 1)[0])
        if COMM.rank == 0:
            print(f"\n{mode}: errors {errs}, rate {rates[mode]:.2f}")
    assert rates["voronoi"] >= 1.0 and rates["front"] >= 1.0
    assert min(rates["voronoi"], rates["front"]) > rates["limit"] + 0.3
