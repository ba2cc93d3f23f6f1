r"""Scorers: the learning-free metrics and the trivial baselines every table shows.

Every scorer follows :class:`~jaxlineage.eval.core.Scorer`:
``score(candidates, queries, probe=...) -> [K, M]``, higher = more related.

* :class:`LearningFree`: a metric of :mod:`jaxlineage.similarity` in a mode of
  :class:`~jaxlineage.linearize.Mode` at a feature tap (Neural Lineage Sec. 3).
  It is a *grid* scorer: :meth:`LearningFree.score_grid` gives ``[A, K, M]`` over
  its ``alphas``, the protocol computes that once and picks ``alpha`` per fold on
  the training queries only. :func:`learning_free` makes the paper's table
  (every metric x mode); :meth:`LearningFree.score_grids` scores any number of
  them in one :func:`jaxlineage.lineage.score_matrices` pass.
* Baselines (QuRD, AAAI'25, found such baselines match
  published fingerprints):

  - :class:`WeightL2`: :math:`-\sqrt{\tfrac1D \sum_i (\theta_{c_k,i} - \theta_{q_m,i})^2}`;
    readable for the same architecture.
  - :class:`WeightCosine`: :math:`\cos(\theta_{c_k}, \theta_{q_m})`; same architecture.
  - :class:`OutputAgreement`: :math:`\tfrac1N \sum_n [\arg\max f_{c_k}(x_n) = \arg\max f_{q_m}(x_n)]`;
    same output size.
  - :class:`OutputKL`: :math:`-\tfrac1N \sum_n \mathrm{KL}(\sigma(f_{c_k}(x_n)) \,\|\, \sigma(f_{q_m}(x_n)))`;
    same output size.

  Weight scorers compare the *shared leaves*: same path and same shape (a
  classifier head of another size is left out); a leaf of one path with
  different shapes outside the head means the trees do not match and raises.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlineage import lineage, linearize, nets
from jaxlineage import similarity as similarity_lib
from jaxlineage.errors import path_str
from jaxlineage.eval import registry
from jaxlineage.eval.core import (
    GridScorer,
    ModelSet,
    Population,
    Scenario,
    Scorer,
    ScorerError,
    check_models,
    select_index,
)
from jaxlineage.models import weight_comparable

__all__ = [
    "DEFAULT_ALPHAS",
    "LearningFree",
    "OutputAgreement",
    "OutputKL",
    "WeightCosine",
    "WeightL2",
    "baselines",
    "default_tap",
    "learning_free",
]

Mode = linearize.Mode

#: The paper's grid for the step size (Neural Lineage, Sec. 5.1).
DEFAULT_ALPHAS = lineage.DEFAULT_ALPHAS


def default_tap(model: Any) -> str:
    """The default feature tap of a :class:`~jaxlineage.nets.Network` or a :class:`Population`.

    The population's (or network's) own ``default_tap``: ``relu1`` for the library's MLP,
    ``conv1`` for its ConvNet, ``block1`` for ResNet-18; for your own models the first tap
    you gave (or the one you named with ``default_tap=``). Never read from an ``arch`` name.
    """
    tap = getattr(model, "default_tap", None)
    if not tap:
        raise ScorerError(f"{getattr(model, 'arch', getattr(model, 'name', model))} has no feature tap")
    return tap


# --------------------------------------------------------------------------- helpers


def _blocks(candidates: ModelSet, queries: ModelSet):
    """``(k0, candidate population, m0, query population)`` for every pair of populations."""
    for ko, cp in zip(candidates.offsets(), candidates.populations):
        for mo, qp in zip(queries.offsets(), queries.populations):
            yield ko, cp, mo, qp


def _renamed(err: Exception, scorer: str, cp: Population, qp: Population) -> ScorerError:
    """A kernel's ``ValueError`` with model indices replaced by model ids."""
    msg = str(err)
    msg = re.sub(r"parents\[(\d+)\]", lambda m: f"candidate {cp.ids[int(m.group(1))]!r}", msg)
    msg = re.sub(r"children\[(\d+)\]", lambda m: f"query {qp.ids[int(m.group(1))]!r}", msg)
    return ScorerError(
        f"{scorer}: candidates {cp.ids[0]!r}... ({cp.arch}) against queries {qp.ids[0]!r}... ({qp.arch}): {msg}"
    )


def _is_head(path) -> bool:
    return any(getattr(k, "key", None) == nets.HEAD for k in path)


# --------------------------------------------------------------------------- learning-free


