"""Scenarios from a zoo: the question, the models and the ground truth, ready for any scorer.

A zoo knows its models and their lineage graph; a method knows pure functions
and pytrees. These functions read a zoo once and hand out a
:class:`~jaxlineage.eval.core.Scenario`:

* :func:`identify`: which candidate is each query's parent (Neural Lineage's
  question; closed set, or open set with :data:`~jaxlineage.eval.core.NO_PARENT`,
  "no parent" decided by the lineage graph's relation query);
* :func:`open_set`: the open-set identify question with some candidates
  withheld, plus the queries that are neither "known parent" nor "no parent";
* :func:`verify`: is candidate ``k`` an ancestor of query ``m`` (SAC / ModelGiF /
  Model DNA's question), reported per derivation kind;
* :func:`provenance`: the IP-protection benchmark (SAC / ModelGiF): sources against
  every positive and negative derived model of a ``PROVENANCE_QUICK``-style zoo,
  all tasks and architectures at once;
* :func:`model_set`: any list of zoo models as populations of stacked parameters.

Models are selected by *group* name: ``zoo.group(name)`` where the zoo has
lineage-graph groups, else today's roles (``"parent"``, ``"child"``,
``"independent"``, ``"grandchild"``), kept models only.

Example (the tests' tiny zoo, built in a temporary folder; ``zoo.QUICK`` is the bench's):

    >>> import tempfile
    >>> from jaxlineage import zoo
    >>> from jaxlineage.eval import scenarios
    >>> z = zoo.build(zoo.TINY, tempfile.mkdtemp())
    >>> s = scenarios.identify(z)                 # parents x children of task B
    >>> len(s.candidates), len(s.queries), s.question.value
    (2, 4, 'identify')
    >>> v = scenarios.verify(z)                   # parents x (children + independents)
    >>> len(v.queries), int(v.related.sum())
    (6, 4)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxlineage import zoo as zoo_lib
from jaxlineage.eval.core import (
    NO_PARENT,
    ModelSet,
    Question,
    Scenario,
    ScorerError,
)
from jaxlineage.models import (
    Models,
    _kind,  # one definition of a record's kind, shared with from_zoo
)

__all__ = ["NEGATIVE", "OpenSet", "identify", "model_set", "open_set", "provenance", "verify"]

log = logging.getLogger("jaxlineage.eval")

#: The derivation kind of a query unrelated to every candidate (verify).
NEGATIVE = "negative"

SplitBy = str | Callable[[Any], Any] | None


# --------------------------------------------------------------------------- selection


def _select(zoo: Any, name: str) -> list:
    """The kept records of group ``name``; a name that is no group but a role selects the role's kept
    records (a classic zoo with several child tasks has groups ``child.<task>``, all of role ``child``)."""
    groups = getattr(zoo, "groups", None)
    if groups is not None and name not in {g.name for g in groups} and hasattr(zoo, "records"):
        by_role = [r for r in zoo.records if getattr(r, "role", None) == name and getattr(r, "kept", True)]
        if by_role:
            return by_role
    return list(zoo.group(name))


def _select_all(zoo: Any, names: str | zoo_lib.Role | Sequence[str | zoo_lib.Role]) -> list:
    """Kept records of the named groups or roles (a :class:`jaxlineage.zoo.Role` selects by its value)."""
    names = (names,) if isinstance(names, (str, zoo_lib.Role)) else tuple(names)
    names = tuple(n.value if isinstance(n, zoo_lib.Role) else n for n in names)
    out, seen = [], set()
    for n in names:
        for r in _select(zoo, n):
            if r.id not in seen:
                seen.add(r.id)
                out.append(r)
    if not out:
        raise ScorerError(f"zoo {_zoo_name(zoo)!r} has no kept model in group(s) {list(names)}")
    return out


def _zoo_name(zoo: Any) -> str:
    spec = getattr(zoo, "spec", None)
    return getattr(spec, "name", None) or str(getattr(zoo, "workdir", "zoo"))


def _split_key(record: Any, split_by: SplitBy) -> str:
    if split_by is None:
        return str(record.id)
    if callable(split_by):
        return str(split_by(record))
    if hasattr(record, split_by):
        return str(getattr(record, split_by))
    hp = getattr(record, "hparams", {}) or {}
    if split_by in hp:
        return str(hp[split_by])
    raise ScorerError(
        f"split_by={split_by!r}: model {record.id!r} has no such field or hyper-parameter"
        f" (hyper-parameters: {sorted(hp)})"
    )


def _default_task(zoo: Any, queries: list) -> str:
    """Today's default: the zoo's first child task if a query has it, else the first query's task."""
    spec = getattr(zoo, "spec", None)
    child_tasks = [t.name for t in getattr(spec, "child_tasks", ())]
    tasks = [r.task for r in queries]
    for t in child_tasks:
        if t in tasks:
            return t
    return tasks[0]


