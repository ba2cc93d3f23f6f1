"""Power of `jaxlineage.verify` on every attack of the provenance benchmark, and `identify` on `quick`.

``power``: the ``PROVENANCE_QUICK`` zoo (sources on the defender's half, every SAC / ModelGiF attack on
the attacker's half, negatives made by the same recipes from independent models). Each suspect's
references are trained by :func:`jaxlineage.references.train` with the sources' recipe on the
suspect's task and architecture (never an evaluated model). Per attack column: the verdict's
rejection rate at alpha = 0.05 on the derived pairs and on the column's negative pairs, its AUC
(score ``-log p``), and each single test's AUC next to the fixed rows of the provenance table.

``identify``: the ``quick`` zoo with parents withheld (open set): the children of withheld parents
and the independents must get "no parent", the other children their parent.

    python benchmarks/verify_power.py power --workdir /tmp/verify_power --out benchmarks/results
    python benchmarks/verify_power.py identify --workdir /tmp/verify_power --out benchmarks/results
    python benchmarks/verify_power.py check --out benchmarks/results   # the issue's criteria, per column

``check`` reads the newest ``power`` record under ``--out`` and applies the criteria fixed before the runs
(BUILD_NOTES, issue 24): in every column where some single row reaches AUC >= 0.95, the verdict rejects at
least 90 % of the derived pairs and its AUC is at least that row's minus 0.02; in every column, the negatives
it rejects are within alpha + the binomial 95 % margin.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import json
import logging
import pathlib
import time

import _common
import jax
import numpy as np

from jaxlineage import references, zoo
from jaxlineage import verify as verify_lib
from jaxlineage.eval import metrics, provenance, pvalues, scenarios, scorers
from jaxlineage.models import ModelSet

log = logging.getLogger("verify_power")

#: The sources' recipe in PROVENANCE_QUICK (zoo/specs.py): Adam 1e-3, batch 64, 5 (MLP) / 3 (ConvNet) epochs.
SOURCE_RECIPE = {
    "mlp": {"lr": 1e-3, "batch_size": 64, "epochs": 5},
    "convnet": {"lr": 1e-3, "batch_size": 64, "epochs": 3},
}


def _neg_log(p: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(p, 1e-300, 1.0))


def _bonferroni(stack: np.ndarray) -> np.ndarray:
    """Bonferroni over the tests that apply to each pair (axis 0); NaN where none does."""
    m = np.isfinite(stack).sum(0)
    smallest = np.nanmin(np.where(np.isfinite(stack), stack, np.inf), axis=0)
    return np.where(m > 0, np.minimum(1.0, m * smallest), np.nan)


def _cauchy(stack: np.ndarray) -> np.ndarray:
    """Cauchy's combination over the tests that apply to each pair (axis 0); NaN where none does."""
    out = np.full(stack.shape[1:], np.nan)
    for idx in zip(*np.nonzero(np.isfinite(stack).any(0))):
        col = stack[(slice(None), *idx)]
        out[idx] = verify_lib.cauchy_combination(col[np.isfinite(col)])
    return out


def _strata(trained, other: list, x, y, arch: str, task: str, init_fn, args, elsewhere=None) -> dict:
    """The trained references and two attacked strata made from the first ``args.strata`` of them
    (:func:`jaxlineage.references.derive` with the provenance zoo's recipes): pruned to 60 % with one
    epoch of repair, and students distilled from them at T = 20 (the extract-P recipe). With ``other``
    (``--cross-distill``: the other architecture's references on the task), a third stratum: students of
    this architecture distilled from those teachers (the extract-P-other-architecture recipe). With
    ``elsewhere`` (``--transfer-stratum``: this architecture's references on a task of the other class set),
    a fourth: those models moved to this task with a fresh head (the zoo's transfer recipe: SGD at 1e-2,
    the sources' epochs), for unrelated suspects that were pre-trained on another task."""
    first = trained.take(list(range(min(args.strata, len(trained)))))
    work = pathlib.Path(args.workdir) / "references"
    t0 = time.time()
    pruned = references.derive(first, "prune", x, y, workdir=work, id_prefix=f"pruned-{arch}-{task}-")
    distilled = references.derive(
        first,
        "distill",
        x,
        epochs=SOURCE_RECIPE[arch]["epochs"],
        init_fn=init_fn,
        workdir=work,
        id_prefix=f"distilled-{arch}-{task}-",
    )
    log.info(
        "strata for %s on %s: %d pruned, %d distilled (%.0fs)", arch, task, len(first), len(first), time.time() - t0
    )
    out = {"trained": trained, "pruned": pruned, "distilled": distilled}
    if elsewhere is not None:
        src_task, refs_there = elsewhere
        out[f"transferred from {src_task}"] = references.derive(
            refs_there.take(list(range(min(args.strata, len(refs_there))))),
            "transfer",
            x,
            y,
            lr=1e-2,
            epochs=SOURCE_RECIPE[arch]["epochs"],
            init_fn=init_fn,
            workdir=work,
            id_prefix=f"transferred-{arch}-{src_task}-to-{task}-",
        )
    for teachers in other:
        out[f"distilled from {teachers.arch}"] = references.derive(
            teachers.take(list(range(min(args.strata, len(teachers))))),
            "distill",
            x,
            epochs=SOURCE_RECIPE[arch]["epochs"],
            student=trained,
            init_fn=init_fn,
            workdir=work,
            id_prefix=f"distilled-{arch}-from-{teachers.arch}-{task}-",
        )
    return out


