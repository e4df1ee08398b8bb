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
from .state import brownian_increments, init_state, step

__all__ = ["coupled_sup_error", "coupling_error"]


def coupled_sup_error(
    params, domain, sampler, seed, grad_g, dt, n_steps, drift, comm=None
) -> np.ndarray:
    """``sup_{t_j <= T} |X_k^i(t_j) - Y_k^i(t_j)|^2`` of the local particles, ``(n, N_local)``.

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
    sup = np.zeros(x.positions.shape[:2])
    for _ in range(int(n_steps)):
        dw = brownian_increments(x, dt)
        x = step(x, dt, params, domain, drift, comm, dW=dw)
        y = step(y, dt, params, domain, field, comm, dW=dw)
        sup = np.maximum(sup, np.sum((x.positions - y.positions) ** 2, axis=-1))
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
