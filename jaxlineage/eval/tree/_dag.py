"""Merges: a second parent after the arborescence when its score passes a p-value test, and DAG edge accuracy.

Part of :mod:`jaxlineage.eval.tree`, which re-exports the public names.

A maximum spanning arborescence gives every model exactly one parent, so a merged model (a weighted
average of two fine-tunes: two parents) keeps one of them and loses the other edge. :func:`second_parents`
keeps the arborescence's answer and adds, per model, at most one second parent whose raw score is
significant against a null of non-edge scores (conformal p-values, Bonferroni over the model's candidates,
optionally Holm over the models), under constraints that keep the graph a DAG.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxlineage.eval.tree._accuracy import same_models
from jaxlineage.eval.tree._common import (
    DEFAULT_STRENGTH,
    Direction,
    KurtosisOrder,
    Solver,
    TreeError,
    _as_direction,
    _as_order,
    _check_square,
    _ids,
)
from jaxlineage.eval.tree._recovery import choose_kurtosis_order, edge_weights, recover_parents
from jaxlineage.eval.tree._solver import _find_cycle
from jaxlineage.graph import LineageGraph

#: How the second-parent tests are corrected: per model, or over the whole graph.
FAMILIES = ("node", "graph")


@dataclasses.dataclass(frozen=True)
class SecondParents:
    """What :func:`second_parents` decided, per model (index order of the score matrix).

    Attributes:
      parents: ``[P]`` the arborescence's parents (``-1`` for roots), unchanged.
      second: ``[P]`` the added second parent, ``-1`` where none was added.
      candidate: ``[P]`` the best-scoring eligible candidate (``-1`` where none: roots, or nothing eligible).
      pvalues: ``[P]`` each model's p-value for "no second parent": ``min(1, k_b * min_a p_ab)`` over its
        eligible candidates (NaN for roots and models without an eligible candidate).
      num_candidates: ``[P]`` ``k_b``, the candidates counted in the Bonferroni factor (fixed before the
        arborescence: every other model with a finite score that ``allowed`` permits).
      blocked: ``[P]`` models whose test passed but whose every passing candidate would close a cycle.
      alpha: the level.
      family: ``"node"`` or ``"graph"``.
    """

    parents: np.ndarray
    second: np.ndarray
    candidate: np.ndarray
    pvalues: np.ndarray
    num_candidates: np.ndarray
    blocked: np.ndarray
    alpha: float
    family: str

    @property
    def num_added(self) -> int:
        return int(np.sum(self.second >= 0))


def _check_null(null_scores: Any) -> np.ndarray:
    null = np.asarray(jax.device_get(null_scores), np.float64).ravel()
    if null.size == 0:
        raise TreeError("null_scores is empty: the second-parent test needs scores of pairs known to be non-edges")
    if not np.all(np.isfinite(null)):
        raise TreeError(f"null_scores[{int(np.argmin(np.isfinite(null)))}] is not finite")
    return np.sort(null)


def _check_parents(parents: Any, p: int) -> np.ndarray:
    par = np.asarray(parents)
    if par.shape != (p,) or not np.issubdtype(par.dtype, np.integer):
        raise TreeError(f"parents must be [{p}] ints (-1 for roots); got shape {par.shape}, dtype {par.dtype}")
    bad = (par < -1) | (par >= p) | (par == np.arange(p))
    if bad.any():
        b = int(np.flatnonzero(bad)[0])
        raise TreeError(f"parents[{b}] = {int(par[b])} is not a model index other than {b} (or -1 for a root)")
    cycle = _find_cycle(par.astype(int))
    if cycle is not None:
        raise TreeError(f"parents is not a forest: models {sorted(int(c) for c in cycle)} form a cycle")
    return par.astype(int)


def _descendants(children: list[list[int]], b: int) -> set[int]:
    out, stack = set(), list(children[b])
    while stack:
        n = stack.pop()
        if n not in out:
            out.add(n)
            stack.extend(children[n])
    return out


def _holm_thresholds(pv: np.ndarray, alpha: float, family: str) -> np.ndarray:
    """Per model, the level its candidates' Bonferroni-scaled p-values must reach (``-inf``: not rejected)."""
    thr = np.full(pv.shape, -np.inf)
    ok = np.flatnonzero(np.isfinite(pv))
    if family == "node":
        thr[ok[pv[ok] <= alpha]] = alpha
        return thr
    order = ok[np.argsort(pv[ok], kind="stable")]
    for i, b in enumerate(order):  # Holm over the models
        level = alpha / (len(order) - i)
        if pv[b] > level:
            break
        thr[b] = level
    return thr