class LearningFree(GridScorer):
    r"""A learning-free similarity (Neural Lineage Sec. 3) as a scorer.

    .. math:: S[k, m] = s_{\text{mode}}(\theta_{c_k}, \theta_{q_m}; X, \alpha)

    with ``s`` a metric on the features at ``tap`` of the probe batch ``X``
    (:func:`jaxlineage.lineage.score_matrices`). ``alpha`` is chosen from
    ``alphas`` on training queries only: by accuracy for *identify*, by ROC AUC
    for *verify* (ties go to the first, the smallest of the default grid);
    ``PLAIN`` does not depend on it.

    Args:
      metric: a name, :class:`~jaxlineage.similarity.Metric` or
        :class:`~jaxlineage.similarity.MetricFn`.
      mode: a :class:`~jaxlineage.linearize.Mode` (``FIRST_ORDER`` needs a
        differentiable metric).
      tap: the feature tap (default :func:`default_tap` of the candidates).
      alphas: the step-size grid ``[A]`` (default ``(0.001, 0.01, 0.1)``).
      alpha: the step size :meth:`score` uses (default ``alphas[0]``; :meth:`fit`
        sets it).
      chunk_size, memory_budget_bytes, mesh: see :func:`jaxlineage.lineage.score_matrices`.

    References:
      Yu & Wang (2024), Neural Lineage, CVPR, Sec. 3 and Table 1.
    """

    def __init__(
        self,
        metric: Any,
        mode: Mode | str = linearize.DEFAULT_MODE,
        *,
        tap: str | None = None,
        alphas: Sequence[float] = DEFAULT_ALPHAS,
        alpha: float | None = None,
        chunk_size: int | None = None,
        memory_budget_bytes: int = lineage.DEFAULT_MEMORY_BUDGET,
        mesh: Any = None,
    ):
        self.metric = similarity_lib.get(metric)
        self.mode = linearize.as_mode(mode)
        if self.mode is Mode.FIRST_ORDER and not self.metric.differentiable:
            raise ValueError(
                f"metric {self.metric.name!r} is not differentiable: Mode.FIRST_ORDER is undefined; use Mode.LINEARIZED"
            )
        self.alphas = tuple(float(a) for a in np.asarray(alphas, float).reshape(-1))
        if not self.alphas:
            raise ValueError("alphas is empty")
        self.alpha = self.alphas[0] if alpha is None else float(alpha)
        self.tap = tap
        self.chunk_size = chunk_size
        self.memory_budget_bytes = memory_budget_bytes
        self.mesh = mesh
        self.name = f"{self.metric.name} {self.mode.value}"

    @property
    def selects_alpha(self) -> bool:
        """Whether the protocol must choose ``alpha`` (not for ``PLAIN`` or a single-value grid)."""
        return self.mode is not Mode.PLAIN and len(self.alphas) > 1

    def grid_group(self) -> tuple:
        """Scorers with equal groups share one :meth:`score_grids` pass."""
        return (LearningFree, self.tap, self.alphas, self.chunk_size, self.memory_budget_bytes, id(self.mesh))

    def _tap(self, cp: Population, qp: Population) -> str:
        tap = self.tap or default_tap(cp)
        cp.feature_fn(tap), qp.feature_fn(tap)  # both must have it (ScorerError otherwise)
        return tap

    def readable(self, candidates: Population, queries: Population) -> bool:
        tap = self.tap or default_tap(candidates)
        if tap not in candidates.feature_fns and tap not in queries.feature_fns:
            raise ScorerError(
                f"{self.name}: neither candidates {candidates.ids[0]!r}... nor queries {queries.ids[0]!r}... have a"
                f" feature tap {tap!r}; their taps: {sorted(set(candidates.feature_fns) | set(queries.feature_fns))}"
            )
        return weight_comparable(candidates, queries) and tap in candidates.feature_fns and tap in queries.feature_fns

    @staticmethod
    def score_grids(
        scorers: Sequence[LearningFree],
        candidates: ModelSet,
        queries: ModelSet,
        *,
        probe: Any,
        unreadable: str = "raise",
    ) -> list[np.ndarray]:
        """Grids ``[A, K, M]`` of several learning-free scorers from one scoring pass per population pair.

        Args:
          scorers: scorers of one :meth:`grid_group` (same tap, alphas, chunking).
          candidates, queries: the model sets.
          probe: ``[N, ...]``.
          unreadable: ``"raise"`` or ``"nan"`` (see :meth:`Scorer.score`).

        Returns:
          One ``[A, K, M]`` float64 array per scorer, in order.
        """
        scorers = list(scorers)
        if not scorers:
            return []
        first = scorers[0]
        if any(s.grid_group() != first.grid_group() for s in scorers):
            raise ValueError("score_grids: the scorers differ in tap, alphas or chunking; group them first")
        check_models(first.name, candidates, queries)
        metrics = tuple(dict.fromkeys(s.metric for s in scorers))
        modes = tuple(dict.fromkeys(s.mode for s in scorers))
        a = len(first.alphas)
        out = [np.full((a, len(candidates), len(queries)), np.nan) for _ in scorers]
        for ko, cp, mo, qp in _blocks(candidates, queries):
            if not first.readable(cp, qp):
                if unreadable == "raise":
                    raise ScorerError(
                        f"{first.name} cannot score query {qp.ids[0]!r} ({qp.arch}) against candidate"
                        f" {cp.ids[0]!r} ({cp.arch})"
                    )
                continue
            tap = first._tap(cp, qp)
            try:
                got = lineage.score_matrices(
                    metrics,
                    cp.feature_fn(tap),
                    cp.params,
                    qp.params,
                    probe,
                    alpha=np.asarray(first.alphas, float),
                    modes=modes,
                    chunk_size=first.chunk_size,
                    memory_budget_bytes=first.memory_budget_bytes,
                    mesh=first.mesh,
                )
            except ValueError as e:
                raise _renamed(e, first.name, cp, qp) from e
            for s, o in zip(scorers, out):
                o[:, ko : ko + len(cp), mo : mo + len(qp)] = np.asarray(got[(s.metric.name, s.mode)], np.float64)
        return out

    def score_grid(
        self, candidates: ModelSet, queries: ModelSet, *, probe: Any, unreadable: str = "raise"
    ) -> np.ndarray:
        """``[A, K, M]``: the scores at every ``alpha`` of the grid."""
        return self.score_grids([self], candidates, queries, probe=probe, unreadable=unreadable)[0]

    def score_block(self, candidates: Population, queries: Population, *, probe: Any) -> np.ndarray:
        one = copy.copy(self)
        one.alphas = (self.alpha,)
        return one.score_grid(ModelSet((candidates,)), ModelSet((queries,)), probe=probe)[0]

    def fit(self, train: Scenario, *, key: jax.Array) -> LearningFree:
        """A copy with ``alpha`` chosen on ``train`` (its candidates and queries only).

        By accuracy for *identify*, by ROC AUC for *verify*; ties to the first alpha.
        """
        del key
        out = copy.copy(self)
        if self.selects_alpha:
            grid = self.score_grid(train.candidates, train.queries, probe=train.probe)
            out.alpha = self.alphas[select_index(grid, train.question, train.labels, train.related)]
        return out


