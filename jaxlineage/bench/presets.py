"""Bench presets as code: a zoo spec plus the settings of every method stage.

Each preset names the command that runs it and what it costs (flax-examples
style). Method settings are keyword arguments handed to the method module's
protocol function unchanged, so a preset reads exactly like the call it makes:

============  ======================================================  =============================
preset        command                                                 cost
============  ======================================================  =============================
``tiny``      ``python -m jaxlineage.bench --preset tiny``            seconds (tests)
``quick``     ``python -m jaxlineage.bench``                          < 10 min on 2 CPU cores, offline
``cnn``       ``python -m jaxlineage.bench --preset cnn``             ~30-60 min on 2 CPU cores, offline
``paper_fc``  ``python -m jaxlineage.bench --preset paper_fc``        GPU (Colab) ~1-2 h; needs TFDS data
``resnet``    ``python -m jaxlineage.bench --preset resnet``          GPU hours; needs TFDS cifar10
============  ======================================================  =============================

To vary a preset, ``dataclasses.replace`` it in Python and pass the result to
:func:`jaxlineage.bench.run`::

    from jaxlineage import bench
    p = bench.presets.get("quick")
    p = dataclasses.replace(p, modelgif=dict(p.modelgif, steps=20))
    bench.run(p, workdir="/tmp/zoo", out="/tmp/report")
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from jaxlineage import zoo

#: The method stages, in the order they run and appear in the report.
METHODS = ("learning_free", "detector", "mgmp", "modelgif")


@dataclasses.dataclass(frozen=True)
class Preset:
    """A zoo spec plus per-method settings.

    Attributes:
      name: the ``--preset`` value.
      zoo: the :class:`jaxlineage.zoo.ZooSpec` to build (or reuse).
      description: one line for ``--help`` and the report header.
      command: the command line that runs this preset.
      expected_runtime: what it costs, where measured.
      learning_free: keyword arguments of ``lineage.evaluate``, plus the stage's ``figures`` and
        ``alpha_sweep`` (see :func:`jaxlineage.bench.stages.learning_free`).
      detector: keyword arguments of ``detector.run_protocol`` (``open_set`` may list both variants).
      mgmp: keyword arguments of ``mgmp.run_protocol`` (``config`` may be a dict of ``mgmp.Config`` fields).
      modelgif: keyword arguments of ``modelgif.evaluate`` (run once per child task).
      plots: whether to draw the PNG figures (needs matplotlib).
      stage_estimates_s: seconds per method stage measured on the reference machine, for the
        first run's ETA (later runs use their own previous times).
    """

    name: str
    zoo: zoo.ZooSpec
    description: str = ""
    command: str = ""
    expected_runtime: str = ""
    learning_free: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    detector: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    mgmp: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    modelgif: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    plots: bool = True
    stage_estimates_s: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def settings(self, method: str) -> dict[str, Any]:
        """A copy of the keyword arguments of ``method``'s protocol function."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
        return dict(getattr(self, method))

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "command": self.command,
            "expected_runtime": self.expected_runtime,
            "zoo": self.zoo.to_json(),
            **{m: _jsonable(self.settings(m)) for m in METHODS},
        }


def _jsonable(x):
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, enum.Enum):
        return _jsonable(x.value)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _jsonable(dataclasses.asdict(x))
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return repr(x)


# --------------------------------------------------------------------------- presets

#: The tests' preset: the TINY zoo (seconds) and the smallest settings that still exercise every code path.
TINY = Preset(
    name="tiny",
    zoo=zoo.TINY,
    description="test preset: 2 parents, 4 children, 2 independents; tiny method settings",
    command="python -m jaxlineage.bench --preset tiny",
    expected_runtime="seconds once the tiny zoo is built",
    learning_free=dict(metrics=("l2", "linf", "cka"), probe_size=32, num_folds=2, alphas=(0.01, 0.1),
                       alpha_sweep=(0.01, 0.1)),
    detector=dict(repetitions=2, epochs=2, fractions=(0.5, 0.25, 0.25), n_probe=16),
    mgmp=dict(repetitions=2, num_inputs=256, config=dict(num_steps=40, batch_size=32)),
    modelgif=dict(n_refs=(2, 4, 8), steps=4),
    plots=True,
)

