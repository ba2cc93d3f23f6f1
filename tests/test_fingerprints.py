"""Extraction-aware fingerprints (jaxlineage/fingerprints.py, eval/fingerprint_scorers.py), the bootstrap
intervals (eval/metrics.py) and the ``extract_adv`` zoo operation.

The scorers' contract battery (shape, known answer, determinism, no recompilation,
bad input) is tests/test_eval.py's ``SCORERS``; here each piece is checked against
its definition: PGD against the closed-form adversarial direction of linear
models, conferrable examples against surrogates / references built to disagree,
SAC's matrices and CutMix against loops, the bootstrap against materialised
resamples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlineage import data, fingerprints, zoo
from jaxlineage.eval import ModelSet, Population, ScorerError, metrics
from jaxlineage.eval import fingerprint_scorers as fs
from jaxlineage.zoo import DistillMode


def linear(params, x):
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"][None]


def _stack(ws):
    ws = np.stack(ws).astype(np.float32)
    return {"w": jnp.asarray(ws), "b": jnp.zeros((ws.shape[0], ws.shape[-1]), jnp.float32)}


def _one(w):
    return {"w": jnp.asarray(w, jnp.float32), "b": jnp.zeros((w.shape[-1],), jnp.float32)}


# --------------------------------------------------------------------------- PGD


def test_pgd_finds_the_sign_direction_of_a_linear_score():
    rng = np.random.default_rng(0)
    w = rng.normal(size=8).astype(np.float32)
    x0 = rng.uniform(0.3, 0.7, size=(5, 8)).astype(np.float32)
    x = fingerprints.pgd(lambda z: z @ w, jnp.asarray(x0), eps=0.1, step_size=0.03, steps=10)
    np.testing.assert_allclose(np.asarray(x), x0 + 0.1 * np.sign(w), atol=1e-6)
    # The box [0, 1] clips: from 0.95 the upward coordinates stop at 1.
    x = fingerprints.pgd(lambda z: z @ w, jnp.full((1, 8), 0.95), eps=0.1, step_size=0.03, steps=10)
    np.testing.assert_allclose(np.asarray(x)[0], np.where(w > 0, 1.0, 0.85), atol=1e-6)


def test_pgd_on_cross_entropy_of_linear_classifiers_vmapped_over_a_population():
    """Two classes: the CE gradient's sign is sign(w_other - w_true) wherever the softmax is, per model."""
    rng = np.random.default_rng(1)
    ws = rng.normal(size=(3, 6, 2)).astype(np.float32)
    x0 = jnp.asarray(rng.uniform(0.4, 0.6, size=(4, 6)), jnp.float32)
    y = jnp.asarray([0, 1, 0, 1])

    def attack(w):
        def ce(z):
            logits = z @ w
            return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], -1)[:, 0]

        return fingerprints.pgd(ce, x0, eps=0.05, step_size=0.02, steps=5)

    out = np.asarray(jax.jit(jax.vmap(attack))(jnp.asarray(ws)))
    for m in range(3):
        direction = np.sign(ws[m][:, 1 - np.asarray(y)] - ws[m][:, np.asarray(y)]).T  # [N, D]
        np.testing.assert_allclose(out[m], np.asarray(x0) + 0.05 * direction, atol=1e-6)


# --------------------------------------------------------------------------- conferrable examples


DEVIATION = 1.0  # the source's own deviation from the task (its individual boundary)


def _conferrable_toy(seed=0, c=2):
    """A task ``W_t``; the source deviates from it (``D``); surrogates are the source plus small noise;
    references are the task plus their own small deviations (independently trained models). With two
    classes, "not the source's label" is "the true label"."""
    d = 20
    rng = np.random.default_rng(seed)
    wt = rng.normal(size=(d, c))
    src = wt + DEVIATION * rng.normal(size=(d, c))
    sur = _stack([src + 0.05 * rng.normal(size=(d, c)) for _ in range(4)])
    ref = _stack([wt + 0.2 * rng.normal(size=(d, c)) for _ in range(4)])
    x0 = rng.normal(size=(200, d)).astype(np.float32)
    return _one(src), sur, ref, x0, (x0 @ wt).argmax(-1)


def test_conferrability_is_the_papers_product():
    rng = np.random.default_rng(2)
    m, s, r = rng.normal(size=(5, 4)), rng.normal(size=(3, 5, 4)), rng.normal(size=(2, 5, 4))
    softmax = lambda a: np.exp(a) / np.exp(a).sum(-1, keepdims=True)  # noqa: E731
    c = m.argmax(-1)
    want = [softmax(s)[:, n, c[n]].mean() * (1 - softmax(r)[:, n, c[n]].mean()) for n in range(5)]
    np.testing.assert_allclose(np.asarray(fingerprints.conferrability(m, s, r)), want, rtol=1e-5)


