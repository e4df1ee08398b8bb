"""Compiled (numba) kernels of the MUSCL exact Jacobian's operator.

Why: the product ``E M x`` of :class:`fem_crossdiff.models.muscl.ExactOperator` runs once per
Krylov iteration; in numpy its edge part (a gather of the upstream gradients, a dot product
along the edge, two scatters per species) made several passes over the edges with fresh
temporaries. Here it is one pass.
"""

from __future__ import annotations

from numba import njit

__all__ = ["edge_gradient_terms"]


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
