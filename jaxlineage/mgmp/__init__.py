"""MGMP / Model DNA: DNA generation, the DNA similarity loss and a provenance classifier.

Given a *source* model ``M_s`` and a *target* ``M_t``, decide whether ``M_s`` is the
provenance of ``M_t`` (``M_t`` was derived from ``M_s``, e.g. by fine-tuning). The
method learns, from a **model pool** of targets known to be homologous (derived
from the source) or non-homologous (independents, models derived from other
sources), two networks:

* a **DNA generator** ``g`` that turns each input ``x_i`` of the source's training
  data into a vector ``z_i = g(x_i)`` ``[D]``, assembled with a model's output
  ``y_i = M(x_i)`` ``[C]`` into the model's **DNA fragment** ``o_i = z_i + y_i``
  (``ADD``, needs ``D == C``) or ``o_i = [z_i ; y_i]`` (``CONCAT``, ``[D + C]``);
* a **provenance classifier** ``f_p`` (dense layers, sigmoid) on the concatenated
  source and target fragments ``[o^s_i ; o^t_i]``.

Both are trained jointly, one (homologous, non-homologous) pair of pool models
per mini-batch, on the DNA similarity loss (:func:`dna_similarity_loss`) plus an
L2 penalty on the generator plus the binary cross-entropy of the classifier.
A target is then classified per fragment (``f_p > 0.5``) and per model (the
fraction of homologous fragments ``>= delta``). The *no-generator baseline*
(``Generator.NONE``) uses the model outputs alone as fragments, ``o_i = y_i``.

Everything works on the library's one contract, pure ``apply_fn(params, x)`` over
pytrees (as in :class:`jaxlineage.models.Models`). Pool outputs are computed once per population
(a ``vmap`` over stacked params) and stay on device; the training step is one
jitted function that only gathers from them.

Notation: ``N`` DNA inputs, ``B`` mini-batch size, ``C`` model outputs (logits),
``D`` DNA dim, ``H`` / ``K`` homologous / non-homologous pool models.

Usage::

    import jax
    import jaxlineage.mgmp as mgmp

    pool = mgmp.Pool(homologous=Models.from_apply(apply_fn, own_children),
                     non_homologous=Models.from_apply(apply_fn, others))
    state, history = mgmp.train((apply_fn, source_params), pool, x_source_train,
                                mgmp.Config(), key=jax.random.key(0))
    pred = mgmp.predict(state, (apply_fn, target_params))
    print(pred.fraction, pred.homologous)               # homologous-fragment rate, decision

Reading zoos and scenarios is the evaluation layer's job:
:class:`jaxlineage.eval.methods.ModelDNAScorer` fits one generator + classifier
per source on a training scenario and scores targets (the bench asks it the
*verify* scenario through :func:`jaxlineage.eval.protocols.run_all`).
:func:`jaxlineage.eval.dna.run` is the paper's own protocol (Sec. 5.2) on a zoo like
``zoo.DNA_QUICK``: evaluation targets on tasks and seeds the pool never saw.

References:
    Mu, Wang, Zhang, Zhang, Wang, Xiang, Yu. "Model Provenance via Model DNA".
    ECAI 2024 (FAIA 392, doi:10.3233/FAIA240595), arXiv:2308.02121. Eq. 3-9:
    DNA generation and assembly, the DNA similarity loss (``L_S``, ``L_I``, ``L``),
    the provenance classifier and its binary cross-entropy; Table 1 (accuracy
    ``(A_n + A_o) / 2N`` with and without the generator). No public
    implementation exists; this one follows the equations as given in
    the paper (departures: BUILD_NOTES.md, "Model DNA / MGMP").

The parts live apart: ``_model`` (the config, the paper's equations, the generator and
classifier networks, the state), ``_fragments`` (the pool and its outputs: the DNA fragments),
``_training`` (training and prediction) and ``_storage`` (save / restore).
"""

from __future__ import annotations

from jaxlineage.mgmp._common import MGMPError
from jaxlineage.mgmp._fragments import (
    Pool,
    PoolOutputs,
    fragment_cosine,
    model_outputs,
    next_token_outputs,
    pool_outputs,
    population_outputs,
)
from jaxlineage.mgmp._model import (
    Assembly,
    Config,
    Generator,
    Optimizer,
    PairInput,
    State,
    assemble,
    cosine_similarity_matrix,
    dna_similarity_loss,
    init,
    pair_features,
)
from jaxlineage.mgmp._storage import restore, save
from jaxlineage.mgmp._training import Prediction, predict, predict_outputs, train, train_step, with_inputs

__all__ = [
    "Assembly",
    "Config",
    "Generator",
    "MGMPError",
    "Optimizer",
    "PairInput",
    "Pool",
    "PoolOutputs",
    "Prediction",
    "State",
    "assemble",
    "cosine_similarity_matrix",
    "dna_similarity_loss",
    "fragment_cosine",
    "init",
    "model_outputs",
    "next_token_outputs",
    "pair_features",
    "pool_outputs",
    "population_outputs",
    "predict",
    "predict_outputs",
    "restore",
    "save",
    "train",
    "train_step",
    "with_inputs",
]
