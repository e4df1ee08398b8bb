"""Local system (1.1), upwind P1 edge fluxes with a limited second-order species reconstruction.

The default scheme of the local system (``docs/default-scheme.md``, ``docs/schemes.md``): the
first-order upwind fluxes with the upstream species fractions replaced by limited face values
``c_f = c_up + phi / 2 (c_dn - c_up)``. Positive for every ``sigma >= 0`` with implicit
Euler, conservative, and reducing exactly to the one-species scheme for equal mobilities.

Reading this folder answers "what is this scheme":

* :mod:`.options`: the limiter objects (every tuning number a field) and :class:`MusclOptions`;
* :mod:`.limiters`: the slope limiters and the clamp, as functions of the differences;
* :mod:`.flux`: :class:`~.flux.MusclFlux`, the fluxes, their frozen and exact derivatives;
* :mod:`.jacobian`: the exact Jacobian, assembled or applied in factors;
* :mod:`.kernels`: the compiled edge loops (numba) of the flux and the Jacobian;
* :mod:`.model`: :class:`~.model.LocalMuscl`, registered as ``"muscl"``.

The options import without DOLFINx; ``LocalMuscl`` is loaded on first access.
"""

from __future__ import annotations

from fem_crossdiff.models.muscl.options import (
    Compressive,
    Limiter,
    Minmod,
    MusclOptions,
    Sensor,
    Smooth,
    SmoothSensor,
    Superbee,
    VanAlbada,
    VanLeer,
)

__all__ = ["Compressive", "Limiter", "LocalMuscl", "Minmod", "MusclOptions", "Sensor",
           "Smooth", "SmoothSensor", "Superbee", "VanAlbada", "VanLeer"]


def __getattr__(name: str):
    # the model imports DOLFINx: loaded on first use, so the options stay light
    if name == "LocalMuscl":
        from fem_crossdiff.models.muscl.model import LocalMuscl

        return LocalMuscl
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
