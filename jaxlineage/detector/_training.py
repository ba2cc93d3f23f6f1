"""Training the detector, its logits and its assessment.

Part of :mod:`jaxlineage.detector`, which re-exports the public names.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from jaxlineage.detector._common import PyTree, log
from jaxlineage.detector._examples import Examples, make_pairs
from jaxlineage.detector._model import LineageDetector


class TrainState(train_state.TrainState):
    """Flax ``TrainState`` plus the encoders' BatchNorm statistics."""

    batch_stats: PyTree


class Batch(NamedTuple):
    """A training batch on device: pairs ``[B, K, 2, H, W]`` (or ``None``) and labels ``[B]``."""

    weight_pairs: jax.Array | None
    feature_pairs: jax.Array | None
    labels: jax.Array


class _Arrays(NamedTuple):
    """An :class:`Examples` set on device (deduplicated; ``None`` for an absent modality)."""

    parent_weights: jax.Array | None
    child_weights: jax.Array | None
    parent_features: jax.Array | None
    child_features: jax.Array | None
    labels: jax.Array


def _device_arrays(ex: Examples) -> _Arrays:
    put = lambda a: None if a is None else jnp.asarray(a)
    return _Arrays(
        put(ex.parent_weights),
        put(ex.child_weights),
        put(ex.parent_features),
        put(ex.child_features),
        jnp.asarray(ex.labels),
    )


def _gather(data: _Arrays, idx: jax.Array) -> Batch:
    """The batch of children ``idx`` ``[B]``, paired with every candidate, built on device."""
    pairs = lambda p, c: None if p is None else make_pairs(p, c[idx])
    return Batch(
        pairs(data.parent_weights, data.child_weights),
        pairs(data.parent_features, data.child_features),
        data.labels[idx],
    )


@dataclasses.dataclass(frozen=True)
class Detector:
    """A trained Lineage Detector.

    Attributes:
      module: the :class:`LineageDetector` definition.
      variables: ``{"params": ..., "batch_stats": ...}`` of the best validation epoch.
      history: one dict per epoch (``epoch``, ``lr``, ``train_loss``, ``train_accuracy``,
        ``val_loss``, ``val_accuracy``).
      best_epoch: the epoch whose variables were kept (1-based; 0 = never trained).
    """

    module: LineageDetector
    variables: PyTree
    history: tuple[dict, ...] = ()
    best_epoch: int = 0


def _loss_fn(params, state: TrainState, batch: Batch):
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats},
        batch.weight_pairs,
        batch.feature_pairs,
        train=True,
        mutable=["batch_stats"],
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch.labels).mean()
    return loss, (logits, updates["batch_stats"])


def _train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
    (loss, (logits, batch_stats)), grads = jax.value_and_grad(_loss_fn, has_aux=True)(state.params, state, batch)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch.labels)
    return state, {"loss": loss, "accuracy": accuracy}


#: One optimisation step ``(state, batch) -> (state, {"loss", "accuracy"})``: cross-entropy,
#: BatchNorm in train mode, optimiser from ``state.tx``. Pure and jitted.
train_step = jax.jit(_train_step)


@functools.partial(jax.jit, donate_argnames=("state",))
def _indexed_step(state: TrainState, data: _Arrays, idx: jax.Array) -> tuple[TrainState, dict]:
    """:func:`train_step` on the children ``idx`` ``[B]`` of on-device ``data``; pairs are built on device."""
    return _train_step(state, _gather(data, idx))


@functools.partial(jax.jit, static_argnames=("n", "batch_size", "steps"))
def _epoch_order(key: jax.Array, *, n: int, batch_size: int, steps: int) -> jax.Array:
    """``[steps, batch_size]`` child indices: a fresh permutation; the ``n - steps * batch_size`` left sit out."""
    return jax.random.permutation(key, n)[: steps * batch_size].reshape((steps, batch_size))


@functools.partial(jax.jit, static_argnames=("module",))
def _eval_logits(module: LineageDetector, variables: PyTree, data: _Arrays, idx: jax.Array) -> jax.Array:
    batch = _gather(data, idx)
    return module.apply(variables, batch.weight_pairs, batch.feature_pairs, train=False)


def _logits(module: LineageDetector, variables: PyTree, data: _Arrays, n: int, chunk: int) -> np.ndarray:
    """Eval-mode logits ``[n, K(+1)]`` in fixed-size chunks (the last one padded, so one compilation)."""
    chunk = max(1, min(chunk, n))
    out = []
    for s in range(0, n, chunk):
        idx = np.arange(s, s + chunk) % n
        out.append(np.asarray(_eval_logits(module, variables, data, jnp.asarray(idx)))[: min(chunk, n - s)])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _check_compatible(ex: Examples, module: LineageDetector, what: str) -> None:
    if ex.open_set and not module.no_parent:
        raise ValueError(
            f"{what} examples are open-set (label {ex.num_candidates} = 'no parent') "
            "but the detector has no 'no parent' logit; use LineageDetector(no_parent=True)"
        )


