"""Coupling of the particle system (1.6) with the nonlinear process (1.7) (Proposition 1.2).

``X`` and ``Y`` start from the same positions ``xi`` and use the same Brownian increments; ``X``
feels the empirical interaction, ``Y`` the field ``grad g^eps`` of the nonlocal PDE solution
(a callable ``grad_g(t, y)``: a finite-element evaluator of the nonlocal solver, or in the tests
the 1D finite-volume reference ``NonlocalFV1D`` of ``tests/_nonlocal1d.py``). Both are advanced
with the same Euler-Maruyama steps.
"""

from __future__ import annotations

import numpy as np

from .drift import FieldDrift
from .rng import partition
from .state import gather_positions, init_state, step

__all__ = ["coupled_sup_error", "coupling_error"]


def coupled_sup_error(
    params, domain, sampler, seed, grad_g, dt, n_steps, drift, comm=None
) -> np.ndarray:
    """``sup_{t_j <= T} |X_k^i(t_j) - Y_k^i(t_j)|^2`` of this rank's index block, ``(n, N_local)``.

    On a tracking domain the particles of ``X`` and ``Y`` migrate independently (the same
    particle may sit on different ranks): the distances are then taken between the gathered
    positions (a coupling study's ``N`` is small); on the other domains both keep the same
    index block and the distances are local.

    Args:
        params: model parameters.
        domain: particle domain.
        sampler: initial sampler(s), as for :func:`fem_crossdiff.particles.state.init_state`.
        seed: seed of the run (initial data and noise).
        grad_g: ``grad_g(t, y)`` of the nonlocal solution.
        dt: time step.
        n_steps: number of steps (``T = n_steps dt``).
        drift: the interaction drift of ``X`` (e.g. ``GridDrift()``).
        comm: MPI communicator (``None``: serial).
    """
    x = init_state(params, sampler, seed, domain, comm)
    y = x
    field = FieldDrift(grad_g)
    size, rank = (1, 0) if comm is None else (comm.size, comm.rank)
    start, stop = partition(params.n_particles, size, rank)
    sup = np.zeros((params.n_species, stop - start))
    for _ in range(int(n_steps)):
        x = step(x, dt, params, domain, drift, comm)
        # same increments: the noise is keyed by (species, id, step), not by the rank
        y = step(y, dt, params, domain, field, comm)
        if x.cells is None:  # same index block on both: local distances
            d2 = np.sum((x.positions - y.positions) ** 2, axis=-1).reshape(sup.shape)
        else:
            gx, gy = gather_positions(x, comm, root=None), gather_positions(y, comm, root=None)
            d2 = np.sum((gx - gy) ** 2, axis=-1)[:, start:stop]
        sup = np.maximum(sup, d2)
    return sup



def coupling_error(
    params, domain, sampler, seeds, grad_g, dt, n_steps, drift, comm=None
) -> tuple[float, float]:
    """Estimate ``sum_k E sup_t |X_k^i - Y_k^i|^2`` over independent runs.

    Each run (one seed) gives the average over all ``N`` particles (exchangeable) of
    ``sum_k sup_t |X_k^i - Y_k^i|^2``; the estimate is the mean over runs, with its standard error
    (std over runs / sqrt(runs)). Collective; the same value on every rank.

    Returns:
        ``(mean, standard_error)``.
    """
    vals = []
    for s in seeds:
        sup = coupled_sup_error(params, domain, sampler, s, grad_g, dt, n_steps, drift, comm)
        tot = float(sup.sum())
        if comm is not None:
            from mpi4py import MPI

            tot = comm.allreduce(tot, op=MPI.SUM)
        vals.append(tot / params.n_particles)
    vals = np.array(vals)
    se = vals.std(ddof=1) / np.sqrt(vals.size) if vals.size > 1 else float("nan")
    return float(vals.mean()), float(se)
