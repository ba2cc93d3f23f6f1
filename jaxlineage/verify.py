r"""Answers for anyone's models: was B derived from A, and how sure? Which candidate is its parent?

Usage (``jaxlineage.verify`` is this module and its function; ``help(jaxlineage.verify.verify)``
shows the function alone)::

    verdict = jl.verify(sources, suspects, data=x, references=refs, alpha=0.05)
    print(verdict)  # per pair: each test's p-value, the combined p-value, DERIVED / no evidence
    parents = jl.identify(queries, candidates, data=x, references=refs).parents

:func:`verify` gives a :class:`Verdict` for every (source, suspect) pair: a p-value per
evidence test, one combined p-value, and a decision at level ``alpha``. :func:`identify`
turns the combined p-values into a parent or :data:`NO_PARENT` per query (Holm-Bonferroni
over the candidates). Models are :class:`jaxlineage.models.Models` (your linen / NNX
module or any apply function); ``data`` is a batch of inputs from the suspect's task.

The evidence battery is chosen from what each pair allows; every test has a stated null
hypothesis and a p-value valid under it:

* ``weight-perm`` (exact): the two models share a parameter signature and a permutation
  spec (inferred for Dense / Conv chains, or yours, checked to keep the function on
  ``data``). Statistic: mean correlation of the producing kernels in stored unit order;
  :math:`T` random hidden-unit permutations of the suspect give
  :math:`p = (1 + \#\{\phi_t \ge \phi\}) / (T + 1)`. H0: the suspect's weights are
  independent of the source's and their law is invariant to unit order (independent
  initialisations). Sensitive to fine-tuning, pruning, quantisation; blind to permuted
  copies and to models trained from scratch (extraction).
* reference tests (conformal): a statistic :math:`s(A, B)` (higher = more related) of the
  source against the suspect and against ``n`` **reference models** (independent models of
  the suspect's task and architecture): :math:`p = (1 + \#\{j : s(A, R_j) \ge s(A, B)\}) / (n + 1)`.
  H0: the suspect is exchangeable with the references (an independent model trained like
  them). Valid for any statistic; the smallest attainable p is :math:`1 / (n + 1)`:

  - ``output-kl``: :math:`-\mathrm{KL}(\sigma(f_A) \| \sigma(f_B))` on ``data``; sensitive
    to anything that keeps the source's function (fine-tuning, pruning, permutation,
    soft extraction);
  - ``output-agreement``: fraction of equal argmax predictions (label-only extraction);
  - ``matched-weights``: agreement of two Hungarian matchings of hidden units (same
    signature; invariant to unit order, so it holds on permuted copies);
  - ``taylor-l2``: Neural Lineage's first-order L2 score at the default tap (same signature);
  - ``modelgif``: minus ModelGiF's distance between integrated-gradient fields at up to 64
    inputs of ``data`` (10 Gauss-Legendre nodes; across architectures);
  - ``sac-m``: SAC-m (Guan et al., NeurIPS 2022), minus the mean absolute difference of the two
    models' sample-correlation matrices on 100 CutMix mixtures of ``data`` (built for extraction;
    across architectures).

* ``references`` (conformal, pooled): the reference tests above enter the verdict together, as
  one conformal test on the pool of the suspect and its ``n`` references
  (:func:`pooled_conformal`): each member's per-test ranks in the pool are combined by Cauchy's
  one-sided transform, and the suspect's p-value is its rank on that combined statistic. Valid under the
  reference tests' common null however they depend on each other, and its smallest value is
  :math:`1 / (n + 1)` whatever the number of tests (combining the tests' own conformal p-values
  would multiply that floor by up to the number of tests). Each test's own p-value is reported.

* **Whom the references stand for** (``references_like``). By default they stand in for the
  suspect, as above. With ``references_like="source"`` they are independent models trained like the
  *source*, and each statistic is :math:`s(R_j, B)`: :math:`p = (1 + \#\{j : s(R_j, B) \ge s(A, B)\}) / (n + 1)`.
  H0: the source is exchangeable with the references. Given the suspect, an unrelated suspect treats the
  source and the references alike whatever was done to it (pruned, distilled, moved to another task), so
  no strata are needed; what it needs is references made like the source.

* **Strata of references**: an unrelated suspect that was itself attacked (an independent model
  pruned, or distilled from another teacher) is not exchangeable with references trained from
  scratch: softer outputs look closer to *any* source, and such suspects were rejected more often
  than ``alpha`` (``benchmarks/RESULTS.md``). Given ``references={"trained": ..., "pruned": ...,
  "distilled": ...}`` (:func:`jaxlineage.references.derive` makes the attacked strata), every
  reference test and the pooled test run against each stratum and keep the largest p-value, valid
  under the union of the strata's nulls (the suspect is exchangeable with *some* stratum).

* Combination of ``weight-perm`` and ``references``: Bonferroni, :math:`\min(1, m \min_i p_i)`
  over the :math:`m \le 2` tests that apply, valid under any dependence; a test blind to the attack
  costs a factor :math:`m`, never a veto. So a derivation only one test sees (a student or a permuted
  copy: the references alone) is decided when :math:`m / (n + 1) \le \alpha`; the verdict warns when a
  test's floor cannot (:attr:`Evidence.floor`). Or ``combine="cauchy"``: the Cauchy combination test (Liu &
  Xie, JASA 2020), :math:`T = \sum_i w_i \tan((1/2 - p_i)\pi)`, :math:`p = 1/2 - \arctan(T / \sum_i
  w_i)/\pi`, equal weights, valid under arbitrary dependence in the tail (small ``alpha``); it gains
  when both tests see the attack and loses when one is blind (one test at the floor and one at
  :math:`p \approx 1` combine to :math:`\approx 1`). The null is the intersection: the suspect is an
  independent model trained like the references.

A pair no test applies to (e.g. two architectures and no references) is "cannot tell":
its combined p-value is NaN and its decision ``None``.

    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> import jaxlineage as jl
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         return nn.Dense(3, name="out")(nn.relu(nn.Dense(32, name="fc1")(x)))
    >>> x = jax.random.normal(jax.random.key(0), (64, 8))
    >>> a, b = (Net().init(jax.random.key(s), x) for s in (1, 2))
    >>> a_copy = jax.tree.map(lambda w: w + 1e-3, a)
    >>> src = jl.Models.from_linen(Net(), [a], ids=["A"])
    >>> sus = jl.Models.from_linen(Net(), [a_copy, b], ids=["A'", "B"])
    >>> v = jl.verify(src, sus, data=x, key=jax.random.key(0), num_permutations=99)
    >>> [(p.suspect, p.derived) for p in v.pairs]
    [("A'", True), ('B', False)]

References:
  Zhu, Zhang, Hashimoto, Liang, "Independence Tests for Language Models", ICML 2025.
  Liu & Xie, "Cauchy combination test", JASA 115 (2020).
  Vovk, Gammerman, Shafer, "Algorithmic Learning in a Random World" (2005).
  Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Stat. 6 (1979).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
import types
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlineage import permutations as perm_lib
from jaxlineage.errors import JaxlineageError
from jaxlineage.eval import pvalues as pvalues_lib
from jaxlineage.eval import scorers as scorers_lib
from jaxlineage.eval.core import Scorer
from jaxlineage.eval.metrics import NO_PARENT
from jaxlineage.models import Models, ModelSet, check_finite, weight_comparable

__all__ = [
    "NO_PARENT",
    "Evidence",
    "Identification",
    "PairVerdict",
    "ReferenceTest",
    "Verdict",
    "VerifyError",
    "cauchy_combination",
    "default_tests",
    "identify",
    "pooled_conformal",
    "verify",
]

log = logging.getLogger("jaxlineage.verify")


class VerifyError(JaxlineageError):
    """``verify`` / ``identify`` cannot answer as asked; the message names the model or setting."""


# --------------------------------------------------------------------------- combination


def cauchy_combination(pvalues: Sequence[float], weights: Sequence[float] | None = None, *, cap: float = 0.99) -> float:
    r"""The Cauchy combination test of p-values (Liu & Xie 2020).

    .. math:: T = \sum_i w_i \tan\big((\tfrac12 - p_i)\pi\big), \quad
              p = \tfrac12 - \arctan\big(T / \textstyle\sum_i w_i\big) / \pi

    Valid (:math:`P(p \le \alpha) \lesssim \alpha`) under arbitrary dependence for small
    :math:`\alpha`; exact for one test. p-values above ``cap`` are set to ``cap``: in Liu & Xie's
    statistic one p-value near 1 sends :math:`T` toward :math:`-\infty` and vetoes every other
    test (a conformal p-value is exactly 1 when every reference scores above the suspect), while
    the cap costs little validity (simulated, 400,000 draws of 6 independent uniform p-values:
    :math:`P(p \le 0.05) = 0.0504`, :math:`P(p \le 0.01) = 0.0100`).

    >>> round(cauchy_combination([0.01]), 6), round(cauchy_combination([0.01, 0.01]), 6)
    (0.01, 0.01)
    >>> round(cauchy_combination([0.001, 0.5, 0.5, 0.5, 0.5, 1.0]), 4)  # one strong test, one at p = 1
    0.0067
    """
    p = np.clip(np.asarray(pvalues, np.float64), 1e-300, cap)
    if p.size == 0:
        return float("nan")
    w = np.ones_like(p) if weights is None else np.asarray(weights, np.float64)
    t = np.sum(w * np.tan((0.5 - p) * np.pi)) / np.sum(w)
    if t > 1e15:  # arctan's tail: 1/2 - arctan(t)/pi ~ 1/(pi t)
        return float(1.0 / (np.pi * t))
    return float(0.5 - np.arctan(t) / np.pi)


def _combine(pvalues: Sequence[float], how: str) -> float:
    if not len(pvalues):
        return float("nan")
    if how == "cauchy":
        return cauchy_combination(pvalues)
    if how == "bonferroni":
        return float(min(1.0, len(pvalues) * min(pvalues)))
    if how == "pooled":  # one test decides (the pooled references test, else the weight test): no combination
        return float(pvalues[0])
    raise VerifyError(f"combine must be 'bonferroni', 'cauchy' or 'pooled'; got {how!r}")


# --------------------------------------------------------------------------- results


@dataclasses.dataclass
class Evidence:
    """One test on one (source, suspect) pair.

    Attributes:
      test: the test's name.
      statistic: its value on the pair (NaN where it does not apply).
      pvalue: its p-value (NaN where it does not apply).
      null: the null hypothesis its p-value is valid under.
      sensitive_to: what derivations it detects.
      note: why it does not apply, or a warning (e.g. it cannot reach ``alpha``).
      part_of: ``""`` for the tests the verdict combines (``weight-perm``, ``references``); for a
        reference test, ``"references"``: its own p-value is reported, and its statistic enters the
        verdict through the pooled ``references`` test.
      floor: the smallest p-value the test can give (``1 / (T + 1)`` for ``T`` permutations,
        ``1 / (n + 1)`` for ``n`` references; with strata, the largest stratum floor).
    """

    test: str
    statistic: float
    pvalue: float
    null: str
    sensitive_to: str
    note: str = ""
    part_of: str = ""
    floor: float = float("nan")

    @property
    def applies(self) -> bool:
        return bool(np.isfinite(self.pvalue))


@dataclasses.dataclass
class PairVerdict:
    """The answer for one (source, suspect) pair.

    Attributes:
      source, suspect: model ids.
      pvalue: the combined p-value (NaN: cannot tell).
      derived: ``pvalue <= alpha``; ``None`` when no test applies.
      evidence: every test's :class:`Evidence`.
    """

    source: str
    suspect: str
    pvalue: float
    derived: bool | None
    evidence: list[Evidence]


@dataclasses.dataclass
class Verdict:
    """:func:`verify`'s answer for every (source, suspect) pair; ``str()`` is a table, :meth:`to_json` a dict.

    Attributes:
      sources, suspects: model ids.
      pairs: one :class:`PairVerdict` per pair, sources outer.
      alpha: the level of the decisions.
      combine: ``"cauchy"`` or ``"bonferroni"``.
      warnings: what limits the answer (too few references for ``alpha``, ...).
      timings: wall seconds per test, over all pairs.
    """

    sources: tuple[str, ...]
    suspects: tuple[str, ...]
    pairs: list[PairVerdict]
    alpha: float
    combine: str
    warnings: list[str] = dataclasses.field(default_factory=list)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def pvalues(self) -> np.ndarray:
        """Combined p-values ``[sources, suspects]`` (NaN: cannot tell)."""
        return np.array([p.pvalue for p in self.pairs]).reshape(len(self.sources), len(self.suspects))

    def test_pvalues(self, test: str) -> np.ndarray:
        """One test's p-values ``[sources, suspects]`` (NaN where it does not apply)."""
        out = [next((e.pvalue for e in p.evidence if e.test == test), np.nan) for p in self.pairs]
        return np.array(out, np.float64).reshape(len(self.sources), len(self.suspects))

    def pair(self, source: str, suspect: str) -> PairVerdict:
        for p in self.pairs:
            if p.source == source and p.suspect == suspect:
                return p
        raise KeyError((source, suspect))

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=float))

    def __str__(self) -> str:
        tests = list(dict.fromkeys(e.test for p in self.pairs for e in p.evidence))
        head = ["source", "suspect", "derived?", "p", *tests]
        rows = []
        for p in self.pairs:
            decision = "cannot tell" if p.derived is None else ("DERIVED" if p.derived else "no evidence")
            cells = {e.test: ("n/a" if not e.applies else f"{e.pvalue:.3g}") for e in p.evidence}
            pv = "n/a" if not np.isfinite(p.pvalue) else f"{p.pvalue:.3g}"
            rows.append([p.source, p.suspect, decision, pv, *(cells.get(t, "n/a") for t in tests)])
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
        line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
        out = [f"verdict at alpha = {self.alpha:g} ({self.combine} combination of the tests' p-values)", line(head)]
        out += [line(r) for r in rows]
        out += [f"note: {w}" for w in self.warnings]
        return "\n".join(out)


