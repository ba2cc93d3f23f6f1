"""What makes model extraction detectable: a one-factor-at-a-time study on the provenance recipe (issue 25).

    python benchmarks/extraction_study.py [--workdir /tmp/jl_extstudy] [--out benchmarks/results]
        [--n-boot 1000] [--seed 0] [--tiny]

PROTOCOL (fixed and committed before the first evaluation run; the verdict is computed by the code below
from it, nothing is decided after looking at a figure).

Question. On ``zoo.PROVENANCE`` no method meets the issue's bar on extract-L (label-only students; best
0.87 [0.73, 0.97]) nor extract-Adv (0.91 [0.79, 0.98]): AUC >= 0.95 with the lower bound of the bootstrap
95 % interval > 0.85, against fair negatives (students of independent teachers made by the same recipe,
plus the independent teachers; :func:`jaxlineage.eval.provenance.attack_masks`). Which factor of the
recipe makes extraction hard to detect?

Base recipe = PROVENANCE's MLP groups, copied from the public spec ``zoo.PROVENANCE`` (never retyped):
teachers ``src_mlp`` (sources: Adam 1e-3, batch 64, 5 epochs on the defender's half ``A-def`` of the
embedded Fashion-MNIST classes 0-4) and ``ind_mlp`` (independent teachers: the same recipe on the
attacker's half ``A-att``, i.e. sources and independents are trained on DISJOINT halves); students on
``A-att`` made with PROVENANCE's ``mlp.extract_p`` (soft, T = 20, alpha 0.9, SGD 1e-2 momentum 0.9,
5 epochs), ``mlp.extract_l`` (label-only, same optimiser) and ``mlp.extract_adv`` (extract-L + 2 epochs of
PGD adversarial training, 5 PGD steps). MLP (256, 128) only (CPU budget).

Sizes and seeds. 8 sources (seeds 0-7) and 8 independent teachers (seeds 10-17) per teacher family (as
PROVENANCE; a first pipeline check with ``--tiny`` showed the CPU budget allows 8 rather than 6); every
teacher gets 2 students per student recipe (student seeds 0, 1): 16 positive pairs per cell; negatives
8 x (16 students of independents + 8 independents) = 192 pairs. One zoo (``zoo.GraphSpec``, built and
resumed in ``<workdir>/zoo``) holds every level; a level equal to the base reuses the base's models.
Bootstrap: ``metrics.bootstrap_pair_ci`` via ``provenance.cells``, 1000 resamples, seed 0. Probe (output
rows): the first 512 training inputs of the sources' task.

Factors (one at a time; everything else is the base):
  (a) classes: 5 (base: Fashion-MNIST 0-4) vs 10 (all ten classes, the same per-class data: tasks
      ``C10-def`` / ``C10-att`` = halves 0 / 1 of the whole training split; teachers ``src10`` /
      ``ind10``; the three base student recipes). Attacks extract-P, extract-L, extract-Adv.
  (b) teacher diversity: independents on the attacker's half (base: disjoint from the sources' data) vs
      independents on the sources' own half ``A-def`` (shared data; group ``ind_shared``, seeds 30-37);
      students still extracted on ``A-att``. Attacks extract-P, extract-L, extract-Adv.
  (c) distillation temperature and fidelity, as student recipes on the base teachers (each a column with
      its own fair negatives), against the base column label-only 5 epochs (= extract-L):
      (c1) temperature: soft T = 20 (= extract-P), soft T = 1 (``extract_p_t1``);
      (c2) fidelity: label-only 1 epoch (``extract_l_ep1``, lower fidelity), label-only 20 epochs
      (``extract_l_ep20``, higher fidelity).
      Students' fidelity to their teachers (test split) and accuracy are reported per column, and, per
      informative row, the Spearman correlation between a positive label-only student's fidelity and its
      pair's AUC against the column's negatives (pooled over the three label-only columns; reported, not
      a verdict).
  (d) references / fingerprint samples, on the base zoo: SAC-w 25 vs 100 (base) samples; SAC-m 25 vs
      100 (base) vs 400; conferrable 50 fingerprints from 100 seeds with 4 surrogates + 4 references
      (base) vs 100 from 200 with 8 + 8; ModelGiF logits field at 16 (its comparison level) vs 64
      references (5 Gauss-Legendre nodes; prefixes of one draw, the references drawn from the probe),
      run last and dropped (reported as not run) if the run is past 50 minutes when it is reached.

Rows (every level): weight L2 (the uninformative control: students share no weights with their
teachers), output agreement, output KL (baselines), SAC-w (100), SAC-m (100), conferrable (50 fp, 4 + 4;
the settings of ``benchmarks/provenance.py``). Informative rows = all but weight L2.

Per (factor, level, attack, row): AUC, its bootstrap 95 % interval, n_pos / n_neg; per (level, attack):
the positive and negative students' fidelity to their teachers and test accuracy (mean, min, max).

Decision rule (per attack A in {extract-L, extract-Adv}; "meets the bar" = AUC >= 0.95 and lower bound
> 0.85):
  1. Reproduction: if some informative row meets the bar on A at the base level, the difficulty of A is
     NOT reproduced at this study's size; the factors are then only described by their effects (rule 3).
  2. A factor EXPLAINS the difficulty of A if the difficulty is reproduced (rule 1) and at one of the
     factor's non-base levels some informative row meets the bar on A (for (c1) / (c2), whose levels are
     student recipes, on the level's own column, for A = extract-L only; for (d), on the base zoo with
     another sample / reference count, where the row at its comparison count does not meet the bar).
     A factor level that meets the bar only with weight L2 explains nothing: it flags a leak.
  3. Effect of a level on a row (reported, not a verdict): "up" / "down" when the level's and the base's
     95 % intervals are disjoint, else "no measured effect" (this size can only see large effects).
  4. Control: weight L2 with a lower bound > 0.5 on any extraction column is reported as a protocol
     problem (students share no weights with their teachers, so it must be at chance).
  If no factor explains the difficulty, the study says so, and the measured reason is reported as the
  effects (rule 3) and fidelities found, nothing more.

Output: JSON lines ``<out>/extraction_study.jsonl`` (one per (factor, level, attack, row), plus the
zoo line and the verdict), ``<out>/extraction_study.md`` (tables + verdict) and
``<out>/extraction_study.png`` (AUC with intervals per factor). Resumable: rows already in the JSON lines
file with the same protocol id are not rescored. ``--tiny`` (2 + 2 teachers, 1 epoch, 600 training
inputs per task, 100 resamples) only checks the pipeline; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import pathlib
import time

import jax
import numpy as np
from _common import environment, setup_logging

from jaxlineage import zoo
from jaxlineage.eval import fingerprint_scorers as fs
from jaxlineage.eval import provenance as prov
from jaxlineage.eval import scenarios, scorers

log = logging.getLogger("benchmarks.extraction_study")

PROTOCOL = "extstudy-v1"
N_TEACHERS, N_STUDENTS = 8, 2
SRC_SEEDS, IND_SEEDS, SHARED_SEEDS = 0, 10, 30  # first seed of each teacher family
BASE_KINDS = ("extract_p", "extract_l", "extract_adv")
# Factor (c): student recipes on the base teachers: kind -> (PROVENANCE group it copies, grid overrides).
C_KINDS = {
    "extract_p_t1": ("mlp.extract_p", {"temperature": 1.0}),
    "extract_l_ep1": ("mlp.extract_l", {"epochs": 1}),
    "extract_l_ep20": ("mlp.extract_l", {"epochs": 20}),
}
TARGETS = ("extract_l", "extract_adv")  # the attacks whose difficulty is studied
BAR_AUC, BAR_LO = 0.95, 0.85
BASE_ROWS = ("weight L2", "output agreement", "output KL", "SAC-w", "SAC-m", "conferrable")
CONTROL = "weight L2"
MODELGIF_BUDGET_S = 50 * 60
LABELS = {
    "extract_p": "soft T=20 (extract-P)",
    "extract_p_t1": "soft T=1",
    "extract_l": "label 5 ep (extract-L)",
    "extract_l_ep1": "label 1 ep",
    "extract_l_ep20": "label 20 ep",
    "extract_adv": "extract-Adv",
}


# --------------------------------------------------------------------------- the zoo


def _group(spec: zoo.GraphSpec, name: str) -> zoo.Group:
    return next(g for g in spec.groups if g.name == name)


def _teacher(base: zoo.Group, name: str, task: str, first_seed: int, n: int, kind: str, ep) -> zoo.Group:
    grid = dict(base.grid)
    grid["seed"] = tuple(range(first_seed, first_seed + n))
    if ep is not None:
        grid["epochs"] = (ep,)
    return dataclasses.replace(base, name=name, task=task, grid=tuple(grid.items()), prefix=f"{name}-", kind=kind)


def _student(base: zoo.Group, teacher: str, kind: str, task: str, n: int, over: dict, tags, ep) -> zoo.Group:
    grid = dict(base.grid)
    grid["seed"] = tuple(range(n))
    grid.update({k: (v,) for k, v in over.items()})
    if ep is not None and "epochs" not in over:
        grid["epochs"] = (ep,)
    return dataclasses.replace(
        base, name=f"{teacher}.{kind}", source=teacher, task=task, grid=tuple(grid.items()), prefix=f"{kind}-",
        kind=kind, tags=tags,
    )  # fmt: skip


def study_spec(n_teachers: int = N_TEACHERS, n_students: int = N_STUDENTS, ep=None, n_train=None) -> zoo.GraphSpec:
    """The study's zoo: every level's teachers and students, recipes copied from ``zoo.PROVENANCE``."""
    P = zoo.PROVENANCE
    a_def, a_att = P.task("A-def"), P.task("A-att")
    tasks = [
        dataclasses.replace(a_def, n_train=n_train),
        dataclasses.replace(a_att, n_train=n_train),
        zoo.Task("C10-def", "embedded", tuple(range(10)), half=0, n_train=n_train),
        zoo.Task("C10-att", "embedded", tuple(range(10)), half=1, n_train=n_train),
    ]
    src, ind = _group(P, "src_mlp"), _group(P, "ind_mlp")
    n = n_teachers
    teachers = [
        # (group name, copied from, task, first seed, kind, students' task, student kinds)
        ("src", src, "A-def", SRC_SEEDS, "source", "A-att", BASE_KINDS + tuple(C_KINDS)),
        ("ind", ind, "A-att", IND_SEEDS, "independent", "A-att", BASE_KINDS + tuple(C_KINDS)),
        ("ind_shared", ind, "A-def", SHARED_SEEDS, "independent", "A-att", BASE_KINDS),
        ("src10", src, "C10-def", SRC_SEEDS, "source", "C10-att", BASE_KINDS),
        ("ind10", ind, "C10-att", IND_SEEDS, "independent", "C10-att", BASE_KINDS),
    ]
    groups = []
    for name, base, task, first, kind, st_task, kinds in teachers:
        tags = ("study_source",) if kind == "source" else ("study_negative",)
        groups.append(dataclasses.replace(_teacher(base, name, task, first, n, kind, ep), tags=tags))
        for k in kinds:
            copy, over = (f"mlp.{k}", {}) if k in BASE_KINDS else C_KINDS[k]
            tag = ("study_positive",) if kind == "source" else ("study_negative",)
            groups.append(_student(_group(P, copy), name, k, st_task, n_students, over, tag, ep))
    return dataclasses.replace(
        P,
        name="extraction_study" if ep is None else "extraction_study_tiny",
        tasks=tuple(tasks),
        groups=tuple(groups),
        notes="issue 25: what makes extraction detectable (benchmarks/extraction_study.py)",
    )


# --------------------------------------------------------------------------- levels and rows

# A level: (factor, level name, source group, negative teacher group, {column: attack kind}).
C_COLUMNS = ("extract_p", "extract_p_t1", "extract_l", "extract_l_ep1", "extract_l_ep20", "extract_adv")
C_TEMPERATURE = ("extract_p", "extract_p_t1")  # (c1) soft labels at T = 20 / 1 vs label-only (extract_l)
C_FIDELITY = ("extract_l_ep1", "extract_l_ep20")  # (c2) label-only students trained shorter / longer
LABEL_ONLY = ("extract_l_ep1", "extract_l", "extract_l_ep20")
LEVELS = (
    ("base", "base (5 classes, disjoint halves)", "src", "ind", BASE_KINDS + tuple(C_KINDS)),
    ("a", "10 classes", "src10", "ind10", BASE_KINDS),
    ("b", "shared teacher data", "src", "ind_shared", BASE_KINDS),
)


def scenario(z, src: str, neg: str, kinds) -> scenarios.Scenario:
    queries = [neg] + [f"{src}.{k}" for k in kinds] + [f"{neg}.{k}" for k in kinds]
    return scenarios.provenance(z, sources=[src], queries=queries, probe_size=512)


def base_rows(z, src_group: str, workdir: pathlib.Path, seed: int, tiny: bool) -> dict:
    task = z.group(src_group)[0].task
    train, test = z.task_data(task, "train"), z.task_data(task, "test")
    cache = str(workdir / "fingerprints")
    conf = dict(train_steps=150, steps=20, seed=seed, cache_dir=cache, data=train)
    return {
        "weight L2": scorers.WeightL2(),
        "output agreement": scorers.OutputAgreement(),
        "output KL": scorers.OutputKL(),
        "SAC-w": fs.SACScorer(mode="w", data=test, n_samples=100),
        "SAC-m": fs.SACScorer(mode="m", data=test, n_samples=100, seed=seed),
        "conferrable": fs.ConferrableScorer(
            n_fingerprints=20 if tiny else 50, n_seeds=40 if tiny else 100, n_surrogates=4, n_references=4, **conf
        ),
    }


def d_rows(z, workdir: pathlib.Path, seed: int, tiny: bool) -> dict:
    """Factor (d): the larger / smaller sample and reference counts on the base zoo."""
    task = z.group("src")[0].task
    train, test = z.task_data(task, "train"), z.task_data(task, "test")
    conf = dict(train_steps=150, steps=20, seed=seed, cache_dir=str(workdir / "fingerprints"), data=train)
    return {
        "SAC-w (25)": fs.SACScorer(mode="w", data=test, n_samples=25),
        "SAC-m (25)": fs.SACScorer(mode="m", data=test, n_samples=25, seed=seed),
        "SAC-m (400)": fs.SACScorer(mode="m", data=test, n_samples=400, seed=seed),
        "conferrable (100 fp, 8+8)": fs.ConferrableScorer(
            n_fingerprints=40 if tiny else 100, n_seeds=80 if tiny else 200, n_surrogates=8, n_references=8, **conf
        ),
    }


#: Factor (d)'s rows: row -> (the row it is compared with, or None for a comparison row; level label).
D_LEVELS = {
    "SAC-w (25)": ("SAC-w", "25 samples"),
    "SAC-w": (None, "100 samples (base)"),
    "SAC-m (25)": ("SAC-m", "25 samples"),
    "SAC-m": (None, "100 samples (base)"),
    "SAC-m (400)": ("SAC-m", "400 samples"),
    "conferrable": (None, "50 fp, 4+4 (base)"),
    "conferrable (100 fp, 8+8)": ("conferrable", "100 fp, 8+8"),
    "ModelGiF (16 refs)": (None, "16 refs"),
    "ModelGiF (64 refs)": ("ModelGiF (16 refs)", "64 refs"),
}


# --------------------------------------------------------------------------- bookkeeping


def _stats(v) -> dict | None:
    v = [float(x) for x in v if x is not None]
    return None if not v else {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))}


def student_stats(z, src: str, neg: str, kind: str) -> dict:
    pos, negs = z.group(f"{src}.{kind}"), z.group(f"{neg}.{kind}")
    return {
        "fidelity_pos": _stats(r.fidelity for r in pos),
        "fidelity_neg": _stats(r.fidelity for r in negs),
        "acc_pos": _stats(r.test_acc for r in pos),
        "acc_neg": _stats(r.test_acc for r in negs),
        "teacher_acc_src": _stats(r.test_acc for r in z.group(src)),
        "teacher_acc_neg": _stats(r.test_acc for r in z.group(neg)),
    }


def positives(scen, masks: dict, scores: np.ndarray, fidelity: dict) -> dict:
    """Per label-only column: ``[query id, fidelity to its teacher, the pair's AUC against the column's negatives]``."""
    out = {}
    for a in LABEL_ONLY:
        if a not in masks:
            continue
        pos, neg = masks[a]
        ok = np.isfinite(scores)
        n = scores[neg & ok]
        rows = []
        for k, m in zip(*np.nonzero(pos & ok)):
            s = scores[k, m]
            rows.append(
                [scen.queries.ids[m], fidelity.get(scen.queries.ids[m]), float(np.mean((n < s) + 0.5 * (n == s)))]
            )
        out[a] = rows
    return out


def fidelity_link(rows: dict) -> dict:
    """Per row: Spearman rho (and n) between positive label-only students' fidelity and their pair AUC, pooled."""
    from scipy import stats as st

    out = {}
    for (level, row), rec in rows.items():
        if level != "base" or row not in BASE_ROWS:
            continue
        pts = [p for a in LABEL_ONLY for p in rec.get("positives", {}).get(a, []) if p[1] is not None]
        if len(pts) >= 3:
            rho = st.spearmanr([p[1] for p in pts], [p[2] for p in pts]).statistic
            out[row] = {"rho": float(rho), "n": len(pts)}
    return out


