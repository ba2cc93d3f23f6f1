"""Model DNA's own protocol (jaxlineage.eval.dna): the split, the figures, the paired comparison.

The split is checked on a stand-in zoo whose records are DNA_QUICK's planned models
(ids, tasks, parents and hyper-parameters from the spec's groups; no training), so
it follows the spec. The scorer runs on toy pure-jnp MLPs (no Flax, a few steps).
"""

from __future__ import annotations

import dataclasses
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlineage import mgmp
from jaxlineage.eval import NO_PARENT, ModelSet, Population, Question, Scenario, ScorerError, dna, methods
from jaxlineage.zoo import DNA_QUICK

# ----------------------------------------------------------------- a stand-in of a built DNA_QUICK


class _Zoo:
    """DNA_QUICK's models as records (id, group, task, parent_id, hparams), without training."""

    def __init__(self, spec=DNA_QUICK):
        self.groups = spec.groups
        self._groups, self._by_id = {}, {}
        for g in spec.groups:
            recs = []
            parents = self._groups[g.source] if g.source else [None]
            for parent in parents:
                for hp in g.points():
                    hp = dict(hp, init_seed=hp["seed"])
                    rid = (f"{parent.id}__" if parent else "") + f"{g.prefix}{g.task}-s{hp['seed']}"
                    recs.append(
                        types.SimpleNamespace(
                            id=rid, group=g.name, task=g.task, hparams=hp, parent_id=parent.id if parent else None
                        )
                    )
            self._groups[g.name] = recs
            self._by_id.update({r.id: r for r in recs})

    def group(self, name):
        return self._groups[name]

    def get(self, i):
        return self._by_id[i]


@pytest.fixture(scope="module")
def zoo():
    return _Zoo()


def _sides(z, rep):
    pool = [z.get(i) for i in rep.pool]
    ev = [z.get(i) for i in rep.eval]
    return pool, ev


@pytest.mark.parametrize("seed", [0, 1])
def test_strict_split_shares_no_task_and_no_seed(zoo, seed):
    reps = dna.plan(zoo, key=jax.random.key(seed), repetitions=8)
    assert len(reps) == 8
    assert {r.source for r in reps} == {r.id for r in zoo.group("source")}
    assert len({(r.source, r.pool) for r in reps}) == 8  # every (source, seed half) once
    for rep in reps:
        pool, ev = _sides(zoo, rep)
        assert {r.task for r in pool}.isdisjoint({r.task for r in ev})
        assert {r.group.split(".")[0] for r in pool} == {"pool"} and {r.group.split(".")[0] for r in ev} == {"eval"}
        for field in ("seed", "init_seed"):
            assert {r.hparams[field] for r in pool}.isdisjoint({r.hparams[field] for r in ev}), (rep, field)
        for recs, hom in ((pool, rep.pool_homologous), (ev, rep.eval_homologous)):
            assert any(hom) and not all(hom)
            for r, h in zip(recs, hom):
                assert h == (r.parent_id == rep.source)
                assert (".hom." in r.group) == h
                if ".hom." in r.group:
                    assert r.parent_id == rep.source  # never another source's child
        # The recorded seed halves are the seeds of the models.
        assert {r.hparams["seed"] for r, h in zip(pool, rep.pool_homologous) if h} == set(rep.pool_seeds["homologous"])
        assert {r.hparams["seed"] for r, h in zip(ev, rep.eval_homologous) if not h} == set(
            rep.eval_seeds["non_homologous"]
        )


def test_lenient_split_shares_seeds_not_tasks(zoo):
    for rep in dna.plan(zoo, key=jax.random.key(0), repetitions=4, split=dna.Split.LENIENT):
        pool, ev = _sides(zoo, rep)
        assert {r.task for r in pool}.isdisjoint({r.task for r in ev})
        assert {r.hparams["seed"] for r in pool} == {r.hparams["seed"] for r in ev}


def test_plan_is_deterministic_under_a_key(zoo):
    a = dna.plan(zoo, key=jax.random.key(3), repetitions=6)
    assert a == dna.plan(zoo, key=jax.random.key(3), repetitions=6)
    others = [dna.plan(zoo, key=jax.random.key(k), repetitions=6) for k in range(4, 8)]
    assert any(o != a for o in others)