def _check_same_kind(a: Examples, b: Examples) -> None:
    for name in ("weights", "features"):
        pa, pb = getattr(a, f"parent_{name}"), getattr(b, f"parent_{name}")
        if (pa is None) != (pb is None):
            raise ValueError(
                f"train examples {'have' if pa is not None else 'lack'} {name} but val examples "
                f"{'have' if pb is not None else 'lack'} them"
            )
        if pa is not None and pa.shape[1:] != pb.shape[1:]:
            raise ValueError(f"train {name} have shape {pa.shape[1:]} but val {name} {pb.shape[1:]}")


def init_state(
    module: LineageDetector, examples: Examples, *, key: jax.Array, tx: optax.GradientTransformation
) -> TrainState:
    """A fresh :class:`TrainState` for ``module`` on the shapes of ``examples``."""
    data = _device_arrays(examples.take([0]))
    batch = _gather(data, jnp.zeros((1,), jnp.int32))
    variables = module.init(key, batch.weight_pairs, batch.feature_pairs, train=False)
    state = TrainState.create(
        apply_fn=module.apply, params=variables["params"], tx=tx, batch_stats=variables["batch_stats"]
    )
    # A strongly typed step counter: with the Python int 0 the second step would recompile.
    return state.replace(step=jnp.zeros((), jnp.int32))


@functools.lru_cache(maxsize=64)
def _adam(learning_rate: float, steps: int, decay_rate: float):
    """Adam with per-epoch step decay, one object per setting.

    The optimiser is a static field of the :class:`TrainState`, so the jitted step
    is cached on its identity: equal settings must give the same object, or every
    :func:`train` call (every fold of :func:`jaxlineage.eval.protocols.run_all`) would recompile.
    """
    schedule = optax.exponential_decay(learning_rate, transition_steps=steps, decay_rate=decay_rate, staircase=True)
    return schedule, optax.adam(schedule)


