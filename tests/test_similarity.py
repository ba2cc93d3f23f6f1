"""Tests for jaxlineage.similarity: brute-force oracles, invariants, degenerate inputs."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlineage import similarity as S

UNBIASED = S.CKAEstimator.UNBIASED


def _data(seed, n=12, d=5, noise=0.5, dtype=np.float32):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d))
    b = a + noise * rng.normal(size=(n, d))
    return a.astype(dtype), b.astype(dtype)


@contextlib.contextmanager
def _precision(dtype):
    if dtype == np.float64:
        with jax.enable_x64(True):
            yield
    else:
        yield


# ---------------------------------------------------------------------------
# Brute-force oracles in float64 numpy, written from the papers' formulas.


def _np_cka_biased(x, y):
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T
    hsic = lambda k, l: np.trace(k @ h @ l @ h)
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def _np_hsic_song(k, l):
    """Song et al. (2012), Eq. (5), literally."""
    n = k.shape[0]
    k = k - np.diag(np.diag(k))
    l = l - np.diag(np.diag(l))
    one = np.ones(n)
    return (
        np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * one @ k @ l @ one
    ) / (n * (n - 3))


def _np_cka_unbiased(x, y):
    k, l = x @ x.T, y @ y.T
    return _np_hsic_song(k, l) / np.sqrt(_np_hsic_song(k, k) * _np_hsic_song(l, l))


def _np_dcor(x, y):
    def centred_distances(z):
        d = np.linalg.norm(z[:, None, :] - z[None, :, :], axis=-1)
        return d - d.mean(0, keepdims=True) - d.mean(1, keepdims=True) + d.mean()

    a, b = centred_distances(x), centred_distances(y)
    return (a * b).mean() / np.sqrt((a * a).mean() * (b * b).mean())


def _np_lse(x, y, t):
    z = np.minimum(t * np.abs(x - y), 10.0)
    m = z.max(1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(z - m).sum(1))) / t
    return -lse.sum() / x.size


ORACLES = {
    "l1": lambda x, y: -np.abs(x - y).mean(),
    "l2": lambda x, y: -((x - y) ** 2).mean(),
    "lp": lambda x, y: -(np.abs(x - y) ** 4).mean(),
    "linf": lambda x, y: -np.abs(x - y).max(1).mean(),
    "lse": lambda x, y: _np_lse(x, y, 0.01),
    "cka": _np_cka_biased,
    "cka(estimator=unbiased)": _np_cka_unbiased,
    "dcor": _np_dcor,
}


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 2e-5), (np.float64, 1e-11)])
def test_metrics_match_brute_force_and_keep_dtype(dtype, rtol):
    a, b = _data(0, dtype=dtype)
    # lse with a spread of differences so that the clamp at 10 is active somewhere.
    a_big = a.copy()
    a_big[0, 0] += 3000.0
    with _precision(dtype):
        for metric in S.all_metrics():
            pairs = [(a, b), (a_big, b)] if metric.name == "lse" else [(a, b)]
            for x, y in pairs:
                got = metric(jnp.asarray(x), jnp.asarray(y))
                want = ORACLES[metric.name](x.astype(np.float64), y.astype(np.float64))
                assert got.dtype == dtype, metric.name
                np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 1e-3, err_msg=metric.name)


def test_lp_hyperparameter_and_cka_paths():
    a, b = _data(1, n=10, d=3)
    np.testing.assert_allclose(S.get("lp", p=3)(a, b), -(np.abs(a - b) ** 3).mean(), rtol=1e-5)
    np.testing.assert_allclose(S.lp(a, b, p=2.5), -(np.abs(a - b) ** 2.5).mean(), rtol=1e-5)
    np.testing.assert_allclose(S.lp(a, b, p=2), S.l2(a, b), rtol=1e-6)
    # Feature-space ([D, D], D < N) and sample-space ([N, N], D > N) biased CKA,
    # and different widths for a and b.
    rng = np.random.default_rng(2)
    for n, da, db in [(20, 3, 4), (6, 30, 9)]:
        x, y = rng.normal(size=(n, da)), rng.normal(size=(n, db))
        np.testing.assert_allclose(S.cka(x, y), _np_cka_biased(x, y), rtol=1e-5)
        np.testing.assert_allclose(S.cka(x, y, estimator="unbiased"), _np_cka_unbiased(x, y), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(S.dcor(x, y), _np_dcor(x, y), rtol=1e-5)


# ---------------------------------------------------------------------------
# Invariants on random data.


@pytest.mark.parametrize("seed", [0, 1])
def test_self_similarity_is_maximal(seed):
    a, _ = _data(seed, n=10, d=6)
    rng = np.random.default_rng(100 + seed)
    others = [a + s * rng.normal(size=a.shape).astype(np.float32) for s in (1e-2, 0.3, 3.0)]
    others.append(rng.normal(size=a.shape).astype(np.float32))
    for metric in S.all_metrics():
        self_s = metric(a, a)
        for b in others:
            assert self_s >= metric(a, b) - 1e-6, metric.name
    for name in ("cka", "dcor"):
        np.testing.assert_allclose(S.get(name)(a, a), 1.0, rtol=1e-6)
    np.testing.assert_allclose(S.cka(a, a, estimator=UNBIASED), 1.0, rtol=1e-6)
    for name in ("l1", "l2", "lp", "linf"):
        assert S.get(name)(a, a) == 0.0


@pytest.mark.parametrize("estimator", list(S.CKAEstimator))
def test_cka_invariant_to_orthogonal_maps_scaling_translation(estimator):
    rng = np.random.default_rng(3)
    for n, d in [(15, 4), (6, 11)]:  # feature-space and sample-space paths
        a = rng.normal(size=(n, d)).astype(np.float32)
        b = (a @ rng.normal(size=(d, d)) + rng.normal(size=(n, d))).astype(np.float32)
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        ref = S.cka(a, b, estimator=estimator)
        moved = (7.5 * b @ q + 3.0).astype(np.float32)
        np.testing.assert_allclose(S.cka(a, moved, estimator=estimator), ref, rtol=1e-4)
        np.testing.assert_allclose(S.cka(0.01 * a @ q.T, b, estimator=estimator), ref, rtol=1e-4)
        np.testing.assert_allclose(S.cka(a, 2.0 * a @ q, estimator=estimator), 1.0, rtol=1e-5)
        assert -1.0 - 1e-6 <= ref <= 1.0 + 1e-6


def test_unbiased_cka_is_near_zero_for_independent_inputs():
    # The reason the option exists: at N << D the biased estimator is far from 0.
    rng = np.random.default_rng(4)
    biased, unbiased = [], []
    for _ in range(5):
        x, y = rng.normal(size=(16, 64)), rng.normal(size=(16, 64))
        biased.append(float(S.cka(x, y)))
        unbiased.append(float(S.cka(x, y, estimator=UNBIASED)))
    assert np.mean(biased) > 0.5
    assert abs(np.mean(unbiased)) < 0.1


def test_dcor_range_and_invariances():
    rng = np.random.default_rng(5)
    for n, d in [(5, 1), (13, 6)]:
        a = rng.normal(size=(n, d)).astype(np.float32)
        b = np.tanh(a @ rng.normal(size=(d, 3)) + rng.normal(size=(n, 3))).astype(np.float32)
        v = S.dcor(a, b)
        assert 0.0 <= v <= 1.0 + 1e-6
        np.testing.assert_allclose(S.dcor(a, a), 1.0, rtol=1e-6)
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        np.testing.assert_allclose(S.dcor(4.0 * a @ q - 2.0, b), v, rtol=1e-4)


# ---------------------------------------------------------------------------
# Degenerate inputs: raise or a documented value, never a silent NaN.


def test_constant_features_give_documented_zero_and_finite_gradients():
    a, _ = _data(6, n=8, d=3)
    const = np.full((8, 3), 3.7, np.float32)
    guarded = (S.get("cka"), S.get("cka", estimator=UNBIASED), S.get("dcor"))
    for metric in guarded:
        assert metric(a, const) == 0.0 and metric(const, a) == 0.0, metric.name
        assert metric(const, const) == 0.0, metric.name
    # Gradients (one compilation for all metrics): finite at constant inputs for
    # the guarded metrics, and at a == b (|d| and distances at 0) for all.
    grads = jax.jit(
        lambda x, y, c: (
            [jax.grad(m)(c, x) for m in guarded],
            [jax.grad(m)(x, y) for m in S.all_metrics()],
        )
    )
    for g in jax.tree_util.tree_leaves(grads(a, a, const)):
        assert np.all(np.isfinite(g))


def test_tiny_scales_do_not_underflow():
    a, b = _data(7, n=9, d=4)
    for metric in (S.get("cka"), S.get("cka", estimator=UNBIASED), S.get("dcor")):
        np.testing.assert_allclose(metric(1e-20 * a, 1e-20 * b), metric(a, b), rtol=1e-4)


def test_bad_shapes_raise_with_shapes():
    a, b = _data(8, n=5, d=3)
    with pytest.raises(ValueError, match=r"N >= 4.*N = 3"):
        S.cka(a[:3], b[:3], estimator=UNBIASED)
    with pytest.raises(ValueError, match=r"\(5, 3\) and \(4, 3\)"):
        S.l2(a, b[:4])
    with pytest.raises(ValueError, match=r"same shape.*\(5, 3\) and \(5, 2\)"):
        S.l1(a, b[:, :2])
    with pytest.raises(ValueError, match=r"\[N, D\].*\(5,\)"):
        S.cka(a[:, 0], b)
    with pytest.raises(ValueError, match="empty"):
        S.dcor(a[:0], b[:0])


# ---------------------------------------------------------------------------
# Registry, reporting, jit.


def test_registry():
    assert S.get("L2") == S.get(S.Metric.L2) == S.get(S.get("l2"))
    assert S.get("lp") == S.get("lp", p=4)
    assert hash(S.get("cka", estimator="unbiased")) == hash(S.get("cka", estimator=UNBIASED))
    assert S.get("cka", estimator="unbiased").name == "cka(estimator=unbiased)"
    assert not S.get("linf").differentiable and S.get("dcor").differentiable
    with pytest.raises(ValueError, match=r"Unknown metric 'l3'.*'l1'"):
        S.get("l3")
    with pytest.raises(TypeError, match=r"takes hyper-parameters \['p'\]; got \['t'\]"):
        S.get("lp", t=0.1)
    with pytest.raises(ValueError, match="p must be"):
        S.get("lp", p=0.5)
    with pytest.raises(ValueError, match="t must be"):
        S.get("lse", t=-1.0)
    with pytest.raises(ValueError):
        S.get("cka", estimator="wrong")
    mine = S.custom(lambda a, b: -jnp.mean(jnp.abs(a - b) ** 3), name="l3")
    assert S.get(mine) is mine and mine.name == "l3"


def test_report_transform():
    s = jnp.array([-4.0, -0.25, 0.0, 0.3])
    np.testing.assert_allclose(S.report("l2", s), [-2.0, -0.5, 0.0, 0.0])
    np.testing.assert_allclose(S.report("lp", jnp.array([-16.0, 1.0])), [-2.0, 0.0])
    np.testing.assert_allclose(S.report(S.get("lp", p=2), jnp.array([-16.0])), [-4.0])
    for name in ("l1", "linf", "lse", "cka", "dcor"):
        np.testing.assert_array_equal(S.report(name, s), s)
    a, b = _data(9)
    m = S.get("l2")
    np.testing.assert_allclose(m.report(m(a, b)), -np.sqrt(((a - b) ** 2).mean()), rtol=1e-6)


def test_jit_matches_eager_and_does_not_recompile():
    a, b = _data(10)
    a2, b2 = _data(11)
    for metric in S.all_metrics():
        f = jax.jit(metric)
        np.testing.assert_allclose(f(a, b), metric(a, b), rtol=1e-5, err_msg=metric.name)
        f(a2, b2)
        assert f._cache_size() == 1, metric.name
    # MetricFn as a static argument: equal configurations share one compilation.
    g = jax.jit(lambda m, x, y: m(x, y), static_argnums=0)
    g(S.get("lse"), a, b)
    g(S.get("lse", t=0.01), a2, b2)
    assert g._cache_size() == 1
