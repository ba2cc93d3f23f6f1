"""Model DNA (MGMP) on its own protocol, DNA_QUICK: with and without the generator, paired.

    python benchmarks/model_dna.py [--workdir /tmp/jl_zoo_dna] [--repetitions 8] [--seed 0]
        [--taps relu1,logits] [--splits strict,lenient] [--steps 1000]
        [--out benchmarks/results/model_dna.jsonl]

Builds ``zoo.DNA_QUICK`` in ``--zoo`` if it is not there (84 models, ~30-45 s on 2 CPU cores),
then runs :func:`jaxlineage.eval.dna.run` per split: per repetition one source, a pool on the
pool tasks at half of the training seeds, evaluation targets on the evaluation tasks at the other
half (``strict``; ``lenient`` evaluates at the pool's seeds), fragments at each tap (``logits`` =
zero-padded logits), ``mgmp.Config(num_steps=--steps)`` with and without the generator, the same
keys. One JSON line per (split, tap, scorer) and per paired comparison, with the settings,
versions, device and wall time; the markdown table is printed at the end. On the 2 shared CPU
cores: about 20 s per fit at 1000 steps, so the defaults (2 splits x 2 taps x 8 repetitions x 2
configurations) take roughly 15-20 min; ``--splits strict --taps relu1`` about 5 min.
"""

from __future__ import annotations

import argparse
import time

import jax
from _common import setup_logging, write

from jaxlineage import mgmp, zoo
from jaxlineage.eval import dna


def open_or_build(workdir: str):
    """The DNA_QUICK zoo in ``workdir`` (built there first if absent) and the build's wall time (0 if opened)."""
    try:
        return zoo.Zoo.open(workdir), 0.0
    except zoo.ZooError:
        t0 = time.perf_counter()
        z = zoo.build(zoo.DNA_QUICK, workdir)
        return z, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/jl_zoo_dna", help="the DNA_QUICK zoo's folder (built if absent)")
    ap.add_argument("--repetitions", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--taps", default="relu1,logits", help="comma-separated fragment taps (logits = padded logits)")
    ap.add_argument("--splits", default="strict,lenient", help="comma-separated: strict, lenient")
    ap.add_argument("--steps", type=int, default=1000, help="mgmp.Config.num_steps")
    ap.add_argument("--num-inputs", type=int, default=2048, help="D_s: first inputs of the source task's train split")
    ap.add_argument("--num-probe", type=int, default=1000, help="probe: first inputs of the source task's test split")
    ap.add_argument("--out", default="benchmarks/results/model_dna.jsonl")
    args = ap.parse_args(argv)
    setup_logging()

    z, build_s = open_or_build(args.workdir)
    config = mgmp.Config(num_steps=args.steps)
    results = []
    for split in args.splits.split(","):
        for tap in args.taps.split(","):
            t0 = time.perf_counter()
            rs = dna.run(
                z,
                key=jax.random.key(args.seed),
                repetitions=args.repetitions,
                config=config,
                taps=(tap,),
                split=split,
                num_inputs=args.num_inputs,
                num_probe=args.num_probe,
            )
            wall = time.perf_counter() - t0
            for r in rs:
                write(
                    args.out,
                    {
                        "benchmark": "model_dna",
                        "zoo": args.workdir,
                        "zoo_build_s": build_s,
                        "seed": args.seed,
                        "wall_s": wall,
                        "result": r.to_json(),
                    },
                )
            results += rs
    print(dna.table(results))


if __name__ == "__main__":
    main()
