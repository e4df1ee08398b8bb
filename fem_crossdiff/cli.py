"""Command line: ``crossdiff run study.toml`` and ``crossdiff check study.toml``.

``run`` builds the geometry, sets the initial data, integrates with
:class:`~fem_crossdiff.solver.CrossDiffusionSolver` and writes, into ``output.folder``:
``config.toml`` (the resolved study), ``diagnostics.csv`` (mass, energy, extrema per accepted
step; rows appended and flushed), ``rho.bp`` (VTX) and/or ``rho.xdmf``, ``densities.png``
(2D triangle meshes) and ``diagnostics.png`` (mass drift, energy, minimum over time), and
``checkpoints/step_NNNNNN.npz`` every ``output.checkpoint_every`` steps (plus the final state),
and with ``[particles]``, ``particles/`` (positions and moments of the particle system (1.6),
one Euler-Maruyama step per accepted PDE step; particles are not checkpointed, a restart
re-samples them from the restored densities).
``--restart CHECKPOINT`` continues such a run, on any number of ranks, to the same result as an
uninterrupted run. ``check`` validates and prints the resolved configuration (defaults filled in,
as TOML that ``run`` accepts).

Works the same under ``mpirun -n P``: only rank 0 prints. Every configuration error gives exit
code 2 and one line on stderr naming the dotted key, the value and what is allowed; a run that
fails (e.g. the step falls below ``dt_min``) gives exit code 1.
"""

from __future__ import annotations

import argparse
import csv
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fem_crossdiff import checkpoint as ckpt
from fem_crossdiff.config import (
    ConfigError,
    StudyConfig,
    load_config,
    short_mode_requested,
    to_toml,
)

