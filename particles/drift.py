"""The interaction drift of (1.6): grid (FFT, O(N)), cell lists (exact quadrature) and brute force.

With ``w_p = a_l M_l / N`` the weight of particle ``p`` of species ``l`` (``M_l`` the species
mass, :attr:`~fem_crossdiff.particles.params.ParticleParams.mass`; 1 for the probability
densities of the paper),

    S(z) = sum_p w_p V^eps(z - X_p),     G(x) = (grad V^eps * S^(m-1))(x)
         = int grad V^eps(x - z) S(z)^(m-1) dz,     drift_k(x) = -b_k G(x).

``S`` is an exact particle sum, but the outer convolution is a spatial integral of the nonlinear
function ``S^(m-1) = P(S)`` (``params.law``, :class:`fem_crossdiff.laws.PowerLaw`); it has no
particle-sum form. Two evaluations are provided:

* **Quadrature reference** (:func:`drift_bruteforce`, :class:`CellListDrift`): the outer
  integral by tensor Gauss-Legendre quadrature (``order`` points per direction) on the cells of a
  lattice of spacing ``eps / cells_per_eps`` anchored at the origin, covering the bounding box of
  all particles enlarged by ``eps`` (outside it ``S = 0``). ``S`` is evaluated exactly at every
  quadrature node. The brute force visits all node-particle pairs (O(N x nodes), and holds all
  the nodes). The cell-list version cuts the lattice into blocks of ``_BLOCK_NODES`` nodes and,
  block by block, forms only the pairs closer than ``eps`` (the nodes of a particle's ball,
  found axis by axis by binary search on the sorted node coordinates), in chunks of at most
  ``_ENTRY_CHUNK`` candidates: its memory is bounded by the chunk and the block, plus O(N),
  at any ``N`` and ``eps``, and its work is O(N (cells_per_eps order)^d). It returns the same
  numbers up to rounding. Both are smooth functions of the particle positions.
* **Grid** (:class:`GridDrift`): cloud-in-cell deposit of the masses ``w_p`` on a uniform grid
  of spacing ``h = eps / cells_per_eps`` (anchored at the origin, covering the particles plus
  ``eps`` plus two cells), ``S`` by FFT convolution with the sampled kernel (zero padding: the
  space outside the grid is empty), ``P(S)`` at the grid points, ``G`` by FFT convolution with
  ``h^d grad V^eps`` (trapezoidal rule, spectrally accurate for the smooth compact kernel), and
  linear (cloud-in-cell) interpolation back to the particles. The deposit and the interpolation
  make the error O(h^2): about 2e-2 relative (max-norm) at ``cells_per_eps = 8``, 5e-3 at 16
  (bump kernel, 2D and 3D; ``docs/particles-drift.md``); the defaults are 16 in 1D and 2D and
  8 in 3D. The cost is O(N + (L/h)^d log(L/h)) per step, and the grid holds about
  ``8 (d + 5) ((L + 2 eps) / h)^d`` bytes whatever ``N``: each call estimates it
  (:meth:`GridDrift.cost`) and refuses, or coarsens, past ``GridDrift.memory_limit_mb``.

Under MPI every rank holds a slice of the particles: each deposits (or sums ``S`` at the nodes
from) its own particles, one ``Allreduce`` adds the grid arrays (their size is independent of
``N``), every rank does the FFTs redundantly and evaluates the drift of its own particles. The
grid drift's memory per rank is therefore the whole grid on every rank (the deposit is reduced
in place), and does not fall with the number of ranks; the estimate and the limit are per
rank. The cell-list drift reduces ``S`` block by block (one ``Allreduce`` of at most
``_BLOCK_NODES`` values per block some particle touches).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft as sfft

from fem_crossdiff.errors import ParameterError
from fem_crossdiff.mollifiers import get_mollifier

from .params import ParticleParams

__all__ = [
    "Particles",
    "GridDrift",
    "GridCost",
    "CellListDrift",
    "FieldDrift",
    "QuadratureSpec",
    "drift_bruteforce",
    "quadrature_nodes",
]

_ENTRY_CHUNK = 500_000  # candidate node-particle pairs held at once by the cell-list drift
_BLOCK_NODES = 1 << 18  # quadrature nodes per lattice block of the cell-list drift
_CIC_CHUNK = 32_768  # particles per cloud-in-cell chunk (cache-sized temporaries)
# GridDrift's cells per eps when None: finer grids cost (cells_per_eps)^d (docs/particles-drift.md)
_DEFAULT_CELLS_PER_EPS = {1: 16.0, 2: 16.0, 3: 8.0}
_COARSENED: set = set()  # grids already reported as coarsened (log once)


def _allreduce(comm, arr, op="sum"):
    if comm is None or comm.size == 1:
        return arr
    from mpi4py import MPI

    mpi_op = {"sum": MPI.SUM, "min": MPI.MIN, "max": MPI.MAX}[op]
    out = np.empty_like(arr)
    comm.Allreduce(np.ascontiguousarray(arr), out, op=mpi_op)
    return out


def _global_bbox(positions: np.ndarray, comm) -> tuple[np.ndarray, np.ndarray]:
    d = positions.shape[-1]
    x = positions.reshape(-1, d)
    if x.shape[0]:
        # per-coordinate 1D reductions: much faster than axis-0 reductions of (P, d) arrays
        lo = np.array([x[:, k].min() for k in range(d)])
        hi = np.array([x[:, k].max() for k in range(d)])
    else:
        lo, hi = np.full(d, np.inf), np.full(d, -np.inf)
    lo, hi = _allreduce(comm, lo, "min"), _allreduce(comm, hi, "max")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError("positions: no particles, or non-finite particle positions")
    return lo, hi


class Particles:
    """The local particles of a drift call in the one flat layout, and the way back.

    Every drift takes either ``positions (M, d)`` with ``species (M,)`` (the layout of
    :class:`~fem_crossdiff.particles.state.ParticleState`, any number of particles of each
    species per rank) or, with ``species=None``, a block ``(n, N_local, d)`` (``N_local``
    particles of each species, the shorthand of the tests and of the free-space studies).

    Attributes:
        pts: ``(M, d)`` positions.
        species: ``(M,)`` species indices.
        shape: shape of the caller's array (the drift is returned in it).
    """

    def __init__(self, positions, params: ParticleParams, species=None, weights=None):
        x = np.asarray(positions, dtype=float)
        # per-particle factors of the weights (growth, fem_crossdiff.particles.family)
        self.scale = None if weights is None else np.asarray(weights, dtype=float).ravel()
        n = params.n_species
        if species is None:
            if x.ndim != 3 or x.shape[0] != n:
                raise ValueError(f"positions must have shape (n_species={n}, N_local, d) "
                                 f"(or (M, d) with species), got {x.shape}")
            self.species = np.repeat(np.arange(n, dtype=np.int64), x.shape[1])
            self.pts = x.reshape(-1, x.shape[2])
        else:
            sp = np.asarray(species)
            if x.ndim != 2 or sp.shape != (x.shape[0],):
                raise ValueError(f"positions (M, d) and species (M,) needed, got "
                                 f"{x.shape} and {sp.shape}")
            if sp.size and (sp.min() < 0 or sp.max() >= n):
                raise ValueError(f"species must lie in [0, {n}), got [{sp.min()}, {sp.max()}]")
            self.species, self.pts = sp.astype(np.int64), x
        self.shape = x.shape
        if self.scale is not None and self.scale.shape != (self.pts.shape[0],):
            raise ValueError(f"weights must have one entry per local particle "
                             f"({self.pts.shape[0]}), got shape {self.scale.shape}")

    def weights(self, params: ParticleParams) -> np.ndarray:
        """Weight ``a_l M_l / N`` of every particle, ``(M,)``, times its factor if given."""
        w = np.asarray(params.weights, dtype=float)[self.species]
        return w if self.scale is None else w * self.scale

    def drift(self, params: ParticleParams, grad: np.ndarray) -> np.ndarray:
        """``-b_k grad`` in the caller's shape."""
        b = np.asarray(params.b, dtype=float)[self.species]
        return (-b[:, None] * grad).reshape(self.shape)


