"""Speed of the learning-free scores per pair and per batch, against their floor and (optionally) PyTorch.

    python benchmarks/speed.py [--sections pair,batch,growth] [--torch] [--repeats 7]
        [--growth 20x200,80x800] [--norms 20x200] [--out benchmarks/results/speed.jsonl]

Everything on the MLP's ``relu1`` tap (``nets.mlp(5)``: a 784 -> 1024 Dense and a ReLU), N = 512
random probe inputs, float32, random parents and children (a child is its parent plus noise;
values do not change the cost). Times are medians (and minima) over ``--repeats`` after a
warm-up that compiles; calls compared with each other are interleaved in every repeat, so that
load from other processes affects them alike. The machine's load average is recorded with
every section.

* ``pair``: one (parent, child) pair. The floor is the pair's two forward passes to the tap
  (``linearize.used_leaves(...).fn`` jitted: both in one call, and as two calls; the faster
  of the two is the floor). Then ``linearize.pair_similarity`` for L2, PLAIN and FIRST_ORDER
  (alpha = 0.01), the default path and ``fast_path=False``. With ``--torch``, the same two
  scores the way the official Neural Lineage code computes them (see ``_torch_pair``).
* ``batch``: 8 parents x 48 children, L2 FIRST_ORDER: ``lineage.score_matrix`` (one call),
  ``pair_similarity`` called per pair (one timed pass), the floor (the 56 forward passes), and
  with ``--torch`` the official procedure with features cached per model.
* ``lse`` (``--lse`` K x M): LSE alone in every mode against its exp floor (one exp per pair
  and position for PLAIN / FIRST_ORDER, one per alpha for LINEARIZED, at the rate of a plain
  vectorised ``sum(exp(x))`` measured in the same run).
* ``gram`` (``--gram`` K x M): CKA (both estimators) and dCor against their product bound: the
  forward passes plus a kernel that does nothing but each pair's two Gram products.
* ``norms`` (``--norms`` K x M): each norm metric (L1, L2, Lp, L-inf, LSE) alone and all five in
  one call, all modes at the three-alpha grid (``score_matrices``' defaults), over the K + M
  forward passes timed in the same run.
* ``growth``: L2 in all three modes at the three-alpha grid, ``lineage.score_matrices``, at
  each ``--growth`` size K x M: total seconds, the K + M forward passes alone (``lax.map`` of
  the jitted feature function), per pair the total and the K * M term (total minus passes).

PyTorch is an optional extra (``pip install jaxlineage[torch]``); both sides run with the
same number of threads (``--threads``, default 2: the CPU's cores).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import write

from jaxlineage import lineage, linearize, nets

Mode = linearize.Mode
ALPHA = 0.01


def _loadavg() -> list[float]:
    return [float(v) for v in open("/proc/loadavg").read().split()[:3]]


def _population(network, k, m, key):
    """``k`` parents, ``m`` children (child j of parent j % k plus noise), stacked.

    Only the first Dense layer is kept (all that the ``relu1`` tap reads; the scorers ignore the
    rest anyway), so that 80 x 800 fits in memory: 3.2 MB per model instead of the whole MLP.
    """
    first = lambda key: {"params": {"dense1": network.init(key)["params"]["dense1"]}}
    kp, kc = jax.random.split(key)
    parents = jax.vmap(first)(jax.random.split(kp, k))
    children = jax.vmap(lambda key, i: jax.tree.map(lambda p, e: p[i] + 0.05 * e, parents, first(key)))(
        jax.random.split(kc, m), jnp.arange(m) % k
    )
    return parents, children


def _probe(network, n):
    return jax.random.normal(jax.random.key(99), (n, *network.input_shape), jnp.float32)


def _interleaved(calls: dict, repeats: int) -> dict:
    """Warm-up (compile) every call, then ``repeats`` rounds with every call once per round."""
    for call in calls.values():
        jax.block_until_ready(call())
    raw = {k: [] for k in calls}
    for _ in range(repeats):
        for k, call in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            raw[k].append(time.perf_counter() - t0)
    return {k: {"median_s": float(np.median(v)), "min_s": float(np.min(v)), "times_s": v} for k, v in raw.items()}


# ----------------------------------------------------------------------------
# The PyTorch side: the official code's procedure, written from reading it.


def _torch_tap(torch, params):
    """The tap as a PyTorch module with the same weights: Linear(784 -> 1024), ReLU."""
    dense = params["params"]["dense1"]
    kernel = np.asarray(dense["kernel"])
    layer = torch.nn.Linear(kernel.shape[0], kernel.shape[1])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(kernel.T.copy()))
        layer.bias.copy_(torch.from_numpy(np.asarray(dense["bias"])))
    return torch.nn.Sequential(torch.nn.Flatten(), layer, torch.nn.ReLU()).eval()


def _torch_l2(torch, a, b):
    return -torch.mean(torch.square(a - b))


def _torch_first_order(torch, f_p_graph, f_c, model_p, model_c, alpha):
    """Prop. 1 the way the official code computes it: the weight ``-2 (F_p - F_c) / n`` by hand,
    one VJP through the parent's retained graph, contracted with ``theta_c - theta_p``."""
    f_p = f_p_graph.detach()
    weight = -2.0 * (f_p - f_c) / f_p.numel() * alpha
    params_p = [q for q in model_p.parameters() if q.requires_grad]
    params_c = [q for q in model_c.parameters() if q.requires_grad]
    grads = torch.autograd.grad(f_p_graph, params_p, grad_outputs=weight, retain_graph=True, allow_unused=True)
    correction = sum((g * (qc - qp)).sum() for g, qc, qp in zip(grads, params_c, params_p) if g is not None)
    return (_torch_l2(torch, f_p, f_c) + correction).item()


