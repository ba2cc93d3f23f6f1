"""From scores to a forest: edge weights under a direction rule, the kurtosis order, and recovery.

Part of :mod:`jaxlineage.eval.tree`, which re-exports the public names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxlineage.eval.tree._common import (
    DEFAULT_STRENGTH,
    Direction,
    KurtosisOrder,
    Solver,
    TreeError,
    _as_direction,
    _as_order,
    _check_square,
    _check_vector,
    _ids,
)
from jaxlineage.eval.tree._solver import arborescence_weight, max_arborescence
from jaxlineage.graph import LineageGraph

# ----------------------------------------------------------------------------
# Direction and edge weights.


def _score_gap(sym: np.ndarray) -> float:
    """Mean gap below the best off-diagonal score: MoTHer's ``mean(d)`` for ``S = -d`` when ``min d = 0``."""
    vals = sym[np.isfinite(sym)]
    gap = float(np.mean(vals.max() - vals)) if vals.size else 0.0
    return gap if gap > 0 else 1.0


def edge_weights(
    scores: Any,
    *,
    direction: Direction | str = Direction.NONE,
    kurtosis: Any = None,
    kurtosis_order: KurtosisOrder | str = KurtosisOrder.DECREASING,
    direction_scores: Any = None,
    strength: float = DEFAULT_STRENGTH,
) -> np.ndarray:
    r"""Edge weights ``W[a, b]`` (``a -> b``, higher = better) from scores and a direction rule.

    .. math::
        W &= S && \text{(NONE)} \\
        W[a, b] &= \bar S[a, b] - \lambda\, \sigma\, \mathbb{1}[E[a, b] < 0]
        && \text{(KURTOSIS, TAYLOR)}

    with :math:`\bar S = (S + S^\top)/2` (the edge evidence), :math:`\lambda` =
    ``strength``, :math:`\sigma = \operatorname{mean}_{a \ne b}(\max \bar S - \bar S[a, b])`
    the mean score gap (MoTHer scales by ``mean(d)`` of the distances ``d``; for
    ``S = -d`` this is ``mean(d) - min(d)``, and it is defined for any score)
    and the direction evidence

    * KURTOSIS: :math:`E[a, b] = k_a - k_b` (``DECREASING``) or :math:`k_b - k_a` (``INCREASING``);
    * TAYLOR: :math:`E[a, b] = D[a, b] - D[b, a]`, ``D`` a ``FIRST_ORDER`` or
      ``LINEARIZED`` score matrix (``direction_scores``; by default ``scores`` itself).

    An edge against the evidence pays the penalty; equal evidence (``E = 0``) pays
    nothing either way, as in MoTHer.

    Args:
      scores: ``[P, P]`` scores over ordered pairs (the diagonal is ignored).
      direction: the rule (:class:`Direction` or its name).
      kurtosis: ``[P]`` per-model statistics (:func:`weight_kurtosis`), for KURTOSIS.
      kurtosis_order: :class:`KurtosisOrder` (default: MoTHer's fine-tuning rule).
      direction_scores: ``[P, P]`` for TAYLOR (default: ``scores``).
      strength: :math:`\lambda` (MoTHer: 0.3). Large values make direction a hard
        constraint; 0 ignores it.

    Returns:
      ``[P, P]`` float64 weights, the diagonal NaN.

    Raises:
      TreeError: a non-square or non-finite matrix, fewer than 2 models, a
        missing or misshapen ``kurtosis`` / ``direction_scores``, or a negative ``strength``.
    """
    s = _check_square(scores, "scores")
    direction = _as_direction(direction)
    if not (isinstance(strength, (int, float)) and math.isfinite(strength) and strength >= 0):
        raise TreeError(f"strength must be a finite number >= 0; got {strength!r}")
    if direction is Direction.NONE:
        return s
    p = s.shape[0]
    if direction is Direction.KURTOSIS:
        if kurtosis is None:
            raise TreeError("Direction.KURTOSIS needs kurtosis=[P] (see weight_kurtosis)")
        k = _check_vector(kurtosis, p, "kurtosis")
        order = _as_order(kurtosis_order)
        if order is KurtosisOrder.AUTO:
            raise TreeError(
                "edge_weights needs a definite kurtosis order; KurtosisOrder.AUTO is resolved by"
                " recover / recover_parents, or call choose_kurtosis_order first"
            )
        sign = 1.0 if order is KurtosisOrder.DECREASING else -1.0
        evidence = sign * (k[:, None] - k[None, :])
    else:
        d = s if direction_scores is None else _check_square(direction_scores, "direction_scores")
        if d.shape != s.shape:
            raise TreeError(f"direction_scores has shape {d.shape} but scores {s.shape}")
        evidence = d - d.T
    sym = 0.5 * (s + s.T)
    w = sym - strength * _score_gap(sym) * (evidence < 0)
    np.fill_diagonal(w, np.nan)
    return w


def _gap_threshold(w: np.ndarray) -> float:
    """The largest gap in the sorted best incoming weights: a model whose best parent scores below it starts a tree."""
    best_in = np.sort(np.max(np.where(np.isfinite(w), w, -np.inf), axis=0))
    best_in = best_in[np.isfinite(best_in)]
    if best_in.size < 2:
        return float(np.min(best_in) - 1.0) if best_in.size else 0.0
    i = int(np.argmax(np.diff(best_in)))
    return float(0.5 * (best_in[i] + best_in[i + 1]))


