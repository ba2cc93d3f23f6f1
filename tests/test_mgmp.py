"""Tests for jaxlineage.mgmp: the DNA equations, assembly, training, prediction, storage, bad input."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlineage import mgmp
from jaxlineage.models import Models

SHAPE = (4, 4, 1)  # Toy inputs; 16 pixels.
C = 3  # Toy model outputs.
N = 64  # Toy DNA inputs.

# Small and fast: shared by most tests so that they reuse compiled functions.
TOY = mgmp.Config(generator_features=(16,), dna_dim=8, classifier_width=16, batch_size=16, num_steps=150, dropout=0.1)


# ----------------------------------------------------------------- toy models (pure jnp)


def linear_apply(params, x):
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"][None]


def linear_params(key, m=None, c=C):
    shape = () if m is None else (m,)
    kw, kb = jax.random.split(key)
    d = int(np.prod(SHAPE))
    return {"w": jax.random.normal(kw, (*shape, d, c)) / math.sqrt(d), "b": 0.1 * jax.random.normal(kb, (*shape, c))}


def toy_problem(c=C):
    """A source, 3 homologous (source + small noise) and 3 non-homologous (fresh) linear models."""
    ks = jax.random.split(jax.random.key(0), 5)
    x = jax.random.uniform(ks[0], (N, *SHAPE))
    src = linear_params(ks[1], c=c)
    noise = linear_params(ks[2], 3, c=c)
    hom = jax.tree.map(lambda s, e: s[None] + 0.1 * e, src, noise)
    non = linear_params(ks[3], 3, c=c)
    pool = mgmp.Pool(
        Models.from_apply(linear_apply, hom, stacked=True, ids=("h0", "h1", "h2")),
        Models.from_apply(linear_apply, non, stacked=True, ids=("n0", "n1", "n2")),
    )
    return x, (linear_apply, src), pool


@pytest.fixture(scope="module")
def toy_trained():
    x, source, pool = toy_problem()
    state, history = mgmp.train(source, pool, x, TOY, key=jax.random.key(1))
    return x, source, pool, state, history


# ----------------------------------------------------------------- the equations

# Jitted once: op-by-op (eager) execution would compile every primitive separately.
dna_loss = jax.jit(mgmp.dna_similarity_loss, static_argnames="tau")


def cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def loop_losses(o_s, o_t, o_n, tau):
    """Eq. 5-7 of the paper, term by term."""
    b = len(o_s)
    l_s = 0.0
    for i in range(b):
        num = math.exp(cos(o_s[i], o_t[i]) / tau)
        den = sum(math.exp(cos(o_s[i], o_n[k]) / tau) for k in range(b))
        l_s -= math.log(num / den)
    l_i = 0.0
    for i in range(b):
        for k in range(b):
            if k != i:
                l_i -= math.log(
                    math.exp(cos(o_s[i], o_s[k]) / tau)
                    + math.exp(cos(o_t[i], o_t[k]) / tau)
                    + math.exp(cos(o_n[i], o_n[k]) / tau)
                )
    return l_s, l_i


@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_dna_similarity_loss_matches_loop(tau):
    rng = np.random.default_rng(0)
    o_s, o_t, o_n = (rng.normal(size=(5, 7)) for _ in range(3))
    want = loop_losses(o_s, o_t, o_n, tau)
    with jax.enable_x64(True):
        got = dna_loss(jnp.asarray(o_s), jnp.asarray(o_t), jnp.asarray(o_n), tau=tau)
        # Agreement to ~1e-9: the only difference is the 1e-8 under each norm's square root.
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-8)
    got32 = dna_loss(*(jnp.asarray(o, jnp.float32) for o in (o_s, o_t, o_n)), tau=tau)
    np.testing.assert_allclose(np.asarray(got32, np.float64), want, rtol=1e-4)


def test_dna_similarity_loss_invariants():
    rng = np.random.default_rng(1)
    o_s, o_t, o_n = (jnp.asarray(rng.normal(size=(6, 4)), jnp.float32) for _ in range(3))
    l_s, l_i = dna_loss(o_s, o_t, o_n, tau=0.5)
    # Cosine similarity: per-fragment positive rescaling changes nothing.
    scale = jnp.asarray(rng.uniform(0.5, 3.0, size=(6, 1)), jnp.float32)
    np.testing.assert_allclose(dna_loss(o_s * scale, o_t, o_n * scale, tau=0.5), (l_s, l_i), rtol=1e-5)
    # L_S falls when the homologous target copies the source; L_I is minimal when fragments collapse.
    l_s_copy, _ = dna_loss(o_s, o_s, o_n, tau=0.5)
    assert l_s_copy < l_s
    same = jnp.ones((6, 4))
    _, l_i_min = dna_loss(same, same, same, tau=0.5)
    np.testing.assert_allclose(l_i_min, -30 * math.log(3 * math.exp(2.0)), rtol=1e-6)
    assert l_i > l_i_min


def test_cosine_similarity_matrix():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(3, 5)), rng.normal(size=(4, 5))
    want = np.array([[cos(ai, bk) for bk in b] for ai in a])
    np.testing.assert_allclose(mgmp.cosine_similarity_matrix(jnp.asarray(a), jnp.asarray(b)), want, rtol=1e-5)
    assert np.isfinite(np.asarray(mgmp.cosine_similarity_matrix(jnp.zeros((2, 5)), jnp.asarray(b)))).all()


# ----------------------------------------------------------------- assembly and shapes


def test_assembly_shapes():
    z, y = jnp.ones((7, 5)), jnp.arange(35.0).reshape(7, 5)
    added = mgmp.assemble(z, y, mgmp.Assembly.ADD)
    assert added.shape == (7, 5)
    np.testing.assert_array_equal(added, y + 1)
    cat = mgmp.assemble(jnp.ones((7, 9)), y, mgmp.Assembly.CONCAT)
    assert cat.shape == (7, 14)
    np.testing.assert_array_equal(cat[:, 9:], y)
    assert mgmp.assemble(None, y, mgmp.Assembly.CONCAT) is y
    with pytest.raises(mgmp.MGMPError, match="'add'.*z \\(7, 9\\).*y \\(7, 5\\)"):
        mgmp.assemble(jnp.ones((7, 9)), y, "add")


@pytest.mark.parametrize(
    "generator,assembly,dna_dim,frag",
    [("mlp", "concat", 8, 8 + C), ("mlp", "add", C, C), ("cnn", "concat", 6, 6 + C), ("none", "concat", 8, C)],
)
def test_fragment_and_state_shapes(generator, assembly, dna_dim, frag):
    cfg = dataclasses.replace(
        TOY,
        generator=mgmp.Generator(generator),
        assembly=mgmp.Assembly(assembly),
        dna_dim=dna_dim,
        generator_features=(4,),
    )
    assert cfg.fragment_dim(C) == frag
    x = jax.ShapeDtypeStruct((N, *SHAPE), jnp.float32)
    # Shapes only (eval_shape traces without compiling).
    state = jax.eval_shape(
        functools.partial(mgmp.init, cfg, key=jax.random.key(0)), x, jax.ShapeDtypeStruct((N, C), jnp.float32)
    )
    z = jax.eval_shape(lambda p, x: mgmp._model._generate(cfg, p, x, train=False), state.params["generator"], x)
    assert (z is None) == (generator == "none")
    if z is not None:
        assert z.shape == (N, dna_dim)
    assert state.params["classifier"]["Dense_0"]["kernel"].shape == (2 * frag, TOY.classifier_width)
    probs = jax.eval_shape(mgmp._training._probabilities, state, jax.ShapeDtypeStruct((2, N, C), jnp.float32))
    assert probs.shape == (2, N)


@pytest.mark.parametrize("pair_input,width", [("concat", 2), ("relation", 2), ("both", 4)])
def test_pair_input(pair_input, width):
    a, b = jnp.asarray([[1.0, -2.0, 3.0]]), jnp.asarray([[0.5, 4.0, 3.0]])
    got = np.asarray(mgmp.pair_features(a, b, mgmp.PairInput(pair_input)))
    cat, rel = [[1, -2, 3, 0.5, 4, 3]], [[0.5, -8, 9, 0.5, 6, 0]]
    want = {"concat": cat, "relation": rel, "both": [cat[0] + rel[0]]}[pair_input]
    np.testing.assert_allclose(got, want)
    # RELATION is symmetric in source and target; CONCAT is not.
    swapped = np.asarray(mgmp.pair_features(b, a, mgmp.PairInput(pair_input)))
    assert np.array_equal(swapped, got) == (pair_input == "relation")
    cfg = dataclasses.replace(TOY, pair_input=pair_input)
    assert mgmp.Config.from_json(cfg.to_json()) == cfg
    frag = cfg.fragment_dim(C)
    state = jax.eval_shape(
        functools.partial(mgmp.init, cfg, key=jax.random.key(0)),
        jax.ShapeDtypeStruct((N, *SHAPE), jnp.float32),
        jax.ShapeDtypeStruct((N, C), jnp.float32),
    )
    assert state.params["classifier"]["Dense_0"]["kernel"].shape == (width * frag, TOY.classifier_width)
    probs = jax.eval_shape(mgmp._training._probabilities, state, jax.ShapeDtypeStruct((2, N, C), jnp.float32))
    assert probs.shape == (2, N)


# ----------------------------------------------------------------- training


@pytest.mark.slow  # over 6 s on 2 loaded cores: the fast tier stays under 3 min
def test_gradients_reach_generator_and_classifier():
    x, source, pool = toy_problem()
    state = mgmp.init(TOY, x, mgmp.model_outputs(source, x), key=jax.random.key(0))
    outs = mgmp.pool_outputs(pool, x)
    ys = state.source_outputs
    batch = (x[:16], ys[:16], outs.homologous[0, :16], outs.non_homologous[0, :16], jax.random.key(3))

    @jax.jit  # one compilation for both gradients
    def grad_fn(params):
        total = jax.grad(lambda p: mgmp._training._loss(p, TOY, *batch)[0])(params)
        bce = jax.grad(lambda p: mgmp._training._loss(p, TOY, *batch)[1]["bce"])(params)
        return total, bce

    grads, bce_grads = grad_fn(state.params)
    for part in ("generator", "classifier"):
        for path, g in jax.tree_util.tree_flatten_with_path(grads[part])[0]:
            g = np.asarray(g)
            assert np.isfinite(g).all(), (part, path)
            assert np.abs(g).max() > 0.0, f"no gradient at {part}{jax.tree_util.keystr(path)}"
    # The classifier's BCE alone reaches the generator too (through the fragments).
    assert max(np.abs(np.asarray(g)).max() for g in jax.tree.leaves(bce_grads["generator"])) > 0.0


def test_train_step_is_jitted_on_device_without_recompiling(toy_trained):
    x, source, pool, state, _ = toy_trained
    outs = jax.device_put(mgmp.pool_outputs(pool, x))
    keys = list(jax.random.split(jax.random.key(5), 4))  # on device before the guard
    state, _ = mgmp.train_step(state, outs, keys[0])  # compile
    jax.block_until_ready(state)
    size = mgmp.train_step._cache_size()
    with jax.transfer_guard("disallow"):  # no host <-> device transfer inside the loop
        for key in keys[1:]:
            state, metrics = mgmp.train_step(state, outs, key)
    jax.block_until_ready(metrics)
    assert mgmp.train_step._cache_size() == size
    assert set(metrics) == {"loss", "l_s", "l_i", "l2", "bce", "train_accuracy"}
    assert all(np.isfinite(float(v)) for v in metrics.values())


def test_train_is_deterministic_given_the_key(toy_trained):
    x, source, pool, state, history = toy_trained
    again, history2 = mgmp.train(source, pool, x, TOY, key=jax.random.key(1))
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(a, b)
    for k in history:
        np.testing.assert_array_equal(history[k], history2[k])
    other, _ = mgmp.train(source, pool, x, TOY, key=jax.random.key(2))
    assert not np.array_equal(
        other.params["classifier"]["Dense_0"]["kernel"], state.params["classifier"]["Dense_0"]["kernel"]
    )
    assert int(state.step) == TOY.num_steps and history["loss"].shape == (TOY.num_steps,)


def test_train_and_predict_on_toy_pool(toy_trained):
    x, source, pool, state, history = toy_trained
    assert history["bce"][-20:].mean() < history["bce"][:20].mean()
    hom = (linear_apply, jax.tree.map(lambda p: p[1], pool.homologous.params))
    non = (linear_apply, jax.tree.map(lambda p: p[2], pool.non_homologous.params))
    p_hom, p_non = mgmp.predict(state, hom), mgmp.predict(state, non)
    assert p_hom.probabilities.shape == (N,) and p_hom.fraction.shape == ()
    assert float(p_hom.fraction) > 0.9 > 0.1 > float(p_non.fraction)
    assert bool(p_hom.homologous) and not bool(p_non.homologous)
    # The model-level decision is the fraction of homologous fragments against delta.
    assert bool(mgmp.predict(state, hom, delta=1.0).homologous) == bool(p_hom.fraction >= 1.0)
    np.testing.assert_allclose(p_hom.fraction, np.mean(np.asarray(p_hom.probabilities) > 0.5))


# ----------------------------------------------------------------- storage


def test_save_restore_roundtrip(toy_trained, tmp_path):
    x, source, pool, state, _ = toy_trained
    mgmp.save(tmp_path / "mgmp", state)
    back = mgmp.restore(tmp_path / "mgmp")
    assert back.config == state.config
    assert jax.tree.structure(back) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(back)):
        np.testing.assert_array_equal(a, b)
    target = (linear_apply, jax.tree.map(lambda p: p[0], pool.homologous.params))
    np.testing.assert_array_equal(mgmp.predict(back, target).probabilities, mgmp.predict(state, target).probabilities)
    # Training resumes from the restored optimiser state.
    outs = mgmp.pool_outputs(pool, x)
    s1, _ = mgmp.train_step(state, outs, jax.random.key(9))
    s2, _ = mgmp.train_step(back, outs, jax.random.key(9))
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_array_equal(a, b)
    mgmp.save(tmp_path / "mgmp", state)  # overwrite in place
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    with pytest.raises(mgmp.MGMPError, match="no MGMP state"):
        mgmp.restore(tmp_path / "missing")


# ----------------------------------------------------------------- bad input


def test_pool_without_homologous_or_non_homologous():
    x, source, pool = toy_problem()
    with pytest.raises(mgmp.MGMPError, match="no homologous"):
        mgmp.train(source, mgmp.Pool([], pool.non_homologous), x, TOY, key=jax.random.key(0))
    with pytest.raises(mgmp.MGMPError, match="no non-homologous"):
        mgmp.train(source, mgmp.Pool(pool.homologous, []), x, TOY, key=jax.random.key(0))
    outs = mgmp.pool_outputs(pool, x)
    with pytest.raises(mgmp.MGMPError, match="no non-homologous"):
        mgmp.train(source, outs._replace(non_homologous=outs.non_homologous[:0]), x, TOY, key=jax.random.key(0))


def test_output_dims_must_fit_the_assembly():
    x, source, pool = toy_problem()
    add = dataclasses.replace(TOY, assembly=mgmp.Assembly.ADD, dna_dim=C + 2)
    with pytest.raises(mgmp.MGMPError, match=f"source model has {C} outputs.*'add'.*dna_dim={C + 2}"):
        mgmp.train(source, pool, x, add, key=jax.random.key(0))
    # ADD with dna_dim == C is fine for the source; a pool model with other dims is named.
    wide = linear_params(jax.random.key(7), 2, c=C + 2)
    bad_pool = mgmp.Pool(
        pool.homologous,
        [pool.non_homologous, Models.from_apply(linear_apply, wide, stacked=True, ids=("wide0", "wide1"))],
    )
    with pytest.raises(mgmp.MGMPError, match="'wide0' has outputs \\(64, 5\\)"):
        mgmp.train(source, bad_pool, x, dataclasses.replace(add, dna_dim=C), key=jax.random.key(0))
    other_pool = mgmp.Pool(
        Models.from_apply(linear_apply, wide, stacked=True, ids=("wide0", "wide1")), pool.non_homologous
    )
    with pytest.raises(mgmp.MGMPError, match="'wide0'"):
        mgmp.train(source, other_pool, x, TOY, key=jax.random.key(0))
    state = mgmp.init(TOY, x, mgmp.model_outputs(source, x), key=jax.random.key(0))
    with pytest.raises(mgmp.MGMPError, match="target model has 5 outputs but the source has 3"):
        mgmp.predict(state, (linear_apply, jax.tree.map(lambda p: p[0], wide)))


def test_empty_or_malformed_data():
    x, source, pool = toy_problem()
    with pytest.raises(mgmp.MGMPError, match="empty data"):
        mgmp.train(source, pool, x[:0], TOY, key=jax.random.key(0))
    with pytest.raises(mgmp.MGMPError, match="batch_size=16 exceeds the 8 DNA inputs"):
        mgmp.train(source, pool, x[:8], TOY, key=jax.random.key(0))
    with pytest.raises(mgmp.MGMPError, match="empty data"):
        mgmp.train(source, pool, (x[:0], np.zeros(0)), TOY, key=jax.random.key(0))


def test_config_validation():
    with pytest.raises(mgmp.MGMPError, match="assembly='sum'"):
        mgmp.Config(assembly="sum")
    with pytest.raises(mgmp.MGMPError, match="tau must be > 0"):
        mgmp.Config(tau=0.0)
    with pytest.raises(mgmp.MGMPError, match="delta"):
        mgmp.Config(delta=1.5)
    with pytest.raises(mgmp.MGMPError, match="pair_input='siamese'"):
        mgmp.Config(pair_input="siamese")
    assert mgmp.Config(generator="cnn").generator is mgmp.Generator.CNN
    cfg = mgmp.Config(generator="none", generator_features=[8, 4])
    assert mgmp.Config.from_json(cfg.to_json()) == cfg
    hash(cfg)  # a static jit argument


# ----------------------------------------------------------------- on a zoo, through the evaluation layer


TINY = dataclasses.replace(TOY, generator_features=(32,), dna_dim=16, classifier_width=32, batch_size=32, num_steps=300)


@pytest.fixture(scope="module")
def tiny_verify(tiny_zoo):
    """Model DNA with and without the generator asked the tiny zoo's verify scenario (2 folds, by learning rate)."""
    from jaxlineage.eval import methods, protocols, scenarios

    scen = scenarios.verify(tiny_zoo, split_by="lr")  # a fold per fine-tuning rate: each parent keeps a child
    # D_s: the sources' (parents') training inputs, as in the paper (the scenario's own probe is the children's task).
    scen = dataclasses.replace(scen, probe=np.asarray(tiny_zoo.probe(512, task=tiny_zoo.spec.parent_task.name)))
    dna = [methods.ModelDNAScorer(config=TINY), methods.ModelDNAScorer(config=dict(TINY.to_json(), generator="none"))]
    return scen, protocols.run_all(scen, dna, key=jax.random.key(0), num_folds=2)


