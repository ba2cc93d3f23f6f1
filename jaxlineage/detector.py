"""The learned Lineage Detector (Neural Lineage, Sec. 4 and supplement S2.5).

One **example** is one child network against all ``K`` candidate parents. For
candidate ``k`` the detector sees a *weight pair* (one layer's weight matrix of
parent ``k`` and of the child, stacked as 2 channels, ``[2, out, in]``) and a
*feature pair* (both networks' features on the same ``n_probe`` probe inputs,
``[2, n_probe, D]``). Each pair is encoded by a small CNN, the two codes and a
``cls`` token go through a transformer, and the ``cls`` outputs of all ``K``
candidates are standardised together and scored by a shared linear head:

.. math::

   h_k = \\mathrm{Transformer}\\big([c,\\; E_w(W_k, W_c) + t_0,\\; E_f(F_k, F_c) + t_1]\\big)_0
   \\in \\mathbb{R}^E,\\qquad
   \\hat h_k = \\frac{h_k - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}},\\qquad
   \\mathrm{logit}_k = v^\\top \\hat h_k + b,

with ``mu``, ``sigma^2`` the mean and variance over all ``K x E`` entries of the
child. An optional learnable "no parent" vector ``u`` appended after the
standardisation adds ``logit_K = v^T u + b`` (open-set detection). The head is
shared over candidates, so permuting the candidates permutes the logits, and a
trained detector accepts any number of candidates.

Storage is deduplicated: :class:`Examples` holds each parent's and each child's
matrices once (``[K, ...]`` and ``[M, ...]``); the ``[B, K, 2, ...]`` pairs of a
batch are formed on device inside the jitted step (:func:`make_pairs`), so a
training step is one jitted function with its batch on device and the training
loop makes no host round trip between steps.

The pure entry point is :func:`examples_from_arrays`: stacked weight matrices of
one layer (``[K, out, in]`` parents, ``[M, out, in]`` children, or raw kernels via
:func:`kernel_matrices`) and features on the first probe inputs. Reading models
(stacked parameter pytrees and feature functions) is the evaluation layer's job:
:class:`jaxlineage.eval.methods.DetectorScorer` builds the examples from
populations, fits on a training scenario and scores candidates x queries.

Usage::

    ex = detector.examples_from_arrays(parent_weights=pw, child_weights=cw,      # [K|M, out, in]
                                       parent_features=pf, child_features=cf,    # [K|M, n_probe, D]
                                       labels=labels)
    tr, va, te = detector.split_indices(len(ex), key=jax.random.key(0))
    det = detector.train(ex.take(tr), ex.take(va), key=jax.random.key(1))
    detector.assess(det, ex.take(te))["accuracy"]
    detector.save("/tmp/det", det); det, _ = detector.restore("/tmp/det")

On a zoo, through the evaluation layer (the folds, the open set and the
figures are :mod:`jaxlineage.eval`'s)::

    from jaxlineage.eval import methods, protocols, scenarios
    scen = scenarios.identify(z)                      # open_set=True adds "no parent" queries
    protocols.run(scen, methods.DetectorScorer(epochs=8), key=jax.random.key(0))

References:
  Yu & Wang, "Neural Lineage", CVPR 2024, Sec. 4 (Lineage Detector), supplement
  S2.5 (architecture, training, open-set "no parent" evaluation); official code
  ``yu-rp/NeuralLineage`` (``src/lineagedetector/model.py``).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import logging
import os
import pathlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from jaxlineage import nets
from jaxlineage._io import atomic_dir
from jaxlineage.errors import path_str

__all__ = [
    "AUTO",
    "Auto",
    "Batch",
    "Block",
    "Detector",
    "Examples",
    "LineageDetector",
    "PAPER_SPLIT",
    "PairEncoder",
    "TrainState",
    "TransformerBlock",
    "assess",
    "auto_layer",
    "backbone_kernels",
    "block_mean",
    "examples_from_arrays",
    "init_state",
    "kernel_matrices",
    "make_pairs",
    "module_config",
    "module_from_config",
    "predict_logits",
    "resolve_layer",
    "restore",
    "save",
    "split_indices",
    "train",
    "weight_layers",
    "weight_matrix",
]

log = logging.getLogger("jaxlineage.detector")

PyTree = Any


class Auto(enum.Enum):
    """Let the detector choose (a documented default per argument), e.g. ``weight_layer=AUTO``.

    * for a weight layer: the backbone kernel with the fewest entries (ties: the later one);
    * for a feature tap: the first tap (the first hidden layer).
    """

    AUTO = "auto"


#: Default for ``weight_layer`` / ``feature_tap``: see :class:`Auto`.
AUTO = Auto.AUTO

#: Child split fractions of the paper's protocol (train, val, test).
PAPER_SPLIT = (0.7, 0.1, 0.2)

_CONFIG_FILE = "detector.json"
_VARIABLES_DIR = "variables"


class Block(enum.Enum):
    """The transformer block of :class:`LineageDetector`.

    * ``PAPER`` (default): the official code's bare multi-head self-attention,
      ``x <- MHA(x)``, with no residual, normalisation or MLP (one layer, one head
      in the paper).
    * ``PRE_LN``: the standard pre-LayerNorm block,
      ``x <- x + MHA(LN(x)); x <- x + MLP(LN(x))``, with a final LayerNorm.
    """

    PAPER = "paper"
    PRE_LN = "pre_ln"


# --------------------------------------------------------------------------- examples


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


# --------------------------------------------------------------------------- model


class PairEncoder(nn.Module):
    """Encodes 2-channel pairs: 1x1 conv 2->3, ReLU, 3x3 conv 3->E, BatchNorm, ReLU, global average pool.

    Maps ``[..., 2, H, W]`` to ``[..., E]``. Convolutions have no bias (BatchNorm
    follows); the official code pads the 3x3 conv by 3, here it is ``SAME``.
    """

    embed_dim: int = 32
    difference_init: bool = False

    @nn.compact
    def __call__(self, pairs: jax.Array, *, train: bool) -> jax.Array:
        lead = pairs.shape[:-3]
        x = pairs.reshape((-1, *pairs.shape[-3:])).transpose((0, 2, 3, 1))  # NCHW -> NHWC
        init = _difference_init if self.difference_init else nn.linear.default_kernel_init
        x = nn.relu(nn.Conv(3, (1, 1), use_bias=False, kernel_init=init, name="conv1")(x))
        x = nn.Conv(self.embed_dim, (3, 3), padding="SAME", use_bias=False, name="conv2")(x)
        # momentum 0.9 is PyTorch's BatchNorm default (0.1 there).
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x))
        return jnp.mean(x, axis=(1, 2)).reshape((*lead, self.embed_dim))


def _difference_init(key, shape, dtype=jnp.float32):
    """1x1 conv 2->3 kernel ``[1, 1, 2, 3]`` whose first two outputs are ``parent - child`` and ``child - parent``.

    After the ReLU they carry ``max(+-(parent - child), 0)``, i.e. ``|difference|``
    split by sign; the third output keeps its random init. The official code
    defines this initialisation (``Encoder.initialize_conv1``) but never calls it.
    """
    kernel = nn.linear.default_kernel_init(key, shape, dtype)
    return kernel.at[0, 0, :, :2].set(jnp.asarray([[1.0, -1.0], [-1.0, 1.0]], dtype))


class TransformerBlock(nn.Module):
    """One :class:`Block`: ``[N, T, E] -> [N, T, E]``."""

    num_heads: int = 1
    block: Block = Block.PAPER
    mlp_ratio: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        e = x.shape[-1]
        attention = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, qkv_features=e, out_features=e, name="attention"
        )
        if self.block == Block.PAPER:
            return attention(x)
        x = x + attention(nn.LayerNorm(name="ln1")(x))
        h = nn.Dense(self.mlp_ratio * e, name="mlp_in")(nn.LayerNorm(name="ln2")(x))
        return x + nn.Dense(e, name="mlp_out")(nn.gelu(h))


class LineageDetector(nn.Module):
    """The Lineage Detector: ``K`` candidate pairs per child -> ``K`` (+1) logits.

    .. math::

       \\mathrm{logits}_{b,k} = v^\\top \\mathrm{std}_b\\big(h_{b,:}\\big)_k + b_0,\\quad
       h_{b,k} = \\mathrm{T}\\big([c,\\; E_w(w_{b,k}) + t_0,\\; E_f(f_{b,k}) + t_1]\\big)_0

    where ``std_b`` standardises child ``b``'s ``[K, E]`` outputs by their mean and
    variance, ``T`` is ``depth`` :class:`TransformerBlock` s, and ``E_w``, ``E_f`` are
    two :class:`PairEncoder` s with separate weights. With ``no_parent`` a learnable
    vector ``u`` is appended after standardisation and scored by the same head.

    Attributes:
      embed_dim: ``E`` (paper: 32).
      depth: transformer blocks (paper: 1).
      num_heads: attention heads (paper: 1); must divide ``embed_dim``.
      block: :class:`Block` (paper: ``Block.PAPER``, a bare attention layer).
      no_parent: append the learnable "no parent" logit (open set).
      mlp_ratio: hidden width of the ``PRE_LN`` MLP, in units of ``E``.
      difference_init: start both encoders' 1x1 convs as ``parent - child`` and
        ``child - parent`` (:func:`_difference_init`; defined, unused, in the official code).

    References:
      Yu & Wang, "Neural Lineage", CVPR 2024, Sec. 4, Fig. 3 and supplement S2.5.
    """

    embed_dim: int = 32
    depth: int = 1
    num_heads: int = 1
    block: Block = Block.PAPER
    no_parent: bool = False
    mlp_ratio: int = 4
    difference_init: bool = False

    @nn.compact
    def __call__(
        self, weight_pairs: jax.Array | None, feature_pairs: jax.Array | None, *, train: bool = False
    ) -> jax.Array:
        """Logits ``[B, K]`` (``[B, K + 1]`` with ``no_parent``).

        Args:
          weight_pairs: ``[B, K, 2, out, in]`` or ``None`` (weights-only / features-only).
          feature_pairs: ``[B, K, 2, n_probe, D]`` or ``None``.
          train: BatchNorm on batch statistics (and updating ``batch_stats``).
        """
        _check_pairs(weight_pairs, feature_pairs)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} does not divide embed_dim={self.embed_dim}")
        e = self.embed_dim
        present = [x for x in (weight_pairs, feature_pairs) if x is not None]
        b, k = present[0].shape[:2]
        type_emb = self.param("type_embedding", nn.initializers.normal(1.0), (2, e))
        cls = self.param("cls_token", nn.initializers.constant(0.01), (e,))
        tokens = [jnp.broadcast_to(cls, (b, k, e))]
        if weight_pairs is not None:
            tokens.append(
                PairEncoder(e, self.difference_init, name="weight_encoder")(weight_pairs, train=train)
                + type_emb[0][None, None]
            )
        if feature_pairs is not None:
            tokens.append(
                PairEncoder(e, self.difference_init, name="feature_encoder")(feature_pairs, train=train)
                + type_emb[1][None, None]
            )
        x = jnp.stack(tokens, axis=2).reshape((b * k, len(tokens), e))
        for i in range(self.depth):
            x = TransformerBlock(self.num_heads, self.block, self.mlp_ratio, name=f"block{i}")(x)
        if self.block == Block.PRE_LN:
            x = nn.LayerNorm(name="ln_final")(x)
        h = x[:, 0].reshape((b, k, e))
        # Per-child standardisation over candidates x E: only relative evidence
        # between candidates reaches the head.
        mean = jnp.mean(h, axis=(1, 2), keepdims=True)
        var = jnp.var(h, axis=(1, 2), keepdims=True)
        h = (h - mean) * jax.lax.rsqrt(var + 1e-6)
        if self.no_parent:
            u = self.param("no_parent_token", nn.initializers.normal(1.0), (e,))
            h = jnp.concatenate([h, jnp.broadcast_to(u, (b, 1, e))], axis=1)
        return nn.Dense(1, name="head")(h)[..., 0]


def _check_pairs(weight_pairs, feature_pairs) -> None:
    if weight_pairs is None and feature_pairs is None:
        raise ValueError("LineageDetector needs weight_pairs, feature_pairs or both; both are None")
    shapes = {}
    for name, x in (("weight_pairs", weight_pairs), ("feature_pairs", feature_pairs)):
        if x is None:
            continue
        if x.ndim != 5 or x.shape[2] != 2:
            raise ValueError(f"{name} must be [B, K, 2, H, W], got shape {x.shape}")
        shapes[name] = x.shape
    if len(shapes) == 2 and shapes["weight_pairs"][:2] != shapes["feature_pairs"][:2]:
        raise ValueError(
            f"weight_pairs {shapes['weight_pairs']} and feature_pairs {shapes['feature_pairs']} disagree on [B, K]"
        )


def module_config(module: LineageDetector) -> dict:
    """The JSON-serialisable hyper-parameters of a :class:`LineageDetector`."""
    return dict(
        embed_dim=module.embed_dim,
        depth=module.depth,
        num_heads=module.num_heads,
        block=module.block.value,
        no_parent=module.no_parent,
        mlp_ratio=module.mlp_ratio,
        difference_init=module.difference_init,
    )


def module_from_config(config: dict) -> LineageDetector:
    """Inverse of :func:`module_config`."""
    config = dict(config)
    config["block"] = Block(config["block"])
    return LineageDetector(**config)


# --------------------------------------------------------------------------- training


class TrainState(train_state.TrainState):
    """Flax ``TrainState`` plus the encoders' BatchNorm statistics."""

    batch_stats: PyTree


