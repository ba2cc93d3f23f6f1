"""The evaluation layer: one contract battery for every scorer, the protocols, and the quick table's equality.

Every scorer of :mod:`jaxlineage.eval.registry` goes through the contract battery,
made by its registered factory at the toy settings of :data:`TOY_CASES` (a scorer
registered without toy settings fails a test that names it); a learned scorer (the
Lineage Detector, Model DNA) is ``fit`` on a training scenario of other children of the same parents
(:func:`toy_training`) and then scores the toy's held-out children.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlineage import detector, lineage, zoo
from jaxlineage import eval as jl_eval
from jaxlineage.eval import core, protocols, registry, scenarios, scorers
from jaxlineage.eval.core import (
    NO_PARENT,
    ModelSet,
    Population,
    Question,
    Result,
    Scenario,
    Scorer,
    ScorerError,
)
from jaxlineage.permutations import PermAxis

DIN, HIDDEN, CLASSES, N = 6, 16, 4, 64


# --------------------------------------------------------------------------- toy populations


def _init(key, hidden=HIDDEN, classes=CLASSES):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "dense1": {
            "kernel": jax.random.normal(k1, (DIN, hidden)) / np.sqrt(DIN),
            "bias": 0.1 * jax.random.normal(k2, (hidden,)),
        },
        "head": {"kernel": jax.random.normal(k3, (hidden, classes)) / np.sqrt(hidden)},
    }


def toy_features(params, x):
    return jnp.tanh(x @ params["dense1"]["kernel"] + params["dense1"]["bias"][None, :])


def toy_logits(params, x):
    return toy_features(params, x) @ params["head"]["kernel"]


def _stack(trees):
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def _pop(prefix, trees, arch="toy"):
    return Population(
        ids=tuple(f"{prefix}{i}" for i in range(len(trees))),
        params=_stack(trees),
        logits_fn=toy_logits,
        feature_fns={"h": toy_features},
        arch=arch,
    )


def toy_scenario(*, k=3, m=6, drift=0.05, seed=0, question=Question.IDENTIFY, independents=0) -> Scenario:
    """K random parents; query j = parent j % K plus small noise (head included); optional independents."""
    keys = jax.random.split(jax.random.key(seed), k + m + independents + 1)
    parents = [_init(keys[i]) for i in range(k)]
    children = [jax.tree.map(lambda p, e: p + drift * e, parents[j % k], _init(keys[k + j])) for j in range(m)]
    inds = [_init(keys[k + m + i]) for i in range(independents)]
    labels = np.r_[np.arange(m) % k, np.full(independents, NO_PARENT)]
    related = labels[None, :] == np.arange(k)[:, None]
    queries = ModelSet((_pop("c", children + inds),))
    kinds = ["child"] * m + ["negative"] * independents
    return Scenario(
        name="toy",
        question=question,
        candidates=ModelSet((_pop("p", parents),)),
        queries=queries,
        labels=labels,
        related=related,
        kinds=tuple(kinds),
        split_keys=queries.ids,
        probe=np.asarray(jax.random.normal(keys[-1], (N, DIN))),
    )


def toy_training(s: Scenario, *, per_parent=4, drift=0.05, seed=7) -> Scenario:
    """``per_parent`` other children of each of ``s``'s candidates (fresh noise): a learned scorer's training set."""
    cand = s.candidates.populations[0]
    k = len(cand)
    rng = np.random.default_rng(seed)  # NumPy noise: no RNG programs to compile

    def perturb(a):
        a = np.repeat(np.asarray(a), per_parent, axis=0)
        return jnp.asarray(a + drift * (a.std() + 1e-3) * rng.normal(size=a.shape), jnp.float32)

    params = jax.tree.map(perturb, cand.params)
    labels = np.repeat(np.arange(k), per_parent)
    queries = ModelSet((dataclasses.replace(cand, ids=tuple(f"t{i}" for i in range(len(labels))), params=params),))
    return Scenario(
        name="toy/train",
        question=s.question,
        candidates=s.candidates,
        queries=queries,
        labels=labels,
        related=labels[None, :] == np.arange(k)[:, None],
        kinds=("child",) * len(labels),
        split_keys=queries.ids,
        probe=s.probe,
    )


class _CompileCounter:
    """Counts XLA backend compilations while active, and executables loaded from JAX's persistent compilation
    cache (the suite keeps one, tests/conftest.py): a recompilation served from disk is still a recompilation."""

    COMPILE = "/jax/core/compile/backend_compile_duration"
    CACHE_HIT = "/jax/compilation_cache/cache_hits"

    def __enter__(self):
        self.count = 0

        def on_duration(name, *args, **kwargs):
            if name == self.COMPILE:
                self.count += 1

        def on_event(name, *args, **kwargs):
            if name == self.CACHE_HIT:
                self.count += 1

        self._listeners = on_duration, on_event
        jax.monitoring.register_event_duration_secs_listener(on_duration)
        jax.monitoring.register_event_listener(on_event)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listeners[0])
        jax.monitoring.unregister_event_listener(self._listeners[1])


def toy_spec(params) -> dict:
    """The toy's hidden-unit permutation (jaxlineage.permutations' spec format): dense1's units."""
    axes = (PermAxis(("dense1", "kernel"), 1), PermAxis(("dense1", "bias"), 0), PermAxis(("head", "kernel"), 0))
    return {"dense1": (params["dense1"]["kernel"].shape[1], axes)}


