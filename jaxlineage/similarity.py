"""Similarity metrics between feature matrices.

Every metric is a pure function ``metric(a, b) -> scalar`` on two feature
matrices ``a, b`` of shape ``[N, D]`` (``N`` probe samples, ``D`` features) and
follows one convention: **higher = more similar**. Distances are therefore
returned negated, e.g. ``l2(a, b) = -mean((a - b)**2)``.

The values are the *raw* scores that the Neural Lineage paper differentiates
(its Prop. 1 is a first-order expansion of exactly these functions). The paper
*reports* some of them through a monotone transform (a square root for ``l2``, a
``p``-th root for ``lp``), which is a separate step here: :func:`report`.
Because the transform is monotone, ranking candidates by raw or by reported
scores gives the same winner, except that reporting clamps positive raw values
(possible after a first-order step) to ``0`` and thereby creates ties.

Metrics (``d = a - b``, ``n = N * D``):

======== =========================================================================
name     raw value
======== =========================================================================
``l1``   ``-sum|d| / n``
``l2``   ``-sum d^2 / n``; reported as ``-sqrt(max(-s, 0))``
``lp``   ``-sum |d|^p / n`` (``p = 4``); reported as ``-max(-s, 0)^(1/p)``
``linf`` ``-mean_i max_j |d_ij|`` (not differentiable: no first-order form)
``lse``  ``-(1/n) sum_i (1/t) log sum_j exp(min(t |d_ij|, 10))`` (``t = 0.01``)
``cka``  linear centred kernel alignment (biased or unbiased HSIC), in ``[0, 1]``
         (biased) or ``[-1, 1]`` (unbiased)
``dcor`` squared distance correlation, in ``[0, 1]``
======== =========================================================================

Degenerate inputs never produce a silent NaN:

* empty inputs (``N == 0`` or ``D == 0``) and mismatched shapes raise
  ``ValueError`` (shapes are static, so this also holds under ``jit``);
* the unbiased CKA estimator needs ``N >= 4`` and raises otherwise;
* ``cka`` and ``dcor`` are undefined when one input has no variation across
  samples (all rows equal, e.g. constant features); they then return **0**
  ("no evidence of similarity"), a documented value that is also jit-safe.

Non-finite *inputs* propagate (NaN in, NaN out); the public entry points of
:mod:`jaxlineage.linearize` and :mod:`jaxlineage.lineage` check their features
and raise.

Example:

>>> import jax, jax.numpy as jnp
>>> from jaxlineage import similarity
>>> a = jax.random.normal(jax.random.key(0), (64, 8))
>>> b = a + 0.1 * jax.random.normal(jax.random.key(1), (64, 8))
>>> metric = similarity.get("lp", p=4)
>>> s = metric(a, b)             # raw, higher = more similar
>>> d = similarity.report(metric, s)   # -(distance), the paper's table value

References:
  Yu, R. & Wang, X. (2024). Neural Lineage. CVPR. Sec. 3, Eq. (2)-(5), Table 1.
  Kornblith, S., Norouzi, M., Lee, H. & Hinton, G. (2019). Similarity of Neural
    Network Representations Revisited. ICML. (linear CKA)
  Song, L., Smola, A., Gretton, A., Bedo, J. & Borgwardt, K. (2012). Feature
    Selection via Dependence Maximization. JMLR 13. Eq. (5). (unbiased HSIC)
  Szekely, G. J., Rizzo, M. L. & Bakirov, N. K. (2007). Measuring and testing
    dependence by correlation of distances. Ann. Statist. 35(6). (distance
    correlation)
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "DEFAULT_P",
    "DEFAULT_T",
    "LSE_CLAMP",
    "CKAEstimator",
    "Metric",
    "MetricFn",
    "Reporting",
    "all_metrics",
    "cka",
    "cka_from_grams",
    "custom",
    "dcor",
    "dcor_from_grams",
    "get",
    "l1",
    "l2",
    "linf",
    "lp",
    "lse",
    "report",
]

DEFAULT_P = 4.0
DEFAULT_T = 0.01
# The official implementation clamps t|d| at 10 before exponentiating.
LSE_CLAMP = 10.0

Array = jax.Array


class Metric(enum.Enum):
    """The built-in metrics. ``Metric(name)`` accepts the lower-case name."""

    L1 = "l1"
    L2 = "l2"
    LP = "lp"
    LINF = "linf"
    LSE = "lse"
    CKA = "cka"
    DCOR = "dcor"


class CKAEstimator(enum.Enum):
    """Which HSIC estimator linear CKA is built from.

    * ``BIASED`` (default, Kornblith et al. 2019): the V-statistic
      ``tr(K_c L_c)``. Bounded in ``[0, 1]`` but far from 0 for independent
      inputs when ``N`` is small compared with ``D``.
    * ``UNBIASED`` (Song et al. 2012): the U-statistic on U-centred Gram
      matrices; close to 0 for independent inputs at any ``N >= 4``, and can be
      slightly negative.
    """

    BIASED = "biased"
    UNBIASED = "unbiased"


class Reporting(enum.Enum):
    """How a raw score is transformed for tables (see :func:`report`)."""

    IDENTITY = "identity"
    SQRT = "sqrt"
    PTH_ROOT = "pth_root"


# ----------------------------------------------------------------------------
# Input checks (static: shapes only, so they also run under jit).


def _check_pair(name: str, a: Any, b: Any, *, same_width: bool) -> tuple[Array, Array]:
    a = jnp.asarray(a)
    b = jnp.asarray(b)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(
            f"{name}: expected two feature matrices [N, D]; got shapes {a.shape} and"
            f" {b.shape}. Flatten trailing feature axes first, e.g."
            " f.reshape(f.shape[0], -1)."
        )
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name}: the two feature matrices must have the same number of samples"
            f" N; got shapes {a.shape} and {b.shape}."
        )
    if same_width and a.shape[1] != b.shape[1]:
        raise ValueError(f"{name}: the two feature matrices must have the same shape; got {a.shape} and {b.shape}.")
    if a.size == 0 or b.size == 0:
        raise ValueError(f"{name}: empty feature matrix; got shapes {a.shape} and {b.shape}.")
    dtype = jnp.result_type(a, b)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return a.astype(dtype), b.astype(dtype)


def _safe_div(num: Array, den: Array) -> Array:
    """``num / den`` where ``den > 0``, else ``0``; NaN-free gradients too."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), jnp.zeros_like(num))