def test_conferrable_examples_fool_the_surrogates_and_not_the_references():
    src, sur, ref, x0, y0 = _conferrable_toy()
    kw = dict(n=20, eps=0.5, step_size=0.05, steps=40, key=jax.random.key(0), bounds=None)
    f = fingerprints.conferrable_examples(linear, src, linear, sur, linear, ref, x0, y0, **kw)
    assert f.x.shape == (20, 20) and np.all(np.abs(f.x - x0[f.index]) <= 0.5 + 1e-6)
    np.testing.assert_array_equal(np.asarray(linear(src, jnp.asarray(f.x))).argmax(-1), f.labels)
    assert np.all(f.labels != y0[f.index])  # adversarial for the source
    s_pred = np.asarray(fingerprints.population_logits(linear, sur, jnp.asarray(f.x))).argmax(-1)
    r_pred = np.asarray(fingerprints.population_logits(linear, ref, jnp.asarray(f.x))).argmax(-1)
    assert np.all(s_pred == f.labels)  # every surrogate is misclassified as the source is
    # ... and the references keep the true label (two classes: "not the source's label" is "correct").
    assert np.mean(r_pred == y0[f.index]) >= 0.95 and np.all((r_pred == f.labels).mean(0) < 0.5)
    assert np.all(f.scores[:-1] >= f.scores[1:])  # the most conferrable first


# --------------------------------------------------------------------------- SAC


def test_correlation_matrix_and_distance_by_loops():
    rng = np.random.default_rng(3)
    o, p = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    want = np.array([[(1 - cos(o[i], o[j])) / 2 for j in range(6)] for i in range(6)])
    got = np.asarray(fingerprints.correlation_matrix(jnp.asarray(o)))
    np.testing.assert_allclose(got, want, atol=1e-6)
    other = np.asarray(fingerprints.correlation_matrix(jnp.asarray(p)))
    d = float(fingerprints.correlation_distance(got, other))
    assert d == pytest.approx(np.abs(want - other).sum() / 36, abs=1e-6)
    # Invariant to a positive rescaling of each output row (cosines).
    scaled = np.asarray(fingerprints.correlation_matrix(jnp.asarray(o * rng.uniform(1, 3, (6, 1)))))
    np.testing.assert_allclose(scaled, got, atol=1e-6)


