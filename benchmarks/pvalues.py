"""p-values and "no parent" (issue 16): calibration, power, open set and cost, as JSON lines.

    python -m jaxlineage.zoo --spec quick --workdir /tmp/jl_pvalues/quick
    python -m jaxlineage.zoo --spec provenance_quick --workdir /tmp/jl_pvalues/provenance_quick
    python benchmarks/pvalues.py calibration --workdir /tmp/jl_pvalues   # ~3 min (builds the null zoo)
    python benchmarks/pvalues.py power --workdir /tmp/jl_pvalues         # ~5 min
    python benchmarks/pvalues.py openset --workdir /tmp/jl_pvalues       # ~3 min
    python benchmarks/pvalues.py cost --workdir /tmp/jl_pvalues          # ~5 min

``--workdir`` holds one folder per zoo: ``quick``, ``provenance_quick`` (built as above) and
``null`` (built by ``calibration`` when absent).

Every run appends one JSON line per figure to ``--out`` (default
``benchmarks/results/pvalues.jsonl``) with settings, versions and device; ``calibration``
also writes the QQ plot ``--qq`` (PNG). Times on a 2-core shared CPU are stated above.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import numpy as np
from _common import setup_logging, timeit, write

from jaxlineage import data as data_lib
from jaxlineage import zoo as zoo_lib
from jaxlineage.eval import NO_PARENT, protocols, scenarios
from jaxlineage.eval import pvalues as pv
from jaxlineage.eval import scorers as scorers_lib

ALPHAS = (0.01, 0.05, 0.1)

#: The null zoo: independently initialised tiny MLPs (66: two halves of 33, 528 pairs each) and
#: ConvNets (12: 66 pairs), one epoch each; ~1 min to build on 2 cores.
NULL_SPEC = zoo_lib.GraphSpec(
    "pv_null",
    (zoo_lib.Task("A", "embedded", data_lib.TASK_A, n_train=640),),
    (
        zoo_lib.Group(
            "mlp",
            "train",
            task="A",
            arch="mlp",
            arch_kwargs=(("features", (64, 32)),),
            grid=dict(seed=tuple(range(66)), epochs=1, lr=1e-3, batch_size=64),
        ),
        zoo_lib.Group(
            "cnn",
            "train",
            task="A",
            arch="convnet",
            arch_kwargs=(("channels", (4, 8)), ("hidden", 16)),
            grid=dict(seed=tuple(range(100, 112)), epochs=1, lr=1e-3, batch_size=64),
        ),
    ),
    max_population=33,
    sequential_archs=("convnet",),
)


def _open(path):
    return zoo_lib.Zoo.open(path)


def _params(z, i):
    return z.load(i)


def _perm_p(z, pairs, *, statistic, t, key):
    out = []
    for n, (a, b) in enumerate(pairs):
        va = _params(z, a)
        spec = pv.spec_for(z.network_for(a).name, va)
        out.append(
            pv.permutation_test(
                va,
                _params(z, b),
                spec,
                key=jax.random.fold_in(key, n),
                num_permutations=t,
                statistic=statistic,
                names=(a, b),
            ).pvalue
        )
    return np.asarray(out)


def _upper(n):
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def calibration(args):
    z = (
        zoo_lib.build(NULL_SPEC, args.null_zoo)
        if not (pathlib.Path(args.null_zoo) / "manifest.json").exists()
        else _open(args.null_zoo)
    )
    mlp = [r.id for r in z.group("mlp")]
    cnn = [r.id for r in z.group("cnn")]
    key = jax.random.key(args.seed)
    curves, rows = {}, []
    # Permutation tests: every pair of one half of the MLPs (528) and all ConvNet pairs (66).
    half_a, half_b = mlp[: len(mlp) // 2], mlp[len(mlp) // 2 :]
    pairs = [(half_b[i], half_b[j]) for i, j in _upper(len(half_b))] + [(cnn[i], cnn[j]) for i, j in _upper(len(cnn))]
    for st in pv.Statistic:
        t0 = time.time()
        p = _perm_p(z, pairs, statistic=st, t=args.permutations, key=key)
        curves[f"perm-test {st.value}"] = p
        rows.append(
            {
                "method": f"perm-test[{st.value}]",
                "T": args.permutations,
                "pairs": len(p),
                "table": pv.calibration_table(p, alphas=ALPHAS),
                "wall_s": time.time() - t0,
            }
        )
    # Calibrated scorers: null from pairs within half A, tested on pairs within half B (disjoint models).
    probe = np.asarray(z.probe(256, task="A"))
    sa, sb = scenarios.model_set(z, half_a), scenarios.model_set(z, half_b)
    iu_a, iu_b = np.triu_indices(len(half_a), 1), np.triu_indices(len(half_b), 1)
    for base in [pv.MatchedScorer()] + scorers_lib.baselines():
        t0 = time.time()
        cal = pv.CalibratedScorer(base)
        null = base.score(sa, sa, probe=probe)[iu_a]
        cal.null_scores = np.sort(null)
        p = cal.pvalues(base.score(sb, sb, probe=probe)[iu_b])
        curves[cal.name] = p
        rows.append(
            {
                "method": cal.name,
                "calibration_pairs": int(null.size),
                "pairs": int(p.size),
                "table": pv.calibration_table(p, alphas=ALPHAS),
                "wall_s": time.time() - t0,
            }
        )
    pv.qq_plot(curves, args.qq)
    for r in rows:
        write(args.out, {"experiment": "calibration", "null_zoo": str(args.null_zoo), **r})


def _descendant_pairs(z, source_groups, kind_of):
    """(ancestor source, descendant) pairs per derivation kind."""
    out = {}
    for g in source_groups:
        for s in z.group(g):
            for d in z.graph.descendants(s.id):
                out.setdefault(kind_of(z.get(d)), []).append((s.id, d))
    return out


def power(args):
    """Permutation tests' power: the fraction of (source, descendant) pairs with p <= 0.01 per derivation kind."""
    key = jax.random.key(args.seed)
    zoos = {
        "provenance_quick": (args.prov, ("src_mlp", "src_cnn"), lambda r: f"{r.arch}:{r.kind}"),
        "quick": (args.quick, ("parent",), lambda r: "child"),
    }
    for zname in args.zoos:
        path, groups, kind_of = zoos[zname]
        z = _open(path)
        for kind, pairs in sorted(_descendant_pairs(z, groups, kind_of).items()):
            same = [
                (a, b)
                for a, b in pairs
                if z.network_for(a).name == z.network_for(b).name
                and [np.shape(x) for x in jax.tree.leaves(z.load(a)["params"])]
                == [np.shape(x) for x in jax.tree.leaves(z.load(b)["params"])]
            ]
            rec = {
                "experiment": "power",
                "zoo": zname,
                "kind": kind,
                "pairs": len(pairs),
                "readable": len(same),
                "T": args.permutations,
            }
            for st in pv.Statistic:
                t0 = time.time()
                p = _perm_p(z, same, statistic=st, t=args.permutations, key=key) if same else np.array([])
                rec[f"perm-test[{st.value}]"] = {
                    "rejected@0.01": int(np.sum(p <= 0.01)),
                    "n": int(p.size),
                    "max_p": float(p.max()) if p.size else None,
                    "wall_s": time.time() - t0,
                }
            write(args.out, rec)


