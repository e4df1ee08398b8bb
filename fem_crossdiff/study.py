"""A study, from its TOML file to its outputs: the one path of the CLI and of Python scripts.

``load_study(path).run()`` does from Python exactly what ``crossdiff run path`` does (same
checks, same outputs, same folder safety); ``crossdiff`` adds only argument parsing, exit codes
and its one-line messages (:mod:`fem_crossdiff.cli`)::

    import fem_crossdiff as fx

    study = fx.load_study("demos/segregation_disk.toml", short=True)
    result = study.run(output="out")        # diagnostics.csv, pictures, checkpoints, ...
    print(result.rows[-1]["energy"], result.folder)

Assembly (:func:`prepare`): the memory estimate and the ``.msh`` file (rank 0), the geometry
(gmsh on rank 0, distributed), the solver from the registry entry and options the study
resolved (:attr:`fem_crossdiff.config.StudyConfig.entry`, ``options``), the initial data, the
checks that need the mesh (:func:`validate_on_mesh`) and the particles. Running
(:func:`run_study`): the output folder locked and checked (empty, ``overwrite``, or the folder
of the continued run), the resolved ``config.toml``, the observers of ``[output]`` and the
driver. Nothing is written before everything is built and checked.
"""

from __future__ import annotations

import gc
import logging
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fem_crossdiff import checkpoint as ckpt
from fem_crossdiff import failsafe, outdir
from fem_crossdiff.config import (
    ConfigError,
    StudyConfig,
    load_config,
    short_mode_requested,
    to_toml,
)
from fem_crossdiff.config.schema import path_text
from fem_crossdiff.errors import ParameterError

__all__ = ["RUN_FILES", "Study", "StudyResult", "check_output_folder", "load_study", "prepare",
           "run_study", "validate_on_mesh"]


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


def load_study_config(path: str, short: bool, comm) -> StudyConfig:
    """The study, read and validated on rank 0 (file-system checks on one rank).

    The verdict, an error included, is shared, so that every rank raises the same one.
    """
    cfg, error = None, None
    if comm.rank == 0:
        try:
            cfg = load_config(path, short=short)
        except Exception as err:  # noqa: BLE001 (shared with the other ranks, then raised)
            error = failsafe.portable(err, 0)
    cfg, error = comm.bcast((cfg, error), root=0)
    if error is not None:
        raise error
    return cfg


def check_output_folder(folder: Path, comm, key: str = "output.folder") -> None:
    """Refuse an output folder that is a file, lies under a file, or cannot be written.

    Rank 0 looks (and probes with a temporary file, removed at once: permissions alone say
    nothing for root or on read-only file systems); every rank gets the verdict.

    Raises:
        ConfigError: keyed ``key``, naming the folder and the reason.
    """
    reason = None
    if comm.rank == 0:
        reason = _output_folder_problem(Path(folder))
    reason = comm.bcast(reason, root=0)
    if reason is not None:
        raise ConfigError(key, str(folder), reason)


def _output_folder_problem(folder: Path) -> str | None:
    import tempfile

    try:
        probe = folder.absolute()
        while not probe.exists():
            if probe.is_symlink():
                return f"{probe} is a broken symbolic link"
            probe = probe.parent
        if not probe.is_dir():
            return ("is a file, not a folder" if probe == folder.absolute()
                    else f"lies under {probe}, which is a file, not a folder")
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        where = "" if probe == folder.absolute() else f" (its existing parent {probe})"
        return f"cannot be written{where}: {err.strerror or err}"
    except ValueError as err:  # an embedded NUL
        return f"is not a valid path ({err})"
    return None


def _release(prepared, comm) -> None:
    """Drop a checked solver now, collectively (``check`` does not keep it)."""
    from fem_crossdiff.problem import free_released

    del prepared
    gc.collect()
    free_released(comm)