def learning_free(
    metrics: Any = None,
    modes: Any = tuple(Mode),
    *,
    tap: str | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    **kwargs,
) -> list[LearningFree]:
    """The paper's table as scorers: every metric in every mode (``FIRST_ORDER`` skipped for ``linf``).

    Args:
      metrics: metrics (default :func:`jaxlineage.similarity.all_metrics`).
      modes: modes (default all three).
      tap, alphas, **kwargs: as in :class:`LearningFree`; all rows share them, so
        the protocol scores them all in one pass.

    Returns:
      One :class:`LearningFree` per (metric, mode), metric-major.
    """
    metrics = similarity_lib.all_metrics() if metrics is None else metrics
    if isinstance(metrics, (str, similarity_lib.Metric, similarity_lib.MetricFn)):
        metrics = (metrics,)
    if isinstance(modes, (str, Mode)):
        modes = (modes,)
    out = []
    for m in metrics:
        m = similarity_lib.get(m)
        for mode in modes:
            mode = linearize.as_mode(mode)
            if mode is Mode.FIRST_ORDER and not m.differentiable:
                continue
            out.append(LearningFree(m, mode, tap=tap, alphas=alphas, **kwargs))
    if not out:
        raise ValueError("no (metric, mode) pair is defined")
    return out


# --------------------------------------------------------------------------- weight space


