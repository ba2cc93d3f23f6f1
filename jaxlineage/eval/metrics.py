"""Metrics of the evaluation layer, in one place: every table's figures come from here.

* :func:`accuracy` (closed set) and :func:`open_set_accuracy` for *identify*;
* :func:`roc_auc` (ties count half), :func:`tpr_at_fpr` and
  :func:`best_threshold_accuracy` for *verify*;
* :func:`mean_std`: every ``±`` is the mean and the sample standard deviation
  (``ddof = 1``) over folds or repetitions;
* :func:`bootstrap_pair_ci`: percentile bootstrap intervals of an AUC / TPR cell
  over (source, derived model) pairs, resampling sources and derived models
  (:func:`weighted_roc_auc` and :func:`weighted_tpr_at_fpr` score one resample
  without materialising it).

All are exact, NumPy, and take "higher = more related" scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxlineage.errors import JaxlineageError

__all__ = [
    "NO_PARENT",
    "MetricError",
    "accuracy",
    "best_threshold_accuracy",
    "bootstrap_pair_ci",
    "mean_std",
    "open_set_accuracy",
    "roc_auc",
    "tpr_at_fpr",
    "weighted_roc_auc",
    "weighted_tpr_at_fpr",
]

#: The label of a query whose parent is not among the candidates (open set).
NO_PARENT = -1


class MetricError(JaxlineageError):
    """Scores or labels a metric cannot use (empty, non-finite, wrong shape)."""


def _scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels).astype(int).reshape(-1)
    if s.ndim != 2 or s.shape[1] != y.size:
        raise MetricError(f"scores must be [K, M] with M = len(labels) = {y.size}; got shape {s.shape}")
    if s.shape[0] == 0:
        raise MetricError("scores have no candidate (K = 0)")
    if np.any((y < NO_PARENT) | (y >= s.shape[0])):
        raise MetricError(
            f"labels must be in [{NO_PARENT}, {s.shape[0] - 1}] ({NO_PARENT} = no parent);"
            f" got {sorted(set(y.tolist()))}"
        )
    return s, y


def accuracy(scores: Any, labels: Any) -> float:
    """Closed-set identification accuracy: the fraction of queries whose true parent scores highest.

    .. math:: \\mathrm{acc} = \\frac1M \\sum_m [\\arg\\max_k S_{km} = y_m]

    Ties go to the first candidate (``argmax``). Queries labelled :data:`NO_PARENT`
    count as wrong (use :func:`open_set_accuracy` for open sets).

    Args:
      scores: ``[K, M]``, higher = more related.
      labels: ``[M]`` index of each query's parent among the K candidates.

    Returns:
      A float in ``[0, 1]``; raises :class:`MetricError` for ``M = 0``.
    """
    s, y = _scores_labels(scores, labels)
    if y.size == 0:
        raise MetricError("accuracy of no query (M = 0)")
    return float(np.mean(np.argmax(s, axis=0) == y))


def open_set_accuracy(predictions: Any, labels: Any) -> dict[str, float]:
    """Accuracy of open-set answers: a candidate index or :data:`NO_PARENT` per query.

    Args:
      predictions: ``[M]`` predicted parent index or ``NO_PARENT``.
      labels: ``[M]`` true parent index or ``NO_PARENT``.

    Returns:
      ``{"accuracy", "known_accuracy", "no_parent_accuracy", "known", "no_parent"}``:
      overall accuracy, accuracy on queries whose parent is a candidate, the
      fraction of parentless queries answered ``NO_PARENT``, and the two counts
      (a rate over no query is NaN).
    """
    p = np.asarray(predictions).astype(int).reshape(-1)
    y = np.asarray(labels).astype(int).reshape(-1)
    if p.shape != y.shape or y.size == 0:
        raise MetricError(f"predictions and labels must be non-empty and of one length; got {p.size} and {y.size}")
    known = y != NO_PARENT

    def rate(mask):
        return float(np.mean(p[mask] == y[mask])) if mask.any() else float("nan")

    return {
        "accuracy": float(np.mean(p == y)),
        "known_accuracy": rate(known),
        "no_parent_accuracy": rate(~known),
        "known": int(known.sum()),
        "no_parent": int((~known).sum()),
    }


def _pos_neg(pos: Any, neg: Any) -> tuple[np.ndarray, np.ndarray]:
    pos = np.asarray(pos, np.float64).ravel()
    neg = np.asarray(neg, np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise MetricError(f"need at least one positive and one negative score; got {pos.size} and {neg.size}")
    if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(neg))):
        raise MetricError("scores must be finite")
    return pos, neg


def roc_auc(pos_scores: Any, neg_scores: Any) -> float:
    """Exact area under the ROC curve (Mann-Whitney U with ties counted half).

    .. math::
        \\mathrm{AUC} = \\frac{1}{P\\,Q} \\sum_{i=1}^{P} \\sum_{j=1}^{Q}
            \\Big( [s^+_i > s^-_j] + \\tfrac12 [s^+_i = s^-_j] \\Big).

    Args:
      pos_scores: ``[P]`` scores of positive (related) pairs, higher = more related.
      neg_scores: ``[Q]`` scores of negative pairs.

    Returns:
      The AUC in ``[0, 1]``, in ``O((P + Q) log Q)``.

    References:
      Hanley & McNeil, "The meaning and use of the area under a ROC curve", Radiology 1982.
    """
    pos, neg = _pos_neg(pos_scores, neg_scores)
    neg = np.sort(neg)
    below = np.searchsorted(neg, pos, side="left")
    not_above = np.searchsorted(neg, pos, side="right")
    return float(np.sum(below + not_above) / (2.0 * pos.size * neg.size))


def tpr_at_fpr(pos_scores: Any, neg_scores: Any, fpr: float) -> float:
    """The best true-positive rate of a threshold whose false-positive rate is at most ``fpr``.

    A threshold ``t`` calls ``score >= t`` positive; over every distinct score and ``+inf``,

    .. math::
        \\mathrm{TPR@FPR}(\\beta) = \\max_t \\{\\, \\mathrm{TPR}(t) : \\mathrm{FPR}(t) \\le \\beta \\,\\}.

    Ties are never split: with ``Q`` negatives, ``fpr < 1 / Q`` allows no false
    positive, so the rate is the fraction of positives strictly above every negative.

    Args:
      pos_scores: ``[P]``. neg_scores: ``[Q]``. fpr: the budget ``β`` in ``[0, 1]``.

    Returns:
      The TPR in ``[0, 1]``.
    """
    if not 0.0 <= fpr <= 1.0:
        raise MetricError(f"fpr must be in [0, 1]; got {fpr}")
    pos, neg = _pos_neg(pos_scores, neg_scores)
    thresholds = np.concatenate([np.unique(np.concatenate([pos, neg])), [np.inf]])
    # Integer counts of false positives against fpr * Q: no rounding in FP / Q.
    false_pos = neg.size - np.searchsorted(np.sort(neg), thresholds, side="left")
    true_pos = pos.size - np.searchsorted(np.sort(pos), thresholds, side="left")
    return float(np.max(true_pos[false_pos <= fpr * neg.size]) / pos.size)


def best_threshold_accuracy(pos_scores: Any, neg_scores: Any) -> float:
    """The best balanced accuracy of one threshold: ``max_t (mean(pos > t) + mean(neg <= t)) / 2``.

    Exact over every distinct value and ``-inf`` (sorted counts). A reference
    point for classifiers that decide by a threshold on one statistic.
    """
    pos, neg = _pos_neg(pos_scores, neg_scores)
    pos, neg = np.sort(pos), np.sort(neg)
    ts = np.concatenate([[-np.inf], np.unique(np.concatenate([pos, neg]))])
    tpr = 1.0 - np.searchsorted(pos, ts, side="right") / pos.size
    tnr = np.searchsorted(neg, ts, side="right") / neg.size
    return float(np.max(0.5 * (tpr + tnr)))


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std", "n", "values"}`` with the sample standard deviation (``ddof = 1``; 0 for one value).

    Every ``±`` of the library is this, over folds or repetitions. Non-finite
    values are dropped (and counted out of ``n``).
    """
    v = np.asarray([float(x) for x in values], np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise MetricError("mean_std of no finite value")
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "n": int(v.size),
        "values": v.tolist(),
    }


