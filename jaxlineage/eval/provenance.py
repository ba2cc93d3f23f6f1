"""Every method against every attack: the IP-protection table (SAC / ModelGiF) on a provenance scenario.

A :func:`jaxlineage.eval.scenarios.provenance` scenario asks "was query ``m``
derived from source ``k``?" for every derived model of a ``PROVENANCE_QUICK``
zoo. This module turns any scorer's ``[K, M]`` score matrix into one cell per
attack (derivation kind):

.. math::
    \\mathrm{AUC}_a = P\\big(S[k, m] > S[k', m']\\big), \\quad
    (k, m) \\in \\mathcal{P}_a,\\ (k', m') \\in \\mathcal{N}_a

with ``P_a`` the pairs (source, model derived from it by attack ``a``) and
``N_a`` the pairs (source, negative of attack ``a``): the same attack applied
with the same recipe to a model trained independently (e.g. a student of
another teacher), plus the independently trained models themselves (and, for
``transfer``, the models trained from scratch on the transfer task) -- SAC's
"irrelevant" models. Pairs a scorer cannot read (``NaN``: weight space across
architectures) are left out; a cell with no readable positive or negative is
n/a (``None``), never a number. TPR at 1 % FPR is reported alongside (with a few
dozen negatives it is the TPR at the largest negative score).

ModelGiF's references are a seeded draw from the scenario's probe (the
defender's own training data), never chosen by looking at an evaluated model;
smaller reference counts are prefixes of one draw (:func:`modelgif_sweep`).

Learned scorers (Model DNA) need training pairs, and the SAC / ModelGiF
protocol has none: every derived model is evaluated. :func:`learned_cells`
cuts them from the graph by attack, the analogue of Model DNA's unseen tasks
(:data:`ATTACK_FOLDS`): the attacks alternate between two folds in
:data:`ATTACKS` order; fold ``f``'s scorer is fitted on the queries made by
fold ``f``'s attacks (positives: the sources' derivations, negatives: the same
attacks on the independents) and scores every other query: the other fold's
attacks and the base negatives (independents, scratch transfer models), which
no fit sees. A cell of attack ``a`` uses only the scorer that did not see
``a``, so every pair of a cell is one fit's, and no evaluated query was seen in
that fit.

Example::

    from jaxlineage import zoo
    from jaxlineage.eval import provenance, scenarios
    z = zoo.build(zoo.PROVENANCE_QUICK, "/tmp/pq")
    s = scenarios.provenance(z)
    rows = provenance.attack_table(s, {"weight L2": provenance.score_matrix(s, WeightL2())})
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlineage import modelgif as modelgif_lib
from jaxlineage.eval import metrics
from jaxlineage.eval.core import Scenario, Scorer, ScorerError
from jaxlineage.eval.scorers import pvalues
from jaxlineage.eval.scorers.methods import BACKBONE_TAPS, Field, ModelGiFScorer

__all__ = [
    "ATTACKS",
    "ATTACK_FOLDS",
    "BACKBONE_TAPS",
    "attack_masks",
    "attack_of",
    "attack_table",
    "cells",
    "learned_cells",
    "modelgif_sweep",
    "null_calibration",
    "score_matrix",
]

#: The attack columns, in table order: ``(column id, label)``. ``prune_<p>`` are the pruning targets.
ATTACKS = (
    ("finetune_all", "finetune-all"),
    ("finetune_head", "finetune-head"),
    ("prune_30", "prune 30%"),
    ("prune_60", "prune 60%"),
    ("prune_90", "prune 90%"),
    ("extract_p", "extract-P (same arch)"),
    ("extract_p_other_arch", "extract-P (other arch)"),
    ("extract_l", "extract-L (label-only)"),
    ("transfer", "transfer"),
    ("permute", "permute"),
    ("perturb_noise", "noise"),
    ("perturb_int8", "int8"),
    # Appended last so that ATTACK_FOLDS of the older columns stay as they were (Model DNA's fits).
    ("extract_adv", "extract-Adv"),
)

#: The training folds of learned scorers (:func:`learned_cells`): the attacks alternate between two folds.
ATTACK_FOLDS = (tuple(a for a, _ in ATTACKS[0::2]), tuple(a for a, _ in ATTACKS[1::2]))

#: Negatives of every attack: models trained independently (SAC's irrelevant models); ``transfer``
#: also gets the models trained from scratch on its task.
BASE_NEGATIVES = ("independent",)
EXTRA_NEGATIVES = {"transfer": ("scratch_transfer",)}


def attack_of(info: Mapping[str, Any]) -> str:
    """A query's column: its derivation kind, ``prune_<percent>`` for pruning."""
    kind = str(info.get("kind"))
    if kind == "prune":
        return f"prune_{round(100 * float(info['hparams']['sparsity']))}"
    return kind


