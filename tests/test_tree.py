"""Lineage tree recovery: exact on unambiguous scores, Edmonds against brute force, direction rules on toys."""

import itertools
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlineage import lineage
from jaxlineage.errors import JaxlineageError
from jaxlineage.eval import core, tree
from jaxlineage.graph import LineageGraph
from jaxlineage.linearize import Mode

# ----------------------------------------------------------------------------- helpers


def _forest(n_roots=3, n_children=3, n_grand=2):
    """A 3-generation forest: ids, parent map, depth."""
    parents = {}
    for r in range(n_roots):
        parents[f"r{r}"] = None
        for c in range(n_children):
            parents[f"r{r}c{c}"] = f"r{r}"
            for g in range(n_grand):
                parents[f"r{r}c{c}g{g}"] = f"r{r}c{c}"
    return LineageGraph.from_parents(parents)


def _tree_distance(graph):
    """Edges between two models of one tree; 10 across trees."""
    ids = graph.ids
    p = len(ids)
    d = np.full((p, p), 10.0)
    for i, a in enumerate(ids):
        anc_a = (a,) + graph.ancestors(a)
        for j, b in enumerate(ids):
            anc_b = (b,) + graph.ancestors(b)
            common = [x for x in anc_a if x in anc_b]
            if common:
                d[i, j] = anc_a.index(common[0]) + anc_b.index(common[0])
    return d


def _synthetic(seed=0):
    """Unambiguous scores: minus the tree distance plus small noise, and a separate direction signal."""
    truth = _forest()
    ids = truth.ids
    depth = np.array([truth.generation(m) for m in ids], float)
    rng = np.random.default_rng(seed)
    noise = 0.01 * rng.normal(size=(len(ids), len(ids)))
    sym = -_tree_distance(truth) + noise + noise.T
    towards_deeper = np.sign(depth[None, :] - depth[:, None])  # +1 for a -> b when b is deeper
    return truth, ids, depth, sym, towards_deeper


def _brute_force(w, root_scores, k=None):
    """The best total weight over every forest (parent function without cycles), optionally with k roots."""
    p = w.shape[0]
    best = -np.inf
    for assign in itertools.product(*[[-1] + [a for a in range(p) if a != b] for b in range(p)]):
        if k is not None and sum(a < 0 for a in assign) != k:
            continue
        ok = True
        for b in range(p):  # follow parents; a cycle never reaches a root
            seen, n = 0, b
            while n >= 0 and seen <= p:
                n, seen = assign[n], seen + 1
            if n >= 0:
                ok = False
                break
        if ok:
            best = max(best, tree.arborescence_weight(w, assign, root_scores))
    return best


def _population(ids, params, arch):
    fn = lambda p, x: x
    return core.Population(ids=tuple(ids), params=params, logits_fn=fn, feature_fns={"x": fn}, arch=arch)


def _relu1(params, x):
    return jax.nn.relu(x @ params["w"] + params["b"][None, :])


# ----------------------------------------------------------------------------- recovery


@pytest.mark.parametrize("rule", list(tree.Direction))
@pytest.mark.parametrize("roots", ["known", "gap"])
def test_exact_recovery_on_unambiguous_scores(rule, roots):
    truth, ids, depth, sym, towards_deeper = _synthetic()
    kwargs = {"ids": ids, "direction": rule, "num_roots": 3 if roots == "known" else None}
    if rule is tree.Direction.NONE:
        g = tree.recover(sym + 0.3 * towards_deeper, **kwargs)  # the scores' own asymmetry
    elif rule is tree.Direction.KURTOSIS:
        g = tree.recover(sym, kurtosis=-depth + 0.01 * np.arange(len(ids)) / len(ids), **kwargs)
    else:
        g = tree.recover(sym, direction_scores=sym + 0.05 * towards_deeper, **kwargs)
    assert dict(g.parent_map) == dict(truth.parent_map)
    acc = tree.tree_accuracy(truth, g)
    assert (acc.undirected, acc.directed, acc.root, acc.model_root, acc.reversed) == (1.0, 1.0, 1.0, 1.0, 0.0)