# --------------------------------------------------------------------------- bootstrap over sources and derived models


def _weighted(pos, neg, wp, wn):
    pos, neg = _pos_neg(pos, neg)
    wp, wn = np.asarray(wp, np.float64).ravel(), np.asarray(wn, np.float64).ravel()
    if wp.shape != pos.shape or wn.shape != neg.shape or np.any(wp < 0) or np.any(wn < 0):
        raise MetricError("weights must be non-negative, one per score")
    if wp.sum() <= 0 or wn.sum() <= 0:
        raise MetricError("positive and negative weights must each have a positive sum")
    return pos, neg, wp, wn


def weighted_roc_auc(pos_scores: Any, neg_scores: Any, pos_weights: Any, neg_weights: Any) -> float:
    """The ROC AUC of scores repeated by (integer or real) weights, without repeating them.

    .. math::
        \\mathrm{AUC}_w = \\frac{\\sum_{i,j} u_i v_j \\big([s^+_i > s^-_j] + \\tfrac12 [s^+_i = s^-_j]\\big)}
            {\\sum_i u_i \\sum_j v_j}

    With integer weights it equals :func:`roc_auc` of the scores repeated ``u_i`` / ``v_j`` times.
    """
    pos, neg, wp, wn = _weighted(pos_scores, neg_scores, pos_weights, neg_weights)
    order = np.argsort(neg, kind="stable")
    neg, wn = neg[order], wn[order]
    cum = np.concatenate([[0.0], np.cumsum(wn)])
    below = cum[np.searchsorted(neg, pos, side="left")]
    not_above = cum[np.searchsorted(neg, pos, side="right")]
    return float(np.sum(wp * (below + not_above)) / (2.0 * wp.sum() * wn.sum()))


