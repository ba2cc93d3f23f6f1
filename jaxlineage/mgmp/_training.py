"""Training Model DNA's generator and classifier, and predicting provenance with them.

Part of :mod:`jaxlineage.mgmp`, which re-exports the public names.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlineage.mgmp._common import MGMPError, Network
from jaxlineage.mgmp._fragments import (
    Pool,
    PoolOutputs,
    _as_inputs,
    _check_fit,
    _check_output,
    _pool_outputs_named,
    model_outputs,
)
from jaxlineage.mgmp._model import Config, State, _classify, _generate, _optimizer, assemble, dna_similarity_loss, init


class _Arrays(NamedTuple):
    x: jax.Array  # [N, *S]
    source: jax.Array  # [N, C]
    homologous: jax.Array  # [H, N, C]
    non_homologous: jax.Array  # [K, N, C]


def _loss(params, config: Config, xb, ysb, ytb, ynb, key):
    """The joint objective on one mini-batch and one (homologous, non-homologous) pair."""
    k_gen, k_pos, k_neg = jax.random.split(key, 3)
    z = _generate(config, params["generator"], xb, train=True, key=k_gen)
    # One z_i per input, shared by the source's and both targets' fragments.
    o_s, o_t, o_n = (assemble(z, y, config.assembly) for y in (ysb, ytb, ynb))
    b = xb.shape[0]
    if config.uses_generator:
        l_s, l_i = dna_similarity_loss(o_s, o_t, o_n, tau=config.tau)
        if config.normalize_dna_loss:
            l_s, l_i = l_s / b, l_i / (b * (b - 1))
        reg = config.lam * optax.tree.norm(params["generator"])
    else:  # Nothing to shape: the fragments are fixed model outputs.
        l_s = l_i = reg = jnp.zeros((), jnp.float32)
    logit_pos = _classify(config, params["classifier"], o_s, o_t, train=True, key=k_pos)
    logit_neg = _classify(config, params["classifier"], o_s, o_n, train=True, key=k_neg)
    logits = jnp.concatenate([logit_pos, logit_neg])
    labels = jnp.concatenate([jnp.ones((b,), logits.dtype), jnp.zeros((b,), logits.dtype)])
    bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))
    total = config.dna_weight * (l_s + config.l_i_weight * l_i) + reg + bce
    acc = jnp.mean((logits > 0) == (labels > 0.5))
    return total, dict(loss=total, l_s=l_s, l_i=l_i, l2=reg, bce=bce, train_accuracy=acc)


def _step(params, opt_state, arrays: _Arrays, key, config: Config):
    k_batch, k_h, k_n, k_loss = jax.random.split(key, 4)
    n = arrays.x.shape[0]
    idx = jax.random.choice(k_batch, n, (config.batch_size,), replace=False)
    h = jax.random.randint(k_h, (), 0, arrays.homologous.shape[0])
    k = jax.random.randint(k_n, (), 0, arrays.non_homologous.shape[0])
    xb, ysb = arrays.x[idx], arrays.source[idx]
    ytb, ynb = arrays.homologous[h, idx], arrays.non_homologous[k, idx]
    (_, metrics), grads = jax.value_and_grad(_loss, has_aux=True)(params, config, xb, ysb, ytb, ynb, k_loss)
    updates, opt_state = _optimizer(config).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics


@jax.jit
def train_step(state: State, outputs: PoolOutputs, key: jax.Array) -> tuple[State, dict]:
    """One jitted training step: sample a mini-batch and a pool pair, update both networks.

    The mini-batch (``B`` input indices, drawn without replacement) and the pair
    (one homologous and one non-homologous pool model, uniformly) are sampled on
    device from ``fold_in(key, state.step)`` and gathered from ``state.x``,
    ``state.source_outputs`` and the precomputed ``outputs``; nothing goes through
    the host, so a loop of calls with one fixed ``key`` runs asynchronously.

    .. math::
        L = w_{dna} (L_S + w_I L_I) + \\lambda \\lVert w_g \\rVert_2
            + \\mathrm{BCE}(f_p([o^s ; o^t]), 1) + \\mathrm{BCE}(f_p([o^s ; \\bar o^t]), 0)

    Args:
        state: the :class:`State` (its ``config`` is static).
        outputs: :class:`PoolOutputs` on ``state.x``.
        key: PRNG key of the run; the step counter is folded in.

    Returns:
        ``(new_state, metrics)`` with scalar ``loss, l_s, l_i, l2, bce, train_accuracy``
        (``l_s`` and ``l_i`` as weighted in the loss: divided by their numbers of
        terms when ``config.normalize_dna_loss``).

    References:
        Mu et al., "Model Provenance via Model DNA", ECAI 2024: the joint loss
        ``L + BCE`` and the pool sampling.
    """
    arrays = _Arrays(state.x, state.source_outputs, outputs.homologous, outputs.non_homologous)
    step_key = jax.random.fold_in(key, state.step)
    params, opt_state, metrics = _step(state.params, state.opt_state, arrays, step_key, state.config)
    return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics


def train(
    source: Network,
    pool: Pool | PoolOutputs,
    data,
    config: Config | None = None,
    *,
    key: jax.Array,
) -> tuple[State, dict[str, np.ndarray]]:
    """Jointly trains the DNA generator and the provenance classifier for one source model.

    Each step draws ``B`` DNA inputs and one (homologous, non-homologous) pair from
    the pool, builds the fragments ``o^s, o^t, ō^t`` and minimises

    .. math::
        w_{dna} (L_S + w_I L_I) + \\lambda \\lVert w_g \\rVert_2 + \\mathrm{BCE}

    (:func:`dna_similarity_loss`, :func:`train_step`). The pool's outputs on the
    DNA inputs are computed once and stay on device; each step is one call of the
    jitted :func:`train_step`, which samples and gathers its batch on device, so
    the loop never waits for the host. Runs unchanged on CPU, GPU and TPU.

    Args:
        source: the source model ``(apply_fn, params)``, ``apply_fn(params, x) -> [N, C]``.
        pool: a :class:`Pool` of populations, or :class:`PoolOutputs` already
            computed on ``data``.
        data: the DNA inputs ``x`` ``[N, *S]`` from the source's training data, or
            an ``(x, y)`` pair (labels are not used).
        config: :class:`Config` (default ``Config()``).
        key: PRNG key; the result is a deterministic function of it.

    Returns:
        ``(state, history)``: the trained :class:`State` and per-step metrics
        (numpy ``[num_steps]`` each: ``loss, l_s, l_i, l2, bce, train_accuracy``).

    Raises:
        MGMPError: empty data; a pool without homologous or non-homologous models;
        outputs that do not fit the assembly (``ADD`` needs ``C == dna_dim``) or
        differ from the source's (naming the model and shape); a batch larger than
        the data.

    References:
        Mu et al., "Model Provenance via Model DNA", ECAI 2024: DNA generation, DNA
        similarity loss and provenance classifier, trained jointly.
    """
    config = Config() if config is None else config
    x = _as_inputs(data)
    if config.batch_size > x.shape[0]:
        raise MGMPError(f"Config.batch_size={config.batch_size} exceeds the {x.shape[0]} DNA inputs")
    ys = model_outputs(source, x)
    _check_output(ys, x, "source")
    _check_fit(config, ys.shape[-1], "the source model")
    if isinstance(pool, PoolOutputs):
        outputs, names = pool, ((), ())
    else:
        outputs, names = _pool_outputs_named(pool, x)
    for arr, side_names, label in (
        (outputs.homologous, names[0], "homologous"),
        (outputs.non_homologous, names[1], "non-homologous"),
    ):
        if arr.shape[0] == 0:
            raise MGMPError(f"the pool has no {label} models: MGMP needs at least one of each to train on")
        if arr.ndim != 3 or arr.shape[1] != x.shape[0]:
            raise MGMPError(f"{label} pool outputs have shape {tuple(arr.shape)}; expected [M, {x.shape[0]}, C]")
        name = side_names[0] if side_names else f"{label} pool model 0"
        _check_fit(config, int(arr.shape[-1]), f"pool model {name!r}", source_c=int(ys.shape[-1]))
    k_init, k_train = jax.random.split(key)
    state = init(config, x, ys, key=k_init)
    outputs = jax.device_put(outputs)
    history = []
    for _ in range(config.num_steps):  # asynchronous dispatch: no host round trip in the loop
        state, metrics = train_step(state, outputs, k_train)
        history.append(metrics)
    history = jax.device_get(history)
    return state, {k: np.asarray([h[k] for h in history]) for k in history[0]}


class Prediction(NamedTuple):
    """Provenance decisions for one or more targets.

    Attributes:
        probabilities: per-fragment ``P(homologous)`` ``[N]`` (``[M, N]`` for ``M`` targets).
        fraction: fraction of fragments with probability above ``config.threshold`` (``[]`` / ``[M]``).
        homologous: model-level decision ``fraction >= config.delta`` (bool).
    """

    probabilities: jax.Array
    fraction: jax.Array
    homologous: jax.Array


@jax.jit
def _probabilities(state: State, target_outputs: jax.Array) -> jax.Array:
    config = state.config
    z = _generate(config, state.params["generator"], state.x, train=False)
    o_s = assemble(z, state.source_outputs, config.assembly)

    def one(y_t):
        o_t = assemble(z, y_t, config.assembly)
        return jax.nn.sigmoid(_classify(config, state.params["classifier"], o_s, o_t, train=False))

    return jax.vmap(one)(target_outputs)


def predict_outputs(state: State, outputs: jax.Array, *, delta: float | None = None) -> Prediction:
    """Classifies targets from their precomputed outputs on ``state.x``.

    .. math::
        p_i = f_p([o^s_i ; o^t_i]), \\qquad
        \\text{homologous} \\iff \\tfrac{1}{N} \\sum_i [p_i > 0.5] \\ge \\delta

    Args:
        state: a trained :class:`State`.
        outputs: one target's outputs ``[N, C]`` or ``M`` targets' ``[M, N, C]`` on ``state.x``.
        delta: the model-level threshold (default ``state.config.delta``).

    Returns:
        A :class:`Prediction` (leading ``[M]`` axis when ``outputs`` has one).

    References:
        Mu et al., "Model Provenance via Model DNA", ECAI 2024: fragment- and
        model-level provenance decisions.
    """
    outputs = jnp.asarray(outputs)
    single = outputs.ndim == 2
    batch = outputs[None] if single else outputs
    n, c = state.source_outputs.shape
    if batch.ndim != 3 or batch.shape[1:] != (n, c):
        raise MGMPError(
            f"target outputs of shape {tuple(outputs.shape)}; expected [{n}, {c}] or [M, {n}, {c}] "
            "(the target must give the source's number of outputs on the DNA inputs)"
        )
    probs = _probabilities(state, batch)
    delta = state.config.delta if delta is None else float(delta)
    frac = jnp.mean(probs > state.config.threshold, axis=-1)
    pred = Prediction(probs, frac, frac >= delta)
    return jax.tree.map(lambda a: a[0], pred) if single else pred


def predict(state: State, target: Network, *, delta: float | None = None) -> Prediction:
    """Classifies one target model ``(apply_fn, params)`` on the DNA inputs ``state.x``.

    Returns per-fragment probabilities ``[N]``, the fraction above ``threshold``
    and the model-level decision at ``delta`` (see :func:`predict_outputs`).

    Raises:
        MGMPError: the target's outputs are not ``[N, C]`` with the source's ``C``.
    """
    out = model_outputs(target, state.x)
    _check_output(out, state.x, "target")
    _check_fit(state.config, int(out.shape[-1]), "the target model", source_c=int(state.source_outputs.shape[-1]))
    return predict_outputs(state, out, delta=delta)


def with_inputs(state: State, source: Network, x) -> State:
    """The same trained state on other DNA inputs (e.g. held-out data): ``x`` and the source's outputs on it."""
    x = _as_inputs(x)
    if x.shape[1:] != state.x.shape[1:]:
        raise MGMPError(f"inputs of shape {tuple(x.shape)} but the state was trained on {tuple(state.x.shape)}")
    ys = model_outputs(source, x)
    if ys.shape[-1] != state.source_outputs.shape[-1]:
        raise MGMPError(
            f"the source gives {ys.shape[-1]} outputs, the state was trained with {state.source_outputs.shape[-1]}"
        )
    return state.replace(x=x, source_outputs=ys)
