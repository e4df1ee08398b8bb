"""Counter-based Gaussian noise keyed by particle identity (Philox4x64-10, compiled).

Why: once particles migrate with the mesh partition, a rank holds an arbitrary set of particle
ids, so a stream shared by a block of consecutive ids (:mod:`fem_crossdiff.particles.rng`) would
force every rank to generate every block. A counter-based generator evaluates the numbers of one
particle directly from its key, in any order, on any rank.

Scheme (it defines every Brownian path, so it is documented here and frozen): the numbers of
particle ``id`` of species ``k`` at step ``s`` for purpose ``tag`` are the outputs of the Philox4x64
bijection with 10 rounds (Salmon et al., SC'11; the generator behind ``numpy.random.Philox``) on

* key ``(seed, 0)``,
* counter ``(id, s, tag * 2**32 + k, j)``, ``j = 0, 1, ...`` one 4-word block after another,

each 64-bit word ``x`` mapped to the uniform ``((x >> 11) + 1/2) 2**-53`` in ``(0, 1)`` and
each pair of uniforms ``(u1, u2)`` to the two normals ``sqrt(-2 ln u1) (cos 2 pi u2, sin 2 pi
u2)`` (Box-Muller), so one block gives four normals. The words are bit-for-bit those of
``numpy.random.Philox(key=(seed, 0), counter=c - 1).random_raw(4)`` (numpy increments the counter
before its first block), which ``tests/test_counter_rng.py`` checks.

Cost: one compiled Philox block (about 300 integer operations) per four normals; measured in
``benchmarks/bench_particles_mesh.py``.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["philox4x64", "normals", "MAX_SEED"]

#: seeds are 64-bit keys.
MAX_SEED = 2**64 - 1

_M0 = np.uint64(0xD2E7470EE14C6C93)
_M1 = np.uint64(0xCA5A826395121157)
_W0 = np.uint64(0x9E3779B97F4A7C15)
_W1 = np.uint64(0xBB67AE8584CAA73B)
_S11 = np.uint64(11)


@intrinsic
def _mulhilo(typingctx, a, b):
    """High and low 64-bit words of the 128-bit product ``a b`` (one LLVM ``i128`` multiply).

    Why an intrinsic: numba has no 128-bit integers, and emulating the product on 32-bit halves
    doubled the cost of a Philox block.
    """
    sig = types.UniTuple(types.uint64, 2)(types.uint64, types.uint64)

    def codegen(context, builder, signature, args):
        i64, i128 = ir.IntType(64), ir.IntType(128)
        prod = builder.mul(builder.zext(args[0], i128), builder.zext(args[1], i128))
        hi = builder.trunc(builder.lshr(prod, ir.Constant(i128, 64)), i64)
        lo = builder.trunc(prod, i64)
        return context.make_tuple(builder, signature.return_type, [hi, lo])

    return sig, codegen


@njit(cache=True, inline="always")
def _philox(c0, c1, c2, c3, k0, k1):
    for r in range(10):
        if r:
            k0 = k0 + _W0
            k1 = k1 + _W1
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


@njit(cache=True)
def _blocks(counters, k0, k1, out):
    for i in range(counters.shape[0]):
        w = _philox(counters[i, 0], counters[i, 1], counters[i, 2], counters[i, 3], k0, k1)
        for j in range(4):
            out[i, j] = w[j]


@njit(cache=True)
def _normals(ids, c1, c2, k0, d, out):
    two_pi = 2.0 * np.pi
    scale = 2.0**-53
    nblk = (d + 3) // 4
    for i in range(ids.shape[0]):
        c0 = np.uint64(ids[i])
        for j in range(nblk):
            w = _philox(c0, c1, c2, np.uint64(j), k0, np.uint64(0))
            for h in range(2):
                col = 4 * j + 2 * h
                if col >= d:  # the pair is not used (e.g. the second pair in 2D): not computed
                    break
                u1 = (np.int64(w[2 * h] >> _S11) + 0.5) * scale
                u2 = (np.int64(w[2 * h + 1] >> _S11) + 0.5) * scale
                r = np.sqrt(-2.0 * np.log(u1))
                out[i, col] = r * np.cos(two_pi * u2)
                if col + 1 < d:
                    out[i, col + 1] = r * np.sin(two_pi * u2)


def _key(seed) -> np.uint64:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not (
            0 <= int(seed) <= MAX_SEED):
        raise ValueError(f"seed must be an integer in [0, 2**64 - 1], got {seed!r}")
    return np.uint64(int(seed))


def philox4x64(counters: np.ndarray, key) -> np.ndarray:
    """The Philox4x64-10 bijection of ``counters (P, 4)`` (uint64) under ``key = (k0, k1)``.

    Returns:
        ``(P, 4)`` uint64 words.
    """
    c = np.ascontiguousarray(counters, dtype=np.uint64).reshape(-1, 4)
    out = np.empty_like(c)
    _blocks(c, np.uint64(int(key[0])), np.uint64(int(key[1])), out)
    return out


def normals(seed: int, tag: int, species: int, step: int, ids: np.ndarray, d: int) -> np.ndarray:
    """Standard normals ``(len(ids), d)``; row ``i`` depends only on the key and ``ids[i]``.

    Args:
        seed: The run's seed, an integer in ``[0, 2**64 - 1]``.
        tag: Purpose of the stream (e.g. :data:`fem_crossdiff.particles.rng.TAG_NOISE`),
            ``0 <= tag < 2**32``.
        species: Species index, ``0 <= species < 2**32``.
        step: Time-step index, ``>= 0``.
        ids: Particle identities (global index within the species), integers ``>= 0``.
        d: Numbers per particle (the space dimension), ``>= 1``.

    Returns:
        ``float64`` array of shape ``(len(ids), d)`` (see the module docstring for the scheme).
    """
    k0 = _key(seed)
    for name, v in (("tag", tag), ("species", species)):
        if not 0 <= int(v) < 2**32:
            raise ValueError(f"{name} must be an integer in [0, 2**32), got {v!r}")
    if int(step) < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    if int(d) < 1:
        raise ValueError(f"d must be an integer >= 1, got {d!r}")
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if ids.size and int(ids.min()) < 0:
        raise ValueError(f"ids must be >= 0, got min {int(ids.min())}")
    out = np.empty((ids.size, int(d)))
    c2 = np.uint64((int(tag) << 32) + int(species))
    _normals(ids, np.uint64(int(step)), c2, k0, int(d), out)
    return out
