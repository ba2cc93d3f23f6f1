"""Every scorer of the evaluation layer, one file per family, each registering its scorers.

* :mod:`~jaxlineage.eval.scorers.training_free`: Neural Lineage's learning-free metrics
  (:class:`LearningFree`, :func:`learning_free`) and the baselines every table shows
  (:class:`WeightL2`, :class:`WeightCosine`, :class:`OutputAgreement`, :class:`OutputKL`);
* :mod:`~jaxlineage.eval.scorers.methods`: the other papers' methods (the Lineage Detector,
  Model DNA, ModelGiF);
* :mod:`~jaxlineage.eval.scorers.pvalues`: permutation-test and calibrated p-value scorers;
* :mod:`~jaxlineage.eval.scorers.fingerprints`: the extraction-aware fingerprints (SAC,
  conferrable examples, IPGuard).

Each file calls :func:`jaxlineage.eval.registry.register` for its scorers when imported;
importing this package (which :mod:`jaxlineage.eval` does) registers them all, in the
order below, which is the bench's stage and table order. The names of the former single
``scorers`` module stay importable from here (``jaxlineage.eval.scorers.OutputKL``), and
``jaxlineage.eval.methods`` / ``pvalues`` / ``fingerprint_scorers`` are these modules under
their former names.
"""

from jaxlineage.eval.scorers import training_free  # isort: skip (registration order: the bench's order)
from jaxlineage.eval.scorers import methods  # isort: skip
from jaxlineage.eval.scorers import pvalues  # isort: skip
from jaxlineage.eval.scorers import fingerprints  # isort: skip
from jaxlineage.eval.scorers.training_free import (
    DEFAULT_ALPHAS,
    LearningFree,
    OutputAgreement,
    OutputKL,
    WeightCosine,
    WeightL2,
    baselines,
    default_tap,
    learning_free,
)

__all__ = [
    "DEFAULT_ALPHAS",
    "LearningFree",
    "OutputAgreement",
    "OutputKL",
    "WeightCosine",
    "WeightL2",
    "baselines",
    "default_tap",
    "fingerprints",
    "learning_free",
    "methods",
    "pvalues",
    "training_free",
]