def second_parents(
    scores: Any,
    parents: Any,
    null_scores: Any,
    *,
    weights: Any = None,
    alpha: float = 0.05,
    family: str = "node",
    allowed: Any = None,
) -> SecondParents:
    r"""Adds at most one second parent per model to a forest when its score passes a conformal p-value test.

    For a non-root model ``b`` with forest parent ``parents[b]``, the **candidates** are the models ``a``
    with a finite score and weight that ``allowed[a, b]`` permits, other than ``b``, its parent and its descendants
    in the forest (a descendant as parent would close a cycle). Each candidate's conformal p-value
    against the ``n0`` null scores :math:`z_i` is

    .. math:: p_{ab} = \frac{1 + \#\{i : z_i \ge S[a, b]\}}{1 + n_0},

    and ``b``'s p-value is :math:`p_b = \min(1, k_b \min_a p_{ab})` (Bonferroni over its ``k_b``
    candidates; ``k_b`` counts every model ``allowed`` permits, fixed before the forest is known, so the
    forest's exclusions only make it conservative). ``family="node"`` rejects when :math:`p_b \le \alpha`;
    ``family="graph"`` runs Holm over the models' :math:`p_b`. A rejected model takes its best candidate
    by ``weights`` among those with :math:`k_b p_{ab}` at or below its level whose edge keeps the graph
    acyclic; models are handled in decreasing order of that weight (a greedy choice: a model whose every
    passing candidate would close a cycle gets none and is marked ``blocked``).

    **Null and validity.** :math:`H_0^b`: every candidate of ``b`` that is not a true parent of ``b`` is a
    null pair, i.e. its score is exchangeable with the null scores (e.g. scores of pairs from unrelated
    models). Then :math:`p_{ab}` is super-uniform for each such pair, and the probability of adding a
    false second parent to ``b`` is at most :math:`\alpha` (``"node"``), or to any model of the graph at
    most :math:`\alpha` (``"graph"``, Holm). The test is one of *relatedness*: a grandparent or a sibling
    of ``b`` is not a null pair under a null of unrelated pairs, so where they are candidates it rejects
    for them too; the guarantee covers nothing there. The smallest reachable :math:`p_b` is
    :math:`k_b / (n_0 + 1)`, so ``n0 >= k_b / alpha`` null scores are needed for any rejection
    (``"graph"``: ``n0 >= k_b P / alpha``).

    Args:
      scores: ``[P, P]`` raw scores ``S[a, b]`` (higher = more related) that the test reads.
      parents: ``[P]`` the forest (:func:`recover_parents`), ``-1`` for roots.
      null_scores: 1-D scores of non-edges on the scale of ``scores`` (see :func:`forest_null_scores`).
      weights: ``[P, P]`` edge weights that choose among passing candidates (default ``scores``).
      alpha: the level, in ``(0, 1)``.
      family: ``"node"`` (per-model error) or ``"graph"`` (family-wise over the models, Holm).
      allowed: optional ``[P, P]`` bool, ``allowed[a, b]`` permits ``a`` as a second parent of ``b``.

    Returns:
      :class:`SecondParents`.

    Raises:
      TreeError: bad shapes, NaN / inf scores or null scores, an empty null, a bad ``parents`` entry
        (named), an ``alpha`` outside ``(0, 1)`` or an unknown ``family``.
    """
    s = _check_square(scores, "scores")
    p = s.shape[0]
    w = s if weights is None else _check_square(weights, "weights", allow_neg_inf=True)
    if w.shape != s.shape:
        raise TreeError(f"weights has shape {w.shape} but scores {s.shape}")
    par = _check_parents(parents, p)
    null = _check_null(null_scores)
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise TreeError(f"alpha must be in (0, 1); got {alpha!r}")
    if family not in FAMILIES:
        raise TreeError(f"unknown family {family!r}; expected one of {list(FAMILIES)}")
    ok = ~np.eye(p, dtype=bool)
    if allowed is not None:
        allowed = np.asarray(allowed)
        if allowed.shape != (p, p) or allowed.dtype != bool:
            raise TreeError(f"allowed must be a [{p}, {p}] bool matrix; got shape {allowed.shape}, {allowed.dtype}")
        ok &= allowed
    # Conformal p-values of every pair: (1 + #{null >= s}) / (1 + n0).
    n_ge = null.size - np.searchsorted(null, np.where(ok, s, np.inf), side="left")
    p_pair = (1.0 + n_ge) / (1.0 + null.size)
    k = ok.sum(axis=0)
    children = [[] for _ in range(p)]
    for b, a in enumerate(par):
        if a >= 0:
            children[a].append(b)
    eligible = ok & np.isfinite(w)  # an edge the weights forbid (-inf) is never added
    for b in range(p):
        if par[b] < 0:
            eligible[:, b] = False
            continue
        eligible[par[b], b] = False
        eligible[list(_descendants(children, b)), b] = False
    scaled = np.where(eligible, np.minimum(1.0, k[None, :] * p_pair), np.inf)
    pv = scaled.min(axis=0)
    pv[~np.isfinite(pv)] = np.nan
    cand = np.where(eligible.any(axis=0), np.argmax(np.where(eligible, w, -np.inf), axis=0), -1)
    thr = _holm_thresholds(pv, float(alpha), family)
    second = np.full(p, -1)
    blocked = np.zeros(p, bool)
    # Greedy, heaviest edges first; an edge a -> b is refused when a is already below b (a cycle).
    options = [
        (float(w[a, b]), a, b) for b in np.flatnonzero(np.isfinite(thr)) for a in np.flatnonzero(scaled[:, b] <= thr[b])
    ]
    for _, a, b in sorted(options, key=lambda t: (-t[0], t[2], t[1])):
        if second[b] >= 0 or a in _descendants(children, b):
            continue
        second[b] = a
        children[a].append(b)
    for b in np.flatnonzero(np.isfinite(thr)):
        blocked[b] = second[b] < 0
    return SecondParents(
        parents=par,
        second=second,
        candidate=cand,
        pvalues=pv,
        num_candidates=k,
        blocked=blocked,
        alpha=float(alpha),
        family=family,
    )


