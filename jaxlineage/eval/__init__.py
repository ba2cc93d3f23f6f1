"""The evaluation layer: questions, scorers, protocols and metrics shared by every method.

See :mod:`jaxlineage.eval.core` for the types and :mod:`jaxlineage.eval.metrics`
for the metrics.
"""

from jaxlineage.eval import core, metrics
from jaxlineage.eval.core import NO_PARENT, ModelSet, Population, Question, Result, Scenario, Scorer, ScorerError

__all__ = [
    "NO_PARENT",
    "ModelSet",
    "Population",
    "Question",
    "Result",
    "Scenario",
    "Scorer",
    "ScorerError",
    "core",
    "metrics",
]
