"""verify / identify / Models on models the library has never seen, and the p-values they stand on.

The models here are defined in this file (their own layer names, no ``jaxlineage.nets``) and
trained with plain optax, as a user would.
"""

import itertools
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxlineage as jl
from jaxlineage import permutations as perm_lib
from jaxlineage import references
from jaxlineage import verify as verify_lib
from jaxlineage.eval import pvalues, scorers
from jaxlineage.eval.core import ModelSet, Scenario, ScorerError
from jaxlineage.models import Models, ModelsError
from jaxlineage.verify import VerifyError, cauchy_combination


class UserMLP(nn.Module):
    """A user's network: layer names unlike the library's."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(32, name="fc1")(x))
        h = nn.relu(nn.Dense(16, name="fc2")(h))
        return nn.Dense(3, name="out")(h)


class UserCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(4, (3, 3), name="c1")(x))
        h = nn.relu(nn.Conv(6, (3, 3), name="c2")(h))
        h = nn.relu(nn.Dense(8, name="d1")(h.reshape((h.shape[0], -1))))
        return nn.Dense(3, name="logit")(h)


def _task(seed, n=512):
    x = jax.random.normal(jax.random.key(seed), (n, 16))
    w = jax.random.normal(jax.random.key(100), (16, 3))
    return x, jnp.argmax(x @ w + 0.3 * jnp.sin(3 * x[:, :3]), axis=1)


def _train(variables, x, y, steps, lr=1e-2):
    tx = optax.adam(lr)
    opt = tx.init(variables)

    @jax.jit
    def step(v, o):
        loss = lambda v: optax.softmax_cross_entropy_with_integer_labels(UserMLP().apply(v, x), y).mean()
        g = jax.grad(loss)(v)
        u, o = tx.update(g, o, v)
        return optax.apply_updates(v, u), o

    for _ in range(steps):
        variables, opt = step(variables, opt)
    return variables


@pytest.fixture(scope="module")
def user_models():
    x, y = _task(0)
    init = lambda s: UserMLP().init(jax.random.key(s), x[:1])
    a = _train(init(1), x, y, 150)
    b = _train(init(2), x, y, 150)
    x2, y2 = _task(1)
    a_ft = _train(a, x2, y2, 40, lr=3e-3)
    return x, y, a, b, a_ft


# --------------------------------------------------------------------------- Models


@pytest.mark.slow
def test_from_linen_checks_taps_and_names_them():
    x = jnp.ones((4, 16))
    trees = [UserMLP().init(jax.random.key(s), x) for s in range(3)]
    m = Models.from_linen(UserMLP(), trees, taps=("fc1", "fc2"), example=x, arch="mlp")
    assert m.taps == ("fc1", "fc2", "logits") and m.default_tap == "fc1"
    h = UserMLP().apply(trees[1], x, capture_intermediates=True)[1]["intermediates"]["fc2"]["__call__"][0]
    np.testing.assert_allclose(m.feature_fn("fc2")(m.one(1), x), h, rtol=1e-6)
    with pytest.raises(ModelsError, match=r"no tap 'fc_1'; taps that exist: \('fc1', 'fc2', 'logits', 'out'\)"):
        Models.from_linen(UserMLP(), trees, taps=("fc_1",), example=x)
    with pytest.raises(ModelsError, match="pass example="):
        Models.from_linen(UserMLP(), trees, taps=("fc1",))
    other = UserCNN().init(jax.random.key(0), jnp.ones((1, 6, 6, 1)))
    with pytest.raises(ModelsError, match="'model1' does not share 'model0'"):
        Models.from_linen(UserMLP(), [trees[0], other])


def test_from_apply_and_nnx_taps_checked():
    def apply(p, x):
        return jnp.tanh(x @ p["w"]) @ p["v"]

    ps = [{"w": jnp.ones((16, 4)) * s, "v": jnp.ones((4, 3))} for s in range(2)]
    m = Models.from_apply(apply, ps, taps={"hidden": lambda p, x: jnp.tanh(x @ p["w"])}, example=jnp.ones((2, 16)))
    assert m.feature_fn().__call__(m.one(1), jnp.ones((2, 16))).shape == (2, 4)
    with pytest.raises(ModelsError, match="tap 'bad' fails"):
        Models.from_apply(apply, ps, taps={"bad": lambda p, x: x @ p["v"]}, example=jnp.ones((2, 16)))
    with pytest.raises(ModelsError, match="taps are functions"):
        Models.from_apply(apply, ps, taps={"hidden": "fc1"})
    from flax import nnx

    class Tiny(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(16, 3, rngs=rngs)

        def __call__(self, x):
            return self.fc(x)

    n = Models.from_nnx([Tiny(nnx.Rngs(s)) for s in range(2)], taps={"fc": lambda mdl, x: mdl.fc(x)})
    n.check(jnp.ones((2, 16)))
    assert len(n) == 2 and n.logits_fn(n.one(0), jnp.ones((2, 16))).shape == (2, 3)


def test_user_arch_named_mlp_is_not_the_library_mlp():
    """Naming your architecture "mlp" must not pull in the library MLP's tap or permutation spec."""
    x = jnp.ones((4, 16))
    m = Models.from_linen(UserMLP(), [UserMLP().init(jax.random.key(s), x) for s in range(3)], arch="mlp")
    assert scorers.default_tap(m) == "logits"
    spec = pvalues.population_spec(m)
    assert sorted(spec) == ["fc1", "fc2"]
    s = pvalues.MatchedScorer().score(ModelSet((m,)), ModelSet((m,)), probe=np.asarray(x))
    assert np.isfinite(s).all() and np.allclose(np.diag(s), 1.0)
    with pytest.raises(perm_lib.PermutationError, match="not jaxlineage's 'mlp'"):
        pvalues.spec_for("mlp", m.one(0))


