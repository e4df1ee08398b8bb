"""Particle state, pure Euler-Maruyama step, reproducible initial data and noise.

Layout (one for every domain): the state holds this rank's particles as flat arrays,
``positions (M, d)``, ``species (M,)`` and ``ids (M,)`` (the particle's global index within its
species, ``0 <= id < N``), plus ``cells (M,)`` on a tracking domain. Flat arrays rather than one
``(n, N_local, d)`` block because a rank holds different numbers of particles of each species
once particles live with the mesh cells that contain them.

Ownership: on free space and on a :class:`~fem_crossdiff.particles.domains.Box`, rank ``r``
holds the contiguous global index block of :func:`fem_crossdiff.particles.rng.partition`, the
same for every species, for the whole run. On a tracking domain
(:class:`~fem_crossdiff.particles.mesh_domain.MeshDomain`) a particle lives on the rank that owns
its cell: the initial data are drawn in index blocks and then sent to the owners
(:meth:`MeshDomain.distribute`), and every step migrates the particles whose cell changed owner
(:meth:`MeshDomain.track`); ``cells`` are then local cell indices of the owning rank.

Randomness: initial positions come from the block streams of
:mod:`fem_crossdiff.particles.rng` (drawn in index blocks, so independent of the number of
ranks); Brownian increments from the counter-based generator of
:mod:`fem_crossdiff.particles.counter_rng`, keyed by ``(seed, TAG_NOISE, species, step, id)``,
so a particle's path does not depend on which rank holds it. Same seed: same trajectories on any
number of ranks (up to the round-off of the drift's sums over ranks).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from .counter_rng import normals
from .domains import check_inside
from .params import ParticleParams
from .rng import TAG_INIT, TAG_NOISE, _check_seed, draw_slice, partition

__all__ = [
    "ParticleState",
    "Drift",
    "init_state",
    "state_from_positions",
    "brownian_increments",
    "step",
    "run",
    "gather_positions",
]

#: ``drift(positions, t, params, comm, species=None) -> array`` of the shape of ``positions``:
#: ``positions (M, d)`` with ``species (M,)``, or ``(n, N_local, d)`` with ``species=None``.
Drift = Callable[..., np.ndarray]


def _frozen(a, dtype=float) -> np.ndarray:
    a = np.array(a, dtype=dtype, copy=True)
    a.setflags(write=False)
    return a


def _frozen_new(a, dtype=float) -> np.ndarray:
    """As :func:`_frozen` for an array this module just made (nobody else holds it): no copy.

    Why: at N = 1e6 the copies of a step's outputs were a tenth of the step.
    """
    a = np.asarray(a, dtype=dtype)
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class ParticleState:
    """This rank's particles at one time (immutable; module docstring for the layout).

    Attributes:
        positions: read-only ``(M, d)`` positions of the local particles.
        species: read-only ``(M,)`` species index of each local particle.
        ids: read-only ``(M,)`` global index of each particle within its species.
        time: current time.
        step_index: number of steps taken (keys the Brownian streams).
        seed: the run's seed (keys every random stream).
        n_total: global number ``N`` of particles per species.
        n_species: number of species ``n``.
        cells: read-only ``(M,)`` local cells (owned by this rank) of the particles on a
            tracking domain (:class:`~fem_crossdiff.particles.mesh_domain.MeshDomain`), ``None``
            elsewhere; kept from step to step so that location is a walk from the previous cell.
    """

    positions: np.ndarray
    species: np.ndarray
    ids: np.ndarray
    time: float
    step_index: int
    seed: int
    n_total: int
    n_species: int
    cells: np.ndarray | None = None

    @property
    def dim(self) -> int:
        """Space dimension ``d``."""
        return self.positions.shape[1]

    @property
    def n_local(self) -> int:
        """Number ``M`` of local particles (all species)."""
        return self.positions.shape[0]

    def of_species(self, k: int) -> np.ndarray:
        """Local positions ``(M_k, d)`` of species ``k``, in the local order."""
        return self.positions[self.species == int(k)]

    def ids_of_species(self, k: int) -> np.ndarray:
        """Global indices ``(M_k,)`` of the local particles of species ``k``."""
        return self.ids[self.species == int(k)]


def _comm_info(comm) -> tuple[int, int]:
    return (1, 0) if comm is None else (comm.size, comm.rank)


def _block(n: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Species and ids of the index block ``[start, stop)`` of every species (species-major)."""
    m = stop - start
    return (np.repeat(np.arange(n, dtype=np.int64), m),
            np.tile(np.arange(start, stop, dtype=np.int64), n))


