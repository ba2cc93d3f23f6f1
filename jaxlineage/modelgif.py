"""ModelGiF: model gradient fields and the functional distance between models.

A model's *gradient field* at a reference input ``x`` is the sequence of
cumulative integrated gradients along the straight path from a baseline ``x0``
to ``x``. Two models are functionally close when their fields point the same way
at the same reference points, whatever their architectures: only the input space
has to agree.

Everything here works on the library's one contract, a pure
``apply_fn(params, x) -> [N, C]`` over a params pytree (as in :class:`jaxlineage.models.Models`).

Notation used throughout: ``N`` reference points, ``K = steps`` quadrature nodes,
``D`` the flattened input dimension (``prod(x.shape[1:])``), ``M`` models in a
population (a stacked params pytree with a leading model axis).

References:
    Song, Xu, Wu, Chen, Song. "ModelGiF: Gradient Fields for Model Functional
    Distance". ICCV 2023, arXiv:2309.11013 (the field, its curves and their
    cosine distance; the intellectual-property-protection experiments). Official
    code: github.com/zju-vipa/modelgif, ``intellectual_property_protection/``.
    Sundararajan, Taly, Yan. "Axiomatic Attribution for Deep Networks". ICML 2017
    (Integrated Gradients and the completeness axiom).
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlineage.models import Models

__all__ = [
    "ReferenceSampling",
    "Target",
    "distance",
    "distance_matrix",
    "feature_sum",
    "gauss_legendre",
    "gradient_field",
    "sample_references",
    "token_field",
]

ApplyFn = Callable[[Any, jax.Array], jax.Array]


class Target(enum.Enum):
    """Which scalar output ``F`` of the model the field integrates.

    Besides these two members, ``gradient_field`` accepts a fixed class index
    (``int``) or a callable ``F(output) -> scalar`` applied to the model's output
    for one input (shape ``[C]`` for a classifier).

    Attributes:
        PREDICTED: the logit of the class the model itself predicts at the reference
            ``x`` (``argmax`` of its output at ``x``, not at the path points). The
            default, as in ModelGiF's code (``attribute_only_prediction``). Each model
            of a population uses its own prediction.
        LABEL: the logit of the given label ``labels[n]`` (same class for every
            model).
    """

    PREDICTED = "predicted"
    LABEL = "label"


class ReferenceSampling(enum.Enum):
    """How ``sample_references`` picks reference points from a data split.

    Both strategies look at the data only. Neither ever evaluates a model, so the
    choice of references cannot leak information about the models being compared.

    Attributes:
        RANDOM: a uniform sample without replacement. The default.
        CLASS_BALANCED: as even a split over classes as possible, ordered round-robin
            over classes so that every prefix of the sample is balanced too (a sweep
            over reference counts can then take prefixes of one draw).
    """

    RANDOM = "random"
    CLASS_BALANCED = "class_balanced"


# ---------------------------------------------------------------------------
# Quadrature.


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on ``[0, 1]``.

    .. math::
        \\alpha_k = (1 + t_k) / 2, \\qquad w_k = \\omega_k / 2,

    where ``(t_k, ω_k)`` are the ``K``-point Gauss-Legendre nodes and weights on
    ``[-1, 1]``. The rule integrates polynomials of degree ``2K - 1`` exactly.

    Args:
        steps: the number of nodes ``K >= 1``.

    Returns:
        ``(alphas [K], weights [K])`` in float64, ``alphas`` increasing in ``(0, 1)``
        and ``sum(weights) == 1``.
    """
    steps = _check_steps(steps)
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return (1.0 + nodes) / 2.0, weights / 2.0


# ---------------------------------------------------------------------------
# Gradient fields.