def test_learning_free_tap_typo_is_an_error_naming_the_tap():
    x = jnp.ones((4, 16))
    m = Models.from_linen(UserMLP(), [UserMLP().init(jax.random.key(s), x) for s in range(2)], taps=("fc1",), example=x)
    for unreadable in ("raise", "nan"):
        with pytest.raises(ScorerError, match="feature tap 'fc_1'"):
            scorers.LearningFree("l2", "plain", tap="fc_1").score(
                ModelSet((m,)), ModelSet((m,)), probe=np.asarray(x), unreadable=unreadable
            )


# --------------------------------------------------------------------------- permutation specs


@pytest.mark.slow  # over 6 s on 2 loaded cores: the fast tier stays under 3 min
def test_inferred_spec_keeps_the_function_and_a_wrong_one_is_rejected():
    x = jax.random.normal(jax.random.key(0), (8, 16))
    v = UserMLP().init(jax.random.key(1), x)
    spec = perm_lib.infer_spec(v)
    assert perm_lib.check_spec(UserMLP().apply, v, spec, x, key=jax.random.key(2)) < 1e-5
    bad = {"fc1": (32, spec["fc1"][1][:-1])}  # forgets fc2's input rows: the function changes
    with pytest.raises(perm_lib.PermutationError, match="does not keep the network's function"):
        perm_lib.check_spec(UserMLP().apply, v, bad, x, key=jax.random.key(2))
    xc = jax.random.normal(jax.random.key(0), (4, 6, 6, 1))
    vc = UserCNN().init(jax.random.key(1), xc)
    spec_c = perm_lib.infer_spec(vc)
    assert sorted(spec_c) == ["c1", "c2", "d1"] and spec_c["c2"][1][-1].tile == 36
    assert perm_lib.check_spec(UserCNN().apply, vc, spec_c, xc, key=jax.random.key(3)) < 1e-5


def test_verify_rejects_a_user_spec_that_does_not_keep_the_function(user_models):
    x, _, a, b, _ = user_models
    spec = perm_lib.infer_spec(a)
    bad = {"fc1": (32, spec["fc1"][1][:-1])}
    src = Models.from_linen(UserMLP(), [a], ids=["A"], perm_spec=bad)
    with pytest.raises(VerifyError, match="'A'.*does not keep the network's function"):
        jl.verify(src, Models.from_linen(UserMLP(), [b], ids=["B"]), data=x[:64], num_permutations=9)


def test_verify_checks_the_suspects_and_references_specs_too(user_models):
    """A spec is checked wherever it is used (matched weights reads the suspects' and references'), not only
    on the sources; the error names the role and the model."""
    x, _, a, b, c = user_models
    spec = perm_lib.infer_spec(a)
    bad = {"fc1": (32, spec["fc1"][1][:-1])}
    good = Models.from_linen(UserMLP(), [a], ids=["A"])
    with pytest.raises(VerifyError, match="suspect 'B'.*does not keep the network's function"):
        jl.verify(good, Models.from_linen(UserMLP(), [b], ids=["B"], perm_spec=bad), data=x[:64], num_permutations=9)
    with pytest.raises(VerifyError, match="reference 'R'.*does not keep the network's function"):
        jl.verify(
            good,
            Models.from_linen(UserMLP(), [b], ids=["B"]),
            data=x[:64],
            references=Models.from_linen(UserMLP(), [c], ids=["R"], perm_spec=bad),
            num_permutations=9,
        )