def _centre_and_scale(a: Array) -> Array:
    """Column-centres ``a`` and rescales it so that ``max |a| = 1``.

    Centring subtracts the first row before the mean (the shifted-data
    algorithm): an exactly constant column then centres to exactly 0, so "no
    variation" is detected without a tolerance. The rescaling keeps fourth powers
    away from under/overflow; CKA and dCor are invariant to it, and because of
    that invariance treating the scale as a constant (``stop_gradient``) leaves
    the gradient exact (Euler: ``<grad h(u), u> = 0`` for scale-invariant ``h``).
    """
    shifted = a - a[:1]
    centred = shifted - jnp.mean(shifted, axis=0, keepdims=True)
    scale = jax.lax.stop_gradient(jnp.max(jnp.abs(centred)))
    return centred / jnp.where(scale > 0, scale, 1)


# ----------------------------------------------------------------------------
# The metrics.


@jax.jit
def l1(a: Array, b: Array) -> Array:
    r"""Negative mean absolute difference.

    .. math:: s(a, b) = -\frac{1}{ND} \sum_{ij} |a_{ij} - b_{ij}|

    Args:
      a: features ``[N, D]``.
      b: features ``[N, D]``.

    Returns:
      A scalar ``<= 0`` in the promoted floating dtype of ``a`` and ``b``;
      ``0`` iff ``a == b``.

    References:
      Yu & Wang (2024), Neural Lineage, Sec. 3 and Table 1 ("L1").
    """
    a, b = _check_pair("l1", a, b, same_width=True)
    return -jnp.mean(jnp.abs(a - b))