# --------------------------------------------------------------------------- tests


@dataclasses.dataclass
class ReferenceTest:
    """A conformal test: a scorer's statistic against the source's scores of reference models.

    Attributes:
      name: the test's name in verdicts.
      scorer: an evaluation-layer :class:`~jaxlineage.eval.core.Scorer` (higher = more related).
      sensitive_to: what it detects.
      same_signature: it compares weights (sources, suspects and references must share a signature).
    """

    name: str
    scorer: Scorer
    sensitive_to: str
    same_signature: bool = False

    null = "the suspect is exchangeable with the reference models (independent, trained like them)"


def default_tests(*, probe_size: int = 64) -> list[ReferenceTest]:
    """The reference tests :func:`verify` runs by default (the exact weight test is always tried).

    Args:
      probe_size: the number of inputs ``verify`` was given (ModelGiF draws at most 64 of them).
    """
    from jaxlineage.eval.scorers import fingerprints as fingerprint_scorers  # noqa: PLC0415
    from jaxlineage.eval.scorers import methods  # noqa: PLC0415 (ModelGiF's scorer pulls in the learned methods)

    return [
        ReferenceTest("output-kl", scorers_lib.OutputKL(), "fine-tuning, pruning, permutation, soft extraction"),
        ReferenceTest("output-agreement", scorers_lib.OutputAgreement(), "label-only extraction, copies"),
        ReferenceTest(
            "matched-weights",
            pvalues_lib.MatchedScorer(),
            "fine-tuning, pruning, quantisation, permuted copies",
            same_signature=True,
        ),
        ReferenceTest(
            "taylor-l2",
            scorers_lib.LearningFree("l2", "first_order", alphas=(0.01,)),
            "fine-tuning (Neural Lineage's first-order L2 at the default tap)",
            same_signature=True,
        ),
        ReferenceTest(
            "modelgif",
            # 8 reference inputs per chunk: the fields of every model of a pool (hundreds of references)
            # are alive per chunk; at 32 one ConvNet pool of 124 models peaked at 13.7 GB, at 8 4.3 GB, same
            # statistics (benchmarks/verify_memory.py).
            methods.ModelGiFScorer(n_refs=min(64, probe_size), steps=10, chunk_size=8),
            "functional copies, also across architectures (input-gradient fields, ModelGiF)",
        ),
        ReferenceTest(
            "sac-m",
            fingerprint_scorers.SACScorer(mode="m"),
            "extraction (soft labels, other architectures), fine-tuning, pruning (SAC's CutMix correlations)",
        ),
    ]


