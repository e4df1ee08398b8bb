"""Checkpoints of a :class:`~fem_crossdiff.solver.CrossDiffusionSolver`, restartable N-to-M.

adios4dolfinx needs ADIOS2 Python bindings built with MPI; neither the DOLFINx wheel nor PyPI's
serial ``adios2`` provides them, so checkpoints are one ``.npz`` file written by rank 0: for
every scalar dof (global count), its coordinates and the values of every species in ``rho``,
``history[0]`` and ``history[1]``, plus the time, the previous step, the step count, the next
step and the configuration hash. A restart matches dofs by coordinates (a k-d tree on the
checkpoint's points, exact to a relative 1e-12), so a run written on N ranks restarts on M
ranks, provided the mesh is the same (same builder and parameters, or the same file).

Files are written atomically (temporary file in the same folder, then ``os.replace``): an
interrupted run leaves either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["CheckpointError", "CheckpointInfo", "save_checkpoint", "load_checkpoint",
           "read_state", "atomic_write"]

FORMAT_VERSION = 1
#: Relative coordinate tolerance (to the bounding box size) for matching dofs.
MATCH_TOL = 1e-12


class CheckpointError(ValueError):
    """A missing, unreadable or incompatible checkpoint (same message on every rank)."""


@dataclass(frozen=True)
class CheckpointInfo:
    """Metadata of a checkpoint.

    Attributes:
        t: Time of the saved state.
        step: Accepted steps taken to reach it.
        dt_prev: Last accepted step (None: the next step is a start-up step).
        next_dt: The step the uninterrupted run would attempt next.
        config_hash: Hash of the configuration that wrote it ("" if none).
        n_species: Number of species.
        degree: Lagrange degree.
        ndofs: Global number of scalar dofs.
    """

    t: float
    step: int
    dt_prev: float | None
    next_dt: float
    config_hash: str
    n_species: int
    degree: int
    ndofs: int


def atomic_write(path: str | Path, write) -> Path:
    """Write a file through ``write(file_object)`` into a temporary name, then rename it.

    Args:
        path: Destination.
        write: Callable receiving a binary file object.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _local_state(solver):
    """Owned scalar dofs: coordinates (nown, 3) and values (nown, n, 3) of rho, h0, h1."""
    V0 = solver.V0
    nown = V0.dofmap.index_map.size_local
    coords = V0.tabulate_dof_coordinates()[:nown]
    arrays = (solver.rho.x.array, solver.history[0].x.array, solver.history[1].x.array)
    vals = np.empty((nown, solver.params.n, 3))
    for k, dofs in enumerate(solver.species_dofs):
        for j, arr in enumerate(arrays):
            vals[:, k, j] = arr[dofs[:nown]]
    return coords, vals


def save_checkpoint(path: str | Path, solver, *, step: int, next_dt: float,
                    config_hash: str = "") -> Path:
    """Gather the solver's state to rank 0 and write it atomically (collective).

    Args:
        path: The ``.npz`` file.
        solver: A :class:`~fem_crossdiff.solver.CrossDiffusionSolver`.
        step: Accepted steps so far.
        next_dt: The next step the run would attempt.
        config_hash: Configuration hash, checked on restart.

    Returns:
        The path (on every rank).
    """
    comm = solver.comm
    coords, vals = _local_state(solver)
    parts = comm.gather((coords, vals), root=0)
    path = Path(path)
    if comm.rank == 0:
        allc = np.concatenate([p[0] for p in parts])
        allv = np.concatenate([p[1] for p in parts])
        meta = {
            "version": FORMAT_VERSION, "t": float(solver.t), "step": int(step),
            "dt_prev": np.nan if solver.dt_prev is None else float(solver.dt_prev),
            "next_dt": float(next_dt), "n_species": solver.params.n, "degree": solver.degree,
        }

        def write(f):
            np.savez(f, coords=allc, values=allv, config_hash=np.array(config_hash),
                     **{k: np.array(v) for k, v in meta.items()})

        atomic_write(path, write)
    comm.barrier()
    return path


