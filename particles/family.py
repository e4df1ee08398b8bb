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
from functools import lru_cache

import numpy as np
import scipy.fft as sfft
from scipy.spatial import cKDTree

from fem_crossdiff.errors import ParameterError
from fem_crossdiff.family import Family
from fem_crossdiff.mollifiers import get_mollifier

from .drift import GridDrift, Particles, _cic, _global_bbox, _grid_layout, _kernel_ffts
from .params import ParticleParams
from .rng import block_generator, partition
from .state import ParticleState, _frozen, brownian_increments, step

__all__ = [
    "TAG_RESAMPLE",
    "FamilyState",
    "family_state",
    "gather_cloud",
    "density_at",
    "density_grid",
    "pressure_at",
    "interaction_drift",
    "GridInteraction",
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
_DENSITY = ("exact", "grid")


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


def density_grid(x, species, weights, params: ParticleParams, comm=None,
                 grid: GridDrift | None = None) -> np.ndarray:
    """``S(X_i)`` by the particle-mesh route of :class:`GridDrift` (collective, O(N)).

    Cloud-in-cell deposit of the weighted masses, FFT convolution with the sampled ``V^eps``,
    cloud-in-cell interpolation back to the particles: error O(h^2), ``h = eps /
    cells_per_eps``, with the grid, the memory check and the MPI reduction of ``grid``.
    """
    grid = GridDrift() if grid is None else grid
    x = np.asarray(x, dtype=float)
    parts = Particles(x, params, np.asarray(species), weights)
    pts, eps = parts.pts, params.eps
    lo, hi = _global_bbox(pts, comm)
    cpe = grid._checked_resolution(lo, hi, eps, comm)
    lo_idx, shape, shape_fft, r = _grid_layout(lo, hi, eps, cpe)
    h = eps / cpe
    ncell = int(np.prod(shape))
    mass = np.zeros(ncell)
    w = parts.weights(params)
    idx, wts = _cic(pts, lo_idx, h, shape) if pts.shape[0] else ([], [])
    for ic, wc in zip(idx, wts, strict=True):
        mass += np.bincount(ic, weights=w * wc, minlength=ncell)
    if comm is not None and comm.size > 1:
        from mpi4py import MPI

        comm.Allreduce(MPI.IN_PLACE, mass, op=MPI.SUM)
    kv_hat, _ = _kernel_ffts(shape_fft, r, h, eps, params.kernel)
    crop = tuple(slice(0, int(c)) for c in shape)
    s_grid = sfft.irfftn(sfft.rfftn(mass.reshape(tuple(shape)), shape_fft) * kv_hat,
                         shape_fft)[crop].ravel()
    out = np.zeros(pts.shape[0])
    for ic, wc in zip(idx, wts, strict=True):
        out += s_grid[ic] * wc
    return np.maximum(out, 0.0)  # the FFT's round-off can dip below 0 where S vanishes


def pressure_at(x, species, weights, params: ParticleParams, comm=None, cloud=None,
                method: str = "exact"):
    """``P(S(X_i))`` at the local particles (collective).

    ``method``: ``"exact"`` (:func:`density_at`, the particle sum) or ``"grid"``
    (:func:`density_grid`, O(N)).
    """
    if method == "grid":
        s = density_grid(x, species, weights, params, comm)
    else:
        s = density_at(x, species, weights, params, comm, cloud)
    return params.law.pressure(s)


def interaction_drift(x, species, weights, params: ParticleParams, family: Family, comm=None,
                      cloud=None) -> np.ndarray:
    """``-sum_l (grad W_kl * mu_l)(X_i)`` at the local particles, ``(M, d)`` (collective).

    ``mu_l`` puts the mass ``w_j M_l / N`` at each particle ``j`` of species ``l``; a particle's
    own term is ``grad K(0) = 0``. Compact kernels sum over the pairs within their support (a
    k-d tree of the gathered cloud); the Gaussian and Morse kernels over all pairs, in chunks
    of ``_PAIR_CHUNK`` (``O(N_local N)`` work).
    """
    x = np.asarray(x, dtype=float)
    out = np.zeros_like(x)
    if not family.interactions:
        return out
    y, sp, w = gather_cloud(x, species, weights, comm) if cloud is None else cloud
    mass = np.asarray(params.mass, dtype=float)[sp] / params.n_particles * w
    species = np.asarray(species)
    rows = max(1, _PAIR_CHUNK // max(1, y.shape[0]))
    tree = None
    for term in family.interactions:
        s = np.asarray(term.strength, dtype=float)
        if math.isfinite(term.kernel.support):  # compact: only the pairs within the support
            tree = cKDTree(y) if tree is None else tree
            for i0 in range(0, x.shape[0], _TREE_CHUNK):
                xi = x[i0:i0 + _TREE_CHUNK]
                pairs = cKDTree(xi).sparse_distance_matrix(tree, term.kernel.support,
                                                           output_type="ndarray")
                i, j = pairs["i"], pairs["j"]
                g = term.kernel.gradient(xi[i] - y[j])
                g *= (s[species[i0 + i], sp[j]] * mass[j])[:, None]
                for c in range(x.shape[1]):
                    out[i0:i0 + xi.shape[0], c] -= np.bincount(i, weights=g[:, c],
                                                               minlength=xi.shape[0])
            continue
        for i0 in range(0, x.shape[0], rows):
            xi = x[i0:i0 + rows]
            g = term.kernel.gradient(xi[:, None, :] - y[None, :, :])
            coef = s[species[i0:i0 + rows]][:, sp] * mass[None, :]
            out[i0:i0 + rows] -= np.einsum("ij,ijc->ic", coef, g)
    return out


#: default truncation radius, in kernel lengths, of the kernels without compact support
#: (the Gaussian falls to exp(-32) ~ 1e-14 at 8 lengths, the Morse profile to 2e-16 at 36).
_CUTOFF = {"gaussian": 8.0, "morse": 36.0}


@dataclass(frozen=True)
class GridInteraction:
    """Particle-mesh evaluation of the interaction drift (O(N + G log G) per step).

    Per species, cloud-in-cell deposit of the masses ``w_j M_l / N`` on a grid of spacing
    ``h = length / cells_per_length`` covering the particles plus the kernel's reach, one FFT
    convolution with ``grad K`` sampled at the grid offsets (zero padding: no wrap-around),
    cloud-in-cell interpolation back to the particles. Error O(h^2) for the smooth kernels
    (Gaussian, bump, poly4), O(h) for the Morse profile (its gradient jumps at 0). Under MPI
    the deposits are added with one ``Allreduce`` and every rank does the FFTs.

    Attributes:
        cells_per_length: grid cells per kernel length (``>= 2``).
        cutoff: reach of the Gaussian and Morse kernels in kernel lengths (``None``: 8 and 36).
        max_points: the largest grid (points) accepted, per interaction term.
    """

    cells_per_length: float = 8.0
    cutoff: float | None = None
    max_points: int = 1 << 24

    def __post_init__(self):
        c = self.cells_per_length
        if isinstance(c, bool) or not (isinstance(c, int | float) and math.isfinite(c) and c >= 2):
            raise ParameterError("cells_per_length", c, "a number >= 2")
        cut = self.cutoff
        if cut is not None and (isinstance(cut, bool) or not (
                isinstance(cut, int | float) and math.isfinite(cut) and cut > 0)):
            raise ParameterError("cutoff", cut, "a number > 0 (kernel lengths) or None")
        if isinstance(self.max_points, bool) or not isinstance(self.max_points, int) or \
                self.max_points < 1:
            raise ParameterError("max_points", self.max_points, "an integer >= 1")

    def reach(self, kernel) -> float:
        """Radius beyond which ``kernel`` is taken as zero."""
        if math.isfinite(kernel.support):
            return kernel.support
        return kernel.length * (self.cutoff if self.cutoff is not None else _CUTOFF[kernel.kind])

    def __call__(self, x, species, weights, params: ParticleParams, family: Family,
                 comm=None) -> np.ndarray:
        """``-sum_l (grad W_kl * mu_l)(X_i)`` at the local particles, ``(M, d)``."""
        x = np.asarray(x, dtype=float)
        species = np.asarray(species)
        out = np.zeros_like(x)
        if not family.interactions:
            return out
        n, d = family.n_species, x.shape[1]
        mass = np.asarray(params.mass, dtype=float)[species] / params.n_particles * weights
        lo, hi = _global_bbox(x, comm)
        for t, term in enumerate(family.interactions):
            reach, h = self.reach(term.kernel), term.kernel.length / self.cells_per_length
            lo_idx, shape, shape_fft, r = _grid_layout(lo, hi, reach, reach / h)
            npts = int(np.prod(np.asarray(shape_fft, dtype=float)))
            if npts > self.max_points:
                raise ParameterError("max_points", self.max_points, f"a grid of at least "
                                     f"{npts} points for interactions[{t}] (FFT "
                                     f"{'x'.join(map(str, shape_fft))}): raise max_points, "
                                     "or lower cells_per_length or cutoff")
            ncell = int(np.prod(shape))
            idx, wts = _cic(x, lo_idx, h, shape) if x.shape[0] else ([], [])
            dep = np.zeros((n, ncell))
            for ic, wc in zip(idx, wts, strict=True):
                for k in range(n):
                    mine = species == k
                    dep[k] += np.bincount(ic[mine], weights=(mass * wc)[mine], minlength=ncell)
            if comm is not None and comm.size > 1:
                from mpi4py import MPI

                comm.Allreduce(MPI.IN_PLACE, dep, op=MPI.SUM)
            kg = _kernel_gradient_ffts(shape_fft, r, h, term.kernel)
            crop = tuple(slice(0, int(c)) for c in shape)
            strength = np.asarray(term.strength, dtype=float)
            for l in range(n):
                if not np.any(strength[:, l]):
                    continue
                m_hat = sfft.rfftn(dep[l].reshape(tuple(shape)), shape_fft)
                coef = strength[species, l]
                for c in range(d):
                    field_ = sfft.irfftn(m_hat * kg[c], shape_fft)[crop].ravel()
                    acc = np.zeros(x.shape[0])
                    for ic, wc in zip(idx, wts, strict=True):
                        acc += field_[ic] * wc
                    out[:, c] -= coef * acc
        return out


@lru_cache(maxsize=16)
def _kernel_gradient_ffts(shape_fft: tuple, r: int, h: float, kernel) -> tuple:
    """Real FFTs of ``grad K(k h)``, ``|k_i| <= r``, wrapped (one per component)."""
    d = len(shape_fft)
    k = np.arange(-r, r + 1)
    offs = np.stack(np.meshgrid(*([k] * d), indexing="ij"), axis=-1) * h
    grad = kernel.gradient(offs)
    idx = np.ix_(*[np.mod(k, s) for s in shape_fft])
    out = []
    for c in range(d):
        kg = np.zeros(shape_fft)
        kg[idx] = grad[..., c]
        out.append(sfft.rfftn(kg, shape_fft))
    return tuple(out)


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
    density: str = "exact",
    interaction: GridInteraction | None = None,
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
        density: how ``S`` at the particles is computed for the growth laws: ``"exact"``
            (the particle sum over neighbours, :func:`density_at`) or ``"grid"`` (the
            particle-mesh route of the grid drift, O(N), :func:`density_grid`).
        interaction: how the interaction drift is computed: ``None``, the sums over particle
            pairs (:func:`interaction_drift`), or a :class:`GridInteraction` (particle-mesh).

    Returns:
        The state at ``t + dt``.
    """
    if isinstance(dt, bool) or not (isinstance(dt, int | float) and math.isfinite(dt) and dt > 0):
        raise ParameterError("dt", dt, "a finite number > 0")
    if growth_scheme not in _SCHEMES:
        raise ParameterError("growth_scheme", growth_scheme, f"one of {', '.join(_SCHEMES)}")
    if density not in _DENSITY:
        raise ParameterError("density", density, f"one of {', '.join(_DENSITY)}")
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
    if interaction is not None and not isinstance(interaction, GridInteraction):
        raise ParameterError("interaction", interaction, "None or a GridInteraction")
    need_cloud = (growth and density == "exact") or (bool(family.interactions)
                                                     and interaction is None)
    cloud = gather_cloud(x, sp, w, comm) if need_cloud else None
    p_now = pressure_at(x, sp, w, params, comm, cloud, density) if growth else None

    def drift(pos, t, prm, comm_, species=None):
        v = potential_drift(pos, species, family)
        if family.interactions and interaction is not None:
            v += interaction(pos, species, w, params, family, comm_)
        elif family.interactions:
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
        p_pred = pressure_at(moved.positions, sp, w_new, params, comm, method=density)
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