def _zoo(args):
    """The provenance zoo named by ``--spec`` (built or reused under the workdir)."""
    if args.spec not in zoo.SPECS:
        raise SystemExit(f"--spec: unknown zoo {args.spec!r}; known: {sorted(zoo.SPECS)}")
    spec = _common.fresh_draw(zoo.SPECS[args.spec], args.zoo_seed)
    z = zoo.build(spec, pathlib.Path(args.workdir) / ("provenance" if spec is zoo.PROVENANCE_QUICK else spec.name))
    return spec, z


def _group(z, populations) -> dict[tuple, list]:
    """``(architecture, task) -> [(population, id), ...]`` of the models."""
    groups: dict[tuple, list] = {}
    for pop in populations:
        for i in pop.ids:
            groups.setdefault((pop.arch, z.get(i).task), []).append((pop, i))
    return groups


def _trained(z, groups: dict, args) -> dict:
    """``(architecture, task) -> references``: ``args.references`` independent models per group, trained like
    the sources on that task (cached under the workdir, keyed by the settings and the data)."""
    out = {}
    t1 = time.time()
    for (arch, task), members in groups.items():
        pop = members[0][0]
        x, y = z.task_data(task, "train")
        # The zoo's own view of the network (its taps, default tap and permutation spec), so that the
        # references offer every tap the scorers read.
        like = scenarios.model_set(z, [pop.ids[0]]).populations[0]
        out[(arch, task)] = references.train(
            like,
            x,
            y,
            init_fn=z.network_for(pop.ids[0]).init,
            n=args.references,
            seed=args.seed,
            workdir=pathlib.Path(args.workdir) / "references",
            id_prefix=f"ref-{arch}-{task}-",
            **SOURCE_RECIPE[arch],
        )
        log.info("references for %s on %s: %d (%.0fs)", arch, task, args.references, time.time() - t1)
    return out


def _references(z, scen, args) -> tuple[dict, dict]:
    """The suspects grouped by (architecture, task), and each group's references (or strata of them).

    With ``--references-like source`` every group gets the same references: independent models of each
    source's architecture trained on the sources' task with their recipe (they stand in for the source)."""
    groups = _group(z, scen.queries.populations)
    if args.references_like == "source":
        if args.strata:
            raise SystemExit("--strata: strata stand in for the suspect; with --references-like source there are none")
        like_sources = _trained(z, _group(z, scen.candidates.populations), args)
        pool = ModelSet(tuple(like_sources.values()))
        return groups, {g: pool for g in groups}
    # References per (architecture, task) of the suspects, trained like the sources on that task.
    refs_by_group = _trained(z, groups, args)
    if args.strata:
        trained = dict(refs_by_group)
        for (arch, task), members in groups.items():
            other = [r for (a, t), r in trained.items() if t == task and a != arch] if args.cross_distill else []
            x, y = z.task_data(task, "train")
            init_fn = z.network_for(members[0][1]).init
            elsewhere = None
            if args.transfer_stratum:
                # This architecture's references on the first task of another class set (the transfer
                # column moves models between the zoo's two class sets).
                classes = z.spec.task(task).classes
                elsewhere = next(
                    ((t, r) for (a, t), r in trained.items() if a == arch and z.spec.task(t).classes != classes), None
                )
                if elsewhere is None:
                    raise SystemExit(f"--transfer-stratum: no references of {arch} on another class set than {task}")
            refs_by_group[(arch, task)] = _strata(
                trained[(arch, task)], other, x, y, arch, task, init_fn, args, elsewhere
            )
    return groups, refs_by_group