WEIGHT_PERM = "weight-perm"
REFERENCES = "references"
WEIGHT_COSINE = "weight-cosine"
_WEIGHT_NULL = (
    "independent initialisations: the suspect's weights are independent of the source's, their law unit-order invariant"
)
_WEIGHT_SENS = "fine-tuning, pruning, quantisation (blind to permuted copies and extraction)"


def _spec(models: Models, data: Any, key: jax.Array, who: str) -> tuple[Any, str]:
    """``(spec or None, note)``: the models' own spec (checked: an error if it does not hold) or an inferred one.

    Every layer order the parameter shapes allow is tried (:func:`~jaxlineage.permutations.infer_specs`);
    the first whose random permutations keep the function on ``data`` is the network's.
    """
    one = models.one(0)
    x = data[: min(len(data), 64)]
    if models.perm_spec is not None:
        try:
            perm_lib.check_spec(models.logits_fn, one, models.perm_spec, x, key=key)
        except perm_lib.PermutationError as e:
            raise VerifyError(f"{who} {models.ids[0]!r}...: {e}") from None
        return models.perm_spec, ""
    spec, errors = perm_lib.infer_checked_spec(models.logits_fn, one, x, key=key)
    if spec is not None:
        return spec, ""
    if not errors:
        return None, (
            "no permutation spec: the parameters are not a chain of two or more Dense / Conv kernels;"
            " pass perm_spec= to the Models"
        )
    orders = "order" if len(errors) == 1 else f"{len(errors)} layer orders"
    return None, (
        f"no inferred permutation spec keeps the function (tried {orders} of the kernels: skip connections,"
        f" attention or shared units?); pass perm_spec= to the Models. First: {errors[0]}"
    )


