"""Solvers return what they hold: PETSc objects, meshes and MPI communicators.

A geometry sweep builds a mesh and a solver per case in one process. Every PETSc object of a
mesh lives on a duplicate of the mesh's communicator; if the objects of freed solvers are never
destroyed, each case keeps two MPI communicators and its matrices, and MPICH aborts after about
a thousand cases ("Too many communicators"). These tests count the communicators that can still
be created before and after many dropped solvers, which is exact and machine-independent.
"""

from __future__ import annotations

import gc
import resource

import numpy as np
import pytest

from fem_crossdiff.compat import MPI, mesh
from fem_crossdiff.config import parse_config
from fem_crossdiff.models.nonlocal_system import NonlocalParams
from fem_crossdiff.params import ModelParams
from fem_crossdiff.problem import _tracked, free_communicators, free_released
from fem_crossdiff.solver import CrossDiffusionSolver
from fem_crossdiff.study import run_study

COMM = MPI.COMM_WORLD
PARAMS = ModelParams(a=(1.0, 2.0), b=(1.0, 0.5), m=2.0, sigma=1e-3)



def _settle():
    gc.collect()
    free_released(COMM)


def _solver_case(i: int) -> None:
    msh = mesh.create_unit_square(COMM, 6 + i % 3, 6)
    kind = i % 3
    if kind == 2:
        s = CrossDiffusionSolver(msh, PARAMS, nonlocal_params=NonlocalParams(eps=0.45))
    else:
        s = CrossDiffusionSolver(msh, PARAMS, scheme="upwind" if kind == 0 else None)
    s.set_initial([lambda x: 0.5 + 0.2 * np.tanh(3 * x[0] - 1.3),
                   lambda x: 0.3 - 0.1 * np.tanh(3 * x[1] - 1.3)])
    assert s.step(1e-3, "ie").accepted


def test_dropped_solvers_return_their_communicators():
    """Twelve meshes with a solver each, dropped: no communicator and no record is kept.

    Before solvers freed what they hold, each case kept two communicators (24 here): the
    test allows none to be lost beyond the probe's own.
    """
    _settle()
    before, kept = free_communicators(COMM), set(_tracked)  # (meshes other modules hold)
    for i in range(12):
        _solver_case(i)
    _settle()
    after = free_communicators(COMM)
    assert after >= before - 1, (before, after)
    assert set(_tracked) <= kept  # every mesh of this test is gone, so is its record


def test_solvers_freed_on_a_kept_mesh_are_destroyed():
    """Solvers made one after another on one mesh: the mesh's record stays, with no garbage."""
    _settle()
    before, kept = free_communicators(COMM), set(_tracked)
    msh = mesh.create_unit_square(COMM, 6, 6)
    for _ in range(4):
        s = CrossDiffusionSolver(msh, PARAMS, scheme="upwind")
        s.set_initial([0.5, 0.3])
        assert s.step(1e-3, "ie").accepted
        del s
    _settle()
    mine = [rec for key, rec in _tracked.items() if key not in kept]
    assert len(mine) == 1 and mine[0].live == 0
    del msh, mine
    _settle()
    assert set(_tracked) <= kept
    assert free_communicators(COMM) >= before - 1


def _study(i: int, folder) -> dict:
    raw = {
        "model": {"a": [1.0, 2.0], "b": [1.0, 0.5], "m": 2.0, "sigma": 1e-3},
        "geometry": {"builder": ("disk", "annulus", "rectangle")[i % 3], "h": 0.25},
        "initial": [{"profile": "expression", "expr": "0.5 + 0.25 * tanh(4 * x)"},
                    {"profile": "expression", "expr": "0.25 - 0.1 * tanh(4 * x)"}],
        "time": {"T": 2e-3, "dt": 1e-3, "method": "ie", "adaptive": False},
        "output": {"folder": str(folder), "formats": ["csv"], "progress": False},
    }
    if i % 4 == 1:
        raw["model"].update({"type": "nonlocal", "eps": 0.7})
    if i % 4 == 2:
        raw["particles"] = {"N": 60, "seed": i, "eps": 0.7}
    if i % 4 == 3:
        raw["output"].update({"formats": ["vtx", "csv", "png"], "every": 1,
                              "checkpoint_every": 1})
    return raw


def test_studies_with_particles_and_observers_return_their_communicators(mpi_tmp_path):
    """The ``crossdiff run`` path (gmsh meshes, nonlocal, particles, VTX, checkpoints)."""
    _settle()
    before, kept = free_communicators(COMM), set(_tracked)
    for i in range(8):
        cfg = parse_config(_study(i, mpi_tmp_path / f"case{i}"), source=f"case {i}")
        run_study(cfg, COMM, quiet=True)
    _settle()
    after = free_communicators(COMM)
    assert after >= before - 1, (before, after)
    assert set(_tracked) <= kept


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


@pytest.mark.slow
def test_a_thousand_meshes_in_one_process():
    """More meshes than MPICH has communicators for leaked solvers (about 2048 / 2).

    Memory after the last case stays within 1.5x of memory after the first 20 cases
    (``benchmarks/bench_sweep.py`` measures the same on gmsh geometries).
    """
    first = None
    for i in range(1100):
        _solver_case(i)
        if i + 1 == 20:
            _settle()
            first = COMM.allreduce(_rss_mb(), op=MPI.MAX)
    _settle()
    last = COMM.allreduce(_rss_mb(), op=MPI.MAX)
    assert last <= 1.5 * first, (first, last)
    assert free_communicators(COMM) > 1900
