"""Every method against every attack on the standard provenance zoo, with bootstrap 95 % intervals (issue 25).

    python benchmarks/provenance.py [--workdir /tmp/jl_provenance] [--out benchmarks/results/provenance]
        [--spec provenance] [--seed 0] [--n-boot 1000] [--modelgif-refs 32] [--modelgif-steps 5] [--rows a,b]

Builds (or resumes) ``zoo.PROVENANCE`` in ``<workdir>/zoo`` (8 sources and 8
independents per architecture, every SAC attack once per model, extract-Adv
included: 16 positive pairs per attack column), asks
:func:`jaxlineage.eval.scenarios.provenance` (candidates: the 16 sources; queries:
every derived and negative model; probe: the first 512 training inputs of the
defender's task) and scores it with:

* the baselines: weight L2 / cosine, output agreement / KL;
* the older rows: learning-free L2 and CKA (plain, alpha 1e-3, default tap) and
  ModelGiF's logits field (``--modelgif-refs`` references drawn from the probe,
  ``--modelgif-steps`` Gauss-Legendre nodes);
* the extraction-aware fingerprints (:mod:`jaxlineage.eval.fingerprint_scorers`):
  SAC-w and SAC-m on the defender's test split (SAC: the CIFAR-10 test set),
  IPGuard and conferrable adversarial examples from the defender's training split
  (surrogates and references trained by the library on it; fingerprints cached in
  ``<workdir>/fingerprints``).

Per (row, attack): ROC AUC and TPR at 1 % FPR against the fair negatives
(:func:`jaxlineage.eval.provenance.attack_masks`) with percentile bootstrap 95 %
intervals over sources and derived models (``--n-boot`` resamples,
:func:`jaxlineage.eval.metrics.bootstrap_pair_ci`). Rows run in the order
baselines, fingerprints, learning-free, ModelGiF (the slowest last). Writes to ``--out`` (a folder):
``provenance.jsonl`` (one line for the zoo build, one per row with its cells,
costs and settings), ``provenance.md`` (the AUC table with intervals) and
``provenance_heatmap.png`` (both rewritten after every row). Cost per (source, suspect) pair of every row = its
scoring wall time over its readable pairs; the fingerprint scorers' generation
cost per source is the median over sources after the first (which compiles).
Model DNA (a learned row, fitted per attack fold) is not run here: see
BUILD_NOTES.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import statistics
import time

import jax
import numpy as np
from _common import environment, setup_logging

from jaxlineage import zoo
from jaxlineage.eval import fingerprint_scorers as fs
from jaxlineage.eval import provenance as prov
from jaxlineage.eval import scenarios, scorers

log = logging.getLogger("benchmarks.provenance")

SEQUENTIAL = ("convnet",)  # conv nets run one model after another on CPU (zoo.GraphSpec.sequential_archs)


def fingerprint_rows(z, workdir: pathlib.Path, seed: int) -> dict:
    """The extraction-aware scorers with their settings (fixed before any of them was measured on PROVENANCE;
    sized for the shared 2-core CPU: conferrable 50 fingerprints from 100 seeds, 20 PGD steps, 150 training
    steps per surrogate / reference; IPGuard 100 Adam steps). ``conferrable (paper size)``: the scorer's defaults
    (100 fingerprints from 400 seeds, 50 PGD steps, 400 training steps; the paper's fingerprint count), run only
    when asked by ``--rows`` (it costs several times the CPU-sized row)."""
    task = z.graph_spec.tasks[0].name  # the defender's task (A-def)
    train, test = z.task_data(task, "train"), z.task_data(task, "test")
    cache = str(workdir / "fingerprints")
    return {
        "conferrable (paper size)": fs.ConferrableScorer(data=train, seed=seed, cache_dir=cache, sequential=SEQUENTIAL),
        "SAC-w": fs.SACScorer(mode="w", data=test, n_samples=100, sequential=SEQUENTIAL),
        "SAC-m": fs.SACScorer(mode="m", data=test, n_samples=100, seed=seed, sequential=SEQUENTIAL),
        "IPGuard": fs.IPGuardScorer(
            data=train, n_fingerprints=100, steps=100, seed=seed, cache_dir=cache, sequential=SEQUENTIAL
        ),
        "conferrable": fs.ConferrableScorer(
            data=train,
            n_fingerprints=50,
            n_seeds=100,
            n_surrogates=4,
            n_references=4,
            train_steps=150,
            steps=20,
            seed=seed,
            cache_dir=cache,
            sequential=SEQUENTIAL,
        ),
    }


def _generate(scorer, scen) -> list[float]:
    """Generates every source's fingerprints (timed per source); returns the seconds per source."""
    secs = []
    for pop in scen.candidates.populations:
        for k in range(len(pop)):
            t = time.perf_counter()
            if isinstance(scorer, fs.IPGuardScorer):
                scorer.fingerprints(pop, k, scen.probe)
            else:
                scorer.fingerprints(pop, k)
            secs.append(time.perf_counter() - t)
            log.info("%s: fingerprints of %s in %.1fs", scorer.name, pop.ids[k], secs[-1])
    return secs


def heatmap(rows: list[dict], attacks: list[tuple[str, str]], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["row"] for r in rows]
    auc = np.full((len(rows), len(attacks)), np.nan)
    text = [["n/a"] * len(attacks) for _ in rows]
    for i, r in enumerate(rows):
        for j, (a, _) in enumerate(attacks):
            c = r["cells"].get(a)
            if c:
                auc[i, j] = c["auc"]
                lo, hi = c["auc_ci"]
                text[i][j] = f"{c['auc']:.2f}\n[{lo:.2f},{hi:.2f}]"
    fig, ax = plt.subplots(figsize=(1.15 * len(attacks) + 3, 0.55 * len(rows) + 2))
    im = ax.imshow(auc, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(len(rows)):
        for j in range(len(attacks)):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=6, color="w" if auc[i, j] < 0.6 else "k")
    ax.set_xticks(range(len(attacks)), [label for _, label in attacks], rotation=40, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), names, fontsize=7)
    fig.colorbar(im, ax=ax, label="ROC AUC (bootstrap 95 % interval)")
    ax.set_title("PROVENANCE: method x attack, fair negatives")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def markdown(rows: list[dict], attacks: list[tuple[str, str]]) -> str:
    head = "| method | " + " | ".join(label for _, label in attacks) + " |"
    lines = [head, "|---|" + "---:|" * len(attacks)]
    for r in rows:
        cells = []
        for a, _ in attacks:
            c = r["cells"].get(a)
            cells.append("n/a" if not c else f"{c['auc']:.2f} [{c['auc_ci'][0]:.2f}, {c['auc_ci'][1]:.2f}]")
        lines.append(f"| {r['row']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="/tmp/jl_provenance", help="zoo and fingerprint cache folder")
    ap.add_argument("--out", default="benchmarks/results/provenance", help="results folder")
    ap.add_argument("--spec", default="provenance", help="zoo spec name (provenance, provenance_quick, ...)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--modelgif-refs", type=int, default=32)
    ap.add_argument("--modelgif-steps", type=int, default=5)
    ap.add_argument("--rows", default="", help="comma-separated row names to run (default: all)")
    args = ap.parse_args(argv)
    setup_logging()
    workdir, out = pathlib.Path(args.workdir), pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "provenance.jsonl"
    load = lambda: open("/proc/loadavg").read().split()[:3]  # noqa: E731, SIM115

    t0, load0 = time.time(), load()
    z = zoo.build(zoo.SPECS[args.spec], workdir / "zoo")
    build = {"kind": "zoo", "spec": args.spec, "models": len(z.records), "wall_s": time.time() - t0}
    build.update(loadavg_start=load0, loadavg_end=load())
    log.info("zoo %s: %d models in %.0fs", args.spec, build["models"], build["wall_s"])

    scen = scenarios.provenance(z, probe_size=512)
    masks = prov.attack_masks(scen)
    attacks = [a for a in prov.ATTACKS if a[0] in masks]
    env = environment()
    with jsonl.open("a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "env": env, **build}) + "\n")

    fixed = {
        "weight L2": scorers.WeightL2(),
        "weight cosine": scorers.WeightCosine(),
        "output agreement": scorers.OutputAgreement(),
        "output KL": scorers.OutputKL(),
    }
    lf = [s for s in scorers.learning_free(("l2", "cka"), alphas=(1e-3,)) if s.mode.value == "plain"]
    fps = fingerprint_rows(z, workdir, args.seed)
    names = (
        list(fixed)
        + list(fps)
        + [f"{s.metric.name} plain" for s in lf]
        + [f"ModelGiF logits ({args.modelgif_refs} refs)"]
    )
    wanted = set(args.rows.split(",")) if args.rows else set(names) - {"conferrable (paper size)"}
    rows = []

    def emit(name, method, scores, wall, extra=None):
        t = time.time()
        cells = prov.cells(scores, masks, n_boot=args.n_boot, seed=args.seed)
        readable = int(np.isfinite(scores).sum())
        rec = {
            "kind": "row",
            "row": name,
            "method": method,
            "cells": cells,
            "wall_s": wall,
            "pairs": readable,
            "cost_per_pair_s": wall / max(readable, 1),
            "bootstrap_s": time.time() - t,
            "loadavg": load(),
            "settings": {
                "spec": args.spec,
                "seed": args.seed,
                "n_boot": args.n_boot,
                "probe": list(np.shape(scen.probe)),
                "sources": len(scen.candidates),
                "queries": len(scen.queries),
            },
            **(extra or {}),
        }
        rows.append(rec)
        with jsonl.open("a") as f:
            f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **rec}, default=float) + "\n")
        (out / "provenance.md").write_text(markdown(rows, attacks) + "\n")  # rewritten after every row
        heatmap(rows, attacks, out / "provenance_heatmap.png")
        summary = {a: None if c is None else round(c["auc"], 2) for a, c in cells.items()}
        log.info("%s: %.1fs (%.2e s/pair), AUC %s", name, wall, rec["cost_per_pair_s"], summary)

    for name, s in fixed.items():
        if name in wanted:
            t = time.time()
            emit(name, "baseline", prov.score_matrix(scen, s), time.time() - t)
    for name, s in fps.items():
        if name not in wanted:
            continue
        gen = []
        if not isinstance(s, fs.SACScorer):
            t = time.time()
            gen = _generate(s, scen)
            log.info("%s: fingerprints of %d sources in %.0fs", name, len(gen), time.time() - t)
        t = time.time()
        scores = prov.score_matrix(scen, s)  # first call: compiles the scoring (fingerprints cached)
        first = time.time() - t
        t = time.time()
        again = prov.score_matrix(scen, s)
        wall = time.time() - t
        if not np.array_equal(np.isnan(scores), np.isnan(again)) or not np.allclose(scores, again, equal_nan=True):
            raise RuntimeError(f"{name}: two scorings of the same pairs differ")
        extra = {
            "scorer_settings": s.settings,
            "first_call_s": first,
            "generation_s_per_source": gen,
            "generation_s_median_after_first": statistics.median(gen[1:]) if len(gen) > 1 else None,
        }
        emit(name, "fingerprint", scores, wall, extra)

    lf = [s for s in lf if f"{s.metric.name} plain" in wanted]
    if lf:
        t = time.time()
        grids = type(lf[0]).score_grids(lf, scen.candidates, scen.queries, probe=scen.probe, unreadable="nan")
        wall = (time.time() - t) / len(lf)
        for s, g in zip(lf, grids):
            emit(
                f"{s.metric.name} plain",
                "learning_free",
                g[0],
                wall,
                {"alpha": 1e-3, "wall_note": "shared pass / rows"},
            )
    gif = f"ModelGiF logits ({args.modelgif_refs} refs)"
    if gif in wanted:
        t = time.time()
        d = prov.modelgif_sweep(
            scen, n_refs=args.modelgif_refs, steps=args.modelgif_steps, key=jax.random.key(args.seed)
        )
        emit(
            gif, "modelgif", -d.mean(-1), time.time() - t, {"n_refs": args.modelgif_refs, "steps": args.modelgif_steps}
        )
    (out / "provenance.md").write_text(markdown(rows, attacks) + "\n")
    heatmap(rows, attacks, out / "provenance_heatmap.png")
    log.info(
        "wrote %s, %s, %s in %.0fs", jsonl, out / "provenance.md", out / "provenance_heatmap.png", time.time() - t0
    )


if __name__ == "__main__":
    main()