def gradient_field(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    *,
    baseline: jax.Array | None = None,
    steps: int = 50,
    target: Target | str | int | Callable[[jax.Array], jax.Array] = Target.PREDICTED,
    labels: jax.Array | None = None,
    chunk_size: int | None = None,
    memory_budget_bytes: int | None = None,
) -> jax.Array:
    """The ModelGiF gradient field of one model at ``N`` reference points.

    For a reference ``x_n``, baseline ``x0``, scalar output ``F`` (see ``target``)
    and Gauss-Legendre nodes ``α_j`` with weights ``w_j`` on ``[0, 1]``:

    .. math::
        G_k(x_n) = (x_n - x_0) \\odot \\sum_{j \\le k} w_j\\,
                              \\nabla_z F\\big(x_0 + \\alpha_j (x_n - x_0)\\big),
        \\qquad k = 1, \\dots, K.

    ``G_K`` is Integrated Gradients, so (completeness)
    ``sum_d G_K(x_n)[d] = F(x_n) - F(x_0)`` up to quadrature error, which decays
    exponentially in ``K`` for smooth (e.g. tanh, GELU) models and more slowly for
    piecewise-linear (ReLU) ones.

    The gradients are ``vmap(jax.grad)`` over nodes and reference points; each
    point is fed to ``apply_fn`` as its own batch of one, so the field is that of
    the per-example function even if ``apply_fn`` mixes examples in a batch.

    Args:
        apply_fn: pure ``apply_fn(params, x [B, *S]) -> [B, C]``.
        params: the model's params pytree.
        x: reference points ``[N, *S]``, floating point.
        baseline: ``x0``, of shape ``S`` (shared) or ``[N, *S]`` (one per reference);
            zeros by default.
        steps: the number of quadrature nodes ``K >= 1`` (paper: 50).
        target: the scalar output ``F``: a ``Target`` (or its string value), a fixed
            class index ``int``, or a callable ``F(output) -> scalar`` taking the model
            output for one input (shape ``[C]``). Default ``Target.PREDICTED``.
        labels: integer ``[N]``, required with (and only with) ``Target.LABEL``.
        chunk_size: evaluate this many reference points at a time (``lax.map`` over
            chunks of a ``vmap``) to bound memory. ``None``: all at once. The result
            does not depend on it.
        memory_budget_bytes: alternative to ``chunk_size``: choose the chunk so that
            the field's own buffers (nodes, gradients, field: ``3 K D`` numbers per
            reference) fit this many bytes. Network activations come on top, so leave
            headroom. At least one reference per chunk.

    Returns:
        The field ``G``, shape ``[N, K, D]``, dtype of ``x``.

    Raises:
        ValueError: on inputs ``apply_fn`` cannot take, a baseline of the wrong shape,
            ``steps < 1``, a target index or label outside ``[0, C)``, or missing /
            superfluous ``labels``.

    Example:
        >>> import jax.numpy as jnp
        >>> import jaxlineage.modelgif as modelgif
        >>> w = jnp.arange(6.0).reshape(3, 2)
        >>> apply_fn = lambda p, x: x @ p
        >>> g = modelgif.gradient_field(apply_fn, w, jnp.ones((4, 3)), steps=8, target=1)
        >>> g.shape
        (4, 8, 3)
        >>> bool(jnp.allclose(g[:, -1], w[None, :, 1]))  # linear: G_K = (x - x0) * w_c
        True

    References:
        Song et al., "ModelGiF", ICCV 2023, the ModelGiF curve definition (and the official
        ``FieldGenerator``: Gauss-Legendre steps, cumulative sum, times ``x - x0``).
        Sundararajan et al., ICML 2017 (Integrated Gradients, completeness).
    """
    x = _check_inputs(x)
    steps = _check_steps(steps)
    target = _parse_target(target)
    x0 = _check_baseline(baseline, x)
    labels = _check_labels(labels, target, x.shape[0])
    _check_model(apply_fn, params, x, target, labels, name="apply_fn")
    chunk_size = _resolve_chunk_size(
        chunk_size,
        memory_budget_bytes,
        bytes_per_reference=3 * steps * _flat_dim(x) * x.dtype.itemsize,
    )
    if chunk_size is not None and chunk_size >= x.shape[0]:
        chunk_size = None  # One chunk: identical to the plain vmap.
    return _gradient_field(
        params,
        x,
        x0,
        labels,
        apply_fn=apply_fn,
        steps=steps,
        target=target,
        chunk_size=chunk_size,
    )


def _field_one(apply_fn, target, steps, params, x, x0, label):
    """The field ``[K, D]`` at one reference ``x [*S]`` (inputs already checked)."""
    alphas, weights = gauss_legendre(steps)
    alphas = jnp.asarray(alphas, x.dtype)
    weights = jnp.asarray(weights, x.dtype)

    if target is Target.PREDICTED:
        # The class is fixed at the reference point, not re-chosen along the path.
        cls = jnp.argmax(apply_fn(params, x[None])[0])
    elif target is Target.LABEL:
        cls = label
    else:
        cls = target  # An int, or unused for a callable.

    def scalar_output(z):
        out = apply_fn(params, z[None])[0]
        return target(out) if callable(target) else out[cls]

    delta = x - x0
    path = x0[None] + alphas.reshape((steps,) + (1,) * x.ndim) * delta[None]
    grads = jax.vmap(jax.grad(scalar_output))(path).reshape(steps, -1)
    return jnp.cumsum(weights[:, None] * grads, axis=0) * delta.reshape(1, -1)