def train(
    train_examples: Examples,
    val_examples: Examples,
    *,
    key: jax.Array,
    module: LineageDetector | None = None,
    epochs: int = 10,
    batch_size: int = 16,
    learning_rate: float = 0.01,
    decay_rate: float = 0.7,
    eval_chunk: int = 64,
    monitor: Examples | None = None,
) -> Detector:
    """Trains a detector with Adam and per-epoch step decay; keeps the best validation epoch.

    .. math::

       \\eta_t = \\eta_0 \\cdot \\gamma^{\\lfloor t / S \\rfloor}

    with ``eta_0 = learning_rate``, ``gamma = decay_rate`` and ``S`` steps per epoch
    (the official code's ``StepLR(step_size=1, gamma=0.7)``). The training
    children live on device; each step is one jitted call of :func:`train_step`
    that gathers its batch on device, and the loop reads nothing back until the
    epoch ends. After each epoch the validation set is evaluated, and the variables of the epoch with the best
    validation accuracy (ties: lower validation loss, then the earlier epoch) are
    returned.

    Args:
      train_examples, val_examples: :class:`Examples` with the same candidates'
        shapes and modalities (see :meth:`Examples.take`).
      key: PRNG key (initialisation and data order).
      module: the detector (default: the paper's ``LineageDetector()``, with
        ``no_parent`` when the examples are open-set).
      epochs: passes over the training children (paper's README: 100; the learning
        rate has decayed by 0.7**10 = 0.03 after 10).
      batch_size: children per step (paper: 16), capped at the training set size.
      learning_rate, decay_rate: Adam's initial rate and its per-epoch factor.
      eval_chunk: children per evaluation call (bounds memory).
      monitor: optional examples (same kind as ``val_examples``) evaluated after every epoch and
        recorded in the history as ``monitor_loss`` / ``monitor_accuracy``; they never choose the
        epoch (for diagnostics: how a held-out set fares epoch by epoch).

    Returns:
      A :class:`Detector`.

    Raises:
      ValueError: an empty split, mismatched example sets, or open-set examples
        for a detector without the "no parent" logit.
    """
    for what, ex in (("train", train_examples), ("val", val_examples)):
        if len(ex) == 0:
            raise ValueError(f"the {what} split is empty: the detector needs at least one {what} child")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    _check_same_kind(train_examples, val_examples)
    if monitor is not None:
        _check_same_kind(train_examples, monitor)
    if module is None:
        module = LineageDetector(no_parent=train_examples.open_set or val_examples.open_set)
    _check_compatible(train_examples, module, "train")
    _check_compatible(val_examples, module, "val")
    if monitor is not None:
        _check_compatible(monitor, module, "monitor")

    n = len(train_examples)
    batch_size = min(batch_size, n)
    steps = n // batch_size
    schedule, tx = _adam(learning_rate, steps, decay_rate)
    init_key, order_key = jax.random.split(key)
    state = init_state(module, train_examples, key=init_key, tx=tx)
    train_data, val_data = _device_arrays(train_examples), _device_arrays(val_examples)
    monitor_data = None if monitor is None or len(monitor) == 0 else _device_arrays(monitor)
    val_labels = val_examples.labels

    history, best, best_score = [], None, None
    for epoch in range(1, epochs + 1):
        lr = float(schedule(int(state.step)))
        # Steps are dispatched asynchronously; nothing returns to the host until the
        # epoch's metrics are read. (A lax.scan over steps would make the epoch a
        # single call, but XLA:CPU runs convolutions inside loops ~30x slower.)
        order = _epoch_order(jax.random.fold_in(order_key, epoch), n=n, batch_size=batch_size, steps=steps)
        step_metrics = []
        for s in range(steps):
            state, m = _indexed_step(state, train_data, order[s])
            step_metrics.append(m)
        metrics = jax.device_get(jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *step_metrics))
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        logits = _logits(module, variables, val_data, len(val_examples), eval_chunk)
        val_loss, val_acc = _loss_accuracy(logits, val_labels)
        history.append(
            dict(
                epoch=epoch,
                lr=lr,
                train_loss=float(metrics["loss"]),
                train_accuracy=float(metrics["accuracy"]),
                val_loss=val_loss,
                val_accuracy=val_acc,
            )
        )
        if monitor_data is not None:
            m_loss, m_acc = _loss_accuracy(
                _logits(module, variables, monitor_data, len(monitor), eval_chunk), monitor.labels
            )
            history[-1].update(monitor_loss=m_loss, monitor_accuracy=m_acc)
        log.info(
            "detector: epoch %d lr %.2e train loss %.4f acc %.3f | val loss %.4f acc %.3f",
            epoch,
            lr,
            history[-1]["train_loss"],
            history[-1]["train_accuracy"],
            val_loss,
            val_acc,
        )
        score = (val_acc, -val_loss)
        if best_score is None or score > best_score:
            # Copies: the next epoch donates (overwrites) the state's buffers.
            best, best_score, best_epoch = jax.tree.map(jnp.copy, variables), score, epoch
    return Detector(module=module, variables=best, history=tuple(history), best_epoch=best_epoch)


def _loss_accuracy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    loss = optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), jnp.asarray(labels))
    return float(jnp.mean(loss)), float(np.mean(np.argmax(logits, -1) == labels))


def predict_logits(detector: Detector, examples: Examples, *, chunk: int = 64) -> np.ndarray:
    """Eval-mode logits ``[M, K]`` (``[M, K + 1]`` with the "no parent" logit last)."""
    _check_compatible(examples, detector.module, "these")
    if len(examples) == 0:
        return np.zeros((0, examples.num_candidates + int(detector.module.no_parent)), np.float32)
    return _logits(detector.module, detector.variables, _device_arrays(examples), len(examples), chunk)


def assess(detector: Detector, examples: Examples, *, chunk: int = 64) -> dict:
    """Accuracy and loss of ``detector`` on ``examples`` (formerly ``evaluate``).

    Returns:
      ``accuracy``, ``loss``, ``n``, ``predictions`` ``[M]`` (index ``K`` = "no parent"),
      ``labels`` ``[M]``; for open-set examples also ``n_no_parent``,
      ``accuracy_no_parent`` (on the parentless children; ``nan`` if none) and
      ``accuracy_with_parent``.

    Raises:
      ValueError: empty ``examples``.
    """
    if len(examples) == 0:
        raise ValueError("assess: the example set is empty")
    logits = predict_logits(detector, examples, chunk=chunk)
    loss, acc = _loss_accuracy(logits, examples.labels)
    pred = np.argmax(logits, -1)
    out = dict(accuracy=acc, loss=loss, n=len(examples), predictions=pred, labels=examples.labels.copy())
    if examples.open_set:
        none = examples.no_parent
        correct = pred == examples.labels
        out.update(
            n_no_parent=int(none.sum()),
            accuracy_no_parent=float(correct[none].mean()) if none.any() else float("nan"),
            accuracy_with_parent=float(correct[~none].mean()) if (~none).any() else float("nan"),
        )
    return out
