r"""Stage 3 over a JAX mesh: the aligned-weight statistics of many (candidate, query) pairs at once.

:func:`pair_stats` computes, for ``P`` pairs stacked along a leading axis, the same six statistics as
:func:`jaxlineage.hub.search.aligned_similarity` and its siblings compute pair by pair in numpy
(``aligned corr, stored corr, aligned distance, stored distance, copied, filled``; see
:func:`jaxlineage.hub.search.choice_score`). The pair axis is split over one axis of a
:class:`jax.sharding.Mesh` (devices or hosts), and every array step runs there:

* per permutation group, the ``[P, units, units]`` correlation matrices of the candidate's and the
  query's producing kernels (the query's inputs already aligned by the previous group);
* the query's variables permuted by each pair's matching (one gather per permuted axis);
* the statistics of every kernel.

Only the matchings themselves, one exact linear assignment per pair and group
(:func:`jaxlineage.matching.hungarian`), run on the host between those steps: a ``units x units``
problem (16-64 units here), against ``O(rows x units^2)`` for its correlation matrix.

Without a mesh the same jitted steps run on the default device. With ``jax_enable_x64`` the
statistics match the numpy path to rounding (tested on four forced CPU devices); in float32 they
match to about 1e-5 (tested), and a matching may differ where two assignments tie to float32 precision.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxlineage import matching
from jaxlineage import permutations as perm_lib
from jaxlineage.errors import path_str
from jaxlineage.hub._trees import _get, _producing_kernel
from jaxlineage.hub.fingerprints import HubError

__all__ = ["pair_stats"]

PyTree = Any


def _set(tree: dict, path: Sequence[str], value: Any) -> dict:
    """A copy of ``tree`` (nested dicts) with the leaf at ``path`` replaced."""
    if not path:
        return value
    out = dict(tree)
    out[path[0]] = _set(tree[path[0]], path[1:], value)
    return out


@jax.jit
def _column_corr(wc: jax.Array, wq: jax.Array) -> jax.Array:
    """``[P, units, units]``: Pearson correlations of the columns of ``wc[p]`` and ``wq[p]`` (``[P, rows, units]``),
    as :func:`jaxlineage.matching.match_columns` forms them."""

    def unit(w):
        w = w - w.mean(1, keepdims=True)
        return w / (jnp.linalg.norm(w, axis=1, keepdims=True) + 1e-12)

    return jnp.einsum("pru,prv->puv", unit(wc), unit(wq))


@functools.partial(jax.jit, static_argnames="axis")
def _take(x: jax.Array, index: jax.Array, axis: int) -> jax.Array:
    """``x[p]`` taken along ``axis`` (of one model's leaf) at ``index[p]``, per pair."""
    return jax.vmap(lambda a, i: jnp.take(a, i, axis=axis))(x, index)


def _corr(a: jax.Array, b: jax.Array) -> jax.Array:
    a = a - a.mean()
    b = b - b.mean()
    den = jnp.sqrt(jnp.sum(a * a) * jnp.sum(b * b))
    return jnp.where(den > 0, jnp.sum(a * b) / jnp.where(den > 0, den, 1.0), 0.0)


@jax.jit
def _stats(kc: list[jax.Array], kq: list[jax.Array], ka: list[jax.Array]) -> jax.Array:
    """``[P, 6]`` from the candidates' kernels ``kc``, the queries' ``kq`` and the aligned queries' ``ka``."""

    def one(kc, kq, ka):
        aligned = jnp.mean(jnp.stack([_corr(c, a) for c, a in zip(kc, ka)]))
        stored = jnp.mean(jnp.stack([_corr(c, q) for c, q in zip(kc, kq)]))
        norm = jnp.sqrt(sum(jnp.sum(c * c) for c in kc)) + 1e-30
        d_al = jnp.sqrt(sum(jnp.sum((c - a) ** 2) for c, a in zip(kc, ka))) / norm
        d_st = jnp.sqrt(sum(jnp.sum((c - q) ** 2) for c, q in zip(kc, kq))) / norm
        nz = sum(jnp.sum(a != 0) for a in ka)
        same = sum(jnp.sum((a == c) & (a != 0)) for c, a in zip(kc, ka))
        filled = sum(jnp.sum(c != 0) for c in kc) / max(sum(c.size for c in kc), 1)
        copied = same / jnp.maximum(nz, 1)
        dt = aligned.dtype
        return jnp.stack([aligned, stored, d_al, d_st, copied.astype(dt), jnp.asarray(filled, dt)])

    return jax.vmap(one)(kc, kq, ka)


def _kernel_paths(tree: PyTree) -> list[tuple[str, ...]]:
    """The paths of the leaves named ``kernel``, in the order :func:`jax.tree_util.tree_flatten_with_path` gives."""
    out = []
    for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if path_str(p).endswith("kernel"):
            out.append(tuple(getattr(k, "key", getattr(k, "name", k)) for k in p))
    return out


def pair_stats(
    candidates: PyTree,
    queries: PyTree,
    spec: perm_lib.PermutationSpec,
    *,
    mesh: Mesh | None = None,
    axis: str | None = None,
) -> np.ndarray:
    """``[P, 6]``: the aligned-weight statistics of ``P`` (candidate, query) pairs, the pair axis over a mesh.

    Row ``p`` equals :func:`jaxlineage.hub.search._pair_stats` of ``candidates[p]`` and ``queries[p]``:
    ``(aligned corr, stored corr, aligned distance, stored distance, copied, filled)``.

    Args:
      candidates: variables stacked along a leading pair axis ``[P, ...]`` (one architecture).
      queries: the same tree, ``[P, ...]``.
      spec: the architecture's permutation spec (:mod:`jaxlineage.permutations`).
      mesh: a :class:`jax.sharding.Mesh`; pairs are split over ``axis`` (default: its first axis) and padded
        to a multiple of its size. ``None``: the default device.
      axis: the mesh axis.

    Returns:
      A float numpy array ``[P, 6]`` (float64 under ``jax_enable_x64``, else float32).

    Raises:
      HubError: the trees differ, have no ``kernel`` leaf, or disagree on the number of pairs.
    """
    if jax.tree.structure(candidates) != jax.tree.structure(queries):
        raise HubError("pair_stats: candidates and queries have different parameter trees")
    sizes = {np.shape(x)[0] for x in jax.tree.leaves(candidates) + jax.tree.leaves(queries)}
    if len(sizes) != 1:
        raise HubError(f"pair_stats: leaves disagree on the number of pairs {sorted(sizes)}")
    (n_pairs,) = sizes
    kernels = _kernel_paths(candidates)
    if not kernels:
        raise HubError("pair_stats: the models have no leaf named 'kernel'")
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    pad = 0
    sharding = None
    if mesh is not None:
        axis = mesh.axis_names[0] if axis is None else axis
        if axis not in mesh.axis_names:
            raise HubError(f"pair_stats: {axis!r} is not an axis of the mesh {mesh.axis_names}")
        pad = -n_pairs % mesh.shape[axis]
        sharding = NamedSharding(mesh, PartitionSpec(axis))

    def put(x):  # one leaf: to the dtype, padded, on the mesh
        x = jnp.asarray(np.asarray(x), dtype)
        if pad:
            x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)])
        return x if sharding is None else jax.device_put(x, sharding)

    c, q = jax.tree.map(put, candidates), jax.tree.map(put, queries)
    qa = q
    for units, axes in spec.values():
        prod = _producing_kernel(axes, c, stacked=True)
        if prod is None:
            continue
        wc, wq = _get(c, prod.path), _get(qa, prod.path)
        corr = np.asarray(_column_corr(wc.reshape(len(wc), -1, units), wq.reshape(len(wq), -1, units)))
        perms = np.stack([matching.hungarian(corr[p]) for p in range(len(corr))])
        for ax in axes:
            index = np.stack([matching.tile_index(pi, units, ax.tile) for pi in perms])
            index = jnp.asarray(index) if sharding is None else jax.device_put(index, sharding)
            qa = _set(qa, ax.path, _take(_get(qa, ax.path), index, ax.axis))
    out = _stats([_get(c, p) for p in kernels], [_get(q, p) for p in kernels], [_get(qa, p) for p in kernels])
    return np.asarray(out)[:n_pairs]
