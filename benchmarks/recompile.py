"""Does a freshly built adapter recompile? The library's adapters against a fresh ``functools.partial``.

    python benchmarks/recompile.py [--repeats 5] [--out benchmarks/results/recompile.jsonl]

A jitted scorer keys its compilation cache on the apply function. Following the
docs, a user builds the adapter inside a loop or a notebook cell, so every call
may see a new function object. For each adapter this times one
``linearize.pair_similarity`` call (MLP 784-64-5, ``relu1``, N = 128, FIRST_ORDER L2)
in two ways, after a warm-up that compiles:

* ``reused``: the same adapter object every call;
* ``fresh``: a new adapter built right before every call (what a user's loop does).

and reports ``fresh / reused``: about 1 when the fresh adapter hits the cache,
hundreds when it recompiles. The last row is a plain ``functools.partial`` over
``module.apply`` (what the library returned before), for reference.
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
from _common import timeit, write

from jaxlineage import linearize, nets


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/recompile.jsonl")
    args = ap.parse_args(argv)

    module = nets.MLP(5, (64,))
    parent = module.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    child = jax.tree.map(lambda a: a + 0.01, parent)
    x = jax.random.normal(jax.random.key(1), (128, 28, 28, 1))
    network = nets.mlp(5, features=(64,))

    adapters = {
        "nets.from_linen": lambda: nets.from_linen(module, parent, tap="relu1")[0],
        "Network.feature_fn": lambda: network.feature_fn("relu1"),
        "functools.partial (reference)": lambda: functools.partial(module.apply, tap="relu1"),
    }

    def call(fn):
        return linearize.pair_similarity("l2", fn, parent, child, x, alpha=0.01, mode=linearize.Mode.FIRST_ORDER)

    rows = []
    for name, make in adapters.items():
        kept = make()
        reused = timeit(lambda kept=kept: call(kept), repeats=args.repeats)
        fresh = timeit(lambda make=make: call(make()), repeats=args.repeats)
        rows.append(
            {
                "adapter": name,
                "reused_s": reused["median_s"],
                "fresh_s": fresh["median_s"],
                "fresh_over_reused": fresh["median_s"] / reused["median_s"],
            }
        )
    write(
        args.out,
        {
            "benchmark": "recompile",
            "settings": {
                "repeats": args.repeats,
                "net": "mlp 784-64-5",
                "tap": "relu1",
                "n": 128,
                "metric": "l2",
                "mode": "first_order",
            },
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
