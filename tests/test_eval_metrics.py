import itertools

import numpy as np
import pytest

from jaxlineage.eval import metrics as m


def _auc_brute(pos, neg):
    return np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)])


def test_roc_auc_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pos, neg = rng.integers(0, 5, 7), rng.integers(0, 5, 9)
        assert m.roc_auc(pos, neg) == pytest.approx(_auc_brute(pos, neg))


def test_tpr_at_fpr_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(20):
        pos, neg = rng.integers(0, 6, 8).astype(float), rng.integers(0, 6, 10).astype(float)
        for fpr in (0.0, 0.05, 0.1, 0.5, 1.0):
            best = max(
                np.mean(pos >= t)
                for t in list(np.unique(np.r_[pos, neg])) + [np.inf]
                if np.sum(neg >= t) <= fpr * neg.size
            )
            assert m.tpr_at_fpr(pos, neg, fpr) == pytest.approx(best)


def test_best_threshold_accuracy_brute_force():
    rng = np.random.default_rng(2)
    pos, neg = rng.normal(1, 1, 30), rng.normal(0, 1, 40)
    best = max(0.5 * (np.mean(pos > t) + np.mean(neg <= t)) for t in np.r_[-np.inf, pos, neg])
    assert m.best_threshold_accuracy(pos, neg) == pytest.approx(best)


def test_accuracy_and_open_set():
    s = np.array([[3.0, 0.0, 1.0], [1.0, 2.0, 5.0]])
    assert m.accuracy(s, [0, 1, 0]) == pytest.approx(2 / 3)
    out = m.open_set_accuracy([0, m.NO_PARENT, 1, m.NO_PARENT], [0, m.NO_PARENT, 0, 1])
    assert out["accuracy"] == 0.5 and out["known_accuracy"] == pytest.approx(1 / 3)
    assert out["no_parent_accuracy"] == 1.0 and out["known"] == 3 and out["no_parent"] == 1


def test_mean_std_is_sample_std():
    out = m.mean_std([1.0, 2.0, 4.0])
    assert out["std"] == pytest.approx(np.std([1, 2, 4], ddof=1)) and out["n"] == 3
    assert m.mean_std([0.5])["std"] == 0.0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: m.roc_auc([], [1.0]), "at least one positive"),
        (lambda: m.roc_auc([np.nan], [1.0]), "finite"),
        (lambda: m.accuracy(np.zeros((2, 3)), [0, 1]), r"\[K, M\]"),
        (lambda: m.accuracy(np.zeros((2, 2)), [0, 5]), "labels must be in"),
        (lambda: m.mean_std([np.nan]), "no finite"),
        (lambda: m.tpr_at_fpr([1.0], [0.0], 2.0), "fpr must be"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(m.MetricError, match=match):
        call()