def test_cutmix_pastes_one_corner_patch_from_a_permutation():
    x = np.random.default_rng(4).uniform(size=(10, 30, 30, 1)).astype(np.float32)
    out = fingerprints.cutmix(x, n=8, seed=0)
    changed = np.any(out != x[:8], axis=(0, 3))
    ys, xs = np.nonzero(changed)
    assert ys.size and (ys.max() - ys.min() + 1) <= 6 and (xs.max() - xs.min() + 1) <= 6  # 0.2 x 30
    cy, cx = ys.mean(), xs.mean()
    assert not (5 < cy < 25) and not (5 < cx < 25)  # near a corner
    patch = out[:, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    sources = x[:8, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    for i in range(8):  # each patch is some image's patch
        assert any(np.array_equal(patch[i], sources[j]) for j in range(8))
    np.testing.assert_array_equal(fingerprints.cutmix(x, n=8, seed=0), out)


def test_sac_w_uses_each_sources_own_errors():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    y = (x @ rng.normal(size=(6, 3))).argmax(-1)
    cands = Population(("a", "b"), _stack([rng.normal(size=(6, 3)) for _ in range(2)]), linear, {}, "lin")
    s = fs.SACScorer(mode="w", data=(x, y), n_samples=20)
    samples = s.samples(cands, x)
    for k in range(2):
        w = np.asarray(cands.params["w"][k])
        wrong = np.flatnonzero((x @ w).argmax(-1) != y)[:20]
        np.testing.assert_array_equal(samples[k], x[wrong])
    with pytest.raises(ScorerError, match="labelled data"):
        fs.SACScorer(mode="w")


# --------------------------------------------------------------------------- training, IPGuard, agreement


def test_fresh_like_and_train_population_vmapped_equals_sequential():
    rng = np.random.default_rng(6)
    template = {"dense": {"kernel": jnp.zeros((400, 50)), "bias": jnp.ones(50)}, "bn": {"scale": jnp.zeros(50)}}
    fresh = fingerprints.fresh_like(template, jax.random.key(0))
    assert float(jnp.std(fresh["dense"]["kernel"])) == pytest.approx(1 / 20, rel=0.05)
    assert np.all(np.asarray(fresh["dense"]["bias"]) == 0) and np.all(np.asarray(fresh["bn"]["scale"]) == 1)
    x = rng.normal(size=(256, 5)).astype(np.float32)
    y = (x @ rng.normal(size=(5, 3))).argmax(-1)
    init = _stack([np.zeros((5, 3))] * 2)
    kw = dict(key=jax.random.key(1), steps=200, batch_size=32, lr=0.05)
    a = fingerprints.train_population(linear, init, x, y, **kw)
    b = fingerprints.train_population(linear, init, x, y, sequential=True, **kw)
    np.testing.assert_allclose(np.asarray(a["w"]), np.asarray(b["w"]), atol=1e-5)
    acc = np.asarray(fingerprints.agreement(linear, a, jnp.asarray(x), jnp.asarray(y)))
    assert np.all(acc > 0.9), acc


def test_ipguard_points_sit_just_past_the_boundary_of_two_classes():
    rng = np.random.default_rng(7)
    w = rng.normal(size=(10, 4))
    x0 = rng.uniform(0.2, 0.8, size=(64, 10)).astype(np.float32)
    f = fingerprints.ipguard_examples(
        linear, _one(w), x0, num_classes=4, k=0.5, steps=600, lr=0.01, key=jax.random.key(0), bounds=None
    )
    ok = f.scores > -1e-6  # the loss reached 0
    assert ok.mean() >= 0.9
    g = np.sort(f.x[ok] @ w, axis=-1)
    margin = g[:, -1] - g[:, -2]
    assert np.all(margin >= 0.5 - 1e-4) and np.median(margin) < 0.65  # just past the margin k (Adam steps of lr 0.01)
    np.testing.assert_array_equal((f.x @ w).argmax(-1), f.labels)


@pytest.mark.slow  # over 13 s on 2 loaded cores: the fast tier stays under 3 min
def test_fingerprints_never_see_the_queries_and_are_cached(tmp_path):
    rng = np.random.default_rng(8)
    x = rng.uniform(size=(200, 6)).astype(np.float32)
    y = (x @ rng.normal(size=(6, 3))).argmax(-1)
    cands = Population(("a",), _stack([rng.normal(size=(6, 3))]), linear, {}, "lin")
    q1 = ModelSet((Population(("q",), _stack([rng.normal(size=(6, 3))]), linear, {}, "lin"),))
    q2 = ModelSet((Population(("r", "s"), _stack([rng.normal(size=(6, 3)) for _ in range(2)]), linear, {}, "lin"),))
    kw = dict(data=(x, y), n_fingerprints=10, n_seeds=40, n_surrogates=2, n_references=2, train_steps=50)
    s = fs.ConferrableScorer(cache_dir=str(tmp_path), **kw)
    s.score(ModelSet((cands,)), q1, probe=x)
    first = s.fingerprints(cands, 0)
    s.score(ModelSet((cands,)), q2, probe=x)
    assert s.fingerprints(cands, 0) is first and len(list(tmp_path.iterdir())) == 1
    again = fs.ConferrableScorer(cache_dir=str(tmp_path), **kw).fingerprints(cands, 0)  # from disk
    np.testing.assert_array_equal(again.x, first.x)
    scores = s.score(ModelSet((cands,)), q2, probe=x)[0]
    want = [
        np.mean((first.x @ np.asarray(q2.populations[0].params["w"][m])).argmax(-1) == first.labels) for m in (0, 1)
    ]
    np.testing.assert_allclose(scores, want)


# --------------------------------------------------------------------------- bootstrap intervals


def test_weighted_auc_and_tpr_equal_materialised_repeats():
    rng = np.random.default_rng(9)
    pos, neg = rng.integers(0, 6, 12).astype(float), rng.integers(0, 6, 30).astype(float)  # many ties
    wp, wn = rng.integers(0, 4, 12), rng.integers(0, 4, 30)
    rep_p, rep_n = np.repeat(pos, wp), np.repeat(neg, wn)
    assert metrics.weighted_roc_auc(pos, neg, wp, wn) == pytest.approx(metrics.roc_auc(rep_p, rep_n))
    for f in (0.0, 0.01, 0.1, 0.3):
        assert metrics.weighted_tpr_at_fpr(pos, neg, wp, wn, f) == pytest.approx(metrics.tpr_at_fpr(rep_p, rep_n, f))


def test_bootstrap_pair_ci_against_brute_force_resamples():
    rng = np.random.default_rng(10)
    k, m = 4, 15
    scores = rng.normal(size=(k, m))
    related = np.zeros((k, m), bool)
    related[np.arange(m) % k, np.arange(m)] = np.arange(m) < 8
    scores[related] += 1.0
    scores[0, 14] = np.nan  # unreadable: left out
    neg = ~related
    ci = metrics.bootstrap_pair_ci(scores, related, neg, n_boot=200, seed=3, fprs=(0.05,))
    # Brute force: the same draws, pairs materialised by repetition.
    draw = np.random.default_rng(3)
    aucs, tprs = [], []
    for _ in range(200):
        rows, cols = draw.integers(0, k, k), draw.integers(0, m, m)
        p, n = [], []
        for r in rows:
            for c in cols:
                if np.isfinite(scores[r, c]):
                    (p if related[r, c] else n).append(scores[r, c])
        if p and n:
            aucs.append(metrics.roc_auc(p, n))
            tprs.append(metrics.tpr_at_fpr(p, n, 0.05))
    assert ci["n_boot"] == len(aucs)
    np.testing.assert_allclose(ci["auc"], np.percentile(aucs, [2.5, 97.5]))
    np.testing.assert_allclose(ci["tpr@5%fpr"], np.percentile(tprs, [2.5, 97.5]))
    point = metrics.roc_auc(scores[related & np.isfinite(scores)], scores[neg & np.isfinite(scores)])
    assert ci["auc"][0] <= point <= ci["auc"][1]


# --------------------------------------------------------------------------- the extract_adv operation

ADV_TASKS = (
    zoo.Task("A", "embedded", data.TASK_A, n_train=320, half=0),
    zoo.Task("A-att", "embedded", data.TASK_A, n_train=320, half=1),
)
_FIT = dict(lr=3e-3, batch_size=32, epochs=3)
_MLP = (("features", (32, 16)),)
# A ball large enough for a small MLP to show the effect (SAC: 4/256 on CIFAR ResNets), and more adversarial
# steps than SAC's 2 epochs (320 inputs here): 30 epochs of 10 steps.
ADV = dict(adv_epochs=30, adv_lr=0.02, pgd_steps=10, step_size=0.02)
EPS = 0.1


@pytest.mark.slow
def test_extract_adv_trains_the_label_only_student_against_pgd(tmp_path):
    """extract_adv = extract-L's student, then adversarial training: against the same op with ``eps = 0`` (the
    same steps on clean inputs, same keys) its accuracy on PGD examples (labels = the teacher's) is higher."""
    g = lambda name, op, **k: zoo.Group(name, op, **k)  # noqa: E731
    spec = zoo.GraphSpec(
        "adv",
        ADV_TASKS,
        (
            g("src", "train", task="A", arch="mlp", arch_kwargs=_MLP, grid=dict(_FIT, seed=(0,))),
            g("l", "distill", source="src", task="A-att", grid=dict(_FIT, mode=DistillMode.LABEL), kind="extract_l"),
            g("adv", "extract_adv", source="src", task="A-att", grid=dict(_FIT, eps=EPS, **ADV), kind="extract_adv"),
            g("adv0", "extract_adv", source="src", task="A-att", grid=dict(_FIT, eps=0.0, **ADV), kind="extract_adv"),
        ),
    )
    z = zoo.build(spec, tmp_path, progress=False)
    x = jnp.asarray(z.task_data("A-att", "test")[0][:300])
    teacher = z.group("src")[0].id
    net = z.network_for(teacher)
    y = jnp.argmax(net.logits_fn(z.load(teacher), x), -1)

    def robust(model_id):
        p = z.load(model_id)

        def ce(v):
            return -jnp.take_along_axis(jax.nn.log_softmax(net.logits_fn(p, v)), y[:, None], -1)[:, 0]

        xa = fingerprints.pgd(ce, x, eps=EPS, step_size=EPS / 5, steps=10)
        return float(jnp.mean(jnp.argmax(net.logits_fn(p, xa), -1) == y))

    (l,), (adv,), (adv0,) = z.group("l"), z.group("adv"), z.group("adv0")
    assert adv.op == "extract_adv" and adv.parent_id == teacher and adv.fidelity > 0.6
    # Both start from the label-only student of the same keys: before the adversarial epochs they are extract-L's.
    assert adv0.fidelity > 0.6 and l.fidelity > 0.6
    assert robust(adv.id) > robust(adv0.id) + 0.1, (robust(adv.id), robust(adv0.id))
