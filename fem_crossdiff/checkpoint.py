"""Checkpoints of a :class:`~fem_crossdiff.solver.CrossDiffusionSolver`, restartable N-to-M.

adios4dolfinx needs ADIOS2 Python bindings built with MPI; neither the DOLFINx wheel nor PyPI's
serial ``adios2`` provides them, so checkpoints are one ``.npz`` file written by rank 0: for
every scalar dof (global count), its coordinates and the values of every species in ``rho``,
``history[0]``, ``history[1]`` and the state before (for the BDF2 error estimate), plus the
time, the two previous steps, the step count, the next step and the run's identity. A restart
matches dofs by coordinates (a k-d tree on the checkpoint's points, exact to a relative
1e-12), so a run written on N ranks restarts on M ranks.

The identity (:func:`run_identity`) is what changes the result: the model, scheme, degree,
the caller's settings (the CLI gives the whole study but ``time.T``, the output and the mesh
file's path, so ``time.dt`` is included) and a hash of the mesh's content
(:func:`mesh_hash`: coordinates and cells in the original input order, so it does not depend
on the partition nor on where the ``.msh`` file lies). A restart whose identity differs is
refused with the differing keys named.

Files are written atomically (temporary file in the same folder, then ``os.replace``): an
interrupted run leaves either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["CheckpointError", "CheckpointInfo", "save_checkpoint", "load_checkpoint",
           "read_state", "atomic_write", "mesh_hash", "run_identity", "identity_differences"]

#: 2: four state levels, ``dt_prev2`` and the identity (1 had three levels and a hash).
FORMAT_VERSION = 2
#: State levels stored per dof: rho, history[0], history[1], the state before history[1].
LEVELS = 4
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
        n_species: Number of species.
        degree: Lagrange degree.
        ndofs: Global number of scalar dofs.
        dt_prev2: The step before ``dt_prev`` (None: not yet taken).
        identity: The run identity it was written with (:func:`run_identity`).
    """

    t: float
    step: int
    dt_prev: float | None
    next_dt: float
    n_species: int
    degree: int
    ndofs: int
    dt_prev2: float | None = None
    identity: dict = field(default_factory=dict)


def mesh_hash(msh) -> str:
    """SHA-256 (16 hex digits) of a mesh's content, the same on any number of ranks (collective).

    The geometry nodes (coordinates) and the cells (their nodes' sorted input indices) are
    gathered to rank 0 and ordered by their indices in the original input, which DOLFINx keeps
    through the partitioning: a moved or copied ``.msh`` file, or another partition, gives the
    same hash; other coordinates or connectivity give another.
    """
    geo, top = msh.geometry, msh.topology
    tdim = top.dim
    ncells = top.index_map(tdim).size_local
    nodes = np.asarray(geo.input_global_indices, dtype=np.int64)
    dofmap = np.asarray(geo.dofmaps[0])[:ncells]
    cells = np.sort(nodes[dofmap], axis=1)
    cell_ids = np.asarray(top.original_cell_index, dtype=np.int64)[:ncells]
    parts = msh.comm.gather((nodes, geo.x[:, : geo.dim], cell_ids, cells), root=0)
    digest = None
    if msh.comm.rank == 0:
        ids = np.concatenate([p[0] for p in parts])
        xs = np.concatenate([p[1] for p in parts])
        uniq, first = np.unique(ids, return_index=True)  # ghosts appear on several ranks
        cid = np.concatenate([p[2] for p in parts])
        cnodes = np.concatenate([p[3] for p in parts])
        order = np.argsort(cid, kind="stable")
        h = hashlib.sha256()
        for arr in (np.array([geo.dim, tdim, len(uniq), len(cid)], dtype=np.int64), uniq,
                    np.ascontiguousarray(xs[first], dtype=np.float64),
                    cid[order], np.ascontiguousarray(cnodes[order])):
            h.update(np.ascontiguousarray(arr).tobytes())
        digest = h.hexdigest()[:16]
    return msh.comm.bcast(digest, root=0)


def _flatten(data, prefix: str = "") -> dict[str, str]:
    """Dotted keys -> JSON text of the leaves (lists and tuples alike)."""
    if isinstance(data, Mapping):
        out = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(data, (list, tuple)) and any(isinstance(v, Mapping) for v in data):
        out = {}
        for i, v in enumerate(data):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: json.dumps(data, sort_keys=True, default=str)}