def _check_data(pop: Models, data: jax.Array, what: str) -> None:
    """The models read ``data``: one model's logits on two inputs are ``[2, ...]``, else a clear error."""
    try:
        out = pop.logits_fn(pop.one(0), data[:2])
    except Exception as e:  # noqa: BLE001 (the user's module raises what it raises)
        first = (str(e).splitlines() or [""])[0]
        hint = "data: inputs [N, ...] of the models' task"
        if "collection" in first and "is empty" in first:
            hint = "are the variables the whole tree {'params': ...} that Module.init returns, not its 'params'?"
        raise VerifyError(
            f"data of shape {tuple(data.shape)} does not fit {what} {pop.ids[0]!r} ({pop.arch}):"
            f" {type(e).__name__}: {first} ({hint})"
        ) from e
    if jnp.ndim(out) < 2 or jnp.shape(out)[0] != 2:  # [2, C], or [2, T, V] for a language model
        raise VerifyError(
            f"data of shape {tuple(data.shape)}: {what} {pop.ids[0]!r} ({pop.arch}) gave logits of shape"
            f" {tuple(jnp.shape(out))} for the first 2 inputs (want [2, ...]); data must be a batch [N, ...]"
        )


def _with_specs(ms: ModelSet | None, who: str, data: Any, key: jax.Array, found: dict) -> ModelSet | None:
    """``ms`` with a checked permutation spec on every population that allows one.

    A population's own spec is checked (an error if it does not keep the function); one without gets the
    inferred spec that keeps it. ``found`` maps a parameter signature to ``(spec, note)`` of the inferred
    spec (``spec`` None: none applies, and ``note`` says why), so that sources, suspects and references of
    one architecture share the spec checked once, and the weight test and matched weights read the same one.
    """
    if ms is None:
        return None
    pops = []
    for pop in ms.populations:
        if pop.perm_spec is not None:
            _spec(pop, data, key, who)
        else:
            if pop.signature not in found:
                found[pop.signature] = _spec(pop, data, key, who)
            if found[pop.signature][0] is not None:
                pop = dataclasses.replace(pop, perm_spec=found[pop.signature][0])
        pops.append(pop)
    return ModelSet(tuple(pops))


def _weight_perm(src: Models, sus: Models, key, num_permutations: int, found: dict) -> list[list[Evidence]]:
    """The exact weight test of every (source, suspect) pair, with the spec :func:`_with_specs` checked."""
    out = [[None] * len(sus) for _ in range(len(src))]
    spec = src.perm_spec
    if not weight_comparable(src, sus) or src.signature != sus.signature:
        spec, note = None, "parameter trees differ (the exact test needs one signature)"
    else:
        note = "" if spec is not None else found[src.signature][1]
    for k in range(len(src)):
        for m in range(len(sus)):
            if spec is None:
                out[k][m] = Evidence(WEIGHT_PERM, np.nan, np.nan, _WEIGHT_NULL, _WEIGHT_SENS, note)
                continue
            r = pvalues_lib.permutation_test(
                src.one(k),
                sus.one(m),
                spec,
                key=jax.random.fold_in(jax.random.fold_in(key, k), m),
                num_permutations=num_permutations,
                names=(src.ids[k], sus.ids[m]),
            )
            out[k][m] = Evidence(
                WEIGHT_PERM, r.statistic, r.pvalue, _WEIGHT_NULL, _WEIGHT_SENS, floor=1 / (num_permutations + 1)
            )
    return out


def _conformal(stat: float, null: np.ndarray) -> float:
    return float((1 + np.sum(null >= stat)) / (null.size + 1))


@dataclasses.dataclass
class _Scores:
    """One reference test's statistics: ``stat[k, m]`` (source k, suspect m) and the references'.

    ``ref[k]`` maps a reference id to ``s(source k, reference)`` when the references stand in for the
    suspect (``side == "suspect"``), and ``ref[m]`` to ``s(reference, suspect m)`` when they stand in
    for the source (``side == "source"``)."""

    test: ReferenceTest
    note: str = ""  # non-empty: the test does not apply to any pair
    stat: np.ndarray | None = None
    ref: list[dict[str, float]] | None = None
    side: str = "suspect"


def _reference_scores(
    test: ReferenceTest, src: Models, sus: Models, refs: ModelSet | None, data: Any, side: str = "suspect"
) -> _Scores:
    """The statistic of every (source, suspect) pair and of every reference pair, computed once.

    ``side == "suspect"``: the references stand in for the suspect, ``s(source, reference)``;
    ``side == "source"``: they stand in for the source, ``s(reference, suspect)``."""
    if test.same_signature and not weight_comparable(src, sus):
        return _Scores(test, "parameter trees differ")
    like, what = (sus, "suspect's") if side == "suspect" else (src, "source's")
    ref_pops = [r for r in (refs.populations if refs else ()) if weight_comparable(r, like)]
    ref_pops = [r for r in ref_pops if not test.same_signature or weight_comparable(src, r)]
    if not ref_pops:
        return _Scores(test, f"no reference model of the {what} architecture")
    # References may include the suspects (or, standing in for the source, the sources): a pool of
    # exchangeable models. Score each model once.
    extra = []
    for r in ref_pops:
        idx = [j for j, i in enumerate(r.ids) if i not in like.ids]
        if idx:
            extra.append(r.take(idx))
    ref_ids = [i for r in ref_pops for i in r.ids]
    try:
        if side == "suspect":
            targets = ModelSet((sus, *extra))
            scores = np.asarray(test.scorer.score(ModelSet((src,)), targets, probe=data, unreadable="nan"), np.float64)
            column = {i: j for j, i in enumerate(targets.ids)}
            ref = [{rid: float(scores[k, column[rid]]) for rid in ref_ids} for k in range(len(src))]
            return _Scores(test, stat=scores[:, : len(sus)], ref=ref)
        rows = ModelSet((src, *extra))
        scores = np.asarray(test.scorer.score(rows, ModelSet((sus,)), probe=data, unreadable="nan"), np.float64)
    except JaxlineageError as e:
        return _Scores(test, f"{type(e).__name__}: {e}")
    row = {i: j for j, i in enumerate(rows.ids)}
    ref = [{rid: float(scores[row[rid], m]) for rid in ref_ids} for m in range(len(sus))]
    return _Scores(test, stat=scores[: len(src)], ref=ref, side="source")