def _torch_pair(torch, model_p, model_c, x, mode):
    """One pair from scratch (no cache): the official ``compare`` for one (parent, child)."""
    if mode is Mode.PLAIN:
        with torch.no_grad():
            return _torch_l2(torch, model_p(x), model_c(x)).item()
    f_p = model_p(x)  # with the autograd graph, for the VJP
    with torch.no_grad():
        f_c = model_c(x)
    return _torch_first_order(torch, f_p, f_c, model_p, model_c, ALPHA)


def _torch_batch(torch, models_p, models_c, x):
    """All pairs with features cached per model (each model's forward pass once), as a careful
    user of the official code would: the parent's graph is kept and one VJP runs per pair."""
    with torch.no_grad():
        f_cs = [m(x) for m in models_c]
    out = np.zeros((len(models_p), len(models_c)))
    for i, model_p in enumerate(models_p):
        f_p = model_p(x)
        for j, (model_c, f_c) in enumerate(zip(models_c, f_cs)):
            out[i, j] = _torch_first_order(torch, f_p, f_c, model_p, model_c, ALPHA)
    return out


def _torch_setup(threads):
    import torch

    torch.set_num_threads(threads)
    torch.set_grad_enabled(True)
    return torch


# ----------------------------------------------------------------------------
# Sections.


def bench_pair(network, n, repeats, torch):
    parents, children = _population(network, 1, 1, jax.random.key(0))
    parent, child = jax.tree.map(lambda a: a[0], parents), jax.tree.map(lambda a: a[0], children)
    x = _probe(network, n)
    f = network.feature_fn("relu1")
    used = linearize.used_leaves(f, parent, child, x)
    one = jax.jit(used.fn)
    both = jax.jit(lambda p, c, x: (used.fn(p, x), used.fn(c, x)))

    def pair(mode, **kw):
        return lambda: linearize.pair_similarity("l2", f, parent, child, x, alpha=ALPHA, mode=mode, **kw)

    calls = {
        "floor_one_call": lambda: both(used.parent, used.child, used.x),
        "floor_two_calls": lambda: (one(used.parent, used.x), one(used.child, used.x)),
        "plain": pair(Mode.PLAIN),
        "first_order": pair(Mode.FIRST_ORDER),
        "plain_no_fast_path": pair(Mode.PLAIN, fast_path=False),
        "first_order_no_fast_path": pair(Mode.FIRST_ORDER, fast_path=False),
    }
    values = {"plain": float(calls["plain"]()), "first_order": float(calls["first_order"]())}
    if torch is not None:
        model_p, model_c = _torch_tap(torch, parent), _torch_tap(torch, child)
        xt = torch.from_numpy(np.array(x))
        calls["official_plain"] = lambda: _torch_pair(torch, model_p, model_c, xt, Mode.PLAIN)
        calls["official_first_order"] = lambda: _torch_pair(torch, model_p, model_c, xt, Mode.FIRST_ORDER)
        values["official_plain"] = calls["official_plain"]()
        values["official_first_order"] = calls["official_first_order"]()
    load = _loadavg()
    times = _interleaved(calls, repeats)
    rec = {"n": n, "d": used.fn.out_shape[1], "values": values, "times": times, "loadavg": [load, _loadavg()]}
    for stat in ("median_s", "min_s"):
        floor = min(times["floor_one_call"][stat], times["floor_two_calls"][stat])
        ratios = {f"{k}_over_floor": times[k][stat] / floor for k in ("plain", "first_order")}
        if torch is not None:
            ratios["official_over_first_order"] = times["official_first_order"][stat] / times["first_order"][stat]
            ratios["official_over_plain"] = times["official_plain"][stat] / times["plain"][stat]
        rec[f"ratios_{stat[:-2]}"] = ratios
    print("pair", {k: round(v["median_s"] * 1e3, 2) for k, v in times.items()}, "ms;", rec["ratios_median"], flush=True)
    return rec