@jax.jit
def l2(a: Array, b: Array) -> Array:
    r"""Negative mean squared difference (reported as ``-sqrt(-s)``).

    .. math:: s(a, b) = -\frac{1}{ND} \sum_{ij} (a_{ij} - b_{ij})^2

    Args:
      a: features ``[N, D]``.
      b: features ``[N, D]``.

    Returns:
      A scalar ``<= 0``; ``0`` iff ``a == b``.

    References:
      Yu & Wang (2024), Neural Lineage, Sec. 3 and Table 1 ("L2").
    """
    a, b = _check_pair("l2", a, b, same_width=True)
    return -jnp.mean(jnp.square(a - b))


def _power(x: Array, p: float) -> Array:
    # Integer exponents use repeated multiplication (exact and cheap).
    return x ** int(p) if float(p).is_integer() else x**p


@functools.partial(jax.jit, static_argnames=("p",))
def lp(a: Array, b: Array, *, p: float = DEFAULT_P) -> Array:
    r"""Negative mean ``p``-th power of the absolute difference.

    .. math:: s(a, b) = -\frac{1}{ND} \sum_{ij} |a_{ij} - b_{ij}|^p

    Args:
      a: features ``[N, D]``.
      b: features ``[N, D]``.
      p: the exponent, ``p >= 1`` (default 4, as in the paper).

    Returns:
      A scalar ``<= 0``; ``0`` iff ``a == b``. Reported as ``-(-s)^(1/p)``.

    References:
      Yu & Wang (2024), Neural Lineage, Sec. 3 and Table 1 ("Lp", p = 4).
    """
    _check_p(p)
    a, b = _check_pair("lp", a, b, same_width=True)
    return -jnp.mean(_power(jnp.abs(a - b), p))


@jax.jit
def linf(a: Array, b: Array) -> Array:
    r"""Negative mean over samples of the largest absolute difference.

    .. math:: s(a, b) = -\frac{1}{N} \sum_i \max_j |a_{ij} - b_{ij}|

    Not differentiable (the maximiser switches), so it has no ``FIRST_ORDER``
    form; it does work with ``LINEARIZED``.

    Args:
      a: features ``[N, D]``.
      b: features ``[N, D]``.

    Returns:
      A scalar ``<= 0``; ``0`` iff ``a == b``.

    References:
      Yu & Wang (2024), Neural Lineage, Table 1 ("L-inf").
    """
    a, b = _check_pair("linf", a, b, same_width=True)
    return -jnp.mean(jnp.max(jnp.abs(a - b), axis=1))


@functools.partial(jax.jit, static_argnames=("t",))
def lse(a: Array, b: Array, *, t: float = DEFAULT_T) -> Array:
    r"""Negative log-sum-exp soft maximum of the absolute difference.

    .. math::
       s(a, b) = -\frac{1}{ND} \sum_i \frac{1}{t}
                 \log \sum_j \exp\big(\min(t |a_{ij} - b_{ij}|, 10)\big)

    The clamp at 10 follows the official implementation; it is inactive for
    ``|d| < 10 / t`` (1000 at the default ``t``). The maximum, ``-log(D)/(tD)``,
    is attained at ``a == b``.

    Args:
      a: features ``[N, D]``.
      b: features ``[N, D]``.
      t: the temperature, ``t > 0`` (default 0.01).

    Returns:
      A scalar ``<= -log(D) / (t D)``.

    References:
      Yu & Wang (2024), Neural Lineage, Sec. 3 and Table 1 ("LSE").
    """
    if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
        raise ValueError(f"lse: the temperature t must be a finite number > 0; got {t!r}.")
    a, b = _check_pair("lse", a, b, same_width=True)
    z = jnp.minimum(t * jnp.abs(a - b), LSE_CLAMP)
    n, dim = a.shape
    return -jnp.sum(jax.nn.logsumexp(z, axis=1)) / (t * n * dim)