def _null(sc: _Scores, k: int, m: int, sid: str, qid: str, ids: frozenset[str] | None = None) -> dict[str, float]:
    """The finite reference statistics of pair (source ``k``, suspect ``m``) (of stratum ``ids``), without the
    source and the suspect: ``s(source, R)`` with the references standing in for the suspect, ``s(R, suspect)``
    with them standing in for the source."""
    refs = sc.ref[m] if sc.side == "source" else sc.ref[k]
    return {r: v for r, v in refs.items() if r not in (sid, qid) and np.isfinite(v) and (ids is None or r in ids)}


def _worst_stratum(per_stratum: dict[str, tuple[float, float, int]], alpha: float) -> tuple[float, float, str, float]:
    """``(statistic, p, note, floor)`` of the stratum with the largest p-value (the union null's valid p-value);
    ``floor`` is the largest stratum's smallest attainable p-value, ``1 / (n + 1)``."""
    if not per_stratum:
        return np.nan, np.nan, "", np.nan
    name = max(per_stratum, key=lambda n: per_stratum[n][1])
    stat, p, n = per_stratum[name]
    notes = [_floor_note(n, alpha)] if _floor_note(n, alpha) else []
    if len(per_stratum) > 1:
        notes.append("strata: " + ", ".join(f"{k} p={v[1]:.3g}" for k, v in per_stratum.items()))
    return stat, p, "; ".join(notes), max(1 / (v[2] + 1) for v in per_stratum.values())


def _test_evidence(sc: _Scores, k: int, m: int, sid: str, qid: str, alpha: float, strata: _Strata) -> Evidence:
    """One reference test's own conformal p-value for a pair (reported; it enters the verdict through the pool).

    With several strata of references, the largest of the per-stratum p-values."""
    ev = lambda s, p, note, floor=np.nan: Evidence(  # noqa: E731
        sc.test.name, s, p, strata.null, sc.test.sensitive_to, note, REFERENCES, floor
    )
    if sc.note:
        return ev(np.nan, np.nan, sc.note)
    stat = sc.stat[k, m]
    if not np.isfinite(stat):
        return ev(np.nan, np.nan, "not readable for this pair")
    per = {}
    for name, ids in strata.ids.items():
        null = np.array(list(_null(sc, k, m, sid, qid, ids).values()))
        if null.size:
            per[name] = (float(stat), _conformal(stat, null), null.size)
    if not per:
        return ev(np.nan, np.nan, "not readable for this pair")
    return ev(*_worst_stratum(per, alpha))


def _floor_note(n: int, alpha: float) -> str:
    return "" if 1 / (n + 1) <= alpha else f"{n} references cannot reach alpha={alpha:g}"


def pooled_conformal(statistics: np.ndarray) -> tuple[float, float]:
    r"""The pooled reference test: one conformal p-value for a suspect from several tests' statistics.

    ``statistics[0]`` holds the suspect's statistics (one column per test, higher = more related),
    ``statistics[1:]`` the references'. Each model of the pool of :math:`n + 1` gets, per test, its
    rank :math:`r_t` among the pool (1 = most related; ties take the worse rank), the mid-rank
    :math:`u_t = (r_t - \tfrac12) / (n + 1)`, and the combined statistic

    .. math:: c = \frac1T \sum_t \tan\big((\tfrac12 - \min(u_t, \tfrac12))\pi\big)

    (Cauchy's transform of the ranks, one-sided: a test on which a model sits in the pool's less
    related half adds 0, not a large negative term). The p-value is the suspect's conformal rank on
    :math:`c`: :math:`p = \#\{j : c_j \ge c_0\} / (n + 1)`.

    :math:`c` is the same symmetric function of the pool for every member, so when the suspect is
    exchangeable with the references (the null of every reference test) :math:`c_0` is exchangeable
    with :math:`c_1, \dots, c_n` and :math:`P(p \le \alpha) \le \alpha`, however the tests depend on
    each other. Unlike combining the tests' own conformal p-values, it pays no multiplicity: its
    smallest value is :math:`1 / (n + 1)`, reached when the suspect is more extreme on the combined
    statistic than every reference. With one test it equals that test's conformal p-value.

    Why one-sided: a derived model is extreme on the tests that see its attack and ordinary on the
    others (a distilled student's weights are unrelated to its teacher's). With the two-sided
    transform one such test near the bottom of the pool (:math:`u_t \to 1`, a term near
    :math:`-\infty`) cancelled the evidence of the others; the fifth session's ``PROVENANCE`` run
    measured it on soft extraction (BUILD_NOTES, issue 24).

    Returns:
      ``(c_0, p)``.

    >>> s = np.array([[0.9, 0.8], [0.1, 0.7], [0.2, 0.1], [0.3, 0.2]])  # suspect first in both tests
    >>> pooled_conformal(s)[1]
    0.25
    >>> bool(pooled_conformal(s[:, :1])[1] == (1 + np.sum(s[1:, 0] >= s[0, 0])) / 4)
    True
    """
    s = np.asarray(statistics, np.float64)
    n1 = s.shape[0]
    rank = (s[None, :, :] >= s[:, None, :]).sum(axis=1)  # [pool, tests]: #members at least as related
    u = np.minimum((rank - 0.5) / n1, 0.5)
    c = np.tan((0.5 - u) * np.pi).mean(axis=1)
    return float(c[0]), float(np.sum(c >= c[0] - 1e-12 * max(1.0, abs(c[0]))) / n1)


