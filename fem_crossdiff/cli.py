"""Command line: ``crossdiff run study.toml`` and ``crossdiff check study.toml``.

Argument parsing, exit codes and one-line messages only: the study itself (assembly, checks,
outputs, the output folder's safety) is :mod:`fem_crossdiff.study`, which Python scripts call
the same way (``fem_crossdiff.load_study(path).run()``).

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
and CSV rows are dropped).
``check`` validates everything ``run`` would (the file, its ``[short]`` overrides, the memory
estimate, the output folder, and on the mesh: the initial data, ``eps`` against ``h_max``;
:func:`fem_crossdiff.study.prepare`) and prints the resolved configuration (defaults filled
in, as TOML that ``run`` accepts); ``check --no-mesh`` checks the file only. ``keys`` prints the
reference of every key (``docs/keys.md``), ``--version`` the version.

Works the same under ``mpirun -n P``: only rank 0 prints. Every configuration error gives exit
code 2 and one line on stderr naming the dotted key, the value and what is allowed; a run that
fails (e.g. the step falls below ``dt_min``) gives exit code 1; SIGINT/SIGTERM stop after the
current step with exit code 130/143. An error on one rank only is agreed on by every rank or
ends the job within seconds (:mod:`fem_crossdiff.failsafe`, ``docs/failsafe.md``).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from functools import partial
from pathlib import Path

from fem_crossdiff import checkpoint as ckpt
from fem_crossdiff import failsafe, outdir
from fem_crossdiff.config import short_mode_requested, to_toml
from fem_crossdiff.diskio import OutputError, plain
from fem_crossdiff.errors import ParameterError

__all__ = ["main", "message", "build_parser"]

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
    check.add_argument("--no-mesh", action="store_true",
                       help="check the file only: no mesh, initial data or solver (fast)")
    keys = sub.add_parser("keys", help="print the reference of every study-file key (Markdown)")
    keys.comm = comm
    return parser


def _echo(comm, text: str, stream=None) -> None:
    if comm.rank == 0:
        print(text, file=stream or sys.stdout, flush=True)


def main(argv: list[str] | None = None, comm=None) -> int:
    """Entry point of ``crossdiff`` and ``python -m fem_crossdiff``.

    Every outcome is one line on rank 0's stderr and an exit code, also under MPI when the
    error happened on one rank only (:mod:`fem_crossdiff.failsafe`: the ranks agree on it, or
    the job is aborted within seconds); set ``CROSSDIFF_TRACEBACK=1`` to also see tracebacks.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).
        comm: Communicator (default ``MPI.COMM_WORLD``).

    Returns:
        Exit code: 0 success, 1 failed run, 2 configuration or usage error, 130/143
        interrupted by SIGINT/SIGTERM.
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
    report = partial(_abort_line, args.config)
    with failsafe.interrupt_handlers(comm):
        try:
            with failsafe.abort_on_error(comm, report=report):
                return _command(args, comm)
        except Exception as err:  # agreed on every rank (or this rank aborted the job)
            return _fail(comm, err, args.config)
        except KeyboardInterrupt as err:
            return _fail(comm, err, args.config)


def _fail(comm, err: BaseException, source: str) -> int:
    _echo(comm, message(err, source), sys.stderr)
    if os.environ.get("CROSSDIFF_TRACEBACK") and getattr(err, "failed_rank", comm.rank) == \
            comm.rank:
        traceback.print_exception(err, file=sys.stderr)
    return exit_code(err)


def exit_code(err: BaseException) -> int:
    """The exit code of ``crossdiff`` for ``err`` (a bad checkpoint is bad input: 2)."""
    return 2 if isinstance(err, ckpt.CheckpointError) else failsafe.exit_code(err)


def message(err: BaseException, source: str) -> str:
    """The one line ``crossdiff`` prints for ``err`` (``source``: the study file)."""
    from fem_crossdiff.driver import StepSizeError

    if isinstance(err, ckpt.CheckpointError):
        text = f"crossdiff: restart error in {source}: {err}"
    elif isinstance(err, ParameterError):
        text = f"crossdiff: config error in {source}: {err}"
    elif isinstance(err, KeyboardInterrupt):
        sig = err if isinstance(err, failsafe.Interrupted) else failsafe.Interrupted()
        text = (f"crossdiff: {sig} (exit code {failsafe.exit_code(sig)}); the checkpoints "
                "written so far are intact")
    elif isinstance(err, (StepSizeError, MemoryError, outdir.UnsafePathError)):
        text = f"crossdiff: run failed: {failsafe.one_line(err)}"
    elif isinstance(err, OutputError):  # a full disk, an I/O error: not a bug
        rank = getattr(err, "failed_rank", None)
        where = f" on rank {rank}" if rank is not None and rank != 0 else ""
        text = f"crossdiff: run failed{where}: {err}"
    else:
        rank = getattr(err, "failed_rank", None)
        where = f" on rank {rank}" if rank is not None else ""
        text = (f"crossdiff: run failed{where}: {failsafe.one_line(err)} (unexpected: "
                "CROSSDIFF_TRACEBACK=1 shows the traceback)")
    return plain(text)  # one line without colour codes, whatever the message held


def _abort_line(source: str, err: BaseException, rank: int, grace: float) -> str:
    return (f"{message(err, source)} [rank {rank}: the other ranks did not reach the same "
            f"point within {grace:g} s; aborting the job]")


def _command(args, comm) -> int:
    from fem_crossdiff.study import Study, load_study_config

    short = short_mode_requested(args.short)
    study = Study(load_study_config(args.config, short, comm), comm)
    cfg = study.config
    if args.command == "check":
        if args.no_mesh:
            from fem_crossdiff.study import check_output_folder

            check_output_folder(Path(cfg.output.folder).expanduser(), comm)
        else:
            study.check()
        mode = " (short mode)" if short else ""
        what = "file only" if args.no_mesh else "file and mesh"
        _echo(comm, f"# {args.config}: valid{mode} ({what}); resolved configuration:\n"
              + to_toml(cfg.to_dict()))
        return 0
    from fem_crossdiff.watchdog import CLI_STALL_TIMEOUT

    result = study.run(restart=args.restart, quiet=args.quiet, log_level=args.log_level,
                       output=args.output, overwrite=args.overwrite,
                       stall_timeout=CLI_STALL_TIMEOUT)
    if args.quiet:  # the closing log line is INFO, hidden by --quiet: say where it went
        _echo(comm, f"crossdiff: {result.rows[-1]['step']} steps to t = {result.solver.t:.6g}; "
              f"output in {result.folder}")
    return 0
