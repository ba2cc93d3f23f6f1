"""Lineage search over a simulated hub: fingerprint -> retrieve -> verify, against hub size.

    OPENBLAS_NUM_THREADS=1 nice -n 10 python benchmarks/hub.py --zoo-n 3000 --sizes 1000,3000
        [--workdir /tmp/jl_hub] [--k 10] [--alpha 0.05] [--per-kind 40] [--probe-size 256] [--fp-dim 64]
        [--out benchmarks/results/hub.jsonl] [--plot benchmarks/results/hub.png]
    python benchmarks/hub.py --summarize-only      # slopes + plot from the JSON lines

The hub is ``zoo.specs.HUB_SIM(--zoo-n)`` (built once in ``<workdir>/hub_sim_<n>``, resumable:
families of 16 = a root, fine-tunes (all / head), prunes, int8 and permuted copies, two generations;
a few teacher-student pairs). A hub of size ``n <= --zoo-n`` is the first whole families of a seeded
shuffle until ``n`` models are reached (each family keeps its true graph).

Protocol (fixed before any figure was looked at):

* Queries: every derived model whose parent is in the hub. A query is a new upload, so the query
  itself and its descendants are excluded from what the index may return (``exclude``).
* Stage 1: recall@k of the true parent, per derivation kind, for each fingerprint (``logits``:
  logits on ``--probe-size`` test inputs, centred, projected to ``--fp-dim``; ``weights``: sorted
  singular values + unit norms + sorted biases, raw; ``concat``: both; ``gram``: normalised Gram
  matrices of the kernel products seen through a random input projection, ``--gram-m``) with the
  exact flat index (and recall at 1, 5, 10, 20, 50), and for the pipeline's fingerprint
  (``--pipeline-fp``) with IVF and HNSW. The first run used ``logits`` as the pipeline's
  fingerprint (fixed in advance; its lines are kept in ``results/hub_run1_logits.jsonl``); ``gram``
  was added after that run showed fine-tune recall@10 of 0.81-0.90, and is the default since. The second
  run (``results/hub_run2_spec_v1.jsonl``) used the first HUB_SIM, whose two ft_all children shared one
  data order; ``results/hub.jsonl`` is the current HUB_SIM (own data order per fine-tune).
  Latency: each query searched alone (``one_by_one``), p50 / p95 over up to 1000 queries.
* Stage 3 (``hub.AlignedWeightVerifier``: conformal p-values of the aligned kernel correlation,
  the answer chosen among Holm's rejections by copied weights, then aligned L2; ``--alpha``) on a
  seeded sample of ``--per-kind`` queries per kind (the pipeline's HNSW index),
  of roots (their whole family excluded; truth ``NO_PARENT``) and of derived queries whose parent
  is removed (``parent_removed``: the parent excluded too, siblings and grandparents stay; truth
  ``NO_PARENT``, answers naming a relative counted apart) and whose whole family is removed
  (``family_removed``). The conformal null: all cross-family pairs among 60 models of calibration
  families (10 % of the families, never queried). Sixth session, after the figures of the fifth: the
  null is each calibration-family model against its k retrieved candidates, its family excluded
  (``LineageSearch.calibrate``: what stage 3 sees for an unrelated query), with the earlier null's
  answers kept as ``stage3_random_null``; and the choice names, among candidates holding every weight
  of the query, the fullest (``hub.choice_score``).
* Exhaustive exact scoring: the same scorer on every model of the hub. Measured per pair on 5
  queries x ``--exhaustive-sample`` random candidates; the exhaustive time per query is that
  median per-pair time x n (scoring is pair by pair, so linear in n). Speed-up = exhaustive time /
  the pipeline's (query fingerprint + HNSW search + stage 3) time per query.
* Build time (fingerprints + FAISS) and memory per model (FAISS's serialised index + kept vectors +
  ids) per index kind. Slopes: least squares of log(figure) on log(n) over the sizes measured.

Each size is one JSON line; ``--summarize-only`` appends a summary line (slopes) and redraws the plot.
Expected runtime on the shared 2-core CPU: building HUB_SIM(3000) ~12 min (one orbax write per model),
loading its 3006 checkpoints ~7 min at load 20 (cached next to the zoo afterwards), then about 1 min per size.
Single-threaded BLAS (``OPENBLAS_NUM_THREADS=1``) matters on a loaded machine: with the default threads the
small SVDs and dot products of stage 1 spin-wait (13 min instead of 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import time
from collections import defaultdict

import jax
import numpy as np
from _common import setup_logging, write

from jaxlineage import hub, zoo
from jaxlineage.eval.core import ModelSet
from jaxlineage.eval.scenarios import model_set

log = logging.getLogger("benchmarks.hub")
ATTACKS = ("finetune_all", "finetune_head", "prune", "int8", "permute", "distill")
TARGET_KINDS = ("finetune_all", "finetune_head", "prune", "int8", "permute")


def _families(z) -> dict[str, list[str]]:
    g = z.graph
    fam = defaultdict(list)
    for r in z.models():
        fam[g.root(r.id)].append(r.id)
    return dict(fam)


def _pick_families(fams: dict[str, list[str]], n: int, seed: int) -> list[str]:
    roots = sorted(fams)
    rng = np.random.default_rng(seed)
    rng.shuffle(roots)
    out, total = [], 0
    for r in roots:
        if total >= n:
            break
        out.append(r)
        total += len(fams[r])
    return out


def _load_all(z, ids: list[str], cache: pathlib.Path):
    """The models stacked in one population; the stacked parameters are cached in ``cache`` (an npz)."""
    t = time.perf_counter()
    (pop,) = model_set(z, ids[:1]).populations
    params = None
    if cache.exists():
        with np.load(cache) as f:
            if list(f["ids"]) == list(ids):
                flat, tree = jax.tree.flatten(pop.params)
                params = jax.tree.unflatten(tree, [f[f"leaf{i}"] for i in range(len(flat))])
    if params is None:
        (pop,) = model_set(z, ids).populations
        params = jax.tree.map(np.asarray, pop.params)
        leaves = jax.tree.leaves(params)
        np.savez(cache, ids=np.asarray(ids), **{f"leaf{i}": v for i, v in enumerate(leaves)})
    pop = type(pop)(ids=tuple(ids), params=params, logits_fn=pop.logits_fn, feature_fns=pop.feature_fns, arch=pop.arch)
    log.info("loaded %d models in %.0fs", len(ids), time.perf_counter() - t)
    return pop


def _recall(res, truth: dict[str, str], kinds: dict[str, str]) -> dict:
    hit = defaultdict(list)
    for q, ids in zip(res.query_ids, res.ids):
        hit[kinds[q]].append(truth[q] in ids)
    return {k: dict(recall=float(np.mean(v)), n=len(v)) for k, v in sorted(hit.items())}


def _recall_curve(res, truth, kinds, ks=(1, 5, 10, 20, 50)) -> dict:
    out = defaultdict(dict)
    for kk in ks:
        hit = defaultdict(list)
        for q, ids in zip(res.query_ids, res.ids):
            hit[kinds[q]].append(truth[q] in ids[:kk])
        for kd, v in hit.items():
            out[kd][kk] = float(np.mean(v))
    return dict(sorted(out.items()))


def _stage1(pop, fps, ids, parent, kinds, excl, k, seed, pipeline_fp) -> tuple[dict, dict]:
    """Recall per fingerprint x index; latency; build time and memory of the pipeline's fingerprint."""
    pos = {m: i for i, m in enumerate(pop.ids)}
    sub = pop.take([pos[i] for i in ids])
    queries = [m for m in ids if parent[m] is not None]
    qi = [ids.index(q) for q in queries]
    out = {"recall": {}, "recall_at": {}, "build": {}, "memory_per_model_bytes": {}, "latency_ms": {}}
    indexes = {}
    for name, fp in fps.items():
        kinds_here = ("flat", "ivf", "hnsw") if name == pipeline_fp else ("flat",)
        vecs = None
        for kind in kinds_here:
            index = hub.Index(fp, kind=kind, chunk=512)
            index.build(sub, progress=False)
            vecs = index.vectors
            res = index.search_fingerprints(queries, vecs[qi], k, exclude=excl)
            out["recall"][f"{name}/{kind}"] = _recall(res, parent, kinds)
            if kind == "flat":
                deep = index.search_fingerprints(queries, vecs[qi], 50, exclude=excl)
                out["recall_at"][name] = _recall_curve(deep, parent, kinds)
            if name == pipeline_fp:
                mem = index.memory_bytes()
                out["build"][kind] = dict(index.timings, total_s=sum(index.timings.values()))
                out["memory_per_model_bytes"][kind] = dict(
                    {k_: v / len(ids) for k_, v in mem.items()}, total=sum(mem.values()) / len(ids)
                )
                rng = np.random.default_rng(seed)
                lat_q = rng.choice(len(queries), min(1000, len(queries)), replace=False)
                lat = index.search_fingerprints(
                    [queries[i] for i in lat_q], vecs[[qi[i] for i in lat_q]], k, exclude=excl, one_by_one=True
                )
                ms = lat.seconds * 1e3
                out["latency_ms"][kind] = dict(p50=float(np.percentile(ms, 50)), p95=float(np.percentile(ms, 95)))
                indexes[kind] = index
        log.info("stage 1 %s: %s", name, {k_: v for k_, v in out["recall"].items() if k_.startswith(name)})
    return out, indexes


