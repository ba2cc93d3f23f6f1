"""Bench presets as code: a zoo spec plus the settings of every method stage.

A preset is **scenarios x scorers** on a zoo: every scenario (``identify``,
``verify``, per child task) is asked of every scorer through one protocol
(:mod:`jaxlineage.eval`), so every method and baseline lands in the same table.
The scorers are the entries of :mod:`jaxlineage.eval.registry` that the bench
runs (``bench=True``), read when the preset runs: adding a method is one file
and one ``registry.register`` call, and every preset asks it with the entry's
default keyword arguments, or the preset's own (``scorer_kwargs``)::

    registry.register("my_method", MyScorer, family="learned", questions=("verify",), label="My method")
    dataclasses.replace(presets.QUICK, scorer_kwargs={**presets.QUICK.scorer_kwargs, "my_method": dict(steps=8)})

A scorer too expensive for every scenario registers the questions it is asked
(the Lineage Detector: ``identify``; Model DNA: ``verify``); the tables of the other
scenarios name it. An explicit ``scorers`` tuple of :class:`ScorerSpec` s replaces
the registry for one preset.

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
    p = dataclasses.replace(p, scorers=tuple(s for s in p.specs() if s.method != "detector"))
    p = dataclasses.replace(p, scorers=p.specs() + (ScorerSpec("baselines", "my_module:MyScorer"),))
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
    "LR_FOLD_SCENARIOS",
    "PAPER_FC",
    "PRESETS",
    "PROVENANCE_SECTION",
    "Preset",
    "QUICK",
    "RESNET",
    "SECTION_NAMES",
    "ScenarioSpec",
    "ScorerSpec",
    "Section",
    "TINY",
    "get",
    "methods",
    "registry_scorers",
    "stage_names",
]

#: Step sizes of the accuracy-vs-alpha figure (one jvp per pair serves them all).
ALPHA_SWEEP = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)

#: The sections: questions asked on zoos of their own (:class:`Section`, ``jaxlineage.bench.stages.SECTIONS``).
SECTION_NAMES = ("provenance", "dna")


def methods() -> tuple[str, ...]:
    """The bench's methods: the registered scorers it runs (:func:`jaxlineage.eval.registry.names`, ``bench=True``),
    in registration order, the order they run and appear in the tables. ``baselines`` run with every selection."""
    from jaxlineage.eval import registry

    return registry.names(bench=True)


def stage_names() -> tuple[str, ...]:
    """What ``--methods`` selects, in run order: :func:`methods`, then the :data:`SECTION_NAMES`."""
    return (*methods(), *SECTION_NAMES)


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
      name: the section (a name of :data:`SECTION_NAMES` and of ``stages.SECTIONS``).
      zoo: the zoo spec to build.
      settings: keyword arguments of the section's stage.
    """

    name: str
    zoo: Any
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.name not in SECTION_NAMES:
            raise ValueError(f"Section: unknown name {self.name!r}; known: {', '.join(SECTION_NAMES)}")

    def to_json(self) -> dict:
        return {"name": self.name, "zoo": self.zoo.to_json(), "settings": _jsonable(self.settings)}


@dataclasses.dataclass(frozen=True)
class ScorerSpec:
    """Scorers of one method: ``factory(**kwargs)`` returns a scorer or a list of scorers.

    Attributes:
      method: which method (a registered name, :mod:`jaxlineage.eval.registry`); ``--methods`` selects by it.
      factory: ``"module:attribute"`` (imported when the stage runs, so a missing
        module costs only its method) or a callable.
      kwargs: the factory's keyword arguments.
      label: the method's name in the tables (default: ``method``).
      scenarios: names of the preset's :class:`ScenarioSpec` s these scorers are asked
        (default ``()``: every one). For a scorer too expensive for every scenario x fold
        (a learned method trains once per fold); the tables of the other scenarios say
        which methods they leave out.
      questions: the questions (``"identify"``, ``"verify"``) whose scenarios these scorers
        are asked (default ``()``: every one): the registry entry's ``questions``.
    """

    method: str
    factory: Any
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    label: str = ""
    scenarios: tuple[str, ...] = ()
    questions: tuple[str, ...] = ()

    def __post_init__(self):
        from jaxlineage.eval import registry

        if self.method not in registry.names():
            raise ValueError(
                f"ScorerSpec: unknown method {self.method!r}; registered: {', '.join(registry.names())}"
                " (jaxlineage.eval.registry.register adds one)"
            )
        for field in ("scenarios", "questions"):
            if isinstance(getattr(self, field), str):
                raise ValueError(
                    f"ScorerSpec {self.method!r}: {field} must be a tuple of names, got {getattr(self, field)!r}"
                )

    def asks(self, scenario: ScenarioSpec) -> bool:
        """Whether these scorers are asked ``scenario`` (by its name and its question)."""
        return (not self.scenarios or scenario.name in self.scenarios) and (
            not self.questions or scenario.question in self.questions
        )

    def to_json(self) -> dict:
        f = self.factory
        name = f if isinstance(f, str) else f"{getattr(f, '__module__', '?')}:{getattr(f, '__qualname__', repr(f))}"
        return {
            "method": self.method,
            "factory": name,
            "kwargs": _jsonable(self.kwargs),
            "label": self.label,
            "scenarios": list(self.scenarios),
            "questions": list(self.questions),
        }


