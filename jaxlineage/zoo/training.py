"""Population training: many models of one architecture in one jitted, vmapped epoch.

Every training operation of the zoo (``train``, ``finetune``, the repair of
``prune``, ``distill``) goes through :func:`train_population`: a ``lax.scan``
over the steps of an epoch, ``vmap``-ed over the population, with per-model
learning rates, data orders, labels (a teacher's argmax), soft targets (a
teacher's tempered softmax) and update masks (head-only fine-tuning, pruning
masks).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlineage import nets
from jaxlineage.zoo._base import Optimizer, PyTree, ZooError

__all__ = [
    "Distillation",
    "OptimizerConfig",
    "population_accuracy",
    "population_logits",
    "population_predictions",
    "train_population",
]


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The population's optimizer (the step ``-lr * direction`` is applied with per-model learning rates).

    Attributes:
      kind: :class:`~jaxlineage.zoo.Optimizer` (or its value): Adam (default) or SGD.
      momentum, weight_decay: PyTorch-style SGD's (``d = g + wd * w; buf = momentum * buf + d``);
        Adam ignores them.
    """

    kind: Optimizer = Optimizer.ADAM
    momentum: float = 0.9
    weight_decay: float = 0.0


@dataclasses.dataclass(frozen=True)
class Distillation:
    r"""Soft targets for distillation: the loss becomes
    ``alpha * T^2 * KL(soft || softmax(logits / T)) + (1 - alpha) * CE(y)`` with ``T = temperature``.

    Attributes:
      soft_targets: ``[P, N, C]`` probabilities, one teacher's per model.
      temperature: ``T``.
      alpha: the weight of the soft term (0: labels only).
    """

    soft_targets: Any
    temperature: float = 1.0
    alpha: float = 0.0


def _cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _optimizer(optimizer: Optimizer, momentum: float, weight_decay: float) -> optax.GradientTransformation:
    """The update direction; the step ``-lr * direction`` is applied per model (learning rates differ)."""
    if optimizer is Optimizer.ADAM:
        return optax.scale_by_adam()
    # PyTorch's SGD (as SAC's scripts): d = g + wd * w; buf = momentum * buf + d.
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.trace(decay=momentum))