@pytest.mark.parametrize("net", ["mlp", "convnet"])
def test_permutation_null_equals_statistic_on_explicitly_permuted_copies(net):
    """Oracle: each null value is the statistic recomputed on an explicitly permuted query."""
    if net == "mlp":
        module, x = UserMLP(), jnp.ones((1, 16))
    else:
        module, x = UserCNN(), jnp.ones((1, 6, 6, 1))
    c = module.init(jax.random.key(0), x)
    q = jax.tree.map(lambda w, k=None: w + 0.3 * jnp.sign(w), c)  # related, so the statistic is not ~0
    q = jax.tree.map(lambda w, n: w + 0.1 * n, q, module.init(jax.random.key(9), x))
    spec = perm_lib.infer_spec(c)
    key, t = jax.random.key(4), 5
    r = pvalues.permutation_test(c, q, spec, key=key, num_permutations=t, chunk=2)
    keys = jax.random.split(key, t)
    for i in range(t):
        qp = perm_lib.apply_permutations(q, spec, perm_lib.random_permutations(spec, keys[i]))
        assert abs(r.null[i] - pvalues.permutation_test(c, qp, spec, key=key, num_permutations=1).statistic) < 1e-5
    assert r.pvalue == (1 + np.sum(r.null >= r.statistic)) / (t + 1)


def test_exported_pvalue_scorers_on_user_models(user_models):
    x, _, a, b, a_ft = user_models
    m = Models.from_linen(UserMLP(), [a, b, a_ft], ids=["A", "B", "A'"])
    s = pvalues.PermutationTestScorer(key=jax.random.key(0), num_permutations=49)
    scores = s.score(ModelSet((m,)), ModelSet((m,)), probe=np.asarray(x[:32]))
    p = s.to_pvalues(scores)
    assert p[0, 2] == pytest.approx(1 / 50) and p[2, 0] == pytest.approx(1 / 50)  # A and its fine-tune
    assert p[0, 1] > 0.05 and p[1, 2] > 0.05
    np.testing.assert_array_equal(s.decide(scores[[1, 0]][:, [2]]), [1])
    cal = pvalues.CalibratedScorer(scorers.OutputKL(), alpha=0.05)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        cal.calibrate(ModelSet((m.take([0]),)), ModelSet((m.take([1]),)), probe=np.asarray(x[:32]))
    assert any("smallest conformal p-value is 1/2" in str(e.message) for e in w)


# --------------------------------------------------------------------------- combination


def test_cauchy_combination_matches_its_definition():
    assert cauchy_combination([0.3]) == pytest.approx(0.3)
    p = np.array([0.01, 0.2, 0.7])
    t = np.mean(np.tan((0.5 - p) * np.pi))
    assert cauchy_combination(p) == pytest.approx(0.5 - np.arctan(t) / np.pi)
    assert cauchy_combination([1e-20, 0.5]) == pytest.approx(2e-20, rel=1e-6)
    # A test that sees nothing (p = 1, e.g. every reference above the suspect) does not veto a strong one.
    assert cauchy_combination([1e-3, 1.0]) < 0.01 and cauchy_combination([1e-3, 1.0]) == cauchy_combination(
        [1e-3, 0.99]
    )
    # Under independence and the null, the combination is uniform: P(p <= a) ~ a.
    u = np.random.default_rng(0).uniform(size=(20000, 4))
    comb = np.array([cauchy_combination(r) for r in u])
    for a in (0.01, 0.05, 0.1):
        assert abs(np.mean(comb <= a) - a) < 3 * np.sqrt(a * (1 - a) / len(u))


def _pooled_brute_force(s):
    """pooled_conformal written out member by member, from its definition."""
    n1, tests = s.shape
    c = []
    for j in range(n1):
        u = [(sum(s[i, t] >= s[j, t] for i in range(n1)) - 0.5) / n1 for t in range(tests)]
        # One-sided: a test on which the member sits in the pool's less related half adds 0.
        c.append(np.mean([np.tan((0.5 - x) * np.pi) if x < 0.5 else 0.0 for x in u]))
    return c[0], sum(cj >= c[0] - 1e-9 for cj in c) / n1