def _calibrate(pop, cal_fams, fams, seed) -> hub.AlignedWeightVerifier:
    rng = np.random.default_rng(seed + 1)
    members = [m for r in cal_fams for m in fams[r]]
    pick = list(rng.choice(len(members), min(60, len(members)), replace=False))
    ids = [members[i] for i in pick]
    root_of = {m: r for r in cal_fams for m in fams[r]}
    pos = {m: i for i, m in enumerate(pop.ids)}
    cal = ModelSet((pop.take([pos[i] for i in ids]),))
    unrelated = np.array([[root_of[a] != root_of[b] for b in ids] for a in ids])
    t = time.perf_counter()
    scorer = hub.AlignedWeightVerifier().calibrate(cal, cal, unrelated=unrelated)
    log.info("calibrated on %d unrelated pairs in %.0fs", int(unrelated.sum()), time.perf_counter() - t)
    return scorer


def _named_as(z, named: str, parent: str | None) -> str:
    """What a model named for a query whose parent was removed is to that parent (or to the query's family)."""
    if parent is None:
        return f"a relative ({z.get(named).group})"
    rec, par = z.get(named), z.get(parent)
    if rec.parent_id == parent:
        return f"a child of the parent: {rec.group}"
    if named == par.parent_id:
        return f"the grandparent: {rec.group}"
    if rec.parent_id is not None and rec.parent_id == par.parent_id:
        return f"a sibling of the parent: {rec.group}"
    return f"another relative: {rec.group}"


