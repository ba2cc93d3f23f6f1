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

The parts live apart: ``_examples`` (the examples and their construction, the split),
``_model`` (the network), ``_training`` (training, prediction, assessment) and ``_storage``
(save / restore).
"""

from __future__ import annotations

from jaxlineage.detector._common import AUTO, Auto
from jaxlineage.detector._examples import (
    PAPER_SPLIT,
    Examples,
    auto_layer,
    backbone_kernels,
    block_mean,
    examples_from_arrays,
    kernel_matrices,
    make_pairs,
    resolve_layer,
    split_indices,
    weight_layers,
    weight_matrix,
)
from jaxlineage.detector._model import (
    Block,
    LineageDetector,
    PairEncoder,
    TransformerBlock,
    module_config,
    module_from_config,
)
from jaxlineage.detector._storage import restore, save
from jaxlineage.detector._training import (
    Batch,
    Detector,
    TrainState,
    assess,
    init_state,
    predict_logits,
    train,
    train_step,  # noqa: F401 (the jitted step, outside __all__ as before the split)
)

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
