"""Merges in tree recovery: what the arborescence does with a two-parent model, second parents by a p-value test
(against brute force over small DAGs, calibrated on null trees), DAG edge accuracy."""

import itertools

import numpy as np
import pytest

from jaxlineage.eval import tree
from jaxlineage.eval.scorers import pvalues
from jaxlineage.graph import LineageGraph


def _graph(parent_sets, names):
    return LineageGraph.from_parents({names[b]: tuple(names[a] for a in ps) for b, ps in enumerate(parent_sets)})


def _is_acyclic(parent_sets):
    state = [0] * len(parent_sets)

    def visit(n):
        if state[n] == 1:
            return False
        if state[n] == 2:
            return True
        state[n] = 1
        ok = all(visit(a) for a in parent_sets[n])
        state[n] = 2
        return ok

    return all(visit(n) for n in range(len(parent_sets)))


def _all_dags(p):
    """Every DAG on ``p`` nodes in which a node has at most two parents (as parent sets)."""
    choices = [
        [()] + [(a,) for a in range(p) if a != b] + list(itertools.combinations([a for a in range(p) if a != b], 2))
        for b in range(p)
    ]
    for sets in itertools.product(*choices):
        if _is_acyclic(sets):
            yield sets


def _planted(rng, p, strength=6.0):
    """A random DAG on ``p`` nodes with one root, at least one two-parent node; scores: N(0, 1) noise, +strength
    on its edges (directed: the reversed pair stays noise)."""
    while True:
        order = rng.permutation(p)
        sets = [()] * p
        for i in range(1, p):
            b = order[i]
            earlier = order[:i]
            k = min(len(earlier), int(rng.integers(1, 3)))
            sets[b] = tuple(sorted(int(a) for a in rng.choice(earlier, k, replace=False)))
        if any(len(s) == 2 for s in sets):
            break
    s = rng.normal(size=(p, p))
    for b, ps in enumerate(sets):
        for a in ps:
            s[a, b] += strength
    np.fill_diagonal(s, np.nan)
    return sets, s


def test_arborescence_keeps_one_parent_of_a_merge_and_symmetric_scores_put_the_merge_between_its_parents():
    # Weights as points: base B, fine-tunes F1, F2 and their average M. M is the centroid of F1 and F2, so under a
    # symmetric distance it is nearer to each than they are to each other or to B: the tree runs B -> M -> F1, F2.
    rng = np.random.default_rng(0)
    b = rng.normal(size=50)
    f1, f2 = b + 0.3 * rng.normal(size=50), b + 0.3 * rng.normal(size=50)
    x = np.stack([b, f1, f2, 0.5 * (f1 + f2)])
    ids = ["B", "F1", "F2", "M"]
    truth = LineageGraph.from_parents({"B": None, "F1": "B", "F2": "B", "M": ("F1", "F2")})
    s = tree.weight_scores(x)
    for solver in ("networkx", "dense"):
        g = tree.recover(s, ids=ids, num_roots=1, solver=solver)
        assert set(g.edges()) == {("B", "M"), ("M", "F1"), ("M", "F2")}
        acc = tree.tree_accuracy(truth, g)
        assert (acc.directed, acc.undirected, acc.reversed) == (0.0, 0.5, 0.5)
    # With the direction known (generation as the kurtosis statistic, a hard penalty) the forest keeps one parent:
    g = tree.recover(s, ids=ids, num_roots=1, direction="kurtosis", kurtosis=-np.array([0, 1, 1, 2.0]), strength=10)
    assert len(g.parents("M")) == 1 and g.parents("M")[0] in ("F1", "F2")
    acc, dag = tree.tree_accuracy(truth, g), tree.dag_accuracy(truth, g)
    assert acc.directed == 0.75 and dag.recall == 0.75 and dag.precision == 1.0 and dag.merge_both == 0.0


