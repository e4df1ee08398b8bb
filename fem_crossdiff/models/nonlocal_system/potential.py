"""The mollified pressure ``g = K P(sum_l a_l K rho_l)``, its derivative, the implicit ``J``."""

from __future__ import annotations

import numpy as np
import ufl

from fem_crossdiff.compat import MPI, PETSc, dolfinx, fem
from fem_crossdiff.models.nonlocal_system.flux import PotentialFlux
from fem_crossdiff.models.nonlocal_system.params import NonlocalParams
from fem_crossdiff.params import ModelParams

__all__ = ["NonlocalJacobian", "NonlocalPotential"]


class NonlocalPotential:
    """``g = K P(sum_l a_l K rho_l)`` on a scalar P1 space, and its derivative.

    Args:
        V0: Scalar P1 space (one species' layout in the blocked space).
        params: Model coefficients.
        nl: Nonlocal parameters.
    """

    def __init__(self, V0, params: ModelParams, nl: NonlocalParams):
        from fem_crossdiff.mollify import MollificationOperator, lumped_symmetric

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
        Ms = lumped_symmetric(op.matrix, self.lumped)
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
        #: The diagonal part ``Delta`` of ``K`` beyond ``M_s`` (and the layer's ``F M_s F``)
        #: whose local term ``Delta P'(S) Delta`` goes into the implicit coupling's
        #: preconditioner (``boundary="diagonal-pc"`` and ``"layer"``), else None.
        self.local_part = None
        if nl.boundary in ("diagonal", "diagonal-pc"):
            # K = M_s + diag(1 - M_s 1): the kernel's deficit at a wall node stays at the node
            deficit = Ms.createVecLeft()
            deficit.array[:] = 1.0 - row.array
            Ms.setDiagonal(deficit, addv=PETSc.InsertMode.ADD_VALUES)
            if nl.boundary == "diagonal-pc":
                self.local_part = deficit.array.copy()
        elif nl.boundary == "layer":
            self.scaling = self._layer(Ms, row, comm)
        self.M = Ms
        self.a = np.asarray(params.a)
        self.law = params.law
        self._x = Ms.createVecRight()
        self._y = Ms.createVecLeft()
        self.g = fem.Function(V0, name="g")
        self._dg = fem.Function(V0)
        self._local = fem.Function(V0)
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

    #: Deficit ``1 - (M_s 1)_i`` above which a node belongs to the wall layer of ``"layer"``.
    LAYER_THRESHOLD = 1e-2

    def _layer(self, Ms, row, comm, tol: float = 1e-15, max_sweeps: int = 1000) -> np.ndarray:
        """``K = M_s + F M_s F + diag(r)`` with ``f = 0`` off the wall layer (in place).

        ``f`` solves ``f_i (M_s f)_i = 1 - (M_s 1)_i`` on the layer (nodes whose deficit exceeds
        :attr:`LAYER_THRESHOLD`) by the symmetric Sinkhorn-Knopp iteration; ``r = 1 - K 1``
        before ``diag(r)`` is the remainder (quadrature error, small deficits), kept on the
        diagonal as with ``"diagonal"`` and put into the implicit preconditioner.

        Returns:
            The owned values of ``f``.
        """
        deficit = 1.0 - row.array
        layer = deficit > self.LAYER_THRESHOLD
        f, y = Ms.createVecRight(), Ms.createVecLeft()
        f.array[:] = np.where(layer, 1.0, 0.0)
        best = np.inf
        for sweep in range(1, max_sweeps + 1):
            Ms.mult(f, y)
            fa, ya = f.array, y.array
            res = comm.allreduce(float(np.abs(fa * ya - deficit)[layer].max(initial=0.0)),
                                 op=MPI.MAX)
            if res < tol or (res < 1e-13 and res >= best):
                break
            best = min(best, res)
            f.array[:] = np.where(layer, np.sqrt(fa * deficit / np.where(layer, ya, 1.0)), 0.0)
        else:
            raise RuntimeError(f"wall-layer scaling did not converge in {max_sweeps} sweeps "
                               f"(residual {res:.2e})")
        self.sinkhorn_sweeps, self.sinkhorn_residual = sweep - 1, res
        W = Ms.copy()
        W.diagonalScale(f, f)
        Ms.axpy(1.0, W, structure=PETSc.Mat.Structure.SAME_NONZERO_PATTERN)
        W.destroy()
        one = Ms.createVecRight()
        one.set(1.0)
        Ms.mult(one, y)
        rem = Ms.createVecLeft()
        rem.array[:] = 1.0 - y.array
        Ms.setDiagonal(rem, addv=PETSc.InsertMode.ADD_VALUES)
        self.local_part = rem.array.copy()
        return f.array.copy()

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

    def derivative(self, drho_owned: np.ndarray, local: np.ndarray | None = None) -> np.ndarray:
        """``dg`` (owned + ghost) for a change ``drho`` (nown, n), linearised at the last call.

        Args:
            drho_owned: Owned density change (nown, n).
            local: Owned coefficients ``c`` of a local part ``c_i a . drho_i`` to leave out
                (the part an assembled preconditioner already holds), or None.
        """
        drho = np.ascontiguousarray(drho_owned)
        dS = self._mollify(drho) @ self.a
        dP = self.law.derivative(self.S) * dS
        self._x.array[:] = dP
        self.M.mult(self._x, self._y)
        f = self._dg
        f.x.array[: self.nown] = self._y.array
        if local is not None:
            f.x.array[: self.nown] -= local * (drho @ self.a)
        f.x.scatter_forward()
        return f.x.array.copy()

    def local_coefficient(self) -> np.ndarray | None:
        """``c = Delta^2 P'(S)`` (owned + ghost) at the last call, or None without a local part.

        ``K P'(S) K = (M_s + Delta) P'(S) (M_s + Delta)`` contains the local (diagonal) term
        ``Delta P'(S) Delta``: a diffusion-like part of the implicit Jacobian that the
        frozen-``g`` preconditioner misses, and that costs a Krylov method many iterations
        when left to the matrix-free product alone.
        """
        if self.local_part is None:
            return None
        f = self._local
        f.x.array[: self.nown] = self.local_part ** 2 * self.law.derivative(self.S)
        f.x.scatter_forward()
        return f.x.array.copy()

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
    preconditioner) and the second term is the change of the edge fluxes through ``g``. With a
    local part ``c`` (``boundary="diagonal-pc"``, ``"layer"``) ``P`` also holds
    ``B(rho) diag(c) a^T`` and ``dg`` leaves ``c a . dx`` out, so ``J`` is unchanged.
    """

    def __init__(self, P: PETSc.Mat, flux: PotentialFlux, pot: NonlocalPotential, V):
        self.P, self.flux, self.pot = P, flux, pot
        self.n = flux.n
        self.work = fem.Function(V)
        self.rho = None
        self.g = None
        #: Owned coefficients of the local part held by ``P`` (None: ``P`` is frozen-``g``).
        self.local = None

    def release(self) -> None:
        """Drop the references to the model's data (the operator is being freed)."""
        self.P = self.flux = self.pot = self.work = self.rho = self.g = self.local = None

    def update(self, rho_local, g, local=None):
        """Set the linearisation point (and the owned local coefficients ``P`` holds)."""
        self.rho, self.g, self.local = rho_local.copy(), g, local

    def mult(self, mat, x, y):
        """``y = J x``."""
        self.P.mult(x, y)
        nown = self.pot.nown
        dx = x.array_r.reshape(nown, self.n)
        # P holds B(rho) diag(c) a^T when a local part was assembled: leave it out of dg
        dg = self.pot.derivative(dx, self.local)
        R = self.flux.apply_potential_derivative(self.rho, self.g, dg)
        self.work.x.array[:] = R.reshape(-1)
        self.work.x.scatter_reverse(dolfinx.la.InsertMode.add)
        y.array[:] += self.work.x.array[: nown * self.n]
