"""Particle state, pure Euler-Maruyama step, reproducible initial data and noise.

Particles are split over MPI ranks in contiguous global index blocks (the same block for every
species, see :func:`fem_crossdiff.particles.rng.partition`); the state holds the local slice.
All randomness comes from the counter-based streams of :mod:`fem_crossdiff.particles.rng`, keyed
by ``(seed, purpose, species, step, block)``, so a run gives the same trajectories whatever the
number of ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

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

#: ``drift(positions, t, params, comm) -> array`` of the shape of ``positions``.
Drift = Callable[..., np.ndarray]


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=float, copy=True)
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class ParticleState:
    """Local slice of the particle system at one time (immutable).

    Attributes:
        positions: read-only array ``(n_species, N_local, d)`` of the local particles.
        time: current time.
        step_index: number of steps taken (keys the Brownian streams).
        seed: the run's seed (keys every random stream).
        start: global index of the first local particle (same for every species).
        n_total: global number ``N`` of particles per species.
        cells: read-only ``(n_species, N_local)`` cells of the particles (original cell
            indices) on a tracking domain (:class:`~fem_crossdiff.particles.mesh_domain.
            MeshDomain`), ``None`` elsewhere; kept from step to step so that location is a walk
            from the previous cell.
    """

    positions: np.ndarray
    time: float
    step_index: int
    seed: int
    start: int
    n_total: int
    cells: np.ndarray | None = None

    @property
    def stop(self) -> int:
        """One past the global index of the last local particle."""
        return self.start + self.positions.shape[1]

    @property
    def dim(self) -> int:
        """Space dimension ``d``."""
        return self.positions.shape[2]


def _frozen_cells(c) -> np.ndarray:
    c = np.array(c, dtype=np.int64, copy=True)
    c.setflags(write=False)
    return c


def _located(domain, pos: np.ndarray):
    """Cells of ``pos (n, N_local, d)`` on a tracking domain (``None`` on others)."""
    if not hasattr(domain, "track"):
        return None
    return _frozen_cells(domain.locate(pos.reshape(-1, pos.shape[-1])).reshape(pos.shape[:2]))


def _comm_info(comm) -> tuple[int, int]:
    return (1, 0) if comm is None else (comm.size, comm.rank)


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
        comm: MPI communicator (``None``: serial).

    Returns:
        The state at time 0 holding this rank's slice.

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
    check_inside(domain, pos, comm)
    return ParticleState(_frozen(pos), 0.0, 0, seed, start, params.n_particles,
                         _located(domain, pos))


def state_from_positions(
    positions: np.ndarray, seed: int, domain, comm=None, time: float = 0.0
) -> ParticleState:
    """State from given global positions ``(n_species, N, d)``: this rank keeps its slice.

    Raises:
        ValueError: for positions outside the domain or of the wrong shape.
    """
    x = np.asarray(positions, dtype=float)
    if x.ndim != 3 or x.shape[1] < 1:
        raise ValueError(f"positions must have shape (n_species, N, d), got {x.shape}")
    if x.shape[-1] != domain.dim:
        raise ValueError(f"positions: dimension {x.shape[-1]} != domain dim {domain.dim}")
    check_inside(domain, x, None)
    size, rank = _comm_info(comm)
    start, stop = partition(x.shape[1], size, rank)
    mine = x[:, start:stop]
    return ParticleState(_frozen(mine), float(time), 0, _check_seed(seed), start, x.shape[1],
                         _located(domain, mine))


def brownian_increments(state: ParticleState, dt: float, step_index: int | None = None):
    """Brownian increments ``B(t + dt) - B(t)`` of the local particles, ``(n, N_local, d)``.

    Drawn from the stream ``(seed, TAG_NOISE, k, step_index)`` (default: the state's own step),
    scaled by ``sqrt(dt)``.
    """
    s = state.step_index if step_index is None else int(step_index)
    d = state.dim
    z = np.stack([
        draw_slice(state.seed, TAG_NOISE, k, s, state.start, state.stop,
                   lambda rng, c: rng.standard_normal((c, d)))
        for k in range(state.positions.shape[0])
    ])
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
    and a drift with ``at_cells`` (:class:`~fem_crossdiff.particles.mesh_drift.
    MeshOperatorDrift` on the same mesh) is evaluated without locating the particles again.

    Args:
        state: current state.
        dt: time step > 0.
        params: model parameters.
        domain: particle domain (reflecting walls, or free space).
        drift: drift callable (``GridDrift()``, ``CellListDrift()``, ``FieldDrift(grad_g)``...);
            ``None`` switches the pressure off (pure diffusion).
        comm: MPI communicator (``None``: serial). Collective when given.
        dW: Brownian increments ``(n, N_local, d)`` to use instead of the state's streams
            (e.g. sums of fine increments for a coarse path).

    Returns:
        The new state at ``t + dt``.
    """
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a finite number > 0, got {dt!r}")
    x = state.positions
    if dW is None:
        dW = brownian_increments(state, dt)
    elif np.shape(dW) != x.shape:
        raise ValueError(f"dW must have shape {x.shape}, got {np.shape(dW)}")
    x_new = x + math.sqrt(2.0 * params.sigma) * np.asarray(dW, dtype=float)
    tracking = hasattr(domain, "track")
    cells = state.cells
    if tracking and (cells is None or cells.shape != x.shape[:2]):
        cells = _located(domain, x)
    if drift is not None:
        if tracking and hasattr(drift, "at_cells") and drift.msh is domain.msh:
            x_new = x_new + dt * drift.at_cells(x, cells, domain, state.time, params, comm)
        else:
            x_new = x_new + dt * drift(x, state.time, params, comm)
    d = x.shape[-1]
    if tracking:
        x_new, c_new = domain.track(x.reshape(-1, d), x_new.reshape(-1, d), cells.reshape(-1))
        return replace(state, positions=_frozen(x_new.reshape(x.shape)), time=state.time + dt,
                       step_index=state.step_index + 1,
                       cells=_frozen_cells(c_new.reshape(x.shape[:2])))
    x_new = domain.reflect(x.reshape(-1, d), x_new.reshape(-1, d), comm).reshape(x.shape)
    return replace(state, positions=_frozen(x_new), time=state.time + dt,
                   step_index=state.step_index + 1)


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
    """Global positions ``(n, N, d)`` in global index order.

    On ``root`` (others get ``None``); with ``root=None`` every rank gets them.
    """
    if comm is None or comm.size == 1:
        return np.array(state.positions)
    parts = comm.allgather(state.positions) if root is None else comm.gather(state.positions, root)
    if parts is None:
        return None
    return np.concatenate(parts, axis=1)