@pytest.mark.parametrize("p", [4, 5])
def test_planted_dags_match_brute_force_over_all_two_parent_dags(p):
    rng = np.random.default_rng(p)
    null = rng.normal(size=20000)
    dags = list(_all_dags(p))
    if p == 4:  # 543 labelled DAGs on 4 nodes, less the 4 x 25 whose sink has all 3 others as parents
        assert len(dags) == 543 - 4 * 25
    names = [str(i) for i in range(p)]
    for _ in range(3 if p == 5 else 6):
        sets, s = _planted(rng, p)
        # Brute force: the DAG (<= 2 parents each) maximising the summed (score - c) over its edges, c the null's
        # 1 - 1e-3 quantile: an edge pays when it beats noise. The planted DAG is the answer.
        c = np.quantile(null, 1 - 1e-3)
        best = max(dags, key=lambda d: sum(s[a, b] - c for b, ps in enumerate(d) for a in ps))
        assert [set(x) for x in best] == [set(x) for x in sets]
        g, sp = tree.recover_dag(s, null, ids=names, alpha=0.01, num_roots=1, solver="dense", return_details=True)
        assert set(g.edges()) == set(_graph(best, names).edges()), (sets, sp)
        assert tree.dag_accuracy(_graph(sets, names), g).merge_both == 1.0


def test_dag_count_by_hand_on_three_nodes():
    # 3 nodes, <= 2 parents: all 25 labelled DAGs on 3 nodes (no node can have 3 parents; OEIS A003024).
    assert len(list(_all_dags(3))) == 25


def _null_tree_trial(rng, p, alpha, family, n0=4000):
    """A random tree with strong edges; every other score (and the null) is N(0, 1) noise."""
    par = np.array([-1] + [int(rng.integers(0, b)) for b in range(1, p)])
    perm = rng.permutation(p)
    inv = np.argsort(perm)
    par = np.array([-1 if par[inv[i]] < 0 else perm[par[inv[i]]] for i in range(p)])
    s = rng.normal(size=(p, p))
    for b, a in enumerate(par):
        if a >= 0:
            s[a, b] += 8.0
    np.fill_diagonal(s, np.nan)
    sp = tree.second_parents(s, par, rng.normal(size=n0), alpha=alpha, family=family)
    return par, sp


def test_no_second_parent_on_null_trees_within_alpha_per_node():
    # H0 holds for every node: each node's false-addition probability is 1 - (1 - alpha / k)^m <= alpha
    # (m tested candidates, k counted, conformal p-values of continuous scores ~ uniform on a fine grid).
    rng = np.random.default_rng(0)
    alpha, p, trials = 0.05, 6, 400
    added, expected, nodes = 0, 0.0, 0
    for _ in range(trials):
        par, sp = _null_tree_trial(rng, p, alpha, "node")
        assert np.array_equal(sp.parents, par)
        for b in np.flatnonzero(par >= 0):
            m = sum(1 for a in range(p) if a != b and a != par[b] and not _below(par, a, b))  # tested candidates
            expected += 1 - (1 - alpha / sp.num_candidates[b]) ** m
            nodes += 1
        added += sp.num_added
    rate, exp_rate = added / nodes, expected / nodes
    margin = pvalues.binomial_margin(exp_rate, nodes)
    assert rate <= alpha + pvalues.binomial_margin(alpha, nodes)
    assert abs(rate - exp_rate) <= margin + 1.0 / 4001 * 5, (rate, exp_rate, margin)


def _below(par, a, b):
    """Whether ``a`` is a descendant of ``b`` in the forest ``par``."""
    n = par[a]
    while n >= 0:
        if n == b:
            return True
        n = par[n]
    return False


def test_graph_family_controls_any_false_addition():
    rng = np.random.default_rng(1)
    alpha, trials = 0.1, 300
    any_added = sum(_null_tree_trial(rng, 6, alpha, "graph", n0=2000)[1].num_added > 0 for _ in range(trials))
    assert any_added / trials <= alpha + pvalues.binomial_margin(alpha, trials)


def test_graph_family_is_holm_over_the_nodes():
    rng = np.random.default_rng(2)
    for _ in range(20):
        sets, s = _planted(rng, 6, strength=3.0)
        par = tree.recover_parents(s, num_roots=1, solver="dense")
        null = rng.normal(size=3000)
        sp = tree.second_parents(s, par, null, alpha=0.2, family="graph")
        ok = np.isfinite(sp.pvalues)
        rejected = np.zeros(6, bool)
        rejected[ok] = pvalues.holm(sp.pvalues[ok], alpha=0.2)
        assert np.array_equal(rejected, (sp.second >= 0) | sp.blocked)


