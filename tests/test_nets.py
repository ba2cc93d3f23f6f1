import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlineage import nets


@pytest.mark.parametrize(
    "network, taps",
    [
        (nets.mlp(5), {"relu1": 1024, "relu2": 256, "relu3": 128, "logits": 5}),
        (nets.convnet(7), {"conv1": 28 * 28 * 32, "conv2": 14 * 14 * 64, "fc1": 128, "logits": 7}),
        pytest.param(
            nets.resnet18(3, width=0.125),
            {
                "stem": 32 * 32 * 8,
                "block1": 32 * 32 * 8,
                "block2": 16 * 16 * 16,
                "block3": 8 * 8 * 32,
                "block4": 4 * 4 * 64,
                "pool": 64,
                "logits": 3,
            },
            marks=pytest.mark.slow,
        ),
    ],
    ids=["mlp", "convnet", "resnet18"],
)
def test_shapes_and_taps(network, taps):
    params = network.init(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (2, *network.input_shape))
    assert network.logits_fn(params, x).shape == (2, network.num_classes)
    assert set(network.taps) == set(taps)
    for tap, dim in taps.items():
        assert network.feature_fn(tap)(params, x).shape == (2, dim), tap


def test_mlp_paper_architecture():
    params = nets.mlp(10).init(jax.random.key(0))["params"]
    shapes = {k: v["kernel"].shape for k, v in params.items()}
    assert shapes == {"dense1": (784, 1024), "dense2": (1024, 256), "dense3": (256, 128), "head": (128, 10)}