def _shared_leaves(scorer: str, cp: Population, qp: Population) -> tuple[tuple, tuple, int]:
    """Leaves of equal path and shape; a differing shape outside the head raises naming both models."""
    cl = {path_str(p): (p, l) for p, l in jax.tree_util.tree_flatten_with_path(cp.params)[0]}
    ql = {path_str(p): (p, l) for p, l in jax.tree_util.tree_flatten_with_path(qp.params)[0]}
    cs, qs, d = [], [], 0
    for key in cl:
        if key not in ql:
            continue
        (path, a), (_, b) = cl[key], ql[key]
        if np.shape(a)[1:] != np.shape(b)[1:]:
            if _is_head(path):
                continue
            raise ScorerError(
                f"{scorer}: candidate {cp.ids[0]!r} and query {qp.ids[0]!r} differ at {key}:"
                f" shapes {np.shape(a)[1:]} and {np.shape(b)[1:]}"
            )
        if not jnp.issubdtype(jnp.result_type(a), jnp.inexact):
            continue
        cs.append(a)
        qs.append(b)
        d += int(np.prod(np.shape(a)[1:]))
    if not cs:
        raise ScorerError(f"{scorer}: candidate {cp.ids[0]!r} and query {qp.ids[0]!r} share no parameter leaf")
    return tuple(cs), tuple(qs), d


@jax.jit
def _sq_distances(cands, queries):
    """``[K, M]`` sums of squared differences over the leaves, one candidate at a time (bounded memory)."""

    def one(c_leaves):
        tot = 0.0
        for c, q in zip(c_leaves, queries):
            diff = (q - c[None]).reshape(q.shape[0], -1).astype(jnp.float32)
            tot = tot + jnp.sum(diff * diff, axis=1)
        return tot

    return jax.lax.map(one, cands)


@jax.jit
def _cosines(cands, queries):
    dot = sum(
        c.reshape(c.shape[0], -1).astype(jnp.float32) @ q.reshape(q.shape[0], -1).astype(jnp.float32).T
        for c, q in zip(cands, queries)
    )
    nc = jnp.sqrt(sum(jnp.sum(jnp.square(c.reshape(c.shape[0], -1).astype(jnp.float32)), axis=1) for c in cands))
    nq = jnp.sqrt(sum(jnp.sum(jnp.square(q.reshape(q.shape[0], -1).astype(jnp.float32)), axis=1) for q in queries))
    return dot / jnp.maximum(nc[:, None] * nq[None, :], jnp.finfo(jnp.float32).tiny)


class WeightL2(Scorer):
    r"""Weight-space distance baseline: the negative root-mean-square parameter difference.

    .. math:: S[k, m] = -\sqrt{\tfrac1D \sum_{i} (\theta_{c_k, i} - \theta_{q_m, i})^2}

    over the ``D`` entries of the shared leaves (same path and shape; a head of
    another size is left out). Readable between populations of one architecture.
    """

    name = "weight L2"

    def readable(self, candidates: Population, queries: Population) -> bool:
        return weight_comparable(candidates, queries)

    def score_block(self, candidates: Population, queries: Population, *, probe: Any) -> np.ndarray:
        del probe
        cs, qs, d = _shared_leaves(self.name, candidates, queries)
        return -np.sqrt(np.asarray(_sq_distances(cs, qs), np.float64) / d)


class WeightCosine(Scorer):
    r"""Weight-space cosine baseline over the shared leaves, flattened into one vector per model.

    .. math:: S[k, m] = \frac{\langle \theta_{c_k}, \theta_{q_m} \rangle}{\|\theta_{c_k}\| \|\theta_{q_m}\|}

    Readable between populations of one architecture.
    """

    name = "weight cosine"

    def readable(self, candidates: Population, queries: Population) -> bool:
        return weight_comparable(candidates, queries)

    def score_block(self, candidates: Population, queries: Population, *, probe: Any) -> np.ndarray:
        del probe
        cs, qs, _ = _shared_leaves(self.name, candidates, queries)
        return np.asarray(_cosines(cs, qs), np.float64)


# --------------------------------------------------------------------------- output space


@functools.partial(jax.jit, static_argnames=("logits_fn",))
def _log_probs(logits_fn, params, x):
    """``[P, R, C]`` log-softmax outputs over the last axis, one model at a time.

    ``R = N`` for a classifier's ``[N, C]`` logits; a language model's ``[N, T, V]`` next-token logits
    give ``R = N T`` rows (one distribution per position).
    """

    def one(p):
        logits = logits_fn(p, x)
        return jax.nn.log_softmax(logits.reshape(-1, logits.shape[-1]), axis=-1)

    return jax.lax.map(one, params)


@jax.jit
def _agreement(lc, lq):
    yc, yq = jnp.argmax(lc, -1), jnp.argmax(lq, -1)  # [K, N], [M, N]
    return jax.lax.map(lambda y: jnp.mean(y[None, :] == yq, axis=1), yc)