#: The scenarios every preset asks by default, per child task: Neural Lineage's question (closed set,
#: the kept parents as candidates) and the provenance question (parents against children and independents).
DEFAULT_SCENARIOS = (
    ScenarioSpec("identify", "identify"),
    ScenarioSpec("verify", "verify"),
)


#: The default scenarios with the *verify* folds by fine-tuning learning rate (``split_by="lr"``): the test
#: children of a fold were fine-tuned at a rate no training child used (as Model DNA's paper protocol holds
#: configurations out), and every parent keeps children in every training fold, which Model DNA (one
#: classifier per parent, trained on its children) needs. On ``quick`` the 3 child and 2 independent learning
#: rates are exactly 5 folds; on ``tiny``, 2.
LR_FOLD_SCENARIOS = (
    ScenarioSpec("identify", "identify"),
    ScenarioSpec("verify", "verify", dict(split_by="lr")),
)


def registry_scorers(scorer_kwargs: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[ScorerSpec, ...]:
    """One :class:`ScorerSpec` per registered scorer the bench runs (``bench=True``), in registration order.

    Args:
      scorer_kwargs: ``{registered name: keyword arguments}`` over each entry's defaults
        (e.g. ``{"detector": dict(epochs=3), "mgmp": dict(config=dict(num_steps=75))}``).

    Raises:
      ValueError: ``scorer_kwargs`` names a scorer that is not registered for the bench.
    """
    from jaxlineage.eval import registry

    scorer_kwargs = dict(scorer_kwargs or {})
    entries = registry.registered(bench=True)
    unknown = sorted(set(scorer_kwargs) - {e.name for e in entries})
    if unknown:
        raise ValueError(
            f"scorer_kwargs names {unknown}, not registered for the bench;"
            f" registered: {', '.join(e.name for e in entries)}"
        )
    return tuple(
        ScorerSpec(
            e.name,
            e.factory,
            {**dict(e.kwargs), **dict(scorer_kwargs.get(e.name, {}))},
            label=e.label,
            questions=e.questions,
        )
        for e in entries
    )


@dataclasses.dataclass(frozen=True)
class Preset:
    """A zoo spec and scenarios x scorers: every method and baseline through :mod:`jaxlineage.eval`.

    Attributes:
      name: the ``--preset`` value.
      zoo: the :class:`jaxlineage.zoo.ZooSpec` to build (or reuse).
      description: one line for ``--help`` and the report header.
      command: the command line that runs this preset.
      expected_runtime: what it costs, where measured.
      scenarios: :class:`ScenarioSpec` s, each asked once per child task.
      scorer_kwargs: ``{registered name: keyword arguments}``: this preset's settings of the
        registered scorers (over the entries' defaults; :func:`registry_scorers`).
      scorers: ``None`` (default): every scorer of :mod:`jaxlineage.eval.registry` the bench runs,
        read when the preset runs (:meth:`specs`); or an explicit tuple of :class:`ScorerSpec` s.
      probe_size: the probe batch of every scenario (the first ``N`` training inputs of the task).
      num_folds: folds of the protocol (:func:`jaxlineage.eval.run_all`).
      alpha_sweep: step sizes of the accuracy-vs-alpha figure (all queries, no folds; ``()`` for none).
      reference_sweep: reference counts of ModelGiF's AUC-vs-references figure on every *verify*
        scenario (prefixes of each ModelGiF scorer's one draw, all queries, no folds: a diagnostic,
        as ``alpha_sweep``; ``()`` for none).
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
    scorer_kwargs: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    scorers: tuple[ScorerSpec, ...] | None = None
    probe_size: int = 512
    num_folds: int = 5
    alpha_sweep: tuple[float, ...] = ALPHA_SWEEP
    reference_sweep: tuple[int, ...] = ()
    plots: bool = True
    stage_estimates_s: Mapping[str, float] = dataclasses.field(default_factory=dict)
    sections: tuple[Section, ...] = ()

    def section(self, name: str) -> Section | None:
        """The preset's :class:`Section` called ``name``, if any."""
        return next((s for s in self.sections if s.name == name), None)

    def specs(self) -> tuple[ScorerSpec, ...]:
        """The preset's :class:`ScorerSpec` s: ``scorers``, else the registry's (:func:`registry_scorers`)."""
        return self.scorers if self.scorers is not None else registry_scorers(self.scorer_kwargs)

    def __post_init__(self):
        names = {sc.name for sc in self.scenarios}
        for spec in self.scorers or ():
            unknown = [n for n in spec.scenarios if n not in names]
            if unknown:
                raise ValueError(
                    f"Preset {self.name!r}: ScorerSpec {spec.method!r} names scenario(s) {unknown}; the preset's"
                    f" scenarios: {sorted(names)}"
                )

    def scorer_specs(self, method: str) -> tuple[ScorerSpec, ...]:
        """The preset's :class:`ScorerSpec` s of ``method`` (empty: the method does not run)."""
        return tuple(s for s in self.specs() if s.method == method)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "command": self.command,
            "expected_runtime": self.expected_runtime,
            "zoo": self.zoo.to_json(),
            "scenarios": _jsonable(self.scenarios),
            "scorer_kwargs": _jsonable(self.scorer_kwargs),
            "scorers": [s.to_json() for s in self.specs()],
            "probe_size": self.probe_size,
            "num_folds": self.num_folds,
            "alpha_sweep": list(self.alpha_sweep),
            "reference_sweep": list(self.reference_sweep),
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
    scenarios=LR_FOLD_SCENARIOS,
    scorer_kwargs=dict(
        learning_free=dict(metrics=("l2", "linf", "cka"), alphas=(0.01, 0.1)),
        detector=dict(epochs=2, n_probe=16, batch_size=4),
        mgmp=dict(config=dict(num_steps=20, batch_size=16), tap="relu1"),
        modelgif=dict(n_refs=8, steps=4),
    ),
    probe_size=32,
    num_folds=2,
    alpha_sweep=(0.01, 0.1),
    reference_sweep=(2, 4, 8),
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
    expected_runtime="~10 min on 2 CPU cores from empty workdirs: 11 min 50 s measured 2026-12-02 at load 3.5 with"
    " 4 detector epochs / 150 Model DNA steps / 20 ModelGiF nodes; those three stages re-measured with the settings"
    " below save ~100 s (BUILD_NOTES.md, 'Every method in the shared tables')",
    scenarios=LR_FOLD_SCENARIOS,
    # The learned methods train once per fold (5 folds, the learning-free table's, shared by every row), and
    # the bench must stay near 10 min on 2 CPU cores with its sections. Detector: the CPU settings of the
    # quick-zoo figures (whole dense3, relu1 features on 16 probe inputs, difference-initialised encoders,
    # 4 children per step) with 3 epochs (8 before; 4 gave 80.0 +- 25.5 % in 143 s, 3 gave 84.0 +- 25.1 % in
    # 119 s at load 2-4), asked identify only (it is a parent-identification model).
    # Model DNA: with and without generator, 75 steps per source (paper 1000; 150 steps: AUC 0.999 / 0.990 in
    # 156 s, 75: 0.979 / 0.989 in 101 s), asked verify only (the provenance question it answers; one generator
    # + classifier per candidate per fold). Fragments from the shared backbone (relu1, as the dna section): the
    # verify probe is the children's task, and logits fragments on it were at chance on the tiny zoo (AUC 0.42
    # without generator; 0.96 with the parents' task-A inputs as D_s, as in the paper; not measured on quick).
    # ModelGiF: 256 references, 10 Gauss-Legendre nodes (paper 50; 20 nodes gave the same figures in 58 s
    # instead of 34 s; the provenance section uses 5), every scenario.
    scorer_kwargs=dict(
        detector=dict(n_probe=16, module=dict(difference_init=True), batch_size=4, epochs=3),
        mgmp=dict(config=dict(num_steps=75), tap="relu1"),
        modelgif=dict(n_refs=256, steps=10),
    ),
    reference_sweep=(8, 32, 128, 256),
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
    scorer_kwargs=dict(learning_free=dict(tap="fc1"), mgmp=dict(tap="fc1"), modelgif=dict(n_refs=256, steps=20)),
    reference_sweep=(8, 32, 128, 256),
)

