"""Counter-based noise keyed by particle identity (particles/counter_rng.py)."""

import numpy as np
import pytest
from scipy import stats

from fem_crossdiff.particles import counter_rng as cr


def _numpy_philox_block(counter, key):
    """The first block of numpy's Philox4x64 started at ``counter - 1`` (it increments first)."""
    v = sum(int(w) << (64 * i) for i, w in enumerate(counter))
    v = (v - 1) % 2**256
    c = np.array([(v >> (64 * i)) & (2**64 - 1) for i in range(4)], dtype=np.uint64)
    bg = np.random.Philox(key=np.array(key, dtype=np.uint64), counter=c)
    return bg.random_raw(4)


@pytest.mark.parametrize("key", [(0, 0), (123, 0), (2**64 - 1, 2**63 + 5)])
def test_philox_matches_numpy_bit_for_bit(key):
    rng = np.random.default_rng(7)
    counters = rng.integers(0, 2**63, size=(20, 4), dtype=np.uint64) * np.uint64(2)
    counters[0] = 0
    counters[1] = [2**64 - 1, 0, 3, 0]  # the carry of numpy's increment is undone correctly
    out = cr.philox4x64(counters, key)
    for c, o in zip(counters, out, strict=True):
        np.testing.assert_array_equal(o, _numpy_philox_block(c, key))


def test_normals_are_standard_gaussian():
    z = cr.normals(11, 1, 0, 5, np.arange(200_000), 3)
    assert z.shape == (200_000, 3)
    for col in z.T:
        assert abs(col.mean()) < 5 * 1 / np.sqrt(z.shape[0])
        assert abs(col.var() - 1.0) < 5 * np.sqrt(2.0 / z.shape[0])
        assert stats.kstest(col, "norm").pvalue > 1e-3
    c = np.corrcoef(z.T)
    assert np.abs(c - np.eye(3)).max() < 5 / np.sqrt(z.shape[0])


def test_rows_depend_only_on_the_key_and_the_id():
    ids = np.arange(5000)
    z = cr.normals(3, 1, 1, 17, ids, 2)
    perm = np.random.default_rng(0).permutation(ids.size)
    np.testing.assert_array_equal(cr.normals(3, 1, 1, 17, ids[perm], 2), z[perm])
    np.testing.assert_array_equal(cr.normals(3, 1, 1, 17, ids[100:200], 2), z[100:200])
    # the first d columns do not depend on how many are drawn
    np.testing.assert_array_equal(cr.normals(3, 1, 1, 17, ids, 5)[:, :2], z)
    for other in [(4, 1, 1, 17), (3, 0, 1, 17), (3, 1, 0, 17), (3, 1, 1, 18)]:
        w = cr.normals(*other, ids, 2)
        assert abs(np.corrcoef(w[:, 0], z[:, 0])[0, 1]) < 0.05


@pytest.mark.parametrize("args, name", [
    ((-1, 1, 0, 0, [0], 2), "seed"), ((2**64, 1, 0, 0, [0], 2), "seed"),
    ((1, -1, 0, 0, [0], 2), "tag"), ((1, 1, 2**32, 0, [0], 2), "species"),
    ((1, 1, 0, -1, [0], 2), "step"), ((1, 1, 0, 0, [-3], 2), "ids"),
    ((1, 1, 0, 0, [0], 0), "d"),
])
def test_bad_keys_are_refused(args, name):
    with pytest.raises(ValueError, match=name):
        cr.normals(*args)