def bench_batch(network, n, k, m, repeats, torch):
    parents, children, x, f, used, floor = _batch(network, n, k, m, 1)
    calls = {
        "floor": floor,
        "score_matrix": lambda: lineage.score_matrix("l2", f, parents, children, x, alpha=ALPHA, mode=Mode.FIRST_ORDER),
    }
    jax_scores = np.asarray(calls["score_matrix"]())
    rec = {"k": k, "m": m, "n": n}
    load = _loadavg()
    times = _interleaved(calls, repeats)
    if torch is not None:
        # One timed pass (minutes on a loaded machine), after one warm-up pair.
        models_p = [_torch_tap(torch, first_at(parents, i)) for i in range(k)]
        models_c = [_torch_tap(torch, first_at(children, j)) for j in range(m)]
        xt = torch.from_numpy(np.array(x))
        _torch_batch(torch, models_p[:1], models_c[:1], xt)
        t0 = time.perf_counter()
        ref = _torch_batch(torch, models_p, models_c, xt)
        times["official_cached"] = {"median_s": time.perf_counter() - t0, "min_s": time.perf_counter() - t0}
        rec["max_rel_diff_vs_official"] = float(np.max(np.abs(jax_scores - ref) / np.abs(ref)))
    # pair_similarity called per pair, as a user's loop would (one timed pass after a warm-up pair).
    pp = lambda i, j: linearize.pair_similarity(
        "l2", f, first_at(parents, i), first_at(children, j), x, alpha=ALPHA, mode=Mode.FIRST_ORDER
    )
    jax.block_until_ready(pp(0, 0))
    t0 = time.perf_counter()
    for i in range(k):
        for j in range(m):
            jax.block_until_ready(pp(i, j))
    times["pair_similarity_per_pair"] = {"median_s": time.perf_counter() - t0}
    rec.update({"times": times, "loadavg": [load, _loadavg()]})
    rec["official_over_score_matrix"] = (
        times["official_cached"]["median_s"] / times["score_matrix"]["median_s"] if torch is not None else None
    )
    rec["score_matrix_over_floor"] = times["score_matrix"]["median_s"] / times["floor"]["median_s"]
    print("batch", {key: round(v["median_s"], 3) for key, v in times.items()}, "s", flush=True)
    return rec


def _floor(used):
    """The K + M forward passes to the tap, one model at a time (``lax.map``), in one jitted call."""
    each = lambda stack, x: jax.lax.map(lambda th: used.fn(th, x), stack)
    return jax.jit(lambda ps, cs, x: (each(ps, x), each(cs, x)))


