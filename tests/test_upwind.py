"""The upwind edge operators: Jacobians against finite differences, conservation, edge weights."""

from __future__ import annotations

import numpy as np
import pytest

from fem_crossdiff.compat import MPI, fem, la, mesh
from fem_crossdiff.discretisation.edges import p1_edge_weights, positivity_limiter
from fem_crossdiff.models.nonlocal_system.flux import PotentialFlux
from fem_crossdiff.models.upwind import UpwindFlux
from fem_crossdiff.params import ModelParams


def _dense(flux, data, n):
    """Assemble block-CSR values into a dense matrix (small meshes only)."""
    nloc = flux.nloc
    J = np.zeros((nloc * n, nloc * n))
    for r in range(nloc):
        for idx in range(flux.indptr[r], flux.indptr[r + 1]):
            c = flux.indices[idx]
            J[r * n:(r + 1) * n, c * n:(c + 1) * n] += data[idx]
    return J


def _fd(fun, rho, h=1e-7):
    n = rho.shape[1]
    R0 = fun(rho).ravel()
    J = np.zeros((R0.size, rho.size))
    for j in range(rho.size):
        r = rho.ravel().copy()
        r[j] += h
        J[:, j] = (fun(r.reshape(-1, n)).ravel() - R0) / h
    return J


@pytest.mark.parametrize("m,sigma,n", [(2.0, 0.0, 2), (2.5, 0.1, 3), (3.0, 0.01, 1)])
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_local_flux_jacobian_matches_finite_differences(m, sigma, n, dim):
    msh = {1: lambda: mesh.create_unit_interval(MPI.COMM_SELF, 6),
           2: lambda: mesh.create_unit_square(MPI.COMM_SELF, 3, 3),
           3: lambda: mesh.create_unit_cube(MPI.COMM_SELF, 2, 2, 2)}[dim]()
    p = ModelParams(a=(1.0, 2.0, 0.5)[:n], b=(1.0, 0.5, 2.0)[:n], m=m, sigma=sigma)
    V = fem.functionspace(msh, ("Lagrange", 1, (n,)))
    flux = UpwindFlux(V, p)
    rho = np.random.default_rng(0).uniform(0.1, 1.0, (flux.nloc, n))
    J = _dense(flux, flux.jacobian_blocks(rho), n)
    Jfd = _fd(flux.residual, rho)
    assert np.abs(J - Jfd).max() < 1e-5 * np.abs(Jfd).max()
    # conservation: every edge moves mass between its two nodes
    assert np.abs(flux.residual(rho).sum(axis=0)).max() < 1e-13 * np.abs(Jfd).max()


def _distorted_cube():
    """A 3x3x3 Kuhn cube with jittered interior vertices: many negative stiffness weights."""
    msh = mesh.create_unit_cube(MPI.COMM_SELF, 3, 3, 3)
    x = msh.geometry.x
    interior = np.all((x > 1e-12) & (x < 1 - 1e-12), axis=1)
    x[interior] += np.random.default_rng(5).uniform(-0.12, 0.12, (int(interior.sum()), 3))
    return msh


@pytest.mark.parametrize("sigma", [0.0, 0.05])
def test_limited_edges_jacobian_and_positivity_mechanism(sigma):
    """Negative-weight edges (limit mode): FD Jacobian, conservation, limiter active."""
    msh = _distorted_cube()
    n = 2
    p = ModelParams(a=(1.0, 2.0), b=(1.0, 0.5), m=2.5, sigma=sigma)
    V = fem.functionspace(msh, ("Lagrange", 1, (n,)))
    rng = np.random.default_rng(2)
    for flux, extra in ((UpwindFlux(V, p), ()), (PotentialFlux(V, p), None)):
        assert flux.negative_edges > 0 and flux.limited.size > 0
        rho = rng.uniform(0.1, 1.0, (flux.nloc, n))
        # one species empty at 30% of the nodes (the limiter at full strength); never both,
        # where c_k = rho_k / S has no limit
        u = rng.uniform(size=flux.nloc)
        rho[u < 0.15, 0] = 0.0
        rho[u > 0.85, 1] = 0.0
        if extra is None:
            g = rng.uniform(0.0, 1.0, flux.nloc)
            extra = (g,)
        res = lambda r, e=extra, f=flux: f.residual(r, *e)  # noqa: E731
        J = _dense(flux, flux.jacobian_blocks(rho, *extra), n)
        Jfd = _fd(res, rho)
        assert np.abs(J - Jfd).max() < 1e-5 * np.abs(Jfd).max()
        assert np.abs(res(rho).sum(axis=0)).max() < 1e-13 * np.abs(Jfd).max()
        # the limiter is really active: empty nodes get no outflow on limited edges
        e = flux.limited
        ri, rj = rho[flux.I[e]], rho[flux.J[e]]
        theta, _, _ = positivity_limiter(np.where(ri > rj, 1.0, -1.0), ri, rj)
        assert np.any(theta == 0.0) and np.any((theta > 0) & (theta < 1))