def test_feature_fn_reads_only_the_backbone():
    network = nets.mlp(5)
    params = network.init(jax.random.key(0))
    x = jnp.ones((3, 28, 28, 1))
    f = network.feature_fn("relu2")
    np.testing.assert_array_equal(f(params, x), f(nets.backbone(params), x))
    # relu1 is the ReLU of the first dense layer, computed by hand.
    p = params["params"]["dense1"]
    np.testing.assert_allclose(
        network.feature_fn("relu1")(params, x),
        jax.nn.relu(x.reshape(3, -1) @ p["kernel"] + p["bias"][None]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_unknown_tap():
    with pytest.raises(ValueError, match="unknown tap 'relu9'.*relu1"):
        nets.mlp(5).feature_fn("relu9")


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture 'vgg'"):
        nets.make("vgg", 10)


@pytest.mark.slow
def test_resnet_train_mode_updates_batch_stats():
    network = nets.resnet18(4, width=0.125)
    params = network.init(jax.random.key(0))
    logits, updates = network.train_logits_fn(params, jax.random.normal(jax.random.key(1), (4, 32, 32, 3)))
    assert logits.shape == (4, 4) and set(updates) == {"batch_stats"}
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params["batch_stats"], updates["batch_stats"])
    assert any(jax.tree.leaves(changed))


def test_backbone_and_with_head():
    a, b = nets.mlp(5).init(jax.random.key(0)), nets.mlp(3).init(jax.random.key(1))
    bb = nets.backbone(a)
    assert "head" not in bb["params"] and "dense1" in bb["params"]
    joined = nets.with_head(bb, b)
    assert joined["params"]["head"]["kernel"].shape == (128, 3)
    np.testing.assert_array_equal(joined["params"]["dense1"]["kernel"], a["params"]["dense1"]["kernel"])


def test_stack_unstack_round_trip():
    network = nets.mlp(5, features=(16, 8))
    trees = [network.init(jax.random.key(i)) for i in range(3)]
    stacked = nets.stack(trees)
    assert stacked["params"]["dense1"]["kernel"].shape == (3, 784, 16)
    assert nets.population_size(stacked) == 3
    for t, u in zip(trees, nets.unstack(stacked)):
        jax.tree.map(np.testing.assert_array_equal, t, u)


def test_stack_mismatch_names_path_and_shapes():
    a = nets.mlp(5, features=(16, 8)).init(jax.random.key(0))
    b = nets.mlp(5, features=(16, 9)).init(jax.random.key(0))
    with pytest.raises(
        nets.TreeMismatchError,
        match=r"params/dense2/bias has shape \(8,\) in the model 0 tree but \(9,\) in the model 1 tree",
    ):
        nets.stack([a, b])
    with pytest.raises(nets.TreeMismatchError, match="params/head/bias is in the parent tree"):
        nets.check_trees_match(a, nets.backbone(a))
    with pytest.raises(ValueError, match="empty"):
        nets.stack([])


def test_nnx_adapter():
    from flax import nnx

    model = nnx.Linear(4, 2, rngs=nnx.Rngs(0))
    apply_fn, params = nets.from_nnx(model)
    x = jnp.ones((3, 4))
    np.testing.assert_allclose(jax.jit(apply_fn)(params, x), model(x), rtol=1e-6)
    # Pure in params: gradients flow through the state.
    g = jax.grad(lambda p: apply_fn(p, x).sum())(params)
    assert jax.tree.leaves(g)


def test_linen_and_plain_adapters():
    network = nets.mlp(5, features=(8,))
    variables = network.init(jax.random.key(0))
    apply_fn, params = nets.from_linen(network.module, variables)
    x = jnp.ones((2, 28, 28, 1))
    np.testing.assert_array_equal(apply_fn(params, x), network.logits_fn(variables, x))
    with pytest.raises(TypeError, match="callable"):
        nets.from_apply("not a function", params)


def test_feature_fn_is_one_object_per_module_and_tap():
    # Jitted scorers cache on the feature function, so asking again must not recompile.
    from jaxlineage import lineage, similarity

    a, b = nets.mlp(5, features=(16, 8)), nets.mlp(5, features=(16, 8))
    assert a.feature_fn("relu1") is b.feature_fn("relu1")
    assert a.feature_fn("relu1") is not a.feature_fn("relu2")
    assert a.feature_fn("relu1") is not nets.mlp(5, features=(32, 8)).feature_fn("relu1")

    params = nets.stack([a.init(jax.random.key(i)) for i in range(2)])
    x = jax.random.uniform(jax.random.key(9), (4, *a.input_shape))

    def score(net):
        return lineage.score_matrix(similarity.get("l2"), net.feature_fn("relu1"), params, params, x, alpha=0.01)

    first = score(a)
    compiled = lineage._score_core._cache_size()
    np.testing.assert_array_equal(score(b), first)
    assert lineage._score_core._cache_size() == compiled


def test_fresh_adapters_do_not_recompile():
    """Adapters are equal by value: building one anew per call reuses the compiled scorer."""
    from flax import nnx

    from jaxlineage import linearize

    module = nets.MLP(3, (8,))
    parent = module.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))
    child = jax.tree.map(lambda a: a + 0.01, parent)
    x = jax.random.normal(jax.random.key(1), (6, 4, 4, 1))
    f1, _ = nets.from_linen(module, parent, tap="relu1")
    f2, _ = nets.from_linen(nets.MLP(3, (8,)), parent, tap="relu1")
    assert f1 == f2 and hash(f1) == hash(f2)
    assert f1 != nets.from_linen(module, parent, tap="logits")[0]
    linearize.pair_similarity("l2", f1, parent, child, x, alpha=0.01, mode="first_order")
    size = linearize._similarity_core._cache_size()
    out = linearize.pair_similarity("l2", f2, parent, child, x, alpha=0.01, mode="first_order")
    assert linearize._similarity_core._cache_size() == size
    assert np.isfinite(float(out))
    with pytest.raises(TypeError, match="keyword tap=\\['relu1'\\] is not hashable"):
        nets.from_linen(module, parent, tap=["relu1"])

    class Lin(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(4, 3, rngs=rngs)

        def __call__(self, x):
            return jax.nn.relu(self.lin(x))

    a, _ = nets.from_nnx(Lin(nnx.Rngs(0)))
    b, state = nets.from_nnx(Lin(nnx.Rngs(1)))
    assert a == b and b(state, jnp.ones((2, 4))).shape == (2, 3)
