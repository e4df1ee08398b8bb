"""Counter-based random streams: the same seed gives the same particles on any number of ranks.

Scheme (documented because it defines every trajectory): global particle indices of a species
are cut into fixed blocks of :data:`BLOCK_SIZE` particles, independent of ``N`` and of the number
of MPI ranks. Block ``j`` of species ``k`` at step ``s`` for purpose ``tag`` (initial sampling or
Brownian increments) draws from its own generator
``Generator(Philox(SeedSequence(seed, spawn_key=(tag, k, s, j))))``; the block always draws all
``BLOCK_SIZE`` entries (the tail beyond ``N`` is discarded), so the numbers attached to particle
``i`` depend only on ``(seed, tag, k, s, i)``. A rank owning the contiguous global slice
``[start, stop)`` generates just the blocks overlapping it. Changing ``BLOCK_SIZE`` changes the
streams, hence it is a module constant.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["BLOCK_SIZE", "TAG_INIT", "TAG_NOISE", "block_generator", "draw_slice", "partition"]

#: particles per independent random stream block.
BLOCK_SIZE = 4096
#: stream purpose for initial positions.
TAG_INIT = 0
#: stream purpose for Brownian increments.
TAG_NOISE = 1


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def block_generator(
    seed: int, tag: int, species: int, step: int, block: int
) -> np.random.Generator:
    """The generator of one block (see the module docstring for the keying)."""
    ss = np.random.SeedSequence(
        entropy=_check_seed(seed), spawn_key=(int(tag), int(species), int(step), int(block))
    )
    return np.random.Generator(np.random.Philox(ss))


def draw_slice(
    seed: int,
    tag: int,
    species: int,
    step: int,
    start: int,
    stop: int,
    draw: Callable[[np.random.Generator, int], np.ndarray],
) -> np.ndarray:
    """Entries ``start..stop-1`` of a block-structured stream.

    Args:
        seed: the run's seed (integer >= 0).
        tag: stream purpose (:data:`TAG_INIT`, :data:`TAG_NOISE`, or another integer).
        species: species index ``k``.
        step: time-step index (0 for initial data).
        start: first global particle index wanted.
        stop: one past the last.
        draw: ``draw(rng, count)`` returning an array whose first axis has length ``count``; it
            is always called with ``count = BLOCK_SIZE``.

    Returns:
        The concatenation over the overlapping blocks, sliced to ``stop - start`` rows.
    """
    if stop <= start:
        probe = draw(block_generator(seed, tag, species, step, 0), 1)
        return np.empty((0,) + probe.shape[1:], dtype=probe.dtype)
    b0, b1 = start // BLOCK_SIZE, (stop - 1) // BLOCK_SIZE
    parts = [
        draw(block_generator(seed, tag, species, step, j), BLOCK_SIZE)
        for j in range(b0, b1 + 1)
    ]
    out = np.concatenate(parts, axis=0)
    off = start - b0 * BLOCK_SIZE
    return out[off:off + (stop - start)]


def partition(n_total: int, size: int, rank: int) -> tuple[int, int]:
    """Contiguous block ``[start, stop)`` of ``n_total`` global indices owned by ``rank``."""
    return (n_total * rank) // size, (n_total * (rank + 1)) // size
