"""Tests for the learned Lineage Detector (jaxlineage.detector), on the session's tiny zoo."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlineage import detector
from jaxlineage.eval import methods, scenarios

# Small pairs keep every test fast: dense2 is [32, 64] in the paper's layout,
# relu2 features on 16 probe inputs are [16, 32].
LAYER, TAP, N_PROBE = "dense2", "relu2", 16


def make_examples(zoo, **settings):
    """Every kept child against all kept parents, read by the evaluation layer (identify scenario + DetectorScorer)."""
    scorer = methods.DetectorScorer(**settings)  # settings are checked before any model is read
    scen = scenarios.identify(zoo)
    return scorer.examples(scen.candidates, scen.queries, probe=scen.probe, labels=scen.labels)


@pytest.fixture(scope="module")
def examples(tiny_zoo):
    return make_examples(tiny_zoo, weight_layer=LAYER, feature_tap=TAP, n_probe=N_PROBE)


def _variant(ex, which):
    return {"both": ex, "weights": ex.without_features(), "features": ex.without_weights()}[which]


class _Zoo:
    """A view of a zoo with some attributes or models replaced (for bad-input tests)."""

    def __init__(self, zoo, *, parents=None, load=None):
        self._zoo, self._parents, self._load = zoo, parents, load

    def __getattr__(self, name):
        return getattr(self._zoo, name)

    @property
    def parents(self):
        return self._zoo.parents if self._parents is None else self._parents

    def load(self, model_id):
        v = self._zoo.load(model_id)
        return v if self._load is None else self._load(model_id, v)


# --------------------------------------------------------------------------- examples


def test_examples_layout(tiny_zoo, examples):
    k, m = len(tiny_zoo.parents), len(tiny_zoo.children)
    assert examples.parent_ids == tuple(p.id for p in tiny_zoo.parents)
    assert examples.child_ids == tuple(c.id for c in tiny_zoo.children)
    for c, label in zip(tiny_zoo.children, examples.labels):
        assert examples.parent_ids[label] == c.parent_id
    wp, fp = examples.weight_pairs(), examples.feature_pairs()
    assert wp.shape == (m, k, 2, 32, 64)
    assert fp.shape == (m, k, 2, N_PROBE, 32)
    # Channel 0 is the candidate parent, channel 1 the child; weights are [out, in].
    kernel = lambda i: np.asarray(tiny_zoo.load(i)["params"][LAYER]["kernel"]).T
    np.testing.assert_array_equal(wp[1, 0, 0], kernel(examples.parent_ids[0]))
    np.testing.assert_array_equal(wp[1, 0, 1], kernel(examples.child_ids[1]))
    np.testing.assert_array_equal(wp[1, 1, 1], wp[1, 0, 1])
    probe = tiny_zoo.probe(N_PROBE)
    feats = tiny_zoo.network.feature_fn(TAP)(tiny_zoo.load(examples.parent_ids[1]), probe)
    # Features come from one vmap over the stacked models: float32 rounding differs from one model's call.
    np.testing.assert_allclose(fp[0, 1, 0], feats, rtol=1e-4, atol=1e-6)


def test_examples_defaults_and_aliases(tiny_zoo, examples):
    auto = make_examples(tiny_zoo, n_probe=4)
    assert auto.weight_layer == "dense2"  # the smallest backbone kernel
    assert auto.feature_tap == "relu1"  # the first tap
    full = make_examples(tiny_zoo, weight_layer="params/dense2/kernel", feature_tap=None)
    np.testing.assert_array_equal(full.child_weights, examples.child_weights)
    assert not full.has_features and full.weight_layer == LAYER


def test_pooling_block_averages(tiny_zoo, examples):
    pooled = make_examples(
        tiny_zoo, weight_layer=LAYER, feature_tap=TAP, n_probe=N_PROBE, weight_pool=3, feature_pool=4
    )
    assert pooled.child_weights.shape == (4, 10, 21) and pooled.child_features.shape == (4, N_PROBE, 8)
    w = examples.child_weights[2]
    np.testing.assert_allclose(pooled.child_weights[2, 1, 4], w[3:6, 12:15].mean(), rtol=1e-6)
    np.testing.assert_allclose(pooled.parent_features[1, 5, 7], examples.parent_features[1, 5, 28:32].mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="weight_pool=64 exceeds"):
        make_examples(tiny_zoo, weight_layer=LAYER, feature_tap=None, weight_pool=64)
    with pytest.raises(ValueError, match="n_probe must be a positive integer"):
        make_examples(tiny_zoo, n_probe=0)


def test_drop_parent_relabels(examples):
    held = examples.parent_ids[0]
    open_ex = examples.drop_parent(held)
    assert open_ex.open_set and open_ex.parent_ids == examples.parent_ids[1:]
    assert open_ex.num_outputs == examples.num_candidates
    np.testing.assert_array_equal(open_ex.no_parent, examples.labels == 0)
    np.testing.assert_array_equal(open_ex.labels[examples.labels == 1], 0)
    np.testing.assert_array_equal(open_ex.parent_weights, examples.parent_weights[1:])


# --------------------------------------------------------------------------- model


# Every encoder choice and both heads in the fast tier (three cases); the other three in the slow tier.
_FAST_SHAPES = {("both", True), ("weights", False), ("features", True)}


@pytest.mark.parametrize(
    ("which", "no_parent"),
    [
        pytest.param(w, n, marks=() if (w, n) in _FAST_SHAPES else pytest.mark.slow)
        for n in (False, True)
        for w in ("both", "weights", "features")
    ],
)
def test_logit_shapes(examples, which, no_parent):
    ex = _variant(examples, which)
    module = detector.LineageDetector(embed_dim=8, no_parent=no_parent)
    wp, fp = ex.weight_pairs(), ex.feature_pairs()
    variables = jax.jit(module.init)(jax.random.key(0), wp, fp)
    logits = jax.jit(module.apply)(variables, wp, fp)
    assert logits.shape == (len(ex), ex.num_candidates + int(no_parent))
    assert np.all(np.isfinite(logits))
    encoders = {k for k in variables["params"] if k.endswith("_encoder")}
    assert (
        encoders
        == {
            "both": {"weight_encoder", "feature_encoder"},
            "weights": {"weight_encoder"},
            "features": {"feature_encoder"},
        }[which]
    )


@pytest.mark.slow  # over 6 s on 2 loaded cores: the fast tier stays under 3 min
def test_difference_init_starts_from_parent_minus_child():
    module = detector.LineageDetector(embed_dim=8, difference_init=True)
    variables = module.init(jax.random.key(0), jnp.ones((1, 2, 2, 4, 4)), None)
    kernel = variables["params"]["weight_encoder"]["conv1"]["kernel"]  # [1, 1, in=(parent, child), out=3]
    np.testing.assert_array_equal(kernel[0, 0, :, :2], [[1.0, -1.0], [-1.0, 1.0]])


@pytest.mark.parametrize(
    "train, block",
    [
        # One combination in the fast tier; every other one in the slow tier (5-10 s each).
        (t, b) if (t, b) == (False, detector.Block.PRE_LN) else pytest.param(t, b, marks=pytest.mark.slow)
        for t in (False, True)
        for b in detector.Block
    ],
)
def test_permuting_candidates_permutes_logits(block, train):
    kw, kf, kp, ki = jax.random.split(jax.random.key(1), 4)
    wp = jax.random.normal(kw, (3, 5, 2, 6, 7))
    fp = jax.random.normal(kf, (3, 5, 2, 4, 9))
    perm = jax.random.permutation(kp, 5)
    module = detector.LineageDetector(embed_dim=8, depth=2, num_heads=2, block=block, no_parent=True)
    variables = jax.jit(module.init)(ki, wp, fp)

    @jax.jit
    def logits(w, f):
        if train:
            return module.apply(variables, w, f, train=True, mutable=["batch_stats"])[0]
        return module.apply(variables, w, f)

    base = logits(wp, fp)
    permuted = logits(wp[:, perm], fp[:, perm])
    np.testing.assert_allclose(permuted[:, :5], base[:, perm], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(permuted[:, 5], base[:, 5], rtol=1e-5, atol=1e-5)  # "no parent" stays last
    # Not a trivially constant function of the candidates.
    assert float(jnp.std(base[:, :5])) > 1e-3


# --------------------------------------------------------------------------- training


def _split(examples):
    """Train on one child of each parent, validate and test on the other ones."""
    first = {}
    for i, label in enumerate(examples.labels):
        first.setdefault(int(label), i)
    tr = np.array(sorted(first.values()))
    rest = np.array([i for i in range(len(examples)) if i not in set(tr)])
    return examples.take(tr), examples.take(rest)


@pytest.mark.slow
def test_tiny_zoo_trains_above_chance(examples):
    train_ex, held_ex = _split(examples)
    det = detector.train(train_ex, held_ex, key=jax.random.key(0), epochs=8)
    first, last = det.history[0], det.history[-1]
    assert last["train_loss"] < first["train_loss"]
    # Held-out children of the 2 candidates: chance is 0.5.
    res = detector.assess(det, held_ex)
    assert res["accuracy"] == 1.0, det.history
    assert len(det.history) == 8 and 1 <= det.best_epoch <= 8


def _synthetic_open_set(seed, *, m=72, k=3, shape=(8, 8), noise=0.3):
    """Children = parent + noise, or (label k) a fresh draw that descends from no candidate."""
    rng = np.random.default_rng(seed)
    parents = rng.normal(size=(k, *shape)).astype(np.float32)
    labels = np.arange(m) % (k + 1)
    children = np.stack(
        [parents[l] + noise * rng.normal(size=shape) if l < k else rng.normal(size=shape) for l in labels]
    ).astype(np.float32)
    return detector.Examples(
        labels=labels,
        parent_ids=[f"p{i}" for i in range(k)],
        child_ids=[f"c{i}" for i in range(m)],
        parent_weights=parents,
        child_weights=children,
        open_set=True,
    )


@pytest.mark.slow
def test_open_set_detector_learns_no_parent():
    ex = _synthetic_open_set(0)
    det = detector.train(
        ex.take(np.arange(48)),
        ex.take(np.arange(48, 52)),
        key=jax.random.key(0),
        epochs=10,
        batch_size=8,
        module=detector.LineageDetector(embed_dim=8, no_parent=True),
    )
    res = detector.assess(det, ex.take(np.arange(52, 72)))
    assert res["n_no_parent"] == 5
    # Chance is 1/4; a detector without the "no parent" logit scores 0 on these.
    assert res["accuracy_no_parent"] >= 0.6 and res["accuracy"] >= 0.9, res


@pytest.mark.slow  # over 6 s on 2 loaded cores: the fast tier stays under 3 min
def test_training_loop_is_one_jitted_function_without_host_transfers(examples):
    train_ex, held_ex = _split(examples)
    module = detector.LineageDetector(embed_dim=8, no_parent=True)
    before = detector._training._indexed_step._cache_size()
    detector.train(train_ex.drop_parent(0), held_ex.drop_parent(0), key=jax.random.key(0), module=module, epochs=3)
    assert detector._training._indexed_step._cache_size() == before + 1  # 3 epochs of steps, one compilation
    # A second run with the same settings (another repetition / seed) reuses that compilation.
    detector.train(train_ex.drop_parent(0), held_ex.drop_parent(0), key=jax.random.key(1), module=module, epochs=1)
    assert detector._training._indexed_step._cache_size() == before + 1

    state = detector.init_state(module, train_ex, key=jax.random.key(1), tx=optax.adam(1e-2))
    data = detector._training._device_arrays(train_ex)
    batch = detector._training._gather(data, jnp.arange(len(train_ex)))
    state, _ = detector.train_step(state, batch)  # compile
    with jax.transfer_guard("disallow"):  # any implicit host <-> device copy raises
        state, metrics = detector.train_step(state, batch)
        state, metrics = detector.train_step(state, batch)
    assert detector.train_step._cache_size() == 1
    assert np.isfinite(float(metrics["loss"]))


@pytest.mark.slow  # over 6 s on 2 cores: the fast tier stays under 3 min
def test_deterministic_given_the_seed(examples):
    train_ex, held_ex = _split(examples)
    kw = dict(module=detector.LineageDetector(embed_dim=8), epochs=2)
    a = detector.train(train_ex, held_ex, key=jax.random.key(5), **kw)
    b = detector.train(train_ex, held_ex, key=jax.random.key(5), **kw)
    c = detector.train(train_ex, held_ex, key=jax.random.key(6), **kw)
    jax.tree.map(np.testing.assert_array_equal, a.variables, b.variables)
    assert a.history == b.history
    assert not np.array_equal(a.variables["params"]["head"]["kernel"], c.variables["params"]["head"]["kernel"])


@pytest.mark.slow  # over 6 s on 2 loaded cores: the fast tier stays under 3 min
def test_save_restore_round_trip(examples, tmp_path):
    train_ex, held_ex = _split(examples)
    det = detector.train(
        train_ex,
        held_ex,
        key=jax.random.key(0),
        epochs=1,
        module=detector.LineageDetector(embed_dim=8, depth=2, block=detector.Block.PRE_LN),
    )
    detector.save(tmp_path / "det", det, metadata={"weight_layer": LAYER})
    back, meta = detector.restore(tmp_path / "det")
    assert meta == {"weight_layer": LAYER}
    assert back.module == det.module and back.history == det.history and back.best_epoch == det.best_epoch
    np.testing.assert_array_equal(detector.predict_logits(back, examples), detector.predict_logits(det, examples))
    with pytest.raises(FileNotFoundError, match="no saved detector"):
        detector.restore(tmp_path / "missing")


# --------------------------------------------------------------------------- bad input


def test_unknown_layer_or_tap_names_the_valid_ones(tiny_zoo):
    with pytest.raises(ValueError, match=r"'dense9'.*valid layers: \('dense1', 'dense2'\)"):
        make_examples(tiny_zoo, weight_layer="dense9")
    with pytest.raises(ValueError, match="head is re-initialised"):
        make_examples(tiny_zoo, weight_layer="head")
    with pytest.raises(ValueError, match=r"'relu7'.*valid taps: \('relu1', 'relu2', 'logits'\)"):
        make_examples(tiny_zoo, feature_tap="relu7")
    with pytest.raises(ValueError, match="both None"):
        make_examples(tiny_zoo, weight_layer=None, feature_tap=None)


def test_mismatched_candidate_shapes(tiny_zoo, examples):
    odd = tiny_zoo.children[2].id

    def shrink(model_id, variables):
        if model_id != odd:
            return variables
        params = dict(variables["params"])
        params[LAYER] = dict(params[LAYER], kernel=params[LAYER]["kernel"][:, :31])
        return {"params": params}

    # The zoo's models are read into stacked populations (one per parameter shapes, eval.scenarios.model_set):
    # the odd model's weight layer is named with its shape against the others'.
    with pytest.raises(ValueError, match=rf"weight layer 'dense2' of model .{re.escape(odd)}. has shape \(31, 64\)"):
        make_examples(_Zoo(tiny_zoo, load=shrink), weight_layer=LAYER, feature_tap=None)
    with pytest.raises(
        ValueError, match=r"candidate weights of shape \(32, 64\) do not match the children's \(32, 63\)"
    ):
        dataclasses.replace(examples, child_weights=examples.child_weights[..., :63])
    module = detector.LineageDetector(embed_dim=8)
    wp, fp = examples.weight_pairs(), examples.feature_pairs()
    with pytest.raises(ValueError, match=r"disagree on \[B, K\]"):
        module.init(jax.random.key(0), wp, fp[:, :1])
    with pytest.raises(ValueError, match=r"\[B, K, 2, H, W\]"):
        module.init(jax.random.key(0), wp[:, :, :1], fp)


def test_empty_split(examples):
    with pytest.raises(ValueError, match="val split.* empty"):
        detector.split_indices(4, key=jax.random.key(0))
    with pytest.raises(ValueError, match="train split is empty"):
        detector.train(examples.take([]), examples, key=jax.random.key(0))
    with pytest.raises(ValueError, match="val split is empty"):
        detector.train(examples, examples.take([]), key=jax.random.key(0))
    with pytest.raises(ValueError, match="empty"):
        detector.assess(detector.Detector(detector.LineageDetector(), {}), examples.take([]))


def test_open_set_examples_need_the_no_parent_logit(examples):
    open_ex = examples.drop_parent(1)
    with pytest.raises(ValueError, match="no_parent=True"):
        detector.train(open_ex, open_ex, key=jax.random.key(0), module=detector.LineageDetector())


@pytest.mark.slow  # over 6 s on 2 loaded cores: the fast tier stays under 3 min
def test_monitor_is_recorded_and_never_chooses_the_epoch():
    ex = _synthetic_open_set(1, m=40)
    kw = dict(
        key=jax.random.key(0), epochs=3, batch_size=8, module=detector.LineageDetector(embed_dim=8, no_parent=True)
    )
    plain = detector.train(ex.take(np.arange(24)), ex.take(np.arange(24, 28)), **kw)
    mon = detector.train(ex.take(np.arange(24)), ex.take(np.arange(24, 28)), monitor=ex.take(np.arange(28, 40)), **kw)
    # Same training, same chosen epoch; the monitor only adds its figures to the history.
    assert mon.best_epoch == plain.best_epoch
    jax.tree.map(np.testing.assert_array_equal, mon.variables, plain.variables)
    for h, p in zip(mon.history, plain.history):
        assert {k: v for k, v in h.items() if not k.startswith("monitor_")} == p
    # The last epoch's monitor accuracy is that of the last epoch's variables: with 1 epoch, the kept ones.
    one = detector.train(
        ex.take(np.arange(24)), ex.take(np.arange(24, 28)), monitor=ex.take(np.arange(28, 40)), **{**kw, "epochs": 1}
    )
    assert one.history[0]["monitor_accuracy"] == detector.assess(one, ex.take(np.arange(28, 40)))["accuracy"]


def test_balanced_no_parent_counts_both_sides_equally():
    labels = np.array([0, 1, 3, 2, 0, 3, 1])  # k = 3: two "no parent", five with a parent
    idx = methods._balanced_no_parent(labels, 3)
    picked = labels[idx]
    assert np.sum(picked == 3) == np.sum(picked != 3) == 5
    assert set(idx[picked != 3]) == {0, 1, 3, 4, 6}  # every known query exactly once
    assert sorted(idx[picked == 3]) == [2, 2, 2, 5, 5]  # the rarer side cycled
    np.testing.assert_array_equal(methods._balanced_no_parent(np.array([0, 1, 2]), 3), [0, 1, 2])


def test_margin_threshold_maximises_balanced_accuracy():
    # Separable: any cut between 0.5 and 1.0 is perfect; the midpoint of the tied range is chosen.
    margin = np.array([-2.0, -1.0, 0.5, 1.0, 3.0])
    known = np.array([False, False, False, True, True])
    t = methods._margin_threshold(margin, known)
    assert 0.5 < t < 1.0
    # Brute force over a fine grid: no cut has a better balanced accuracy.
    rng = np.random.default_rng(0)
    margin, known = rng.normal(size=40), rng.random(40) < 0.6
    margin[known] += 1.0
    bal = lambda t: (np.mean(margin[known] >= t) + np.mean(margin[~known] < t)) / 2
    t = methods._margin_threshold(margin, known)
    assert bal(t) >= max(bal(c) for c in np.linspace(-4, 5, 2001)) - 1e-12
    assert methods._margin_threshold(margin, np.ones(40, bool)) == 0.0