# --------------------------------------------------------------------------- the run
#: Names of the API's parameters -> the TOML keys that set them.
_API_KEYS = {"eps": "model.eps", "kernel": "model.kernel", "coupling": "model.coupling",
             "subdivisions": "model.subdivisions", "boundary": "model.boundary",
             "scheme": "solver.scheme", "degree": "solver.degree",
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
    from fem_crossdiff.petsc_options import to_petsc
    from fem_crossdiff.solver import CrossDiffusionSolver

    kwargs = dict(degree=cfg.solver.degree, scheme=cfg.entry.scheme, options=cfg.options,
                  linear_solver=cfg.solver.linear_solver,
                  petsc_options=to_petsc(dict(cfg.solver.petsc)),
                  positivity_tol=cfg.solver.positivity_tol,
                  negative_edges=cfg.solver.negative_edges)
    if cfg.model.type == "nonlocal":
        kwargs["nonlocal_params"] = cfg.model.nonlocal_params()
    params = cfg.model.params()
    if cfg.family_params is not None:  # the family's sigma_k replace model.sigma
        kwargs["family"] = cfg.family_params
        params = replace(params, sigma=min(cfg.family_params.sigma))
    try:
        return CrossDiffusionSolver(msh, params, **kwargs)
    except ParameterError as err:  # raised on every rank: the checks use reduced mesh sizes
        if err.key.startswith(("interactions", "potentials", "growth")):
            # the family's checks on the mesh: keyed as in [family]
            raise ConfigError("family." + err.key.replace(".kernel.length", ".length"),
                              err.value, f"rejected on this mesh: {err.allowed}") from None
        raise _config_error(err, "rejected on this mesh: ") from None


def prepare(cfg: StudyConfig, comm, folder: str | Path | None = None):
    """Everything ``run`` builds before its first output, each part checked (collective).

    The memory estimate (before any mesh), the mesh, the solver (which checks the model on
    the mesh: ``eps >= 2 h_max`` for the nonlocal model), the initial data (finite,
    nonnegative, positive mass) and :func:`validate_on_mesh`. ``crossdiff check`` calls it and
    drops the result; ``run`` calls it before it writes anything.

    Args:
        cfg: The study.
        comm: Communicator.
        folder: The output folder whose file system must hold the run's files (default:
            ``output.folder``).

    Returns:
        ``(geometry, solver)``, the solver holding the initial data.

    Raises:
        ConfigError: naming the TOML key, on every rank.
    """
    from fem_crossdiff import resources

    machines = len(set(comm.allgather(_host())))
    verdict = None
    if comm.rank == 0:  # one rank reads the machine's memory and the .msh file
        try:
            where = Path(cfg.output.folder if folder is None else folder).expanduser()
            resources.check(cfg, machines=machines, folder=where)
            if cfg.geometry.msh is not None:
                _check_msh(cfg.geometry.msh)
        except ParameterError as err:
            verdict = ConfigError(_toml_key(err.key), err.value, err.allowed)
    verdict = comm.bcast(verdict, root=0)
    if verdict is not None:
        raise verdict
    geo = _build_geometry(cfg, comm)
    failsafe.reinstall_handlers()  # gmsh resets SIGTERM's handler
    msh = geo.mesh
    funcs = [ic.function(msh.geometry.dim) for ic in cfg.initial]
    s = _make_solver(cfg, msh)
    try:
        s.set_initial(funcs)
    except ParameterError as err:
        raise _config_error(err) from None
    validate_on_mesh(cfg, s)
    return geo, s


def _toml_key(key: str) -> str:
    return key if "." in key or key.startswith("<") else f"geometry.{key}"


def _host() -> str:
    from fem_crossdiff.compat import MPI

    return MPI.Get_processor_name()


def validate_on_mesh(cfg: StudyConfig, s) -> None:
    """The checks of a study that need its mesh, beyond the solver's own (collective).

    * ``particles.eps >= 2 h_max`` (the particles' drift uses the FE mollification operator
      on this mesh, which needs the kernel to span two cells everywhere);
    * PETSc settings that cannot work on this number of ranks (``ilu``/``icc`` are serial
      preconditioners; parallel ``lu``/``cholesky`` need MUMPS or SuperLU_dist).

    Raises:
        ConfigError: naming the TOML key, on every rank (the checks use reduced values).
    """
    from fem_crossdiff.discretisation import mesh_sizes  # the h_max the operator checks

    comm = s.comm
    if cfg.particles is not None and not (cfg.model.type == "nonlocal"
                                          and cfg.model.allow_small_eps):
        hmax = mesh_sizes(s.msh).h_max
        if cfg.particles.eps < 2.0 * hmax:
            raise ConfigError("particles.eps", cfg.particles.eps,
                              f"must be >= 2 h_max = {2.0 * hmax:.4g} on this mesh (the "
                              "particles' mollifier must span two cells; refine the mesh or "
                              "raise eps)")
    opts = dict(cfg.solver.petsc)
    if comm.size > 1:
        pc = opts.get("pc_type")
        if pc in ("ilu", "icc"):
            raise ConfigError("solver.petsc.pc_type", pc, f"runs on one rank only (this job "
                              f"has {comm.size}): use pc_type = \"bjacobi\" with sub_pc_type = "
                              f"\"{pc}\"")
        if pc in ("lu", "cholesky") and opts.get("pc_factor_mat_solver_type",
                                                 "petsc") == "petsc":
            raise ConfigError("solver.petsc.pc_factor_mat_solver_type",
                              opts.get("pc_factor_mat_solver_type", "<missing>"),
                              f"a parallel {pc} factorisation needs \"mumps\" or "
                              "\"superlu_dist\" (PETSc's own runs on one rank only)")


def _check_msh(path: str) -> None:
    """A ``.msh`` file that ``read_msh`` can turn into a mesh (rank 0; gmsh, no DOLFINx).

    Raises:
        ParameterError: keyed ``geometry.msh``: unreadable by gmsh, no cells, no physical
            group of cells, or several cell types in the top dimension.
    """
    import gmsh

    own = not gmsh.isInitialized()
    if own:
        # interruptible=False: gmsh's Python API otherwise sets SIGINT to SIG_DFL and never
        # restores it, so Ctrl-C would kill the process (CLI in-process, notebooks) for good
        gmsh.initialize(["-noenv"], readConfigFiles=False, interruptible=False)
        gmsh.option.setNumber("General.Terminal", 0)
    before = gmsh.model.getCurrent() if not own else None
    name = "fem-crossdiff-check"
    try:
        gmsh.model.add(name)
        try:
            gmsh.merge(str(path))
        except Exception as err:  # noqa: BLE001 (gmsh raises plain Exceptions)
            raise ParameterError("geometry.msh", path, f"gmsh cannot read it ({err})") from None
        tdim = gmsh.model.getDimension()
        types = gmsh.model.mesh.getElementTypes(tdim) if tdim > 0 else []
        if tdim <= 0 or len(types) == 0:
            raise ParameterError("geometry.msh", path, "has no cells (an empty or "
                                 "geometry-only file: mesh it with gmsh first)")
        if len(types) > 1:
            names = [gmsh.model.mesh.getElementProperties(t)[0] for t in types]
            raise ParameterError("geometry.msh", path, f"mixes cell types in dimension {tdim} "
                                 f"({', '.join(names)}): one cell type is supported")
        if not gmsh.model.getPhysicalGroups(tdim):
            raise ParameterError("geometry.msh", path, f"has no physical group of "
                                 f"{tdim}D cells: add one in gmsh (Physical Surface/Volume) "
                                 "so that the cells are kept")
    finally:
        gmsh.model.remove()
        if own:
            gmsh.finalize()
        elif before:
            gmsh.model.setCurrent(before)


def _build_geometry(cfg: StudyConfig, comm):
    from fem_crossdiff.meshes import GmshError

    try:
        return cfg.geometry.build(comm)
    except ParameterError as err:
        raise ConfigError(f"geometry.{err.key}", err.value,
                          f"cannot build the mesh: {err.allowed}") from None
    except (ValueError, RuntimeError, FileNotFoundError, GmshError) as err:
        key = "geometry.msh" if cfg.geometry.msh is not None else "geometry"
        raise ConfigError(key, cfg.geometry.msh or cfg.geometry.builder,
                          f"cannot build the mesh: {err}") from None


def _particle_observer(cfg: StudyConfig, s, step0: int = 0):
    """The particle system (1.6) next to the PDE, sampled from the current densities.

    Each species' particles carry the weight ``a_l M_l / N`` with ``M_l`` the mass of its FE
    density, and move with the drift of the FE model's own mollification operator (same wall
    treatment as the nonlocal model), reflected at the walls.
    """
    from fem_crossdiff.compat import fem
    from fem_crossdiff.models.nonlocal_system import NonlocalParams
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
    # a restart goes on with the restored step's number and time (outputs are numbered by it)
    state = replace(init_state(params, samplers, pc.seed, domain, s.comm), time=s.t,
                    step_index=step0)
    # the writer (which creates its folder) is attached once the output folder is prepared
    return ParticleObserver(params, domain, drift, state, None, family=cfg.family_params)


def run_study(cfg: StudyConfig, comm, *, restart: str | Path | None = None,
              quiet: bool = False, log_level: str = "INFO",
              output: str | Path | None = None, overwrite: bool = False,
              default_stall_timeout: float = 0.0) -> StudyResult:
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
        default_stall_timeout: The stall watchdog's timeout where the study's ``[resources]
            stall_timeout`` is not set (``0``: off; ``crossdiff run`` passes 600 s;
            :mod:`fem_crossdiff.watchdog`).

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
    locks: list[outdir.FolderLock] = []  # the output folder's lock, held until the end
    try:
        return _run(cfg, comm, restart, not quiet and cfg.output.progress, log, output,
                    overwrite, default_stall_timeout, locks)
    finally:
        for lock in locks:
            lock.release()
        get_logger(comm, before if comm.rank == 0 else None)


#: What a run writes into its folder (glob patterns); ``--overwrite`` removes exactly these.
RUN_FILES = ("config.toml", "diagnostics.csv", "densities.png", "densities_slices.png",
             "diagnostics.png", "particles.png", "animation.gif", "animation.mp4", "rho*.bp",
             "rho*.xdmf", "rho*.h5", "checkpoints", "particles", ".*.tmp*",
             f"{outdir.TMP_PREFIX}*")


def _identity_settings(cfg: StudyConfig) -> dict:
    """The study's part of the checkpoint identity: all but ``time.T``, output and paths.

    The mesh file's path is left out (its content is hashed by the identity), so a moved mesh
    can continue; ``time.dt`` is kept: a changed first step changes every later step. The
    ``[resources]`` limits change no result, so a restart may change them.
    """
    d = cfg.to_dict()
    for key in ("output", "title", "particles", "resources"):
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
    # the lock file is this run's own (taken before): neither content nor a reason to refuse
    entries = (sorted(p for p in folder.iterdir() if p.name != outdir.LOCK_NAME)
               if folder.is_dir() else [])
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
        links = outdir.find_links(folder)
        if links:
            raise ConfigError("output.folder", str(folder), "holds symbolic links ("
                              f"{', '.join(links[:3])}{', ...' if len(links) > 3 else ''}): "
                              "a run never writes through a link; remove them to continue "
                              "the run there")
        leftovers = outdir.remove_temporaries(folder)  # of a run killed during a write
        # continue: drop what the earlier run wrote after the restart point (the CSV rows
        # are cut by the CSV observer, later checkpoints by the checkpoint observer)
        for p in folder.glob("rho_restart*"):
            num = p.name[len("rho_restart"):].split(".", 1)[0]
            if num.isdigit() and int(num) >= step0:
                _remove(p)
        action = f"continue (restart from step {step0})"
        if leftovers:
            action += f"; removed {len(leftovers)} temporary file(s) of a killed run"
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


def _run(cfg, comm, restart, progress, log, output, overwrite=False,
         default_stall_timeout=0.0, locks=None) -> StudyResult:
    from fem_crossdiff import driver
    from fem_crossdiff import observers as obs
    from fem_crossdiff.particles import ParticleWriter

    key = "output.folder" if output is None else "--output"
    folder = Path(path_text(key, str(output if output is not None else cfg.output.folder)))
    folder = folder.expanduser()
    check_output_folder(folder, comm, key)
    formats = cfg.output.formats
    # 1. Build and validate everything (every check of the study, the mesh's included);
    # nothing is written before step 2.
    geo, s = prepare(cfg, comm, folder)
    msh = geo.mesh
    gdim = msh.geometry.dim
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
            parts = _particle_observer(cfg, s, step0)
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
    # 2. The output folder: locked (before anything in it is touched; released by
    # run_study), then empty, overwritten on request, or the folder of the continued run.
    action, msg, stale = None, None, None
    if comm.rank == 0:
        lock = outdir.FolderLock(folder)
        try:
            lock.acquire()
            if locks is not None:
                locks.append(lock)
            stale = lock.taken_over
            action = _prepare_folder(folder, overwrite=overwrite, restart=restart, step0=step0)
        except outdir.LockedError as err:
            msg = ConfigError(key, str(folder), str(err))
        except ConfigError as err:
            msg = err
        except OSError as err:
            msg = ConfigError("output.folder", str(folder), f"cannot be prepared ({err})")
    action, msg, stale = comm.bcast((action, msg, stale), root=0)
    if stale is not None:
        log.warning("output folder %s: took over the stale lock of %s", folder, stale)
    if msg is not None:
        raise msg
    log.info("output folder %s: %s", folder, action)
    # 3. Write.
    error = None
    if comm.rank == 0:
        try:
            ckpt.atomic_write(folder / "config.toml", lambda f: f.write(
                (f"# resolved from {cfg.source}\n" + to_toml(cfg.to_dict())).encode()))
        except OSError as err:  # raised on every rank: none waits for rank 0 in vain
            error = err
    error = comm.bcast(error, root=0)
    if error is not None:
        raise error
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
                                      comm=s.comm,
                                      keep_until=step0 if restart is not None else None)
        observers.append(parts)
        if "png" in formats and gdim == 2:
            observers.append(obs.ParticlePlotObserver(parts, folder / "particles.png"))
    stall = cfg.resources.stall_timeout
    stall = default_stall_timeout if stall is None else stall
    if stall:  # last: its close (the helper's end) follows every other observer's
        from fem_crossdiff.watchdog import StallWatchdog

        observers.append(StallWatchdog(stall, prefix="crossdiff"))
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


