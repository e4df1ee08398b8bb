"""The family's extra terms on P1 edge-flux models: per-species diffusion, potentials, growth.

:class:`~fem_crossdiff.family.Family` describes, for species ``k = 1..n``,

    d_t rho_k = div( rho_k [ b_k grad P + grad Phi_k + grad sum_l W_kl * rho_l ] )
                + sigma_k Lap rho_k + rho_k G_k(P).

A registered model (:mod:`fem_crossdiff.models`) discretises the pressure part with the common
diffusion ``sigma_min = min_k sigma_k``; everything else is a *term*: an additive nodal
contribution to the residual with its Jacobian, registered by name in :data:`TERMS` and built
from the family by :func:`build_terms`. :class:`FamilyModel` is the model seen by the problem
and the stepper: the inner model plus the sum of its terms (the problem and the time stepper
do not change). A term is linear in the unknown for the quantities it lags at the step's
start, so the Jacobians added here are exact and species-diagonal.

The terms (``w_ij >= 0`` the edge weights of the model, ``m_i`` the lumped mass):

* ``"diffusion"``: ``(sigma_k - sigma_min) w_ij (rho_k,i - rho_k,j)``, a discrete Laplacian
  with a nonnegative coefficient: the step stays an M-matrix system, so every density stays
  nonnegative for every ``sigma_k >= 0``.
* ``"transport"``: ``w_ij rho_k,up (psi_k,i - psi_k,j)`` with ``psi_k = Phi_k + sum_l W_kl *
  rho_l`` at the nodes, upwind in ``psi_k``: the outflow of an empty node vanishes, so
  positivity holds, and the flux is antisymmetric, so every mass is conserved to round-off.
  ``Phi_k`` is the nodal interpolant of the family's potential; the interaction ``W_kl *
  rho_l`` is a P1 operator (:class:`InteractionOperator`) evaluated at the state of the step's
  start (lagged: one linear dependence on the unknown, positivity for every step size; first
  order in time in the interaction).
* ``"growth"``: ``rho_k G_k(P)`` split by sign at the step's start, ``G = G+ - G-``: the
  source ``m_i G+ rho^n`` is explicit and nonnegative, the absorption ``m_i G- rho`` implicit
  (a nonnegative diagonal): positive for every step, first order in time. ``P`` is the
  pressure of the model (``P(S)`` at the nodes, the mollified pressure ``g`` of the nonlocal
  model).

Energy. With ``(a_k / b_k) W_kl`` symmetric and ``G = 0`` the family is a gradient flow of

    E = sum_i m_i e(S_i) + sum_k (a_k/b_k) sum_i m_i [sigma_k rho log rho + Phi_k rho]
        + 1/2 sum_kl (a_k/b_k) rho_k . D W_kl rho_l,

which :meth:`FamilyModel.energy` returns (the model's own energy, with ``sigma_min``, plus the
terms' parts); the interaction operator is symmetrised in the lumped inner product so that
``psi`` is the exact lumped-L2 gradient of its part.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import ufl

from fem_crossdiff.compat import MPI, PETSc, dolfinx, fem
from fem_crossdiff.discretisation.edges import edge_weights, limit_fluxes, limiter_ratio
from fem_crossdiff.errors import ParameterError
from fem_crossdiff.family import Family, Kernel
from fem_crossdiff.models.base import Model
from fem_crossdiff.mollifiers import KERNELS as MOLLIFIERS
from fem_crossdiff.mollifiers import Mollifier, get_mollifier

__all__ = ["TERMS", "FamilyModel", "InteractionOperator", "Term", "TermContext",
           "build_terms", "check_family", "register_term", "with_family"]

#: name -> term class, in registration order (:func:`register_term`).
TERMS: dict[str, type] = {}


def register_term(name: str):
    """Class decorator adding a term class to :data:`TERMS` (its ``build`` makes it)."""
    def add(cls):
        if name in TERMS and TERMS[name] is not cls:
            raise ValueError(f"a term is already registered as {name!r}")
        cls.name = name
        TERMS[name] = cls
        return cls
    return add


def check_family(family: Any, n: int, entry, degree: int, sigma: float) -> Family:
    """Validate ``family`` against the model before anything is built.

    Args:
        family: The :class:`~fem_crossdiff.family.Family`.
        n: Number of species of the model parameters.
        entry: The model's registry entry.
        degree: The Lagrange degree asked for.
        sigma: ``params.sigma``.

    Raises:
        ParameterError: not a Family, a wrong number of species (keyed ``family.sigma``), a
            scheme or degree that is not a positive lumped P1 edge scheme (keyed
            ``family``), or ``params.sigma`` neither 0 nor ``min(family.sigma)``.
    """
    if not isinstance(family, Family):
        raise ParameterError("family", type(family).__name__,
                             "a fem_crossdiff.family.Family")
    if family.n_species != n:
        raise ParameterError("family.sigma", family.sigma,
                             f"one entry per species of the model parameters ({n})")
    if degree != 1 or not (entry.positive and entry.cls.lumped):
        raise ParameterError("family", f"scheme {entry.scheme!r}, degree {degree}",
                             "the positive lumped P1 edge-flux schemes (degree 1; local "
                             "'muscl', 'upwind', ..., nonlocal 'upwind'), not "
                             "'galerkin' or P2")
    smin = min(family.sigma)
    if sigma not in (0.0, smin):
        raise ParameterError("sigma", sigma, "with a family, 0 or min(family.sigma) = "
                             f"{smin:g}: the family's sigma_k set the diffusion")
    return family


@dataclass
class TermContext:
    """What the terms read from the mesh and the model (built once).

    Attributes:
        V0: The scalar P1 space (one species' layout).
        params: The model's parameters (``sigma = sigma_min``).
        I, J, W, limited, beta: Edges, partial weights and limiter of the model's edges
            (:func:`~fem_crossdiff.discretisation.edges.edge_weights`).
        nloc, nown, n: Local and owned nodes, species.
        coords: Nodal coordinates ``(nloc, gdim)``.
        mass: Lumped mass of the owned nodes, 0 on ghosts ``(nloc,)``.
        pressure: ``pressure(rho_local) -> (nloc,)``: the pressure that drives growth.
        comm: The mesh's communicator.
    """

    V0: Any
    params: Any
    I: np.ndarray
    J: np.ndarray
    W: np.ndarray
    limited: np.ndarray
    beta: float
    nloc: int
    nown: int
    n: int
    coords: np.ndarray
    mass: np.ndarray
    pressure: Callable
    comm: Any

    @property
    def ratio(self) -> np.ndarray:
        """``a_k / b_k``, the weights of the species in the energy."""
        return np.asarray(self.params.a) / np.asarray(self.params.b)


class Term:
    """An additive nodal term: residual, exact Jacobian (species-diagonal), energy part.

    The Jacobian is given as ``(Ji, Jj, D)``: per edge the derivatives ``(E, n)`` of the edge
    flux with respect to the values at its first and second end (the flux leaves the first
    end and enters the second), and a nodal diagonal ``(nloc, n)``; any may be ``None``.
    """

    name: ClassVar[str] = ""

    @classmethod
    def build(cls, family: Family, ctx: TermContext):
        """The term for ``family``, or ``None`` when the family has none of it."""
        raise NotImplementedError

    def begin_step(self, rho: np.ndarray) -> None:
        """Lag what the term lags at the previous state ``rho`` (nloc, n)."""

    def residual(self, rho: np.ndarray) -> np.ndarray:
        """Contributions ``(nloc, n)`` (partial on ghosts: summed over ranks)."""
        raise NotImplementedError

    def jacobian(self, rho: np.ndarray):
        """``(Ji, Jj, D)`` at ``rho`` (see the class docstring)."""
        raise NotImplementedError

    def energy(self, rho: np.ndarray) -> float:
        """This rank's part of the term's energy (owned nodes; collective calls allowed)."""
        return 0.0


class _EdgeTerm(Term):
    """An edge flux ``G = w q`` linear in ``rho`` at fixed lagged data, limited like the model."""

    def __init__(self, ctx: TermContext):
        self.ctx = ctx

    def _q(self, ri, rj):
        """``q (E, n)`` and its derivatives with respect to both ends (without ``w``)."""
        raise NotImplementedError

    def _flux(self, rho):
        c = self.ctx
        ri, rj = rho[c.I], rho[c.J]
        q, dqi, dqj = self._q(ri, rj)
        G = c.W[:, None] * q
        Ji, Jj = c.W[:, None] * dqi, c.W[:, None] * dqj
        lim = limit_fluxes(G, q, ri, rj, c.limited, c.beta)
        if lim is not None:  # d(theta G) = theta dG + G dtheta
            e, (theta, g_dth_i, g_dth_j) = c.limited, lim
            Ji[e] = theta * Ji[e] + g_dth_i
            Jj[e] = theta * Jj[e] + g_dth_j
        return G, Ji, Jj

    def residual(self, rho):
        c = self.ctx
        G = self._flux(rho)[0]
        R = np.empty((c.nloc, c.n))
        for k in range(c.n):
            R[:, k] = np.bincount(c.I, G[:, k], c.nloc) - np.bincount(c.J, G[:, k], c.nloc)
        return R

    def jacobian(self, rho):
        _, Ji, Jj = self._flux(rho)
        return Ji, Jj, None


def _entropy(rho: np.ndarray) -> np.ndarray:
    r = np.maximum(rho, 1e-300)
    return np.where(rho > 0.0, r * np.log(r), 0.0)


@register_term("diffusion")
class SpeciesDiffusion(_EdgeTerm):
    """``(sigma_k - sigma_min) w_ij (rho_k,i - rho_k,j)``: the diffusion beyond the model's."""

    def __init__(self, ctx: TermContext, extra: np.ndarray):
        super().__init__(ctx)
        self.extra = extra

    @classmethod
    def build(cls, family, ctx):
        extra = np.asarray(family.sigma) - min(family.sigma)
        return cls(ctx, extra) if np.any(extra > 0.0) else None

    def _q(self, ri, rj):
        q = self.extra * (ri - rj)
        d = np.broadcast_to(self.extra, q.shape)
        return q, d.copy(), -d

    def energy(self, rho):
        c = self.ctx
        ent = _entropy(rho[: c.nown])
        return float(np.sum(c.mass[: c.nown, None] * (c.ratio * self.extra) * ent))


# ------------------------------------------------------------------------ interaction kernels
@dataclass(frozen=True)
class _ScaledProfile(Mollifier):
    """A Gaussian or Morse kernel as a mollifier of radius ``R`` (its support truncated).

    In the unit variable ``u = r / R`` the profile is ``exp(-ratio^2 s / 2)`` (Gaussian) or
    ``exp(-ratio sqrt(s))`` (Morse), ``ratio = R / l``, normalised by its mass over the whole
    space: inside ``R`` the values are those of :class:`~fem_crossdiff.family.Kernel`.
    """

    name: str = "gaussian"
    ratio: float = 6.0

    def _profile(self, s):
        s = np.asarray(s, dtype=float)
        if self.name == "gaussian":
            return np.exp(-0.5 * self.ratio**2 * s)
        return np.exp(-self.ratio * np.sqrt(np.maximum(s, 0.0)))

    def _dprofile(self, s):  # pragma: no cover - values only are used here
        raise NotImplementedError

    def _unnormalised_mass(self, d):
        if self.name == "gaussian":
            return (2.0 * math.pi / self.ratio**2) ** (d / 2)
        return 2.0 * math.pi ** (d / 2) / math.gamma(d / 2) * math.gamma(d) / self.ratio**d


#: Truncation radius of the kernels without compact support, in lengths: the mass left out
#: is about 1e-8 (Gaussian: exp(-18) times a polynomial; Morse: exp(-25) times one).
TRUNCATION = {"gaussian": 6.0, "morse": 25.0}


def _kernel_mollifier(kernel: Kernel, diameter: float) -> tuple[Mollifier, float]:
    """The kernel as a mollifier and its radius (compact kernels: their own)."""
    if kernel.kind in MOLLIFIERS:
        return get_mollifier(kernel.kind), kernel.length
    radius = min(TRUNCATION[kernel.kind] * kernel.length, diameter)
    return _ScaledProfile(kernel.kind, radius / kernel.length), radius


class InteractionOperator:
    """``rho -> K * rho`` at the nodes of a scalar P1 space, symmetric in the lumped product.

    ``M`` is the convolution of the P1 function (extended by zero outside the domain) with the
    kernel, evaluated at the nodes (:class:`~fem_crossdiff.mollify.MollificationOperator`,
    assembled once); ``M_s = (M + D^-1 M^T D) / 2`` (``D`` the lumped mass), so that ``rho . D
    M_s rho / 2`` has the lumped-L2 gradient ``M_s rho``.

    Args:
        V0: Scalar P1 space.
        kernel: The family's kernel.
        key: Its parameter name in error messages.
        mass: Lumped mass of the owned nodes.
    """

    def __init__(self, V0, kernel: Kernel, key: str, mass: np.ndarray):
        from fem_crossdiff.discretisation.mesh_sizes import mesh_sizes
        from fem_crossdiff.mollify import MollificationOperator, lumped_symmetric

        sizes = mesh_sizes(V0.mesh)  # collective: every rank gets the same numbers
        mol, radius = _kernel_mollifier(kernel, sizes.diameter)
        if not 2.0 * sizes.h_max <= radius <= sizes.diameter:  # checked here to name the key
            raise ParameterError(f"{key}.length", kernel.length,
                                 f"a kernel radius (here {radius:g}) between 2 h_max = "
                                 f"{2.0 * sizes.h_max:g} (two cells of the coarsest part of "
                                 f"the mesh: refine it or widen the kernel) and the domain's "
                                 f"diameter {sizes.diameter:g}")
        op = MollificationOperator(V0, radius, mol)
        Ms = lumped_symmetric(op.matrix, mass)
        self.M = Ms
        self._x, self._y = Ms.createVecRight(), Ms.createVecLeft()
        self._f = fem.Function(V0)
        self.nown = mass.size

    def apply_owned(self, x: np.ndarray) -> np.ndarray:
        """``M_s x`` on owned nodes (collective)."""
        self._x.array[:] = x
        self.M.mult(self._x, self._y)
        return self._y.array.copy()

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``M_s x`` on owned and ghost nodes from owned ``x`` (collective)."""
        self._f.x.array[: self.nown] = self.apply_owned(x)
        self._f.x.scatter_forward()
        return self._f.x.array.copy()


@register_term("transport")
class PotentialTransport(_EdgeTerm):
    """``w_ij rho_k,up (psi_k,i - psi_k,j)``, ``psi_k = Phi_k + sum_l W_kl * rho_l`` (lagged)."""

    def __init__(self, ctx: TermContext, phi: np.ndarray | None,
                 interactions: list[tuple[InteractionOperator, np.ndarray]]):
        super().__init__(ctx)
        self.phi, self.interactions = phi, interactions
        self.psi = np.zeros((ctx.nloc, ctx.n)) if phi is None else phi.copy()

    @classmethod
    def build(cls, family, ctx):
        phi = None
        if any(family.potential(k) is not None for k in range(ctx.n)):
            phi = np.zeros((ctx.nloc, ctx.n))
            for k in range(ctx.n):
                pot = family.potential(k)
                if pot is not None:
                    phi[:, k] = pot(ctx.coords)
            if not ctx.comm.allreduce(bool(np.all(np.isfinite(phi))), op=MPI.LAND):
                raise ParameterError("potentials", "NaN/inf at some node",
                                     "potentials finite at every node of the mesh")
        mass = ctx.mass[: ctx.nown]
        inter = [(InteractionOperator(ctx.V0, w.kernel, f"interactions[{i}].kernel", mass),
                  np.asarray(w.strength)) for i, w in enumerate(family.interactions)]
        return cls(ctx, phi, inter) if (phi is not None or inter) else None

    def _interaction(self, rho: np.ndarray, owned: bool) -> np.ndarray:
        """``sum_l W_kl * rho_l`` at the nodes ``(nloc or nown, n)``."""
        c = self.ctx
        out = np.zeros((c.nown if owned else c.nloc, c.n))
        X = np.ascontiguousarray(rho[: c.nown])
        for op, s in self.interactions:
            conv = np.stack([(op.apply_owned if owned else op.apply)(X[:, l])
                             for l in range(c.n)], axis=1)
            out += conv @ s.T
        return out

    def begin_step(self, rho):
        """``psi`` of the previous state (the interaction is lagged)."""
        if self.interactions:
            self.psi = self._interaction(rho, owned=False)
            if self.phi is not None:
                self.psi += self.phi

    def _q(self, ri, rj):
        c = self.ctx
        dpsi = self.psi[c.I] - self.psi[c.J]
        up_i = dpsi >= 0.0
        q = np.where(up_i, ri, rj) * dpsi
        return q, np.where(up_i, dpsi, 0.0), np.where(up_i, 0.0, dpsi)

    def energy(self, rho):
        c = self.ctx
        X = rho[: c.nown]
        m = c.mass[: c.nown, None] * c.ratio
        e = 0.0
        if self.phi is not None:
            e += float(np.sum(m * self.phi[: c.nown] * X))
        if self.interactions:
            e += 0.5 * float(np.sum(m * X * self._interaction(rho, owned=True)))
        return e


@register_term("growth")
class PressureGrowth(Term):
    """``-m_i (G+ rho^n - G- rho)``: growth by sign, ``G = G_k(P)`` at the step's start."""

    def __init__(self, ctx: TermContext, laws: list):
        self.ctx, self.laws = ctx, laws
        self.gp = np.zeros((ctx.nloc, ctx.n))
        self.gm = np.zeros((ctx.nloc, ctx.n))
        self.source = np.zeros((ctx.nloc, ctx.n))

    @classmethod
    def build(cls, family, ctx):
        laws = [family.growth_law(k) for k in range(ctx.n)]
        return cls(ctx, laws) if any(g is not None for g in laws) else None

    def begin_step(self, rho):
        """Split ``G(P(rho^n))`` into ``G+`` (explicit source) and ``G-`` (absorption)."""
        c = self.ctx
        P = c.pressure(rho)
        for k, law in enumerate(self.laws):
            G = np.zeros(c.nloc) if law is None else law(P)
            self.gp[:, k] = np.maximum(G, 0.0) * c.mass
            self.gm[:, k] = np.maximum(-G, 0.0) * c.mass
        self.source = self.gp * np.maximum(rho, 0.0)

    def residual(self, rho):
        return self.gm * rho - self.source

    def jacobian(self, rho):
        return None, None, self.gm


def build_terms(family: Family, ctx: TermContext) -> list[Term]:
    """The registered terms that ``family`` has, in registration order."""
    return [t for t in (cls.build(family, ctx) for cls in TERMS.values()) if t is not None]


class _TermMatrix:
    """Scalar CSR pattern of the terms' species-diagonal entries, added to the model's matrix."""

    def __init__(self, ctx: TermContext):
        n, nloc = ctx.n, ctx.nloc
        I, J = ctx.I.astype(np.int64), ctx.J.astype(np.int64)
        k = np.arange(n, dtype=np.int64)
        ri, rj = (I[:, None] * n + k).ravel(), (J[:, None] * n + k).ravel()
        nodes = np.arange(nloc * n, dtype=np.int64)
        rows = np.concatenate([ri, ri, rj, rj, nodes])
        cols = np.concatenate([ri, rj, ri, rj, nodes])
        size = nloc * n
        keys, self.pos = np.unique(rows * size + cols, return_inverse=True)
        self.indptr = np.zeros(size + 1, dtype=PETSc.IntType)
        np.cumsum(np.bincount(keys // size, minlength=size), out=self.indptr[1:])
        self.indices = (keys % size).astype(PETSc.IntType)
        self.nnz, self.nE, self.size = keys.size, I.size * n, size

    def add(self, A, parts) -> None:
        """``A += `` the sum of the terms' ``(Ji, Jj, D)`` (then ``A`` needs assembling)."""
        zero_e, zero_n = np.zeros(self.nE), np.zeros(self.size)
        Ji = Jj = zero_e
        D = zero_n
        for pi, pj, pd in parts:
            Ji = Ji + (zero_e if pi is None else pi.ravel())
            Jj = Jj + (zero_e if pj is None else pj.ravel())
            D = D + (zero_n if pd is None else pd.ravel())
        vals = np.bincount(self.pos, np.concatenate([Ji, Jj, -Ji, -Jj, D]), self.nnz)
        A.setValuesLocalCSR(self.indptr, self.indices, vals.astype(PETSc.ScalarType),
                            addv=PETSc.InsertMode.ADD_VALUES)


class FamilyModel(Model):
    """A registered P1 edge-flux model plus the family's terms (the model the solver runs).

    Everything but the residual, the Jacobian and the energy is the inner model's.

    Args:
        model: The inner model (built with ``sigma = min_k sigma_k``).
        family: The family.
        V0: The scalar P1 space.
        negative_edges: The inner model's treatment of negative-weight edges.
    """

    def __init__(self, model: Model, family: Family, V0, negative_edges: str = "voronoi"):
        super().__init__(model.V, model.params)
        self.inner, self.family = model, family
        self.name, self.pde = model.name, model.pde
        self.lumped, self.positive, self.degrees = model.lumped, model.positive, model.degrees
        p, n = model.params, model.params.n
        I, J, W, limited, _ = edge_weights(model.V, negative_edges)
        imap = V0.dofmap.index_map
        nown, nloc = imap.size_local, imap.size_local + imap.num_ghosts
        d = fem.assemble_vector(fem.form(ufl.TestFunction(V0) * ufl.dx(
            metadata={"quadrature_rule": "vertex", "quadrature_degree": 1})))
        d.scatter_reverse(dolfinx.la.InsertMode.add)
        mass = np.zeros(nloc)
        mass[:nown] = d.array[:nown]  # ghosts 0: a nodal term is summed over ranks once
        gdim = V0.mesh.geometry.dim
        self.ctx = TermContext(
            V0=V0, params=p, I=I, J=J, W=W, limited=limited,
            beta=limiter_ratio(negative_edges), nloc=nloc, nown=nown, n=n,
            coords=V0.tabulate_dof_coordinates()[:nloc, :gdim], mass=mass,
            pressure=self.pressure, comm=V0.mesh.comm)
        self.terms = build_terms(family, self.ctx)
        self._matrix = _TermMatrix(self.ctx)
        self.petsc_overrides = getattr(model, "petsc_overrides", {})

    def pressure(self, rho: np.ndarray) -> np.ndarray:
        """The nodal pressure that drives growth: the model's driving potential, else ``P(S)``."""
        g = self.inner.driving_potential(rho)
        return self.params.law.pressure(rho @ np.asarray(self.params.a)) if g is None else g

    # ----------------------------------------------------------------- the inner model's
    @property
    def energy_guard(self) -> bool:
        """The inner model's guard, off with growth (the energy is then no Lyapunov function)."""
        return self.inner.energy_guard and not self.family.has_growth

    @property
    def matrix_free(self) -> bool:
        """The inner model's (the terms' Jacobians are in the assembled matrix)."""
        return self.inner.matrix_free

    def form(self, rho, v):
        """The inner model's form part (none for the accepted schemes)."""
        return self.inner.form(rho, v)

    def jacobian_operator(self, A):
        """The inner model's operator (it applies ``A``, which holds the terms)."""
        return self.inner.jacobian_operator(A)

    def update_operator(self, rho):
        """The inner model's."""
        self.inner.update_operator(rho)

    def driving_potential(self, rho):
        """The inner model's."""
        return self.inner.driving_potential(rho)

    def check_step(self, energy_before, energy_after):
        """The inner model's verdict."""
        return self.inner.check_step(energy_before, energy_after)

    def describe(self):
        """The inner model's line and the terms in use."""
        names = ", ".join(t.name for t in self.terms) or "none"
        inner = self.inner.describe()
        return f"family terms: {names}" + (f"; {inner}" if inner else "")

    # ----------------------------------------------------------------- sums
    def begin_step(self, rho):
        """The inner model's lagged data, then the terms'."""
        self.inner.begin_step(rho)
        for t in self.terms:
            t.begin_step(rho)

    def residual(self, rho):
        """The inner model's residual plus the terms'."""
        R = self.inner.residual(rho)
        R = np.zeros((self.ctx.nloc, self.ctx.n)) if R is None else R.copy()
        for t in self.terms:
            R += t.residual(rho)
        return R

    def add_jacobian(self, A, rho):
        """The inner model's matrix, then the terms' entries added to it."""
        self.inner.add_jacobian(A, rho)
        if self.terms:
            A.assemble()
            self._matrix.add(A, [t.jacobian(rho) for t in self.terms])

    def energy(self, rho) -> float:
        """The inner model's energy plus the terms' parts (collective)."""
        e = self.inner.energy(rho)
        local = rho.x.array.reshape(-1, self.ctx.n)
        part = sum(t.energy(local) for t in self.terms)
        return e + self.ctx.comm.allreduce(float(part), op=MPI.SUM)


def with_family(model: Model, family: Family | None, V0, negative_edges: str) -> Model:
    """``model`` with the terms of ``family`` (``model`` itself when there is no family)."""
    return model if family is None else FamilyModel(model, family, V0, negative_edges)
