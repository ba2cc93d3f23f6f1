r"""Exact and calibrated p-values, and "no parent" answers.

Three pieces, each usable alone:

* **Permutation test** (:func:`permutation_test`, :class:`PermutationTestScorer`):
  for two models of one architecture, a statistic :math:`\phi(\theta_c, \theta_q)`
  and :math:`T` uniformly random hidden-unit permutations :math:`\sigma_t` of the
  query (a :mod:`jaxlineage.permutations` spec says which axes share one) give

  .. math::
    p = \frac{1 + \#\{t : \phi_t \ge \phi_{obs}\}}{T + 1}.

  Null hypothesis :math:`H_0`: the query's parameters are independent of the
  candidate's and their law is invariant under the group :math:`G` the test
  randomises over (true for independent initialisations with i.i.d. entries and
  a training procedure that is equivariant to unit order). Under :math:`H_0`,
  :math:`\phi_{obs}, \phi_1, \dots, \phi_T` are exchangeable, so
  :math:`P(p \le \alpha) \le \alpha` exactly, for every :math:`T`.

  A statistic invariant to *every* hidden-unit permutation of the query takes
  the same value on the whole orbit, so it cannot be tested by permuting those
  units (``p = 1`` always). :class:`Statistic` offers the two ways out of the
  anchor (Zhu et al., 2025):

  - ``WEIGHT_CORR`` (their constrained :math:`\phi_U`/CSW family): the mean
    Pearson correlation of the two models' producing kernels in stored unit
    order. Exact under :math:`H_0` with :math:`G` = the spec's permutations;
    no power when the query's units were permuted.
  - ``MATCHED`` (their unconstrained :math:`\phi_{MATCH}`, gate vs up
    projections, in our networks' terms): each hidden layer's units are matched
    to the candidate's twice, by Hungarian matching on two disjoint halves of
    the layer's incoming weights (even / odd input rows; inputs aligned by the
    previous layer's matching); :math:`\phi` is the mean fraction of units on
    which the two matchings agree. Invariant to the query's unit order (keeps
    its power on permuted children). Randomisation: a random permutation of the
    second view's unit labels per layer; :math:`H_0` then also asks the two
    halves of a unit's incoming weights to be exchangeable across units
    independently (exact at an i.i.d. initialisation; after training an
    approximation, which the calibration in BUILD_NOTES.md measures).

* **Empirical null for any scorer** (:func:`conformal_pvalues`,
  :class:`CalibratedScorer`): the conformal p-value of a score :math:`s`
  against the scores :math:`s_1..s_n` of pairs known to be unrelated,

  .. math::
    p(s) = \frac{1 + \#\{i : s_i \ge s\}}{n + 1},

  valid (:math:`P(p \le \alpha) \le \alpha`) when the tested unrelated pair's
  score is exchangeable with the calibration scores (calibration pairs disjoint
  from the tested ones, drawn from the same population of unrelated pairs).

* **Open set** (:func:`holm`, :func:`open_set_decisions`): per query,
  Holm-Bonferroni over the :math:`K` candidates' p-values at level
  :math:`\alpha` (family-wise error over candidates at most :math:`\alpha`);
  the answer is the highest-scoring rejected candidate, or :data:`NO_PARENT`
  if none is rejected. :meth:`CalibratedScorer.decide` and
  :meth:`PermutationTestScorer.decide` give these answers to the evaluation
  protocol's open-set figures.

:func:`open_set_scenario` builds the open-set question on a zoo with what
"related" means spelled out by :meth:`jaxlineage.graph.LineageGraph.relation`
(:func:`jaxlineage.eval.scenarios.identify` with ``open_set=True`` decides it).

References:
  Zhu, Zhang, Hashimoto, Liang, "Independence Tests for Language Models",
  ICML 2025 (exact permutation p-values, Sec. 3; CSW and MATCH statistics).
  Model Provenance Testing for Large Language Models, NeurIPS 2025
  (Holm-Bonferroni over candidates; "no parent").
  Holm, "A simple sequentially rejective multiple test procedure", Scand. J.
  Stat. 6 (1979).
  Vovk, Gammerman, Shafer, "Algorithmic Learning in a Random World" (2005)
  (conformal p-values).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlineage import matching
from jaxlineage import permutations as perm_lib
from jaxlineage.errors import JaxlineageError, path_str
from jaxlineage.eval import registry
from jaxlineage.eval import scenarios as scenarios_lib
from jaxlineage.eval.core import NO_PARENT, ModelSet, Population, Scenario, Scorer, ScorerError

__all__ = [
    "CalibratedScorer",
    "MatchedScorer",
    "OpenSet",
    "PValueError",
    "PermutationTestScorer",
    "Statistic",
    "TestResult",
    "binomial_margin",
    "calibration_table",
    "conformal_pvalues",
    "exact_pvalue",
    "holm",
    "matched_statistic",
    "open_set_decisions",
    "open_set_scenario",
    "permutation_test",
    "permutation_test_scorer",
    "population_spec",
    "qq_plot",
    "spec_for",
]

PyTree = Any


class PValueError(JaxlineageError):
    """A p-value cannot be computed from what was given; the message names the model or set."""


class Statistic(enum.Enum):
    """The permutation test's statistic (see the module docstring).

    * ``WEIGHT_CORR`` (default): mean Pearson correlation of the producing kernels
      in stored order; exact under independent initialisation, blind to permuted
      queries.
    * ``MATCHED``: agreement of two Hungarian matchings of each layer's units
      (disjoint halves of the incoming weights); invariant to the query's unit
      order; its permutation p-value is exact only at an i.i.d. initialisation
      (see the module docstring), so prefer it with an empirical null
      (:class:`MatchedScorer` in a :class:`CalibratedScorer`) on trained models.
    """

    MATCHED = "matched"
    WEIGHT_CORR = "weight_corr"


class TestResult(NamedTuple):
    """One permutation test.

    Attributes:
      statistic: :math:`\\phi_{obs}`.
      pvalue: :math:`(1 + \\#\\{\\phi_t \\ge \\phi_{obs}\\}) / (T + 1)`.
      null: ``[T]`` the statistics of the permuted queries.
    """

    statistic: float
    pvalue: float
    null: np.ndarray


# --------------------------------------------------------------------------- p-value formulas


def exact_pvalue(observed: Any, null: Any) -> np.ndarray:
    """The permutation (or conformal) p-value :math:`(1 + \\#\\{null \\ge obs\\}) / (n + 1)`.

    Args:
      observed: ``[...]`` observed statistics.
      null: ``[..., n]`` null statistics (broadcast against ``observed[..., None]``).

    Returns:
      ``[...]`` p-values in ``[1 / (n + 1), 1]``.
    """
    observed = np.asarray(observed, np.float64)
    null = np.asarray(null, np.float64)
    n = null.shape[-1]
    return (1.0 + np.sum(null >= observed[..., None], axis=-1)) / (n + 1.0)


def conformal_pvalues(scores: Any, null_scores: Any, *, name: str = "scores") -> np.ndarray:
    """Conformal p-values of scores against the scores of known-unrelated pairs.

    .. math::
      p(s) = \\frac{1 + \\#\\{i : s_i \\ge s\\}}{n + 1}

    Higher scores mean more related. Valid when the tested pair, if unrelated,
    is exchangeable with the calibration pairs (disjoint from the tested ones).

    Args:
      scores: ``[...]`` scores to test (NaN stays NaN).
      null_scores: ``[n]`` scores of unrelated calibration pairs (NaNs dropped).
      name: what the null belongs to, for the error message.

    Returns:
      ``[...]`` p-values.

    Raises:
      PValueError: the calibration set is empty.
    """
    null = np.asarray(null_scores, np.float64).reshape(-1)
    null = np.sort(null[np.isfinite(null)])
    if null.size == 0:
        raise PValueError(f"{name}: empty calibration set (no finite score of an unrelated pair)")
    s = np.asarray(scores, np.float64)
    ge = null.size - np.searchsorted(null, s, side="left")  # #{null >= s}
    return np.where(np.isnan(s), np.nan, (1.0 + ge) / (null.size + 1.0))


def holm(pvalues: Any, *, alpha: float) -> np.ndarray:
    """Holm-Bonferroni over the candidates (axis 0), per query.

    Sort the :math:`K` p-values of a query ascending, :math:`p_{(1)} \\le \\dots`;
    reject :math:`H_{(1)}, \\dots, H_{(j)}` for the largest :math:`j` with
    :math:`p_{(i)} \\le \\alpha / (K - i + 1)` for every :math:`i \\le j`. Controls
    the family-wise error over the candidates at :math:`\\alpha`. NaN p-values
    (pairs the test cannot read) are never rejected and do not count in ``K``.

    Args:
      pvalues: ``[K, M]`` (or ``[K]``) p-values.
      alpha: the family-wise level.

    Returns:
      ``[K, M]`` bool, rejected nulls (candidate declared related).
    """
    p = np.asarray(pvalues, np.float64)
    squeeze = p.ndim == 1
    p = p.reshape(p.shape[0], -1)
    out = np.zeros(p.shape, bool)
    for m in range(p.shape[1]):
        ok = np.flatnonzero(np.isfinite(p[:, m]))
        order = ok[np.argsort(p[ok, m], kind="stable")]
        k = len(order)
        for i, c in enumerate(order):
            if p[c, m] > alpha / (k - i):
                break
            out[c, m] = True
    return out[:, 0] if squeeze else out


def open_set_decisions(pvalues: Any, scores: Any | None = None, *, alpha: float) -> np.ndarray:
    """A parent or :data:`NO_PARENT` per query: Holm over candidates, then the best rejected one.

    Args:
      pvalues: ``[K, M]`` p-values.
      scores: ``[K, M]`` scores (higher = more related) that choose among the
        rejected candidates; default ``-pvalues``.
      alpha: the family-wise level of the Holm procedure.

    Returns:
      ``[M]`` candidate index or :data:`NO_PARENT`.
    """
    p = np.asarray(pvalues, np.float64)
    s = -p if scores is None else np.asarray(scores, np.float64)
    reject = holm(p, alpha=alpha)
    masked = np.where(reject, np.nan_to_num(s, nan=-np.inf), -np.inf)
    return np.where(reject.any(0), np.argmax(masked, axis=0), NO_PARENT)


def binomial_margin(alpha: float, n: int, *, z: float = 1.96) -> float:
    """The 95 % margin of a binomial rate at ``alpha`` over ``n`` trials, :math:`z\\sqrt{\\alpha(1-\\alpha)/n}`."""
    return float(z * np.sqrt(alpha * (1 - alpha) / max(n, 1)))


def calibration_table(pvalues: Any, *, alphas: Sequence[float] = (0.01, 0.05, 0.1)) -> list[dict]:
    """The fraction of null p-values at or below each alpha, with the binomial margin and a verdict.

    Returns:
      ``[{"alpha", "n", "rejected", "rate", "margin", "ok"}]``; ``ok`` when
      ``rate <= alpha + margin``.
    """
    p = np.asarray(pvalues, np.float64).reshape(-1)
    p = p[np.isfinite(p)]
    rows = []
    for a in alphas:
        r = int(np.sum(p <= a))
        m = binomial_margin(a, p.size)
        rows.append(
            {
                "alpha": a,
                "n": int(p.size),
                "rejected": r,
                "rate": r / max(p.size, 1),
                "margin": m,
                "ok": r / max(p.size, 1) <= a + m,
            }
        )
    return rows


def qq_plot(pvalues: Mapping[str, Any] | Any, path: str, *, title: str = "p-values under the null") -> str:
    """A QQ plot of p-values against the uniform distribution, written as a PNG.

    Args:
      pvalues: one ``[n]`` array, or ``{label: [n]}`` for several curves.
      path: the PNG's path.
      title: the plot's title.

    Returns:
      ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = pvalues if isinstance(pvalues, Mapping) else {"p": pvalues}
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    for label, p in curves.items():
        p = np.sort(np.asarray(p, np.float64).reshape(-1))
        p = p[np.isfinite(p)]
        u = (np.arange(1, p.size + 1)) / (p.size + 1)
        ax.plot(u, p, ".", ms=2, label=f"{label} (n={p.size})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="uniform")
    ax.set_xlabel("uniform quantile")
    ax.set_ylabel("p-value quantile")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- permutation test


def spec_for(arch: str, params: PyTree) -> dict:
    """The permutation spec of one model of a :mod:`jaxlineage.nets` architecture, from its variables alone.

    Args:
      arch: ``"mlp"``, ``"convnet"`` or ``"resnet18"`` (a :class:`~jaxlineage.eval.core.Population`'s ``arch``).
      params: one model's variables.

    Raises:
      PermutationError: an architecture without a description.
    """
    return perm_lib.spec_from_variables(arch, params)


def population_spec(pop: Population, probe: Any = None) -> perm_lib.PermutationSpec:
    """The permutation spec of a population: its own ``perm_spec``, else one inferred for a Dense/Conv chain.

    The parameter shapes may allow several layer orders (two hidden layers of one square shape): with
    ``probe`` (inputs of the models' task), the first order whose random permutations keep the models'
    function on it (:func:`~jaxlineage.permutations.check_spec`); without, there must be one order.

    Raises:
      PValueError: no spec (names the models; pass ``perm_spec=`` when building them), several orders and no
        ``probe``, or no order that keeps the function.
    """
    if pop.perm_spec is not None:
        return pop.perm_spec
    none = PValueError(
        f"models {pop.ids[0]!r}... ({pop.arch}) have no permutation spec and none can be inferred (not a chain"
        " of Dense/Conv layers); pass perm_spec= when building the Models"
    )
    if probe is None:
        specs = perm_lib.infer_specs(pop.one(0))
        if not specs:
            raise none
        if len(specs) > 1:
            raise PValueError(
                f"models {pop.ids[0]!r}... ({pop.arch}): the parameter shapes allow {len(specs)} layer orders;"
                " give probe= to pick the one that keeps the function, or pass perm_spec= when building the Models"
            )
        return specs[0]
    spec, errors = perm_lib.infer_checked_spec(
        pop.logits_fn, pop.one(0), probe[: min(len(probe), 64)], key=jax.random.key(0)
    )
    if spec is not None:
        return spec
    if not errors:
        raise none
    raise PValueError(
        f"models {pop.ids[0]!r}... ({pop.arch}): none of the {len(errors)} inferred layer orders keeps the function"
        " (skip connections, attention or shared units?); pass perm_spec= when building the Models"
    )


def _spec(spec_fn, pop: Population, probe: Any = None) -> perm_lib.PermutationSpec:
    return population_spec(pop, probe) if spec_fn is None else spec_fn(pop.arch, pop.one(0))


def _leaf(tree: PyTree, path: Sequence[str]) -> jax.Array:
    for k in path:
        tree = tree[k]
    return tree


def _producers(spec: perm_lib.PermutationSpec, params: PyTree) -> list[tuple[str, tuple[str, ...], str | None, int]]:
    """Per entry: (name, the kernel whose last axis produces its units, the entry permuting that kernel's input
    axis, its tile)."""
    out = []
    for name, (_, axes) in spec.items():
        prod = next((a for a in axes if a.axis == np.ndim(_leaf(params, a.path)) - 1 and a.path[-1] == "kernel"), None)
        if prod is None:
            continue
        nd = np.ndim(_leaf(params, prod.path))
        src, tile = None, 1
        for other, (_, oaxes) in spec.items():
            for a in oaxes:
                if a.path == prod.path and a.axis == nd - 2:
                    src, tile = other, a.tile
        out.append((name, prod.path, src, tile))
    return out


def _standardised(w: jax.Array) -> jax.Array:
    w = w - w.mean()
    return w / jnp.sqrt(jnp.sum(w * w) + 1e-30)


def _weight_corr_parts(spec, producers, c: PyTree, q: PyTree):
    """Per producing kernel ``[rows, units]``: the candidate's and query's standardised kernels, and how to
    index the query's rows (input entry, tile) and columns (output entry) by the spec's permutations."""
    order = {name: i for i, name in enumerate(spec)}
    parts = []
    for name, path, src, tile in producers:
        wc, wq = _leaf(c, path), _leaf(q, path)
        # [..., in, units] -> [spatial, in, units]: rows permute by the input entry within each spatial block
        shape = (-1, wc.shape[-2], wc.shape[-1]) if wc.ndim > 2 else (1,) + wc.shape
        parts.append(
            (
                _standardised(wc).reshape(shape),
                _standardised(wq).reshape(shape),
                None if src is None else order[src],
                tile,
                order[name],
            )
        )
    return parts


def _weight_corr_perm(parts, perms) -> jax.Array:
    """Mean Pearson correlation of the producing kernels, the query's permuted by ``perms`` (``None``: not)."""
    vals = []
    for wc, wq, src, tile, out in parts:
        if src is None:
            # Inputs not permuted: one Gram matrix G[u, v] = <wc[..., u], wq[..., v]> and a gather per permutation.
            gram = jnp.einsum("siu,siv->uv", wc, wq)
            vals.append(jnp.trace(gram) if perms is None else jnp.sum(gram[jnp.arange(gram.shape[0]), perms[out]]))
            continue
        if perms is not None:
            if src is not None:
                pin = perms[src]
                if tile > 1:
                    # a dense layer after a flattened conv: rows (position, channel) -> [tile, in/tile]
                    units = pin.shape[0]
                    idx = (jnp.arange(tile)[:, None] * units + pin[None, :]).ravel()
                    wq = jnp.take(wq, idx, axis=1)
                else:
                    wq = jnp.take(wq, pin, axis=1)
            wq = jnp.take(wq, perms[out], axis=2)
        vals.append(jnp.sum(wc * wq))
    return jnp.mean(jnp.stack(vals))


@functools.lru_cache(maxsize=64)
def _weight_corr_null_fn(chunk: int, meta: tuple):
    @jax.jit
    def run(arrays, perms):
        parts = [(wc, wq) + m for (wc, wq), m in zip(arrays, meta)]
        obs = _weight_corr_perm(parts, None)
        null = jax.lax.map(lambda ps: _weight_corr_perm(parts, ps), perms, batch_size=chunk)
        return obs, null

    return run


def _columns(w: np.ndarray) -> np.ndarray:
    """A kernel ``[..., in, units]`` as ``[rows, units]`` with rows ordered (spatial..., in)."""
    return w.reshape(-1, w.shape[-1])


def _matchings(producers, c: PyTree, q: PyTree) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer, the two views' matchings (even / odd input rows), inputs aligned by the full-row matching."""
    full: dict[str, np.ndarray] = {}
    views = []
    for name, path, src, tile in producers:
        wc = np.asarray(_leaf(c, path), np.float64)
        wq = np.asarray(_leaf(q, path), np.float64)
        if src is not None and src in full:
            pi = full[src]
            wq = np.take(wq, matching.tile_index(pi, pi.size, tile), axis=wq.ndim - 2)
        ac, aq = _columns(wc), _columns(wq)
        full[name] = matching.match_columns(ac, aq)
        views.append((matching.match_columns(ac[0::2], aq[0::2]), matching.match_columns(ac[1::2], aq[1::2])))
    return views


@functools.partial(jax.jit, static_argnums=(2,))
def _agreement_null(views_a: tuple, views_b: tuple, t: int, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    def agree(sigmas):
        return jnp.mean(jnp.stack([jnp.mean(a == s[b]) for a, b, s in zip(views_a, views_b, sigmas)]))

    obs = agree(tuple(jnp.arange(a.size) for a in views_a))
    keys = jax.random.split(key, t)
    sig = jax.vmap(
        lambda k: tuple(jax.random.permutation(jax.random.fold_in(k, i), a.size) for i, a in enumerate(views_a))
    )(keys)
    return obs, jax.vmap(agree)(sig)


def _check_pair(spec, candidate: PyTree, query: PyTree, names: tuple[str, str]) -> None:
    fc = jax.tree_util.tree_flatten_with_path(candidate)[0]
    fq = dict(jax.tree_util.tree_flatten_with_path(query)[0])
    for path, leaf in fc:
        if path not in fq:
            raise PValueError(
                f"permutation test: {names[1]!r} lacks {path_str(path)}, which {names[0]!r} has (architectures differ)"
            )
        if np.shape(fq[path]) != np.shape(leaf):
            raise PValueError(
                f"permutation test: {names[0]!r} and {names[1]!r} differ at {path_str(path)}:"
                f" {np.shape(leaf)} vs {np.shape(fq[path])} (architectures differ)"
            )
    for _, (units, axes) in spec.items():
        for a in axes:
            try:
                leaf = _leaf(query, a.path)
            except (KeyError, TypeError):
                raise PValueError(f"permutation spec names {'/'.join(a.path)}, which {names[1]!r} lacks") from None
            if np.shape(leaf)[a.axis] != units * a.tile:
                raise PValueError(
                    f"permutation spec: {names[1]!r} has {np.shape(leaf)[a.axis]} units on axis {a.axis}"
                    f" of {'/'.join(a.path)}, the spec {units * a.tile}"
                )


def permutation_test(
    candidate: PyTree,
    query: PyTree,
    spec: perm_lib.PermutationSpec,
    *,
    key: jax.Array,
    num_permutations: int = 999,
    statistic: Statistic = Statistic.WEIGHT_CORR,
    names: tuple[str, str] = ("candidate", "query"),
    chunk: int = 128,
) -> TestResult:
    """Exact permutation p-value of "the query shares no initialisation with the candidate".

    .. math::
      p = \\frac{1 + \\#\\{t \\le T : \\phi(\\theta_c, \\sigma_t \\theta_q) \\ge \\phi(\\theta_c, \\theta_q)\\}}{T + 1}

    Null hypothesis: :math:`\\theta_q` is independent of :math:`\\theta_c` and its law
    is invariant under the randomised permutations (independent initialisations;
    for ``MATCHED`` also view-wise, see the module docstring). Under it
    :math:`P(p \\le \\alpha) \\le \\alpha` for every :math:`T`.

    Args:
      candidate, query: one model's variables each, same architecture.
      spec: the permutation spec (:func:`jaxlineage.permutations.permutation_spec`, or your own).
      key: the permutations' key.
      num_permutations: :math:`T`.
      statistic: :class:`Statistic`.
      names: the two models' names for error messages.
      chunk: permuted copies evaluated at once (``WEIGHT_CORR``; bounds memory).

    Returns:
      :class:`TestResult` ``(statistic, pvalue, null [T])``.

    Raises:
      PValueError: the two models' parameter trees differ (names the model and path) or
        the spec does not fit them.
    """
    statistic = Statistic(statistic)
    if num_permutations < 1:
        raise PValueError(f"permutation test of {names[1]!r}: num_permutations must be >= 1, got {num_permutations}")
    _check_pair(spec, candidate, query, names)
    producers = tuple(_producers(spec, candidate))
    if not producers:
        raise PValueError(f"permutation test of {names[1]!r}: the spec names no producing kernel")
    if statistic is Statistic.WEIGHT_CORR:
        parts = _weight_corr_parts(spec, producers, candidate, query)
        keys = jax.random.split(key, num_permutations)
        perms = jax.vmap(lambda k: perm_lib.random_permutations(spec, k))(keys)
        meta = tuple((src, tile, out) for _, _, src, tile, out in parts)
        obs, null = _weight_corr_null_fn(int(chunk), meta)([(wc, wq) for wc, wq, *_ in parts], perms)
    else:
        views = _matchings(producers, candidate, query)
        obs, null = _agreement_null(
            tuple(jnp.asarray(a) for a, _ in views), tuple(jnp.asarray(b) for _, b in views), int(num_permutations), key
        )
    obs, null = float(obs), np.asarray(null, np.float64)
    return TestResult(obs, float(exact_pvalue(obs, null)), null)


def _encode(pvalues: np.ndarray, stats: np.ndarray, t: int, lo: float, hi: float) -> np.ndarray:
    # Score = (T + 1)(1 - p) + squashed statistic in [0, 1): ranks by p, then by the statistic,
    # and decide() reads p back exactly from the integer part.
    frac = np.clip((stats - lo) / (hi - lo), 0.0, 1.0) * 0.999
    return np.round((t + 1) * (1.0 - pvalues)) + frac


class PermutationTestScorer(Scorer):
    """The permutation test as a :class:`~jaxlineage.eval.core.Scorer`, with Holm's open-set answers.

    ``score`` returns :math:`(T + 1)(1 - p)` plus the statistic squashed into
    ``[0, 1)`` (higher = more related; ties in ``p`` broken by the statistic);
    ``decide`` reads the p-values back and applies :func:`open_set_decisions`
    at ``alpha``. Only equal architectures are readable.

    Args:
      key: the permutations' key (pair ``(k, m)`` of a population block uses
        ``fold_in(fold_in(key, k), m)``, its indices within the block).
      num_permutations: :math:`T`.
      statistic: :class:`Statistic`.
      alpha: the open-set level.
      spec_fn: ``spec_fn(arch, variables) -> spec``; default :func:`population_spec` (the models' own
        ``perm_spec``, else one inferred for a Dense/Conv chain).
    """

    learned = False

    def __init__(
        self,
        *,
        key: jax.Array,
        num_permutations: int = 999,
        statistic: Statistic = Statistic.WEIGHT_CORR,
        alpha: float = 0.05,
        spec_fn: Callable[[str, PyTree], perm_lib.PermutationSpec] | None = None,
    ):
        self.key = key
        self.num_permutations = int(num_permutations)
        self.statistic = Statistic(statistic)
        self.alpha = float(alpha)
        self.spec_fn = spec_fn
        self.name = f"perm-test[{self.statistic.value},T={self.num_permutations}]"
        self.last_pvalues: np.ndarray | None = None

    def readable(self, candidates: Population, queries: Population) -> bool:
        return candidates.signature == queries.signature

    def pvalues(
        self, candidates: Population, queries: Population, *, probe: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(p [K, M], statistic [K, M])`` of every pair of two same-architecture populations (``probe``: where
        an inferred spec is checked, see :func:`population_spec`)."""
        cs = [jax.tree.map(lambda a, i=i: a[i], candidates.params) for i in range(len(candidates))]
        qs = [jax.tree.map(lambda a, i=i: a[i], queries.params) for i in range(len(queries))]
        spec = _spec(self.spec_fn, candidates, probe)
        p = np.zeros((len(cs), len(qs)))
        st = np.zeros_like(p)
        for k, c in enumerate(cs):
            for m, q in enumerate(qs):
                r = permutation_test(
                    c,
                    q,
                    spec,
                    key=jax.random.fold_in(jax.random.fold_in(self.key, k), m),
                    num_permutations=self.num_permutations,
                    statistic=self.statistic,
                    names=(candidates.ids[k], queries.ids[m]),
                )
                p[k, m], st[k, m] = r.pvalue, r.statistic
        return p, st

    def score_block(self, candidates: Population, queries: Population, *, probe: np.ndarray) -> np.ndarray:
        p, st = self.pvalues(candidates, queries, probe=probe)
        lo, hi = (0.0, 1.0) if self.statistic is Statistic.MATCHED else (-1.0, 1.0)
        return _encode(p, st, self.num_permutations, lo, hi)

    def to_pvalues(self, scores: np.ndarray) -> np.ndarray:
        """The p-values encoded in this scorer's scores."""
        s = np.asarray(scores, np.float64)
        return np.where(np.isnan(s), np.nan, (self.num_permutations + 1 - np.floor(s)) / (self.num_permutations + 1))

    def decide(self, scores: np.ndarray) -> np.ndarray:
        return open_set_decisions(self.to_pvalues(scores), scores, alpha=self.alpha)


def matched_statistic(candidate: PyTree, query: PyTree, spec: perm_lib.PermutationSpec) -> float:
    """The ``MATCHED`` statistic alone: mean agreement of the two views' Hungarian matchings.

    Invariant to the query's hidden-unit order; in ``[0, 1]``, about ``1 / units`` for
    unrelated models. Use it as a score with an empirical null
    (:class:`MatchedScorer` in a :class:`CalibratedScorer`).
    """
    views = _matchings(tuple(_producers(spec, candidate)), candidate, query)
    return float(np.mean([np.mean(a == b) for a, b in views]))


class MatchedScorer(Scorer):
    """Scores pairs of same-architecture models by :func:`matched_statistic` (invariant to unit order).

    Args:
      spec_fn: ``spec_fn(arch, variables) -> spec``; default :func:`population_spec` (the models' own
        ``perm_spec``, else one inferred for a Dense/Conv chain).
    """

    name = "matched-weights"

    def __init__(self, *, spec_fn: Callable[[str, PyTree], perm_lib.PermutationSpec] | None = None):
        self.spec_fn = spec_fn

    def readable(self, candidates: Population, queries: Population) -> bool:
        return PermutationTestScorer.readable(self, candidates, queries)  # type: ignore[arg-type]

    def score_block(self, candidates: Population, queries: Population, *, probe: np.ndarray) -> np.ndarray:
        cs = [jax.tree.map(lambda a, i=i: np.asarray(a[i]), candidates.params) for i in range(len(candidates))]
        qs = [jax.tree.map(lambda a, i=i: np.asarray(a[i]), queries.params) for i in range(len(queries))]
        spec = _spec(self.spec_fn, candidates, probe)
        return np.array([[matched_statistic(c, q, spec) for q in qs] for c in cs])


# --------------------------------------------------------------------------- calibrated scorers


@dataclasses.dataclass
class CalibratedScorer(Scorer):
    """Any fitted scorer turned into conformal p-values against known-unrelated pairs.

    ``score`` is the base scorer's (so closed-set accuracy is unchanged);
    :meth:`pvalues` maps scores to :func:`conformal_pvalues` against the null
    scores collected by :meth:`calibrate`; ``decide`` is Holm at ``alpha``
    (:func:`open_set_decisions`). A learned base is fitted by :meth:`fit`
    (training scenario only) and must be recalibrated afterwards on pairs
    disjoint from the tested ones.

    Attributes:
      base: the scorer to calibrate.
      alpha: the open-set level.
      null_scores: ``[n]`` scores of unrelated calibration pairs (set by :meth:`calibrate`).
        One pooled null: calibrate on pairs like the tested ones (same architectures),
        since scores of different architectures need not be comparable.
    """

    base: Scorer
    alpha: float = 0.05
    null_scores: np.ndarray | None = None

    def __post_init__(self):
        self.name = f"calibrated[{self.base.name}]"
        self.learned = bool(getattr(self.base, "learned", False))

    def readable(self, candidates: Population, queries: Population) -> bool:
        return self.base.readable(candidates, queries)

    def fit(self, train: Scenario, *, key: jax.Array) -> CalibratedScorer:
        return dataclasses.replace(self, base=self.base.fit(train, key=key))

    def score_block(self, candidates: Population, queries: Population, *, probe: np.ndarray) -> np.ndarray:
        return self.base.score_block(candidates, queries, probe=probe)

    def calibrate(
        self, candidates: ModelSet, queries: ModelSet, *, probe: np.ndarray, unrelated: np.ndarray | None = None
    ) -> CalibratedScorer:
        """Collects the null: the base's scores of the pairs known to be unrelated.

        Args:
          candidates, queries: calibration models, disjoint from the tested ones.
          probe: the probe inputs.
          unrelated: ``[K, M]`` bool, which pairs are unrelated (default: all).

        Returns:
          ``self`` with ``null_scores`` set.

        Raises:
          PValueError: no readable unrelated pair (names the first candidate).
        """
        s = self.base.score(candidates, queries, probe=probe, unreadable="nan")
        mask = np.ones(s.shape, bool) if unrelated is None else np.asarray(unrelated, bool)
        null = s[mask & np.isfinite(s)]
        if null.size == 0:
            raise PValueError(
                f"{self.name}: empty calibration set (no readable unrelated pair among candidates"
                f" {candidates.ids[:3]}... and queries {queries.ids[:3]}...)"
            )
        self.null_scores = np.sort(null)
        if 1.0 / (null.size + 1) > self.alpha:
            msg = (
                f"{self.name}: {null.size} calibration scores: the smallest conformal p-value is"
                f" 1/{null.size + 1} = {1 / (null.size + 1):.3g} > alpha = {self.alpha:g}, so no pair can be"
                f" declared related; calibrate on at least {math.ceil(1 / self.alpha) - 1} unrelated pairs"
            )
            warnings.warn(msg, stacklevel=2)
        return self

    def pvalues(self, scores: np.ndarray) -> np.ndarray:
        """Conformal p-values ``[...]`` of scores from this scorer."""
        if self.null_scores is None:
            raise PValueError(f"{self.name}: not calibrated (call calibrate on unrelated pairs first)")
        return conformal_pvalues(scores, self.null_scores, name=self.name)

    def decide(self, scores: np.ndarray) -> np.ndarray:
        return open_set_decisions(self.pvalues(scores), scores, alpha=self.alpha)

    def __repr__(self) -> str:
        return f"CalibratedScorer({self.base!r}, alpha={self.alpha})"


# --------------------------------------------------------------------------- open-set scenario

#: The open-set scenario and the queries it leaves out (:class:`jaxlineage.eval.scenarios.OpenSet`).
OpenSet = scenarios_lib.OpenSet


def open_set_scenario(
    zoo: Any,
    *,
    withheld: Sequence[str],
    candidates: str | Sequence[str] = "parent",
    queries: str | Sequence[str] = ("child", "independent"),
    task: str | None = None,
    probe_size: int = 512,
    name: str | None = None,
) -> OpenSet:
    """Open-set identify on a zoo with some parents withheld, "related" decided by the lineage graph.

    :func:`jaxlineage.eval.scenarios.open_set` (the one implementation) with the
    queries' ``kinds`` set to ``"known"`` (parent a candidate) / ``"no_parent"``
    (``zoo.graph.relation(c, q)`` is :attr:`~jaxlineage.graph.Relation.UNRELATED`
    for every candidate ``c``). A child of a withheld parent that shares an
    initialisation with a candidate (QUICK's parents come in init-twins) is
    related to it: it is neither, and is listed in ``related_withheld``.

    Args:
      zoo: a :class:`jaxlineage.zoo.Zoo`.
      withheld: ids of candidates to remove from the candidate groups.
      candidates, queries: group names (as :func:`jaxlineage.eval.scenarios.identify`).
      task: the queries' task (default the scenario builder's).
      probe_size: ``N``.
      name: the scenario's name.

    Returns:
      :class:`OpenSet`.

    Raises:
      PValueError: a withheld id is not a candidate, or no candidate is left.
    """
    try:
        os_ = scenarios_lib.open_set(
            zoo,
            withheld=withheld,
            candidates=candidates,
            queries=queries,
            task=task,
            probe_size=probe_size,
            name=name,
        )
    except ScorerError as e:
        raise PValueError(f"open_set_scenario: {e}") from e
    s = os_.scenario
    kinds = tuple("no_parent" if lab == NO_PARENT else "known" for lab in s.labels)
    return OpenSet(dataclasses.replace(s, kinds=kinds), os_.related_withheld, os_.relations)


# --------------------------------------------------------------------------- registration


def permutation_test_scorer(*, seed: int = 0, **kwargs) -> PermutationTestScorer:
    """:class:`PermutationTestScorer` with ``key = jax.random.key(seed)`` (the registry's factory)."""
    return PermutationTestScorer(key=jax.random.key(seed), **kwargs)


# Open-set answers with a p-value per pair: figures in benchmarks/pvalues.py and jaxlineage.verify, not
# run by the bench's presets (``bench=False``). CalibratedScorer wraps any registered scorer: not an entry.
registry.register(
    "permutation_test",
    permutation_test_scorer,
    family="pvalue",
    label="permutation test",
    bench=False,
    description="exact permutation test of hidden-unit order, Holm's open-set answers",
)
registry.register(
    "matched_weights",
    MatchedScorer,
    family="pvalue",
    label="matched weights",
    bench=False,
    description="agreement of two views' Hungarian matchings (invariant to the query's unit order)",
)
