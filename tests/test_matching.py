"""jaxlineage.matching: the one Hungarian solver, column matching and weight matching, against brute force."""

import itertools

import numpy as np
import pytest

from jaxlineage import matching


def _best(s: np.ndarray, maximize: bool = True) -> float:
    """The best summed score over every injective assignment of rows to columns (brute force)."""
    n, m = s.shape
    sums = [s[np.arange(n), list(p)].sum() for p in itertools.permutations(range(m), n)]
    return max(sums) if maximize else min(sums)


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (5, 5), (6, 6), (3, 5)])
def test_hungarian_equals_brute_force(shape):
    rng = np.random.default_rng(sum(shape))
    for trial in range(20):
        s = rng.normal(size=shape)
        if trial % 4 == 0:
            s = np.round(s)  # ties
        for maximize in (True, False):
            perm = matching.hungarian(s, maximize=maximize)
            assert perm.shape == (shape[0],) and len(set(perm.tolist())) == shape[0]
            assert s[np.arange(shape[0]), perm].sum() == pytest.approx(_best(s, maximize), abs=1e-12)


def test_hungarian_finds_a_hidden_permutation():
    rng = np.random.default_rng(0)
    pi = rng.permutation(40)
    s = rng.normal(size=(40, 40)) * 0.1
    s[np.arange(40), pi] += 10.0
    np.testing.assert_array_equal(matching.hungarian(s), pi)


def test_hungarian_rejects_bad_input():
    with pytest.raises(matching.MatchingError, match=r"\(3, 2\)"):
        matching.hungarian(np.zeros((3, 2)))
    with pytest.raises(matching.MatchingError, match="non-finite"):
        matching.hungarian(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(matching.MatchingError, match="shape"):
        matching.hungarian(np.zeros(3))


def _corr_sum(a, b, perm):
    return sum(np.corrcoef(a[:, i], b[:, perm[i]])[0, 1] for i in range(a.shape[1]))


def test_match_columns_maximises_summed_correlation():
    rng = np.random.default_rng(1)
    for _ in range(10):
        a = rng.normal(size=(7, 5))
        b = rng.normal(size=(7, 5))
        perm = matching.match_columns(a, b)
        best = max(_corr_sum(a, b, p) for p in itertools.permutations(range(5)))
        assert _corr_sum(a, b, perm) == pytest.approx(best, abs=1e-9)
    # A permuted, rescaled, shifted copy is matched exactly.
    q = rng.permutation(5)  # column j of b is column q[j] of a, so a's column i is b's column argsort(q)[i]
    np.testing.assert_array_equal(matching.match_columns(a, 3.0 * a[:, q] + 1.0), q.argsort())
    with pytest.raises(matching.MatchingError, match=r"\(7, 5\), \(7, 4\)"):
        matching.match_columns(a, a[:, :4])


def test_tile_index_permutes_each_block():
    perm = np.array([2, 0, 1])
    np.testing.assert_array_equal(matching.tile_index(perm, 3, 1), perm)
    np.testing.assert_array_equal(matching.tile_index(perm, 3, 2), [2, 0, 1, 5, 3, 4])


def _two_layer(rng, d=4, h=3, o=2):
    return [rng.normal(size=(d, h)), rng.normal(size=h), rng.normal(size=(h, o))]


# Leaves: w1 [d, h] (axis 1), b1 [h] (axis 0), w2 [h, o] (axis 0): one spec entry of h units.
_AXES = [[(1, 0, 3, 1)], [(0, 0, 3, 1)], [(0, 0, 3, 1)]]


def _permuted(leaves, pi):
    return [leaves[0][:, pi], leaves[1][pi], leaves[2][pi, :]]


def test_weight_matching_recovers_a_permuted_copy_and_equals_brute_force_on_one_entry():
    rng = np.random.default_rng(2)
    for _ in range(10):
        a = _two_layer(rng)
        pi = rng.permutation(3)
        b = _permuted(a, pi)
        perms, dist, sweeps, converged = matching.weight_matching(a, b, _AXES, [3])
        assert dist == pytest.approx(0.0, abs=1e-12) and converged and sweeps == 1
        np.testing.assert_array_equal(b[1][perms[0]], a[1])
        # Unrelated models: one entry, so coordinate descent is exact; compare with every permutation.
        c = _two_layer(rng)
        _, dist, _, converged = matching.weight_matching(a, c, _AXES, [3])
        brute = min(
            np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(a, _permuted(c, list(p)))))
            for p in itertools.permutations(range(3))
        )
        assert converged and dist == pytest.approx(brute, rel=1e-12)