def _pooled_evidence(
    scores: list[_Scores], k: int, m: int, sid: str, qid: str, alpha: float, strata: _Strata
) -> Evidence:
    """The pooled reference test over every reference test that reads this pair (see :func:`pooled_conformal`).

    With several strata of references: the pooled test against each stratum, and the largest p-value."""
    live = [sc for sc in scores if not sc.note and np.isfinite(sc.stat[k, m])]
    names = ", ".join(sc.test.name for sc in live)
    sens = "everything its tests detect (" + names + ")"
    if not live:
        why = "; ".join(sorted({sc.note or "not readable for this pair" for sc in scores})) or "no reference test"
        return Evidence(REFERENCES, np.nan, np.nan, strata.null, sens, why)
    per = {}
    for name, ids in strata.ids.items():
        nulls = [_null(sc, k, m, sid, qid, ids) for sc in live]
        common = sorted(set.intersection(*(set(n) for n in nulls)))
        if common:
            table = np.array([[sc.stat[k, m] for sc in live]] + [[n[r] for n in nulls] for r in common])
            per[name] = (*pooled_conformal(table), len(common))
    if not per:
        return Evidence(REFERENCES, np.nan, np.nan, strata.null, sens, "no reference readable by every test")
    stat, p, note, floor = _worst_stratum(per, alpha)
    return Evidence(REFERENCES, stat, p, strata.null, sens, note, floor=floor)


# --------------------------------------------------------------------------- verify


@dataclasses.dataclass(frozen=True)
class _Strata:
    """The reference models as strata: ``ids[name]`` (one stratum when given as one set), their union and the null."""

    ids: dict[str, frozenset[str]]
    union: ModelSet | None
    null: str = ReferenceTest.null


_SOURCE_NULL = "the source is exchangeable with the reference models (independent, trained like the source)"


def _strata(references: Any, side: str = "suspect") -> _Strata:
    if references is None:
        return _Strata({}, None)
    if not isinstance(references, Mapping):
        refs = _as_set(references, "references")
        return _Strata(
            {"references": frozenset(refs.ids)}, refs, ReferenceTest.null if side == "suspect" else _SOURCE_NULL
        )
    if not references:
        raise VerifyError("references: an empty mapping (give None, or strata name -> Models)")
    ids, pops, seen = {}, [], {}
    for name, models in references.items():
        ms = _as_set(models, f"references[{name!r}]")
        for i in ms.ids:
            if i in seen:
                raise VerifyError(
                    f"references: model id {i!r} is in strata {seen[i]!r} and {name!r}; ids must be unique"
                )
            seen[i] = name
        ids[str(name)] = frozenset(ms.ids)
        pops += ms.populations
    names = ", ".join(ids)
    null = (
        f"the {side} is exchangeable with the references of at least one stratum ({names}): an independent model,"
        " made like the models of that stratum"
    )
    return _Strata(ids, ModelSet(tuple(pops)), null)


def _as_set(models: Any, what: str) -> ModelSet:
    if models is None:
        return None
    try:
        ms = ModelSet.of(models)
    except Exception as e:
        raise VerifyError(
            f"{what}: expected Models, a list of Models or a ModelSet; got {type(models).__name__}"
        ) from e
    if len(ms) == 0:
        raise VerifyError(f"{what}: no model")
    return ms


def _checked_inputs(
    sources, suspects, references, data, alpha, num_permutations, references_like="suspect", combine="bonferroni"
):
    """``verify``'s arguments checked: ``(sources, suspects, strata, data)`` or a :class:`VerifyError`."""
    if not 0 < alpha < 1:
        raise VerifyError(f"alpha must be in (0, 1); got {alpha}")
    if combine not in ("bonferroni", "cauchy", "pooled"):
        raise VerifyError(f"combine must be 'bonferroni', 'cauchy' or 'pooled'; got {combine!r}")
    if references_like not in ("suspect", "source"):
        raise VerifyError(f"references_like must be 'suspect' or 'source'; got {references_like!r}")
    if num_permutations < 1:
        raise VerifyError(f"num_permutations must be >= 1; got {num_permutations}")
    src_set, sus_set = _as_set(sources, "sources"), _as_set(suspects, "suspects")
    strata = _strata(references, references_like)
    for what, ms in (("sources", src_set), ("suspects", sus_set), ("references", strata.union)):
        if ms is not None:
            check_finite(f"verify ({what})", ms, error=VerifyError)
    data = jnp.asarray(data)
    if data.ndim < 1 or len(data) < 2:
        raise VerifyError(f"data must be a batch of at least 2 inputs [N, ...]; got shape {tuple(data.shape)}")
    for what, ms in (("source", src_set), ("suspect", sus_set), ("reference", strata.union)):
        for pop in () if ms is None else ms.populations:
            _check_data(pop, data, what)
    return src_set, sus_set, strata, data