def first_at(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


def _paths(tree):
    from jaxlineage.errors import path_str

    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _ordered(tree, paths):
    by_path = dict(zip(_paths(tree), jax.tree.leaves(tree)))
    return tuple(by_path[p] for p in paths)


def _batch(network, n, k, m, seed):
    """K random parents and M children, the probe, the ``relu1`` tap, its used leaves and the floor: one
    call doing the K + M forward passes to the tap (the batch sections' common setup)."""
    parents, children = _population(network, k, m, jax.random.key(seed))
    x = _probe(network, n)
    f = network.feature_fn("relu1")
    used = linearize.used_leaves(f, first_at(parents, 0), first_at(children, 0), x)
    p_used, c_used = _ordered(parents, used.fn.used_paths), _ordered(children, used.fn.used_paths)
    floor = _floor(used)
    return parents, children, x, f, used, lambda: floor(p_used, c_used, used.x)


def bench_growth(network, n, k, m, repeats):
    parents, children, x, f, used, floor = _batch(network, n, k, m, 2)
    alphas = np.asarray(lineage.DEFAULT_ALPHAS)
    calls = {
        "floor": floor,
        "l2_all_modes": lambda: lineage.score_matrices("l2", f, parents, children, x, alpha=alphas, modes=tuple(Mode)),
    }
    load = _loadavg()
    t0 = time.perf_counter()
    times = _interleaved(calls, repeats)
    pairs = k * m
    rec = {"k": k, "m": m, "n": n, "times": times, "loadavg": [load, _loadavg()], "wall_s": time.perf_counter() - t0}
    for stat in ("median_s", "min_s"):
        total, passes = times["l2_all_modes"][stat], times["floor"][stat]
        rec[f"per_pair_us_{stat[:-2]}"] = {
            "total": total / pairs * 1e6,
            "forward_passes": passes / pairs * 1e6,
            "km_term": (total - passes) / pairs * 1e6,
        }
    print("growth", k, "x", m, rec["per_pair_us_median"], "load", rec["loadavg"], flush=True)
    return rec


def _exp_ns(repeats):
    """Nanoseconds per element of the fastest exp here: ``sum(exp(x))`` over a contiguous array."""
    x = jax.random.uniform(jax.random.key(5), (2**24,), jnp.float32)
    f = jax.jit(lambda x: jnp.sum(jnp.exp(x)))
    t = _interleaved({"exp": lambda: f(x)}, repeats)["exp"]
    return t["median_s"] / x.size * 1e9, t["min_s"] / x.size * 1e9


def bench_lse(network, n, k, m, repeats):
    """LSE alone (all modes, three alphas) against its exp floor: one exp per (pair, position) for
    PLAIN (shared with FIRST_ORDER) and one per alpha for LINEARIZED, at the fastest exp rate."""
    parents, children, x, f, used, floor = _batch(network, n, k, m, 3)
    alphas = np.asarray(lineage.DEFAULT_ALPHAS)
    calls = {
        "floor": floor,
        "lse": lambda: lineage.score_matrices("lse", f, parents, children, x, alpha=alphas, modes=tuple(Mode)),
    }
    load = _loadavg()
    times = _interleaved(calls, repeats)
    exp_ns = _exp_ns(max(3, repeats))
    exps = (1 + len(alphas)) * k * m * n * used.fn.out_shape[1]
    rec = {"k": k, "m": m, "n": n, "times": times, "exp_ns": exp_ns, "exps": exps, "loadavg": [load, _loadavg()]}
    exp_floor = exps * exp_ns[0] * 1e-9
    rec["exp_floor_s"] = exp_floor
    rec["lse_over_floor"] = times["lse"]["median_s"] / times["floor"]["median_s"]
    rec["lse_minus_passes_over_exp_floor"] = (times["lse"]["median_s"] - times["floor"]["median_s"]) / exp_floor
    print("lse", {key: v for key, v in rec.items() if key.endswith("floor") or key == "exp_ns"}, flush=True)
    return rec


def bench_gram(network, n, k, m, repeats):
    """CKA (both estimators) and dCor, all modes and three alphas, against their product bound: per
    pair the two Gram products ``X_p G^T`` and ``G G^T`` (``G = H_p (U_c - U_p)``) and nothing else,
    batched as the scorer batches them (children in chunks, parents one at a time)."""
    parents, children, x, f, used, floor = _batch(network, n, k, m, 4)
    chunk = 8 if m % 8 == 0 else 1

    @jax.jit
    def products(u_p, u_c):
        def per_parent(u):
            h = (u > 0).astype(u.dtype)
            x_p = jax.nn.relu(u)

            def per_chunk(acc, uc):
                g = h[None] * (uc - u[None])  # [B, N, D]
                cross = jnp.einsum("nd,bmd->bnm", x_p, g)
                quad = jnp.einsum("bnd,bmd->bnm", g, g)
                return acc + jnp.sum(cross) + jnp.sum(quad), None

            return jax.lax.scan(per_chunk, jnp.zeros(()), u_c.reshape(-1, chunk, *u_c.shape[1:]))[0]

        return jax.lax.map(per_parent, u_p)

    # Pre-activations as the products' inputs (their cost is the floor's, timed separately).
    u_p = jax.random.normal(jax.random.key(6), (k, n, used.fn.out_shape[1]), jnp.float32)
    u_c = jax.random.normal(jax.random.key(7), (m, n, used.fn.out_shape[1]), jnp.float32)
    alphas = np.asarray(lineage.DEFAULT_ALPHAS)
    metrics = ("cka", similarity_get("cka", estimator="unbiased"), "dcor")
    calls = {
        "floor": floor,
        "products": lambda: products(u_p, u_c),
        "gram": lambda: lineage.score_matrices(metrics, f, parents, children, x, alpha=alphas, modes=tuple(Mode)),
    }
    load = _loadavg()
    times = _interleaved(calls, repeats)
    rec = {"k": k, "m": m, "n": n, "times": times, "loadavg": [load, _loadavg()]}
    bound = times["floor"]["median_s"] + times["products"]["median_s"]
    rec["gram_over_bound"] = times["gram"]["median_s"] / bound
    rec["gram_over_floor"] = times["gram"]["median_s"] / times["floor"]["median_s"]
    rec["products_over_floor"] = times["products"]["median_s"] / times["floor"]["median_s"]
    print("gram", {key: v for key, v in rec.items() if "_over_" in key}, flush=True)
    return rec


#: The norm metrics (row-separable: ``_fastpath.row_separable``), each at its default settings.
NORMS = ("l1", "l2", "lp", "linf", "lse")


def bench_norms(network, n, k, m, repeats):
    """Each norm metric alone (all modes, the three-alpha grid: ``score_matrices``' defaults; L-inf has
    no FIRST_ORDER) and all five in one call, against the K + M forward passes, interleaved."""
    parents, children, x, f, used, floor = _batch(network, n, k, m, 8)
    alphas = np.asarray(lineage.DEFAULT_ALPHAS)
    score = lambda metrics: lambda: lineage.score_matrices(metrics, f, parents, children, x, alpha=alphas)
    calls = {"floor": floor}
    calls.update({name: score(name) for name in NORMS})
    calls["all_norms"] = score(NORMS)
    load = _loadavg()
    times = _interleaved(calls, repeats)
    rec = {"k": k, "m": m, "n": n, "times": times, "loadavg": [load, _loadavg()]}
    for stat in ("median_s", "min_s"):
        rec[f"over_floor_{stat[:-2]}"] = {key: times[key][stat] / times["floor"][stat] for key in (*NORMS, "all_norms")}
    print(
        "norms",
        k,
        "x",
        m,
        {key: round(v, 2) for key, v in rec["over_floor_median"].items()},
        "x floor;",
        "load",
        rec["loadavg"],
        flush=True,
    )
    return rec


def similarity_get(name, **kw):
    from jaxlineage import similarity

    return similarity.get(name, **kw)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="pair,batch,growth")
    ap.add_argument("--torch", action="store_true", help="also time the PyTorch (official-style) side")
    ap.add_argument("--threads", type=int, default=2, help="PyTorch threads (XLA:CPU uses every core)")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch", default="8x48")
    ap.add_argument("--growth", default="20x200,80x800")
    ap.add_argument("--lse", default="20x200", help="section lse: K x M")
    ap.add_argument("--gram", default="8x48", help="section gram: K x M")
    ap.add_argument("--norms", default="20x200", help="section norms: K x M")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch-repeats", type=int, default=3, help="JAX calls; the PyTorch batch is timed once")
    ap.add_argument("--growth-repeats", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/speed.jsonl")
    args = ap.parse_args(argv)
    sections = set(args.sections.split(","))
    torch = _torch_setup(args.threads) if args.torch else None
    network = nets.mlp(5)
    record = {
        "benchmark": "speed",
        "settings": vars(args),
        "torch": None if torch is None else torch.__version__,
        "cpu_count": os.cpu_count(),
    }
    # One record per section, written as soon as it is measured.
    if "pair" in sections:
        write(args.out, {**record, "pair": bench_pair(network, args.n, args.repeats, torch)})
    if "batch" in sections:
        k, m = (int(v) for v in args.batch.split("x"))
        write(args.out, {**record, "batch": bench_batch(network, args.n, k, m, args.batch_repeats, torch)})
    if "lse" in sections:
        k, m = (int(v) for v in args.lse.split("x"))
        write(args.out, {**record, "lse": bench_lse(network, args.n, k, m, args.batch_repeats)})
    if "gram" in sections:
        k, m = (int(v) for v in args.gram.split("x"))
        write(args.out, {**record, "gram": bench_gram(network, args.n, k, m, args.batch_repeats)})
    if "norms" in sections:
        k, m = (int(v) for v in args.norms.split("x"))
        write(args.out, {**record, "norms": bench_norms(network, args.n, k, m, args.batch_repeats)})
    if "growth" in sections:
        for size in filter(None, args.growth.split(",")):
            k, m = (int(v) for v in size.split("x"))
            write(args.out, {**record, "growth": [bench_growth(network, args.n, k, m, args.growth_repeats)]})


if __name__ == "__main__":
    main()