def _safe_sqrt(x: Array) -> Array:
    ok = x > 0
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, x, 1)), 0)


def _u_centre(k: Array) -> Array:
    """U-centring of a square matrix (Szekely & Rizzo 2014), zero diagonal."""
    n = k.shape[0]
    k = k * (1 - jnp.eye(n, dtype=k.dtype))
    rows = jnp.sum(k, axis=1, keepdims=True)
    cols = jnp.sum(k, axis=0, keepdims=True)
    total = jnp.sum(k)
    u = k - rows / (n - 2) - cols / (n - 2) + total / ((n - 1) * (n - 2))
    return u * (1 - jnp.eye(n, dtype=k.dtype))


@functools.partial(jax.jit, static_argnames=("estimator",))
def cka(a: Array, b: Array, *, estimator: CKAEstimator = CKAEstimator.BIASED) -> Array:
    r"""Linear centred kernel alignment.

    With column-centred ``X = a``, ``Y = b`` and Gram matrices ``K = X X^T``,
    ``L = Y Y^T`` (``[N, N]``):

    .. math::
       \mathrm{CKA}(a, b) = \frac{\mathrm{HSIC}(K, L)}
                                 {\sqrt{\mathrm{HSIC}(K, K)\,\mathrm{HSIC}(L, L)}}

    * ``BIASED``: ``HSIC(K, L) ∝ tr(K L) = ||Y^T X||_F^2``, i.e.
      ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)``, in ``[0, 1]``. Computed in
      feature space (``[D, D]``) or sample space (``[N, N]``), whichever is
      cheaper; the two are equal.
    * ``UNBIASED``: ``HSIC_1(K, L) = <K_u, L_u> / (N (N - 3))`` with ``K_u`` the
      U-centred Gram matrix; this equals Song et al.'s Eq. (5). It is an inner
      product, so the ratio lies in ``[-1, 1]``. Needs ``N >= 4``.

    Invariant to orthogonal maps and isotropic scaling of either input, and to
    translations. ``a`` and ``b`` may have different widths. If either input has
    no variation across samples (all rows equal) CKA is undefined and **0** is
    returned.

    Args:
      a: features ``[N, Da]``.
      b: features ``[N, Db]``.
      estimator: the HSIC estimator (default ``CKAEstimator.BIASED``).

    Returns:
      A scalar; ``1`` when ``b`` is an isotropically scaled rotation of ``a``.

    Raises:
      ValueError: if ``estimator`` is ``UNBIASED`` and ``N < 4``.

    References:
      Kornblith et al. (2019), ICML, Eq. (3) and Sec. 4 (linear CKA).
      Song et al. (2012), JMLR 13, Eq. (5) (unbiased HSIC).
      Nguyen, Raghu & Kornblith (2021), ICLR (unbiased CKA for small N).
    """
    estimator = CKAEstimator(estimator)
    a, b = _check_pair("cka", a, b, same_width=False)
    n = a.shape[0]
    if estimator is CKAEstimator.UNBIASED and n < 4:
        raise ValueError(
            f"cka: the unbiased HSIC estimator needs N >= 4 samples; got N = {n} (shapes {a.shape}, {b.shape})."
        )
    x = _centre_and_scale(a)
    y = _centre_and_scale(b)
    if estimator is CKAEstimator.BIASED:
        da, db = x.shape[1], y.shape[1]
        if n * (da * db + da * da + db * db) <= n * n * (da + db):
            # Feature space: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F).
            xx, yy = x.T @ x, y.T @ y
            num = jnp.sum(jnp.square(y.T @ x))
            return _safe_div(num, _safe_sqrt(jnp.sum(xx * xx) * jnp.sum(yy * yy)))
    return cka_from_grams(x @ x.T, y @ y.T, estimator=estimator)