def test_positivity_limiter_values():
    """theta: 1 from the fuller node, the density ratio from the emptier one, 0 from vacuum."""
    q = np.array([[-1.0], [-1.0], [1.0], [-1.0], [-1.0]])  # q < 0: the mass leaves node i
    ri = np.array([[2.0], [1.0], [1.0], [0.0], [-0.5]])
    rj = np.array([[1.0], [4.0], [4.0], [3.0], [1.0]])
    theta, d_i, d_j = positivity_limiter(q, ri, rj)
    np.testing.assert_allclose(theta.ravel(), [1.0, 0.25, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(d_i.ravel(), [0.0, 0.25, 0.0, 1.0 / 3, 0.0])
    np.testing.assert_allclose(d_j.ravel(), [0.0, -1.0 / 16, 0.0, 0.0, 0.0])


def test_potential_flux_jacobian_and_derivative():
    msh = mesh.create_unit_square(MPI.COMM_SELF, 3, 3)
    p = ModelParams(a=(1.0, 2.0), b=(1.0, 0.5), sigma=0.05)
    V = fem.functionspace(msh, ("Lagrange", 1, (2,)))
    flux = PotentialFlux(V, p)
    rng = np.random.default_rng(1)
    rho = rng.uniform(0.1, 1.0, (flux.nloc, 2))
    g = rng.uniform(0.0, 1.0, flux.nloc)
    J = _dense(flux, flux.jacobian_blocks(rho, g), 2)
    Jfd = _fd(lambda r: flux.residual(r, g), rho)
    assert np.abs(J - Jfd).max() < 1e-6 * np.abs(Jfd).max()
    dg = rng.normal(size=flux.nloc) * 1e-7
    lin = flux.apply_potential_derivative(rho, g, dg)
    # upstream choice fixed: exact for a perturbation that flips no edge
    fd = flux.residual(rho, g + dg) - flux.residual(rho, g)
    assert np.abs(lin - fd).max() < 1e-6 * np.abs(fd).max()


def test_edge_weights_are_stiffness_matrix():
    """sum_j w_ij (u_i - u_j) reproduces K u for the P1 stiffness matrix, on any partition."""
    import ufl

    comm = MPI.COMM_WORLD
    msh = mesh.create_unit_square(comm, 5, 4)
    V = fem.functionspace(msh, ("Lagrange", 1))
    I, J, W = p1_edge_weights(V)
    u = fem.Function(V)
    u.interpolate(lambda x: np.sin(3 * x[0]) + x[1] ** 2)
    Ku = fem.Function(V)
    d = W * (u.x.array[I] - u.x.array[J])
    Ku.x.array[:] = np.bincount(I, d, u.x.array.size) - np.bincount(J, d, u.x.array.size)
    Ku.x.scatter_reverse(la.InsertMode.add)
    a = fem.form(ufl.inner(ufl.grad(u), ufl.grad(ufl.TestFunction(V))) * ufl.dx)
    ref = fem.assemble_vector(a)
    ref.scatter_reverse(la.InsertMode.add)
    nown = V.dofmap.index_map.size_local
    err = comm.allreduce(np.abs(Ku.x.array[:nown] - ref.array[:nown]).max(initial=0.0),
                         op=MPI.MAX)
    assert err < 1e-12
