"""Shared pytest set-up: import order, MPI-safe temporary folders, quiet non-root ranks.

The same suite runs serially and under ``mpirun -n 2``; only rank 0 reports, the others print
just their own failures (so a rank-local failure is never silent).
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest
from mpi4py import MPI

import fem_crossdiff.compat  # noqa: F401  (orders MPI before dolfinx/petsc4py)
from fem_crossdiff.problem import free_released

COMM = MPI.COMM_WORLD


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """Silence the terminal reporter on ranks other than 0."""
    if COMM.rank > 0:
        reporter = config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None:
            config.pluginmanager.unregister(reporter)


def pytest_runtest_logreport(report):
    """On ranks > 0, still print failures (rank 0 cannot see them)."""
    if COMM.rank > 0 and report.failed:
        sys.stderr.write(f"\n[rank {COMM.rank}] FAILED {report.nodeid}\n{report.longreprtext}\n")


@pytest.fixture
def comm():
    """The world communicator."""
    return COMM


@pytest.fixture
def mpi_tmp_path(tmp_path_factory) -> Path:
    """A temporary folder shared by all ranks (rank 0's, broadcast), for collective writers."""
    path = tmp_path_factory.mktemp("mpi") if COMM.rank == 0 else None
    return Path(COMM.bcast(str(path) if path is not None else None, root=0))


@pytest.fixture(autouse=True)
def _collect_garbage():
    """Free each test's meshes and PETSc objects at the same point on every rank.

    Whatever a test leaves in reference cycles is collected here, and PETSc objects freed on
    parallel communicators (kept in PETSc's garbage list, see
    :func:`fem_crossdiff.problem.free_released`) are destroyed collectively, with their
    communicators, so that the memory of one test does not carry into the next.
    """
    yield
    gc.collect()
    free_released(COMM)
