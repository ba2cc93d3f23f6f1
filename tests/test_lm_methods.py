"""ModelGiF in token space and Model DNA on next-token logits, for the transformer LM.

Oracles: the token field against finite-difference gradients at the Gauss-Legendre nodes and
against a brute-force midpoint Riemann sum of the path integral (float64); completeness; the
soft-token path equals the int-token forward at one-hot points; the field is unchanged by the
LM's permutation symmetries.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlineage import mgmp, nets, permutations
from jaxlineage import modelgif as mg
from jaxlineage.nets_lm import transformer_lm

V, T = 6, 4


@functools.cache
def _model(seed=0):
    net = transformer_lm(V, d_model=8, num_heads=2, num_layers=1, mlp_dim=12, max_len=T)
    params = net.init(jax.random.key(seed))
    # O(1) weights so that the log-likelihood is far from linear along the path.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    params = jax.tree.unflatten(treedef, [w + 0.5 * jax.random.normal(k, w.shape) for k, w in zip(keys, leaves)])
    return net, params


def _tokens(n=2, seed=3):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (n, T)).astype(np.int32), rng.integers(0, V, (n, T)).astype(np.int32)


def _loglik64(net, params, z, y):
    """F(z) = sum_t log softmax(f(z)_t)[y_t] for soft tokens z [T, V] (float64)."""
    logp = jax.nn.log_softmax(net.logits_fn(params, z[None])[0], axis=-1)
    return jnp.sum(jnp.take_along_axis(logp, y[:, None], axis=-1))


def _fd_grads(f, zs, h=1e-5):
    """Central finite differences of a scalar f at each point of zs [P, T, V], every coordinate (no autodiff)."""
    zs = np.asarray(zs)
    d = zs[0].size
    eye = np.eye(d).reshape(d, *zs.shape[1:])
    pts = np.concatenate([zs[:, None] + h * eye[None], zs[:, None] - h * eye[None]], axis=1)  # [P, 2d, T, V]
    vals = np.asarray(jax.jit(jax.vmap(f))(jnp.asarray(pts.reshape(-1, *zs.shape[1:])))).reshape(len(zs), 2 * d)
    return ((vals[:, :d] - vals[:, d:]) / (2 * h)).reshape(zs.shape)


@pytest.mark.slow  # 11 s in the full suite on 2 cores (the LM init and its first compilations)
def test_soft_tokens_at_one_hot_points_equal_the_int_forward():
    net, params = _model()
    x, _ = _tokens()
    a = net.logits_fn(params, jnp.asarray(x))
    b = net.logits_fn(params, jax.nn.one_hot(x, V))
    np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match=r"soft tokens must be \[N, T, 6\]"):
        net.logits_fn(params, jnp.ones((1, T, V + 1)))


@pytest.mark.slow  # 13 s on 2 cores (float64 compilations)
def test_token_field_equals_finite_differences_at_the_nodes():
    with jax.enable_x64(True):
        net, params = _model()
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x, y = _tokens()
        steps = 4
        g = np.asarray(
            mg.token_field(net.logits_fn, params, x, y, vocab_size=V, steps=steps, dtype=jnp.float64, name="tiny")
        )
        assert g.shape == (2, steps, T * V) and g.dtype == np.float64
        alphas, weights = np.polynomial.legendre.leggauss(steps)
        alphas, weights = (alphas + 1) / 2, weights / 2
        for n in range(2):
            one_hot = np.eye(V)[x[n]]
            x0 = np.full((T, V), 1.0 / V)
            f = functools.partial(_loglik64, net, params, y=jnp.asarray(y[n]))
            grads = _fd_grads(f, x0[None] + alphas[:, None, None] * (one_hot - x0)[None])
            expected = np.cumsum(weights[:, None, None] * grads, axis=0) * (one_hot - x0)
            np.testing.assert_allclose(g[n], expected.reshape(steps, -1), rtol=1e-6, atol=1e-8)


@pytest.mark.slow  # ~15 s on 2 loaded cores (9600 float64 forwards for the finite differences)
def test_token_field_integral_equals_a_brute_force_riemann_sum_and_is_complete():
    with jax.enable_x64(True):
        net, params = _model(seed=4)
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x, y = _tokens(n=1, seed=5)
        g = np.asarray(mg.token_field(net.logits_fn, params, x, y, vocab_size=V, steps=24, dtype=jnp.float64))
        one_hot, x0 = np.eye(V)[x[0]], np.full((T, V), 1.0 / V)
        f = functools.partial(_loglik64, net, params, y=jnp.asarray(y[0]))
        m = 200  # midpoint rule, error O(1 / m^2)
        mids = (np.arange(m) + 0.5) / m
        integral = _fd_grads(f, x0[None] + mids[:, None, None] * (one_hot - x0)[None]).mean(axis=0)
        np.testing.assert_allclose(g[0, -1], (integral * (one_hot - x0)).ravel(), rtol=1e-3, atol=1e-6)
        # Completeness: sum_d G_K = F(x) - F(x0), to the 24-node Gauss-Legendre error (a smooth model).
        np.testing.assert_allclose(g[0, -1].sum(), f(jnp.asarray(one_hot)) - f(jnp.asarray(x0)), rtol=1e-6)


@pytest.mark.slow  # 10 s on 2 cores (the token field's first compilation)
def test_token_field_default_targets_are_the_shifted_window():
    net, params = _model()
    x, _ = _tokens()
    shifted = np.concatenate([x[:, 1:], x[:, :1]], axis=1)
    a = mg.token_field(net.logits_fn, params, x, vocab_size=V, steps=3)
    # With targets given, the last position counts too; the zero baseline gives a field on the true tokens only.
    b = mg.token_field(net.logits_fn, params, x, shifted, vocab_size=V, steps=3)
    assert not np.allclose(a, b)
    z = np.asarray(mg.token_field(net.logits_fn, params, x, vocab_size=V, steps=3, baseline="zero"))
    off = np.ones((2, T, V), bool)
    off[np.arange(2)[:, None], np.arange(T)[None], x] = False
    zr = z.reshape(2, 3, T, V)
    assert all(np.all(zr[n][:, off[n]] == 0) for n in range(2)) and np.abs(z).sum() > 0


@pytest.mark.slow  # ~10 s on 2 loaded cores (three 2-block models, two compilations)
def test_token_field_is_invariant_to_the_lm_symmetries_and_chunking():
    net = transformer_lm(V, d_model=8, num_heads=2, num_layers=2, mlp_dim=12, max_len=T)
    params = net.init(jax.random.key(7))
    perm = permutations.permute_params(params, permutations.transformer_lm_spec(params), jax.random.key(8))
    x, y = _tokens(n=3)
    fa = mg.token_field(net.logits_fn, params, x, y, vocab_size=V, steps=4)
    fb = mg.token_field(net.logits_fn, perm, x, y, vocab_size=V, steps=4, chunk_size=2)
    assert float(mg.distance(fa, fb)) < 1e-5
    other = mg.token_field(net.logits_fn, net.init(jax.random.key(9)), x, y, vocab_size=V, steps=4)
    assert float(mg.distance(fa, other)) > 1e-2


@pytest.mark.slow  # 9 s on 2 cores (compilations of the field on three bad inputs): the fast tier stays under 3 min
def test_token_field_errors_name_the_model():
    net, params = _model()
    x, y = _tokens()
    with pytest.raises(ValueError, match="non-empty batch"):
        mg.token_field(net.logits_fn, params, x[:0], vocab_size=V, name="lm-a")
    with pytest.raises(ValueError, match=r"'lm-a'.*tokens must be in \[0, 6\)"):
        mg.token_field(net.logits_fn, params, x + V, vocab_size=V, name="lm-a")
    with pytest.raises(ValueError, match="targets must be integers"):
        mg.token_field(net.logits_fn, params, x, y[:1], vocab_size=V, name="lm-a")
    clf = nets.mlp(V, features=(8,), input_shape=(T,))
    with pytest.raises(ValueError, match="model 'classifier-b'"):
        mg.token_field(clf.logits_fn, clf.init(jax.random.key(0)), x, vocab_size=V, name="classifier-b")
    with pytest.raises(ValueError, match="baseline"):
        mg.token_field(net.logits_fn, params, x, vocab_size=V, baseline="mean")


@pytest.mark.slow  # ~12 s on 2 loaded cores (Model DNA's training step compiles)
def test_next_token_outputs_are_centred_last_logits_and_train_model_dna():
    net, params = _model()
    fn = mgmp.next_token_outputs(net.logits_fn, vocab_size=V, name="tiny")
    x, _ = _tokens(n=5)
    out = fn(params, jnp.asarray(x, jnp.float32))
    last = np.asarray(net.logits_fn(params, jnp.asarray(x)))[:, -1]
    np.testing.assert_allclose(out, last - last.mean(-1, keepdims=True), atol=1e-5)
    # Model DNA trains on these fragments: a pool of the source's noisy copies vs other initialisations.
    xs = np.random.default_rng(0).integers(0, V, (16, T)).astype(np.float32)
    noisy = [jax.tree.map(lambda w, i=i: w + 0.01 * (i + 1), params) for i in range(2)]
    others = [_model(seed=10 + i)[1] for i in range(2)]
    stack = lambda ps: jax.tree.map(lambda *a: jnp.stack(a), *ps)  # noqa: E731
    outs = mgmp.PoolOutputs(
        mgmp.population_outputs(fn, stack(noisy), jnp.asarray(xs)), mgmp.population_outputs(fn, stack(others), xs)
    )
    cfg = mgmp.Config(num_steps=20, batch_size=8, generator="none")
    state, hist = mgmp.train((fn, params), outs, xs, cfg, key=jax.random.key(0))
    assert hist["bce"].shape == (20,) and np.all(np.isfinite(hist["bce"]))


def test_next_token_outputs_reject_a_classifier_by_name():
    clf = nets.mlp(V, features=(8,), input_shape=(T,))
    fn = mgmp.next_token_outputs(clf.logits_fn, vocab_size=V, name="classifier-b")
    with pytest.raises(mgmp.MGMPError, match="'classifier-b' is not a language model"):
        fn(clf.init(jax.random.key(0)), jnp.zeros((2, T)))
