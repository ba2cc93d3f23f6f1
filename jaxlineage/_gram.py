r"""Private: CKA (both estimators) and dCor of a linearised pair from its two Gram products.

The linearised features of a pair are ``F_p + alpha G`` with ``G = J_p Delta``. With ``X`` the
parent's centred features and ``Gc`` the centred ``G``, both divided by the parent's scale ``s``
(CKA and dCor are scale invariant), the Gram matrix of the linearised features is

.. math:: K(\alpha) = K_p + \alpha (C + C^T) + \alpha^2 Q, \qquad C = X Gc^T, \quad Q = Gc Gc^T ,

so a pair's only ``O(N^2 D)`` work is the two products ``C`` and ``Q``; every alpha, every mode and
every Gram metric follows from ``O(N^2)`` work on ``K_p`` (per parent, once per call), the child's
Gram matrix ``L`` (per child, in the forms the metrics read: ``L``, its U-centring, its
double-centred distance matrix) and ``C, Q`` (per pair):

* ``PLAIN`` and ``FIRST_ORDER`` need each score and its derivative at ``alpha = 0`` only. For CKA
  these come from a few inner products (``<K_p, L>``, ``<C, L>``, ``<K_p, C>``...), the first-order
  expansions of ``<K(alpha), L>`` and ``<K(alpha), K(alpha)>``; for dCor from
  ``K_p + alpha (C + C^T)``. ``FIRST_ORDER`` is their ``jax.jvp`` (the chain rule of the
  definition, ``d/d alpha s(F_p + alpha G, F_c)``), sharing ``PLAIN``'s value.
* ``LINEARIZED``: one pass over ``K(alpha)`` per alpha, shared by the metrics (CKA's inner
  products evaluated directly: as quartics in ``alpha`` their terms cancel in float32 when
  ``alpha G`` is as large as the parent's features, measured 3e-5 relative against 5e-7).
* **Unbiased CKA** without U-centring ``K``: U-centring (``similarity._u_centre``) is linear,
  idempotent and self-adjoint for the Frobenius inner product (``<U(A), B> = <A, B>_off -
  (r_A . r_B + c_A . c_B) / (N - 2) + T_A T_B / ((N - 1)(N - 2))``, with off-diagonal row sums
  ``r``, column sums ``c`` and totals ``T``, is symmetric in ``A`` and ``B``), so
  ``<U(K), U(L)> = <K, U(L)>`` and ``<U(K), U(K)>`` needs only ``<K, K>`` and ``K``'s diagonal,
  row and column sums.
* **dCor**: the distance matrix of ``K(alpha)``, double-centred, against the child's, which is
  computed once per child.

The definitions are :func:`jaxlineage.similarity.cka` and :func:`jaxlineage.similarity.dcor`
applied to ``F_p + alpha G`` (tested in float64 in ``tests/test_fastpath.py``).

References:
  Kornblith, S., Norouzi, M., Lee, H. & Hinton, G. (2019). Similarity of Neural Network
    Representations Revisited. ICML. (linear CKA)
  Szekely, G. J. & Rizzo, M. L. (2014). Partial distance correlation with methods for
    dissimilarities. Ann. Statist. 42(6). Sec. 2 (U-centring is a projection).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxlineage import similarity as similarity_lib

# pylint: disable=protected-access
_u_centre = similarity_lib._u_centre
_centre_and_scale = similarity_lib._centre_and_scale
_double_centre = similarity_lib._double_centre
_distances = similarity_lib._distances_from_gram
_safe_div = similarity_lib._safe_div
_safe_sqrt = similarity_lib._safe_sqrt

Array = jax.Array
_GRAM = (similarity_lib.Metric.CKA, similarity_lib.Metric.DCOR)


def is_gram(metric: Any) -> bool:
    """Whether ``metric`` is a built-in Gram metric (CKA of either estimator, dCor)."""
    return metric.metric in _GRAM


def kind(metric: Any) -> str:
    """``"cka"`` (biased), ``"cka_u"`` (unbiased) or ``"dcor"``."""
    if metric.metric is similarity_lib.Metric.DCOR:
        return "dcor"
    est = similarity_lib.CKAEstimator(dict(metric.kwargs)["estimator"])
    return "cka_u" if est is similarity_lib.CKAEstimator.UNBIASED else "cka"


def kinds(combos) -> frozenset[str]:
    return frozenset(kind(m) for m, _ in combos if is_gram(m))


def centred(f: Array) -> Array:
    """Column-centred ``f`` (the shifted-data algorithm of ``similarity._centre_and_scale``)."""
    shifted = f - f[:1]
    return shifted - jnp.mean(shifted, axis=0, keepdims=True)


def scale_of(x: Array) -> Array:
    """``max |x|`` (or 1 if 0), a constant: CKA and dCor are scale invariant."""
    s = jnp.max(jnp.abs(x))
    return jax.lax.stop_gradient(jnp.where(s > 0, s, 1))


def parent_context(f_p: Array, need: frozenset[str]) -> dict[str, Array]:
    """Per parent: its scale, ``K_p`` (``[N, N]``) and what the metrics ``need`` read of it."""
    x = centred(f_p)
    scale = scale_of(x)
    x = x / scale
    k = x @ x.T
    ctx = {"scale": scale, "k": k}
    if need & {"cka", "cka_u"}:
        ctx["kk"] = jnp.sum(k * k)
    if "cka_u" in need:
        ctx["diag"], ctx["rows"], ctx["cols"] = jnp.diagonal(k), jnp.sum(k, axis=1), jnp.sum(k, axis=0)
    return ctx


def parent_features(f_p: Array, ctx: dict[str, Array]) -> Array:
    """The parent's centred, scaled features ``X`` (``K_p = X X^T``)."""
    return centred(f_p) / ctx["scale"]


