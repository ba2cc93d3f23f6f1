r"""Learning-free lineage: score matrices over populations, prediction, evaluation.

Given ``K`` candidate parents and ``M`` children of one architecture, stacked
along a leading model axis (:func:`jaxlineage.nets.stack`), the score matrix is

.. math:: S[k, m] = s_{\text{mode}}(\theta_{p_k}, \theta_{c_m}; X, \alpha)

with ``s`` a metric of :mod:`jaxlineage.similarity` and the mode one of
:class:`jaxlineage.linearize.Mode` (``PLAIN``, ``FIRST_ORDER``,
``LINEARIZED``). The predicted parent of child ``m`` is ``argmax_k S[k, m]``;
every entry is computed (the official code leaves some at 0, which wins for
negative distances).

How the work is organised (:func:`score_matrices`):

* children are processed in chunks of ``B`` (bounded by a memory budget); a
  chunk's child features ``F_c`` are computed once;
* for each parent, ``jax.linearize`` runs its forward pass once and gives the
  linear map ``Delta -> J_p Delta``, which is ``vmap``-ed over the chunk's
  ``Delta = theta_c - theta_p``: one Jacobian-vector product per pair, no
  Jacobian, and all metrics, modes and alphas share it;
* for CKA and dCor the linearised features' Gram matrix is formed in closed
  form, ``K(alpha) = K_p + alpha (X_p G^T + G X_p^T) + alpha^2 G G^T``, so each
  pair costs two ``N x N x D`` products whatever the number of alphas and modes,
  and the metrics follow from ``O(N^2)`` work (inner products of ``N x N``
  matrices at ``alpha = 0`` for PLAIN and FIRST_ORDER, one pass over
  ``K(alpha)`` per alpha for LINEARIZED; :mod:`jaxlineage._gram`); the other metrics are evaluated
  directly on ``F_p + alpha G``;
* with a :class:`jax.sharding.Mesh`, children are split over one mesh axis by
  ``jax.shard_map`` (parents replicated), e.g. over devices or hosts.

Scoring at the floor (``fast_path=True``, the default; :mod:`jaxlineage._fastpath`):
when the feature function's first layer is affine in the parameters and reads
the probe (a ``dot_general`` / ``conv_general_dilated`` of ``x`` with a weight
leaf, plus bias; found on the jaxpr, so any user model qualifies), its tangent
along ``Delta`` is ``pre_c - pre_p``. That layer then runs once per model
(``K + M`` passes, the floor) and each pair's jvp covers only the remaining
layers. When those are elementwise (a tap right after the first layer: the
MLP's ``relu1``, the ConvNet's ``conv1``), ``J_p Delta = h'(U_p) (U_c - U_p)``
needs no jvp at all, and L1 / Lp / L-inf / LSE are computed in every mode
from per-model arrays in cache-sized blocks (feature-major, one sweep per metric), L2 from a few ``[K, N D] x [N D, M]``
matrix products (its three modes expand into inner products of per-model arrays); CKA and dCor form the
pair's ``N x N`` Gram products (``X_p G^T`` and ``G G^T``, ``O(N^2 D)`` per
pair; the parents' Gram matrices once per call), which bound their cost. ``fast_path=False`` is the plain jvp path, the
reference the fast one is tested against.

References:
  Yu, R. & Wang, X. (2024). Neural Lineage. CVPR. Sec. 3 and Table 1.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from jaxlineage import _fastpath, _gram, _pairing, linearize
from jaxlineage import similarity as similarity_lib

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_MEMORY_BUDGET",
    "FastPathPlan",
    "fast_path_plan",
    "predict",
    "probabilities",
    "score_matrices",
    "score_matrix",
]

Array = jax.Array
Mode = linearize.Mode
MetricFn = similarity_lib.MetricFn

#: The paper's grid for the step size (Neural Lineage, Sec. 5.1).
DEFAULT_ALPHAS = (0.001, 0.01, 0.1)
#: Bytes of intermediate memory a chunk of children may use (an estimate).
DEFAULT_MEMORY_BUDGET = 512 * 2**20


@dataclasses.dataclass(frozen=True)
class FastPathPlan:
    """How :func:`score_matrices` (``fast_path=True``) splits a feature function after its first layer.

    Attributes:
      first_layer_primitives: the probe-reading bilinear equations the split runs once per model
        (``("dot_general",)`` for a Dense on ``x``, ``("conv_general_dilated",)`` for a Conv).
      elementwise: the rest of the network reads no parameter and acts elementwise, so the
        tangent is ``h'(pre_p) (pre_c - pre_p)`` and no jvp runs at all.
    """

    first_layer_primitives: tuple[str, ...]
    elementwise: bool


def fast_path_plan(feature_fn: Callable, params: Any, x: Any) -> FastPathPlan | None:
    """The fast path :func:`score_matrices` takes for ``feature_fn`` on ``x``, or ``None`` (plain jvp path).

    ``params`` is one model's parameter tree (unstacked). A diagnostic for users and benchmarks:
    the scores do not depend on it beyond rounding.
    """
    x = _pairing.check_probe(x)
    pruned, _, _ = _pairing.analyse(feature_fn, params, x, name="params", stacked=False)
    split = _fastpath.split(pruned, _pairing.struct_of(x))
    if split is None:
        return None
    return FastPathPlan(split.first_layer_primitives, bool(split.elementwise))


# ----------------------------------------------------------------------------
# Per-pair evaluation.


def _needs_gram(combos) -> bool:
    return any(_gram.is_gram(m) for m, _ in combos)


def _needs_jvp(combos) -> bool:
    return any(mode is not Mode.PLAIN for _, mode in combos)


def _child_context(f_c: Array, combos) -> dict[str, Array]:
    return _gram.child_context(f_c, _gram.kinds(combos))


def _chunk_values(combos, f_p, jd, f_c, l_c, parent_ctx, alpha):
    """All (metric, mode) scores of one parent against a chunk of children: ``[B, len(combos), A]``.

    ``jd`` is the chunk's ``J_p Delta`` ``[B, N, D]`` (``None`` when every mode is ``PLAIN``). Gram
    metrics (CKA, dCor) come from each pair's two Gram products (:mod:`jaxlineage._gram`), formed
    for the whole chunk (batched matrix products) only when a Gram metric is asked for in a mode
    other than ``PLAIN``; their ``O(N^2)`` work then runs one child at a time, so that the pair's
    ``N x N`` matrices stay in cache (three times faster than batched over the chunk, measured).
    Other metrics are evaluated on ``F_p + alpha J_p Delta`` (:func:`jaxlineage.linearize._mode_values`).
    """
    gram = tuple(c for c in combos if _gram.is_gram(c[0]))
    rest = tuple(c for c in combos if not _gram.is_gram(c[0]))
    vals = {}
    if gram:
        prods = None
        if jd is not None and _needs_jvp(gram):
            x_p = _gram.parent_features(f_p, parent_ctx)
            prods = jax.vmap(lambda j: _gram.products(x_p, parent_ctx["scale"], j))(jd)

        def one(args):
            lc, pr = args
            cross, quad = (None, None) if pr is None else pr
            return jnp.stack(_gram.pair_scores(gram, parent_ctx, lc, cross, quad, alpha))

        out = jax.lax.map(one, (l_c, prods))  # [B, Cg, A]
        vals.update((c, out[:, i]) for i, c in enumerate(gram))
    if rest:
        mode_values = linearize._mode_values  # pylint: disable=protected-access
        per_pair = lambda j, fc: jnp.stack([mode_values(m, mode, f_p, j, fc, alpha) for m, mode in rest])
        out = jax.vmap(per_pair, (None if jd is None else 0, 0))(jd, f_c)  # [B, Cr, A]
        vals.update((c, out[:, i]) for i, c in enumerate(rest))
    return jnp.stack([vals[c] for c in combos], axis=1)


def _parent_context(f_p: Array, combos):
    return _gram.parent_context(f_p, _gram.kinds(combos))


def _score_local(p_stack, c_stack, x, alpha, *, combos, pruned, split, chunk):
    """Scores of all parents against local children: ``[C, A, K, M]`` plus flags.

    With ``split`` (:mod:`jaxlineage._fastpath`) every model's first layer runs
    once (``K + M`` passes) and each pair's jvp is the remainder's, fed the
    tangent ``pre_c - pre_p``; without it each parent is linearised through the
    whole feature function.
    """
    m = jax.tree_util.tree_leaves(c_stack)[0].shape[0]
    n_chunks = -(-m // chunk)
    pad = n_chunks * chunk - m

    def padded(leaf):
        if pad:
            leaf = jnp.concatenate([leaf, jnp.repeat(leaf[-1:], pad, axis=0)], axis=0)
        return leaf.reshape((n_chunks, chunk) + leaf.shape[1:])

    chunks = tuple(padded(l) for l in c_stack)
    if split is not None and split.elementwise:
        return _score_local_elementwise(p_stack, chunks, x, alpha, m=m, combos=combos, split=split)
    if split is None:
        pre_of = lambda th: ()
        f = lambda th, pre: pruned(th, x)
    else:
        pre_of = lambda th: split.pre(th, x)
        f = lambda th, pre: split.rest(th, pre, x)
    # The parents' first layers, once for all chunks (K passes; [K, *pre] kept).
    p_pre = jax.lax.map(pre_of, p_stack)
    need_gram, need_jvp = _needs_gram(combos), _needs_jvp(combos)

    def per_chunk(c_chunk):
        c_pre = jax.vmap(pre_of)(c_chunk)  # the children's first layers, once per child
        f_c = jax.vmap(f)(c_chunk, c_pre)  # [B, N, D]
        ok_c = _pairing.finite_rows(f_c)
        l_c = jax.vmap(lambda f: _child_context(f, combos))(f_c) if need_gram else {}

        def per_parent(args):
            p, pp = args
            if need_jvp:
                f_p, jvp_fn = jax.linearize(f, p, pp)  # the parent's (remaining) pass, once
            else:
                f_p, jvp_fn = f(p, pp), None
            ctx = _parent_context(f_p, combos) if need_gram else None

            if jvp_fn is None:
                jd, ok_pair = None, jnp.ones((chunk,), bool)
            else:
                # d pre = pre_c - pre_p exactly, as the first layer is linear in its weight.
                tangent = lambda c, pc: jvp_fn(_pairing.delta(c, p), tuple(a - b for a, b in zip(pc, pp)))
                jd = jax.vmap(tangent)(c_chunk, c_pre)  # [B, N, D]
                ok_pair = _pairing.finite_rows(jd)
            vals = _chunk_values(combos, f_p, jd, f_c, l_c, ctx, alpha)  # [B, C, A]
            return vals, ok_pair & jnp.all(jnp.isfinite(f_p))

        vals, ok_pair = jax.lax.map(per_parent, (p_stack, p_pre))  # [K, B, C, A], [K, B]
        return vals, ok_pair, ok_c

    vals, ok_pair, ok_c = jax.lax.map(per_chunk, chunks)  # [n, K, B, C, A], [n, K, B], [n, B]
    return _unchunk(vals, ok_pair, ok_c, m)


def _unchunk(vals, ok_pair, ok_c, m):
    """``[n, K, B, C, A]``, ``[n, K, B]``, ``[n, B]`` -> ``[C, A, K, M]``, ``[K, M]``, ``[M]``."""
    n_chunks, k, chunk = ok_pair.shape
    vals = jnp.transpose(vals, (3, 4, 1, 0, 2)).reshape(vals.shape[3:] + (k, n_chunks * chunk))
    ok_pair = jnp.transpose(ok_pair, (1, 0, 2)).reshape(k, n_chunks * chunk)
    return vals[..., :m], ok_pair[:, :m], ok_c.reshape(-1)[:m]


def _score_local_elementwise(p_stack, chunks, x, alpha, *, m, combos, split):
    """:func:`_score_local` for an elementwise split (e.g. a tap right after the first layer).

    Every model contributes ``F = h(U)`` and ``U`` (its first layer's output,
    ``[N, D]``), parents also ``H = h'(U)``; a pair's ``J_p Delta`` is
    ``H_p * (U_c - U_p)``, elementwise. Row-separable metrics (L1, L2, Lp,
    L-inf, LSE) are evaluated by :func:`jaxlineage._fastpath.tiled_norm_scores`
    in cache-sized blocks; the others (CKA, dCor, custom) per pair on the
    materialised ``J_p Delta``.
    """
    p_arrays = jax.lax.map(lambda th: split.elementwise_arrays(th, x), p_stack)  # K passes
    ok_p = jnp.all(jnp.stack([_pairing.finite_rows(a) for a in p_arrays]), axis=0)
    quad = [i for i, (metric, _) in enumerate(combos) if _fastpath.quadratic(metric)]
    tiled = [i for i, (metric, _) in enumerate(combos) if _fastpath.row_separable(metric) and i not in quad]
    other = [i for i in range(len(combos)) if i not in tiled and i not in quad]
    quad_combos = tuple(combos[i] for i in quad)
    # One sweep over the blocks per metric, with the metric's block shape (_fastpath.block_shape):
    # on XLA:CPU a sweep reducing two metrics' terms at once (L1 and Lp: ten) ran several times slower
    # than the two sweeps apart (BUILD_NOTES, issue 27).
    by_metric: dict = {}
    for i in tiled:
        by_metric.setdefault(combos[i][0], []).append(i)
    tiled = [i for g in by_metric.values() for i in g]
    tiled_groups = [tuple(combos[i] for i in g) for g in by_metric.values()]
    other_combos = tuple(combos[i] for i in other)
    order = np.argsort(quad + tiled + other)  # back to the order of combos
    quad_terms = _fastpath.quadratic_parent_terms(*p_arrays) if quad_combos else None
    need_gram = _needs_gram(other_combos)
    # The parents' Gram matrices (and what the metrics read of them), once for all chunks.
    p_ctx = jax.lax.map(lambda f: _parent_context(f, other_combos), p_arrays[0]) if need_gram else None
    k, n, d = p_arrays[0].shape
    chunk = chunks[0].shape[1]
    itemsize = jnp.dtype(p_arrays[0].dtype).itemsize
    blocks = [
        _fastpath.block_shape(n, d, (3 * k + 2 * chunk) * itemsize, per_row=_fastpath.per_row(g[0][0]))
        for g in tiled_groups
    ]
    # The norm metrics read feature-major arrays ([models, D, N]: see tiled_norm_scores).
    feature_major = lambda arrays: tuple(jnp.swapaxes(a, 1, 2) for a in arrays)
    p_major = feature_major(p_arrays) if tiled_groups else None

    def child_arrays(th):
        (pre,) = split.pre(th, x)
        f = split.rest(th, (pre,), x)
        return f, pre.reshape(f.shape)

    def per_chunk(c_chunk):
        f_c, u_c = jax.vmap(child_arrays)(c_chunk)  # [B, N, D], once per child
        ok_c = _pairing.finite_rows(f_c) & _pairing.finite_rows(u_c)
        parts = []
        if quad_combos:
            vals = _fastpath.quadratic_scores(quad_combos, p_arrays, quad_terms, (f_c, u_c), alpha)
            parts.append(jnp.transpose(vals, (2, 3, 0, 1)))  # [K, B, Cq, A]
        c_major = feature_major((f_c, u_c)) if tiled_groups else None
        for group, block in zip(tiled_groups, blocks):
            vals = _fastpath.tiled_norm_scores(group, p_major, c_major, alpha, block=block)
            parts.append(jnp.transpose(vals, (2, 3, 0, 1)))  # [K, B, Ct, A]
        if other_combos:
            l_c = jax.vmap(lambda f: _child_context(f, other_combos))(f_c) if need_gram else {}

            def per_parent(args):
                (f_p, u_p, h_p), ctx = args
                jd = h_p[None] * (u_c - u_p[None])  # [B, N, D]
                return _chunk_values(other_combos, f_p, jd, f_c, l_c, ctx, alpha)  # [B, Co, A]

            parts.append(jax.lax.map(per_parent, (p_arrays, p_ctx)))  # [K, B, Co, A]
        vals = jnp.concatenate(parts, axis=2)[:, :, order]
        return vals, ok_p[:, None] & ok_c[None, :], ok_c

    vals, ok_pair, ok_c = jax.lax.map(per_chunk, chunks)
    return _unchunk(vals, ok_pair, ok_c, m)


@functools.partial(jax.jit, static_argnames=("combos", "pruned", "split", "chunk", "mesh", "axis"))
def _score_core(p_stack, c_stack, x, alpha, *, combos, pruned, split, chunk, mesh, axis):
    """``(scores per combo [*alpha.shape, K, M], packed flags)``: one dispatch, one read-back of flags.

    The flags (:func:`_flag_shapes`) are the finiteness of the children's features, of each
    pair's parent features and jvp, and of all scores (the parameters are checked before, by
    :func:`jaxlineage._pairing.check_finite_pair`, so that a bad model fails before the work).
    """
    alpha_flat = jnp.reshape(alpha, (-1,))
    vals, ok_pair, ok_c = _score_values(p_stack, c_stack, x, alpha_flat, combos, pruned, split, chunk, mesh, axis)
    k, m = ok_pair.shape
    flags = (
        ok_c,
        ok_pair,
        jnp.all(jnp.isfinite(vals)).reshape(1),
    )
    outs = tuple(vals[i].reshape(jnp.shape(alpha) + (k, m)) for i in range(len(combos)))
    return outs, _pairing.pack(flags)


def _score_values(p_stack, c_stack, x, alpha, combos, pruned, split, chunk, mesh, axis):
    local = functools.partial(_score_local, combos=combos, pruned=pruned, split=split, chunk=chunk)
    if mesh is None:
        return local(p_stack, c_stack, x, alpha)
    n_dev = mesh.shape[axis]
    m = jax.tree_util.tree_leaves(c_stack)[0].shape[0]
    pad = -m % n_dev
    if pad:
        c_stack = tuple(jnp.concatenate([l, jnp.repeat(l[-1:], pad, axis=0)], axis=0) for l in c_stack)
    rep, split = PartitionSpec(), PartitionSpec(axis)
    # No collectives inside; check_vma=False lets the replicated parent be the
    # primal of a jvp whose tangents (child - parent) vary across the axis.
    sharded = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(rep, split, rep, rep),
        out_specs=(PartitionSpec(None, None, None, axis), PartitionSpec(None, axis), split),
        check_vma=False,
    )
    vals, ok_pair, ok_c = sharded(p_stack, c_stack, x, alpha)
    return vals[..., :m], ok_pair[:, :m], ok_c[:m]


def _flag_shapes(k: int, m: int) -> list[tuple[int, ...]]:
    return [(m,), (k, m), (1,)]


# ----------------------------------------------------------------------------
# Public scoring.


def _combos(metrics, modes, *, strict: bool) -> tuple[tuple[MetricFn, Mode], ...]:
    if isinstance(metrics, (str, similarity_lib.Metric, MetricFn)):
        metrics = (metrics,)
    if isinstance(modes, (str, Mode)):
        modes = (modes,)
    metrics = tuple(similarity_lib.get(m) for m in metrics)
    modes = tuple(linearize.as_mode(m) for m in modes)
    if not metrics or not modes:
        raise ValueError(f"Need at least one metric and one mode; got {metrics} and {modes}.")
    combos = []
    for metric in metrics:
        for mode in modes:
            if mode is Mode.FIRST_ORDER and not metric.differentiable:
                if strict:
                    raise ValueError(
                        f"Metric {metric.name!r} is not differentiable, so Mode.FIRST_ORDER is"
                        " undefined for it; use Mode.LINEARIZED."
                    )
                continue
            combos.append((metric, mode))
    if len(set(combos)) != len(combos):
        raise ValueError(f"Duplicate (metric, mode) pairs in {[(m.name, o.value) for m, o in combos]}.")
    return tuple(combos)


def _chunk_size(pruned, split, combos, k, m_local, n_alpha, dtype, budget):
    """Children per chunk so that a chunk's intermediates fit in ``budget`` bytes.

    Per child: its leaves and tangents, its features and the pair's linearised
    features per alpha, Gram matrices for CKA / dCor, and with ``split`` its
    first-layer outputs. With ``split`` the ``K`` parents' first-layer outputs
    (elementwise split: ``F``, ``U``, ``H``) are kept for the whole call and
    come off the budget first. An elementwise split evaluates the norm metrics
    from ``F`` and ``U`` alone (blocks), so only the other metrics need the
    pair's linearised features.
    """
    n, d = pruned.out_shape
    p = sum(int(np.prod(s.shape)) for s in pruned.used_structs)
    need_gram = _needs_gram(combos)
    itemsize = jnp.dtype(dtype).itemsize
    gram = need_gram * (8 + 2 * n_alpha) * n * n
    if split is not None and split.elementwise:
        per_pair = any(not _fastpath.row_separable(m) for m, _ in combos)
        # The chunk's leaves, F_c and U_c (L2's product operands are formed per block of positions).
        per_child = p + 2 * n * d + per_pair * (6 + 3 * n_alpha) * n * d + gram
        kept = 3 * k * n * d + need_gram * k * n * n  # F, U, H and the Gram matrices K_p of the parents
    else:
        pre = 0 if split is None else split.pre_size
        per_child = 3 * p + 2 * pre + (6 + 3 * n_alpha) * n * d + gram
        kept = k * pre
    # What is kept for the whole call does not shrink with the chunk: it may take at most
    # half of the budget from the chunks (one child per chunk would only be slower).
    budget = max(budget - itemsize * kept, budget // 2)
    most = int(max(1, min(m_local, budget // max(itemsize * per_child, 1))))
    # As few chunks as the budget allows, of equal size: the last chunk is padded with
    # copies, so 8 children in chunks of 7 would cost 14. Padding copies every child's
    # parameters (2.6 GB at 800 MLP children), so up to a quarter more chunks are taken
    # when that many divide the children exactly.
    n_chunks = -(-m_local // most)
    exact = [c for c in range(n_chunks, n_chunks + max(1, n_chunks // 4) + 1) if m_local % c == 0]
    if exact:
        n_chunks = exact[0]
    return -(-m_local // n_chunks)


def _validate_mesh(mesh, axis):
    if mesh is None:
        return None
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh or None; got {type(mesh).__name__}.")
    axis = mesh.axis_names[0] if axis is None else axis
    if axis not in mesh.axis_names:
        raise ValueError(f"mesh_axis {axis!r} is not an axis of the mesh {mesh.axis_names}.")
    return axis


def score_matrices(
    metrics: Any,
    feature_fn: Callable,
    parents: Any,
    children: Any,
    x: Array,
    *,
    alpha: Any = None,
    modes: Any = tuple(Mode),
    chunk_size: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    mesh: Mesh | None = None,
    mesh_axis: str | None = None,
    fast_path: bool = True,
) -> dict[tuple[str, Mode], Array]:
    r"""Score matrices for several metrics and modes in one pass.

    Every ``(metric, mode)`` pair shares the forward passes and the one jvp per
    (parent, child) pair; ``FIRST_ORDER`` is skipped for non-differentiable
    metrics (``linf``).

    Args:
      metrics: one metric or a sequence (names, :class:`~jaxlineage.similarity.Metric`
        or :class:`~jaxlineage.similarity.MetricFn`).
      feature_fn: ``f(params, x) -> [N, ...]`` (flattened to ``[N, D]``).
      parents: stacked parent parameters, leaves ``[K, ...]``.
      children: stacked child parameters, leaves ``[M, ...]``; must match the
        parents on the leaves ``feature_fn`` reads (heads may differ).
      x: the probe batch ``[N, ...]``.
      alpha: a scalar or a 1-D sweep ``[A]`` (one jvp serves all); optional when
        every mode is ``PLAIN``.
      modes: one :class:`~jaxlineage.linearize.Mode` or a sequence (default all).
      chunk_size: children per vmapped chunk (default: from the budget).
      memory_budget_bytes: estimated intermediate memory per chunk.
      mesh: optional :class:`jax.sharding.Mesh`; children are split over
        ``mesh_axis`` (default: its first axis), parents are replicated.
      mesh_axis: the mesh axis to shard children over.
      fast_path: when the feature function's first layer is linear in its weight
        and reads the probe (a ``Dense`` / ``Conv`` on ``x``, found on the
        jaxpr, :mod:`jaxlineage._fastpath`), run it once per model and feed the
        jvp of the remaining layers the tangent ``pre_c - pre_p`` (equal to the
        plain jvp up to rounding). ``False`` forces the plain jvp path (the
        reference); feature functions that do not match use it anyway.

    Returns:
      ``{(metric.name, mode): scores}`` with scores of shape ``[*alpha.shape, K, M]``.

    Raises:
      ValueError: see :func:`score_matrix`.
    """
    combos = _combos(metrics, modes, strict=False)
    if not combos:
        raise ValueError("No (metric, mode) pair is defined (FIRST_ORDER needs a differentiable metric).")
    alpha = linearize.as_alpha(alpha, modes=tuple(dict.fromkeys(mode for _, mode in combos)))
    axis = _validate_mesh(mesh, mesh_axis)
    names = ("parents", "children")
    pruned, p, c, x = _pairing.boundary(feature_fn, parents, children, x, stacked=True, names=names)
    _pairing.check_finite_pair(p, c, pruned.used_paths, names=names, stacked=True)
    split = _fastpath.split(pruned, _pairing.struct_of(x)) if fast_path else None
    k, m = p[0].shape[0], c[0].shape[0]
    if chunk_size is None:
        m_local = -(-m // (1 if mesh is None else mesh.shape[axis]))
        dtype = jnp.result_type(*[s.dtype for s in pruned.used_structs])
        chunk_size = _chunk_size(pruned, split, combos, k, m_local, max(1, alpha.size), dtype, memory_budget_bytes)
    elif not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None; got {chunk_size!r}.")
    outs, flags = _score_core(
        p,
        c,
        x,
        alpha,
        combos=combos,
        pruned=pruned,
        split=split,
        chunk=chunk_size,
        mesh=mesh,
        axis=axis,
    )
    if _pairing.is_concrete(flags):
        _raise_if_not_finite(flags, outs, k, m, combos)
    return {(metric.name, mode): out for (metric, mode), out in zip(combos, outs)}


def _raise_if_not_finite(flags, outs, k, m, combos):
    flags = np.asarray(flags)
    if flags.all():
        return
    ok_c, ok_pair, _ = _pairing.unpack(flags, _flag_shapes(k, m))
    if not ok_c.all():
        raise ValueError(f"feature_fn returned NaN or inf features for children[{int(np.argmin(ok_c))}].")
    if not ok_pair.all():
        kk, mm = np.unravel_index(int(np.argmin(ok_pair)), ok_pair.shape)
        raise ValueError(f"NaN or inf parent features or Jacobian-vector product for parents[{kk}] and children[{mm}].")
    for (metric, mode), out in zip(combos, outs):
        finite = np.isfinite(np.asarray(out)).reshape(-1, k, m)
        if not finite.all():
            a, kk, mm = np.unravel_index(int(np.argmin(finite)), finite.shape)
            raise ValueError(
                f"Metric {metric.name!r} in mode {mode.value!r} is not finite for parents[{kk}]"
                f" and children[{mm}] (alpha index {a}) although the features are; the"
                " features are probably too large for the dtype (try float64 or rescale)."
            )


def score_matrix(
    metric: Any,
    feature_fn: Callable,
    parents: Any,
    children: Any,
    x: Array,
    *,
    alpha: Any = None,
    mode: Mode | str = linearize.DEFAULT_MODE,
    chunk_size: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    mesh: Mesh | None = None,
    mesh_axis: str | None = None,
    fast_path: bool = True,
) -> Array:
    r"""The score matrix ``S[k, m]`` of ``K`` parents against ``M`` children.

    .. math:: S[k, m] = s_{\text{mode}}(\theta_{p_k}, \theta_{c_m}; X, \alpha)

    equal, entry by entry, to :func:`jaxlineage.linearize.pair_similarity` (higher =
    more similar; raw, not reported, scores). Jit-compiled once per shape and
    configuration; a second call with new parameters does not recompile.

    What must stay stable for that: ``feature_fn`` is part of the compilation
    key, so pass the same function object (or an equal one) every call. The
    library's adapters are (:meth:`jaxlineage.nets.Network.feature_fn`,
    :func:`jaxlineage.nets.from_linen`, :func:`jaxlineage.nets.from_nnx`); a fresh
    ``lambda`` or ``functools.partial`` per call recompiles every time
    (``benchmarks/recompile.py``). Shapes and dtypes of the parameters and the
    probe, the metric, mode, number of alphas and ``chunk_size`` are keys too.

    Args:
      metric: the metric (name, :class:`~jaxlineage.similarity.Metric` or
        :class:`~jaxlineage.similarity.MetricFn`).
      feature_fn: ``f(params, x) -> [N, ...]``.
      parents: stacked parent parameters, leaves ``[K, ...]`` (``K >= 1``).
      children: stacked child parameters, leaves ``[M, ...]`` (``M >= 1``).
      x: the probe batch ``[N, ...]``.
      alpha: a scalar or a 1-D sweep ``[A]``; optional for ``PLAIN``.
      mode: a :class:`~jaxlineage.linearize.Mode` (default ``LINEARIZED``).
      chunk_size: children per vmapped chunk (default: from the budget).
      memory_budget_bytes: estimated intermediate memory per chunk.
      mesh: optional :class:`jax.sharding.Mesh` to shard the children over.
      mesh_axis: which mesh axis (default: the first).
      fast_path: first layer once per model when it applies (see
        :func:`score_matrices`); ``False`` forces the plain jvp path.

    Returns:
      Scores ``[*alpha.shape, K, M]``.

    Raises:
      ValueError: unknown metric or mode; ``FIRST_ORDER`` with ``linf``; empty or
        ragged stacks; parents and children that differ on a used leaf (the
        message names the path and both shapes); NaN/inf parameters (naming the
        model index and path), features or scores; a probe batch the feature
        function rejects.

    References:
      Yu & Wang (2024), Neural Lineage, Sec. 3.
    """
    (combo,) = _combos(metric, mode, strict=True)
    out = score_matrices(
        (combo[0],),
        feature_fn,
        parents,
        children,
        x,
        alpha=alpha,
        modes=(combo[1],),
        chunk_size=chunk_size,
        memory_budget_bytes=memory_budget_bytes,
        mesh=mesh,
        mesh_axis=mesh_axis,
        fast_path=fast_path,
    )
    return out[(combo[0].name, combo[1])]


# ----------------------------------------------------------------------------
# Prediction.


def predict(scores: Array) -> Array:
    """The predicted parent of each child: ``argmax_k S[..., k, m]`` -> ``[..., M]``."""
    scores = jnp.asarray(scores)
    if scores.ndim < 2:
        raise ValueError(f"scores must be [..., K, M]; got shape {scores.shape}.")
    return jnp.argmax(scores, axis=-2)


def probabilities(scores: Array, *, temperature: float = 1.0) -> Array:
    r"""Softmax over the candidate parents.

    .. math:: P[k, m] = \frac{\exp(S[k, m] / T)}{\sum_{k'} \exp(S[k', m] / T)}

    Scores of different metrics live on different scales, so ``T`` is
    metric-specific; it only changes calibration, not the argmax.

    Args:
      scores: ``[..., K, M]``.
      temperature: ``T > 0`` (default 1).

    Returns:
      ``[..., K, M]``, summing to 1 over ``K``.
    """
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be a number > 0; got {temperature!r}.")
    scores = jnp.asarray(scores)
    if scores.ndim < 2:
        raise ValueError(f"scores must be [..., K, M]; got shape {scores.shape}.")
    return jax.nn.softmax(scores / temperature, axis=-2)