#: The Neural Lineage FC recipe: MNIST parents, FMNIST / EMNIST-letters children (TFDS).
PAPER_FC = Preset(
    name="paper_fc",
    zoo=zoo.PAPER_FC,
    description="Neural Lineage FC recipe: MNIST parents, FMNIST / EMNIST-letters children (TFDS)",
    command="python -m jaxlineage.bench --preset paper_fc --download",
    expected_runtime="GPU: about an hour for the zoo (108 parents x 50 epochs, 480 children x 36 epochs)",
    # The detector's open-set variant: the same children plus the independents, labelled "no parent".
    scenarios=(
        *DEFAULT_SCENARIOS,
        ScenarioSpec("open_set", "identify", dict(queries=("child", "independent"), open_set=True)),
    ),
    # The detector is asked the identify questions (identify and open_set); Model DNA the verify one.
    scorer_kwargs=dict(mgmp=dict(tap="relu1"), modelgif=dict(n_refs=256, steps=50)),
    reference_sweep=(8, 32, 128, 256),
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
    scorer_kwargs=dict(learning_free=dict(tap="block1"), mgmp=dict(tap="block1"), modelgif=dict(n_refs=256, steps=50)),
    reference_sweep=(8, 32, 128, 256),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (QUICK, TINY, CNN, PAPER_FC, RESNET)}


def get(name: str) -> Preset:
    """The preset called ``name``; ``ValueError`` names the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