__all__ = ["main", "run_study", "StudyResult", "build_parser"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors print on rank 0 only and exit with code 2."""

    comm = None

    def error(self, message):
        if self.comm is None or self.comm.rank == 0:
            self.print_usage(sys.stderr)
            sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser(comm=None) -> argparse.ArgumentParser:
    """The argument parser of ``crossdiff`` (``run`` and ``check`` subcommands)."""
    parser = _Parser(prog="crossdiff", description="Cross-diffusion studies from TOML files "
                     "(Carrillo & Guo system (1.1) and its nonlocal version).")
    parser.comm = comm
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run a study")
    run.comm = comm
    run.add_argument("config", help="study TOML file")
    run.add_argument("--quiet", action="store_true", help="no progress lines, warnings only")
    run.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    run.add_argument("--restart", metavar="CHECKPOINT", help="continue from a checkpoint .npz")
    run.add_argument("--short", action="store_true",
                     help="apply the file's [short] overrides (also when $CI is set)")
    run.add_argument("--output", metavar="DIR", help="override output.folder")
    check = sub.add_parser("check", help="validate and print the resolved configuration")
    check.comm = comm
    check.add_argument("config", help="study TOML file")
    check.add_argument("--short", action="store_true",
                       help="apply the file's [short] overrides (also when $CI is set)")
    return parser


@dataclass
class StudyResult:
    """What :func:`run_study` produced.

    Attributes:
        rows: Diagnostics rows of this invocation (the restored state first on a restart).
        solver: The solver, at the final time.
        folder: The output folder.
        checkpoints: Checkpoint files written.
        particles: Final local ``ParticleState`` when ``[particles]`` is given, else None.
    """

    rows: list[dict]
    solver: object
    folder: Path
    checkpoints: list[Path] = field(default_factory=list)
    particles: object = None


def _echo(comm, text: str, stream=None) -> None:
    if comm.rank == 0:
        print(text, file=stream or sys.stdout, flush=True)


def main(argv: list[str] | None = None, comm=None) -> int:
    """Entry point of ``crossdiff`` and ``python -m fem_crossdiff``.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).
        comm: Communicator (default ``MPI.COMM_WORLD``).

    Returns:
        Exit code: 0 success, 1 failed run, 2 configuration or usage error.
    """
    from fem_crossdiff.compat import MPI

    comm = MPI.COMM_WORLD if comm is None else comm
    try:
        args = build_parser(comm).parse_args(argv)
    except SystemExit as err:
        return int(err.code or 0)
    short = short_mode_requested(args.short)
    # Rank 0 reads and validates (file-system checks on one rank), then shares the verdict.
    cfg, msg = None, None
    if comm.rank == 0:
        try:
            cfg = load_config(args.config, short=short)
        except ConfigError as err:
            msg = f"crossdiff: config error in {args.config}: {err}"
    cfg, msg = comm.bcast((cfg, msg), root=0)
    if msg is not None:
        _echo(comm, msg, sys.stderr)
        return 2
    if args.command == "check":
        mode = " (short mode)" if short else ""
        _echo(comm, f"# {args.config}: valid{mode}; resolved configuration:\n"
              + to_toml(cfg.to_dict()))
        return 0
    try:
        run_study(cfg, comm, restart=args.restart, quiet=args.quiet,
                  log_level=args.log_level, output=args.output)
    except (ConfigError, ckpt.CheckpointError) as err:
        prefix = "config error" if isinstance(err, ConfigError) else "restart error"
        _echo(comm, f"crossdiff: {prefix} in {args.config}: {err}", sys.stderr)
        return 2
    except RuntimeError as err:  # collective failures (dt_min, missing nonlocal module)
        _echo(comm, f"crossdiff: run failed: {err}", sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- the run
def _species_error(err: ValueError) -> ConfigError:
    found = re.search(r"species (\d+)", str(err))
    key = f"initial[{found.group(1)}]" if found else "initial"
    return ConfigError(key, "<initial data>", str(err))


def _make_solver(cfg: StudyConfig, msh):
    from fem_crossdiff.solver import CrossDiffusionSolver

    kwargs = dict(degree=cfg.solver.degree, scheme=cfg.solver.scheme,
                  linear_solver=cfg.solver.linear_solver, petsc_options=dict(cfg.solver.petsc),
                  positivity_tol=cfg.solver.positivity_tol,
                  negative_edges=cfg.solver.negative_edges)
    if cfg.model.type == "nonlocal":
        kwargs["nonlocal_params"] = cfg.model.nonlocal_params()
    try:
        return CrossDiffusionSolver(msh, cfg.model.params(), **kwargs)
    except ValueError as err:  # raised on every rank: the checks use reduced mesh sizes
        text = str(err)
        key = ("model.eps" if "eps" in text else "solver.scheme" if "scheme" in text
               else "solver")
        value = {"model.eps": cfg.model.eps, "solver.scheme": cfg.solver.scheme}.get(key, "")
        raise ConfigError(key, value, f"rejected by the solver on this mesh: {text}") from None
    except TypeError as err:
        if "nonlocal_params" in str(err):
            raise RuntimeError("this CrossDiffusionSolver does not accept nonlocal_params "
                               f'(model.type = "nonlocal" unsupported here): {err}') from None
        raise


def _state_row(s, step: int, dt: float) -> dict:
    mass = s.masses()
    mn, mx = s.extrema()
    row = {"step": step, "t": s.t, "dt": dt, "energy": s.energy()}
    n = s.params.n
    row.update({f"mass_{k + 1}": mass[k] for k in range(n)})
    for k in range(n):
        row[f"min_{k + 1}"], row[f"max_{k + 1}"] = mn[k], mx[k]
    row["newton_its"], row["krylov_its"] = 0, 0
    return row


class _Csv:
    """Rank-0 diagnostics CSV, rows appended and flushed.

    On a restart into the same folder, the rows after the checkpoint's step are dropped first
    (the file is rewritten atomically).
    """

    def __init__(self, path: Path | None, comm, fields: list[str], keep_until: int | None):
        self.file, self.previous = None, []
        if path is None or comm.rank != 0:
            return
        if keep_until is not None and path.is_file():
            with open(path, newline="") as f:
                self.previous = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until]
            text = [",".join(fields)] + [",".join(r.get(k, "") for k in fields)
                                         for r in self.previous]
            ckpt.atomic_write(path, lambda f: f.write(("\n".join(text) + "\n").encode()))
            self.file = open(path, "a", newline="")
            self.writer = csv.DictWriter(self.file, fieldnames=fields, extrasaction="ignore")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "w", newline="")
            self.writer = csv.DictWriter(self.file, fieldnames=fields, extrasaction="ignore")
            self.writer.writeheader()
        self.previous = [{k: float(v) for k, v in r.items()} for r in self.previous]

    def write(self, row: dict) -> None:
        if self.file is not None:
            self.writer.writerow({k: (f"{v:.16e}" if isinstance(v, float) else v)
                                  for k, v in row.items()})
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class _Fields:
    """VTX / XDMF field output of every species (collective)."""

    def __init__(self, s, folder: Path, formats, suffix: str):
        from fem_crossdiff.compat import fem, io

        self.s, self.vtx, self.xdmf = s, None, None
        self.outs = [s.species(k) for k in range(s.params.n)]
        msh = s.msh
        if "vtx" in formats:
            self.vtx = io.VTXWriter(s.comm, str(folder / f"rho{suffix}.bp"), self.outs,
                                    engine="BP4")
        if "xdmf" in formats:
            gdeg = msh.geometry.cmaps[0].degree
            # XDMF needs fields of the mesh's geometry degree
            self.xspace = (None if gdeg == s.degree
                           else fem.functionspace(msh, ("Lagrange", gdeg)))
            self.xouts = (self.outs if self.xspace is None else
                          [fem.Function(self.xspace, name=f.name) for f in self.outs])
            self.xdmf = io.XDMFFile(s.comm, str(folder / f"rho{suffix}.xdmf"), "w")
            self.xdmf.write_mesh(msh)

    def write(self) -> None:
        for k, f in enumerate(self.outs):
            f.x.array[:] = self.s.rho.x.array[np.asarray(self.s._sub_dofs[k]).reshape(-1)]
        if self.vtx is not None:
            self.vtx.write(self.s.t)
        if self.xdmf is not None:
            for f, g in zip(self.outs, self.xouts):
                if g is not f:
                    g.interpolate(f)
                self.xdmf.write_function(g, self.s.t)

    def close(self) -> None:
        for w in (self.vtx, self.xdmf):
            if w is not None:
                w.close()


def _p1_species(s) -> list:
    from fem_crossdiff.compat import fem

    out = [s.species(k) for k in range(s.params.n)]
    if s.degree == 1:
        return out
    V1 = fem.functionspace(s.msh, ("Lagrange", 1))
    res = []
    for f in out:
        g = fem.Function(V1, name=f.name)
        g.interpolate(f)
        res.append(g)
    return res


class _Particles:
    """The particle system (1.6) alongside the PDE: one Euler-Maruyama step per PDE step."""

    def __init__(self, cfg: StudyConfig, s, folder: Path):
        from dataclasses import replace

        from fem_crossdiff.compat import fem
        from particles import GridDrift, ParticleParams, ParticleWriter, init_state
        from particles.mesh_domain import FEDensitySampler, MeshDomain

        pc, comm = cfg.particles, s.comm
        self.comm = comm
        self.params = ParticleParams(n_particles=pc.N, a=cfg.model.a, b=cfg.model.b,
                                     sigma=cfg.model.sigma, m=cfg.model.m, eps=pc.eps,
                                     kernel=pc.kernel)
        self.domain, self.drift = MeshDomain(s.msh), GridDrift()
        samplers = []
        for f in _p1_species(s):
            g = fem.Function(f.function_space)
            # restored states may hold round-off negatives (~1e-19): sample the positive part
            g.x.array[:] = np.maximum(f.x.array, 0.0)
            samplers.append(FEDensitySampler(g))
        state = init_state(self.params, samplers, pc.seed, self.domain, comm)
        self.state = replace(state, time=s.t)
        self.writer = ParticleWriter(folder / "particles", every=pc.output_every, comm=comm)
        self.writer.write(self.state)

    def advance(self, dt: float) -> None:
        from particles import step

        self.state = step(self.state, dt, self.params, self.domain, self.drift, self.comm)
        self.writer.write(self.state)

    def close(self) -> None:
        self.writer.close()


def _plot_diagnostics(rows: list[dict], n: int, path: Path, title: str) -> None:
    """Rank 0: mass drift, energy and minimum density over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([r["t"] for r in rows])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for k in range(1, n + 1):
        m = np.array([r[f"mass_{k}"] for r in rows])
        axes[0].semilogy(t, np.maximum(np.abs(m / m[0] - 1.0), 1e-17), label=f"rho_{k}")
        axes[2].plot(t, [r[f"min_{k}"] for r in rows], label=f"rho_{k}")
    axes[0].set_title("relative mass drift")
    axes[1].plot(t, [r["energy"] for r in rows], "k")
    axes[1].set_title("energy")
    axes[2].set_title("minimum density")
    for ax in axes:
        ax.set_xlabel("t")
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    ckpt.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def _plot_densities(snapshots, path: Path, title: str, comm) -> None:
    from fem_crossdiff.plotting import plot_species_snapshots

    tmp = path.with_name(f".{path.stem}.tmp.png")
    plot_species_snapshots(snapshots, tmp, title=title)
    if comm.rank == 0:
        tmp.replace(path)


