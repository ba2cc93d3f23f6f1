"""Cost of the linearised lineage metrics: jvp path vs plain vs the step-by-step baseline.

    python benchmarks/linearization.py [--nets mlp,resnet18] [--n 512] [--n-stepwise 64]
        [--population 20x200] [--repeats 3] [--out benchmarks/results/linearization.jsonl]

Measured in one run, on random (untrained) parents and perturbed children, which do not
change the cost:

* ``modes``: per network and metric, the time of ``linearize.similarity`` in each mode at
  ``N = --n`` probe inputs and the ratios ``LINEARIZED / PLAIN`` and ``FIRST_ORDER / PLAIN``
  (target <= 2.0: one jvp replaces the parent's forward pass).
* ``stepwise``: the step-by-step baseline (per-sample Jacobians materialised, the paper's
  Fig. 2) over ``LINEARIZED`` at ``N = --n-stepwise`` (target >= 100). When the baseline
  would exceed ``--stepwise-max-rows`` Jacobian rows it is timed on the first rows of the
  first samples and extrapolated linearly (every row costs the same); the record says so.
* ``memory``: XLA's compiled memory analysis (temporaries, no run) of ``LINEARIZED`` and of
  the baseline as the MLP's tapped width ``D`` grows: the jvp path stays a constant multiple
  of the memory of its inputs and outputs (flat overhead), the baseline grows with ``D x P``.
* ``population``: ``K x M`` parents x children, all metrics, all modes, the three-alpha grid,
  one :func:`jaxlineage.lineage.score_matrices` call: compile and run seconds.

Times are medians of ``--repeats`` after a warm-up call that compiles (``block_until_ready``).
Expected runtime on an idle 2-core CPU: about 15-20 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _common import timeit, write

from jaxlineage import lineage, linearize, nets, similarity

Mode = linearize.Mode


def _network(name):
    if name == "mlp":
        return nets.mlp(5), "relu1"
    if name == "resnet18":
        return nets.resnet18(5), "block1"
    raise ValueError(f"unknown network {name!r}")


def _pair(network, key):
    """A random parent and a child that moved away from it (values do not affect cost)."""
    k1, k2 = jax.random.split(key)
    parent = network.init(k1)
    other = network.init(k2)
    child = jax.tree.map(lambda p, q: p + 0.05 * q, parent, other)
    return parent, child


def _probe(network, n, key):
    return jax.random.normal(key, (n, *network.input_shape), jnp.float32)


def bench_modes(network, tap, metrics, n, repeats):
    parent, child = _pair(network, jax.random.key(0))
    x = _probe(network, n, jax.random.key(1))
    f = network.feature_fn(tap)
    out = []
    for metric in metrics:
        calls = {
            mode.value: functools.partial(
                linearize.similarity, metric, f, parent, child, x, alpha=0.01, mode=mode
            )
            for mode in Mode
        }
        for call in calls.values():  # warm-up: compile every mode
            jax.block_until_ready(call())
        # Modes interleaved in every repeat, so that drifting load from other processes
        # affects them alike.
        raw = {k: [] for k in calls}
        for _ in range(repeats):
            for k, call in calls.items():
                raw[k].append(timeit(call, repeats=1, warmup=0)["median_s"])
        times = {k: {"median_s": float(np.median(v)), "times_s": v} for k, v in raw.items()}
        plain = times["plain"]["median_s"]
        best = {k: min(v["times_s"]) for k, v in times.items()}
        out.append(
            {
                "metric": metric,
                "times": times,
                "linearized_over_plain": times["linearized"]["median_s"] / plain,
                "first_order_over_plain": times["first_order"]["median_s"] / plain,
                # Ratios of the fastest repeat: less sensitive to other load on the machine.
                "linearized_over_plain_min": best["linearized"] / best["plain"],
                "first_order_over_plain_min": best["first_order"] / best["plain"],
            }
        )
        print(network.name, metric, {k: round(v["median_s"], 4) for k, v in times.items()})
    return out


def _stepwise_rows(pruned, p, c, x, n_samples, n_rows, row_chunk):
    """The baseline restricted to the first ``n_rows`` Jacobian rows of ``n_samples`` samples."""
    delta = tuple(ci - pi for ci, pi in zip(c, p))

    @jax.jit
    def run(p, delta, x):
        def one_sample(xi):
            out, vjp = jax.vjp(lambda th: pruned(th, xi[None])[0], p)
            rows = jnp.eye(out.shape[0], dtype=out.dtype)[:n_rows]

            def contract(e):
                jac_rows = vjp(e)[0]
                return sum(jnp.tensordot(j, d, axes=d.ndim) for j, d in zip(jac_rows, delta))

            return jax.lax.map(contract, rows, batch_size=row_chunk)

        return jax.lax.map(one_sample, x[:n_samples])

    return functools.partial(run, p, delta, x)


def bench_stepwise(network, tap, n, max_rows, repeats):
    parent, child = _pair(network, jax.random.key(2))
    x = _probe(network, n, jax.random.key(3))
    f = network.feature_fn(tap)
    pruned, p, c, xx = linearize._prepare(f, parent, child, x)
    d = pruned.out_shape[1]
    n_params = sum(leaf.size for leaf in p)
    # Jacobian rows held at once: at most ~128 MiB of float32.
    row_chunk = int(max(1, min(d, 2**25 // n_params)))
    fast = timeit(
        functools.partial(
            linearize.similarity, "l2", f, parent, child, x, alpha=0.01, mode=Mode.LINEARIZED
        ),
        repeats=repeats,
    )
    total_rows = n * d
    if total_rows <= max_rows:
        slow_fn = functools.partial(
            linearize.stepwise_similarity,
            "l2",
            f,
            parent,
            child,
            x,
            alpha=0.01,
            mode=Mode.LINEARIZED,
            row_chunk=row_chunk,
        )
        measured_rows, extrapolated = total_rows, False
    else:
        n_samples = max(1, max_rows // d)
        n_rows = min(d, max_rows)
        n_rows = max(row_chunk, (n_rows // row_chunk) * row_chunk)
        slow_fn = _stepwise_rows(pruned, p, c, xx, n_samples, n_rows, row_chunk)
        measured_rows, extrapolated = n_samples * n_rows, True
    slow = timeit(slow_fn, repeats=1)
    slow_s = slow["median_s"] * total_rows / measured_rows
    rec = {
        "n": n,
        "d": d,
        "used_params": int(n_params),
        "row_chunk": row_chunk,
        "linearized": fast,
        "stepwise_measured": slow,
        "stepwise_rows_measured": int(measured_rows),
        "stepwise_rows_total": int(total_rows),
        "stepwise_extrapolated": extrapolated,
        "stepwise_s": slow_s,
        "stepwise_over_linearized": slow_s / fast["median_s"],
    }
    print(network.name, "stepwise", {k: rec[k] for k in ("stepwise_s", "stepwise_over_linearized")})
    return rec


def bench_memory(widths, n):
    out = []
    metric = similarity.get("l2")
    for d in widths:
        network = nets.mlp(5, features=(d,))
        parent, child = _pair(network, jax.random.key(4))
        x = _probe(network, n, jax.random.key(5))
        pruned, p, c, xx = linearize._prepare(network.feature_fn("relu1"), parent, child, x)
        alpha = np.asarray(0.01)
        kw = {"metric": metric, "pruned": pruned}
        jvp = (
            linearize._similarity_core.lower(p, c, xx, alpha, mode=Mode.LINEARIZED, **kw)
            .compile()
            .memory_analysis()
        )
        base = (
            linearize._stepwise_core.lower(
                p, c, xx, alpha, mode=Mode.LINEARIZED, row_chunk=None, **kw
            )
            .compile()
            .memory_analysis()
        )
        io_bytes = 4 * (2 * sum(leaf.size for leaf in p) + n * d)
        rec = {
            "d": d,
            "n": n,
            "used_params": int(sum(leaf.size for leaf in p)),
            "io_bytes": io_bytes,
            "jvp_temp_bytes": jvp.temp_size_in_bytes,
            "jvp_peak_bytes": jvp.temp_size_in_bytes
            + jvp.argument_size_in_bytes
            + jvp.output_size_in_bytes,
            "jvp_temp_over_io": jvp.temp_size_in_bytes / io_bytes,
            "stepwise_temp_bytes": base.temp_size_in_bytes,
            "stepwise_temp_over_io": base.temp_size_in_bytes / io_bytes,
        }
        print("memory", {k: rec[k] for k in ("d", "jvp_temp_over_io", "stepwise_temp_over_io")})
        out.append(rec)
    return out


def bench_population(k, m, n, chunk_size):
    network, tap = nets.mlp(5), "relu1"
    keys = jax.random.split(jax.random.key(6), 3)
    # Only the tapped layer is needed: trees may omit unused layers.
    trim = lambda v: {"params": {"dense1": v["params"]["dense1"]}}
    parents = jax.vmap(lambda key: trim(network.init(key)))(jax.random.split(keys[0], k))
    noise = jax.vmap(lambda key: trim(network.init(key)))(jax.random.split(keys[1], m))
    children = jax.tree.map(lambda p, e: p[jnp.arange(m) % k] + 0.05 * e, parents, noise)
    x = _probe(network, n, keys[2])
    call = functools.partial(
        lineage.score_matrices,
        similarity.all_metrics(),
        network.feature_fn(tap),
        parents,
        children,
        x,
        alpha=np.asarray(lineage.DEFAULT_ALPHAS),
        modes=tuple(Mode),
        chunk_size=chunk_size,
    )
    t0 = time.perf_counter()
    scores = jax.block_until_ready(call())
    first = time.perf_counter() - t0
    run = timeit(call, repeats=1, warmup=0)
    rec = {
        "k": k,
        "m": m,
        "n": n,
        "d": 1024,
        "n_metric_mode_pairs": len(scores),
        "alphas": list(lineage.DEFAULT_ALPHAS),
        "first_call_s": first,
        "run_s": run["median_s"],
        "pairs_per_s": k * m / run["median_s"],
    }
    print("population", rec)
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nets", default="mlp,resnet18")
    ap.add_argument("--metrics", default="mlp=l2,cka;resnet18=l2", help="per network, or one list")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--n-stepwise", type=int, default=64)
    ap.add_argument(
        "--stepwise-max-rows",
        default="mlp=65536,resnet18=512",
        help="per network: Jacobian rows of the baseline actually computed (the rest is"
        " extrapolated); 'name=rows,...' or one number for all",
    )
    ap.add_argument("--widths", default="256,512,1024,2048,4096")
    ap.add_argument("--memory-n", type=int, default=64)
    ap.add_argument("--population", default="20x200", help="KxM, or 'none'")
    ap.add_argument("--population-n", type=int, default=512)
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--sections", default="modes,stepwise,memory,population")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/linearization.jsonl")
    args = ap.parse_args(argv)
    sections = set(args.sections.split(","))
    if "=" in args.metrics:
        metrics = {k: v.split(",") for k, v in (kv.split("=") for kv in args.metrics.split(";"))}
    else:
        metrics = {name: args.metrics.split(",") for name in args.nets.split(",")}
    if "=" in args.stepwise_max_rows:
        max_rows = {
            k: int(v) for k, v in (kv.split("=") for kv in args.stepwise_max_rows.split(","))
        }
    else:
        max_rows = {name: int(args.stepwise_max_rows) for name in args.nets.split(",")}
    record = {"benchmark": "linearization", "settings": vars(args)}
    for name in args.nets.split(","):
        network, tap = _network(name)
        entry = {"tap": tap, "input_shape": list(network.input_shape)}
        if "modes" in sections:
            entry["modes"] = bench_modes(
                network, tap, metrics.get(name, ["l2"]), args.n, args.repeats
            )
        if "stepwise" in sections:
            entry["stepwise"] = bench_stepwise(
                network, tap, args.n_stepwise, max_rows.get(name, 16384), args.repeats
            )
        record[name] = entry
    if "memory" in sections:
        record["memory"] = bench_memory([int(w) for w in args.widths.split(",")], args.memory_n)
    if "population" in sections and args.population != "none":
        k, m = (int(v) for v in args.population.lower().split("x"))
        record["population"] = bench_population(k, m, args.population_n, args.chunk_size)
    write(args.out, record)


if __name__ == "__main__":
    main()