class Batch(NamedTuple):
    """A training batch on device: pairs ``[B, K, 2, H, W]`` (or ``None``) and labels ``[B]``."""

    weight_pairs: jax.Array | None
    feature_pairs: jax.Array | None
    labels: jax.Array


class _Arrays(NamedTuple):
    """An :class:`Examples` set on device (deduplicated; ``None`` for an absent modality)."""

    parent_weights: jax.Array | None
    child_weights: jax.Array | None
    parent_features: jax.Array | None
    child_features: jax.Array | None
    labels: jax.Array


def _device_arrays(ex: Examples) -> _Arrays:
    put = lambda a: None if a is None else jnp.asarray(a)
    return _Arrays(
        put(ex.parent_weights),
        put(ex.child_weights),
        put(ex.parent_features),
        put(ex.child_features),
        jnp.asarray(ex.labels),
    )


def _gather(data: _Arrays, idx: jax.Array) -> Batch:
    """The batch of children ``idx`` ``[B]``, paired with every candidate, built on device."""
    pairs = lambda p, c: None if p is None else make_pairs(p, c[idx])
    return Batch(
        pairs(data.parent_weights, data.child_weights),
        pairs(data.parent_features, data.child_features),
        data.labels[idx],
    )


@dataclasses.dataclass(frozen=True)
class Detector:
    """A trained Lineage Detector.

    Attributes:
      module: the :class:`LineageDetector` definition.
      variables: ``{"params": ..., "batch_stats": ...}`` of the best validation epoch.
      history: one dict per epoch (``epoch``, ``lr``, ``train_loss``, ``train_accuracy``,
        ``val_loss``, ``val_accuracy``).
      best_epoch: the epoch whose variables were kept (1-based; 0 = never trained).
    """

    module: LineageDetector
    variables: PyTree
    history: tuple[dict, ...] = ()
    best_epoch: int = 0


