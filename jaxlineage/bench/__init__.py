"""`python -m jaxlineage.bench`: reproduce the papers' tables on a zoo.

Importable pieces: :func:`run` (the whole bench), :mod:`~jaxlineage.bench.presets`
(configs as code: scenarios x scorers), :mod:`~jaxlineage.bench.stages` (the evaluation-layer
stage and the sections),
:mod:`~jaxlineage.bench.report` (tables) and :mod:`~jaxlineage.bench.plots` (figures).
"""

from jaxlineage.bench import presets, report, stages
from jaxlineage.bench.presets import PRESETS, Preset, ScenarioSpec, ScorerSpec
from jaxlineage.bench.runner import run
from jaxlineage.bench.stages import BenchError

__all__ = [
    "PRESETS",
    "BenchError",
    "Preset",
    "ScenarioSpec",
    "ScorerSpec",
    "presets",
    "report",
    "run",
    "stages",
]
