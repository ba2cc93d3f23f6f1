"""What is particular to each method's scorer (jaxlineage.eval.methods).

The contract battery (shape, known answer, determinism, no recompilation, bad
input) that every scorer goes through, these included, is tests/test_eval.py's
``SCORERS``. Here: toy MLP populations in Flax's layout (pure jnp) where each
query is its parent perturbed a little, for what only one method has (the
detector's logits and open set, Model DNA's options, ModelGiF's references).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlineage import detector, mgmp
from jaxlineage.eval import NO_PARENT, ModelSet, Population, Question, Scenario, ScorerError, methods

IN, H1, H2, C = 8, 16, 12, 4
K, TRAIN_PER_PARENT, TEST_PER_PARENT = 3, 4, 2
NOISE = 0.05  # children = parent + NOISE x (the layer's init scale) x N(0, 1)


# ----------------------------------------------------------------- toy populations (pure jnp)


def _mlp(params, x, *, tap=None):
    p = params["params"]
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["dense1"]["kernel"] + p["dense1"]["bias"][None])
    if tap == "relu1":
        return h
    h = jax.nn.relu(h @ p["dense2"]["kernel"] + p["dense2"]["bias"][None])
    if tap == "relu2":
        return h
    return h @ p["head"]["kernel"] + p["head"]["bias"][None]


# One function object per tap: jitted scorers key their caches on them.
LOGITS = functools.partial(_mlp, tap=None)
FEATURES = {
    "relu1": functools.partial(_mlp, tap="relu1"),
    "relu2": functools.partial(_mlp, tap="relu2"),
    "logits": LOGITS,
}


def _init(seed, n, d_in=IN):
    # Toy data from a seeded NumPy generator: jax.random here would compile a few RNG programs (seconds each on CPU).
    rng = np.random.default_rng(seed)
    shapes = {"dense1": (d_in, H1), "dense2": (H1, H2), "head": (H2, C)}
    return {
        "params": {
            name: {
                "kernel": jnp.asarray(rng.normal(size=(n, *s)) / np.sqrt(s[0]), jnp.float32),
                "bias": jnp.zeros((n, s[1]), jnp.float32),
            }
            for name, s in shapes.items()
        }
    }


def _population(prefix, params, *, feature_fns=FEATURES):
    n = jax.tree.leaves(params)[0].shape[0]
    return Population(
        ids=tuple(f"{prefix}{i}" for i in range(n)),
        params=params,
        logits_fn=LOGITS,
        feature_fns=feature_fns,
        arch="toy_mlp",
    )


def _children(parents, per_parent, seed):
    rng = np.random.default_rng(seed)

    def perturb(a):
        a = np.repeat(np.asarray(a), per_parent, axis=0)
        return jnp.asarray(a + NOISE * (a.std() + 1e-3) * rng.normal(size=a.shape), jnp.float32)

    return jax.tree.map(perturb, parents)


@pytest.fixture(scope="module")
def toy():
    parents = _init(0, K)
    cands = ModelSet((_population("p", parents),))
    train_q = _population("tr", _children(parents, TRAIN_PER_PARENT, 1))
    test_q = _population("te", _children(parents, TEST_PER_PARENT, 2))
    unrelated = _population("u", _init(3, 3))
    probe = np.random.default_rng(4).normal(size=(64, IN)).astype(np.float32)

    def scenario(name, queries, labels):
        labels = np.asarray(labels)
        related = np.arange(K)[:, None] == labels[None, :]
        return Scenario(
            name=name,
            question=Question.IDENTIFY,
            candidates=cands,
            queries=ModelSet((queries,)),
            labels=labels,
            related=related,
            kinds=["child"] * len(labels),
            split_keys=list(queries.ids),
            probe=probe,
        )

    train = scenario("toy/train", train_q, np.repeat(np.arange(K), TRAIN_PER_PARENT))
    test = scenario("toy/test", test_q, np.repeat(np.arange(K), TEST_PER_PARENT))
    return dict(train=train, test=test, unrelated=unrelated, probe=probe)


# ----------------------------------------------------------------- the scorers under test

DNA_CONFIG = mgmp.Config(generator_features=(16,), dna_dim=8, classifier_width=16, batch_size=16, num_steps=150)

SCORERS = {
    "detector": lambda: methods.DetectorScorer(
        n_probe=16, module=detector.LineageDetector(embed_dim=8, difference_init=True), epochs=12, batch_size=4
    ),
    "model_dna": lambda: methods.ModelDNAScorer(config=DNA_CONFIG),
    "modelgif": lambda: methods.ModelGiFScorer(n_refs=16, steps=4, chunk_size=None),
}


@pytest.mark.slow
def test_detector_columns_follow_the_model_set_and_taps_are_checked(toy):
    """Several query populations give one column each; a query without the tap is named."""
    scorer = SCORERS["detector"]().fit(toy["train"], key=jax.random.key(1))
    test = toy["test"]
    s = scorer.score(test.candidates, test.queries, probe=test.probe)
    both = ModelSet((test.queries.populations[0], toy["unrelated"]))
    assert scorer.score(test.candidates, both, probe=test.probe).shape == (K, len(test.queries) + 3)
    np.testing.assert_array_equal(np.argmax(s, axis=0), test.labels)
    tapless = _population("tapless", test.queries.populations[0].params, feature_fns={})
    with pytest.raises(ScorerError, match="'tapless0'"):
        scorer.score(test.candidates, ModelSet((tapless,)), probe=toy["probe"])


# ----------------------------------------------------------------- per scorer


def test_unfitted_learned_scorers_say_so(toy):
    test = toy["test"]
    for make in (SCORERS["detector"], SCORERS["model_dna"]):
        with pytest.raises(ScorerError, match="not fitted"):
            make().score(test.candidates, test.queries, probe=test.probe)


@pytest.mark.slow
def test_detector_scores_are_its_logits_on_examples_from_arrays(toy):
    """The scorer only reads populations: the same logits come from the pure entry point."""
    scorer = SCORERS["detector"]().fit(toy["train"], key=jax.random.key(1))
    test = toy["test"]
    cand, quer = test.candidates.populations[0], test.queries.populations[0]
    kernel = lambda pop: detector.kernel_matrices(pop.params["params"]["dense1"]["kernel"])  # AUTO: smallest kernel
    feats = lambda pop: np.asarray(jax.vmap(FEATURES["relu1"], in_axes=(0, None))(pop.params, test.probe[:16]))
    ex = detector.examples_from_arrays(
        labels=test.labels,
        parent_weights=kernel(cand),
        child_weights=kernel(quer),
        parent_features=feats(cand),
        child_features=feats(quer),
    )
    want = detector.predict_logits(scorer.detector, ex).T
    np.testing.assert_allclose(
        scorer.score(test.candidates, test.queries, probe=test.probe), want, rtol=1e-4, atol=1e-5
    )
    assert scorer.settings["weight_layer"] == "auto" and scorer.name == "lineage_detector"


@pytest.mark.slow  # another detector shape: one more compilation (~15 s on 2 shared cores)
def test_detector_open_set_gets_the_no_parent_logit(toy):
    train = toy["train"]
    labels = train.labels.copy()
    labels[train.labels == 2] = NO_PARENT  # parent 2's children: "no parent" ...
    related = train.related.copy()
    related[2] = False
    open_train = Scenario(
        name="toy/open",
        question=Question.IDENTIFY,
        candidates=train.candidates.take([0, 1]),
        queries=train.queries,
        labels=labels,
        related=related[:2],
        kinds=train.kinds,
        split_keys=train.split_keys,
        probe=train.probe,
    )
    scorer = methods.DetectorScorer(
        n_probe=8, module=detector.LineageDetector(embed_dim=4), epochs=1, batch_size=4
    ).fit(open_train, key=jax.random.key(0))
    assert scorer.detector.module.no_parent
    logits = scorer.logits(open_train.candidates, toy["test"].queries, probe=toy["probe"])
    assert logits.shape == (len(toy["test"].queries), 3)  # 2 candidates + "no parent"
    scores = scorer.score(open_train.candidates, toy["test"].queries, probe=toy["probe"])
    assert scores.shape == (2, 6)
    # decide is the detector's own argmax over the K + 1 logits (index K = "no parent").
    want = np.argmax(logits, axis=1)
    np.testing.assert_array_equal(scorer.decide(scores), np.where(want == 2, NO_PARENT, want))


def test_detector_decide_is_the_argmax_over_candidates_and_no_parent():
    """Open-set scores are candidate logits minus the "no parent" logit: "no parent" wins where none reaches 0."""
    det = detector.Detector(
        module=detector.LineageDetector(embed_dim=2, no_parent=True),
        variables={"params": {}},
    )
    scores = np.array([[0.3, -1.0, -0.05, np.nan], [0.2, 0.4, -0.1, -5.0]])  # [K=2, M=4]
    got = methods.DetectorScorer(detector=det).decide(scores)
    np.testing.assert_array_equal(got, [0, 1, NO_PARENT, NO_PARENT])  # NaN (unreadable) never wins
    closed = dataclasses.replace(det, module=detector.LineageDetector(embed_dim=2))
    assert methods.DetectorScorer(detector=closed).decide(scores) is None


def test_detector_fit_splits_validation_by_split_key(toy):
    keys = ["g0"] * 4 + ["g1"] * 4 + ["g2"] * 4
    tr, va = methods._group_split(keys, 0.125, jax.random.key(0), "t")
    held = {keys[i] for i in va}
    assert len(held) == 1 and not held & {keys[i] for i in tr} and len(tr) + len(va) == 12
    with pytest.raises(ScorerError, match="2 groups"):
        methods._group_split(["a"] * 5, 0.2, jax.random.key(0), "t")


@pytest.mark.slow  # over 13 s on 2 loaded cores: the fast tier stays under 3 min
def test_model_dna_options_and_settings(toy):
    cfg = mgmp.Config(
        generator=mgmp.Generator.NONE,
        pair_input=mgmp.PairInput.RELATION,
        classifier_width=16,
        batch_size=16,
        num_steps=100,
    )
    scorer = methods.ModelDNAScorer(config=cfg, tap="relu2").fit(toy["train"], key=jax.random.key(0))
    assert scorer.name == "model_dna_no_generator@relu2"
    assert scorer.settings["fragment_tap"] == "relu2" and scorer.settings["config"]["pair_input"] == "relation"
    assert set(scorer.states) == set(toy["train"].candidates.ids)
    s = scorer.score(toy["test"].candidates, toy["test"].queries, probe=toy["probe"])
    assert s.shape == (K, 6) and ((s >= 0) & (s <= 1)).all()
    # A fraction of fragments: the model-level decision is s >= delta.
    np.testing.assert_array_equal(np.argmax(s, axis=0), toy["test"].labels)


@pytest.mark.slow  # over 13 s on 2 loaded cores: the fast tier stays under 3 min
def test_model_dna_candidate_without_training_targets(toy):
    train = toy["train"]
    related = train.related.copy()
    related[1] = False  # candidate p1 has no homologous training query
    scn = Scenario(
        name="t",
        question=Question.VERIFY,
        candidates=train.candidates,
        queries=train.queries,
        labels=train.labels,
        related=related,
        kinds=train.kinds,
        split_keys=train.split_keys,
        probe=train.probe,
    )
    scorer = methods.ModelDNAScorer(config=DNA_CONFIG).fit(scn, key=jax.random.key(0))  # compiled already
    assert set(scorer.states) == {"p0", "p2"}
    with pytest.raises(ScorerError, match="'p1' has no trained provenance classifier"):
        scorer.score(train.candidates, toy["test"].queries, probe=toy["probe"])


def test_modelgif_references_depend_on_the_key_only(toy):
    a = methods.ModelGiFScorer(n_refs=8, steps=3, key=jax.random.key(0))
    b = methods.ModelGiFScorer(n_refs=8, steps=3, key=jax.random.key(1))
    ia, ib = a.references(toy["probe"])[2], b.references(toy["probe"])[2]
    assert not np.array_equal(ia, ib)
    np.testing.assert_array_equal(a.references(toy["probe"])[2], ia)
    test = toy["test"]
    per_ref = a.per_reference(test.candidates.populations[0], test.queries.populations[0], probe=test.probe)
    assert per_ref.shape == (K, 6, 8)
    np.testing.assert_allclose(a.score(test.candidates, test.queries, probe=test.probe), -per_ref.mean(-1))
    backbone = methods.ModelGiFScorer(field="relu1", n_refs=8, steps=3)
    assert backbone.name == "modelgif@relu1" and backbone.settings["target"] == "feature_sum"
    s = backbone.score(test.candidates, test.queries, probe=test.probe)
    np.testing.assert_array_equal(np.argmax(s, axis=0), test.labels)
    with pytest.raises(ScorerError, match="n_refs=65 exceeds the 64 probe inputs"):
        methods.ModelGiFScorer(n_refs=65).score(test.candidates, test.queries, probe=test.probe)


def test_reference_sweep_uses_prefix_means():
    rng = np.random.default_rng(0)
    per_ref = rng.uniform(size=(2, 5, 6))
    pos = np.zeros((2, 5), bool)
    pos[0, :2] = pos[1, 2:4] = True
    neg = ~pos
    pts = methods.reference_sweep(per_ref, pos, neg, n_refs=(1, 6))
    for p, r in zip(pts, (1, 6)):
        d = per_ref[..., :r].mean(-1)
        want = np.mean([(a < b) + 0.5 * (a == b) for a in d[pos] for b in d[neg]])
        assert p.n_refs == r and p.auc == pytest.approx(want) and p.num_pos == 4 and p.num_neg == 6
        assert p.mean_pos == pytest.approx(d[pos].mean())