@functools.partial(jax.jit, static_argnames=("apply_fn", "steps", "target", "chunk_size"))
def _gradient_field(params, x, x0, labels, *, apply_fn, steps, target, chunk_size):
    one = functools.partial(_field_one, apply_fn, target, steps, params)
    if chunk_size is None:
        return jax.vmap(one)(x, x0, labels)
    return jax.lax.map(lambda args: one(*args), (x, x0, labels), batch_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("apply_fn", "steps", "target"))
def _population_field(params, x, x0, labels, *, apply_fn, steps, target):
    """Fields ``[M, n, K, D]`` of a stacked population at a chunk of references."""

    def one_model(p):
        one = functools.partial(_field_one, apply_fn, target, steps, p)
        return jax.vmap(one)(x, x0, labels)

    return jax.vmap(one_model)(params)


def token_field(
    logits_fn: ApplyFn,
    params: Any,
    tokens: Any,
    targets: Any = None,
    *,
    vocab_size: int,
    steps: int = 8,
    baseline: str | jax.Array = "uniform",
    chunk_size: int | None = None,
    dtype: Any = jnp.float32,
    name: str = "model",
) -> jax.Array:
    r"""The ModelGiF gradient field of a language model, in token space, at ``N`` reference windows.

    A token sequence is not a continuous input, so the path runs through *soft tokens*: each
    reference window ``tokens[n]`` ``[T]`` becomes its one-hot ``x_n`` ``[T, V]`` and the model
    reads a point ``z`` of the path as the expected embedding ``z @ E`` (``E`` its own embedding
    table; a one-hot row is exactly its token's embedding). The field is then the classifier
    field of :func:`gradient_field` over the flattened one-hot input ``D = T V``:

    .. math::
        G_k(x_n) = (x_n - x_0) \odot \sum_{j \le k} w_j\, \nabla_z F_n\big(x_0 + \alpha_j (x_n - x_0)\big),
        \qquad F_n(z) = \sum_{t \in P_n} \log \mathrm{softmax}\big(f(z)_t\big)[y_{n,t}],

    the summed log-probability of the true next tokens ``y`` (``targets``) over the positions
    ``P_n``, with ``d F / d z[t, v] = <d F / d h_t, E[v]>`` (gradients through each model's own
    embedding table). The input space (positions x vocabulary) is the same for every model of a
    vocabulary, whatever its width and however its embedding table was initialised, so fields of
    unrelated models can be compared by :func:`distance` (ModelGiF's cosine distance), and every
    hidden-unit, head or residual-stream permutation leaves the field unchanged. The log-probability
    ignores the softmax's free additive constant of the logits. ``G_K`` is Integrated Gradients:
    ``sum_d G_K[d] = F(x) - F(x_0)`` up to the quadrature error (completeness).

    Args:
        logits_fn: ``logits_fn(params, z [B, T, V] float) -> [B, T, V]`` (e.g.
            :meth:`jaxlineage.nets_lm.LMNetwork.logits_fn`, which also takes int tokens).
        params: the model's params pytree.
        tokens: int reference windows ``[N, T]`` in ``[0, V)``, ``N >= 1``.
        targets: int next tokens ``[N, T]`` (``targets[n, t]`` follows ``tokens[n, t]``), every
            position attributed; ``None``: ``tokens[n, t + 1]`` for ``t < T - 1`` (the last position,
            whose next token lies outside the window, is left out).
        vocab_size: ``V``.
        steps: Gauss-Legendre nodes ``K >= 1``.
        baseline: ``"uniform"`` (default: ``x_0[t] = 1 / V``, no information about any token; the path
            stays among distributions), ``"zero"`` (no embedding: then only the true tokens' entries of
            the field are non-zero), or an array ``[T, V]`` / ``[N, T, V]``.
        chunk_size: reference windows per chunk (``lax.map``), to bound memory; ``None``: all at once.
        dtype: the one-hot's float dtype (``float64`` needs ``jax_enable_x64``).
        name: the model's name in error messages.

    Returns:
        The field ``[N, K, T * V]``.

    Raises:
        ValueError: naming ``name``: empty or non-integer references, tokens or targets outside
            ``[0, V)`` or of another shape, a bad baseline, or a model that does not map soft tokens
            ``[B, T, V]`` to next-token logits ``[B, T, V]`` (not a language model of this vocabulary).

    References:
        Song et al., "ModelGiF", ICCV 2023 (the field and its cosine distance). Sundararajan et al.,
        ICML 2017 (Integrated Gradients; completeness).
    """
    steps = _check_steps(steps)
    v = int(vocab_size)
    tok = np.asarray(tokens)
    if tok.ndim != 2 or tok.shape[0] == 0 or tok.shape[1] == 0:
        raise ValueError(f"token_field({name!r}): tokens must be a non-empty batch [N, T]; got shape {tok.shape}")
    if not np.issubdtype(tok.dtype, np.integer):
        raise ValueError(f"token_field({name!r}): tokens must be integers; got dtype {tok.dtype}")
    if tok.min() < 0 or tok.max() >= v:
        raise ValueError(f"token_field({name!r}): tokens must be in [0, {v}); got [{tok.min()}, {tok.max()}]")
    n, t = tok.shape
    if targets is None:
        tgt = np.concatenate([tok[:, 1:], np.zeros((n, 1), tok.dtype)], axis=1)
        mask = np.broadcast_to(np.arange(t) < t - 1, (n, t))
    else:
        tgt = np.asarray(targets)
        if tgt.shape != tok.shape or not np.issubdtype(tgt.dtype, np.integer):
            raise ValueError(
                f"token_field({name!r}): targets must be integers of the tokens' shape {tok.shape}; "
                f"got {tgt.dtype} {tgt.shape}"
            )
        if tgt.min() < 0 or tgt.max() >= v:
            raise ValueError(f"token_field({name!r}): targets must be in [0, {v}); got [{tgt.min()}, {tgt.max()}]")
        mask = np.ones((n, t), bool)
    x = jax.nn.one_hot(jnp.asarray(tok), v, dtype=dtype)
    if isinstance(baseline, str):
        if baseline not in ("uniform", "zero"):
            raise ValueError(f"token_field({name!r}): baseline must be 'uniform', 'zero' or an array; got {baseline!r}")
        x0 = jnp.full(x.shape, 1.0 / v if baseline == "uniform" else 0.0, dtype)
    else:
        x0 = _check_baseline(baseline, x)
    try:
        out = jax.eval_shape(logits_fn, params, x[:1])
    except Exception as err:  # re-raised naming the model; the cause is chained
        raise ValueError(
            f"token_field: model {name!r} cannot take soft tokens [1, {t}, {v}] (is it a language model of "
            f"vocabulary {v}?): {type(err).__name__}: {err}"
        ) from err
    if out.shape != (1, t, v):
        raise ValueError(
            f"token_field: model {name!r} maps soft tokens [1, {t}, {v}] to {out.shape}; a language model "
            f"gives next-token logits [1, {t}, {v}]"
        )
    chunk = _resolve_chunk_size(chunk_size, None, bytes_per_reference=1)
    chunk = None if chunk is None or chunk >= n else chunk
    return _token_field(
        params,
        x,
        x0,
        jnp.asarray(tgt, jnp.int32),
        jnp.asarray(mask, dtype),
        logits_fn=logits_fn,
        steps=steps,
        chunk_size=chunk,
    )