def test_symmetric_scores_without_direction_get_edges_not_directions():
    truth, ids, depth, sym, _ = _synthetic()
    g = tree.recover(sym, ids=ids, num_roots=3)
    acc = tree.tree_accuracy(truth, g)
    assert acc.undirected == 1.0  # the edges are unambiguous; their direction is not
    # The wrong kurtosis order makes every true edge point up: a reversed tree is no forest (a parent
    # would need several parents), so the edges that survive are mostly reversed.
    g = tree.recover(sym, ids=ids, direction="kurtosis", kurtosis=-depth, kurtosis_order="increasing", num_roots=3)
    acc = tree.tree_accuracy(truth, g)
    assert acc.directed == 0.0 and acc.reversed > 0.3


@pytest.mark.parametrize("solver", list(tree.Solver))
@pytest.mark.parametrize("p,seed", [(3, 0), (4, 1), (4, 2), (5, 3), (5, 4)])
def test_arborescence_matches_brute_force(p, seed, solver):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(p, p))
    r = rng.normal(size=p) - 1.0
    # Free number of roots, with per-model root scores.
    par = tree.max_arborescence(w, root_scores=r, solver=solver)
    assert tree.arborescence_weight(w, par, r) == pytest.approx(_brute_force(w, r))
    # Exactly k roots (the Lagrangian search) for every k.
    for k in range(1, p + 1):
        par = tree.max_arborescence(w, root_scores=r, num_roots=k, solver=solver)
        assert int(np.sum(par < 0)) == k
        assert tree.arborescence_weight(w, par, r) == pytest.approx(_brute_force(w, r, k)), k


@pytest.mark.parametrize("solver", list(tree.Solver))
def test_arborescence_six_nodes_with_forbidden_edges(solver):
    rng = np.random.default_rng(7)
    w = rng.normal(size=(6, 6))
    w[0, 3] = w[2, 5] = w[4, 1] = -np.inf
    for k in (1, 2, 4):
        par = tree.max_arborescence(w, num_roots=k, solver=solver)
        assert all(np.isfinite(w[a, b]) for b, a in enumerate(par) if a >= 0)
        assert tree.arborescence_weight(w, par) == pytest.approx(_brute_force(np.where(np.isinf(w), -1e9, w), 0.0, k))


def test_dense_solver_agrees_with_networkx_on_larger_graphs():
    rng = np.random.default_rng(11)
    for p in (8, 15, 30):
        w = rng.normal(size=(p, p))
        w[rng.random((p, p)) < 0.2] = -np.inf
        r = rng.normal(size=p) - 1.0
        a = tree.max_arborescence(w, root_scores=r, solver="networkx")
        b = tree.max_arborescence(w, root_scores=r, solver="dense")
        assert tree.arborescence_weight(w, a, r) == pytest.approx(tree.arborescence_weight(w, b, r))
        a = tree.max_arborescence(w, num_roots=3, solver="networkx")
        b = tree.max_arborescence(w, num_roots=3, solver="dense")
        assert tree.arborescence_weight(w, a) == pytest.approx(tree.arborescence_weight(w, b))


# ----------------------------------------------------------------------------- scores


def test_weight_scores_match_direct_norms_and_keep_shared_leaves():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(4, 3, 5)).astype(np.float32), "b": rng.normal(size=(4, 5)).astype(np.float32)}
    s = tree.weight_scores(params)
    flat = np.concatenate([params["w"].reshape(4, -1), params["b"]], axis=1).astype(np.float64)
    for a, b in itertools.permutations(range(4), 2):
        assert s[a, b] == pytest.approx(-np.linalg.norm(flat[a] - flat[b]), rel=1e-10)
    assert np.isnan(np.diag(s)).all() and np.allclose(s, s.T, equal_nan=True)
    # A model set of one architecture whose heads differ in shape: only the shared leaves count.
    pa = _population(["a0", "a1"], {"w": params["w"][:2], "head": np.zeros((2, 5, 3))}, "mlp")
    pb = _population(["b0", "b1"], {"w": params["w"][2:], "head": np.zeros((2, 5, 7))}, "mlp")
    s2 = tree.weight_scores(core.ModelSet((pa, pb)))
    np.testing.assert_allclose(s2, tree.weight_scores({"w": params["w"]}), rtol=1e-12)
    # A list of per-model trees.
    np.testing.assert_allclose(tree.weight_scores([{"w": params["w"][i]} for i in range(4)]), s2, rtol=1e-6)


