"""Bench presets as code: a zoo spec plus the settings of every method stage.

A preset is **scenarios x scorers** on a zoo: every scenario (``identify``,
``verify``, per child task) is asked of every scorer through one protocol
(:mod:`jaxlineage.eval`), so every method and baseline lands in the same table.
Adding a method is one line, a :class:`ScorerSpec` in ``scorers``::

    ScorerSpec("detector", "jaxlineage.eval.methods:DetectorScorer", dict(epochs=8))

Methods that have no scorer yet (``detector``, ``mgmp``, ``modelgif`` until
``jaxlineage.eval.methods`` lands) run their own protocol function with the
keyword arguments in the preset's field of that name; a method with a
:class:`ScorerSpec` runs through the evaluation layer instead.

Each preset names the command that runs it and what it costs (flax-examples style):

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
    p = dataclasses.replace(p, scorers=p.scorers + (ScorerSpec("baselines", "my_module:MyScorer"),))
    bench.run(p, workdir="/tmp/zoo", out="/tmp/report")
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from jaxlineage import zoo

__all__ = [
    "ALPHA_SWEEP",
    "CNN",
    "DEFAULT_SCENARIOS",
    "DNA_SECTION",
    "LEGACY",
    "METHODS",
    "PAPER_FC",
    "PRESETS",
    "PROVENANCE_SECTION",
    "Preset",
    "QUICK",
    "RESNET",
    "ScenarioSpec",
    "ScorerSpec",
    "Section",
    "TINY",
    "default_scorers",
    "get",
]

#: Step sizes of the accuracy-vs-alpha figure (one jvp per pair serves them all).
ALPHA_SWEEP = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)

#: The methods, in the order they run and appear in the report. ``baselines`` run with every selection.
METHODS = ("learning_free", "baselines", "detector", "mgmp", "modelgif", "provenance", "dna")
#: Methods that still run their own protocol function when the preset gives them no :class:`ScorerSpec`.
LEGACY = ("detector", "mgmp", "modelgif")


@dataclasses.dataclass(frozen=True)
class ScenarioSpec:
    """One question of the bench, asked once per child task of the zoo.

    Attributes:
      name: the table's name (``"identify"``, ``"verify"``, ``"open_set"`` ...).
      question: ``"identify"`` or ``"verify"`` (:func:`jaxlineage.eval.identify` / ``verify``).
      kwargs: keyword arguments of that function (``candidates``, ``queries``,
        ``probe_size``, ``split_by``, ``open_set``); ``task`` is set per child task.
    """

    name: str
    question: str = "identify"
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.question not in ("identify", "verify"):
            raise ValueError(
                f"ScenarioSpec {self.name!r}: question must be 'identify' or 'verify'"
                f" (recover has no protocol yet); got {self.question!r}"
            )


@dataclasses.dataclass(frozen=True)
class Section:
    """A question asked on a zoo of its own: e.g. the provenance benchmark on ``PROVENANCE_QUICK``.

    The runner builds (or reuses) ``zoo`` in ``<workdir>/<name>`` and calls the
    stage :data:`jaxlineage.bench.stages.SECTIONS` ``[name](zoo, seed=..., **settings)``.
    ``--methods`` selects a section by its name. Model DNA's ``DNA_QUICK`` section is
    one more entry here (and in ``SECTIONS``).

    Attributes:
      name: the section (a name of :data:`METHODS` and of ``stages.SECTIONS``).
      zoo: the zoo spec to build.
      settings: keyword arguments of the section's stage.
    """

    name: str
    zoo: Any
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.name not in METHODS:
            raise ValueError(f"Section: unknown name {self.name!r}; known: {', '.join(METHODS)}")

    def to_json(self) -> dict:
        return {"name": self.name, "zoo": self.zoo.to_json(), "settings": _jsonable(self.settings)}


@dataclasses.dataclass(frozen=True)
class ScorerSpec:
    """Scorers of one method: ``factory(**kwargs)`` returns a scorer or a list of scorers.

    Attributes:
      method: which method (a name of :data:`METHODS`); ``--methods`` selects by it.
      factory: ``"module:attribute"`` (imported when the stage runs, so a missing
        module costs only its method) or a callable.
      kwargs: the factory's keyword arguments.
      label: the method's name in the tables (default: ``method``).
    """

    method: str
    factory: Any
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    label: str = ""

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"ScorerSpec: unknown method {self.method!r}; known: {', '.join(METHODS)}")

    def to_json(self) -> dict:
        f = self.factory
        name = f if isinstance(f, str) else f"{getattr(f, '__module__', '?')}:{getattr(f, '__qualname__', repr(f))}"
        return {"method": self.method, "factory": name, "kwargs": _jsonable(self.kwargs), "label": self.label}


#: The scenarios every preset asks by default, per child task: Neural Lineage's question (closed set,
#: the kept parents as candidates) and the provenance question (parents against children and independents).
DEFAULT_SCENARIOS = (
    ScenarioSpec("identify", "identify"),
    ScenarioSpec("verify", "verify"),
)


def default_scorers(**learning_free) -> tuple[ScorerSpec, ...]:
    """The learning-free table (every metric x mode; ``learning_free`` are :func:`jaxlineage.eval.learning_free`'s
    keyword arguments) and the four baselines."""
    return (
        ScorerSpec("learning_free", "jaxlineage.eval.scorers:learning_free", dict(learning_free)),
        ScorerSpec("baselines", "jaxlineage.eval.scorers:baselines"),
    )


@dataclasses.dataclass(frozen=True)
class Preset:
    """A zoo spec, scenarios x scorers, and the settings of the methods that have no scorer yet.

    Attributes:
      name: the ``--preset`` value.
      zoo: the :class:`jaxlineage.zoo.ZooSpec` to build (or reuse).
      description: one line for ``--help`` and the report header.
      command: the command line that runs this preset.
      expected_runtime: what it costs, where measured.
      scenarios: :class:`ScenarioSpec` s, each asked once per child task.
      scorers: :class:`ScorerSpec` s; every one is asked every scenario.
      probe_size: the probe batch of every scenario (the first ``N`` training inputs of the task).
      num_folds: folds of the protocol (:func:`jaxlineage.eval.run_all`).
      alpha_sweep: step sizes of the accuracy-vs-alpha figure (all queries, no folds; ``()`` for none).
      detector: keyword arguments of ``detector.run_protocol`` (``open_set`` may list both variants).
      mgmp: keyword arguments of ``mgmp.run_protocol`` (``config`` may be a dict of ``mgmp.Config`` fields).
      modelgif: keyword arguments of ``modelgif.evaluate`` (run once per child task).
      plots: whether to draw the PNG figures (needs matplotlib).
      stage_estimates_s: seconds per method stage measured on the reference machine, for the
        first run's ETA (later runs use their own previous times).
      sections: questions asked on zoos of their own (:class:`Section`), each built in
        ``<workdir>/<section name>``: the provenance benchmark (and, at merge, Model DNA's).
    """

    name: str
    zoo: zoo.ZooSpec
    description: str = ""
    command: str = ""
    expected_runtime: str = ""
    scenarios: tuple[ScenarioSpec, ...] = DEFAULT_SCENARIOS
    scorers: tuple[ScorerSpec, ...] = dataclasses.field(default_factory=default_scorers)
    probe_size: int = 512
    num_folds: int = 5
    alpha_sweep: tuple[float, ...] = ALPHA_SWEEP
    detector: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    mgmp: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    modelgif: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    plots: bool = True
    stage_estimates_s: Mapping[str, float] = dataclasses.field(default_factory=dict)
    sections: tuple[Section, ...] = ()

    def section(self, name: str) -> Section | None:
        """The preset's :class:`Section` called ``name``, if any."""
        return next((s for s in self.sections if s.name == name), None)

    def scorer_specs(self, method: str) -> tuple[ScorerSpec, ...]:
        """The preset's :class:`ScorerSpec` s of ``method`` (empty: a legacy stage or nothing)."""
        return tuple(s for s in self.scorers if s.method == method)

    def settings(self, method: str) -> dict[str, Any]:
        """A copy of the keyword arguments of a legacy method's protocol function."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
        return dict(getattr(self, method)) if method in LEGACY else {}

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "command": self.command,
            "expected_runtime": self.expected_runtime,
            "zoo": self.zoo.to_json(),
            "scenarios": _jsonable(self.scenarios),
            "scorers": [s.to_json() for s in self.scorers],
            "probe_size": self.probe_size,
            "num_folds": self.num_folds,
            "alpha_sweep": list(self.alpha_sweep),
            **{m: _jsonable(self.settings(m)) for m in LEGACY},
            "sections": [s.to_json() for s in self.sections],
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
    scorers=default_scorers(metrics=("l2", "linf", "cka"), alphas=(0.01, 0.1)),
    probe_size=32,
    num_folds=2,
    alpha_sweep=(0.01, 0.1),
    detector=dict(repetitions=2, epochs=2, fractions=(0.5, 0.25, 0.25), n_probe=16),
    mgmp=dict(repetitions=2, num_inputs=256, config=dict(num_steps=40, batch_size=32)),
    modelgif=dict(n_refs=(2, 4, 8), steps=4),
    plots=True,
    sections=(
        Section(
            "provenance",
            zoo.PROVENANCE_TINY,
            dict(probe_size=64, metrics=("l2",), modelgif_refs=(2, 4, 8), modelgif_steps=4),
        ),
    ),
)

#: The provenance benchmark of the default preset: every scorer x every attack on PROVENANCE_QUICK.
#: ModelGiF's fields of the ConvNets (vmapped over models) dominate its cost on CPU: 20 nodes took 280 s per
#: field on 2 shared cores (load ~9), so the default uses 5 Gauss-Legendre nodes (BUILD_NOTES.md, "Provenance").
PROVENANCE_SECTION = Section(
    "provenance", zoo.PROVENANCE_QUICK, dict(probe_size=512, modelgif_refs=(8, 16, 32, 64, 128, 256), modelgif_steps=5)
)

#: Model DNA's protocol on DNA_QUICK (jaxlineage.eval.dna.quick_settings: 5 repetitions, relu1 fragments).
DNA_SECTION = Section("dna", zoo.DNA_QUICK, {})

#: The default: the paper's MLP on the embedded Fashion-MNIST subset (parents classes 0-4, children 5-9).
QUICK = Preset(
    name="quick",
    zoo=zoo.QUICK,
    description="the paper's MLP on the embedded Fashion-MNIST subset (offline)",
    command="python -m jaxlineage.bench",
    expected_runtime="7 min on 2 CPU cores including the 1.5 min zoo build (measured 2026-12-01), plus ~2 min for"
    " the provenance section (estimated idle; 303 s measured at load 5-8, 2026-12-02)",
    # detector.QUICK_PROTOCOL (copied so presets need not import the detector). A repetition takes
    # ~75 s on 2 CPU cores, so the bench runs 3 closed-set splits to stay under 10 min; the 5-split
    # closed- and open-set figures come from benchmarks/detector_quick.py.
    detector=dict(repetitions=3, n_probe=16, module_kwargs=dict(difference_init=True), batch_size=4, epochs=8),
    mgmp=dict(repetitions=5),
    modelgif=dict(n_refs=(8, 32, 128, 256), steps=20),
    # SAC / ModelGiF's IP-protection benchmark (verify, every method x every attack) on its own zoo.
    # and Model DNA on its own protocol (DNA_QUICK: unseen tasks and seeds, with / without generator).
    sections=(PROVENANCE_SECTION, DNA_SECTION),
)

#: The same recipe on the small ConvNet.
CNN = Preset(
    name="cnn",
    zoo=dataclasses.replace(zoo.QUICK, name="cnn", arch="convnet", max_population=8),
    description="the small ConvNet on the embedded Fashion-MNIST subset (offline)",
    command="python -m jaxlineage.bench --preset cnn",
    expected_runtime="tens of minutes on 2 CPU cores; minutes on a GPU",
    scorers=default_scorers(tap="fc1"),
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
    scorers=default_scorers(tap="block1"),
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
