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
from dolfinx.io import gmsh as gmshio  # noqa: E402  (dolfinx.io.gmshio before 0.10)
from mpi4py import MPI  # noqa: E402  (must precede dolfinx and petsc4py)
from petsc4py import PETSc  # noqa: E402

__all__ = [
    "MPI", "PETSc", "dolfinx", "fem", "geometry", "io", "la", "mesh", "gmshio",
    "check_versions", "version_report", "basix_cell", "interpolation_points", "interpolate_any",
    "MIN_DEGREE_BESIDE_VERTEX_RULE",
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


def interpolation_points(V) -> object:
    """Reference interpolation points of a space (a property in 0.11, a method in 0.10)."""
    pts = V.element.interpolation_points
    return pts() if callable(pts) else pts


def basix_cell(msh):
    """The basix cell type of a mesh (``Mesh.basix_cell()`` in 0.11, by name in 0.10)."""
    import basix

    if hasattr(msh, "basix_cell"):
        return msh.basix_cell()
    return basix.cell.string_to_type(msh.topology.cell_type.name)


#: Smallest quadrature degree of an integral that shares a form with a vertex-rule integral:
#: with FFCx 0.11 a one-point rule in the same form as a vertex-rule integral made the vertex
#: integral assemble with midpoint values (seen here), so such integrals use degree >= 2.
MIN_DEGREE_BESIDE_VERTEX_RULE = 2


def interpolate_any(f, data) -> None:
    """Interpolate into ``f`` from a number, a callable of x, an FE function or a UFL expression."""
    import ufl

    if isinstance(data, (int, float)):
        f.x.array[:] = float(data)
    elif isinstance(data, ufl.core.expr.Expr) and not isinstance(data, fem.Function):
        f.interpolate(fem.Expression(data, interpolation_points(f.function_space)))
    else:
        f.interpolate(data)


# ---- meshes
def unsupported_ghost_mode(ghost_mode: str, tdim: int | None) -> str | None:
    """Why DOLFINx cannot use ``ghost_mode`` for meshes of dimension ``tdim``, or None if it can.

    With ``GhostMode.none``, DOLFINx (0.10 and 0.11; FEniCS/dolfinx PR #4525, open) finds no
    inter-process facets of a 1D mesh, so the vertices at partition boundaries count as
    exterior facets and ``ds`` integrates over them.

    Args:
        ghost_mode: ``"shared_facet"`` or ``"none"``.
        tdim: Topological dimension of the mesh (None: not known yet, nothing to say).

    Returns:
        The reason, in words, or None.
    """
    if ghost_mode == "none" and tdim == 1:
        return ("ghost_mode 'none' is not supported for 1D meshes (DOLFINx counts "
                "partition-boundary vertices as exterior facets); use 'shared_facet'")
    return None
