"""Control for the quick zoo's negatives: independents trained with the children's recipe.

    python benchmarks/recipe_control.py [--quick-zoo DIR] [--control-zoo DIR] [--seed 0]
        [--out benchmarks/results/recipe_control.jsonl]

In ``zoo.QUICK`` the children fine-tune with Adam at lr 1e-2 / 5e-3 / 3e-3 for 4 epochs,
while the independents (the negatives) train from scratch at the parents' lr 1e-3 / 5e-4
for 3 epochs. A method that separates "children" from "independents" may then be
detecting the recipe rather than the lineage. This script builds a control zoo that
is ``QUICK`` except that the independents train from scratch with the children's
recipe (lr 1e-2 / 5e-3, 4 epochs, same seeds), and runs on both zoos:

* ModelGiF, children vs independents, on the logits field and on the backbone field
  at ``relu3`` (``modelgif.evaluate``; 8 / 32 / 128 / 256 references, 20 nodes);
* MGMP with and without the generator (``mgmp.run_protocol``, 5 repetitions);
* learning-free plain L2 between each parent and the independents, as a scale.

One JSON line per (zoo, method). Builds or reuses the zoos (~1.5 min each on 2 CPU
cores); the methods take ~3 min per zoo.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _common import setup_logging, write  # noqa: E402

from jaxlineage import mgmp, modelgif, zoo  # noqa: E402

CONTROL = dataclasses.replace(
    zoo.QUICK,
    name="quick_recipe_control",
    independents=zoo.Grid(lrs=(1e-2, 5e-3), batch_sizes=(128,), seeds=(100, 101, 102, 103), epochs=4),
)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick-zoo", default="/tmp/jl_zoo_quick", help="workdir of zoo.QUICK (built if missing)")
    ap.add_argument("--control-zoo", default="/tmp/jl_zoo_quick_control", help="workdir of the control zoo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-refs", default="8,32,128,256")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/recipe_control.jsonl")
    args = ap.parse_args(argv)
    setup_logging()
    n_refs = tuple(int(n) for n in args.n_refs.split(","))

    for spec, workdir in ((zoo.QUICK, args.quick_zoo), (CONTROL, args.control_zoo)):
        z = zoo.build(spec, workdir)
        common = {
            "benchmark": "recipe_control",
            "zoo": spec.name,
            "zoo_dir": workdir,
            "independents": dataclasses.asdict(spec.independents),
            "accuracy": {
                role: sorted(round(r.test_acc, 4) for r in getattr(z, role))
                for role in ("parents", "children", "independents")
            },
        }
        for tap in (None, "relu3"):
            t0 = time.perf_counter()
            res = modelgif.evaluate(z, n_refs=n_refs, steps=args.steps, seed=args.seed, tap=tap)
            points = [
                {
                    "n_refs": p.n_refs,
                    "auc": p.auc,
                    "tpr_at_5": p.tpr_at_5,
                    "mean_pos": p.mean_pos,
                    "mean_neg": p.mean_neg,
                }
                for p in res["children_vs_independents"]
            ]
            others = [{"n_refs": p.n_refs, "auc": p.auc} for p in res["other_children"]]
            write(
                args.out,
                {
                    **common,
                    "method": "modelgif",
                    "field": tap or "logits",
                    "steps": args.steps,
                    "children_vs_independents": points,
                    "other_children": others,
                    "wall_s": time.perf_counter() - t0,
                },
            )
            print(
                f"{spec.name} modelgif {tap or 'logits'}: "
                + ", ".join(f"{p['n_refs']}: {p['auc']:.3f}" for p in points)
            )
        t0 = time.perf_counter()
        res = mgmp.run_protocol(z, repetitions=args.repetitions, seed=args.seed)
        summary = {
            k: {kk: res[k][kk] for kk in ("accuracy_mean", "accuracy_std", "models_correct", "models_total")}
            for k in ("with_generator", "without_generator")
        }
        a_o = {k: [r[k]["A_o"] for r in res["runs"]] for k in ("with_generator", "without_generator")}
        a_n = {k: [r[k]["A_n"] for r in res["runs"]] for k in ("with_generator", "without_generator")}
        write(
            args.out,
            {
                **common,
                "method": "mgmp",
                "summary": summary,
                "A_o": a_o,
                "A_n": a_n,
                "wall_s": time.perf_counter() - t0,
            },
        )
        print(f"{spec.name} mgmp: " + ", ".join(f"{k} {v['accuracy_mean']:.3f}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
