"""The ``"muscl"`` edge fluxes: upwind fluxes with a limited second-order face fraction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fem_crossdiff.compat import MPI, fem
from fem_crossdiff.discretisation.edges import limit_fluxes
from fem_crossdiff.discretisation.gradients import NodalGradient
from fem_crossdiff.discretisation.mesh_sizes import mesh_sizes
from fem_crossdiff.models.base import FaceState
from fem_crossdiff.models.edge_flux import EdgeFlux
from fem_crossdiff.models.muscl import limiters as lim_fns
from fem_crossdiff.models.muscl.options import Limiter, SmoothSensor, as_limiter
from fem_crossdiff.params import ModelParams

__all__ = ["MusclFlux", "MusclState"]


@dataclass(frozen=True)
class MusclState(FaceState):
    """The per-edge state of :class:`MusclFlux`: :class:`FaceState` and what ``J`` needs.

    Attributes:
        rho: The state it was evaluated at ``(nloc, n)``.
        S: Total density per local node.
        inv_node: ``1 / S`` per local node (0 in vacuum).
        c_up: Upstream fractions; ``d_dn``: ``c_dn - c_up``; ``d_up``: the difference across
            the upstream node along the edge (``2 grad(c)_up . d_vec - d_dn``).
        d_vec: Edge vectors from the upstream to the downstream node.
        jump: ``a_k |d_dn|``, the sensor's scaled jump.
        phi_lim, clamp, phi_k: The limiter, the clamp and their (smooth) minimum per species.
        Phi: ``min(min_k phi_k, 2)``; ``kappa``: the vacuum factor ``2 S_i S_j / s2``.
        s2: ``S_i^2 + S_j^2``; ``d2``: the square of the vacuum regularisation of the slopes.
    """

    rho: np.ndarray
    S: np.ndarray
    inv_node: np.ndarray
    c_up: np.ndarray
    d_dn: np.ndarray
    d_up: np.ndarray
    d_vec: np.ndarray
    jump: np.ndarray
    phi_lim: np.ndarray
    clamp: np.ndarray
    phi_k: np.ndarray
    Phi: np.ndarray
    kappa: np.ndarray
    s2: np.ndarray
    d2: float


class MusclFlux(EdgeFlux):
    """Upwind edge fluxes with a limited second-order reconstruction of the species fractions.

    ``G_k,ij = b_k w_ij c_k,f F_ij + sigma w_ij (rho_k,i - rho_k,j)`` as in the first-order
    scheme (:mod:`fem_crossdiff.models.upwind`), with the upstream fraction ``c_k,up`` replaced
    by the face value

        c_k,f = c_k,up + phi / 2 (c_k,dn - c_k,up),
        phi = min_k min(phi_lim(r_k), clamp_k),   r_k = D_k,up / (c_k,dn - c_k,up),

    where ``D_k,up = 2 grad(c_k)_up . (x_dn - x_up) - (c_k,dn - c_k,up)`` is the difference
    across the upstream node along the edge ("extended edge" value from the recovered nodal
    gradient, exact on uniform 1D meshes), and ``phi_lim`` a TVD limiter (:mod:`.options`;
    ``"sensor"`` also depends on the scaled jump ``a_k |c_k,dn - c_k,up|``; ``"smooth"``
    replaces the limiter and the clamp's minimum by smooth functions, see
    :func:`smooth_limiter` and :func:`smooth_clamped`).

    Why one ``phi`` for all species: ``sum_k a_k (c_k,dn - c_k,up) = 0``, so
    ``sum_k a_k c_k,f = 1`` and ``sum_k a_k G_k`` is exactly the one-species scheme for
    ``u = sum_k a_k rho_k`` (the reduction of Theorem 1.8 survives the reconstruction). The
    limiter is multiplied by ``kappa = 2 S_i S_j / (S_i^2 + S_j^2)`` (``1 - O(h^2)`` on smooth
    data), which takes it continuously to 0 towards vacuum, where ``c_k`` is undefined.

    Why the clamp: ``clamp_k = 2 |c_k,up| / |c_k,dn - c_k,up|``, so ``|c_k,f - c_k,up| <=
    |c_k,up|``: ``c_k,f`` has the sign of ``c_k,up`` and tends to zero with it. Then no mass
    leaves a node with ``rho_k < 0`` towards a node with ``rho_k >= 0``, which is what the
    positivity proof of implicit Euler needs (``docs/schemes.md``), and the face value is
    continuous where a species vanishes. Where ``c_k,up >> h |grad c_k|`` it is inactive.

    :meth:`add_jacobian` assembles the frozen-limiter Jacobian (``phi`` and the gradients
    held, the edge pattern of the first-order scheme); :meth:`exact_derivatives` gives the
    exact one (assembled with the distance-2 pattern by
    :class:`fem_crossdiff.models.muscl.jacobian.ExactJacobian`); :meth:`residual` is exact.

    Args:
        V: Blocked P1 space with one component per species.
        params: Model coefficients.
        negative_edges: Treatment of negative-weight edges, see
            :func:`~fem_crossdiff.discretisation.edges.edge_weights`.
        limiter: A :class:`~fem_crossdiff.models.muscl.options.Limiter`, or a name (its
            defaults; default :class:`~fem_crossdiff.models.muscl.options.SmoothSensor`).

    Attributes:
        limiter: The limiter object.
        grad: The gradient recovery of the fractions.
        d: Edge vectors ``x_J - x_I`` ``(E, gdim)``.
        vacuum_scale: Total density below which the fractions are regularised in the slopes.
    """

    def __init__(self, V: fem.FunctionSpace, params: ModelParams, negative_edges: str = "voronoi",
                 limiter: str | Limiter = "smooth-sensor"):
        limiter = as_limiter(limiter)
        super().__init__(V, params, negative_edges)
        self.limiter = limiter
        self.comm = V.mesh.comm
        self.grad = NodalGradient(V, self.n)
        X = self.grad.X
        self.d = X[self.J] - X[self.I]  # (E, gdim), from the first to the second end
        self.vacuum_scale = 0.0
        if limiter.smooth:  # eps^2 = (K h / L)^3 per edge (h its length), (E, 1)
            h = np.linalg.norm(self.d, axis=1)
            L = mesh_sizes(V.mesh).diameter  # collective
            self._eps2 = ((limiter.k * h / L) ** 3)[:, None]

    def set_vacuum_scale(self, rho: np.ndarray, rel: float = 1e-3) -> None:
        """``vacuum_scale = rel * max S`` of the state ``rho`` (collective; once per step)."""
        smax = float((rho @ self.a).max(initial=0.0))
        self.vacuum_scale = rel * self.comm.allreduce(smax, op=MPI.MAX)
        self._cache_key = None

    def edge_state(self, rho: np.ndarray) -> tuple[np.ndarray, MusclState]:
        """Edge fluxes and the frozen-limiter quantities of the Jacobian (collective).

        The cache test is reduced over the ranks: the gradient recovery communicates, so all
        ranks must take the same branch.
        """
        key = self._cache_key
        hit = key is not None and key.shape == rho.shape and np.array_equal(key, rho)
        if self.comm.allreduce(hit, op=MPI.LAND):
            return self._cache
        p, a = self.params, self.a
        S = rho @ a
        ok = S > 1e-300
        inv_node = np.where(ok, 1.0 / np.where(ok, S, 1.0), 0.0)
        c = rho * inv_node[:, None]  # fractions at every node (0 in vacuum)
        # the slopes are taken of fractions regularised near vacuum, rho / sqrt(S^2 + d^2):
        # the true fraction jumps when an empty node starts to fill, and through the
        # gradients that jump would reach the limiter of every neighbouring edge
        d2 = self.vacuum_scale ** 2
        c_reg = rho / np.sqrt(S * S + d2)[:, None] if d2 > 0.0 else c
        grad = self.grad(c_reg)  # (nloc, n, gdim)
        # the gathers to the edges' ends and to the upstream end, one compiled pass each
        # (kernels: the numpy gathers, np.where and einsum took 0.1 s per residual at 252k
        # unknowns): ri, rj, ci, cj = rho, c at the ends, Si, Sj = max(S, 0), inv_i, inv_j
        # (imported here: numba loads with the first muscl flux, not with the registry)
        from fem_crossdiff.models.muscl.kernels import edge_gather, upstream_terms

        nE, n = self.I.size, self.n
        ri, rj, ci, cj = (np.empty((nE, n)) for _ in range(4))
        Si, Sj, inv_i, inv_j = (np.empty(nE) for _ in range(4))
        edge_gather(self.I, self.J, rho, c, S, inv_node, ri, rj, ci, cj, Si, Sj, inv_i, inv_j)
        Pi, Pj = self.law.pressure(Si), self.law.pressure(Sj)
        up_i = Pi >= Pj
        # c_up, d_dn = c_dn - c_up, d_vec (up -> dn), d_up = 2 grad(c)_up . d_vec - d_dn
        c_up, d_dn, d_up = (np.empty((nE, n)) for _ in range(3))
        d_vec = np.empty_like(self.d)
        upstream_terms(self.I, self.J, up_i, ci, cj, self.d, grad, c_up, d_dn, d_vec, d_up)
        jump = np.abs(d_dn) * a  # a_k c_k lies in [0, 1]: the jump's scale (the sensor's)
        if self.limiter.smooth:
            # in the scaled differences a_k d (the same for both species of a pair: sum_k
            # a_k d_k = 0), and a smooth minimum with the clamp (no branch to flip)
            eps2 = self._eps2
            phi_lim = self._smooth_limiter(d_up * a, d_dn * a, eps2)
            phi_k, clamp = self._smooth_clamp(phi_lim, d_dn * a, c_up * a, np.sqrt(eps2))
        else:
            phi_lim = lim_fns.slope_limiter(self.limiter, d_up, d_dn, jump)
            # |c_f - c_up| <= |c_up| on every edge: c_f has the sign of c_up and tends to 0
            # with it from both sides (a clamp on one side only jumps at c_up = 0 and Newton
            # cycles)
            big = np.abs(d_dn) > 0.0
            clamp = np.where(big, 2.0 * np.abs(c_up) / np.where(big, np.abs(d_dn), 1.0),
                             np.inf)
            phi_k = np.minimum(phi_lim, clamp)
        # kappa = 2 S_i S_j / (S_i^2 + S_j^2) = 1 - O(h^2) where S is smooth, 0 in vacuum:
        # the correction fades continuously where c is undefined (a switch at S = 0 makes
        # the residual discontinuous while a node fills, and Newton cycles)
        s2 = Si * Si + Sj * Sj
        kappa = np.where(s2 > 0.0, 2.0 * Si * Sj / np.where(s2 > 0.0, s2, 1.0), 0.0)
        Phi = np.minimum(phi_k.min(axis=1), 2.0)
        phi = Phi * kappa
        cf = c_up + (0.5 * phi)[:, None] * d_dn
        dP = Pi - Pj
        Sm = 0.5 * (Si + Sj)
        F = Sm * dP
        q = (self.b * cf) * F[:, None] + p.sigma * (ri - rj)
        G = self.W[:, None] * q
        lim = limit_fluxes(G, q, ri, rj, self.limited, self.beta)
        key = rho.copy()
        # with what the exact Jacobian needs besides (kept by reference: no extra work)
        out = G, MusclState(c_i=ci, c_j=cj, S_i=Si, S_j=Sj, inv_i=inv_i, inv_j=inv_j,
                            up_i=up_i, phi=phi, c_f=cf, F=F, S_m=Sm, dP=dP, lim=lim, rho=key,
                            S=S, inv_node=inv_node, c_up=c_up, d_dn=d_dn, d_up=d_up,
                            d_vec=d_vec, jump=jump, phi_lim=phi_lim, clamp=clamp, phi_k=phi_k,
                            Phi=Phi, kappa=kappa, s2=s2, d2=d2)
        self._cache_key = key
        self._cache = out
        return out

    @property
    def state(self) -> MusclState | None:
        """The per-edge state of the last evaluation (``None`` before the first)."""
        return None if self._cache is None else self._cache[1]

    def fill_blocks(self, rho: np.ndarray, out: np.ndarray):
        """Frozen-limiter Jacobian: ``phi`` and the gradients held, ``c_i, c_j, S, P`` exact."""
        ui, uj, di, dj, _ = self.held_factor_blocks(self.edge_state(rho)[1])
        self.write_blocks(ui, uj, di, dj, out)

    def exact_derivatives(self, rho: np.ndarray):
        """The exact derivatives of the edge fluxes ``G`` (E, n), limiter included.

        ``G_e`` depends on the values at its ends directly (fractions, pressure, ``kappa``,
        the limiter's arguments ``c_dn - c_up`` and ``c_up``) and, through ``D_up``, on the
        recovered gradient of the fraction of the limiting species ``k*`` (the argmin of
        ``phi_k``) at the upstream node. ``phi`` is piecewise smooth (min over species, the
        limiter's and the clamp's kinks, the switch of the upstream node): on each piece the
        derivative is the classical one, at a kink the one-sided derivative of the branch
        taken by the residual.

        Returns:
            ``(Ji, Jj, Y, kstar, up_i)``: ``Ji[e, k, l] = dG_e,k / drho_l`` at the first end,
            ``Jj`` at the second, ``Y`` (E, n) with ``dG_e,k / d grad(c_reg,k*)_up = Y[e, k]
            d_vec[e]`` (``d_vec`` from the upstream to the downstream node), ``kstar`` (E,)
            and the upstream flag (E,).
        """
        p, a, b, w = self.params, self.a, self.b, self.W
        n = self.n
        x = self.edge_state(rho)[1]
        ci, cj, Si, Sj, inv_i, inv_j = x.c_i, x.c_j, x.S_i, x.S_j, x.inv_i, x.inv_j
        up_i, phi, cf, F, Sm, dP, lim = x.up_i, x.phi, x.c_f, x.F, x.S_m, x.dP, x.lim
        nE = ci.shape[0]
        ar = np.arange(nE)
        kstar = np.argmin(x.phi_k, axis=1)
        Phi, kappa = x.Phi, x.kappa
        if self.limiter.smooth:  # every term weighted: no branch, no division
            A_up, A_dn, A_c = self._smooth_coefficients(x, ar, kstar)
            act = np.ones(nE, dtype=bool)
        else:
            A_up, A_dn, A_c, act = self._branch_coefficients(x, ar, kstar)
        # phi's derivative reaches species k through d_dn,k dphi ~ d_dn,k / d_dn,k*; with
        # sum_k a_k d_dn,k = 0 the ratio is O(1) (for two species exactly a_k* / a_k), unless
        # d_dn,k* is at round-off level (a fraction equal to 1 or 0 up to 1e-16), where it
        # is noise and reached 1e80 (measured: Newton diverged). There phi is held, as in the
        # frozen Jacobian: the residual is unchanged, the neglected term moves G by round-off.
        # (the test of act against round-off, the coefficients per end, kappa's derivative,
        # the blocks and Y: one compiled pass, kernels.exact_blocks; its docstring
        # gives the formulas and tests/test_schemes.py their numpy form)
        from fem_crossdiff.models.muscl.kernels import exact_blocks

        Ji, Jj, Y = np.empty((nE, n, n)), np.empty((nE, n, n)), np.empty((nE, n))
        exact_blocks(self.I, self.J, x.S, up_i, act, A_up, A_dn, A_c, kstar, x.d_dn,
                     ci, cj, inv_i, inv_j, Si, Sj, self.law.derivative(Si),
                     self.law.derivative(Sj), dP, Sm, phi, kappa, Phi, F, cf, w, a, b,
                     float(p.sigma), max(1e-9 * self.vacuum_scale, 1e-300), Ji, Jj, Y)
        eye = np.eye(n)
        if lim is not None:
            e, (theta, g_dth_i, g_dth_j) = self.limited, lim
            Ji[e] *= theta[:, :, None]
            Jj[e] *= theta[:, :, None]
            Ji[e] += g_dth_i[:, :, None] * eye
            Jj[e] += g_dth_j[:, :, None] * eye
            Y[e] *= theta
        return Ji, Jj, Y, kstar, up_i

    def _branch_coefficients(self, x: MusclState, ar: np.ndarray, kstar: np.ndarray):
        """``d Phi / d (D_up, c_dn - c_up, c_up)`` of species ``k*`` on the branch taken.

        The limiter ``phi_lim(r)`` or the clamp ``2 |c_up| / |dd|``, whichever is smaller; at
        a kink the one-sided derivative (:func:`slope_limiter_slope`). Returns the three
        coefficients and where they apply (``act``: not at ``phi = 2`` nor ``dd ~ 0``).
        """
        a = self.a
        act = x.phi_k[ar, kstar] < 2.0  # else phi = 2 kappa, no limiter derivative
        du, dd, cu = x.d_up[ar, kstar], x.d_dn[ar, kstar], x.c_up[ar, kstar]
        use_clamp = x.clamp[ar, kstar] < x.phi_lim[ar, kstar]
        # limiter branch: phi(r), r = du / dd
        jump = x.jump[ar, kstar]
        slope = lim_fns.slope_limiter_slope(self.limiter, du, dd, jump)
        tiny = np.abs(dd) < 1e-150  # no 1/dd^2 overflow (the term is held there, see below)
        safe_dd = np.where(tiny, 1.0, dd)
        inv_dd = 1.0 / safe_dd
        r = du * inv_dd
        A_up = np.where(use_clamp, 0.0, slope * inv_dd)
        # the sensor's weight depends on jump = a_k* |dd| besides r
        dphi_jump = lim_fns.slope_limiter_jump_slope(self.limiter, du, dd, jump) * a[kstar]
        A_dn = np.where(use_clamp, 0.0, -slope * r * inv_dd + dphi_jump * np.sign(dd))
        # clamp branch: 2 |c_up| / |dd| (at c_up = 0 the derivative towards c_up > 0)
        sg = np.where(cu >= 0.0, 1.0, -1.0)
        A_dn = np.where(use_clamp, -np.where(tiny, 0.0, x.clamp[ar, kstar]) * inv_dd, A_dn)
        A_c = np.where(use_clamp, 2.0 * sg * np.abs(inv_dd), 0.0)
        act &= ~tiny
        return A_up, A_dn, A_c, act

    def _smooth_limiter(self, up, dn, eps2, derivative=False):
        """:func:`.limiters.smooth_limiter` or ``smooth_sensor_limiter`` (by :attr:`limiter`)."""
        lim = self.limiter
        if isinstance(lim, SmoothSensor):
            return lim_fns.smooth_sensor_limiter(up, dn, eps2, derivative,
                                                 band=lim.sensor_band, slope=lim.slope)
        return lim_fns.smooth_limiter(up, dn, eps2, derivative)

    def _smooth_clamp(self, x, dn, c, delta, derivative=False):
        """:func:`.limiters.smooth_clamped` or ``compact_clamped`` (``SmoothSensor``)."""
        lim = self.limiter
        if isinstance(lim, SmoothSensor):
            return lim_fns.compact_clamped(x, dn, c, delta, derivative, width=lim.width,
                                           band=lim.band)
        return lim_fns.smooth_clamped(x, dn, c, delta, derivative, p=lim.p)

    def _smooth_coefficients(self, x: MusclState, ar: np.ndarray, kstar: np.ndarray):
        """``d Phi / d (D_up, c_dn - c_up, c_up)`` of species ``k*`` for the smooth limiters.

        ``Phi = g(x(u, v), v, c)`` in the scaled ``u = a D_up``, ``v = a (c_dn - c_up)``,
        ``c = a c_up`` (:func:`smooth_limiter` or :func:`smooth_sensor_limiter`, then
        :func:`smooth_clamped` or :func:`compact_clamped`): the chain rule through both the
        limiter and the clamp, each weighted by the smooth minimum's derivative (for
        ``"smooth-sensor"`` the jump ``|v|`` of the sensor's weight is part of ``dx / dv``,
        that of the clamp's width part of ``dg / dv``).
        """
        ak = self.a[kstar]
        u, v, c = (getattr(x, key)[ar, kstar] * ak for key in ("d_up", "d_dn", "c_up"))
        eps2 = self._eps2[:, 0]
        phi_lim, dx_du, dx_dv = self._smooth_limiter(u, v, eps2, derivative=True)
        _, _, g_x, g_v, g_c = self._smooth_clamp(phi_lim, v, c, np.sqrt(eps2), derivative=True)
        return ak * g_x * dx_du, ak * (g_x * dx_dv + g_v), ak * g_c

    def c_reg_derivative(self) -> np.ndarray:
        """``d c_reg,k / d rho_l`` (nloc, n, n) at every local node, at the last state.

        ``c_reg = rho / sqrt(S^2 + d^2)`` (``rho / S`` without the regularisation).
        """
        x, a = self.state, self.a
        S, d2 = x.S, x.d2
        rho = x.rho
        eye = np.eye(self.n)[None]
        if d2 > 0.0:
            inv = 1.0 / np.sqrt(S * S + d2)
            return (eye * inv[:, None, None]
                    - (rho * (S * inv ** 3)[:, None])[:, :, None] * a[None, None, :])
        inv = x.inv_node
        c = rho * inv[:, None]
        return (eye - c[:, :, None] * a[None, None, :]) * inv[:, None, None]