def _with_probe(scen, z, args):
    """The scenario with ``--probe`` inputs of the sources' task from ``--probe-split``: ``train`` keeps the
    scenario's probe (the first training inputs of the defender's half, which the sources were trained on),
    ``test`` takes held-out inputs of the same classes. Every row and ``verify`` read this one probe."""
    if args.probe_split == "train":
        return scen
    task = next(r.task for r in z.records if r.id == scen.candidates.ids[0])
    return dataclasses.replace(scen, probe=np.asarray(z.probe(args.probe, task=task, split=args.probe_split)))


def power(args) -> None:
    t0 = time.time()
    spec, z = _zoo(args)
    scen = _with_probe(scenarios.provenance(z, probe_size=args.probe), z, args)
    masks = provenance.attack_masks(scen)
    build_s = time.time() - t0
    t1 = time.time()
    groups, refs_by_group = _references(z, scen, args)
    refs_s = time.time() - t1
    # One verify per group of suspects, with that group's references.
    p = np.full(scen.related.shape, np.nan)
    test_p: dict[str, np.ndarray] = {}
    col = {q: m for m, q in enumerate(scen.queries.ids)}
    t2 = time.time()
    seconds: dict[str, float] = {}
    # The chunks' folder is keyed by the settings that change a verdict: --rule (read by `check` only) never
    # enters the key, and --probe-split only off its default, so the folders of runs made before these options
    # existed are still found.
    skip = {"out", "workdir", "rule"} | ({"probe_split"} if args.probe_split == "train" else set())
    keyed = {k: v for k, v in vars(args).items() if k not in skip}
    tag = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:12]
    chunks = pathlib.Path(args.workdir) / "power_chunks" / tag
    chunks.mkdir(parents=True, exist_ok=True)
    for (arch, task), members in groups.items():
        ids = [i for _, i in members]
        sus = scenarios.model_set(z, ids)
        # The sources in chunks of at most --source-chunk per architecture: every test's statistics
        # are per (source, model), so a chunk changes nothing but the memory held (the 16 sources of
        # PROVENANCE at once took more than 20 GB) and the weight test's random permutations.
        n_all = len(scen.candidates)
        for start in range(0, n_all, args.source_chunk):
            src = scen.candidates.take(list(range(start, min(start + args.source_chunk, n_all))))
            # Each chunk's answers are kept on disk, so an interrupted run (the sixth session's was
            # killed for memory after 3 of 6 groups) resumes without redoing finished chunks.
            saved = chunks / f"{arch}-{task}-{start}.json"
            fresh = not saved.exists()
            if not fresh:
                done = json.loads(saved.read_text())
            else:
                v = verify_lib.verify(
                    src,
                    sus,
                    data=scen.probe,
                    references=refs_by_group[(arch, task)],
                    alpha=args.alpha,
                    key=jax.random.fold_in(jax.random.key(args.seed), start),
                    num_permutations=args.permutations,
                    combine=args.combine,
                    references_like=args.references_like,
                )
                done = {
                    "timings": dict(v.timings),
                    "pairs": [
                        [pv.source, pv.suspect, pv.pvalue, {e.test: e.pvalue for e in pv.evidence}] for pv in v.pairs
                    ],
                }
                tmp = saved.with_suffix(".tmp")
                tmp.write_text(json.dumps(done))
                tmp.replace(saved)
                del v
                jax.clear_caches()
                gc.collect()
            for name, sec in done["timings"].items():
                seconds[name] = seconds.get(name, 0.0) + sec
            for source, suspect, pvalue, evidence in done["pairs"]:
                k, m = scen.candidates.ids.index(source), col[suspect]
                p[k, m] = np.nan if pvalue is None else pvalue
                for test, tp in evidence.items():
                    test_p.setdefault(test, np.full(scen.related.shape, np.nan))[k, m] = np.nan if tp is None else tp
            log.info(
                "verify: %s on %s, sources %d-%d of %d (%.0fs)%s",
                arch,
                task,
                start + 1,
                start + len(src),
                n_all,
                time.time() - t2,
                "" if fresh else " (saved earlier)",
            )
    verify_s = time.time() - t2
    # The combined p-value as verify computed it (its ``combine`` rule: weight-perm with the pooled
    # reference test), Bonferroni and Cauchy over the same two, and the earlier rule (before the pooled
    # test): the Cauchy combination of weight-perm and every reference test's own conformal p-value.
    primary = np.stack([test_p[t] for t in (verify_lib.WEIGHT_PERM, verify_lib.REFERENCES) if t in test_p])
    bonf = _bonferroni(primary)
    cauchy2 = _cauchy(primary)
    per_test = np.stack([tp for t, tp in test_p.items() if t != verify_lib.REFERENCES])
    cauchy_per_test = _cauchy(per_test)
    rows = {
        f"verify ({args.combine})": _neg_log(p),
        "verify (bonferroni of weight-perm, references)": _neg_log(bonf),
        "verify (cauchy of weight-perm, references)": _neg_log(cauchy2),
        "earlier rule: cauchy over every test's own p": _neg_log(cauchy_per_test),
    }
    rows.update({f"verify test: {t}": _neg_log(tp) for t, tp in test_p.items()})
    # The fixed rows of the provenance table, for comparison.
    for s in scorers.baselines() + [scorers.LearningFree("l2", "first_order", alphas=(0.01,))]:
        rows[s.name] = provenance.score_matrix(scen, s)
    table = {}
    for name, s in rows.items():
        table[name] = {}
        for a, (pos, neg) in masks.items():
            ok = np.isfinite(s)
            ps, ns = s[pos & ok], s[neg & ok]
            table[name][a] = None if ps.size == 0 or ns.size == 0 else metrics.roc_auc(ps, ns)
    reject = {}
    for a, (pos, neg) in masks.items():
        pp, pn = p[pos], p[neg]
        bp, bn = bonf[pos], bonf[neg]
        reject[a] = {
            "derived_rejected": int(np.sum(pp <= args.alpha)),
            "derived": int(np.isfinite(pp).sum()),
            "cannot_tell": int(np.sum(~np.isfinite(pp))),
            "negatives_rejected": int(np.sum(pn <= args.alpha)),
            "negatives": int(np.isfinite(pn).sum()),
            "bonferroni_derived_rejected": int(np.sum(bp <= args.alpha)),
            "bonferroni_negatives_rejected": int(np.sum(bn <= args.alpha)),
            "cauchy_derived_rejected": int(np.sum(cauchy2[pos] <= args.alpha)),
            "cauchy_negatives_rejected": int(np.sum(cauchy2[neg] <= args.alpha)),
            "earlier_rule_derived_rejected": int(np.sum(cauchy_per_test[pos] <= args.alpha)),
            "earlier_rule_negatives_rejected": int(np.sum(cauchy_per_test[neg] <= args.alpha)),
        }
    record = {
        "benchmark": "verify_power",
        "settings": vars(args),
        "zoo": spec.name,
        "build_s": build_s,
        "references_s": refs_s,
        "verify_s": verify_s,
        "pairs": int(np.isfinite(p).sum()),
        "seconds_per_pair": {name: sec / max(int(np.isfinite(p).sum()), 1) for name, sec in seconds.items()},
        "auc": table,
        "rejections@alpha": reject,
    }
    _common.write(pathlib.Path(args.out) / "verify_power.jsonl", record)
    # Every pair's p-values (combined and per test) and the attack masks, for a look at single pairs.
    np.savez_compressed(
        pathlib.Path(args.out) / "verify_power_pairs.npz",
        candidates=np.array(scen.candidates.ids),
        queries=np.array(scen.queries.ids),
        combined=p,
        **{f"test:{t}": tp for t, tp in test_p.items()},
        **{f"pos:{a}": pos for a, (pos, _) in masks.items()},
        **{f"neg:{a}": neg for a, (_, neg) in masks.items()},
    )
    attacks = list(masks)
    print("| row | " + " | ".join(attacks) + " |")
    print("|---|" + "---:|" * len(attacks))
    for name, cells in table.items():
        print(f"| {name} | " + " | ".join("n/a" if cells[a] is None else f"{cells[a]:.2f}" for a in attacks) + " |")
    cells = [
        f"{r['derived_rejected']}/{r['derived']} ; {r['negatives_rejected']}/{r['negatives']}"
        for r in (reject[a] for a in attacks)
    ]
    print("| verify rejects at alpha (derived ; negatives) | " + " | ".join(cells) + " |")


