"""Algebraic flux correction of the upwind species fractions (Zalesak-type limiter, local bounds).

The first-order scheme (:mod:`fem_crossdiff.models.upwind`) transports species ``k``
across edge ``ij`` with the upstream fraction ``c_k,up``. Written against the central fraction
``c_k,avg = (c_k,i + c_k,j) / 2`` it is the central scheme plus an artificial diffusion of the
fractions,

    b_k w_ij F_ij c_k,up = b_k w_ij F_ij c_k,avg - b_k d_ij (c_k,j - c_k,i),
    d_ij = w_ij |F_ij| / 2 >= 0,

whichever node is upstream. Algebraic flux correction adds back a limited part of that
diffusion, the antidiffusive flux ``f_k,ij = b_k d_ij (c_k,j - c_k,i)`` (outflow from ``i``):

    G_k,ij = G^up_k,ij + alpha_ij f_k,ij,   i.e.   c_k,f = c_k,up + alpha_ij / 2 (c_k,dn - c_k,up),

with one ``alpha_ij in [0, 1]`` per edge for all species. ``alpha = 1`` is the central
(second-order) fraction, ``alpha = 0`` the upwind one.

The limiter (Zalesak's, in the steady/implicit form of Kuzmin's algebraic flux correction), per
species, with local bounds of the fractions over the node's neighbourhood:

    c^max_i = max(c_i, max_{j ~ i} c_j),   c^min_i likewise,   q_i = sum_{j ~ i} d_ij,
    P^+_i = sum_j d_ij (c_i - c_j)^+,   Q^+_i = q_i (c^max_i - c_i),   R^+_i = smin(Q^+_i / P^+_i),
    P^-_i = sum_j d_ij (c_j - c_i)^+,   Q^-_i = q_i (c_i - c^min_i),   R^-_i = smin(Q^-_i / P^-_i),
    alpha_k,ij = min(R^-_i, R^+_j) if c_j > c_i (the flux lowers c_i, raises c_j), else
                 min(R^+_i, R^-_j),

``P^+_i`` (``P^-_i``) being the antidiffusive fluxes that would raise (lower) the fraction at
``i`` and ``Q^±_i`` the room the local bounds leave (``b_k`` cancels in the ratios). So the
limited correction at every node is at most ``q_i`` times the distance of ``c_i`` to its
bounds: at a local maximum (minimum) of ``c_k`` no antidiffusive flux raises (lowers) it. On
linear data and point-symmetric stencils ``Q / P >= 1`` and ``alpha = 1`` (second order).
``smin(x)`` is a C1 approximation of ``min(1, x)`` (equal to it for ``x <= 0.75`` and
``x >= 1.25``) so that Newton sees no kink at ``x = 1``. Then

    alpha_ij = kappa_ij * min_k min(alpha_k,ij, clamp_k,ij),
    clamp_k = 2 |c_k,up| / |c_k,dn - c_k,up|,   kappa = 2 S_i S_j / (S_i^2 + S_j^2):

* one ``alpha`` for all species: ``sum_k a_k c_k = 1`` at both ends, so ``sum_k a_k c_k,f = 1``
  whatever the common ``alpha``; ``sum_k a_k G_k`` is then exactly the one-species scheme for
  ``u = sum_k a_k rho_k`` (Theorem 1.8's reduction, and the energy decrease that comes with it).
  Taking the minimum keeps every species' bounds (a smaller ``alpha`` only shrinks ``P``);
* ``clamp``: ``|c_f - c_up| <= |c_up|``, so ``c_k,f`` has the sign of ``c_k,up``: no mass leaves
  a node with ``rho_k < 0`` towards one with ``rho_k >= 0``, which gives positivity of the
  implicit-Euler step at every ``sigma >= 0`` (``docs/afc.md``). The node bounds alone do not
  (a negative node need not be the local minimum);
* ``kappa`` (``1 - O(h^2)`` on smooth data) takes the correction to zero continuously towards
  vacuum, where the fractions are undefined (``sum_k a_k c_k = 0`` at an empty node).

Edges of negative total weight (non-Delaunay meshes) keep the first-order flux (``alpha = 0``)
and its positivity limiter. The bounds and the sums are nodal quantities over all the edges of
a node: they are summed (``P``, ``q``) or maximised (bounds) over the ranks through the ghost
updates of the space's index map, so ``alpha`` is the same on every rank holding an edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fem_crossdiff.compat import MPI, PETSc, fem, la
from fem_crossdiff.discretisation.edges import limit_fluxes
from fem_crossdiff.models.base import FaceState
from fem_crossdiff.models.edge_flux import EdgeFlux
from fem_crossdiff.params import ModelParams

__all__ = ["AfcFlux", "AfcState", "smooth_min1", "smooth_min1_slope"]


@dataclass(frozen=True)
class AfcState(FaceState):
    """The per-edge state of :class:`AfcFlux` (``phi`` is the correction factor ``alpha``).

    Attributes:
        cand: The candidates of the factor per edge: the Zalesak factors, then the clamps.
        mfac: ``min(min cand, 1)`` on the edges the correction may act on, else 0.
        kappa: The vacuum factor ``2 S_i S_j / (S_i^2 + S_j^2)``.
        c_up: Upstream fractions; ``d_dn``: ``c_dn - c_up``.
        c: Fractions at every local node.
    """

    cand: np.ndarray
    mfac: np.ndarray
    kappa: np.ndarray
    c_up: np.ndarray
    d_dn: np.ndarray
    c: np.ndarray


def smooth_min1(x: np.ndarray, delta: float) -> np.ndarray:
    """C1 approximation of ``min(1, x)``: exact outside ``|x - 1| < delta``, quadratic inside."""
    x = np.minimum(x, 2.0)  # no overflow where P is tiny; the result is 1 there anyway
    t = x - 1.0 + delta
    blend = x - t * t / (4.0 * delta)
    return np.where(x <= 1.0 - delta, x, np.where(x >= 1.0 + delta, 1.0, blend))


def smooth_min1_slope(x: np.ndarray, delta: float) -> np.ndarray:
    """Derivative of :func:`smooth_min1`."""
    return np.clip(1.0 - (x - 1.0 + delta) / (2.0 * delta), 0.0, 1.0)


class AfcFlux(EdgeFlux):
    """Upwind edge fluxes plus limited antidiffusive fluxes of the species fractions.

    ``G_k,ij = b_k w_ij c_k,f F_ij + sigma w_ij (rho_k,i - rho_k,j)``,
    ``c_k,f = c_k,up + alpha_ij / 2 (c_k,dn - c_k,up)`` with the limiter of the module
    docstring. :meth:`residual` is exact; :meth:`add_jacobian` writes the first-order scheme's
    edge pattern, with the derivatives of ``kappa`` and the clamp (which depend on the edge's
    two nodes) and the Zalesak factors held (they depend on the neighbourhoods).

    Args:
        V: Blocked P1 space with one component per species.
        params: Model coefficients.
        negative_edges: Treatment of negative-weight edges, see
            :func:`fem_crossdiff.discretisation.edges.edge_weights`.
        smooth_width: Half width of the smoothing of ``min(1, x)`` in the limiter
            (:func:`smooth_min1`; :attr:`.options.AfcOptions.smooth_width`).
    """

    def __init__(self, V: fem.FunctionSpace, params: ModelParams, negative_edges: str,
                 smooth_width: float):
        super().__init__(V, params, negative_edges)
        self.smooth_width = smooth_width
        self.comm = V.mesh.comm
        imap = V.dofmap.index_map
        n = self.n
        # sums over a node's edges: P^+, P^- (n each), q and the slopes A^+, A^- of P,
        # added over the ranks
        self._sums = la.vector(imap, bs=2 * n + 1)
        self._slopes = la.vector(imap, bs=4 * n + 1)
        self._add = la.InsertMode.add
        # bounds: max of c and of -c over the node's edges, maximised over the ranks (a
        # ghosted PETSc vector: its reverse scatter can take the maximum)
        from dolfinx.la.petsc import create_vector

        self._bounds = create_vector([(imap, 2 * n)])
        # every node's neighbours, contiguous: the bounds are one reduceat per direction
        nodes = np.concatenate([self.I, self.J])
        order = np.argsort(nodes, kind="stable")
        self._nbr = np.concatenate([self.J, self.I])[order]
        counts = np.bincount(nodes, minlength=self.nloc)
        self._has_nbr = counts > 0
        self._nbr_start = (np.cumsum(counts) - counts)[self._has_nbr]
        self._free = np.ones(self.I.size, dtype=bool)  # edges the correction may act on
        self._free[self.limited] = False

    def _node_sums(self, terms: np.ndarray) -> np.ndarray:
        """Sum per-edge terms ``(E, 2, m)`` (first end, second end) over each node's edges."""
        m = terms.shape[2]
        out = np.empty((self.nloc, m))
        both = np.concatenate([terms[:, 0], terms[:, 1]])
        for k in range(m):
            out[:, k] = np.bincount(self.ends, both[:, k], self.nloc)
        return out

    def node_bounds(self, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(c^max, c^min)`` over every node's neighbourhood (collective)."""
        n, nloc = self.n, self.nloc
        arr = np.empty((nloc, 2 * n))
        arr[:, :n] = c
        arr[:, n:] = -c
        if self._nbr.size:
            vals = c[self._nbr]
            has, start = self._has_nbr, self._nbr_start
            arr[has, :n] = np.maximum(c[has], np.maximum.reduceat(vals, start, axis=0))
            arr[has, n:] = -np.minimum(c[has], np.minimum.reduceat(vals, start, axis=0))
        vec = self._bounds
        with vec.localForm() as loc:
            loc.array[:] = arr.reshape(-1)
        vec.ghostUpdate(addv=PETSc.InsertMode.MAX_VALUES, mode=PETSc.ScatterMode.REVERSE)
        vec.ghostUpdate(addv=PETSc.InsertMode.INSERT_VALUES, mode=PETSc.ScatterMode.FORWARD)
        with vec.localForm() as loc:
            arr = loc.array.reshape(nloc, 2 * n).copy()
        return arr[:, :n], -arr[:, n:]

    def limiter(self, c: np.ndarray, D: np.ndarray, derivatives: bool = False):
        """Zalesak's per-species factors ``alpha_k,ij`` and their own-edge derivatives.

        Collective. The derivatives are those of ``alpha_k,ij`` with respect to ``c_k`` at the
        edge's two nodes, through ``P``, ``Q`` and ``smin`` of the active node, with ``d_ij``,
        the bounds ``c^max, c^min`` and the other neighbours' values held (an exact matrix
        needs the distance-2 pattern). On an edge that two ranks share each uses its own part
        of ``d_ij`` there: an approximation of the Jacobian only.

        Args:
            c: Fractions at the local nodes ``(nloc, n)``.
            D: This rank's part of ``d_ij = w_ij |F_ij| / 2`` ``(E,)``.
            derivatives: Also return the derivatives (the residual needs only the factors).

        Returns:
            ``alpha_k`` ``(E, n)``, or ``(alpha_k, dalpha_k / dc_k,i, dalpha_k / dc_k,j,
            dalpha_k / dd_ij)``.
        """
        n = self.n
        ci, cj = c[self.I], c[self.J]
        dc = cj - ci
        rises_j = dc > 0.0
        up = D[:, None] * np.maximum(dc, 0.0)  # raises c_j, lowers c_i
        dn = D[:, None] * np.maximum(-dc, 0.0)  # raises c_i, lowers c_j
        E = self.I.size
        m = 4 * n + 1 if derivatives else 2 * n + 1
        # per node: P^+, P^-, q (and A^+ = dP^+/dc_self, A^- = -dP^-/dc_self)
        terms = np.empty((E, 2, m))
        terms[:, 0, :n], terms[:, 0, n:2 * n] = dn, up  # node i: P^+ = dn, P^- = up
        terms[:, 1, :n], terms[:, 1, n:2 * n] = up, dn  # node j: P^+ = up, P^- = dn
        terms[:, 0, 2 * n] = terms[:, 1, 2 * n] = D
        if derivatives:
            Dup = np.where(rises_j, D[:, None], 0.0)  # d(up) / d c_j
            Ddn = np.where(dc < 0.0, D[:, None], 0.0)  # d(dn) / d c_i
            terms[:, 0, 2 * n + 1:3 * n + 1], terms[:, 0, 3 * n + 1:] = Ddn, Dup
            terms[:, 1, 2 * n + 1:3 * n + 1], terms[:, 1, 3 * n + 1:] = Dup, Ddn
        vec = self._slopes if derivatives else self._sums
        arr = vec.array.reshape(self.nloc, m)
        arr[:] = self._node_sums(terms)
        vec.scatter_reverse(self._add)
        vec.scatter_forward()
        sums = vec.array.reshape(self.nloc, m)
        Pp, Pm, q = sums[:, :n], sums[:, n:2 * n], sums[:, 2 * n:2 * n + 1]
        cmax, cmin = self.node_bounds(c)
        Qp = q * np.maximum(cmax - c, 0.0)
        Qm = q * np.maximum(c - cmin, 0.0)
        I, J = self.I, self.J
        if not derivatives:
            Rp, Rm = self._ratio(Qp, Pp), self._ratio(Qm, Pm)
            return np.where(rises_j, np.minimum(Rm[I], Rp[J]), np.minimum(Rp[I], Rm[J]))
        Ap, Am = sums[:, 2 * n + 1:3 * n + 1], sums[:, 3 * n + 1:]
        Rp, sp, ip, xp = self._ratio(Qp, Pp, q)
        Rm, sm, im, xm = self._ratio(Qm, Pm, q)
        # d x / d c_self: x^+ = Q^+/P^+ with dQ^+ = -q, dP^+ = A^+; x^- with dQ^- = q, dP^- = -A^-
        # (written with x and the ratios q/P, A/P, bounded by 1e8 where the slope is kept)
        gp = sp * (-q * ip - xp * (Ap * ip))
        gm = sm * (q * im + xm * (Am * im))
        # the active node and its R: c_j rises -> min(R^-_i, R^+_j), else min(R^+_i, R^-_j)
        Ri = np.where(rises_j, Rm[I], Rp[I])
        Rj = np.where(rises_j, Rp[J], Rm[J])
        at_i = Ri <= Rj
        Z = np.where(at_i, Ri, Rj)
        # own node: g; other node: through the edge's term of P (d_ij times the sign's slope)
        # rises_j: P^-_i has + d (c_j - c_i), P^+_j has + d (c_j - c_i)
        gi_self = np.where(rises_j, gm[I], gp[I])
        gj_self = np.where(rises_j, gp[J], gm[J])
        s_i = np.where(rises_j, sm[I], sp[I])
        s_j = np.where(rises_j, sp[J], sm[J])
        x_i = np.where(rises_j, xm[I], xp[I])
        x_j = np.where(rises_j, xp[J], xm[J])
        inv_i = np.where(rises_j, im[I], ip[I])
        inv_j = np.where(rises_j, ip[J], im[J])
        Dk = D[:, None] * (dc != 0.0)
        # x_i = Q_i / P_i, dP_i / dc_j = D (the edge's term |c_j - c_i| D grows with c_j
        # when c_j > c_i, i.e. rises_j; else it shrinks: dP / dc_j = -D)
        sgn = np.where(rises_j, 1.0, -1.0)
        dxi_dcj = -s_i * x_i * (Dk * inv_i) * sgn
        dxj_dci = -s_j * x_j * (Dk * inv_j) * (-sgn)
        dZi = np.where(at_i, gi_self, dxj_dci)
        dZj = np.where(at_i, dxi_dcj, gj_self)
        # through the edge's own d_ij (in q and in P of the active node):
        # d x / d d_ij = (room - x |c_j - c_i|) / P, room the distance to the active bound
        room_i = np.where(rises_j, (c - cmin)[I], (cmax - c)[I])
        room_j = np.where(rises_j, (cmax - c)[J], (c - cmin)[J])
        adc = np.abs(dc)
        dZD = np.where(at_i, s_i * (room_i - x_i * adc) * inv_i,
                       s_j * (room_j - x_j * adc) * inv_j)
        return Z, dZi, dZj, dZD

    def _ratio(self, Q: np.ndarray, P: np.ndarray, q: np.ndarray | None = None):
        """``smin(Q / P)`` (1 where ``P = 0``), and ``smin'``, ``1 / P``, ``min(Q / P, 2)``.

        The last three are for the Jacobian. They vanish where ``P < 1e-8 q`` (fraction
        differences below 1e-8): there the ratio of two vanishing sums has huge derivatives
        that would only spoil the linear solve, and the factor is held instead.
        """
        pos = P > 0.0
        safe = np.where(pos, P, 1.0)
        x = np.minimum(Q, 2.0 * safe) / safe  # Q / P up to 2, where smin is 1 already
        delta = self.smooth_width
        if q is None:
            return np.where(pos, smooth_min1(x, delta), 1.0)
        usable = (P > 1e-8 * q) & (P > 1e-200)  # 1e-200: no overflow of 1 / P
        inv = np.where(usable, 1.0 / np.where(usable, P, 1.0), 0.0)
        slope = np.where(usable, smooth_min1_slope(x, delta), 0.0)
        return np.where(pos, smooth_min1(x, delta), 1.0), slope, inv, np.where(usable, x, 0.0)

    def edge_state(self, rho: np.ndarray) -> tuple[np.ndarray, AfcState]:
        """Edge fluxes and the quantities of the edge Jacobian (collective).

        The cache test is reduced over the ranks: the limiter communicates, so every rank
        must take the same branch.
        """
        key = self._cache_key
        hit = key is not None and key.shape == rho.shape and np.array_equal(key, rho)
        if self.comm.allreduce(hit, op=MPI.LAND):
            return self._cache
        p, a = self.params, self.a
        ri, rj = rho[self.I], rho[self.J]
        S = rho @ a
        ok = S > 1e-300
        inv_node = np.where(ok, 1.0 / np.where(ok, S, 1.0), 0.0)
        c = rho * inv_node[:, None]  # fractions at every node (0 in vacuum)
        Si, Sj = np.maximum(S[self.I], 0.0), np.maximum(S[self.J], 0.0)
        inv_i, inv_j = inv_node[self.I], inv_node[self.J]
        ci, cj = c[self.I], c[self.J]
        Pi, Pj = self.law.pressure(Si), self.law.pressure(Sj)
        up_i = Pi >= Pj
        dP = Pi - Pj
        Sm = 0.5 * (Si + Sj)
        F = Sm * dP
        zal = self.limiter(c, 0.5 * self.W * np.abs(F))
        upc = up_i[:, None]
        c_up = np.where(upc, ci, cj)
        d_dn = np.where(upc, cj, ci) - c_up
        # |c_f - c_up| <= |c_up|: c_f has the sign of c_up (the positivity proof)
        big = np.abs(d_dn) > 0.0
        clamp = np.where(big, 2.0 * np.abs(c_up) / np.where(big, np.abs(d_dn), 1.0), np.inf)
        s2 = Si * Si + Sj * Sj
        kappa = np.where(s2 > 0.0, 2.0 * Si * Sj / np.where(s2 > 0.0, s2, 1.0), 0.0)
        cand = np.concatenate([zal, clamp], axis=1)  # the factor is the smallest candidate
        mfac = np.where(self._free, np.minimum(cand.min(axis=1), 1.0), 0.0)
        alpha = mfac * kappa
        cf = c_up + (0.5 * alpha)[:, None] * d_dn
        q = (self.b * cf) * F[:, None] + p.sigma * (ri - rj)
        G = self.W[:, None] * q
        lim = limit_fluxes(G, q, ri, rj, self.limited, self.beta)
        out = G, AfcState(c_i=ci, c_j=cj, S_i=Si, S_j=Sj, inv_i=inv_i, inv_j=inv_j, up_i=up_i,
                          phi=alpha, c_f=cf, F=F, S_m=Sm, dP=dP, lim=lim, cand=cand,
                          mfac=mfac, kappa=kappa, c_up=c_up, d_dn=d_dn, c=c)
        self._cache_key = rho.copy()
        self._cache = out
        return out

    def _alpha_derivatives(self, s: AfcState) -> tuple[np.ndarray, np.ndarray]:
        """``d alpha / d rho`` at both ends ``(E, n)`` through ``kappa`` and the clamp.

        ``kappa`` and the clamp depend on the edge's two nodes only; of a Zalesak factor only
        the derivatives with respect to those two nodes are kept (:meth:`limiter`). The
        active candidate (a clamp ``2 |u| / |d|``, ``u = c_k,up``, ``d = c_k,dn - c_k,up``, or
        a Zalesak factor of species ``k``) enters through ``d c_k / d rho = (e_k - c_k a) / S``
        at each end.
        """
        ci, cj, Si, Sj, inv_i, inv_j, up_i = s.c_i, s.c_j, s.S_i, s.S_j, s.inv_i, s.inv_j, s.up_i
        F, Sm, dP = s.F, s.S_m, s.dP
        cand, mfac, kappa, c_up, d_dn, c = s.cand, s.mfac, s.kappa, s.c_up, s.d_dn, s.c
        # the Zalesak factors' own-edge derivatives: a second pass of the limiter
        _, dz_i, dz_j, dz_D = self.limiter(c, 0.5 * self.W * np.abs(F), derivatives=True)
        # d d_ij / d S_end = W sign(F) (dF / dS_end) / 2 (this rank's part of W)
        half = 0.5 * self.W * np.sign(F)
        dD_i = half * (0.5 * dP + Sm * self.law.derivative(Si))
        dD_j = half * (0.5 * dP - Sm * self.law.derivative(Sj))
        a, n = self.a, self.n
        s2 = Si * Si + Sj * Sj
        # d kappa / d S_i = (2 S_j / s2) (S_j^2 - S_i^2) / s2, as two bounded-ish ratios
        ok = s2 > 1e-300
        inv2 = np.where(ok, 1.0 / np.where(ok, s2, 1.0), 0.0)
        skew = (Sj * Sj - Si * Si) * inv2
        dk_i = mfac * 2.0 * Sj * inv2 * skew  # m d kappa / d S_i
        dk_j = -mfac * 2.0 * Si * inv2 * skew
        da_i = dk_i[:, None] * a
        da_j = dk_j[:, None] * a
        arg = cand.argmin(axis=1)
        act = np.flatnonzero(self._free & (mfac < 1.0))
        if act.size:
            ka = arg[act]
            clamp = ka >= n
            k = np.where(clamp, ka - n, ka)
            u, d = c_up[act, k], d_dn[act, k]
            # 1/|d| and the clamp's value 2|u|/|d| instead of 1/d^2: d^2 underflows to 0 for
            # |d| < 1e-154 (a front between nodes gave 0/0 at u = 0 and a failed solve)
            inv = np.where(clamp, 1.0 / np.where(clamp, np.abs(d), 1.0), 1.0)
            value = 2.0 * np.abs(u) * inv
            dC_du = 2.0 * np.sign(u) * inv + value * np.sign(d) * inv
            dC_dw = -value * np.sign(d) * inv
            upa = up_i[act]
            # the active candidate's derivatives with respect to c_k at i and j
            dm_i = np.where(clamp, np.where(upa, dC_du, dC_dw), dz_i[act, k])
            dm_j = np.where(clamp, np.where(upa, dC_dw, dC_du), dz_j[act, k])
            e_k = np.zeros((act.size, n))
            e_k[np.arange(act.size), k] = 1.0
            c_i_k, c_j_k = ci[act, k], cj[act, k]
            da_i[act] += (kappa[act] * dm_i * inv_i[act])[:, None] * (e_k - c_i_k[:, None] * a)
            da_j[act] += (kappa[act] * dm_j * inv_j[act])[:, None] * (e_k - c_j_k[:, None] * a)
            zd = np.where(clamp, 0.0, dz_D[act, k]) * kappa[act]
            da_i[act] += (zd * dD_i[act])[:, None] * a
            da_j[act] += (zd * dD_j[act])[:, None] * a
        return da_i, da_j

    def fill_blocks(self, rho: np.ndarray, out: np.ndarray):
        """Edge Jacobian: exact but for the Zalesak factors' neighbourhood dependence."""
        terms = self.edge_state(rho)[1]
        F, d_dn = terms.F, terms.d_dn
        # alpha held (as muscl's phi in its frozen Jacobian), then its own derivatives
        ui, uj, di, dj, bw = self.held_factor_blocks(terms)
        # d G_k = b_k w F d_k / 2 d alpha: a rank-one term with its own row vector
        ext = bw * (0.5 * F)[:, None] * d_dn
        da_i, da_j = self._alpha_derivatives(terms)
        n = self.n
        Ji = ui[:, :, None] * self.a + ext[:, :, None] * da_i[:, None, :]
        Jj = uj[:, :, None] * self.a + ext[:, :, None] * da_j[:, None, :]
        r = np.arange(n)
        Ji[:, r, r] += di
        Jj[:, r, r] += dj
        self.write_dense(Ji, Jj, out)