def _loss_fn(params, state: TrainState, batch: Batch):
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats},
        batch.weight_pairs,
        batch.feature_pairs,
        train=True,
        mutable=["batch_stats"],
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch.labels).mean()
    return loss, (logits, updates["batch_stats"])


def _train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
    (loss, (logits, batch_stats)), grads = jax.value_and_grad(_loss_fn, has_aux=True)(state.params, state, batch)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch.labels)
    return state, {"loss": loss, "accuracy": accuracy}


#: One optimisation step ``(state, batch) -> (state, {"loss", "accuracy"})``: cross-entropy,
#: BatchNorm in train mode, optimiser from ``state.tx``. Pure and jitted.
train_step = jax.jit(_train_step)


@functools.partial(jax.jit, donate_argnames=("state",))
def _indexed_step(state: TrainState, data: _Arrays, idx: jax.Array) -> tuple[TrainState, dict]:
    """:func:`train_step` on the children ``idx`` ``[B]`` of on-device ``data``; pairs are built on device."""
    return _train_step(state, _gather(data, idx))


@functools.partial(jax.jit, static_argnames=("n", "batch_size", "steps"))
def _epoch_order(key: jax.Array, *, n: int, batch_size: int, steps: int) -> jax.Array:
    """``[steps, batch_size]`` child indices: a fresh permutation; the ``n - steps * batch_size`` left sit out."""
    return jax.random.permutation(key, n)[: steps * batch_size].reshape((steps, batch_size))