def _attacks(scenario: Scenario) -> np.ndarray:
    """Each query's column, from the scenario's own ``kinds`` (pruning split by the model's sparsity)."""
    info = {}
    for p in scenario.queries.populations:
        info.update(p.info)
    out = []
    for q, kind in zip(scenario.queries.ids, scenario.kinds):
        hp = dict(info.get(q, {}).get("hparams", {}) or {})
        out.append(attack_of({"kind": kind, "hparams": hp}) if kind != "prune" or "sparsity" in hp else kind)
    return np.asarray(out)


def attack_masks(scenario: Scenario) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{attack: (positive [K, M], negative [K, M])}`` boolean pair masks (see the module docstring)."""
    related = np.asarray(scenario.related, bool)
    attack = _attacks(scenario)
    unrelated = ~related.any(axis=0)  # derived from no source: a negative model
    out = {}
    known = [a for a, _ in ATTACKS]
    # Kinds outside the library's vocabulary get their own column instead of being dropped.
    others = sorted({str(a) for a in attack[related.any(axis=0)]} - set(known))
    for a in known + others:
        pos = related & (attack == a)[None, :]
        neg_cols = unrelated & np.isin(attack, (a, *BASE_NEGATIVES, *EXTRA_NEGATIVES.get(a, ())))
        neg = ~related & neg_cols[None, :]
        if pos.any():
            out[a] = (pos, neg)
    return out


def cells(
    scores: np.ndarray,
    masks: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    fprs: Sequence[float] = (0.01,),
    n_boot: int = 0,
    seed: int = 0,
) -> dict[str, dict | None]:
    """One cell per attack from scores ``[K, M]`` (higher = more related; ``NaN`` = unreadable pair).

    With ``n_boot > 0`` every cell also gets bootstrap 95 % intervals over sources
    and derived models (:func:`jaxlineage.eval.metrics.bootstrap_pair_ci`, NumPy
    seed ``seed``): ``"auc_ci"``, ``"tpr@1%fpr_ci"`` (``[lo, hi]``) and ``"n_boot"``.

    Returns:
      ``{attack: None}`` (n/a: no readable positive or negative pair) or
      ``{"auc", "tpr@1%fpr", ..., "n_pos", "n_neg"}`` (plus the intervals).
    """
    scores = np.asarray(scores, np.float64)
    out = {}
    for a, (pos, neg) in masks.items():
        ok = np.isfinite(scores)
        p, n = scores[pos & ok], scores[neg & ok]
        if p.size == 0 or n.size == 0:
            out[a] = None
            continue
        out[a] = {
            "auc": metrics.roc_auc(p, n),
            "n_pos": int(p.size),
            "n_neg": int(n.size),
            **{f"tpr@{100 * f:g}%fpr": metrics.tpr_at_fpr(p, n, f) for f in fprs},
        }
        if n_boot > 0:
            ci = metrics.bootstrap_pair_ci(scores, pos, neg, n_boot=n_boot, seed=seed, fprs=fprs)
            out[a].update({f"{k}_ci": v for k, v in ci.items() if k not in ("n_boot", "n_skipped", "level")})
            out[a]["n_boot"] = ci["n_boot"]
    return out


def score_matrix(scenario: Scenario, scorer: Scorer) -> np.ndarray:
    """``[K, M]`` scores of a fixed (unlearned) scorer, ``NaN`` where it cannot read a pair."""
    if getattr(scorer, "learned", False):
        raise ScorerError(
            f"{scorer.name}: a learned scorer needs a training split; the provenance table takes fixed scorers only"
        )
    return np.asarray(
        scorer.score(scenario.candidates, scenario.queries, probe=scenario.probe, unreadable="nan"), np.float64
    )


def modelgif_sweep(
    scenario: Scenario,
    *,
    backbone: bool = False,
    n_refs: int = 256,
    steps: int = 50,
    key: jax.Array,
    chunk_size: int | None = 32,
) -> np.ndarray:
    """ModelGiF distances per reference, ``[K, M, n_refs]`` (``NaN`` where unreadable).

    The logits field (``backbone=False``, the paper's) reads every pair, across
    architectures; the backbone field (the field of the feature sum at
    :data:`BACKBONE_TAPS` of the architecture) reads same-architecture pairs
    only. References: ``n_refs`` inputs of the probe drawn with ``key``
    (:meth:`~jaxlineage.eval.methods.ModelGiFScorer.references`), the same
    for every pair; the mean over the first ``r`` is the distance at ``r``
    references.

    Args:
      scenario: a provenance (or any) scenario; ``probe`` holds at least ``n_refs`` inputs.
      backbone: the backbone field instead of the logits field.
      n_refs: references ``R``.
      steps: Gauss-Legendre nodes per reference (paper: 50).
      key: ``jax.random`` key of the reference draw (data only).
      chunk_size: references per chunk (memory).

    Returns:
      ``[K, M, R]`` float64 distances.
    """
    cands, queries = scenario.candidates, scenario.queries
    out = np.full((len(cands), len(queries), n_refs), np.nan)
    if not backbone:
        # Every pair is readable: the few candidates' fields are computed once ([K, R, steps, D], input
        # space, so both architectures stack) and each query population's fields once, against all of them.
        scorer = ModelGiFScorer(field=Field.LOGITS, n_refs=n_refs, steps=steps, key=key, chunk_size=chunk_size)
        x_ref = jnp.asarray(scorer.references(scenario.probe)[0], jnp.float32)
        fields = jnp.concatenate(
            [
                jax.vmap(
                    lambda p, cp=cp: modelgif_lib.gradient_field(
                        cp.logits_fn, p, x_ref, steps=steps, target=scorer.scalar_output, chunk_size=chunk_size
                    )
                )(cp.params)
                for cp in cands.populations
            ]
        )
        for mo, qp in zip(queries.offsets(), queries.populations):
            d = modelgif_lib.distance_matrix(
                fields,
                qp,
                x=x_ref,
                steps=steps,
                target=scorer.scalar_output,
                chunk_size=chunk_size,
                per_reference=True,
            )
            out[:, mo : mo + len(qp)] = np.asarray(d)
        return out
    for ko, cp in zip(cands.offsets(), cands.populations):
        for mo, qp in zip(queries.offsets(), queries.populations):
            if cp.arch != qp.arch or cp.arch not in BACKBONE_TAPS:
                continue
            s = ModelGiFScorer(field=BACKBONE_TAPS[cp.arch], n_refs=n_refs, steps=steps, key=key, chunk_size=chunk_size)
            out[ko : ko + len(cp), mo : mo + len(qp)] = s.per_reference(cp, qp, probe=scenario.probe)
    return out


def attack_table(
    scenario: Scenario,
    scores: Mapping[str, np.ndarray],
    *,
    fprs: Sequence[float] = (0.01,),
    n_boot: int = 0,
    seed: int = 0,
) -> dict[str, dict[str, dict | None]]:
    """``{row: {attack: cell or None}}`` for named ``[K, M]`` score matrices (see :func:`cells`; ``n_boot > 0``
    adds bootstrap intervals over sources and derived models)."""
    masks = attack_masks(scenario)
    return {name: cells(s, masks, fprs=fprs, n_boot=n_boot, seed=seed) for name, s in scores.items()}


def learned_cells(
    scenario: Scenario,
    scorer: Scorer,
    *,
    key: jax.Array,
    fprs: Sequence[float] = (0.01,),
    n_boot: int = 0,
    return_scores: bool = False,
) -> tuple:
    """One cell per attack for a learned scorer, fitted on the other attack fold (see the module docstring).

    For each fold ``f`` of :data:`ATTACK_FOLDS`: ``scorer.fit`` on the queries
    whose attack is in fold ``f`` (key ``fold_in(key, f)``), then ``score`` of
    every other query (``NaN`` where unreadable); the cells of the attacks
    outside fold ``f`` come from those scores (:func:`cells`).

    Args:
      scenario: a :func:`jaxlineage.eval.scenarios.provenance` scenario.
      scorer: a learned scorer (``fit(train, key=) -> fitted``).
      key: the fits' key.
      fprs: false positive rates of the TPR columns.
      n_boot: bootstrap resamples of the cells' intervals (0: none; see :func:`cells`).
      return_scores: also return the ``[K, M]`` scores (each query scored by the fold that did not fit on
        it; ``NaN`` where unreadable or never scored).

    Returns:
      ``(cells, folds)``: ``{attack: cell or None}`` as :func:`cells`, and per fold
      ``{"fit_attacks", "n_fit", "n_scored", "fit_ids", "wall_s"}``; ``(cells, folds, scores)`` with
      ``return_scores``.

    Raises:
      ScorerError: a fitted query is also scored (cannot happen by construction; checked).
    """
    masks = attack_masks(scenario)
    attack = _attacks(scenario)
    out, folds = {}, []
    all_scores = np.full(scenario.related.shape, np.nan)
    for f, group in enumerate(ATTACK_FOLDS):
        t0 = time.time()
        fit_idx = np.flatnonzero(np.isin(attack, group))
        test_idx = np.flatnonzero(~np.isin(attack, group))
        held = {a: m for a, m in masks.items() if a not in group}
        seen = set(fit_idx)
        for pos, neg in held.values():
            if seen.intersection(np.flatnonzero((pos | neg).any(axis=0))):
                raise ScorerError(f"{scorer.name}: fold {f} would score a query it was fitted on")
        fitted = scorer.fit(scenario.take_queries(fit_idx), key=jax.random.fold_in(key, f))
        scores = np.full(scenario.related.shape, np.nan)
        scores[:, test_idx] = fitted.score(
            scenario.candidates, scenario.queries.take(test_idx), probe=scenario.probe, unreadable="nan"
        )
        out.update(cells(scores, held, fprs=fprs, n_boot=n_boot, seed=f))
        for pos, neg in held.values():
            cols = (pos | neg).any(axis=0)
            all_scores[:, cols] = scores[:, cols]
        folds.append(
            {
                "fit_attacks": list(group),
                "n_fit": int(fit_idx.size),
                "n_scored": int(test_idx.size),
                "fit_ids": [scenario.queries.ids[i] for i in fit_idx],
                "wall_s": time.time() - t0,
            }
        )
    result = {a: out.get(a) for a in masks}
    return (result, folds, all_scores) if return_scores else (result, folds)


def null_calibration(
    scenario: Scenario,
    scores: Mapping[str, np.ndarray],
    *,
    key: jax.Array,
    alphas: Sequence[float] = (0.01, 0.05, 0.1),
) -> dict:
    """Conformal p-values of unrelated pairs against disjoint unrelated pairs, per scorer: a calibration check.

    The null pairs are the (source, query) pairs that the graph calls
    :attr:`~jaxlineage.graph.Relation.UNRELATED` (``~related`` without a graph).
    Their *queries* are split at random (``key``) into a calibration half and a
    test half, so the two sets of pairs share no query model; each test pair's
    p-value is :func:`jaxlineage.eval.pvalues.conformal_pvalues` of its score
    against the calibration pairs' scores of the same scorer. Under the null the
    fraction with ``p <= alpha`` is at most ``alpha`` (up to the binomial margin,
    :func:`jaxlineage.eval.pvalues.calibration_table`). Pairs share the few
    sources, so they are not independent trials (the margin is optimistic).

    Args:
      scenario: a provenance scenario.
      scores: ``{row name: [K, M] scores}`` (``NaN`` = unreadable, left out).
      key: the split's key.
      alphas: levels of the calibration rows.

    Returns:
      ``{"n_queries": (calibration, test), "rows": {name: calibration_table rows},
      "pvalues": {name: [n] test p-values}}``.
    """
    graph = scenario.graph
    cands, queries = scenario.candidates.ids, scenario.queries.ids
    if graph is not None:
        null = np.array([[not graph.relation(c, q).is_related for q in queries] for c in cands], bool)
    else:
        null = ~np.asarray(scenario.related, bool)
    cols = np.flatnonzero(null.any(axis=0))
    order = np.asarray(jax.random.permutation(key, cols.size))
    cal_cols, test_cols = np.sort(cols[order[: cols.size // 2]]), np.sort(cols[order[cols.size // 2 :]])
    cal, test = np.zeros_like(null), np.zeros_like(null)
    cal[:, cal_cols], test[:, test_cols] = null[:, cal_cols], null[:, test_cols]
    rows, pv = {}, {}
    for name, s in scores.items():
        s = np.asarray(s, np.float64)
        ok = np.isfinite(s)
        if not (ok & cal).any() or not (ok & test).any():
            continue
        p = pvalues.conformal_pvalues(s[test & ok], s[cal & ok], name=name)
        n_cal = int((ok & cal).sum())
        rows[name] = [{**r, "n_calibration": n_cal} for r in pvalues.calibration_table(p, alphas=alphas)]
        pv[name] = p
    return {"n_queries": (int(cal_cols.size), int(test_cols.size)), "rows": rows, "pvalues": pv}