# --------------------------------------------------------------------------- populations


def model_set(zoo: Any, ids: Sequence[str]) -> ModelSet:
    """Zoo models as populations: :meth:`jaxlineage.models.Models.from_zoo` (one per network and shapes).

    Parameters are the full variables (heads included) stacked per population;
    feature functions read only the layers up to their tap, and the scoring
    kernel prunes unused leaves, so models whose heads differ still compare at
    every tap, while ``logits_fn`` needs one head shape (hence one population per
    shape). Every population's ``feature_fns`` holds every tap of its network (the
    cached function objects of :meth:`jaxlineage.nets.Network.feature_fn`, so jitted
    scorers never recompile for a new population of the same network).

    Raises:
      ScorerError: an empty list of ids.
    """
    if not list(ids):
        raise ScorerError("model_set: empty list of model ids")
    return Models.from_zoo(zoo, ids)


# --------------------------------------------------------------------------- scenarios


def _truth(zoo: Any, candidates: ModelSet, queries: ModelSet) -> tuple[np.ndarray, np.ndarray]:
    """``labels [M]`` (direct parent's index among the candidates or NO_PARENT) and ``related [K, M]`` (ancestor)."""
    graph = zoo.graph
    index = {c: k for k, c in enumerate(candidates.ids)}
    labels = np.full(len(queries), NO_PARENT, int)
    related = np.zeros((len(candidates), len(queries)), bool)
    for m, q in enumerate(queries.ids):
        parents = graph.parents(q)
        hits = [index[p] for p in parents if p in index]
        if len(hits) == 1:
            labels[m] = hits[0]
        elif len(hits) > 1:
            raise ScorerError(f"query {q!r} has {len(hits)} parents among the candidates; identify needs one")
        for a in graph.ancestors(q):
            if a in index:
                related[index[a], m] = True
    return labels, related


def _probe(zoo: Any, probe_size: int, task: str) -> np.ndarray:
    return np.asarray(zoo.probe(probe_size, task=task))


class OpenSet(NamedTuple):
    """An open-set identify scenario and the queries that are neither "known parent" nor "no parent".

    Attributes:
      scenario: the :class:`Scenario` (labels: the parent's index, or
        :data:`NO_PARENT` for a query unrelated to every candidate).
      related_withheld: ids of the queries left out because their parent is not a
        candidate but they are related to one (e.g. a child of a withheld parent
        whose init twin is a candidate: :attr:`~jaxlineage.graph.Relation.SHARED_INIT`).
      relations: ``{query id: {candidate id: Relation value}}`` of those queries
        (related candidates only).
    """

    scenario: Scenario
    related_withheld: tuple[str, ...]
    relations: dict


def _no_parent_split(graph: Any, cand_ids: Sequence[str], query_ids: Sequence[str]) -> tuple[list[str], dict]:
    """The queries of an open set: ``(kept ids, {left-out id: {candidate: relation}})``.

    A query is kept when its parent is a candidate (a "known" query) or when
    ``graph.relation(c, q)`` is :attr:`~jaxlineage.graph.Relation.UNRELATED` for every
    candidate ``c`` (a "no parent" query). Any other query is related to some
    candidate without being its child (shared initialisation, ancestor two
    generations up, sibling): neither answer is right for it, so it is left out.
    """
    cands = set(cand_ids)
    kept, left = [], {}
    for q in query_ids:
        if cands.intersection(graph.parents(q)):
            kept.append(q)
            continue
        rel = {c: graph.relation(c, q) for c in cand_ids}
        related = {c: r.value for c, r in rel.items() if r.is_related}
        if related:
            left[q] = related
        else:
            kept.append(q)
    return kept, left