@functools.partial(jax.jit, static_argnames=("module",))
def _eval_logits(module: LineageDetector, variables: PyTree, data: _Arrays, idx: jax.Array) -> jax.Array:
    batch = _gather(data, idx)
    return module.apply(variables, batch.weight_pairs, batch.feature_pairs, train=False)


def _logits(module: LineageDetector, variables: PyTree, data: _Arrays, n: int, chunk: int) -> np.ndarray:
    """Eval-mode logits ``[n, K(+1)]`` in fixed-size chunks (the last one padded, so one compilation)."""
    chunk = max(1, min(chunk, n))
    out = []
    for s in range(0, n, chunk):
        idx = np.arange(s, s + chunk) % n
        out.append(np.asarray(_eval_logits(module, variables, data, jnp.asarray(idx)))[: min(chunk, n - s)])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _check_compatible(ex: Examples, module: LineageDetector, what: str) -> None:
    if ex.open_set and not module.no_parent:
        raise ValueError(
            f"{what} examples are open-set (label {ex.num_candidates} = 'no parent') "
            "but the detector has no 'no parent' logit; use LineageDetector(no_parent=True)"
        )


def _check_same_kind(a: Examples, b: Examples) -> None:
    for name in ("weights", "features"):
        pa, pb = getattr(a, f"parent_{name}"), getattr(b, f"parent_{name}")
        if (pa is None) != (pb is None):
            raise ValueError(
                f"train examples {'have' if pa is not None else 'lack'} {name} but val examples "
                f"{'have' if pb is not None else 'lack'} them"
            )
        if pa is not None and pa.shape[1:] != pb.shape[1:]:
            raise ValueError(f"train {name} have shape {pa.shape[1:]} but val {name} {pb.shape[1:]}")