def test_pooled_conformal_matches_brute_force_and_is_valid_under_exchangeability():
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = rng.normal(size=(int(rng.integers(2, 12)), int(rng.integers(1, 5))))
        s[rng.uniform(size=s.shape) < 0.2] = 0.0  # ties
        assert verify_lib.pooled_conformal(s) == pytest.approx(_pooled_brute_force(s))
    # One test: the test's own conformal p-value.
    s = rng.normal(size=(20, 1))
    assert verify_lib.pooled_conformal(s)[1] == pytest.approx((1 + np.sum(s[1:, 0] >= s[0, 0])) / 20)
    # Exchangeable pools of strongly dependent tests (a shared factor): P(p <= a) <= a + margin.
    n1, draws = 20, 4000
    shared = rng.normal(size=(draws, n1, 1))
    pools = shared + 0.5 * rng.normal(size=(draws, n1, 4))
    p = np.array([verify_lib.pooled_conformal(x)[1] for x in pools])
    for a in (0.05, 0.1, 0.25):
        assert np.mean(p <= a) <= a + 3 * np.sqrt(a * (1 - a) / draws)
    assert np.mean(p <= 0.1) >= 0.1 - 3 * np.sqrt(0.09 / draws)  # not trivially conservative either
    # A suspect more extreme on the combined statistic than every reference reaches the floor 1 / (n + 1):
    # no multiplicity paid, whereas the Cauchy combination of the tests' own conformal p-values stays
    # above it when the tests disagree; here the suspect is first on one test, and a reference tops the other.
    s = np.array([[5.0, 5.0], [0.0, 6.0], [1.0, 1.0], [2.0, 2.0], [3.0, 0.0]])
    per_test = [(1 + np.sum(s[1:, t] >= s[0, t])) / 5 for t in range(2)]
    assert verify_lib.pooled_conformal(s)[1] == pytest.approx(1 / 5)
    assert cauchy_combination(per_test) > 1 / 5


def test_pooled_conformal_one_blind_test_does_not_veto():
    """A suspect first on two tests and last on two others (a student: its function is its teacher's,
    its weights are not): with the two-sided transform the last places (mid-ranks near 1, terms near minus
    infinity) cancel the first places and references win the pool; one-sided, the suspect stays at the
    floor 1 / (n + 1)."""
    rng = np.random.default_rng(1)
    n1 = 60
    s = rng.normal(size=(n1, 4))
    s[0, :2] = 10.0  # most related on two tests
    s[0, 2:] = -10.0  # least related on the other two
    assert verify_lib.pooled_conformal(s)[1] == pytest.approx(1 / n1)
    # The two-sided statistic, written out: the same suspect is not at the floor.
    rank = (s[None] >= s[:, None]).sum(1)
    c = np.tan((0.5 - (rank - 0.5) / n1) * np.pi).mean(1)
    assert np.sum(c >= c[0]) / n1 > 0.25


# --------------------------------------------------------------------------- verify / identify end to end


@pytest.mark.slow
def test_verify_and_identify_on_a_model_the_library_has_never_seen(user_models, tmp_path):
    x, y, a, b, a_ft = user_models
    like = Models.from_linen(UserMLP(), [a], ids=["A"])
    refs = references.train(like, x, y, n=19, epochs=3, lr=1e-2, batch_size=64, workdir=tmp_path, chunk=10)
    assert len(refs) == 19 and refs.signature == like.signature
    again = references.train(like, x, y, n=19, epochs=3, lr=1e-2, batch_size=64, workdir=tmp_path, chunk=10)
    np.testing.assert_array_equal(jax.tree.leaves(again.params)[0], jax.tree.leaves(refs.params)[0])  # from cache
    sus = Models.from_linen(UserMLP(), [a_ft, b], ids=["A'", "B"])
    v = jl.verify(like, sus, data=x[:128], references=refs, key=jax.random.key(1), num_permutations=199)
    derived, indep = v.pair("A", "A'"), v.pair("A", "B")
    assert derived.derived and derived.pvalue <= 0.05
    assert next(e for e in derived.evidence if e.test == "weight-perm").pvalue == pytest.approx(1 / 200)
    assert indep.derived is False and indep.pvalue > 0.05
    assert "DERIVED" in str(v) and v.to_json()["pairs"][0]["source"] == "A"
    ident = jl.identify(sus, Models.from_linen(UserMLP(), [b, a], ids=["B", "A"]), data=x[:128], references=refs)
    assert ident.parents[0] == "A"
    # An architecture with no shared signature and no references of its own: "cannot tell".
    linear = Models.from_apply(lambda p, x: x @ p["w"], [{"w": jnp.ones((16, 3))}], ids=["L"])
    v2 = jl.verify(like, linear, data=x[:16], references=None, num_permutations=9)
    assert v2.pairs[0].derived is None and any("cannot tell" in w for w in v2.warnings)


