"""Tests for jaxlineage.modelgif: gradient fields, distances, samplers, the zoo wrapper.

ROC AUC and TPR at FPR live in jaxlineage.eval.metrics (tests/test_eval_metrics.py)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlineage import modelgif as mg
from jaxlineage.models import Models

SHAPE = (6, 6, 1)  # One input; D = 36.
D = int(np.prod(SHAPE))
C = 4
N, STEPS = 5, 4  # Shared by most tests so that they reuse compiled functions.


# ----------------------------------------------------------------- toy models (pure jnp)


def linear_apply(params, x):
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"][None]


def mlp_apply(params, x):
    """A smooth (tanh) MLP, so Gauss-Legendre converges exponentially."""
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"][None])
    return h @ params["w2"] + params["b2"][None]


def conv_apply(params, x):
    """A tiny ConvNet (NHWC conv, tanh, global mean pool, dense)."""
    h = jax.lax.conv_general_dilated(x, params["k"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jnp.tanh(h + params["bk"].reshape(1, 1, 1, -1)).mean(axis=(1, 2))
    return h @ params["w"] + params["b"][None]


# Parameters and inputs come from numpy: jax.random would compile a sampler per
# shape, which costs more than the tests themselves on a small CPU.


def normal(seed, shape, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def init_linear(seed, dtype=np.float32):
    return {"w": normal((seed, 0), (D, C), dtype), "b": normal((seed, 1), (C,), dtype)}


def init_mlp(seed, hidden=8, dtype=np.float32):
    return {
        "w1": normal((seed, 0), (D, hidden), dtype) / np.sqrt(D).astype(dtype),
        "b1": 0.1 * normal((seed, 1), (hidden,), dtype),
        "w2": normal((seed, 2), (hidden, C), dtype),
        "b2": 0.1 * normal((seed, 3), (C,), dtype),
    }


def init_conv(seed, filters=3):
    return {
        "k": normal((seed, 0), (3, 3, 1, filters)) / 3,
        "bk": 0.1 * normal((seed, 1), (filters,)),
        "w": normal((seed, 2), (filters, C)),
        "b": np.zeros((C,), np.float32),
    }


def inputs(n, seed=1, dtype=np.float32):
    return normal((seed, 99), (n, *SHAPE), dtype)


def loop_field(apply_fn, params, x, x0, steps, classes):
    """The simplest implementation: one jax.grad per (reference, node), numpy sums."""
    alphas, weights = mg.gauss_legendre(steps)
    grad = jax.jit(jax.grad(lambda z, c: apply_fn(params, z[None])[0, c]))
    out = np.zeros((x.shape[0], steps, D))
    for n in range(x.shape[0]):
        running = np.zeros(D)
        for k in range(steps):
            point = x0[n] + alphas[k] * (x[n] - x0[n])
            running = running + weights[k] * np.asarray(grad(point, classes[n])).ravel()
            out[n, k] = running * np.asarray(x[n] - x0[n]).ravel()
    return out


# ----------------------------------------------------------------------- quadrature


def test_gauss_legendre_integrates_polynomials_exactly():
    for steps in (1, 3, 7):
        alphas, weights = mg.gauss_legendre(steps)
        assert alphas.shape == weights.shape == (steps,)
        assert np.all(np.diff(alphas) > 0) and 0 < alphas[0] and alphas[-1] < 1
        for degree in range(2 * steps):  # Exact up to degree 2K - 1 ...
            np.testing.assert_allclose(weights @ alphas**degree, 1 / (degree + 1), rtol=1e-13)
        # ... but not beyond.
        assert abs(weights @ alphas ** (2 * steps) - 1 / (2 * steps + 1)) > 1e-12  # >> roundoff.


# ------------------------------------------------------------------- gradient fields


@pytest.mark.parametrize("target", ["predicted", mg.Target.LABEL, 2])
def test_linear_field_closed_form(target):
    # F(z) = z W[:, c] + b_c, so grad F = W[:, c] everywhere and
    # G_k = (x - x0) * W[:, c] * sum_{j<=k} w_j.
    params = init_linear(0)
    x, x0 = inputs(5), 0.5 * inputs(1, seed=2)[0]
    labels = jnp.array([0, 1, 2, 3, 1])
    field = mg.gradient_field(
        linear_apply,
        params,
        x,
        baseline=x0,
        steps=6,
        target=target,
        labels=labels if target is mg.Target.LABEL else None,
    )
    if target == "predicted":
        classes = np.argmax(linear_apply(params, x), axis=1)
    elif target is mg.Target.LABEL:
        classes = np.asarray(labels)
    else:
        classes = np.full(5, 2)
    cum_w = np.cumsum(mg.gauss_legendre(6)[1])
    w_c = np.asarray(params["w"])[:, classes].T  # [N, D]
    delta = np.asarray(x - x0[None]).reshape(5, D)
    expected = delta[:, None, :] * w_c[:, None, :] * cum_w[None, :, None]
    assert field.shape == (5, 6, D) and field.dtype == jnp.float32
    np.testing.assert_allclose(field, expected, rtol=1e-5, atol=1e-5)


def test_field_matches_per_point_grad_loop():
    params = init_mlp(0)
    x = inputs(N)
    x0 = 0.3 * inputs(N, seed=5)  # A per-reference baseline.
    field = mg.gradient_field(mlp_apply, params, x, baseline=x0, steps=STEPS)
    classes = np.argmax(mlp_apply(params, x), axis=1)
    np.testing.assert_allclose(field, loop_field(mlp_apply, params, x, x0, STEPS, classes), rtol=1e-5, atol=1e-6)


def test_callable_target():
    params = init_mlp(0)
    x = inputs(N)
    by_callable = mg.gradient_field(mlp_apply, params, x, steps=STEPS, target=lambda out: out[1])
    by_index = mg.gradient_field(mlp_apply, params, x, steps=STEPS, target=1)
    np.testing.assert_allclose(by_callable, by_index, rtol=1e-6, atol=1e-7)
    # A non-linear functional: log-softmax of class 0.
    log_p0 = lambda out: jax.nn.log_softmax(out)[0]
    field = mg.gradient_field(mlp_apply, params, x, steps=STEPS, target=log_p0)
    alphas, weights = mg.gauss_legendre(STEPS)
    grad0 = jax.grad(lambda z: log_p0(mlp_apply(params, z[None])[0]))(alphas[0] * x[0])
    np.testing.assert_allclose(field[0, 0], weights[0] * (grad0 * x[0]).ravel(), rtol=1e-5, atol=1e-7)


def test_completeness_converges_with_steps():
    # IG completeness: sum_d G_K(x)[d] = F(x) - F(x0); the Gauss-Legendre error
    # decays exponentially for the analytic (tanh) integrand.
    with jax.enable_x64(True):
        params = init_mlp(3, dtype=np.float64)
        x = 2.0 * inputs(4, dtype=np.float64)
        x0 = 0.1 * jnp.ones(SHAPE, jnp.float64)
        classes = jnp.argmax(mlp_apply(params, x), axis=1)
        picked = lambda z: jnp.take_along_axis(mlp_apply(params, z), classes[:, None], axis=1)[:, 0]
        gap = picked(x) - picked(jnp.broadcast_to(x0, x.shape))
        errors = []
        for steps in (2, 4, 8, 16):
            field = mg.gradient_field(mlp_apply, params, x, baseline=x0, steps=steps)
            assert field.dtype == jnp.float64
            errors.append(float(jnp.max(jnp.abs(field[:, -1].sum(axis=1) - gap))))
        assert float(jnp.min(jnp.abs(gap))) > 1e-2  # The check is not vacuous.
        assert all(later < earlier for earlier, later in itertools.pairwise(errors)), errors
        assert errors[-1] < 1e-10, errors


def test_completeness_float32_default_steps():
    params = init_mlp(3)
    x = inputs(N)
    field = mg.gradient_field(mlp_apply, params, x)  # 50 steps, zero baseline.
    out, out0 = mlp_apply(params, x), mlp_apply(params, jnp.zeros_like(x))
    classes = jnp.argmax(out, axis=1)
    gap = jnp.take_along_axis(out - out0, classes[:, None], axis=1)[:, 0]
    np.testing.assert_allclose(field[:, -1].sum(axis=1), gap, rtol=1e-4, atol=1e-5)


def test_chunked_equals_unchunked():
    params = init_mlp(0)
    x = inputs(N)
    full = mg.gradient_field(mlp_apply, params, x, steps=STEPS)
    # Chunks of 2 leave a remainder of 1; a budget below one reference means chunks of 1.
    for kwargs in ({"chunk_size": 2}, {"memory_budget_bytes": 1}):
        chunked = mg.gradient_field(mlp_apply, params, x, steps=STEPS, **kwargs)
        np.testing.assert_allclose(chunked, full, rtol=1e-6, atol=1e-7, err_msg=str(kwargs))


def test_second_call_does_not_recompile():
    params = init_mlp(0)
    mg.gradient_field(mlp_apply, params, inputs(N), steps=STEPS)
    size = mg._gradient_field._cache_size()
    mg.gradient_field(mlp_apply, init_mlp(1), inputs(N, seed=9), steps=STEPS)
    assert mg._gradient_field._cache_size() == size


# ------------------------------------------------------------------------ distances


def test_distance_self_zero_symmetric_scale_invariant():
    x = inputs(N)
    fa = mg.gradient_field(mlp_apply, init_mlp(0), x, steps=STEPS)
    fb = mg.gradient_field(mlp_apply, init_mlp(1), x, steps=STEPS)
    np.testing.assert_allclose(mg.distance(fa, fa), 0.0, atol=1e-6)
    np.testing.assert_allclose(mg.distance(fa, 3.0 * fa), 0.0, atol=1e-6)
    np.testing.assert_allclose(mg.distance(fa, -fa), 2.0, atol=1e-6)
    d_ab, d_ba = mg.distance(fa, fb), mg.distance(fb, fa)
    np.testing.assert_allclose(d_ab, d_ba, rtol=1e-7)
    # Brute force: the definition, in float64 numpy.
    a, b = np.asarray(fa, np.float64), np.asarray(fb, np.float64)
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    np.testing.assert_allclose(d_ab, np.mean(1 - cos), rtol=1e-5)
    assert 0.05 < float(d_ab) < 2


def test_distance_zero_fields_are_defined():
    a = jnp.zeros((1, 2, 3)).at[0, 1].set(jnp.array([1.0, 0.0, 0.0]))
    b = jnp.zeros((1, 2, 3)).at[0, 1].set(jnp.array([1.0, 2.0, 0.0]))
    # Step 0: both zero, cos := 1. Step 1: ordinary cosine 1 / sqrt(5).
    np.testing.assert_allclose(mg.distance(a, b), (0 + 1 - 1 / np.sqrt(5)) / 2, rtol=1e-6)
    # One zero field: cos := 0. Tiny but non-zero fields keep their direction.
    np.testing.assert_allclose(mg.distance(jnp.zeros((1, 1, 3)), b[:, 1:]), 1.0)
    np.testing.assert_allclose(mg.distance(1e-30 * b, b), 0.0, atol=1e-6)
    assert np.isfinite(mg.distance(jnp.zeros((2, 2, 3)), jnp.zeros((2, 2, 3))))


def test_cross_architecture_distance():
    x = inputs(N)
    mlp, conv = init_mlp(0), init_conv(1)
    f_mlp = mg.gradient_field(mlp_apply, mlp, x, steps=STEPS)
    f_conv = mg.gradient_field(conv_apply, conv, x, steps=STEPS)
    d = mg.distance(f_mlp, f_conv)
    assert 0.1 < float(d) < 2
    matrix = mg.distance_matrix(
        Models.from_apply(mlp_apply, [mlp]), Models.from_apply(conv_apply, [conv]), x=x, steps=STEPS
    )
    assert matrix.shape == (1, 1)
    np.testing.assert_allclose(matrix[0, 0], d, rtol=1e-5)


def test_distance_matrix_population_matches_pairwise():
    x = inputs(N)
    models = [init_mlp(i) for i in range(3)]
    stacked = jax.tree.map(lambda *p: np.stack(p), *models)
    fields = jnp.stack([mg.gradient_field(mlp_apply, p, x, steps=STEPS) for p in models])
    brute = np.array([[mg.distance(fa, fb) for fb in fields] for fa in fields])

    from_fields = mg.distance_matrix(fields)
    np.testing.assert_allclose(from_fields, brute, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.diag(from_fields), 0.0, atol=1e-6)
    np.testing.assert_allclose(from_fields, from_fields.T, rtol=1e-6)
    pop = Models.from_apply(mlp_apply, stacked, stacked=True)
    for chunk in (None, 2):  # 2 does not divide N = 5: exercises the padded chunk.
        matrix = mg.distance_matrix(pop, x=x, steps=STEPS, chunk_size=chunk)
        np.testing.assert_allclose(matrix, brute, rtol=1e-5, atol=1e-6)
    compiled = mg._population_field._cache_size(), mg._cosine_per_reference._cache_size()
    mg.distance_matrix(pop, x=x + 1, steps=STEPS, chunk_size=2)  # Same shapes: no recompile.
    assert (mg._population_field._cache_size(), mg._cosine_per_reference._cache_size()) == compiled
    # Mixed sides, per-reference output; the budget holds 2 references of 1 + 3 fields.
    budget = 2 * (2 * 4 * STEPS * D * 4)
    per_ref = mg.distance_matrix(fields[:1], pop, x=x, steps=STEPS, per_reference=True, memory_budget_bytes=budget)
    assert per_ref.shape == (1, 3, N)
    np.testing.assert_allclose(per_ref.mean(-1), brute[:1], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ bad input


def test_bad_inputs_raise_with_shapes():
    params = init_mlp(0)
    x = inputs(N)
    with pytest.raises(ValueError, match=r"\(5, 5, 1\)"):
        mg.gradient_field(mlp_apply, params, jnp.ones((3, 5, 5, 1)))
    with pytest.raises(ValueError, match=r"baseline .*\(6, 6, 1\).*\(5, 6, 1\)"):
        mg.gradient_field(mlp_apply, params, x, baseline=jnp.zeros((5, 6, 1)))
    for steps in (0, -3, 2.5):
        with pytest.raises(ValueError, match="steps"):
            mg.gradient_field(mlp_apply, params, x, steps=steps)
    with pytest.raises(ValueError, match=r"target index 4 .* 4 classes"):
        mg.gradient_field(mlp_apply, params, x, target=4)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
        mg.gradient_field(mlp_apply, params, x, target="label", labels=jnp.array([0, 4, 1, 0, 0]))
    with pytest.raises(ValueError, match="needs labels"):
        mg.gradient_field(mlp_apply, params, x, target="label")
    with pytest.raises(ValueError, match="only used with"):
        mg.gradient_field(mlp_apply, params, x, labels=jnp.array([0, 1, 1, 0, 0]))
    with pytest.raises(ValueError, match="'predicted', 'label'"):
        mg.gradient_field(mlp_apply, params, x, target="logit")
    with pytest.raises(ValueError, match="floating"):
        mg.gradient_field(mlp_apply, params, jnp.ones((N, *SHAPE), jnp.int32))
    with pytest.raises(ValueError, match="chunk_size"):
        mg.gradient_field(mlp_apply, params, x, chunk_size=0)
    with pytest.raises(ValueError, match=r"\(3, 4, 36\).*\(3, 5, 36\)"):
        mg.distance(jnp.ones((3, 4, D)), jnp.ones((3, 5, D)))
    with pytest.raises(ValueError, match="leading model axis"):
        mg.distance_matrix(Models.from_apply(mlp_apply, {"w": np.ones((2, 3)), "b": np.ones(())}, stacked=True), x=x)
    with pytest.raises(ValueError, match="needs the reference points"):
        mg.distance_matrix(Models.from_apply(mlp_apply, [params]))
    with pytest.raises(ValueError, match=r"\[N, K, D\] = \(3, 4, 36\)"):
        mg.distance_matrix(jnp.ones((2, 3, 4, D)), Models.from_apply(mlp_apply, [params]), x=x, steps=STEPS)


# ------------------------------------------------------------------ reference points


def test_sample_references_random_and_balanced():
    x = np.arange(40, dtype=np.float32).reshape(40, 1, 1, 1)
    y = np.repeat(np.arange(4), [4, 10, 10, 16])
    xr, yr, idx = mg.sample_references(x, y, n=12, key=jax.random.key(0))
    assert len(set(idx.tolist())) == 12 and np.array_equal(xr[:, 0, 0, 0], idx) and np.array_equal(yr, y[idx])
    again = mg.sample_references(x, y, n=12, key=jax.random.key(0))[2]
    other = mg.sample_references(x, y, n=12, key=jax.random.key(1))[2]
    assert np.array_equal(idx, again) and not np.array_equal(idx, other)

    _, yb, idx = mg.sample_references(x, y, n=30, key=jax.random.key(0), strategy="class_balanced")
    assert len(set(idx.tolist())) == 30
    for m in range(1, 17):  # Every prefix is balanced while all classes last.
        counts = np.bincount(yb[:m], minlength=4)
        assert counts.max() - counts.min() <= 1, (m, counts)
    assert np.bincount(yb, minlength=4)[0] == 4  # Class 0 exhausted, the rest share.
    with pytest.raises(ValueError, match="n must be in"):
        mg.sample_references(x, y, n=41, key=jax.random.key(0))
    with pytest.raises(ValueError, match="needs labels"):
        mg.sample_references(x, n=3, key=jax.random.key(0), strategy=mg.ReferenceSampling.CLASS_BALANCED)


# ----------------------------------------------------------------- zoo evaluation


def _population(prefix, trees):
    """Models as an evaluation-layer population (one apply function, stacked parameters)."""
    from jaxlineage.eval import Population

    return Population(
        ids=tuple(f"{prefix}{i}" for i in range(len(trees))),
        params=jax.tree.map(lambda *p: jnp.stack(p), *trees),
        logits_fn=linear_apply,
        feature_fns={"logits": linear_apply},
        arch="linear",
    )


def _parents_children_independents():
    seeds = iter(range(100, 132))
    parents = [init_linear(next(seeds)) for _ in range(2)]
    children = [  # the parent's weights, slightly moved
        jax.tree.map(lambda a, b: a + 0.05 * b, p, init_linear(next(seeds))) for p in parents for _ in range(3)
    ]
    independents = [init_linear(next(seeds)) for _ in range(3)]
    return _population("p", parents), _population("q", children + independents)


def test_scorer_sweep_separates_children_from_independents():
    """Through the evaluation layer: per-reference distances, then the AUC by reference count (prefix means)."""
    from jaxlineage.eval import methods

    parents, queries = _parents_children_independents()
    x = np.asarray(inputs(20, seed=4))
    gif = methods.ModelGiFScorer(n_refs=8, steps=3, key=jax.random.key(0), chunk_size=3)
    d = gif.per_reference(parents, queries, probe=x)
    assert d.shape == (2, 9, 8)
    positive = np.zeros((2, 9), bool)
    positive[0, :3] = positive[1, 3:6] = True
    negative = np.zeros((2, 9), bool)
    negative[:, 6:] = True  # (parent, independent)
    first, last = methods.reference_sweep(d, positive, negative, n_refs=(2, 8))
    assert (last.num_pos, last.num_neg) == (6, 6)
    assert last.mean_pos < last.mean_neg and last.auc == 1.0 and last.tpr_at_1 == 1.0
    np.testing.assert_allclose(first.mean_pos, d[:, :, :2].mean(-1)[positive].mean())


def test_scorer_backbone_field_matches_distance_matrix():
    from jaxlineage.eval import methods

    parents, queries = _parents_children_independents()
    x = np.asarray(inputs(20, seed=4))
    gif = methods.ModelGiFScorer(field="logits", n_refs=4, steps=3, key=jax.random.key(1), chunk_size=None)
    assert gif.settings["target"] == "feature_sum"
    x_ref = x[gif.references(x)[2]]
    expected = mg.distance_matrix(
        Models.from_apply(linear_apply, parents.params, stacked=True),
        Models.from_apply(linear_apply, queries.params, stacked=True),
        x=x_ref,
        steps=3,
        target=mg.feature_sum,
        per_reference=True,
    )
    np.testing.assert_allclose(gif.per_reference(parents, queries, probe=x), expected, rtol=1e-6, atol=1e-7)