def forest_null_scores(scores: Any, parents: Any) -> np.ndarray:
    """Label-free null scores: ``S[a, b]`` of every ordered pair whose models lie in different trees of a forest.

    Valid as a null of unrelated pairs when the forest's trees separate unrelated models (e.g. the number
    of base models is known and the trees are right); with one tree there is no such pair (an error).
    """
    s = _check_square(scores, "scores")
    par = _check_parents(parents, s.shape[0])
    root = np.arange(par.size)
    for _ in range(par.size):
        nxt = np.where(par[root] >= 0, par[root], root)
        if np.array_equal(nxt, root):
            break
        root = nxt
    cross = root[:, None] != root[None, :]
    if not cross.any():
        raise TreeError("forest_null_scores: the forest is one tree, so no pair lies in different trees")
    return s[cross]


def recover_dag(
    scores: Any,
    null_scores: Any = None,
    *,
    ids: Sequence[str] | None = None,
    alpha: float = 0.05,
    family: str = "node",
    allowed: Any = None,
    return_details: bool = False,
    **recover_kwargs: Any,
) -> LineageGraph | tuple[LineageGraph, SecondParents]:
    """:func:`recover`, then :func:`second_parents`: a lineage DAG in which a model may have two parents.

    The forest is :func:`recover_parents` with ``recover_kwargs`` (direction rule, ``num_roots``, solver...);
    its edge weights choose among passing second parents, and ``scores`` is what the test reads.
    ``null_scores=None`` takes :func:`forest_null_scores` of the forest (pairs in different trees). Where
    no second parent passes, the graph equals :func:`recover`'s.

    Returns:
      The :class:`~jaxlineage.graph.LineageGraph` (and the :class:`SecondParents` with ``return_details``).
    """
    p = np.shape(scores)[0] if np.ndim(scores) == 2 else -1
    kw = dict(recover_kwargs)
    direction = _as_direction(kw.get("direction", Direction.NONE))
    if direction is Direction.KURTOSIS and _as_order(kw.get("kurtosis_order", "decreasing")) is KurtosisOrder.AUTO:
        kw["kurtosis_order"] = choose_kurtosis_order(
            scores,
            kw.get("kurtosis"),
            strength=kw.get("strength", DEFAULT_STRENGTH),
            num_roots=kw.get("num_roots"),
            solver=kw.get("solver", Solver.NETWORKX),
        )
    parents = recover_parents(scores, **kw)
    edge_keys = ("direction", "kurtosis", "kurtosis_order", "direction_scores", "strength")
    w = edge_weights(scores, **{k: kw[k] for k in edge_keys if k in kw})
    if null_scores is None:
        null_scores = forest_null_scores(scores, parents)
    sp = second_parents(scores, parents, null_scores, weights=w, alpha=alpha, family=family, allowed=allowed)
    names = _ids(ids, p)
    graph = LineageGraph.from_parents(
        {names[b]: tuple(names[a] for a in (parents[b], sp.second[b]) if a >= 0) for b in range(len(names))}
    )
    return (graph, sp) if return_details else graph