@jax.jit
def _neg_kl(lc, lq):
    """``-mean_n KL(p_c || p_q)`` for every pair, ``[K, M]``."""

    def one(l):
        return -jnp.mean(jnp.sum(jnp.exp(l)[None] * (l[None] - lq), axis=-1), axis=1)

    return jax.lax.map(one, lc)


def _output_size(p: Population, probe: Any) -> tuple:
    one = jax.tree.map(lambda a: a[0], p.params)
    try:
        out = jax.eval_shape(p.logits_fn, one, jax.ShapeDtypeStruct(np.shape(probe), jnp.result_type(probe)))
    except Exception as e:
        raise ScorerError(
            f"model {p.ids[0]!r} ({p.arch}): logits_fn fails on the probe of shape {np.shape(probe)}:"
            f" {type(e).__name__}: {e}"
        ) from e
    return tuple(out.shape[1:])


class _OutputScorer(Scorer):
    def readable(self, candidates: Population, queries: Population) -> bool:
        return True  # decided in score_block, which needs the probe

    def _probs(self, candidates: Population, queries: Population, probe: Any):
        sc, sq = _output_size(candidates, probe), _output_size(queries, probe)
        if sc != sq:
            raise _Unreadable(
                f"{self.name} cannot compare outputs of size {sc} (candidate {candidates.ids[0]!r})"
                f" and {sq} (query {queries.ids[0]!r})"
            )
        x = jnp.asarray(probe)
        return _log_probs(candidates.logits_fn, candidates.params, x), _log_probs(queries.logits_fn, queries.params, x)

    def score(self, candidates: ModelSet, queries: ModelSet, *, probe: Any, unreadable: str = "raise") -> np.ndarray:
        check_models(self.name, candidates, queries)
        out = np.full((len(candidates), len(queries)), np.nan)
        for ko, cp, mo, qp in _blocks(candidates, queries):
            try:
                out[ko : ko + len(cp), mo : mo + len(qp)] = self.score_block(cp, qp, probe=probe)
            except _Unreadable as e:
                if unreadable == "raise":
                    raise ScorerError(str(e)) from None
        return out


class _Unreadable(Exception):
    pass


class OutputAgreement(_OutputScorer):
    r"""Output baseline: the fraction of probe inputs on which the two models predict the same class.

    .. math:: S[k, m] = \frac1N \sum_n [\arg\max f_{c_k}(x_n) = \arg\max f_{q_m}(x_n)]

    Readable when the two models have the same number of outputs (class indices
    are compared as they are, so across tasks it compares label ids).
    """

    name = "output agreement"

    def score_block(self, candidates: Population, queries: Population, *, probe: Any) -> np.ndarray:
        lc, lq = self._probs(candidates, queries, probe)
        return np.asarray(_agreement(lc, lq), np.float64)


class OutputKL(_OutputScorer):
    r"""Output baseline: the negative mean KL divergence of the candidate's softmax from the query's.

    .. math:: S[k, m] = -\frac1N \sum_n \mathrm{KL}\big(\sigma(f_{c_k}(x_n)) \,\big\|\, \sigma(f_{q_m}(x_n))\big)

    KL(candidate ‖ query) is the direction a distilled student minimises toward
    its teacher (the candidate), so a derived model scores high; it is not
    symmetric. Readable when the output sizes agree.
    """

    name = "output KL"

    def score_block(self, candidates: Population, queries: Population, *, probe: Any) -> np.ndarray:
        lc, lq = self._probs(candidates, queries, probe)
        return np.asarray(_neg_kl(lc, lq), np.float64)


def baselines() -> list[Scorer]:
    """The trivial baselines every table shows: weight L2 and cosine, output agreement and KL."""
    return [WeightL2(), WeightCosine(), OutputAgreement(), OutputKL()]


# --------------------------------------------------------------------------- registration


def _learning_free_rows(settings: Mapping[str, Any]) -> list[registry.Row]:
    """The provenance section's learning-free rows: ``metrics`` in every mode at a fixed ``alpha`` (nothing tuned)."""
    lf = learning_free(tuple(settings["metrics"]), alphas=(settings["alpha"],))
    return [registry.Row(f"{s.metric.name} {s.mode.value}", s) for s in lf]


registry.register(
    "learning_free",
    learning_free,
    family="learning_free",
    label="learning_free",
    provenance=_learning_free_rows,
    description="Neural Lineage's table: every metric x mode, alpha chosen per fold on the training folds",
)
registry.register(
    "baselines",
    baselines,
    family="baseline",
    label="baselines",
    provenance=lambda settings: [registry.Row(s.name, s) for s in baselines()],
    description="weight L2 / cosine, output agreement / KL: the trivial baselines every table shows",
)
