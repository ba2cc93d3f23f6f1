r"""Lineage tree recovery: from pairwise scores over a set of models to a forest.

Given ``P`` models, recovery answers *who was derived from whom, and in which
direction*. It has three independent parts:

1. **Edges** from any score matrix over ordered pairs, ``S[a, b]`` = how likely
   ``a`` is ``b``'s parent (higher = more likely; the diagonal is ignored):
   :func:`weight_scores` (negative L2 distance of the weights),
   :func:`aligned_weight_scores` (the same after matching hidden units: git
   re-basin's weight matching over a permutation spec, so that a permuted copy
   is at distance 0),
   :func:`learning_free_scores` (Neural Lineage's metrics in any
   :class:`~jaxlineage.linearize.Mode`, the population scored against itself),
   :func:`scorer_scores` (any :class:`~jaxlineage.eval.core.Scorer`).
2. **Direction** (:class:`Direction`): MoTHer's weight-kurtosis rule, the
   asymmetry of Taylor-approximated scores (the first-order step goes from the
   parent toward the child, so ``S_FO[a, b] != S_FO[b, a]``), or none (the
   score matrix's own asymmetry). :func:`edge_weights` turns scores and a rule
   into edge weights ``W[a, b]``.
3. **The forest**: a maximum spanning arborescence (Chu-Liu / Edmonds, from
   :mod:`networkx`, or :attr:`Solver.DENSE`, the same algorithm in numpy and
   ~1000x faster at 100 models) over the models plus a virtual root whose edges to the
   models carry *root scores* (:func:`max_arborescence`); the virtual root's
   children are the recovered roots. :func:`recover` does 2 and 3 and returns a
   :class:`~jaxlineage.graph.LineageGraph`.

Merges (a model with two parents): the arborescence keeps one parent; :func:`recover_dag` /
:func:`second_parents` add a second one when its score passes a conformal p-value test against a
null of non-edge scores (:func:`forest_null_scores`), keeping a DAG; :func:`dag_accuracy` gives edge
precision and recall with both parents counted.

Evaluation: :func:`tree_accuracy` (undirected, directed and root accuracy
against a true graph), :func:`tree_result` (an
:class:`~jaxlineage.eval.core.Result` for ``Question.RECOVER``) and
:func:`tree_plot` (the recovered forest beside the true one, wrong edges red).

Example::

    s = tree.weight_scores(stacked_params)                     # [P, P]
    k = tree.weight_kurtosis(stacked_params)                   # [P]
    g = tree.recover(s, ids=ids, direction=tree.Direction.KURTOSIS,
                     kurtosis=k, num_roots=4)
    tree.tree_accuracy(true_graph, g).directed

References:
  Horwitz, E., Shul, A. & Hoshen, Y. (2025). Unsupervised Model Tree Heritage
  Recovery (MoTHer). ICLR. Weight kurtosis for direction, weight distance for
  edges, a minimum directed spanning tree over ``d + lambda * mean(d) * T`` with
  ``T[a, b] = 1`` when ``b``'s kurtosis exceeds ``a``'s, ``lambda = 0.3`` (as in
  their public code, ``eliahuhorwitz/MoTHer``, ``MDST.build_tree``); forests by
  clustering first (``clustering.py``), here by a virtual root instead.
  Edmonds, J. (1967). Optimum branchings. J. Res. Nat. Bur. Standards 71B.
  Yu, R. & Wang, X. (2024). Neural Lineage. CVPR. Sec. 3 (the first-order score).
  Ainsworth, S., Hayase, J. & Srinivasa, S. (2023). Git Re-Basin: Merging Models modulo
  Permutation Symmetries. ICLR. Alg. 1 (weight matching).

The parts live apart: ``_scores`` (edge scores), ``_recovery`` (edge weights, direction,
recovery), ``_dag`` (second parents and DAG accuracy), ``_solver`` (the arborescence),
``_accuracy`` (evaluation) and ``_plot`` (drawing; matplotlib is imported only when drawing). Weight matching itself is
:func:`jaxlineage.matching.weight_matching`.
"""

from __future__ import annotations

from jaxlineage.eval.tree._accuracy import (
    TreeAccuracy,
    direction_accuracy,
    restrict_graph,
    tree_accuracy,
    tree_result,
)
from jaxlineage.eval.tree._common import DEFAULT_STRENGTH, Direction, KurtosisOrder, Solver, TreeError
from jaxlineage.eval.tree._dag import (
    DagAccuracy,
    SecondParents,
    dag_accuracy,
    forest_null_scores,
    recover_dag,
    second_parents,
)
from jaxlineage.eval.tree._plot import tree_plot
from jaxlineage.eval.tree._recovery import choose_kurtosis_order, edge_weights, recover, recover_parents
from jaxlineage.eval.tree._scores import (
    AlignmentDetails,
    aligned_weight_scores,
    learning_free_scores,
    scorer_scores,
    weight_kurtosis,
    weight_scores,
)
from jaxlineage.eval.tree._solver import arborescence_weight, max_arborescence

__all__ = [
    "DEFAULT_STRENGTH",
    "AlignmentDetails",
    "DagAccuracy",
    "Direction",
    "KurtosisOrder",
    "SecondParents",
    "Solver",
    "TreeAccuracy",
    "TreeError",
    "aligned_weight_scores",
    "arborescence_weight",
    "choose_kurtosis_order",
    "dag_accuracy",
    "direction_accuracy",
    "edge_weights",
    "forest_null_scores",
    "learning_free_scores",
    "max_arborescence",
    "recover",
    "recover_dag",
    "recover_parents",
    "restrict_graph",
    "scorer_scores",
    "second_parents",
    "tree_accuracy",
    "tree_plot",
    "tree_result",
    "weight_kurtosis",
    "weight_scores",
]