#: The default: the paper's MLP on the embedded Fashion-MNIST subset (parents classes 0-4, children 5-9).
QUICK = Preset(
    name="quick",
    zoo=zoo.QUICK,
    description="the paper's MLP on the embedded Fashion-MNIST subset (offline)",
    command="python -m jaxlineage.bench",
    expected_runtime="7 min on 2 CPU cores including the 1.5 min zoo build (measured 2026-12-01)",
    learning_free=dict(),
    # detector.QUICK_PROTOCOL (copied so presets need not import the detector). A repetition takes
    # ~75 s on 2 CPU cores, so the bench runs 3 closed-set splits to stay under 10 min; the 5-split
    # closed- and open-set figures come from benchmarks/detector_quick.py.
    detector=dict(repetitions=3, n_probe=16, module_kwargs=dict(difference_init=True), batch_size=4, epochs=8),
    mgmp=dict(repetitions=5),
    modelgif=dict(n_refs=(8, 32, 128, 256), steps=20),
)

#: The same recipe on the small ConvNet.
CNN = Preset(
    name="cnn",
    zoo=dataclasses.replace(zoo.QUICK, name="cnn", arch="convnet", max_population=8),
    description="the small ConvNet on the embedded Fashion-MNIST subset (offline)",
    command="python -m jaxlineage.bench --preset cnn",
    expected_runtime="tens of minutes on 2 CPU cores; minutes on a GPU",
    learning_free=dict(tap="fc1"),
    detector=dict(repetitions=5),
    mgmp=dict(repetitions=5),
    modelgif=dict(n_refs=(8, 32, 128, 256), steps=20),
)

#: The Neural Lineage FC recipe: MNIST parents, FMNIST / EMNIST-letters children (TFDS).
PAPER_FC = Preset(
    name="paper_fc",
    zoo=zoo.PAPER_FC,
    description="Neural Lineage FC recipe: MNIST parents, FMNIST / EMNIST-letters children (TFDS)",
    command="python -m jaxlineage.bench --preset paper_fc --download",
    expected_runtime="GPU: about an hour for the zoo (108 parents x 50 epochs, 480 children x 36 epochs)",
    learning_free=dict(),
    detector=dict(repetitions=5),
    mgmp=dict(repetitions=5),
    modelgif=dict(n_refs=(8, 32, 128, 256), steps=50),
)

#: ResNet-18 on CIFAR-10 (parents on classes 0-4, children on 5-9), for a GPU.
RESNET = Preset(
    name="resnet",
    zoo=dataclasses.replace(
        zoo.QUICK,
        name="resnet",
        arch="resnet18",
        parent_task=zoo.Task("A", "cifar10", tuple(range(5))),
        child_tasks=(zoo.Task("B", "cifar10", tuple(range(5, 10))),),
        parents=zoo.Grid(lrs=(1e-3,), batch_sizes=(128,), seeds=(0, 1, 2), init_seeds=(0, 1, 2, 3), epochs=30),
        children=zoo.Grid(lrs=(1e-3, 3e-4, 1e-4), batch_sizes=(128,), seeds=(0, 1), epochs=10),
        child_floor=0.7,
        independents=zoo.Grid(lrs=(1e-3, 3e-4), batch_sizes=(128,), seeds=(100, 101, 102, 103), epochs=30),
        max_population=4,
    ),
    description="ResNet-18 on CIFAR-10 through TFDS (GPU)",
    command="python -m jaxlineage.bench --preset resnet --download",
    expected_runtime="GPU hours (12 parents x 30 epochs, 48 children x 10 epochs)",
    learning_free=dict(tap="block1"),
    detector=dict(repetitions=5),
    mgmp=dict(repetitions=5),
    modelgif=dict(n_refs=(8, 32, 128, 256), steps=50),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (QUICK, TINY, CNN, PAPER_FC, RESNET)}


def get(name: str) -> Preset:
    """The preset called ``name``; ``ValueError`` names the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
