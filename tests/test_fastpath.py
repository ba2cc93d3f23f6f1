"""The scorer's fast path (first layer once per model) against the plain jvp path."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_variables
from jax.sharding import Mesh

from jaxlineage import _fastpath, _pairing, nets
from jaxlineage import lineage as LG
from jaxlineage import similarity as S
from jaxlineage.linearize import Mode

N = 6  # >= 4 for unbiased CKA
ALPHAS = np.array([0.01, 0.5])


class _UserBlock(nn.Module):
    """A user's own linen model: conv, LayerNorm (parameters after the first layer), tanh."""

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(3, (3, 3), name="c")(x)
        h = jnp.tanh(nn.LayerNorm(name="ln")(h))
        return h.reshape(h.shape[0], -1)


@jax.jit  # jitted sub-functions are inlined by the analysis
def _user_apply(params, x):
    """A hand-written apply function: tanh(x W + b), then a head that it does not read."""
    return jnp.tanh(jnp.einsum("nd,dh->nh", x, params["w"]) + params["b"][None, :])


def _user_init(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "w": jax.random.normal(k1, (5, 7)) / np.sqrt(5),
        "b": 0.3 * jax.random.normal(k2, (7,)),
        "head": jax.random.normal(k3, (7, 2)),
    }


def _case(name):
    """``(feature_fn, init(key), input_shape, elementwise, first-layer primitive)``."""
    if name == "mlp_relu1":
        net = nets.mlp(3, features=(12, 8), input_shape=(4, 4, 1))
        return net.feature_fn("relu1"), net.init, net.input_shape, True, "dot_general"
    if name == "mlp_relu2":
        net = nets.mlp(3, features=(12, 8), input_shape=(4, 4, 1))
        return net.feature_fn("relu2"), net.init, net.input_shape, False, "dot_general"
    if name == "convnet_conv1":
        net = nets.convnet(3, channels=(3, 4), hidden=8, input_shape=(6, 6, 1))
        return net.feature_fn("conv1"), net.init, net.input_shape, True, "conv_general_dilated"
    if name == "resnet18_block1":
        net = nets.resnet18(3, width=0.125, input_shape=(8, 8, 3))
        init = lambda key: random_variables(net, int(jax.random.key_data(key)[-1]))  # no init compilation
        return net.feature_fn("block1"), init, net.input_shape, False, "conv_general_dilated"
    if name == "user_apply":
        return _user_apply, _user_init, (5,), True, "dot_general"
    if name == "user_linen":
        module = _UserBlock()
        init = lambda key: module.init(key, jnp.zeros((1, 5, 5, 2)))
        return module.apply, init, (5, 5, 2), False, "conv_general_dilated"
    raise ValueError(name)


def _population(init, input_shape, *, k=2, m=3, dtype=jnp.float64):
    to = lambda t: jax.tree_util.tree_map(lambda a: a.astype(dtype), t)
    parents = [to(init(jax.random.key(i))) for i in range(k)]
    # Multiplicative noise keeps BatchNorm variances positive.
    children = [
        jax.tree_util.tree_map(
            lambda a, e: a + 0.1 * (jnp.abs(a) + 0.1) * e, parents[j % k], to(init(jax.random.key(10 + j)))
        )
        for j in range(m)
    ]
    stack = lambda ts: jax.tree_util.tree_map(lambda *a: jnp.stack(a), *ts)
    x = jax.random.normal(jax.random.key(99), (N, *input_shape), dtype)
    return stack(parents), stack(children), x


def _split_of(feature_fn, parents, x):
    pruned, _, _ = _pairing.analyse(feature_fn, parents, x, name="parents", stacked=True)
    return _fastpath.split(pruned, _pairing.struct_of(x))