def meets(c: dict | None) -> bool:
    return bool(c) and c["auc"] >= BAR_AUC and c.get("auc_ci") is not None and c["auc_ci"][0] > BAR_LO


def _done(path: pathlib.Path) -> dict:
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r.get("protocol") == PROTOCOL and r.get("kind") == "row":
                out[(r["level"], r["row"])] = r
    return out


# --------------------------------------------------------------------------- verdict (the decision rule)


def _cell(rows: dict, level: str, row: str, attack: str):
    r = rows.get((level, row))
    return None if r is None else r["cells"].get(attack)


def _effect(base: dict | None, other: dict | None) -> str:
    if not base or not other or base.get("auc_ci") is None or other.get("auc_ci") is None:
        return "n/a"
    if other["auc_ci"][0] > base["auc_ci"][1]:
        return "up"
    if other["auc_ci"][1] < base["auc_ci"][0]:
        return "down"
    return "no measured effect"


def verdict(rows: dict) -> dict:
    """Applies the docstring's decision rule to the scored cells (no other input)."""
    inform = [r for r in BASE_ROWS if r != CONTROL]
    out = {"control_problems": [], "attacks": {}}
    for (level, row), rec in rows.items():
        if row == CONTROL:
            for a, c in rec["cells"].items():
                if c and c.get("auc_ci") and c["auc_ci"][0] > 0.5:
                    out["control_problems"].append(f"{level}/{a}: weight L2 {c['auc']:.2f} {c['auc_ci']}")
    for a in TARGETS:
        base_hits = [r for r in inform if meets(_cell(rows, "base", r, a))]
        res = {"reproduced": not base_hits, "base_rows_meeting_bar": base_hits, "factors": {}, "effects": {}}
        # (a), (b): another zoo level, same column.
        for f, level in (("a", "a"), ("b", "b")):
            hits = [r for r in inform if meets(_cell(rows, level, r, a))]
            res["factors"][f] = {"level": level, "rows_meeting_bar": hits, "explains": bool(hits) and not base_hits}
            res["effects"][f] = {r: _effect(_cell(rows, "base", r, a), _cell(rows, level, r, a)) for r in BASE_ROWS}
        # (c): other student recipes on the base zoo, compared with the label-only 5-epoch column.
        if a == "extract_l":
            c = {}
            for col in C_TEMPERATURE + C_FIDELITY:
                hits = [r for r in inform if meets(_cell(rows, "base", r, col))]
                eff = {r: _effect(_cell(rows, "base", r, "extract_l"), _cell(rows, "base", r, col)) for r in BASE_ROWS}
                c[col] = {"rows_meeting_bar": hits, "explains": bool(hits) and not base_hits, "effects": eff}
            res["factors"]["c_temperature"] = {k: v for k, v in c.items() if k in C_TEMPERATURE}
            res["factors"]["c_fidelity"] = {k: v for k, v in c.items() if k in C_FIDELITY}
        # (d): larger / smaller counts on the base zoo.
        d = {}
        for row, (parent, label) in D_LEVELS.items():
            cell = _cell(rows, "base", row, a)
            if parent is None or cell is None:
                continue
            other = _cell(rows, "base", parent, a)
            d[row] = {
                "level": label,
                "meets_bar": meets(cell),
                "explains": meets(cell) and not base_hits and not meets(other),
                "effect_vs_base": _effect(other, cell),
            }
        res["factors"]["d"] = d
        res["explained_by"] = [
            f
            for f, v in res["factors"].items()
            if (v.get("explains") if "explains" in v else any(x.get("explains") for x in v.values()))
        ]
        out["attacks"][a] = res
    out["fidelity_link"] = fidelity_link(rows)
    return out


