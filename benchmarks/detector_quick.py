"""The Lineage Detector's protocol on a built zoo: closed- and open-set accuracy over random splits.

    python benchmarks/detector_quick.py [--zoo /tmp/jl_zoo_quick] [--repetitions 5] [--seed 0]
        [--variants both,weights,features] [--no-open-set] [--weight-pool P] [--embed-dim E]
        [--out benchmarks/results/detector_quick.jsonl]

Runs :func:`jaxlineage.detector.run_protocol` with :data:`jaxlineage.detector.QUICK_PROTOCOL`
(CPU-sized inputs; see its comment) on the children of the zoo: 7:1:2 train/val/test splits,
``--repetitions`` of them, mean +- std (ddof=1) of test accuracy; then the open-set variant
(repetition r holds parent r mod K out; its children must get "no parent"). Learning-free
baselines on the same zoo are scorers of their own (the evaluation layer's weight / output
baselines), no longer part of the detector's records. One JSON line per (variant, closed/open) with versions
and device. Never builds a zoo: build
it first (``zoo.build(zoo.QUICK, workdir)``). On 2 shared CPU cores a repetition takes
about 1.5 min (``both``), 50 s (``weights``) and 25 s (``features``); all six runs ~30 min.
"""

from __future__ import annotations

import argparse
import enum
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _common import setup_logging, write  # noqa: E402

from jaxlineage import detector, zoo  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="/tmp/jl_zoo_quick", help="workdir of a built zoo")
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default="both,weights,features", help="comma-separated: both, weights, features")
    ap.add_argument("--no-open-set", action="store_true", help="skip the open-set variant")
    ap.add_argument("--weight-pool", type=int, default=None, help="override QUICK_PROTOCOL's weight_pool")
    ap.add_argument("--embed-dim", type=int, default=None, help="override the encoders' width E")
    ap.add_argument("--out", default="benchmarks/results/detector_quick.jsonl")
    args = ap.parse_args(argv)
    setup_logging()

    z = zoo.Zoo.open(args.zoo)
    settings = dict(detector.QUICK_PROTOCOL)
    module_kwargs = dict(settings.pop("module_kwargs"))
    if args.embed_dim is not None:
        module_kwargs["embed_dim"] = args.embed_dim
    if args.weight_pool is not None:
        settings["weight_pool"] = args.weight_pool
    ex_kwargs = {k: settings.pop(k) for k in ("weight_layer", "feature_tap", "n_probe", "weight_pool") if k in settings}
    examples = detector.make_examples(z, **ex_kwargs)
    for variant in args.variants.split(","):
        ex = {"both": examples, "weights": examples.without_features(), "features": examples.without_weights()}[variant]
        for open_set in (False,) if args.no_open_set else (False, True):
            t0 = time.perf_counter()
            res = detector.run_protocol(
                z,
                examples=ex,
                repetitions=args.repetitions,
                seed=args.seed,
                open_set=open_set,
                module_kwargs=module_kwargs,
                **settings,
            )
            wall = time.perf_counter() - t0
            recorded = {k: v.value if isinstance(v, enum.Enum) else v for k, v in {**ex_kwargs, **settings}.items()}
            write(
                args.out,
                {
                    "benchmark": "detector_quick",
                    "variant": variant,
                    "zoo_dir": args.zoo,
                    "wall_s": wall,
                    "open_set": open_set,
                    "zoo": repr(z),
                    "settings": {**vars(args), **recorded, "module_kwargs": module_kwargs},
                    "result": res,
                },
            )
            t = res["test_accuracy"]
            line = f"{variant} {'open' if open_set else 'closed'}: test {t['mean']:.3f} +- {t['std']:.3f} ({wall:.0f}s)"
            if open_set:
                a = res["accuracy_no_parent"]
                line += (
                    f"; parentless {a['mean']:.3f} +- {a['std']:.3f} "
                    f"({res['no_parent_correct']}/{res['no_parent_total']} pooled)"
                )
            print(line, flush=True)


if __name__ == "__main__":
    main()