def power_calibrated(args):
    """Power of calibrated scorers: null = up to ``--null-pairs`` random unrelated same-architecture pairs of
    the zoo (never a tested pair: tested pairs are ancestor-descendant)."""
    rng = np.random.default_rng(args.seed)
    for zname, path, groups, kind_of, bases in (
        (
            "provenance_quick",
            args.prov,
            ("src_mlp", "src_cnn"),
            lambda r: f"{r.arch}:{r.kind}",
            lambda: [pv.MatchedScorer(), scorers_lib.WeightCosine()],
        ),
        ("quick", args.quick, ("parent",), lambda r: "child", lambda: [scorers_lib.WeightCosine()]),
    ):
        z = _open(path)
        by_kind = _descendant_pairs(z, groups, kind_of)
        probe = np.asarray(z.probe(256, task=z.records[-1].task))
        kept = [r.id for r in z.records if r.kept]
        for base in bases():
            t0 = time.time()
            hits: dict = {}
            for arch in sorted({z.network_for(i).name for i in kept}):
                ids = [i for i in kept if z.network_for(i).name == arch]
                ms = scenarios.model_set(z, ids)
                if len(ms.populations) > 1:  # heads of different shapes: one population per shape
                    ms = scenarios.model_set(z, [i for i in ids if i in ms.populations[0].ids])
                    ids = list(ms.ids)
                index = {i: n for n, i in enumerate(ids)}
                pairs = [(a, b) for a in ids for b in ids if a != b and not z.graph.relation(a, b).is_related]
                pick = rng.choice(len(pairs), size=min(args.null_pairs, len(pairs)), replace=False)
                tested = [(k, a, b) for k, ps in by_kind.items() for a, b in ps if a in index and b in index]
                if isinstance(base, pv.MatchedScorer):
                    spec = pv.spec_for(arch, z.load(ids[0]))

                    def sc(a, b, spec=spec, z=z):
                        return pv.matched_statistic(z.load(a), z.load(b), spec)
                else:
                    full = base.score(ms, ms, probe=probe, unreadable="nan")

                    def sc(a, b, full=full, index=index):
                        return full[index[a], index[b]]

                null = np.array([sc(*pairs[i]) for i in pick])
                for k, a, b in tested:
                    p = float(pv.conformal_pvalues(sc(a, b), null, name=base.name))
                    h = hits.setdefault(k, [0, 0])
                    h[0] += int(p <= 0.01)
                    h[1] += 1
                write(
                    args.out,
                    {
                        "experiment": "power-calibrated",
                        "zoo": zname,
                        "arch": arch,
                        "method": f"calibrated[{base.name}]",
                        "null_pairs": int(null.size),
                    },
                )
            for k, (h, n) in sorted(hits.items()):
                write(
                    args.out,
                    {
                        "experiment": "power-calibrated",
                        "zoo": zname,
                        "kind": k,
                        "method": f"calibrated[{base.name}]",
                        "rejected@0.01": h,
                        "n": n,
                        "wall_s": time.time() - t0,
                    },
                )