@functools.partial(
    jax.jit,
    static_argnames=(
        "network",
        "batch_size",
        "steps",
        "optimizer",
        "momentum",
        "weight_decay",
        "temperature",
        "alpha",
        "freeze_stats",
        "sequential",
    ),
)
def _train_epoch(
    network: nets.Network,
    params,
    opt_state,
    lrs,
    keys,
    x,
    y,
    soft=None,
    mask=None,
    *,
    batch_size: int,
    steps: int,
    optimizer: Optimizer = Optimizer.ADAM,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    temperature: float = 1.0,
    alpha: float = 0.0,
    freeze_stats: bool = False,
    sequential: bool = False,
):
    """One epoch for a population: vmap over models of a lax.scan over steps.

    Args:
      params, opt_state: stacked over models ``[P, ...]``.
      lrs: ``[P]`` learning rates. keys: ``[P]`` data-order keys for this epoch.
      x: the whole training set ``[N, ...]`` on device, shared by all models.
      y: labels, shared ``[N]`` or per model ``[P, N]`` (a teacher's argmax).
      soft: ``None`` or per-model target probabilities ``[P, N, C]`` (a teacher's softmax at
        ``temperature``); the loss is then ``alpha * T^2 * KL(soft || softmax(logits / T))
        + (1 - alpha) * CE(logits, y)``.
      mask: ``None`` or per-model multipliers of the update direction with the structure of
        ``params["params"]`` (0 freezes a weight exactly: head-only fine-tunes, pruned weights).
      freeze_stats: keep non-trainable collections (BatchNorm statistics) fixed.
      sequential: run the models one after another (``lax.map``, one compiled body) instead of
        ``vmap``: XLA on CPU lowers a vmapped convolution with per-model weights to a grouped
        convolution that is several times slower per model than one model's.

    Returns:
      ``(params, opt_state, mean loss [P])``.
    """
    tx = _optimizer(optimizer, momentum, weight_decay)
    n = x.shape[0]

    def one_model(variables, state, lr, key, labels, target, m):
        order = jax.random.permutation(key, n)[: steps * batch_size].reshape(steps, batch_size)

        def step(carry, idx):
            variables, state = carry
            trainable = variables["params"]
            rest = {k: v for k, v in variables.items() if k != "params"}

            def loss_fn(p):
                logits, updates = network.train_logits_fn({"params": p, **rest}, x[idx])
                loss = _cross_entropy(logits, labels[idx])
                if target is not None:
                    t = target[idx]
                    log_s = jax.nn.log_softmax(logits / temperature)
                    kl = jnp.sum(t * (jnp.log(jnp.clip(t, 1e-12)) - log_s), axis=-1).mean()
                    loss = alpha * temperature**2 * kl + (1.0 - alpha) * loss
                return loss, updates

            (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
            direction, state = tx.update(grads, state, trainable)
            if m is not None:
                direction = jax.tree.map(lambda d, k: d * k, direction, m)
            trainable = jax.tree.map(lambda p, d: p - lr * d, trainable, direction)
            if freeze_stats:
                updates = {}
            return ({"params": trainable, **rest, **updates}, state), loss

        (variables, state), losses = jax.lax.scan(step, (variables, state), order)
        return variables, state, losses.mean()

    y_axis = 0 if y.ndim == network.label_ndim + 1 else None
    if sequential:

        def body(args):
            v, st, lr, key, labels, target, m = args
            return one_model(v, st, lr, key, y if y_axis is None else labels, target, m)

        return jax.lax.map(body, (params, opt_state, lrs, keys, y if y_axis == 0 else None, soft, mask))
    return jax.vmap(one_model, in_axes=(0, 0, 0, 0, y_axis, 0, 0))(params, opt_state, lrs, keys, y, soft, mask)


def train_population(
    network: nets.Network,
    init_params: PyTree,
    x: np.ndarray,
    y: np.ndarray,
    *,
    lrs: Sequence[float],
    seeds: Sequence[int],
    batch_size: int,
    epochs: int,
    on_epoch=None,
    optimizer: Optimizer | str | OptimizerConfig = Optimizer.ADAM,
    distillation: Distillation | None = None,
    update_mask: PyTree | None = None,
    freeze_stats: bool = False,
    sequential: bool = False,
) -> PyTree:
    """Trains a stacked population, all models in one vmapped, jitted epoch.

    Args:
      network: the architecture (all models share it).
      init_params: stacked initial variables ``[P, ...]``.
      x: training inputs ``[N, ...]`` (put on device once, shared).
      y: labels ``[N]`` shared by all models, or ``[P, N]`` per model (e.g. each
        student's teacher's argmax); for language models ``[N, T]`` / ``[P, N, T]`` next tokens.
      lrs, seeds: per-model learning rate and data-order seed, length ``P``.
      batch_size, epochs: shared by the population (drop-remainder batches).
      on_epoch: optional ``on_epoch(epoch, mean losses [P])``.
      optimizer: an :class:`OptimizerConfig`, or just its kind (:class:`Optimizer`, default
        Adam; SGD then with the config's default momentum 0.9 and no weight decay).
      distillation: ``None`` (labels only) or a :class:`Distillation` (soft targets).
      update_mask: ``None`` or stacked multipliers ``[P, ...]`` of the update direction
        with the structure of ``init_params["params"]``: zeros freeze weights exactly.
      freeze_stats: keep BatchNorm statistics fixed (head-only fine-tunes).
      sequential: train the models one after another in one compiled loop instead of vmapped
        (faster for convolutional nets on CPU; same results up to float reassociation).

    Returns:
      The trained stacked variables.
    """
    p = nets.population_size(init_params)
    if len(lrs) != p or len(seeds) != p:
        raise ZooError(f"population of {p} models but {len(lrs)} lrs and {len(seeds)} seeds")
    n = len(x)
    steps = n // batch_size
    if steps < 1:
        raise ZooError(f"batch_size {batch_size} exceeds the {n} training examples")
    y = np.asarray(y)
    k = network.label_ndim  # 1 for classifiers ([N]); 2 for language models ([N, T])
    shared, per_model = y.ndim == k and y.shape[0] == n, y.ndim == k + 1 and y.shape[:2] == (p, n)
    if not (shared or per_model):
        raise ZooError(
            f"labels of shape {y.shape} for {n} examples and {p} models (want [N, ...] or [P, N, ...] of rank {k})"
        )
    opt = optimizer if isinstance(optimizer, OptimizerConfig) else OptimizerConfig(kind=Optimizer(optimizer))
    optimizer, momentum, weight_decay = Optimizer(opt.kind), float(opt.momentum), float(opt.weight_decay)
    tx = _optimizer(optimizer, momentum, weight_decay)
    opt_state = jax.vmap(lambda v: tx.init(v["params"]))(init_params)
    lrs = jnp.asarray(lrs, jnp.float32)
    base = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
    xd, yd = jnp.asarray(x), jnp.asarray(y)
    soft = None if distillation is None else jnp.asarray(distillation.soft_targets, jnp.float32)
    static = dict(batch_size=batch_size, steps=steps)
    if optimizer is not Optimizer.ADAM:
        static.update(optimizer=optimizer, momentum=momentum, weight_decay=weight_decay)
    if soft is not None:
        static.update(temperature=float(distillation.temperature), alpha=float(distillation.alpha))
    if freeze_stats:
        static.update(freeze_stats=True)
    if sequential:
        static.update(sequential=True)
    params = init_params
    for epoch in range(epochs):
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(base, epoch)
        params, opt_state, loss = _train_epoch(
            network, params, opt_state, lrs, keys, xd, yd, soft, update_mask, **static
        )
        if on_epoch is not None:
            on_epoch(epoch, np.asarray(loss))
    return params


@functools.partial(jax.jit, static_argnames=("network", "sequential"))
def _logits(network: nets.Network, params, x, sequential: bool = False):
    if sequential:
        return jax.lax.map(lambda p: network.logits_fn(p, x), params)
    return jax.vmap(lambda p: network.logits_fn(p, x))(params)


def population_logits(
    network: nets.Network, params: PyTree, x, *, chunk: int = 2048, sequential: bool = False
) -> np.ndarray:
    """Eval-mode logits ``[P, N, C]`` of a stacked population on ``x`` ``[N, ...]``, in chunks of examples
    (``sequential``: one model after another, see :func:`train_population`)."""
    out = [
        np.asarray(_logits(network, params, jnp.asarray(x[s : s + chunk]), sequential)) for s in range(0, len(x), chunk)
    ]
    return np.concatenate(out, axis=1)


def population_predictions(network: nets.Network, params: PyTree, x, *, tokens: int = 4096, sequential=False):
    """Argmax predictions ``[P, N, ...]`` of a stacked population, in chunks of about ``tokens`` outputs
    per model (a language model's logits ``[P, N, T, V]`` are never held whole)."""
    per_example = int(np.prod(np.shape(x)[1:])) if network.label_ndim > 1 else 1
    chunk = max(1, tokens // max(per_example, 1)) if network.label_ndim > 1 else 2048
    out = [
        np.asarray(_logits(network, params, jnp.asarray(x[s : s + chunk]), sequential).argmax(-1))
        for s in range(0, len(x), chunk)
    ]
    return np.concatenate(out, axis=1)


def population_accuracy(
    network: nets.Network, params: PyTree, x, y, *, chunk: int = 2048, sequential: bool = False
) -> np.ndarray:
    """Test accuracy ``[P]`` of a stacked population, evaluated in chunks of examples."""
    if len(y) == 0:
        return np.zeros(nets.population_size(params))
    pred = population_logits(network, params, x, chunk=chunk, sequential=sequential).argmax(-1)
    return (pred == np.asarray(y)[None]).mean(-1)