def test_plan_errors_name_the_problem(zoo):
    with pytest.raises(ScorerError, match="repetitions"):
        dna.plan(zoo, key=jax.random.key(0), repetitions=0)
    z = _Zoo()
    z.groups = tuple(g for g in z.groups if not g.name.startswith("eval.non"))
    with pytest.raises(ScorerError, match="eval.non"):
        dna.plan(z, key=jax.random.key(0))


# ----------------------------------------------------------------- figures and the paired comparison


def test_figures_against_a_hand_computed_toy():
    f = [1.0, 0.8, 0.95, 0.0, 0.3, 0.92]
    h = [True, True, True, False, False, False]
    out = dna.figures(f, h, delta=0.9)
    a_o = (1.0 + 0.8 + 0.95) / 3  # 0.91666
    a_n = (1.0 + 0.7 + 0.08) / 3  # 0.59333
    assert out["a_o"] == pytest.approx(a_o)
    assert out["a_n"] == pytest.approx(a_n)
    assert out["fragment_accuracy"] == pytest.approx((a_o + a_n) / 2)
    # delta 0.9: homologous 1.0 and 0.95 accepted, 0.8 not; non-homologous 0.0, 0.3 rejected, 0.92 not.
    assert out["num_right"] == 4 and out["num_targets"] == 6
    assert out["homologous_accepted"] == pytest.approx(2 / 3)
    assert out["non_homologous_rejected"] == pytest.approx(2 / 3)
    # AUC: pairs (pos > neg): 1.0 > all 3; 0.8 > 0.0, 0.3; 0.95 > all 3 -> 8 / 9.
    assert out["model_auc"] == pytest.approx(8 / 9)
    with pytest.raises(ScorerError):
        dna.figures([0.1, 0.2], [True, True])


def test_paired_against_a_direct_computation():
    scipy_stats = pytest.importorskip("scipy.stats")
    a = np.array([0.91, 0.85, 0.99, 0.70, 0.88, 0.93])
    b = np.array([0.90, 0.86, 0.95, 0.70, 0.80, 0.92])
    out = dna.paired(a, b)
    d = a - b
    assert out["differences"]["mean"] == pytest.approx(d.mean())
    assert out["differences"]["std"] == pytest.approx(d.std(ddof=1))
    assert (out["wins"], out["losses"], out["ties"]) == (4, 1, 1)
    assert out["sign_p"] == pytest.approx(scipy_stats.binomtest(4, 5, 0.5).pvalue)
    ref = scipy_stats.ttest_rel(a, b)
    assert out["t"] == pytest.approx(ref.statistic)
    assert out["t_p"] == pytest.approx(ref.pvalue, rel=1e-4)
    same = dna.paired([0.5, 0.5], [0.5, 0.5])
    assert same["sign_p"] == 1.0 and same["t"] is None


# ----------------------------------------------------------------- the scorer on a toy scenario


def _mlp(params, x, *, tap=None):
    p = params["params"]
    h = jax.nn.relu(x @ p["dense1"]["kernel"] + p["dense1"]["bias"][None])
    if tap == "relu1":
        return h
    return h @ p["head"]["kernel"] + p["head"]["bias"][None]


LOGITS = functools.partial(_mlp, tap=None)
FEATURES = {"relu1": functools.partial(_mlp, tap="relu1")}


def _init(seed, n, classes=4):
    rng = np.random.default_rng(seed)
    shapes = {"dense1": (8, 16), "head": (16, classes)}
    return {
        "params": {
            name: {
                "kernel": jnp.asarray(rng.normal(size=(n, *s)) / np.sqrt(s[0]), jnp.float32),
                "bias": jnp.zeros((n, s[1]), jnp.float32),
            }
            for name, s in shapes.items()
        }
    }


def _population(prefix, params):
    n = jax.tree.leaves(params)[0].shape[0]
    return Population(
        ids=tuple(f"{prefix}{i}" for i in range(n)),
        params=params,
        logits_fn=LOGITS,
        feature_fns=FEATURES,
        arch="toy_mlp",
    )