def openset(args):
    z = _open(args.quick)
    parents = [r.id for r in z.group("parent")]
    withheld = [parents[i] for i in args.withhold]
    os_ = pv.open_set_scenario(z, withheld=withheld)
    s = os_.scenario
    key = jax.random.key(args.seed)
    scorer = pv.PermutationTestScorer(
        key=key, num_permutations=args.permutations, statistic=pv.Statistic.WEIGHT_CORR, alpha=args.alpha
    )
    t0 = time.time()
    scores = scorer.score(s.candidates, s.queries, probe=s.probe)
    decision = scorer.decide(scores)
    known = s.labels != NO_PARENT
    rec = {
        "experiment": "openset",
        "zoo": "quick",
        "scorer": scorer.name,
        "alpha": args.alpha,
        "withheld": withheld,
        "candidates": len(s.candidates),
        "queries": len(s.queries),
        "known_correct": int(np.sum(decision[known] == s.labels[known])),
        "known": int(known.sum()),
        "no_parent_correct": int(np.sum(decision[~known] == NO_PARENT)),
        "no_parent": int((~known).sum()),
        "related_withheld": len(os_.related_withheld),
        "related_withheld_answered_no_parent": None,
        "wall_s": time.time() - t0,
    }
    # Children of a withheld parent that share an init with a candidate: what does the test say?
    if os_.related_withheld:
        rw = scenarios.model_set(z, list(os_.related_withheld))
        d = scorer.decide(scorer.score(s.candidates, rw, probe=s.probe))
        rec["related_withheld_answered_no_parent"] = int(np.sum(d == NO_PARENT))
        rec["related_withheld_relations"] = sorted({v for r in os_.relations.values() for v in r.values()})
    write(args.out, rec)
    # The same scenario through the evaluation protocol (open-set figures via Scorer.decide).
    res = protocols.run(s, scorer, key=key, num_folds=args.folds)
    write(args.out, {"experiment": "openset-protocol", "result": res.to_json()["metrics"], "scorer": scorer.name})
    if args.detector:
        from jaxlineage.eval.methods import DetectorScorer

        res = protocols.run(s, DetectorScorer(), key=key, num_folds=args.folds)
        write(
            args.out,
            {
                "experiment": "openset-protocol",
                "result": res.to_json()["metrics"],
                "scorer": "lineage detector (no-parent logit)",
            },
        )