def test_learning_free_scores_are_score_matrices_over_ordered_pairs():
    key = jax.random.key(0)
    k1, k2, k3 = jax.random.split(key, 3)
    params = {"w": jax.random.normal(k1, (3, 6, 8)), "b": 0.1 * jax.random.normal(k2, (3, 8))}
    x = jax.random.normal(k3, (16, 6))
    out = tree.learning_free_scores(("l2", "cka"), _relu1, params, x, alpha=0.01, reported=False)
    ref = lineage.score_matrix("l2", _relu1, params, params, x, alpha=0.01, mode=Mode.FIRST_ORDER)
    s = out[("l2", Mode.FIRST_ORDER)]
    np.testing.assert_allclose(s[~np.eye(3, dtype=bool)], np.asarray(ref)[~np.eye(3, dtype=bool)], rtol=1e-5)
    assert np.isnan(np.diag(s)).all()
    plain = out[("l2", Mode.PLAIN)]
    np.testing.assert_allclose(plain, plain.T, rtol=1e-5)
    assert not np.allclose(s, s.T, equal_nan=True)  # the Taylor step starts at the row's model


# ----------------------------------------------------------------------------- aligned weight scores


def _mlp_models(features, input_shape, seeds):
    from jaxlineage import nets, permutations

    net = nets.mlp(3, features=features, input_shape=input_shape)
    models = [jax.tree.map(np.asarray, net.module.init(jax.random.key(s), np.zeros((1,) + input_shape))) for s in seeds]
    return net, models, permutations.permutation_spec(net, models[0])


def _np_permute(variables, spec, perms):
    """``variables`` with each spec entry's units permuted (numpy, independent of the module's code)."""
    out = jax.tree.map(np.array, variables)
    for perm, (units, axes) in zip(perms, spec.values()):
        for ax in axes:
            node = out
            for k in ax.path[:-1]:
                node = node[k]
            idx = (np.arange(ax.tile)[:, None] * units + np.asarray(perm)[None, :]).ravel()
            node[ax.path[-1]] = np.take(node[ax.path[-1]], idx, axis=ax.axis)
    return out


