"""Model DNA's fragments: a pool of models and their outputs on the inputs, checked.

Part of :mod:`jaxlineage.mgmp`, which re-exports the public names.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlineage.errors import JaxlineageError
from jaxlineage.mgmp._common import ApplyFn, MGMPError, Network, PyTree
from jaxlineage.mgmp._model import Assembly, Config
from jaxlineage.models import Models


class Pool(NamedTuple):
    """The model pool: targets known to derive (or not) from the source.

    Attributes:
        homologous: populations of models derived from the source (``M_t``).
        non_homologous: populations of models not derived from it (``M̄_t``).
    """

    homologous: Models | Sequence[Models]
    non_homologous: Models | Sequence[Models]


class PoolOutputs(NamedTuple):
    """The pool models' outputs on the DNA inputs, precomputed once, on device.

    Attributes:
        homologous: ``[H, N, C]``.
        non_homologous: ``[K, N, C]``.
    """

    homologous: jax.Array
    non_homologous: jax.Array


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def _population_apply(apply_fn, params, x):
    return jax.vmap(apply_fn, in_axes=(0, None))(params, x)


def population_outputs(apply_fn: ApplyFn, params: PyTree, x: jax.Array, *, chunk_size: int = 1024) -> jax.Array:
    """Outputs ``[M, N, C]`` of a stacked population on ``x`` ``[N, *S]``: one jitted ``vmap``.

    The inputs are processed in chunks of ``chunk_size`` (the last one padded, so
    there is one compilation) to bound memory.
    """
    x = jnp.asarray(x)
    n = x.shape[0]
    if n == 0:
        raise MGMPError(f"population_outputs: empty inputs x (shape {x.shape})")
    chunk = min(chunk_size, n)
    outs = []
    for s in range(0, n, chunk):
        xb = x[s : s + chunk]
        pad = chunk - xb.shape[0]
        if pad:
            xb = jnp.concatenate([xb, jnp.zeros((pad, *xb.shape[1:]), xb.dtype)])
        outs.append(_population_apply(apply_fn, params, xb)[:, : chunk - pad])
    return jnp.concatenate(outs, axis=1)


def model_outputs(network: Network, x: jax.Array, *, chunk_size: int = 1024) -> jax.Array:
    """Outputs ``[N, C]`` of one ``(apply_fn, params)`` network on ``x``."""
    apply_fn, params = network
    stacked = jax.tree.map(lambda p: jnp.asarray(p)[None], params)
    return population_outputs(apply_fn, stacked, x, chunk_size=chunk_size)[0]


def _as_models(apply_fn, params, names=None) -> Models:
    try:
        return Models.from_apply(apply_fn, params, stacked=True, ids=names or None)
    except JaxlineageError as e:
        raise MGMPError(str(e)) from e


def _as_populations(side, name: str) -> list[Models]:
    """A pool side as :class:`~jaxlineage.models.Models`: one, a list, or ``(apply_fn, params[, names])``."""
    if isinstance(side, Models):
        return [side]
    if isinstance(side, tuple) and len(side) in (2, 3) and callable(side[0]):
        return [_as_models(*side)]
    return [p if isinstance(p, Models) else _as_models(*p) for p in side]


def _population_size(pop: Models, what: str) -> int:
    leaves = jax.tree.leaves(pop.params)
    if not leaves:
        raise MGMPError(f"{what}: the population's params have no leaves")
    sizes = {int(np.shape(leaf)[0]) if np.ndim(leaf) else -1 for leaf in leaves}
    if len(sizes) != 1 or -1 in sizes:
        raise MGMPError(
            f"{what}: params must be stacked with one leading model axis, got leading sizes {sorted(sizes)}"
        )
    m = sizes.pop()
    return m


def pool_outputs(pool: Pool, x: jax.Array, *, chunk_size: int = 1024) -> PoolOutputs:
    """Runs every pool model on ``x`` once (a jitted ``vmap`` per population).

    Raises:
        MGMPError: a side of the pool is empty, outputs are not ``[N, C]`` or are
            not finite, or the output dims differ within the pool (naming the model).
    """
    outputs, _ = _pool_outputs_named(pool, _as_inputs(x), chunk_size=chunk_size)
    return outputs


def _pool_outputs_named(pool: Pool, x, *, chunk_size: int = 1024):
    """:func:`pool_outputs` and the models' names ``(homologous, non_homologous)``."""
    sides, all_names = [], []
    for side, label in ((pool.homologous, "homologous"), (pool.non_homologous, "non_homologous")):
        pops = _as_populations(side, label)
        outs, names = [], []
        for j, pop in enumerate(pops):
            _population_size(pop, f"pool.{label}[{j}]")
            out = population_outputs(pop.logits_fn, pop.params, x, chunk_size=chunk_size)
            pop_names = tuple(pop.ids)
            for i, nm in enumerate(pop_names):
                _check_output(out[i], x, nm)
            outs.append(out)
            names.extend(pop_names)
        if not names:
            raise MGMPError(
                f"the pool has no {label.replace('_', '-')} models: MGMP needs at least one "
                "homologous and one non-homologous model to train on"
            )
        c = outs[0].shape[-1]
        for out_i, nm in zip((o_i for o in outs for o_i in o), names):
            if out_i.shape[-1] != c:
                raise MGMPError(f"pool model {nm!r} has outputs {tuple(out_i.shape)}, but {names[0]!r} has {c} outputs")
        sides.append(jnp.concatenate(outs) if len(outs) > 1 else outs[0])
        all_names.append(tuple(names))
    return PoolOutputs(*sides), tuple(all_names)