def _identify(
    zoo, *, candidates, queries, task, open_set, withheld, probe_size, split_by, name
) -> tuple[Scenario, tuple[str, ...], dict]:
    cand = _select_all(zoo, candidates)
    withheld = tuple(withheld)
    if withheld:
        ids = {r.id for r in cand}
        missing = [w for w in withheld if w not in ids]
        if missing:
            raise ScorerError(f"zoo {_zoo_name(zoo)!r}: withheld model {missing[0]!r} is not a candidate")
        cand = [r for r in cand if r.id not in set(withheld)]
        if not cand:
            raise ScorerError(f"zoo {_zoo_name(zoo)!r}: every candidate is withheld")
    qs = _select_all(zoo, queries)
    task = task or _default_task(zoo, qs)
    qs = [r for r in qs if r.task == task]
    if not qs:
        raise ScorerError(f"zoo {_zoo_name(zoo)!r}: no query of task {task!r} in group(s) {queries!r}")
    cand_ids = [r.id for r in cand]
    left: dict = {}
    if open_set:
        kept, left = _no_parent_split(zoo.graph, cand_ids, [r.id for r in qs])
        kept = set(kept)
        qs = [r for r in qs if r.id in kept]
        if left:
            log.info(
                "identify (open set): %d queries related to a candidate without being its child left out, e.g. %r",
                len(left),
                next(iter(left)),
            )
        if not qs:
            raise ScorerError(f"zoo {_zoo_name(zoo)!r}: no query of task {task!r} is known or unrelated")
    else:
        parents = {r.id: set(zoo.graph.parents(r.id)) for r in qs}
        qs = [r for r in qs if parents[r.id] & set(cand_ids)]
        if not qs:
            raise ScorerError(f"zoo {_zoo_name(zoo)!r}: no query of task {task!r} has a parent among the candidates")
    scen = _scenario(
        zoo,
        Question.IDENTIFY,
        cand,
        qs,
        task,
        probe_size,
        split_by,
        name or f"{_zoo_name(zoo)}/identify/{task}",
        negative_kind=False,
    )
    return scen, tuple(left), left


def identify(
    zoo: Any,
    *,
    candidates: str | Sequence[str] = "parent",
    queries: str | Sequence[str] = "child",
    task: str | None = None,
    open_set: bool = False,
    withheld: Sequence[str] = (),
    probe_size: int = 512,
    split_by: SplitBy = None,
    name: str | None = None,
) -> Scenario:
    """Which candidate is each query's parent: Neural Lineage's question on a zoo.

    The label of query ``q`` is the index of ``graph.parent(q)`` among the
    candidates. In a closed set (``open_set=False``, the paper's Table 1) queries
    whose parent is not a candidate are dropped. In an open set
    (``open_set=True``, e.g. ``queries=("child", "independent")``) the lineage
    graph's relation query decides what "no parent" means: a query whose parent
    is not a candidate is labelled :data:`NO_PARENT` only if
    ``zoo.graph.relation(c, q)`` is :attr:`~jaxlineage.graph.Relation.UNRELATED`
    for every candidate ``c``. A query related to a candidate without being its
    child (a child of a withheld parent whose init twin is a candidate, a
    grandchild of a candidate) is neither a known parent nor "no parent" and is
    left out (:func:`open_set` lists them).

    Args:
      zoo: a :class:`jaxlineage.zoo.Zoo`.
      candidates: group name(s) of the candidates (default the kept parents).
      queries: group name(s) of the queries (default the kept children).
      task: only queries of this task (default: the zoo's first child task, as
        :func:`jaxlineage.lineage.evaluate` always did).
      open_set: keep queries unrelated to every candidate, labelled :data:`NO_PARENT`.
      withheld: ids of candidates to remove from the candidate groups (their
        children then have no parent among the candidates).
      probe_size: ``N``; the probe is ``zoo.probe(N, task=task)``, the first ``N``
        inputs of the queries' task's training split (the official code's probe).
      split_by: the queries' split keys (queries sharing one fall in one fold):
        ``None`` (each query alone), a record field or hyper-parameter name
        (e.g. ``"seed"``: held-out fine-tuning seeds), or ``f(record)``.
      name: the scenario's name (default ``"<zoo>/identify/<task>"``).

    Returns:
      A :class:`Scenario` with ``question = IDENTIFY``; ``kinds`` are the queries'
      groups (roles), ``related`` their ancestors among the candidates.

    Raises:
      ScorerError: a withheld id that is not a candidate, every candidate
        withheld, or no query left (naming the zoo and the selection).
    """
    return _identify(
        zoo,
        candidates=candidates,
        queries=queries,
        task=task,
        open_set=open_set,
        withheld=withheld,
        probe_size=probe_size,
        split_by=split_by,
        name=name,
    )[0]


