"""Options of the ``"afc"`` scheme (importable without DOLFINx)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fem_crossdiff.errors import ParameterError

__all__ = ["AfcOptions"]


@dataclass(frozen=True)
class AfcOptions:
    """Everything an ``"afc"`` solver may set besides the model coefficients.

    Attributes:
        jacobian: ``"edge"`` (the first-order edge pattern with the limiter's factors held;
            Newton converges linearly) or ``"mf"`` (matrix-free, a difference quotient,
            preconditioned by the edge matrix).
        preconditioner: The assembled matrix: ``"edge"``, or ``"upwind"`` (the first-order
            scheme's Jacobian) with ``jacobian = "mf"``.
        smooth_width: Half width of the smoothing of ``min(1, x)`` in the Zalesak limiter
            (:func:`fem_crossdiff.models.afc.flux.smooth_min1`): equal to ``min(1, x)`` outside
            ``|x - 1| < smooth_width``, so that Newton sees no kink at ``x = 1``.
    """

    JACOBIANS: ClassVar[tuple[str, ...]] = ("edge", "mf")
    #: The assembled matrix (with ``"mf"``: the preconditioner).
    PRECONDITIONERS: ClassVar[tuple[str, ...]] = ("edge", "upwind")

    jacobian: str = "edge"
    preconditioner: str = "edge"
    smooth_width: float = 0.25

    def __post_init__(self):
        if self.jacobian not in self.JACOBIANS:
            raise ParameterError("jacobian", self.jacobian,
                                 f"one of {', '.join(self.JACOBIANS)}")
        if self.preconditioner not in self.PRECONDITIONERS or (
                self.preconditioner == "upwind" and self.jacobian != "mf"):
            raise ParameterError("preconditioner", self.preconditioner,
                                 "edge, or upwind with jacobian='mf'")
        try:
            width = float(self.smooth_width)
        except (TypeError, ValueError):
            width = float("nan")
        if not 0.0 < width < 1.0:
            raise ParameterError("smooth_width", self.smooth_width, "a number in (0, 1)")
        object.__setattr__(self, "smooth_width", width)
