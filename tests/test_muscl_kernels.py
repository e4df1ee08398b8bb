"""The compiled kernels of ``muscl``'s exact Jacobian against the numpy forms they replace.

``exact_blocks`` (the tail of ``MusclFlux.exact_derivatives``), ``block_slots`` (the
first-order preconditioner's block-CSR values and ``J_direct - A`` of ``ExactOperator``),
``held_blocks`` (that matrix's per-edge factors), ``edge_gather`` and ``upstream_terms`` (the
residual's gathers to the edges) on random data with every branch taken
(``kappa`` held, a negative total density, the round-off test of the limiting species), and
on the edge pattern of a real mesh (on every rank of COMM_WORLD). Their exactness as a
Jacobian is checked by central differences in ``tests/test_schemes.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from _cases import unit_mesh

from fem_crossdiff.compat import MPI
from fem_crossdiff.models.base import FaceState
from fem_crossdiff.models.muscl import kernels as mk
from fem_crossdiff.params import ModelParams
from fem_crossdiff.solver import CrossDiffusionSolver

COMM = MPI.COMM_WORLD


def _tail_numpy(I, J, S, up_i, act, A_up, A_dn, A_c, kstar, d_dn, ci, cj, inv_i, inv_j, Si, Sj,
                dPi, dPj, dP, Sm, phi, kappa, Phi, F, cf, w, a, b, sigma, hold_below):
    """The numpy form of ``exact_derivatives``' tail that ``exact_blocks`` replaced."""
    nE, n = ci.shape
    ar = np.arange(nE)
    ad = np.abs(d_dn * a)
    act = act & (ad[ar, kstar] >= 1e-6 * ad.max(axis=1))
    A_up, A_dn, A_c = (np.where(act, v, 0.0) for v in (A_up, A_dn, A_c))
    coef_dn = A_dn - A_up
    coef_up = A_up - A_dn + A_c
    coef_i = np.where(up_i, coef_up, coef_dn)
    coef_j = np.where(up_i, coef_dn, coef_up)
    Smax = np.maximum(Si, Sj)
    hold = Smax <= hold_below
    inv_m = 1.0 / np.where(hold, 1.0, Smax)
    xi, xj = Si * inv_m, Sj * inv_m
    q2 = 1.0 / np.where(hold, 1.0, xi * xi + xj * xj) ** 2
    q2 = q2 * inv_m
    dk_i = np.where(hold | (S[I] < 0.0), 0.0, 2.0 * xj * (xj * xj - xi * xi) * q2)
    dk_j = np.where(hold | (S[J] < 0.0), 0.0, 2.0 * xi * (xi * xi - xj * xj) * q2)
    alpha_i = 0.5 * dP + Sm * dPi
    alpha_j = 0.5 * dP - Sm * dPj
    lam_i = np.where(up_i, 1.0 - 0.5 * phi, 0.5 * phi)
    Ji, Jj = np.empty((nE, n, n)), np.empty((nE, n, n))
    mk.direct_blocks(ci, cj, inv_i, inv_j, coef_i, coef_j, dk_i, dk_j, lam_i, alpha_i, alpha_j,
                     kappa, Phi, kstar, d_dn, F, cf, w, a, b, sigma, Ji, Jj)
    Y = (w * F * kappa * A_up)[:, None] * b * d_dn
    return Ji, Jj, Y


@pytest.mark.parametrize("n", [2, 3])
def test_exact_blocks_equals_numpy(n):
    """Every branch of the tail, bitwise equal to the numpy form (same operations, same order)."""
    rng = np.random.default_rng(16 + n)
    nnode, nE = 40, 300
    I = rng.integers(0, nnode, nE).astype(np.int32)
    J = ((I + 1 + rng.integers(0, nnode - 1, nE)) % nnode).astype(np.int32)
    S = rng.uniform(-0.1, 2.0, nnode)  # some negative totals: kappa's derivative is cut there
    Si, Sj = np.maximum(S[I], 0.0), np.maximum(S[J], 0.0)
    Si[:20] = Sj[:20] = 0.0  # kappa held (vacuum)
    Si[20:30] = Sj[20:30] = 1e-12  # held below hold_below = 1e-9
    up_i = rng.random(nE) < 0.5
    kstar = rng.integers(0, n, nE)
    d_dn = rng.normal(size=(nE, n))
    d_dn[30:60, :] *= 1e-9  # limiting species at round-off against the others ...
    d_dn[30:60, 0] = 1.0
    kstar[30:60] = 1  # ... so that the limiter's derivative is dropped there
    a, b = rng.uniform(0.5, 2.0, n), rng.uniform(0.5, 2.0, n)
    e = [rng.normal(size=nE) for _ in range(12)]
    A_up, A_dn, A_c, dPi, dPj, dP, Sm, phi, kappa, Phi, F, w = e
    act = rng.random(nE) < 0.8
    ci, cj, cf = (rng.uniform(0.0, 1.0, (nE, n)) for _ in range(3))
    inv_i, inv_j = 1.0 / np.maximum(Si, 1e-3), 1.0 / np.maximum(Sj, 1e-3)
    args = (I, J, S, up_i, act, A_up, A_dn, A_c, kstar, d_dn, ci, cj, inv_i, inv_j, Si, Sj,
            dPi, dPj, dP, Sm, phi, kappa, Phi, F, cf, w, a, b, 0.3, 1e-9)
    ref = _tail_numpy(*args)
    out = np.empty((nE, n, n)), np.empty((nE, n, n)), np.empty((nE, n))
    mk.exact_blocks(*args, *out)
    for r, o in zip(ref, out, strict=True):
        np.testing.assert_array_equal(o, r)
    held = np.abs(ref[2][30:60]).max()
    assert held == 0.0 and np.abs(ref[2]).max() > 0.1  # both branches of the round-off test


