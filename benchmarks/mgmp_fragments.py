"""MGMP on the quick zoo: fragments from the logits (the paper) or from a backbone layer.

    python benchmarks/mgmp_fragments.py [--workdir DIR] [--taps logits,relu3] [--splits lr,seed]
        [--pair-inputs concat] [--child-seeds 2] [--child-lrs 1e-3,5e-4,3e-4] [--repetitions 5]
        [--out benchmarks/results/mgmp_fragments.jsonl]

In ``zoo.QUICK`` the children carry a freshly initialised task-B head, while the
source (a parent) has its task-A head: their logits on task-A inputs share no label
space, and lineage can only show through the backbone. ``ModelDNAScorer(tap=...)``
builds the fragments from any feature tap instead, which parents and children share.

For every tap and every way of holding out evaluation children (``lr``: folds by
fine-tuning learning rate, so test children have a rate never seen in training;
``seed``: folds by fine-tuning seed) this asks the *verify* scenario (parents against
children and independents, :func:`jaxlineage.eval.scenarios.verify` with ``split_by``) of
:class:`jaxlineage.eval.methods.ModelDNAScorer` with and without the generator through
:func:`jaxlineage.eval.protocols.run_all` (``--folds`` folds; AUC, TPR at low FPR, AUC
per derivation kind). For every tap it also records how
far apart two children of one parent are when they share the fine-tuning seed (other
learning rate) or the learning rate (other seed), and how close one fragment of a target
is to the source's by kind of target (``fragment_cosine``, no training involved).
``--pair-inputs`` also varies what
the classifier sees of a fragment pair (``mgmp.PairInput``: ``concat`` is the paper,
``relation`` only the element-wise product and absolute difference). One JSON line
per (pair input, tap, split) and one per tap for the distances (``--splits ""``: distances only).
Records before issue 14 came from ``mgmp.run_protocol`` (source-by-source repetitions, now removed).
``--child-seeds N`` uses ``QUICK`` with N fine-tuning seeds per (parent, learning rate)
(``benchmarks/lineage_power.py``'s zoo), so the pool holds more seed families;
``--child-lrs`` replaces the fine-tuning learning rates (e.g. a gentler recipe).
By default a split has one fold per value of its key (:func:`num_folds`; on ``QUICK``: 3 child + 2
independent learning rates = 5 folds, 2 child + 4 independent seeds = 6), as the bench's
``presets.LR_FOLD_SCENARIOS``: a test fold's children have a value no training child has, every
training fold keeps children of every parent, and a fold of independents only has no positive pair
(no AUC). ``--folds N`` groups the values into N folds instead; with fewer folds than values a
test fold can take every child value, and Model DNA's fit then raises (no homologous training query).
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
from _common import parse_floats, quick_variant, setup_logging, write

from jaxlineage import mgmp, zoo
from jaxlineage.eval import methods, protocols, scenarios
from jaxlineage.eval.metrics import best_threshold_accuracy, mean_std, roc_auc  # noqa: E402,F401 (re-exported)


def _mean_std(v) -> dict:
    s = mean_std(v)  # the sample std (ddof 1), as every ± of the library
    return {"mean": s["mean"], "std": s["std"]}


def zoo_outputs(z, ids, x, *, tap: str) -> dict:
    """``{id: outputs [N, D]}`` at ``tap`` on ``x``: one stacked population (``vmap``) per task, public API only."""
    by_task: dict[str, list[str]] = {}
    for i in ids:
        by_task.setdefault(z.get(i).task, []).append(i)
    out = {}
    for task_ids in by_task.values():
        fn = z.network_for(task_ids[0]).feature_fn(tap)
        out.update(zip(task_ids, mgmp.population_outputs(fn, z.stack(task_ids), x)))
    return out


def _kind(z, source_id: str, target_id: str) -> str:
    rec = z.get(target_id)
    if rec.role == "independent":
        return "independent"
    same = z.get(rec.parent_id).hparams.get("init_seed") == z.get(source_id).hparams.get("init_seed")
    return "sibling_init_child" if same else "other_init_child"


def child_distances(z, out: dict) -> dict:
    """Relative distance ``mean_i ‖f_a(x_i) − f_b(x_i)‖ / mean_i ‖f_a(x_i)‖`` between two children of one
    parent (``out``: id -> outputs [N, C]), grouped by whether they share the fine-tuning seed or the
    learning rate."""
    groups = {"same_seed_other_lr": [], "same_lr_other_seed": []}
    for p in z.parents:
        kids = z.children_of(p.id)
        for i, a in enumerate(kids):
            for b in kids[i + 1 :]:
                fa, fb = np.asarray(out[a.id]), np.asarray(out[b.id])
                d = float(np.linalg.norm(fa - fb, axis=1).mean() / np.linalg.norm(fa, axis=1).mean())
                if a.hparams["seed"] == b.hparams["seed"]:
                    groups["same_seed_other_lr"].append(d)
                elif a.hparams["lr"] == b.hparams["lr"]:
                    groups["same_lr_other_seed"].append(d)
    return {k: {**_mean_std(v), "n": len(v)} for k, v in groups.items()}


def fragment_cosine(z, out: dict) -> dict:
    """How much lineage one fragment carries, without any training.

    For every (parent as source, child or independent as target) pair: the cosine
    between the source's and the target's outputs (``out``: id -> [N, C]) on each input. Per kind
    of target: mean and std over fragments; against the homologous fragments, the
    best balanced accuracy of a single threshold on the cosine (fragment level) and
    the ROC AUC of the pair's mean cosine (model level). A classifier can combine more
    than this one statistic, so these are a reference point, not a bound. ``std`` is
    the spread of the fragments' cosines (ddof 0, a description of one population of
    fragments, not a ± over repetitions).
    """
    cos = {}
    for p in z.parents:
        s = np.asarray(out[p.id], np.float64)
        for t in list(z.children) + list(z.independents):
            kind = "homologous" if t.parent_id == p.id else _kind(z, p.id, t.id)
            cos.setdefault(kind, []).append(mgmp.fragment_cosine(s, out[t.id]))
    hom = np.concatenate(cos["homologous"])
    hom_means = np.array([c.mean() for c in cos["homologous"]])
    res = {}
    for kind, cs in cos.items():
        res[kind] = {"mean": float(np.mean(cs)), "std": float(np.std(cs)), "pairs": len(cs)}
        if kind != "homologous":
            res[kind]["best_threshold_accuracy"] = best_threshold_accuracy(hom, np.concatenate(cs))
            res[kind]["model_auc"] = roc_auc(hom_means, np.array([c.mean() for c in cs]))
    return res


def num_folds(scen, folds: int | None) -> int:
    """``folds``, or by default one fold per distinct split key of ``scen`` (leave one value out)."""
    return folds if folds else len(set(scen.split_keys))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="/tmp/jl_zoo_quick", help="the (QUICK variant) zoo's folder, built if missing")
    ap.add_argument("--taps", default="logits,relu3")
    ap.add_argument("--splits", default="lr,seed")
    ap.add_argument("--pair-inputs", default="concat")
    ap.add_argument("--child-seeds", type=int, default=2, help="2 = zoo.QUICK; more: lineage_power's zoo")
    ap.add_argument("--child-lrs", default="", help="fine-tuning learning rates (default: QUICK's 1e-2,5e-3,3e-3)")
    ap.add_argument("--folds", type=int, default=None, help="default: one fold per split value")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/mgmp_fragments.jsonl")
    args = ap.parse_args(argv)
    setup_logging()

    z = zoo.build(quick_variant(child_seeds=args.child_seeds, child_lrs=parse_floats(args.child_lrs)), args.workdir)
    x_eval = np.asarray(z.task_data(z.spec.parent_task.name, "test")[0][:1000], np.float32)
    ids = [r.id for r in list(z.parents) + list(z.children) + list(z.independents)]
    for tap in args.taps.split(","):
        out = zoo_outputs(z, ids, x_eval, tap=tap)  # every model once per tap
        write(
            args.out,
            {
                "benchmark": "mgmp_fragments",
                "zoo": z.spec.name,
                "zoo_dir": args.workdir,
                "tap": tap,
                "child_lrs": list(z.spec.children.lrs),
                "inputs": int(x_eval.shape[0]),
                "child_distances": child_distances(z, out),
                "fragment_cosine": fragment_cosine(z, out),
            },
        )
    runs = [
        (p, t, s)
        for p in args.pair_inputs.split(",")
        for t in args.taps.split(",")
        for s in args.splits.split(",")
        if s
    ]
    for pair_input, tap, split in runs:
        scen = scenarios.verify(z, split_by=split)
        config = dict(pair_input=pair_input)
        dna = [
            methods.ModelDNAScorer(config=config, tap=None if tap == "logits" else tap),
            methods.ModelDNAScorer(config={**config, "generator": "none"}, tap=None if tap == "logits" else tap),
        ]
        folds = num_folds(scen, args.folds)
        results = protocols.run_all(scen, dna, key=jax.random.key(args.seed), num_folds=folds)
        write(
            args.out,
            {
                "benchmark": "mgmp_fragments",
                "protocol": "eval.protocols.run_all on the verify scenario",
                "zoo": z.spec.name,
                "zoo_dir": args.workdir,
                "tap": tap,
                "child_lrs": list(z.spec.children.lrs),
                "pair_input": pair_input,
                "split_by": split,
                "folds": folds,
                "seed": args.seed,
                "results": [r.to_json() for r in results],
            },
        )
        print(
            f"{tap} {pair_input} split by {split}: "
            + ", ".join(
                f"{r.scorer} AUC {r.metrics['auc']['mean']:.3f} +- {r.metrics['auc']['std']:.3f}" for r in results
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
