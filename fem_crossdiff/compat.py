"""Every DOLFINx-version and import-order detail of the project, in one place.

The PyPI wheel ``dolfinx-solver-real`` needs ``import dolfinx_solver`` (which loads
``mpi4py.MPI`` first) before ``dolfinx`` or ``petsc4py`` can be imported; a conda, spack or
docker DOLFINx has no ``dolfinx_solver`` and only needs ``mpi4py`` first. Other modules import
``dolfinx``/``petsc4py`` only after importing this one.
"""

from __future__ import annotations

try:  # the PyPI binary wheel; orders MPI ahead of the compiled bindings
    import dolfinx_solver  # noqa: F401
except ImportError:  # conda / spack / docker builds
    dolfinx_solver = None

import dolfinx  # noqa: E402
import dolfinx.fem.petsc  # noqa: E402, F401
from dolfinx import fem, geometry, io, la, mesh  # noqa: E402
from mpi4py import MPI  # noqa: E402  (must precede dolfinx and petsc4py)
from petsc4py import PETSc  # noqa: E402

__all__ = [
    "MPI", "PETSc", "dolfinx", "fem", "geometry", "io", "la", "mesh", "gmshio",
    "check_versions", "version_report",
]

#: Oldest and newest DOLFINx minor versions this code is written against.
SUPPORTED = ((0, 10), (0, 11))


def _version_tuple(text: str) -> tuple[int, int]:
    parts = text.split(".")
    return int(parts[0]), int(parts[1])


def check_versions() -> None:
    """Raise a RuntimeError naming the installed DOLFINx if it is outside ``SUPPORTED``."""
    v = _version_tuple(dolfinx.__version__)
    if not SUPPORTED[0] <= v <= SUPPORTED[1]:
        lo, hi = (".".join(map(str, s)) for s in SUPPORTED)
        raise RuntimeError(
            f"fem-crossdiff needs DOLFINx {lo}..{hi}.x, found {dolfinx.__version__}"
        )


def version_report() -> dict[str, str]:
    """Return the versions of the numerical stack, for logs and bug reports."""
    import basix
    import ffcx
    import mpi4py
    import numpy
    import ufl

    petsc = ".".join(map(str, PETSc.Sys.getVersion()))
    return {
        "dolfinx": dolfinx.__version__,
        "basix": basix.__version__,
        "ffcx": ffcx.__version__,
        "ufl": ufl.__version__,
        "petsc": petsc,
        "petsc_scalar": "real" if PETSc.ScalarType().dtype.kind == "f" else "complex",
        "mpi4py": mpi4py.__version__,
        "mpi": MPI.Get_library_version().splitlines()[0].strip(),
        "numpy": numpy.__version__,
        "wheel": getattr(dolfinx_solver, "__version__", "none"),
    }


# gmsh I/O moved from dolfinx.io.gmshio (<= 0.9) to dolfinx.io.gmsh (>= 0.10).
try:
    from dolfinx.io import gmsh as gmshio
except ImportError:  # pragma: no cover - older DOLFINx
    from dolfinx.io import gmshio  # type: ignore[no-redef]


def interpolation_points(V) -> object:
    """Reference interpolation points of a space (a property in 0.11, a method in 0.10)."""
    pts = V.element.interpolation_points
    return pts() if callable(pts) else pts


def interpolate_any(f, data) -> None:
    """Interpolate into ``f`` from a number, a callable of x, an FE function or a UFL expression."""
    import ufl

    if isinstance(data, (int, float)):
        f.x.array[:] = float(data)
    elif isinstance(data, ufl.core.expr.Expr) and not isinstance(data, fem.Function):
        f.interpolate(fem.Expression(data, interpolation_points(f.function_space)))
    else:
        f.interpolate(data)