#: Rows of a power record that are not single tests or single methods (the combinations).
_COMBINED = ("verify (", "earlier rule")


def criteria(record: dict) -> dict:
    """Per attack column: the issue's three criteria applied to a ``power`` record (see the module doc)."""
    alpha = record["settings"]["alpha"]
    verdict = f"verify ({record['settings']['combine']})"
    out = {}
    for a, rej in record["rejections@alpha"].items():
        singles = {
            n: cells[a] for n, cells in record["auc"].items() if not n.startswith(_COMBINED) and cells[a] is not None
        }
        best = max(singles, key=singles.get) if singles else None
        best_auc = singles.get(best, float("nan"))
        auc = record["auc"][verdict][a]
        n_neg = rej["negatives"]
        limit = alpha + 1.96 * np.sqrt(alpha * (1 - alpha) / max(n_neg, 1))
        power_ = rej["derived_rejected"] / max(rej["derived"], 1)
        fpr = rej["negatives_rejected"] / max(n_neg, 1)
        applies = best_auc >= 0.95
        out[a] = {
            "best_single_row": best,
            "best_single_auc": best_auc,
            "verdict_auc": auc,
            "power": power_,
            "negatives_rejected": fpr,
            "negatives_limit": float(limit),
            "power_met": (power_ >= 0.9) if applies else None,
            "auc_met": (auc is not None and auc >= best_auc - 0.02) if applies else None,
            "negatives_met": bool(fpr <= limit),
        }
    return out