def test_verify_reports_bad_input_plainly(user_models):
    x, _, a, b, _ = user_models
    src = Models.from_linen(UserMLP(), [a], ids=["A"])
    nan = jax.tree.map(lambda w: w.at[..., 0].set(jnp.nan) if w.ndim == 2 else w, b)
    with pytest.raises(VerifyError, match="model 'B'.*non-finite.*params/fc1/kernel"):
        jl.verify(src, Models.from_linen(UserMLP(), [nan], ids=["B"]), data=x[:16])
    with pytest.raises(VerifyError, match="alpha must be in"):
        jl.verify(src, src, data=x[:16], alpha=1.5)
    with pytest.raises(VerifyError, match="suspects: expected Models"):
        jl.verify(src, "B", data=x[:16])
    with pytest.raises(VerifyError, match=r"data of shape \(16, 8\) does not fit source 'A' \(UserMLP\)"):
        jl.verify(src, src, data=x[:16, :8])
    with pytest.raises(VerifyError, match=r"data of shape \(16,\) does not fit source 'A'"):
        jl.verify(src, src, data=x[0])  # one input, not a batch
    bare = Models.from_linen(UserMLP(), [a["params"]], ids=["bare"])  # the 'params' subtree, not init's tree
    with pytest.raises(VerifyError, match=r"does not fit suspect 'bare'.*the whole tree \{'params'"):
        jl.verify(src, bare, data=x[:16])


def test_scenario_verify_needs_no_identify_labels():
    x = jnp.ones((4, 16))
    m = Models.from_linen(UserMLP(), [UserMLP().init(jax.random.key(s), x) for s in range(3)])
    s = Scenario.from_models(
        "mine", m.take([0]), m.take([1, 2]), related=[[True, False]], kinds=["finetune", "negative"], probe=x
    )
    assert s.question.value == "verify" and s.labels.tolist() == [0, jl.NO_PARENT]
    ident = Scenario.from_models("mine", m.take([0, 1]), m.take([2]), labels=[1], probe=x)
    assert ident.question.value == "identify" and ident.related.tolist() == [[False], [True]]


def test_provenance_columns_come_from_the_scenario_kinds():
    """Attack kinds outside the library's vocabulary get their own column, not silently dropped."""
    from jaxlineage.eval import provenance

    x = jnp.ones((4, 16))
    m = Models.from_linen(UserMLP(), [UserMLP().init(jax.random.key(s), x) for s in range(4)])
    s = Scenario.from_models(
        "mine",
        m.take([0]),
        m.take([1, 2, 3]),
        related=[[True, True, False]],
        kinds=["my_distillation", "finetune_all", "independent"],
        probe=x,
    )
    masks = provenance.attack_masks(s)
    assert set(masks) == {"finetune_all", "my_distillation"}
    pos, neg = masks["my_distillation"]
    assert pos.tolist() == [[True, False, False]] and neg.tolist() == [[False, False, True]]


def test_identify_breaks_ties_at_the_p_value_floor_by_the_statistics(user_models):
    """Parent and grandparent are both rejected at p = 1 / (T + 1); the nearer one (the parent) is named."""
    x, y, a, _, a_ft = user_models
    x3, y3 = _task(3)
    grandchild = _train(a_ft, x3, y3, 10, lr=1e-3)
    cands = Models.from_linen(UserMLP(), [a, a_ft], ids=["grandparent", "parent"])
    q = Models.from_linen(UserMLP(), [grandchild], ids=["grandchild"])
    ident = jl.identify(q, cands, data=x[:64], num_permutations=49, tests=[])
    assert np.allclose(ident.pvalues[:, 0], 1 / 50)  # both at the floor
    assert ident.parents == ["parent"]


class TinyLM(nn.Module):
    """A causal transformer language model defined here (not in jaxlineage.nets): tokens [N, T] -> [N, T, V]."""

    vocab: int = 32
    dim: int = 16

    @nn.compact
    def __call__(self, tokens):
        h = nn.Embed(self.vocab, self.dim, name="embed")(tokens)
        mask = nn.make_causal_mask(tokens)
        h = h + nn.MultiHeadDotProductAttention(num_heads=2, name="attn")(nn.LayerNorm(name="ln1")(h), mask=mask)
        h = h + nn.Dense(self.dim, name="mlp_out")(nn.gelu(nn.Dense(32, name="mlp_in")(nn.LayerNorm(name="ln2")(h))))
        return nn.Dense(self.vocab, name="head")(nn.LayerNorm(name="ln_f")(h))


