"""The Lineage Detector network: pair encoders, a transformer and a shared head.

Part of :mod:`jaxlineage.detector`, which re-exports the public names.
"""

from __future__ import annotations

import enum

import flax.linen as nn
import jax
import jax.numpy as jnp


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