# --------------------------------------------------------------------------- tables and plot


def _fmt(c) -> str:
    if not c:
        return "n/a"
    lo, hi = c["auc_ci"] if c.get("auc_ci") else (float("nan"), float("nan"))
    return f"{c['auc']:.2f} [{lo:.2f}, {hi:.2f}]" + (" **" if meets(c) else "")


def _fid(s) -> str:
    return "n/a" if not s else f"{s['mean']:.3f} ({s['min']:.2f}-{s['max']:.2f})"


def markdown(rows: dict, stats: dict, ver: dict | None) -> str:
    lines = ["AUC [bootstrap 95 % interval] against fair negatives; ** = meets the bar (>= 0.95, lower > 0.85).", ""]
    present = [r for r in BASE_ROWS if any(k[1] == r for k in rows)]
    head = "| factor | level | attack | " + " | ".join(present) + " | fidelity src / ind students | acc src / ind |"
    lines += [head, "|---|---|---|" + "---:|" * len(present) + "---|---|"]
    for f, level_name, _, _, kinds in LEVELS:
        cols = C_COLUMNS if f == "base" else BASE_KINDS
        for a in cols:
            if a not in kinds:
                continue
            cells = [_fmt(_cell(rows, f, r, a)) for r in present]
            s = stats.get((f, a), {})
            fid = f"{_fid(s.get('fidelity_pos'))} / {_fid(s.get('fidelity_neg'))}"
            acc = f"{_fid(s.get('acc_pos'))} / {_fid(s.get('acc_neg'))}"
            lines.append(f"| {f} | {level_name} | {LABELS.get(a, a)} | " + " | ".join(cells) + f" | {fid} | {acc} |")
    lines += ["", "Factor (d): sample / reference counts on the base zoo.", ""]
    dcols = ("extract_p", "extract_l", "extract_adv")
    lines += ["| row | level | " + " | ".join(LABELS[a] for a in dcols) + " |", "|---|---|" + "---:|" * len(dcols)]
    for row, (_, label) in D_LEVELS.items():
        if ("base", row) in rows:
            lines.append(f"| {row} | {label} | " + " | ".join(_fmt(_cell(rows, "base", row, a)) for a in dcols) + " |")
    if ver is not None:
        lines += ["", "## Verdict (the docstring's decision rule, applied by the code)", ""]
        for a, res in ver["attacks"].items():
            lines.append(
                f"- **{LABELS[a]}**: difficulty reproduced at the base level: {res['reproduced']}"
                f" (informative rows meeting the bar there: {res['base_rows_meeting_bar'] or 'none'});"
                f" explained by factor(s): {res['explained_by'] or 'none'}."
            )
            for f in ("a", "b"):
                v = res["factors"][f]
                lines.append(
                    f"  - ({f}) rows meeting the bar: {v['rows_meeting_bar'] or 'none'}; effects: {res['effects'][f]}"
                )
            for col, v in {**res["factors"].get("c_temperature", {}), **res["factors"].get("c_fidelity", {})}.items():
                lines.append(f"  - (c) {LABELS[col]}: rows meeting the bar: {v['rows_meeting_bar'] or 'none'};"
                             f" effects vs label 5 ep: {v['effects']}")  # fmt: skip
            for row, v in res["factors"]["d"].items():
                lines.append(
                    f"  - (d) {row}: meets the bar: {v['meets_bar']}; effect vs its base row: {v['effect_vs_base']}"
                )
        lines.append(f"- control (weight L2 lower bound > 0.5): {ver['control_problems'] or 'none'}")
        link = ", ".join(f"{r} {v['rho']:+.2f} (n {v['n']})" for r, v in ver.get("fidelity_link", {}).items())
        lines.append(f"- label-only students, Spearman(fidelity, pair AUC), pooled (reported only): {link or 'n/a'}")
    return "\n".join(lines) + "\n"


