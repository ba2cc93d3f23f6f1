"""Control for the quick zoo's negatives: independents trained with the children's recipe.

    python benchmarks/recipe_control.py [--workdir DIR] [--seed 0]
        [--out benchmarks/results/recipe_control.jsonl]

In ``zoo.QUICK`` the children fine-tune with Adam at lr 1e-2 / 5e-3 / 3e-3 for 4 epochs,
while the independents (the negatives) train from scratch at the parents' lr 1e-3 / 5e-4
for 3 epochs. A method that separates "children" from "independents" may then be
detecting the recipe rather than the lineage. This script builds a control zoo that
is ``QUICK`` except that the independents train from scratch with the children's
recipe (lr 1e-2 / 5e-3, 4 epochs, same seeds), and runs on both zoos:

* ModelGiF, children vs independents, on the logits field and on the backbone field
  at ``relu3`` (the *verify* scenario, :meth:`~jaxlineage.eval.methods.ModelGiFScorer.per_reference`
  and :func:`~jaxlineage.eval.methods.reference_sweep`; 8 / 32 / 128 / 256 references, 20 nodes);
* Model DNA with and without the generator (:class:`~jaxlineage.eval.methods.ModelDNAScorer`
  asked the same *verify* scenario through :func:`jaxlineage.eval.protocols.run_all`, 5 folds).

One JSON line per (zoo, method). Builds or reuses the zoos (~1.5 min each on 2 CPU
cores). Records before issue 14 came from the methods' own protocols (other splits).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import time

import jax
from _common import setup_logging, write

from jaxlineage import zoo
from jaxlineage.eval import methods, protocols, scenarios

CONTROL = dataclasses.replace(
    zoo.QUICK,
    name="quick_recipe_control",
    independents=zoo.Grid(lrs=(1e-2, 5e-3), batch_sizes=(128,), seeds=(100, 101, 102, 103), epochs=4),
)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--workdir", default="/tmp/jl_recipe_control", help="the zoos' folder: quick/ and control/ (built if missing)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-refs", default="8,32,128,256")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/recipe_control.jsonl")
    args = ap.parse_args(argv)
    setup_logging()
    n_refs = tuple(int(n) for n in args.n_refs.split(","))

    root = pathlib.Path(args.workdir)
    for spec, workdir in ((zoo.QUICK, str(root / "quick")), (CONTROL, str(root / "control"))):
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
        scen = scenarios.verify(z)
        unrelated = ~scen.related.any(axis=0)
        for field in (methods.Field.LOGITS, "relu3"):
            t0 = time.perf_counter()
            gif = methods.ModelGiFScorer(
                field=field, n_refs=max(n_refs), steps=args.steps, key=jax.random.key(args.seed)
            )
            d = gif.per_reference(scen.candidates, scen.queries, probe=scen.probe)
            sweeps = {
                "children_vs_independents": methods.reference_sweep(
                    d, scen.related, ~scen.related & unrelated[None, :], n_refs=n_refs
                ),
                "other_children": methods.reference_sweep(
                    d, scen.related, ~scen.related & ~unrelated[None, :], n_refs=n_refs
                ),
            }
            points = [dataclasses.asdict(p) for p in sweeps["children_vs_independents"]]
            write(
                args.out,
                {
                    **common,
                    "method": "modelgif",
                    "protocol": "eval verify scenario, reference_sweep",
                    "field": gif.tap or "logits",
                    "steps": args.steps,
                    "children_vs_independents": points,
                    "other_children": [{"n_refs": p.n_refs, "auc": p.auc} for p in sweeps["other_children"]],
                    "wall_s": time.perf_counter() - t0,
                },
            )
            print(
                f"{spec.name} modelgif {gif.tap or 'logits'}: "
                + ", ".join(f"{p['n_refs']}: {p['auc']:.3f}" for p in points)
            )
        t0 = time.perf_counter()
        dna = [methods.ModelDNAScorer(), methods.ModelDNAScorer(config=dict(generator="none"))]
        results = protocols.run_all(scen, dna, key=jax.random.key(args.seed), num_folds=args.folds)
        write(
            args.out,
            {
                **common,
                "method": "mgmp",
                "protocol": "eval.protocols.run_all on the verify scenario",
                "results": [r.to_json() for r in results],
                "wall_s": time.perf_counter() - t0,
            },
        )
        print(f"{spec.name} model DNA AUC: " + ", ".join(f"{r.scorer} {r.metrics['auc']['mean']:.3f}" for r in results))


if __name__ == "__main__":
    main()
