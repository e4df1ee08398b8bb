"""Interacting particle system (1.6) and nonlinear McKean-Vlasov process (1.7), numpy only.

Importing this package needs no DOLFINx and no MPI; communicators are optional arguments (mpi4py
is imported only when one is passed). The DOLFINx bridge (reflection at the boundary of any mesh,
sampling from a finite-element density) is :mod:`fem_crossdiff.particles.mesh_domain`, imported
explicitly. Distances between weighted samples (POT) are in
:mod:`fem_crossdiff.particles.distances`. The family's ingredients (per-species ``sigma_k``,
potentials, interaction kernels, growth by particle weights, :mod:`fem_crossdiff.family`) are
stepped by :mod:`fem_crossdiff.particles.family`.

Typical use::

    params = ParticleParams(n_particles=10_000, a=(1.0, 0.5), b=(1.0, 2.0), sigma=0.01, m=2.0,
                            eps=0.1)
    box = Box((0.0, 0.0), (1.0, 1.0))
    state = init_state(params, sampler, seed=1, domain=box, comm=comm)
    state = run(state, dt, n_steps, params, box, GridDrift(), comm, writer)
"""

from .coupling import coupled_sup_error, coupling_error
from .domains import Box, FreeSpace, check_inside
from .drift import CellListDrift, FieldDrift, GridDrift, QuadratureSpec, drift_bruteforce
from .output import ParticleWriter, moments
from .params import ParticleParams
from .sampling import InverseCDF1D, RejectionSampler
from .state import (
    ParticleState,
    brownian_increments,
    gather_positions,
    init_state,
    run,
    state_from_positions,
    step,
)

__all__ = [
    "Box",
    "FreeSpace",
    "check_inside",
    "CellListDrift",
    "FieldDrift",
    "GridDrift",
    "QuadratureSpec",
    "drift_bruteforce",
    "ParticleWriter",
    "moments",
    "ParticleParams",
    "InverseCDF1D",
    "RejectionSampler",
    "ParticleState",
    "brownian_increments",
    "gather_positions",
    "init_state",
    "run",
    "state_from_positions",
    "step",
    "coupled_sup_error",
    "coupling_error",
]
