"""Merges in the recover question: the arborescence's forest vs the DAG with second parents, on an LM zoo.

    python benchmarks/dag_recovery.py [--workdir /tmp/lmq] [--spec lm_quick|lm_tiny] [--alpha 0.05]
        [--align-candidates 8] [--out benchmarks/results/dag_recovery.jsonl]

Opens the zoo in ``--workdir`` (builds it there first if absent: minutes for ``lm_tiny``, more for
``lm_quick``). Models: every model with the bases' architecture (``distill_small`` students have half the
width and cannot be weight-compared); the truth is the zoo's graph restricted to them, where each
``merge`` model has two parents (its ``ft`` and ``ft_net`` sources).

Scores (no training, no data): ``weight-l2`` (:func:`jaxlineage.eval.tree.weight_scores`) and
``weight-l2-aligned`` (:func:`jaxlineage.eval.tree.aligned_weight_scores` with the zoo's permutation
spec, each model's ``--align-candidates`` nearest pairs aligned). Forest: ``tree.recover`` with the
true number of roots, directions ``none`` and ``kurtosis-auto``. DAG: ``tree.recover_dag`` on the same
forest, null = ``tree.forest_null_scores`` (pairs in different recovered trees), ``--alpha``, families
``node`` and ``graph``.

Output: one JSON line (settings, versions, device) with per scorer x direction x family: the forest's
``tree_accuracy``, ``dag_accuracy`` of the forest and of the DAG, the merge models' forest parent (its
true relation), the second parents added (true edges or the true relation of a wrong one), the smallest
p-value the null allows, and timings; plus a printed table and a diagnostic that reads the truth (not a
result): whether the merge lies on the weight-space segment between its two parents.
"""

from __future__ import annotations

import argparse
import collections
import logging
import time

import numpy as np
from _common import setup_logging, write

from jaxlineage import zoo
from jaxlineage.eval import tree
from jaxlineage.graph import LineageGraph

SPECS = {"lm_quick": zoo.LM_QUICK, "lm_tiny": zoo.LM_TINY}
RULES = ("none", "kurtosis-auto")
FAMILIES = ("node", "graph")


def open_or_build(spec_name: str, workdir: str) -> zoo.Zoo:
    try:
        return zoo.Zoo.open(workdir)
    except zoo.ZooError:
        return zoo.build(SPECS[spec_name], workdir, progress=True)


def comparable(z: zoo.Zoo) -> list[str]:
    """Kept models whose group has the bases' architecture (one weight shape for all)."""
    groups = {g.name: g for g in z.graph_spec.groups}
    base = next(g for g in z.graph_spec.groups if g.source is None)
    same = {n for n, g in groups.items() if not g.arch_kwargs or g.arch_kwargs == base.arch_kwargs}
    return [r.id for r in z.models() if r.group in same]


def relation(truth: LineageGraph, a: str, b: str) -> str:
    if a in truth.parents(b):
        return "true parent"
    if b in truth.parents(a):
        return "true child (reversed)"
    return truth.relation(a, b).value


def merge_report(z: zoo.Zoo, truth: LineageGraph, forest: LineageGraph, dag: LineageGraph) -> list[dict]:
    out = []
    for m in truth.ids:
        tp = truth.parents(m)
        if len(tp) < 2:
            continue
        fp = forest.parents(m)
        out.append(
            {
                "model": m,
                "true_parents": [z.get(p).group for p in tp],
                "forest_parent": z.get(fp[0]).group if fp else None,
                "forest_parent_relation": relation(truth, fp[0], m) if fp else "root",
                "dag_parents": [z.get(p).group for p in dag.parents(m)],
                "both_found": set(tp) <= set(dag.parents(m)),
            }
        )
    return out


def additions(z: zoo.Zoo, truth: LineageGraph, forest: LineageGraph, dag: LineageGraph) -> dict:
    added = [(a, b) for a, b in dag.edges() if (a, b) not in set(forest.edges())]
    rel = collections.Counter(relation(truth, a, b) for a, b in added)
    by_child = collections.Counter(z.get(b).group for a, b in added)
    return {"n": len(added), "true": rel.get("true parent", 0), "by_relation": dict(rel), "by_child_group": by_child}