@functools.partial(jax.jit, static_argnames=("logits_fn", "steps", "chunk_size"))
def _token_field(params, x, x0, targets, mask, *, logits_fn, steps, chunk_size):
    def one(args):
        xn, x0n, yn, mn = args

        def log_likelihood(out):  # out [T, V]: the summed log-probability of the true next tokens
            logp = jax.nn.log_softmax(out, axis=-1)
            return jnp.sum(mn * jnp.take_along_axis(logp, yn[:, None], axis=-1)[:, 0])

        return _field_one(logits_fn, log_likelihood, steps, params, xn, x0n, None)

    args = (x, x0, targets, mask)
    if chunk_size is None:
        return jax.vmap(lambda *a: one(a))(*args)
    return jax.lax.map(one, args, batch_size=chunk_size)


def feature_sum(features: jax.Array) -> jax.Array:
    """``F(h) = sum_j h_j``: a head-free scalar for fields of feature functions.

    Used as ``target`` with a feature tap (``apply_fn = network.feature_fn(tap)``),
    it is the output of a fixed all-ones head shared by every model, so the field
    compares backbones only. ``jax.grad`` of it is ``J_h(x)^T 1``.

    Args:
        features: one input's features ``[D_h]``.

    Returns:
        A scalar.
    """
    return jnp.sum(features)


