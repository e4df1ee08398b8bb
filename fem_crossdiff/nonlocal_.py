"""Deprecated: the nonlocal system lives in :mod:`fem_crossdiff.models.nonlocal_system`.

Kept so that scripts written against the old path still run; nothing in the library imports
it. Import :class:`~fem_crossdiff.models.nonlocal_system.NonlocalParams` from
``fem_crossdiff.models.nonlocal_system`` instead.
"""

from __future__ import annotations

from fem_crossdiff.models.nonlocal_system.flux import PotentialFlux
from fem_crossdiff.models.nonlocal_system.params import BOUNDARIES, NonlocalParams
from fem_crossdiff.models.nonlocal_system.potential import NonlocalJacobian, NonlocalPotential

__all__ = ["BOUNDARIES", "NonlocalJacobian", "NonlocalParams", "NonlocalPotential",
           "PotentialFlux"]