def read_state(path: str | Path) -> tuple[CheckpointInfo, np.ndarray, np.ndarray]:
    """Read a checkpoint file (no MPI).

    Returns:
        ``(info, coords (N, 3), values (N, n, 3))``; ``values[:, k, j]`` is species ``k`` of
        ``rho`` (j = 0), ``history[0]`` (1) and ``history[1]`` (2).

    Raises:
        CheckpointError: missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--restart: checkpoint file not found: {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != FORMAT_VERSION:
                raise CheckpointError(f"--restart: {path} has format version {int(z['version'])}"
                                      f", expected {FORMAT_VERSION}")
            dt_prev = float(z["dt_prev"])
            info = CheckpointInfo(
                t=float(z["t"]), step=int(z["step"]),
                dt_prev=None if np.isnan(dt_prev) else dt_prev, next_dt=float(z["next_dt"]),
                config_hash=str(z["config_hash"]), n_species=int(z["n_species"]),
                degree=int(z["degree"]), ndofs=int(z["coords"].shape[0]))
            return info, np.array(z["coords"]), np.array(z["values"])
    except CheckpointError:
        raise
    except Exception as err:  # a torn or foreign file: say which, whatever numpy raised
        raise CheckpointError(f"--restart: cannot read checkpoint {str(path)!r} "
                              f"({type(err).__name__}: {err})") from None


def load_checkpoint(path: str | Path, solver, *, config_hash: str | None = None
                    ) -> CheckpointInfo:
    """Restore a solver's state (rho, both history levels, t, previous step); collective.

    Rank 0 reads the file and broadcasts it; every rank matches its dofs (owned and ghost) to
    the checkpoint's points by coordinates.

    Args:
        path: The ``.npz`` file.
        solver: A solver on the same mesh (any number of ranks), same species and degree.
        config_hash: If given, must equal the hash stored in the checkpoint.

    Returns:
        The checkpoint's metadata.

    Raises:
        CheckpointError: on every rank, for a missing/unreadable file, another configuration,
            species count, degree or mesh (unmatched dofs).
    """
    comm = solver.comm
    data, err = None, None
    if comm.rank == 0:
        try:
            data = read_state(path)
        except CheckpointError as e:
            err = str(e)
    err = comm.bcast(err, root=0)
    if err is not None:
        raise CheckpointError(err)
    info, coords, values = comm.bcast(data, root=0)
    n = solver.params.n
    if config_hash is not None and info.config_hash != config_hash:
        raise CheckpointError(
            f"--restart: {path} was written by another configuration (hash {info.config_hash}, "
            f"this study has {config_hash}): model, geometry, initial data, solver and time "
            "method must be unchanged (only time.T, time.dt and [output] may differ)")
    if info.n_species != n or info.degree != solver.degree:
        raise CheckpointError(
            f"--restart: {path} holds {info.n_species} species of degree {info.degree}, the "
            f"solver has {n} of degree {solver.degree}")
    nglobal = solver.V0.dofmap.index_map.size_global
    if info.ndofs != nglobal:
        raise CheckpointError(f"--restart: {path} has {info.ndofs} dofs per species, this mesh "
                              f"has {nglobal}: not the same mesh")
    local = solver.V0.tabulate_dof_coordinates()
    scale = max(float(np.ptp(coords, axis=0).max()) if len(coords) else 1.0, 1e-300)
    dist, idx = cKDTree(coords).query(local, k=1) if len(local) else (np.zeros(0), np.zeros(0))
    bad = int(np.count_nonzero(dist > MATCH_TOL * scale))
    bad = comm.allreduce(bad)
    if bad:
        raise CheckpointError(f"--restart: {bad} dofs of this mesh have no point in {path} "
                              f"within {MATCH_TOL:g} (relative): not the same mesh")
    idx = np.asarray(idx, dtype=np.int64)
    arrays = (solver.rho.x.array, solver.history[0].x.array, solver.history[1].x.array)
    for k, dofs in enumerate(solver.species_dofs):
        for j, arr in enumerate(arrays):
            arr[dofs] = values[idx, k, j]
    solver.t = info.t
    solver.dt_prev = info.dt_prev
    return info
