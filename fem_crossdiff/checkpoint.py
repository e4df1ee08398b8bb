"""Checkpoints of a :class:`~fem_crossdiff.solver.CrossDiffusionSolver`, restartable N-to-M.

adios4dolfinx needs ADIOS2 Python bindings built with MPI; neither the DOLFINx wheel nor PyPI's
serial ``adios2`` provides them, so checkpoints are one ``.npz`` file written by rank 0: for
every scalar dof (global count), its coordinates and the values of every species in ``rho``,
``history[0]``, ``history[1]`` and the state before (for the BDF2 error estimate), plus the
time, the two previous steps, the step count, the next step and the run's identity. A restart
matches dofs by coordinates (a k-d tree on the checkpoint's points, exact to a relative
1e-12), so a run written on N ranks restarts on M ranks.

The identity (:func:`run_identity`) is what changes the result: the model, the PDE, the
scheme with every one of its options (tuning numbers included), the degree, the caller's
settings (the CLI gives the whole study but ``time.T``, the output and the mesh file's
path, so ``time.dt`` is included) and a hash of the mesh's content
(:func:`mesh_hash`: coordinates and cells in the original input order, so it does not depend
on the partition nor on where the ``.msh`` file lies). A restart whose identity differs is
refused with the differing keys named.

Files are written atomically (temporary file in the same folder, then ``os.replace``): an
interrupted run leaves either the previous checkpoint or the new one, never a torn file; a
failed write (a full disk) raises :class:`~fem_crossdiff.diskio.OutputError` naming the file.

Every file holds a SHA-256 of its content (:func:`content_checksum`, format 3), verified by
:func:`read_state` together with the content (finite values and time, ``step >= 0``, shapes,
distinct points): a file that numpy reads but that cannot be right is refused with a
:class:`CheckpointError` before a restart changes anything. Format 2 files (no checksum) are
read after the same content checks, with a warning.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from fem_crossdiff import diskio

__all__ = ["CheckpointError", "CheckpointInfo", "save_checkpoint", "load_checkpoint",
           "read_state", "atomic_write", "mesh_hash", "run_identity", "identity_differences",
           "content_checksum"]

#: 3: a content checksum (2: four state levels, ``dt_prev2`` and the identity; 1: three
#: levels and a hash).
FORMAT_VERSION = 3
#: Versions read: 2 has no checksum (accepted after the content checks, with a warning).
READ_VERSIONS = (2, 3)
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
    from fem_crossdiff.models import options_to_dict

    p = solver.params
    out = {"mesh": json.dumps(mesh or mesh_hash(solver.msh)), "pde": json.dumps(solver.pde),
           "solver.scheme": json.dumps(solver.scheme), "solver.degree": json.dumps(solver.degree),
           "model.a": json.dumps(list(p.a)), "model.b": json.dumps(list(p.b)),
           "model.m": json.dumps(p.m), "model.sigma": json.dumps(p.sigma)}
    # every option of the scheme (tuning numbers included): they change the result
    out.update(_flatten(options_to_dict(solver.options), f"options.{solver.scheme}"))
    out.update(_flatten(settings or {}))
    return out


def identity_differences(stored: Mapping, current: Mapping) -> list[str]:
    """The keys of two identities that differ, as ``key: stored -> current`` lines."""
    missing = "(not set)"
    return [f"{k}: {stored.get(k, missing)} in the checkpoint, {current.get(k, missing)} now"
            for k in sorted(set(stored) | set(current)) if stored.get(k) != current.get(k)]


@diskio.names_file
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
    error = None
    if comm.rank == 0:
        allc = np.concatenate([p[0] for p in parts])
        allv = np.concatenate([p[1] for p in parts])
        meta = {
            "version": FORMAT_VERSION, "t": float(solver.t), "step": int(step),
            "dt_prev": _nan_or(solver.dt_prev), "dt_prev2": _nan_or(solver.dt_prev2),
            "next_dt": float(next_dt), "n_species": solver.params.n, "degree": solver.degree,
            "has_older": solver.older is not None,
        }

        arrays = {"coords": allc, "values": allv,
                  "identity": np.array(json.dumps(identity, sort_keys=True)),
                  **{k: np.array(v) for k, v in meta.items()}}
        arrays["checksum"] = np.array(content_checksum(arrays))
        try:
            atomic_write(path, lambda f: np.savez(f, **arrays))
        except OSError as err:  # every rank raises it (the others must not wait in vain)
            error = err
    error = comm.bcast(error, root=0)
    if error is not None:
        raise error
    return path


def content_checksum(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 (hex) of a checkpoint's arrays: names, types, shapes and bytes, in name order.

    The ``checksum`` entry itself is left out; any other change (a flipped bit that numpy
    still reads, permuted coordinates, an edited time) gives another digest.
    """
    h = hashlib.sha256()
    for name in sorted(k for k in arrays if k != "checksum"):
        arr = np.ascontiguousarray(arrays[name])
        h.update(json.dumps([name, arr.dtype.str, list(arr.shape)]).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


_META = ("version", "t", "step", "dt_prev", "dt_prev2", "next_dt", "n_species", "degree",
         "has_older", "identity", "coords", "values")


def _scalar(z, name: str, kind: str):
    """The 0-d entry ``name`` of kind ``"int"``, ``"float"`` or ``"bool"`` (else ValueError)."""
    arr = z[name]
    ok = {"int": np.integer, "float": np.floating, "bool": np.bool_}[kind]
    if arr.shape != () or not np.issubdtype(arr.dtype, ok):
        raise ValueError(f"{name} must be one {kind}, is {arr.dtype} of shape {arr.shape}")
    return arr.item()


def _validated(z, path: Path) -> tuple[CheckpointInfo, np.ndarray, np.ndarray]:
    """The content of an open ``.npz`` checkpoint, refused unless it can be right."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"--restart: {path} cannot be a valid checkpoint: {what}")

    missing = [k for k in _META if k not in z.files]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    version = _scalar(z, "version", "int")
    if version not in READ_VERSIONS:
        raise CheckpointError(f"--restart: {path} has format version {version}, expected "
                              f"{' or '.join(map(str, READ_VERSIONS))}")
    arrays = {k: z[k] for k in z.files}
    if version >= 3:
        stored = arrays.get("checksum")
        if stored is None or stored.shape != () or stored.dtype.kind != "U":
            raise bad("no content checksum")
        if str(stored) != content_checksum(arrays):
            raise bad("its content does not match its checksum (the file was changed or "
                      "damaged after it was written)")
    else:
        from fem_crossdiff.log import get_logger

        get_logger().warning("%s has no content checksum (format version %d, written before "
                             "checksums): its content is checked only for consistency", path,
                             version)
    t, step = _scalar(z, "t", "float"), _scalar(z, "step", "int")
    next_dt = _scalar(z, "next_dt", "float")
    n, degree = _scalar(z, "n_species", "int"), _scalar(z, "degree", "int")
    has_older = _scalar(z, "has_older", "bool")
    if not np.isfinite(t):
        raise bad(f"time t = {t} is not finite")
    if step < 0:
        raise bad(f"step = {step} is negative")
    if not (np.isfinite(next_dt) and next_dt > 0):
        raise bad(f"next_dt = {next_dt} is not a finite step > 0")
    steps = {}
    for name in ("dt_prev", "dt_prev2"):
        v = _scalar(z, name, "float")
        if not (np.isnan(v) or (np.isfinite(v) and v > 0)):
            raise bad(f"{name} = {v} is neither a finite step > 0 nor unset (NaN)")
        steps[name] = None if np.isnan(v) else v
    if n < 1 or degree < 1:
        raise bad(f"n_species = {n} and degree = {degree} must be >= 1")
    coords, values = arrays["coords"], arrays["values"]
    if coords.ndim != 2 or coords.shape[0] < 1 or coords.shape[1] != 3 \
            or not np.issubdtype(coords.dtype, np.floating):
        raise bad(f"coords has shape {coords.shape} ({coords.dtype}), expected (N, 3) floats")
    npts = coords.shape[0]
    if values.shape != (npts, n, LEVELS) or not np.issubdtype(values.dtype, np.floating):
        raise bad(f"values has shape {values.shape} ({values.dtype}), expected "
                  f"({npts}, {n}, {LEVELS}) floats for {npts} points and {n} species")
    if not np.isfinite(coords).all():
        raise bad("coords holds non-finite values")
    nonfinite = ~np.isfinite(values)
    if nonfinite.any():
        k = int(np.argwhere(nonfinite)[0][1])
        raise bad(f"values of species {k + 1} hold {int(nonfinite.sum())} non-finite "
                  "entries (NaN or inf)")
    if npts > 1:  # two dofs at one point would make the restart's matching ambiguous
        scale = max(float(np.ptp(coords, axis=0).max()), 1e-300)
        dist = cKDTree(coords).query(coords, k=2)[0][:, 1]
        if (dist <= MATCH_TOL * scale).any():
            raise bad(f"{int(np.count_nonzero(dist <= MATCH_TOL * scale))} points coincide")
    try:
        identity = json.loads(str(z["identity"]))
    except ValueError:
        identity = None
    if not isinstance(identity, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in identity.items()):
        raise bad("identity is not a JSON object of text values")
    info = CheckpointInfo(t=float(t), step=int(step), dt_prev=steps["dt_prev"],
                          next_dt=float(next_dt), n_species=int(n), degree=int(degree),
                          ndofs=int(npts), dt_prev2=steps["dt_prev2"] if has_older else None,
                          identity=identity)
    return info, np.array(coords, dtype=np.float64), np.array(values, dtype=np.float64)


def read_state(path: str | Path) -> tuple[CheckpointInfo, np.ndarray, np.ndarray]:
    """Read and validate a checkpoint file (no MPI).

    The content checksum is verified (format 3; format 2 files have none and are accepted
    with a warning), then the content: finite time, ``step >= 0``, finite steps > 0 (or
    unset), species and degree >= 1, ``coords (N, 3)`` and ``values (N, n, 4)`` finite
    floats, no two points at one place, an identity of text values.

    Returns:
        ``(info, coords (N, 3), values (N, n, 4))``; ``values[:, k, j]`` is species ``k`` of
        ``rho`` (j = 0), ``history[0]`` (1), ``history[1]`` (2) and the state before (3, a
        copy of 2 while ``info.dt_prev2`` is None).

    Raises:
        CheckpointError: missing, unreadable or invalid file (one line naming the file and
            what is wrong).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--restart: checkpoint file not found: {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise ValueError("a single array, not an .npz archive")
            return _validated(z, path)
    except CheckpointError:
        raise
    except Exception as err:  # a torn or foreign file: say which, whatever numpy raised
        text = " ".join(str(err).split())
        raise CheckpointError(f"--restart: cannot read checkpoint {str(path)!r} "
                              f"({type(err).__name__}: {text})") from None


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