def run_study(cfg: StudyConfig, comm, *, restart: str | Path | None = None,
              quiet: bool = False, log_level: str = "INFO",
              output: str | Path | None = None) -> StudyResult:
    """Run a validated study (collective).

    Args:
        cfg: The study.
        comm: Communicator.
        restart: Checkpoint to continue from (any number of ranks may have written it).
        quiet: No progress lines; warnings and errors only.
        log_level: Logging level on rank 0.
        output: Output folder, overriding ``cfg.output.folder``.

    Returns:
        The :class:`StudyResult`.

    Raises:
        ConfigError: geometry that cannot be built, bad initial data (same on every rank).
        CheckpointError: restart file missing or incompatible.
        RuntimeError: the run failed (step below ``dt_min``), nonlocal model unavailable.
    """
    from fem_crossdiff.log import get_logger

    level = logging.WARNING if quiet else getattr(logging, log_level.upper())
    log = get_logger(comm, level)
    handler_levels = [(h, h.level) for h in log.handlers]
    if comm.rank == 0:
        for h in log.handlers:  # the solver resets the logger to INFO; the handler filters
            h.setLevel(level)
    try:
        return _run(cfg, comm, restart, not quiet and cfg.output.progress, level, log, output)
    finally:
        for h, lev in handler_levels:
            h.setLevel(lev)