# ---------------------------------------------------------------------------
# Distances.


def _unit(field):
    """``field / ||field||`` over the last axis, and where the norm is zero.

    The field is first divided by its largest magnitude so that the squared norm
    neither underflows (tiny gradients) nor overflows in float32.

    Returns:
        ``(unit [..., D], is_zero [...])``; ``unit`` is 0 where ``is_zero``.
    """
    scale = jnp.max(jnp.abs(field), axis=-1, keepdims=True)
    is_zero = scale[..., 0] == 0
    scaled = field / jnp.where(scale == 0, 1, scale)
    norm = jnp.linalg.norm(scaled, axis=-1, keepdims=True)
    return scaled / jnp.where(norm == 0, 1, norm), is_zero


def _cosine(field_a, field_b):
    """Cosine over the last axis with the zero-field convention (see ``distance``)."""
    ua, za = _unit(field_a)
    ub, zb = _unit(field_b)
    return jnp.sum(ua * ub, axis=-1) + (za & zb).astype(ua.dtype)


@jax.jit
def _distance(field_a, field_b):
    return jnp.mean(1 - _cosine(field_a, field_b))


def distance(field_a: jax.Array, field_b: jax.Array) -> jax.Array:
    """ModelGiF distance: mean cosine distance between two gradient fields.

    .. math::
        d(A, B) = \\frac{1}{N K} \\sum_{n=1}^{N} \\sum_{k=1}^{K}
            \\Big[1 - \\cos\\big(G^A_k(x_n), G^B_k(x_n)\\big)\\Big] \\in [0, 2].

    Cosine is scale invariant, so ``d(A, c·A) = 0`` for ``c > 0``; ``d`` is
    symmetric and ``d(A, A) = 0``. The cosine of a zero vector is undefined; here
    ``cos(0, 0) = 1`` (identical fields are at distance 0) and ``cos(0, v) = 0`` for
    ``v != 0`` (as far as an orthogonal direction). No NaN is ever produced.

    Args:
        field_a: ``[N, K, D]`` from ``gradient_field`` (model A).
        field_b: ``[N, K, D]`` at the same references, baseline and steps (model B,
            of any architecture with the same input space).

    Returns:
        A scalar in ``[0, 2]``.

    Raises:
        ValueError: if the shapes differ or are not ``[N, K, D]``.

    References:
        Song et al., "ModelGiF", ICCV 2023, the curve distance (official code:
        ``field_distance`` in ``ipp_task.py``).
    """
    field_a = jnp.asarray(field_a)
    field_b = jnp.asarray(field_b)
    if field_a.ndim != 3 or field_a.shape != field_b.shape:
        raise ValueError(
            "distance expects two fields of the same shape [N, K, D]; got "
            f"field_a {field_a.shape} and field_b {field_b.shape}"
        )
    return _distance(field_a, field_b)


@jax.jit
def _cosine_per_reference(fields_a, fields_b):
    """``mean_k cos`` for every pair of models: ``[Ma, Mb, n]``."""
    ua, za = _unit(fields_a)  # [Ma, n, K, D], [Ma, n, K]
    ub, zb = _unit(fields_b)
    steps = fields_a.shape[2]
    # HIGHEST: TPU / GPU einsums default to bf16 / tf32 passes, too coarse for
    # cosines near 1 (the regime that separates children from independents).
    hi = jax.lax.Precision.HIGHEST
    dots = jnp.einsum("ankd,bnkd->abn", ua, ub, precision=hi)
    both_zero = jnp.einsum("ank,bnk->abn", za.astype(ua.dtype), zb.astype(ua.dtype), precision=hi)
    return (dots + both_zero) / steps


