"""Local system (1.1), standard Galerkin P1/P2 (second and third order on smooth data).

Not positivity preserving: compactly supported or segregated data undershoot, and the stepper
rejects steps whose minimum falls below the positivity tolerance.
"""

from __future__ import annotations

from fem_crossdiff.discretisation import forms
from fem_crossdiff.models import register
from fem_crossdiff.models.base import Model


@register("galerkin")
class LocalGalerkin(Model):
    """The weak form of Definition 1.5 with consistent mass, any Lagrange degree.

    Args:
        V: Blocked Lagrange space (degree 1 or 2, simplices or tensor-product cells).
        params: Model coefficients.
    """

    lumped = False
    degrees = (1, 2)
    positive = False

    def form(self, rho, v):
        """Transport and diffusion terms."""
        return forms.galerkin_spatial(rho, self.params, v)