def init_state(
    module: LineageDetector, examples: Examples, *, key: jax.Array, tx: optax.GradientTransformation
) -> TrainState:
    """A fresh :class:`TrainState` for ``module`` on the shapes of ``examples``."""
    data = _device_arrays(examples.take([0]))
    batch = _gather(data, jnp.zeros((1,), jnp.int32))
    variables = module.init(key, batch.weight_pairs, batch.feature_pairs, train=False)
    state = TrainState.create(
        apply_fn=module.apply, params=variables["params"], tx=tx, batch_stats=variables["batch_stats"]
    )
    # A strongly typed step counter: with the Python int 0 the second step would recompile.
    return state.replace(step=jnp.zeros((), jnp.int32))


@functools.lru_cache(maxsize=64)
def _adam(learning_rate: float, steps: int, decay_rate: float):
    """Adam with per-epoch step decay, one object per setting.

    The optimiser is a static field of the :class:`TrainState`, so the jitted step
    is cached on its identity: equal settings must give the same object, or every
    :func:`train` call (every fold of :func:`jaxlineage.eval.protocols.run_all`) would recompile.
    """
    schedule = optax.exponential_decay(learning_rate, transition_steps=steps, decay_rate=decay_rate, staircase=True)
    return schedule, optax.adam(schedule)