def distance_matrix(
    a: Models | jax.Array,
    b: Models | jax.Array | None = None,
    *,
    x: jax.Array | None = None,
    baseline: jax.Array | None = None,
    steps: int = 50,
    target: Target | str | int | Callable[[jax.Array], jax.Array] = Target.PREDICTED,
    labels: jax.Array | None = None,
    chunk_size: int | None = None,
    memory_budget_bytes: int | None = None,
    per_reference: bool = False,
) -> jax.Array:
    """ModelGiF distances between every model of ``a`` and every model of ``b``.

    .. math::
        D[i, j] = d(A_i, B_j) = \\frac{1}{N K} \\sum_{n, k}
            \\Big[1 - \\cos\\big(G^{A_i}_k(x_n), G^{B_j}_k(x_n)\\big)\\Big].

    Each side is either precomputed fields ``[M, N, K, D]`` or a :class:`~jaxlineage.models.Models`
    (an apply function and stacked params), whose fields are computed here with
    ``vmap`` over models. The two sides may be different architectures; only the
    input space must agree. References are processed in chunks of ``chunk_size``,
    so at most ``(Ma + Mb) · chunk · K · D`` field values are alive at once and
    fields of populations are never stored whole.

    Args:
        a: a :class:`~jaxlineage.models.Models` of ``Ma`` models, or fields ``[Ma, N, K, D]``.
        b: the same for ``Mb`` models; ``None`` means ``a`` (a square, symmetric
            matrix with a zero diagonal).
        x: reference points ``[N, *S]``; required when a side is a :class:`~jaxlineage.models.Models`.
        baseline, steps, target, labels: as in ``gradient_field``, used for the
            populations (precomputed fields must have been made with the same ones).
        chunk_size: reference points per chunk; ``None``: all at once.
        memory_budget_bytes: alternative to ``chunk_size``: the chunk is chosen so
            that the ``2 (Ma + Mb) K D`` field numbers per reference fit this budget
            (activations come on top). At least one reference per chunk.
        per_reference: also keep the reference axis: return ``[Ma, Mb, N]`` (the
            mean over steps only) instead of its mean over ``N``.

    Returns:
        ``[Ma, Mb]`` distances in ``[0, 2]`` (or ``[Ma, Mb, N]``, see
        ``per_reference``), float32 unless x64 inputs.

    Raises:
        ValueError: on mismatched shapes (naming them), a population without ``x``,
            or any bad input listed in ``gradient_field``.

    References:
        Song et al., "ModelGiF", ICCV 2023, the curve distance (official code:
        ``field_distance`` in ``ipp_task.py``).
    """
    square = b is None
    if square:
        b = a
    sides = [_check_side(s, name) for s, name in ((a, "a"), (b, "b"))]
    num_refs = None
    if any(isinstance(s, Models) for s in sides):
        if x is None:
            raise ValueError("distance_matrix needs the reference points x for Models")
        x = _check_inputs(x)
        steps = _check_steps(steps)
        target = _parse_target(target)
        x0 = jnp.broadcast_to(_check_baseline(baseline, x), x.shape)
        labels = _check_labels(labels, target, x.shape[0])
        num_refs = x.shape[0]
        field_dim, field_steps = _flat_dim(x), steps
        for side, name in zip(sides, ("a", "b")):
            if isinstance(side, Models):
                first = jax.tree.map(lambda p: p[0], side.params)
                _check_model(side.logits_fn, first, x, target, labels, name=f"{name}.apply_fn")
    for side, name in zip(sides, ("a", "b")):
        if not isinstance(side, Models):
            _, n, k, d = side.shape
            if num_refs is None:
                num_refs, field_steps, field_dim = n, k, d
            elif (n, k, d) != (num_refs, field_steps, field_dim):
                raise ValueError(
                    f"fields {name} have [N, K, D] = {(n, k, d)} but the other side (or x and "
                    f"steps) gives {(num_refs, field_steps, field_dim)}"
                )
    sizes = [len(s) if isinstance(s, Models) else s.shape[0] for s in sides]

    given = [s for s in sides if not isinstance(s, Models)]
    itemsize = (given[0] if given else x).dtype.itemsize
    chunk = _resolve_chunk_size(
        chunk_size,
        memory_budget_bytes,
        bytes_per_reference=2 * sum(sizes) * field_steps * field_dim * itemsize,
    )
    chunk = num_refs if chunk is None else min(chunk, num_refs)

    def fields_for(side, start):
        if isinstance(side, Models):
            sl = _padded_slice(start, chunk, num_refs)
            return _population_field(
                side.params,
                x[sl],
                x0[sl],
                labels[sl],
                apply_fn=side.logits_fn,
                steps=steps,
                target=target,
            )
        return side[:, _padded_slice(start, chunk, num_refs)]

    cosines = []
    for start in range(0, num_refs, chunk):
        fa = fields_for(sides[0], start)
        fb = fa if square else fields_for(sides[1], start)
        cosines.append(_cosine_per_reference(fa, fb)[..., : min(chunk, num_refs - start)])
    per_ref = 1 - jnp.concatenate(cosines, axis=-1)
    return per_ref if per_reference else jnp.mean(per_ref, axis=-1)