def plot(rows: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("(a) classes", [("base", "5 cl"), ("a", "10 cl")], BASE_KINDS),
        ("(b) teacher data", [("base", "disjoint"), ("b", "shared")], BASE_KINDS),
        ("(c) student recipe (base zoo)", [("base", "")], C_COLUMNS),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(22, 4.8), sharey=True)
    markers = dict(zip(BASE_ROWS, "osD^vx"))
    for ax, (title, levels, cols) in zip(axes, panels):
        ticks = []
        for i, (a, (lv_id, lv_lab)) in enumerate((a, lv) for a in cols for lv in levels):
            ticks.append(f"{LABELS[a]}\n{lv_lab}".strip())
            for j, r in enumerate(BASE_ROWS):
                c = _cell(rows, lv_id, r, a)
                if c and c.get("auc_ci"):
                    err = [[c["auc"] - c["auc_ci"][0]], [c["auc_ci"][1] - c["auc"]]]
                    ax.errorbar(i + (j - 2.5) * 0.1, c["auc"], yerr=err, fmt=markers[r], ms=4, capsize=2,
                                color=f"C{j}", label=r if i == 0 else None)  # fmt: skip
        ax.set_xticks(range(len(ticks)), ticks, rotation=45, ha="right", fontsize=7)
        ax.axhline(BAR_AUC, color="k", lw=0.5, ls="--")
        ax.axhline(0.5, color="grey", lw=0.5, ls=":")
        ax.set_title(title, fontsize=9)
    ax = axes[3]
    ticks = []
    for i, row in enumerate(D_LEVELS):
        ticks.append(f"{row}")
        for j, a in enumerate(TARGETS):
            c = _cell(rows, "base", row, a)
            if c and c.get("auc_ci"):
                err = [[c["auc"] - c["auc_ci"][0]], [c["auc_ci"][1] - c["auc"]]]
                ax.errorbar(i + (j - 0.5) * 0.2, c["auc"], yerr=err, fmt="os"[j], ms=4, capsize=2,
                            color=f"C{j}", label=LABELS[a] if i == 1 else None)  # fmt: skip
    ax.set_xticks(range(len(ticks)), ticks, rotation=45, ha="right", fontsize=7)
    ax.axhline(BAR_AUC, color="k", lw=0.5, ls="--")
    ax.set_title("(d) samples / references (base zoo)", fontsize=9)
    axes[0].set_ylabel("ROC AUC, fair negatives (95 % interval)")
    axes[0].legend(fontsize=6, loc="lower left")
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def _pairs_plan(d_names) -> list[tuple[str, str]]:
    plan = [(f, r) for f, *_ in LEVELS for r in BASE_ROWS]
    plan += [("base", r) for r in d_names]
    return plan