def _placed(domain, pos: np.ndarray, species, ids, seed, n_total, n, comm, time=0.0):
    """The state of the index-block particles ``pos (n, m, d)``.

    Moved to the owners of their cells on a tracking domain, checked against the domain
    elsewhere.
    """
    d = pos.shape[-1]
    x = pos.reshape(-1, d)
    cells = None
    if hasattr(domain, "distribute"):
        x, cells, extra = domain.distribute(x, np.stack([species, ids], axis=1))
        species, ids = extra[:, 0], extra[:, 1]
        cells = _frozen(cells, np.int64)
    else:
        check_inside(domain, x, comm)
    return ParticleState(_frozen(x), _frozen(species, np.int64), _frozen(ids, np.int64),
                         float(time), 0, seed, int(n_total), int(n), cells)


def init_state(
    params: ParticleParams,
    sampler,
    seed: int,
    domain,
    comm=None,
) -> ParticleState:
    """Sample initial positions ``xi_k^i`` reproducibly (rank-independent) and check them.

    Args:
        params: model parameters (gives ``N`` and the number of species).
        sampler: ``sampler(rng, count) -> (count, d)`` draws i.i.d. positions; either one for
            all species or a sequence with one per species (see
            :mod:`fem_crossdiff.particles.sampling`).
        seed: integer >= 0 keying all streams of the run.
        domain: the particle domain; every sample must lie in it.
        comm: MPI communicator (``None``: serial). Collective when given.

    Returns:
        The state at time 0 holding this rank's particles (module docstring).

    Raises:
        ValueError: for samples outside the domain (parameter ``positions``).
    """
    seed = _check_seed(seed)
    size, rank = _comm_info(comm)
    start, stop = partition(params.n_particles, size, rank)
    samplers = list(sampler) if isinstance(sampler, list | tuple) else [sampler] * params.n_species
    if len(samplers) != params.n_species:
        raise ValueError(
            f"sampler: need one per species ({params.n_species}), got {len(samplers)}"
        )
    pos = np.stack(
        [draw_slice(seed, TAG_INIT, k, 0, start, stop, s) for k, s in enumerate(samplers)]
    )
    if pos.shape[-1] != domain.dim:
        raise ValueError(f"positions: sampler dimension {pos.shape[-1]} != domain dim {domain.dim}")
    species, ids = _block(params.n_species, start, stop)
    return _placed(domain, pos, species, ids, seed, params.n_particles, params.n_species, comm)


def state_from_positions(
    positions: np.ndarray, seed: int, domain, comm=None, time: float = 0.0
) -> ParticleState:
    """State from given global positions ``(n_species, N, d)`` (the same on every rank).

    Particle ``i`` of species ``k`` gets the id ``i``; this rank keeps its index block (or, on a
    tracking domain, the particles in its cells).

    Raises:
        ValueError: for positions outside the domain or of the wrong shape.
    """
    x = np.asarray(positions, dtype=float)
    if x.ndim != 3 or x.shape[1] < 1:
        raise ValueError(f"positions must have shape (n_species, N, d), got {x.shape}")
    if x.shape[-1] != domain.dim:
        raise ValueError(f"positions: dimension {x.shape[-1]} != domain dim {domain.dim}")
    if not hasattr(domain, "distribute"):
        check_inside(domain, x, None)
    size, rank = _comm_info(comm)
    start, stop = partition(x.shape[1], size, rank)
    species, ids = _block(x.shape[0], start, stop)
    return _placed(domain, x[:, start:stop], species, ids, _check_seed(seed), x.shape[1],
                   x.shape[0], comm, time)


def brownian_increments(state: ParticleState, dt: float, step_index: int | None = None):
    """Brownian increments ``B(t + dt) - B(t)`` of the local particles, ``(M, d)``.

    Particle ``id`` of species ``k`` draws ``normals(seed, TAG_NOISE, k, step_index, id)`` of
    :mod:`fem_crossdiff.particles.counter_rng` (default step: the state's own), scaled by
    ``sqrt(dt)``: the same numbers on whatever rank holds the particle.
    """
    s = state.step_index if step_index is None else int(step_index)
    d = state.dim
    z = np.empty((state.n_local, d))
    for k in range(state.n_species):
        mine = state.species == k
        z[mine] = normals(state.seed, TAG_NOISE, k, s, state.ids[mine], d)
    return math.sqrt(dt) * z