# ---------------------------------------------------------------------------------------------
# quadrature reference and cell lists
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuadratureSpec:
    """Tensor Gauss-Legendre quadrature of the outer convolution integral.

    Attributes:
        cells_per_eps: lattice cells per ``eps`` (cell side ``eps / cells_per_eps``).
        order: Gauss points per direction and cell.
    """

    cells_per_eps: int = 8
    order: int = 3

    def __post_init__(self):
        if int(self.cells_per_eps) != self.cells_per_eps or self.cells_per_eps < 1:
            raise ValueError(f"cells_per_eps must be an integer >= 1, got {self.cells_per_eps!r}")
        if int(self.order) != self.order or not 1 <= self.order <= 10:
            raise ValueError(f"order must be an integer in 1..10, got {self.order!r}")


def _lattice_axes(lo, hi, eps: float, spec: QuadratureSpec):
    """Per axis: first cell index, cell count, node coordinates and weights of the lattice."""
    hq = eps / spec.cells_per_eps
    xi, wi = np.polynomial.legendre.leggauss(spec.order)
    xi, wi = 0.5 * (xi + 1.0), 0.5 * wi
    out = []
    for lo_c, hi_c in zip(lo, hi, strict=True):
        i0 = math.floor((lo_c - eps) / hq) - 1
        i1 = math.ceil((hi_c + eps) / hq) + 1
        cells = np.arange(i0, i1, dtype=float)
        out.append((i0, i1 - i0, ((cells[:, None] + xi[None, :]) * hq).ravel(),
                    np.tile(wi * hq, cells.size)))
    return out