_slow = pytest.mark.slow  # > 10 s on a loaded 2-core CPU (two compilations of 23 scorers)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("mlp_relu1", marks=_slow),
        pytest.param("mlp_relu2", marks=_slow),
        pytest.param("convnet_conv1", marks=_slow),
        pytest.param("resnet18_block1", marks=_slow),
        "user_apply",
        pytest.param("user_linen", marks=_slow),
    ],
)
def test_fast_path_equals_plain_jvp_path_float64(name):
    feature_fn, init, input_shape, elementwise, primitive = _case(name)
    with jax.enable_x64(True):
        parents, children, x = _population(init, input_shape)
        split = _split_of(feature_fn, parents, x)
        assert split is not None, "the first layer reads the probe and is linear in its weight"
        assert split.first_layer_primitives == (primitive,)
        assert split.elementwise is elementwise
        kw = {"alpha": ALPHAS, "modes": tuple(Mode), "chunk_size": 2}  # 3 children: a padded chunk
        fast = LG.score_matrices(S.all_metrics(), feature_fn, parents, children, x, **kw)
        ref = LG.score_matrices(S.all_metrics(), feature_fn, parents, children, x, fast_path=False, **kw)
        assert fast.keys() == ref.keys() and len(fast) == 8 * 3 - 1
        for key in ref:
            assert fast[key].dtype == jnp.float64 and fast[key].shape == (2, 2, 3)
            np.testing.assert_allclose(fast[key], ref[key], rtol=1e-10, atol=1e-12, err_msg=str(key))


def _user_normalised(params, x):
    # The probe is normalised by parameters before the first layer: no split.
    return jax.nn.relu((x - params["mu"][None, :]) @ params["w"])


def _user_weight_norm(params, x):
    # The weight enters non-linearly (weight normalisation): no split.
    w = params["w"] / jnp.linalg.norm(params["w"], axis=0, keepdims=True)
    return jax.nn.relu(x @ w)


@pytest.mark.parametrize("feature_fn", [_user_normalised, _user_weight_norm])
def test_no_split_when_the_pattern_does_not_apply(feature_fn):
    init = lambda key: {"w": jax.random.normal(key, (5, 4)), "mu": jnp.full((5,), 0.1)}
    parents, children, x = _population(init, (5,), dtype=jnp.float32)
    assert _split_of(feature_fn, parents, x) is None
    fast = LG.score_matrix("l2", feature_fn, parents, children, x, alpha=0.1)
    ref = LG.score_matrix("l2", feature_fn, parents, children, x, alpha=0.1, fast_path=False)
    np.testing.assert_array_equal(fast, ref)  # the same (plain) computation


def _probe_products(jaxpr, din):
    """dot_general equations, at any depth, with an operand whose last axis is the probe's ``din``."""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general" and any(v.aval.shape and v.aval.shape[-1] == din for v in eqn.invars):
            count += 1
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    count += _probe_products(sub, din)
    return count


def test_fast_path_runs_the_first_layer_once_per_model():
    # On the traced scorer: the fast path multiplies the probe by weights twice (the
    # parents' pass and the children's, each batched over models); the plain jvp path
    # also does so inside each parent's linearisation (primal and tangent).
    din = 11
    feature_fn, init = _user_apply, lambda key: {"w": jnp.ones((din, 7)), "b": jnp.ones((7,))}
    parents, children, x = _population(init, (din,), dtype=jnp.float32)
    pruned, p, c, xx = _pairing.prepare(feature_fn, parents, children, x, stacked=True, names=("parents", "children"))
    split = _fastpath.split(pruned, _pairing.struct_of(xx))
    combos = LG._combos(("l2", "cka"), tuple(Mode), strict=False)
    count = {}
    for label, sp in (("fast", split), ("plain", None)):
        core = functools.partial(LG._score_core, combos=combos, pruned=pruned, split=sp, chunk=2, mesh=None, axis=None)
        count[label] = _probe_products(jax.make_jaxpr(core)(p, c, xx, np.asarray([0.1])).jaxpr, din)
    assert count == {"fast": 2, "plain": 3}


@pytest.mark.slow  # over 13 s on 2 loaded cores: the fast tier stays under 3 min
def test_elementwise_path_sharded_tiny_budget_and_no_recompile():
    assert jax.device_count() >= 4, "conftest forces 4 CPU devices"
    traces = []

    def counted(params, x):
        traces.append(1)
        return _user_apply(params, x)

    parents, children, x = _population(_user_init, (5,), k=2, m=6, dtype=jnp.float32)
    metrics = (S.get("l1"), S.get("lse"), S.get("linf"), S.get("dcor"))
    kw = {"alpha": jnp.array([0.01, 0.1]), "modes": tuple(Mode)}
    ref = LG.score_matrices(metrics, counted, parents, children, x, fast_path=False, **kw)
    mesh = Mesh(np.array(jax.devices()[:4]), ("children",))
    sharded = LG.score_matrices(metrics, counted, parents, children, x, mesh=mesh, **kw)
    tiny = LG.score_matrices(metrics, counted, parents, children, x, memory_budget_bytes=1, **kw)
    for key in ref:
        np.testing.assert_allclose(sharded[key], ref[key], rtol=1e-5, atol=1e-7, err_msg=str(key))
        np.testing.assert_allclose(tiny[key], ref[key], rtol=1e-5, atol=1e-7, err_msg=str(key))
    parents2, children2, _ = _population(_user_init, (5,), k=2, m=6, dtype=jnp.float32)
    n = len(traces)
    LG.score_matrices(metrics, counted, parents2, children2, x, mesh=mesh, **kw)
    assert len(traces) == n, "the second call re-traced (and so recompiled)"