def _toy():
    src = _population("src", _init(0, 1))
    noise = lambda p, s: jax.tree.map(  # noqa: E731
        lambda a: a + 0.05 * np.random.default_rng(s).normal(size=a.shape).astype(np.float32), p
    )
    kids = jax.tree.map(lambda a: np.repeat(np.asarray(a), 6, axis=0), src.params)
    hom = _population("hom", noise(kids, 1))
    non = _population("non", _init(2, 6))
    pool = ModelSet((hom.take(range(3)), non.take(range(3))))
    ev = ModelSet((hom.take(range(3, 6)), non.take(range(3, 6))))
    related = np.array([[True] * 3 + [False] * 3])
    rng = np.random.default_rng(0)
    train = Scenario(
        name="toy",
        question=Question.VERIFY,
        candidates=ModelSet((src,)),
        queries=pool,
        labels=np.where(related[0], 0, NO_PARENT),
        related=related,
        kinds=("h",) * 3 + ("n",) * 3,
        split_keys=pool.ids,
        probe=rng.normal(size=(64, 8)).astype(np.float32),
    )
    return train, ev, rng.normal(size=(32, 8)).astype(np.float32)


#: One tiny configuration for every scorer test (a static argument of the jitted step: one compilation).
_CFG = mgmp.Config(num_steps=10, batch_size=16, generator_features=(16,), dna_dim=8, classifier_width=16)


@pytest.mark.slow  # over 13 s on 2 loaded cores: the fast tier stays under 3 min
def test_scorer_fit_and_score_are_deterministic_under_a_key():
    train, ev, probe = _toy()
    runs = [
        methods.ModelDNAScorer(config=_CFG).fit(train, key=jax.random.key(k)).score(train.candidates, ev, probe=probe)
        for k in (0, 0)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert runs[0].shape == (1, 6)


def test_logits_padding_keeps_values_and_widens():
    train, _, probe = _toy()
    padded = dna._padded(train.queries, 7)
    pop = padded.populations[0]
    y = pop.logits_fn(jax.tree.map(lambda a: a[0], pop.params), probe)
    assert y.shape == (32, 7)
    np.testing.assert_allclose(y[:, :4], LOGITS(jax.tree.map(lambda a: a[0], pop.params), probe))
    np.testing.assert_array_equal(y[:, 4:], 0)
    assert dna._pad_fn(LOGITS, 7) is dna._pad_fn(LOGITS, 7)  # one function object: jit caches stay warm


@pytest.mark.slow  # over 6 s on 2 loaded cores: the fast tier stays under 3 min
def test_scorer_on_a_generic_verify_scenario_with_mixed_heads():
    """Queries with another head (another logits width) stay out of the pool and score NaN when asked to."""
    train, ev, probe = _toy()
    other = _population("other", _init(5, 2, classes=3))
    queries = ModelSet(train.queries.populations + (other,))
    related = np.concatenate([train.related, [[False, False]]], axis=1)
    mixed = dataclasses.replace(
        train,
        queries=queries,
        related=related,
        labels=np.concatenate([train.labels, [NO_PARENT] * 2]),
        kinds=train.kinds + ("n", "n"),
        split_keys=queries.ids,
    )
    scorer = methods.ModelDNAScorer(config=_CFG).fit(mixed, key=jax.random.key(0))
    assert scorer.left_out == {"src0": ("other0", "other1")}
    s = scorer.score(train.candidates, ModelSet(ev.populations + (other,)), probe=probe, unreadable="nan")
    assert s.shape == (1, 8) and np.all(np.isfinite(s[0, :6])) and np.all(np.isnan(s[0, 6:]))
    with pytest.raises(ScorerError, match="other0"):
        scorer.score(train.candidates, ModelSet((other,)), probe=probe)


def test_public_names_resolve():
    for name in dna.__all__:
        assert hasattr(dna, name), f"jaxlineage.eval.dna.{name}"


def test_quick_settings_are_run_arguments():
    import inspect

    params = inspect.signature(dna.run).parameters
    settings = dna.quick_settings()
    assert set(settings) <= set(params) and all(params[k].kind is inspect.Parameter.KEYWORD_ONLY for k in settings)
    assert settings["split"] is dna.Split.STRICT and settings["repetitions"] >= 5