def choose_kurtosis_order(
    scores: Any,
    kurtosis: Any,
    *,
    strength: float = DEFAULT_STRENGTH,
    num_roots: int | None = None,
    solver: Solver | str = Solver.DENSE,
) -> KurtosisOrder:
    r"""The kurtosis order (:class:`KurtosisOrder`) that the scores support, chosen without labels.

    For each order, the maximum spanning forest of its :func:`edge_weights` (KURTOSIS rule)
    with ``num_roots`` roots (one tree when None, so that both forests have ``P - k`` edges);
    the order whose forest has the larger total edge weight wins (``DECREASING``, MoTHer's
    default, on a tie). Under the wrong order a forest must either pay the penalty on many
    edges or chain models along the reversed kurtosis ranking through longer edges, so its
    best weight is lower: a minimum-evolution choice between the two monotone hypotheses.

    Args:
      scores, kurtosis, strength: as in :func:`edge_weights`.
      num_roots: the number of trees, if known (else the comparison uses one tree).
      solver: :class:`Solver` (default ``DENSE``: two solves).

    Returns:
      ``KurtosisOrder.DECREASING`` or ``KurtosisOrder.INCREASING``.
    """
    k = 1 if num_roots is None else num_roots
    best, best_w = KurtosisOrder.DECREASING, -math.inf
    for order in (KurtosisOrder.DECREASING, KurtosisOrder.INCREASING):
        w = edge_weights(
            scores, direction=Direction.KURTOSIS, kurtosis=kurtosis, kurtosis_order=order, strength=strength
        )
        total = arborescence_weight(w, max_arborescence(w, num_roots=k, solver=solver))  # edges only: roots score 0
        if total > best_w:
            best, best_w = order, total
    return best


def recover_parents(
    scores: Any,
    *,
    direction: Direction | str = Direction.NONE,
    kurtosis: Any = None,
    kurtosis_order: KurtosisOrder | str = KurtosisOrder.DECREASING,
    direction_scores: Any = None,
    strength: float = DEFAULT_STRENGTH,
    num_roots: int | None = None,
    root_scores: Any = None,
    solver: Solver | str = Solver.NETWORKX,
) -> np.ndarray:
    """:func:`recover` as a parent index array ``[P]`` (``-1`` for roots)."""
    if _as_direction(direction) is Direction.KURTOSIS and _as_order(kurtosis_order) is KurtosisOrder.AUTO:
        kurtosis_order = choose_kurtosis_order(scores, kurtosis, strength=strength, num_roots=num_roots, solver=solver)
    w = edge_weights(
        scores,
        direction=direction,
        kurtosis=kurtosis,
        kurtosis_order=kurtosis_order,
        direction_scores=direction_scores,
        strength=strength,
    )
    if num_roots is None and root_scores is None:
        root_scores = _gap_threshold(w)
    return max_arborescence(w, root_scores=root_scores, num_roots=num_roots, solver=solver)


def recover(
    scores: Any,
    *,
    ids: Sequence[str] | None = None,
    direction: Direction | str = Direction.NONE,
    kurtosis: Any = None,
    kurtosis_order: KurtosisOrder | str = KurtosisOrder.DECREASING,
    direction_scores: Any = None,
    strength: float = DEFAULT_STRENGTH,
    num_roots: int | None = None,
    root_scores: Any = None,
    solver: Solver | str = Solver.NETWORKX,
) -> LineageGraph:
    r"""Recovers the lineage forest of ``P`` models from their pairwise scores.

    Edge weights :func:`edge_weights` (scores plus the direction rule), then
    :func:`max_arborescence` with a virtual root. How many trees:

    * ``num_roots`` given: exactly that many (e.g. the number of base models);
    * else ``root_scores`` given: each model's score for starting a tree (a
      scalar is a threshold on the edge weights);
    * else the **largest-gap threshold**: sort each model's best incoming weight
      :math:`m_b = \max_a W[a, b]`; the threshold is the midpoint of the largest
      gap between consecutive values. Unrelated models' best edges are far
      weaker than a derived model's edge to its parent; when the trees are not
      separated by a gap (or there is only one) this over- or under-splits,
      so pass ``num_roots`` when it is known.

    Args:
      scores: ``[P, P]``, ``S[a, b]`` scores ``a`` as ``b``'s parent (higher =
        more likely); the diagonal is ignored.
      ids: the models' ids (default ``"0"..``).
      direction, kurtosis, kurtosis_order, direction_scores, strength: see
        :func:`edge_weights`.
      num_roots: the number of trees, if known.
      root_scores: a scalar or ``[P]``, see :func:`max_arborescence`.
      solver: :class:`Solver` (default: networkx's Edmonds; ``DENSE`` is faster).

    Returns:
      The recovered forest as a :class:`~jaxlineage.graph.LineageGraph` (one
      parent per non-root model, nodes in ``ids`` order; a merged model keeps one of its
      parents, see :func:`recover_dag` for a second).

    Raises:
      TreeError: see :func:`edge_weights` and :func:`max_arborescence`.
    """
    p = np.shape(scores)[0] if np.ndim(scores) == 2 else -1
    parents = recover_parents(
        scores,
        direction=direction,
        kurtosis=kurtosis,
        kurtosis_order=kurtosis_order,
        direction_scores=direction_scores,
        strength=strength,
        num_roots=num_roots,
        root_scores=root_scores,
        solver=solver,
    )
    names = _ids(ids, p)
    return LineageGraph.from_parents({names[b]: None if a < 0 else names[a] for b, a in enumerate(parents)})
