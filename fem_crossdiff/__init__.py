"""fem-crossdiff: multi-species cross-diffusion with volume exclusion on DOLFINx.

The public face is this package: ``import fem_crossdiff as fx`` gives the solver, its parameter
dataclasses, the pressure laws, the meshes and their sizes, the driver and its observers, and
checkpoints, each as ``fx.<name>`` (the list is ``__all__``)::

    import fem_crossdiff as fx

    geo = fx.meshes.disk(fx.MPI.COMM_WORLD, radius=1.0, h=0.1)
    solver = fx.CrossDiffusionSolver(geo.mesh, fx.ModelParams(a=(1.0, 2.0), b=(1.0, 0.5)))

The names are resolved on first use (PEP 562), so ``import fem_crossdiff`` stays cheap: it
imports neither DOLFINx nor MPI, and the numpy-only names (``ModelParams``, ``TimeParams``,
``PowerLaw``, ``ParameterError``, ``particles``) never do. Every other name is resolved after
:mod:`fem_crossdiff.compat`, which loads MPI before DOLFINx and PETSc (the PyPI wheel's DOLFINx
fails to load otherwise), so a script needs no import-order step of its own; once such a name
has been used, the script may ``import dolfinx`` too.

Layers, each importing only those before it:

1. the core, numpy only (no DOLFINx, no MPI): :mod:`fem_crossdiff.errors`,
   :mod:`fem_crossdiff.laws`, :mod:`fem_crossdiff.params`, :mod:`fem_crossdiff.mollifiers` and
   the particles' numpy core :mod:`fem_crossdiff.particles`;
2. the finite-element side, through :mod:`fem_crossdiff.compat` (the one place that knows the
   import order and the DOLFINx version details): meshes, models, problem, solver, driver,
   observers, measures, and the particles' mesh bridges;
3. the command line :mod:`fem_crossdiff.cli` on everything.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> (module, attribute in it; None for the module itself). Resolved on first use.
_EXPORTS: dict[str, tuple[str, str | None]] = {
    # the numpy-only core: no DOLFINx, no MPI
    "ModelParams": ("fem_crossdiff.params", "ModelParams"),
    "TimeParams": ("fem_crossdiff.params", "TimeParams"),
    "PressureLaw": ("fem_crossdiff.laws", "PressureLaw"),
    "PowerLaw": ("fem_crossdiff.laws", "PowerLaw"),
    "ParameterError": ("fem_crossdiff.errors", "ParameterError"),
    "particles": ("fem_crossdiff.particles", None),
    # the finite-element side (after compat: MPI before DOLFINx)
    "MPI": ("fem_crossdiff.compat", "MPI"),
    "fem": ("fem_crossdiff.compat", "fem"),
    "meshes": ("fem_crossdiff.meshes", None),
    "Geometry": ("fem_crossdiff.meshes", "Geometry"),
    "MeshSizes": ("fem_crossdiff.meshes", "MeshSizes"),
    "mesh_sizes": ("fem_crossdiff.meshes", "mesh_sizes"),
    "CrossDiffusionSolver": ("fem_crossdiff.solver", "CrossDiffusionSolver"),
    "NonlocalParams": ("fem_crossdiff.models.nonlocal_system", "NonlocalParams"),
    "run": ("fem_crossdiff.driver", "run"),
    "load_study": ("fem_crossdiff.study", "load_study"),
    "Study": ("fem_crossdiff.study", "Study"),
    "StepSizeError": ("fem_crossdiff.driver", "StepSizeError"),
    "CsvObserver": ("fem_crossdiff.observers", "CsvObserver"),
    "FieldObserver": ("fem_crossdiff.observers", "FieldObserver"),
    "SnapshotObserver": ("fem_crossdiff.observers", "SnapshotObserver"),
    "AnimationObserver": ("fem_crossdiff.observers", "AnimationObserver"),
    "DiagnosticsPlotObserver": ("fem_crossdiff.observers", "DiagnosticsPlotObserver"),
    "CheckpointObserver": ("fem_crossdiff.observers", "CheckpointObserver"),
    "CallbackObserver": ("fem_crossdiff.observers", "CallbackObserver"),
    "save_checkpoint": ("fem_crossdiff.checkpoint", "save_checkpoint"),
    "load_checkpoint": ("fem_crossdiff.checkpoint", "load_checkpoint"),
    "CheckpointError": ("fem_crossdiff.checkpoint", "CheckpointError"),
}

#: Modules of ``_EXPORTS`` that import neither DOLFINx nor MPI; the others come after compat.
_CORE = frozenset({"fem_crossdiff.params", "fem_crossdiff.laws", "fem_crossdiff.errors",
                   "fem_crossdiff.particles"})

# written out (not derived from _EXPORTS) so that linters and type checkers read it; a test
# keeps the two equal
__all__ = [
    "__version__",
    "ModelParams", "TimeParams", "PressureLaw", "PowerLaw", "ParameterError", "particles",
    "MPI", "fem", "meshes", "Geometry", "MeshSizes", "mesh_sizes", "CrossDiffusionSolver",
    "NonlocalParams", "run", "load_study", "Study", "StepSizeError", "CsvObserver", "FieldObserver",
    "SnapshotObserver", "AnimationObserver", "DiagnosticsPlotObserver", "CheckpointObserver",
    "CallbackObserver", "save_checkpoint", "load_checkpoint", "CheckpointError",
]


def __getattr__(name: str) -> Any:
    """Resolve a public name on first use (PEP 562), importing its module then.

    Raises:
        AttributeError: ``name`` is not a public name of the package (nor a loaded submodule).
    """
    try:
        module_name, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    if module_name not in _CORE:
        importlib.import_module("fem_crossdiff.compat")  # MPI, then DOLFINx and PETSc
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later uses skip this function
    return value


def __dir__() -> list[str]:
    """The public names and the loaded submodules (for completion in shells and notebooks)."""
    loaded = {key for key, value in globals().items()
              if isinstance(value, ModuleType) and value.__name__.startswith(__name__ + ".")}
    dunders = {key for key in globals() if key.startswith("__")}
    return sorted(set(__all__) | loaded | dunders)


if TYPE_CHECKING:  # the same names for type checkers and editors; never executed
    from fem_crossdiff import meshes, particles
    from fem_crossdiff.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from fem_crossdiff.compat import MPI
    from fem_crossdiff.driver import StepSizeError, run
    from fem_crossdiff.errors import ParameterError
    from fem_crossdiff.laws import PowerLaw, PressureLaw
    from fem_crossdiff.meshes import Geometry, MeshSizes, mesh_sizes
    from fem_crossdiff.models.nonlocal_system import NonlocalParams
    from fem_crossdiff.observers import (
        AnimationObserver,
        CallbackObserver,
        CheckpointObserver,
        CsvObserver,
        DiagnosticsPlotObserver,
        FieldObserver,
        SnapshotObserver,
    )
    from fem_crossdiff.params import ModelParams, TimeParams
    from fem_crossdiff.solver import CrossDiffusionSolver
