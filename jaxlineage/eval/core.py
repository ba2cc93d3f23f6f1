"""The evaluation layer's types: populations, scenarios, the scorer protocol and results.

Methods know nothing about zoos and zoos know nothing about methods; this layer
joins them. Everything that crosses into a method is a pure function and a
parameter pytree:

* :class:`Population`: models of one network (one architecture and parameter
  shape): their ids, stacked parameters ``[P, ...]``, a pure ``logits_fn`` and
  named feature functions. A :class:`ModelSet` is an ordered tuple of
  populations (a scenario may mix architectures); its models are indexed
  ``0..len-1`` in population order.
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
import jax.numpy as jnp
import numpy as np

from jaxlineage.errors import JaxlineageError, path_str
from jaxlineage.eval.metrics import NO_PARENT

__all__ = [
    "NO_PARENT",
    "ModelSet",
    "Population",
    "Question",
    "Result",
    "Scenario",
    "Scorer",
    "ScorerError",
    "check_finite",
    "check_models",
]

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]


class ScorerError(JaxlineageError):
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


@dataclasses.dataclass(frozen=True, eq=False)
class Population:
    """Models of one network: ids, stacked parameters and pure functions.

    Attributes:
      ids: ``[P]`` model ids.
      params: stacked parameters, leaves ``[P, ...]``.
      logits_fn: ``logits_fn(params_of_one_model, x [N, ...]) -> [N, C]``.
      feature_fns: ``{tap: f(params_of_one_model, x) -> [N, D]}``.
      arch: the architecture's name; weight-space scorers compare only equal ones.
      info: optional per-model metadata ``{id: {...}}`` (task, operation, ...).
    """

    ids: tuple[str, ...]
    params: PyTree
    logits_fn: ApplyFn
    feature_fns: Mapping[str, ApplyFn]
    arch: str
    info: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "ids", tuple(self.ids))
        leaves = jax.tree.leaves(self.params)
        if not self.ids:
            raise ScorerError(f"population of architecture {self.arch!r} has no model")
        if not leaves or any(np.shape(leaf)[:1] != (len(self.ids),) for leaf in leaves):
            raise ScorerError(
                f"population {self.ids[0]!r}...: every parameter leaf must be stacked with a leading axis of"
                f" {len(self.ids)} models"
            )

    def __len__(self) -> int:
        return len(self.ids)

    def feature_fn(self, tap: str) -> ApplyFn:
        try:
            return self.feature_fns[tap]
        except KeyError:
            raise ScorerError(
                f"models {self.ids[0]!r}... ({self.arch}) have no feature tap {tap!r};"
                f" known: {sorted(self.feature_fns)}"
            ) from None

    def take(self, index: Sequence[int]) -> Population:
        index = np.asarray(index, int)
        return dataclasses.replace(
            self, ids=tuple(self.ids[i] for i in index), params=jax.tree.map(lambda a: a[index], self.params)
        )


@dataclasses.dataclass(frozen=True, eq=False)
class ModelSet:
    """An ordered tuple of populations; model ``i`` is the ``i``-th id over them in order."""

    populations: tuple[Population, ...]

    def __post_init__(self):
        object.__setattr__(self, "populations", tuple(self.populations))
        ids = self.ids
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ScorerError(f"model {dup!r} appears twice in one model set")

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(i for p in self.populations for i in p.ids)

    def __len__(self) -> int:
        return sum(len(p) for p in self.populations)

    def offsets(self) -> list[int]:
        """Index of each population's first model."""
        return list(np.cumsum([0] + [len(p) for p in self.populations])[:-1])

    def take(self, index: Sequence[int]) -> ModelSet:
        """The models at ``index`` (in the order of ``index`` within each population; populations keep their order)."""
        index = np.asarray(index, int)
        pops = []
        for off, p in zip(self.offsets(), self.populations):
            local = [i - off for i in index if off <= i < off + len(p)]
            if local:
                pops.append(p.take(local))
        return ModelSet(tuple(pops))


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


@jax.jit
def _finite_per_model(leaves):
    return tuple(jnp.all(jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1) for leaf in leaves)


def check_finite(scorer: str, models: ModelSet) -> None:
    """Raises :class:`ScorerError` naming the first model (and parameter path) with a NaN or inf parameter."""
    for p in models.populations:
        path_leaves = [
            (path, leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(p.params)[0]
            if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
        ]
        if not path_leaves:
            continue
        flags = jax.device_get(_finite_per_model(tuple(jnp.asarray(leaf) for _, leaf in path_leaves)))
        for (path, _), ok in zip(path_leaves, flags):
            ok = np.asarray(ok)
            if not ok.all():
                raise ScorerError(
                    f"{scorer}: model {p.ids[int(np.argmin(ok))]!r} ({p.arch}) has non-finite"
                    f" (NaN or inf) parameters at {path_str(path)}"
                )


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
