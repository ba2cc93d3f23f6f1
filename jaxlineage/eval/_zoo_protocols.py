"""The methods' old zoo protocols, as scenarios over the scorers of :mod:`jaxlineage.eval.methods`.

``detector.run_protocol``, ``detector.make_examples``, ``mgmp.run_protocol`` and
``modelgif.evaluate`` are thin wrappers over the functions here, kept (with
their signatures and result keys) while the bench moves to the evaluation
layer's protocols. Each reads the zoo once into
:class:`~jaxlineage.eval.core.Population` objects, builds the scenario of its
protocol and calls the scorer; nothing here re-implements a method. Every
``±`` is :func:`jaxlineage.eval.metrics.mean_std` (``ddof = 1``); every random
choice comes from a ``jax.random`` key (``seed`` ints become ``jax.random.key(seed)``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxlineage import detector as detector_lib
from jaxlineage import mgmp as mgmp_lib
from jaxlineage import modelgif as modelgif_lib
from jaxlineage.eval import metrics
from jaxlineage.eval.core import NO_PARENT, ModelSet, Question, Scenario
from jaxlineage.eval.methods import DetectorScorer, Field, ModelDNAScorer, ModelGiFScorer, reference_sweep
from jaxlineage.eval.scenarios import model_set

__all__ = [
    "detector_examples",
    "detector_protocol",
    "mgmp_protocol",
    "modelgif_protocol",
]


# --------------------------------------------------------------------------- zoo -> populations

# Zoo models -> populations: the one copy is :func:`jaxlineage.eval.scenarios.model_set`.


def _index(models: ModelSet, ids: Sequence[str]) -> list[int]:
    pos = {i: n for n, i in enumerate(models.ids)}
    return [pos[i] for i in ids]


def _key(key: jax.Array | None, seed: int) -> jax.Array:
    return jax.random.key(seed) if key is None else key


# --------------------------------------------------------------------------- Lineage Detector


def detector_examples(
    zoo,
    *,
    weight_layer=detector_lib.AUTO,
    feature_tap=detector_lib.AUTO,
    n_probe: int = 64,
    weight_pool: int = 1,
    feature_pool: int = 1,
    task: str | None = None,
) -> detector_lib.Examples:
    """``detector.make_examples``: every kept child on ``task`` against all kept parents (see there)."""
    # Settings are checked first (DetectorScorer), before any model is loaded.
    scorer = DetectorScorer(
        weight_layer=weight_layer,
        feature_tap=feature_tap,
        n_probe=n_probe,
        weight_pool=weight_pool,
        feature_pool=feature_pool,
    )
    parents = list(zoo.parents)
    if len(parents) < 2:
        raise ValueError(f"zoo {zoo.spec.name!r} has {len(parents)} kept parent(s); the detector needs at least 2")
    task = task or zoo.spec.child_tasks[0].name
    children = [c for c in zoo.children if c.task == task]
    if not children:
        raise ValueError(f"zoo {zoo.spec.name!r} has no kept children on task {task!r}")
    parent_ids = [p.id for p in parents]
    for c in children:
        if c.parent_id not in parent_ids:
            raise ValueError(f"child {c.id!r} descends from {c.parent_id!r}, which is not a kept parent")
    candidates, queries = model_set(zoo, parent_ids), model_set(zoo, [c.id for c in children])
    labels = [parent_ids.index(zoo.get(i).parent_id) for i in queries.ids]
    probe = zoo.probe(n_probe if scorer.feature_tap is not None else 1, task=task)
    return scorer.examples(candidates, queries, probe=probe, labels=labels)


def _rates(values: Sequence[float]) -> dict:
    """``mean_std`` plus the per-repetition values (``None`` where a repetition had no such child)."""
    finite = [v for v in values if np.isfinite(v)]
    out = metrics.mean_std(finite) if finite else {"mean": float("nan"), "std": 0.0, "n": 0, "values": []}
    return {**out, "per_repetition": [float(v) if np.isfinite(v) else None for v in values]}


def detector_protocol(
    zoo=None,
    *,
    examples=None,
    repetitions: int = 5,
    key: jax.Array | None = None,
    seed: int = 0,
    open_set: bool = False,
    weight_layer=detector_lib.AUTO,
    feature_tap=detector_lib.AUTO,
    n_probe: int = 64,
    weight_pool: int = 1,
    feature_pool: int = 1,
    fractions: Sequence[float] = detector_lib.PAPER_SPLIT,
    module_kwargs: dict | None = None,
    **train_kwargs,
) -> dict:
    """The paper's protocol: ``repetitions`` random 7:1:2 child splits; mean ± std (ddof 1) of test accuracy.

    Repetition ``r`` splits the children with ``fold_in(key, r)``, fits a
    :class:`~jaxlineage.eval.methods.DetectorScorer` on the train split (best
    validation epoch) and reports test accuracy. Open set: repetition ``r`` also
    holds parent ``r mod K`` out; its children are labelled "no parent".

    Returns:
      A JSON-serialisable dict: ``test_accuracy`` / ``val_accuracy`` (``mean``,
      ``std`` (ddof 1), ``n``, ``values``, ``per_repetition``), ``split_sizes``,
      ``num_parents``, ``num_children``, ``weight_layer``, ``feature_tap``,
      ``module``, ``seconds`` and ``per_repetition`` records (test child ids
      included); open set adds ``accuracy_no_parent``, ``accuracy_with_parent``,
      ``no_parent_correct`` / ``no_parent_total`` (pooled) and ``held_out``.
    """
    if repetitions < 1:
        raise ValueError(f"repetitions must be >= 1, got {repetitions}")
    t0 = time.time()
    if examples is None:
        if zoo is None:
            raise ValueError("run_protocol needs a zoo or examples")
        examples = detector_examples(
            zoo,
            weight_layer=weight_layer,
            feature_tap=feature_tap,
            n_probe=n_probe,
            weight_pool=weight_pool,
            feature_pool=feature_pool,
        )
    module = detector_lib.LineageDetector(**{**(module_kwargs or {}), "no_parent": open_set})
    scorer = DetectorScorer(module=module, n_probe=n_probe, **train_kwargs)
    base = _key(key, seed)
    reps = []
    for r in range(repetitions):
        split_key, train_key = jax.random.split(jax.random.fold_in(base, r))
        ex = examples.drop_parent(r % examples.num_candidates) if open_set else examples
        tr, va, te = detector_lib.split_indices(len(ex), key=split_key, fractions=fractions)
        det = scorer.fit_examples(ex.take(tr), ex.take(va), key=train_key).detector
        res = detector_lib.assess(det, ex.take(te))
        rep = dict(
            repetition=r,
            test_accuracy=res["accuracy"],
            val_accuracy=det.history[det.best_epoch - 1]["val_accuracy"],
            best_epoch=det.best_epoch,
            split_sizes=[len(tr), len(va), len(te)],
            test_children=[ex.child_ids[i] for i in te],
        )
        if open_set:
            none = ex.no_parent[te]
            rep.update(
                held_out=examples.parent_ids[r % examples.num_candidates],
                n_no_parent=res["n_no_parent"],
                no_parent_correct=int((res["predictions"] == res["labels"])[none].sum()),
                accuracy_no_parent=res["accuracy_no_parent"],
                accuracy_with_parent=res["accuracy_with_parent"],
            )
        reps.append(rep)
    out = dict(
        zoo=getattr(getattr(zoo, "spec", None), "name", None),
        open_set=open_set,
        repetitions=repetitions,
        seed=seed,
        key=np.asarray(jax.random.key_data(base)).tolist(),
        num_parents=examples.num_candidates,
        num_children=len(examples),
        weight_layer=examples.weight_layer,
        feature_tap=examples.feature_tap,
        weight_pool=examples.weight_pool,
        feature_pool=examples.feature_pool,
        split_sizes=reps[0]["split_sizes"],
        test_accuracy=_rates([r["test_accuracy"] for r in reps]),
        val_accuracy=_rates([r["val_accuracy"] for r in reps]),
        module=detector_lib.module_config(module),
        train_kwargs=dict(train_kwargs),
        per_repetition=reps,
    )
    if open_set:
        out.update(
            accuracy_no_parent=_rates([r["accuracy_no_parent"] for r in reps]),
            accuracy_with_parent=_rates([r["accuracy_with_parent"] for r in reps]),
            no_parent_correct=sum(r["no_parent_correct"] for r in reps),
            no_parent_total=sum(r["n_no_parent"] for r in reps),
            held_out=[r["held_out"] for r in reps],
        )
    out["seconds"] = time.time() - t0
    return out


# --------------------------------------------------------------------------- MGMP


def _split_field(records, what: str, preferred) -> str:
    """The hyper-parameter that splits ``records`` into disjoint pool / evaluation groups (preferred, lr, seed)."""
    preferred = mgmp_lib.SplitBy(preferred).value
    for field in (preferred, mgmp_lib.SplitBy.LR.value, mgmp_lib.SplitBy.SEED.value):
        if len({r.hparams[field] for r in records}) >= 2:
            return field
    raise mgmp_lib.MGMPError(
        f"run_protocol: the {what} do not differ in {preferred}, seed or learning rate, so they"
        " cannot be split into disjoint pool and evaluation sets"
    )


def _halves(values, key: jax.Array) -> tuple[set, set]:
    """A random split of distinct ``values`` into (pool, evaluation), both non-empty."""
    values = sorted(values)
    perm = [values[i] for i in np.asarray(jax.random.permutation(key, len(values)))]
    n_eval = max(1, len(values) // 2)
    return set(perm[n_eval:]), set(perm[:n_eval])


def _mgmp_summary(accs, correct, total) -> dict:
    s = metrics.mean_std(accs)
    return {
        "accuracy_mean": s["mean"],
        "accuracy_std": s["std"],
        "accuracies": s["values"],
        "models_correct": int(correct),
        "models_total": int(total),
    }


def mgmp_protocol(
    z,
    *,
    repetitions: int = 4,
    key: jax.Array | None = None,
    seed: int = 0,
    config: mgmp_lib.Config | None = None,
    num_inputs: int | None = 2048,
    eval_split: str = "test",
    delta: float = 0.9,
    split_children_by=mgmp_lib.SplitBy.LR,
    split_independents_by=mgmp_lib.SplitBy.SEED,
    tap: str = "logits",
    task: str | None = None,
) -> dict:
    """The paper's Table 1 protocol on a zoo, with and without the DNA generator (``mgmp.run_protocol``).

    Repetition ``r``: the source is a parent (a ``key``-permuted order, cycling);
    children are split by ``split_children_by`` and independents by
    ``split_independents_by`` into pool and evaluation halves of distinct values
    (``jax.random`` keys). The pool is a VERIFY scenario (candidate = the source,
    queries = pool models, related = homologous) on the first ``num_inputs``
    inputs of the parent task's train split; :class:`ModelDNAScorer` (``config``
    and the same with ``Generator.NONE``, one key) is fitted on it and scores the
    evaluation models on the parent task's ``eval_split`` inputs. ``A_o`` / ``A_n``
    are the mean fractions of correctly classified fragments on homologous /
    non-homologous evaluation targets; accuracy = ``(A_o + A_n) / 2``.

    ``tap="logits"`` uses the models' logits (the paper); another feature tap
    builds the fragments from it (shared backbone when heads differ).

    Children and independents are those of child task ``task`` (default: the zoo's
    first child task): with several child tasks (``paper_fc``) the heads differ in
    size and models of different tasks cannot share one DNA classifier.

    Returns:
      ``zoo``, ``settings``, ``with_generator`` / ``without_generator``
      (``accuracy_mean``, ``accuracy_std`` (ddof 1), ``accuracies``,
      ``models_correct``, ``models_total``), ``runs`` (per repetition: source, pool
      and evaluation ids, ``A_o``, ``A_n``, ``model_auc``, ``final_train_accuracy``,
      per-target ``decisions``) and ``seconds``.
    """
    t0 = time.time()
    config = mgmp_lib.Config() if config is None else config
    baseline = dataclasses.replace(config, generator=mgmp_lib.Generator.NONE)
    if repetitions < 1:
        raise mgmp_lib.MGMPError(f"repetitions must be >= 1, got {repetitions}")
    child_tasks = [t.name for t in getattr(z.spec, "child_tasks", ())]
    task = task or (child_tasks[0] if child_tasks else None)
    parents, children, independents = list(z.parents), list(z.children), list(z.independents)
    if task is not None:
        children = [c for c in children if c.task == task]
        independents = [r for r in independents if r.task == task]
    if not parents or not children:
        raise mgmp_lib.MGMPError(
            f"zoo {z.spec.name!r} has {len(parents)} parents and {len(children)} children; "
            "MGMP needs parents with children"
        )
    ptask = z.spec.parent_task.name
    x_dna = np.asarray(z.task_data(ptask, "train")[0][:num_inputs], np.float32)
    x_eval = np.asarray(z.task_data(ptask, eval_split)[0], np.float32)
    everything = model_set(z, [r.id for r in parents + children + independents])
    scorer_tap = None if tap == "logits" else tap

    child_field = _split_field(children, "children", split_children_by)
    ind_field = _split_field(independents, "independents", split_independents_by) if len(independents) >= 2 else None
    base = _key(key, seed)
    order_key, rep_base = jax.random.split(base)
    order = [parents[i] for i in np.asarray(jax.random.permutation(order_key, len(parents)))]
    runs = []
    results = {"with_generator": ([], 0, 0), "without_generator": ([], 0, 0)}
    for rep in range(repetitions):
        child_key, ind_key, train_key = jax.random.split(jax.random.fold_in(rep_base, rep), 3)
        source = order[rep % len(order)]
        child_pool_vals, child_eval_vals = _halves({c.hparams[child_field] for c in children}, child_key)
        own = [c for c in z.children_of(source.id) if task is None or c.task == task]
        if not any(c.hparams[child_field] in child_eval_vals for c in own) or not any(
            c.hparams[child_field] in child_pool_vals for c in own
        ):
            # The source lacks children on one side (e.g. after the accuracy floor): flip the split.
            child_pool_vals, child_eval_vals = child_eval_vals, child_pool_vals
        if ind_field is None:
            ind_pool_vals, ind_eval_vals = set(), set()
        else:
            ind_pool_vals, ind_eval_vals = _halves({r.hparams[ind_field] for r in independents}, ind_key)
        others = [c for c in children if c.parent_id != source.id]
        split = {
            "pool_homologous": [c.id for c in own if c.hparams[child_field] in child_pool_vals],
            "pool_non_homologous": [c.id for c in others if c.hparams[child_field] in child_pool_vals]
            + [r.id for r in independents if ind_field and r.hparams[ind_field] in ind_pool_vals],
            "eval_homologous": [c.id for c in own if c.hparams[child_field] in child_eval_vals],
            "eval_non_homologous": [c.id for c in others if c.hparams[child_field] in child_eval_vals]
            + [r.id for r in independents if ind_field and r.hparams[ind_field] in ind_eval_vals],
        }
        if not all(split.values()):
            raise mgmp_lib.MGMPError(
                f"run_protocol: repetition {rep} (source {source.id!r}) has an empty set: "
                + ", ".join(f"{k}={len(v)}" for k, v in split.items())
            )
        src = everything.take(_index(everything, [source.id]))
        pool = everything.take(_index(everything, split["pool_homologous"] + split["pool_non_homologous"]))
        hom = set(split["pool_homologous"])
        field = child_field
        train = Scenario(
            name=f"{z.spec.name}/mgmp/rep{rep}",
            question=Question.VERIFY,
            candidates=src,
            queries=pool,
            labels=[0 if i in hom else NO_PARENT for i in pool.ids],
            related=[[i in hom for i in pool.ids]],
            kinds=["homologous" if i in hom else "non_homologous" for i in pool.ids],
            split_keys=[str(z.get(i).hparams.get(field)) for i in pool.ids],
            probe=x_dna,
        )
        eval_ids = split["eval_homologous"] + split["eval_non_homologous"]
        evals = everything.take(_index(everything, eval_ids))
        truth = np.array([i in set(split["eval_homologous"]) for i in evals.ids])
        run = {
            "repetition": rep,
            "source": source.id,
            "split_by": {"children": child_field, "independents": ind_field},
            **split,
        }
        for name, cfg in (("with_generator", config), ("without_generator", baseline)):
            scorer = ModelDNAScorer(config=cfg, tap=scorer_tap).fit(train, key=train_key)
            frac = scorer.score(src, evals, probe=x_eval)[0]
            a_o, a_n = float(frac[truth].mean()), float((1.0 - frac[~truth]).mean())
            by_id = dict(zip(evals.ids, zip(truth, frac)))
            decisions = []
            for i in eval_ids:
                t, f = by_id[i]
                d = bool(f >= delta)
                decisions.append(
                    {"id": i, "homologous": bool(t), "fraction": float(f), "decision": d, "correct": d == bool(t)}
                )
            accs, correct, total = results[name]
            acc = 0.5 * (a_o + a_n)
            results[name] = (accs + [acc], correct + sum(d["correct"] for d in decisions), total + len(decisions))
            # Threshold-free view of the model-level decision: does the homologous-fragment fraction
            # rank every homologous target above every non-homologous one (whatever delta)?
            auc = metrics.roc_auc(frac[truth], frac[~truth])
            history = scorer.histories[source.id]
            run[name] = {
                "accuracy": acc,
                "A_o": a_o,
                "A_n": a_n,
                "model_auc": auc,
                "final_train_accuracy": float(np.mean(history["train_accuracy"][-50:])),
                "decisions": decisions,
            }
        runs.append(run)
    return {
        "zoo": {
            "name": z.spec.name,
            "task": task,
            "workdir": str(z.workdir),
            "parents": len(parents),
            "children": len(children),
            "independents": len(independents),
        },
        "settings": {
            "repetitions": repetitions,
            "seed": seed,
            "key": np.asarray(jax.random.key_data(base)).tolist(),
            "num_inputs": int(x_dna.shape[0]),
            "eval_split": eval_split,
            "eval_inputs": int(x_eval.shape[0]),
            "delta": delta,
            "tap": tap,
            "split_children_by": mgmp_lib.SplitBy(split_children_by).value,
            "split_independents_by": mgmp_lib.SplitBy(split_independents_by).value,
            "config": config.to_json(),
        },
        "with_generator": _mgmp_summary(*results["with_generator"]),
        "without_generator": _mgmp_summary(*results["without_generator"]),
        "runs": runs,
        "seconds": time.time() - t0,
    }


# --------------------------------------------------------------------------- ModelGiF


def modelgif_protocol(
    zoo,
    *,
    n_refs: Sequence[int] = (8, 32, 128, 256),
    steps: int = 50,
    key: jax.Array | None = None,
    seed: int = 0,
    task: str = "B",
    split: str = "test",
    strategy=modelgif_lib.ReferenceSampling.RANDOM,
    target: Any = None,
    tap: str | None = None,
    chunk_size: int | None = 32,
) -> dict[str, Any]:
    """``modelgif.evaluate``: each kept parent vs its children and vs independents on ``task``, by reference count.

    Positives: (parent, own child); negatives: (parent, independent), and in
    ``"other_children"`` (parent, another parent's child). One
    :class:`ModelGiFScorer` with ``n_refs = max(n_refs)`` draws the references
    from ``task``'s ``split`` with ``key`` (data only); smaller counts are prefixes
    (:func:`~jaxlineage.eval.methods.reference_sweep`).

    Returns:
      ``children_vs_independents`` and ``other_children`` (lists of
      :class:`~jaxlineage.eval.methods.SweepPoint`), ``distances`` ``[P, C + I,
      max(n_refs)]``, ``parent_ids``, ``column_ids``, ``reference_indices``, ``settings``.
    """
    parents = list(zoo.parents)
    parent_ids = {p.id for p in parents}
    children = [r for r in zoo.children if r.task == task and r.parent_id in parent_ids]
    independents = [r for r in zoo.independents if r.task == task]
    if not parents or not children or not independents:
        raise ValueError(
            f"the zoo needs parents, their children on task {task!r} and independents on it; "
            f"got {len(parents)}, {len(children)} and {len(independents)}"
        )
    base = _key(key, seed)
    strategy = modelgif_lib.ReferenceSampling(strategy)
    scorer = ModelGiFScorer(
        field=Field.LOGITS if tap is None else tap,
        n_refs=max(n_refs),
        steps=steps,
        key=base,
        strategy=strategy,
        target=target,
        chunk_size=chunk_size,
    )
    x_all, y_all = zoo.task_data(task, split)
    x_all = np.asarray(x_all, np.float32)
    _, _, idx = scorer.references(x_all, y_all)
    rows = model_set(zoo, [p.id for p in parents])
    cols = model_set(zoo, [c.id for c in children + independents])
    if len(rows.populations) != 1 or len(cols.populations) != 1:
        raise ValueError("modelgif.evaluate: parents and columns must each be models of one task")
    per_ref = scorer.per_reference(rows.populations[0], cols.populations[0], probe=x_all, labels=y_all)
    by_id = {r.id: r for r in children + independents}
    own = np.array([[by_id[c].parent_id == p for c in cols.ids] for p in rows.ids])
    is_child = np.array([by_id[c].role == "child" for c in cols.ids])[None, :].repeat(len(rows.ids), 0)
    t = scorer.scalar_output
    return {
        "children_vs_independents": reference_sweep(per_ref, own, ~is_child, n_refs=n_refs),
        "other_children": reference_sweep(per_ref, own, is_child & ~own, n_refs=n_refs),
        "distances": per_ref,
        "parent_ids": list(rows.ids),
        "column_ids": list(cols.ids),
        "reference_indices": idx,
        "settings": {
            "n_refs": tuple(n_refs),
            "steps": steps,
            "seed": seed,
            "key": np.asarray(jax.random.key_data(base)).tolist(),
            "task": task,
            "split": split,
            "strategy": strategy.value,
            "target": getattr(t, "value", getattr(t, "__name__", repr(t))),
            "tap": tap,
        },
    }