def _with_rule(rec: dict, pairs: pathlib.Path, tests: list[str]) -> dict:
    """``rec`` with its verdict replaced by Bonferroni over ``tests``' own p-values, read from the saved pairs
    (``check --rule``): the rejections and the verdict's AUC per column are recomputed, the single rows kept."""
    d = np.load(pairs)
    missing = [t for t in tests if f"test:{t}" not in d.files]
    if missing:
        raise SystemExit(
            f"{pairs}: no saved p-values for {missing}; saved: {[k[5:] for k in d.files if k[:5] == 'test:']}"
        )
    p = _bonferroni(np.stack([d[f"test:{t}"] for t in tests]))
    alpha = rec["settings"]["alpha"]
    verdict = f"verify ({rec['settings']['combine']})"
    rec = json.loads(json.dumps(rec))
    for a in rec["rejections@alpha"]:
        pos, neg = d[f"pos:{a}"], d[f"neg:{a}"]
        pp, pn = p[pos], p[neg]
        ok_p, ok_n = np.isfinite(pp), np.isfinite(pn)
        rec["auc"][verdict][a] = metrics.roc_auc(_neg_log(pp[ok_p]), _neg_log(pn[ok_n]))
        rec["rejections@alpha"][a].update(
            derived_rejected=int(np.sum(pp <= alpha)),
            derived=int(ok_p.sum()),
            negatives_rejected=int(np.sum(pn <= alpha)),
            negatives=int(ok_n.sum()),
        )
    return rec


def check(args) -> None:
    path = pathlib.Path(args.out) / "verify_power.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    power_records = [r for r in records if r.get("benchmark") == "verify_power"]
    if not power_records:
        raise SystemExit(f"{path}: no verify_power record (run `power` first)")
    rec = power_records[-1]
    print(f"{path}: the power record of {rec.get('time', '?')} (zoo {rec['zoo']}, {rec['pairs']} pairs)")
    if args.rule:
        rec = _with_rule(rec, pathlib.Path(args.out) / "verify_power_pairs.npz", args.rule.split(","))
        print(f"the verdict read as Bonferroni over {args.rule} (each test's own p-value, from the saved pairs)")
    print("| column | best single row (AUC) | verdict AUC | power | negatives rejected (limit) | met |")
    print("|---|---|---:|---:|---:|---|")
    ok = True
    for a, c in criteria(rec).items():
        met = [c["negatives_met"]] + ([c["power_met"], c["auc_met"]] if c["power_met"] is not None else [])
        ok &= all(met)
        print(
            f"| {a} | {c['best_single_row']} ({c['best_single_auc']:.3f}) | {c['verdict_auc']:.3f} |"
            f" {c['power']:.3f} | {c['negatives_rejected']:.3f} ({c['negatives_limit']:.3f}) |"
            f" {'yes' if all(met) else 'NO'}{'' if c['power_met'] is not None else ' (no single row >= 0.95)'} |"
        )
    print("every column meets the criteria" if ok else "some column does not meet the criteria")
    pairs = pathlib.Path(args.out) / "verify_power_pairs.npz"
    if pairs.exists():
        # Each test's own power at alpha next to the verdict's: what the verdict could take from one test.
        d = np.load(pairs)
        alpha = rec["settings"]["alpha"]
        tests = ["combined"] + [k for k in d.files if k.startswith("test:")]
        print("\nderived pairs rejected at alpha, per test (the verdict first):")
        print("| column | " + " | ".join("verdict" if t == "combined" else t[5:] for t in tests) + " |")
        print("|---|" + "---:|" * len(tests))
        for a in rec["rejections@alpha"]:
            pos = d[f"pos:{a}"]
            print(f"| {a} | " + " | ".join(f"{int(np.sum(d[t][pos] <= alpha))}/{int(pos.sum())}" for t in tests) + " |")


