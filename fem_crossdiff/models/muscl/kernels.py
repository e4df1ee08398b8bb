"""Compiled (numba) kernels of the MUSCL exact Jacobian's operator.

Why: the product ``E M x`` of :class:`fem_crossdiff.models.muscl.jacobian.ExactOperator` runs
once per
Krylov iteration; in numpy its edge part (a gather of the upstream gradients, a dot product
along the edge, two scatters per species) made several passes over the edges with fresh
temporaries. Here it is one pass.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["block_slots", "direct_blocks", "edge_blocks_apply", "edge_gather",
           "edge_gradient_terms", "exact_blocks", "held_blocks", "node_products",
           "upstream_terms"]


@njit(cache=True)
def edge_gradient_terms(I, J, up, kstar, Y, d_vec, g, out):
    """``out[i] += sum_e (+-) Y[e] (d_vec[e] . g[up_e, k*_e])`` over the edges ``e = (i, j)``.

    Args:
        I: The edges' first ends ``(E,)``.
        J: Their second ends ``(E,)``.
        up: The upstream node of every edge ``(E,)``.
        kstar: The limiting species of every edge ``(E,)``.
        Y: ``(E, n)``, the flux derivative per unit upstream gradient along the edge.
        d_vec: ``(E, gdim)``, from the upstream to the downstream node.
        g: ``(nloc, n, gdim)`` nodal gradients.
        out: ``(nloc, n)``, zeroed by the caller: ``+`` at the first end, ``-`` at the second.
    """
    nE, n = Y.shape
    gd = d_vec.shape[1]
    for e in range(nE):
        u = up[e]
        k = kstar[e]
        s = 0.0
        for d in range(gd):
            s += g[u, k, d] * d_vec[e, d]
        i = I[e]
        j = J[e]
        for c in range(n):
            v = Y[e, c] * s
            out[i, c] += v
            out[j, c] -= v


@njit(cache=True)
def edge_blocks_apply(I, J, Di, Dj, x, out):
    """``out[i] += Di[e] x_i + Dj[e] x_j``, ``out[j] -= ...`` over the edges ``e = (i, j)``.

    Args:
        I: The edges' first ends ``(E,)``.
        J: Their second ends ``(E,)``.
        Di: ``(E, n, n)`` derivative of the edge flux with respect to the first end.
        Dj: The same at the second end.
        x: ``(nloc, n)`` nodal values.
        out: ``(nloc, n)``, accumulated into.
    """
    nE, n = Di.shape[0], Di.shape[1]
    for e in range(nE):
        i = I[e]
        j = J[e]
        for c in range(n):
            v = 0.0
            for m in range(n):
                v += Di[e, c, m] * x[i, m] + Dj[e, c, m] * x[j, m]
            out[i, c] += v
            out[j, c] -= v


@njit(cache=True)
def direct_blocks(ci, cj, inv_i, inv_j, coef_i, coef_j, dk_i, dk_j, lam_i, alpha_i, alpha_j,
                  kappa, Phi, kstar, d_dn, F, cf, w, a, b, sigma, Ji, Jj):
    """The direct blocks of :meth:`fem_crossdiff.models.muscl.flux.MusclFlux.exact_derivatives`.

    Per edge and end ``e`` (``sgn = +1`` first, ``-1`` second, ``lam_j = 1 - lam_i``):
    ``dc[k, l] = (delta_kl - c_k a_l) / S_e``, ``v[l] = kappa coef_e dc[k*, l] + Phi dkappa_e
    a_l``, ``dcf = lam_e dc + d_dn v^T / 2`` and ``J_e = w (b (F dcf + c_f alpha_e a^T) + sgn
    sigma I)``, with the products in the order of the numpy expressions they replace.

    Args:
        ci: Fractions at the first ends ``(E, n)``.
        cj: At the second ends.
        inv_i: ``1 / S`` at the first ends ``(E,)`` (0 in vacuum).
        inv_j: At the second ends.
        coef_i: ``d Phi / d c_k*`` at the first end ``(E,)``.
        coef_j: At the second end.
        dk_i: ``d kappa / d S`` at the first end ``(E,)``.
        dk_j: At the second end.
        lam_i: ``d c_f / d c_i`` weight at the first end ``(E,)``.
        alpha_i: ``d F / d S`` at the first end ``(E,)``.
        alpha_j: At the second end.
        kappa: ``(E,)``.
        Phi: ``(E,)``.
        kstar: The limiting species ``(E,)``.
        d_dn: ``c_dn - c_up`` ``(E, n)``.
        F: Pressure flux ``(E,)``.
        cf: Face fractions ``(E, n)``.
        w: Edge weights ``(E,)``.
        a: Volume coefficients ``(n,)``.
        b: Mobilities ``(n,)``.
        sigma: Diffusion coefficient.
        Ji: Output ``(E, n, n)``, first end.
        Jj: Output ``(E, n, n)``, second end.
    """
    nE, n = ci.shape
    dc = np.empty((n, n))
    v = np.empty(n)
    for e in range(nE):
        ks = kstar[e]
        for end in range(2):
            if end == 0:
                c_e, inv_e, coef_e, dk_e = ci, inv_i[e], coef_i[e], dk_i[e]
                lam_e, alpha_e, sgn, Jb = lam_i[e], alpha_i[e], 1.0, Ji
            else:
                c_e, inv_e, coef_e, dk_e = cj, inv_j[e], coef_j[e], dk_j[e]
                lam_e, alpha_e, sgn, Jb = 1.0 - lam_i[e], alpha_j[e], -1.0, Jj
            for k in range(n):
                for m in range(n):
                    dc[k, m] = ((1.0 if k == m else 0.0) - c_e[e, k] * a[m]) * inv_e
            kc = kappa[e] * coef_e
            pk = Phi[e] * dk_e
            for m in range(n):
                v[m] = kc * dc[ks, m] + pk * a[m]
            for k in range(n):
                for m in range(n):
                    dcf = lam_e * dc[k, m] + 0.5 * d_dn[e, k] * v[m]
                    val = b[k] * (F[e] * dcf + cf[e, k] * alpha_e * a[m])
                    if k == m:
                        val += sgn * sigma
                    Jb[e, k, m] = val * w[e]


@njit(cache=True)
def node_products(D, x, out):
    """``out[i] = D[i] x[i]`` for the per-node matrices ``D`` ``(nloc, n, n)``, ``x`` ``(nloc, n)``.

    Args:
        D: Per-node matrices (``d c_reg / d rho``).
        x: Nodal vectors.
        out: ``(nloc, n)``, overwritten.
    """
    nloc, n = x.shape
    for i in range(nloc):
        for k in range(n):
            v = 0.0
            for m in range(n):
                v += D[i, k, m] * x[i, m]
            out[i, k] = v


@njit(cache=True)
def block_slots(I, J, slot_ij, slot_ji, diag_slot, ui, uj, di, dj, a, Ji, Jj, out):
    """Block-CSR values of ``B_e = u_e a^T + diag(d_e)`` per edge end, and ``J_e -= B_e``.

    In place of :meth:`fem_crossdiff.discretisation.pattern.EdgeBlocks.write_blocks` and of the
    difference
    ``J_direct - A`` of :class:`.ExactOperator`, with the same floating-point operations in
    the same order (the values are bitwise those of the numpy form): the block ``(i, j)``
    gets ``B_j``, ``(j, i)`` gets ``-B_i``, the diagonal block of a node ``(sum u) a^T +
    diag(sum d)``, the sums over the edges it starts (``u_i``, ``d_i``), then over those it
    ends (``-u_j``, ``-d_j``), in edge order as ``bincount`` takes them.

    Args:
        I: The edges' first ends ``(E,)``.
        J: Their second ends ``(E,)``.
        slot_ij: Block-CSR slot of the block ``(i, j)`` of every edge ``(E,)``.
        slot_ji: Slot of ``(j, i)``.
        diag_slot: Slot of every local node's diagonal block ``(nloc,)``, ``-1`` for a
            node on no edge.
        ui: ``(E, n)`` rank-one factor at the first end.
        uj: At the second end.
        di: ``(E, n)`` diagonal at the first end.
        dj: At the second end.
        a: Volume coefficients ``(n,)``.
        Ji: ``(E, n, n)`` exact direct blocks at the first end, ``B_i`` subtracted
            (``(u a^T)`` first, then the diagonal; skipped when ``Ji`` has no edges).
        Jj: The same at the second end.
        out: ``(nnzb, n, n)`` block-CSR values, overwritten.
    """
    nE, n = ui.shape
    nloc = diag_slot.shape[0]
    diff = Ji.shape[0] == nE
    U = np.zeros((nloc, n))
    D = np.zeros((nloc, n))
    for e in range(nE):
        i = I[e]
        for k in range(n):
            U[i, k] += ui[e, k]
            D[i, k] += di[e, k]
    for e in range(nE):
        j = J[e]
        for k in range(n):
            U[j, k] += -uj[e, k]
            D[j, k] += -dj[e, k]
    for e in range(nE):
        sij, sji = slot_ij[e], slot_ji[e]
        for k in range(n):
            for m in range(n):
                bi = ui[e, k] * a[m]
                bj = uj[e, k] * a[m]
                out[sij, k, m] = bj
                out[sji, k, m] = -bi
                if diff:
                    Ji[e, k, m] -= bi
                    Jj[e, k, m] -= bj
            out[sij, k, k] += dj[e, k]
            out[sji, k, k] -= di[e, k]
            if diff:
                Ji[e, k, k] -= di[e, k]
                Jj[e, k, k] -= dj[e, k]
    for v in range(nloc):
        s = diag_slot[v]
        if s < 0:
            continue
        for k in range(n):
            for m in range(n):
                out[s, k, m] = U[v, k] * a[m]
            out[s, k, k] += D[v, k]


@njit(cache=True)
def exact_blocks(I, J, S, up_i, act, A_up, A_dn, A_c, kstar, d_dn, ci, cj, inv_i, inv_j, Si,
                 Sj, dPi, dPj, dP, Sm, phi, kappa, Phi, F, cf, w, a, b, sigma, hold_below, Ji,
                 Jj, Y):
    """The tail of :meth:`fem_crossdiff.models.muscl.flux.MusclFlux.exact_derivatives`, in one pass.

    From the limiter's branch coefficients ``A_up, A_dn, A_c`` (per edge, of the limiting
    species ``k*``) to the direct blocks and ``Y``; per edge, in the order of the numpy
    expressions it replaces (``tests/test_schemes.py`` holds that numpy form and compares):

    * ``act &= |a_k* d_dn,k*| >= 1e-6 max_k |a_k d_dn,k|``, the coefficients zeroed where not
      ``act``; ``coef_up = A_up - A_dn + A_c``, ``coef_dn = A_dn - A_up`` at the upstream and
      downstream ends;
    * ``d kappa / d S`` at either end (``kappa = 2 S_i S_j / (S_i^2 + S_j^2)``, scaled by
      ``max(S_i, S_j)``), 0 where that is ``<= hold_below`` or the node's ``S < 0``;
    * ``alpha = dP / 2 +- S_m dP/dS``, ``lam_i``, then :func:`direct_blocks`;
    * ``Y[e, k] = w F kappa A_up b_k d_dn,k``.

    Args:
        I: The edges' first ends ``(E,)``.
        J: Their second ends ``(E,)``.
        S: Total density ``sum_k a_k rho_k`` at every local node (unclipped).
        up_i: The first end is upstream ``(E,)``.
        act: The limiter's derivative is taken ``(E,)`` (before the round-off test).
        A_up: ``d phi / d D_up`` per unit ``d_dn`` ``(E,)``.
        A_dn: ``d phi / d d_dn,k*`` ``(E,)``.
        A_c: ``d phi / d c_up,k*`` (the clamp's) ``(E,)``.
        kstar: The limiting species ``(E,)``.
        d_dn: ``c_dn - c_up`` ``(E, n)``.
        ci: Fractions at the first ends ``(E, n)``.
        cj: At the second ends.
        inv_i: ``1 / S`` at the first ends (0 in vacuum).
        inv_j: At the second ends.
        Si: ``max(S, 0)`` at the first ends.
        Sj: At the second ends.
        dPi: ``P'(S_i)``.
        dPj: ``P'(S_j)``.
        dP: ``P_i - P_j``.
        Sm: ``(S_i + S_j) / 2``.
        phi: ``Phi kappa`` ``(E,)``.
        kappa: ``(E,)``.
        Phi: ``(E,)``.
        F: Pressure flux ``(E,)``.
        cf: Face fractions ``(E, n)``.
        w: Edge weights ``(E,)``.
        a: Volume coefficients ``(n,)``.
        b: Mobilities ``(n,)``.
        sigma: Diffusion coefficient.
        hold_below: ``kappa`` is held where ``max(S_i, S_j)`` is at most this.
        Ji: Output ``(E, n, n)``, first end.
        Jj: Output ``(E, n, n)``, second end.
        Y: Output ``(E, n)``.
    """
    nE, n = ci.shape
    coef_i = np.empty(nE)
    coef_j = np.empty(nE)
    dk_i = np.empty(nE)
    dk_j = np.empty(nE)
    lam_i = np.empty(nE)
    alpha_i = np.empty(nE)
    alpha_j = np.empty(nE)
    for e in range(nE):
        ks = kstar[e]
        admax = 0.0
        for k in range(n):
            v = abs(d_dn[e, k] * a[k])
            if v > admax:
                admax = v
        on = act[e] and abs(d_dn[e, ks] * a[ks]) >= 1e-6 * admax
        au = A_up[e] if on else 0.0
        adn = A_dn[e] if on else 0.0
        ac = A_c[e] if on else 0.0
        c_dn = adn - au
        c_up = au - adn + ac
        if up_i[e]:
            coef_i[e], coef_j[e] = c_up, c_dn
            lam_i[e] = 1.0 - 0.5 * phi[e]
        else:
            coef_i[e], coef_j[e] = c_dn, c_up
            lam_i[e] = 0.5 * phi[e]
        smax = max(Si[e], Sj[e])
        hold = smax <= hold_below
        inv_m = 1.0 / (1.0 if hold else smax)
        xi = Si[e] * inv_m
        xj = Sj[e] * inv_m
        s2 = 1.0 if hold else xi * xi + xj * xj
        q2 = 1.0 / (s2 * s2)
        q2 = q2 * inv_m
        dk_i[e] = 0.0 if (hold or S[I[e]] < 0.0) else 2.0 * xj * (xj * xj - xi * xi) * q2
        dk_j[e] = 0.0 if (hold or S[J[e]] < 0.0) else 2.0 * xi * (xi * xi - xj * xj) * q2
        alpha_i[e] = 0.5 * dP[e] + Sm[e] * dPi[e]
        alpha_j[e] = 0.5 * dP[e] - Sm[e] * dPj[e]
        t = w[e] * F[e] * kappa[e] * au
        for k in range(n):
            Y[e, k] = t * b[k] * d_dn[e, k]
    direct_blocks(ci, cj, inv_i, inv_j, coef_i, coef_j, dk_i, dk_j, lam_i, alpha_i, alpha_j,
                  kappa, Phi, kstar, d_dn, F, cf, w, a, b, sigma, Ji, Jj)


@njit(cache=True)
def edge_gather(I, J, rho, c, S, inv_node, ri, rj, ci, cj, Si, Sj, inv_i, inv_j):
    """The nodal values at both ends of every edge, in one pass.

    ``ri = rho[I]``, ``rj = rho[J]``, ``ci = c[I]``, ``cj = c[J]``, ``Si = max(S[I], 0)``,
    ``Sj = max(S[J], 0)`` (NaN kept, as ``np.maximum``), ``inv_i = inv_node[I]``, ``inv_j =
    inv_node[J]``.

    Args:
        I: The edges' first ends ``(E,)``.
        J: Their second ends ``(E,)``.
        rho: ``(nloc, n)`` densities.
        c: ``(nloc, n)`` fractions.
        S: ``(nloc,)`` total densities.
        inv_node: ``(nloc,)`` their inverses (0 in vacuum).
        ri: Output ``(E, n)``.
        rj: Output ``(E, n)``.
        ci: Output ``(E, n)``.
        cj: Output ``(E, n)``.
        Si: Output ``(E,)``.
        Sj: Output ``(E,)``.
        inv_i: Output ``(E,)``.
        inv_j: Output ``(E,)``.
    """
    nE = I.shape[0]
    n = rho.shape[1]
    for e in range(nE):
        i = I[e]
        j = J[e]
        for k in range(n):
            ri[e, k] = rho[i, k]
            rj[e, k] = rho[j, k]
            ci[e, k] = c[i, k]
            cj[e, k] = c[j, k]
        si = S[i]
        sj = S[j]
        Si[e] = si if (si >= 0.0 or si != si) else 0.0
        Sj[e] = sj if (sj >= 0.0 or sj != sj) else 0.0
        inv_i[e] = inv_node[i]
        inv_j[e] = inv_node[j]


@njit(cache=True)
def upstream_terms(I, J, up_i, ci, cj, d, grad, c_up, d_dn, d_vec, d_up):
    """The upstream quantities of every edge, the upstream gradient gathered, in one pass.

    ``c_up``, ``d_dn = c_dn - c_up``, ``d_vec = +-d`` (from the upstream to the downstream
    node) and ``d_up = 2 grad(c)_up . d_vec - d_dn``, as the numpy expressions they replace
    (``np.where`` on ``up_i``, then ``einsum``).

    Args:
        I: The edges' first ends ``(E,)``.
        J: Their second ends ``(E,)``.
        up_i: The first end is upstream ``(E,)``.
        ci: Fractions at the first ends ``(E, n)``.
        cj: At the second ends.
        d: ``(E, gdim)``, from the first to the second end.
        grad: ``(nloc, n, gdim)`` nodal gradients.
        c_up: Output ``(E, n)``.
        d_dn: Output ``(E, n)``.
        d_vec: Output ``(E, gdim)``.
        d_up: Output ``(E, n)``.
    """
    nE, n = ci.shape
    gd = d.shape[1]
    for e in range(nE):
        first = up_i[e]
        u = I[e] if first else J[e]
        for g in range(gd):
            d_vec[e, g] = d[e, g] if first else -d[e, g]
        for k in range(n):
            cu = ci[e, k] if first else cj[e, k]
            cd = cj[e, k] if first else ci[e, k]
            c_up[e, k] = cu
            dd = cd - cu
            d_dn[e, k] = dd
            s = 0.0
            for g in range(gd):
                s += grad[u, k, g] * d_vec[e, g]
            d_up[e, k] = 2.0 * s - dd


@njit(cache=True)
def held_blocks(ci, cj, inv_i, inv_j, up_i, phi, cf, F, Sm, dP, dPi, dPj, w, b, sigma, ui, uj,
                di, dj):
    """The factors of :meth:`fem_crossdiff.models.edge_flux.EdgeFlux.held_factor_blocks`, one pass.

    ``J_end = u_end a^T + diag(d_end)`` with ``u = b w (c_f alpha - g c_end)``, ``d = b w g
    +- sigma w``, ``g = lam F / S_end`` (``lam_i = 1 - phi/2`` upstream, ``phi/2``
    downstream), in the order of the numpy expressions (bitwise equal); the positivity
    limiter's factors (a few edges) are applied by the caller.

    Args:
        ci: Fractions at the first ends ``(E, n)``.
        cj: At the second ends.
        inv_i: ``1 / S`` at the first ends ``(E,)`` (0 in vacuum).
        inv_j: At the second ends.
        up_i: The first end is upstream ``(E,)``.
        phi: The limiter ``(E,)`` (0: the first-order scheme).
        cf: Face fractions ``(E, n)`` (``c_up``: the first-order scheme).
        F: Pressure flux ``(E,)``.
        Sm: ``(S_i + S_j) / 2``.
        dP: ``P_i - P_j``.
        dPi: ``P'(S_i)``.
        dPj: ``P'(S_j)``.
        w: Edge weights ``(E,)``.
        b: Mobilities ``(n,)``.
        sigma: Diffusion coefficient.
        ui: Output ``(E, n)``.
        uj: Output ``(E, n)``.
        di: Output ``(E, n)``.
        dj: Output ``(E, n)``.
    """
    nE, n = ci.shape
    for e in range(nE):
        alpha_i = 0.5 * dP[e] + Sm[e] * dPi[e]
        alpha_j = 0.5 * dP[e] - Sm[e] * dPj[e]
        lam_i = 1.0 - 0.5 * phi[e] if up_i[e] else 0.5 * phi[e]
        lam_j = 1.0 - lam_i
        gi = lam_i * F[e] * inv_i[e]
        gj = lam_j * F[e] * inv_j[e]
        sw = sigma * w[e]
        for k in range(n):
            bw = w[e] * b[k]
            ui[e, k] = bw * (cf[e, k] * alpha_i - gi * ci[e, k])
            uj[e, k] = bw * (cf[e, k] * alpha_j - gj * cj[e, k])
            di[e, k] = bw * gi + sw
            dj[e, k] = bw * gj - sw
