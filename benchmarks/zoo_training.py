"""Population (vmapped) zoo training vs training the same models one at a time.

    python benchmarks/zoo_training.py [--models 8] [--epochs 1] [--out benchmarks/results/zoo_training.jsonl]

Same models, data, batch size and epochs in every variant:
* ``population``: all models in one jitted, vmapped epoch (what ``zoo.build`` does);
* ``sequential_scan``: the same jitted epoch with a population of one, called once per model
  (isolates the effect of vmap);
* ``sequential_loop``: the conventional loop of flax examples, one jitted step per batch
  driven from Python, once per model.
Reports models per minute for each and the population's speed-up over both, measured in one run
(median of repeats after a warm-up that compiles every variant).
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import timeit, write

from jaxlineage import data, nets, zoo


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument(
        "--features",
        default="1024,256,128;256,64;32",
        help="MLP hidden widths; several configurations separated by ';' are measured in turn",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/zoo_training.jsonl")
    args = ap.parse_args(argv)

    x, y = data.task("embedded", data.TASK_A, "train")
    x, y = x[: args.n_train], y[: args.n_train]
    rows = []
    for features in args.features.split(";"):
        widths = tuple(int(f) for f in features.split(","))
        rows.append(measure(nets.mlp(5, features=widths), x, y, args))
    write(args.out, {"benchmark": "zoo_training", "settings": vars(args), "configs": rows})


def measure(network, x, y, args):
    p = args.models
    inits = [network.init(jax.random.key(i)) for i in range(p)]
    lrs = list(np.geomspace(1e-4, 1e-2, p))
    seeds = list(range(p))
    kw = dict(batch_size=args.batch_size, epochs=args.epochs)

    def population():
        return zoo.train_population(network, nets.stack(inits), x, y, lrs=lrs, seeds=seeds, **kw)

    def sequential_scan():
        return [
            zoo.train_population(network, nets.stack([inits[i]]), x, y, lrs=[lrs[i]], seeds=[seeds[i]], **kw)
            for i in range(p)
        ]

    adam = optax.scale_by_adam()

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, lr, xb, yb):
        def loss_fn(w):
            logits = network.logits_fn({"params": w}, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        grads = jax.grad(loss_fn)(params)
        direction, opt_state = adam.update(grads, opt_state, params)
        return jax.tree.map(lambda w, d: w - lr * d, params, direction), opt_state

    xd, yd = jnp.asarray(x), jnp.asarray(y)
    steps = len(y) // args.batch_size

    def sequential_loop():
        out = []
        for i in range(p):
            params = jax.tree.map(jnp.copy, inits[i]["params"])
            opt_state = adam.init(params)
            rng = np.random.default_rng(seeds[i])
            for _ in range(args.epochs):
                order = rng.permutation(len(y))
                for s in range(steps):
                    idx = order[s * args.batch_size : (s + 1) * args.batch_size]
                    params, opt_state = step(params, opt_state, lrs[i], xd[idx], yd[idx])
            out.append(params)
        return out

    results = {}
    for name, fn in (
        ("population", population),
        ("sequential_scan", sequential_scan),
        ("sequential_loop", sequential_loop),
    ):
        t = timeit(fn, repeats=args.repeats, warmup=1)
        results[name] = {**t, "models_per_min": 60.0 * p / t["median_s"]}
        print(
            f"mlp{list(network.module.features)} {name}: {t['median_s']:.2f} s for {p} models"
            f" ({results[name]['models_per_min']:.1f} models/min)",
            flush=True,
        )
    ratios = {
        "population_vs_sequential_scan": results["sequential_scan"]["median_s"] / results["population"]["median_s"],
        "population_vs_sequential_loop": results["sequential_loop"]["median_s"] / results["population"]["median_s"],
    }
    print(f"  speed-up of population: {ratios}", flush=True)
    return {"features": list(network.module.features), "results": results, "speedup": ratios}


if __name__ == "__main__":
    main()
