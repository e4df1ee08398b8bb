"""The family's particle level: potentials, interactions, per-species noise, growth by weights.

With the ingredients of :class:`fem_crossdiff.family.Family`, particle ``i`` of species ``k``
moves by

    dX = [ drift of (1.6) - grad Phi_k(X) - sum_l (grad W_kl * mu_l)(X) ] dt + sqrt(2 sigma_k) dB,

and carries a weight factor ``w_i`` (1 initially): it stands for the mass ``w_i M_k / N`` (the
density's share ``a_k w_i M_k / N``), ``mu_l = sum_j w_j M_l / N delta_{X_j}`` is the weighted
empirical measure of species ``l``, and

    d w_i / dt = G_k(P(S(X_i))) w_i,      S(x) = sum_j a_l w_j M_l / N V^eps(x - X_j).

**Step** (:func:`family_step`, pure): ``P_i = P(S(X_i))`` at the current positions and weights;
positions by one Euler-Maruyama step of :func:`fem_crossdiff.particles.state.step` (the same
reflection, tracking and Brownian streams; the increments are scaled per species); weights by
the exact solution of the weight equation with ``P`` frozen over the step,
``w <- w exp(dt G_k(P_i))`` (``growth_scheme="euler"``, first order in ``dt``), or its
trapezoidal correction ``w <- w exp(dt (G_k(P_i) + G_k(P*_i)) / 2)`` with ``P*`` from the
predicted weights at the new positions (``"heun"``, second order). Weights stay positive.

**Resampling**: when the effective sample size of a species, ``(sum w)^2 / sum w^2``, falls
below ``resample_below * N``, the species is resampled systematically: one uniform ``U`` per
species and step from the block stream ``rng.block_generator(seed, TAG_RESAMPLE, k, step, 0)``
(the same on every rank), offspring ``j = 0..N-1`` copies the particle whose cumulative weight
interval (in id order) holds ``(U + j) W / N``, and every offspring gets the weight ``W / N``:
the species' mass ``W M_k / N`` is kept exactly.

**MPI**: the interaction sums and ``S`` at the particles need every particle: each step
gathers the cloud (positions, species, weights: ``O(N)`` per rank, one ``allgather``) and
every rank sums over it for its own particles (``O(N_local N)`` work for the Gaussian and Morse
kernels, ``O(N_local x neighbours)`` for ``S`` through a k-d tree). Resampling gathers the
resampled species, sorts it by id (the same arrays on every rank, hence the same offspring),
and each rank keeps its index block. Results do not depend on the number of ranks up to the
round-off of the sums.

Domains: free space and :class:`~fem_crossdiff.particles.domains.Box`; a mesh domain
(:class:`~fem_crossdiff.particles.mesh_domain.MeshDomain`) without growth (its particles
migrate between ranks, which the weights do not follow yet).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, replace

import numpy as np
from scipy.spatial import cKDTree

from fem_crossdiff.errors import ParameterError
from fem_crossdiff.family import Family
from fem_crossdiff.mollifiers import get_mollifier

from .params import ParticleParams
from .rng import block_generator, partition
from .state import ParticleState, _frozen, brownian_increments, step

__all__ = [
    "TAG_RESAMPLE",
    "FamilyState",
    "family_state",
    "gather_cloud",
    "density_at",
    "pressure_at",
    "interaction_drift",
    "potential_drift",
    "effective_sample_size",
    "resample",
    "family_step",
    "weighted_moments",
]

#: stream purpose of the resampling uniforms (:mod:`fem_crossdiff.particles.rng`).
TAG_RESAMPLE = 2
_PAIR_CHUNK = 2_000_000  # particle pairs held at once by the interaction sums
_TREE_CHUNK = 20_000  # local particles per neighbour query of density_at
_SCHEMES = ("euler", "heun")


@dataclass(frozen=True)
class FamilyState:
    """Particles with their weight factors (immutable).

    Attributes:
        particles: the positions, species and ids (:class:`ParticleState`).
        weights: read-only ``(M,)`` weight factors ``w_i > 0`` of the local particles, in the
            order of ``particles``.
        resamplings: number of species resamplings so far.
    """

    particles: ParticleState
    weights: np.ndarray
    resamplings: int = 0

    @property
    def time(self) -> float:
        """Current time."""
        return self.particles.time


def family_state(state: ParticleState, weights=None) -> FamilyState:
    """A :class:`FamilyState` from particles (weights 1 unless given)."""
    w = np.ones(state.n_local) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (state.n_local,) or not np.all(np.isfinite(w)) or (w.size and w.min() <= 0):
        raise ParameterError("weights", w, f"{state.n_local} finite numbers > 0 (one per local "
                             "particle)")
    return FamilyState(state, _frozen(w))


def _check_family(params: ParticleParams, family: Family) -> None:
    if family.n_species != params.n_species:
        raise ParameterError("family.sigma", family.sigma, f"one entry per species of params "
                             f"({params.n_species})")


def gather_cloud(x, species, weights, comm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All ranks' ``(positions, species, weights)`` concatenated in rank order (collective)."""
    if comm is None or comm.size == 1:
        return np.asarray(x), np.asarray(species), np.asarray(weights)
    parts = comm.allgather((np.asarray(x), np.asarray(species), np.asarray(weights)))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def density_at(x, species, weights, params: ParticleParams, comm=None, cloud=None) -> np.ndarray:
    """``S(X_i) = sum_j a_l w_j M_l / N V^eps(X_i - X_j)`` at the local particles (collective).

    An exact particle sum over the neighbours closer than ``eps`` (k-d tree of the gathered
    cloud); ``cloud`` is :func:`gather_cloud`'s result when the caller has it.
    """
    y, sp, w = gather_cloud(x, species, weights, comm) if cloud is None else cloud
    x = np.asarray(x, dtype=float)
    mass = np.asarray(params.weights, dtype=float)[sp] * w
    kern = get_mollifier(params.kernel)
    out = np.zeros(x.shape[0])
    if x.shape[0] == 0:
        return out
    tree = cKDTree(y)
    for i0 in range(0, x.shape[0], _TREE_CHUNK):
        sub = cKDTree(x[i0:i0 + _TREE_CHUNK])
        pairs = sub.sparse_distance_matrix(tree, params.eps, output_type="ndarray")
        if pairs.size:
            v = kern.radial(pairs["v"], params.eps, x.shape[1]) * mass[pairs["j"]]
            out[i0:i0 + sub.n] = np.bincount(pairs["i"], weights=v, minlength=sub.n)
    return out


