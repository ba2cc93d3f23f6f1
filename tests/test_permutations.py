"""Permutation specs: permuting hidden units keeps the function and changes the weights."""

import dataclasses
import functools

import jax
import numpy as np
import pytest
from conftest import random_variables

from jaxlineage import nets, permutations
from jaxlineage.zoo import ops

NETS = {
    "mlp": lambda: nets.mlp(5, features=(16, 8), input_shape=(6, 6, 1)),
    "convnet": lambda: nets.convnet(5, channels=(3, 4), hidden=8, input_shape=(8, 8, 1)),
    "resnet18": lambda: nets.resnet18(5, width=1 / 16, input_shape=(8, 8, 3)),
}


@functools.cache
def _model(arch):
    # Random weights with non-trivial BatchNorm scales and statistics (so that permuting them is checked too),
    # made without compiling the network's init (tests/conftest.py).
    net = NETS[arch]()
    return net, random_variables(net, 1)


@pytest.mark.parametrize(
    "arch", [pytest.param(a, marks=pytest.mark.slow) if a == "resnet18" else a for a in sorted(NETS)]
)
def test_permutation_keeps_function_changes_weights(arch):
    net, v = _model(arch)
    spec = permutations.permutation_spec(net, v)
    w = permutations.permute_params(v, spec, jax.random.key(2))
    x = jax.random.normal(jax.random.key(3), (4,) + net.input_shape)
    logits = jax.jit(net.logits_fn)  # op by op, a ResNet compiles every op (minutes on 2 cores)
    np.testing.assert_allclose(logits(w, x), logits(v, x), rtol=1e-4, atol=1e-4)
    changed = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(w))]
    assert sum(changed) >= len(spec)
    # Every leaf a spec names exists, and each entry's axes have the entry's size.
    for units, axes in spec.values():
        for ax in axes:
            leaf = permutations._leaf(v, ax.path)
            assert leaf.shape[ax.axis] == units * ax.tile


@pytest.mark.slow
def test_resnet18_spec_shape():
    net = NETS["resnet18"]()
    spec = permutations.permutation_spec(net, _model("resnet18")[1])
    # stem (= stage 1's stream: no projection), stages 2-4, and 8 blocks' inner layers.
    inner = {f"block{s}_{j}/inner" for s in range(1, 5) for j in (0, 1)}
    assert set(spec) == {"stem", "stage2", "stage3", "stage4"} | inner


def test_zoo_ops_uses_the_one_copy():
    assert ops.permutation_spec is permutations.permutation_spec
    assert ops.permute_params is permutations.permute_params and ops.PermAxis is permutations.PermAxis


def test_unknown_architecture_is_named():
    net = NETS["mlp"]()
    other = dataclasses.replace(net, name="vit")
    with pytest.raises(permutations.PermutationError, match="'vit'"):
        permutations.permutation_spec(other, net.init(jax.random.key(0)))