@pytest.mark.slow
def test_verify_answers_on_a_language_model_defined_in_the_test():
    tokens = jax.random.randint(jax.random.key(0), (32, 12), 0, 32)
    init = lambda s: TinyLM().init(jax.random.key(s), tokens[:1])
    src = init(1)
    copy = jax.tree.map(lambda w, n: w + 0.02 * n, src, init(99))  # a lightly perturbed copy (e.g. a fine-tune)
    lm = lambda trees, ids: Models.from_linen(TinyLM(), trees, ids=ids, taps=("attn",), example=tokens[:2])
    refs = lm([init(100 + i) for i in range(39)], [f"ref{i}" for i in range(39)])
    v = jl.verify(lm([src], ["base"]), lm([copy, init(2)], ["copy", "other"]), data=tokens, references=refs)
    assert v.pair("base", "copy").derived is True
    assert v.pair("base", "other").derived is False
    weight = next(e for e in v.pair("base", "copy").evidence if e.test == "weight-perm")
    assert not weight.applies and "spec" in weight.note  # attention is no Dense chain: said, not guessed
    kl = next(e for e in v.pair("base", "copy").evidence if e.test == "output-kl")
    assert kl.pvalue == pytest.approx(1 / 40)


# --------------------------------------------------------------------------- strata of references


def _cheap_tests():
    return [
        verify_lib.ReferenceTest("output-kl", scorers.OutputKL(), "function"),
        verify_lib.ReferenceTest("output-agreement", scorers.OutputAgreement(), "labels"),
    ]


@pytest.mark.slow  # about 6 s: three verify runs
def test_strata_give_each_test_and_the_pool_its_largest_stratum_pvalue(user_models):
    """With strata, every reference p-value is the largest of the same test run against each stratum alone."""
    x, _, a, b, a_ft = user_models
    init = lambda s: UserMLP().init(jax.random.key(s), x[:1])
    m = lambda trees, ids: Models.from_linen(UserMLP(), trees, ids=ids)
    # Two strata unlike each other: untrained models, and noisy copies of the unrelated trained model B.
    fresh = m([init(200 + i) for i in range(9)], [f"fresh{i}" for i in range(9)])
    noisy = m(
        [jax.tree.map(lambda w, n: w + 0.3 * n, b, init(300 + i)) for i in range(9)], [f"nb{i}" for i in range(9)]
    )
    src, sus = m([a], ["A"]), m([a_ft, b], ["A'", "B"])
    run = lambda refs: jl.verify(src, sus, data=x[:64], references=refs, tests=_cheap_tests(), num_permutations=19)
    both, alone = run({"fresh": fresh, "noisy": noisy}), [run(fresh), run(noisy)]
    differ = 0
    for pair in (("A", "A'"), ("A", "B")):
        for test in ("references", "output-kl", "output-agreement"):
            ps = [next(e.pvalue for e in v.pair(*pair).evidence if e.test == test) for v in alone]
            ev = next(e for e in both.pair(*pair).evidence if e.test == test)
            assert ev.pvalue == pytest.approx(max(ps)), (pair, test, ps)
            assert "strata: fresh p=" in ev.note and "at least one stratum (fresh, noisy)" in ev.null
            differ += ps[0] != ps[1]
    assert differ > 0  # the strata disagree somewhere, so taking the largest is not a no-op here
    with pytest.raises(VerifyError, match="'fresh0' is in strata 'x' and 'y'"):
        jl.verify(src, sus, data=x[:16], references={"x": fresh, "y": fresh}, tests=_cheap_tests())
    with pytest.raises(VerifyError, match="empty mapping"):
        jl.verify(src, sus, data=x[:16], references={}, tests=_cheap_tests())