def pressure_at(x, species, weights, params: ParticleParams, comm=None, cloud=None):
    """``P(S(X_i))`` at the local particles (collective; :func:`density_at`)."""
    return params.law.pressure(density_at(x, species, weights, params, comm, cloud))


def interaction_drift(x, species, weights, params: ParticleParams, family: Family, comm=None,
                      cloud=None) -> np.ndarray:
    """``-sum_l (grad W_kl * mu_l)(X_i)`` at the local particles, ``(M, d)`` (collective).

    ``mu_l`` puts the mass ``w_j M_l / N`` at each particle ``j`` of species ``l``; a particle's
    own term is ``grad K(0) = 0``.
    """
    x = np.asarray(x, dtype=float)
    out = np.zeros_like(x)
    if not family.interactions:
        return out
    y, sp, w = gather_cloud(x, species, weights, comm) if cloud is None else cloud
    mass = np.asarray(params.mass, dtype=float)[sp] / params.n_particles * w
    species = np.asarray(species)
    rows = max(1, _PAIR_CHUNK // max(1, y.shape[0]))
    for term in family.interactions:
        s = np.asarray(term.strength, dtype=float)
        for i0 in range(0, x.shape[0], rows):
            xi = x[i0:i0 + rows]
            g = term.kernel.gradient(xi[:, None, :] - y[None, :, :])
            coef = s[species[i0:i0 + rows]][:, sp] * mass[None, :]
            out[i0:i0 + rows] -= np.einsum("ij,ijc->ic", coef, g)
    return out


def potential_drift(x, species, family: Family) -> np.ndarray:
    """``-grad Phi_k(X_i)`` at the local particles, ``(M, d)``."""
    x = np.asarray(x, dtype=float)
    out = np.zeros_like(x)
    for k in range(family.n_species):
        phi = family.potential(k)
        mine = np.flatnonzero(np.asarray(species) == k)
        if phi is not None and mine.size:
            out[mine] = -phi.grad(x[mine])
    return out


def effective_sample_size(fs: FamilyState, k: int, comm=None) -> float:
    """``(sum w)^2 / sum w^2`` over the particles of species ``k`` (collective)."""
    w = fs.weights[fs.particles.species == k]
    loc = np.array([w.sum(), np.dot(w, w)])
    if comm is not None and comm.size > 1:
        from mpi4py import MPI

        tot = np.empty_like(loc)
        comm.Allreduce(loc, tot, op=MPI.SUM)
        loc = tot
    return float(loc[0] ** 2 / loc[1]) if loc[1] > 0 else 0.0


def resample(fs: FamilyState, k: int, comm=None) -> FamilyState:
    """Systematic resampling of species ``k`` (module docstring); collective.

    Keyed by the state's seed and step index, so that the same state gives the same offspring
    on any number of ranks. Only for states whose ranks hold index blocks (free space, boxes).
    """
    st = fs.particles
    mine = st.species == k
    ids, x, w = st.ids[mine], st.positions[mine], fs.weights[mine]
    if comm is not None and comm.size > 1:
        parts = comm.allgather((ids, x, w))
        ids = np.concatenate([p[0] for p in parts])
        x = np.concatenate([p[1] for p in parts])
        w = np.concatenate([p[2] for p in parts])
    order = np.argsort(ids, kind="stable")
    x, w = x[order], w[order]
    n = st.n_total
    c = np.cumsum(w)
    total = c[-1]
    u = block_generator(st.seed, TAG_RESAMPLE, k, st.step_index, 0).random()
    size, rank = (1, 0) if comm is None else (comm.size, comm.rank)
    start, stop = partition(n, size, rank)
    points = (u + np.arange(start, stop)) * (total / n)
    parent = np.minimum(np.searchsorted(c, points, side="right"), n - 1)
    # species-major flat layout: species before k, the new block, species after k
    keep_lo, keep_hi = st.species < k, st.species > k
    pos = np.concatenate([st.positions[keep_lo], x[parent], st.positions[keep_hi]])
    spc = np.concatenate([st.species[keep_lo], np.full(stop - start, k, dtype=np.int64),
                          st.species[keep_hi]])
    new_ids = np.concatenate([st.ids[keep_lo], np.arange(start, stop, dtype=np.int64),
                              st.ids[keep_hi]])
    wts = np.concatenate([fs.weights[keep_lo], np.full(stop - start, total / n),
                          fs.weights[keep_hi]])
    new = replace(st, positions=_frozen(pos), species=_frozen(spc, np.int64),
                  ids=_frozen(new_ids, np.int64))
    return FamilyState(new, _frozen(wts), fs.resamplings + 1)


def _accepts_weights(drift) -> bool:
    try:
        return "weights" in inspect.signature(drift).parameters
    except (TypeError, ValueError):
        return False


def family_step(
    fs: FamilyState,
    dt: float,
    params: ParticleParams,
    family: Family,
    domain,
    pressure=None,
    comm=None,
    growth_scheme: str = "euler",
    resample_below: float = 0.5,
) -> FamilyState:
    """One step of the family's particle system (module docstring); pure and collective.

    Args:
        fs: current state.
        dt: time step > 0.
        params: the pressure part (``N``, ``a``, ``b``, ``m``, ``eps``, kernel, masses);
            ``params.sigma`` is not used: the noise is ``sqrt(2 family.sigma[k]) dB``.
        family: potentials, interactions, growth laws and ``sigma_k``.
        domain: free space, a box or (without growth) a mesh domain.
        pressure: the drift of (1.6) (``GridDrift()``, ``CellListDrift()``...; ``None``: no
            pressure); with growth it must take ``weights`` (the grid and quadrature drifts do).
        comm: MPI communicator (``None``: serial).
        growth_scheme: ``"euler"`` (first order) or ``"heun"`` (second order).
        resample_below: resample a species when its effective sample size falls below
            ``resample_below * N`` (in ``[0, 1]``; 0: never).

    Returns:
        The state at ``t + dt``.
    """
    if isinstance(dt, bool) or not (isinstance(dt, int | float) and math.isfinite(dt) and dt > 0):
        raise ParameterError("dt", dt, "a finite number > 0")
    if growth_scheme not in _SCHEMES:
        raise ParameterError("growth_scheme", growth_scheme, f"one of {', '.join(_SCHEMES)}")
    if isinstance(resample_below, bool) or not (
            isinstance(resample_below, int | float) and 0.0 <= resample_below <= 1.0):
        raise ParameterError("resample_below", resample_below, "a number in [0, 1]")
    _check_family(params, family)
    st = fs.particles
    if fs.weights.shape != st.species.shape:
        raise ParameterError("weights", fs.weights.shape, f"one per local particle "
                             f"({st.n_local})")
    growth = family.has_growth
    if growth and hasattr(domain, "track"):
        raise ParameterError("domain", domain, "free space or a Box when the family has growth "
                             "(the weights do not migrate with mesh particles yet)")
    weighted = growth or not np.all(fs.weights == 1.0)
    if weighted and pressure is not None and not _accepts_weights(pressure):
        raise ParameterError("pressure", pressure, "a drift taking per-particle weights "
                             "(GridDrift, CellListDrift) when the weights are not all 1")
    x, sp, w = st.positions, st.species, fs.weights
    need_cloud = growth or bool(family.interactions)
    cloud = gather_cloud(x, sp, w, comm) if need_cloud else None
    p_now = pressure_at(x, sp, w, params, comm, cloud) if growth else None

    def drift(pos, t, prm, comm_, species=None):
        v = potential_drift(pos, species, family)
        if family.interactions:
            v += interaction_drift(pos, species, w, params, family, comm_, cloud)
        if pressure is not None:
            kw = {"weights": w} if weighted else {}
            v += pressure(pos, t, params, comm_, species=species, **kw)
        return v

    scale = np.sqrt(2.0 * np.asarray(family.sigma, dtype=float))[sp]
    dW = brownian_increments(st, dt) * scale[:, None]
    unit = replace(params, sigma=0.5)  # sqrt(2 sigma) = 1: the increments carry sigma_k
    moved = step(st, dt, unit, domain, drift, comm, dW)
    if not growth:
        return FamilyState(moved, fs.weights, fs.resamplings)
    g_now = _growth(family, sp, p_now)
    w_new = w * np.exp(dt * g_now)
    if growth_scheme == "heun":
        p_pred = pressure_at(moved.positions, sp, w_new, params, comm)
        w_new = w * np.exp(0.5 * dt * (g_now + _growth(family, sp, p_pred)))
    out = FamilyState(moved, _frozen(w_new), fs.resamplings)
    if resample_below > 0.0:
        for k in range(family.n_species):
            if family.growth_law(k) is not None and (
                    effective_sample_size(out, k, comm) < resample_below * st.n_total):
                out = resample(out, k, comm)
    return out


def _growth(family: Family, species, p) -> np.ndarray:
    g = np.zeros_like(p)
    for k in range(family.n_species):
        law = family.growth_law(k)
        mine = np.asarray(species) == k
        if law is not None and mine.any():
            g[mine] = law(p[mine])
    return g


def weighted_moments(fs: FamilyState, params: ParticleParams, comm=None):
    """Per species: mass ``M_k / N sum w``, mean ``(n, d)`` and ``E|X|^2`` (collective)."""
    st = fs.particles
    n, d = st.n_species, st.dim
    x, w = st.positions, fs.weights
    loc = np.zeros((n, d + 2))
    loc[:, 0] = np.bincount(st.species, weights=w, minlength=n)
    for c in range(d):
        loc[:, 1 + c] = np.bincount(st.species, weights=w * x[:, c], minlength=n)
    loc[:, -1] = np.bincount(st.species, weights=w * np.sum(x * x, axis=1), minlength=n)
    if comm is not None and comm.size > 1:
        from mpi4py import MPI

        tot = np.empty_like(loc)
        comm.Allreduce(loc, tot, op=MPI.SUM)
        loc = tot
    mass = loc[:, 0] * np.asarray(params.mass) / st.n_total
    return mass, loc[:, 1:1 + d] / loc[:, :1], loc[:, -1] / loc[:, 0]