def _dist(a, b):
    return float(
        np.sqrt(
            sum(np.sum((np.float64(x) - np.float64(y)) ** 2) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
        )
    )


def _perturbed(variables, scale, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda v: (v + scale * rng.normal(size=v.shape)).astype(np.float32), variables)


def test_aligned_weight_scores_find_a_permuted_copy():
    from jaxlineage import nets, permutations

    net, (a, c), spec = _mlp_models((32, 16), (6, 6, 1), (0, 1))
    b = jax.tree.map(np.asarray, permutations.permute_params(a, spec, jax.random.key(7)))
    s, det = tree.aligned_weight_scores([a, b, c], spec=spec, return_details=True)
    raw = tree.weight_scores([a, b, c])
    np.testing.assert_allclose(det.raw, raw, rtol=1e-12)
    assert -raw[0, 1] > 0.8 * -raw[0, 2]  # raw: the permuted copy looks as far as an unrelated model
    assert -s[0, 1] < 1e-6 and -det.lower_bound[0, 1] < 1e-6  # aligned: the same model
    assert -s[0, 2] > 0.5 * -raw[0, 2]  # an unrelated model stays far
    assert np.isnan(np.diag(s)).all() and np.allclose(s, s.T, equal_nan=True)
    # Backbones (no head): the spec derived from the architecture's name drops the head's axis.
    bb = nets.stack([nets.backbone(m) for m in (a, b, c)])
    s_bb = tree.aligned_weight_scores(bb, spec="mlp")
    assert -s_bb[0, 1] < 1e-6 and -s_bb[0, 2] > 0.5 * -raw[0, 2]
    # A Population brings its architecture: spec=None derives it.
    pop = _population(["a", "b", "c"], nets.stack([a, b, c]), "mlp")
    np.testing.assert_allclose(tree.aligned_weight_scores(pop), s, rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("seed", range(6))
def test_aligned_distance_against_brute_force_on_a_tiny_mlp(seed):
    """Weight matching is local: exact on a permuted, slightly perturbed copy; between unrelated models
    only bounded (sorted-weights bound <= brute-force minimum <= aligned <= raw)."""
    net, (a, c), spec = _mlp_models((3, 4), (2, 2, 1), (2 * seed, 2 * seed + 1))
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(units) for units, _ in spec.values()]
    b = _perturbed(_np_permute(a, spec, perms), 0.05, seed)

    def brute(x, y):
        return min(
            _dist(x, _np_permute(y, spec, ps))
            for ps in itertools.product(*[itertools.permutations(range(u)) for u, _ in spec.values()])
        )

    s, det = tree.aligned_weight_scores([a, b, c], spec=spec, return_details=True)
    assert -s[0, 1] == pytest.approx(brute(a, b), rel=1e-9)
    assert -s[0, 1] < 0.2 * -det.raw[0, 1]
    for i, j in ((0, 2), (1, 2)):
        bf = brute([a, b, c][i], [a, b, c][j])
        assert -det.lower_bound[i, j] <= bf + 1e-9
        assert bf <= -s[i, j] + 1e-9
        assert -s[i, j] <= -det.raw[i, j]


def test_aligned_scores_never_exceed_raw_and_candidates_restrict_the_pairs():
    from jaxlineage import permutations

    _, (a, c, d), spec = _mlp_models((24, 12), (4, 4, 1), (3, 4, 5))
    b = jax.tree.map(np.asarray, permutations.permute_params(a, spec, jax.random.key(1)))
    models = [a, b, _perturbed(a, 0.02, 0), _perturbed(b, 0.05, 1), c, d]
    s, det = tree.aligned_weight_scores(models, spec=spec, return_details=True)
    off = ~np.eye(len(models), dtype=bool)
    assert np.all(s[off] >= det.raw[off])  # aligned <= raw, every pair
    assert np.all(det.lower_bound[off] >= s[off] - 1e-9)  # bound <= aligned
    assert (s[off] > det.raw[off] + 1e-3).sum() >= 8  # and alignment changes something
    assert len(det.pairs) == 15 and det.converged.all()
    # One candidate per model: each model's nearest under raw and under the bound are aligned, the rest stay raw.
    s1, det1 = tree.aligned_weight_scores(models, spec=spec, candidates=1, return_details=True)
    picked = np.zeros_like(off)
    picked[det1.pairs[:, 0], det1.pairs[:, 1]] = picked[det1.pairs[:, 1], det1.pairs[:, 0]] = True
    assert 0 < len(det1.pairs) < 15
    np.testing.assert_array_equal(s1[off & ~picked], det.raw[off & ~picked])
    np.testing.assert_allclose(s1[picked], s[picked], rtol=1e-12)
    assert picked[0, 1] and -s1[0, 1] < 1e-6  # the permuted copy is at bound 0: always a candidate


def test_aligned_weight_scores_logs_progress_with_an_eta(monkeypatch, caplog):
    _, (a, c, d), spec = _mlp_models((6, 5), (2, 2, 1), (3, 4, 5))
    monkeypatch.setattr(tree._scores, "_PROGRESS_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="jaxlineage.eval.tree"):
        tree.aligned_weight_scores([a, c, d], spec=spec)
    lines = [r.getMessage() for r in caplog.records if "aligned" in r.getMessage()]
    assert lines and lines[0].startswith("aligned_weight_scores: aligned 1/3 pairs") and "ETA" in lines[0]


def test_aligned_weight_scores_bad_input():
    from jaxlineage import permutations

    _, models, spec = _mlp_models((5, 4), (2, 2, 1), (0, 1))
    with pytest.raises(tree.TreeError, match="at least 2 models"):
        tree.aligned_weight_scores(models[:1], spec=spec)
    with pytest.raises(tree.TreeError, match="pass spec="):
        tree.aligned_weight_scores(models)
    with pytest.raises(tree.TreeError, match="architecture 'transformer'"):
        tree.aligned_weight_scores(models, spec="transformer")
    # A given spec must fit: a leaf the weights lack, a wrong size, an axis listed twice.
    missing = {"dense1": (5, (permutations.PermAxis(("params", "dense9", "kernel"), 1),))}
    with pytest.raises(tree.TreeError, match="'dense1' names leaf params/dense9/kernel, which the weights lack"):
        tree.aligned_weight_scores(models, spec=missing)
    wrong = {"dense1": (6, spec["dense1"][1])}
    with pytest.raises(
        tree.TreeError, match=r"params/dense1/kernel of shape \(4, 5\) has 5 entries on axis 1.*6 units"
    ):
        tree.aligned_weight_scores(models, spec=wrong)
    with pytest.raises(tree.TreeError, match="has no axis 2"):
        tree.aligned_weight_scores(models, spec={"d": (5, (permutations.PermAxis(("params", "dense1", "kernel"), 2),))})
    twice = {"x": spec["dense1"], "y": spec["dense1"]}
    with pytest.raises(tree.TreeError, match="in spec entries 'x' and 'y'"):
        tree.aligned_weight_scores(models, spec=twice)
    # The spec's leaves left out by leaf_filter are ignored; no axis left at all is an error.
    s = tree.aligned_weight_scores(models, spec=spec, leaf_filter=lambda p, s: "head" not in p)
    assert s.shape == (2, 2)
    with pytest.raises(tree.TreeError, match="no axis on the compared leaves"):
        tree.aligned_weight_scores(models, spec=spec, leaf_filter=lambda p, s: "bias" in p and "dense" not in p)
    with pytest.raises(tree.TreeError, match="candidates"):
        tree.aligned_weight_scores(models, spec=spec, candidates=0)
    with pytest.raises(tree.TreeError, match="max_sweeps"):
        tree.aligned_weight_scores(models, spec=spec, max_sweeps=0)
    pa = _population(["m0", "m1"], {"w": np.ones((2, 3))}, "mlp")
    pb = _population(["c0"], {"w": np.ones((1, 3))}, "convnet")
    with pytest.raises(tree.TreeError, match="one architecture.*'convnet'.*'c0'"):
        tree.aligned_weight_scores(core.ModelSet((pa, pb)))


# ----------------------------------------------------------------------------- direction rules


def test_weight_kurtosis_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    params = {"k1": rng.laplace(size=(3, 20, 30)), "k2": rng.normal(size=(3, 10, 10)), "bias": rng.normal(size=(3, 30))}
    k = tree.weight_kurtosis(params, model_chunk=2)
    for i in range(3):
        assert k[i] == pytest.approx(stats.kurtosis(params["k1"][i].ravel()) + stats.kurtosis(params["k2"][i].ravel()))


def test_kurtosis_rule_on_constructed_fine_tunes():
    """Fine-tuning modelled as Gaussian steps on heavy-tailed weights: kurtosis falls down the tree."""
    rng = np.random.default_rng(2)
    models = []
    for r in range(2):
        root = rng.laplace(scale=0.05, size=(40, 30))  # excess kurtosis ~3
        models.append((f"r{r}", None, root))
        for c in range(2):
            child = root + rng.normal(scale=0.04, size=root.shape)
            models.append((f"r{r}c{c}", f"r{r}", child))
            grand = child + rng.normal(scale=0.03, size=root.shape)
            models.append((f"r{r}c{c}g", f"r{r}c{c}", grand))
    ids = [m[0] for m in models]
    truth = LineageGraph.from_parents({m[0]: m[1] for m in models})
    params = {"kernel": np.stack([m[2] for m in models])}
    s = tree.weight_scores(params)
    k = tree.weight_kurtosis(params)
    ev = k[:, None] - k[None, :]
    assert tree.direction_accuracy(truth, ev, ids) == 1.0
    g = tree.recover(s, ids=ids, direction=tree.Direction.KURTOSIS, kurtosis=k, num_roots=2)
    acc = tree.tree_accuracy(truth, g)
    assert acc.directed == 1.0 and acc.root == 1.0
    # Without a direction rule the distances find the edges but not their direction.
    assert tree.tree_accuracy(truth, tree.recover(s, ids=ids, num_roots=2)).undirected == 1.0


def _stepped_forest(rng, root_draw, step_draw):
    """2 roots x 2 children x 1 grandchild: each derived model is its parent plus a step."""
    models = []
    for r in range(2):
        root = root_draw(rng)
        models.append((f"r{r}", None, root))
        for c in range(2):
            child = root + step_draw(rng, 0.04)
            models.append((f"r{r}c{c}", f"r{r}", child))
            models.append((f"r{r}c{c}g", f"r{r}c{c}", child + step_draw(rng, 0.03)))
    ids = [m[0] for m in models]
    return ids, LineageGraph.from_parents({m[0]: m[1] for m in models}), {"kernel": np.stack([m[2] for m in models])}


@pytest.mark.parametrize(
    "root_draw, step_draw, want",
    [
        # Heavy-tailed roots, Gaussian steps: kurtosis falls down the tree (MoTHer's fine-tuning order).
        (lambda r: r.laplace(scale=0.05, size=(40, 30)), lambda r, s: r.normal(scale=s, size=(40, 30)), "decreasing"),
        # Light-tailed roots (uniform), heavy-tailed sparse steps: kurtosis rises down the tree.
        (
            lambda r: r.uniform(-0.1, 0.1, size=(40, 30)),
            lambda r, s: r.laplace(scale=s, size=(40, 30)) * (r.random((40, 30)) < 0.2),
            "increasing",
        ),
    ],
)
def test_auto_kurtosis_order_is_chosen_from_the_weights(root_draw, step_draw, want):
    ids, truth, params = _stepped_forest(np.random.default_rng(5), root_draw, step_draw)
    s, k = tree.weight_scores(params), tree.weight_kurtosis(params)
    ev = k[:, None] - k[None, :]
    assert tree.direction_accuracy(truth, ev if want == "decreasing" else -ev, ids) == 1.0  # the construction
    assert tree.choose_kurtosis_order(s, k, num_roots=2) is tree.KurtosisOrder(want)
    assert tree.choose_kurtosis_order(s, k) is tree.KurtosisOrder(want)  # one tree when k is unknown
    rec = lambda order: tree.recover(s, ids=ids, direction="kurtosis", kurtosis=k, kurtosis_order=order, num_roots=2)  # noqa: E731
    assert tree.tree_accuracy(truth, rec("auto")).directed == 1.0
    wrong = "increasing" if want == "decreasing" else "decreasing"
    assert tree.tree_accuracy(truth, rec(wrong)).directed < 0.5
    with pytest.raises(tree.TreeError, match="definite kurtosis order"):
        tree.edge_weights(s, direction="kurtosis", kurtosis=k, kurtosis_order="auto")


def test_taylor_asymmetry_matches_its_closed_form_and_points_to_the_child():
    """A ReLU layer fine-tuned by lowering its biases (units switch off): the first-order step from the parent wins.

    For ``f = relu(x W + b)`` and L2, with ``u``, ``v`` the parent's and child's
    pre-activations, ``S_FO[a, b] - S_FO[b, a] = (2 alpha / n) (sum_{u > 0 >= v} u (u - v)
    - sum_{v > 0 >= u} v (v - u))``: positive when units switch off from ``a`` to ``b``.
    """
    key = jax.random.key(3)
    kw, kb, kx, kn1, kn2 = jax.random.split(key, 5)
    w = jax.random.normal(kw, (6, 12)) / 3
    b = 0.2 * jax.random.normal(kb, (12,))
    x = jax.random.normal(kx, (64, 6))
    child_b = b - 0.3
    grand_b = b - 0.6
    other_w = jax.random.normal(kn1, (6, 12)) / 3
    ws = jnp.stack([w, w + 0.02 * jax.random.normal(kn2, (6, 12)), w, other_w, other_w])
    bs = jnp.stack([b, child_b, grand_b, b, b - 0.3])
    params = {"w": ws, "b": bs}
    ids = ["p", "c", "g", "q", "qc"]
    truth = LineageGraph.from_parents({"p": None, "c": "p", "g": "c", "q": None, "qc": "q"})
    alpha = 0.01
    fo = tree.learning_free_scores("l2", _relu1, params, x, alpha=alpha, modes=Mode.FIRST_ORDER, reported=False)[
        ("l2", Mode.FIRST_ORDER)
    ]
    # Closed form of the asymmetry for one pair.
    xn, wn, bn = (np.asarray(a, np.float64) for a in (x, ws, bs))
    u = xn @ wn[0] + bn[0]
    v = xn @ wn[1] + bn[1]
    closed = (
        2
        * alpha
        / u.size
        * (np.sum(np.where((u > 0) & (v <= 0), u * (u - v), 0)) - np.sum(np.where((v > 0) & (u <= 0), v * (v - u), 0)))
    )
    assert fo[0, 1] - fo[1, 0] == pytest.approx(closed, rel=1e-3, abs=1e-7)
    assert tree.direction_accuracy(truth, fo - fo.T, ids) == 1.0
    plain = tree.learning_free_scores("l2", _relu1, params, x, alpha=alpha, modes=Mode.PLAIN)[("l2", Mode.PLAIN)]
    g = tree.recover(plain, ids=ids, direction=tree.Direction.TAYLOR, direction_scores=fo, num_roots=2)
    assert dict(g.parent_map) == dict(truth.parent_map)


# ----------------------------------------------------------------------------- metrics, result, plot


def test_tree_accuracy_definitions_by_hand():
    truth = LineageGraph.from_parents({"p": None, "c1": "p", "c2": "p", "g": "c1"})
    rec = LineageGraph.from_parents({"c1": None, "p": "c1", "c2": "p", "g": "c2"})
    acc = tree.tree_accuracy(truth, rec)
    assert acc.undirected == pytest.approx(2 / 3)
    assert acc.directed == pytest.approx(1 / 3)
    assert acc.reversed == pytest.approx(1 / 3)
    assert acc.root == 0.0 and acc.model_root == 0.0
    two_roots = LineageGraph.from_parents({"p": None, "c1": "p", "c2": None, "g": "c1"})
    acc = tree.tree_accuracy(truth, two_roots)
    assert acc.root == 0.5 and acc.directed == pytest.approx(2 / 3) and acc.model_root == 0.75


def test_restrict_graph_hangs_orphans_from_the_nearest_kept_ancestor():
    g = LineageGraph.from_parents({"p": None, "c": "p", "g": "c", "x": None}, init_keys={"p": 1, "x": 1})
    r = tree.restrict_graph(g, ["p", "g", "x"])
    assert dict(r.parent_map) == {"p": (), "g": ("p",), "x": ()}
    assert dict(r.init_keys) == {"p": 1, "x": 1}


def test_tree_result_and_plot(tmp_path):
    truth, ids, _, sym, _ = _synthetic()
    g = tree.recover(sym, ids=ids, num_roots=3)
    res = tree.tree_result(truth, g, scenario="synthetic", scorer="tree-distance", settings={"num_roots": 3})
    assert res.question == core.Question.RECOVER.value == "recover"
    assert set(res.metrics) >= {"undirected_edge_accuracy", "directed_edge_accuracy", "root_accuracy"}
    assert res.metrics["undirected_edge_accuracy"]["mean"] == 1.0
    back = core.Result.from_json(json.loads(json.dumps(res.to_json())))
    assert back.metrics == res.metrics
    path = tmp_path / "forest.png"
    tree.tree_plot(truth, g, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- bad input


def test_bad_input_raises_clear_errors():
    assert issubclass(tree.TreeError, JaxlineageError)
    with pytest.raises(tree.TreeError, match="at least 2 models"):
        tree.recover(np.zeros((1, 1)))
    with pytest.raises(tree.TreeError, match="square"):
        tree.recover(np.zeros((3, 4)))
    bad = np.random.default_rng(0).normal(size=(4, 4))
    bad[1, 2] = np.nan
    with pytest.raises(tree.TreeError, match=r"scores\[1, 2\] is nan"):
        tree.recover(bad)
    bad[1, 2] = np.inf
    with pytest.raises(tree.TreeError, match="finite"):
        tree.edge_weights(bad)
    good = np.random.default_rng(1).normal(size=(4, 4))
    with pytest.raises(tree.TreeError, match="needs kurtosis"):
        tree.recover(good, direction="kurtosis")
    with pytest.raises(tree.TreeError, match="kurtosis must have shape"):
        tree.recover(good, direction="kurtosis", kurtosis=np.zeros(3))
    with pytest.raises(tree.TreeError, match="unknown direction"):
        tree.recover(good, direction="sideways")
    with pytest.raises(tree.TreeError, match="num_roots"):
        tree.recover(good, num_roots=5)
    with pytest.raises(tree.TreeError, match="4 models"):
        tree.recover(good, ids=["a", "b"])
    # Weight space: one model, mixed architectures, differing trees.
    with pytest.raises(tree.TreeError, match="at least 2 models"):
        tree.weight_scores({"w": np.zeros((1, 3))})
    pa = _population(["m0", "m1"], {"w": np.ones((2, 3))}, "mlp")
    pb = _population(["c0"], {"w": np.ones((1, 3))}, "convnet")
    with pytest.raises(tree.TreeError, match="one architecture.*'convnet'.*'c0'"):
        tree.weight_scores(core.ModelSet((pa, pb)))
    with pytest.raises(tree.TreeError, match="trees differ"):
        tree.weight_scores([{"w": np.ones(3)}, {"w": np.ones(4)}])
    with pytest.raises(tree.TreeError, match="at least 2 models"):
        tree.learning_free_scores(
            "l2", _relu1, {"w": jnp.ones((1, 2, 3)), "b": jnp.ones((1, 3))}, jnp.ones((4, 2)), alpha=0.1
        )
    truth = LineageGraph.from_parents({"a": None, "b": "a"})
    with pytest.raises(tree.TreeError, match="'b' is only in the true graph"):
        tree.tree_accuracy(truth, LineageGraph.from_parents({"a": None, "c": "a"}))


# ----------------------------------------------------------------------------- the TREE_QUICK spec


def test_tree_quick_is_a_three_generation_forest_with_prune_and_permute_edges():
    """The spec alone (no build): several roots, generations 0-2, fine-tune / prune / permute edges, varied lrs."""
    from jaxlineage import zoo

    spec = zoo.TREE_QUICK
    assert zoo.SPECS["tree_quick"] is spec and "TREE_QUICK" in zoo.__all__
    spec.validate()
    # Planned models per group: its grid points times its source group's models (every model kept).
    n = {}
    for g in spec.order():
        assert g.top_k is None and g.floor is None  # the true forest is the whole zoo
        n[g.name] = len(g.points()) * (1 if g.source is None else n[g.source])
    gens = {g.name: spec.generation(g.name) for g in spec.groups}
    assert set(gens.values()) == {0, 1, 2}
    assert sum(n[g] for g in n if gens[g] == 0) >= 3  # several roots
    edges_by_op = {}
    for g in spec.groups:
        if g.source is not None:
            edges_by_op[g.op] = edges_by_op.get(g.op, 0) + n[g.name]
    assert set(edges_by_op) == {"finetune", "prune", "permute"} and all(v > 0 for v in edges_by_op.values())
    # Prune and permute edges in both derived generations; fine-tuning at several learning rates and epochs.
    for op in ("prune", "permute", "finetune"):
        assert {gens[g.name] for g in spec.groups if g.op == op} == {1, 2}, op
    ft = [g for g in spec.groups if g.op == "finetune"]
    assert len(set().union(*(spec.hparams_of(g.name, "lr") for g in ft))) >= 3
    assert len(set().union(*(spec.hparams_of(g.name, "epochs") for g in ft))) >= 2
    # Every root from its own initialisation (no init twins among the roots).
    (root,) = [g for g in spec.groups if g.source is None]
    assert len(spec.hparams_of(root.name, "init_seed")) == n[root.name]
    # Fine-tunes of one source have their own data orders: with a shared seed (and a constant lr) a
    # 1-epoch fine-tune would be exactly the first-epoch checkpoint of its 3-epoch sibling.
    for src in {g.source for g in ft}:
        seeds = [s for g in ft if g.source == src for s in spec.hparams_of(g.name, "seed")]
        assert len(seeds) == len(set(seeds)) == sum(len(g.points()) for g in ft if g.source == src), src
    assert sum(n.values()) == 84 and sum(edges_by_op.values()) == 80


def test_importing_tree_does_not_import_matplotlib():
    import subprocess
    import sys

    code = "import sys\nfrom jaxlineage.eval import tree\nprint('matplotlib' in sys.modules, callable(tree.tree_plot))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False True", out
