"""The detector's examples: one child against all candidate parents, built from weight matrices and features.

Part of :mod:`jaxlineage.detector`, which re-exports the public names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlineage import nets
from jaxlineage.detector._common import PyTree
from jaxlineage.errors import path_str

#: Child split fractions of the paper's protocol (train, val, test).
PAPER_SPLIT = (0.7, 0.1, 0.2)


@dataclasses.dataclass(frozen=True)
class Examples:
    """Detector examples: ``M`` children against the same ``K`` candidate parents.

    Each parent's and each child's arrays are stored once; :meth:`weight_pairs`
    and :meth:`feature_pairs` build the per-child pairs (parent in channel 0,
    child in channel 1). Weight matrices are in the paper's ``[out, in]`` layout.
    Either modality may be absent (``None``), not both.

    Attributes:
      labels: ``[M]`` int32, the index of each child's true parent in
        ``parent_ids``; in an open-set example set, ``K`` means "no parent".
      parent_ids: ``K`` candidate ids. child_ids: ``M`` child ids.
      parent_weights: ``[K, out, in]`` or ``None``. child_weights: ``[M, out, in]`` or ``None``.
      parent_features: ``[K, n_probe, D]`` or ``None``. child_features: ``[M, n_probe, D]`` or ``None``.
      open_set: whether label ``K`` ("no parent") is allowed.
      weight_layer, feature_tap, weight_pool, feature_pool: how :func:`examples_from_arrays`
        made the arrays (for records).
    """

    labels: np.ndarray
    parent_ids: tuple[str, ...]
    child_ids: tuple[str, ...]
    parent_weights: np.ndarray | None = None
    child_weights: np.ndarray | None = None
    parent_features: np.ndarray | None = None
    child_features: np.ndarray | None = None
    open_set: bool = False
    weight_layer: str | None = None
    feature_tap: str | None = None
    weight_pool: int = 1
    feature_pool: int = 1

    def __post_init__(self):
        object.__setattr__(self, "parent_ids", tuple(self.parent_ids))
        object.__setattr__(self, "child_ids", tuple(self.child_ids))
        object.__setattr__(self, "labels", np.asarray(self.labels, np.int32).reshape(-1))
        k, m = len(self.parent_ids), len(self.child_ids)
        if not self.has_weights and not self.has_features:
            raise ValueError("Examples need weights, features or both; both are None")
        if k < (1 if self.open_set else 2):
            raise ValueError(f"the detector needs at least 2 candidate parents (or 1 plus 'no parent'), got {k}")
        if self.labels.shape != (m,):
            raise ValueError(f"{m} children but labels of shape {self.labels.shape}")
        top = k if self.open_set else k - 1
        if m and (self.labels.min() < 0 or self.labels.max() > top):
            raise ValueError(
                f"labels must lie in [0, {top}] ({k} candidates, open_set={self.open_set}), "
                f"got [{self.labels.min()}, {self.labels.max()}]"
            )
        for name in ("weights", "features"):
            p, c = getattr(self, f"parent_{name}"), getattr(self, f"child_{name}")
            if (p is None) != (c is None):
                raise ValueError(f"parent_{name} and child_{name} must both be given or both be None")
            if p is None:
                continue
            p, c = np.asarray(p, np.float32), np.asarray(c, np.float32)
            object.__setattr__(self, f"parent_{name}", p)
            object.__setattr__(self, f"child_{name}", c)
            if p.ndim != 3 or c.ndim != 3:
                raise ValueError(f"parent_{name} and child_{name} must be [models, H, W], got {p.shape} and {c.shape}")
            if p.shape[0] != k or c.shape[0] != m:
                raise ValueError(f"{k} parents and {m} children but parent_{name} {p.shape}, child_{name} {c.shape}")
            if p.shape[1:] != c.shape[1:]:
                raise ValueError(f"candidate {name} of shape {p.shape[1:]} do not match the children's {c.shape[1:]}")

    def __len__(self) -> int:
        return len(self.child_ids)

    @property
    def num_candidates(self) -> int:
        """``K``, the number of candidate parents."""
        return len(self.parent_ids)

    @property
    def num_outputs(self) -> int:
        """Logits per child: ``K``, or ``K + 1`` for open-set examples."""
        return self.num_candidates + int(self.open_set)

    @property
    def has_weights(self) -> bool:
        return self.parent_weights is not None

    @property
    def has_features(self) -> bool:
        return self.parent_features is not None

    @property
    def no_parent(self) -> np.ndarray:
        """``[M]`` bool: children whose true parent is not among the candidates."""
        return self.labels == self.num_candidates

    def take(self, idx: Sequence[int] | np.ndarray) -> Examples:
        """The children at ``idx`` (same candidates)."""
        idx = np.asarray(idx, np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"child index out of range for {len(self)} children: {idx}")
        pick = lambda a: None if a is None else a[idx]
        return dataclasses.replace(
            self,
            labels=self.labels[idx],
            child_ids=tuple(self.child_ids[i] for i in idx),
            child_weights=pick(self.child_weights),
            child_features=pick(self.child_features),
        )

    def drop_parent(self, parent: int | str) -> Examples:
        """The open-set variant: ``parent`` leaves the candidates and its children become "no parent".

        Args:
          parent: candidate index or id.

        Returns:
          :class:`Examples` with ``K - 1`` candidates, ``open_set=True`` and the
          held-out parent's children labelled ``K - 1`` (the new "no parent" index).
        """
        k = self.num_candidates
        if isinstance(parent, str):
            if parent not in self.parent_ids:
                raise ValueError(f"no candidate parent {parent!r}; candidates: {self.parent_ids}")
            parent = self.parent_ids.index(parent)
        if not 0 <= parent < k:
            raise ValueError(f"parent index {parent} out of range for {k} candidates")
        keep = np.array([i for i in range(k) if i != parent])
        remap = np.full(k + 1, -1, np.int32)
        remap[keep] = np.arange(k - 1)
        remap[parent] = remap[k] = k - 1
        pick = lambda a: None if a is None else a[keep]
        return dataclasses.replace(
            self,
            labels=remap[self.labels],
            parent_ids=tuple(self.parent_ids[i] for i in keep),
            parent_weights=pick(self.parent_weights),
            parent_features=pick(self.parent_features),
            open_set=True,
        )

    def without_weights(self) -> Examples:
        """The features-only variant."""
        return dataclasses.replace(self, parent_weights=None, child_weights=None, weight_layer=None)

    def without_features(self) -> Examples:
        """The weights-only variant."""
        return dataclasses.replace(self, parent_features=None, child_features=None, feature_tap=None)

    def weight_pairs(self, idx=None) -> np.ndarray | None:
        """``[m, K, 2, out, in]`` weight pairs of the children at ``idx`` (default: all)."""
        if not self.has_weights:
            return None
        c = self.child_weights if idx is None else self.child_weights[np.asarray(idx)]
        return np.asarray(make_pairs(self.parent_weights, c))

    def feature_pairs(self, idx=None) -> np.ndarray | None:
        """``[m, K, 2, n_probe, D]`` feature pairs of the children at ``idx`` (default: all)."""
        if not self.has_features:
            return None
        c = self.child_features if idx is None else self.child_features[np.asarray(idx)]
        return np.asarray(make_pairs(self.parent_features, c))


def make_pairs(parents: jax.Array, children: jax.Array) -> jax.Array:
    """Pairs every child with every candidate: ``[K, H, W]``, ``[B, H, W]`` -> ``[B, K, 2, H, W]``.

    Channel 0 holds the parent, channel 1 the child (the official code's order).
    """
    b, k = children.shape[0], parents.shape[0]
    p = jnp.broadcast_to(parents[None], (b, *parents.shape))
    c = jnp.broadcast_to(children[:, None], (b, k, *children.shape[1:]))
    return jnp.stack([p, c], axis=2)


def backbone_kernels(params: PyTree) -> dict[str, Any]:
    """``{layer name: kernel}`` of every backbone leaf with >= 2 axes (``params/`` and ``/kernel`` dropped).

    Works on one model's parameters and on stacked ones (``[P, ...]`` leaves; then
    biases ``[P, D]`` appear too, under their own names such as ``"dense1/bias"``).
    """
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        parts = path_str(path).split("/")
        if nets.HEAD in parts or np.ndim(leaf) < 2:
            continue
        if parts[0] == "params" and len(parts) > 1:
            parts = parts[1:]
        if parts[-1] == "kernel" and len(parts) > 1:
            parts = parts[:-1]
        out["/".join(parts)] = leaf
    return out


def weight_layers(params: PyTree) -> tuple[str, ...]:
    """Names of the backbone layers whose kernel the detector can use (e.g. ``"dense1"``).

    Any pytree works: every leaf with at least 2 axes outside the classifier head
    (:data:`jaxlineage.nets.HEAD`) is a layer, named by its path without a leading
    ``params/`` and a trailing ``/kernel`` (``{"params": {"dense1": {"kernel": ...}}}``
    -> ``"dense1"``).

    Args:
      params: one model's parameters.
    """
    return tuple(backbone_kernels(params))


def resolve_layer(layer: str, params: PyTree) -> str:
    """The canonical name of ``layer`` (``"dense1"``, ``"params/dense1/kernel"``, ...) in ``params``.

    Raises:
      ValueError: no such backbone layer (the message lists the valid ones).
    """
    valid = weight_layers(params)
    name = layer.strip("/")
    name = name.removeprefix("params/")
    name = name.removesuffix("/kernel")
    if name not in valid:
        why = " (the head is re-initialised per task, so it carries no lineage)" if name == nets.HEAD else ""
        raise ValueError(f"weight layer {layer!r} is not a backbone layer of this network{why}; valid layers: {valid}")
    return name


def kernel_matrices(kernels: Any) -> np.ndarray:
    """Stacked kernels in the paper's ``[out, in]`` layout: ``[P, ..., in, out]`` -> ``[P, out, prod(...) * in]``.

    Dense kernels ``[P, in, out]`` are transposed; conv kernels ``[P, kh, kw, in, out]``
    become ``[P, out, kh * kw * in]``.
    """
    k = np.asarray(kernels, np.float32)
    if k.ndim < 3:
        raise ValueError(f"stacked kernels must be [P, ..., in, out], got shape {k.shape}")
    return np.moveaxis(k, -1, 1).reshape(k.shape[0], k.shape[-1], -1)


def weight_matrix(params: PyTree, layer: str) -> np.ndarray:
    """One model's kernel of ``layer`` in the paper's ``[out, in]`` layout (see :func:`kernel_matrices`).

    Args:
      params: one model's parameters (any pytree; flax variables work).
      layer: a layer name from :func:`weight_layers` (``"dense1"``, ``"params/dense1/kernel"``).

    Raises:
      ValueError: no such backbone layer (the message lists the valid ones).
    """
    name = resolve_layer(layer, params)
    return kernel_matrices(np.asarray(backbone_kernels(params)[name])[None])[0]


def auto_layer(params: PyTree) -> str:
    """The :data:`AUTO` weight layer: the backbone kernel with the fewest entries (ties: the later one)."""
    sizes = {name: int(np.size(k)) for name, k in backbone_kernels(params).items()}
    if not sizes:
        raise ValueError("the parameters have no backbone kernel (no leaf with >= 2 axes outside the head)")
    return min(reversed(list(sizes)), key=sizes.__getitem__)


def block_mean(a: np.ndarray, pool: tuple[int, int]) -> np.ndarray:
    """Average-pools the last two axes of ``a`` ``[..., H, W]`` in ``ph x pw`` blocks -> ``[..., H // ph, W // pw]``.

    Rows and columns that do not fill a block are dropped (``VALID`` pooling).
    """
    ph, pw = pool
    h, w = a.shape[-2] // ph, a.shape[-1] // pw
    a = a[..., : h * ph, : w * pw].reshape((*a.shape[:-2], h, ph, w, pw))
    return a.mean(axis=(-3, -1))


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or int(v) != v or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def examples_from_arrays(
    *,
    labels: Any,
    parent_weights: Any = None,
    child_weights: Any = None,
    parent_features: Any = None,
    child_features: Any = None,
    parent_ids: Sequence[str] | None = None,
    child_ids: Sequence[str] | None = None,
    open_set: bool = False,
    weight_pool: int = 1,
    feature_pool: int = 1,
    n_probe: int | None = None,
    weight_layer: str | None = None,
    feature_tap: str | None = None,
) -> Examples:
    """The detector's pure entry point: examples from weight matrices and features.

    Child ``m`` becomes one example against all ``K`` candidates. Weight matrices
    are block-averaged in ``weight_pool x weight_pool`` blocks and features over
    ``feature_pool`` adjacent units (:func:`block_mean`); features keep their first
    ``n_probe`` probe inputs (the official code uses the first 64).

    Args:
      labels: ``[M]`` index of each child's parent among the candidates; with
        ``open_set``, ``K`` (or :data:`jaxlineage.eval.NO_PARENT`, ``-1``) means "no parent".
      parent_weights: ``[K, out, in]`` one layer's weight matrices (see
        :func:`kernel_matrices` for raw kernels), or ``None`` (features only).
      child_weights: ``[M, out, in]`` or ``None``.
      parent_features: ``[K, N, D]`` features on the probe inputs, or ``None`` (weights only).
      child_features: ``[M, N, D]`` on the same probe inputs, or ``None``.
      parent_ids, child_ids: names for messages and records (default ``"parent <k>"``, ``"child <m>"``).
      open_set: allow "no parent" labels (the detector then needs its "no parent" logit).
      weight_pool, feature_pool: pooling factors (1 = none, as in the paper).
      n_probe: keep the first ``n_probe`` probe inputs (default: all).
      weight_layer, feature_tap: what the arrays are (recorded only).

    Returns:
      :class:`Examples`.

    Raises:
      ValueError: neither modality, mismatched shapes (naming the model), non-finite
        values (naming the model), pooling larger than the arrays, bad labels.

    References:
      Yu & Wang, "Neural Lineage", CVPR 2024, Sec. 4 and supplement S2.5 (the
      weight and feature pairs of one child against every candidate).
    """
    weight_pool, feature_pool = _positive_int("weight_pool", weight_pool), _positive_int("feature_pool", feature_pool)
    if n_probe is not None:
        n_probe = _positive_int("n_probe", n_probe)
    if parent_weights is None and parent_features is None:
        raise ValueError("weights and features are both None: the detector needs weights, features or both")
    k = len(parent_weights if parent_weights is not None else parent_features)
    m = len(child_weights if child_weights is not None else child_features)
    parent_ids = tuple(parent_ids) if parent_ids is not None else tuple(f"parent {i}" for i in range(k))
    child_ids = tuple(child_ids) if child_ids is not None else tuple(f"child {i}" for i in range(m))
    labels = np.asarray(labels, np.int64).reshape(-1)
    if open_set:
        labels = np.where(labels < 0, k, labels)

    def prepare(p, c, what, pool):
        if p is None and c is None:
            return None, None
        if (p is None) != (c is None):
            raise ValueError(f"parent and child {what} must both be given or both be None")
        p, c = np.asarray(p, np.float32), np.asarray(c, np.float32)
        for arr, ids, side in ((p, parent_ids, "parent"), (c, child_ids, "child")):
            if arr.ndim != 3 or arr.shape[0] != len(ids):
                raise ValueError(f"{side} {what} must be [{len(ids)}, H, W] ({len(ids)} {side} ids); got {arr.shape}")
            bad = ~np.isfinite(arr).reshape(len(ids), -1).all(axis=1)
            if bad.any():
                raise ValueError(f"{what} of model {ids[int(np.argmax(bad))]!r} are not finite")
        if p.shape[1:] != c.shape[1:]:
            raise ValueError(
                f"candidate {what} of shape {p.shape[1:]} do not match the children's {c.shape[1:]} "
                f"(e.g. {parent_ids[0]!r} vs {child_ids[0]!r})"
            )
        if what == "features" and n_probe is not None:
            if n_probe > p.shape[1]:
                raise ValueError(f"n_probe={n_probe} exceeds the {p.shape[1]} probe inputs of the features")
            p, c = p[:, :n_probe], c[:, :n_probe]
        if min(p.shape[1:][1 if what == "features" else 0 :]) < pool:
            raise ValueError(
                f"{'weight' if what == 'weights' else 'feature'}_pool={pool} exceeds the {what} of shape {p.shape[1:]}"
            )
        window = (pool, pool) if what == "weights" else (1, pool)
        return block_mean(p, window), block_mean(c, window)

    pw, cw = prepare(parent_weights, child_weights, "weights", weight_pool)
    pf, cf = prepare(parent_features, child_features, "features", feature_pool)
    return Examples(
        labels=labels,
        parent_ids=parent_ids,
        child_ids=child_ids,
        parent_weights=pw,
        child_weights=cw,
        parent_features=pf,
        child_features=cf,
        open_set=open_set,
        weight_layer=weight_layer if pw is not None else None,
        feature_tap=feature_tap if pf is not None else None,
        weight_pool=weight_pool,
        feature_pool=feature_pool,
    )


def split_indices(n: int, *, key: jax.Array, fractions: Sequence[float] = PAPER_SPLIT) -> tuple[np.ndarray, ...]:
    """A random train / val / test split of ``n`` children (paper: 7:1:2).

    Sizes: ``round(f_test * n)`` test, ``round(f_val * n)`` val, the rest train
    (46 children -> 32 / 5 / 9).

    Raises:
      ValueError: a split would be empty.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) <= 0:
        raise ValueError(f"fractions must be three positive numbers (train, val, test), got {fractions}")
    total = sum(fractions)
    n_test, n_val = int(round(fractions[2] / total * n)), int(round(fractions[1] / total * n))
    sizes = dict(train=n - n_test - n_val, val=n_val, test=n_test)
    empty = [k for k, v in sizes.items() if v < 1]
    if empty:
        raise ValueError(
            f"splitting {n} children by {fractions} leaves the {', '.join(empty)} split(s) empty "
            f"(sizes {sizes}); the protocol needs more children"
        )
    order = np.asarray(jax.random.permutation(key, n))
    return order[: sizes["train"]], order[sizes["train"] : sizes["train"] + n_val], order[sizes["train"] + n_val :]
