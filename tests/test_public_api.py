"""The package's public face: ``import fem_crossdiff as fx`` is cheap and ``fx.<name>`` works.

The import-cost checks run in a fresh interpreter (this one has DOLFINx loaded already), with
the MPI launcher's variables removed so that the child is a serial process of its own.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap

import pytest

import fem_crossdiff as fx

#: Modules that ``import fem_crossdiff`` and its numpy-only names must not load.
HEAVY = ("dolfinx", "petsc4py", "mpi4py.MPI", "ufl", "basix", "fem_crossdiff.compat")


def _python(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "MPI", "HYDRA"))}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_import_is_cheap_until_a_finite_element_name_is_used():
    out = _python(f"""
        import sys
        import fem_crossdiff as fx

        heavy = {HEAVY!r}
        print("import:", [m for m in heavy if m in sys.modules])
        params = fx.ModelParams(a=(1.0, 2.0), b=(1.0, 0.5), m=3.0)
        assert params.law == fx.PowerLaw(3.0)
        fx.TimeParams(T=0.1, dt=0.01)
        try:
            fx.ModelParams(a=(1.0,), b=(1.0,), m=1.0)
        except fx.ParameterError as err:
            assert "m" in str(err)
        print("core:", [m for m in heavy if m in sys.modules])
        fx.CrossDiffusionSolver
        loaded = list(sys.modules)  # in import order
        print("solver:", "dolfinx" in loaded,
              loaded.index("mpi4py.MPI") < loaded.index("dolfinx"))
        import dolfinx  # a script may use DOLFINx itself from here on
        print("dolfinx:", dolfinx.__version__ != "")
        """)
    assert "import: []" in out
    assert "core: []" in out
    assert "solver: True True" in out
    assert "dolfinx: True" in out


def test_mpi_name_orders_mpi_before_dolfinx():
    # a script that uses fx.MPI first may then import dolfinx and petsc4py directly
    out = _python("""
        import fem_crossdiff as fx

        comm = fx.MPI.COMM_WORLD
        import dolfinx.mesh
        from petsc4py import PETSc

        msh = dolfinx.mesh.create_unit_square(comm, 4, 4)
        print("h_max:", round(fx.mesh_sizes(msh).h_max, 6), PETSc.ScalarType.__name__)
        """)
    assert "h_max: 0.353553" in out


#: Where some public names live (the objects must be those, not copies).
HOMES = {"CrossDiffusionSolver": "fem_crossdiff.solver", "ModelParams": "fem_crossdiff.params",
         "PowerLaw": "fem_crossdiff.laws", "NonlocalParams": "fem_crossdiff.models.nonlocal_system",
         "mesh_sizes": "fem_crossdiff.meshes", "run": "fem_crossdiff.driver",
         "SnapshotObserver": "fem_crossdiff.observers", "MPI": "fem_crossdiff.compat",
         "load_checkpoint": "fem_crossdiff.checkpoint"}


def test_every_public_name_resolves_to_its_module_object():
    assert len(fx.__all__) == len(set(fx.__all__))
    values = {name: getattr(fx, name) for name in fx.__all__}  # AttributeError if one is missing
    assert all(value is not None for value in values.values())
    for name, module in HOMES.items():
        assert values[name] is getattr(importlib.import_module(module), name), name
    assert values["meshes"] is importlib.import_module("fem_crossdiff.meshes")
    assert values["particles"] is importlib.import_module("fem_crossdiff.particles")
    assert set(fx.__all__) <= set(dir(fx))
    namespace: dict = {}
    exec("from fem_crossdiff import *", namespace)
    assert set(fx.__all__) <= set(namespace)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="'fem_crossdiff' has no attribute 'Solver'"):
        fx.Solver
    assert not hasattr(fx, "mollified_pressure")
