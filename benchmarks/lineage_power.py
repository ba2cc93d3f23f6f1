"""Does the Taylor step help the norm metrics? The quick zoo's table with 3x the children.

    python benchmarks/lineage_power.py [--workdir DIR] [--child-seeds 6] [--child-lrs 1e-3,5e-4]
        [--folds 5] [--out benchmarks/results/lineage_power.jsonl]

``zoo.QUICK`` has 48 children (8 parents x 3 learning rates x 2 seeds), so one child is
2.1 points and a LINEARIZED-vs-PLAIN difference of one or two children cannot be told
from noise. This script builds ``QUICK`` with more fine-tuning seeds per
(parent, learning rate) (default 6: 144 children; everything else identical, ~4 min
on 2 CPU cores, resumable) and reports, for the norm metrics (L1, L2, Lp, L∞, LSE):

* the bench's table (``eval.identify`` + ``eval.learning_free`` through ``eval.run_all``:
  5 folds, alpha chosen on the other folds from {0.001, 0.01, 0.1});
* per alpha, over **all** children (no selection, so a diagnostic, not a result):
  how many children each mode gets right, and the paired counts against PLAIN
  (children only the mode gets right / only PLAIN gets right).

``--child-lrs`` replaces the fine-tuning learning rates (``_common.quick_variant``), e.g.
to see how much of the table's difficulty comes from fine-tuning strength.
One JSON line per metric.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from _common import parse_floats, quick_variant, setup_logging, write

from jaxlineage import eval as jl_eval
from jaxlineage import lineage, zoo

NORM_METRICS = ("l1", "l2", "lp", "linf", "lse")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="/tmp/jl_zoo_quick_power")
    ap.add_argument("--child-seeds", type=int, default=6)
    ap.add_argument("--child-lrs", default="", help="fine-tuning learning rates, e.g. 1e-3,5e-4 (default: QUICK's)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--probe-size", type=int, default=512)
    ap.add_argument("--out", default="benchmarks/results/lineage_power.jsonl")
    args = ap.parse_args(argv)
    setup_logging()

    t0 = time.time()
    z = zoo.build(quick_variant(child_seeds=args.child_seeds, child_lrs=parse_floats(args.child_lrs)), args.workdir)
    build_s = time.time() - t0
    alphas = lineage.DEFAULT_ALPHAS
    t0 = time.time()
    # One scoring pass: the fold table and the all-children counts below use the same score grids.
    scenario = jl_eval.identify(z, probe_size=args.probe_size)
    results = jl_eval.run_all(
        scenario,
        jl_eval.learning_free(NORM_METRICS, alphas=alphas),
        key=jax.random.key(0),
        num_folds=args.folds,
        keep_scores=True,
    )
    eval_s = time.time() - t0
    labels = scenario.labels
    by_metric, correct = {}, {}
    for r in results:
        metric, _, mode = r.scorer.rpartition(" ")
        acc = r.metrics["accuracy"]
        by_metric.setdefault(metric, {})[mode] = {
            "mean": acc["mean"],
            "std": acc["std"],
            "folds": acc["values"],
            "alphas": r.details.get("alphas", []),
        }
        correct[(metric, mode)] = np.asarray(r.details["scores"]).argmax(axis=1) == labels[None]  # [A, M]
    for metric, table in by_metric.items():
        plain = correct[(metric, "plain")][0]
        per_alpha = {}
        for mode in ("first_order", "linearized"):
            if (metric, mode) not in correct:
                continue
            c = correct[(metric, mode)]
            per_alpha[mode] = [
                {
                    "alpha": float(a),
                    "correct": int(c[i].sum()),
                    "only_mode": int((c[i] & ~plain).sum()),
                    "only_plain": int((plain & ~c[i]).sum()),
                }
                for i, a in enumerate(alphas)
            ]
        write(
            args.out,
            {
                "benchmark": "lineage_power",
                "zoo": z.spec.name,
                "zoo_dir": args.workdir,
                "children": int(labels.size),
                "parents": len(z.parents),
                "child_seeds": args.child_seeds,
                "child_lrs": list(z.spec.children.lrs),
                "folds": args.folds,
                "probe_size": args.probe_size,
                "tap": jl_eval.default_tap(z.network),
                "metric": metric,
                "table": table,
                "plain_correct": int(plain.sum()),
                "per_alpha": per_alpha,
                "build_s": build_s,
                "evaluate_s": eval_s,
            },
        )


if __name__ == "__main__":
    main()
