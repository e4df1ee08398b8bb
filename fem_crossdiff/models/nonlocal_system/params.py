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
BOUNDARIES = ("layer", "diagonal-pc", "sinkhorn", "diagonal", "zero")


@dataclass(frozen=True)
class NonlocalParams:
    """Parameters of the nonlocal model (1.5).

    ``boundary`` is the treatment of the convolutions at the walls of the bounded domain
    (``docs/walls.md`` has the measurements behind the choice, ``benchmarks/bench_walls.py``
    repeats them):

    * ``"layer"`` (default): the kernel completed in the wall layer,
      ``K = M_s + F M_s F`` (continuous counterpart ``V^eps(x - y) (1 + f(x) f(y))``), with
      ``f >= 0`` zero wherever the kernel's support stays inside Omega and, in the layer,
      ``f_i (M_s f)_i = 1 - (M_s 1)_i`` (a Sinkhorn scaling confined to the layer); what
      remains of ``1 - K 1`` (the quadrature error of ``M_s 1``) is kept on the diagonal.
      Symmetric in the lumped inner product, nonnegative, ``K 1 = 1`` (constants are
      stationary at walls and corners), and exactly the zero extension (the free-space
      operator) farther than ``eps`` from a wall, up to that quadrature error; so ``g`` is
      (1.5)'s wherever the double convolution's support (``2 eps``) stays inside Omega. The
      model tends to (1.1) with no-flux walls as ``eps -> 0``. No local term at the walls: the
      implicit coupling costs the Krylov iterations of ``"sinkhorn"``, and particles
      interact through a kernel;
    * ``"diagonal-pc"``: ``K = M_s + diag(1 - M_s 1)``, the kernel's deficit at a wall node
      kept at the node: the same guarantees and interior exactness; with the implicit coupling
      the local part ``Delta P'(S) Delta`` of its derivative (``Delta = diag(1 - M_s 1)``) is
      in the Newton preconditioner, which keeps the Krylov iterations at those of
      ``"layer"``. The local term makes particle trajectories more sensitive (round-off grows
      about 6x per step against 2x in the rank test of the particle tracking);
    * ``"sinkhorn"``: the doubly stochastic kernel ``e(x) V^eps(x - y) e(y)`` on Omega,
      ``K = E M_s E`` with ``K 1 = 1``. Same guarantees and a pure kernel, but the scaling ``e``
      is one global solution: largest at the walls (about 1.6 at a flat wall), it decays away
      from them without vanishing (``|e - 1|`` about 4e-4 at 2 eps and 1e-5 at 3 eps), so the
      model differs from (1.5) also where the walls are out of reach;
    * ``"diagonal"``: the operator of ``"diagonal-pc"`` with the frozen-``g`` preconditioner
      only, whose matrix-free implicit Newton needs many more Krylov iterations (x3 to x37
      measured on a disk; kept for comparison);
    * ``"zero"``: ``rho`` extended by zero outside Omega (the free-space convolutions), which
      halves ``S`` at a flat wall and pulls mass into walls and corners.

    Attributes:
        eps: Mollifier radius, ``eps > 0`` (and at least two cells wide, checked on the mesh).
        kernel: Mollifier name, one of :data:`fem_crossdiff.mollifiers.KERNELS`.
        coupling: ``"linear"`` (``g`` lagged) or ``"implicit"`` (Newton, matrix-free Jacobian).
        allow_small_eps: Downgrade the "kernel spans fewer than two cells" error to a warning.
        subdivisions: Composite quadrature refinement of the mollification operator.
        boundary: One of :data:`BOUNDARIES`, see above.
    """

    eps: float
    kernel: str = "bump"
    coupling: str = "linear"
    allow_small_eps: bool = False
    subdivisions: int = 1
    boundary: str = "layer"

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