def cka_from_grams(k: Array, l: Array, *, estimator: CKAEstimator = CKAEstimator.BIASED) -> Array:
    """Linear CKA from the Gram matrices ``[N, N]`` of column-centred features.

    The sample-space half of :func:`cka` (no checks), shared with the batched
    lineage scorer, which forms Gram matrices of linearised features in closed
    form. For ``UNBIASED`` the centring of the features is irrelevant.
    """
    if CKAEstimator(estimator) is CKAEstimator.UNBIASED:
        k, l = _u_centre(k), _u_centre(l)
    num = jnp.sum(k * l)
    return _safe_div(num, _safe_sqrt(jnp.sum(k * k) * jnp.sum(l * l)))


def _distances_from_gram(k: Array) -> Array:
    """Euclidean distances ``[N, N]`` between rows whose Gram matrix is ``k``."""
    sq = jnp.diagonal(k)[:, None]
    d2 = jnp.maximum(sq + sq.T - 2 * k, 0)
    # The diagonal is exactly 0 (the Gram form leaves rounding noise there).
    d2 = d2 * (1 - jnp.eye(k.shape[0], dtype=k.dtype))
    return _safe_sqrt(d2)


def _double_centre(d: Array) -> Array:
    return d - jnp.mean(d, axis=0, keepdims=True) - jnp.mean(d, axis=1, keepdims=True) + jnp.mean(d)


@jax.jit
def dcor(a: Array, b: Array) -> Array:
    r"""Squared distance correlation (V-statistic).

    With ``A``, ``B`` the double-centred Euclidean distance matrices of the rows
    of ``a`` and ``b`` (``[N, N]``):

    .. math::
       \mathrm{dCov}^2(X, Y) = \frac{1}{N^2} \sum_{ij} A_{ij} B_{ij}, \qquad
       \mathrm{dCor}^2(X, Y) = \frac{\mathrm{dCov}^2(X, Y)}
                                    {\sqrt{\mathrm{dCov}^2(X, X)\,\mathrm{dCov}^2(Y, Y)}}

    In ``[0, 1]``; ``1`` when ``b`` is a scaled rotation plus translation of
    ``a``. ``a`` and ``b`` may have different widths. If all rows of either input
    are equal the value is undefined and **0** is returned.

    Distances come from the Gram matrix of the centred, rescaled rows (memory
    ``O(N^2)`` instead of ``O(N^2 D)``), with a zero-safe square root so that
    gradients stay finite at coincident rows.

    Args:
      a: features ``[N, Da]``.
      b: features ``[N, Db]``.

    Returns:
      A scalar in ``[0, 1]`` (up to rounding).

    References:
      Szekely, Rizzo & Bakirov (2007), Ann. Statist. 35(6), Definitions 2-3.
    """
    a, b = _check_pair("dcor", a, b, same_width=False)
    x = _centre_and_scale(a)
    y = _centre_and_scale(b)
    return dcor_from_grams(x @ x.T, y @ y.T)


def dcor_from_grams(k: Array, l: Array) -> Array:
    """Squared distance correlation from the Gram matrices ``[N, N]`` of the rows.

    The core of :func:`dcor` (no checks), shared with the batched lineage scorer.
    Centring the features first improves the accuracy of the distances.
    """
    da = _double_centre(_distances_from_gram(k))
    db = _double_centre(_distances_from_gram(l))
    num = jnp.mean(da * db)
    return _safe_div(num, _safe_sqrt(jnp.mean(da * da) * jnp.mean(db * db)))


# ----------------------------------------------------------------------------
# Registry.


