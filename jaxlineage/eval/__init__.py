"""The evaluation layer: questions, scorers, protocols and metrics shared by every method.

Methods know nothing about zoos and zoos know nothing about methods; this layer
joins them:

* :mod:`~jaxlineage.eval.core`: the types (:class:`Population`, :class:`ModelSet`,
  :class:`Scenario`, :class:`Question`, :class:`Scorer`, :class:`Result`);
* :mod:`~jaxlineage.eval.scenarios`: a zoo and a question -> a :class:`Scenario`
  (:func:`identify`, :func:`verify`);
* :mod:`~jaxlineage.eval.scorers`: every scorer, one file per family: the
  learning-free metrics (:class:`LearningFree`, :func:`learning_free`) and the
  baselines (:class:`WeightL2`, :class:`WeightCosine`, :class:`OutputAgreement`,
  :class:`OutputKL`) in ``training_free``, the other papers' methods in
  ``methods``, the p-value scorers in ``pvalues``, the fingerprints in ``fingerprints``;
* :mod:`~jaxlineage.eval.registry`: each scorer file registers its scorers; the
  bench's presets, its provenance section and the contract battery read the registry;
* :mod:`~jaxlineage.eval.protocols`: folds, fitting on training folds only,
  one :class:`Result` per (scenario, scorer) (:func:`run`, :func:`run_all`,
  :func:`table`);
* :mod:`~jaxlineage.eval.methods` (``eval/scorers/methods.py``): the other papers' methods as scorers
  (:class:`~jaxlineage.eval.methods.DetectorScorer`,
  :class:`~jaxlineage.eval.methods.ModelDNAScorer`,
  :class:`~jaxlineage.eval.methods.ModelGiFScorer`);
* :mod:`~jaxlineage.eval.provenance`: every scorer against every attack on a
  :func:`~jaxlineage.eval.scenarios.provenance` scenario (per-attack ROC AUC,
  TPR at 1 % FPR, n/a where a scorer cannot read a pair; ModelGiF by reference count);
* :mod:`~jaxlineage.eval.tree`: the *recover* question, lineage forests from any
  pairwise score;
* :mod:`~jaxlineage.eval.metrics`: accuracy, ROC AUC, TPR at FPR, mean ± std.

Two lines (the paper's learning-free table and the baselines on the quick zoo)::

    from jaxlineage import zoo, eval as jl_eval
    print(jl_eval.table(jl_eval.run_zoo(zoo.build(zoo.QUICK, "/tmp/zoo"))))

Any scenario and scorers::

    s = jl_eval.verify(z, queries=("child", "independent"))
    results = jl_eval.run_all(s, [jl_eval.LearningFree("l2", "first_order"), *jl_eval.baselines()],
                              key=jax.random.key(0))
"""

from jaxlineage.eval import core, dna, metrics, protocols, provenance, registry, scenarios, scorers, tree
from jaxlineage.eval.core import (
    NO_PARENT,
    ModelSet,
    Population,
    Question,
    Result,
    Scenario,
    Scorer,
    ScorerError,
    check_finite,
    check_models,
)
from jaxlineage.eval.protocols import alpha_sweep, folds, run, run_all, run_zoo, table
from jaxlineage.eval.scenarios import identify, model_set, verify
from jaxlineage.eval.scorers import (
    LearningFree,
    OutputAgreement,
    OutputKL,
    WeightCosine,
    WeightL2,
    baselines,
    default_tap,
    fingerprints,
    learning_free,
    methods,
    pvalues,
)

__all__ = [
    "NO_PARENT",
    "LearningFree",
    "ModelSet",
    "OutputAgreement",
    "OutputKL",
    "Population",
    "Question",
    "Result",
    "Scenario",
    "Scorer",
    "ScorerError",
    "WeightCosine",
    "WeightL2",
    "alpha_sweep",
    "baselines",
    "check_finite",
    "check_models",
    "core",
    "default_tap",
    "dna",
    "fingerprints",
    "folds",
    "identify",
    "learning_free",
    "methods",
    "metrics",
    "model_set",
    "protocols",
    "provenance",
    "pvalues",
    "registry",
    "run",
    "run_all",
    "run_zoo",
    "scenarios",
    "scorers",
    "table",
    "tree",
    "verify",
]
