"""Compiled (numba) particle kernels: the tracking walk and the per-cell P1 operations.

Why: the numpy walk of :class:`~fem_crossdiff.particles.tracking.SimplexTracker` makes one pass
over the particles still walking per cell crossed, each pass gathering the cell data of every
particle into fresh temporaries; about 1.2-1.4 us per particle-step went there. Here each
particle is walked to its end in one loop, in registers, with the same arithmetic, so the two
walks give the same cells and positions (to round-off in the order of the sums;
``tests/test_particles_kernels.py``).

The walk's contract (shared with the numpy walk, which is the reference):

* barycentric maps ``lambda(x) = A[c] x + b[c]`` (``A (C, d + 1, d)``, ``b (C, d + 1)``), row
  ``f`` vanishing on the facet opposite local vertex ``f``;
* neighbour table ``nbr (C, d + 1) int64``: ``nbr[c, f]`` is the cell across facet ``f`` of
  ``c`` if ``>= 0``, ``-1`` a wall (the target is reflected across the facet's plane and the
  walk goes on in ``c``; at corners several times), ``<= -2`` a foreign slot (the facet leads
  out of the cells held here, e.g. to another rank: the walk stops there);
* a step ``p -> q`` leaves a cell at the first zero of a barycentric coordinate along the
  segment, ``t_f = max(lambda_f(p), 0) / (lambda_f(p) - lambda_f(q))`` over the facets with
  ``lambda_f(q) < -tol`` (the smallest index on ties); no such facet: ``q`` is in ``c``;
* a particle still walking after ``max_steps`` iterations (cells crossed plus reflections,
  e.g. rounding at a vertex) is lost.

:func:`walk` returns ``(p, q, c, lost, exited)``: for the ``exited`` particles (index array)
``p`` is the crossing point on the foreign facet, ``q`` the target reflected so far and ``c``
the value ``nbr[c, f] <= -2`` of that facet; for the others ``q`` is the end point and ``c`` its
cell (``p`` the last crossing point); ``lost`` holds the lost particles (their entries are
meaningless).

The P1 kernels (:func:`affine`, :func:`barycentric`, :func:`deposit`, :func:`cell_gradient`,
:func:`recovered_gradient`) take plain arrays for particles whose cells are known, so that they
can serve any layout of the cell data (local cells of a rank, or the whole mesh).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["walk", "walk_status", "affine", "barycentric", "deposit", "cell_gradient",
           "recovered_gradient", "DONE", "LOST", "EXITED"]

#: Walk outcome codes (:func:`walk_status`).
DONE, LOST, EXITED = 0, 1, 2


@njit(cache=True)
def walk_status(A, b, nbr, p, q, c, max_steps, reflect, tol):
    """:func:`walk` in place on ``p``, ``q``, ``c``; returns the outcome of each particle.

    The operations follow the numpy walk one by one (same order of the sums and products), so
    that both give the same numbers.
    """
    npts, d = p.shape
    nv = d + 1
    status = np.empty(npts, dtype=np.int8)
    lq = np.empty(nv)
    pi = np.empty(d)
    qi = np.empty(d)
    y = np.empty(d)
    nrm = np.empty(d)
    for i in range(npts):
        ci = c[i]
        for k in range(d):
            pi[k] = p[i, k]
            qi[k] = q[i, k]
        st = LOST
        for _ in range(max_steps):
            out = False
            for j in range(nv):
                s = 0.0
                for k in range(d):
                    s += A[ci, j, k] * qi[k]
                lq[j] = s + b[ci, j]
                if lq[j] < -tol:
                    out = True
            if not out:
                st = DONE
                break
            best = np.inf
            f = 0
            for j in range(nv):
                if lq[j] < -tol:
                    s = 0.0
                    for k in range(d):
                        s += A[ci, j, k] * pi[k]
                    lp = s + b[ci, j]
                    den = lp - lq[j]
                    # den <= 0 only for a start point outside its cell by more than q (rounding):
                    # the walk leaves at once, as for a 0 numerator
                    t = max(lp, 0.0) / den if den > 0.0 else 0.0
                    if t < best:
                        best, f = t, j
            tf = min(max(best, 0.0), 1.0)
            for k in range(d):
                y[k] = pi[k] + tf * (qi[k] - pi[k])
                pi[k] = y[k]
            nb = nbr[ci, f]
            if nb >= 0:
                ci = nb
            elif nb <= -2:
                ci = nb
                st = EXITED
                break
            elif not reflect:
                st = LOST
                break
            else:
                g2 = 0.0
                for k in range(d):
                    g2 += A[ci, f, k] * A[ci, f, k]
                gn = np.sqrt(g2)
                dq = 0.0
                for k in range(d):
                    nrm[k] = -A[ci, f, k] / gn
                    dq += (qi[k] - y[k]) * nrm[k]
                for k in range(d):
                    qi[k] = qi[k] - 2.0 * dq * nrm[k]
        for k in range(d):
            p[i, k] = pi[k]
            q[i, k] = qi[k]
        c[i] = ci
        status[i] = st
    return status


def walk(A, b, nbr, p, q, c, max_steps=200, reflect=True, tol=1e-12):
    """Walk the segments ``p -> q`` from the cells ``c`` (module docstring for the contract).

    Args:
        A: ``(C, d + 1, d)`` barycentric matrices.
        b: ``(C, d + 1)`` barycentric offsets.
        nbr: ``(C, d + 1)`` int64 neighbour table (``-1`` wall, ``<= -2`` foreign slot).
        p: ``(P, d)`` start points, each in its cell (not modified).
        q: ``(P, d)`` targets (not modified).
        c: ``(P,)`` cells of ``p``.
        max_steps: Iterations before a particle counts as lost.
        reflect: Reflect at walls (``False``: a particle meeting a wall is lost).
        tol: A point with every ``lambda >= -tol`` is in the cell.

    Returns:
        ``(p, q, c, lost, exited)`` (new arrays; ``lost`` and ``exited`` int64 indices).
    """
    p = np.array(p, dtype=np.float64, order="C", copy=True)
    q = np.array(q, dtype=np.float64, order="C", copy=True)
    c = np.array(c, dtype=np.int64, copy=True).reshape(-1)
    if p.shape != q.shape or p.ndim != 2 or c.size != p.shape[0]:
        raise ValueError(f"walk: need p, q of one shape (P, d) and P cells, got {p.shape}, "
                         f"{q.shape}, {c.shape}")
    st = walk_status(np.ascontiguousarray(A, dtype=np.float64),
                     np.ascontiguousarray(b, dtype=np.float64),
                     np.ascontiguousarray(nbr, dtype=np.int64), p, q, c, int(max_steps),
                     bool(reflect), float(tol))
    return p, q, c, np.flatnonzero(st == LOST), np.flatnonzero(st == EXITED)


@njit(cache=True)
def affine(A, b, x, cells):
    """Barycentric coordinates ``(P, d + 1)``: ``A[c] x + b[c]`` for ``x (P, d)`` in ``cells``.

    The maps of :class:`~fem_crossdiff.particles.tracking.SimplexTracker` (as in :func:`walk`).
    """
    npts = cells.shape[0]
    nv, d = A.shape[1], A.shape[2]
    out = np.empty((npts, nv))
    for i in range(npts):
        ci = cells[i]
        for j in range(nv):
            s = 0.0
            for k in range(d):
                s += A[ci, j, k] * x[i, k]
            out[i, j] = s + b[ci, j]
    return out


@njit(cache=True)
def in_cell(A, b, x, cells, tol):
    """Whether each point ``x (P, d)`` lies in its cell (all coordinates ``>= -tol``).

    Cells outside ``[0, C)`` count as not holding their point. The check of
    :meth:`~fem_crossdiff.particles.mesh_domain.MeshDomain.track` before each walk, fused so
    that no ``(P, d + 1)`` temporary is formed.
    """
    npts = cells.shape[0]
    nv, d, ncell = A.shape[1], A.shape[2], A.shape[0]
    out = np.zeros(npts, dtype=np.bool_)
    for i in range(npts):
        ci = cells[i]
        if ci < 0 or ci >= ncell:
            continue
        ok = True
        for j in range(nv):
            s = 0.0
            for k in range(d):
                s += A[ci, j, k] * x[i, k]
            if s + b[ci, j] < -tol:
                ok = False
                break
        out[i] = ok
    return out


@njit(cache=True)
def barycentric(pullback, x0, x, cells):
    """P1 basis values ``(P, d + 1)`` at ``x (P, >= d)`` in ``cells`` (affine simplices).

    ``xi = pullback[c] (x - x0[c])``, ``lambda = (1 - sum xi, xi)``: the formula of
    :class:`~fem_crossdiff.particles.mesh_drift.MeshOperatorDrift` (``pullback (C, d, d)``,
    ``x0 (C, d)`` the first vertex).
    """
    npts = cells.shape[0]
    d = pullback.shape[1]
    out = np.empty((npts, d + 1))
    dx = np.empty(d)
    for i in range(npts):
        ci = cells[i]
        for k in range(d):
            dx[k] = x[i, k] - x0[ci, k]
        tot = 0.0
        for j in range(d):
            s = 0.0
            for k in range(d):
                s += pullback[ci, j, k] * dx[k]
            out[i, j + 1] = s
            tot += s
        out[i, 0] = 1.0 - tot
    return out


@njit(cache=True)
def deposit(dofs, cells, lam, w, species, n_species, out):
    """Add ``w_p lambda_pj`` to ``out[dofs[c_p, j] * n_species + species_p]`` (P1 deposit).

    Args:
        dofs: ``(C, d + 1)`` int64 cell dofs.
        cells: ``(P,)`` cells.
        lam: ``(P, d + 1)`` basis values.
        w: ``(P,)`` weights.
        species: ``(P,)`` int64 species of each particle.
        n_species: Block size of ``out``.
        out: Flat float64 accumulator (``nloc * n_species``), added to in place.
    """
    nv = dofs.shape[1]
    for i in range(cells.shape[0]):
        ci = cells[i]
        wi = w[i]
        for j in range(nv):
            out[dofs[ci, j] * n_species + species[i]] += lam[i, j] * wi
    return out


@njit(cache=True)
def cell_gradient(cell_grad, dofs, g, cells):
    """Gradient ``(P, d)`` of the P1 function ``g`` in ``cells``: ``sum_j g[dofs[c, j]] grad_j``.

    ``cell_grad (C, d + 1, d)``: gradients of the cell's basis functions.
    """
    npts = cells.shape[0]
    nv, d = cell_grad.shape[1], cell_grad.shape[2]
    out = np.empty((npts, d))
    for i in range(npts):
        ci = cells[i]
        for k in range(d):
            s = 0.0
            for j in range(nv):
                s += cell_grad[ci, j, k] * g[dofs[ci, j]]
            out[i, k] = s
    return out


@njit(cache=True)
def recovered_gradient(G, dofs, lam, cells):
    """P1 interpolation ``(P, d)`` of the nodal gradients ``G (nloc, d)`` at the particles."""
    npts = cells.shape[0]
    nv, d = dofs.shape[1], G.shape[1]
    out = np.empty((npts, d))
    for i in range(npts):
        ci = cells[i]
        for k in range(d):
            s = 0.0
            for j in range(nv):
                s += lam[i, j] * G[dofs[ci, j], k]
            out[i, k] = s
    return out