def child_context(f_c: Array, need: frozenset[str]) -> dict[str, Array]:
    """Per child: its Gram matrix ``L`` in the forms the metrics ``need`` (plain, U-centred, distances)."""
    y = _centre_and_scale(f_c)
    l = y @ y.T
    ctx = {}
    if "cka" in need:
        ctx["l"], ctx["ll"] = l, jnp.sum(l * l)
    if "cka_u" in need:
        lu = _u_centre(l)
        ctx["lu"], ctx["lulu"] = lu, jnp.sum(lu * lu)
    if "dcor" in need:
        b = _double_centre(_distances(l))
        ctx["b"], ctx["bb"] = b, jnp.mean(b * b)
    return ctx


def products(x_p: Array, scale: Array, jd: Array) -> tuple[Array, Array]:
    """``(C, Q) = (X Gc^T, Gc Gc^T)`` of one pair, ``Gc`` the centred tangent over the parent's scale."""
    g = centred(jd) / scale
    return x_p @ g.T, g @ g.T


def _moments(need, p, c, cross):
    """The inner products of ``K(alpha)`` CKA reads, to first order in ``alpha`` (exact value and
    derivative at ``alpha = 0``: ``PLAIN`` and ``FIRST_ORDER``); ``cross`` None: ``PLAIN`` only."""
    ip = lambda a, b: jnp.sum(a * b)
    k, m = p["k"], {}
    zero = jnp.zeros((), k.dtype)
    for key, name in (("l", "kl"), ("lu", "klu")):
        if key in c:
            m[name] = (ip(k, c[key]), 2 * ip(cross, c[key]) if cross is not None else zero)
    if need & {"cka", "cka_u"}:
        m["kk"] = (p["kk"], 4 * ip(k, cross) if cross is not None else zero)
    if "cka_u" in need:
        if cross is not None:
            rc, cc = jnp.sum(cross, axis=1), jnp.sum(cross, axis=0)
            m["diag"] = (p["diag"], 2 * jnp.diagonal(cross))
            m["rows"], m["cols"] = (p["rows"], rc + cc), (p["cols"], cc + rc)
        else:
            m["diag"], m["rows"], m["cols"] = ((p[key], jnp.zeros_like(p[key])) for key in ("diag", "rows", "cols"))
    return m


def _cka_u(num, kk, diag, rows, cols, lulu):
    """Unbiased CKA from ``<K, U(L)>``, ``<K, K>`` and ``K``'s diagonal, row and column sums:
    ``<U(K), U(K)> = <K, K>_off - (|r|^2 + |c|^2) / (N - 2) + T^2 / ((N - 1)(N - 2))`` with the
    off-diagonal row sums ``r``, column sums ``c`` and total ``T``."""
    n = diag.shape[0]
    rows, cols = rows - diag, cols - diag
    total = jnp.sum(rows)
    uu = (
        kk
        - jnp.sum(diag * diag)
        - (jnp.sum(rows * rows) + jnp.sum(cols * cols)) / (n - 2)
        + total * total / ((n - 1) * (n - 2))
    )
    return _safe_div(num, _safe_sqrt(uu * lulu))