def test_no_addition_keeps_the_forest_and_its_figures():
    rng = np.random.default_rng(3)
    sets, s = _planted(rng, 6)
    names = [f"m{i}" for i in range(6)]
    truth = _graph(sets, names)
    forest = tree.recover(s, ids=names, num_roots=1, solver="dense")
    # A null far above every score: no p-value can pass, so the DAG is the forest.
    g, sp = tree.recover_dag(s, np.full(100, 1e3), ids=names, num_roots=1, solver="dense", return_details=True)
    assert sp.num_added == 0 and g == forest
    assert tree.tree_accuracy(truth, g) == tree.tree_accuracy(truth, forest)
    acc, dag = tree.tree_accuracy(truth, forest), tree.dag_accuracy(truth, forest)
    assert dag.recall == acc.directed and dag.undirected_recall == acc.undirected
    assert dag.n_recovered_edges == acc.n_recovered_edges == 5


def test_second_parent_never_closes_a_cycle():
    # 0 is the root of 1 and 2; 1 and 2 both score highly as each other's second parent: only one edge can stay.
    s = np.full((3, 3), -1.0)
    s[0, 1] = s[0, 2] = 10.0
    s[1, 2], s[2, 1] = 6.0, 5.0
    np.fill_diagonal(s, np.nan)
    sp = tree.second_parents(s, np.array([-1, 0, 0]), -np.arange(1000.0) / 100, alpha=0.05)
    assert sp.second.tolist() == [-1, -1, 1] and sp.blocked.tolist() == [False, True, False]
    # An edge the weights forbid is never added; a forest descendant is never a candidate.
    w = s.copy()
    w[1, 2] = -np.inf
    sp = tree.second_parents(s, np.array([-1, 0, 0]), -np.arange(1000.0) / 100, weights=w, alpha=0.05)
    assert sp.second.tolist() == [-1, 2, -1]
    sp = tree.second_parents(s, np.array([-1, 0, 1]), -np.arange(1000.0) / 100, alpha=0.05)
    assert sp.second[1] == -1 and sp.candidate[1] == -1 and np.isnan(sp.pvalues[1])


def test_dag_accuracy_counts_both_parents():
    truth = LineageGraph.from_parents({"B": None, "F": "B", "G": "B", "M": ("F", "G")})
    rec = LineageGraph.from_parents({"B": None, "F": "B", "G": ("F", "B"), "M": ("F", "G")})
    d = tree.dag_accuracy(truth, rec)
    assert (d.precision, d.recall, d.merge_both, d.merge_any) == (0.8, 1.0, 1.0, 1.0)
    assert (d.n_true_merges, d.n_recovered_merges) == (1, 2)
    rec2 = LineageGraph.from_parents({"B": None, "F": "B", "G": "M", "M": "F"})
    d2 = tree.dag_accuracy(truth, rec2)
    assert (d2.precision, d2.recall, d2.undirected_precision, d2.undirected_recall) == (1 / 3 * 2, 0.5, 1.0, 0.75)


def test_bad_input_errors_name_the_problem():
    s = np.random.default_rng(0).normal(size=(4, 4))
    par = np.array([-1, 0, 0, 1])
    null = np.zeros(10)
    with pytest.raises(tree.TreeError, match="null_scores is empty"):
        tree.second_parents(s, par, [])
    with pytest.raises(tree.TreeError, match=r"null_scores\[1\] is not finite"):
        tree.second_parents(s, par, [0.0, np.nan])
    with pytest.raises(tree.TreeError, match="alpha must be in"):
        tree.second_parents(s, par, null, alpha=1.5)
    with pytest.raises(tree.TreeError, match="unknown family 'nodes'"):
        tree.second_parents(s, par, null, family="nodes")
    with pytest.raises(tree.TreeError, match=r"parents\[2\] = 2"):
        tree.second_parents(s, np.array([-1, 0, 2, 1]), null)
    with pytest.raises(tree.TreeError, match=r"models \[1, 3\] form a cycle"):
        tree.second_parents(s, np.array([-1, 3, 0, 1]), null)
    with pytest.raises(tree.TreeError, match=r"parents must be \[4\] ints"):
        tree.second_parents(s, par[:3], null)
    with pytest.raises(tree.TreeError, match=r"allowed must be a \[4, 4\] bool"):
        tree.second_parents(s, par, null, allowed=np.ones((4, 3), bool))
    with pytest.raises(tree.TreeError, match=r"scores\[0, 1\] is nan"):
        bad = s.copy()
        bad[0, 1] = np.nan
        tree.second_parents(bad, par, null)
    with pytest.raises(tree.TreeError, match="one tree"):
        tree.forest_null_scores(s, par)
    with pytest.raises(tree.TreeError, match="'x' is only in the true graph"):
        tree.dag_accuracy(LineageGraph.from_parents({"x": None, "y": None}), LineageGraph.from_parents({"y": None}))
