"""The evaluation layer's types: populations, scenarios, the scorer protocol and results.

Methods know nothing about zoos and zoos know nothing about methods; this layer
joins them. Everything that crosses into a method is a pure function and a
parameter pytree:

* :class:`Population` (= :class:`jaxlineage.models.Models`, the one population
  type): models of one network: their ids, stacked parameters ``[P, ...]``, a pure
  ``logits_fn``, named feature functions and the tree's signature. A
  :class:`ModelSet` is an ordered tuple of populations (a scenario may mix
  architectures); its models are indexed ``0..len-1`` in population order.
* :class:`Scenario`: one question (:class:`Question`) asked of candidates and
  queries, with the ground truth (``labels`` for *identify*, with
  :data:`NO_PARENT`; ``related`` for *verify*), each query's derivation kind,
  the split keys (queries that share a key always fall in one fold), and the
  probe inputs.
* :class:`Scorer`: ``score(candidates, queries, probe=...) -> [K, M]``, higher =
  more related; learned scorers also ``fit(train_scenario, key=...)`` and see
  only the training queries.
* :class:`Result`: the one JSON-serialisable outcome that the bench, the
  benchmarks and the notebooks consume.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxlineage import models as models_lib
from jaxlineage.eval import metrics
from jaxlineage.eval.metrics import NO_PARENT
from jaxlineage.models import Models, ModelsError, ModelSet

__all__ = [
    "NO_PARENT",
    "ModelSet",
    "Population",
    "Question",
    "GridScorer",
    "Result",
    "Scenario",
    "Scorer",
    "ScorerError",
    "check_finite",
    "check_models",
    "select_index",
]

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]


class ScorerError(ModelsError):
    """A scorer cannot score what it was given; the message names the model."""


class Question(enum.Enum):
    """What a scenario asks.

    * ``IDENTIFY``: for each query, which candidate is its parent (closed set),
      or none of them (open set, label :data:`NO_PARENT`).
    * ``VERIFY``: for each (candidate, query) pair, is the candidate an ancestor
      of the query; reported per derivation kind.
    * ``RECOVER``: the lineage graph itself.
    """

    IDENTIFY = "identify"
    VERIFY = "verify"
    RECOVER = "recover"


#: The evaluation layer's population is the library's one population type (:class:`jaxlineage.models.Models`).
Population = Models


class Scorer:
    """The protocol every method and baseline follows.

    Subclasses set :attr:`name`, implement :meth:`score_block` and, where some
    pairs of populations cannot be read (e.g. weight space across
    architectures), :meth:`readable`. Learned scorers set ``learned = True`` and
    implement :meth:`fit`, which must only use the training scenario it is given.
    """

    name: str = "scorer"
    learned: bool = False

    def readable(self, candidates: Population, queries: Population) -> bool:
        """Whether this scorer can score these two populations against each other."""
        del candidates, queries
        return True

    def fit(self, train: Scenario, *, key: jax.Array) -> Scorer:
        """Fits on the training scenario only; returns the fitted scorer (``self`` for learning-free ones)."""
        del train, key
        return self

    def score_block(self, candidates: Population, queries: Population, *, probe: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def decide(self, scores: np.ndarray) -> np.ndarray | None:
        """Open-set answers from ``[K, M]`` scores: a candidate index or :data:`NO_PARENT` per query.

        ``None`` (the default) means the scorer gives no "no parent" answer, so
        the protocol reports closed-set accuracy only. The hook for scorers
        that can say "none of these" (a no-parent logit, a p-value test).
        """
        del scores
        return None

    def score(
        self, candidates: ModelSet, queries: ModelSet, *, probe: np.ndarray, unreadable: str = "raise"
    ) -> np.ndarray:
        """Scores ``[K, M]`` of every candidate against every query (higher = more related).

        Args:
          candidates, queries: the two model sets.
          probe: the probe inputs ``[N, ...]``.
          unreadable: ``"raise"`` (a :class:`ScorerError` naming the first query
            the scorer cannot read) or ``"nan"`` (those entries are NaN).
        """
        check_models(self.name, candidates, queries)
        out = np.full((len(candidates), len(queries)), np.nan)
        for ko, cp in zip(candidates.offsets(), candidates.populations):
            for mo, qp in zip(queries.offsets(), queries.populations):
                if not self.readable(cp, qp):
                    if unreadable == "raise":
                        raise ScorerError(
                            f"{self.name} cannot score query {qp.ids[0]!r} ({qp.arch}) against candidate"
                            f" {cp.ids[0]!r} ({cp.arch})"
                        )
                    continue
                block = np.asarray(self.score_block(cp, qp, probe=probe), np.float64)
                if block.shape != (len(cp), len(qp)):
                    raise ScorerError(
                        f"{self.name}.score_block returned shape {block.shape}, expected {(len(cp), len(qp))}"
                    )
                out[ko : ko + len(cp), mo : mo + len(qp)] = block
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class GridScorer(Scorer):
    """A scorer with a hyper-parameter grid scored in one pass; the protocol picks the grid index.

    Subclasses set :attr:`alphas` (the grid's values), :attr:`selects_alpha` (whether the
    protocol must choose one on training queries), :meth:`grid_group` (scorers of one group
    share a pass) and :meth:`score_grids` (``[A, K, M]`` grids of a group). The evaluation
    protocol dispatches on this class, not on attributes.
    """

    alphas: tuple[float, ...] = ()

    @property
    def selects_alpha(self) -> bool:
        return len(self.alphas) > 1

    def grid_group(self) -> tuple:
        raise NotImplementedError

    @staticmethod
    def score_grids(
        scorers: Sequence[GridScorer], candidates: ModelSet, queries: ModelSet, *, probe: Any, unreadable: str = "raise"
    ) -> list[np.ndarray]:
        raise NotImplementedError


def select_index(grid: np.ndarray, question: Question, labels: np.ndarray, related: np.ndarray) -> int:
    """The index ``a`` of ``grid [A, K, M]`` with the best figure on these queries; ties to the first.

    *identify*: accuracy over queries whose parent is a candidate (as the former
    ``lineage.select_alpha``); *verify*: ROC AUC over all pairs. Pass training
    queries only.
    """
    vals = []
    for g in grid:
        if question is Question.VERIFY:
            vals.append(metrics.roc_auc(g[related], g[~related]))
        else:
            known = labels != NO_PARENT
            if not known.any():
                raise ScorerError("no training query has a parent among the candidates; cannot choose alpha")
            vals.append(metrics.accuracy(g[:, known], labels[known]))
    return int(np.argmax(vals))


def check_finite(scorer: str, models: ModelSet) -> None:
    """Raises :class:`ScorerError` naming the first model (and parameter path) with a NaN or inf parameter."""
    models_lib.check_finite(scorer, models, error=ScorerError)


def check_models(scorer: str, candidates: ModelSet, queries: ModelSet) -> None:
    """The checks every scorer gets at its boundary: non-empty sets, finite parameters.

    Raises:
      ScorerError: naming the scorer and the first model (and parameter path) at fault.
    """
    if len(candidates) == 0:
        raise ScorerError(f"{scorer}: empty candidate set")
    if len(queries) == 0:
        raise ScorerError(f"{scorer}: empty query set")
    check_finite(scorer, candidates)
    check_finite(scorer, queries)


@dataclasses.dataclass(frozen=True, eq=False)
class Scenario:
    """One question asked of candidates and queries, with its ground truth.

    Attributes:
      name: e.g. ``"quick/identify"``.
      question: :class:`Question`.
      candidates: :class:`ModelSet` of ``K`` models.
      queries: :class:`ModelSet` of ``M`` models.
      labels: ``[M]`` index of each query's parent among the candidates, or
        :data:`NO_PARENT` (identify).
      related: ``[K, M]`` bool, candidate ``k`` is an ancestor of query ``m`` (verify).
      kinds: ``[M]`` each query's derivation kind (e.g. ``"finetune-all"``,
        ``"negative"``).
      split_keys: ``[M]`` queries with equal keys fall in one fold (e.g. the
        fine-tuning seed or task, so that evaluation targets are unseen).
      probe: ``[N, ...]`` probe inputs.
      graph: the lineage graph the truth was read from, if any.
    """

    name: str
    question: Question
    candidates: ModelSet
    queries: ModelSet
    labels: np.ndarray
    related: np.ndarray
    kinds: tuple[str, ...]
    split_keys: tuple[str, ...]
    probe: np.ndarray
    graph: Any = None

    def __post_init__(self):
        k, m = len(self.candidates), len(self.queries)
        labels = np.asarray(self.labels, int).reshape(-1)
        related = np.asarray(self.related, bool)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "related", related)
        object.__setattr__(self, "kinds", tuple(self.kinds))
        object.__setattr__(self, "split_keys", tuple(str(s) for s in self.split_keys))
        if k == 0:
            raise ScorerError(f"scenario {self.name!r}: empty candidate set")
        if m == 0:
            raise ScorerError(f"scenario {self.name!r}: no query")
        if labels.shape != (m,) or related.shape != (k, m) or len(self.kinds) != m or len(self.split_keys) != m:
            raise ScorerError(
                f"scenario {self.name!r}: {k} candidates and {m} queries need labels [{m}], related [{k}, {m}],"
                f" {m} kinds and {m} split keys; got {labels.shape}, {related.shape}, {len(self.kinds)},"
                f" {len(self.split_keys)}"
            )
        if np.any((labels < NO_PARENT) | (labels >= k)):
            raise ScorerError(f"scenario {self.name!r}: labels must be in [{NO_PARENT}, {k - 1}]")

    @classmethod
    def from_models(
        cls,
        name: str,
        candidates: Models | ModelSet,
        queries: Models | ModelSet,
        *,
        probe: Any,
        related: Any = None,
        labels: Any = None,
        kinds: Sequence[str] | None = None,
        split_keys: Sequence[str] | None = None,
        question: Question | str | None = None,
    ) -> Scenario:
        """A scenario on your own models and a relation table, no zoo needed.

        Args:
          name: the scenario's name.
          candidates, queries: :class:`~jaxlineage.models.Models` or :class:`ModelSet`.
          probe: ``[N, ...]`` probe inputs.
          related: ``[K, M]`` bool, candidate ``k`` is an ancestor of query ``m`` (verify's truth).
          labels: ``[M]`` parent index or :data:`NO_PARENT` (identify's truth); default: the one related
            candidate of each query, or :data:`NO_PARENT`.
          kinds: ``[M]`` derivation kinds (default ``"related"`` / ``"negative"``).
          split_keys: ``[M]`` fold keys (default the query ids).
          question: default ``VERIFY`` when only ``related`` is given, else ``IDENTIFY``.

        Raises:
          ScorerError: neither ``related`` nor ``labels``, or shapes that do not match.
        """
        cands, qs = ModelSet.of(candidates), ModelSet.of(queries)
        k, m = len(cands), len(qs)
        if question is None:
            question = Question.VERIFY if related is not None else Question.IDENTIFY
        if related is None and labels is None:
            raise ScorerError(f"scenario {name!r}: give related [K, M] (verify) or labels [M] (identify)")
        if related is None:
            lab = np.asarray(labels, int).reshape(-1)
            related = np.zeros((k, m), bool)
            for j, y in enumerate(lab):
                if 0 <= y < k:
                    related[y, j] = True
        related = np.asarray(related, bool)
        if related.shape != (k, m):
            raise ScorerError(f"scenario {name!r}: related must be [{k}, {m}]; got {related.shape}")
        if labels is None:
            labels = np.where(related.sum(0) == 1, related.argmax(0), NO_PARENT)
        kinds = kinds if kinds is not None else ["related" if r else "negative" for r in related.any(0)]
        return cls(
            name=name,
            question=Question(question),
            candidates=cands,
            queries=qs,
            labels=labels,
            related=related,
            kinds=tuple(kinds),
            split_keys=tuple(split_keys) if split_keys is not None else qs.ids,
            probe=np.asarray(probe),
        )

    def take_queries(self, index: Sequence[int]) -> Scenario:
        """The same scenario restricted to the queries at ``index`` (e.g. a training split)."""
        index = np.asarray(index, int)
        return dataclasses.replace(
            self,
            queries=self.queries.take(index),
            labels=self.labels[index],
            related=self.related[:, index],
            kinds=tuple(self.kinds[i] for i in index),
            split_keys=tuple(self.split_keys[i] for i in index),
        )


@dataclasses.dataclass
class Result:
    """One scorer on one scenario: every figure a table or plot needs, JSON-serialisable.

    Attributes:
      scenario: the scenario's name.
      question: ``"identify"`` / ``"verify"`` / ``"recover"``.
      scorer: the scorer's name.
      metrics: ``{metric: mean_std dict}`` (``{"mean", "std", "n", "values"}``,
        std with ``ddof = 1`` over folds or repetitions).
      by_kind: ``{kind: {metric: mean_std dict}}`` (verify: per derivation kind).
      settings: the protocol's settings (folds, key, grid, ...).
      details: anything else worth keeping (chosen hyper-parameters per fold,
        cells that are n/a and why, timings).
    """

    scenario: str
    question: str
    scorer: str
    metrics: dict[str, dict] = dataclasses.field(default_factory=dict)
    by_kind: dict[str, dict[str, dict]] = dataclasses.field(default_factory=dict)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=_jsonable))

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Result:
        return cls(**{f.name: d.get(f.name, {}) for f in dataclasses.fields(cls)})


def _jsonable(x: Any) -> Any:
    if isinstance(x, enum.Enum):
        return x.value
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, jax.Array):
        return np.asarray(x).tolist()
    return str(x)
