"""p-values: the exact formula, invariance, calibration under a synthetic null, Holm, open-set answers, bad input."""

import jax
import numpy as np
import pytest

from jaxlineage import nets, permutations
from jaxlineage.eval import pvalues as pv
from jaxlineage.eval.core import NO_PARENT, ModelSet, Population, Scorer, ScorerError

NET = nets.mlp(3, features=(16, 8), input_shape=(12,))


def _init(seed):
    return NET.init(jax.random.key(seed))


def test_exact_pvalue_formula_on_a_toy():
    assert pv.exact_pvalue(3.0, [1.0, 3.0, 5.0]) == pytest.approx((1 + 2) / 4)
    assert pv.exact_pvalue(9.0, [1.0, 3.0, 5.0]) == pytest.approx(1 / 4)
    np.testing.assert_allclose(pv.conformal_pvalues([0.0, 2.0, 9.0], [1.0, 2.0, 3.0]), [1.0, 3 / 4, 1 / 4])


@pytest.mark.slow  # over 13 s on 2 loaded cores: the fast tier stays under 3 min
def test_permutation_test_counts_its_own_null():
    c, q = _init(0), _init(1)
    spec = permutations.permutation_spec(NET, c)
    r = pv.permutation_test(c, q, spec, key=jax.random.key(2), num_permutations=49, statistic=pv.Statistic.WEIGHT_CORR)
    assert r.null.shape == (49,)
    assert r.pvalue == pytest.approx((1 + np.sum(r.null >= r.statistic)) / 50)
    same = pv.permutation_test(
        c, c, spec, key=jax.random.key(2), num_permutations=49, statistic=pv.Statistic.WEIGHT_CORR
    )
    assert same.statistic == pytest.approx(1.0, abs=1e-5) and same.pvalue == pytest.approx(1 / 50)


def test_matched_statistic_is_invariant_to_the_querys_unit_order():
    c, q = _init(0), _init(0)
    leaves = jax.tree.leaves(q)
    q = jax.tree.unflatten(
        jax.tree.structure(q), [w + 0.05 * np.random.default_rng(0).normal(size=w.shape) for w in leaves]
    )
    spec = permutations.permutation_spec(NET, c)
    qp = permutations.permute_params(q, spec, jax.random.key(5))
    a, b = pv.matched_statistic(c, q, spec), pv.matched_statistic(c, qp, spec)
    assert a == pytest.approx(b) and a > 0.5
    r = pv.permutation_test(c, qp, spec, key=jax.random.key(1), num_permutations=99, statistic=pv.Statistic.MATCHED)
    assert r.pvalue == pytest.approx(1 / 100)


@pytest.mark.slow  # over 13 s on 2 loaded cores: the fast tier stays under 3 min
def test_calibration_on_a_synthetic_null():
    # Independent initialisations: the exact test's p-values are uniform (fraction <= alpha within the margin).
    spec = permutations.permutation_spec(NET, _init(0))
    ps = np.array(
        [
            pv.permutation_test(
                _init(2 * i),
                _init(2 * i + 1),
                spec,
                key=jax.random.key(i),
                num_permutations=19,
                statistic=pv.Statistic.WEIGHT_CORR,
            ).pvalue
            for i in range(120)
        ]
    )
    for row in pv.calibration_table(ps, alphas=(0.05, 0.1, 0.5)):
        assert row["rate"] <= row["alpha"] + 2 * row["margin"], row
    assert abs(ps.mean() - 0.525) < 0.1
    # Conformal p-values of exchangeable scores.
    rng = np.random.default_rng(0)
    p = pv.conformal_pvalues(rng.normal(size=4000), rng.normal(size=400))
    for row in pv.calibration_table(p):
        assert row["rate"] <= row["alpha"] + row["margin"] + 1 / 401, row


def _holm_direct(p, alpha):
    k = len(p)
    order = np.argsort(p, kind="stable")
    adj = np.maximum.accumulate(np.minimum(1.0, (k - np.arange(k)) * p[order]))
    out = np.zeros(k, bool)
    out[order] = adj <= alpha
    return out


def test_holm_matches_the_adjusted_pvalue_form():
    rng = np.random.default_rng(1)
    p = rng.uniform(size=(6, 300)) ** 3
    got = pv.holm(p, alpha=0.05)
    want = np.stack([_holm_direct(p[:, m], 0.05) for m in range(p.shape[1])], 1)
    np.testing.assert_array_equal(got, want)
    assert got.any() and not got.all()


def test_open_set_decisions():
    p = np.array([[0.001, 0.5, 0.004], [0.002, 0.6, 0.9], [0.9, 0.7, 0.03]])
    s = np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 5.0]])
    # query 0: candidates 0, 1 rejected -> the higher score (1); query 1: none;
    # query 2: 0.004 <= 0.05/3 but 0.03 > 0.05/2 -> 0
    np.testing.assert_array_equal(pv.open_set_decisions(p, s, alpha=0.05), [1, NO_PARENT, 0])


class _Const(Scorer):
    name = "const"

    def __init__(self, table):
        self.table = table

    def score_block(self, candidates, queries, *, probe):
        return self.table[: len(candidates), : len(queries)]


def _pop(ids, seed=0):
    params = nets.stack([_init(seed + i) for i in range(len(ids))])
    return Population(ids=ids, params=params, logits_fn=NET.logits_fn, feature_fns={}, arch="mlp")