def verify(
    sources: Any,
    suspects: Any,
    *,
    data: Any,
    references: Any = None,
    alpha: float = 0.05,
    key: jax.Array | None = None,
    tests: Sequence[ReferenceTest] | None = None,
    num_permutations: int = 999,
    combine: str = "bonferroni",
    references_like: str = "suspect",
) -> Verdict:
    """Is each suspect derived from each source? One calibrated verdict per pair.

    Args:
      sources: :class:`~jaxlineage.models.Models` (or a list / :class:`~jaxlineage.models.ModelSet`).
      suspects: the same.
      data: inputs ``[N, ...]`` of the task (probe of the functional tests, and the inputs on which a
        permutation spec is checked): training or held-out inputs of the source's task, which gave alike
        power on two fresh draws each (BUILD_NOTES, issue 24).
      references: independent models of the suspects' task and architecture (:class:`Models`), or with
        ``references_like="source"`` made like the source (its architecture, data and recipe), for the
        reference tests; ``None`` runs the exact weight test alone. :func:`jaxlineage.references.train`
        builds them. With ``n`` of them the smallest reference p-value is ``1 / (n + 1)``: 99 reach
        ``alpha = 0.01``. Or **strata**, a mapping ``name -> models`` (e.g. ``{"trained": refs,
        "pruned": references.derive(refs, "prune", ...), "distilled": ...}``): each reference test
        and the pooled test then run against every stratum and report the largest p-value, valid
        when an unrelated suspect is exchangeable with the models of *some* stratum (an independent
        model that was itself pruned or distilled, say). Each stratum needs ``n`` models for its own floor.
      alpha: the level of the decisions, in (0, 1).
      key: the permutations' key (default ``jax.random.key(0)``).
      tests: reference tests (default :func:`default_tests`).
      num_permutations: ``T`` of the exact weight test (smallest p ``1 / (T + 1)``).
      references_like: who the references stand in for. ``"suspect"`` (default): independent models of the
        suspect's task and architecture; a reference test ranks ``s(source, suspect)`` among
        ``s(source, R_j)``, valid when an unrelated suspect is exchangeable with the references (an
        unrelated suspect that was itself pruned, distilled or transferred is not: give strata).
        ``"source"``: independent models trained like the *source* (its architecture, task and recipe);
        a test ranks ``s(source, suspect)`` among ``s(R_j, suspect)``, valid for *any* unrelated suspect,
        however it was made, when the source is exchangeable with the references (the model owner knows
        how the source was trained). The references may then include the sources themselves (each
        source's null leaves it out).
      combine: ``"bonferroni"`` (default) or ``"cauchy"``. Bonferroni bounds what a blind test costs (a
        factor 2 over the two tests); Cauchy's combination of the floor ``1 / (n + 1)`` with a blind test's
        ``p`` near 1 is near 1, and most derived models leave one of the two tests blind (a student's or
        a permuted copy's weights). Measured in BUILD_NOTES (issue 24). ``"pooled"``: the weight statistic
        joins the pooled reference test as one more column (``weight-cosine``, same signature), and the
        verdict is that one conformal test, with no multiplicity: its floor is ``1 / (n + 1)``, not twice
        it. Valid under the references' null alone; the exact weight test is still reported, and decides
        alone where no reference test applies.

    Returns:
      A :class:`Verdict`.

    Raises:
      VerifyError: empty sources or suspects, alpha out of (0, 1), a user permutation spec that does not
        keep the function, models with NaN / inf parameters (names the model and path).
    """
    src_set, sus_set, strata, data = _checked_inputs(
        sources, suspects, references, data, alpha, num_permutations, references_like, combine
    )
    refs = strata.union
    key = jax.random.key(0) if key is None else key
    found: dict = {}
    src_set, sus_set, refs = (
        _with_specs(ms, who, data, jax.random.fold_in(key, 7), found)
        for ms, who in ((src_set, "source"), (sus_set, "suspect"), (refs, "reference"))
    )
    strata = dataclasses.replace(strata, union=refs)
    tests = default_tests(probe_size=len(data)) if tests is None else list(tests)
    if combine == "pooled" and not any(t.name == WEIGHT_COSINE for t in tests):
        tests.append(
            ReferenceTest(
                WEIGHT_COSINE,
                scorers_lib.WeightCosine(),
                "fine-tuning, pruning, quantisation (weights in stored unit order)",
                same_signature=True,
            )
        )
    grid: dict[tuple[str, str], list[Evidence]] = {}
    timings: dict[str, float] = {}

    def timed(name, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
        return out

    for a, src in enumerate(src_set.populations):
        for b, sus in enumerate(sus_set.populations):
            k_ab = jax.random.fold_in(key, 1000 * a + b)
            weight = timed(WEIGHT_PERM, _weight_perm, src, sus, k_ab, num_permutations, found)
            scores = [timed(t.name, _reference_scores, t, src, sus, refs, data, references_like) for t in tests]
            for k, sid in enumerate(src.ids):
                for m, qid in enumerate(sus.ids):
                    grid[(sid, qid)] = [
                        weight[k][m],
                        _pooled_evidence(scores, k, m, sid, qid, alpha, strata),
                        *(_test_evidence(sc, k, m, sid, qid, alpha, strata) for sc in scores),
                    ]
    pairs = []
    for sid in src_set.ids:
        for qid in sus_set.ids:
            ev = grid[(sid, qid)]
            ps = [e.pvalue for e in ev if e.applies and not e.part_of]
            if combine == "pooled":  # the pooled test where it applies, else the weight test
                ps = [e.pvalue for e in (ev[1], ev[0]) if e.applies][:1]
            p = _combine(ps, combine)
            pairs.append(PairVerdict(sid, qid, p, None if not ps else bool(p <= alpha), ev))
    warnings = []
    if refs is None:
        warnings.append("no references: only the exact weight test ran (blind to permuted copies and extraction)")
    short = sorted({e.note for p in pairs for e in p.evidence if "cannot reach" in e.note and not e.part_of})
    warnings += short
    warnings += _alone_warnings(pairs, alpha, combine)
    if any(p.derived is None for p in pairs):
        whose = "the suspect's" if references_like == "suspect" else "the source's"
        warnings.append(f"no test applies to some pairs ('cannot tell'): give references of {whose} architecture")
    return Verdict(src_set.ids, sus_set.ids, pairs, float(alpha), combine, warnings, timings)


# --------------------------------------------------------------------------- identify


def _alone(floor: float, k: int, how: str) -> float:
    """The combined p-value of ``k`` tests when one is at ``floor`` and the others see nothing (p = 1)."""
    return _combine([floor] + [1.0] * (k - 1), how)


def _alone_warnings(pairs: list[PairVerdict], alpha: float, how: str, level: str = "") -> list[str]:
    """A warning per combined test that cannot decide alone at ``alpha``: where it is the only test to see
    a derivation (a permuted copy or a student leaves the weight test blind), its floor, combined with the
    other test at p = 1, stays above ``alpha``."""
    out = {}
    for pv in pairs:
        live = [e for e in pv.evidence if e.applies and not e.part_of]
        for e in live:
            if len(live) < 2 or e.test in out or not np.isfinite(e.floor):
                continue
            best = _alone(e.floor, len(live), how)
            if best <= alpha:
                continue
            n = 1
            while _alone(1 / (n + 1), len(live), how) > alpha and n < 10**7:
                n = n * 2
            lo = n // 2
            while lo + 1 < n:  # the smallest n whose floor 1 / (n + 1) decides alone
                mid = (lo + n) // 2
                lo, n = (lo, mid) if _alone(1 / (mid + 1), len(live), how) <= alpha else (mid, n)
            need = f"num_permutations >= {n}" if e.test == WEIGHT_PERM else f"at least {n} references (per stratum)"
            out[e.test] = (
                f"{e.test}: its smallest p-value {e.floor:.3g} combines ({how}, {len(live)} tests) to at least"
                f" {best:.3g} > {level or f'alpha={alpha:g}'}, so it cannot decide alone (as for a permuted copy"
                f" or a student, which the other test does not see); with {need} it can"
            )
    return list(out.values())


def _statistic_ranks(v: Verdict) -> np.ndarray:
    """``[candidates, queries]``: each pair's mean rank among the query's candidates over the tests' statistics."""
    k, m = len(v.sources), len(v.suspects)
    total, count = np.zeros((k, m)), np.zeros((k, m))
    tests = list(dict.fromkeys(e.test for p in v.pairs for e in p.evidence))
    for t in tests:
        stat = np.array(
            [next((e.statistic if e.applies else np.nan for e in p.evidence if e.test == t), np.nan) for p in v.pairs]
        ).reshape(k, m)
        for j in range(m):
            ok = np.isfinite(stat[:, j])
            if ok.sum() > 1:
                total[ok, j] += np.argsort(np.argsort(stat[ok, j])) / (ok.sum() - 1)
                count[ok, j] += 1
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


@dataclasses.dataclass
class Identification:
    """:func:`identify`'s answer.

    Attributes:
      queries, candidates: model ids.
      parents: per query, the parent's id or ``None`` (no parent).
      index: per query, the parent's index among the candidates or :data:`NO_PARENT`.
      pvalues: combined p-values ``[candidates, queries]``.
      verdict: the underlying :class:`Verdict`.
      warnings: the verdict's warnings, and the tests that cannot reach Holm's first threshold
        ``alpha / len(candidates)`` alone.

    A query for which no test applies to any candidate (different architectures and no references)
    has ``parents[m] = None`` like a query with no parent; ``str()`` says "cannot tell" for it.
    """

    queries: tuple[str, ...]
    candidates: tuple[str, ...]
    parents: list[str | None]
    index: np.ndarray
    pvalues: np.ndarray
    verdict: Verdict
    warnings: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"parents at alpha = {self.verdict.alpha:g} (Holm over {len(self.candidates)} candidates)"]
        for q, p, m in zip(self.queries, self.parents, range(len(self.queries))):
            col = self.pvalues[:, m]
            if not np.isfinite(col).any():
                lines.append(f"{q}: CANNOT TELL (no test applies to any candidate)")
                continue
            lines.append(f"{q}: {p if p is not None else 'NO PARENT'} (smallest p {np.nanmin(col):.3g})")
        return "\n".join(lines + [f"note: {w}" for w in self.warnings])