def test_block_shape_divides_n_and_d():
    # (rows over the D features, cols over the N probe rows): cols is the largest divisor of N up
    # to the lanes' 256, rows the largest divisor of D that keeps the block near the target.
    assert _fastpath.block_shape(512, 1024, 60 * 4, target_bytes=2**20) == (16, 256)
    assert _fastpath.block_shape(7, 3, 1, target_bytes=5) == (1, 7)
    assert _fastpath.block_shape(12, 8, 1, target_bytes=100) == (8, 12)
    assert _fastpath.block_shape(64, 25088, 100, target_bytes=2**20) == (128, 64)
    # A block wider than the target: one feature row.
    assert _fastpath.block_shape(1000, 6, 10**6, target_bytes=2**20) == (1, 250)


@pytest.mark.parametrize(
    "feature_fn, plan",
    [
        (_user_apply, LG.FastPathPlan(("dot_general",), True)),
        (_user_normalised, None),
    ],
)
def test_fast_path_plan_is_the_public_view_of_the_split(feature_fn, plan):
    params = {"w": jax.random.normal(jax.random.key(0), (5, 4)), "mu": jnp.full((5,), 0.1)}
    x = jax.random.normal(jax.random.key(1), (N, 5))
    if feature_fn is _user_apply:
        params = _user_init(jax.random.key(0))
    assert LG.fast_path_plan(feature_fn, params, x) == plan


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_lse_first_order_term_is_jaxs_jvp_including_kinks(dtype):
    # LSE's per-element first-order term is written out (for speed); it must equal jax.jvp of
    # exp(min(t|d|, 10)) everywhere, including d = 0 (|.|'s rule) and t|d| = 10 (min's tie: 1/2).
    with jax.enable_x64(dtype == jnp.float64):
        t = 0.25
        phi = lambda d: jnp.exp(jnp.minimum(t * jnp.abs(d), S.LSE_CLAMP))  # noqa: E731
        rng = np.random.default_rng(0)
        kinks = [0.0, -0.0, 40.0, -40.0, 39.99, 40.01, -39.99, -40.01, 1e3, -1e3]
        d = jnp.asarray(np.concatenate([kinks, 30 * rng.standard_normal(200)]), dtype)
        g = jnp.asarray(rng.standard_normal(d.shape[0]), dtype)
        want = jax.jvp(phi, (d,), (g,))[1]
        got = _fastpath._lse_phi_jvp(t)(d, g)
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=4 * jnp.finfo(dtype).eps, atol=0)
        # At the clamp (t|d| = 10) the term is half the slope; above it, zero; at d = 0, +t g.
        e10 = float(np.exp(S.LSE_CLAMP))
        assert float(got[2]) == pytest.approx(0.5 * e10 * t * float(g[2]), rel=1e-6)
        assert float(got[8]) == 0.0 and float(got[0]) == pytest.approx(t * float(g[0]), rel=1e-6)


def _feature_major(arrays):
    """``[models, N, D]`` -> ``[models, D, N]``, the layout of ``tiled_norm_scores``."""
    return tuple(jnp.swapaxes(a, 1, 2) for a in arrays)


def _elementwise_arrays(h, u):
    """``(F, U, H)`` of an elementwise tap ``F = h(U)``, ``H = h'(U)`` by a jvp with ones (as the split)."""
    f, dh = jax.jvp(h, (u,), (jnp.ones_like(u),))
    return f, u, dh


