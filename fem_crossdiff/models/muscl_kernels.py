"""Compiled (numba) kernels of the MUSCL exact Jacobian's operator.

Why: the product ``E M x`` of :class:`fem_crossdiff.models.muscl.ExactOperator` runs once per
Krylov iteration; in numpy its edge part (a gather of the upstream gradients, a dot product
along the edge, two scatters per species) made several passes over the edges with fresh
temporaries. Here it is one pass.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["edge_gradient_terms", "edge_blocks_apply", "direct_blocks", "node_products"]


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
    """The direct blocks of :meth:`fem_crossdiff.upwind.MusclFlux.exact_derivatives`.

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