def _toy_data(n=512):
    """Labelled toy inputs (the defender's data of the fingerprint scorers): labels of a fixed linear task."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(n, DIN)).astype(np.float32)
    return x, (x @ rng.normal(size=(DIN, CLASSES))).argmax(-1)


# --------------------------------------------------------------------------- the contract battery


@dataclasses.dataclass(frozen=True)
class Case:
    """A registered scorer at toy settings, made through its registry entry's factory.

    Attributes:
      name: the registry name (:mod:`jaxlineage.eval.registry`).
      kwargs: the factory's keyword arguments on the toy (a dict, or ``() -> dict`` for data made lazily).
      which: the index of the scorer to test when the factory makes several.
      reads_any_tree: the scorer compares only outputs, so models of other parameter trees are
        fine as long as their outputs have one size (no mismatch error expected).
      reads_any_arch: the scorer compares models of any architecture sharing the input space
        (ModelGiF's logits field): no "unreadable" error expected.
    """

    name: str
    kwargs: dict | Callable[[], dict] = dataclasses.field(default_factory=dict)
    which: int = 0
    reads_any_tree: bool = False
    reads_any_arch: bool = False

    def make(self) -> core.Scorer:
        kwargs = self.kwargs() if callable(self.kwargs) else self.kwargs
        return registry.get(self.name).make(**kwargs)[self.which]

    def __str__(self):
        return f"{self.name}:{self.make().name}"


#: Each registered scorer's toy settings (the toy's tap ``h``, labelled toy data, the tiniest settings that
#: still tell the toy's parents apart). The battery runs every registered scorer through these cases; one
#: registered without a case fails test_every_registered_scorer_is_in_the_battery.
TOY_CASES: dict[str, list[Case]] = {
    "learning_free": [
        Case("learning_free", dict(metrics="l2", modes="linearized", tap="h")),
        Case("learning_free", dict(metrics="cka", modes="first_order", tap="h", alphas=(0.01, 0.1))),
        Case("learning_free", dict(metrics="linf", modes="plain", tap="h")),
    ],
    "baselines": [
        Case("baselines", which=0),
        Case("baselines", which=1),
        Case("baselines", which=2, reads_any_tree=True),
        Case("baselines", which=3, reads_any_tree=True),
    ],
    "modelgif": [
        Case("modelgif", dict(n_refs=16, steps=4, chunk_size=None), reads_any_tree=True, reads_any_arch=True),
        Case(
            "modelgif", dict(field="h", n_refs=16, steps=4, chunk_size=None), reads_any_tree=True, reads_any_arch=True
        ),
    ],
    "detector": [
        Case(
            "detector",
            lambda: dict(
                n_probe=16, module=detector.LineageDetector(embed_dim=8, difference_init=True), epochs=6, batch_size=4
            ),
        )
    ],
    # Model DNA with the generator (the factory's first scorer; the second drops the generator).
    "mgmp": [
        Case(
            "mgmp",
            dict(config=dict(generator_features=(16,), dna_dim=8, classifier_width=16, batch_size=16, num_steps=150)),
            reads_any_tree=True,
        )
    ],
    "permutation_test": [Case("permutation_test", dict(num_permutations=19, spec_fn=lambda arch, v: toy_spec(v)))],
    "matched_weights": [Case("matched_weights", dict(spec_fn=lambda arch, v: toy_spec(v)))],
    # The extraction-aware fingerprints (eval/scorers/fingerprints.py): output-space scorers on labelled toy data.
    "sac": [
        Case("sac", lambda: dict(mode="w", data=_toy_data(), n_samples=32), reads_any_tree=True),
        Case("sac", dict(mode="m", n_samples=32), reads_any_tree=True),
    ],
    "conferrable": [
        Case(
            "conferrable",
            lambda: dict(
                data=_toy_data(),
                n_fingerprints=16,
                n_seeds=64,
                n_surrogates=3,
                n_references=3,
                train_steps=100,
                batch_size=32,
                lr=1e-2,
                eps=0.5,
                step_size=0.05,
                steps=20,
                bounds=None,
            ),
            reads_any_tree=True,
        )
    ],
    "ipguard": [Case("ipguard", dict(n_fingerprints=32, steps=50, lr=0.05, bounds=None), reads_any_tree=True)],
}

#: The battery: every registered scorer's toy cases, in registration order.
SCORERS: list[Case] = [case for e in registry.registered() for case in TOY_CASES.get(e.name, [])]


def test_every_registered_scorer_is_in_the_battery():
    """Registering a scorer puts it in the battery: its toy settings must be in TOY_CASES."""
    missing = [e.name for e in registry.registered() if e.name not in TOY_CASES]
    assert not missing, f"registered scorers without a toy case in tests/test_eval.py TOY_CASES: {missing}"
    assert set(TOY_CASES) <= set(registry.names()), "a toy case names no registered scorer"
    for name, cases in TOY_CASES.items():
        assert all(c.name == name for c in cases)


def _ready(case: Case, train: Scenario):
    s = case.make()
    if s.learned:
        s = s.fit(train, key=jax.random.key(0))
    return s


@pytest.fixture(scope="module")
def toy():
    return toy_scenario()


@pytest.fixture(scope="module")
def toy_train(toy):
    return toy_training(toy)


@pytest.mark.parametrize("case", SCORERS, ids=str)
def test_contract_shape_and_known_answer(case, toy, toy_train):
    s = _ready(case, toy_train)
    scores = s.score(toy.candidates, toy.queries, probe=toy.probe)
    assert scores.shape == (3, 6) and np.all(np.isfinite(scores))
    np.testing.assert_array_equal(np.argmax(scores, axis=0), toy.labels)  # children = parent + small noise


@pytest.mark.parametrize("case", SCORERS, ids=str)
def test_contract_deterministic_and_no_recompile(case, toy, toy_train):
    first = _ready(case, toy_train).score(toy.candidates, toy.queries, probe=toy.probe)
    s = _ready(case, toy_train)
    with _CompileCounter() as c:
        second = s.score(toy.candidates, toy.queries, probe=toy.probe)
    np.testing.assert_array_equal(first, second)
    assert c.count == 0, f"{s.name} recompiled {c.count} time(s) on a second call with the same shapes"


@pytest.mark.parametrize("case", SCORERS, ids=str)
def test_contract_bad_input_names_the_model(case, toy, toy_train):
    s = _ready(case, toy_train)
    cand, probe = toy.candidates, toy.probe
    with pytest.raises(ScorerError, match="empty candidate set"):
        s.score(ModelSet(()), toy.queries, probe=probe)
    # NaN parameters: the message names the model and the path.
    bad = toy.queries.populations[0]
    nan_params = jax.tree.map(lambda a: a.at[2].set(jnp.nan) if a.ndim == 3 else a, bad.params)
    with pytest.raises(ScorerError, match=r"'c2'.*NaN"):
        s.score(cand, ModelSet((dataclasses.replace(bad, params=nan_params),)), probe=probe)
    # Another architecture (and output size): unreadable; "raise" names the query, "nan" leaves a hole.
    keys = jax.random.split(jax.random.key(9), 2)
    other = _pop("x", [_init(k, hidden=8, classes=CLASSES + 1) for k in keys], arch="other")
    mixed = s.score(cand, ModelSet((toy.queries.populations[0], other)), probe=probe, unreadable="nan")
    if case.reads_any_arch:
        assert np.all(np.isfinite(mixed))
    else:
        with pytest.raises(ScorerError, match="'x0'"):
            s.score(cand, ModelSet((other,)), probe=probe)
        assert np.all(np.isfinite(mixed[:, :6])) and np.all(np.isnan(mixed[:, 6:]))
    # Same architecture name, mismatched trees (another hidden width).
    wide = _pop("w", [_init(k, hidden=HIDDEN + 4) for k in keys])
    if case.reads_any_tree:
        assert np.all(np.isfinite(s.score(cand, ModelSet((wide,)), probe=probe)))
    else:
        with pytest.raises(ScorerError, match=r"'w0'|'p0'"):
            s.score(cand, ModelSet((wide,)), probe=probe)


# --------------------------------------------------------------------------- protocols


def test_folds_group_split_keys_and_match_the_former_split():
    key = jax.random.key(3)
    ids = [f"q{i}" for i in range(11)]
    got = protocols.folds(ids, 4, key=key)
    want = np.array_split(np.asarray(jax.random.permutation(key, 11)), 4)  # lineage.fold_table's split
    assert [f.tolist() for f in got] == [f.tolist() for f in want]
    seeds = [f"s{i % 5}" for i in range(20)]
    got = protocols.folds(seeds, 5, key=key)
    assert sorted(np.concatenate(got).tolist()) == list(range(20))
    for f in got:
        assert len({seeds[i] for i in f}) == 1 and len(f) == 4
    with pytest.raises(ScorerError, match="num_folds = 6 split keys"):
        protocols.folds(seeds, 6, key=key)


def test_identify_protocol_on_toy():
    s = toy_scenario(m=10)
    rs = jl_eval.run_all(
        s, scorers.learning_free(("l2", "linf"), tap="h") + scorers.baselines(), key=jax.random.key(1), num_folds=5
    )
    assert [r.scorer for r in rs] == [
        "l2 plain",
        "l2 first_order",
        "l2 linearized",
        "linf plain",
        "linf linearized",
        "weight L2",
        "weight cosine",
        "output agreement",
        "output KL",
    ]
    for r in rs:
        acc = r.metrics["accuracy"]
        assert acc["n"] == 5 and acc["mean"] == pytest.approx(np.mean(acc["values"]))
        assert acc["std"] == pytest.approx(np.std(acc["values"], ddof=1))
        assert ("alphas" in r.details) == (r.details["kind"] == "grid" and "plain" not in r.scorer)
        assert r.to_json() == Result.from_json(r.to_json()).to_json()
    assert rs[0].metrics["accuracy"]["mean"] == 1.0
    text = jl_eval.table(rs)
    assert "| l2 plain | 100.0 ± 0.0 |" in text and "| weight L2 |" in text


def test_grid_selection_uses_training_folds_only():
    """The grid protocol picks alpha from training columns: equal to LearningFree.fit on the training scenario."""
    s = toy_scenario(m=10, drift=0.3, seed=2)
    lf = scorers.LearningFree("l1", "first_order", tap="h", alphas=(0.01, 0.3, 3.0))
    key = jax.random.key(4)
    r = protocols.run(s, lf, key=key, num_folds=5)
    for f, test in enumerate(protocols.folds(s.split_keys, 5, key=key)):
        train = np.setdiff1d(np.arange(10), test)
        assert r.details["alphas"][f] == lf.fit(s.take_queries(train), key=key).alpha


def test_verify_protocol_per_kind():
    s = toy_scenario(m=8, independents=4, question=Question.VERIFY)
    (r,) = jl_eval.run_all(s, [scorers.WeightL2()], key=jax.random.key(0), num_folds=4)
    assert set(r.metrics) == {"auc", "tpr@1%fpr", "tpr@5%fpr"}
    assert r.metrics["auc"]["mean"] == 1.0 and set(r.by_kind) == {"child"}

    # A scorer that ranks everything equal: AUC 0.5 (ties count half), no TPR at a small FPR.
    class Flat(core.Scorer):
        name = "flat"

        def score_block(self, candidates, queries, *, probe):
            return np.zeros((len(candidates), len(queries)))

    (r,) = jl_eval.run_all(s, [Flat()], key=jax.random.key(0), num_folds=4)
    assert r.metrics["auc"]["mean"] == 0.5 and r.metrics["tpr@1%fpr"]["mean"] == 0.0


def test_learned_scorer_is_fitted_on_training_queries_only_and_open_set_hook():
    s = toy_scenario(m=9, independents=3)
    seen = []

    class Memo(core.Scorer):
        """Remembers the queries it was fitted on; says NO_PARENT when the best score is low."""

        name, learned = "memo", True

        def fit(self, train, *, key):
            seen.append((set(train.queries.ids), np.asarray(jax.random.key_data(key)).tolist()))
            return self

        def score_block(self, candidates, queries, *, probe):
            return scorers.WeightL2().score_block(candidates, queries, probe=probe)

        def decide(self, scores):
            return np.where(scores.max(0) > -0.2, scores.argmax(0), NO_PARENT)

    key = jax.random.key(5)
    r = protocols.run(s, Memo(), key=key, num_folds=3)
    for (train_ids, _), test in zip(seen, protocols.folds(s.split_keys, 3, key=key)):
        assert not train_ids & {s.queries.ids[i] for i in test}
    assert len({str(k) for _, k in seen}) == 3  # a fresh key per fold
    assert r.metrics["accuracy"]["mean"] == 1.0
    assert {"open_set_accuracy", "known_accuracy", "no_parent_accuracy"} <= set(r.metrics)
    assert r.metrics["no_parent_accuracy"]["mean"] == 1.0


def test_unreadable_scorer_reports_n_a_and_recover_is_a_slot():
    s = toy_scenario(m=6)
    keys = jax.random.split(jax.random.key(9), 2)
    other = _pop("x", [_init(k, hidden=8) for k in keys], arch="other")
    mixed = dataclasses.replace(
        s, candidates=ModelSet((*s.candidates.populations, other)), related=np.r_[s.related, np.zeros((2, 6), bool)]
    )
    r_w, r_o = jl_eval.run_all(
        mixed, [scorers.WeightL2(), scorers.OutputAgreement()], key=jax.random.key(0), num_folds=3
    )
    assert not r_w.metrics and "cannot read" in r_w.details["n/a"] and "'x0'" in r_w.details["n/a"]
    assert r_o.metrics["accuracy"]["n"] == 3
    assert "n/a" in jl_eval.table([r_w, r_o])
    with pytest.raises(NotImplementedError, match="RECOVER"):
        jl_eval.run(dataclasses.replace(s, question=Question.RECOVER), scorers.WeightL2(), key=jax.random.key(0))


# --------------------------------------------------------------------------- on the tiny zoo

#: ``lineage.fold_table(*lineage.zoo_scores(tiny_zoo, probe_size=64), num_folds=2, key=jax.random.key(7))``
#: computed by the code before the evaluation layer (commit 441757a): (fold accuracies, chosen alphas).
TINY_REFERENCE = {
    "dcor plain": ([0.5, 1.0], []),
    "dcor first_order": ([0.5, 1.0], [0.001, 0.1]),
    "dcor linearized": ([0.5, 1.0], [0.001, 0.1]),
    "l2 first_order": ([1.0, 1.0], [0.001, 0.001]),
    "linf linearized": ([1.0, 1.0], [0.001, 0.001]),
}
#: ... and its scores ``[A, K, M]`` (first 7 digits).
TINY_SCORES = {
    "l2 plain": [[-0.4366494, -0.1012105, -1.2412053, -0.8664962], [-1.1154889, -0.7818475, -0.5434384, -0.1433307]],
    "l2 linearized": [
        [[-0.4359263, -0.1010238, -1.2397468, -0.8653039], [-1.1135426, -0.7802383, -0.542516, -0.1430707]],
        [[-0.4294533, -0.0993519, -1.2267079, -0.8546488], [-1.0961549, -0.7658614, -0.5342618, -0.1407426]],
        [[-0.3681236, -0.0834919, -1.1050332, -0.7556806], [-0.9351919, -0.6326241, -0.4564269, -0.1187108]],
    ],
    "dcor first_order": [
        [[0.9118399, 0.9881992, 0.8936526, 0.9680242], [0.8985258, 0.9689707, 0.8911203, 0.9830585]],
        [[0.9120544, 0.9882624, 0.8938208, 0.9681734], [0.8989684, 0.9692072, 0.8920161, 0.9833021]],
        [[0.9141991, 0.9888942, 0.8955019, 0.9696659], [0.9033947, 0.9715721, 0.9009735, 0.9857376]],
    ],
}


@pytest.fixture(scope="module")
def tiny_identify(tiny_zoo):
    return scenarios.identify(tiny_zoo, probe_size=64)


@pytest.mark.slow  # builds the tiny zoo (~25 s) unless another test module did
def test_tiny_zoo_table_equals_the_former_fold_table(tiny_zoo, tiny_identify):
    s = tiny_identify
    assert s.candidates.ids == tuple(r.id for r in tiny_zoo.parents)
    assert s.queries.ids == tuple(r.id for r in tiny_zoo.children)
    np.testing.assert_array_equal(s.labels, [0, 0, 1, 1])
    rs = jl_eval.run_all(s, scorers.learning_free(), key=jax.random.key(7), num_folds=2, keep_scores=True)
    by_name = {r.scorer: r for r in rs}
    assert len(rs) == 23
    for name, (accs, alphas) in TINY_REFERENCE.items():
        assert by_name[name].metrics["accuracy"]["values"] == accs, name
        assert by_name[name].details.get("alphas", []) == alphas, name
    for name, ref in TINY_SCORES.items():
        got = by_name[name].details["scores"]
        np.testing.assert_allclose(got if np.ndim(ref) == 3 else got[0], ref, rtol=2e-6, atol=1e-7)
    # The kernel on backbone stacks (the former zoo_scores) gives the same numbers as full parameters, to float32
    # rounding: the scoring kernel's chunks (sized from the parameters it is given) group the float32 sums
    # differently (measured: 1e-7 relative). The figures above stay exactly equal.
    net = tiny_zoo.network
    old = lineage.score_matrices(
        ("l2", "dcor"),
        net.feature_fn("relu1"),
        tiny_zoo.stack(s.candidates.ids, backbone=True),
        tiny_zoo.stack(s.queries.ids, backbone=True),
        tiny_zoo.probe(64, task="B"),
        alpha=np.asarray(scorers.DEFAULT_ALPHAS),
    )
    for (metric, mode), v in old.items():
        np.testing.assert_allclose(
            by_name[f"{metric} {mode.value}"].details["scores"], np.asarray(v, np.float64), rtol=1e-6, atol=0
        )


@pytest.mark.slow
def test_tiny_zoo_baselines_verify_and_lineage_wrapper(tiny_zoo, tiny_identify):
    rs = jl_eval.run_all(tiny_identify, scorers.baselines(), key=jax.random.key(0), num_folds=2)
    assert rs[0].scorer == "weight L2" and rs[0].metrics["accuracy"]["mean"] == 1.0
    v = scenarios.verify(tiny_zoo, probe_size=64)
    by_role = scenarios.verify(tiny_zoo, queries=(zoo.Role.CHILD, zoo.Role.INDEPENDENT), probe_size=64)
    assert by_role.queries.ids == v.queries.ids
    assert v.kinds.count(scenarios.NEGATIVE) == len(tiny_zoo.independents)
    assert v.related.sum() == len(tiny_zoo.children)
    (r,) = jl_eval.run_all(v, [scorers.WeightL2()], key=jax.random.key(0), num_folds=2)
    assert r.metrics["auc"]["mean"] == 1.0 and "finetune_transfer" in r.by_kind
    (r2,) = jl_eval.run_zoo(tiny_zoo, [scorers.WeightL2()], question="verify", num_folds=2, probe_size=64)
    assert r2.metrics == r.metrics
    open_set = scenarios.identify(tiny_zoo, queries=("child", "independent"), open_set=True, probe_size=64)
    assert (open_set.labels == NO_PARENT).sum() == len(tiny_zoo.independents)
    with pytest.raises(ScorerError, match="split_by='nope'"):
        scenarios.identify(tiny_zoo, split_by="nope")


def test_grid_cache_scores_only_new_pairs_and_changes_nothing():
    s = toy_scenario(m=6, independents=3, question=Question.VERIFY)
    sub = s.take_queries(np.arange(6))  # the children only
    rows = scorers.learning_free(("l2",), tap="h")
    cache = protocols.GridCache()
    first = jl_eval.run_all(sub, rows, key=jax.random.key(0), num_folds=3, cache=cache, keep_scores=True)
    assert cache.hits == 0
    with_cache = jl_eval.run_all(s, rows, key=jax.random.key(0), num_folds=3, cache=cache, keep_scores=True)
    assert cache.hits == 6  # the children's grids were reused; only the 3 independents were scored
    fresh = jl_eval.run_all(s, rows, key=jax.random.key(0), num_folds=3, keep_scores=True)
    for a, b, c in zip(with_cache, fresh, first):
        np.testing.assert_allclose(a.details["scores"], b.details["scores"], rtol=1e-6)
        np.testing.assert_array_equal(a.details["scores"][..., :6], c.details["scores"])
        assert a.metrics.keys() == b.metrics.keys()


def test_provenance_cells_leave_unreadable_pairs_out_and_say_n_a():
    """A cell is an AUC over readable pairs only; no readable positive -> None (n/a), never a number."""
    from jaxlineage.eval import provenance

    pos = np.array([[True, False, False, False]])
    neg = np.array([[False, True, True, False]])
    masks = {"a": (pos, neg), "b": (pos, neg)}
    scores = np.array([[1.0, 0.0, np.nan, 5.0]])  # the NaN negative is left out; column 3 is in no mask
    got = provenance.cells(scores, masks)
    assert got["a"]["auc"] == 1.0 and got["a"]["n_pos"] == 1 and got["a"]["n_neg"] == 1
    assert provenance.cells(np.array([[np.nan, 0.0, 1.0, 0.0]]), masks) == {"a": None, "b": None}
    info = {"kind": "prune", "hparams": {"sparsity": 0.6}}
    assert provenance.attack_of(info) == "prune_60" and provenance.attack_of({"kind": "permute"}) == "permute"


class _SpyLearned(Scorer):
    """A learned scorer that records what it was fitted on; scores = a fixed per-pair table."""

    learned = True
    name = "spy"

    def __init__(self, table, log):
        self.table, self.log = table, log

    def fit(self, train, *, key):
        del key
        self.log.append(set(train.queries.ids))
        return self

    def score_block(self, candidates, queries, *, probe):
        del probe
        return np.array([[self.table[c, q] for q in queries.ids] for c in candidates.ids])


def test_provenance_learned_cells_fit_on_one_attack_fold_and_score_the_other():
    """Every cell of a learned scorer comes from a fit that saw none of the cell's queries."""
    from jaxlineage.eval import provenance

    kinds = ["finetune_all", "finetune_head", "permute", "finetune_all", "finetune_head", "permute", "independent"]
    src = [0, 0, 0, None, None, None, None]  # the first three derive from source 0; the rest are negatives
    keys = jax.random.split(jax.random.key(0), len(kinds) + 1)
    ids = [f"q{i}" for i in range(len(kinds))]
    queries = ModelSet(
        (
            dataclasses.replace(
                _pop("q", [_init(k) for k in keys[:-1]]), info={i: {"kind": k} for i, k in zip(ids, kinds)}
            ),
        )
    )
    related = np.array([[s == 0 for s in src]])
    scen = Scenario(
        name="toy-provenance",
        question=Question.VERIFY,
        candidates=ModelSet((_pop("s", [_init(keys[-1])]),)),
        queries=queries,
        labels=np.full(len(kinds), NO_PARENT),
        related=related,
        kinds=tuple(kinds),
        split_keys=tuple(ids),
        probe=np.zeros((N, DIN)),
    )
    rng = np.random.default_rng(0)
    table = {("s0", q): float(r) + 0.1 * rng.normal() for q, r in zip(ids, related[0])}
    log = []
    got, folds = provenance.learned_cells(scen, _SpyLearned(table, log), key=jax.random.key(0))
    fold_of = {a: f for f, group in enumerate(provenance.ATTACK_FOLDS) for a in group}
    assert len(log) == 2 and "q6" not in log[0] | log[1]  # the independent is never fitted on
    for f, seen in enumerate(log):
        assert seen == {q for q, k in zip(ids, kinds) if fold_of.get(k) == f}
        assert folds[f]["n_fit"] == len(seen) and set(folds[f]["fit_ids"]) == seen
    assert set(got) == {"finetune_all", "finetune_head", "permute"}
    for c in got.values():
        assert c["auc"] == 1.0 and c["n_pos"] == 1 and c["n_neg"] == 2  # its own negative + the independent
    # Conformal p-values of unrelated pairs against unrelated pairs of other queries.
    null_scores = {"spy": np.array([[table["s0", q] for q in ids]]), "none": np.full((1, len(ids)), np.nan)}
    cal = provenance.null_calibration(scen, null_scores, key=jax.random.key(1))
    assert sum(cal["n_queries"]) == 4 and set(cal["rows"]) == {"spy"}  # 4 unrelated queries; NaN rows left out
    assert [r["alpha"] for r in cal["rows"]["spy"]] == [0.01, 0.05, 0.1]
    assert cal["rows"]["spy"][0]["n"] == 2 and cal["rows"]["spy"][0]["n_calibration"] == 2
    assert np.all((cal["pvalues"]["spy"] > 0) & (cal["pvalues"]["spy"] <= 1))


@pytest.mark.slow  # builds the tiny zoo (about 12 s) where no other fast test on that worker does
def test_loading_many_zoo_models_logs_progress_with_an_eta(tiny_zoo, monkeypatch, caplog):
    # Loading 10^4 checkpoints takes minutes: from_zoo logs periodic progress lines (here, every model).
    from jaxlineage import models as models_lib  # noqa: PLC0415

    monkeypatch.setattr(models_lib, "_PROGRESS_EVERY_S", 0.0)
    ids = [m.id for m in tiny_zoo.models()][:3]
    with caplog.at_level("INFO", logger="jaxlineage.models"):
        scenarios.model_set(tiny_zoo, ids)
    lines = [r.getMessage() for r in caplog.records if r.name == "jaxlineage.models"]
    assert [line.split(",")[0] for line in lines] == [f"from_zoo: loaded {n}/3 models" for n in (1, 2, 3)]
    assert all("ETA" in line for line in lines) and lines[-1].endswith("ETA 0s")
