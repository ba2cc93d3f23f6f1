r"""An attention invariant for transformer-LM lineage, in the spirit of AWM and HuRef.

For block :math:`i` and head :math:`h` of a :class:`jaxlineage.nets_lm.TransformerLM`, take a fixed
set of probe tokens with embeddings :math:`E` ``[K, D]`` and the block's first LayerNorm,

.. math::
   A_{i,h} = (\mathrm{LN}_i(E) W_Q^h + b_Q^h)\,(\mathrm{LN}_i(E) W_K^h + b_K^h)^\top \in \mathbb{R}^{K \times K},

the head's pre-softmax attention scores between the probe tokens (no positions). :math:`A_{i,h}` is
unchanged by every symmetry in :func:`jaxlineage.permutations.transformer_lm_spec`: a permutation of
the residual stream permutes :math:`E`'s columns, the LayerNorm's gain and bias and :math:`W_Q, W_K`'s
rows together (LayerNorm commutes with it); a permutation inside the head cancels in the product; a
permutation of heads reorders the set :math:`\{A_{i,h}\}_h`, which the score undoes by matching heads
(Hungarian matching on correlations). The score of two models is the mean over blocks of the matched
heads' mean Pearson correlation of :math:`A`; it needs equal block counts and probe sets only (the
two widths may differ).

It is a score, not a test: its p-value comes from an empirical null (a conformal p-value against the
scores of pairs known to be unrelated, :func:`jaxlineage.eval.pvalues.conformal_pvalues`), valid when
the tested pair's score is exchangeable with those of independently pretrained pairs.

References:
  Zeng et al., "HuRef: HUman-REadable Fingerprint for Large Language Models", NeurIPS 2024
  (invariant products of weights that cancel the model's symmetries).
  AWM, attention-weight matching for LLM lineage, ICLR 2026 (matching attention matrices).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlineage.errors import JaxlineageError
from jaxlineage.matching import hungarian

__all__ = ["PROBE_TOKENS", "attention_invariants", "attention_match_score"]

PyTree = Any

#: Printable ASCII bytes (32..126): the probe tokens by default.
PROBE_TOKENS = tuple(range(32, 127))


def _layer_norm(x, scale, bias, eps=1e-6):
    # flax.linen.LayerNorm's defaults (epsilon 1e-6, biased variance).
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + eps) * scale[None, :] + bias[None, :]


def attention_invariants(params: PyTree, tokens=PROBE_TOKENS) -> jax.Array:
    """The heads' probe-token score matrices ``[L, H, K, K]`` of one TransformerLM (see the module docstring).

    Raises:
      JaxlineageError: variables that are not a TransformerLM's.
    """
    p = params["params"] if "params" in params else params
    if "tok_embed" not in p or "attn1" not in p:
        raise JaxlineageError("attention_invariants: the variables have no tok_embed / attn1 (not a TransformerLM)")
    e = jnp.take(p["tok_embed"], jnp.asarray(tokens), axis=0)
    out, i = [], 1
    while f"attn{i}" in p:
        ln, a = p[f"ln1_{i}"], p[f"attn{i}"]
        h = _layer_norm(e, ln["scale"], ln["bias"])
        q = jnp.einsum("kd,dhe->hke", h, a["query"]["kernel"]) + a["query"]["bias"][:, None, :]
        k = jnp.einsum("kd,dhe->hke", h, a["key"]["kernel"]) + a["key"]["bias"][:, None, :]
        out.append(jnp.einsum("hqe,hke->hqk", q, k))
        i += 1
    return jnp.stack(out)


def attention_match_score(a: PyTree, b: PyTree, tokens=PROBE_TOKENS) -> float:
    """Mean over blocks of the head-matched Pearson correlation of two models' invariants (higher = closer).

    Args:
      a, b: two TransformerLM variables (same number of blocks and heads; widths may differ).
      tokens: the probe tokens.

    Raises:
      JaxlineageError: different numbers of blocks or heads.
    """
    ia, ib = np.asarray(attention_invariants(a, tokens), np.float64), np.asarray(attention_invariants(b, tokens))
    if ia.shape[:2] != ib.shape[:2]:
        raise JaxlineageError(f"attention_match_score: blocks x heads {ia.shape[:2]} vs {ib.shape[:2]}")
    scores = []
    for xa, xb in zip(ia, ib):
        fa = xa.reshape(xa.shape[0], -1)
        fb = np.asarray(xb, np.float64).reshape(xb.shape[0], -1)
        fa = (fa - fa.mean(1, keepdims=True)) / (fa.std(1, keepdims=True) + 1e-12)
        fb = (fb - fb.mean(1, keepdims=True)) / (fb.std(1, keepdims=True) + 1e-12)
        corr = fa @ fb.T / fa.shape[1]
        c = hungarian(corr)
        scores.append(corr[np.arange(c.size), c].mean())
    return float(np.mean(scores))