def _run(cfg, comm, restart, progress, level, log, output) -> StudyResult:
    from fem_crossdiff.compat import mesh as dmesh
    from meshes import GmshError

    folder = Path(output if output is not None else cfg.output.folder)
    formats = cfg.output.formats
    if comm.rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write(folder / "config.toml", lambda f: f.write(
            (f"# resolved from {cfg.source}\n" + to_toml(cfg.to_dict())).encode()))
    comm.barrier()
    try:
        geo = cfg.geometry.build(comm)
    except (ValueError, FileNotFoundError, GmshError) as err:
        key = "geometry.msh" if cfg.geometry.msh is not None else "geometry"
        raise ConfigError(key, cfg.geometry.msh or cfg.geometry.builder,
                          f"cannot build the mesh: {err}") from None
    msh = geo.mesh
    gdim = msh.geometry.dim
    funcs = [ic.function(gdim) for ic in cfg.initial]
    s = _make_solver(cfg, msh)
    try:
        s.set_initial(funcs)
    except ValueError as err:
        raise _species_error(err) from None
    tp = cfg.time.params()
    chash = cfg.physics_hash()
    step0, suffix, first_dt = 0, "", 0.0
    if restart is not None:
        info = ckpt.load_checkpoint(restart, s, config_hash=chash)
        step0, suffix = info.step, f"_restart{info.step:06d}"
        first_dt = info.dt_prev or 0.0
        next_dt = min(max(info.next_dt, tp.dt_min), tp.dt_max or np.inf)
        tp = cfg.time.params(dt=next_dt) if next_dt >= tp.dt_min else tp
        log.info("restarted from %s: step %d, t = %.6g", restart, info.step, info.t)
    rows = [_state_row(s, step0, first_dt)]
    fields = list(rows[0])
    writer = _Csv(folder / "diagnostics.csv" if "csv" in formats else None, comm, fields,
                  keep_until=step0 if restart is not None else None)
    if not writer.previous:
        writer.write(rows[0])
    fields_out = _Fields(s, folder, formats, suffix)
    fields_out.write()
    png2d = ("png" in formats and gdim == 2
             and msh.topology.cell_type == dmesh.CellType.triangle)
    parts = None
    if cfg.particles is not None:
        if restart is not None:
            log.info("particles are not checkpointed: re-sampled from the restored densities")
        try:
            parts = _Particles(cfg, s, folder)
        except ValueError as err:
            raise ConfigError("particles", cfg.particles.N, f"cannot start the particles: "
                              f"{err}") from None
    t_start, T = s.t, tp.T
    targets = [t_start + (T - t_start) * j / 3 for j in (1, 2, 3)] if T > t_start else []
    snapshots = [(s.t, _p1_species(s))] if png2d else []
    written: list[Path] = []
    every, cevery = cfg.output.every, cfg.output.checkpoint_every
    root = logging.getLogger("fem_crossdiff")
    last = {"step": step0, "next_dt": tp.dt}

    def save(step, next_dt):
        path = folder / "checkpoints" / f"step_{step:06d}.npz"
        written.append(ckpt.save_checkpoint(path, s, step=step, next_dt=next_dt,
                                            config_hash=chash))

    def on_step(solver, row):
        gstep = step0 + row["step"]
        row = dict(row, step=gstep)
        rows.append(row)
        writer.write(row)
        if parts is not None:
            parts.advance(row["dt"])
        last.update(step=gstep, next_dt=solver.next_dt)
        if gstep % every == 0:
            fields_out.write()
        if png2d and targets and solver.t >= targets[0] - 1e-12 * max(T, 1.0):
            snapshots.append((solver.t, _p1_species(solver)))
            while targets and solver.t >= targets[0] - 1e-12 * max(T, 1.0):
                targets.pop(0)
        if cevery and gstep % cevery == 0:
            save(gstep, last["next_dt"])
        if comm.rank == 0 and root.level != level:
            root.setLevel(level)  # get_logger() in solver.run reset it

    try:
        s.run(tp, progress=progress, callback=on_step)
    finally:
        writer.close()
        if parts is not None:
            parts.close()
        if last["step"] > step0 and last["step"] % every != 0:
            fields_out.write()
        fields_out.close()
    if cevery and last["step"] > step0 and last["step"] % cevery != 0:
        save(last["step"], last["next_dt"])
    if "png" in formats:
        if png2d:
            _plot_densities(snapshots, folder / "densities.png", cfg.title, comm)
        if comm.rank == 0:
            _plot_diagnostics(writer.previous + rows[1 if writer.previous else 0:],
                              s.params.n, folder / "diagnostics.png", cfg.title)
    comm.barrier()
    first, end = rows[0], rows[-1]
    drift = max(abs(end[f"mass_{k}"] / first[f"mass_{k}"] - 1.0)
                for k in range(1, s.params.n + 1))
    log.info("done: %d steps to t = %.6g, relative mass drift %.2e, energy %.6g -> %.6g; "
             "output in %s", end["step"] - step0, s.t, drift, first["energy"], end["energy"],
             folder)
    return StudyResult(rows=rows, solver=s, folder=folder, checkpoints=written,
                       particles=None if parts is None else parts.state)
