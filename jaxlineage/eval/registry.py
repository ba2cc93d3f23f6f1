"""The scorer registry: adding a method is one file plus one :func:`register` call.

Every scorer family lives in one file of :mod:`jaxlineage.eval.scorers`
(``training_free.py``: Neural Lineage's learning-free metrics and the baselines;
``methods.py``: the Lineage Detector, Model DNA and ModelGiF; ``pvalues.py``: the
p-value scorers; ``fingerprints.py``: SAC, conferrable examples, IPGuard) and
registers its scorers where it defines them::

    from jaxlineage.eval import registry

    registry.register(
        "my_method",                        # the bench's --methods name and the registry key
        MyScorer,                           # factory(**kwargs) -> a Scorer or a list of Scorers
        family="learned",
        questions=("verify",),              # the bench asks it the scenarios of these questions
        kwargs=dict(steps=100),             # default keyword arguments (a preset may override them)
        label="My method",                  # its name in the tables
        provenance=lambda s: [registry.Row("My method", MyScorer(steps=s.get("my_steps", 100)))],
    )

Who reads the registry, so that nothing else lists the scorers:

* the bench's presets (:mod:`jaxlineage.bench.presets`): every entry with ``bench=True``
  is a :class:`~jaxlineage.bench.presets.ScorerSpec` of every preset, with the preset's
  own keyword arguments for it, and ``--methods`` selects entries by name;
* the bench's provenance section (:func:`jaxlineage.bench.stages.provenance`): one row
  per :class:`Row` of each entry's ``provenance`` hook, in registration order;
* the contract battery (``tests/test_eval.py``): every registered scorer goes through it.

Import cost: this module imports nothing of jaxlineage. The scorer files import it
and register on their own import; the lookups (:func:`registered`, :func:`get`)
first import :mod:`jaxlineage.eval.scorers` (inside the call), so the built-in
entries are complete whatever was imported before. The metrics
(``jaxlineage.linearize``, ``jaxlineage.similarity``) never import the evaluation
layer, so registration costs them nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "FAMILIES",
    "QUESTIONS",
    "Entry",
    "Row",
    "get",
    "names",
    "register",
    "registered",
    "unregister",
]

#: The scorer families (one file of jaxlineage/eval/scorers/ each; ``other`` for scorers defined elsewhere).
FAMILIES = ("learning_free", "baseline", "learned", "field", "pvalue", "fingerprint", "other")

#: The questions a bench scenario asks (:class:`jaxlineage.eval.core.Question` values the bench runs).
QUESTIONS = ("identify", "verify")


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the provenance section, from an entry's ``provenance`` hook.

    Attributes:
      label: the row's name in the provenance tables.
      scorers: one scorer, or several that read disjoint pairs (each pair takes the first
        readable score, e.g. ModelGiF's backbone field at each architecture's own tap).
        Learned scorers are fitted on one attack fold and score the other
        (:func:`jaxlineage.eval.provenance.learned_cells`); a list of learning-free grid
        scorers is scored in one pass.
      sweep: for scorers with ``per_reference`` (ModelGiF): the name of the row's AUC by
        reference count in the ``provenance_modelgif`` table (``None``: no sweep).
    """

    label: str
    scorers: Any
    sweep: str | None = None

    def __post_init__(self):
        if not isinstance(self.scorers, (list, tuple)):
            object.__setattr__(self, "scorers", (self.scorers,))
        object.__setattr__(self, "scorers", tuple(self.scorers))
        if not self.scorers:
            raise ValueError(f"registry.Row {self.label!r}: no scorer")


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registered scorer (see :func:`register` for the fields)."""

    name: str
    factory: Callable[..., Any]
    family: str
    questions: tuple[str, ...] = QUESTIONS
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    label: str = ""
    bench: bool = True
    provenance: Callable[[Mapping[str, Any]], Sequence[Row]] | None = None
    description: str = ""

    def make(self, **overrides) -> list:
        """``factory(**{**kwargs, **overrides})`` as a list of scorers."""
        made = self.factory(**{**dict(self.kwargs), **overrides})
        return list(made) if isinstance(made, (list, tuple)) else [made]

    def provenance_rows(self, settings: Mapping[str, Any]) -> list[Row]:
        """The entry's rows of the provenance section for the section's ``settings`` (``[]``: none)."""
        return [] if self.provenance is None else list(self.provenance(settings))


_ENTRIES: dict[str, Entry] = {}


def register(
    name: str,
    factory: Callable[..., Any],
    *,
    family: str,
    questions: Sequence[str] = QUESTIONS,
    kwargs: Mapping[str, Any] | None = None,
    label: str = "",
    bench: bool = True,
    provenance: Callable[[Mapping[str, Any]], Sequence[Row]] | None = None,
    description: str = "",
    replace: bool = False,
) -> Entry:
    """Registers a scorer factory under ``name``.

    Args:
      name: the registry key, the bench's ``--methods`` name and its stage name.
      factory: ``factory(**kwargs)`` returns a :class:`~jaxlineage.eval.core.Scorer`
        or a list of them (e.g. the learning-free table: one per metric x mode).
      family: one of :data:`FAMILIES`.
      questions: the questions (:data:`QUESTIONS`) the bench asks it: it is asked every
        scenario of these questions (a learned method too costly for both names one).
      kwargs: default keyword arguments of ``factory``; a bench preset may override them.
      label: the method's name in the tables (default ``name``).
      bench: whether the bench presets run it (``False``: registered for the contract
        battery and lookups, e.g. the p-value scorers, whose figures have their own benchmarks).
      provenance: ``settings -> [Row]``: its rows of the bench's provenance section,
        from the section's settings (``probe_size``, ``metrics``, ``alpha``,
        ``modelgif_refs``, ``modelgif_steps``, ``dna_steps``, ``seed``); ``None``: no row.
      description: one line for listings.
      replace: allow replacing an entry of the same name (else a second registration raises).

    Returns:
      The :class:`Entry`.

    Raises:
      ValueError: a name already registered (without ``replace``), an unknown family or question.
    """
    if not name or not isinstance(name, str) or "," in name or name.strip() != name:
        raise ValueError(f"registry.register: name must be a non-empty string without commas, got {name!r}")
    if name in _ENTRIES and not replace:
        raise ValueError(f"registry.register: {name!r} is already registered ({_ENTRIES[name].factory!r})")
    if family not in FAMILIES:
        raise ValueError(f"registry.register({name!r}): unknown family {family!r}; known: {', '.join(FAMILIES)}")
    if isinstance(questions, str):
        questions = (questions,)
    bad = [q for q in questions if q not in QUESTIONS]
    if bad or not questions:
        raise ValueError(f"registry.register({name!r}): questions {list(questions)}; known: {', '.join(QUESTIONS)}")
    if not callable(factory):
        raise ValueError(f"registry.register({name!r}): factory {factory!r} is not callable")
    entry = Entry(
        name=name,
        factory=factory,
        family=family,
        questions=tuple(questions),
        kwargs=dict(kwargs or {}),
        label=label or name,
        bench=bench,
        provenance=provenance,
        description=description,
    )
    _ENTRIES[name] = entry
    return entry


def unregister(name: str) -> Entry:
    """Removes ``name`` (a test's toy scorer); ``KeyError`` if it is not registered."""
    _load_builtins()
    try:
        return _ENTRIES.pop(name)
    except KeyError:
        raise KeyError(f"registry.unregister: {name!r} is not registered; registered: {', '.join(_ENTRIES)}") from None


def _load_builtins() -> None:
    # The built-in scorer files register on import (inside the call: they import this module).
    import jaxlineage.eval.scorers  # noqa: F401


def registered(*, family: str | None = None, bench: bool | None = None) -> tuple[Entry, ...]:
    """The entries in registration order (the bench's stage and table order), optionally filtered."""
    _load_builtins()
    return tuple(
        e for e in _ENTRIES.values() if (family is None or e.family == family) and (bench is None or e.bench == bench)
    )


def names(*, bench: bool | None = None) -> tuple[str, ...]:
    """The registered names in registration order (``bench=True``: the ones the bench runs)."""
    return tuple(e.name for e in registered(bench=bench))


def get(name: str) -> Entry:
    """The entry called ``name``; ``KeyError`` names the registered ones."""
    _load_builtins()
    try:
        return _ENTRIES[name]
    except KeyError:
        raise KeyError(f"no scorer registered as {name!r}; registered: {', '.join(_ENTRIES)}") from None