def _stage3(search, pop, samples, truth_parent, z, excl_fn) -> dict:
    """End-to-end answers per scenario; returns accuracy / no-parent rates and mean times."""
    g = z.graph
    out, times = {}, []
    pos = {m: i for i, m in enumerate(pop.ids)}
    warm = next(q for qids in samples.values() for q in qids)  # compiles outside the timed answers
    search.find_parents(pop.take([pos[warm]]), exclude={warm: excl_fn("family_removed", warm)})
    for scen, qids in samples.items():
        if not qids:
            continue
        answers = search.find_parents(pop.take([pos[q] for q in qids]), exclude={q: excl_fn(scen, q) for q in qids})
        times += [sum(a.seconds.values()) for a in answers]
        if scen in ("root", "parent_removed", "family_removed"):
            none = [a.parent is None for a in answers]
            rel = [a.parent is not None and g.root(a.parent) == g.root(a.query) for a in answers]
            anc = [a.parent is not None and g.is_ancestor(a.parent, a.query) for a in answers]
            named = defaultdict(int)
            for a in answers:
                if a.parent is not None and g.root(a.parent) != g.root(a.query):
                    named["an unrelated model"] += 1
                elif a.parent is not None:
                    named[_named_as(z, a.parent, truth_parent[a.query])] += 1
            out[scen] = dict(
                no_parent_rate=float(np.mean(none)),
                named_relative_rate=float(np.mean(rel)),
                named_ancestor_rate=float(np.mean(anc)),
                n=len(answers),
                named=dict(named),
            )
        else:
            ok = [a.parent == truth_parent[a.query] for a in answers]
            none = [a.parent is None for a in answers]
            wrong, by_group = defaultdict(int), defaultdict(lambda: [0, 0])
            for a in answers:
                by_group[z.get(a.query).group][0] += 1
                if a.parent is not None and a.parent != truth_parent[a.query]:
                    wrong[f"{g.relation(a.parent, a.query).value} ({z.get(a.parent).kind})"] += 1
                    wrong[f"{z.get(a.query).group} named {z.get(a.parent).group}"] += 1
                by_group[z.get(a.query).group][1] += a.parent == truth_parent[a.query]
            out[scen] = dict(
                accuracy=float(np.mean(ok)),
                no_parent_rate=float(np.mean(none)),
                n=len(answers),
                wrong=dict(wrong),
                right_by_group={k_: f"{v[1]}/{v[0]}" for k_, v in sorted(by_group.items())},
            )
        log.info("stage 3 %s: %s", scen, out[scen])
    return out, float(np.mean(times)), times


