"""The nonlocal system (1.5): mollified pressure projections driving upwind P1 fluxes.

``d_t rho_k = div(b_k rho_k grad g) + sigma Lap rho_k``, ``u_l = V^eps * rho_l``,
``g = V^eps * (sum_l a_l u_l)^(m-1)`` on a bounded domain with no-flux walls, where the
convolutions use a kernel completed at the walls (``NonlocalParams.boundary``: by default
within the wall layer only, see :class:`NonlocalParams`).

Discretisation. ``M`` is the mollification matrix of :mod:`fem_crossdiff.mollify` on the P1
space (zero extension), symmetrised in the lumped inner product, ``M_s = (M + D^-1 M^T D) / 2``
with ``D`` the lumped mass, then normalised at the walls to ``K`` (``K 1 = 1``, ``D K``
symmetric; ``K = M_s`` for ``boundary="zero"``), so that ``g = K (a . K rho)^(m-1)`` is
*exactly* the lumped-L2 gradient of the discrete regularised energy

    A_eps,h = (1/m) sum_i m_i S_i^m + sum_k (a_k/b_k) sigma sum_i m_i rho_k,i log rho_k,i,
    S = sum_l a_l K rho_l,

the discrete counterpart of (1.4) (integrated over Omega). The transport is the upwind edge
flux ``b_k w_ij rho_k,up (g_i - g_j)`` (upstream: larger ``g``), which keeps every density
nonnegative (M-matrix, ``w_ij >= 0``) and conserves every species' mass.

Two time discretisations:

* ``coupling="linear"``: ``g`` from the previous step, one linear solve per step (first order
  in the coupling). The lag makes it only conditionally stable (roughly
  ``dt <~ eps^2 / (b (m-1) S^(m-2))``); a too large step shows as an increase of
  ``A_eps,h`` and concentrations, so the stepper rejects steps that increase the energy and
  retries them smaller;
* ``coupling="implicit"``: ``g`` of the new state, Newton with the full Jacobian applied
  matrix-free (the nonlocal part is ``B(rho) K diag(P'(S)) K``), preconditioned by
  the frozen-``g`` Jacobian. With implicit Euler and ``sigma = 0`` the energy ``A_eps,h`` is
  nonincreasing: by convexity ``A(rho^{n+1}) - A(rho^n) <= -dt sum_k a_k b_k sum_edges
  w_ij rho_k,up (g_i - g_j)^2 <= 0``.

Reading this folder answers "what is this scheme":

* :mod:`.params`: :class:`~.params.NonlocalParams` (importable without DOLFINx);
* :mod:`.flux`: :class:`~.flux.PotentialFlux`, upwind edge fluxes in a nodal potential;
* :mod:`.potential`: :class:`~.potential.NonlocalPotential` (the mollification operator
  ``K`` and ``g``) and the implicit coupling's matrix-free Jacobian;
* :mod:`.model`: :class:`~.model.Nonlocal`, registered as ``"nonlocal"``;
* :mod:`.given`: :class:`~.given.GivenPotential`, registered as ``"potential"`` (the same
  transport in a lagged potential given by the caller).
"""

from __future__ import annotations

from fem_crossdiff.models.nonlocal_system.params import BOUNDARIES, NonlocalParams

__all__ = ["BOUNDARIES", "NonlocalParams"]