def identify(
    queries: Any,
    candidates: Any,
    *,
    data: Any,
    references: Any = None,
    alpha: float = 0.05,
    key: jax.Array | None = None,
    **verify_kwargs,
) -> Identification:
    """Which candidate is each query's parent, or none? Holm-Bonferroni over candidates on :func:`verify`'s p-values.

    Per query, the candidates' combined p-values are tested with Holm's procedure at ``alpha``
    (family-wise error over the candidates at most ``alpha``); the parent is the rejected candidate
    with the smallest p-value (ties, e.g. several at the permutation test's floor ``1 / (T + 1)``,
    go to the candidate whose test statistics rank highest), or :data:`NO_PARENT` when none is
    rejected. Pairs that cannot be told count as p = 1.

    Args:
      queries, candidates: models (as :func:`verify`'s ``suspects`` and ``sources``).
      data, references, alpha, key, **verify_kwargs: as :func:`verify`.

    Returns:
      An :class:`Identification`.
    """
    v = verify(candidates, queries, data=data, references=references, alpha=alpha, key=key, **verify_kwargs)
    p = np.where(np.isfinite(v.pvalues), v.pvalues, 1.0)
    reject = pvalues_lib.holm(p, alpha=alpha)
    rank = _statistic_ranks(v)
    index = np.full(p.shape[1], NO_PARENT, int)
    for m in range(p.shape[1]):
        hits = np.flatnonzero(reject[:, m])
        if hits.size:
            # Smallest p first; p-values at their floor (1 / (T + 1), 1 / (n + 1)) tie, and the tests'
            # statistics break the tie (mean rank over the tests that apply, higher = more related).
            index[m] = int(hits[np.lexsort((-rank[hits, m], p[hits, m]))[0]])
    parents = [v.sources[i] if i != NO_PARENT else None for i in index]
    first = alpha / len(v.sources)  # Holm's first threshold: the smallest p-value must reach it
    level = f"Holm's first threshold alpha / {len(v.sources)} candidates = {first:.3g}"
    warnings = list(v.warnings) + (_alone_warnings(v.pairs, first, v.combine, level) if len(v.sources) > 1 else [])
    return Identification(v.suspects, v.sources, parents, index, v.pvalues, v, warnings)


# The module is also the function: ``jaxlineage.verify(...)`` works whether ``jaxlineage.verify``
# resolved to this module (``import jaxlineage.verify``) or to the function.
class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs) -> Verdict:
        return verify(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