def open_set(
    zoo: Any,
    *,
    withheld: Sequence[str] = (),
    candidates: str | Sequence[str] = "parent",
    queries: str | Sequence[str] = ("child", "independent"),
    task: str | None = None,
    probe_size: int = 512,
    split_by: SplitBy = None,
    name: str | None = None,
) -> OpenSet:
    """Open-set identify with some candidates withheld, and the queries it leaves out.

    ``open_set(zoo, withheld=w).scenario`` is ``identify(zoo, open_set=True,
    withheld=w, ...)``; ``related_withheld`` and ``relations`` say which queries
    were left out because the graph relates them to a candidate they do not
    descend from directly (see :func:`identify`).

    Args:
      zoo: a :class:`jaxlineage.zoo.Zoo`.
      withheld, candidates, queries, task, probe_size, split_by, name: as in :func:`identify`
        (queries default to the children and the independents).

    Returns:
      :class:`OpenSet`.
    """
    scen, left, relations = _identify(
        zoo,
        candidates=candidates,
        queries=queries,
        task=task,
        open_set=True,
        withheld=withheld,
        probe_size=probe_size,
        split_by=split_by,
        name=name,
    )
    if name is None:
        scen = dataclasses.replace(scen, name=f"{scen.name}/open-set")
    return OpenSet(scen, left, relations)


def verify(
    zoo: Any,
    *,
    candidates: str | Sequence[str] = "parent",
    queries: str | Sequence[str] = ("child", "independent"),
    task: str | None = None,
    probe_size: int = 512,
    split_by: SplitBy = None,
    name: str | None = None,
) -> Scenario:
    """Is candidate ``k`` an ancestor of query ``m``: the provenance question, per derivation kind.

    ``related[k, m] = graph.is_ancestor(candidate_k, query_m)``. A query's kind is
    its group (operation, role); queries unrelated to every candidate get the
    kind :data:`NEGATIVE`. Positive pairs of kind ``k`` are scored against all
    negative pairs (unrelated candidates of derived queries included).

    Args:
      zoo: a :class:`jaxlineage.zoo.Zoo`.
      candidates: group name(s) of the candidates (default the kept parents).
      queries: group name(s) of the queries (default children and independents).
      task: only queries of this task (default: the zoo's first child task).
      probe_size, split_by, name: as in :func:`identify`.

    Returns:
      A :class:`Scenario` with ``question = VERIFY``.
    """
    cand = _select_all(zoo, candidates)
    qs = _select_all(zoo, queries)
    task = task or _default_task(zoo, qs)
    qs = [r for r in qs if r.task == task]
    if not qs:
        raise ScorerError(f"zoo {_zoo_name(zoo)!r}: no query of task {task!r} in group(s) {queries!r}")
    return _scenario(
        zoo,
        Question.VERIFY,
        cand,
        qs,
        task,
        probe_size,
        split_by,
        name or f"{_zoo_name(zoo)}/verify/{task}",
        negative_kind=True,
    )


