"""The extraction study's cells split by negative type: an exploratory follow-up (issue 25).

    python benchmarks/extraction_negatives.py [--workdir /tmp/jl_extstudy] [--out benchmarks/results]
        [--n-boot 1000] [--seed 0]

POST HOC, EXPLORATORY. Written after the pre-registered study (``benchmarks/extraction_study.py``) had
run. Two of its figures have a candidate cause in the negative set that the study did not separate:
weight L2, which must be at chance on students (they share no weights with their teachers), sits at
0.63-0.68 (0.79 on 10-class extract-P); and SAC-w / SAC-m fall BELOW chance on 10-class extract-L /
extract-Adv (0.15-0.26). ``provenance.attack_masks``' negatives of an extraction column are of two
types: students of independent teachers (same student recipe: SGD) and the independent teachers
themselves (the sources' recipe: Adam, 5 epochs). Hypothesis (fixed before this script ran): the
independents are a different kind of model from every student, so a row that reads the training
recipe rather than lineage ranks them far from (weight L2) or close to (SAC) the source whatever the
lineage.

Zoo, levels, rows and scorers: exactly the study's (its ``study_spec``, ``LEVELS``, ``base_rows``; the
zoo and fingerprints cached in ``<workdir>``). Attacks: every extraction column of each level.
Negative sets per cell: ``all`` (the study's), ``students`` (students of independents only), and
``independents`` (the independent teachers only); the positives are unchanged. Per (level, attack,
row, negative set): AUC with its bootstrap 95 % interval (``provenance.cells``).

Rule (stated before the run): the hypothesis holds for weight L2 if, on every extraction column of
the base level, its ``students`` interval contains 0.5 and its ``independents`` AUC is >= 0.9; it holds
for SAC at 10 classes if SAC-w's ``independents`` AUC is < 0.5 on 10-class extract-L. Otherwise the
split is reported as measured. Output: ``<out>/extraction_negatives.jsonl`` / ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import time

import numpy as np
from _common import environment, setup_logging
from extraction_study import LEVELS, base_rows, scenario, study_spec

from jaxlineage import zoo
from jaxlineage.eval import provenance as prov

log = logging.getLogger("benchmarks.extraction_negatives")

NEG_SETS = ("all", "students", "independents")


def split_masks(scen, masks: dict, kinds: dict) -> dict:
    """``{negative set: {attack: (pos, neg)}}``: the study's negatives cut by the query's kind."""
    is_ind = np.asarray([kinds[q] == "independent" for q in scen.queries.ids])
    out = {s: {} for s in NEG_SETS}
    for a, (pos, neg) in masks.items():
        out["all"][a] = (pos, neg)
        out["students"][a] = (pos, neg & ~is_ind[None, :])
        out["independents"][a] = (pos, neg & is_ind[None, :])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="/tmp/jl_extstudy", help="the study's zoo and fingerprint cache folder")
    ap.add_argument("--out", default="benchmarks/results", help="results folder")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    setup_logging()
    workdir, out = pathlib.Path(args.workdir), pathlib.Path(args.out)
    load = lambda: open("/proc/loadavg").read().split()[:3]  # noqa: E731, SIM115
    t0 = time.time()
    z = zoo.build(study_spec(), workdir / "zoo")
    kinds = {r.id: r.kind for r in z.records}
    res = {}
    for f, _, src, neg, ks in LEVELS:
        scen = scenario(z, src, neg, ks)
        sm = split_masks(scen, prov.attack_masks(scen), kinds)
        for row, scorer in base_rows(z, src, workdir, args.seed, False).items():
            t = time.time()
            scores = prov.score_matrix(scen, scorer)
            cells = {s: prov.cells(scores, m, n_boot=args.n_boot, seed=args.seed) for s, m in sm.items()}
            res[(f, row)] = cells
            with (out / "extraction_negatives.jsonl").open("a") as fh:
                rec = {"kind": "row", "level": f, "row": row, "cells": cells, "wall_s": time.time() - t}
                fh.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **rec, "loadavg": load()}) + "\n")
            log.info("%s / %s in %.0fs (load %s)", f, row, time.time() - t, " ".join(load()))
    base_cols = [a for a in res[("base", "weight L2")]["all"]]
    wl2 = res[("base", "weight L2")]
    holds_l2 = all(
        wl2["students"][a]["auc_ci"][0] <= 0.5 <= wl2["students"][a]["auc_ci"][1]
        and wl2["independents"][a]["auc"] >= 0.9
        for a in base_cols
    )
    sac = res[("a", "SAC-w")]["independents"]["extract_l"]["auc"]
    ver = {"weight_l2_hypothesis_holds": holds_l2, "sac_10class_hypothesis_holds": sac < 0.5, "sac_w_10_ind_auc": sac}
    with (out / "extraction_negatives.jsonl").open("a") as fh:
        rec = {"kind": "verdict", **ver, "wall_s": time.time() - t0, "env": environment(), "loadavg": load()}
        fh.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **rec}) + "\n")
    lines = ["AUC [95 % interval] per negative set: all (the study's) / students of independents / independents.", ""]
    lines += ["| level | attack | row | all | students | independents |", "|---|---|---|---:|---:|---:|"]
    for (f, row), cells in res.items():
        for a in cells["all"]:
            fmt = [
                "n/a"
                if not cells[s][a]
                else f"{cells[s][a]['auc']:.2f} [{cells[s][a]['auc_ci'][0]:.2f}, {cells[s][a]['auc_ci'][1]:.2f}]"
                for s in NEG_SETS
            ]
            lines.append(f"| {f} | {a} | {row} | " + " | ".join(fmt) + " |")
    lines += ["", f"Verdict (the docstring's rule): {ver}"]
    (out / "extraction_negatives.md").write_text("\n".join(lines) + "\n")
    log.info("wrote %s in %.0fs", out / "extraction_negatives.md", time.time() - t0)


if __name__ == "__main__":
    main()