class ShuffledNamesMLP(nn.Module):
    """Layer names whose sorted order is not the network's, and two hidden layers of one square shape."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(32, name="enc")(x))
        h = nn.relu(nn.Dense(32, name="zeta")(h))
        h = nn.relu(nn.Dense(32, name="alpha")(h))
        return nn.Dense(3, name="head")(h)


def _order(spec) -> tuple[str, ...]:
    """The layer order a chain spec encodes: its entries, then the module whose inputs the last one feeds."""
    return (*spec, list(spec.values())[-1][1][-1].path[1])


def test_inferred_specs_follow_the_shapes_and_the_function_picks_the_order(user_models):
    x = jax.random.normal(jax.random.key(0), (16, 16))
    v = ShuffledNamesMLP().init(jax.random.key(1), x)
    shapes = {n: v["params"][n]["kernel"].shape for n in v["params"]}
    # Brute force: every order of the layers in which each kernel reads the last one's outputs.
    want = [o for o in itertools.permutations(shapes) if all(shapes[a][1] == shapes[b][0] for a, b in zip(o, o[1:]))]
    specs = perm_lib.infer_specs(v)
    assert sorted(_order(s) for s in specs) == sorted(want) and len(want) == 2
    keeps = []
    for spec in specs:
        try:
            perm_lib.check_spec(ShuffledNamesMLP().apply, v, spec, x, key=jax.random.key(2))
            keeps.append(_order(spec))
        except perm_lib.PermutationError:
            pass
    assert keeps == [("enc", "zeta", "alpha", "head")]
    # verify tries the orders and runs the exact test with the one that keeps the function.
    m = lambda trees, ids: Models.from_linen(ShuffledNamesMLP(), trees, ids=ids)
    ft = jax.tree.map(lambda w: w + 1e-3, v)
    verdict = jl.verify(m([v], ["A"]), m([ft], ["A'"]), data=x, num_permutations=19)
    weight = verdict.pairs[0].evidence[0]
    assert weight.test == "weight-perm" and weight.pvalue == pytest.approx(1 / 20) and not weight.note
    assert weight.floor == pytest.approx(1 / 20)


def test_population_spec_picks_the_order_that_keeps_the_function_on_the_probe():
    """Outside verify (MatchedScorer, PermutationTestScorer) the layer order is chosen on the probe too; with two
    orders and no probe it is an error, not the first order."""
    x = jax.random.normal(jax.random.key(0), (16, 16))
    v = ShuffledNamesMLP().init(jax.random.key(1), x)
    pop = Models.from_linen(ShuffledNamesMLP(), [v, jax.tree.map(lambda w: -w, v)], ids=["a", "b"])
    assert _order(pvalues.population_spec(pop, np.asarray(x))) == ("enc", "zeta", "alpha", "head")
    with pytest.raises(pvalues.PValueError, match="2 layer orders; give probe="):
        pvalues.population_spec(pop)
    s = pvalues.MatchedScorer().score(ModelSet((pop,)), ModelSet((pop,)), probe=np.asarray(x))
    assert np.allclose(np.diag(s), 1.0)


@pytest.mark.slow  # ~9 s: the fast tier's 3-minute budget
def test_verify_warns_when_a_test_cannot_decide_alone_after_the_combination(user_models):
    """With n references the pooled test's floor is 1 / (n + 1); Bonferroni over the two tests doubles it, so
    a derivation only the references see (a student, a permuted copy) needs 2 / (n + 1) <= alpha: n >= 39
    at alpha = 0.05. The verdict says so, and identify says it for Holm's first threshold alpha / K."""
    x, _, a, b, a_ft = user_models
    init = lambda s: UserMLP().init(jax.random.key(s), x[:1])
    m = lambda trees, ids: Models.from_linen(UserMLP(), trees, ids=ids)
    src, sus = m([a], ["A"]), m([a_ft, b], ["A'", "B"])
    pool = [init(500 + i) for i in range(39)]  # untrained references: only their number matters here
    for n in (19, 38, 39):
        refs = m(pool[:n], [f"r{i}" for i in range(n)])
        v = jl.verify(src, sus, data=x[:32], references=refs, tests=_cheap_tests(), num_permutations=999)
        pooled = next(e for e in v.pairs[0].evidence if e.test == "references")
        assert pooled.floor == pytest.approx(1 / (n + 1))
        warned = [w for w in v.warnings if w.startswith("references:") and "cannot decide alone" in w]
        assert bool(warned) == (2 / (n + 1) > 0.05), (n, v.warnings)
        assert all("at least 39 references" in w for w in warned)
    # The weight test at T = 19: floor 1 / 20, doubled to 0.1.
    v = jl.verify(src, sus, data=x[:32], references=refs, tests=_cheap_tests(), num_permutations=19)
    assert any(w.startswith("weight-perm:") and "num_permutations >= 39" in w for w in v.warnings)
    # identify over 2 candidates: Holm's first threshold is 0.025, which 39 references (2 / 40 = 0.05) miss.
    ident = jl.identify(sus, m([a, b], ["A", "B"]), data=x[:32], references=refs, tests=_cheap_tests())
    assert any("alpha / 2 candidates = 0.025" in w and "at least 79 references" in w for w in ident.warnings)
    assert "note: references:" in str(ident)


def test_identify_says_cannot_tell_where_no_test_applies(user_models):
    x, _, a, b, _ = user_models
    # A linear query against MLP candidates, no references: no test reads the pairs.
    linear = Models.from_apply(lambda p, x: x @ p["w"], [{"w": jnp.ones((16, 3))}], ids=["L"])
    ident = jl.identify(linear, Models.from_linen(UserMLP(), [a, b], ids=["A", "B"]), data=x[:8])
    assert ident.parents == [None] and "L: CANNOT TELL" in str(ident) and "NO PARENT" not in str(ident)