def _check_p(p: Any) -> None:
    if not (isinstance(p, (int, float)) and math.isfinite(p) and p >= 1):
        raise ValueError(f"lp: the exponent p must be a finite number >= 1; got {p!r}.")


_FUNCTIONS: dict[Metric, Callable[..., Array]] = {
    Metric.L1: l1,
    Metric.L2: l2,
    Metric.LP: lp,
    Metric.LINF: linf,
    Metric.LSE: lse,
    Metric.CKA: cka,
    Metric.DCOR: dcor,
}
_HPARAMS: dict[Metric, dict[str, Any]] = {
    Metric.L1: {},
    Metric.L2: {},
    Metric.LP: {"p": DEFAULT_P},
    Metric.LINF: {},
    Metric.LSE: {"t": DEFAULT_T},
    Metric.CKA: {"estimator": CKAEstimator.BIASED},
    Metric.DCOR: {},
}
_REPORTING = {Metric.L2: Reporting.SQRT, Metric.LP: Reporting.PTH_ROOT}


@dataclasses.dataclass(frozen=True)
class MetricFn:
    """A metric with its hyper-parameters bound: a hashable ``(a, b) -> scalar``.

    Instances compare and hash by value, so they can be static arguments of
    ``jax.jit`` without triggering recompilation. Build them with :func:`get`
    (built-in metrics) or :func:`custom` (any ``(a, b) -> scalar`` function).

    Attributes:
      name: a readable name including non-default hyper-parameters,
        e.g. ``"lp"``, ``"lp(p=3)"``, ``"cka(estimator=unbiased)"``.
      fn: the pure metric function.
      kwargs: its keyword hyper-parameters as sorted ``(name, value)`` pairs.
      differentiable: whether the ``FIRST_ORDER`` mode is defined.
      reporting: the transform applied by :func:`report`.
      metric: the built-in :class:`Metric`, or ``None`` for custom metrics.
    """

    name: str
    fn: Callable[..., Array]
    kwargs: tuple[tuple[str, Any], ...] = ()
    differentiable: bool = True
    reporting: Reporting = Reporting.IDENTITY
    metric: Metric | None = None

    def __call__(self, a: Array, b: Array) -> Array:
        return self.fn(a, b, **dict(self.kwargs))

    def report(self, value: Array) -> Array:
        """The reporting transform; see :func:`report`."""
        return report(self, value)

    def __repr__(self) -> str:
        return f"MetricFn({self.name})"


def get(metric: Metric | str | MetricFn, **hparams: Any) -> MetricFn:
    """Returns the metric ``metric`` with hyper-parameters bound.

    Args:
      metric: a :class:`Metric`, its name (``"l1"``, ``"l2"``, ``"lp"``,
        ``"linf"``, ``"lse"``, ``"cka"``, ``"dcor"``) or an existing
        :class:`MetricFn` (returned unchanged; ``hparams`` must then be empty).
      **hparams: keyword hyper-parameters of that metric: ``p`` (``lp``,
        default 4), ``t`` (``lse``, default 0.01), ``estimator`` (``cka``,
        default ``CKAEstimator.BIASED``; a name is accepted).

    Returns:
      A :class:`MetricFn`.

    Raises:
      ValueError: unknown metric name or invalid hyper-parameter value.
      TypeError: a hyper-parameter the metric does not take.
    """
    if isinstance(metric, MetricFn):
        if hparams:
            raise TypeError(f"get: {metric.name} is already configured; got extra {sorted(hparams)}.")
        return metric
    if isinstance(metric, str):
        try:
            metric = Metric(metric.lower())
        except ValueError:
            raise ValueError(
                f"Unknown metric {metric!r}; expected one of {[m.value for m in Metric]} or a similarity.MetricFn."
            ) from None
    if not isinstance(metric, Metric):
        raise TypeError(
            f"Unknown metric {metric!r}; expected a similarity.Metric, one of"
            f" {[m.value for m in Metric]}, or a similarity.MetricFn (see similarity.custom)."
        )
    defaults = _HPARAMS[metric]
    unknown = set(hparams) - set(defaults)
    if unknown:
        raise TypeError(
            f"Metric {metric.value!r} takes hyper-parameters {sorted(defaults) or 'none'}; got {sorted(unknown)}."
        )
    kwargs = {**defaults, **hparams}
    if "p" in kwargs:
        _check_p(kwargs["p"])
        kwargs["p"] = float(kwargs["p"])
    if "t" in kwargs and not (isinstance(kwargs["t"], (int, float)) and math.isfinite(kwargs["t"]) and kwargs["t"] > 0):
        raise ValueError(f"lse: the temperature t must be a finite number > 0; got {kwargs['t']!r}.")
    if "t" in kwargs:
        kwargs["t"] = float(kwargs["t"])
    if "estimator" in kwargs:
        kwargs["estimator"] = CKAEstimator(kwargs["estimator"])
    non_default = [f"{k}={_fmt(v)}" for k, v in sorted(kwargs.items()) if v != defaults[k]]
    name = metric.value + (f"({', '.join(non_default)})" if non_default else "")
    return MetricFn(
        name=name,
        fn=_FUNCTIONS[metric],
        kwargs=tuple(sorted(kwargs.items())),
        differentiable=metric is not Metric.LINF,
        reporting=_REPORTING.get(metric, Reporting.IDENTITY),
        metric=metric,
    )


