"""Tests for jaxlineage.lineage on synthetic populations (no zoo needed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from jaxlineage import _pairing
from jaxlineage import lineage as LG
from jaxlineage import linearize as L
from jaxlineage import similarity as S
from jaxlineage.errors import path_str

Mode = L.Mode
DIN, HIDDEN = 5, 8


def _init(key, dtype=jnp.float32):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {
        "dense1": {
            "w": jax.random.normal(k1, (DIN, HIDDEN), dtype) / np.sqrt(DIN),
            "b": 0.3 * jax.random.normal(k2, (HIDDEN,), dtype),
        },
        "dense2": {"w": jax.random.normal(k3, (HIDDEN, HIDDEN), dtype) / np.sqrt(HIDDEN)},
        "head": {"w": jax.random.normal(k4, (HIDDEN, 3), dtype)},
    }


def features(params, x):
    h = jnp.tanh(x @ params["dense1"]["w"] + params["dense1"]["b"][None, :])
    return jnp.tanh(h @ params["dense2"]["w"])


def _stack(trees):
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *trees)


def _population(k=3, m=5, *, seed=0, drift=0.3, dtype=jnp.float32, n=9):
    """K random parents; child j fine-tunes parent j % K (a perturbation) with a new head."""
    keys = jax.random.split(jax.random.key(seed), k + m + 1)
    parents = [_init(keys[i], dtype) for i in range(k)]
    children = []
    for j in range(m):
        noise = _init(keys[k + j], dtype)
        child = jax.tree_util.tree_map(lambda p, e: p + drift * e, parents[j % k], noise)
        child["head"] = {"w": jnp.zeros((HIDDEN, 4), dtype)}
        children.append(child)
    x = jax.random.normal(keys[-1], (n, DIN), dtype)
    return parents, children, x, np.arange(m) % k


COMBO_METRICS = (S.get("l2"), S.get("linf"), S.get("cka", estimator="unbiased"), S.get("dcor"))


@pytest.mark.slow  # over 13 s on 2 loaded cores: the fast tier stays under 3 min
def test_score_matrices_equal_pairwise_similarity():
    parents, children, x, _ = _population()
    alphas = jnp.array([0.01, 0.5])
    # chunk_size=2 with M=5 exercises the padded last chunk.
    out = LG.score_matrices(COMBO_METRICS, features, _stack(parents), _stack(children), x, alpha=alphas, chunk_size=2)
    assert len(out) == 4 * 3 - 1  # no FIRST_ORDER for linf
    for (name, mode), scores in out.items():
        assert scores.shape == (2, 3, 5)
        metric = next(m for m in COMBO_METRICS if m.name == name)
        ref = np.stack(
            [
                np.stack(
                    [L.pair_similarity(metric, features, p, c, x, alpha=alphas, mode=mode) for c in children],
                    axis=-1,
                )
                for p in parents
            ],
            axis=-2,
        )
        np.testing.assert_allclose(scores, ref, rtol=2e-5, atol=1e-6, err_msg=f"{name} {mode}")


def test_predict_probabilities():
    parents, children, x, labels = _population(k=3, m=6, drift=0.05)
    s = LG.score_matrix("l2", features, _stack(parents), _stack(children), x, alpha=0.1, mode=Mode.PLAIN)
    assert s.shape == (3, 6)
    np.testing.assert_array_equal(LG.predict(s), labels)
    probs = LG.probabilities(s, temperature=0.01)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(jnp.argmax(probs, axis=0), labels)
    with pytest.raises(ValueError, match="temperature"):
        LG.probabilities(s, temperature=0.0)


@pytest.mark.slow  # over 13 s on 2 loaded cores: the fast tier stays under 3 min
def test_sharded_equals_unsharded_and_no_recompile():
    assert jax.device_count() >= 4, "conftest forces 4 CPU devices"
    parents, children, x, _ = _population(k=2, m=6, seed=1)
    mesh = Mesh(np.array(jax.devices()[:4]), ("children",))
    traces = []

    def counted(params, x):
        traces.append(1)
        return features(params, x)

    kwargs = {"alpha": jnp.array([0.01, 0.1]), "modes": (Mode.FIRST_ORDER, Mode.LINEARIZED)}
    metrics = (S.get("lp"), S.get("cka"))
    plain = LG.score_matrices(metrics, counted, _stack(parents), _stack(children), x, chunk_size=1, **kwargs)
    sharded = LG.score_matrices(metrics, counted, _stack(parents), _stack(children), x, mesh=mesh, **kwargs)
    assert plain.keys() == sharded.keys()
    for key in plain:
        np.testing.assert_allclose(sharded[key], plain[key], rtol=1e-5, atol=1e-7, err_msg=key)
    # A second population of the same shapes reuses the compiled scorer.
    parents2, children2, _, _ = _population(k=2, m=6, seed=2)
    n = len(traces)
    again = LG.score_matrices(metrics, counted, _stack(parents2), _stack(children2), x, mesh=mesh, **kwargs)
    assert len(traces) == n, "the second call re-traced (and so recompiled)"
    assert not np.allclose(again[("lp", Mode.LINEARIZED)], sharded[("lp", Mode.LINEARIZED)])


@pytest.mark.slow  # over 13 s on 2 loaded cores: the fast tier stays under 3 min
def test_float64_path():
    with jax.enable_x64(True):
        parents, children, x, _ = _population(k=2, m=3, seed=3, dtype=jnp.float64)
        out = LG.score_matrices(
            ("cka", "dcor"),
            features,
            _stack(parents),
            _stack(children),
            x,
            alpha=0.1,
            modes=Mode.FIRST_ORDER,
        )
        jax.block_until_ready(out)  # a dict keyed by (name, Mode) is a pytree
        for (name, mode), s in out.items():
            assert s.dtype == jnp.float64 and s.shape == (2, 3)
            ref = L.pair_similarity(name, features, parents[1], children[2], x, alpha=0.1, mode=mode)
            np.testing.assert_allclose(s[1, 2], ref, rtol=1e-12, err_msg=name)


def test_bad_input():
    parents, children, x, _ = _population(k=2, m=3, seed=4)
    p_stack, c_stack = _stack(parents), _stack(children)
    score = lambda p, c, xx=x, **kw: LG.score_matrix(kw.pop("metric", "l2"), features, p, c, xx, alpha=0.1, **kw)
    empty = jax.tree_util.tree_map(lambda a: a[:0], p_stack)
    with pytest.raises(ValueError, match="parents stack is empty"):
        score(empty, c_stack)
    bad = dict(c_stack, dense2={"w": jnp.zeros((3, HIDDEN, HIDDEN + 2))})
    with pytest.raises(
        ValueError,
        match=r"dense2/w: parents shape \(8, 8\),"
        r" children shape \(8, 10\)",
    ):
        score(p_stack, bad)
    nan = jax.tree_util.tree_map(lambda a: a, c_stack)
    nan["dense1"] = {
        "w": c_stack["dense1"]["w"].at[2, 0, 0].set(jnp.nan),
        "b": c_stack["dense1"]["b"],
    }
    with pytest.raises(
        ValueError,
        match=r"children\[2\] has NaN or inf parameters at"
        r" dense1/w",
    ):
        score(p_stack, nan)
    # The parameter check first sums each leaf (fast): a finite leaf whose sum overflows must not be
    # called non-finite, and an inf among huge values is still found and named.
    leaves = lambda tree: tuple(jax.tree_util.tree_leaves(tree))
    paths = tuple(path_str(k) for k, _ in jax.tree_util.tree_flatten_with_path(c_stack)[0])
    huge = jax.tree_util.tree_map(lambda a: a, c_stack)
    huge["dense2"] = {**c_stack["dense2"], "w": c_stack["dense2"]["w"].at[:, :2, 0].set(3e38)}
    assert not np.isfinite(np.sum(np.asarray(huge["dense2"]["w"])))
    check = lambda c: _pairing.check_finite_pair(
        leaves(p_stack), leaves(c), paths, names=("parents", "children"), stacked=True
    )
    check(huge)
    huge["dense2"]["w"] = huge["dense2"]["w"].at[1, 3, 3].set(jnp.inf)
    with pytest.raises(ValueError, match=r"children\[1\] has NaN or inf parameters at dense2/w"):
        check(huge)
    with pytest.raises(ValueError, match=r"probe batch x of shape \(9, 4\)"):
        score(p_stack, c_stack, x[:, :4])
    with pytest.raises(ValueError, match="Unknown metric 'l9'"):
        score(p_stack, c_stack, metric="l9")
    with pytest.raises(ValueError, match="Unknown mode 'exact'"):
        score(p_stack, c_stack, mode="exact")
    with pytest.raises(ValueError, match="not differentiable"):
        score(p_stack, c_stack, metric="linf", mode=Mode.FIRST_ORDER)
    ragged = dict(c_stack, dense2={"w": c_stack["dense2"]["w"][:2]})
    with pytest.raises(ValueError, match="leading model axis"):
        score(p_stack, ragged)
    with pytest.raises(ValueError, match="chunk_size"):
        score(p_stack, c_stack, chunk_size=0)


# evaluate() / the fold protocol on a zoo moved to the evaluation layer: tests/test_eval.py.


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finite_rows_is_all_isfinite_per_row(seed):
    # The sum-first check against its definition: rows with a NaN, an inf, both signs of inf, and
    # finite rows whose sum overflows float32.
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((12, 3, 7)).astype(np.float32)
    for row, value in zip(rng.choice(12, 6, replace=False), [np.nan, np.inf, -np.inf, 3e38, -3e38, 3e38]):
        a[row, rng.integers(3), rng.integers(7) : rng.integers(7) + 2] = value
    want = np.all(np.isfinite(a), axis=(1, 2))
    got = np.asarray(jax.jit(_pairing.finite_rows)(jnp.asarray(a)))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.asarray(jax.jit(_pairing.finite_rows)(jnp.asarray(a[want]))), want[want])
