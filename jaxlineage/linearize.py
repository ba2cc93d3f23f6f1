r"""Taylor-linearised features and similarities, by one ``jax.jvp``.

Notation (Neural Lineage, Sec. 3): a feature function ``f(theta, X) -> [N, D]``,
parent parameters ``theta_p``, child parameters ``theta_c``,
``Delta = theta_c - theta_p``, parent features ``F_p = f(theta_p, X)``, child
features ``F_c = f(theta_c, X)`` and the Jacobian-vector product at the parent

.. math:: J_p \Delta = \frac{\partial f(\theta, X)}{\partial \theta}\Big|_{\theta_p} \Delta ,

computed by a single forward-mode ``jax.jvp``; the Jacobian is never
materialised (except by the :func:`stepwise_similarity` baseline).

For a metric ``s`` (higher = more similar, :mod:`jaxlineage.similarity`) and a
step size ``alpha`` there are three modes (:class:`Mode`):

* ``PLAIN`` (paper: "w/o approx."): ``s(F_p, F_c)``.
* ``FIRST_ORDER`` (paper: "w approx.", Prop. 1):
  ``s(F_p, F_c) + alpha <grad_F s(F_p, F_c), J_p Delta>``. The paper derives
  the weight ``grad_F s`` by hand per metric; here the whole correction is the
  tangent output of ``jax.jvp`` through ``s(f(., X), F_c)`` at ``theta_p`` in
  direction ``Delta``, so it exists for every differentiable metric (CKA and
  dCor included) and costs one jvp for any number of ``alpha``.
* ``LINEARIZED`` (beyond the paper, the default): the exact metric on the
  exactly linearised child, ``s(F_p + alpha J_p Delta, F_c)``. One jvp gives
  ``J_p Delta``; sweeping ``alpha`` costs no further network pass, and
  non-differentiable metrics (``linf``) work too.

To first order in ``alpha`` the last two agree:
``s(F_p + alpha G, F_c) = s(F_p, F_c) + alpha <grad s, G> + O(alpha^2)``.

Only the parameters ``f`` actually reads take part: parent and child trees may
differ elsewhere (e.g. classifier heads for different tasks) but must agree in
path, shape and dtype on the used leaves. All functions jit-compile; the public
ones check their inputs eagerly (shapes always, values when not traced) and
raise ``ValueError`` with the offending path, shape or name.

References:
  Yu, R. & Wang, X. (2024). Neural Lineage. CVPR. Sec. 3, Eq. (4)-(5) and
    Proposition 1; Fig. 2 (step-by-step versus efficient computation).
  Lee, J. et al. (2019). Wide Neural Networks of Any Depth Evolve as Linear
    Models Under Gradient Descent. NeurIPS. (linearisation by one jvp, as in
    ``neural_tangents.linearize``)
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlineage import _fastpath, _pairing
from jaxlineage import similarity as similarity_lib

__all__ = [
    "DEFAULT_MODE",
    "Mode",
    "UsedLeaves",
    "as_alpha",
    "as_mode",
    "feature_jvp",
    "lower",
    "pair_similarity",
    "stepwise_feature_jvp",
    "stepwise_similarity",
    "taylor_features",
    "used_leaves",
]

Array = jax.Array
FeatureFn = Callable[[Any, Array], Array]


class Mode(str, enum.Enum):  # noqa: UP042 (str() and format() keep the enum repr)
    """How a parent is compared with a child (see the module docstring).

    A ``str`` enum (``Mode.PLAIN == "plain"``), so that ``(metric, mode)`` keys
    sort and results keyed by them are valid pytrees.
    """

    PLAIN = "plain"
    FIRST_ORDER = "first_order"
    LINEARIZED = "linearized"


DEFAULT_MODE = Mode.LINEARIZED


def as_mode(mode: Mode | str) -> Mode:
    """Parses a :class:`Mode` or its name; raises ``ValueError`` naming the choices."""
    if isinstance(mode, Mode):
        return mode
    if isinstance(mode, str):
        try:
            return Mode(mode.lower())
        except ValueError:
            pass
    raise ValueError(f"Unknown mode {mode!r}; expected one of {[m.value for m in Mode]}.")


def as_alpha(alpha: Any, *, modes: Any = ()) -> np.ndarray:
    """Validates ``alpha``: a finite real scalar or 1-D array (a sweep).

    ``None`` is allowed when every mode in ``modes`` is ``PLAIN`` (which ignores
    the step size) and stands for the scalar 0.

    Raises:
      ValueError: ``None`` with a mode that needs a step, or a malformed ``alpha``.
    """
    if alpha is None:
        needing = [
            m.value for m in (modes if isinstance(modes, (tuple, list)) else (modes,)) if as_mode(m) is not Mode.PLAIN
        ]
        if needing:
            raise ValueError(f"alpha is required by mode {needing[0]!r} (only 'plain' ignores it).")
        return np.zeros((), np.float64)
    if isinstance(alpha, jax.core.Tracer):
        if alpha.ndim > 1:
            raise ValueError(f"alpha must be a scalar or a 1-D array; got shape {alpha.shape}.")
        return alpha
    a = np.asarray(jax.device_get(alpha))
    if a.ndim > 1 or a.size == 0 or not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise ValueError(
            f"alpha must be a real scalar or a non-empty 1-D array; got {alpha!r} (shape {a.shape}, dtype {a.dtype})."
        )
    if not np.all(np.isfinite(a)):
        raise ValueError(f"alpha must be finite; got {alpha!r}.")
    return a.astype(np.float64)


def _check_metric_mode(metric: Any, mode: Any) -> tuple[similarity_lib.MetricFn, Mode]:
    metric = similarity_lib.get(metric)
    mode = as_mode(mode)
    if mode is Mode.FIRST_ORDER and not metric.differentiable:
        raise ValueError(
            f"Metric {metric.name!r} is not differentiable, so Mode.FIRST_ORDER is"
            " undefined for it; use Mode.LINEARIZED (the metric on the linearised child)."
        )
    return metric, mode


class UsedLeaves(NamedTuple):
    """A checked (parent, child, probe) restricted to the parameter leaves the feature function reads.

    Attributes:
      fn: ``fn(leaves, x) -> [N, D]``, the feature function over the used leaves only. It is
        hashable and the same object for the same feature function and leaf structure (so jitted
        code keyed on it is reused); ``fn.used_paths`` names the leaves (``"params/dense1/kernel"``)
        and ``fn.out_shape`` is the feature shape.
      parent: the parent's used leaves, in ``fn.used_paths`` order.
      child: the child's used leaves, in the same order.
      x: the validated probe batch.
    """

    fn: Any
    parent: tuple[Array, ...]
    child: tuple[Array, ...]
    x: Array


def used_leaves(feature_fn: FeatureFn, parent_params: Any, child_params: Any, x: Any) -> UsedLeaves:
    """The boundary every function here starts from, for code that measures or extends the kernel.

    Finds the leaves ``feature_fn`` reads (by tracing it once on ``parent_params``), restricts both
    trees to them, and checks what the public functions check: matching path, shape and dtype on
    the used leaves, finite values, a valid probe. The forward pass ``fn(parent, x)`` is the
    physical floor of every score (one network pass per model); benchmarks compare the kernel to it.

    Raises:
      ValueError: mismatched trees (naming the path and both shapes), NaN / inf parameters, a bad probe.
    """
    return UsedLeaves(*_prepare(feature_fn, parent_params, child_params, x))


def _prepare(feature_fn: FeatureFn, parent_params: Any, child_params: Any, x: Any):
    """Checks the boundary and returns (pruned fn, parent leaves, child leaves, x)."""
    return _pairing.prepare(feature_fn, parent_params, child_params, x, stacked=False, names=("parent", "child"))


def _check_row_chunk(row_chunk: Any) -> None:
    if row_chunk is not None and (not isinstance(row_chunk, int) or row_chunk < 1):
        raise ValueError(f"row_chunk must be a positive int or None; got {row_chunk!r}.")


def _check_features_finite(**flags: Array) -> None:
    for name, ok in flags.items():
        if _pairing.is_concrete(ok) and not bool(ok):
            raise ValueError(f"feature_fn returned NaN or inf {name} features on the probe batch.")


# ----------------------------------------------------------------------------
# Features.


def _jvp(pruned, p, c, x):
    return jax.jvp(lambda th: pruned(th, x), (p,), (_pairing.delta(c, p),))


@functools.partial(jax.jit, static_argnames=("pruned",))
def _feature_jvp_core(p, c, x, *, pruned):
    f_p, jd = _jvp(pruned, p, c, x)
    return f_p, jd, jnp.all(jnp.isfinite(f_p)) & jnp.all(jnp.isfinite(jd))


def feature_jvp(feature_fn: FeatureFn, parent_params: Any, child_params: Any, x: Array) -> tuple[Array, Array]:
    r"""Parent features and their directional derivative toward the child.

    .. math:: (F_p, J_p \Delta) = \texttt{jax.jvp}(\theta \mapsto f(\theta, X),
              (\theta_p,), (\theta_c - \theta_p,))

    Args:
      feature_fn: ``f(params, x) -> [N, ...]``, pure; outputs are flattened to
        ``[N, D]``.
      parent_params: the parent's parameter tree ``theta_p``.
      child_params: the child's tree; must match ``theta_p`` on the leaves
        ``feature_fn`` reads.
      x: the probe batch ``[N, ...]``.

    Returns:
      ``(F_p, J_p Delta)``, both ``[N, D]``.

    References:
      Yu & Wang (2024), Neural Lineage, Eq. (4).
    """
    pruned, p, c, x = _prepare(feature_fn, parent_params, child_params, x)
    f_p, jd, ok = _feature_jvp_core(p, c, x, pruned=pruned)
    _check_features_finite(**{"parent (or Jacobian-vector product)": ok})
    return f_p, jd


def taylor_features(feature_fn: FeatureFn, parent_params: Any, child_params: Any, x: Array, *, alpha: Any) -> Array:
    r"""The parent's features moved by a first-order Taylor step toward the child.

    .. math:: \tilde F_c(\alpha) = F_p + \alpha\, J_p (\theta_c - \theta_p)

    ``alpha = 1`` is the exact linearisation of the child around the parent
    (equal to ``F_c`` when ``f`` is linear in ``theta``); the paper uses small
    ``alpha`` as a damped step.

    Args:
      feature_fn: ``f(params, x) -> [N, ...]``.
      parent_params: ``theta_p``.
      child_params: ``theta_c`` (matching ``theta_p`` on the used leaves).
      x: the probe batch ``[N, ...]``.
      alpha: a scalar, or a 1-D array ``[A]`` of step sizes (one jvp for all).

    Returns:
      ``[N, D]`` for scalar ``alpha``, ``[A, N, D]`` for a sweep.

    References:
      Yu & Wang (2024), Neural Lineage, Eq. (4).
    """
    alpha = as_alpha(alpha)
    f_p, jd = feature_jvp(feature_fn, parent_params, child_params, x)
    a = jnp.asarray(alpha, f_p.dtype)
    if a.ndim == 0:
        return f_p + a * jd
    return f_p[None] + a[:, None, None] * jd[None]


# ----------------------------------------------------------------------------
# Similarities.


def _mode_values(metric, mode, f_p, jd, f_c, alpha):
    """Scores of one mode, shape ``alpha.shape``; ``jd`` unused for PLAIN."""
    alpha = jnp.asarray(alpha, f_p.dtype)
    if mode is Mode.PLAIN:
        return jnp.broadcast_to(metric(f_p, f_c), alpha.shape)
    if mode is Mode.FIRST_ORDER:
        # jvp of the metric at F_p in direction J_p Delta; by the chain rule this is
        # exactly jax.jvp(theta -> s(f(theta, X), F_c), (theta_p,), (Delta,)).
        s0, ds = jax.jvp(lambda f: metric(f, f_c), (f_p,), (jd,))
        return s0 + alpha * ds
    flat = alpha.reshape(-1)
    vals = jax.vmap(lambda a: metric(f_p + a * jd, f_c))(flat)
    return vals.reshape(alpha.shape)


def _split_jvp(split, p, c, x, *, need_jvp):
    """``(F_p, J_p Delta or None, F_c)`` through a first-layer split: each model's first layer once.

    The first layer's tangent along ``Delta`` is ``pre_c - pre_p`` (:mod:`jaxlineage._fastpath`), so
    the pair costs the two forward passes plus the jvp of the remaining layers only.
    """
    pre_p, pre_c = split.pre(p, x), split.pre(c, x)
    rest = lambda th, pre: split.rest(th, pre, x)
    f_c = rest(c, pre_c)
    if not need_jvp:
        return rest(p, pre_p), None, f_c
    d_pre = tuple(a - b for a, b in zip(pre_c, pre_p))
    f_p, jd = jax.jvp(rest, (p, pre_p), (_pairing.delta(c, p), d_pre))
    return f_p, jd, f_c


@functools.partial(jax.jit, static_argnames=("metric", "mode", "pruned", "split"))
def _similarity_core(p, c, x, alpha, *, metric, mode, pruned, split=None):
    """Scores plus every finiteness flag the boundary checks (one dispatch, one read-back)."""
    if split is not None:
        f_p, jd, f_c = _split_jvp(split, p, c, x, need_jvp=mode is not Mode.PLAIN)
    else:
        f_c = pruned(c, x)
        if mode is Mode.PLAIN:
            f_p, jd = pruned(p, x), None
        else:
            f_p, jd = _jvp(pruned, p, c, x)
    vals = _mode_values(metric, mode, f_p, jd, f_c, alpha)
    ok_p = jnp.all(jnp.isfinite(f_p))
    if jd is not None:
        ok_p &= jnp.all(jnp.isfinite(jd))
    flags = (
        *_pairing.leaf_flags(p, stacked=False),
        *_pairing.leaf_flags(c, stacked=False),
        ok_p,
        jnp.all(jnp.isfinite(f_c)),
        jnp.all(jnp.isfinite(vals)),
    )
    return vals, _pairing.pack(flags)


def _check_flags(flags, pruned, vals, metric, mode) -> None:
    """Raises for the first false flag of :func:`_similarity_core`, in the order the checks promise."""
    flags = np.asarray(flags)
    if flags.all():
        return
    n = len(pruned.used_paths)
    _pairing.raise_if_not_finite(flags[:n], pruned.used_paths, name="parent", stacked=False)
    _pairing.raise_if_not_finite(flags[n : 2 * n], pruned.used_paths, name="child", stacked=False)
    ok_p, ok_c, ok_vals = flags[2 * n :]
    _check_features_finite(parent=ok_p, child=ok_c)
    if not ok_vals:
        raise ValueError(
            f"Metric {metric.name!r} in mode {mode.value!r} is not finite ({vals}) although"
            " the features are; the features are probably too large for the dtype"
            " (try float64 or rescale)."
        )


def pair_similarity(
    metric: Any,
    feature_fn: FeatureFn,
    parent_params: Any,
    child_params: Any,
    x: Array,
    *,
    alpha: Any = None,
    mode: Mode | str = DEFAULT_MODE,
    fast_path: bool = True,
) -> Array:
    r"""Similarity of a child to a candidate parent (higher = more similar).

    .. math::
       \texttt{PLAIN}:       &\; s(F_p, F_c) \\
       \texttt{FIRST\_ORDER}: &\; s(F_p, F_c) + \alpha\,
                              \langle \nabla_F s(F_p, F_c),\, J_p \Delta \rangle \\
       \texttt{LINEARIZED}:  &\; s(F_p + \alpha J_p \Delta,\, F_c)

    Jit-compiled; ``feature_fn`` is part of the compilation key, so keep the
    same (or an equal) function object across calls: the library's adapters
    (:func:`jaxlineage.nets.from_linen`, :meth:`jaxlineage.nets.Network.feature_fn`)
    are; a fresh ``lambda`` or ``functools.partial`` per call recompiles.

    Cost: ``PLAIN`` is two forward passes; the other modes replace the parent's
    forward pass by one ``jax.jvp`` for any number of ``alpha`` values, which costs
    nothing more than elementwise work when the first layer reads the probe
    (``fast_path``; otherwise about one more forward pass). The structural checks
    (used leaves, paths, shapes) run once per tree structure and feature function;
    the value checks are computed in the same compiled call as the scores. Values are raw scores; apply
    :func:`jaxlineage.similarity.report` for the paper's table units.

    Args:
      metric: a :class:`~jaxlineage.similarity.Metric`, its name, or a
        :class:`~jaxlineage.similarity.MetricFn` (``similarity.get("lp", p=3)``).
      feature_fn: ``f(params, x) -> [N, ...]`` (flattened to ``[N, D]``).
      parent_params: ``theta_p``.
      child_params: ``theta_c``; must match ``theta_p`` (path, shape, dtype) on
        the leaves ``feature_fn`` reads.
      x: the probe batch ``[N, ...]``.
      alpha: step size, a scalar or a 1-D sweep ``[A]``; required by
        ``FIRST_ORDER`` and ``LINEARIZED``, optional (ignored) for ``PLAIN``.
      mode: a :class:`Mode` (default ``Mode.LINEARIZED``) or its name.
      fast_path: when the feature function's first layer is linear in its weight and reads
        the probe (:func:`jaxlineage.lineage.fast_path_plan`), its tangent is taken as
        ``pre_c - pre_p`` from the two forward passes instead of a third product with the
        probe (equal up to rounding); ``False`` forces the plain jvp.

    Returns:
      An array of shape ``alpha.shape`` (``PLAIN`` repeats its single value).

    Raises:
      ValueError: unknown metric or mode, ``FIRST_ORDER`` with a
        non-differentiable metric, parameter trees that differ on used leaves,
        non-finite parameters/features/scores, or a probe batch the feature
        function rejects. Value checks run only outside ``jit``.

    Example:

    >>> def f(params, x):  # any pure apply function
    ...     return jax.nn.relu(x @ params["w"] + params["b"])
    >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    >>> parent = {"w": jax.random.normal(k1, (8, 16)), "b": jnp.zeros((1, 16))}
    >>> child = jax.tree.map(lambda p: p + 0.01 * jax.random.normal(k2, p.shape), parent)
    >>> x = jax.random.normal(k3, (32, 8))
    >>> s = pair_similarity("l2", f, parent, child, x, alpha=jnp.array([1e-3, 1e-2]), mode=Mode.FIRST_ORDER)
    >>> s.shape  # one jvp serves both step sizes
    (2,)

    References:
      Yu & Wang (2024), Neural Lineage, Sec. 3, Eq. (5), Proposition 1.
    """
    metric, mode = _check_metric_mode(metric, mode)
    alpha = as_alpha(alpha, modes=(mode,))
    pruned, p, c, x = _pairing.boundary(
        feature_fn, parent_params, child_params, x, stacked=False, names=("parent", "child")
    )
    split = _fastpath.split(pruned, _pairing.struct_of(x)) if fast_path else None
    vals, flags = _similarity_core(p, c, x, alpha, metric=metric, mode=mode, pruned=pruned, split=split)
    if _pairing.is_concrete(flags):
        _check_flags(flags, pruned, vals, metric, mode)
    return vals


# ----------------------------------------------------------------------------
# The step-by-step baseline (tests and benchmarks only).


def _contract(jac_leaves, delta_leaves, lead: int):
    """sum_leaves <J_leaf, Delta_leaf> over the parameter axes -> [lead...]."""
    total = 0
    for j, d in zip(jac_leaves, delta_leaves):
        if isinstance(d, np.ndarray) and d.dtype == jax.dtypes.float0:
            continue
        total = total + jnp.tensordot(j, d, axes=d.ndim)
    return total


@functools.partial(jax.jit, static_argnames=("pruned", "row_chunk"))
def _stepwise_jd(p, c, x, *, pruned, row_chunk):
    delta = _pairing.delta(c, p)

    def one_sample(xi):
        g = lambda th: pruned(th, xi[None])[0]  # [D]
        if row_chunk is None:
            jac = jax.jacrev(g)(p)  # leaves [D, *leaf.shape]: the per-sample Jacobian
            return _contract(jac, delta, 1)
        out, vjp = jax.vjp(g, p)
        rows = jnp.eye(out.shape[0], dtype=out.dtype)
        # Jacobian rows in blocks of row_chunk: [row_chunk, *leaf.shape] at a time.
        return jax.lax.map(lambda e: _contract(vjp(e)[0], delta, 0), rows, batch_size=row_chunk)

    return jax.lax.map(one_sample, x)


def stepwise_feature_jvp(
    feature_fn: FeatureFn,
    parent_params: Any,
    child_params: Any,
    x: Array,
    *,
    row_chunk: int | None = None,
) -> Array:
    r"""``J_p Delta`` through materialised per-sample Jacobians (baseline only).

    For each probe sample ``x_i`` (sequentially) the Jacobian
    ``J_i = d f(theta, x_i) / d theta`` at ``theta_p`` is built with
    ``jax.jacrev`` (``D x P`` numbers, a pytree with leaves ``[D, *leaf]``) and
    contracted with ``Delta``. With ``row_chunk`` the Jacobian of each sample is
    materialised ``row_chunk`` rows at a time to bound memory. Assumes features
    of sample ``i`` depend on ``x_i`` only (no batch statistics).

    This is the "step-by-step" computation of the paper's Fig. 2, kept as the
    oracle for tests and the baseline for benchmarks; use :func:`feature_jvp`.

    Args:
      feature_fn: ``f(params, x) -> [N, ...]``.
      parent_params: ``theta_p``.
      child_params: ``theta_c``.
      x: the probe batch ``[N, ...]``.
      row_chunk: Jacobian rows materialised at once (default: all ``D``).

    Returns:
      ``J_p Delta``, ``[N, D]``.
    """
    pruned, p, c, x = _prepare(feature_fn, parent_params, child_params, x)
    _check_row_chunk(row_chunk)
    return _stepwise_jd(p, c, x, pruned=pruned, row_chunk=row_chunk)


@functools.partial(jax.jit, static_argnames=("metric", "mode", "pruned", "row_chunk"))
def _stepwise_core(p, c, x, alpha, *, metric, mode, pruned, row_chunk):
    f_p = pruned(p, x)
    f_c = pruned(c, x)
    if mode is Mode.PLAIN:
        return _mode_values(metric, mode, f_p, None, f_c, alpha)
    jd = _stepwise_jd(p, c, x, pruned=pruned, row_chunk=row_chunk)
    alpha = jnp.asarray(alpha, f_p.dtype)
    if mode is Mode.FIRST_ORDER:
        # The paper's route: the weight grad_F s, then a contraction with J Delta.
        weight = jax.grad(lambda f: metric(f, f_c))(f_p)
        return metric(f_p, f_c) + alpha * jnp.sum(weight * jd)
    return _mode_values(metric, mode, f_p, jd, f_c, alpha)


def stepwise_similarity(
    metric: Any,
    feature_fn: FeatureFn,
    parent_params: Any,
    child_params: Any,
    x: Array,
    *,
    alpha: Any = None,
    mode: Mode | str = DEFAULT_MODE,
    row_chunk: int | None = None,
) -> Array:
    """:func:`pair_similarity` through materialised per-sample Jacobians (baseline only).

    Same arguments and result as :func:`pair_similarity`, computed the slow way:
    ``J_p Delta`` from :func:`stepwise_feature_jvp`, and for ``FIRST_ORDER`` the
    weight ``grad_F s`` by ``jax.grad`` contracted with it, as in the paper's
    derivation. ``row_chunk`` bounds the Jacobian block held in memory.

    References:
      Yu & Wang (2024), Neural Lineage, Proposition 1 and Fig. 2.
    """
    metric, mode = _check_metric_mode(metric, mode)
    alpha = as_alpha(alpha, modes=(mode,))
    pruned, p, c, x = _prepare(feature_fn, parent_params, child_params, x)
    _check_row_chunk(row_chunk)
    return _stepwise_core(p, c, x, alpha, metric=metric, mode=mode, pruned=pruned, row_chunk=row_chunk)


def lower(
    metric: Any,
    feature_fn: FeatureFn,
    parent_params: Any,
    child_params: Any,
    x: Array,
    *,
    alpha: Any = None,
    mode: Mode | str = DEFAULT_MODE,
    stepwise: bool = False,
    row_chunk: int | None = None,
    fast_path: bool = True,
) -> jax.stages.Lowered:
    """The lowered computation behind :func:`pair_similarity` (or :func:`stepwise_similarity`).

    For inspecting the kernel rather than running it: ``.compile().memory_analysis()`` gives the
    temporary bytes XLA allocates (the jvp path stays near the size of its inputs; the stepwise
    baseline holds a Jacobian block), ``.compile().cost_analysis()`` the flop count, ``.as_text()``
    the StableHLO. Same arguments and checks as the function it lowers.

    Args:
      stepwise: lower :func:`stepwise_similarity` (materialised Jacobians) instead.
      row_chunk: the stepwise baseline's Jacobian rows per block (``None``: all at once).
      fast_path: as in :func:`pair_similarity` (ignored with ``stepwise``).
    """
    metric, mode = _check_metric_mode(metric, mode)
    alpha = as_alpha(alpha, modes=(mode,))
    pruned, p, c, x = _prepare(feature_fn, parent_params, child_params, x)
    if stepwise:
        _check_row_chunk(row_chunk)
        return _stepwise_core.lower(p, c, x, alpha, metric=metric, mode=mode, pruned=pruned, row_chunk=row_chunk)
    split = _fastpath.split(pruned, _pairing.struct_of(x)) if fast_path else None
    return _similarity_core.lower(p, c, x, alpha, metric=metric, mode=mode, pruned=pruned, split=split)