@pytest.mark.parametrize("act", ["relu", "tanh", "relu_with_zeros"])
def test_l2_matrix_products_equal_the_elementwise_sums_float64(act, monkeypatch):
    # L2's three modes as [K, n] x [n, B] products (the expansion of sum (d + alpha G)^2) against
    # the elementwise row sums they replace, on an elementwise tap: exact algebra, so float64
    # agrees to rounding. Small contraction blocks exercise several blocks and the zero padding
    # (n = 35 = 4 x 8 + 3); exact zeros in U exercise ReLU's kink (h'(0) = 0).
    monkeypatch.setattr(_fastpath, "_CONTRACTION_BLOCK", 8)
    h = jnp.tanh if act == "tanh" else jax.nn.relu
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        u_p = rng.standard_normal((3, 5, 7))
        u_c = np.concatenate([u_p, u_p[:1]]) + 0.3 * rng.standard_normal((4, 5, 7))
        if act == "relu_with_zeros":
            u_p[:, 0], u_c[:, 0] = 0.0, 0.0
        parent = _elementwise_arrays(h, jnp.asarray(u_p))
        child = _elementwise_arrays(h, jnp.asarray(u_c))[:2]
        terms = _fastpath.quadratic_parent_terms(*parent)
        assert bool(terms["relu"]) is (act != "tanh")
        combos = tuple((metric, mode) for metric in (S.get("l2"), S.get("lp", p=2)) for mode in Mode)
        assert all(_fastpath.quadratic(m) for m, _ in combos) and not _fastpath.quadratic(S.get("lp"))
        alpha = jnp.asarray(ALPHAS)
        got = _fastpath.quadratic_scores(combos, parent, terms, child, alpha)
        want = _fastpath.tiled_norm_scores(combos, _feature_major(parent), _feature_major(child), alpha, block=(7, 5))
        assert got.shape == want.shape == (len(combos), 2, 3, 4)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
        # The general branch (six products) on ReLU's arrays gives the same as the reduced one.
        if act != "tanh":
            general = _fastpath.quadratic_scores(combos, parent, {**terms, "relu": False}, child, alpha)
            np.testing.assert_allclose(general, got, rtol=1e-12, atol=1e-14)


def test_l2_matrix_products_float32_error_is_eps_times_feature_energy():
    # In float32 the expansion cancels sum F^2 against 2 <F_p, F_c>: the error is bounded by
    # a few eps * (sum F_p^2 + sum F_c^2) / n, not by eps * |score| (documented in quadratic_scores).
    rng = np.random.default_rng(1)
    u_p = rng.standard_normal((2, 64, 256)).astype(np.float32)
    u_c = (np.concatenate([u_p, u_p]) + 0.05 * rng.standard_normal((4, 64, 256))).astype(np.float32)
    parent = _elementwise_arrays(jax.nn.relu, jnp.asarray(u_p))
    child = _elementwise_arrays(jax.nn.relu, jnp.asarray(u_c))[:2]
    combos = tuple((S.get("l2"), mode) for mode in Mode)
    alpha = jnp.asarray(ALPHAS, jnp.float32)
    got = _fastpath.quadratic_scores(combos, parent, _fastpath.quadratic_parent_terms(*parent), child, alpha)
    with jax.enable_x64(True):
        to64 = lambda arrays: tuple(jnp.asarray(np.asarray(a), jnp.float64) for a in arrays)
        want = _fastpath.tiled_norm_scores(
            combos, _feature_major(to64(parent)), _feature_major(to64(child)), jnp.asarray(ALPHAS), block=(256, 64)
        )
    energy = (np.sum(np.square(parent[0]), axis=(1, 2))[:, None] + np.sum(np.square(child[0]), axis=(1, 2))) / (
        64 * 256
    )
    err = np.abs(np.asarray(got, np.float64) - np.asarray(want))
    assert np.all(err <= 16 * np.finfo(np.float32).eps * energy), float(np.max(err / energy))


def _linearised_definition(metric, feature_fn, parent, child, x, alphas):
    """``{mode: [A]}``: the metric's definition on the explicitly linearised features ``F_p + alpha J_p Delta``."""
    flat = lambda th: feature_fn(th, x).reshape(x.shape[0], -1)
    f_c = flat(child)
    delta = jax.tree_util.tree_map(lambda c, p: c - p, child, parent)
    f_p, jd = jax.jvp(flat, (parent,), (delta,))
    s0, ds = jax.jvp(lambda f: metric(f, f_c), (f_p,), (jd,))
    lin = jax.vmap(lambda a: metric(f_p + a * jd, f_c))(alphas)
    return {Mode.PLAIN: jnp.broadcast_to(s0, alphas.shape), Mode.FIRST_ORDER: s0 + alphas * ds, Mode.LINEARIZED: lin}