def train(
    train_examples: Examples,
    val_examples: Examples,
    *,
    key: jax.Array,
    module: LineageDetector | None = None,
    epochs: int = 10,
    batch_size: int = 16,
    learning_rate: float = 0.01,
    decay_rate: float = 0.7,
    eval_chunk: int = 64,
    monitor: Examples | None = None,
) -> Detector:
    """Trains a detector with Adam and per-epoch step decay; keeps the best validation epoch.

    .. math::

       \\eta_t = \\eta_0 \\cdot \\gamma^{\\lfloor t / S \\rfloor}

    with ``eta_0 = learning_rate``, ``gamma = decay_rate`` and ``S`` steps per epoch
    (the official code's ``StepLR(step_size=1, gamma=0.7)``). The training
    children live on device; each step is one jitted call of :func:`train_step`
    that gathers its batch on device, and the loop reads nothing back until the
    epoch ends. After each epoch the validation set is evaluated, and the variables of the epoch with the best
    validation accuracy (ties: lower validation loss, then the earlier epoch) are
    returned.

    Args:
      train_examples, val_examples: :class:`Examples` with the same candidates'
        shapes and modalities (see :meth:`Examples.take`).
      key: PRNG key (initialisation and data order).
      module: the detector (default: the paper's ``LineageDetector()``, with
        ``no_parent`` when the examples are open-set).
      epochs: passes over the training children (paper's README: 100; the learning
        rate has decayed by 0.7**10 = 0.03 after 10).
      batch_size: children per step (paper: 16), capped at the training set size.
      learning_rate, decay_rate: Adam's initial rate and its per-epoch factor.
      eval_chunk: children per evaluation call (bounds memory).
      monitor: optional examples (same kind as ``val_examples``) evaluated after every epoch and
        recorded in the history as ``monitor_loss`` / ``monitor_accuracy``; they never choose the
        epoch (for diagnostics: how a held-out set fares epoch by epoch).

    Returns:
      A :class:`Detector`.

    Raises:
      ValueError: an empty split, mismatched example sets, or open-set examples
        for a detector without the "no parent" logit.
    """
    for what, ex in (("train", train_examples), ("val", val_examples)):
        if len(ex) == 0:
            raise ValueError(f"the {what} split is empty: the detector needs at least one {what} child")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    _check_same_kind(train_examples, val_examples)
    if monitor is not None:
        _check_same_kind(train_examples, monitor)
    if module is None:
        module = LineageDetector(no_parent=train_examples.open_set or val_examples.open_set)
    _check_compatible(train_examples, module, "train")
    _check_compatible(val_examples, module, "val")
    if monitor is not None:
        _check_compatible(monitor, module, "monitor")

    n = len(train_examples)
    batch_size = min(batch_size, n)
    steps = n // batch_size
    schedule, tx = _adam(learning_rate, steps, decay_rate)
    init_key, order_key = jax.random.split(key)
    state = init_state(module, train_examples, key=init_key, tx=tx)
    train_data, val_data = _device_arrays(train_examples), _device_arrays(val_examples)
    monitor_data = None if monitor is None or len(monitor) == 0 else _device_arrays(monitor)
    val_labels = val_examples.labels

    history, best, best_score = [], None, None
    for epoch in range(1, epochs + 1):
        lr = float(schedule(int(state.step)))
        # Steps are dispatched asynchronously; nothing returns to the host until the
        # epoch's metrics are read. (A lax.scan over steps would make the epoch a
        # single call, but XLA:CPU runs convolutions inside loops ~30x slower.)
        order = _epoch_order(jax.random.fold_in(order_key, epoch), n=n, batch_size=batch_size, steps=steps)
        step_metrics = []
        for s in range(steps):
            state, m = _indexed_step(state, train_data, order[s])
            step_metrics.append(m)
        metrics = jax.device_get(jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *step_metrics))
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        logits = _logits(module, variables, val_data, len(val_examples), eval_chunk)
        val_loss, val_acc = _loss_accuracy(logits, val_labels)
        history.append(
            dict(
                epoch=epoch,
                lr=lr,
                train_loss=float(metrics["loss"]),
                train_accuracy=float(metrics["accuracy"]),
                val_loss=val_loss,
                val_accuracy=val_acc,
            )
        )
        if monitor_data is not None:
            m_loss, m_acc = _loss_accuracy(
                _logits(module, variables, monitor_data, len(monitor), eval_chunk), monitor.labels
            )
            history[-1].update(monitor_loss=m_loss, monitor_accuracy=m_acc)
        log.info(
            "detector: epoch %d lr %.2e train loss %.4f acc %.3f | val loss %.4f acc %.3f",
            epoch,
            lr,
            history[-1]["train_loss"],
            history[-1]["train_accuracy"],
            val_loss,
            val_acc,
        )
        score = (val_acc, -val_loss)
        if best_score is None or score > best_score:
            # Copies: the next epoch donates (overwrites) the state's buffers.
            best, best_score, best_epoch = jax.tree.map(jnp.copy, variables), score, epoch
    return Detector(module=module, variables=best, history=tuple(history), best_epoch=best_epoch)