def identify(args) -> None:
    t0 = time.time()
    z = zoo.build(zoo.QUICK, pathlib.Path(args.workdir) / "quick")
    parents = [r.id for r in z.group("parent")]
    withheld = [parents[i] for i in args.withhold]
    os_ = pvalues.open_set_scenario(z, withheld=withheld)
    s = os_.scenario
    t1 = time.time()
    ident = verify_lib.identify(
        s.queries,
        s.candidates,
        data=s.probe,
        alpha=args.alpha,
        key=jax.random.key(args.seed),
        num_permutations=args.permutations,
    )
    known = s.labels != verify_lib.NO_PARENT
    right_parent = int(np.sum(ident.index[known] == s.labels[known]))
    right_none = int(np.sum(ident.index[~known] == verify_lib.NO_PARENT))
    record = {
        "benchmark": "verify_identify",
        "settings": vars(args),
        "zoo": "quick",
        "withheld": withheld,
        "known": int(known.sum()),
        "known_right_parent": right_parent,
        "no_parent": int((~known).sum()),
        "no_parent_right": right_none,
        "related_withheld_left_out": len(os_.related_withheld),
        "identify_s": time.time() - t1,
        "wall_s": time.time() - t0,
    }
    _common.write(pathlib.Path(args.out) / "verify_power.jsonl", record)


def parser() -> argparse.ArgumentParser:
    """The command line (``benchmarks/verify_pool.py`` runs ``power`` with the same arguments)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("power", "identify", "check"))
    ap.add_argument("--workdir", default="verify_power_work")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--references", type=int, default=39, help="references per (architecture, task)")
    ap.add_argument(
        "--strata", type=int, default=0, help="also pruned and distilled strata of this many references (0: none)"
    )
    ap.add_argument(
        "--cross-distill",
        action="store_true",
        help="with --strata: also students of the other architecture's references",
    )
    ap.add_argument("--spec", default="provenance_quick", help="the provenance zoo (provenance_quick or provenance)")
    ap.add_argument(
        "--zoo-seed", type=int, default=0, help="the zoo spec's salt: 0 is the standard zoo, others fresh draws of it"
    )
    ap.add_argument(
        "--transfer-stratum",
        action="store_true",
        help="with --strata: also references of another class set moved to the suspects' task (fresh head)",
    )
    ap.add_argument(
        "--references-like",
        default="suspect",
        choices=("suspect", "source"),
        help="whom the references stand in for (verify's references_like): the suspects' (architecture, task)"
        " groups, or the sources (their architecture, task and recipe; no strata)",
    )
    ap.add_argument("--permutations", type=int, default=999)
    ap.add_argument("--probe", type=int, default=256)
    ap.add_argument(
        "--probe-split",
        default="train",
        choices=("train", "test"),
        help="where verify's inputs come from: the sources' training inputs (default) or held-out inputs of their task",
    )
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--rule",
        default="",
        help="check only: read the verdict as Bonferroni over these tests' own p-values (comma-separated names,"
        " e.g. weight-perm,output-kl,sac-m) from the saved pairs",
    )
    ap.add_argument("--combine", default="bonferroni", choices=("bonferroni", "cauchy", "pooled"))
    ap.add_argument("--source-chunk", type=int, default=4, help="sources per verify call (memory)")
    ap.add_argument("--withhold", type=int, nargs="+", default=[0, 3, 5], help="indices of withheld parents")
    return ap


def main() -> None:
    args = parser().parse_args()
    _common.setup_logging()
    {"power": power, "identify": identify, "check": check}[args.what](args)


if __name__ == "__main__":
    main()
