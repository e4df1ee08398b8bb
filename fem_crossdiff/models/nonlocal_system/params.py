"""Parameters of the nonlocal system (1.5): mollifier, coupling, wall treatment.

Importable without DOLFINx (checked by the study files' schema before any mesh exists).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fem_crossdiff.errors import ParameterError
from fem_crossdiff.mollifiers import KERNELS
from fem_crossdiff.params import COUPLINGS

__all__ = ["BOUNDARIES", "NonlocalParams"]

#: Treatments of the mollification at the walls (see :class:`NonlocalParams`).
BOUNDARIES = ("sinkhorn", "diagonal", "zero")


@dataclass(frozen=True)
class NonlocalParams:
    """Parameters of the nonlocal model (1.5).

    ``boundary`` is the treatment of the convolutions at the walls of the bounded domain
    (``docs/walls.md`` has the measurements behind the choice):

    * ``"sinkhorn"`` (default): the doubly stochastic kernel ``e(x) V^eps(x - y) e(y)`` on
      Omega, ``K = E M_s E`` with ``K 1 = 1``. Constants are stationary and the model tends to
      (1.1) with no-flux walls as ``eps -> 0``. The scaling ``e`` is largest at the walls (about
      1.6 at a flat wall) and decays quickly away from them: ``|e - 1|`` is about 4e-4 at
      2 eps and 1e-5 at 3 eps from a wall;
    * ``"diagonal"``: ``K = M_s + diag(1 - M_s 1)``, the kernel's deficit at a wall node kept
      at the node (also symmetric, doubly stochastic, ``K 1 = 1``), which changes nothing
      farther than ``eps`` from a wall; its matrix-free implicit Newton needs many more Krylov
      iterations (the local part is not in the preconditioner: x40 measured on a disk);
    * ``"zero"``: ``rho`` extended by zero outside Omega (the free-space convolutions), which
      halves ``S`` at a flat wall and pulls mass into walls and corners.

    Attributes:
        eps: Mollifier radius, ``eps > 0`` (and at least two cells wide, checked on the mesh).
        kernel: Mollifier name, one of :data:`fem_crossdiff.mollifiers.KERNELS`.
        coupling: ``"linear"`` (``g`` lagged) or ``"implicit"`` (Newton, matrix-free Jacobian).
        allow_small_eps: Downgrade the "kernel spans fewer than two cells" error to a warning.
        subdivisions: Composite quadrature refinement of the mollification operator.
        boundary: ``"normalized"`` or ``"zero"``, see above.
    """

    eps: float
    kernel: str = "bump"
    coupling: str = "linear"
    allow_small_eps: bool = False
    subdivisions: int = 1
    boundary: str = "sinkhorn"

    def __post_init__(self):
        try:
            eps = float(self.eps)
        except (TypeError, ValueError):
            raise ParameterError("eps", self.eps, "eps must be a number > 0") from None
        if not (np.isfinite(eps) and eps > 0):
            raise ParameterError("eps", self.eps, "eps must be a finite number > 0")
        object.__setattr__(self, "eps", eps)
        if self.kernel not in KERNELS:
            raise ParameterError("kernel", self.kernel,
                                 f"unknown mollifier; one of {', '.join(KERNELS)}")
        if self.coupling not in COUPLINGS:
            raise ParameterError("coupling", self.coupling,
                                 f"coupling must be one of {', '.join(COUPLINGS)}")
        if self.boundary not in BOUNDARIES:
            raise ParameterError("boundary", self.boundary,
                                 f"boundary must be one of {', '.join(BOUNDARIES)}")
        if isinstance(self.subdivisions, bool) or int(self.subdivisions) != self.subdivisions \
                or self.subdivisions < 1:
            raise ParameterError("subdivisions", self.subdivisions,
                                 "subdivisions must be an integer >= 1")