# --------------------------------------------------------------------------- references standing in for the source


@pytest.fixture(scope="module")
def exchangeable_pool():
    """Twelve models trained alike (the sources' recipe) and an unrelated model with flattened outputs."""
    x, y = _task(0)
    init = lambda s: UserMLP().init(jax.random.key(s), x[:1])
    trees = [_train(init(500 + i), x, y, 150) for i in range(12)]
    other = _train(init(600), x, y, 150)
    soft = jax.tree_util.tree_map_with_path(
        lambda p, w: w * 0.05 if "out" in jax.tree_util.keystr(p) else w, other
    )  # an unrelated model that was itself post-processed (not like any reference)
    return x, trees, soft


def test_source_side_references_match_their_definition_and_leave_the_source_out(exchangeable_pool):
    """references_like="source": p = (1 + #{j : s(R_j, B) >= s(A, B)}) / (n + 1), with the source left out of
    its own null when the references include it; over a pool of exchangeable sources the p-values are the
    ranks 1/n, ..., n/n, whatever the suspect is."""
    x, trees, soft = exchangeable_pool
    ids = [f"P{i}" for i in range(len(trees))]
    pool = Models.from_linen(UserMLP(), trees, ids=ids)
    sus = Models.from_linen(UserMLP(), [soft], ids=["T"])
    v = jl.verify(
        pool, sus, data=x[:64], references=pool, references_like="source", tests=_cheap_tests(), num_permutations=19
    )
    kl = scorers.OutputKL().score(ModelSet((pool,)), ModelSet((sus,)), probe=x[:64])[:, 0]
    n = len(trees)
    for k, sid in enumerate(ids):
        ev = next(e for e in v.pair(sid, "T").evidence if e.test == "output-kl")
        others = np.delete(kl, k)
        assert ev.pvalue == pytest.approx((1 + np.sum(others >= kl[k])) / n)
        assert "the source is exchangeable" in ev.null
    # Exchangeable sources: each source's p-value is its rank among the n, so they are 1/n, ..., n/n; the
    # pooled test's one-sided statistic ties the less related half (all at p = 1), so it is at least that.
    ranks = np.arange(1, n + 1) / n
    np.testing.assert_allclose(np.sort(v.test_pvalues("output-kl")[:, 0]), ranks)
    assert np.all(np.sort(v.test_pvalues("references")[:, 0]) >= ranks - 1e-12)
    with pytest.raises(VerifyError, match="references_like must be"):
        jl.verify(pool, sus, data=x[:16], references=pool, references_like="target", tests=_cheap_tests())


def test_pooled_combination_is_the_pooled_test_with_the_weight_column(exchangeable_pool, user_models):
    """combine="pooled": the weight statistic joins the pool (weight-cosine) and the verdict's p-value is the
    pooled test's, with no multiplicity; with no references the exact weight test decides alone."""
    x, trees, soft = exchangeable_pool
    pool = Models.from_linen(UserMLP(), trees, ids=[f"P{i}" for i in range(len(trees))])
    sus = Models.from_linen(UserMLP(), [soft, trees[0]], ids=["T", "copy"])
    kw = dict(data=x[:64], tests=_cheap_tests(), num_permutations=19, references_like="source")
    v = jl.verify(pool.take([0, 1]), sus, references=pool, combine="pooled", **kw)
    for pair in v.pairs:
        tests = {e.test: e for e in pair.evidence}
        assert "weight-cosine" in tests and tests["weight-cosine"].part_of == "references"
        assert pair.pvalue == tests["references"].pvalue
    assert v.pair("P0", "copy").pvalue == pytest.approx(1 / len(trees))  # a copy tops every column: the floor
    bonf = jl.verify(pool.take([0, 1]), sus, references=pool, **kw)
    assert "weight-cosine" not in {e.test for e in bonf.pairs[0].evidence}
    x2, _, a, b, a_ft = user_models
    src, sus2 = Models.from_linen(UserMLP(), [a], ids=["A"]), Models.from_linen(UserMLP(), [a_ft, b], ids=["A'", "B"])
    alone = jl.verify(src, sus2, data=x2[:64], combine="pooled", num_permutations=19)
    np.testing.assert_array_equal(alone.pvalues, alone.test_pvalues("weight-perm"))
    with pytest.raises(VerifyError, match="combine must be"):
        jl.verify(src, sus2, data=x2[:16], combine="fisher")