def _fmt(v: Any) -> str:
    if isinstance(v, enum.Enum):
        return str(v.value)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def custom(fn: Callable[[Array, Array], Array], *, name: str | None = None, differentiable: bool = True) -> MetricFn:
    """Wraps a user metric ``fn(a, b) -> scalar`` (higher = more similar).

    ``fn`` must be a pure, jit-compatible function of two ``[N, D]`` arrays; keep
    one object per metric (it is hashed by identity for jit caching).

    Args:
      fn: the metric function.
      name: a display name (default ``fn.__name__``).
      differentiable: whether ``FIRST_ORDER`` may be used with it.

    Returns:
      A :class:`MetricFn` with identity reporting.
    """
    if not callable(fn):
        raise TypeError(f"custom: expected a callable metric; got {fn!r}.")
    return MetricFn(name=name or getattr(fn, "__name__", repr(fn)), fn=fn, differentiable=differentiable)


def all_metrics() -> tuple[MetricFn, ...]:
    """The paper's table columns plus unbiased CKA, all at default settings."""
    return (
        get("l1"),
        get("l2"),
        get("lp"),
        get("linf"),
        get("lse"),
        get("cka"),
        get("cka", estimator=CKAEstimator.UNBIASED),
        get("dcor"),
    )


def report(metric: Metric | str | MetricFn, value: Array) -> Array:
    r"""The paper's reporting transform of a raw score (monotone, elementwise).

    * ``l2``: ``-sqrt(max(-s, 0))`` (minus the root-mean-square distance);
    * ``lp``: ``-max(-s, 0)^(1/p)``;
    * every other metric: unchanged.

    The clamp at 0 matters only for first-order scores, which can overshoot past
    zero distance (the official implementation clamps the same way).

    Args:
      metric: the metric that produced ``value`` (name, :class:`Metric` or
        :class:`MetricFn`; a bare name uses the default ``p``).
      value: raw scores of any shape.

    Returns:
      The reported scores, same shape and dtype.

    References:
      Yu & Wang (2024), Neural Lineage, Table 1; official code, compare.py.
    """
    m = get(metric)
    value = jnp.asarray(value)
    if m.reporting is Reporting.SQRT:
        return -jnp.sqrt(jnp.maximum(-value, 0))
    if m.reporting is Reporting.PTH_ROOT:
        p = dict(m.kwargs)["p"]
        return -(jnp.maximum(-value, 0) ** (1.0 / p))
    return value