def weighted_tpr_at_fpr(pos_scores: Any, neg_scores: Any, pos_weights: Any, neg_weights: Any, fpr: float) -> float:
    """:func:`tpr_at_fpr` of scores repeated by weights (false positives counted by weight against ``fpr * sum v``)."""
    if not 0.0 <= fpr <= 1.0:
        raise MetricError(f"fpr must be in [0, 1]; got {fpr}")
    pos, neg, wp, wn = _weighted(pos_scores, neg_scores, pos_weights, neg_weights)
    thresholds = np.concatenate([np.unique(np.concatenate([pos, neg])), [np.inf]])

    def above(s, w):  # weight of scores >= each threshold
        order = np.argsort(s, kind="stable")
        tail = np.concatenate([np.cumsum(w[order][::-1])[::-1], [0.0]])
        return tail[np.searchsorted(s[order], thresholds, side="left")]

    fp, tp = above(neg, wn), above(pos, wp)
    # A small tolerance: weights are counts, sums of floats of integers are exact up to 2^53.
    return float(np.max(tp[fp <= fpr * wn.sum() + 1e-9]) / wp.sum())


def bootstrap_pair_ci(
    scores: Any,
    positive: Any,
    negative: Any,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    fprs: Sequence[float] = (0.01,),
) -> dict[str, Any]:
    """Percentile bootstrap intervals of a cell's AUC and TPR at FPR, resampling sources and derived models.

    Each resample draws the ``K`` sources (rows) and the ``M`` derived models
    (columns, positives and negatives alike) with replacement, independently
    (NumPy ``default_rng(seed)``: rows, then columns, per resample); pair
    ``(k, m)`` then counts ``a_k b_m`` times (``a``, ``b`` the draw counts), and the
    cell's figure is :func:`weighted_roc_auc` / :func:`weighted_tpr_at_fpr` of the
    ``positive`` and ``negative`` pairs with those weights (pairs with a non-finite
    score are left out, as in the point estimate). Resamples without a positive
    or a negative pair are skipped and counted.

    Args:
      scores: ``[K, M]`` higher = more related (``NaN`` = unreadable).
      positive, negative: disjoint boolean ``[K, M]`` masks.
      n_boot: resamples. seed: NumPy seed. level: the interval's coverage.
      fprs: false positive rates of the TPR intervals.

    Returns:
      ``{"auc": [lo, hi], "tpr@1%fpr": [lo, hi], ..., "n_boot": valid resamples, "n_skipped": int,
      "level": level}``; the intervals are ``None`` when no resample was valid.
    """
    s = np.asarray(scores, np.float64)
    pos_m, neg_m = np.asarray(positive, bool), np.asarray(negative, bool)
    if s.ndim != 2 or pos_m.shape != s.shape or neg_m.shape != s.shape:
        raise MetricError(f"scores and masks must be [K, M] of one shape; got {s.shape}, {pos_m.shape}, {neg_m.shape}")
    if np.any(pos_m & neg_m):
        raise MetricError("a pair cannot be both positive and negative")
    if not 0.0 < level < 1.0 or n_boot < 1:
        raise MetricError(f"level must be in (0, 1) and n_boot >= 1; got {level}, {n_boot}")
    ok = np.isfinite(s)
    pk, pm = np.nonzero(pos_m & ok)
    nk, nm = np.nonzero(neg_m & ok)
    ps, ns = s[pk, pm], s[nk, nm]
    k, m = s.shape
    rng = np.random.default_rng(seed)
    names = ["auc"] + [f"tpr@{100 * f:g}%fpr" for f in fprs]
    values: dict[str, list[float]] = {n: [] for n in names}
    skipped = 0
    for _ in range(int(n_boot)):
        a = np.bincount(rng.integers(0, k, k), minlength=k).astype(np.float64)
        b = np.bincount(rng.integers(0, m, m), minlength=m).astype(np.float64)
        wp, wn = a[pk] * b[pm], a[nk] * b[nm]
        if ps.size == 0 or ns.size == 0 or wp.sum() == 0 or wn.sum() == 0:
            skipped += 1
            continue
        values["auc"].append(weighted_roc_auc(ps, ns, wp, wn))
        for f, n in zip(fprs, names[1:]):
            values[n].append(weighted_tpr_at_fpr(ps, ns, wp, wn, f))
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    out: dict[str, Any] = {n: ([float(v) for v in np.percentile(values[n], q)] if values[n] else None) for n in names}
    out.update(n_boot=int(n_boot) - skipped, n_skipped=skipped, level=float(level))
    return out
