r"""Private: CKA (both estimators) and dCor of a linearised pair from its two Gram products.

The linearised features of a pair are ``F_p + alpha G`` with ``G = J_p Delta``. With ``X`` the
parent's centred features and ``Gc`` the centred ``G``, both divided by the parent's scale ``s``
(CKA and dCor are scale invariant), the Gram matrix of the linearised features is

.. math:: K(\alpha) = K_p + \alpha (C + C^T) + \alpha^2 Q, \qquad C = X Gc^T, \quad Q = Gc Gc^T ,

so a pair's only ``O(N^2 D)`` work is the two products ``C`` and ``Q``; every alpha, every mode and
every Gram metric follows from ``O(N^2)`` work on ``K_p`` (per parent), the child's Gram matrix
``L`` (per child) and ``C, Q`` (per pair):

* **biased CKA**, ``<K, L> / sqrt(<K, K> <L, L>)``: ``<K(a), L>`` is a quadratic and ``<K(a), K(a)>``
  a quartic in ``alpha`` whose coefficients are eight inner products of ``N x N`` matrices;
* **unbiased CKA**: U-centring (``similarity._u_centre``) is linear, idempotent and self-adjoint for
  the Frobenius inner product (its value ``<U(A), B> = <A, B>_off - (r_A . r_B + c_A . c_B) / (N - 2)
  + T_A T_B / ((N - 1)(N - 2))``, with off-diagonal row sums ``r``, column sums ``c`` and totals
  ``T``, is symmetric in ``A`` and ``B``), so ``<U(K), U(L)> = <K, U(L)>`` and
  ``<U(K), U(K)> = <K, K>_off - (|r|^2 + |c|^2) / (N - 2) + T^2 / ((N - 1)(N - 2))``: the same
  inner products plus ``O(N)`` vectors (diagonals, row and column sums), polynomial in ``alpha``;
* **dCor** is not polynomial in ``alpha`` (square roots of distances): per alpha one ``O(N^2)``
  evaluation of ``K(alpha)``'s distance matrix, double-centred, against the child's double-centred
  distance matrix computed once per child.

``FIRST_ORDER`` is the ``jax.jvp`` of each closed form at ``alpha = 0`` (the chain rule of the
definition: ``d/d alpha s(F_p + alpha G, F_c)``), shared with ``PLAIN``'s value; ``LINEARIZED``
evaluates the closed form at every alpha. The definitions are :func:`jaxlineage.similarity.cka`
and :func:`jaxlineage.similarity.dcor` applied to ``F_p + alpha G`` (tested in float64 in
``tests/test_fastpath.py``).

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
    if "dcor" in need:
        ctx["mu"] = jnp.mean(_distances(k))  # a shift for dCor's centring sums (see _score_fn)
    return ctx


def parent_features(f_p: Array, ctx: dict[str, Array]) -> Array:
    """The parent's centred, scaled features ``X`` (``K_p = X X^T``)."""
    return centred(f_p) / ctx["scale"]


def child_context(f_c: Array, need: frozenset[str]) -> dict[str, Array]:
    """Per child: its Gram matrix ``L`` in the forms the metrics ``need`` (plain, U-centred, distances)."""
    y = centred(f_c)
    y = y / scale_of(y)
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


def _poly(coeffs, a):
    """``sum_i coeffs[i] a^i`` (Horner)."""
    out = coeffs[-1]
    for c in coeffs[-2::-1]:
        out = c + a * out
    return out


