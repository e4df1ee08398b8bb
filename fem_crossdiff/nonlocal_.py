"""The nonlocal system (1.5): mollified pressure projections driving upwind P1 fluxes.

``d_t rho_k = div(b_k rho_k grad g) + sigma Lap rho_k``, ``u_l = V^eps * rho_l``,
``g = V^eps * (sum_l a_l u_l)^(m-1)`` on a bounded domain with no-flux walls, where the
convolutions use a kernel normalised at the walls (``NonlocalParams.boundary``: the symmetric
Sinkhorn scaling by default, see :class:`NonlocalParams`).

Discretisation. ``M`` is the mollification matrix of :mod:`fem_crossdiff.mollify` on the P1
space (zero extension), symmetrised in the lumped inner product, ``M_s = (M + D^-1 M^T D) / 2``
with ``D`` the lumped mass, then normalised at the walls to ``K`` (``K 1 = 1``, ``D K``
symmetric; ``K = M_s`` for ``boundary="zero"``), so that ``g = K (a . K rho)^(m-1)`` is
*exactly* the lumped-L2 gradient of the discrete regularised energy

    A_eps,h = (1/m) sum_i m_i S_i^m + sum_k (a_k/b_k) sigma sum_i m_i rho_k,i log rho_k,i,
    S = sum_l a_l K rho_l,

the discrete counterpart of (1.4) (integrated over Omega). The transport is the upwind edge
flux ``b_k w_ij rho_k,up (g_i - g_j)`` (upstream: larger ``g``), which keeps every density
nonnegative (M-matrix, ``w_ij >= 0``) and conserves every species' mass.

Two time discretisations:

* ``coupling="linear"``: ``g`` from the previous step, one linear solve per step (first order
  in the coupling). The lag makes it only conditionally stable (roughly
  ``dt <~ eps^2 / (b (m-1) S^(m-2))``); a too large step shows as an increase of
  ``A_eps,h`` and concentrations, so the stepper rejects steps that increase the energy and
  retries them smaller;
* ``coupling="implicit"``: ``g`` of the new state, Newton with the full Jacobian applied
  matrix-free (the nonlocal part is ``B(rho) K diag(P'(S)) K``), preconditioned by
  the frozen-``g`` Jacobian. With implicit Euler and ``sigma = 0`` the energy ``A_eps,h`` is
  nonincreasing: by convexity ``A(rho^{n+1}) - A(rho^n) <= -dt sum_k a_k b_k sum_edges
  w_ij rho_k,up (g_i - g_j)^2 <= 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ufl

from fem_crossdiff.compat import MPI, PETSc, dolfinx, fem
from fem_crossdiff.discretisation.edges import edge_weights, limit_fluxes, limiter_ratio
from fem_crossdiff.discretisation.pattern import BlockPattern
from fem_crossdiff.errors import ParameterError
from fem_crossdiff.mollifiers import KERNELS
from fem_crossdiff.params import COUPLINGS, ModelParams

#: Treatments of the mollification at the walls (see :class:`NonlocalParams`).
BOUNDARIES = ("sinkhorn", "diagonal", "zero")


@dataclass(frozen=True)
class NonlocalParams:
    """Parameters of the nonlocal model (1.5).

    ``boundary`` is the treatment of the convolutions at the walls of the bounded domain
    (``docs/walls.md`` has the measurements behind the choice):

    * ``"sinkhorn"`` (default): the doubly stochastic kernel ``e(x) V^eps(x - y) e(y)`` on
      Omega, ``K = E M_s E`` with ``K 1 = 1``. Constants are stationary and the model tends to
      (1.1) with no-flux walls as ``eps -> 0``. The scaling ``e`` is largest at the walls (about
      1.6 at a flat wall) and decays quickly away from them: ``|e - 1|`` is about 4e-4 at
      2 eps and 1e-5 at 3 eps from a wall;
    * ``"diagonal"``: ``K = M_s + diag(1 - M_s 1)``, the kernel's deficit at a wall node kept
      at the node (also symmetric, doubly stochastic, ``K 1 = 1``), which changes nothing
      farther than ``eps`` from a wall; its matrix-free implicit Newton needs many more Krylov
      iterations (the local part is not in the preconditioner: x40 measured on a disk);
    * ``"zero"``: ``rho`` extended by zero outside Omega (the free-space convolutions), which
      halves ``S`` at a flat wall and pulls mass into walls and corners.

    Attributes:
        eps: Mollifier radius, ``eps > 0`` (and at least two cells wide, checked on the mesh).
        kernel: Mollifier name, one of :data:`fem_crossdiff.mollifiers.KERNELS`.
        coupling: ``"linear"`` (``g`` lagged) or ``"implicit"`` (Newton, matrix-free Jacobian).
        allow_small_eps: Downgrade the "kernel spans fewer than two cells" error to a warning.
        subdivisions: Composite quadrature refinement of the mollification operator.
        boundary: ``"normalized"`` or ``"zero"``, see above.
    """

    eps: float
    kernel: str = "bump"
    coupling: str = "linear"
    allow_small_eps: bool = False
    subdivisions: int = 1
    boundary: str = "sinkhorn"

    def __post_init__(self):
        try:
            eps = float(self.eps)
        except (TypeError, ValueError):
            raise ParameterError("eps", self.eps, "eps must be a number > 0") from None
        if not (np.isfinite(eps) and eps > 0):
            raise ParameterError("eps", self.eps, "eps must be a finite number > 0")
        object.__setattr__(self, "eps", eps)
        if self.kernel not in KERNELS:
            raise ParameterError("kernel", self.kernel,
                                 f"unknown mollifier; one of {', '.join(KERNELS)}")
        if self.coupling not in COUPLINGS:
            raise ParameterError("coupling", self.coupling,
                                 f"coupling must be one of {', '.join(COUPLINGS)}")
        if self.boundary not in BOUNDARIES:
            raise ParameterError("boundary", self.boundary,
                                 f"boundary must be one of {', '.join(BOUNDARIES)}")
        if isinstance(self.subdivisions, bool) or int(self.subdivisions) != self.subdivisions \
                or self.subdivisions < 1:
            raise ParameterError("subdivisions", self.subdivisions,
                                 "subdivisions must be an integer >= 1")


class PotentialFlux(BlockPattern):
    """Upwind edge fluxes driven by a given nodal potential ``g``.

    ``G_k,ij = b_k w_ij rho_k,up (g_i - g_j) + sigma w_ij (rho_k,i - rho_k,j)`` with the
    upstream node the one with larger ``g``: linear in ``rho`` for a fixed ``g``, so its
    Jacobian blocks are diagonal (species decouple for a given potential).

    Edges of negative total weight are limited as in the local scheme
    (:func:`fem_crossdiff.discretisation.edges.positivity_limiter`).

    Args:
        V: Blocked P1 space with one component per species.
        params: Model coefficients.
        negative_edges: Treatment of negative-weight edges, see
            :func:`fem_crossdiff.discretisation.edges.edge_weights`.
    """

    def __init__(self, V, params: ModelParams, negative_edges: str = "voronoi"):
        self.params, self.n = params, params.n
        self.I, self.J, self.W, self.limited, self.negative_edges = edge_weights(V, negative_edges)
        self.beta = limiter_ratio(negative_edges)
        self.nloc = V.dofmap.index_map.size_local + V.dofmap.index_map.num_ghosts
        self.b = np.asarray(params.b)
        # scalar CSR pattern of (ii, ij, ji, jj) entries, built once
        I, J, nloc = self.I.astype(np.int64), self.J.astype(np.int64), self.nloc
        keys, self._pos = np.unique(np.concatenate([I * nloc + I, I * nloc + J,
                                                    J * nloc + I, J * nloc + J]),
                                    return_inverse=True)
        self.indptr = np.zeros(nloc + 1, dtype=PETSc.IntType)
        np.cumsum(np.bincount(keys // nloc, minlength=nloc), out=self.indptr[1:])
        self.indices = (keys % nloc).astype(PETSc.IntType)
        self._nnzb = keys.size
        self._cache_key = self._cache = None

    def _edge_terms(self, rho, g):
        """Edge fluxes ``G`` (limited) and what the derivatives need, for ``rho`` and ``g``.

        Kept for the last ``(rho, g)``: the matrix-free Jacobian applies the potential
        derivative once per Krylov iteration at the same state.
        """
        key = self._cache_key
        if key is not None and np.array_equal(key[0], rho) and np.array_equal(key[1], g):
            return self._cache
        dg = g[self.I] - g[self.J]
        up_i = dg >= 0
        ri, rj = rho[self.I], rho[self.J]
        r_up = np.where(up_i[:, None], ri, rj)
        q = self.b * r_up * dg[:, None] + self.params.sigma * (ri - rj)  # G = w q
        G = self.W[:, None] * q
        lim = limit_fluxes(G, q, ri, rj, self.limited, self.beta)
        self._cache_key, self._cache = (rho.copy(), g.copy()), (G, dg, up_i, r_up, lim)
        return self._cache

    def _scatter(self, G):
        R = np.empty((self.nloc, self.n))
        for k in range(self.n):
            R[:, k] = np.bincount(self.I, G[:, k], self.nloc)
            R[:, k] -= np.bincount(self.J, G[:, k], self.nloc)
        return R

    def residual(self, rho, potential):
        """Edge residual for nodal ``rho`` (nloc, n) and potential ``g`` (nloc,)."""
        return self._scatter(self._edge_terms(rho, potential)[0])

    def apply_potential_derivative(self, rho, potential, dpot):
        """Edge residual change for a potential change ``dpot`` (rho, upstream, limiter fixed)."""
        _, _, _, r_up, lim = self._edge_terms(rho, potential)
        ddg = dpot[self.I] - dpot[self.J]
        G = self.b * r_up * (self.W * ddg)[:, None]
        if lim is not None:
            G[self.limited] *= lim[0]
        return self._scatter(G)

    def jacobian_blocks(self, rho, potential):
        """Block-CSR values of the derivative with respect to ``rho`` at fixed ``g``."""
        n, w = self.n, self.W
        _, dg, up_i, _, lim = self._edge_terms(rho, potential)
        diag = self.b[None, :] * (w * dg)[:, None]  # (E, n): d G_k / d rho_k,up
        Ji = np.where(up_i[:, None], diag, 0.0) + self.params.sigma * w[:, None]
        Jj = np.where(up_i[:, None], 0.0, diag) - self.params.sigma * w[:, None]
        if lim is not None:  # d(theta G) = theta dG + G dtheta, species by species
            e, (theta, g_dth_i, g_dth_j) = self.limited, lim
            Ji[e] = theta * Ji[e] + g_dth_i
            Jj[e] = theta * Jj[e] + g_dth_j
        vals = np.concatenate([Ji, Jj, -Ji, -Jj])  # diagonal of each n x n block
        data = np.zeros((self._nnzb, n, n))
        for k in range(n):
            data[:, k, k] = np.bincount(self._pos, vals[:, k], self._nnzb)
        return data

    def add_jacobian(self, A: PETSc.Mat, rho, potential):
        """Set ``A`` to the edge Jacobian (COO assembly, see ``pattern.BlockPattern``)."""
        self.set_matrix(A, self.jacobian_blocks(rho, potential))


class NonlocalPotential:
    """``g = K P(sum_l a_l K rho_l)`` on a scalar P1 space, and its derivative.

    Args:
        V0: Scalar P1 space (one species' layout in the blocked space).
        params: Model coefficients.
        nl: Nonlocal parameters.
    """

    def __init__(self, V0, params: ModelParams, nl: NonlocalParams):
        from fem_crossdiff.mollify import MollificationOperator

        self.params, self.nl = params, nl
        self.V0 = V0
        op = MollificationOperator(V0, nl.eps, nl.kernel, allow_small_eps=nl.allow_small_eps,
                                   subdivisions=nl.subdivisions)
        self.op = op
        comm = V0.mesh.comm
        d = fem.assemble_vector(fem.form(ufl.TestFunction(V0) * ufl.dx(
            metadata={"quadrature_rule": "vertex", "quadrature_degree": 1})))
        d.scatter_reverse(dolfinx.la.InsertMode.add)
        self.nown = V0.dofmap.index_map.size_local
        self.lumped = d.array[: self.nown].copy()
        # M_s = (M + D^-1 M^T D) / 2: symmetric in the lumped inner product
        M = op.matrix
        Mt = M.transpose(PETSc.Mat())  # out of place: transpose() alone overwrites M
        dvec = M.createVecLeft()
        dvec.array[:] = self.lumped
        dinv = dvec.copy()
        dinv.reciprocal()
        Mt.diagonalScale(dinv, dvec)
        Ms = M.copy()
        Ms.axpy(1.0, Mt, structure=PETSc.Mat.Structure.DIFFERENT_NONZERO_PATTERN)
        Ms.scale(0.5)
        Mt.destroy()
        # kernel deficit at each node: 1 - (M_s 1)_i > 0 within eps of a wall
        one = Ms.createVecRight()
        one.set(1.0)
        row = Ms.createVecLeft()
        Ms.mult(one, row)
        self.near_wall = row.array < 1.0 - 1e-4
        self.sinkhorn_sweeps, self.sinkhorn_residual = 0, 0.0
        self.scaling = np.ones(self.nown)
        if nl.boundary == "sinkhorn":
            self.scaling = self._normalise(Ms, comm)
        elif nl.boundary == "diagonal":
            # K = M_s + diag(1 - M_s 1): the kernel's deficit at a wall node stays at the node
            deficit = Ms.createVecLeft()
            deficit.array[:] = 1.0 - row.array
            Ms.setDiagonal(deficit, addv=PETSc.InsertMode.ADD_VALUES)
        self.M = Ms
        self.a = np.asarray(params.a)
        self.law = params.law
        self._x = Ms.createVecRight()
        self._y = Ms.createVecLeft()
        self.g = fem.Function(V0, name="g")
        self._dg = fem.Function(V0)
        self.S = np.zeros(self.nown)
        self.comm = comm

    def _normalise(self, Ms, comm, tol: float = 1e-15, max_sweeps: int = 1000) -> np.ndarray:
        """Scale ``M_s`` in place to ``K = E M_s E`` with ``K 1 = 1`` (symmetric Sinkhorn).

        ``E = diag(e)`` solves ``e_i (M_s e)_i = 1``, i.e. ``e_i (A e)_i = m_i`` for the
        symmetric ``A = D M_s``, by the symmetric Sinkhorn-Knopp iteration
        ``e <- sqrt(e / (M_s e))`` (one mat-vec per sweep). Then ``K = D^-1 E A E``: constants
        are mollified to themselves at walls and corners, ``D K`` stays symmetric (so ``g`` is
        still the lumped-L2 gradient of the discrete energy). Farther than ``eps`` from the walls
        ``M_s 1 = 1`` already, but ``e`` is one global solution: ``|e - 1|`` decays away from
        the walls (about 4e-4 at 2 eps, 1e-5 at 3 eps), it is not exactly 1 there.

        Returns:
            The owned values of ``e``.
        """
        e, y = Ms.createVecRight(), Ms.createVecLeft()
        e.set(1.0)
        best = np.inf
        for sweep in range(1, max_sweeps + 1):
            Ms.mult(e, y)
            ea, ya = e.array, y.array
            res = comm.allreduce(float(np.abs(ea * ya - 1.0).max(initial=0.0)), op=MPI.MAX)
            # converged, or at the round-off floor (no progress over a sweep below 1e-13)
            if res < tol or (res < 1e-13 and res >= best):
                break
            best = min(best, res)
            e.array[:] = np.sqrt(ea / ya)
        else:
            raise RuntimeError(f"Sinkhorn normalisation did not converge in {max_sweeps} "
                               f"sweeps (residual {res:.2e})")
        self.sinkhorn_sweeps, self.sinkhorn_residual = sweep - 1, res
        Ms.diagonalScale(e, e)
        return e.array.copy()

    def wall_mass_share(self, rho_local: np.ndarray) -> float:
        """Share of the total (a-weighted, lumped) mass at nodes within ``eps`` of a wall."""
        X = rho_local[: self.nown] @ self.a
        near = float(np.sum(self.lumped[self.near_wall] * X[self.near_wall]))
        total = float(np.sum(self.lumped * X))
        near, total = self.comm.allreduce(near, op=MPI.SUM), self.comm.allreduce(total,
                                                                                op=MPI.SUM)
        return near / total if total > 0 else 0.0

    def _mollify(self, X: np.ndarray) -> np.ndarray:
        """Apply ``K`` to owned columns ``X`` (nown, ncomp)."""
        out = np.empty_like(X)
        for c in range(X.shape[1]):
            self._x.array[:] = X[:, c]
            self.M.mult(self._x, self._y)
            out[:, c] = self._y.array
        return out

    def _to_function(self, values: np.ndarray, f: fem.Function) -> np.ndarray:
        self._x.array[:] = values
        self.M.mult(self._x, self._y)
        f.x.array[: self.nown] = self._y.array
        f.x.scatter_forward()
        return f.x.array

    def __call__(self, rho_local: np.ndarray) -> np.ndarray:
        """Nodal ``g`` (owned + ghost) of the state ``rho_local`` (nloc, n)."""
        U = self._mollify(np.ascontiguousarray(rho_local[: self.nown]))
        self.S = U @ self.a
        P = self.law.pressure(self.S)
        return self._to_function(P, self.g).copy()

    def derivative(self, drho_owned: np.ndarray) -> np.ndarray:
        """``dg`` (owned + ghost) for a change ``drho`` (nown, n), linearised at the last call."""
        dS = self._mollify(np.ascontiguousarray(drho_owned)) @ self.a
        dP = self.law.derivative(self.S) * dS
        return self._to_function(dP, self._dg).copy()

    def energy(self, rho_local: np.ndarray) -> float:
        """Discrete ``A_eps`` of (1.4) over Omega (lumped quadrature), see the module docstring."""
        p = self.params
        X = np.ascontiguousarray(rho_local[: self.nown])
        S = self._mollify(X) @ self.a
        e = np.sum(self.lumped * self.law.energy_density(S))
        if p.sigma > 0:
            r = np.maximum(X, 1e-300)
            e += np.sum(self.lumped[:, None] * (self.a / np.asarray(p.b)) * p.sigma
                        * r * np.log(r))
        return self.comm.allreduce(float(e), op=MPI.SUM)


class NonlocalJacobian:
    """Matrix-free Jacobian of the implicit nonlocal scheme (a petsc4py Python matrix context).

    ``J dx = P dx + B(rho) dg(dx)``, where ``P`` is the assembled frozen-``g`` Jacobian (also the
    preconditioner) and the second term is the change of the edge fluxes through ``g``.
    """

    def __init__(self, P: PETSc.Mat, flux: PotentialFlux, pot: NonlocalPotential, V):
        self.P, self.flux, self.pot = P, flux, pot
        self.n = flux.n
        self.work = fem.Function(V)
        self.rho = None
        self.g = None

    def release(self) -> None:
        """Drop the references to the model's data (the operator is being freed)."""
        self.P = self.flux = self.pot = self.work = self.rho = self.g = None

    def update(self, rho_local, g):
        """Set the linearisation point."""
        self.rho, self.g = rho_local.copy(), g

    def mult(self, mat, x, y):
        """``y = J x``."""
        self.P.mult(x, y)
        nown = self.pot.nown
        dx = x.array_r.reshape(nown, self.n)
        dg = self.pot.derivative(dx)
        R = self.flux.apply_potential_derivative(self.rho, self.g, dg)
        self.work.x.array[:] = R.reshape(-1)
        self.work.x.scatter_reverse(dolfinx.la.InsertMode.add)
        y.array[:] += self.work.x.array[: nown * self.n]
