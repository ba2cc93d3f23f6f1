"""Cost of the linearised lineage metrics: jvp path vs plain vs the step-by-step baseline.

    python benchmarks/linearization.py [--nets mlp,resnet18] [--n 512] [--n-stepwise 64]
        [--population 20x200] [--repeats 3] [--out benchmarks/results/linearization.jsonl]

Measured in one run, on random (untrained) parents and perturbed children, which do not
change the cost:

* ``modes``: per network and metric, the time of ``linearize.pair_similarity`` in each mode at
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

* ``floor`` (``--sections floor``): scoring at the floor. Per network and tap of
  ``--floor-sizes`` (MLP ``relu1``, ConvNet ``conv1``, ResNet-18 ``block1``), K parents x M
  children at N probe inputs: (a) the K + M forward passes to the tap alone (the floor);
  (b) :func:`jaxlineage.lineage.score_matrices` for the norm metrics (L1, L2, Lp, L-inf,
  LSE) in every mode at the three-alpha grid, together and each alone; CKA (both estimators)
  and dCor alone; (c) all metrics; each over (a). With ``--floor-before`` the all-metrics call is also timed on the
  plain jvp path (``fast_path=False``, the scorer before this section existed)::

      python benchmarks/linearization.py --sections floor --repeats 1 --nets ''

Times are medians of ``--repeats`` after a warm-up call that compiles (``block_until_ready``).
Expected runtime on an idle 2-core CPU: about 15-20 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import timeit, write

from jaxlineage import lineage, linearize, nets, similarity
from jaxlineage.errors import path_str

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
            mode.value: functools.partial(linearize.pair_similarity, metric, f, parent, child, x, alpha=0.01, mode=mode)
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
    pruned, p, c, xx = linearize.used_leaves(f, parent, child, x)
    d = pruned.out_shape[1]
    n_params = sum(leaf.size for leaf in p)
    # Jacobian rows held at once: at most ~128 MiB of float32.
    row_chunk = int(max(1, min(d, 2**25 // n_params)))
    fast = timeit(
        functools.partial(linearize.pair_similarity, "l2", f, parent, child, x, alpha=0.01, mode=Mode.LINEARIZED),
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
        f = network.feature_fn("relu1")
        p = linearize.used_leaves(f, parent, child, x).parent
        kw = dict(alpha=0.01, mode=Mode.LINEARIZED)
        jvp = linearize.lower(metric, f, parent, child, x, **kw).compile().memory_analysis()
        base = linearize.lower(metric, f, parent, child, x, stepwise=True, **kw).compile().memory_analysis()
        io_bytes = 4 * (2 * sum(leaf.size for leaf in p) + n * d)
        rec = {
            "d": d,
            "n": n,
            "used_params": int(sum(leaf.size for leaf in p)),
            "io_bytes": io_bytes,
            "jvp_temp_bytes": jvp.temp_size_in_bytes,
            "jvp_peak_bytes": jvp.temp_size_in_bytes + jvp.argument_size_in_bytes + jvp.output_size_in_bytes,
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


_FLOOR_NETS = {
    # name: (network, tap, top-level modules the tap reads: trees are trimmed to them)
    "mlp": (lambda: nets.mlp(5), "relu1", ("dense1",)),
    "convnet": (lambda: nets.convnet(5), "conv1", ("conv1",)),
    "resnet18": (
        lambda: nets.resnet18(5),
        "block1",
        ("stem_conv", "stem_bn", "block1_0", "block1_1"),
    ),
}
NORM_METRICS = ("l1", "l2", "lp", "linf", "lse")
GRAM_METRICS = (
    similarity.get("cka"),
    similarity.get("cka", estimator=similarity.CKAEstimator.UNBIASED),
    similarity.get("dcor"),
)


def _floor_population(name, k, m, n):
    make, tap, keep = _FLOOR_NETS[name]
    network = make()
    trim = lambda v: {col: {mod: v[col][mod] for mod in keep if mod in v[col]} for col in v}
    keys = jax.random.split(jax.random.key(7), 3)
    # jit: the untrimmed layers are dead code, never materialised for K models.
    init = jax.jit(jax.vmap(lambda key: trim(network.init(key))))
    parents = init(jax.random.split(keys[0], k))
    noise = init(jax.random.split(keys[1], m))
    # Children move away from parent m % K; relative noise keeps BatchNorm variances > 0.
    children = jax.tree.map(lambda p, e: p[jnp.arange(m) % k] * (1 + 0.05 * jnp.tanh(e)), parents, noise)
    x = _probe(network, n, keys[2])
    return network, tap, parents, children, x


def bench_floor(name, k, m, n, repeats, *, before, parts=("norms", "gram", "all")):
    """(a) the K + M forward passes; (b) norm metrics, (c) all metrics; ratios to (a)."""
    network, tap, parents, children, x = _floor_population(name, k, m, n)
    f = network.feature_fn(tap)
    first = lambda tree: jax.tree.map(lambda a: a[0], tree)
    pruned, p, c, xx = linearize.used_leaves(f, first(parents), first(children), x)
    split = lineage.fast_path_plan(f, first(parents), x)
    used = lambda tree: tuple(
        leaf
        for path, leaf in zip(
            [path_str(q) for q, _ in jax.tree_util.tree_flatten_with_path(tree)[0]],
            jax.tree.leaves(tree),
        )
        if path in pruned.used_paths
    )
    p_used, c_used = used(parents), used(children)
    assert len(p_used) == len(pruned.used_paths)
    forward = jax.jit(
        lambda ps, cs, x: (jax.lax.map(lambda th: pruned(th, x), ps), jax.lax.map(lambda th: pruned(th, x), cs))
    )
    floor = timeit(functools.partial(forward, p_used, c_used, xx), repeats=repeats)
    alpha = np.asarray(lineage.DEFAULT_ALPHAS)
    score = lambda metrics, **kw: functools.partial(
        lineage.score_matrices, metrics, f, parents, children, x, alpha=alpha, modes=tuple(Mode), **kw
    )
    groups = {"norms": NORM_METRICS, "gram": GRAM_METRICS, "all": similarity.all_metrics()}
    # "per_metric": each norm metric alone (all modes, three alphas), to see what dominates.
    groups.update({m: (m,) for m in NORM_METRICS if "per_metric" in parts})
    runs = {}
    for key, metrics in groups.items():
        if key in parts or key in NORM_METRICS:
            runs[key] = timeit(score(metrics), repeats=repeats)
            print(name, key, round(runs[key]["median_s"], 3), flush=True)
    rec = {
        "net": name,
        "tap": tap,
        "k": k,
        "m": m,
        "n": n,
        "d": pruned.out_shape[1],
        "alphas": list(lineage.DEFAULT_ALPHAS),
        "first_layers": list(split.first_layer_primitives) if split else None,
        "elementwise_split": bool(split and split.elementwise),
        "floor": floor,
        **runs,
        **{f"{key}_over_floor": v["median_s"] / floor["median_s"] for key, v in runs.items()},
    }
    if before:
        # The plain jvp path (= the scorer before the fast path). Large populations: one
        # cold call (compiling takes well under a second of the ~2 minutes at 20 x 200).
        warm = int(k * m < 1000)
        rec["before_all"] = timeit(score(similarity.all_metrics(), fast_path=False), repeats=1, warmup=warm)
        rec["before_all"]["warmup"] = warm
        rec["speedup_all"] = rec["before_all"]["median_s"] / runs["all"]["median_s"]
    print(
        "floor",
        {
            key: (round(v, 3) if isinstance(v, float) else v)
            for key, v in rec.items()
            if key.endswith("over_floor") or key in ("net", "speedup_all")
        },
    )
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    ap.add_argument(
        "--floor-sizes",
        default="mlp=20x200x512,convnet=8x48x64,resnet18=2x8x16",
        help="section floor: per network KxMxN (K parents, M children, N probe inputs)",
    )
    ap.add_argument(
        "--floor-before",
        default="mlp",
        help="section floor: networks also timed on the plain jvp path (all metrics), or ''",
    )
    ap.add_argument(
        "--floor-parts",
        default="norms,gram,all,per_metric",
        help="section floor: which scorings to time (norms, gram, all, per_metric)",
    )
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
        max_rows = {k: int(v) for k, v in (kv.split("=") for kv in args.stepwise_max_rows.split(","))}
    else:
        max_rows = {name: int(args.stepwise_max_rows) for name in args.nets.split(",")}
    record = {"benchmark": "linearization", "settings": vars(args)}
    for name in filter(None, args.nets.split(",")):
        network, tap = _network(name)
        entry = {"tap": tap, "input_shape": list(network.input_shape)}
        if "modes" in sections:
            entry["modes"] = bench_modes(network, tap, metrics.get(name, ["l2"]), args.n, args.repeats)
        if "stepwise" in sections:
            entry["stepwise"] = bench_stepwise(network, tap, args.n_stepwise, max_rows.get(name, 16384), args.repeats)
        record[name] = entry
    if "memory" in sections:
        record["memory"] = bench_memory([int(w) for w in args.widths.split(",")], args.memory_n)
    if "floor" in sections:
        before = set(filter(None, args.floor_before.split(",")))
        record["floor"] = []
        for item in args.floor_sizes.split(","):
            name, size = item.split("=")
            k, m, n = (int(v) for v in size.lower().split("x"))
            record["floor"].append(
                bench_floor(
                    name,
                    k,
                    m,
                    n,
                    args.repeats,
                    before=name in before,
                    parts=tuple(args.floor_parts.split(",")),
                )
            )
    if "population" in sections and args.population != "none":
        k, m = (int(v) for v in args.population.lower().split("x"))
        record["population"] = bench_population(k, m, args.population_n, args.chunk_size)
    write(args.out, record)


if __name__ == "__main__":
    main()