def main(argv=None):  # noqa: C901 (a flat sequence of stages)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="/tmp/jl_extstudy", help="zoo and fingerprint cache folder")
    ap.add_argument("--out", default="benchmarks/results", help="results folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--tiny", action="store_true", help="pipeline check only (2 + 2 teachers, 1 epoch)")
    args = ap.parse_args(argv)
    setup_logging()
    workdir, out = pathlib.Path(args.workdir), pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "extraction_study_tiny" if args.tiny else "extraction_study"
    jsonl = out / f"{stem}.jsonl"
    load = lambda: open("/proc/loadavg").read().split()[:3]  # noqa: E731, SIM115
    n_boot = 100 if args.tiny else args.n_boot
    spec = study_spec(2, 1, ep=1, n_train=600) if args.tiny else study_spec()
    protocol = PROTOCOL + "-" + hashlib.sha256(json.dumps(spec.to_json(), sort_keys=True).encode()).hexdigest()[:8]

    t0, load0 = time.time(), load()
    z = zoo.build(spec, workdir / "zoo")
    with jsonl.open("a") as f:
        rec = {"kind": "zoo", "protocol": PROTOCOL, "spec_hash": protocol, "models": len(z.records)}
        rec.update(wall_s=time.time() - t0, loadavg_start=load0, loadavg_end=load(), env=environment())
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **rec}) + "\n")
    log.info("zoo: %d models in %.0fs (load %s)", len(z.records), time.time() - t0, load())

    done = _done(jsonl)
    scens, masks, stats = {}, {}, {}
    for f, _, src, neg, kinds in LEVELS:
        scens[f] = scenario(z, src, neg, kinds)
        masks[f] = prov.attack_masks(scens[f])
        for k in kinds:
            stats[(f, k)] = student_stats(z, src, neg, k)
    d_sc = d_rows(z, workdir, args.seed, args.tiny)
    gif_names = ("ModelGiF (16 refs)", "ModelGiF (64 refs)")
    plan = _pairs_plan(list(d_sc) + list(gif_names))
    t_score, n_scored = time.time(), 0
    fidelity = {r.id: r.fidelity for r in z.records}
    row_sets = {}

    def emit(level, name, scores, wall, extra=None):
        cells = prov.cells(scores, masks[level], n_boot=n_boot, seed=args.seed)
        rec = {"kind": "row", "protocol": PROTOCOL, "spec_hash": protocol, "level": level, "row": name}
        rec.update(cells=cells, wall_s=wall, loadavg=load(), n_boot=n_boot, **(extra or {}))
        rec["students"] = {a: stats.get((level, a)) for a in cells}
        rec["positives"] = positives(scens[level], masks[level], scores, fidelity) if level == "base" else {}
        done[(level, name)] = rec
        with jsonl.open("a") as fh:
            fh.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **rec}, default=float) + "\n")

    for i, (level, name) in enumerate(plan):
        if (level, name) in done:
            continue
        src = next(s for f, _, s, *_ in LEVELS if f == level)
        if src not in row_sets:
            row_sets[src] = base_rows(z, src, workdir, args.seed, args.tiny)
        t = time.time()
        if name in gif_names:
            if time.time() - t0 > MODELGIF_BUDGET_S:
                log.info("%s: not run (the run is past %d s; the protocol drops it)", name, MODELGIF_BUDGET_S)
                continue
            n_refs = 16 if name == gif_names[0] else 64
            dist = prov.modelgif_sweep(scens[level], n_refs=n_refs, steps=5, key=jax.random.key(args.seed))
            emit(level, name, -dist.mean(-1), time.time() - t, {"n_refs": n_refs, "steps": 5})
        else:
            scorer = row_sets[src].get(name) or d_sc[name]
            scores = prov.score_matrix(scens[level], scorer)
            emit(level, name, scores, time.time() - t, {"scorer_settings": getattr(scorer, "settings", None)})
        n_scored += 1
        left = sum(1 for p in plan[i + 1 :] if p not in done)
        per = (time.time() - t_score) / n_scored
        summary = {a: None if c is None else round(c["auc"], 2) for a, c in done[(level, name)]["cells"].items()}
        log.info(
            "[%d/%d] %s / %s in %.0fs; ETA %.0f min (load %s)%s",
            i + 1, len(plan), level, name, time.time() - t, left * per / 60, " ".join(load()),
            f": {summary}" if args.tiny else "",
        )  # fmt: skip

    rows = {k: v for k, v in done.items() if v.get("spec_hash") == protocol}
    ver = verdict(rows)
    with jsonl.open("a") as fh:
        rec = {"kind": "verdict", "protocol": PROTOCOL, "spec_hash": protocol, **ver, "wall_s": time.time() - t0}
        fh.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **rec}, default=float) + "\n")
    (out / f"{stem}.md").write_text(markdown(rows, stats, ver))
    plot(rows, out / f"{stem}.png")
    log.info("wrote %s, %s.md, %s.png in %.0fs (load %s)", jsonl, stem, stem, time.time() - t0, load())


if __name__ == "__main__":
    main()