def provenance(
    zoo: Any,
    *,
    sources: str | Sequence[str] = "source",
    queries: Sequence[str] = ("positive", "negative"),
    probe_task: str | None = None,
    probe_size: int = 512,
    name: str | None = None,
) -> Scenario:
    """The IP-protection benchmark (SAC / ModelGiF) on a lineage-graph zoo: was query ``m`` derived from source ``k``?

    ``related[k, m] = graph.is_ancestor(source_k, query_m)``. Unlike :func:`verify`
    the queries are not filtered by task or architecture: a transfer model
    (another task, fresh head) and a student of another architecture are
    queries like any other, and a scorer that cannot read a pair (weight space
    across architectures) reports ``NaN`` for it (``unreadable="nan"``), which
    tables show as n/a. A query's kind is its record's derivation kind
    (``finetune_all``, ``prune``, ``extract_l`` ...), also for the negatives
    (the same derivation of an independent model), so per-attack figures can
    pair each attack with the negatives made by the same recipe.

    Args:
      zoo: a lineage-graph :class:`jaxlineage.zoo.Zoo` (e.g. ``zoo.PROVENANCE_QUICK``).
      sources: the candidates: a group *tag* (default ``"source"``) or group names.
      queries: group tags of the queries (default: every ``"positive"`` and
        ``"negative"`` model).
      probe_task: the probe's task (default: the first source's task, i.e. the
        defender's own data: references never come from an evaluated model).
      probe_size: ``N``, the first ``N`` training inputs of ``probe_task``.
      name: the scenario's name (default ``"<zoo>/provenance"``).

    Returns:
      A :class:`Scenario` with ``question = VERIFY``; ``kinds[m]`` is the
      record's ``kind`` (not :data:`NEGATIVE`: use ``related`` for the truth).

    Raises:
      ScorerError: no source or no query (naming the zoo and the selection).
    """

    def by_tags(tags):
        tags = (tags,) if isinstance(tags, str) else tuple(tags)
        out, seen = [], set()
        for t in tags:
            got = zoo.models(tag=t) if any(t in g.tags for g in zoo.groups) else _select(zoo, t)
            for r in got:
                if r.id not in seen:
                    seen.add(r.id)
                    out.append(r)
        return out

    cand = by_tags(sources)
    qs = [r for r in by_tags(queries) if r.id not in {c.id for c in cand}]
    if not cand or not qs:
        raise ScorerError(
            f"zoo {_zoo_name(zoo)!r}: provenance needs sources {sources!r} and queries {queries!r};"
            f" found {len(cand)} and {len(qs)}"
        )
    task = probe_task or cand[0].task
    return _scenario(
        zoo,
        Question.VERIFY,
        cand,
        qs,
        task,
        probe_size,
        None,
        name or f"{_zoo_name(zoo)}/provenance",
        negative_kind=False,
    )


def _scenario(zoo, question, cand, qs, task, probe_size, split_by, name, *, negative_kind) -> Scenario:
    candidates = model_set(zoo, [r.id for r in cand])
    queries = model_set(zoo, [r.id for r in qs])
    labels, related = _truth(zoo, candidates, queries)
    by_id = {r.id: r for r in qs}
    kinds = []
    for m, q in enumerate(queries.ids):
        kinds.append(NEGATIVE if negative_kind and not related[:, m].any() else _kind(by_id[q]))
    split_keys = [_split_key(by_id[q], split_by) for q in queries.ids]
    probe = _probe(zoo, probe_size, task)
    log.info("scenario %s: %d candidates, %d queries, probe %s", name, len(candidates), len(queries), probe.shape)
    return Scenario(
        name=name,
        question=question,
        candidates=candidates,
        queries=queries,
        labels=labels,
        related=related,
        kinds=tuple(kinds),
        split_keys=tuple(split_keys),
        probe=probe,
        graph=zoo.graph,
    )