def _dcor(k, c):
    da = _double_centre(_distances(k))
    return _safe_div(jnp.mean(da * c["b"]), _safe_sqrt(jnp.mean(da * da) * c["bb"]))


def _scores_near_zero(need, m, p, c, sym):
    """``alpha -> {kind: score}``, exact in value and first derivative at ``alpha = 0``.

    CKA from the first-order expansions of its inner products (:func:`_moments`); dCor from
    ``K_p + alpha (C + C^T)`` (its distances are not polynomial in ``alpha``).
    """
    lin = lambda pair, a: pair[0] + a * pair[1]

    def scores(a):
        out = {}
        if "cka" in need:
            out["cka"] = _safe_div(lin(m["kl"], a), _safe_sqrt(lin(m["kk"], a) * c["ll"]))
        if "cka_u" in need:
            vec = [lin(m[key], a) for key in ("diag", "rows", "cols")]
            out["cka_u"] = _cka_u(lin(m["klu"], a), lin(m["kk"], a), *vec, c["lulu"])
        if "dcor" in need:
            out["dcor"] = _dcor(p["k"] if sym is None else p["k"] + a * sym, c)
        return out

    return scores


def _scores_at(need, p, c, sym, quad):
    """``alpha -> {kind: score}`` on the explicit ``K(alpha) = K_p + alpha S + alpha^2 Q`` (``LINEARIZED``).

    One ``O(N^2)`` pass per alpha shared by the metrics (evaluating CKA's inner products directly
    instead of as quartics in ``alpha`` keeps float32's error that of the definition: the
    polynomial's terms cancel when ``alpha G`` is as large as the parent's features).
    """

    def scores(a):
        k = p["k"] + a * sym + (a * a) * quad
        out = {}
        if need & {"cka", "cka_u"}:
            kk = jnp.sum(k * k)
        if "cka" in need:
            out["cka"] = _safe_div(jnp.sum(k * c["l"]), _safe_sqrt(kk * c["ll"]))
        if "cka_u" in need:
            vec = (jnp.diagonal(k), jnp.sum(k, axis=1), jnp.sum(k, axis=0))
            out["cka_u"] = _cka_u(jnp.sum(k * c["lu"]), kk, *vec, c["lulu"])
        if "dcor" in need:
            out["dcor"] = _dcor(k, c)
        return out

    return scores


def pair_scores(combos, p, c, cross, quad, alpha: Array) -> list[Array]:
    """Every ``(metric, mode)`` of ``combos`` (Gram metrics) for one pair, each ``alpha.shape``.

    Args:
      combos: ``(metric, mode)`` pairs, each metric :func:`is_gram`.
      p: :func:`parent_context` of the parent.
      c: :func:`child_context` of the child.
      cross, quad: :func:`products` of the pair, or ``None`` when every mode is ``PLAIN``.
      alpha: ``[A]``.
    """
    need = kinds(combos)
    modes = {mode.value for _, mode in combos}
    sym = None if cross is None else cross + cross.T
    zero = jnp.zeros((), p["k"].dtype)
    s0 = ds = lin = None
    if modes & {"plain", "first_order"}:
        near = _scores_near_zero(need, _moments(need, p, c, cross), p, c, sym)
        if "first_order" in modes:
            # d/dalpha s(F_p + alpha G, F_c) at 0 (the chain rule of the definition).
            s0, ds = jax.jvp(near, (zero,), (jnp.ones_like(zero),))
        else:
            s0 = near(zero)
    if "linearized" in modes:
        lin = jax.vmap(_scores_at(need, p, c, sym, quad))(alpha)
    out = []
    for metric, mode in combos:
        which = kind(metric)
        if mode.value == "linearized":
            out.append(lin[which])
        elif mode.value == "plain":
            out.append(jnp.broadcast_to(s0[which], alpha.shape))
        else:
            out.append(s0[which] + alpha * ds[which])
    return out