def quadrature_nodes(
    lo: np.ndarray, hi: np.ndarray, eps: float, spec: QuadratureSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``(M, d)`` and weights ``(M,)`` covering ``[lo - eps, hi + eps]`` (lattice-aligned)."""
    axes = _lattice_axes(lo, hi, eps, spec)
    mesh = np.meshgrid(*[a[2] for a in axes], indexing="ij")
    nodes = np.stack([g.ravel() for g in mesh], axis=-1)
    wmesh = np.meshgrid(*[a[3] for a in axes], indexing="ij")
    weights = np.prod(np.stack([g.ravel() for g in wmesh], axis=-1), axis=-1)
    return nodes, weights


def _ragged(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows with ``counts[i]`` children each: the parent row and the rank of every child."""
    parent = np.repeat(np.arange(counts.size), counts)
    first = np.cumsum(counts) - counts
    return parent, np.arange(parent.size) - first[parent]


def _block_pairs(p, coords, pts, j0, j1, eps):
    """Particle-node pairs closer than about ``eps`` between particles ``p`` and one block.

    The block holds the nodes ``j0[k] <= i < j1[k]`` of every axis ``k`` (``coords[k]`` their
    sorted coordinates). The pairs are built one axis at a time: given the partial squared
    distance ``r2`` of a row, its nodes along the next axis are the interval
    ``|z_k - X_k| < sqrt(eps^2 - r2)`` (two binary searches), so only the pairs of the ball
    are formed. The interval is widened by a relative 1e-9, so a few pairs at distance
    ``>= eps`` may appear: the kernel profiles are exactly zero there.

    Returns:
        ``(rows, pairs)``: ``rows = (pid, lin, diffs)`` over the first ``d - 1`` axes (particle,
        linear index in the block of the first ``d - 1`` axes, the ``d - 1`` components of
        ``z - X_p``) and ``pairs = (parent, lin, r2, dk)``: the row of each pair, the node's
        linear index in the block (C order), ``|z - X_p|^2`` and the last component of
        ``z - X_p``.
    """
    eps2 = eps * eps
    pid = p
    lin = np.zeros(p.size, dtype=np.int64)
    r2 = np.zeros(p.size)
    diffs = []
    d = pts.shape[1]
    for k in range(d):
        xk = pts[pid, k]
        hw = np.sqrt(np.maximum(eps2 - r2, 0.0)) * (1.0 + 1e-9)
        first = np.clip(np.searchsorted(coords[k], xk - hw, "left"), j0[k], j1[k])
        stop = np.clip(np.searchsorted(coords[k], xk + hw, "right"), j0[k], j1[k])
        counts = stop - first
        parent = np.repeat(np.arange(counts.size), counts)
        ik = np.arange(parent.size) + (first - (np.cumsum(counts) - counts))[parent]
        dk = coords[k][ik] - xk[parent]
        r2_new = r2[parent] + dk * dk
        lin_new = lin[parent] * (j1[k] - j0[k]) + (ik - j0[k])
        if k == d - 1:
            return (pid, lin, diffs), (parent, lin_new, r2_new, dk)
        pid, lin, r2 = pid[parent], lin_new, r2_new
        diffs = [c[parent] for c in diffs] + [dk]


def _chunks(bound: np.ndarray, limit: int):
    """Consecutive slices of rows whose summed ``bound`` stays within ``limit`` (>= 1 row)."""
    csum = np.cumsum(bound)
    i0, n = 0, bound.size
    while i0 < n:
        base = csum[i0 - 1] if i0 else 0
        i1 = min(max(int(np.searchsorted(csum, base + limit, side="right")), i0 + 1), n)
        yield slice(i0, i1)
        i0 = i1


def _cell_list_drift(positions, params, comm, spec: QuadratureSpec, species=None,
                     weights=None) -> np.ndarray:
    """The quadrature reference, block by block of the node lattice (memory bounded by chunks).

    Every particle sees the nodes of a fixed window of ``2 cells_per_eps + 2`` lattice cells per
    axis (all nodes closer than ``eps``). The lattice is cut into blocks of at most
    ``_BLOCK_NODES`` nodes; for each block that some particle touches, ``S`` is summed over the
    particle-node pairs of the block (chunks of at most ``_ENTRY_CHUNK`` candidates),
    added over the ranks, turned into ``q_w P(S)``, and the gradient sums of the same pairs are
    added to the particles. Nothing of the size of the lattice or of all the pairs is held.
    """
    parts = Particles(positions, params, species, weights)
    pts = np.ascontiguousarray(parts.pts)
    d = pts.shape[1]
    kern = get_mollifier(params.kernel)
    eps = params.eps
    eps2 = eps * eps
    lo, hi = _global_bbox(pts, comm)
    axes = _lattice_axes(lo, hi, eps, spec)
    order, hq = spec.order, eps / spec.cells_per_eps
    wcells = 2 * spec.cells_per_eps + 2
    width = order * wcells
    w = parts.weights(params)
    npts = pts.shape[0]
    nnodes = np.array([nc * order for _, nc, _, _ in axes], dtype=np.int64)
    coords = [a[2] for a in axes]
    st = []  # first node of each particle's window, per axis
    for k, (i0, nc, _, _) in enumerate(axes):
        c = np.floor((pts[:, k] - eps) / hq).astype(np.int64) - i0
        st.append(np.clip(c, 0, nc - wcells) * order)
    bside = max(1, int(round(_BLOCK_NODES ** (1.0 / d))))
    nblk = -(-nnodes // bside)
    # (block, particle) incidences, sorted by block
    pid = np.arange(npts)
    bid = np.zeros(npts, dtype=np.int64)
    for k in range(d):
        b_lo = st[k] // bside
        b_hi = np.minimum((st[k] + width - 1) // bside, nblk[k] - 1)
        parent, rank = _ragged((b_hi - b_lo + 1)[pid])
        pid = pid[parent]
        bid = bid[parent] * nblk[k] + b_lo[pid] + rank
    perm = np.argsort(bid, kind="stable")
    bid, pid = bid[perm], pid[perm]
    blocks = np.unique(bid)
    if comm is not None and comm.size > 1:  # every rank visits every touched block
        blocks = np.unique(np.concatenate(comm.allgather(blocks)))
    bounds = np.searchsorted(bid, blocks, side="left"), np.searchsorted(bid, blocks, "right")
    law = params.law
    # V^eps(y) = v_scale phi(|y/eps|^2), grad V^eps(y) = g_scale phi'(|y/eps|^2) y (mollifiers)
    v_scale = kern.constant(d) / eps**d
    g_scale = 2.0 * kern.constant(d) / eps ** (d + 2)
    g = np.zeros((npts, d))
    for b, s0, s1 in zip(blocks, *bounds, strict=True):
        bk = np.unravel_index(int(b), tuple(nblk))
        j0 = np.array(bk, dtype=np.int64) * bside
        j1 = np.minimum(j0 + bside, nnodes)
        bshape = j1 - j0
        p = pid[s0:s1]
        start = [np.maximum(st[k][p], j0[k]) for k in range(d)]
        length = [np.minimum(st[k][p] + width, j1[k]) - start[k] for k in range(d)]
        bound = np.prod(np.stack(length), axis=0)
        size = int(np.prod(bshape))
        s_blk = np.zeros(size)
        pieces = list(_chunks(bound, _ENTRY_CHUNK))
        for sl in pieces:
            (pid_r, _, _), (par, lin, r2, _) = _block_pairs(p[sl], coords, pts, j0, j1, eps)
            s_blk += np.bincount(lin, weights=w[pid_r][par] * kern._profile(r2 / eps2),
                                 minlength=size)
        s_blk = _allreduce(comm, s_blk * v_scale, "sum")
        f = np.zeros(size)
        pos = s_blk > 0.0  # P(0) = 0: the pressure only where some particle is near
        if np.any(pos):
            qw = functools.reduce(np.multiply.outer,
                                  [axes[k][3][j0[k]:j1[k]] for k in range(d)]).ravel()
            f[pos] = qw[pos] * law.pressure(s_blk[pos])
        for sl in pieces:
            (pid_r, _, diffs), (par, lin, r2, dk) = _block_pairs(p[sl], coords, pts, j0, j1,
                                                                 eps)
            # grad V(X_p - z) = -g_scale phi'(|z - X_p|^2 / eps^2) (z - X_p); the first d - 1
            # components of z - X_p are constant along a row: sum the coefficients per row
            coef = f[lin] * kern._dprofile(r2 / eps2)
            g[:, d - 1] -= np.bincount(pid_r[par], weights=coef * dk, minlength=npts)
            if d > 1:
                row_coef = np.bincount(par, weights=coef, minlength=pid_r.size)
                for c in range(d - 1):
                    g[:, c] -= np.bincount(pid_r, weights=row_coef * diffs[c], minlength=npts)
    return parts.drift(params, g_scale * g)


def _all_pairs(a: np.ndarray, b: np.ndarray, r: float):
    """Yield chunks ``(ia, ib)`` of the pairs closer than about ``r``, testing all of them.

    Brute force: the full distance matrix, chunk by chunk, by the BLAS expansion
    ``|a|^2 + |b|^2 - 2 a.b`` with a safety margin covering its rounding (the exact test is
    redone by the caller); cost O(len(a) len(b)).
    """
    na, nb = a.shape[0], b.shape[0]
    if na == 0 or nb == 0:
        return
    centre = 0.5 * (a.mean(axis=0) + b.mean(axis=0))
    a, b = a - centre, b - centre
    a2, b2 = np.einsum("ij,ij->i", a, a), np.einsum("ij,ij->i", b, b)
    scale = float(max(a2.max(), b2.max()))
    thresh = (r * (1.0 + 1e-6)) ** 2 + 1e-12 * scale
    rows = max(1, 4_000_000 // nb)
    for i0 in range(0, na, rows):
        i1 = min(na, i0 + rows)
        d2 = a2[i0:i1, None] + b2[None, :] - 2.0 * (a[i0:i1] @ b.T)
        ia, ib = np.nonzero(d2 < thresh)
        yield ia + i0, ib


def _quadrature_drift(positions, params, comm, spec: QuadratureSpec, pairs,
                      species=None, weights=None) -> np.ndarray:
    parts = Particles(positions, params, species, weights)
    pts = parts.pts
    d = pts.shape[1]
    kern = get_mollifier(params.kernel)
    eps = params.eps
    lo, hi = _global_bbox(pts, comm)
    nodes, qw = quadrature_nodes(lo, hi, eps, spec)
    w = parts.weights(params)
    eps2 = eps * eps
    s_loc = np.zeros(nodes.shape[0])
    for iq, ip in pairs(nodes, pts):
        diff = nodes[iq] - pts[ip]
        # Pairs at distance >= eps contribute exact zeros; skipping them changes no bit.
        near = np.einsum("ij,ij->i", diff, diff) < eps2
        s_loc += np.bincount(iq[near], weights=w[ip[near]] * kern.value(diff[near], eps),
                             minlength=nodes.shape[0])
    s = _allreduce(comm, s_loc, "sum")
    f = qw * params.law.pressure(s)
    keep = f != 0.0
    nodes_k, f_k = nodes[keep], f[keep]
    g = np.zeros((pts.shape[0], d))
    for ip, iq in pairs(pts, nodes_k):
        diff = pts[ip] - nodes_k[iq]
        near = np.einsum("ij,ij->i", diff, diff) < eps2
        ip, iq, diff = ip[near], iq[near], diff[near]
        contrib = f_k[iq, None] * kern.gradient(diff, eps)
        for c in range(d):
            g[:, c] += np.bincount(ip, weights=contrib[:, c], minlength=pts.shape[0])
    return parts.drift(params, g)


def drift_bruteforce(
    positions: np.ndarray,
    params: ParticleParams,
    comm=None,
    quadrature: QuadratureSpec = QuadratureSpec(),
    species=None,
    weights=None,
) -> np.ndarray:
    """Reference drift by brute force: every node-particle pair is tested (O(N x nodes)).

    Args:
        positions: local particles, ``(M, d)`` with ``species``, or ``(n_species, N_local, d)``
            (:class:`Particles`).
        params: model parameters (``N`` is ``params.n_particles``, the global count).
        comm: MPI communicator over which the particles are split (``None``: serial).
        quadrature: the quadrature of the outer integral (module docstring).
        species: ``(M,)`` species of the particles (``None``: the block layout).
        weights: ``(M,)`` factors of the particles' weights ``a_l M_l / N`` (growth,
            :mod:`fem_crossdiff.particles.family`); ``None``: 1.

    Returns:
        ``-b_k G(X_k^i)`` for the local particles, in the shape of ``positions``.
    """
    return _quadrature_drift(
        positions, params, comm, quadrature, lambda a, b: _all_pairs(a, b, params.eps), species,
        weights)


@dataclass(frozen=True)
class CellListDrift:
    """The quadrature reference, visiting only the node-particle pairs closer than ``eps``.

    Returns the same numbers as :func:`drift_bruteforce` up to rounding (pairs farther than
    ``eps`` contribute exact zeros to the brute-force sums). Block by block of the node lattice
    (module docstring): work O(N (cells_per_eps order)^d), memory bounded by one block and one
    chunk of pairs plus O(N), at any ``N`` and ``eps``.

    Attributes:
        quadrature: the quadrature of the outer integral.
    """

    quadrature: QuadratureSpec = QuadratureSpec()

    def __call__(self, positions, t, params, comm=None, species=None, weights=None):
        """Drift of the local particles at time ``t`` (layouts: :class:`Particles`).

        ``weights``: ``(M,)`` factors of the particles' weights (growth); ``None``: 1.
        """
        return _cell_list_drift(positions, params, comm, self.quadrature, species, weights)


# ---------------------------------------------------------------------------------------------
# grid (particle-mesh) method
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _kernel_ffts(shape_fft: tuple, r: int, h: float, eps: float, kernel: str):
    """Real FFTs of ``V^eps(k h)`` and of ``h^d grad V^eps(k h)``, ``|k_i| <= r``, wrapped."""
    d = len(shape_fft)
    kern = get_mollifier(kernel)
    k = np.arange(-r, r + 1)
    offs = np.stack(np.meshgrid(*([k] * d), indexing="ij"), axis=-1) * h
    idx = np.ix_(*[np.mod(k, n) for n in shape_fft])
    kv = np.zeros(shape_fft)
    kv[idx] = kern.value(offs, eps)
    grad = kern.gradient(offs, eps) * h**d
    out_v = sfft.rfftn(kv, shape_fft)
    out_g = []
    for c in range(d):
        kg = np.zeros(shape_fft)
        kg[idx] = grad[..., c]
        out_g.append(sfft.rfftn(kg, shape_fft))
    return out_v, tuple(out_g)


def _cic(pts: np.ndarray, lo_idx: np.ndarray, h: float, shape: np.ndarray):
    """Cloud-in-cell corner linear indices and weights: two lists of ``2^d`` arrays ``(P,)``."""
    d = pts.shape[1]
    t = np.ascontiguousarray((pts / h - lo_idx).T)
    i0 = np.floor(t).astype(np.int64)
    np.clip(i0, 0, (shape - 2)[:, None], out=i0)
    f = t - i0
    g = 1.0 - f
    strides = np.ones(d, dtype=np.int64)
    for k in range(d - 2, -1, -1):
        strides[k] = strides[k + 1] * shape[k + 1]
    base = i0[0] * strides[0]
    for k in range(1, d):
        base += i0[k] * strides[k]
    idx, wts = [], []
    for corner in itertools.product((0, 1), repeat=d):
        w = f[0] if corner[0] else g[0]
        for k in range(1, d):
            w = w * (f[k] if corner[k] else g[k])
        idx.append(base + int(np.dot(corner, strides)))
        wts.append(w)
    return idx, wts


@dataclass(frozen=True)
class GridCost:
    """What one :class:`GridDrift` evaluation allocates and computes, estimated beforehand.

    Attributes:
        cells_per_eps: the resolution the estimate is for.
        shape: grid points per axis (particles' box plus ``eps`` plus margins).
        shape_fft: the zero-padded FFT shape.
        memory_mb: estimated peak of the arrays of one evaluation on one rank, in MB
            (``1e6`` bytes), the cached kernel transforms included; under MPI every rank
            holds the whole grid and does every FFT, so this is the memory of each rank.
        fft_flops: about ``2.5 n log2 n`` per real transform of ``n`` points, ``d + 3``
            transforms per evaluation (every rank does all of them).
    """

    cells_per_eps: float
    shape: tuple[int, ...]
    shape_fft: tuple[int, ...]
    memory_mb: float
    fft_flops: float


@dataclass(frozen=True)
class GridDrift:
    """Particle-mesh drift: CIC deposit, FFT convolutions, CIC interpolation (O(N) per step).

    The grid covers the particles' bounding box, so its size is ``((L + 2 eps) / h)^d`` whatever
    ``N``: before allocating anything, each call estimates its memory (:meth:`cost`) and
    compares it with ``memory_limit_mb``.

    Attributes:
        cells_per_eps: grid cells per ``eps``; the spacing is ``h = eps / cells_per_eps`` and
            the error is O(h^2) (module docstring). ``None`` (default): 16 in 1D and 2D, 8 in
            3D (the accuracy per cost of ``docs/particles-drift.md``).
        memory_limit_mb: the largest estimated peak memory of one evaluation, per rank, in MB.
        coarsen: over the limit, use the finest ``cells_per_eps`` that fits (logged once per
            grid) instead of raising.
    """

    cells_per_eps: float | None = None
    memory_limit_mb: float = 2048.0
    coarsen: bool = False

    def __post_init__(self):
        c = self.cells_per_eps
        if c is not None and not (math.isfinite(c) and c >= 2):
            raise ParameterError("cells_per_eps", c, "must be a number >= 2 (or None: the "
                                 "default of the dimension)")
        lim = self.memory_limit_mb
        if isinstance(lim, bool) or not (isinstance(lim, int | float) and math.isfinite(lim)
                                         and lim > 0):
            raise ParameterError("memory_limit_mb", lim, "must be a number > 0 (MB per rank)")

    def resolution(self, d: int) -> float:
        """``cells_per_eps`` in dimension ``d`` (the default of the dimension when ``None``)."""
        return float(self.cells_per_eps if self.cells_per_eps is not None
                     else _DEFAULT_CELLS_PER_EPS.get(d, 8.0))

    def spacing(self, eps: float, d: int = 2) -> float:
        """Grid spacing ``h`` for a given ``eps`` (in dimension ``d``)."""
        return eps / self.resolution(d)

    def cost(self, lo, hi, eps: float, cells_per_eps: float | None = None) -> GridCost:
        """Estimated memory and FFT work of one evaluation for particles in ``[lo, hi]``."""
        lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
        c = self.resolution(lo.size) if cells_per_eps is None else float(cells_per_eps)
        _, shape, shape_fft, _ = _grid_layout(lo, hi, eps, c)
        d = lo.size
        ncell = float(np.prod(shape.astype(float)))
        nfft = float(np.prod(np.asarray(shape_fft, dtype=float)))
        nhalf = nfft / shape_fft[-1] * (shape_fft[-1] // 2 + 1)
        # peak while the d gradient fields are formed: d + 1 cached kernel transforms, the
        # transform of P(S), one product and one inverse transform, S (a view of a full
        # inverse transform), the deposit and the d fields; the same on every rank (the
        # deposit is reduced in place)
        nbytes = 16.0 * nhalf * (d + 3) + 16.0 * nfft + 8.0 * ncell * (d + 1)
        flops = (d + 3) * 2.5 * nfft * math.log2(max(nfft, 2.0))
        return GridCost(c, tuple(int(s) for s in shape), shape_fft, nbytes / 1e6, flops)

    def _checked_resolution(self, lo, hi, eps, comm) -> float:
        est = self.cost(lo, hi, eps)
        if est.memory_mb <= self.memory_limit_mb:
            return est.cells_per_eps
        # the finest resolution that fits (the estimate grows with cells_per_eps)
        a, b = 2.0, est.cells_per_eps
        fits = self.cost(lo, hi, eps, a).memory_mb <= self.memory_limit_mb
        if fits:
            for _ in range(40):
                mid = 0.5 * (a + b)
                if self.cost(lo, hi, eps, mid).memory_mb <= self.memory_limit_mb:
                    a = mid
                else:
                    b = mid
            a = math.floor(a * 10.0) / 10.0
        if self.coarsen and fits:
            key = (est.shape, a, self.memory_limit_mb)
            if key not in _COARSENED:
                _COARSENED.add(key)
                from fem_crossdiff.log import get_logger

                get_logger(comm).warning(
                    "GridDrift: cells_per_eps = %g needs a grid of %s points, about %.0f MB "
                    "per rank, over memory_limit_mb = %g; using cells_per_eps = %g instead "
                    "(error O(h^2) grows by about %.1fx)", est.cells_per_eps,
                    "x".join(map(str, est.shape)), est.memory_mb, self.memory_limit_mb, a,
                    (est.cells_per_eps / a) ** 2)
            return a
        hint = (f"cells_per_eps <= {a:g} fits this limit, or" if fits else
                "not even cells_per_eps = 2 fits this limit:")
        raise ParameterError(
            "memory_limit_mb", self.memory_limit_mb,
            f"GridDrift(cells_per_eps={est.cells_per_eps:g}) for eps = {eps:g} and particles in "
            f"[{', '.join(f'{v:.3g}' for v in lo)}] x [{', '.join(f'{v:.3g}' for v in hi)}] "
            f"needs a grid of {'x'.join(map(str, est.shape))} points (FFT "
            f"{'x'.join(map(str, est.shape_fft))}, {est.fft_flops:.2g} flops), an estimated "
            f"{est.memory_mb:.0f} MB per rank; allowed: an estimate <= memory_limit_mb "
            f"({hint} raise memory_limit_mb to >= {math.ceil(est.memory_mb)}; "
            "or GridDrift(coarsen=True))")

    def __call__(self, positions, t, params, comm=None, species=None, weights=None):
        """Drift of the local particles at time ``t`` (layouts: :class:`Particles`).

        ``weights``: ``(M,)`` factors of the particles' weights ``a_l M_l / N`` (growth,
        :mod:`fem_crossdiff.particles.family`); ``None``: 1.

        Raises:
            ParameterError: (``memory_limit_mb``) the grid would exceed the limit and
                ``coarsen`` is false; raised on every rank (the estimate uses the global box).
        """
        parts = Particles(positions, params, species, weights)
        pts = parts.pts
        d = pts.shape[1]
        eps = params.eps
        lo, hi = _global_bbox(pts, comm)
        cpe = self._checked_resolution(lo, hi, eps, comm)
        lo_idx, shape, shape_fft, r = _grid_layout(lo, hi, eps, cpe)
        h = eps / cpe
        w = parts.weights(params)
        ncell = int(np.prod(shape))
        mass = np.zeros(ncell)
        # Particles in chunks: the CIC temporaries stay in cache, keeping the cost linear in N.
        chunks = [slice(i, i + _CIC_CHUNK) for i in range(0, pts.shape[0], _CIC_CHUNK)]
        for sl in chunks:
            idx, wts = _cic(pts[sl], lo_idx, h, shape)
            for ic, wc in zip(idx, wts, strict=True):
                mass += np.bincount(ic, weights=w[sl] * wc, minlength=ncell)
        if comm is not None and comm.size > 1:  # in place: no second grid-sized buffer
            from mpi4py import MPI

            comm.Allreduce(MPI.IN_PLACE, mass, op=MPI.SUM)
        mass = mass.reshape(tuple(shape))
        kv_hat, kg_hat = _kernel_ffts(shape_fft, r, h, eps, params.kernel)
        crop = tuple(slice(0, int(s)) for s in shape)
        s_grid = sfft.irfftn(sfft.rfftn(mass, shape_fft) * kv_hat, shape_fft)[crop]
        p_hat = sfft.rfftn(params.law.pressure(s_grid), shape_fft)
        fields = [sfft.irfftn(p_hat * kg_hat[c], shape_fft)[crop].ravel() for c in range(d)]
        g = np.empty((pts.shape[0], d))
        for sl in chunks:
            idx, wts = _cic(pts[sl], lo_idx, h, shape)
            for c in range(d):
                acc = fields[c][idx[0]] * wts[0]
                for ic, wc in zip(idx[1:], wts[1:], strict=True):
                    acc += fields[c][ic] * wc
                g[sl, c] = acc
        return parts.drift(params, g)


def _grid_layout(lo, hi, eps: float, cells_per_eps: float):
    """First grid index, grid shape, FFT shape and kernel radius in cells of the grid drift."""
    h = eps / cells_per_eps
    r = int(math.ceil(eps / h))
    # Grid bounds rounded outward to multiples of 8 cells so that the grid, and the cached
    # kernel transforms, change only when the particle cloud moves by several cells.
    lo_idx = 8 * np.floor((np.floor(lo / h) - r - 2) / 8).astype(np.int64)
    hi_idx = 8 * np.ceil((np.ceil(hi / h) + r + 2) / 8).astype(np.int64)
    shape = hi_idx - lo_idx + 1
    shape_fft = tuple(int(sfft.next_fast_len(int(s) + r + 1, real=True)) for s in shape)
    return lo_idx, shape, shape_fft, r


@dataclass(frozen=True)
class FieldDrift:
    """Drift ``-b_k grad_g(t, x)`` from a prescribed field: the nonlinear process (1.7).

    Attributes:
        grad_g: callable ``grad_g(t, y)`` returning ``grad g^eps`` at points ``y`` of shape
            ``(M, d)`` (same shape out), e.g. from a PDE solution of (1.5).
    """

    grad_g: Callable[[float, np.ndarray], np.ndarray]

    def __call__(self, positions, t, params, comm=None, species=None):
        """Drift of the local particles at time ``t`` (layouts: :class:`Particles`)."""
        parts = Particles(positions, params, species)
        grad = np.empty_like(parts.pts)
        for k in range(params.n_species):
            mine = np.flatnonzero(parts.species == k)
            grad[mine] = np.asarray(self.grad_g(t, parts.pts[mine]), dtype=float).reshape(
                mine.size, parts.pts.shape[1])
        return parts.drift(params, grad)
