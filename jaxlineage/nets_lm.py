"""A small decoder-only transformer language model with named feature taps.

:class:`TransformerLM` is a GPT-style byte-level model: token and learned position
embeddings, pre-LayerNorm blocks (causal multi-head attention, then a GELU MLP,
each added to the residual stream), a final LayerNorm and an untied ``head``
projecting to the vocabulary. It follows the library's one contract:
``network.logits_fn(params, x)`` maps int tokens ``[N, T]`` to logits
``[N, T, V]`` (float *soft tokens* ``[N, T, V]``, distributions over the vocabulary, are
embedded as the expected embedding ``x @ tok_embed``: a one-hot row gives exactly its token's
embedding; :func:`jaxlineage.modelgif.token_field` differentiates through this path), and
``network.feature_fn(tap)`` gives pure functions returning ``[N, T * D]``
(the per-position features flattened, as every method expects).

Taps: ``embed`` (token + position embeddings, the residual stream entering block
1), ``attn<i>`` (block ``i``'s attention output after its output projection,
before it is added to the stream), ``block<i>`` (the residual stream after block
``i``), ``logits``.

Parameter layout under ``params`` (what :mod:`jaxlineage.permutations` describes)::

    tok_embed [V, D]                 pos_embed [T, D]
    ln1_<i>/{scale,bias} [D]         ln2_<i>/{scale,bias} [D]
    attn<i>/{query,key,value}/kernel [D, H, Dh], bias [H, Dh]
    attn<i>/out/kernel [H, Dh, D], bias [D]
    mlp_in<i>/kernel [D, F], bias [F]    mlp_out<i>/kernel [F, D], bias [D]
    ln_f/{scale,bias} [D]            head/kernel [D, V], bias [V]

Importing this module registers the family as ``"transformer_lm"`` in
:data:`jaxlineage.nets.ARCHITECTURES` (``jaxlineage.zoo`` imports it; ``nets`` does not, so the
layers stay one-way).

References:
  Radford et al., "Language Models are Unsupervised Multitask Learners" (GPT-2,
  2019): pre-LayerNorm decoder blocks.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlineage import nets

__all__ = ["BYTE_VOCAB", "LMNetwork", "TransformerLM", "transformer_lm"]

#: Byte-level tokens: every byte value is a token.
BYTE_VOCAB = 256


class _Attention(nn.Module):
    num_heads: int
    head_dim: int

    @nn.compact
    def __call__(self, h):
        d = h.shape[-1]
        shape = (self.num_heads, self.head_dim)
        q = nn.DenseGeneral(shape, name="query")(h)  # [N, T, H, Dh]
        k = nn.DenseGeneral(shape, name="key")(h)
        v = nn.DenseGeneral(shape, name="value")(h)
        t = h.shape[1]
        scores = jnp.einsum("nqhd,nkhd->nhqk", q, k) / jnp.sqrt(jnp.asarray(self.head_dim, q.dtype))
        causal = jnp.tril(jnp.ones((t, t), bool))
        scores = jnp.where(causal[None, None], scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores, axis=-1)
        ctx = jnp.einsum("nhqk,nkhd->nqhd", weights, v)
        return nn.DenseGeneral(d, axis=(-2, -1), name="out")(ctx)


class TransformerLM(nn.Module):
    """Decoder-only pre-LN transformer over byte tokens.

    Attributes:
      num_classes: vocabulary size ``V`` (the zoo's number of outputs; 256 for bytes).
      d_model: residual width ``D``.
      num_heads: heads ``H``; the head width is ``D // H``.
      num_layers: blocks.
      mlp_dim: MLP hidden width ``F``.
      max_len: longest sequence ``T`` (learned position embeddings).
    """

    num_classes: int = BYTE_VOCAB
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 2
    mlp_dim: int = 256
    max_len: int = 64

    @nn.compact
    def __call__(self, x, *, tap: str | None = None, train: bool = False):
        del train  # no dropout: training and evaluation compute the same function
        if x.shape[1] > self.max_len:
            raise ValueError(f"sequence length {x.shape[1]} exceeds max_len {self.max_len}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of num_heads {self.num_heads}")
        tok = self.param("tok_embed", nn.initializers.normal(0.02), (self.num_classes, self.d_model))
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (self.max_len, self.d_model))
        if jnp.issubdtype(x.dtype, jnp.floating):  # soft tokens [N, T, V]: the expected embedding
            if x.ndim != 3 or x.shape[-1] != self.num_classes:
                raise ValueError(f"soft tokens must be [N, T, {self.num_classes}]; got {x.shape}")
            h = x @ tok + pos[None, : x.shape[1]]
        else:
            h = jnp.take(tok, x, axis=0) + pos[None, : x.shape[1]]
        if tap == "embed":
            return h
        for i in range(1, self.num_layers + 1):
            a = _Attention(self.num_heads, self.d_model // self.num_heads, name=f"attn{i}")(
                nn.LayerNorm(name=f"ln1_{i}")(h)
            )
            if tap == f"attn{i}":
                return a
            h = h + a
            m = nn.Dense(self.mlp_dim, name=f"mlp_in{i}")(nn.LayerNorm(name=f"ln2_{i}")(h))
            h = h + nn.Dense(self.d_model, name=f"mlp_out{i}")(nn.gelu(m))
            if tap == f"block{i}":
                return h
        return nn.Dense(self.num_classes, name=nets.HEAD)(nn.LayerNorm(name="ln_f")(h))


@dataclasses.dataclass(frozen=True)
class LMNetwork(nets.Network):
    """A :class:`jaxlineage.nets.Network` whose inputs are int tokens ``[N, T]`` and labels ``[N, T]``."""

    @property
    def label_ndim(self) -> int:
        return 2

    def init(self, key: jax.Array):
        """Fresh variables ``{"params": ...}`` (float32)."""
        variables = self.module.init(key, jnp.zeros((1, *self.input_shape), jnp.int32))
        return jax.tree.map(jnp.asarray, dict(variables))


def transformer_lm(
    num_classes: int = BYTE_VOCAB,
    *,
    d_model: int = 64,
    num_heads: int = 4,
    num_layers: int = 2,
    mlp_dim: int = 256,
    max_len: int = 64,
) -> LMNetwork:
    """A byte-level decoder-only LM (see :class:`TransformerLM`); ``input_shape`` is ``(max_len,)``."""
    taps = ("embed",)
    for i in range(1, num_layers + 1):
        taps += (f"attn{i}", f"block{i}")
    taps += ("logits",)
    module = TransformerLM(num_classes, d_model, num_heads, num_layers, mlp_dim, max_len)
    return LMNetwork("transformer_lm", module, (int(max_len),), taps)


nets.ARCHITECTURES.setdefault("transformer_lm", transformer_lm)
