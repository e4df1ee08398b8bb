"""The PETSc options a study file may set: an allow-list of solver settings with checked values.

Study files are data: a ``[solver] petsc`` table must not run code (``snes_type = "python"``
with ``snes_python_type`` imports a module, ``pc_python_type`` names any callable) nor write
files (viewer options such as ``ksp_view = "ascii:/some/file"``, MUMPS output streams). So
only the options of :data:`ALLOWED` pass, each with its value checked (type, range, choices)
before any solver exists; anything else is a :class:`~fem_crossdiff.errors.ParameterError`
naming the option. A bad value (an unknown ``ksp_type``, a negative tolerance) is refused
here instead of as a PETSc error in the middle of a run.

The monitors (``snes_monitor``, ``ksp_monitor``, ``*_converged_reason``) take only ``true``
or ``false`` and print to standard output; they never take a file name.

The Python API (``CrossDiffusionSolver(petsc_options=...)``) is code already and passes any
option through unchecked; :func:`check_options` is there for callers who read options from
untrusted data. Needs nothing but the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from fem_crossdiff.errors import ParameterError

__all__ = ["ALLOWED", "check_options", "to_petsc", "allowed_names", "MONITORS"]

Check = Callable[[str, Any], Any]

#: Krylov methods (no ``python``: it would import a module).
KSP_TYPES = ("gmres", "fgmres", "lgmres", "dgmres", "pgmres", "bcgs", "bcgsl", "ibcgs", "fbcgs",
             "bicg", "cg", "cr", "fcg", "gcr", "minres", "symmlq", "richardson", "chebyshev",
             "tfqmr", "tcqmr", "cgs", "preonly", "pipefgmres", "pipecg")
#: Preconditioners that need no further user code (no ``python``, ``shell``).
PC_TYPES = ("none", "jacobi", "pbjacobi", "vpbjacobi", "bjacobi", "asm", "gasm", "sor",
            "eisenstat", "ilu", "icc", "lu", "cholesky", "gamg", "hypre", "redundant")
SNES_TYPES = ("newtonls", "newtontr", "ksponly", "nrichardson", "ngmres", "qn", "anderson", "ncg")
LINESEARCH_TYPES = ("basic", "none", "bt", "l2", "cp", "nleqerr", "secant")
FACTOR_SOLVERS = ("mumps", "petsc", "superlu_dist")
MONITORS = ("snes_monitor", "ksp_monitor", "snes_converged_reason", "ksp_converged_reason",
            "ksp_monitor_true_residual")


def _choice(choices: tuple[str, ...]) -> Check:
    def check(key: str, v: Any) -> str:
        if not isinstance(v, str) or v.lower() not in choices:
            raise ParameterError(key, v, f"must be one of {', '.join(choices)}")
        return v.lower()
    return check


def _real(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Check:
    text = (f"a number {'>' if lo_open else '>='} {lo:g} and "
            f"{'<' if hi_open else '<='} {hi:g}")

    def check(key: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ParameterError(key, v, f"must be {text}")
        try:
            x = float(v)
        except OverflowError:
            raise ParameterError(key, v, f"must be {text}") from None
        if (not math.isfinite(x) or x < lo or x > hi or (lo_open and x == lo)
                or (hi_open and x == hi)):
            raise ParameterError(key, v, f"must be {text}")
        return x
    return check


def _int(lo: int, hi: int) -> Check:
    def check(key: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ParameterError(key, v, f"must be an integer from {lo} to {hi}")
        return v
    return check


def _flag(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ParameterError(key, v, "must be true or false")
    return v


_TOL = _real(0.0, 1.0, hi_open=True)
_ATOL = _real(0.0, 1e300)
_ITS = _int(0, 1_000_000)

#: option name -> check of its value. ``mg_levels_*`` and ``mg_coarse_*`` are the GAMG
#: smoother and coarse solver (the same checks as the top-level ``ksp_*``/``pc_*``), ``sub_*``
#: the block solvers of ``bjacobi``/``asm``.
ALLOWED: dict[str, Check] = {
    # Newton
    "snes_type": _choice(SNES_TYPES),
    "snes_rtol": _TOL, "snes_atol": _ATOL, "snes_stol": _TOL,
    "snes_max_it": _ITS, "snes_max_funcs": _int(1, 100_000_000),
    "snes_divergence_tolerance": _real(-1.0, 1e300),
    "snes_max_fail": _int(0, 1000), "snes_max_linear_solve_fail": _int(0, 1000),
    "snes_lag_jacobian": _int(-2, 1000), "snes_lag_preconditioner": _int(-2, 1000),
    "snes_linesearch_type": _choice(LINESEARCH_TYPES),
    "snes_linesearch_damping": _real(0.0, 2.0, lo_open=True),
    "snes_linesearch_max_it": _int(1, 100), "snes_linesearch_order": _int(1, 3),
    "snes_linesearch_minlambda": _real(0.0, 1.0, lo_open=True),
    "snes_linesearch_maxlambda": _real(0.0, 1e6, lo_open=True),
    "snes_ksp_ew": _flag, "snes_ksp_ew_version": _int(1, 3),
    "snes_ksp_ew_rtol0": _TOL, "snes_ksp_ew_rtolmax": _TOL,
    "snes_ksp_ew_gamma": _real(0.0, 1.0), "snes_ksp_ew_alpha": _real(1.0, 2.0),
    "snes_ksp_ew_threshold": _TOL,
    "snes_trtol": _TOL, "snes_tr_delta0": _real(0.0, 1e300, lo_open=True),
    "snes_qn_m": _int(1, 100), "snes_ngmres_m": _int(1, 100),
    # Krylov
    "ksp_type": _choice(KSP_TYPES), "ksp_rtol": _TOL, "ksp_atol": _ATOL,
    "ksp_divtol": _real(1.0, 1e300), "ksp_max_it": _int(1, 1_000_000),
    "ksp_gmres_restart": _int(1, 10_000), "ksp_gmres_modifiedgramschmidt": _flag,
    "ksp_pc_side": _choice(("left", "right", "symmetric")),
    "ksp_norm_type": _choice(("default", "none", "preconditioned", "unpreconditioned",
                              "natural")),
    "ksp_initial_guess_nonzero": _flag, "ksp_bcgsl_ell": _int(1, 20),
    "ksp_richardson_scale": _real(0.0, 1e6, lo_open=True),
    # preconditioners
    "pc_type": _choice(PC_TYPES),
    "pc_factor_mat_solver_type": _choice(FACTOR_SOLVERS),
    "pc_factor_levels": _int(0, 20), "pc_factor_fill": _real(1.0, 1000.0),
    "pc_factor_mat_ordering_type": _choice(("natural", "nd", "1wd", "rcm", "qmd")),
    "pc_factor_shift_type": _choice(("none", "nonzero", "positive_definite", "inblocks")),
    "pc_factor_shift_amount": _real(0.0, 1e6),
    "pc_asm_overlap": _int(0, 20), "pc_asm_type": _choice(("basic", "restrict",
                                                            "interpolate", "none")),
    "pc_sor_omega": _real(0.0, 2.0, lo_open=True, hi_open=True), "pc_sor_its": _int(1, 100),
    "pc_bjacobi_blocks": _int(1, 1_000_000),
    "pc_jacobi_type": _choice(("diagonal", "rowmax", "rowsum")),
    "pc_hypre_type": _choice(("boomeramg", "pilut", "parasails", "euclid")),
    "pc_hypre_boomeramg_strong_threshold": _real(0.0, 1.0),
    "pc_hypre_boomeramg_max_iter": _int(1, 100),
    # algebraic multigrid
    "pc_gamg_type": _choice(("agg", "classical", "geo")),
    "pc_gamg_threshold": _real(-1.0, 1.0), "pc_gamg_agg_nsmooths": _int(0, 10),
    "pc_gamg_square_graph": _int(0, 10), "pc_gamg_aggressive_coarsening": _int(0, 10),
    "pc_gamg_coarse_eq_limit": _int(1, 10_000_000), "pc_gamg_process_eq_limit": _int(1, 10_000_000),
    "pc_gamg_reuse_interpolation": _flag, "pc_gamg_repartition": _flag,
    "pc_gamg_sym_graph": _flag, "pc_gamg_esteig_ksp_max_it": _int(1, 100),
    "pc_mg_levels": _int(1, 30), "pc_mg_cycle_type": _choice(("v", "w")),
    "pc_mg_type": _choice(("multiplicative", "additive", "full", "kaskade")),
    "pc_mg_smoothup": _int(0, 100), "pc_mg_smoothdown": _int(0, 100),
    # MUMPS (ICNTL 1-4 choose Fortran output units, that is files: not allowed)
    "mat_mumps_icntl_6": _int(0, 7), "mat_mumps_icntl_7": _int(0, 7),
    "mat_mumps_icntl_8": _int(-2, 77), "mat_mumps_icntl_10": _int(-100, 100),
    "mat_mumps_icntl_11": _int(0, 2), "mat_mumps_icntl_12": _int(0, 3),
    "mat_mumps_icntl_13": _int(-1, 1_000_000), "mat_mumps_icntl_14": _int(0, 10_000),
    "mat_mumps_icntl_23": _int(0, 1_000_000), "mat_mumps_icntl_24": _int(0, 1),
    "mat_mumps_icntl_25": _int(-1, 1_000_000), "mat_mumps_icntl_28": _int(0, 2),
    "mat_mumps_icntl_29": _int(0, 2), "mat_mumps_icntl_33": _int(0, 1),
    "mat_mumps_icntl_35": _int(0, 3), "mat_mumps_icntl_36": _int(0, 1),
    "mat_mumps_icntl_37": _int(0, 1), "mat_mumps_icntl_38": _int(0, 1000),
    "mat_mumps_cntl_1": _real(0.0, 1.0), "mat_mumps_cntl_3": _real(-1e300, 1e300),
    "mat_mumps_cntl_4": _real(-1.0, 1e300), "mat_mumps_cntl_5": _real(0.0, 1e300),
    "mat_mumps_cntl_7": _real(0.0, 1.0),
    **dict.fromkeys(MONITORS, _flag),
}
for _prefix in ("mg_levels_", "mg_coarse_", "sub_", "mg_levels_sub_", "mg_coarse_sub_"):
    for _name in ("ksp_type", "ksp_max_it", "ksp_rtol", "ksp_atol", "pc_type",
                  "pc_factor_levels", "pc_factor_mat_solver_type", "pc_factor_shift_type",
                  "pc_sor_omega", "pc_sor_its", "pc_jacobi_type", "ksp_richardson_scale"):
        ALLOWED[_prefix + _name] = ALLOWED[_name]


def allowed_names() -> list[str]:
    """The options a study file may set, sorted."""
    return sorted(ALLOWED)


def check_options(options: dict, key: str = "petsc") -> dict:
    """Check every option against :data:`ALLOWED`.

    Args:
        options: ``{name: value}`` (names without the leading ``-`` or a prefix).
        key: The name of the table, for messages (``"solver.petsc"``).

    Returns:
        The options with normalised values (lower-case choices, floats).

    Raises:
        ParameterError: keyed ``key.name``, for an option not allowed or a bad value.
    """
    out = {}
    for name, value in options.items():
        where = f"{key}.{name}"
        check = ALLOWED.get(name) if isinstance(name, str) else None
        if check is None:
            near = sorted({n for n in ALLOWED if isinstance(name, str)
                           and n.split("_", 1)[0] == name.split("_", 1)[0]})
            hint = f" ({', '.join(near[:12])}{', ...' if len(near) > 12 else ''})" if near else ""
            raise ParameterError(where, value, "not an allowed PETSc option: a study file may set "
                                 f"solver settings only{hint}; see docs/failsafe.md")
        out[name] = check(where, value)
    return out


def to_petsc(options: dict) -> dict:
    """Checked options as PETSc takes them: monitors ``true`` -> flag, ``false`` -> omitted.

    Other booleans stay booleans (petsc4py writes them as ``true``/``false``).
    """
    out = {}
    for name, value in options.items():
        if name in MONITORS or name == "snes_ksp_ew":
            if value:
                out[name] = None  # a flag: no value, so never a viewer/file specification
            elif name == "snes_ksp_ew":
                out[name] = False
            continue
        out[name] = value
    return out
