"""`python -m jaxlineage.bench`: reproduce the papers' tables on a zoo.

Importable pieces: :func:`run` (the whole bench), :mod:`~jaxlineage.bench.presets`
(configs as code), :mod:`~jaxlineage.bench.stages` (one function per method),
:mod:`~jaxlineage.bench.report` (tables) and :mod:`~jaxlineage.bench.plots` (figures).
"""

from jaxlineage.bench import presets, report, stages
from jaxlineage.bench.presets import METHODS, PRESETS, Preset
from jaxlineage.bench.runner import run
from jaxlineage.bench.stages import BenchError

__all__ = ["BenchError", "METHODS", "PRESETS", "Preset", "presets", "report", "run", "stages"]
