"""Recovered forests against the truth: tree, direction and root accuracy, and the bench's result row.

Part of :mod:`jaxlineage.eval.tree`, which re-exports the public names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxlineage.eval import core
from jaxlineage.eval import metrics as metrics_lib
from jaxlineage.eval.tree._common import TreeError, _ids
from jaxlineage.graph import LineageGraph

# ----------------------------------------------------------------------------
# Evaluation.


def restrict_graph(graph: LineageGraph, ids: Sequence[str]) -> LineageGraph:
    """The lineage among ``ids`` only: a model's parents outside ``ids`` are replaced by their nearest ancestors inside.

    E.g. a zoo's graph restricted to the kept models (a grandchild whose parent
    was dropped hangs from its grandparent). Root initialisation keys are kept.

    Raises:
      TreeError: an id that is not in ``graph``.
    """
    keep = list(dict.fromkeys(str(i) for i in ids))
    missing = [i for i in keep if i not in graph]
    if missing:
        raise TreeError(f"model {missing[0]!r} is not in the lineage graph")
    inside = set(keep)
    out = {}
    for n in keep:
        ps: list[str] = []
        frontier = list(graph.parents(n))
        seen = set()
        while frontier:
            nxt = []
            for q in frontier:
                if q in seen:
                    continue
                seen.add(q)
                if q in inside:
                    ps.append(q)
                else:
                    nxt.extend(graph.parents(q))
            frontier = nxt
        out[n] = tuple(dict.fromkeys(ps))
    keys = {n: k for n, k in graph.init_keys.items() if n in inside and not out[n]}
    return LineageGraph.from_parents(out, init_keys=keys)


@dataclasses.dataclass(frozen=True)
class TreeAccuracy:
    r"""How well a recovered forest matches the true lineage graph (same model set).

    With :math:`E` the true edges ``(parent, child)``, :math:`\hat E` the
    recovered ones, :math:`R, \hat R` the root sets, and :math:`\{a, b\}` an
    edge without its direction:

    * ``undirected`` :math:`= |\{\{a,b\}: (a,b) \in E\} \cap \{\{a,b\}: (a,b) \in \hat E\}| / |E|`:
      the fraction of true edges recovered, either way round;
    * ``directed`` :math:`= |E \cap \hat E| / |E|`: the fraction recovered the
      right way round (MoTHer's accuracy);
    * ``root`` :math:`= |R \cap \hat R| / \max(|R|, |\hat R|)`: 1 only when the
      root sets are equal; the fraction of true roots found when the number of
      roots is given; spurious roots lower it as much as missed ones;
    * ``model_root``: the fraction of models whose recovered root is their true
      root (right tree *and* right base model);
    * ``reversed``: the fraction of true edges recovered the wrong way round.

    A forest has one parent per model, so a true graph with merges (several
    parents) caps ``directed`` below 1 (:func:`dag_accuracy` scores a recovered DAG
    with both parents counted). With no true edge (only roots) the edge
    accuracies are 1 when nothing was recovered either and 0 otherwise.
    """

    undirected: float
    directed: float
    root: float
    model_root: float
    reversed: float
    n_true_edges: int
    n_recovered_edges: int
    n_true_roots: int
    n_recovered_roots: int

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def same_models(true: LineageGraph, recovered: LineageGraph) -> None:
    """Raises :class:`TreeError` naming a model that is in one graph only."""
    if set(true.ids) != set(recovered.ids):
        only = min(set(true.ids) ^ set(recovered.ids))
        where = "true" if only in true else "recovered"
        raise TreeError(
            f"the graphs differ in their models: {only!r} is only in the {where} graph;"
            " restrict the truth with restrict_graph(true, ids)"
        )


def tree_accuracy(true: LineageGraph, recovered: LineageGraph) -> TreeAccuracy:
    """Compares a recovered forest with the true lineage graph (see :class:`TreeAccuracy`).

    Raises:
      TreeError: the two graphs are not over the same models (the message names one that differs).
    """
    same_models(true, recovered)
    e_true, e_rec = set(true.edges()), set(recovered.edges())
    u_rec = {frozenset(e) for e in e_rec}
    n = len(e_true)
    if n:
        undirected = sum(frozenset(e) in u_rec for e in e_true) / n
        directed = len(e_true & e_rec) / n
        rev = sum((b, a) in e_rec and (a, b) not in e_rec for a, b in e_true) / n
    else:
        undirected = directed = float(not e_rec)
        rev = 0.0
    r_true, r_rec = set(true.roots()), set(recovered.roots())
    root = len(r_true & r_rec) / max(len(r_true), len(r_rec))
    model_root = float(np.mean([set(true.roots(m)) == set(recovered.roots(m)) for m in true.ids]))
    return TreeAccuracy(
        undirected=float(undirected),
        directed=float(directed),
        root=float(root),
        model_root=model_root,
        reversed=float(rev),
        n_true_edges=n,
        n_recovered_edges=len(e_rec),
        n_true_roots=len(r_true),
        n_recovered_roots=len(r_rec),
    )


def direction_accuracy(true: LineageGraph, evidence: Any, ids: Sequence[str]) -> float:
    """The fraction of true edges ``(a, b)`` whose direction evidence points the right way, ``E[a, b] > 0``.

    A diagnostic of a direction rule on its own (ties count half): ``E`` is
    ``k_a - k_b`` for the kurtosis rule, ``D[a, b] - D[b, a]`` for the Taylor rule.

    Args:
      true: the true graph over ``ids``.
      evidence: ``[P, P]`` antisymmetric evidence (only the true edges' entries are read).
      ids: the models' ids, in the order of ``evidence``.
    """
    e = np.asarray(evidence, np.float64)
    index = {m: i for i, m in enumerate(_ids(ids, e.shape[0]))}
    edges = true.edges()
    if not edges:
        raise TreeError("direction_accuracy: the true graph has no edge")
    vals = np.array([e[index[a], index[b]] for a, b in edges])
    return float(np.mean((vals > 0) + 0.5 * (vals == 0)))


def tree_result(
    true: LineageGraph,
    recovered: LineageGraph,
    *,
    scenario: str,
    scorer: str,
    settings: Mapping[str, Any] | None = None,
    details: Mapping[str, Any] | None = None,
) -> core.Result:
    """A :class:`~jaxlineage.eval.core.Result` for ``Question.RECOVER``.

    ``metrics`` holds ``undirected_edge_accuracy``, ``directed_edge_accuracy``,
    ``root_accuracy`` and ``model_root_accuracy`` (one value each, as
    :func:`~jaxlineage.eval.metrics.mean_std`); ``details`` the counts and both
    graphs.
    """
    acc = tree_accuracy(true, recovered)
    metric_values = {
        "undirected_edge_accuracy": acc.undirected,
        "directed_edge_accuracy": acc.directed,
        "root_accuracy": acc.root,
        "model_root_accuracy": acc.model_root,
    }
    return core.Result(
        scenario=scenario,
        question=core.Question.RECOVER.value,
        scorer=scorer,
        metrics={k: metrics_lib.mean_std([v]) for k, v in metric_values.items()},
        settings=dict(settings or {}),
        details={
            **acc.as_dict(),
            "true_graph": true.to_json(),
            "recovered_graph": recovered.to_json(),
            **dict(details or {}),
        },
    )