def test_calibrated_scorer_decides_with_holm():
    cands, queries = ModelSet((_pop(("a", "b")),)), ModelSet((_pop(("x", "y", "z"), 5),))
    cal = pv.CalibratedScorer(_Const(np.arange(6.0).reshape(2, 3)), alpha=0.3)
    cal.calibrate(cands, queries, probe=np.zeros((1, 12)))
    assert cal.null_scores.size == 6
    scores = np.array([[10.0, 0.0, 2.5], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(cal.pvalues(scores)[:, 2], [4 / 7, 6 / 7])
    np.testing.assert_array_equal(cal.decide(scores), [0, NO_PARENT, NO_PARENT])


def test_bad_input_names_the_model():
    other = nets.mlp(3, features=(16, 4), input_shape=(12,)).init(jax.random.key(0))
    spec = permutations.permutation_spec(NET, _init(0))
    with pytest.raises(pv.PValueError, match="'child-7'.*params/dense2"):
        pv.permutation_test(_init(0), other, spec, key=jax.random.key(0), names=("parent-3", "child-7"))
    with pytest.raises(pv.PValueError, match="empty calibration set"):
        pv.conformal_pvalues([0.5], [np.nan], name="calibrated[l2]")
    cal = pv.CalibratedScorer(_Const(np.full((2, 3), np.nan)))
    with pytest.raises(pv.PValueError, match="'a'"):
        cal.calibrate(ModelSet((_pop(("a", "b")),)), ModelSet((_pop(("x", "y", "z"), 5),)), probe=np.zeros((1, 12)))
    with pytest.raises(pv.PValueError, match="not calibrated"):
        pv.CalibratedScorer(_Const(np.zeros((1, 1)))).decide(np.zeros((1, 1)))


def test_qq_plot_writes_a_png(tmp_path):
    path = pv.qq_plot({"uniform": np.random.default_rng(0).uniform(size=50)}, str(tmp_path / "qq.png"))
    assert open(path, "rb").read(4) == b"\x89PNG"


@pytest.fixture(scope="module")
def twin_zoo(tmp_path_factory):
    from jaxlineage import data, zoo
    from jaxlineage.zoo import HeadMode

    kw = dict(arch="mlp", arch_kwargs=(("features", (16, 8)),))
    spec = zoo.GraphSpec(
        "twins",
        (zoo.Task("A", "embedded", data.TASK_A, n_train=128), zoo.Task("B", "embedded", data.TASK_B, n_train=128)),
        (
            zoo.Group(
                "parent", "train", task="A", grid=dict(seed=(0, 1), init_seed=(0, 1), epochs=1, batch_size=64), **kw
            ),
            zoo.Group(
                "child",
                "finetune",
                source="parent",
                task="B",
                grid=dict(seed=(0,), epochs=1, batch_size=64, head=HeadMode.FRESH),
            ),
            zoo.Group("independent", "train", task="B", grid=dict(seed=(100,), epochs=1, batch_size=64), **kw),
        ),
    )
    return zoo.build(spec, tmp_path_factory.mktemp("twins"), progress=False)


@pytest.mark.slow  # over 13 s on 2 loaded cores: the fast tier stays under 3 min
def test_open_set_scenario_reads_relations_from_the_graph(twin_zoo):
    z = twin_zoo
    parents = {(r.hparams["init_seed"], r.hparams["seed"]): r.id for r in z.group("parent")}
    withheld = [parents[0, 0], parents[0, 1], parents[1, 0]]
    os_ = pv.open_set_scenario(z, withheld=withheld, probe_size=16)
    s = os_.scenario
    assert s.candidates.ids == (parents[1, 1],)
    kinds = dict(zip(s.queries.ids, s.kinds))
    # The child of the init-twin of the only candidate is related to it: neither known nor "no parent".
    twin_child = z.graph.children(parents[1, 0])[0]
    assert os_.related_withheld == (twin_child,) and os_.relations[twin_child] == {parents[1, 1]: "shared_init"}
    assert kinds[z.graph.children(parents[1, 1])[0]] == "known"
    assert sorted(k for k in kinds.values()) == ["known", "no_parent", "no_parent", "no_parent"]
    assert list(s.labels[np.array(s.kinds) == "no_parent"]) == [NO_PARENT] * 3
    with pytest.raises(pv.PValueError, match="'nope'"):
        pv.open_set_scenario(z, withheld=["nope"], probe_size=16)


def test_identify_open_set_says_no_parent_only_for_queries_unrelated_to_every_candidate(twin_zoo):
    from jaxlineage.eval import scenarios

    z = twin_zoo
    parents = {(r.hparams["init_seed"], r.hparams["seed"]): r.id for r in z.group("parent")}
    # Parent (1, 0) is withheld; its init twin (1, 1) stays a candidate, so (1, 0)'s child is related to it.
    withheld = [parents[1, 0]]
    s = scenarios.identify(z, queries=("child", "independent"), open_set=True, withheld=withheld, probe_size=16)
    twin_child = z.graph.children(parents[1, 0])[0]
    assert twin_child not in s.queries.ids
    assert set(s.candidates.ids) == {parents[0, 0], parents[0, 1], parents[1, 1]}
    no_parent = [q for q, lab in zip(s.queries.ids, s.labels) if lab == NO_PARENT]
    assert no_parent == [r.id for r in z.group("independent")]
    for q, lab in zip(s.queries.ids, s.labels):
        if lab != NO_PARENT:
            assert s.candidates.ids[lab] == z.graph.parent(q)
    os_ = scenarios.open_set(z, withheld=withheld, probe_size=16)
    assert os_.related_withheld == (twin_child,) and os_.relations[twin_child] == {parents[1, 1]: "shared_init"}
    assert os_.scenario.queries.ids == s.queries.ids
    # The p-value module's open set is this one.
    pv_s = pv.open_set_scenario(z, withheld=withheld, probe_size=16).scenario
    assert pv_s.queries.ids == s.queries.ids and list(pv_s.labels) == list(s.labels)
    with pytest.raises(ScorerError, match="'nope'"):
        scenarios.identify(z, open_set=True, withheld=["nope"], probe_size=16)