@dataclasses.dataclass(frozen=True)
class DagAccuracy:
    r"""Edge precision and recall of a recovered lineage DAG against the truth (a two-parent node counts both).

    With :math:`E` the true edges ``(parent, child)`` and :math:`\hat E` the recovered ones:
    ``precision`` :math:`= |E \cap \hat E| / |\hat E|`, ``recall`` :math:`= |E \cap \hat E| / |E|`
    (directed), the ``undirected_*`` pair the same on edges without direction, and over the true
    multi-parent models (merges): ``merge_both`` the fraction with every true parent recovered,
    ``merge_any`` with at least one. For a forest (one parent per model), ``recall`` is
    :attr:`TreeAccuracy.directed` and ``undirected_recall`` :attr:`TreeAccuracy.undirected`.
    Empty sets: precision 1 with no recovered edge, recall 1 with no true edge, merge fractions NaN
    with no true merge.
    """

    precision: float
    recall: float
    undirected_precision: float
    undirected_recall: float
    merge_both: float
    merge_any: float
    n_true_edges: int
    n_recovered_edges: int
    n_true_merges: int
    n_recovered_merges: int

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def dag_accuracy(true: LineageGraph, recovered: LineageGraph) -> DagAccuracy:
    """Compares a recovered lineage DAG with the truth (see :class:`DagAccuracy`).

    Raises:
      TreeError: the two graphs are not over the same models (the message names one that differs).
    """
    same_models(true, recovered)
    e_true, e_rec = set(true.edges()), set(recovered.edges())
    u_true, u_rec = {frozenset(e) for e in e_true}, {frozenset(e) for e in e_rec}
    hit = len(e_true & e_rec)
    u_hit_true = sum(frozenset(e) in u_rec for e in e_true)
    u_hit_rec = sum(frozenset(e) in u_true for e in e_rec)
    merges = [m for m in true.ids if len(true.parents(m)) > 1]
    both = [set(true.parents(m)) <= set(recovered.parents(m)) for m in merges]
    anyp = [bool(set(true.parents(m)) & set(recovered.parents(m))) for m in merges]
    return DagAccuracy(
        precision=hit / len(e_rec) if e_rec else 1.0,
        recall=hit / len(e_true) if e_true else 1.0,
        undirected_precision=u_hit_rec / len(e_rec) if e_rec else 1.0,
        undirected_recall=u_hit_true / len(e_true) if e_true else 1.0,
        merge_both=float(np.mean(both)) if merges else float("nan"),
        merge_any=float(np.mean(anyp)) if merges else float("nan"),
        n_true_edges=len(e_true),
        n_recovered_edges=len(e_rec),
        n_true_merges=len(merges),
        n_recovered_merges=sum(len(recovered.parents(m)) > 1 for m in recovered.ids),
    )
