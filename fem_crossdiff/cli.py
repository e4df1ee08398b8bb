"""Command line: ``crossdiff run study.toml`` and ``crossdiff check study.toml``.

``run`` builds the geometry, sets the initial data, integrates with
:class:`~fem_crossdiff.solver.CrossDiffusionSolver` and writes, into ``output.folder``:
``config.toml`` (the resolved study), ``diagnostics.csv`` (mass, energy, extrema per accepted
step; rows appended and flushed), ``rho.bp`` (VTX) and/or ``rho.xdmf``, ``densities.png``
(snapshots and the segregation view; 3D: mid-plane slices, and ``densities_slices.png``),
``diagnostics.png`` (mass drift, energy, dt and rejections, iterations, extrema over time),
``animation.gif`` (or ``.mp4``) with ``output.animation``, ``particles.png`` (2D runs with
particles: the clouds over the FE densities, and the projected empirical measures), and
``checkpoints/step_NNNNNN.npz`` every ``output.checkpoint_every`` steps (plus the final state),
and with ``[particles]``, ``particles/`` (positions and moments of the particle system (1.6),
one Euler-Maruyama step per accepted PDE step; particles are not checkpointed, a restart
re-samples them from the restored densities).
``--restart CHECKPOINT`` continues such a run, on any number of ranks, to the same result as an
uninterrupted run. Nothing is written before the mesh, the initial data and the checkpoint are
validated, and a run never mixes its files with another's: a non-empty output folder is
refused (exit 2) unless ``--overwrite`` (the earlier run's files are removed first) or
``--restart`` with a checkpoint in that folder (the run continues there; its later checkpoints
and CSV rows are dropped). ``check`` validates and prints the resolved configuration (defaults
filled in, as TOML that ``run`` accepts). ``keys`` prints the reference of every key
(``docs/keys.md``), ``--version`` the version.

Works the same under ``mpirun -n P``: only rank 0 prints. Every configuration error gives exit
code 2 and one line on stderr naming the dotted key, the value and what is allowed; a run that
fails (e.g. the step falls below ``dt_min``) gives exit code 1.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from dataclasses import dataclass, field, replace
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
from fem_crossdiff.errors import ParameterError

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


class _Version(argparse._VersionAction):
    """``--version``, printed on rank 0 only."""

    def __call__(self, parser, namespace, values, option_string=None):
        if parser.comm is None or parser.comm.rank == 0:
            print(self.version, flush=True)
        raise SystemExit(0)


def build_parser(comm=None) -> argparse.ArgumentParser:
    """The argument parser of ``crossdiff`` (``run`` and ``check`` subcommands)."""
    parser = _Parser(prog="crossdiff", description="Cross-diffusion studies from TOML files "
                     "(Carrillo & Guo system (1.1) and its nonlocal version).")
    parser.comm = comm
    from fem_crossdiff import __version__

    parser.add_argument("--version", action=_Version, version=f"crossdiff {__version__}")
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
    run.add_argument("--overwrite", action="store_true",
                     help="replace the files of an earlier run in the output folder (without "
                     "it, a non-empty folder is refused unless --restart continues into it)")
    check = sub.add_parser("check", help="validate and print the resolved configuration")
    check.comm = comm
    check.add_argument("config", help="study TOML file")
    check.add_argument("--short", action="store_true",
                       help="apply the file's [short] overrides (also when $CI is set)")
    keys = sub.add_parser("keys", help="print the reference of every study-file key (Markdown)")
    keys.comm = comm
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
    if args.command == "keys":
        from fem_crossdiff.config.reference import key_reference

        _echo(comm, key_reference())
        return 0
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
                  log_level=args.log_level, output=args.output, overwrite=args.overwrite)
    except (ConfigError, ckpt.CheckpointError) as err:
        prefix = "config error" if isinstance(err, ConfigError) else "restart error"
        _echo(comm, f"crossdiff: {prefix} in {args.config}: {err}", sys.stderr)
        return 2
    except RuntimeError as err:  # collective failures (the step fell below dt_min)
        _echo(comm, f"crossdiff: run failed: {err}", sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- the run
#: Names of the API's parameters -> the TOML keys that set them.
_API_KEYS = {"eps": "model.eps", "kernel": "model.kernel", "coupling": "model.coupling",
             "subdivisions": "model.subdivisions", "boundary": "model.boundary",
             "scheme": "solver.scheme",
             "model": "solver.scheme", "degree": "solver.degree",
             "linear_solver": "solver.linear_solver", "negative_edges": "solver.negative_edges",
             "initial": "initial"}


def _config_error(err: ParameterError, context: str = "") -> ConfigError:
    """A library parameter error under the TOML key that set the parameter."""
    key = err.key
    base = key.split("[", 1)[0]
    toml = key if base == "initial" else _API_KEYS.get(base, key)
    allowed = f"{context}{err.allowed}" if context else err.allowed
    return ConfigError(toml, err.value, allowed)


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
    except ParameterError as err:  # raised on every rank: the checks use reduced mesh sizes
        raise _config_error(err, "rejected on this mesh: ") from None


def _particle_observer(cfg: StudyConfig, s):
    """The particle system (1.6) next to the PDE, sampled from the current densities.

    Each species' particles carry the weight ``a_l M_l / N`` with ``M_l`` the mass of its FE
    density, and move with the drift of the FE model's own mollification operator (same wall
    treatment as the nonlocal model), reflected at the walls.
    """
    from fem_crossdiff.compat import fem
    from fem_crossdiff.nonlocal_ import NonlocalParams
    from fem_crossdiff.observers import ParticleObserver, p1_species
    from fem_crossdiff.particles import ParticleParams, init_state
    from fem_crossdiff.particles.mesh_domain import FEDensitySampler, MeshDomain
    from fem_crossdiff.particles.mesh_drift import MeshOperatorDrift

    pc = cfg.particles
    samplers = []
    for f in p1_species(s):
        g = fem.Function(f.function_space)
        # restored states may hold round-off negatives (~1e-19): sample the positive part
        g.x.array[:] = np.maximum(f.x.array, 0.0)
        samplers.append(FEDensitySampler(g))
    params = ParticleParams(n_particles=pc.N, a=cfg.model.a, b=cfg.model.b,
                            sigma=cfg.model.sigma, m=cfg.model.m, eps=pc.eps, kernel=pc.kernel,
                            masses=tuple(sm.mass for sm in samplers))
    boundary = (cfg.model.nonlocal_params().boundary if cfg.model.type == "nonlocal"
                else NonlocalParams.boundary)
    nl = NonlocalParams(eps=pc.eps, kernel=pc.kernel, boundary=boundary)
    try:
        drift = MeshOperatorDrift(s.msh, params, nl)
    except ParameterError as err:
        raise ConfigError(f"particles.{err.key}", err.value, err.allowed) from None
    domain = MeshDomain(s.msh)
    state = replace(init_state(params, samplers, pc.seed, domain, s.comm), time=s.t)
    # the writer (which creates its folder) is attached once the output folder is prepared
    return ParticleObserver(params, domain, drift, state, None)


def run_study(cfg: StudyConfig, comm, *, restart: str | Path | None = None,
              quiet: bool = False, log_level: str = "INFO",
              output: str | Path | None = None, overwrite: bool = False) -> StudyResult:
    """Run a validated study (collective).

    Everything is built and checked (mesh, initial data, restart checkpoint, particles) before
    anything is written. The output folder must then be empty or absent, unless ``overwrite``
    (the earlier run's files are removed first) or ``restart`` continues the run whose
    checkpoint lies in that folder (its files after the restart point are dropped).

    Args:
        cfg: The study.
        comm: Communicator.
        restart: Checkpoint to continue from (any number of ranks may have written it).
        quiet: No progress lines; warnings and errors only.
        log_level: Logging level on rank 0.
        output: Output folder, overriding ``cfg.output.folder``.
        overwrite: Replace the files of an earlier run in the output folder.

    Returns:
        The :class:`StudyResult`.

    Raises:
        ConfigError: geometry that cannot be built, bad initial data, an output folder holding
            another run's files (same on every rank).
        CheckpointError: restart file missing or incompatible.
        RuntimeError: the run failed (step below ``dt_min``), nonlocal model unavailable.
    """
    from fem_crossdiff.log import get_logger

    level = logging.WARNING if quiet else getattr(logging, log_level.upper())
    before = get_logger(comm).level
    log = get_logger(comm, level)
    try:
        return _run(cfg, comm, restart, not quiet and cfg.output.progress, log, output,
                    overwrite)
    finally:
        get_logger(comm, before if comm.rank == 0 else None)


#: What a run writes into its folder (glob patterns); ``--overwrite`` removes exactly these.
RUN_FILES = ("config.toml", "diagnostics.csv", "densities.png", "densities_slices.png",
             "diagnostics.png", "particles.png", "animation.gif", "animation.mp4", "rho*.bp",
             "rho*.xdmf", "rho*.h5", "checkpoints", "particles", ".*.tmp*")


def _identity_settings(cfg: StudyConfig) -> dict:
    """The study's part of the checkpoint identity: all but ``time.T``, output and paths.

    The mesh file's path is left out (its content is hashed by the identity), so a moved mesh
    can continue; ``time.dt`` is kept: a changed first step changes every later step.
    """
    d = cfg.to_dict()
    for key in ("output", "title", "particles"):
        d.pop(key, None)
    d["time"].pop("T")
    d["geometry"].pop("msh", None)
    return d


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _prepare_folder(folder: Path, *, overwrite: bool, restart, step0: int) -> str:
    """Check and prepare the output folder (rank 0); returns what was done, in words.

    Raises:
        ConfigError: ``output.folder`` is not a folder, or holds files of another run and
            neither ``overwrite`` nor a restart from inside it was asked for.
    """
    if folder.exists() and not folder.is_dir():
        raise ConfigError("output.folder", str(folder), "must be a folder (this is a file)")
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    inside = restart is not None and folder.resolve() in Path(restart).resolve().parents
    if not entries:
        action = "new"
    elif overwrite:
        if inside:
            raise ConfigError("output.folder", str(folder), "--overwrite would delete the "
                              "checkpoint --restart continues from; continue without "
                              "--overwrite, or write into another --output")
        ours = {p for pat in RUN_FILES for p in folder.glob(pat)}
        foreign = [p.name for p in entries if p not in ours]
        if foreign:
            raise ConfigError("output.folder", str(folder),
                              f"holds files that no run writes ({', '.join(foreign[:3])}): "
                              "--overwrite only replaces a run's files; choose another "
                              "folder")
        for p in entries:
            _remove(p)
        action = f"overwrite (removed the {len(entries)} entries of the earlier run)"
    elif inside:
        # continue: drop what the earlier run wrote after the restart point (the CSV rows
        # are cut by the CSV observer, later checkpoints by the checkpoint observer)
        for p in folder.glob("rho_restart*"):
            num = p.name[len("rho_restart"):].split(".", 1)[0]
            if num.isdigit() and int(num) >= step0:
                _remove(p)
        action = f"continue (restart from step {step0})"
    else:
        what = ("; --restart continues only in the folder holding its checkpoint"
                if restart is not None else "")
        raise ConfigError("output.folder", str(folder),
                          f"is not empty (holds {', '.join(p.name for p in entries[:3])}"
                          f"{', ...' if len(entries) > 3 else ''}){what}: pass --overwrite to "
                          "replace the earlier run, --restart CHECKPOINT to continue it, or "
                          "choose another --output")
    folder.mkdir(parents=True, exist_ok=True)
    return action


def _run(cfg, comm, restart, progress, log, output, overwrite=False) -> StudyResult:
    from fem_crossdiff import driver
    from fem_crossdiff import observers as obs
    from fem_crossdiff.meshes import GmshError
    from fem_crossdiff.particles import ParticleWriter

    folder = Path(output if output is not None else cfg.output.folder)
    formats = cfg.output.formats
    # 1. Build and validate everything; nothing is written before step 2.
    try:
        geo = cfg.geometry.build(comm)
    except ParameterError as err:
        raise ConfigError(f"geometry.{err.key}", err.value,
                          f"cannot build the mesh: {err.allowed}") from None
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
    except ParameterError as err:
        raise _config_error(err) from None
    # The mesh and the initial data exist here: checks of the mesh against the study go here,
    # before the checkpoint is read and before any file is written.
    tp = cfg.time.params()
    identity = ckpt.run_identity(s, _identity_settings(cfg))
    step0, suffix = 0, ""
    if restart is not None:
        info = ckpt.load_checkpoint(restart, s, identity=identity)
        step0, suffix = info.step, f"_restart{info.step:06d}"
        next_dt = min(max(info.next_dt, tp.dt_min), tp.dt_max or np.inf)
        tp = cfg.time.params(dt=next_dt) if next_dt >= tp.dt_min else tp
        log.info("restarted from %s: step %d, t = %.6g", restart, info.step, info.t)
    parts = None
    if cfg.particles is not None:
        if restart is not None:
            log.info("particles are not checkpointed: re-sampled from the restored densities")
        try:
            parts = _particle_observer(cfg, s)
        except ConfigError:
            raise
        except ValueError as err:
            raise ConfigError("particles", cfg.particles.N,
                              f"cannot start the particles: {err}") from None
    animation = None  # checked here: mp4 needs ffmpeg
    if cfg.output.animation != "none":
        try:
            animation = obs.AnimationObserver(folder / "animation", tp.T, cfg.output.animation,
                                              cfg.output.animation_frames, title=cfg.title)
        except ParameterError as err:
            raise ConfigError(f"output.{err.key}", err.value, err.allowed) from None
    # 2. The output folder: empty, overwritten on request, or the folder of the continued run.
    action, msg = None, None
    if comm.rank == 0:
        try:
            action = _prepare_folder(folder, overwrite=overwrite, restart=restart, step0=step0)
        except ConfigError as err:
            msg = err
        except OSError as err:
            msg = ConfigError("output.folder", str(folder), f"cannot be prepared ({err})")
    action, msg = comm.bcast((action, msg), root=0)
    if msg is not None:
        raise msg
    log.info("output folder %s: %s", folder, action)
    # 3. Write.
    if comm.rank == 0:
        ckpt.atomic_write(folder / "config.toml", lambda f: f.write(
            (f"# resolved from {cfg.source}\n" + to_toml(cfg.to_dict())).encode()))
    comm.barrier()
    observers = []
    csv_obs = None
    if "csv" in formats:
        csv_obs = obs.CsvObserver(folder / "diagnostics.csv",
                                  keep_until=step0 if restart is not None else None)
        observers.append(csv_obs)
    fields = [f for f in ("vtx", "xdmf") if f in formats]
    if fields:
        observers.append(obs.FieldObserver(folder / f"rho{suffix}", fields,
                                           every=cfg.output.every))
    if animation is not None:
        observers.append(animation)
    if "png" in formats:
        observers.append(obs.SnapshotObserver(folder / "densities.png", tp.T, cfg.title))
        observers.append(obs.DiagnosticsPlotObserver(
            folder / "diagnostics.png", cfg.title,
            previous=(lambda: csv_obs.previous) if csv_obs is not None else None))
    checkpoints = obs.CheckpointObserver(folder / "checkpoints", cfg.output.checkpoint_every,
                                         identity)
    observers.append(checkpoints)
    if parts is not None:
        parts.writer = ParticleWriter(folder / "particles", every=cfg.particles.output_every,
                                      comm=s.comm)
        observers.append(parts)
        if "png" in formats and gdim == 2:
            observers.append(obs.ParticlePlotObserver(parts, folder / "particles.png"))
    rows = driver.run(s, tp, observers, progress=progress, step0=step0)
    comm.barrier()
    first, end = rows[0], rows[-1]
    drift = max(abs(end[f"mass_{k}"] / first[f"mass_{k}"] - 1.0)
                for k in range(1, s.params.n + 1))
    log.info("done: %d steps to t = %.6g, relative mass drift %.2e, energy %.6g -> %.6g; "
             "output in %s", end["step"] - step0, s.t, drift, first["energy"], end["energy"],
             folder)
    return StudyResult(rows=rows, solver=s, folder=folder, checkpoints=checkpoints.written,
                       particles=None if parts is None else parts.state)