def run_identity(solver, settings: Mapping | None = None, mesh: str | None = None
                 ) -> dict[str, str]:
    """What a restart must share with the run it continues (collective: hashes the mesh).

    Args:
        solver: The solver.
        settings: Further settings that change the result (nested mappings allowed; the CLI
            gives the study without ``time.T``, the output and the mesh path). Include the
            time step and method when calling from the API.
        mesh: The mesh hash if already known (else :func:`mesh_hash` of the solver's mesh).

    Returns:
        Flat dotted keys -> JSON text.
    """
    p = solver.params
    out = {"mesh": json.dumps(mesh or mesh_hash(solver.msh)),
           "solver.scheme": json.dumps(solver.scheme), "solver.degree": json.dumps(solver.degree),
           "model.a": json.dumps(list(p.a)), "model.b": json.dumps(list(p.b)),
           "model.m": json.dumps(p.m), "model.sigma": json.dumps(p.sigma)}
    out.update(_flatten(settings or {}))
    return out


def identity_differences(stored: Mapping, current: Mapping) -> list[str]:
    """The keys of two identities that differ, as ``key: stored -> current`` lines."""
    missing = "(not set)"
    return [f"{k}: {stored.get(k, missing)} in the checkpoint, {current.get(k, missing)} now"
            for k in sorted(set(stored) | set(current)) if stored.get(k) != current.get(k)]


def atomic_write(path: str | Path, write) -> Path:
    """Write a file through ``write(file_object)`` into a temporary name, then rename it.

    (:func:`fem_crossdiff.outdir.atomic_write`: never through a symbolic link.)

    Args:
        path: Destination.
        write: Callable receiving a binary file object.

    Returns:
        The destination path.
    """
    # the temporary is a fresh file (O_EXCL, O_NOFOLLOW) and a symbolic link at ``path`` is
    # refused: nothing is ever written outside the output folder
    from fem_crossdiff import outdir

    return outdir.atomic_write(path, write)


def _local_state(solver):
    """Owned scalar dofs: coordinates (nown, 3) and values (nown, n, LEVELS)."""
    V0 = solver.V0
    nown = V0.dofmap.index_map.size_local
    coords = V0.tabulate_dof_coordinates()[:nown]
    older = solver.older if solver.older is not None else solver.history[1].x.array
    arrays = (solver.rho.x.array, solver.history[0].x.array, solver.history[1].x.array, older)
    vals = np.empty((nown, solver.params.n, LEVELS))
    for k, dofs in enumerate(solver.species_dofs):
        for j, arr in enumerate(arrays):
            vals[:, k, j] = arr[dofs[:nown]]
    return coords, vals


def _nan_or(x: float | None) -> float:
    return np.nan if x is None else float(x)


def save_checkpoint(path: str | Path, solver, *, step: int, next_dt: float,
                    identity: Mapping | None = None) -> Path:
    """Gather the solver's state to rank 0 and write it atomically (collective).

    Args:
        path: The ``.npz`` file.
        solver: A :class:`~fem_crossdiff.solver.CrossDiffusionSolver`.
        step: Accepted steps so far.
        next_dt: The next step the run would attempt.
        identity: The run identity (:func:`run_identity`; default: that of the solver alone),
            checked on restart.

    Returns:
        The path (on every rank).
    """
    comm = solver.comm
    identity = dict(identity) if identity is not None else run_identity(solver)
    coords, vals = _local_state(solver)
    parts = comm.gather((coords, vals), root=0)
    path = Path(path)
    if comm.rank == 0:
        allc = np.concatenate([p[0] for p in parts])
        allv = np.concatenate([p[1] for p in parts])
        meta = {
            "version": FORMAT_VERSION, "t": float(solver.t), "step": int(step),
            "dt_prev": _nan_or(solver.dt_prev), "dt_prev2": _nan_or(solver.dt_prev2),
            "next_dt": float(next_dt), "n_species": solver.params.n, "degree": solver.degree,
            "has_older": solver.older is not None,
        }

        def write(f):
            np.savez(f, coords=allc, values=allv,
                     identity=np.array(json.dumps(identity, sort_keys=True)),
                     **{k: np.array(v) for k, v in meta.items()})

        atomic_write(path, write)
    comm.barrier()
    return path