def step(
    state: ParticleState,
    dt: float,
    params: ParticleParams,
    domain,
    drift: Drift | None = None,
    comm=None,
    dW: np.ndarray | None = None,
) -> ParticleState:
    """One Euler-Maruyama step of (1.6) (pure: the input state is not modified).

    ``X <- reflect(X + dt drift(X, t) + sqrt(2 sigma) dW)``.

    On a tracking domain (one with ``track``, :class:`~fem_crossdiff.particles.mesh_domain.
    MeshDomain`) the particles' cells are kept in the state: the reflection walks from them,
    particles whose new cell another rank owns migrate there, and a drift with ``at_cells``
    (:class:`~fem_crossdiff.particles.mesh_drift.MeshOperatorDrift` on the same mesh) is
    evaluated where the particles are, without locating or moving them.

    Args:
        state: current state.
        dt: time step > 0.
        params: model parameters.
        domain: particle domain (reflecting walls, or free space).
        drift: drift callable (``GridDrift()``, ``CellListDrift()``, ``FieldDrift(grad_g)``...);
            ``None`` switches the pressure off (pure diffusion).
        comm: MPI communicator (``None``: serial). Collective when given.
        dW: Brownian increments ``(M, d)`` of the local particles to use instead of the
            state's streams (e.g. sums of fine increments for a coarse path).

    Returns:
        The new state at ``t + dt``.
    """
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a finite number > 0, got {dt!r}")
    tracking = hasattr(domain, "track")
    if tracking and (state.cells is None or state.cells.shape != state.species.shape):
        if dW is not None:  # the particles may move to other ranks: dW would not match
            raise ValueError("dW: a state without cells on a tracking domain is first sent "
                             "to its cells' owners; step it once without dW")
        x, c, extra = domain.distribute(state.positions,
                                        np.stack([state.species, state.ids], axis=1))
        state = replace(state, positions=_frozen(x), species=_frozen(extra[:, 0], np.int64),
                        ids=_frozen(extra[:, 1], np.int64), cells=_frozen(c, np.int64))
    x = state.positions
    if dW is None:
        dW = brownian_increments(state, dt)
    elif np.shape(dW) != x.shape:
        raise ValueError(f"dW must have shape {x.shape}, got {np.shape(dW)}")
    x_new = x + math.sqrt(2.0 * params.sigma) * np.asarray(dW, dtype=float)
    if drift is not None:
        if tracking and hasattr(drift, "at_cells") and drift.msh is domain.msh:
            v = drift.at_cells(x, state.species, state.cells, params, comm)
        else:
            v = drift(x, state.time, params, comm, species=state.species)
        x_new = x_new + dt * v
    nxt = dict(time=state.time + dt, step_index=state.step_index + 1)
    if tracking:
        q, c, extra = domain.track(x, x_new, state.cells,
                                   np.stack([state.species, state.ids], axis=1))
        return replace(state, positions=_frozen_new(q), species=_frozen_new(extra[:, 0], np.int64),
                       ids=_frozen_new(extra[:, 1], np.int64), cells=_frozen_new(c, np.int64),
                       **nxt)
    return replace(state, positions=_frozen(domain.reflect(x, x_new, comm)), **nxt)


def run(
    state: ParticleState,
    dt: float,
    n_steps: int,
    params: ParticleParams,
    domain,
    drift: Drift | None = None,
    comm=None,
    writer=None,
) -> ParticleState:
    """Take ``n_steps`` steps; ``writer.write(state)`` (collective) initially and after each."""
    if writer is not None:
        writer.write(state)
    for _ in range(int(n_steps)):
        state = step(state, dt, params, domain, drift, comm)
        if writer is not None:
            writer.write(state)
    return state


def gather_positions(state: ParticleState, comm=None, root: int | None = 0):
    """Global positions ``(n, N, d)``, particle ``i`` of species ``k`` at ``[k, i]``.

    On ``root`` (others get ``None``); with ``root=None`` every rank gets them.
    """
    mine = (state.species, state.ids, state.positions)
    if comm is None or comm.size == 1:
        parts = [mine]
    else:
        parts = comm.allgather(mine) if root is None else comm.gather(mine, root)
        if parts is None:
            return None
    out = np.full((state.n_species, state.n_total, state.dim), np.nan)
    for k, i, x in parts:
        out[k, i] = x
    return out
