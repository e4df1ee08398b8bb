"""Rank-0 logging: one logger for the project, silent on the other ranks."""

from __future__ import annotations

import logging
import sys

_LOGGER_NAME = "fem_crossdiff"


class _StderrHandler(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is when a record is emitted.

    A handler bound to the ``sys.stderr`` of its creation keeps writing to that object after
    it was replaced and closed (pytest's capture, a notebook's redirection), which turns every
    later log line into a "Logging error" traceback.
    """

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property decides
        pass


def demo_options(argv: list[str], default_outdir: str) -> tuple[str, bool]:
    """A demo's command line: ``[outdir] [--quiet]``.

    Returns:
        The output folder and whether to show progress lines (rank 0; off with ``--quiet``).
    """
    args = [a for a in argv if a != "--quiet"]
    return (args[0] if args else default_outdir), "--quiet" not in argv


def get_logger(comm=None, level: int | str | None = None) -> logging.Logger:
    """Return the project logger, printing to stderr on rank 0 only.

    Args:
        comm: An mpi4py communicator; ``None`` means ``MPI.COMM_WORLD`` if mpi4py imports,
            else serial.
        level: Logging level on rank 0 (other ranks only report errors); ``None`` keeps the
            level already set (INFO the first time).

    Returns:
        The configured ``logging.Logger``.
    """
    rank = 0
    if comm is None:
        try:
            from mpi4py import MPI

            comm = MPI.COMM_WORLD
        except ImportError:  # pragma: no cover
            comm = None
    if comm is not None:
        rank = comm.rank
    logger = logging.getLogger(_LOGGER_NAME)
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[fem-crossdiff] %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    if rank != 0:
        logger.setLevel(logging.ERROR)
    elif level is not None:
        logger.setLevel(level)
    elif logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return logger
