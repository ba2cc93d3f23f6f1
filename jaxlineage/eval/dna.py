"""Model DNA on its own protocol: ``DNA_QUICK``, one source per repetition, unseen tasks *and* seeds.

Model DNA (MGMP) asks: is this target derived from *this* source? The paper's
protocol (Mu et al., ECAI 2024, Sec. 5.2) trains, per
source, a DNA generator and a provenance classifier on a **pool** of targets on
some tasks (homologous = fine-tuned from the source, non-homologous = random
initialisation, same recipe) and evaluates on targets trained on *other* tasks.
This module runs that protocol on a zoo built like
:data:`jaxlineage.zoo.DNA_QUICK` (groups ``pool.hom.<task>``, ``pool.non.<task>``,
``eval.hom.<task>``, ``eval.non.<task>``):

* **Split** (:func:`plan`, :class:`Split`). Per repetition one source. The pool =
  its homologous and the non-homologous models on the pool tasks whose training
  seed is in the *pool half* of the seeds; the evaluation targets = those on the
  evaluation tasks whose seed is in the other half (``STRICT``: tasks and seeds
  the pool never saw). ``LENIENT`` evaluates at the pool's seeds (unseen tasks,
  shared seeds: a non-homologous evaluation target then starts from the same
  random initialisation as a pool model, and a homologous one shares its head
  initialisation and data order); it is reported beside, never as the main figure.
* **Data.** ``D_s``, the DNA inputs of :meth:`ModelDNAScorer.fit`, are the first
  ``num_inputs`` inputs of the *source's* training split (task of the source
  record); the scoring probe is the first ``num_probe`` inputs of the same task's
  *test* split (inputs from the source's distribution that no model trained on).
* **Fragments.** The sources' heads (5 classes) and the targets' (2 classes, a
  different class pair per task) differ, so fragments come from a backbone
  **tap** shared by all (``"relu1"``, ``"relu2"``), or from the logits
  (:data:`LOGITS`): each model's logits zero-padded to the widest head, which is
  the only way the paper's logits fragments are defined here, and meaningless
  across tasks (a target's logit 0 is "class 5" on T56 and on T57, "class 7" on T78).
* **Figures** (:func:`figures`), per repetition: ``A_o`` (mean fraction of a
  homologous target's fragments called homologous), ``A_n`` (mean fraction of a
  non-homologous target's fragments called non-homologous), the fragment accuracy
  ``(A_o + A_n) / 2``, model-level decisions at ``δ`` and the model-level ROC AUC
  of the homologous-fragment fraction. With and without the generator on the
  same repetitions and keys; :func:`paired` compares them.

Example::

    from jaxlineage import zoo
    from jaxlineage.eval import dna
    z = zoo.build(zoo.DNA_QUICK, "/tmp/dna")                       # 84 models, ~30 s on 2 cores
    results = dna.run(z, key=jax.random.key(0), repetitions=8)     # with / without generator + paired
    print(dna.table(results))
    quick = dna.run(z, key=jax.random.key(0), **dna.quick_settings())  # the bench's section: ~1 min

References:
    Mu, Wang, Zhang, Zhang, Wang, Xiang, Yu. "Model Provenance via Model DNA".
    ECAI 2024, arXiv:2308.02121: Sec. 5.2 (protocol) and Table 1
    (``(A_n + A_o) / 2N``: 0.90-0.96 with the generator, 0.72-0.85 without, CIFAR).
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlineage import mgmp as mgmp_lib
from jaxlineage.eval import metrics
from jaxlineage.eval.core import NO_PARENT, ModelSet, Question, Result, Scenario, ScorerError
from jaxlineage.eval.scenarios import model_set
from jaxlineage.eval.scorers.methods import ModelDNAScorer

__all__ = [
    "LOGITS",
    "Repetition",
    "Split",
    "figures",
    "paired",
    "plan",
    "quick_settings",
    "run",
    "table",
]

#: The fragment "tap" meaning each model's logits, zero-padded to the widest head.
LOGITS = "logits"

_FIGURES = (
    "fragment_accuracy",
    "a_o",
    "a_n",
    "model_accuracy",
    "homologous_accepted",
    "non_homologous_rejected",
    "model_auc",
)


class Split(enum.Enum):
    """Which evaluation targets a repetition scores (the tasks are always disjoint from the pool's).

    Attributes:
        STRICT: targets trained at seeds the pool never saw (the seeds are halved per
            repetition). The main figure. The default.
        LENIENT: targets at the pool's seeds: a non-homologous target shares its random
            initialisation with a pool model, a homologous one its head initialisation and
            data order (seed recognition, BUILD_NOTES.md "Model DNA / MGMP").
    """

    STRICT = "strict"
    LENIENT = "lenient"


@dataclasses.dataclass(frozen=True)
class Repetition:
    """One repetition of the protocol: a source, its pool and its evaluation targets.

    Attributes:
        index: the repetition's number.
        source: the source model's id.
        pool: pool model ids; ``pool_homologous[i]`` says whether ``pool[i]`` derives from the source.
        eval: evaluation target ids; ``eval_homologous`` likewise.
        pool_seeds, eval_seeds: the training seeds of each side (``{"homologous": (...), "non_homologous": (...)}``).
    """

    index: int
    source: str
    pool: tuple[str, ...]
    pool_homologous: tuple[bool, ...]
    eval: tuple[str, ...]
    eval_homologous: tuple[bool, ...]
    pool_seeds: Mapping[str, tuple[int, ...]]
    eval_seeds: Mapping[str, tuple[int, ...]]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- split


def _groups(zoo: Any, side: str, kind: str) -> list:
    prefix = f"{side}.{kind}."
    recs = [r for g in zoo.groups if g.name.startswith(prefix) for r in zoo.group(g.name)]
    if not recs:
        raise ScorerError(
            f"zoo has no model in groups {prefix}*; Model DNA's protocol needs a zoo like DNA_QUICK"
            f" (groups: {[g.name for g in zoo.groups]})"
        )
    return recs


def _seed(record: Any) -> int:
    hp = getattr(record, "hparams", {}) or {}
    if "seed" not in hp:
        raise ScorerError(f"model {record.id!r} records no training seed (hyper-parameters: {sorted(hp)})")
    return int(hp["seed"])


def _halves(seeds: Sequence[int], key: jax.Array) -> tuple[tuple[int, ...], tuple[int, ...]]:
    seeds = sorted(set(seeds))
    if len(seeds) < 2:
        raise ScorerError(f"a strict split needs at least two training seeds per side, got {seeds}")
    perm = np.asarray(jax.random.permutation(key, len(seeds)))
    half = len(seeds) // 2
    return tuple(sorted(seeds[i] for i in perm[:half])), tuple(sorted(seeds[i] for i in perm[half:]))


def plan(
    zoo: Any, *, key: jax.Array, repetitions: int = 8, split: Split | str = Split.STRICT, sources: str = "source"
) -> list[Repetition]:
    """The repetitions of the protocol: which source, which pool, which evaluation targets.

    Sources are taken in an order drawn with ``key``; repetition ``r`` uses source
    ``r mod S``. Per source the homologous seeds and the non-homologous seeds are
    each halved once (drawn with ``fold_in(key, source index)``); the first ``S``
    repetitions put the first halves in the pool, the next ``S`` swap the halves,
    and so on, so 2 S repetitions see every (source, half) once.

    Args:
        zoo: a zoo with groups ``<sources>``, ``pool.hom.*``, ``pool.non.*``,
            ``eval.hom.*``, ``eval.non.*`` (:data:`jaxlineage.zoo.DNA_QUICK`).
        key: PRNG key; the plan is a deterministic function of it.
        repetitions: the number of repetitions (>= 1).
        split: :class:`Split`.
        sources: the sources' group.

    Returns:
        ``repetitions`` :class:`Repetition` objects. Pool and evaluation never
        share a task; with ``STRICT`` they never share a seed either.
    """
    split = Split(split)
    if repetitions < 1:
        raise ScorerError(f"repetitions must be >= 1, got {repetitions}")
    srcs = sorted(r.id for r in zoo.group(sources))
    if not srcs:
        raise ScorerError(f"zoo has no model in group {sources!r}")
    recs = {(side, kind): _groups(zoo, side, kind) for side in ("pool", "eval") for kind in ("hom", "non")}
    pool_tasks = {r.task for k in ("hom", "non") for r in recs["pool", k]}
    eval_tasks = {r.task for k in ("hom", "non") for r in recs["eval", k]}
    if pool_tasks & eval_tasks:
        raise ScorerError(f"pool and evaluation groups share tasks {sorted(pool_tasks & eval_tasks)}")
    k_order, k_halves = jax.random.split(key)
    order = [srcs[i] for i in np.asarray(jax.random.permutation(k_order, len(srcs)))]
    out = []
    for rep in range(repetitions):
        src = order[rep % len(order)]
        k_src = jax.random.fold_in(k_halves, srcs.index(src))
        halves = {}
        for kind, k in (("homologous", "hom"), ("non_homologous", "non")):
            mine = [r for r in recs["pool", k] + recs["eval", k] if k == "non" or r.parent_id == src]
            if not mine:
                raise ScorerError(f"source {src!r} has no {kind} model in the zoo")
            a, b = _halves([_seed(r) for r in mine], jax.random.fold_in(k_src, len(halves)))
            cycle = rep // len(order)
            if cycle % 2:
                a, b = b, a
            halves[kind] = (a, a) if split is Split.LENIENT else (a, b)
        sides = {}
        for side, which in (("pool", 0), ("eval", 1)):
            ids, hom = [], []
            for kind, k in (("homologous", "hom"), ("non_homologous", "non")):
                seeds = halves[kind][which]
                for r in recs[side, k]:
                    if (k == "non" or r.parent_id == src) and _seed(r) in seeds:
                        ids.append(r.id)
                        hom.append(k == "hom")
            if not any(hom) or all(hom):
                raise ScorerError(
                    f"repetition {rep}: source {src!r} has no homologous or no non-homologous {side} model"
                )
            sides[side] = (tuple(ids), tuple(hom))
        out.append(
            Repetition(
                index=rep,
                source=src,
                pool=sides["pool"][0],
                pool_homologous=sides["pool"][1],
                eval=sides["eval"][0],
                eval_homologous=sides["eval"][1],
                pool_seeds={k: v[0] for k, v in halves.items()},
                eval_seeds={k: v[1] for k, v in halves.items()},
            )
        )
    return out


# --------------------------------------------------------------------------- figures


def figures(fractions: Any, homologous: Any, *, delta: float = 0.9) -> dict[str, float]:
    """The protocol's figures of one repetition from the targets' homologous-fragment fractions.

    .. math::
        A_o = \\frac{1}{|H|} \\sum_{m \\in H} f_m, \\qquad
        A_n = \\frac{1}{|\\bar H|} \\sum_{m \\in \\bar H} (1 - f_m), \\qquad
        \\mathrm{acc} = \\frac{A_o + A_n}{2}

    with ``f_m`` the fraction of target ``m``'s fragments called homologous
    (``p_i > 0.5``). Model level: ``m`` is called homologous iff ``f_m >= δ``.
    (The paper's ``(A_n + A_o) / 2N`` with counts of correct fragments over one
    homologous and one non-homologous target of ``N`` fragments each; here the
    counts are averaged over several targets of each kind.)

    Args:
        fractions: ``[M]`` homologous-fragment fractions.
        homologous: ``[M]`` bool, the truth.
        delta: the model-level threshold ``δ``.

    Returns:
        ``fragment_accuracy``, ``a_o``, ``a_n``, ``model_accuracy`` (share of targets
        decided right), ``homologous_accepted`` / ``non_homologous_rejected`` (shares),
        ``model_auc`` (ROC AUC of ``f``, homologous vs not, ties half), and the counts
        ``num_right``, ``num_targets``, ``num_homologous``, ``num_non_homologous``.
    """
    f = np.asarray(fractions, np.float64).reshape(-1)
    h = np.asarray(homologous, bool).reshape(-1)
    if f.shape != h.shape or not h.any() or h.all():
        raise ScorerError(
            f"figures need [M] fractions and [M] labels with both kinds; got {f.shape}, {h.shape}"
            f" with {int(h.sum())} homologous"
        )
    a_o, a_n = float(f[h].mean()), float((1.0 - f[~h]).mean())
    called = f >= delta
    right = called == h
    return {
        "fragment_accuracy": 0.5 * (a_o + a_n),
        "a_o": a_o,
        "a_n": a_n,
        "model_accuracy": float(right.mean()),
        "homologous_accepted": float(called[h].mean()),
        "non_homologous_rejected": float((~called[~h]).mean()),
        "model_auc": metrics.roc_auc(f[h], f[~h]),
        "num_right": int(right.sum()),
        "num_targets": int(f.size),
        "num_homologous": int(h.sum()),
        "num_non_homologous": int((~h).sum()),
    }


def _t_sf(t: float, df: int) -> float:
    """Two-sided p-value of Student's t (regularised incomplete beta)."""
    x = df / (df + t * t)
    return float(jax.scipy.special.betainc(df / 2.0, 0.5, jnp.asarray(x, jnp.float32)))


def paired(with_values: Sequence[float], without_values: Sequence[float]) -> dict[str, Any]:
    """Paired comparison over repetitions: ``d_r = with_r - without_r``.

    .. math::
        \\bar d = \\frac1R \\sum_r d_r,\\quad s = \\sqrt{\\tfrac{1}{R-1}\\sum_r (d_r - \\bar d)^2},\\quad
        t = \\frac{\\bar d}{s / \\sqrt R}

    Two tests, both two-sided: the **exact sign test** (repetitions with
    ``d_r = 0`` dropped; ``p = min(1, 2 P[Bin(n, 1/2) <= min(n_+, n_-)])``) and the
    **paired t-test** (``R - 1`` degrees of freedom; undefined, ``None``, when
    ``s = 0``).

    Args:
        with_values, without_values: ``[R]`` figures of the same repetitions.

    Returns:
        ``{"differences": mean_std of d, "wins", "losses", "ties", "sign_p", "t", "t_p"}``.
    """
    a = np.asarray(with_values, np.float64).reshape(-1)
    b = np.asarray(without_values, np.float64).reshape(-1)
    if a.shape != b.shape or a.size < 1:
        raise ScorerError(f"paired needs two [R] arrays of the same repetitions; got {a.shape} and {b.shape}")
    d = a - b
    wins, losses = int(np.sum(d > 0)), int(np.sum(d < 0))
    n = wins + losses
    k = min(wins, losses)
    from math import comb

    sign_p = 1.0 if n == 0 else min(1.0, 2.0 * sum(comb(n, i) for i in range(k + 1)) / 2.0**n)
    t = t_p = None
    if d.size > 1:
        s = float(d.std(ddof=1))
        if s > 0:
            t = float(d.mean() / (s / np.sqrt(d.size)))
            t_p = _t_sf(t, d.size - 1)
    return {
        "differences": metrics.mean_std(d),
        "wins": wins,
        "losses": losses,
        "ties": int(d.size - n),
        "sign_p": float(sign_p),
        "t": t,
        "t_p": t_p,
    }


# --------------------------------------------------------------------------- running


def _padded(models: ModelSet, width: int) -> ModelSet:
    """The same models with logits zero-padded to ``width`` (the source's and targets' heads differ)."""
    pops = []
    for pop in models.populations:
        pops.append(dataclasses.replace(pop, logits_fn=_pad_fn(pop.logits_fn, width)))
    return ModelSet(tuple(pops))


_PAD_CACHE: dict = {}


def _pad_fn(fn, width):
    # One function object per (fn, width): the scorer's jitted vmaps stay cached across repetitions.
    key = (fn, width)
    if key not in _PAD_CACHE:

        def padded(params, x):
            y = fn(params, x)
            return jnp.pad(y, ((0, 0), (0, width - y.shape[-1])))

        _PAD_CACHE[key] = padded
    return _PAD_CACHE[key]


def _models(zoo: Any, ids: Sequence[str], tap: str, width: int) -> ModelSet:
    ms = model_set(zoo, ids)
    return _padded(ms, width) if tap == LOGITS else ms


def _width(zoo: Any, ids: Sequence[str]) -> int:
    return max(len(zoo.graph_spec.task(zoo.get(i).task).classes) for i in ids)


def run(
    zoo: Any,
    *,
    key: jax.Array,
    repetitions: int = 8,
    config: mgmp_lib.Config | None = None,
    taps: Sequence[str] = ("relu1",),
    split: Split | str = Split.STRICT,
    num_inputs: int = 2048,
    num_probe: int = 1000,
    delta: float | None = None,
    baseline: bool = True,
) -> list[Result]:
    """Model DNA on its own protocol, with and without the generator on the same repetitions.

    Per repetition ``r`` (:func:`plan`) and tap: a VERIFY training scenario
    (candidate = the source, queries = its pool, ``related`` = homologous) fits
    :class:`~jaxlineage.eval.methods.ModelDNAScorer` with ``config`` and with
    ``config`` minus the generator (``Generator.NONE``), both keyed
    ``fold_in(key, r)``; each scores the evaluation targets on the probe.

    Args:
        zoo: a zoo like :data:`jaxlineage.zoo.DNA_QUICK`.
        key: PRNG key (plan and training).
        repetitions: repetitions (DNA_QUICK: 2 x 4 sources see every source and seed half once).
        config: :class:`jaxlineage.mgmp.Config` (default ``Config()``).
        taps: fragment taps (backbone taps of every model, or :data:`LOGITS`).
        split: :class:`Split`.
        num_inputs: ``D_s``, the first inputs of the source task's train split.
        num_probe: scoring probe, the first inputs of the source task's test split.
        delta: the model-level ``δ`` (default ``config.delta``).
        baseline: also run without the generator (and the paired comparison).

    Returns:
        Per tap: one :class:`Result` per configuration (``scorer`` = the scorer's
        name, metrics = :func:`figures` over repetitions as ``mean_std``; details:
        per-repetition figures, fractions, the plan, timings) and, with
        ``baseline``, one ``"<name> - no generator"`` Result whose metrics are the
        per-repetition differences and whose details hold :func:`paired` per figure.
    """
    config = mgmp_lib.Config() if config is None else config
    split = Split(split)
    delta = config.delta if delta is None else float(delta)
    k_plan, k_fit = jax.random.split(key)
    reps = plan(zoo, key=k_plan, repetitions=repetitions, split=split)
    src_task = zoo.get(reps[0].source).task
    d_s = np.asarray(zoo.task_data(src_task, "train")[0][:num_inputs])
    probe = np.asarray(zoo.task_data(src_task, "test")[0][:num_probe])
    configs = [config] + (
        [dataclasses.replace(config, generator=mgmp_lib.Generator.NONE)] if baseline and config.uses_generator else []
    )
    zoo_name = getattr(getattr(zoo, "graph_spec", None), "name", "zoo")
    results = []
    for tap in taps:
        per = {i: [] for i in range(len(configs))}
        fracs = {i: [] for i in range(len(configs))}
        secs = {i: [] for i in range(len(configs))}
        histories = {i: [] for i in range(len(configs))}
        for rep in reps:
            width = _width(zoo, (rep.source,) + rep.pool + rep.eval) if tap == LOGITS else 0
            cands = _models(zoo, [rep.source], tap, width)
            pool = _models(zoo, rep.pool, tap, width)
            targets = _models(zoo, rep.eval, tap, width)
            hom_pool = dict(zip(rep.pool, rep.pool_homologous))
            hom_eval = dict(zip(rep.eval, rep.eval_homologous))
            related = np.asarray([[hom_pool[i] for i in pool.ids]])
            train = Scenario(
                name=f"{zoo_name}/dna/{split.value}/rep{rep.index}",
                question=Question.VERIFY,
                candidates=cands,
                queries=pool,
                labels=np.where(related[0], 0, NO_PARENT),
                related=related,
                kinds=tuple("homologous" if h else "negative" for h in related[0]),
                split_keys=pool.ids,
                probe=d_s,
                graph=getattr(zoo, "graph", None),
            )
            truth = np.asarray([hom_eval[i] for i in targets.ids])
            for i, cfg in enumerate(configs):
                t0 = time.perf_counter()
                scorer = ModelDNAScorer(config=cfg, tap=None if tap == LOGITS else tap)
                scorer = scorer.fit(train, key=jax.random.fold_in(k_fit, rep.index))
                f = scorer.score(cands, targets, probe=probe)[0]
                secs[i].append(time.perf_counter() - t0)
                per[i].append(figures(f, truth, delta=delta))
                fracs[i].append(dict(zip(targets.ids, np.round(f, 4).tolist())))
                h = scorer.histories[rep.source]
                histories[i].append({k: float(np.mean(v[-50:])) for k, v in h.items()})
        settings = dict(
            split=split.value,
            fragment_tap=tap,
            repetitions=repetitions,
            delta=delta,
            num_inputs=int(len(d_s)),
            num_probe=int(len(probe)),
            d_s=f"{src_task}/train[:{len(d_s)}]",
            probe=f"{src_task}/test[:{len(probe)}]",
            key=np.asarray(jax.random.key_data(key)).tolist(),
            logits="zero-padded to the widest head" if tap == LOGITS else None,
        )
        names = []
        for i, cfg in enumerate(configs):
            name = ModelDNAScorer(config=cfg, tap=tap).name
            names.append(name)
            results.append(
                Result(
                    scenario=f"{zoo_name}/dna/{split.value}",
                    question=Question.VERIFY.value,
                    scorer=name,
                    metrics={m: metrics.mean_std([p[m] for p in per[i]]) for m in _FIGURES},
                    settings=dict(settings, config=cfg.to_json()),
                    details=dict(
                        per_repetition=per[i],
                        fractions=fracs[i],
                        final_training_metrics=histories[i],
                        plan=[r.to_json() for r in reps],
                        seconds=secs[i],
                    ),
                )
            )
        if len(configs) == 2:
            tests = {m: paired([p[m] for p in per[0]], [p[m] for p in per[1]]) for m in _FIGURES}
            results.append(
                Result(
                    scenario=f"{zoo_name}/dna/{split.value}",
                    question=Question.VERIFY.value,
                    scorer=f"{names[0]} - no generator",
                    metrics={m: v["differences"] for m, v in tests.items()},
                    settings=dict(
                        settings,
                        config=config.to_json(),
                        test="per-repetition differences (with - without); exact two-sided sign test and paired t-test",
                    ),
                    details={"paired": tests},
                )
            )
    return results


def quick_settings() -> dict[str, Any]:
    """The bench's cheap settings of :func:`run`: ``run(zoo, key=key, **quick_settings())``.

    5 repetitions, ``relu1`` fragments, the strict split, 300 training steps, ``D_s`` = 1024
    inputs, a probe of 500. Measured: 53 s on the shared 2-core CPU (load average ~7), plus
    the DNA_QUICK build (~30-45 s) if the zoo is absent; 99.8 ± 0.4 % fragment accuracy with
    the generator, 99.5 ± 0.5 % without, 50 / 50 targets right (BUILD_NOTES.md, MGMP section).
    """
    return dict(
        repetitions=5,
        taps=("relu1",),
        split=Split.STRICT,
        config=mgmp_lib.Config(num_steps=300),
        num_inputs=1024,
        num_probe=500,
    )


def table(results: Sequence[Result]) -> str:
    """A markdown table of :func:`run`'s results: one row per scorer (and difference row), mean ± std (ddof 1).

    Shares in percent; model decisions as ``right / targets`` summed over repetitions where available;
    difference rows add the sign-test and paired-t p-values of the fragment accuracy.
    """
    head = (
        "| scenario | scorer | fragment acc. (%) | A_o (%) | A_n (%) | targets right at δ | homologous accepted (%)"
        " | non-homologous rejected (%) | model AUC | p (sign / t), fragment acc. |"
    )
    lines = [head, "|---|---|" + "---:|" * 8]
    for r in results:
        m = r.metrics
        pct = lambda k, m=m: f"{100 * m[k]['mean']:.1f} ± {100 * m[k]['std']:.1f}"  # noqa: E731
        per = r.details.get("per_repetition")
        right = (
            f"{sum(p['num_right'] for p in per)} / {sum(p['num_targets'] for p in per)}"
            if per
            else f"{100 * m['model_accuracy']['mean']:+.1f} ± {100 * m['model_accuracy']['std']:.1f} %"
        )
        test = r.details.get("paired", {}).get("fragment_accuracy")
        p = (
            ""
            if test is None
            else f"{test['sign_p']:.3g} / " + ("n/a" if test["t_p"] is None else f"{test['t_p']:.3g}")
        )
        tap = r.settings.get("fragment_tap")
        lines.append(
            f"| {r.scenario} @{tap} | {r.scorer} | {pct('fragment_accuracy')} | {pct('a_o')} | {pct('a_n')}"
            f" | {right} | {pct('homologous_accepted')} | {pct('non_homologous_rejected')}"
            f" | {m['model_auc']['mean']:.3f} ± {m['model_auc']['std']:.3f} | {p} |"
        )
    return "\n".join(lines)