def read_state(path: str | Path) -> tuple[CheckpointInfo, np.ndarray, np.ndarray]:
    """Read a checkpoint file (no MPI).

    Returns:
        ``(info, coords (N, 3), values (N, n, 4))``; ``values[:, k, j]`` is species ``k`` of
        ``rho`` (j = 0), ``history[0]`` (1), ``history[1]`` (2) and the state before (3, a
        copy of 2 while ``info.dt_prev2`` is None).

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
            def opt(name):
                v = float(z[name])
                return None if np.isnan(v) else v

            info = CheckpointInfo(
                t=float(z["t"]), step=int(z["step"]), dt_prev=opt("dt_prev"),
                next_dt=float(z["next_dt"]), n_species=int(z["n_species"]),
                degree=int(z["degree"]), ndofs=int(z["coords"].shape[0]),
                dt_prev2=opt("dt_prev2") if bool(z["has_older"]) else None,
                identity=json.loads(str(z["identity"])))
            return info, np.array(z["coords"]), np.array(z["values"])
    except CheckpointError:
        raise
    except Exception as err:  # a torn or foreign file: say which, whatever numpy raised
        raise CheckpointError(f"--restart: cannot read checkpoint {str(path)!r} "
                              f"({type(err).__name__}: {err})") from None


def load_checkpoint(path: str | Path, solver, *, identity: Mapping | None = None
                    ) -> CheckpointInfo:
    """Restore a solver's state (all history levels, t, previous steps); collective.

    Rank 0 reads the file and broadcasts it; every rank matches its dofs (owned and ghost) to
    the checkpoint's points by coordinates.

    Args:
        path: The ``.npz`` file.
        solver: A solver on the same mesh (any number of ranks), same species and degree.
        identity: The restarting run's identity (:func:`run_identity`; default: that of the
            solver alone); every key must match the checkpoint's.

    Returns:
        The checkpoint's metadata.

    Raises:
        CheckpointError: on every rank, for a missing/unreadable file, another identity
            (the differing keys named), species count, degree or mesh (unmatched dofs).
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
    if info.n_species != n or info.degree != solver.degree:
        raise CheckpointError(
            f"--restart: {path} holds {info.n_species} species of degree {info.degree}, the "
            f"solver has {n} of degree {solver.degree}")
    nglobal = solver.V0.dofmap.index_map.size_global
    if info.ndofs != nglobal:
        raise CheckpointError(f"--restart: {path} has {info.ndofs} dofs per species, this mesh "
                              f"has {nglobal}: not the same mesh")
    current = dict(identity) if identity is not None else run_identity(solver)
    # the solver's own keys are always compared; the caller's settings only when given
    stored = info.identity if identity is not None else {
        k: v for k, v in info.identity.items() if k in current}
    diff = identity_differences(stored, current)
    if diff:
        others = [d for d in diff if not d.startswith("mesh:")]
        mesh = "the mesh's content differs (not the same mesh)" if len(others) < len(diff) else ""
        raise CheckpointError(
            f"--restart: {path} was written by another configuration: "
            + "; ".join(others + ([mesh] if mesh else []))
            + " (a restart must keep the model, mesh, initial data, solver and time stepping, "
            "dt included; only time.T and [output] may change)")
    local = solver.V0.tabulate_dof_coordinates()
    scale = max(float(np.ptp(coords, axis=0).max()) if len(coords) else 1.0, 1e-300)
    dist, idx = cKDTree(coords).query(local, k=1) if len(local) else (np.zeros(0), np.zeros(0))
    bad = int(np.count_nonzero(dist > MATCH_TOL * scale))
    bad = comm.allreduce(bad)
    if bad:
        raise CheckpointError(f"--restart: {bad} dofs of this mesh have no point in {path} "
                              f"within {MATCH_TOL:g} (relative): not the same mesh")
    idx = np.asarray(idx, dtype=np.int64)
    older = np.empty_like(solver.rho.x.array)
    arrays = (solver.rho.x.array, solver.history[0].x.array, solver.history[1].x.array, older)
    for k, dofs in enumerate(solver.species_dofs):
        for j, arr in enumerate(arrays):
            arr[dofs] = values[idx, k, j]
    solver.t = info.t
    solver.dt_prev, solver.dt_prev2 = info.dt_prev, info.dt_prev2
    solver.older = older if info.dt_prev2 is not None else None
    return info
