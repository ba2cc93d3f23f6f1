r"""Protocols: folds over queries, fitting on training folds only, one :class:`Result` per scorer.

:func:`run_all` asks one :class:`~jaxlineage.eval.core.Scenario` of several
scorers; :func:`run` of one. The same folds serve every scorer:

* The queries' **split keys** (by default each query's id) are shuffled with
  ``jax.random.permutation(key, ...)`` and cut into ``num_folds`` folds with
  ``np.array_split``; every query of a key falls in that key's fold. Each fold
  is the test set once; the other folds are its training set.
* **Fixed scorers** (baselines) score every pair once; folds only split the figures.
* **Grid scorers** (:class:`~jaxlineage.eval.scorers.LearningFree`) score the
  whole ``[A, K, M]`` grid once; per fold the grid index is chosen on the
  training queries' columns (accuracy for *identify*, ROC AUC for *verify*,
  ties to the first) and the test columns are scored at it. This is Neural
  Lineage's Table 1 protocol, at the cost of one scoring pass.
* **Learned scorers** (``learned = True``) are ``fit`` on
  ``scenario.take_queries(train)`` with ``key = fold_in(key, fold)`` and score
  the test queries only.

Figures per fold (:mod:`jaxlineage.eval.metrics`):

* *identify*: closed-set ``accuracy`` over test queries whose parent is a
  candidate; when the scenario has :data:`NO_PARENT` queries and the scorer's
  :meth:`~jaxlineage.eval.core.Scorer.decide` answers, ``open_set_accuracy``,
  ``known_accuracy`` and ``no_parent_accuracy``.
* *verify*: ``auc`` (ROC AUC, ties half) and ``tpr@1%fpr``, ``tpr@5%fpr`` over
  all test pairs; per derivation kind (``by_kind``) the positives of that kind
  against all negative test pairs.

Every figure is reported as :func:`~jaxlineage.eval.metrics.mean_std` over folds
(sample std, ``ddof = 1``); a fold without a positive (or known) query gives no
value for that figure. A scorer that cannot read some pair (weight space across
architectures) gets an empty :class:`Result` whose ``details["n/a"]`` says why.

Example::

    from jaxlineage.eval import protocols, scenarios, scorers
    s = scenarios.identify(z)
    results = protocols.run_all(s, scorers.learning_free() + scorers.baselines(), key=jax.random.key(0))
    print(protocols.table(results))
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxlineage.eval import metrics as metrics_lib
from jaxlineage.eval.core import (
    NO_PARENT,
    GridScorer,
    Question,
    Result,
    Scenario,
    Scorer,
    ScorerError,
    select_index,
)

__all__ = [
    "FPRS",
    "GridCache",
    "alpha_sweep",
    "cell",
    "column_format",
    "columns",
    "folds",
    "run",
    "run_all",
    "run_zoo",
    "select_index",
    "table",
]

log = logging.getLogger("jaxlineage.eval")

#: False-positive rates at which *verify* reports the true-positive rate.
FPRS = (0.01, 0.05)

_RECOVER = (
    "Question.RECOVER (tree recovery) has no protocol here: use jaxlineage.eval.tree.recover. Ask IDENTIFY or VERIFY."
)


def folds(split_keys: Sequence[Any], num_folds: int, *, key: jax.Array) -> list[np.ndarray]:
    """Query indices of each fold; queries with equal split keys share a fold.

    The distinct keys (in order of first appearance) are permuted with
    ``jax.random.permutation(key, n_keys)`` and cut by ``np.array_split`` into
    ``num_folds`` groups. With one key per query this is exactly the former
    ``lineage.fold_table`` split.

    Args:
      split_keys: ``[M]`` one key per query.
      num_folds: the number of folds (``>= 2``).
      key: a ``jax.random`` key.

    Returns:
      ``num_folds`` integer arrays of query indices (in the permuted key order).
    """
    split_keys = [str(k) for k in split_keys]
    distinct = list(dict.fromkeys(split_keys))
    if not isinstance(num_folds, int) or num_folds < 2:
        raise ScorerError(f"num_folds must be an int >= 2; got {num_folds!r}")
    if len(distinct) < num_folds:
        raise ScorerError(
            f"Need at least num_folds = {num_folds} split keys (queries, or groups of queries); got {len(distinct)}"
        )
    where: dict[str, list[int]] = {}
    for i, k in enumerate(split_keys):
        where.setdefault(k, []).append(i)
    perm = np.asarray(jax.random.permutation(key, len(distinct)))
    return [
        np.asarray([i for g in group for i in where[distinct[g]]], int) for group in np.array_split(perm, num_folds)
    ]


def _key_json(key: jax.Array) -> Any:
    try:
        return np.asarray(jax.random.key_data(key)).tolist()
    except Exception:
        return np.asarray(key).tolist()


# --------------------------------------------------------------------------- per-fold figures


def _identify_figures(s: np.ndarray, labels: np.ndarray, decision: np.ndarray | None) -> dict[str, float]:
    known = labels != NO_PARENT
    out = {"accuracy": metrics_lib.accuracy(s[:, known], labels[known]) if known.any() else np.nan}
    if decision is not None and (~known).any():
        o = metrics_lib.open_set_accuracy(decision, labels)
        out.update(
            open_set_accuracy=o["accuracy"],
            known_accuracy=o["known_accuracy"],
            no_parent_accuracy=o["no_parent_accuracy"],
        )
    return out


def _fpr_name(f: float) -> str:
    return f"tpr@{100 * f:g}%fpr"


def _verify_figures(s: np.ndarray, related: np.ndarray, kinds: Sequence[str], fprs) -> tuple[dict, dict]:
    def figs(pos, neg):
        if pos.size == 0 or neg.size == 0:
            return {"auc": np.nan, **{_fpr_name(f): np.nan for f in fprs}}
        return {
            "auc": metrics_lib.roc_auc(pos, neg),
            **{_fpr_name(f): metrics_lib.tpr_at_fpr(pos, neg, f) for f in fprs},
        }

    neg = s[~related]
    overall = figs(s[related], neg)
    by_kind = {}
    kinds = np.asarray(kinds)
    for kind in dict.fromkeys(kinds.tolist()):
        cols = kinds == kind
        pos = s[:, cols][related[:, cols]]
        if pos.size:
            by_kind[kind] = figs(pos, neg)
    return overall, by_kind


def _summaries(per_fold: list[dict]) -> dict:
    out = {}
    for name in dict.fromkeys(k for f in per_fold for k in f):
        vals = [f.get(name, np.nan) for f in per_fold]
        if any(np.isfinite(v) for v in vals):
            out[name] = metrics_lib.mean_std(vals)
    return out


def _all_queries(grid: np.ndarray, scenario: Scenario) -> list[float]:
    """The figure (accuracy / AUC) of every grid entry over all queries: a diagnostic, not a result."""
    out = []
    for g in grid:
        if scenario.question is Question.VERIFY:
            out.append(metrics_lib.roc_auc(g[scenario.related], g[~scenario.related]))
        else:
            known = scenario.labels != NO_PARENT
            out.append(metrics_lib.accuracy(g[:, known], scenario.labels[known]))
    return out


# --------------------------------------------------------------------------- protocol


def _is_grid(s: Scorer) -> bool:
    return isinstance(s, GridScorer)


class GridCache:
    """Grid scores per (scorer, candidate, query, probe), shared by scenarios that ask overlapping pairs.

    E.g. *identify* (parents x children) and *verify* (parents x children and
    independents) on one task and probe: with one cache the second scenario scores
    only the independents. Keys are the scorer's ``grid_group()`` and name, the
    model ids and a hash of the probe, so a cache never mixes probes or settings.
    Pass one to :func:`run_all` (``cache=``); without one nothing is kept.
    """

    def __init__(self):
        self._store: dict[tuple, np.ndarray] = {}
        self.hits = 0

    @staticmethod
    def probe_key(probe: Any) -> tuple:
        a = np.ascontiguousarray(np.asarray(probe))
        return a.shape, str(a.dtype), hashlib.sha1(a.tobytes()).hexdigest()

    def missing(self, scorers, candidates, queries, probe_key) -> list[int]:
        """Indices of queries with at least one (scorer, candidate) pair not in the cache."""
        return [
            m
            for m, q in enumerate(queries.ids)
            if any(
                (s.grid_group(), s.name, c, q, probe_key) not in self._store for s in scorers for c in candidates.ids
            )
        ]

    def put(self, scorer, grid: np.ndarray, candidates, queries, probe_key) -> None:
        for k, c in enumerate(candidates.ids):
            for m, q in enumerate(queries.ids):
                self._store[(scorer.grid_group(), scorer.name, c, q, probe_key)] = grid[:, k, m]

    def get(self, scorer, candidates, queries, probe_key) -> np.ndarray:
        return np.stack(
            [
                np.stack(
                    [self._store[(scorer.grid_group(), scorer.name, c, q, probe_key)] for q in queries.ids], axis=-1
                )
                for c in candidates.ids
            ],
            axis=-2,
        )


def _grids(
    scenario: Scenario, scorers: Sequence[Scorer], cache: GridCache | None = None
) -> dict[int, tuple[np.ndarray, float]]:
    """One :meth:`score_grids` pass per group of grid scorers: ``{id(scorer): (grid, wall_s share)}``.

    With a ``cache``, only queries with a pair not scored before are scored.
    """
    groups: dict[Any, list] = {}
    for s in scorers:
        if _is_grid(s):
            groups.setdefault(s.grid_group(), []).append(s)
    out = {}
    for group in groups.values():
        t0 = time.time()
        if cache is None:
            grids = type(group[0]).score_grids(
                group, scenario.candidates, scenario.queries, probe=scenario.probe, unreadable="nan"
            )
        else:
            pk = cache.probe_key(scenario.probe)
            todo = cache.missing(group, scenario.candidates, scenario.queries, pk)
            cache.hits += len(scenario.queries) - len(todo)
            if todo:
                sub = scenario.queries.take(todo)
                for s, g in zip(
                    group,
                    type(group[0]).score_grids(group, scenario.candidates, sub, probe=scenario.probe, unreadable="nan"),
                ):
                    cache.put(s, g, scenario.candidates, sub, pk)
            grids = [cache.get(s, scenario.candidates, scenario.queries, pk) for s in group]
            if len(todo) < len(scenario.queries):
                log.info(
                    "%s: %d of %d queries' grids reused from the cache",
                    scenario.name,
                    len(scenario.queries) - len(todo),
                    len(scenario.queries),
                )
        wall = time.time() - t0
        log.info("%s: %d grid scorers (%s, ...) in one pass, %.1fs", scenario.name, len(group), group[0].name, wall)
        for s, g in zip(group, grids):
            out[id(s)] = (g, wall / len(group))
    return out


def run_all(
    scenario: Scenario,
    scorers: Sequence[Scorer],
    *,
    key: jax.Array,
    num_folds: int = 5,
    fprs: Sequence[float] = FPRS,
    keep_scores: bool = False,
    cache: GridCache | None = None,
) -> list[Result]:
    """Asks ``scenario`` of every scorer on the same folds: one :class:`Result` per scorer, in order.

    Grid scorers of one group share a single scoring pass (e.g. the paper's 7
    metrics x 3 modes cost one :func:`jaxlineage.lineage.score_matrices` call).

    Args:
      scenario: an *identify* or *verify* :class:`Scenario`.
      scorers: :class:`Scorer` instances.
      key: ``jax.random`` key of the fold split (learned scorers get
        ``fold_in(key, fold)`` for their fit).
      num_folds: folds over the split keys (default 5).
      fprs: false-positive rates of the verify TPR figures.
      keep_scores: also keep the score matrix (grid scorers: the ``[A, K, M]``
        grid) with the labels in ``details``, for figures.
      cache: a :class:`GridCache` shared with other scenarios (grid scorers reuse
        the pairs it holds).

    Returns:
      ``[Result]``; ``metrics`` holds ``mean_std`` dicts over folds.

    Raises:
      NotImplementedError: ``Question.RECOVER`` (a later issue's slot).
      ScorerError: fewer split keys than folds; a scorer's boundary error (names the model).
    """
    if scenario.question is Question.RECOVER:
        raise NotImplementedError(_RECOVER)
    fold_idx = folds(scenario.split_keys, num_folds, key=key)
    grids = _grids(scenario, scorers, cache)
    settings = {
        "num_folds": num_folds,
        "key": _key_json(key),
        "fold_sizes": [int(len(f)) for f in fold_idx],
        "candidates": len(scenario.candidates),
        "queries": len(scenario.queries),
        "probe_shape": list(np.shape(scenario.probe)),
        "split": "by split key" if len(set(scenario.split_keys)) < len(scenario.split_keys) else "by query",
    }
    if scenario.question is Question.VERIFY:
        settings["fprs"] = list(fprs)
    return [_evaluate(scenario, s, fold_idx, key, grids.get(id(s)), settings, fprs, keep_scores) for s in scorers]


def run(
    scenario: Scenario,
    scorer: Scorer,
    *,
    key: jax.Array,
    num_folds: int = 5,
    fprs: Sequence[float] = FPRS,
    keep_scores: bool = False,
) -> Result:
    """:func:`run_all` with one scorer."""
    return run_all(scenario, [scorer], key=key, num_folds=num_folds, fprs=fprs, keep_scores=keep_scores)[0]


def _evaluate(scenario, s, fold_idx, key, grid, settings, fprs, keep_scores) -> Result:
    t0 = time.time()
    q = scenario.question
    res = Result(
        scenario=scenario.name,
        question=q.value,
        scorer=s.name,
        settings=dict(settings),
        details={"kind": "grid" if grid is not None else "learned" if s.learned else "fixed"},
    )
    full = None
    if grid is not None:
        full, wall = grid
        t0 -= wall
        res.details["grid_alphas"] = list(s.alphas or range(len(full)))
    elif not s.learned:
        full = s.score(scenario.candidates, scenario.queries, probe=scenario.probe, unreadable="nan")[None]
    if full is not None and np.isnan(full).any():
        k, m = np.argwhere(np.isnan(full[0]))[0]
        res.details["n/a"] = (
            f"{s.name} cannot read {int(np.isnan(full[0]).sum())} of {full[0].size} pairs, e.g."
            f" candidate {scenario.candidates.ids[k]!r} and query {scenario.queries.ids[m]!r}"
        )
        res.details["wall_s"] = time.time() - t0
        return res
    per_fold, by_kind_fold, chosen = [], [], []
    for f, test in enumerate(fold_idx):
        train = np.concatenate([g for h, g in enumerate(fold_idx) if h != f])
        decider = s
        if grid is not None:
            a = (
                select_index(full[:, :, train], q, scenario.labels[train], scenario.related[:, train])
                if s.selects_alpha
                else 0
            )
            if s.selects_alpha:
                chosen.append(res.details["grid_alphas"][a])
            st = full[a][:, test]
        elif s.learned:
            decider = s.fit(scenario.take_queries(train), key=jax.random.fold_in(key, f))
            st = np.asarray(
                decider.score(scenario.candidates, scenario.queries.take(test), probe=scenario.probe), np.float64
            )
        else:
            st = full[0][:, test]
        if q is Question.IDENTIFY:
            per_fold.append(_identify_figures(st, scenario.labels[test], decider.decide(st)))
        else:
            overall, kinds = _verify_figures(st, scenario.related[:, test], [scenario.kinds[i] for i in test], fprs)
            per_fold.append(overall)
            by_kind_fold.append(kinds)
    res.metrics = _summaries(per_fold)
    if by_kind_fold:
        kinds = list(dict.fromkeys(k for f in by_kind_fold for k in f))
        res.by_kind = {k: _summaries([f.get(k, {}) for f in by_kind_fold]) for k in kinds}
        res.by_kind = {k: v for k, v in res.by_kind.items() if v}
    if chosen:
        res.details["alphas"] = chosen
    if grid is not None:
        res.details["all_queries"] = _all_queries(full, scenario)
    if keep_scores and full is not None:
        res.details["scores"] = full if grid is not None else full[0]
        res.details["labels"] = scenario.labels
        res.details["related"] = scenario.related
    res.details["wall_s"] = time.time() - t0
    return res


def run_zoo(
    zoo: Any,
    scorers: Sequence[Scorer] | None = None,
    *,
    question: Question | str = Question.IDENTIFY,
    key: jax.Array | None = None,
    num_folds: int = 5,
    **scenario_kwargs,
) -> list[Result]:
    """A zoo's scenario asked of scorers in one call: the notebook's shortcut.

    ``scenarios.identify(zoo, **scenario_kwargs)`` (or ``verify``) followed by
    :func:`run_all`; the default scorers are the paper's learning-free table and
    the four baselines.

    Args:
      zoo: a :class:`jaxlineage.zoo.Zoo`.
      scorers: default ``scorers.learning_free() + scorers.baselines()``.
      question: ``IDENTIFY`` (default) or ``VERIFY``.
      key: the folds' key (default ``jax.random.key(0)``).
      num_folds: folds (default 5).
      **scenario_kwargs: e.g. ``task``, ``probe_size``, ``candidates``, ``queries``.

    Returns:
      One :class:`Result` per scorer.
    """
    from jaxlineage.eval import scenarios as scenarios_lib
    from jaxlineage.eval import scorers as scorers_lib

    question = Question(question)
    if question is Question.RECOVER:
        raise NotImplementedError(_RECOVER)
    make = scenarios_lib.identify if question is Question.IDENTIFY else scenarios_lib.verify
    scenario = make(zoo, **scenario_kwargs)
    if scorers is None:
        scorers = scorers_lib.learning_free() + scorers_lib.baselines()
    return run_all(scenario, scorers, key=jax.random.key(0) if key is None else key, num_folds=num_folds)


def alpha_sweep(scenario: Scenario, scorers: Sequence[Scorer], *, alphas: Sequence[float]) -> list[Result]:
    """Each grid scorer's figure at every ``alpha`` over **all** queries (no folds): a diagnostic for plots.

    Returns:
      One :class:`Result` per scorer with ``metrics = {"<figure>@alpha=<a>": value}``
      (``n = 1``) and ``details = {"alphas", "figure", "values"}``; not a result to
      report (alpha is not held out).
    """
    swept = []
    for s in scorers:
        if not _is_grid(s):
            raise ScorerError(f"alpha_sweep needs grid scorers; {s.name} is not one")
        c = copy.copy(s)
        c.alphas = tuple(float(a) for a in alphas)
        swept.append(c)
    grids = _grids(scenario, swept)
    figure = "auc" if scenario.question is Question.VERIFY else "accuracy"
    out = []
    for s in swept:
        g, wall = grids[id(s)]
        vals = _all_queries(g, scenario)
        out.append(
            Result(
                scenario=scenario.name,
                question=scenario.question.value,
                scorer=s.name,
                metrics={f"{figure}@alpha={a:g}": metrics_lib.mean_std([v]) for a, v in zip(s.alphas, vals)},
                settings={"protocol": "alpha sweep over all queries, no folds (a diagnostic, not a result)"},
                details={"alphas": list(s.alphas), "figure": figure, "values": vals, "wall_s": wall},
            )
        )
    return out


# --------------------------------------------------------------------------- tables

#: ``figure -> (scale, decimals, header)`` of the table cells.
_FORMATS = {
    "accuracy": (100, 1, "accuracy (%)"),
    "open_set_accuracy": (100, 1, "open-set accuracy (%)"),
    "known_accuracy": (100, 1, "known-parent accuracy (%)"),
    "no_parent_accuracy": (100, 1, "no-parent accuracy (%)"),
    "auc": (1, 3, "AUC"),
}


def column_format(name: str) -> tuple[float, int, str]:
    """``(scale, decimals, header)`` of a table column (:func:`columns`): percent for accuracy / TPR, AUC as is."""
    if name.startswith("tpr@"):
        return 100, 1, f"TPR@{name[4:].replace('fpr', '')} FPR (%)"
    if name.startswith("auc: "):
        return 1, 3, f"AUC {name[5:]}"
    return _FORMATS.get(name, (1, 3, name))


def columns(results: Sequence[Result]) -> list[str]:
    """The figures of a table of results: overall metrics, then ``"auc: <kind>"`` per derivation kind."""
    cols = list(dict.fromkeys(m for r in results for m in r.metrics))
    cols += list(dict.fromkeys(f"auc: {k}" for r in results for k, v in r.by_kind.items() if "auc" in v))
    return cols


def cell(result: Result, column: str) -> dict | None:
    """``{"mean", "std", "n"}`` of one column of a result (``None`` where it has none)."""
    if column.startswith("auc: "):
        return result.by_kind.get(column[5:], {}).get("auc")
    return result.metrics.get(column)


def table(results: Sequence[Result], *, columns_: Sequence[str] | None = None) -> str:
    """Markdown tables, one per scenario: rows = scorers, columns = figures (``mean ± std`` over folds).

    Accuracy and TPR in percent, AUC as a fraction; ``n/a`` where a scorer cannot
    read the scenario's models (weights across architectures) or has no such figure.
    """
    by_scenario: dict[str, list[Result]] = {}
    for r in results:
        by_scenario.setdefault(r.scenario, []).append(r)
    out = []
    for name, rs in by_scenario.items():
        cols = list(columns_) if columns_ is not None else columns(rs)
        heads = [column_format(c)[2] for c in cols]
        lines = [
            f"{name} ({rs[0].question})",
            "",
            "| scorer | " + " | ".join(heads) + " |",
            "|---|" + "---:|" * len(cols),
        ]
        for r in rs:
            cells = []
            for c in cols:
                v = cell(r, c)
                scale, dec, _ = column_format(c)
                cells.append("n/a" if v is None else f"{scale * v['mean']:.{dec}f} ± {scale * v['std']:.{dec}f}")
            lines.append(f"| {r.scorer} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)
