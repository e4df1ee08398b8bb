"""Output: particle positions every ``k`` steps (npz, optionally CSV points) and diagnostics CSV.

Rank 0 writes, after gathering the positions in global index order; the diagnostics (time,
per-species mean and second moment ``E|X|^2``, species numbered from 1 as in the PDE's CSV:
``mean1_x``, ``second_moment1``, ...) are reduced over ranks every step. Files:
``positions_<step>.npz`` (arrays ``positions (n, N, d)``, ``time``, ``step``), optionally
``points_<step>.csv`` (columns ``x, y, z, species``, species 1, 2, ...: ParaView's CSV reader
plus "Table To Points"), and ``diagnostics.csv``.

Every file is written without following a symbolic link (:mod:`fem_crossdiff.outdir`), the
position files atomically. A restart (``keep_until``) continues the earlier run's files: its
diagnostics rows and position files up to the restart step are kept (never rewritten), the
later ones dropped, and the numbering goes on from the restored step.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fem_crossdiff import outdir
from fem_crossdiff.checkpoint import atomic_write

from .state import ParticleState, gather_positions

__all__ = ["ParticleWriter", "moments"]


def moments(state: ParticleState, comm=None) -> tuple[np.ndarray, np.ndarray]:
    """Global per-species mean ``(n, d)`` and second moment ``E|X|^2`` ``(n,)`` (collective)."""
    x, n = state.positions, state.n_species
    loc = np.zeros((n, x.shape[1] + 1))
    for c in range(x.shape[1]):
        loc[:, c] = np.bincount(state.species, weights=x[:, c], minlength=n)
    loc[:, -1] = np.bincount(state.species, weights=np.sum(x * x, axis=1), minlength=n)
    if comm is not None and comm.size > 1:
        from mpi4py import MPI

        tot = np.empty_like(loc)
        comm.Allreduce(loc, tot, op=MPI.SUM)
        loc = tot
    loc = loc / state.n_total
    return loc[:, :-1], loc[:, -1]


class ParticleWriter:
    """Collective writer; use as a context manager or call :meth:`close`.

    Args:
        directory: output folder (created by rank 0); must be the same path on every rank.
        every: write positions every ``every`` steps (diagnostics every step).
        comm: MPI communicator (``None``: serial).
        csv_points: also write ``points_<step>.csv``.
        keep_until: On a restart, the restored step: the earlier run's rows and files up to
            it are kept (a state at or before it that they already hold is not written
            again), its later ones are removed (rank 0, here).
    """

    def __init__(self, directory, every: int = 1, comm=None, csv_points: bool = False,
                 keep_until: int | None = None):
        if int(every) < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.dir, self.every, self.comm = Path(directory), int(every), comm
        self.csv_points = csv_points
        self.keep_until = None if keep_until is None else int(keep_until)
        self.rank = 0 if comm is None else comm.rank
        self._file = None
        self._csv = None
        self._kept: set[int] = set()  # steps whose diagnostics row the earlier run wrote
        error = None
        if self.rank == 0:
            try:
                self._prepare()
            except OSError as err:  # shared below: every rank raises it, none waits
                error = err
        if comm is not None and comm.size > 1:
            error = comm.bcast(error, root=0)
        if error is not None:
            raise error

    def _prepare(self) -> None:
        """Rank 0: create the folder (never through a link); drop a restart's later files."""
        outdir.ensure_folder(self.dir)  # (a link there would take the files elsewhere)
        if self.keep_until is not None:
            for pattern in ("positions_*.npz", "points_*.csv"):
                for p in self.dir.glob(pattern):
                    num = p.name.split("_", 1)[1].split(".", 1)[0]
                    if num.isdigit() and int(num) > self.keep_until:
                        p.unlink()

    def _open_diagnostics(self, head: list[str]) -> None:
        """Rank 0: open ``diagnostics.csv``, keeping the earlier run's rows on a restart."""
        path = self.dir / "diagnostics.csv"
        if self.keep_until is not None and path.is_file():
            with outdir.open_read(path) as f:
                rows = list(csv.reader(f))
            if rows and rows[0] == head:  # the same species and dimension
                keep = [r for r in rows[1:]
                        if r and r[0].isdigit() and int(r[0]) <= self.keep_until]
                text = "".join(",".join(r) + "\r\n" for r in [head] + keep)
                outdir.atomic_write(path, lambda f: f.write(text.encode()))
                self._kept = {int(r[0]) for r in keep}
                self._file = outdir.open_append(path)
                self._csv = csv.writer(self._file)
                return
        self._file = outdir.open_append(path, truncate=True)
        self._csv = csv.writer(self._file)
        self._csv.writerow(head)

    def write(self, state: ParticleState) -> None:
        """Record the diagnostics of ``state``, and its positions on output steps."""
        mean, second = moments(state, self.comm)
        failed = None
        if self.rank == 0:
            try:
                self._write_row(state, mean, second)
            except OSError as err:  # raised after the gather below, which rank 0 must join
                failed = err
        if state.step_index % self.every == 0:
            pos = gather_positions(state, self.comm, root=0)
            if self.rank == 0 and failed is None:
                tag = f"{state.step_index:06d}"
                self._save(f"positions_{tag}.npz", state.step_index, lambda f: np.savez(
                    f, positions=pos, time=state.time, step=state.step_index))
                if self.csv_points:
                    n, npart, d = pos.shape
                    pts = np.zeros((n * npart, 4))
                    pts[:, :d] = pos.reshape(-1, d)
                    pts[:, 3] = np.repeat(np.arange(1, n + 1), npart)
                    self._save(f"points_{tag}.csv", state.step_index, lambda f: np.savetxt(
                        f, pts, delimiter=",", header="x,y,z,species", comments=""))
        if failed is not None:
            raise failed

    def _write_row(self, state: ParticleState, mean, second) -> None:
        """Rank 0: the diagnostics row of ``state`` (unless the earlier run's is kept)."""
        if self._csv is None:
            n, d = mean.shape
            head = ["step", "time"]
            for k in range(1, n + 1):  # species numbered from 1, as everywhere
                head += [f"mean{k}_{c}" for c in "xyz"[:d]] + [f"second_moment{k}"]
            self._open_diagnostics(head)
        if state.step_index not in self._kept:
            row = [state.step_index, repr(state.time)]
            for k in range(mean.shape[0]):
                row += [repr(float(v)) for v in mean[k]] + [repr(float(second[k]))]
            self._csv.writerow(row)
            self._file.flush()

    def _save(self, name: str, step: int, write) -> None:
        """Rank 0: write ``name`` atomically, unless it is an earlier run's file to keep.

        Atomic (a full disk leaves no torn file, and the error names this one) and never
        through a symbolic link.
        """
        path = self.dir / name
        if self.keep_until is not None and step <= self.keep_until and (
                path.is_file() or path.is_symlink()):
            return
        atomic_write(path, write)

    def close(self) -> None:
        """Close the diagnostics file."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
