"""Outputs of a run, as observers of :func:`fem_crossdiff.driver.run`.

An observer has any of ``start(solver, row)`` (the initial or restored state),
``step(solver, row)`` (after every accepted step), ``finish(solver, row)`` (the final state)
and ``close()`` (always, also after a failure). Rows are the diagnostics rows of
:func:`fem_crossdiff.driver.diagnostics_row`. Everything here is collective where it touches
the fields; files are written by rank 0 only, CSV rows flushed as they come, pictures and
checkpoints atomically.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fem_crossdiff import checkpoint as ckpt
from fem_crossdiff import diskio, outdir
from fem_crossdiff.driver import row_fields

__all__ = ["CsvObserver", "FieldObserver", "SnapshotObserver", "AnimationObserver",
           "DiagnosticsPlotObserver", "ParticlePlotObserver", "CheckpointObserver",
           "ParticleObserver", "CallbackObserver", "p1_species"]


def _is_float(v) -> bool:
    return isinstance(v, (float, np.floating))


class CsvObserver:
    """The diagnostics CSV (rank 0), one row per accepted step plus the initial state.

    Args:
        path: The CSV file.
        keep_until: On a restart, the step of the restored state: the rows of an existing file
            up to that step are kept (the file is rewritten atomically without the later ones)
            and the restored state is not written again.
    """

    def __init__(self, path: str | Path, keep_until: int | None = None):
        self.path, self.keep_until = Path(path), keep_until
        self.file = None
        #: Rows of an earlier run kept on a restart (floats), for plots.
        self.previous: list[dict] = []

    def start(self, solver, row):
        """Open the file (and keep the earlier rows on a restart)."""
        fields = row_fields(solver.params.n)
        if solver.comm.rank != 0:
            return
        with diskio.writing(self.path):
            self._open(fields)
        if not self.previous:
            self._write(row)

    def _open(self, fields):
        if self.keep_until is not None and self.path.is_file():
            with outdir.open_read(self.path) as f:
                old = [r for r in csv.DictReader(f) if int(r["step"]) <= self.keep_until]
            text = [",".join(fields)] + [",".join(r.get(k) or "" for k in fields) for r in old]
            ckpt.atomic_write(self.path, lambda f: f.write(("\n".join(text) + "\n").encode()))
            self.previous = [{k: float(v) for k, v in r.items() if v not in (None, "")}
                             for r in old]
            self.file = outdir.open_append(self.path)
            self.writer = csv.DictWriter(self.file, fieldnames=fields, extrasaction="ignore")
        else:
            self.file = outdir.open_append(self.path, truncate=True)
            self.writer = csv.DictWriter(self.file, fieldnames=fields, extrasaction="ignore")
            self.writer.writeheader()

    def step(self, solver, row):
        """Append a row."""
        self._write(row)

    def _write(self, row):
        if self.file is not None:
            end = self.file.tell()  # rows before are flushed: the file ends here
            try:
                with diskio.writing(self.path):
                    self.writer.writerow({k: (f"{v:.16e}" if _is_float(v) else v)
                                          for k, v in row.items()})
                    self.file.flush()
            except diskio.OutputError:
                self._drop(end)
                raise

    def _drop(self, end: int):
        """Close after a failed write and cut the file back to its last whole row.

        A full disk may take part of a row; the file then ends with the rows before it.
        """
        file, self.file = self.file, None
        try:
            file.close()
        except OSError:  # the buffered row could not be written: it is not in the file
            pass
        try:
            os.truncate(self.path, end)
        except OSError:  # the error being raised says what went wrong
            pass

    def close(self):
        """Close the file."""
        if self.file is not None:
            try:
                with diskio.writing(self.path):
                    self.file.close()
            finally:
                self.file = None


class FieldObserver:
    """Species fields to VTX (``.bp``) and/or XDMF, every ``every`` steps and at the end.

    Args:
        path: The output path without suffix handling: ``rho.bp`` for VTX, ``rho.xdmf`` for
            XDMF; with several formats give the stem (``folder/rho``).
        formats: ``"vtx"``, ``"xdmf"`` or a sequence of both.
        every: Output cadence in (global) step numbers.
    """

    def __init__(self, path: str | Path, formats="vtx", every: int = 1):
        self.path = Path(path)
        self.formats = (formats,) if isinstance(formats, str) else tuple(formats)
        self.every = max(int(every), 1)
        self.vtx = self.xdmf = None
        self._last = None
        self.comm = None
        self._failed: set[str] = set()

    def _file(self, suffix: str) -> str:
        p = self.path
        return str(p if p.suffix == suffix else p.with_name(p.name + suffix)
                   if p.suffix not in (".bp", ".xdmf") else p.with_suffix(suffix))

    def start(self, solver, row):
        """Open the writers and write the first state."""
        from fem_crossdiff.compat import fem, io

        self.comm = comm = solver.comm
        self.outs = [solver.species(k) for k in range(solver.params.n)]
        msh = solver.msh
        self._bound = _field_write_bound(solver)
        if "vtx" in self.formats:
            name = self._file(".bp")
            diskio.agreed_space_check(comm, name, self._bound, Path(name) / "data.0")
            with diskio.writing(name, runtime=True):
                self.vtx = io.VTXWriter(comm, name, self.outs, engine="BP4")
        if "xdmf" in self.formats:
            gdeg = msh.geometry.cmaps[0].degree
            # XDMF needs fields of the mesh's geometry degree
            space = None if gdeg == solver.degree else fem.functionspace(msh, ("Lagrange", gdeg))
            self.xouts = (self.outs if space is None else
                          [fem.Function(space, name=f.name) for f in self.outs])
            name = self._file(".xdmf")
            diskio.agreed_space_check(comm, name, self._bound, Path(name).with_suffix(".h5"))
            with diskio.writing(name, runtime=True):
                self.xdmf = io.XDMFFile(comm, name, "w")
                diskio.quiet_hdf5()  # its errors become one line of ours
            self._guarded(comm, "xdmf", lambda: self.xdmf.write_mesh(msh))
        self._write(solver, row["step"])

    def step(self, solver, row):
        """Write every ``every`` steps."""
        if row["step"] % self.every == 0:
            self._write(solver, row["step"])

    def finish(self, solver, row):
        """Write the final state (if the cadence skipped it)."""
        if self._last != row["step"]:
            self._write(solver, row["step"])

    def _write(self, solver, step):
        for k, f in enumerate(self.outs):
            f.x.array[:] = solver.rho.x.array[solver.species_dofs[k]]
        if self.vtx is not None:
            self._guarded(solver.comm, "vtx", lambda: self.vtx.write(solver.t))
        if self.xdmf is not None:
            def write_xdmf():
                for f, g in zip(self.outs, self.xouts):
                    if g is not f:
                        g.interpolate(f)
                    self.xdmf.write_function(g, solver.t)

            self._guarded(solver.comm, "xdmf", write_xdmf)
        self._last = step

    def _guarded(self, comm, kind: str, write):
        """``write()`` with the space check before, and no abort after a failure.

        A full disk is refused before ADIOS2/HDF5 is called (every rank agrees); a failure
        inside them disowns the writer (its destructor would abort the process) and raises
        :class:`~fem_crossdiff.diskio.OutputError`, or under MPI ends the job with it.
        """
        name = self._file(".bp" if kind == "vtx" else ".xdmf")
        grows = Path(name) / "data.0" if kind == "vtx" else Path(name).with_suffix(".h5")
        diskio.agreed_space_check(comm, name, self._bound, grows)
        try:
            write()
        except (RuntimeError, OSError) as err:
            self._disown(kind)
            error = diskio.OutputError.from_error(name, err)
            if comm.size > 1:
                diskio.abort_job(comm, error)
            raise error from None

    def _disown(self, kind: str):
        writer = getattr(self, kind)
        setattr(self, kind, None)
        self._failed.add(kind)
        if writer is not None:
            diskio.disown(writer)

    def close(self):
        """Close the writers (one that cannot be closed is disowned, see :mod:`.diskio`).

        Closing is collective: a writer that failed on some rank is disowned on every rank,
        since the others would wait in its close for the rank that no longer takes part.
        """
        error = None
        for kind, suffix in (("vtx", ".bp"), ("xdmf", ".xdmf")):
            if self.comm is not None and self.comm.allreduce(int(kind in self._failed),
                                                             op=_max_op()):
                self._disown(kind)
            writer = getattr(self, kind)
            if writer is None:
                continue
            try:
                writer.close()
            except (RuntimeError, OSError) as err:
                self._disown(kind)
                error = error or diskio.OutputError.from_error(self._file(suffix), err)
            setattr(self, kind, None)
        if error is not None:
            raise error


def _field_write_bound(solver) -> int:
    """Bytes one field write may add: 3 x (mesh and species in float64) + 8 KiB per rank.

    VTX writes the geometry and cells of the function space and the values of every species
    at every step, each rank its own block with its ghosts; XDMF the same into its ``.h5``.
    Measured with VTX (data and metadata per write, 2 species): 9.6 KB serial and 13.0 KB on
    2 ranks on a disk of ``h = 0.3`` against bounds of 30.8 and 38.9 KB; 46.7 KB serial on
    ``h = 0.1`` against 148 KB.
    """
    V0, msh = solver.V0, solver.msh
    tdim = msh.topology.dim
    ndofs = V0.dofmap.index_map.size_global
    ncells = msh.topology.index_map(tdim).size_global
    per_cell = len(V0.dofmap.cell_dofs(0)) if msh.topology.index_map(tdim).size_local else 1
    per_cell = solver.comm.allreduce(per_cell, op=_max_op())
    raw = 8 * (3 * ndofs + ncells * (per_cell + 2) + solver.params.n * ndofs)
    return 3 * raw + 8192 * solver.comm.size


def _max_op():
    from fem_crossdiff.compat import MPI

    return MPI.MAX


def p1_species(solver) -> list:
    """Every species as a P1 function (interpolated from higher degree)."""
    from fem_crossdiff.compat import fem

    out = [solver.species(k) for k in range(solver.params.n)]
    if solver.degree == 1:
        return out
    V1 = fem.functionspace(solver.msh, ("Lagrange", 1))
    res = []
    for f in out:
        g = fem.Function(V1, name=f.name)
        g.interpolate(f)
        res.append(g)
    return res


class _Frames:
    """Frames of the species fields at target times (collective sampling, data on rank 0)."""

    def __init__(self, T: float, count: int):
        self.T, self.count = T, count
        self.frames: list[dict] = []
        self.sampler = None

    def start(self, solver):
        from fem_crossdiff.plotting import FieldSampler

        self.sampler = FieldSampler(solver.msh)
        t0 = solver.t
        self.targets = ([t0 + (self.T - t0) * j / (self.count - 1) for j in range(1, self.count)]
                        if self.T > t0 and self.count > 1 else [])
        self.frames = []
        self.take(solver)

    def take(self, solver):
        values = self.sampler.sample([solver.species(k) for k in range(solver.params.n)])
        self.frames.append({"t": solver.t, "values": values})

    def step(self, solver):
        """Take a frame when a target time is passed (one frame however many are passed)."""
        tol = 1e-9 * max(self.T, 1.0)
        if self.targets and solver.t >= self.targets[0] - tol:
            self.take(solver)
            while self.targets and solver.t >= self.targets[0] - tol:
                self.targets.pop(0)

    def finish(self, solver):
        """The final state, if the last target was not reached exactly."""
        if self.frames and abs(self.frames[-1]["t"] - solver.t) > 1e-12 * max(self.T, 1.0):
            self.take(solver)


class _FrameObserver:
    """Observers that sample frames at target times (:class:`_Frames`) and draw at the end."""

    _frames: _Frames

    @property
    def frames(self) -> list[dict]:
        """The sampled frames (values on rank 0, ``None`` elsewhere)."""
        return self._frames.frames

    def start(self, solver, row):
        """The first frame, and the times of the others."""
        self._frames.start(solver)

    def step(self, solver, row):
        """A frame when a target time is passed."""
        self._frames.step(solver)


class SnapshotObserver(_FrameObserver):
    """Densities at the start, a third, two thirds and the end of the run, as one PNG.

    Any mesh: 1D curves, 2D maps (plus the segregation view), 3D mid-plane slices (plus
    ``<stem>_slices.png``, the three planes at the final time). Collective sampling; rank 0
    draws (:func:`fem_crossdiff.plotting.snapshot_figure`).

    Args:
        path: The PNG file.
        T: Final time of the run.
        title: Figure title.
        color_range: ``"run"`` (one range per species over the run) or ``"frame"``.
        count: Number of snapshots, the first and the last included.
    """

    def __init__(self, path: str | Path, T: float, title: str = "", color_range: str = "run",
                 count: int = 4):
        self.path, self.title, self.color_range = Path(path), title, color_range
        self._frames = _Frames(T, count)
        #: Files written (rank 0).
        self.written: list[Path] = []

    def finish(self, solver, row):
        """Plot (rank 0)."""
        from fem_crossdiff import plotting

        self._frames.finish(solver)
        if solver.comm.rank != 0:
            return
        sampler = self._frames.sampler
        #: The figures drawn (rank 0), for inspection.
        self.figures = [plotting.snapshot_figure(sampler, self.frames, self.path,
                                                 title=self.title,
                                                 color_range=self.color_range)]
        self.written = [self.path]
        if sampler.kind == "slices":
            extra = self.path.with_name(f"{self.path.stem}_slices.png")
            self.figures.append(plotting.slices_figure(sampler, self.frames[-1], extra,
                                                       title=self.title))
            self.written.append(extra)


class AnimationObserver(_FrameObserver):
    """An animation of the run: ``count`` frames evenly spaced in time, GIF or MP4 (rank 0).

    A frame is taken when the run passes each of the times ``t0 + j (T - t0) / (count - 1)``
    (one frame if a step passes several) and at the end, so a run with at least ``count - 1``
    steps evenly spread gets exactly ``count`` frames. The frames are written at the end
    (:func:`fem_crossdiff.plotting.write_animation`); the colour range is the whole run's.

    Args:
        path: Output file; its suffix is set by ``fmt``.
        T: Final time.
        fmt: ``"gif"`` (matplotlib's Pillow writer) or ``"mp4"`` (needs ffmpeg).
        count: Number of frames, ``>= 2``.
        fps: Frames per second.
        title: Title shown above the frames.

    Raises:
        ValueError: a bad format, ``mp4`` without ffmpeg, or ``count < 2`` (before any work).
    """

    def __init__(self, path: str | Path, T: float, fmt: str = "gif", count: int = 40,
                 fps: int = 10, title: str = ""):
        from fem_crossdiff.errors import ParameterError
        from fem_crossdiff.plotting import animation_writer

        try:
            animation_writer(fmt, fps)
        except ValueError as err:
            raise ParameterError("animation", fmt, str(err)) from None
        if isinstance(count, bool) or not isinstance(count, int) or count < 2:
            raise ParameterError("animation_frames", count, "must be an integer >= 2")
        self.path = Path(path).with_suffix(f".{fmt}")
        self.fmt, self.fps, self.title = fmt, int(fps), title
        self._frames = _Frames(T, count)

    def finish(self, solver, row):
        """Write the animation (rank 0)."""
        from fem_crossdiff.plotting import write_animation

        self._frames.finish(solver)
        if solver.comm.rank == 0:
            try:
                with diskio.writing(self.path):
                    write_animation(self._frames.sampler, self.frames, self.path, self.fmt,
                                    self.fps, self.title)
            except diskio.OutputError:
                # the partial temporary file of write_animation: no later run would use it
                tmp = self.path.with_name(f".{self.path.stem}.tmp{self.path.suffix}")
                if tmp.is_file() and not tmp.is_symlink():
                    tmp.unlink()
                raise


class ParticlePlotObserver:
    """At the end: particle clouds over the FE densities, and the projected empirical measures.

    One PNG (2D meshes; collective projection, rank 0 draws).

    Args:
        particles: The :class:`ParticleObserver` whose state is drawn.
        path: The PNG file.
        title: Figure title.
    """

    def __init__(self, particles, path: str | Path, title: str = ""):
        self.particles, self.path, self.title = particles, Path(path), title

    def finish(self, solver, row):
        """Project, gather and plot."""
        from fem_crossdiff import plotting
        from fem_crossdiff.measures import empirical_dg0_histogram
        from fem_crossdiff.particles import gather_positions

        state = self.particles.state
        sampler = plotting.FieldSampler(solver.msh)
        fe = [solver.species(k) for k in range(solver.params.n)]
        masses = solver.masses()
        hists = []
        for k in range(solver.params.n):
            h = empirical_dg0_histogram(solver.msh, state.of_species(k), outside="drop")
            h.x.array[:] *= masses[k]  # the histogram has mass 1, rho_k has mass M_k
            hists.append(h)
        density = sampler.sample(fe)
        empirical = sampler.sample_cells(hists)
        pos = gather_positions(state, solver.comm, root=0)
        if solver.comm.rank == 0:
            plotting.particles_figure(sampler, density, pos, empirical, self.path,
                                      title=self.title or f"particles at t = {solver.t:.3g}")


class DiagnosticsPlotObserver:
    """The diagnostics over time, one PNG at the end (rank 0).

    Panels: mass drift, energy, time step with rejections, Newton/Krylov iterations, minimum
    and maximum density (:func:`fem_crossdiff.plotting.diagnostics_figure`).

    Args:
        path: The PNG file.
        title: Figure title.
        previous: Rows of an earlier part of the run (a restart), plotted first; a callable
            returning them is read at the end.
    """

    def __init__(self, path: str | Path, title: str = "",
                 previous: Callable[[], list[dict]] | None = None):
        self.path, self.title, self.previous = Path(path), title, previous
        self.rows: list[dict] = []

    def start(self, solver, row):
        """Record the first row."""
        self.rows = [row]

    def step(self, solver, row):
        """Record a row."""
        self.rows.append(row)

    def finish(self, solver, row):
        """Plot."""
        if solver.comm.rank != 0:
            return
        old = self.previous() if self.previous is not None else []
        rows = old + self.rows[1:] if old else self.rows
        plot_diagnostics(rows, solver.params.n, self.path, self.title)


def plot_diagnostics(rows: list[dict], n: int, path: Path, title: str):
    """Rank 0: the diagnostics figure of ``rows`` written to ``path`` (returns the figure)."""
    from fem_crossdiff.plotting import diagnostics_figure

    return diagnostics_figure(rows, n, path, title)


class CheckpointObserver:
    """Checkpoints ``folder/step_NNNNNN.npz`` every ``every`` steps and of the final state.

    At the start, checkpoints in the folder numbered beyond the first state are removed
    (rank 0): they belong to an earlier, longer run or to the part of this run after its
    restart point, and would otherwise pass for the newest state.

    Args:
        folder: Checkpoint folder.
        every: Cadence in (global) step numbers (``0``: none).
        identity: The run identity stored in every checkpoint and checked on restart
            (:func:`fem_crossdiff.checkpoint.run_identity`; default: the solver's own, which
            does not cover the time step).
    """

    def __init__(self, folder: str | Path, every: int, identity=None):
        self.folder, self.every = Path(folder), int(every)
        self.identity = None if identity is None else dict(identity)
        self.written: list[Path] = []
        self.removed: list[Path] = []
        self._first = self._last = None

    def start(self, solver, row):
        """Remove later checkpoints; remember the first step (not written again)."""
        self._first = self._last = row["step"]
        if self.identity is None:
            self.identity = ckpt.run_identity(solver)
        outdir.refuse_link_on_all(self.folder, solver.comm)  # never remove through a link
        if solver.comm.rank == 0 and self.folder.is_dir():
            for p in sorted(self.folder.glob("step_*.npz")):
                num = p.stem[len("step_"):]
                if num.isdigit() and int(num) > row["step"]:
                    p.unlink()
                    self.removed.append(p)
        self.removed = solver.comm.bcast(self.removed, root=0)
        if self.removed:
            from fem_crossdiff.log import get_logger

            get_logger(solver.comm).info("removed %d checkpoint(s) after step %d in %s (from "
                                         "an earlier run)", len(self.removed), row["step"],
                                         self.folder)

    def step(self, solver, row):
        """Write at the cadence."""
        if self.every and row["step"] % self.every == 0:
            self._save(solver, row["step"])

    def finish(self, solver, row):
        """Write the final state (if the cadence skipped it)."""
        if self.every and row["step"] != self._last and row["step"] != self._first:
            self._save(solver, row["step"])

    def _save(self, solver, step):
        path = self.folder / f"step_{step:06d}.npz"
        self.written.append(ckpt.save_checkpoint(path, solver, step=step,
                                                 next_dt=solver.next_dt,
                                                 identity=self.identity))
        self._last = step


class ParticleObserver:
    """The particle system (1.6) alongside the PDE: one Euler-Maruyama step per PDE step.

    On a :class:`~fem_crossdiff.particles.mesh_domain.MeshDomain` the step tracks the particles'
    cells (kept in the state) and a
    :class:`~fem_crossdiff.particles.mesh_drift.MeshOperatorDrift` on the same mesh is evaluated
    at those cells: no point location per step (the fast path of
    :func:`fem_crossdiff.particles.state.step`).

    Args:
        params: Particle parameters.
        domain: The particles' domain (reflection at its walls).
        drift: The interaction drift.
        state: The initial particle state (sampled from the PDE's state).
        writer: A ``ParticleWriter`` (or ``None``).
        family: The family's ingredients (:class:`fem_crossdiff.family.Family`: per-species
            noise, potentials, interactions), stepped by
            :func:`fem_crossdiff.particles.family.family_step` with ``drift`` as the pressure
            drift; ``None``: the paper's system (1.6).
    """

    def __init__(self, params, domain, drift, state, writer=None, family=None):
        self.params, self.domain, self.drift = params, domain, drift
        self.state, self.writer, self.family = state, writer, family

    def start(self, solver, row):
        """Write the initial state."""
        if self.writer is not None:
            with diskio.writing(self.writer.dir, own_name=False):
                self.writer.write(self.state)

    def step(self, solver, row):
        """One particle step of the PDE's step size."""
        from fem_crossdiff.particles import step

        if self.family is None:
            self.state = step(self.state, row["dt"], self.params, self.domain, self.drift,
                              solver.comm)
        else:  # weights stay 1 on a mesh domain (no growth there: checked with the study)
            from fem_crossdiff.particles.family import family_state, family_step

            fs = family_step(family_state(self.state), row["dt"], self.params, self.family,
                             self.domain, pressure=self.drift, comm=solver.comm)
            self.state = fs.particles
        if self.writer is not None:
            with diskio.writing(self.writer.dir, own_name=False):
                self.writer.write(self.state)

    def close(self):
        """Close the writer."""
        if self.writer is not None:
            with diskio.writing(self.writer.dir / "diagnostics.csv"):
                self.writer.close()


class CallbackObserver:
    """``callback(solver, row)`` after every accepted step."""

    def __init__(self, callback: Callable):
        self.callback = callback

    def step(self, solver, row):
        """Call the callback."""
        self.callback(solver, row)