@_slow  # 10-13 s each (the scorer's compilation with three Gram metrics in three modes)
@pytest.mark.parametrize("name", ["user_apply", "mlp_relu1", "mlp_relu2"])
def test_gram_metrics_from_two_products_equal_their_definitions_float64(name):
    # CKA (both estimators) and dCor of every pair, mode and alpha come from the pair's two Gram
    # products (jaxlineage/_gram.py: polynomials in alpha for CKA, one O(N^2) pass per alpha for
    # dCor); here against each metric's definition applied to F_p + alpha J_p Delta, with J_p Delta
    # from jax.jvp of the whole feature function. Parent 0 has zero first-layer weights (constant
    # features: K_p = 0, the documented "no variation" case at alpha = 0).
    feature_fn, init, input_shape, _, _ = _case(name)
    with jax.enable_x64(True):
        parents, children, x = _population(init, input_shape, k=2, m=3)
        first = "w" if name == "user_apply" else "params"

        def zero_first_layer(tree):
            if first == "w":
                return {**tree, "w": tree["w"].at[0].set(0.0), "b": tree["b"].at[0].set(0.0)}
            dense = tree["params"]["dense1"]
            dense = {"kernel": dense["kernel"].at[0].set(0.0), "bias": dense["bias"].at[0].set(0.0)}
            return {**tree, "params": {**tree["params"], "dense1": dense}}

        parents = zero_first_layer(parents)
        metrics = (S.get("cka"), S.get("cka", estimator="unbiased"), S.get("dcor"))
        alphas = np.array([0.001, 0.1, 0.7])
        got = LG.score_matrices(metrics, feature_fn, parents, children, x, alpha=alphas, chunk_size=2)
        at = lambda tree, i: jax.tree_util.tree_map(lambda a: a[i], tree)
        for metric in metrics:
            # want[mode]: [K, M, A], one jitted call per metric.
            per_pair = functools.partial(_linearised_definition, metric, feature_fn, x=x, alphas=jnp.asarray(alphas))
            want = jax.jit(jax.vmap(jax.vmap(per_pair, (None, 0)), (0, None)))(parents, children)
            for mode in Mode:
                np.testing.assert_allclose(
                    np.moveaxis(np.asarray(got[(metric.name, mode)]), 0, -1),
                    want[mode],
                    rtol=1e-10,
                    atol=1e-12,
                    err_msg=f"{metric.name} {mode}",
                )
        # The "no variation" case is exercised: parent 0's features are constant.
        f0 = feature_fn(at(parents, 0), x).reshape(N, -1)
        assert float(jnp.max(jnp.abs(f0 - f0[:1]))) == 0.0


def test_gram_pair_scores_equal_the_definitions_float64():
    # The fast tier's check of jaxlineage/_gram.py on one pair (no scorer compilation): every
    # (Gram metric, mode) from the two products against the metric on F_p + alpha G, with an
    # uncentred G and a parent / child of different scales (the parent's scale divides G too).
    from jaxlineage import _gram

    with jax.enable_x64(True):
        rng = np.random.default_rng(5)
        f_p = jnp.asarray(3.0 + 2.0 * rng.standard_normal((7, 5)))
        jd = jnp.asarray(0.5 + rng.standard_normal((7, 5)))
        f_c = jnp.asarray(0.1 * rng.standard_normal((7, 5)))
        metrics = (S.get("cka"), S.get("cka", estimator="unbiased"), S.get("dcor"))
        combos = tuple((m, mode) for m in metrics for mode in Mode)
        alphas = jnp.asarray([-0.3, 0.01, 2.0])
        need = _gram.kinds(combos)
        p, c = _gram.parent_context(f_p, need), _gram.child_context(f_c, need)
        cross, quad = _gram.products(_gram.parent_features(f_p, p), p["scale"], jd)
        got = jax.jit(lambda *a: _gram.pair_scores(combos, *a))(p, c, cross, quad, alphas)
        for (metric, mode), g in zip(combos, got):
            s0, ds = jax.jvp(lambda f, metric=metric: metric(f, f_c), (f_p,), (jd,))
            want = {
                Mode.PLAIN: jnp.broadcast_to(s0, alphas.shape),
                Mode.FIRST_ORDER: s0 + alphas * ds,
                Mode.LINEARIZED: jnp.stack([metric(f_p + a * jd, f_c) for a in alphas]),
            }[mode]
            np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-12, err_msg=f"{metric.name} {mode}")
