"""The Lineage Detector on a built zoo through the evaluation layer: closed- and open-set identify, 5 folds.

    python benchmarks/detector_quick.py [--workdir /tmp/jl_zoo_quick] [--folds 5] [--seed 0] [--epochs 8]
        [--variants both,weights,features] [--no-open-set] [--weight-pool P] [--embed-dim E]
        [--out benchmarks/results/detector_quick.jsonl]

Asks :func:`jaxlineage.eval.scenarios.identify` (closed set: the kept children against the
kept parents) and its open-set variant (children and independents; an independent's answer
is "no parent") of :class:`jaxlineage.eval.methods.DetectorScorer` through
:func:`jaxlineage.eval.protocols.run_all`: ``--folds`` folds over the queries, the detector
fitted on the training folds only (a validation share of them picks the epoch), mean ± std
(ddof = 1) over folds. The settings are the bench's ``quick`` preset (whole ``dense3``,
``relu1`` features on 16 probe inputs, difference-initialised encoders, 4 children per
step); ``--variants`` also runs weights only and features only. The baselines on the same
folds are in the bench's identify table. One JSON line (the :class:`~jaxlineage.eval.Result`)
per (variant, closed/open) with versions and device. Never builds a zoo: build it first
(``zoo.build(zoo.QUICK, workdir)``).
"""

from __future__ import annotations

import argparse
import time

import jax
from _common import setup_logging, write

from jaxlineage import zoo
from jaxlineage.eval import methods, protocols, scenarios


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/jl_zoo_quick", help="the built zoo's folder")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--variants", default="both,weights,features", help="comma-separated: both, weights, features")
    ap.add_argument("--no-open-set", action="store_true", help="skip the open-set variant")
    ap.add_argument("--weight-pool", type=int, default=1)
    ap.add_argument("--embed-dim", type=int, default=None, help="the encoders' width E (default: the paper's)")
    ap.add_argument("--out", default="benchmarks/results/detector_quick.jsonl")
    args = ap.parse_args(argv)
    setup_logging()

    z = zoo.Zoo.open(args.workdir)
    module = dict(difference_init=True, **({} if args.embed_dim is None else {"embed_dim": args.embed_dim}))
    scens = {False: scenarios.identify(z)}
    if not args.no_open_set:
        scens[True] = scenarios.identify(z, queries=("child", "independent"), open_set=True, name="open_set")
    for variant in args.variants.split(","):
        drop = {"both": {}, "weights": {"feature_tap": None}, "features": {"weight_layer": None}}[variant]
        scorer = methods.DetectorScorer(
            n_probe=16, module=module, batch_size=4, epochs=args.epochs, weight_pool=args.weight_pool, **drop
        )
        for open_set, scen in scens.items():
            t0 = time.perf_counter()
            res = protocols.run(scen, scorer, key=jax.random.key(args.seed), num_folds=args.folds)
            wall = time.perf_counter() - t0
            write(
                args.out,
                {
                    "benchmark": "detector_quick",
                    "protocol": "eval.protocols.run_all",
                    "variant": variant,
                    "zoo_dir": args.workdir,
                    "wall_s": wall,
                    "open_set": open_set,
                    "zoo": repr(z),
                    "settings": {**vars(args), **scorer.settings},
                    "result": res.to_json(),
                },
            )
            a = res.metrics["accuracy"]
            line = f"{variant} {'open' if open_set else 'closed'}: accuracy {a['mean']:.3f} +- {a['std']:.3f}"
            if "no_parent_accuracy" in res.metrics:
                o, n = res.metrics["open_set_accuracy"], res.metrics["no_parent_accuracy"]
                line += f"; open-set {o['mean']:.3f} +- {o['std']:.3f}, no parent {n['mean']:.3f} +- {n['std']:.3f}"
            print(f"{line} ({wall:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
