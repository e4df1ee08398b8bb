"""Local system (1.1), upwind P1 edge fluxes with algebraic flux correction of the fractions.

The first-order scheme (:mod:`fem_crossdiff.models.upwind`) plus the antidiffusive fluxes
towards the central species fractions, limited by a Zalesak-type limiter with local bounds and
one correction factor per edge for all species (``docs/afc.md``). Positive for every ``sigma >=
0`` with implicit Euler, conservative, and reducing exactly to the one-species scheme for equal
mobilities.

* :mod:`.flux`: :class:`~.flux.AfcFlux`, the limiter and the edge Jacobian (its docstring
  derives the scheme);
* :mod:`.options`: :class:`~.options.AfcOptions` (Jacobian, preconditioner, the limiter's
  smoothing);
* :mod:`.model`: :class:`~.model.LocalAfc`, registered as ``"afc"``.
"""

from __future__ import annotations


def __getattr__(name: str):
    # the model imports DOLFINx: loaded on first use
    if name == "LocalAfc":
        from fem_crossdiff.models.afc.model import LocalAfc

        return LocalAfc
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