def _loss_accuracy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    loss = optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), jnp.asarray(labels))
    return float(jnp.mean(loss)), float(np.mean(np.argmax(logits, -1) == labels))


def predict_logits(detector: Detector, examples: Examples, *, chunk: int = 64) -> np.ndarray:
    """Eval-mode logits ``[M, K]`` (``[M, K + 1]`` with the "no parent" logit last)."""
    _check_compatible(examples, detector.module, "these")
    if len(examples) == 0:
        return np.zeros((0, examples.num_candidates + int(detector.module.no_parent)), np.float32)
    return _logits(detector.module, detector.variables, _device_arrays(examples), len(examples), chunk)


def assess(detector: Detector, examples: Examples, *, chunk: int = 64) -> dict:
    """Accuracy and loss of ``detector`` on ``examples`` (formerly ``evaluate``).

    Returns:
      ``accuracy``, ``loss``, ``n``, ``predictions`` ``[M]`` (index ``K`` = "no parent"),
      ``labels`` ``[M]``; for open-set examples also ``n_no_parent``,
      ``accuracy_no_parent`` (on the parentless children; ``nan`` if none) and
      ``accuracy_with_parent``.

    Raises:
      ValueError: empty ``examples``.
    """
    if len(examples) == 0:
        raise ValueError("assess: the example set is empty")
    logits = predict_logits(detector, examples, chunk=chunk)
    loss, acc = _loss_accuracy(logits, examples.labels)
    pred = np.argmax(logits, -1)
    out = dict(accuracy=acc, loss=loss, n=len(examples), predictions=pred, labels=examples.labels.copy())
    if examples.open_set:
        none = examples.no_parent
        correct = pred == examples.labels
        out.update(
            n_no_parent=int(none.sum()),
            accuracy_no_parent=float(correct[none].mean()) if none.any() else float("nan"),
            accuracy_with_parent=float(correct[~none].mean()) if (~none).any() else float("nan"),
        )
    return out


# --------------------------------------------------------------------------- storage


def save(path: str | os.PathLike, detector: Detector, *, metadata: dict | None = None) -> None:
    """Writes ``detector`` to the folder ``path`` atomically: orbax variables plus a JSON config.

    Args:
      path: target folder (replaced if it exists).
      detector: what to save (history and best epoch included).
      metadata: extra JSON-serialisable facts to keep (e.g. the weight layer and tap).
    """
    import orbax.checkpoint as ocp

    path = pathlib.Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(path) as tmp:
        tmp.mkdir()
        ckpt = ocp.StandardCheckpointer()
        ckpt.save(tmp / _VARIABLES_DIR, jax.device_get(detector.variables))
        ckpt.wait_until_finished()
        (tmp / _CONFIG_FILE).write_text(
            json.dumps(
                dict(
                    module=module_config(detector.module),
                    history=list(detector.history),
                    best_epoch=detector.best_epoch,
                    metadata=metadata or {},
                ),
                indent=1,
            )
        )


def restore(path: str | os.PathLike) -> tuple[Detector, dict]:
    """Reads a detector written by :func:`save`; returns ``(detector, metadata)``.

    Raises:
      FileNotFoundError: ``path`` holds no saved detector.
    """
    import orbax.checkpoint as ocp

    path = pathlib.Path(path).absolute()
    if not (path / _CONFIG_FILE).exists() or not (path / _VARIABLES_DIR).is_dir():
        raise FileNotFoundError(f"{path} holds no saved detector ({_CONFIG_FILE} and {_VARIABLES_DIR}/ expected)")
    config = json.loads((path / _CONFIG_FILE).read_text())
    variables = jax.tree.map(jnp.asarray, ocp.StandardCheckpointer().restore(path / _VARIABLES_DIR))
    det = Detector(
        module=module_from_config(config["module"]),
        variables=variables,
        history=tuple(config["history"]),
        best_epoch=int(config["best_epoch"]),
    )
    return det, config["metadata"]


# --------------------------------------------------------------------------- protocol


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