def _padded_slice(start, chunk, total):
    """Indices of one chunk; the last chunk repeats the final row to keep its shape.

    A fixed chunk shape means one compilation for all chunks; the padded columns
    are dropped by the caller.
    """
    return np.minimum(np.arange(start, start + chunk), total - 1)


# ---------------------------------------------------------------------------
# Reference points.


def sample_references(
    x: np.ndarray | jax.Array,
    labels: np.ndarray | jax.Array | None = None,
    *,
    n: int,
    key: jax.Array,
    strategy: ReferenceSampling | str = ReferenceSampling.RANDOM,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Draws ``n`` reference points from a data split, never looking at a model.

    ModelGiF's official code chose its reference points by ranking test images by
    the field distance between the protected model and the *same* irrelevant
    models later used as negatives (``reference_sample.py``,
    ``sort_by_distance_irr``), which leaks the evaluation into the references.
    This sampler only sees the data (and labels, for balancing): whatever the
    models, the references are the same for a given key.

    Args:
        x: a split's inputs ``[P, *S]``.
        labels: its integer labels ``[P]``; required for ``CLASS_BALANCED`` and
            returned subsampled when given.
        n: the number of references, ``1 <= n <= P``.
        key: a JAX PRNG key. The draw is ``jax.random.permutation`` of the split
            (and of the classes), so it compiles one small sort per split size.
        strategy: ``ReferenceSampling`` (or its string value); default ``RANDOM``.
            ``CLASS_BALANCED`` orders the sample round-robin over classes (in a random
            class order), so every prefix ``[:m]`` holds ``floor(m / c)`` or
            ``ceil(m / c)`` points of each of the ``c`` classes while they last.

    Returns:
        ``(x_ref [n, *S], labels_ref [n] or None, indices [n])``; ``indices`` into
        the split, without repetition.

    Raises:
        ValueError: on ``n`` outside ``[1, P]``, labels of the wrong shape, or
            ``CLASS_BALANCED`` without labels.
    """
    strategy = _parse_enum(strategy, ReferenceSampling, "strategy")
    x = np.asarray(x)
    total = x.shape[0] if x.ndim else 0
    if not 1 <= n <= total:
        raise ValueError(f"n must be in [1, {total}] for x of shape {x.shape}; got n={n}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (total,):
            raise ValueError(f"labels must have shape ({total},) to match x {x.shape}; got {labels.shape}")
    k_items, k_classes = jax.random.split(key)
    perm = np.asarray(jax.random.permutation(k_items, total))

    if strategy is ReferenceSampling.RANDOM:
        indices = perm[:n]
    else:
        if labels is None:
            raise ValueError("strategy=CLASS_BALANCED needs labels")
        # Round-robin: sort by (rank within the shuffled class, shuffled class order). One
        # permutation of all items gives every class a uniformly random order at once.
        priority = np.empty(total, np.int64)
        priority[perm] = np.arange(total)
        classes = np.unique(labels)
        position = np.empty(classes.size, np.int64)
        position[np.asarray(jax.random.permutation(k_classes, classes.size))] = np.arange(classes.size)
        rank, class_order = np.empty(total, np.int64), np.empty(total, np.int64)
        for i, c in enumerate(classes):
            members = np.flatnonzero(labels == c)
            members = members[np.argsort(priority[members])]
            rank[members], class_order[members] = np.arange(members.size), position[i]
        indices = np.lexsort((class_order, rank))[:n]
    return x[indices], None if labels is None else labels[indices], indices


# ---------------------------------------------------------------------------
# Input checks (public boundary only).


def _parse_enum(value, enum_cls, name):
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        try:
            return enum_cls(value)
        except ValueError:
            pass
    choices = ", ".join(repr(m.value) for m in enum_cls)
    raise ValueError(f"{name} must be a {enum_cls.__name__} or one of {choices}; got {value!r}")


def _parse_target(target):
    if isinstance(target, (Target, str)):
        return _parse_enum(target, Target, "target")
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        return int(target)
    if callable(target):
        return target
    raise TypeError(
        f"target must be a Target, 'predicted', 'label', a class index or a callable; got {type(target).__name__}"
    )


def _check_steps(steps):
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}")
    return int(steps)


def _check_inputs(x):
    x = jnp.asarray(x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch [N, *S] with N >= 1 and S non-empty; got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be floating point (gradients w.r.t. inputs); got dtype {x.dtype}")
    return x


def _flat_dim(x):
    return math.prod(x.shape[1:])


def _check_baseline(baseline, x):
    if baseline is None:
        return jnp.zeros(x.shape, x.dtype)
    baseline = jnp.asarray(baseline, x.dtype)
    if baseline.shape == x.shape[1:]:
        return jnp.broadcast_to(baseline, x.shape)
    if baseline.shape == x.shape:
        return baseline
    raise ValueError(f"baseline must have the shape of one input {x.shape[1:]} or of x {x.shape}; got {baseline.shape}")


def _check_labels(labels, target, num_refs):
    if target is not Target.LABEL:
        if labels is not None:
            raise ValueError(f"labels are only used with target=Target.LABEL; got target={target!r}")
        return jnp.zeros((num_refs,), jnp.int32)  # Placeholder, never read.
    if labels is None:
        raise ValueError("target=Target.LABEL needs labels [N]")
    labels = jnp.asarray(labels)
    if labels.shape != (num_refs,) or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers of shape ({num_refs},); got {labels.dtype} {labels.shape}")
    return labels


def _check_model(apply_fn, params, x, target, labels, *, name):
    """Checks with ``eval_shape`` that ``apply_fn`` takes ``x`` and ``target`` fits."""
    try:
        out = jax.eval_shape(apply_fn, params, x[:1])
    except Exception as err:  # Re-raised with the shapes; the cause is chained.
        raise ValueError(
            f"{name} cannot be applied to inputs of shape {x.shape[1:]} (x {x.shape}): {type(err).__name__}: {err}"
        ) from err
    if callable(target):
        out_one = jax.eval_shape(lambda p, z: target(apply_fn(p, z[None])[0]), params, x[0])
        if out_one.shape != ():
            raise ValueError(f"the target callable must return a scalar; got shape {out_one.shape}")
        return
    if len(out.shape) != 2 or out.shape[0] != 1:
        raise ValueError(f"{name} must map [B, *S] to logits [B, C]; on x[:1] it returned {out.shape}")
    num_classes = out.shape[1]
    if isinstance(target, int) and not 0 <= target < num_classes:
        raise ValueError(f"target index {target} is out of range for {num_classes} classes of {name}")
    if target is Target.LABEL:
        _check_label_range(labels, num_classes, name)


def _check_label_range(labels, num_classes, name):
    if isinstance(labels, jax.core.Tracer):
        return  # Inside a transformation: the values are unknown here.
    values = np.asarray(labels)
    if values.min() < 0 or values.max() >= num_classes:
        raise ValueError(
            f"labels must be in [0, {num_classes}) for the {num_classes} classes of {name}; "
            f"got values in [{values.min()}, {values.max()}]"
        )


def _population_size(params, name):
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError(f"{name} has no leaves")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"{name} must be stacked with one leading model axis on every leaf; got leading sizes {sizes}")
    return sizes.pop()


def _check_side(side, name):
    if isinstance(side, Models):
        _population_size(side.params, f"{name}.params")
        return side
    fields = jnp.asarray(side)
    if fields.ndim != 4:
        raise ValueError(f"{name} must be Models or fields [M, N, K, D]; got shape {fields.shape}")
    return fields


def _resolve_chunk_size(chunk_size, memory_budget_bytes, *, bytes_per_reference):
    if chunk_size is not None and memory_budget_bytes is not None:
        raise ValueError("give chunk_size or memory_budget_bytes, not both")
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an integer >= 1; got {chunk_size!r}")
        return int(chunk_size)
    if memory_budget_bytes is not None:
        if memory_budget_bytes <= 0:
            raise ValueError(f"memory_budget_bytes must be positive; got {memory_budget_bytes}")
        return max(1, int(memory_budget_bytes // bytes_per_reference))
    return None
