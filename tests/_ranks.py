"""Helpers for tests that split particle clouds over the ranks and compare with a reference."""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from fem_crossdiff.particles.rng import partition


def split(x, comm):
    """This rank's contiguous block of the particles of ``x`` (species, N, d), and its range."""
    start, stop = partition(x.shape[1], comm.size, comm.rank)
    return x[:, start:stop], start, stop


def max_rel_err(approx_local, ref_full, start, stop, comm):
    """Largest error of this rank's block against the full reference, over all ranks."""
    err = float(np.abs(approx_local - ref_full[:, start:stop]).max()) if stop > start else 0.0
    return comm.allreduce(err, op=MPI.MAX) / float(np.abs(ref_full).max())