def _moments(need, p, c, cross, quad):
    """The polynomial coefficients in ``alpha`` of the inner products CKA reads (``cross`` None: PLAIN only)."""
    ip = lambda a, b: jnp.sum(a * b)
    k, m = p["k"], {}
    linear = cross is not None
    for key, name in (("l", "kl"), ("lu", "klu")):
        if key in c:
            l = c[key]
            m[name] = (ip(k, l), 2 * ip(cross, l), ip(quad, l)) if linear else (ip(k, l),)
    if need & {"cka", "cka_u"}:
        if linear:
            kc, cc, cct = ip(k, cross), ip(cross, cross), ip(cross, cross.T)
            kq, cq, qq = ip(k, quad), ip(cross, quad), ip(quad, quad)
            m["kk"] = (p["kk"], 4 * kc, 2 * (cc + cct + kq), 4 * cq, qq)
        else:
            m["kk"] = (p["kk"],)
    if "cka_u" in need:
        if linear:
            rc, cc_ = jnp.sum(cross, axis=1), jnp.sum(cross, axis=0)
            m["diag"] = (p["diag"], 2 * jnp.diagonal(cross), jnp.diagonal(quad))
            m["rows"] = (p["rows"], rc + cc_, jnp.sum(quad, axis=1))
            m["cols"] = (p["cols"], cc_ + rc, jnp.sum(quad, axis=0))
        else:
            m["diag"], m["rows"], m["cols"] = (p["diag"],), (p["rows"],), (p["cols"],)
    return m


def _score_fn(which: str, m, p, c, cross, quad):
    """``alpha -> score`` of one Gram metric on ``K(alpha)``."""
    if which == "cka":
        return lambda a: _safe_div(_poly(m["kl"], a), _safe_sqrt(_poly(m["kk"], a) * c["ll"]))
    if which == "cka_u":
        n = p["k"].shape[0]

        def cka_u(a):
            diag = _poly(m["diag"], a)
            rows, cols = _poly(m["rows"], a) - diag, _poly(m["cols"], a) - diag
            total = jnp.sum(rows)
            uu = (
                _poly(m["kk"], a)
                - jnp.sum(diag * diag)
                - (jnp.sum(rows * rows) + jnp.sum(cols * cols)) / (n - 2)
                + total * total / ((n - 1) * (n - 2))
            )
            return _safe_div(_poly(m["klu"], a), _safe_sqrt(uu * c["lulu"]))

        return cka_u
    sym = None if cross is None else cross + cross.T
    n = p["k"].shape[0]

    def dcor(a):
        # With J the centring matrix, A = J D J and the child's B = J D_c J (double-centred):
        # <A, B> = <D, B> (J is symmetric and idempotent) and, for any constant shift mu,
        # |A|^2 = |D'|^2 - 2 |D' 1|^2 / N + (1' D' 1)^2 / N^2 with D' = D - mu (D symmetric). One
        # pass over D instead of forming A; mu, the parent's mean distance, keeps the sums of D'
        # near the size of A's (no cancellation of |D|^2 against the row means).
        k = p["k"] if sym is None else p["k"] + a * sym + (a * a) * quad
        d = _distances(k)
        shifted = d - p["mu"]
        rows = jnp.sum(shifted, axis=1)
        total = jnp.sum(rows)
        aa = (jnp.sum(shifted * shifted) - 2 * jnp.sum(rows * rows) / n + total * total / (n * n)) / (n * n)
        return _safe_div(jnp.mean(d * c["b"]), _safe_sqrt(aa * c["bb"]))

    return dcor


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
    m = _moments(need, p, c, cross, quad)
    zero = jnp.zeros((), p["k"].dtype)
    fns, at_zero = {}, {}
    for metric, mode in combos:
        which = kind(metric)
        if which not in fns:
            fns[which] = _score_fn(which, m, p, c, cross, quad)
        if mode.value == "first_order" and (which, "jvp") not in at_zero:
            # d/dalpha s(F_p + alpha G, F_c) at 0 (the chain rule of the definition).
            at_zero[(which, "jvp")] = jax.jvp(fns[which], (zero,), (jnp.ones_like(zero),))
    out = []
    for metric, mode in combos:
        which = kind(metric)
        if mode.value == "linearized":
            out.append(jax.vmap(fns[which])(alpha))
            continue
        if (which, "jvp") in at_zero:
            s0, ds = at_zero[(which, "jvp")]
        else:
            if (which, "value") not in at_zero:
                at_zero[(which, "value")] = (fns[which](zero), None)
            s0, ds = at_zero[(which, "value")]
        if mode.value == "plain":
            out.append(jnp.broadcast_to(s0, alpha.shape))
        else:
            out.append(s0 + alpha * ds)
    return out