def openset_detector(args):
    """The Lineage Detector's "no parent" logit on the same open-set scenario and protocol.

    :class:`~jaxlineage.eval.methods.DetectorScorer` trains with its "no parent" logit when the
    training fold holds NO_PARENT labels, scores candidates relative to it and decides NO_PARENT
    where no candidate reaches it.
    """
    from jaxlineage.eval.methods import DetectorScorer

    z = _open(args.quick)
    parents = [r.id for r in z.group("parent")]
    s = pv.open_set_scenario(z, withheld=[parents[i] for i in args.withhold]).scenario
    t0 = time.time()
    res = protocols.run(s, DetectorScorer(), key=jax.random.key(args.seed), num_folds=args.folds)
    write(
        args.out,
        {
            "experiment": "openset-protocol",
            "scorer": "lineage detector (no-parent logit)",
            "folds": args.folds,
            "withheld": [parents[i] for i in args.withhold],
            "result": res.to_json()["metrics"],
            "wall_s": time.time() - t0,
        },
    )


def cost(args):
    """Wall time of T permutations over all of QUICK's (parent, child) pairs: WEIGHT_CORR at each ``--ts``,
    MATCHED at the largest (its cost is the Hungarian matchings, nearly flat in T). One untimed pair first
    (compilation), then the median of ``--repeats`` full passes."""
    z = _open(args.quick)
    pairs = [(r.parent_id, r.id) for r in z.group("child")]
    params = {i: z.load(i) for p in pairs for i in p}
    spec = pv.spec_for("mlp", params[pairs[0][0]])
    runs = [(pv.Statistic.WEIGHT_CORR, t) for t in args.ts] + [(pv.Statistic.MATCHED, max(args.ts))]
    for st, t in runs:

        def run(t=t, st=st, pairs=pairs):
            return [
                pv.permutation_test(
                    params[a], params[b], spec, key=jax.random.key(n), num_permutations=t, statistic=st
                ).pvalue
                for n, (a, b) in enumerate(pairs)
            ]

        run(pairs=pairs[:1])  # compile for this T
        tm = timeit(run, repeats=args.repeats, warmup=0)
        write(
            args.out,
            {
                "experiment": "cost",
                "zoo": "quick",
                "statistic": st.value,
                "T": t,
                "pairs": len(pairs),
                "arch": "mlp(1024, 256, 128)",
                **tm,
                "per_pair_ms": 1e3 * tm["median_s"] / len(pairs),
            },
        )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("calibration", "power", "power-calibrated", "openset", "openset-detector", "cost"))
    ap.add_argument("--workdir", default="/tmp/jl_pvalues", help="the zoos' folder: quick/, provenance_quick/, null/")
    ap.add_argument("--qq", default="benchmarks/results/pvalues_qq.png")
    ap.add_argument("--permutations", type=int, default=999)
    ap.add_argument("--zoos", nargs="+", default=["provenance_quick", "quick"])
    ap.add_argument("--null-pairs", type=int, default=400)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument(
        "--withhold",
        type=int,
        nargs="+",
        default=[0, 1, 6],
        help="indices of QUICK's parents to withhold (0, 1: a whole init pair; 6: one of a pair)",
    )
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--detector", action="store_true", help="also the Lineage Detector's no-parent logit")
    ap.add_argument("--ts", type=int, nargs="+", default=[99, 299, 999])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/pvalues.jsonl")
    args = ap.parse_args(argv)
    root = pathlib.Path(args.workdir)
    args.quick, args.prov, args.null_zoo = (str(root / d) for d in ("quick", "provenance_quick", "null"))
    setup_logging()
    run = {
        "calibration": calibration,
        "power": power,
        "power-calibrated": power_calibrated,
        "openset": openset,
        "openset-detector": openset_detector,
        "cost": cost,
    }
    run[args.what](args)


if __name__ == "__main__":
    main()