@pytest.mark.slow
def test_training_on_tiny_zoo_beats_chance(tiny_verify):
    # Held-out children and independents (the test fold) against both parents.
    _, results = tiny_verify
    assert [r.scorer for r in results] == ["model_dna", "model_dna_no_generator"]
    for r in results:
        assert r.metrics["auc"]["n"] == 2 and r.metrics["auc"]["mean"] > 0.5, (r.scorer, r.metrics)
        assert r.settings["num_folds"] == 2 and r.details["kind"] == "learned"


@pytest.mark.slow  # over 6 s on 2 loaded cores: the fast tier stays under 3 min
def test_fragments_from_a_backbone_tap(tiny_zoo):
    # Parents (task A head) and children (task B head) share the backbone: a feature tap
    # gives them one output space. Zoos are read by the evaluation layer into populations.
    from jaxlineage.eval import scenarios

    ids = [c.id for c in tiny_zoo.children]
    x = jnp.asarray(tiny_zoo.task_data("A", "test")[0][:64])
    (pop,) = scenarios.model_set(tiny_zoo, ids).populations
    out = mgmp.population_outputs(pop.feature_fn("relu2"), pop.params, x)
    assert out.shape == (len(ids), 64, 32)  # TINY: features (64, 32)
    for i, c in enumerate(ids):
        want = tiny_zoo.network_for(c).feature_fn("relu2")(tiny_zoo.load(c), x)
        np.testing.assert_allclose(out[i], want, rtol=1e-5, atol=1e-6)
    assert mgmp.population_outputs(pop.logits_fn, pop.params, x).shape[-1] == len(tiny_zoo.spec.child_tasks[0].classes)
    with pytest.raises(ValueError, match="no feature tap 'relu9'"):
        pop.feature_fn("relu9")

    # ModelDNAScorer(tap=...) reads the same populations; a fixed key gives the same fit.
    from jaxlineage.eval import methods

    scen = scenarios.verify(tiny_zoo)
    cfg = dataclasses.replace(TINY, num_steps=5)
    fit = lambda: methods.ModelDNAScorer(config=cfg, tap="relu2").fit(scen, key=jax.random.key(0))
    a, b = fit(), fit()
    assert a.name == "model_dna@relu2" and set(a.states) == {p.id for p in tiny_zoo.parents}
    np.testing.assert_array_equal(
        a.score(scen.candidates, scen.queries, probe=scen.probe),
        b.score(scen.candidates, scen.queries, probe=scen.probe),
    )


def test_fragment_cosine_matches_a_loop():
    rng = np.random.default_rng(3)
    s, t = rng.normal(size=(7, 4)), rng.normal(size=(3, 7, 4))
    t[1, 2] = 0.0  # a zero output: cosine 0, not NaN
    got = mgmp.fragment_cosine(s, t)
    assert got.shape == (3, 7)
    for m in range(3):
        for i in range(7):
            want = 0.0 if m == 1 and i == 2 else cos(s[i], t[m, i])
            assert got[m, i] == pytest.approx(want, abs=1e-12)
    np.testing.assert_array_equal(mgmp.fragment_cosine(s, t[0]), got[0])
    with pytest.raises(mgmp.MGMPError, match="fragment_cosine"):
        mgmp.fragment_cosine(s, t[:, :5])