def run_size(args, z, pop, fams, n) -> dict:
    g = z.graph
    picked = _pick_families(fams, n, args.seed)
    ids = [m for r in picked for m in fams[r]]
    kinds = {m: z.get(m).kind for m in ids}
    parent = {m: z.get(m).parent_id for m in ids}
    desc = {m: set(g.descendants(m)) for m in ids}
    excl = {m: sorted({m} | desc[m]) for m in ids}
    probe = z.probe(args.probe_size, task="A-h1", split="test")
    fps = {
        "logits": hub.LogitFingerprint(probe, dim=args.fp_dim, seed=args.seed),
        "weights": hub.WeightFingerprint(),
        "concat": hub.ConcatFingerprint(
            [hub.LogitFingerprint(probe, dim=args.fp_dim, seed=args.seed), hub.WeightFingerprint()]
        ),
        "gram": hub.GramFingerprint(m=args.gram_m, seed=args.seed),
    }
    s1, indexes = _stage1(pop, fps, ids, parent, kinds, excl, args.k, args.seed, args.pipeline_fp)

    # stage 3: calibration families (never queried), then seeded samples per scenario
    rng = np.random.default_rng(args.seed + 2)
    n_cal = min(max(2, len(picked) // 10), len(picked) - 1)
    cal_fams = picked[:n_cal]
    test_ids = [m for r in picked[n_cal:] for m in fams[r]]
    scorer = _calibrate(pop, cal_fams, fams, args.seed)
    pos = {m: i for i, m in enumerate(pop.ids)}
    hub_pop = pop.take([pos[i] for i in ids])
    search = hub.LineageSearch(indexes["hnsw"], hub_pop, scorer, k=args.k, alpha=args.alpha)
    random_null = scorer.null_scores
    # The null of what stage 3 sees (sixth session): every model of the calibration families, its own
    # family excluded, against its k retrieved candidates.
    t = time.perf_counter()
    cal_ids = [m for r in cal_fams for m in fams[r]]
    search.calibrate(hub_pop.take([ids.index(m) for m in cal_ids]), exclude={m: fams[g.root(m)] for m in cal_ids})
    retrieved_null = scorer.null_scores
    log.info("retrieved null: %d pairs in %.0fs", len(retrieved_null), time.perf_counter() - t)

    def sample(pool):
        pool = sorted(pool)
        return [pool[i] for i in rng.choice(len(pool), min(args.per_kind, len(pool)), replace=False)] if pool else []

    derived = [m for m in test_ids if parent[m] is not None]
    samples = {kd: sample([m for m in derived if kinds[m] == kd]) for kd in ATTACKS}
    samples["root"] = sample([m for m in test_ids if parent[m] is None])
    samples["parent_removed"] = sample([m for m in derived if kinds[m] != "distill"])
    samples["family_removed"] = sample([m for m in derived if kinds[m] != "distill"])

    def excl_fn(scen, q):
        if scen == "root" or scen == "family_removed":
            return fams[g.root(q)]
        if scen == "parent_removed":
            return excl[q] + [parent[q]]
        return excl[q]

    s3, mean_pipeline_s, _ = _stage3(search, pop, samples, parent, z, excl_fn)
    # The earlier null (random unrelated pairs among 60 calibration models), same samples, for comparison.
    scorer.null_scores = random_null
    s3_random_null, _, _ = _stage3(search, pop, samples, parent, z, excl_fn)
    scorer.null_scores = retrieved_null
    attacks = [s3[k_] for k_ in TARGET_KINDS if k_ in s3]
    e2e = float(sum(a["accuracy"] * a["n"] for a in attacks) / sum(a["n"] for a in attacks))
    e2e_all = [s3[k_] for k_ in ATTACKS if k_ in s3]
    e2e_with_distill = float(sum(a["accuracy"] * a["n"] for a in e2e_all) / sum(a["n"] for a in e2e_all))

    # exhaustive exact scoring, measured per pair on a subsample and scaled linearly in n
    qs = [test_ids[i] for i in rng.choice(len(test_ids), 5, replace=False)]
    cs = [ids[i] for i in rng.choice(len(ids), min(args.exhaustive_sample, len(ids)), replace=False)]
    per_pair = []
    for q in qs:
        t = time.perf_counter()
        scorer.pair_stats(pop.take([pos[c] for c in cs]), pop.take([pos[q]]))
        per_pair.append((time.perf_counter() - t) / len(cs))
    pair_s = float(np.median(per_pair))
    exhaustive_s = pair_s * len(ids)
    rec = dict(
        benchmark="hub",
        n=len(ids),
        families=len(picked),
        zoo=z.spec.name,
        settings=dict(
            k=args.k,
            alpha=args.alpha,
            per_kind=args.per_kind,
            probe_size=args.probe_size,
            fp_dim=args.fp_dim,
            seed=args.seed,
            exhaustive_sample=args.exhaustive_sample,
            calibration_families=n_cal,
            null_pairs=int(len(retrieved_null)),
            null="each calibration-family model against its k retrieved candidates (its family excluded)",
            random_null_pairs=int(len(random_null)),
            pipeline_fingerprint=args.pipeline_fp,
            gram_m=args.gram_m,
            pipeline=f"{args.pipeline_fp} fingerprint, HNSW (M 32, efSearch 128), AlignedWeightVerifier"
            " (conformal null of the aligned correlation on retrieved unrelated candidates; choice: copied weights,"
            " the fullest full copy, then aligned L2), Holm",
        ),
        stage1=s1,
        stage3=s3,
        stage3_random_null=s3_random_null,
        end_to_end_accuracy=e2e,
        end_to_end_accuracy_with_distill=e2e_with_distill,
        pipeline_s_per_query=mean_pipeline_s,
        exhaustive=dict(
            pair_s=pair_s,
            per_query_s=exhaustive_s,
            how=f"median over {len(qs)} queries of (time to score {len(cs)} random candidates) / {len(cs)}, x n",
        ),
        speedup=exhaustive_s / mean_pipeline_s,
        loadavg=open("/proc/loadavg").read().split()[:3],
        faiss_threads=__import__("faiss").omp_get_max_threads(),
    )
    return rec


def _slope(ns, ys):
    ns, ys = np.asarray(ns, float), np.asarray(ys, float)
    ok = np.isfinite(ys) & (ys > 0)
    if ok.sum() < 2:
        return None
    return float(np.polyfit(np.log(ns[ok]), np.log(ys[ok]), 1)[0])


def summarize(out: pathlib.Path, plot: pathlib.Path) -> dict | None:
    recs = [json.loads(x) for x in out.read_text().splitlines() if x.strip()] if out.exists() else []
    recs = [r for r in recs if r.get("benchmark") == "hub" and "n" in r]
    if not recs:
        return None
    by_n = {}
    for r in recs:  # the latest line per size
        by_n[r["n"]] = r
    ns = sorted(by_n)
    rs = [by_n[n] for n in ns]
    series = {
        "build_s/hnsw": [r["stage1"]["build"]["hnsw"]["total_s"] for r in rs],
        "build_s/flat": [r["stage1"]["build"]["flat"]["total_s"] for r in rs],
        "memory_per_model_bytes/hnsw": [r["stage1"]["memory_per_model_bytes"]["hnsw"]["total"] for r in rs],
        "memory_per_model_bytes/flat": [r["stage1"]["memory_per_model_bytes"]["flat"]["total"] for r in rs],
        "latency_p50_ms/hnsw": [r["stage1"]["latency_ms"]["hnsw"]["p50"] for r in rs],
        "latency_p95_ms/hnsw": [r["stage1"]["latency_ms"]["hnsw"]["p95"] for r in rs],
        "latency_p95_ms/flat": [r["stage1"]["latency_ms"]["flat"]["p95"] for r in rs],
        "pipeline_s_per_query": [r["pipeline_s_per_query"] for r in rs],
        "speedup": [r["speedup"] for r in rs],
    }
    slopes = {k: _slope(ns, v) for k, v in series.items()}
    summary = dict(benchmark="hub_summary", sizes=ns, series=series, loglog_slopes=slopes)
    _plot(ns, rs, series, plot)
    return summary


def _plot(ns, rs, series, plot):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 3, figsize=(15, 8))
    a = ax[0, 0]
    for kind in ATTACKS:
        fp = rs[-1]["settings"].get("pipeline_fingerprint", "logits")
        ys = [r["stage1"]["recall"][f"{fp}/hnsw"].get(kind, {}).get("recall", np.nan) for r in rs]
        a.plot(ns, ys, "o-", label=kind)
    a.axhline(0.99, ls=":", c="k")
    a.set(title=f"stage-1 recall@10 ({fp}, HNSW)", xscale="log", xlabel="models in the hub")
    a.legend(fontsize=7)
    a = ax[0, 1]
    a.plot(ns, [r["end_to_end_accuracy"] for r in rs], "o-", label="parent accuracy (no distill)")
    for scen in ("root", "parent_removed", "family_removed"):
        a.plot(ns, [r["stage3"][scen]["no_parent_rate"] for r in rs], "s--", label=f"NO_PARENT: {scen}")
    a.axhline(0.95, ls=":", c="k")
    a.set(title="end to end", xscale="log", xlabel="models in the hub")
    a.legend(fontsize=7)
    a = ax[0, 2]
    for k in ("latency_p50_ms/hnsw", "latency_p95_ms/hnsw", "latency_p95_ms/flat"):
        a.plot(ns, series[k], "o-", label=k)
    a.axhline(50, ls=":", c="k")
    a.set(title="stage-1 latency per query (ms)", xscale="log", yscale="log", xlabel="models in the hub")
    a.legend(fontsize=7)
    a = ax[1, 0]
    a.plot(ns, series["speedup"], "o-")
    a.axhline(100, ls=":", c="k")
    a.set(title="speed-up over exhaustive exact scoring", xscale="log", yscale="log", xlabel="models in the hub")
    a = ax[1, 1]
    for k in ("build_s/hnsw", "build_s/flat"):
        a.plot(ns, series[k], "o-", label=k)
    a.set(title="index build time (s, fingerprints + FAISS)", xscale="log", yscale="log", xlabel="models in the hub")
    a.legend(fontsize=7)
    a = ax[1, 2]
    for k in ("memory_per_model_bytes/hnsw", "memory_per_model_bytes/flat"):
        a.plot(ns, series[k], "o-", label=k)
    a.set(title="index memory per model (bytes)", xscale="log", xlabel="models in the hub")
    a.legend(fontsize=7)
    fig.tight_layout()
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot, dpi=110)
    log.info("plot: %s", plot)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="/tmp/jl_hub", help="zoo folder root (HUB_SIM(n) in <workdir>/hub_sim_<n>)")
    ap.add_argument("--zoo-n", type=int, default=3000, help="the HUB_SIM size to build; sizes are its subsets")
    ap.add_argument("--sizes", default="1000,3000")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--per-kind", type=int, default=40)
    ap.add_argument("--probe-size", type=int, default=256)
    ap.add_argument("--fp-dim", type=int, default=64)
    ap.add_argument("--exhaustive-sample", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pipeline-fp", default="gram", choices=("logits", "weights", "concat", "gram"))
    ap.add_argument("--gram-m", type=int, default=16)
    ap.add_argument("--out", default="benchmarks/results/hub.jsonl")
    ap.add_argument("--plot", default="benchmarks/results/hub.png")
    ap.add_argument("--summarize-only", action="store_true")
    args = ap.parse_args(argv)
    setup_logging()
    out, plot = pathlib.Path(args.out), pathlib.Path(args.plot)
    if not args.summarize_only:
        wd = pathlib.Path(args.workdir) / f"hub_sim_{args.zoo_n}"
        t = time.perf_counter()
        z = zoo.build(zoo.specs.HUB_SIM(args.zoo_n), wd, progress=False)
        log.info("zoo %s ready in %.0fs (%d models)", wd, time.perf_counter() - t, len(z.models()))
        fams = _families(z)
        sizes = sorted(int(s) for s in args.sizes.split(","))
        if sizes[-1] > len(z.models()):
            raise SystemExit(f"--sizes {sizes[-1]} exceeds the zoo's {len(z.models())} models (raise --zoo-n)")
        picked = _pick_families(fams, sizes[-1], args.seed)
        pop = _load_all(z, [m for r in picked for m in fams[r]], wd.parent / f"{wd.name}.params-cache.npz")
        for n in sizes:
            t = time.perf_counter()
            rec = run_size(args, z, pop, fams, n)
            rec["wall_s"] = time.perf_counter() - t
            write(out, rec)
    summary = summarize(out, plot)
    if summary is not None:
        write(out, summary)


if __name__ == "__main__":
    main()
