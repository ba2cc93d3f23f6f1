"""PROVENANCE's extraction cells split by architecture: an exploratory follow-up of the extraction study (issue 25).

    python benchmarks/extraction_strata.py [--workdir /tmp/jl_provenance] [--out benchmarks/results]
        [--n-boot 1000] [--seed 0]

POST HOC, EXPLORATORY. Written after the pre-registered study (``benchmarks/extraction_study.py``) had
given its verdict: on its MLP-only base zoo (PROVENANCE's MLP recipe, 8 + 8 teachers, 2 students each)
the difficulty was NOT reproduced (output agreement met the bar on extract-L, 0.96 [0.88, 1.00], and on
extract-Adv, 1.00 [0.99, 1.00]), while on ``zoo.PROVENANCE`` the same row has 0.78 [0.52, 0.95] and
0.88 [0.76, 0.98]. One difference between the two is by design: PROVENANCE's cells pool both
architectures (8 MLP + 8 ConvNet sources; an MLP source's negatives include ConvNet independents and
their students, and the positives of both architectures are ranked against one threshold). This script
measures whether that pooling, or the ConvNet half, is what makes PROVENANCE's extraction columns hard.
Its protocol was fixed (and committed) before it ran; nothing in it was chosen by looking at a stratum.

Zoo: ``zoo.PROVENANCE`` built or opened in ``<workdir>/zoo`` (the same zoo as ``benchmarks/provenance.py``).
Scenario: ``scenarios.provenance(z, probe_size=512)``, masks ``provenance.attack_masks`` (as there).
Rows: output agreement, output KL, and SAC-w, SAC-m, conferrable with ``benchmarks/provenance.py``'s
settings (its ``fingerprint_rows``; fingerprints cached in ``<workdir>/fingerprints``).
Attacks: extract-P (same architecture), extract-L, extract-Adv.
Strata of the (source, query) pairs of a cell:
  * ``pooled``: PROVENANCE's cell (its AUC must equal ``benchmarks/results/provenance/provenance.jsonl``'s:
    checked and reported);
  * ``same-arch``: the pooled cell's pairs where the query has the source's architecture (the union of
    the next two strata, ranked together);
  * ``mlp`` / ``cnn``: MLP (ConvNet) sources against MLP (ConvNet) queries only (the score matrix cut to
    those rows and columns, so the bootstrap resamples 8 sources).
Per (stratum, attack, row): AUC, bootstrap 95 % interval (``metrics.bootstrap_pair_ci`` via
``provenance.cells``), n_pos / n_neg, and the mean positive / negative score.

Decision rule (per attack A in {extract-L, extract-Adv}, "meets the bar" = AUC >= 0.95 and lower bound
> 0.85, as in the study):
  1. "pooling across architectures explains the gap" if some row meets the bar in ``same-arch`` while
     none does in ``pooled``;
  2. "the ConvNet half is the hard part" if some row meets the bar in ``mlp`` while none does in ``cnn``;
  3. otherwise neither is claimed, and the strata are reported as measured.
Output: ``<out>/extraction_strata.jsonl`` and ``<out>/extraction_strata.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import time

import numpy as np
from _common import environment, setup_logging
from provenance import fingerprint_rows

from jaxlineage import zoo
from jaxlineage.eval import provenance as prov
from jaxlineage.eval import scenarios, scorers

log = logging.getLogger("benchmarks.extraction_strata")

ATTACKS = ("extract_p", "extract_l", "extract_adv")
TARGETS = ("extract_l", "extract_adv")
ROWS = ("output agreement", "output KL", "SAC-w", "SAC-m", "conferrable")
STRATA = ("pooled", "same-arch", "mlp", "cnn")
BAR_AUC, BAR_LO = 0.95, 0.85


def meets(c) -> bool:
    return bool(c) and c["auc"] >= BAR_AUC and c.get("auc_ci") is not None and c["auc_ci"][0] > BAR_LO


def strata_cells(scores, masks, arch_k, arch_m, n_boot, seed) -> dict:
    """``{stratum: {attack: cell}}`` with the mean positive / negative scores added."""
    out = {}
    same = arch_k[:, None] == arch_m[None, :]
    for s in STRATA:
        if s in ("pooled", "same-arch"):
            keep = np.ones_like(same) if s == "pooled" else same
            sc, mk = scores, {a: (masks[a][0] & keep, masks[a][1] & keep) for a in ATTACKS}
        else:
            arch = "mlp" if s == "mlp" else "convnet"
            rk, rm = arch_k == arch, arch_m == arch
            sc = scores[np.ix_(rk, rm)]
            mk = {a: (masks[a][0][np.ix_(rk, rm)], masks[a][1][np.ix_(rk, rm)]) for a in ATTACKS}
        cells = prov.cells(sc, mk, n_boot=n_boot, seed=seed)
        for a, c in cells.items():
            if c:
                ok = np.isfinite(sc)
                c["mean_pos"] = float(np.mean(sc[mk[a][0] & ok]))
                c["mean_neg"] = float(np.mean(sc[mk[a][1] & ok]))
        out[s] = cells
    return out


def verdict(rows: dict) -> dict:
    out = {}
    for a in TARGETS:
        hit = {s: [r for r in ROWS if meets(rows.get(r, {}).get(s, {}).get(a))] for s in STRATA}
        out[a] = {
            "rows_meeting_bar": hit,
            "pooling_explains": bool(hit["same-arch"]) and not hit["pooled"],
            "convnet_half_is_hard": bool(hit["mlp"]) and not hit["cnn"],
        }
    return out


def markdown(rows: dict, ver: dict, published: dict) -> str:
    lines = ["AUC [bootstrap 95 % interval] (mean positive / negative score); ** = meets the bar.", ""]
    lines += ["| row | attack | " + " | ".join(STRATA) + " | PROVENANCE table |", "|---|---|" + "---:|" * 5]
    for r in ROWS:
        for a in ATTACKS:
            cells = []
            for s in STRATA:
                c = rows.get(r, {}).get(s, {}).get(a)
                cells.append(
                    "n/a"
                    if not c
                    else f"{c['auc']:.2f} [{c['auc_ci'][0]:.2f}, {c['auc_ci'][1]:.2f}]{' **' if meets(c) else ''}"
                    f" ({c['mean_pos']:.3g} / {c['mean_neg']:.3g}; {c['n_pos']}+ {c['n_neg']}-)"
                )
            pub = published.get(r, {}).get(a)
            lines.append(f"| {r} | {a} | " + " | ".join(cells) + f" | {'n/a' if pub is None else f'{pub:.2f}'} |")
    lines += ["", "## Verdict (the docstring's rule)", ""]
    for a, v in ver.items():
        lines.append(
            f"- {a}: rows meeting the bar per stratum {v['rows_meeting_bar']}; pooling explains the gap:"
            f" {v['pooling_explains']}; the ConvNet half is the hard part: {v['convnet_half_is_hard']}"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="/tmp/jl_provenance", help="PROVENANCE zoo and fingerprint cache folder")
    ap.add_argument("--out", default="benchmarks/results", help="results folder")
    ap.add_argument("--published", default="benchmarks/results/provenance/provenance.jsonl")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    setup_logging()
    workdir, out = pathlib.Path(args.workdir), pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load = lambda: open("/proc/loadavg").read().split()[:3]  # noqa: E731, SIM115
    t0 = time.time()
    z = zoo.build(zoo.PROVENANCE, workdir / "zoo")
    scen = scenarios.provenance(z, probe_size=512)
    masks = prov.attack_masks(scen)
    arch = {r.id: r.arch for r in z.records}
    arch_k = np.asarray([arch[i] for i in scen.candidates.ids])
    arch_m = np.asarray([arch[i] for i in scen.queries.ids])
    fps = fingerprint_rows(z, workdir, args.seed)
    row_scorers = {"output agreement": scorers.OutputAgreement(), "output KL": scorers.OutputKL(), **fps}
    published = {}
    pub_path = pathlib.Path(args.published)
    if pub_path.exists():
        for line in pub_path.read_text().splitlines():
            r = json.loads(line)
            if r.get("kind") == "row" and r["row"] in ROWS:
                published[r["row"]] = {a: (r["cells"].get(a) or {}).get("auc") for a in ATTACKS}
    rows = {}
    for i, name in enumerate(ROWS):
        if name not in row_scorers:
            continue
        t = time.time()
        scores = prov.score_matrix(scen, row_scorers[name])
        rows[name] = strata_cells(scores, masks, arch_k, arch_m, args.n_boot, args.seed)
        pooled = {a: round(rows[name]["pooled"][a]["auc"], 4) for a in ATTACKS}
        check = {a: published.get(name, {}).get(a) for a in ATTACKS}
        rec = {"kind": "row", "row": name, "strata": rows[name], "wall_s": time.time() - t, "loadavg": load()}
        rec["published_auc"] = check
        with (out / "extraction_strata.jsonl").open("a") as f:
            f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **rec}, default=float) + "\n")
        log.info("[%d/%d] %s in %.0fs (load %s); pooled %s, published %s", i + 1, len(ROWS), name,
                 time.time() - t, " ".join(load()), pooled, check)  # fmt: skip
    ver = verdict(rows)
    with (out / "extraction_strata.jsonl").open("a") as f:
        rec = {"kind": "verdict", **ver, "wall_s": time.time() - t0, "env": environment(), "loadavg": load()}
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **rec}, default=float) + "\n")
    (out / "extraction_strata.md").write_text(markdown(rows, ver, published))
    log.info("wrote %s in %.0fs", out / "extraction_strata.md", time.time() - t0)


if __name__ == "__main__":
    main()