def midpoint_diagnostic(truth: LineageGraph, ids: list[str], scores: np.ndarray, first: dict) -> dict:
    """Not a result (no test, no threshold): for each model ``b`` with a first parent ``a = first[b]``, the model
    ``c`` minimising the midpoint residual ``(d(a, b) + d(b, c) - d(a, c)) / d(a, c)`` (0 when ``b`` lies on the
    segment from ``a`` to ``c``, as a weight average of ``a`` and ``c`` does) under ``d = -scores``. The merges
    (true two-parent models) are compared with the others; a merge is ``found`` when ``{a, c}`` are its parents."""
    d = -scores
    ix = {m: i for i, m in enumerate(ids)}
    merges, others, found = [], [], 0
    for m in ids:
        if first.get(m) is None:
            continue
        b, a = ix[m], ix[first[m]]
        cs = [c for c in range(len(ids)) if c not in (a, b)]
        r = np.array([(d[a, b] + d[b, c] - d[a, c]) / d[a, c] for c in cs])
        j = int(np.argmin(r))
        if len(truth.parents(m)) > 1:
            found += {ids[a], ids[cs[j]]} == set(truth.parents(m))
            merges.append(float(r[j]))
        else:
            others.append(float(r[j]))
    return {
        "merges_found": found,
        "merges": len(merges),
        "merge_residuals": merges,
        "non_merge_smallest_residuals": sorted(others)[:10],
        "non_merge_nodes": len(others),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", default="lm_quick", choices=sorted(SPECS))
    ap.add_argument("--workdir", default="")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--align-candidates", type=int, default=8)
    ap.add_argument("--out", default="benchmarks/results/dag_recovery.jsonl")
    args = ap.parse_args(argv)
    setup_logging()
    log = logging.getLogger("dag_recovery")
    t_start = time.time()
    workdir = args.workdir or f"/tmp/jl_zoo_{args.spec}"
    z = open_or_build(args.spec, workdir)
    ids = comparable(z)
    truth = tree.restrict_graph(z.graph, ids)
    num_roots = len(truth.roots())
    params = z.stack(ids)
    t0 = time.time()
    scores = {"weight-l2": tree.weight_scores(params)}
    kurt = tree.weight_kurtosis(params)
    timings = {"weight_scores": time.time() - t0}
    t0 = time.time()
    arch = z.get(ids[0]).arch
    try:
        scores["weight-l2-aligned"] = tree.aligned_weight_scores(
            params, spec=arch, candidates=args.align_candidates or None
        )
        timings["aligned_weight_scores"] = time.time() - t0
    except tree.TreeError as e:
        log.info("weight-l2-aligned skipped: %s", e)
        timings["aligned_weight_scores"] = f"skipped: {e}"
    rows = []
    for name, s in scores.items():
        for rule in RULES:
            kw = dict(num_roots=num_roots, solver=tree.Solver.DENSE)
            if rule == "kurtosis-auto":
                kw |= dict(direction=tree.Direction.KURTOSIS, kurtosis=kurt, kurtosis_order=tree.KurtosisOrder.AUTO)
            forest = tree.recover(s, ids=ids, **kw)
            acc = tree.tree_accuracy(truth, forest)
            base_row = {"scorer": name, "direction": rule, "tree": acc.as_dict()}
            base_row["forest_dag"] = tree.dag_accuracy(truth, forest).as_dict()
            for family in FAMILIES:
                t1 = time.time()
                dag, sp = tree.recover_dag(s, ids=ids, alpha=args.alpha, family=family, return_details=True, **kw)
                null_n = tree.forest_null_scores(s, sp.parents).size
                rows.append(
                    base_row
                    | {
                        "family": family,
                        "dag": tree.dag_accuracy(truth, dag).as_dict(),
                        "tree_of_dag": tree.tree_accuracy(truth, dag).as_dict(),
                        "merges": merge_report(z, truth, forest, dag),
                        "added": additions(z, truth, forest, dag),
                        "null_size": int(null_n),
                        "smallest_p": float(np.max(sp.num_candidates) / (null_n + 1)),
                        "blocked": int(sp.blocked.sum()),
                        "seconds": time.time() - t1,
                    }
                )
    print(f"\n{len(ids)} models, {len(truth.edges())} true edges, {num_roots} roots, alpha {args.alpha}")
    print("scorer | direction | family | tree dir/undir | DAG prec/rec (dir) | merges both/any | added (true)")
    for r in rows:
        d, t = r["dag"], r["tree"]
        print(
            f"{r['scorer']} | {r['direction']} | {r['family']} | {t['directed']:.3f}/{t['undirected']:.3f} |"
            f" {d['precision']:.3f}/{d['recall']:.3f} | {d['merge_both']:.2f}/{d['merge_any']:.2f} |"
            f" {r['added']['n']} ({r['added']['true']}) {r['added']['by_relation']}"
        )
        print("   merges' forest parents:", collections.Counter(m["forest_parent"] for m in r["merges"]))
    true_first = {m: (truth.parents(m) or (None,))[0] for m in ids}
    forest_kauto = tree.recover(
        scores["weight-l2"],
        ids=ids,
        num_roots=num_roots,
        solver=tree.Solver.DENSE,
        direction=tree.Direction.KURTOSIS,
        kurtosis=kurt,
        kurtosis_order=tree.KurtosisOrder.AUTO,
    )
    mid = {
        "true first parent": midpoint_diagnostic(truth, ids, scores["weight-l2"], true_first),
        "forest parent (weight-l2 + kurtosis-auto)": midpoint_diagnostic(
            truth, ids, scores["weight-l2"], {m: forest_kauto.parent(m) for m in ids}
        ),
    }
    for k, v in mid.items():
        print(
            f"midpoint diagnostic (weight-l2, {k}): {v['merges_found']}/{v['merges']} merges found, residuals"
            f" {np.round(v['merge_residuals'], 4).tolist()}; non-merge models' smallest"
            f" {np.round(v['non_merge_smallest_residuals'][:5], 4).tolist()}"
        )
    write(
        args.out,
        {
            "benchmark": "dag_recovery",
            "variant": z.spec.name,
            "settings": {
                "spec": z.spec.name,
                "workdir": workdir,
                "models": len(ids),
                "true_edges": len(truth.edges()),
                "true_roots": num_roots,
                "alpha": args.alpha,
                "align_candidates": args.align_candidates,
                "solver": tree.Solver.DENSE.value,
                "null": "forest_null_scores (pairs in different recovered trees)",
            },
            "rows": rows,
            "midpoint_diagnostic_weight_l2": mid,
            "timings_s": timings | {"total": time.time() - t_start},
        },
    )


if __name__ == "__main__":
    main()
