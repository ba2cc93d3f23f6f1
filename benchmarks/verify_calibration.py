"""Calibration of `jaxlineage.verify` on unrelated *trained* pairs: false-positive rates and a QQ plot.

Independent models are trained with the population trainer on the embedded Fashion-MNIST subset in
groups (architecture x recipe x task); every pair (source, suspect) with the suspect in group g and
the source from another group is unrelated. The suspect's references are the other models of its own
group (exchangeable with it under the null), so the reference tests' p-values are valid by
construction; the exact weight test needs no reference. Reported per test and for the combined
verdict: the false-positive rate at alpha in {0.01, 0.05, 0.1}, with the binomial 95 % margin.

    python benchmarks/verify_calibration.py --workdir /tmp/verify_cal --out benchmarks/results

Settings and every figure go to ``<out>/verify_calibration.jsonl``; the QQ plot to
``<out>/verify_calibration_qq.png``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import pathlib
import time
import zlib

import _common
import jax
import numpy as np

from jaxlineage import data, nets, references
from jaxlineage import verify as verify_lib
from jaxlineage.eval import pvalues
from jaxlineage.models import Models

log = logging.getLogger("verify_calibration")

ARCHS = {
    "mlp": lambda: nets.mlp(5, features=(64, 32)),
    "convnet": lambda: nets.convnet(5, channels=(8, 16), hidden=32),
}
RECIPES = {
    "adam1e-3x3": {"lr": 1e-3, "epochs": 3, "batch_size": 128},
    "adam3e-3x2": {"lr": 3e-3, "epochs": 2, "batch_size": 64},
}
TASKS = {"A": (0, 1, 2, 3, 4), "B": (5, 6, 7, 8, 9), "C": (0, 2, 4, 6, 8), "D": (1, 3, 5, 7, 9)}
ALPHAS = (0.01, 0.05, 0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="verify_calibration_work", help="cache of the trained models")
    ap.add_argument("--out", default="benchmarks/results", help="results folder")
    ap.add_argument("--per-group", type=int, default=24, help="independent models per group")
    ap.add_argument("--sources-per-group", type=int, default=3, help="sources drawn from each other group")
    ap.add_argument("--train-size", type=int, default=2000, help="training examples per task")
    ap.add_argument("--probe", type=int, default=256, help="inputs given to verify")
    ap.add_argument("--permutations", type=int, default=199, help="T of the exact weight test")
    ap.add_argument(
        "--references-like",
        default="suspect",
        choices=("suspect", "source"),
        help="suspect: a suspect's references are its own group; source: a source's references are its own group"
        " (verify's references_like), and each source group meets --suspects-per-group models of every other group",
    )
    ap.add_argument("--suspects-per-group", type=int, default=6, help="with --references-like source")
    ap.add_argument("--tasks", default="A,B", help=f"comma-separated tasks of {sorted(TASKS)} (the groups' third axis)")
    ap.add_argument("--tag", default=None, help="suffix of the output files (default: '' or '_source')")
    args = ap.parse_args()
    unknown = sorted(set(args.tasks.split(",")) - set(TASKS))
    if unknown:
        ap.error(f"--tasks: unknown {unknown}; known: {sorted(TASKS)}")
    tasks = {t: TASKS[t] for t in args.tasks.split(",")}
    tag = args.tag if args.tag is not None else ("" if args.references_like == "suspect" else "_source")
    _common.setup_logging()
    t0 = time.time()
    train = data.load_embedded("train")
    groups: dict[tuple, Models] = {}
    probes = {}
    for (arch, make), (recipe, r), (task, classes) in itertools.product(ARCHS.items(), RECIPES.items(), tasks.items()):
        ds = data.class_subset(train, classes)
        x, y = data.normalize(ds.images[: args.train_size]), ds.labels[: args.train_size]
        probes[task] = x[-args.probe :]
        net = make()
        like = Models.from_linen(net.module, [net.init(jax.random.key(0))], arch=arch)
        seed = zlib.crc32(f"{arch}/{recipe}/{task}".encode()) % 10_000
        name = f"{arch}/{recipe}/{task}"
        g = references.train(
            like,
            x,
            y,
            n=args.per_group,
            seed=seed,
            workdir=args.workdir,
            id_prefix=f"{name}#",
            chunk=args.per_group,
            **r,
        )
        groups[(arch, recipe, task)] = g
        log.info("group %s: %d models (%.0fs)", name, len(g), time.time() - t0)
    train_s = time.time() - t0
    per_test: dict[str, list[float]] = {}
    combined: list[float] = []
    pair_ids: list[tuple[str, str]] = []
    kinds: list[str] = []
    seconds: dict[str, float] = {}
    rng = np.random.default_rng(0)
    for key_g, g_models in groups.items():
        t1 = time.time()
        if args.references_like == "suspect":
            # the suspects are group g; their references are the group itself (each pair's null leaves out
            # the suspect), and the sources come from the other groups
            sources, sus, refs = (
                [g.take(range(args.sources_per_group)) for k, g in groups.items() if k != key_g],
                g_models,
                g_models,
            )
        else:
            # the sources are drawn from group g and their references are the group itself (each source's
            # null leaves it out); the suspects are drawn from every other group
            sources, refs = g_models.take(range(args.sources_per_group)), g_models
            sus = [
                g.take(sorted(rng.choice(len(g), args.suspects_per_group, replace=False)))
                for k, g in groups.items()
                if k != key_g
            ]
        v = verify_lib.verify(
            sources,
            sus,
            data=probes[key_g[2]],  # inputs of group g's task
            references=refs,
            key=jax.random.key(zlib.crc32("/".join(key_g).encode()) % 2**31),
            num_permutations=args.permutations,
            references_like=args.references_like,
        )
        for name, sec in v.timings.items():
            seconds[name] = seconds.get(name, 0.0) + sec
        for p in v.pairs:
            src_group = p.source.split("#")[0].split("/")
            sus_group = p.suspect.split("#")[0].split("/")
            kind = ("same-arch" if src_group[0] == sus_group[0] else "cross-arch") + (
                "/same-task" if src_group[2] == sus_group[2] else "/transfer-task"
            )
            kinds.append(kind)
            pair_ids.append((p.source, p.suspect))
            combined.append(p.pvalue)
            for e in p.evidence:
                per_test.setdefault(e.test, []).append(e.pvalue)
        log.info("verify on group %s: %d pairs in %.0fs", "/".join(key_g), len(v.pairs), time.time() - t1)
    rows = {}
    for name, ps in [*per_test.items(), ("combined", combined)]:
        ps = np.asarray(ps, np.float64)
        ok = ps[np.isfinite(ps)]
        rows[name] = {
            "n_pairs": int(ok.size),
            "fpr": {str(a): float(np.mean(ok <= a)) if ok.size else None for a in ALPHAS},
            "margin": {str(a): pvalues.binomial_margin(a, max(int(ok.size), 1)) for a in ALPHAS},
            "within": {
                str(a): bool(ok.size and np.mean(ok <= a) <= a + pvalues.binomial_margin(a, ok.size)) for a in ALPHAS
            },
        }
    by_kind = {}
    for k in sorted(set(kinds)):
        sel = np.asarray([kk == k for kk in kinds])
        c = np.asarray(combined)[sel]
        by_kind[k] = {
            "n_pairs": int(np.isfinite(c).sum()),
            **{str(a): float(np.mean(c[np.isfinite(c)] <= a)) for a in ALPHAS},
        }
    pathlib.Path(args.out).mkdir(parents=True, exist_ok=True)
    qq = pvalues.qq_plot(
        {n: np.asarray(p)[np.isfinite(p)] for n, p in [*per_test.items(), ("combined", combined)]},
        f"{args.out}/verify_calibration_qq{tag}.png",
        title="verify: p-values of unrelated trained pairs",
    )
    record = {
        "benchmark": "verify_calibration",
        "settings": {**vars(args), "archs": list(ARCHS), "recipes": RECIPES, "tasks": tasks},
        "models": sum(len(g) for g in groups.values()),
        "train_s": train_s,
        "wall_s": time.time() - t0,
        "tests": rows,
        "combined_by_pair_kind": by_kind,
        "qq_plot": qq,
        "seconds_per_pair": {name: sec / max(len(combined), 1) for name, sec in seconds.items()},
    }
    # Pairs share models (each source meets many suspects, each suspect many sources), so the pairs' rejections
    # are not independent draws: a cluster bootstrap over the side the references stand for (suspects, or
    # sources) gives the spread of the false-positive rate that the binomial margin over pairs leaves out.
    side = np.array([s if args.references_like == "source" else q for s, q in pair_ids])
    clusters = sorted(set(side))
    boot_rng = np.random.default_rng(1)
    record["cluster_bootstrap"] = {"clusters": len(clusters), "by": args.references_like}
    for name, ps in [*per_test.items(), ("combined", combined)]:
        ps = np.asarray(ps, np.float64)
        ok = np.isfinite(ps)
        rates = {a: [] for a in ALPHAS}
        for _ in range(2000):
            pick = boot_rng.choice(clusters, len(clusters))
            sel = np.concatenate([np.flatnonzero((side == c) & ok) for c in pick])
            for a in ALPHAS:
                rates[a].append(float(np.mean(ps[sel] <= a)) if sel.size else np.nan)
        record["cluster_bootstrap"][name] = {
            str(a): [float(np.nanpercentile(r, 2.5)), float(np.nanpercentile(r, 97.5))] for a, r in rates.items()
        }
    np.savez_compressed(
        f"{args.out}/verify_calibration_pairs{tag}.npz",
        pairs=np.array(pair_ids),
        kinds=np.array(kinds),
        combined=np.asarray(combined, np.float64),
        **{f"test:{n}": np.asarray(ps, np.float64) for n, ps in per_test.items()},
    )
    _common.write(f"{args.out}/verify_calibration.jsonl", record)
    for name, r in rows.items():
        print(
            f"{name:18s} n={r['n_pairs']:5d} "
            + " ".join(f"a={a}: {r['fpr'][a]:.3f} (<= {float(a) + r['margin'][a]:.3f})" for a in r["fpr"])
        )


if __name__ == "__main__":
    main()