@dataclass(frozen=True)
class Study:
    """A validated study bound to a communicator: what ``crossdiff run`` runs.

    Attributes:
        config: The validated study (:class:`~fem_crossdiff.config.StudyConfig`).
        comm: The communicator it runs on.
    """

    config: StudyConfig
    comm: object

    def check(self) -> None:
        """Everything :meth:`run` checks before writing (``crossdiff check``; collective).

        Raises:
            ConfigError: naming the TOML key, on every rank.
        """
        check_output_folder(Path(self.config.output.folder).expanduser(), self.comm)
        _release(prepare(self.config, self.comm), self.comm)

    def run(self, *, output: str | Path | None = None, restart: str | Path | None = None,
            overwrite: bool = False, quiet: bool = False, log_level: str = "INFO",
            stall_timeout: float = 0.0) -> StudyResult:
        """Run the study (collective), writing what ``crossdiff run`` writes.

        Args:
            output: Output folder, overriding ``output.folder``.
            restart: A checkpoint to continue from.
            overwrite: Replace the files of an earlier run in the output folder.
            quiet: No progress lines.
            log_level: Logging level on rank 0.
            stall_timeout: The stall watchdog's timeout where ``[resources] stall_timeout``
                is not set (0: off; ``crossdiff run`` uses 600 s).

        Returns:
            The :class:`StudyResult`.
        """
        return run_study(self.config, self.comm, restart=restart, quiet=quiet,
                         log_level=log_level, output=output, overwrite=overwrite,
                         default_stall_timeout=stall_timeout)


def load_study(path: str | Path, *, short: bool | None = None, comm=None) -> Study:
    """Read and validate a study file (rank 0 reads it; every rank gets the same verdict).

    Args:
        path: The TOML file.
        short: Apply its ``[short]`` overrides (None: when the ``CI`` environment variable is
            set, as ``crossdiff``).
        comm: Communicator (default ``MPI.COMM_WORLD``).

    Raises:
        ConfigError: an unreadable file or any invalid entry, on every rank.
    """
    from fem_crossdiff.compat import MPI

    comm = MPI.COMM_WORLD if comm is None else comm
    short = short_mode_requested(False) if short is None else short
    return Study(load_study_config(str(path), short, comm), comm)