def next_token_outputs(logits_fn: ApplyFn, *, vocab_size: int, name: str = "model") -> ApplyFn:
    r"""A language model as a Model DNA output function: one fragment per context window.

    For a causal LM ``logits_fn(params, tokens [N, T]) -> [N, T, V]`` the DNA input ``x_i`` is a
    context window of ``T`` tokens and the model output ``y_i`` is the next-token distribution
    after it, as centred logits (the logits at the last position minus their mean over the
    vocabulary; the softmax's free additive constant removed, so ``y_i`` is also the centred
    log-probabilities):

    .. math:: y_i = \ell_{i,T} - \tfrac1V \textstyle\sum_v \ell_{i,T}[v] \in \mathbb{R}^V

    The returned function takes the DNA inputs as :func:`train` keeps them (float: the token ids
    cast, as the generator reads them) and casts them back to int before calling ``logits_fn``.

    Args:
        logits_fn: the LM's pure logits function.
        vocab_size: ``V``.
        name: the model's name in error messages.

    Returns:
        ``fn(params, x [N, T]) -> [N, V]``.

    Raises:
        MGMPError: (when called) ``logits_fn`` does not give next-token logits ``[N, T, V]``, naming
        ``name`` (e.g. a classifier).
    """
    v = int(vocab_size)

    def fn(params, x):
        out = logits_fn(params, jnp.round(x).astype(jnp.int32))
        if out.ndim != 3 or out.shape[:2] != x.shape[:2] or out.shape[2] != v:
            raise MGMPError(
                f"model {name!r} is not a language model of vocabulary {v}: on token windows {tuple(x.shape)}"
                f" it returned {tuple(out.shape)}; next-token outputs need logits [N, T, {v}]"
            )
        last = out[:, -1, :]
        return last - jnp.mean(last, axis=-1, keepdims=True)

    return fn


def _check_output(out, x, name):
    if out.ndim != 2 or out.shape[0] != x.shape[0]:
        raise MGMPError(
            f"model {name!r} gives outputs of shape {tuple(out.shape)} on inputs {tuple(x.shape)}; MGMP needs [N, C]"
        )
    if not bool(jnp.all(jnp.isfinite(out))):
        raise MGMPError(f"model {name!r} gives non-finite outputs")


def _check_fit(config: Config, c: int, name: str, source_c: int | None = None):
    """Raises unless a model with ``c`` outputs fits the assembly (and the source)."""
    if config.uses_generator and config.assembly is Assembly.ADD and c != config.dna_dim:
        raise MGMPError(
            f"{name} has {c} outputs, but assembly 'add' needs outputs of dna_dim={config.dna_dim} "
            "(o = z + y); set dna_dim to the number of outputs or use assembly 'concat'"
        )
    if source_c is not None and c != source_c:
        raise MGMPError(
            f"{name} has {c} outputs but the source has {source_c}: the source and target fragments "
            "must have one dim to be compared"
        )


def fragment_cosine(source_outputs: Any, target_outputs: Any) -> np.ndarray:
    r"""Per-input cosine between a source's and targets' outputs: how much lineage one fragment carries untrained.

    .. math:: c_{mi} = \frac{\langle y^s_i, y^{t_m}_i \rangle}{\lVert y^s_i \rVert\, \lVert y^{t_m}_i \rVert}

    (norm products floored at ``1e-12``), in float64. The no-generator fragments
    of MGMP are these outputs, so a single threshold on ``c`` is a reference
    point for what the provenance classifier can learn from one fragment.

    Args:
        source_outputs: ``[N, C]``.
        target_outputs: ``[N, C]`` (one target) or ``[M, N, C]``.

    Returns:
        ``[N]`` or ``[M, N]``.
    """
    s = np.asarray(source_outputs, np.float64)
    t = np.asarray(target_outputs, np.float64)
    if s.ndim != 2 or t.shape[-2:] != s.shape:
        raise MGMPError(
            f"fragment_cosine: source outputs must be [N, C] and targets [N, C] or [M, N, C] of the same"
            f" N, C; got {s.shape} and {t.shape}"
        )
    num = np.sum(s * t, axis=-1)
    return num / np.maximum(np.linalg.norm(s, axis=-1) * np.linalg.norm(t, axis=-1), 1e-12)


def _as_inputs(data) -> jax.Array:
    if isinstance(data, (tuple, list)):  # (x, y) as returned by Zoo.task_data
        data = data[0]
    x = jnp.asarray(data)
    if x.ndim < 2:
        raise MGMPError(f"data must be inputs [N, *S], got shape {x.shape}")
    if x.shape[0] == 0:
        raise MGMPError(f"empty data: no DNA inputs (shape {x.shape})")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return x
