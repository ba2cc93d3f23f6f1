"""Tests for jaxlineage.linearize: closed forms, full Jacobians, finite differences."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlineage import linearize as L
from jaxlineage import similarity as S

Mode = L.Mode
DIN, HIDDEN = 4, 6


def _init(key, *, din=DIN, hidden=HIDDEN, classes=3, dtype=jnp.float32):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {
        "dense1": {
            "w": jax.random.normal(k1, (din, hidden), dtype) / np.sqrt(din),
            "b": 0.3 * jax.random.normal(k2, (hidden,), dtype),
        },
        "dense2": {"w": jax.random.normal(k3, (hidden, hidden), dtype) / np.sqrt(hidden)},
        "head": {"w": jax.random.normal(k4, (hidden, classes), dtype)},
    }


def mlp_features(params, x):
    """A two-layer tanh MLP; the head is not used."""
    h = jnp.tanh(x @ params["dense1"]["w"] + params["dense1"]["b"][None, :])
    return jnp.tanh(h @ params["dense2"]["w"])


def linear_features(params, x):
    return x @ params["dense1"]["w"] + params["dense1"]["b"][None, :]


def _population(seed=0, *, n=7, scale=0.1, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(seed), 3)
    parent = _init(keys[0], dtype=dtype)
    noise = _init(keys[1], dtype=dtype)
    child = jax.tree_util.tree_map(lambda p, e: p + scale * e, parent, noise)
    child["head"] = {"w": jnp.zeros((HIDDEN, 5), dtype)}  # a different task's head
    x = jax.random.normal(keys[2], (n, DIN), dtype)
    return parent, child, x


def _used(tree):
    return {k: tree[k] for k in ("dense1", "dense2")}


@functools.partial(jax.jit, static_argnums=0)  # oracles are jitted too: fewer compilations
def _jacobian_jd(f, parent, child, x):
    """J_p Delta by contracting the full Jacobian of the whole batch (jacrev)."""
    p, c = _used(parent), _used(child)
    jac = jax.jacrev(lambda th: f(th, x))(p)  # leaves [N, D, *leaf.shape]
    delta = jax.tree_util.tree_map(jnp.subtract, c, p)
    terms = jax.tree_util.tree_map(lambda j, d: jnp.tensordot(j, d, axes=d.ndim), jac, delta)
    return sum(jax.tree_util.tree_leaves(terms))


# The paper's hand-derived weights grad_F s (official code, similarity/approx.py).
def _w_l2(d, n):
    return -2 * d / n


def _w_l1(d, n):
    return -jnp.sign(d) / n


def _w_lp(d, n, p=4.0):
    return -p * jnp.sign(d) * jnp.abs(d) ** (p - 1) / n


def _w_lse(d, n, t=0.01):
    return -jnp.sign(d) * jax.nn.softmax(t * jnp.abs(d), axis=1) / n


CLOSED_FORMS = {"l1": _w_l1, "l2": _w_l2, "lp": _w_lp, "lse": _w_lse}


# ---------------------------------------------------------------------------
# Oracles.


def test_taylor_features_match_full_jacobian_and_finite_differences():
    with jax.enable_x64(True):
        parent, child, x = _population(dtype=jnp.float64)
        f_p, jd = L.feature_jvp(mlp_features, parent, child, x)
        assert jd.dtype == jnp.float64 and jd.shape == (7, HIDDEN)
        np.testing.assert_allclose(jd, _jacobian_jd(mlp_features, parent, child, x), rtol=1e-12, atol=1e-14)
        # Central finite difference along Delta, O(h^2) accurate.
        h = 1e-5
        delta = jax.tree_util.tree_map(jnp.subtract, _used(child), _used(parent))
        shifted = lambda s: jax.tree_util.tree_map(lambda p, d: p + s * h * d, _used(parent), delta)
        fd = jax.jit(lambda: (mlp_features(shifted(1), x) - mlp_features(shifted(-1), x)) / (2 * h))()
        np.testing.assert_allclose(jd, fd, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(f_p, mlp_features(parent, x), rtol=1e-14)
        alphas = jnp.array([0.0, 0.5, 2.0])
        tf = L.taylor_features(mlp_features, parent, child, x, alpha=alphas)
        assert tf.shape == (3, 7, HIDDEN)
        for i, a in enumerate(alphas):
            np.testing.assert_allclose(tf[i], f_p + a * jd, rtol=1e-14)


def test_linearisation_is_exact_for_a_linear_model():
    parent, child, x = _population(scale=1.0)
    f_c = linear_features(child, x)
    np.testing.assert_allclose(
        L.taylor_features(linear_features, parent, child, x, alpha=1.0), f_c, rtol=1e-5, atol=1e-5
    )
    # So LINEARIZED at alpha = 1 compares the child with itself: the maximum.
    for metric in ("l2",):
        np.testing.assert_allclose(
            L.pair_similarity(metric, linear_features, parent, child, x, alpha=1.0), 0.0, atol=1e-5
        )
    for metric in ("cka",):
        np.testing.assert_allclose(
            L.pair_similarity(metric, linear_features, parent, child, x, alpha=1.0), 1.0, rtol=1e-5
        )


@pytest.mark.parametrize("dtype,rtol", [(jnp.float32, 1e-4), (jnp.float64, 1e-10)])
def test_first_order_equals_paper_closed_form_weights(dtype, rtol):
    with jax.enable_x64(dtype == jnp.float64):
        parent, child, x = _population(seed=1, dtype=dtype)
        f_p, f_c = mlp_features(parent, x), mlp_features(child, x)
        jd = _jacobian_jd(mlp_features, parent, child, x)
        alphas = jnp.array([0.0, 1e-2, 1.0], dtype)
        for name, weight_fn in CLOSED_FORMS.items():
            metric = S.get(name)
            got = L.pair_similarity(metric, mlp_features, parent, child, x, alpha=alphas, mode=Mode.FIRST_ORDER)
            assert got.dtype == dtype and got.shape == (3,)
            s0 = metric(f_p, f_c)
            np.testing.assert_allclose(got[0], s0, rtol=rtol, err_msg=name)
            # The first-order correction itself against the paper's weights.
            correction = alphas * jnp.sum(weight_fn(f_p - f_c, f_p.size) * jd)
            assert abs(float(correction[-1])) > 1e-4 * abs(float(s0)), name  # not vacuous
            # Subtracting s0 costs ~eps |s0| absolute (lse sits at ~ -log(D)/(tD)).
            atol = 16 * float(jnp.finfo(dtype).eps) * abs(float(s0))
            np.testing.assert_allclose(got - got[0], correction, rtol=rtol, atol=atol, err_msg=name)


def test_linearized_agrees_with_first_order_to_first_order():
    with jax.enable_x64(True):
        parent, child, x = _population(seed=2, dtype=jnp.float64)
        alphas = jnp.array([0.0, 1e-2, 1e-3])
        for metric in (
            S.get("l1"),
            S.get("lp"),
            S.get("lse"),
            S.get("cka", estimator=S.CKAEstimator.UNBIASED),
            S.get("dcor"),
        ):
            lin = L.pair_similarity(metric, mlp_features, parent, child, x, alpha=alphas, mode=Mode.LINEARIZED)
            fo = L.pair_similarity(metric, mlp_features, parent, child, x, alpha=alphas, mode=Mode.FIRST_ORDER)
            s0 = metric(mlp_features(parent, x), mlp_features(child, x))
            np.testing.assert_allclose([lin[0], fo[0]], [s0, s0], rtol=1e-13)
            gap = np.abs(np.asarray(lin - fo))[1:]
            step = np.abs(np.asarray(fo - fo[0]))[1:]
            # The gap is second order: 10x smaller alpha -> ~100x smaller gap (or 0
            # up to rounding for the piecewise-linear l1), and far below the
            # first-order step itself.
            assert gap[1] <= 0.02 * gap[0] + 1e-12 * step[1], metric.name
            assert gap[1] < 1e-2 * step[1], metric.name


def test_stepwise_baseline_matches_jvp_path():
    parent, child, x = _population(seed=3)
    alphas = jnp.array([0.05, 1.0])
    jd = L.feature_jvp(mlp_features, parent, child, x)[1]
    for row_chunk in (None, 4):
        np.testing.assert_allclose(
            L.stepwise_feature_jvp(mlp_features, parent, child, x, row_chunk=row_chunk),
            jd,
            rtol=1e-5,
            atol=1e-6,
        )
    for metric, mode in [
        ("l2", Mode.FIRST_ORDER),
        ("cka", Mode.FIRST_ORDER),
        ("linf", Mode.LINEARIZED),
    ]:
        fast = L.pair_similarity(metric, mlp_features, parent, child, x, alpha=alphas, mode=mode)
        slow = L.stepwise_similarity(metric, mlp_features, parent, child, x, alpha=alphas, mode=mode)
        np.testing.assert_allclose(fast, slow, rtol=2e-5, atol=1e-7, err_msg=metric)


def test_alpha_sweep_costs_one_network_pass_and_matches_scalar_calls():
    parent, child, x = _population(seed=4)
    traces = []

    def counted(params, x):
        traces.append(1)
        return mlp_features(params, x)

    alphas = [0.001, 0.1, 1.0]
    for mode in (Mode.LINEARIZED, Mode.FIRST_ORDER):
        traces.clear()
        kw = {"alpha": jnp.array(alphas), "mode": mode}
        sweep = L.pair_similarity("l2", counted, parent, child, x, fast_path=False, **kw)
        # One trace to find the used leaves (first call only), then one for F_c
        # and one jvp for F_p: independent of the number of alphas.
        assert len(traces) == 2 + (mode is Mode.LINEARIZED), (mode, len(traces))
        # The fast path traces the function once more, to split it, and never again.
        traces.clear()
        np.testing.assert_allclose(L.pair_similarity("l2", counted, parent, child, x, **kw), sweep, rtol=1e-6)
        assert len(traces) == (mode is Mode.LINEARIZED), (mode, len(traces))
        for a, s in zip(alphas, sweep):
            np.testing.assert_allclose(
                L.pair_similarity("l2", counted, parent, child, x, alpha=a, mode=mode), s, rtol=1e-6
            )


def _largest_intermediate(fn, *args):
    def walk(jaxpr):
        sizes = [0]
        for eqn in jaxpr.eqns:
            sizes += [int(np.prod(v.aval.shape)) for v in eqn.outvars if hasattr(v.aval, "shape")]
            for param in eqn.params.values():
                inner = getattr(param, "jaxpr", param)
                if hasattr(inner, "eqns"):
                    sizes.append(walk(inner))
        return max(sizes)

    return walk(jax.make_jaxpr(fn)(*args).jaxpr)


def test_no_jacobian_is_materialised():
    # Every intermediate of the jvp path is far smaller than the Jacobian block of
    # the largest parameter (D x 36 here); the baseline materialises it.
    parent, child, x = _population(seed=5, n=3)
    pruned, p, c, xx = L._prepare(mlp_features, parent, child, x)
    jac_block = HIDDEN * max(l.size for l in p)
    args = (p, c, xx, jnp.array([0.1, 1.0]))
    metric = S.get("l2")
    for mode in Mode:
        fast = functools.partial(L._similarity_core, metric=metric, mode=mode, pruned=pruned)
        assert _largest_intermediate(fast, *args) <= jac_block // 4, mode
    slow = functools.partial(L._stepwise_core, metric=metric, mode=Mode.LINEARIZED, pruned=pruned, row_chunk=None)
    assert _largest_intermediate(slow, *args) >= jac_block


# ---------------------------------------------------------------------------
# jit, float64, bad input.


def test_jit_no_recompile_and_traced_use():
    parent, child, x = _population(seed=6)
    parent2, child2, _ = _population(seed=7)
    traces = []

    def counted(params, x):
        traces.append(1)
        return mlp_features(params, x)

    first = L.pair_similarity("cka", counted, parent, child, x, alpha=0.1)
    n = len(traces)
    second = L.pair_similarity("cka", counted, parent2, child2, x, alpha=0.2)
    assert len(traces) == n, "the second call re-traced (and so recompiled)"
    assert first != second
    # Usable inside a user's jit (value checks are then skipped).
    user = jax.jit(lambda p, c: L.pair_similarity("cka", mlp_features, p, c, x, alpha=0.1))
    np.testing.assert_allclose(user(parent, child), first, rtol=1e-6)


def test_float64_path():
    with jax.enable_x64(True):
        parent, child, x = _population(seed=8, dtype=jnp.float64)
        s = L.pair_similarity("cka", mlp_features, parent, child, x, alpha=0.1)
        assert s.dtype == jnp.float64
        f32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), (parent, child, x))
    s32 = L.pair_similarity("cka", mlp_features, *f32, alpha=0.1)
    assert s32.dtype == jnp.float32
    np.testing.assert_allclose(s32, s, rtol=1e-4)


def test_mismatched_trees_name_path_and_shapes():
    parent, child, x = _population(seed=9)
    # Heads differ (unused): fine. A used leaf differing in shape: error.
    L.pair_similarity("l2", mlp_features, parent, child, x, alpha=0.1)
    bad = jax.tree_util.tree_map(lambda a: a, child)
    bad["dense2"] = {"w": jnp.zeros((HIDDEN, HIDDEN + 1))}
    with pytest.raises(ValueError, match=r"dense2/w.*\(6, 6\).*\(6, 7\)"):
        L.pair_similarity("l2", mlp_features, parent, bad, x, alpha=0.1)
    missing = {"dense1": child["dense1"]}
    with pytest.raises(ValueError, match=r"no leaf at dense2/w"):
        L.pair_similarity("l2", mlp_features, parent, missing, x, alpha=0.1)
    wrong_dtype = jax.tree_util.tree_map(lambda a: a.astype(jnp.int32), child)
    with pytest.raises(ValueError, match="dtype"):
        L.taylor_features(mlp_features, parent, wrong_dtype, x, alpha=0.1)


def test_non_finite_inputs_raise():
    parent, child, x = _population(seed=10)
    nan_child = jax.tree_util.tree_map(lambda a: a, child)
    nan_child["dense2"] = {"w": child["dense2"]["w"].at[0, 0].set(jnp.nan)}
    with pytest.raises(ValueError, match=r"child has NaN or inf parameters at dense2/"):
        L.pair_similarity("l2", mlp_features, parent, nan_child, x, alpha=0.1)
    inf_parent = jax.tree_util.tree_map(lambda a: a, parent)
    inf_parent["dense1"] = {
        "w": parent["dense1"]["w"],
        "b": parent["dense1"]["b"].at[1].set(jnp.inf),
    }
    with pytest.raises(ValueError, match=r"parent has NaN or inf parameters at dense1/b"):
        L.feature_jvp(mlp_features, inf_parent, child, x)
    # A NaN in the unused head is irrelevant and accepted.
    head_nan = jax.tree_util.tree_map(lambda a: a, child)
    head_nan["head"] = {"w": jnp.full((HIDDEN, 5), jnp.nan)}
    L.pair_similarity("l2", mlp_features, parent, head_nan, x, alpha=0.1)
    log_features = lambda p, x: jnp.log(mlp_features(p, x))  # NaN for negative features
    with pytest.raises(ValueError, match="NaN or inf .*features"):
        L.pair_similarity("l2", log_features, parent, child, x, alpha=0.1, mode=Mode.PLAIN)


def test_bad_arguments_raise():
    parent, child, x = _population(seed=11)
    with pytest.raises(ValueError, match="Unknown metric 'l7'"):
        L.pair_similarity("l7", mlp_features, parent, child, x, alpha=0.1)
    with pytest.raises(ValueError, match=r"Unknown mode 'taylor'.*'linearized'"):
        L.pair_similarity("l2", mlp_features, parent, child, x, alpha=0.1, mode="taylor")
    with pytest.raises(ValueError, match="not differentiable.*LINEARIZED"):
        L.pair_similarity("linf", mlp_features, parent, child, x, alpha=0.1, mode=Mode.FIRST_ORDER)
    for alpha in (jnp.ones((2, 2)), float("nan"), []):
        with pytest.raises(ValueError, match="alpha"):
            L.pair_similarity("l2", mlp_features, parent, child, x, alpha=alpha)
    with pytest.raises(ValueError, match=r"probe batch x of shape \(7, 5\)"):
        L.pair_similarity("l2", mlp_features, parent, child, jnp.ones((7, DIN + 1)), alpha=0.1)
    with pytest.raises(ValueError, match=r"N >= 1"):
        L.pair_similarity("l2", mlp_features, parent, child, x[:0], alpha=0.1)
    with pytest.raises(ValueError, match=r"N = 7"):
        L.pair_similarity("l2", lambda p, x: mlp_features(p, x)[:3], parent, child, x, alpha=0.1)


def test_alpha_is_optional_only_for_plain():
    parent, child, x = _population(seed=8)
    plain = L.pair_similarity("l2", mlp_features, parent, child, x, mode="plain")
    np.testing.assert_allclose(plain, L.pair_similarity("l2", mlp_features, parent, child, x, alpha=0.3, mode="plain"))
    for mode in ("first_order", "linearized"):
        with pytest.raises(ValueError, match=f"alpha is required by mode '{mode}'"):
            L.pair_similarity("l2", mlp_features, parent, child, x, mode=mode)


def test_used_leaves_and_lower_expose_the_kernel():
    parent, child, x = _population(0)
    used = L.used_leaves(mlp_features, parent, child, x)
    assert used.fn.used_paths == ("dense1/b", "dense1/w", "dense2/w")
    np.testing.assert_allclose(used.fn(used.parent, used.x), mlp_features(parent, x), rtol=1e-6)
    assert len(used.child) == len(used.parent) == 3  # the head is not read
    jvp = L.lower("l2", mlp_features, parent, child, x, alpha=0.01).compile()
    step = L.lower("l2", mlp_features, parent, child, x, alpha=0.01, stepwise=True).compile()
    np.testing.assert_allclose(
        jvp(used.parent, used.child, used.x, np.asarray(0.01))[0],
        L.pair_similarity("l2", mlp_features, parent, child, x, alpha=0.01),
        rtol=1e-6,
    )
    # The stepwise baseline materialises per-sample Jacobian rows; the jvp path does not.
    assert step.memory_analysis().temp_size_in_bytes > jvp.memory_analysis().temp_size_in_bytes
    with pytest.raises(ValueError, match="dense2"):
        L.used_leaves(mlp_features, parent, {**child, "dense2": {"w": child["dense2"]["w"][:, :2]}}, x)


def test_second_call_with_the_same_structure_does_no_analysis(monkeypatch):
    # The structural checks run once per (feature_fn, tree structure, leaf shapes / dtypes, probe
    # shape); a second call only flattens and looks up. Every check still applies to new keys.
    from jaxlineage import _pairing

    parent, child, x = _population(seed=11)
    parent2, child2, _ = _population(seed=12)
    L.pair_similarity("l2", mlp_features, parent, child, x, alpha=0.1)
    calls = []
    analyse = _pairing._analyse_boundary
    monkeypatch.setattr(_pairing, "_analyse_boundary", lambda *a, **k: calls.append(1) or analyse(*a, **k))
    got = L.pair_similarity("l2", mlp_features, parent2, child2, x, alpha=0.1)
    assert calls == []
    np.testing.assert_allclose(
        got, L.pair_similarity("l2", mlp_features, parent2, child2, x, alpha=0.1, fast_path=False), rtol=1e-5
    )
    bad = {**child2, "dense1": {"w": child2["dense1"]["w"][:, :-1], "b": child2["dense1"]["b"]}}
    with pytest.raises(ValueError, match=r"differ at dense1/w"):
        L.pair_similarity("l2", mlp_features, parent2, bad, x, alpha=0.1)
    assert calls == [1]