@pytest.fixture(scope="module")
def flux():
    p = ModelParams(a=(1.0, 0.5), b=(1.0, 2.0), m=2.5, sigma=0.1)
    # van Leer: its branch coefficients reach the kernels' round-off test (the solver keeps
    # its model)
    return CrossDiffusionSolver(unit_mesh(2, 8), p, scheme="muscl", limiter="vanleer")


def test_block_slots_equals_write_blocks(flux):
    """The preconditioner's block-CSR values and ``J_direct - A``, bitwise those of numpy."""
    f, ctx = flux.model.flux, flux.model._ctx
    rng = np.random.default_rng(COMM.rank)
    nE, n = f.I.size, f.n
    ui, uj, di, dj = (rng.normal(size=(nE, n)) for _ in range(4))
    Ji, Jj = rng.normal(size=(nE, n, n)), rng.normal(size=(nE, n, n))
    ref = np.empty((f.nnzb, n * n))
    f.write_blocks(ui, uj, di, dj, ref)
    refd = []
    r = np.arange(n)
    for Jb, u, d in ((Ji.copy(), ui, di), (Jj.copy(), uj, dj)):
        Jb -= u[:, :, None] * f.a
        Jb[:, r, r] -= d
        refd.append(Jb)
    out = np.full((f.nnzb, n, n), np.nan)
    mk.block_slots(f.I, f.J, *ctx._slots(), ui, uj, di, dj, f.a, Ji, Jj, out)
    np.testing.assert_array_equal(out.reshape(ref.shape), ref)
    np.testing.assert_array_equal(Ji, refd[0])
    np.testing.assert_array_equal(Jj, refd[1])
    # without the difference (no edges in Ji): the values alone
    out2 = np.full_like(out, np.nan)
    none = np.empty((0, n, n))
    mk.block_slots(f.I, f.J, *ctx._slots(), ui, uj, di, dj, f.a, none, none, out2)
    np.testing.assert_array_equal(out2, out)


def test_edge_gathers_equal_numpy(flux):
    """The residual's gathers to the edges' ends and upstream, as numpy's gathers and einsum."""
    f = flux.model.flux
    rng = np.random.default_rng(7 + COMM.rank)
    nE, n, gd, nloc = f.I.size, f.n, f.grad.gdim, f.nloc
    rho, c = rng.normal(size=(nloc, n)), rng.normal(size=(nloc, n))
    S, inv_node = rng.normal(size=nloc), rng.normal(size=nloc)  # S < 0 on some nodes
    S[:3] = np.nan  # kept, as by np.maximum
    ref = (rho[f.I], rho[f.J], c[f.I], c[f.J], np.maximum(S[f.I], 0.0),
           np.maximum(S[f.J], 0.0), inv_node[f.I], inv_node[f.J])
    out = tuple(np.full_like(r, -7.0) for r in ref)
    mk.edge_gather(f.I, f.J, rho, c, S, inv_node, *out)
    for r, o in zip(ref, out, strict=True):
        np.testing.assert_array_equal(o, r)
    ci, cj = ref[2], ref[3]
    grad = rng.normal(size=(nloc, n, gd))
    up_i = rng.random(nE) < 0.5
    upc = up_i[:, None]
    c_up = np.where(upc, ci, cj)
    d_dn = np.where(upc, cj, ci) - c_up
    d_vec = np.where(upc, f.d, -f.d)
    g_up = np.where(upc[:, :, None], grad[f.I], grad[f.J])
    d_up = 2.0 * np.einsum("ekg,eg->ek", g_up, d_vec) - d_dn
    out = tuple(np.empty_like(r) for r in (c_up, d_dn, d_vec, d_up))
    mk.upstream_terms(f.I, f.J, up_i, ci, cj, f.d, grad, *out)
    for r, o in zip((c_up, d_dn, d_vec), out[:3], strict=True):
        np.testing.assert_array_equal(o, r)
    # einsum may sum the directions in another order: round-off
    np.testing.assert_allclose(out[3], d_up, rtol=1e-14, atol=1e-14)


def test_held_blocks_equals_numpy(flux):
    """The preconditioner's factors, bitwise those of ``EdgeFlux.held_factor_blocks``."""
    f = flux.model.flux
    rng = np.random.default_rng(11 + COMM.rank)
    nE, n = f.I.size, f.n
    ci, cj, cf = (rng.uniform(0.0, 1.0, (nE, n)) for _ in range(3))
    Si, Sj, phi, F, Sm, dP = (rng.uniform(0.0, 2.0, nE) for _ in range(6))
    inv_i, inv_j = 1.0 / (Si + 0.1), 1.0 / (Sj + 0.1)
    inv_j[:5] = 0.0  # vacuum
    up_i = rng.random(nE) < 0.5
    terms = FaceState(c_i=ci, c_j=cj, S_i=Si, S_j=Sj, inv_i=inv_i, inv_j=inv_j, up_i=up_i,
                      phi=phi, c_f=cf, F=F, S_m=Sm, dP=dP, lim=None)
    ref = f.held_factor_blocks(terms)[:4]
    out = tuple(np.empty((nE, n)) for _ in range(4))
    mk.held_blocks(ci, cj, inv_i, inv_j, up_i, phi, cf, F, Sm, dP, f.law.derivative(Si),
                   f.law.derivative(Sj), f.W, f.b, float(f.params.sigma), *out)
    for r, o in zip(ref, out, strict=True):
        np.testing.assert_array_equal(o, r)
