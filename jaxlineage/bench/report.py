"""Turns the stages' dicts into the papers' tables (Markdown) and the report files.

A table is a plain dict so that ``results.json`` holds exactly what
``results.md`` shows::

    {"key": "modelgif_references", "title": ..., "row_header": ["references"], "columns": [...],
     "decimals": 3, "rows": [{"label": ["8"], "cells": [{"mean": 0.93, "std": null}, ...]}],
     "notes": [...]}

Every cell is ``{"mean": float, "std": float | None}`` computed in the run; a
quantity a method does not produce gets no row (never a placeholder number).
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "METRIC_LABELS",
    "MODE_LABELS",
    "TABLES",
    "build_tables",
    "cell",
    "column_decimals",
    "dna_table",
    "format_cell",
    "is_number",
    "na",
    "parse_markdown_tables",
    "provenance_tables",
    "reference_sweep_table",
    "scenario_tables",
    "table",
    "timing_table",
    "to_markdown",
    "to_markdown_report",
    "write",
]

#: Paper-style labels of the learning-free modes (Neural Lineage Table 1).
MODE_LABELS = {"plain": "w/o approx.", "first_order": "w approx.", "linearized": "linearised"}
METRIC_LABELS = {
    "l1": "L1",
    "l2": "L2",
    "lp": "Lp (p=4)",
    "linf": "Linf",
    "lse": "LSE",
    "cka": "CKA",
    "dcor": "dCor",
    "cka(estimator=unbiased)": "CKA (unbiased)",
}


def cell(mean: float, std: float | None = None) -> dict:
    return {"mean": float(mean), "std": None if std is None else float(std)}


def na() -> dict:
    """A cell a scorer cannot fill (it cannot read those models, or has no such figure): shown as ``n/a``."""
    return {"mean": None, "std": None}


def table(
    key: str,
    title: str,
    row_header: Sequence[str],
    columns: Sequence[str],
    rows: list[dict],
    *,
    decimals: int | Sequence[int],
    notes: Sequence[str] = (),
) -> dict:
    """``decimals``: one for every column or one per column."""
    if not isinstance(decimals, int) and len(decimals) != len(columns):
        raise ValueError(f"table {key}: {len(decimals)} decimals for {len(columns)} columns")
    for r in rows:
        if len(r["cells"]) != len(columns) or len(r["label"]) != len(row_header):
            raise ValueError(f"table {key}: row {r['label']} does not fit columns {list(columns)}")
    return {
        "key": key,
        "title": title,
        "row_header": list(row_header),
        "columns": list(columns),
        "rows": rows,
        "decimals": decimals,
        "notes": list(notes),
    }


def format_cell(c: dict, decimals: int) -> str:
    if c["mean"] is None:
        return "n/a"
    s = f"{c['mean']:.{decimals}f}"
    if c.get("std") is not None:
        s += f" ± {c['std']:.{decimals}f}"
    return s


def to_markdown(t: dict) -> str:
    head = [*t["row_header"], *t["columns"]]
    lines = [
        f"### {t['title']}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * len(t["row_header"]) + ["---:"] * len(t["columns"])) + "|",
    ]
    decimals = column_decimals(t)
    for r in t["rows"]:
        lines.append(
            "| " + " | ".join([*r["label"], *(format_cell(c, d) for c, d in zip(r["cells"], decimals))]) + " |"
        )
    lines.append("")
    lines += [f"{n}" for n in t["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def column_decimals(t: dict) -> list[int]:
    d = t["decimals"]
    return [d] * len(t["columns"]) if isinstance(d, int) else list(d)


def parse_markdown_tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table in ``text`` as rows of stripped cell strings (header first, separator dropped)."""
    tables, cur = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cur is None:
                cur = []
                tables.append(cur)
            if not all(set(c) <= set("-:") and c for c in cells):
                cur.append(cells)
        else:
            cur = None
    return tables


# --------------------------------------------------------------------------- the tables


def _pct(v):
    return None if v is None else 100.0 * float(v)


def scenario_tables(stages: dict) -> list[dict]:
    """One table per (scenario, task): every method's and baseline's :class:`~jaxlineage.eval.Result` in one layout.

    Rows = scorers (``[method, scorer]``), columns = the figures
    (:func:`jaxlineage.eval.protocols.columns`): accuracy for *identify*; AUC, TPR
    at 1 % / 5 % FPR and AUC per derivation kind for *verify*. Cells are
    ``mean ± std`` over folds; ``n/a`` where a scorer cannot read the models
    (e.g. weights across architectures). A method whose scorers are not asked a
    scenario (``ScorerSpec.scenarios``) is named in that table's notes.
    """
    from jaxlineage.eval import Result, protocols

    groups: dict[tuple[str, str], list] = {}
    for st in stages.values():
        if st.get("status") != "ok" or st.get("via") != "jaxlineage.eval":
            continue
        for d in st["result"]["results"]:
            groups.setdefault((d["details"]["scenario"], d["details"]["task"]), []).append(Result.from_json(d))
    tasks = list(dict.fromkeys(t for _, t in groups))
    not_asked: dict[tuple[str, str], list[str]] = {}
    for st in stages.values():
        if st.get("status") == "ok" and st.get("via") == "jaxlineage.eval":
            for d in st["result"].get("not_asked", []):
                not_asked.setdefault((d["scenario"], d["task"]), []).append(
                    f"`{d['scorer']}` ({d['label']}; asked {', '.join(d['asked'])} only)"
                )
    out = []
    for (scenario, task), rs in groups.items():
        cols = protocols.columns(rs)
        fmts = [protocols.column_format(c) for c in cols]
        rows, notes = [], []
        for r in rs:
            cells = []
            for c, (scale, _, _) in zip(cols, fmts):
                v = protocols.cell(r, c)
                cells.append(na() if v is None else cell(scale * v["mean"], scale * v["std"]))
            rows.append({"label": [r.details.get("label", ""), r.scorer], "cells": cells})
            if "n/a" in r.details:
                notes.append(f"`{r.scorer}`: n/a, {r.details['n/a']}.")
        first = rs[0]
        if not_asked.get((scenario, task)):
            notes.append("Not asked this scenario (cost): " + ", ".join(not_asked[(scenario, task)]) + ".")
        s = first.settings
        what = (
            "parent identification accuracy (%)"
            if first.question == "identify"
            else "provenance verification: AUC, TPR at low FPR (%), AUC per derivation kind"
        )
        title = (
            f"{scenario} (task {task}): {what}; {s.get('candidates')} candidates, {s.get('queries')} queries,"
            f" mean ± std over {s.get('num_folds')} folds"
        )
        alphas = next((r.details.get("grid_alphas") for r in rs if r.details.get("alphas")), None)
        notes.append(
            f"Folds {s.get('split')} (sizes {s.get('fold_sizes')}), the same for every row"
            + (
                f"; alpha of the learning-free rows chosen per fold on the training folds from {alphas}"
                if alphas
                else ""
            )
            + ". ± is the sample standard deviation (ddof=1) over folds."
        )
        ns = sorted({v["n"] for r in rs for v in r.metrics.values() if "n" in v})
        if ns and ns[0] < (s.get("num_folds") or 0):
            notes.append(
                f"Some figures are over fewer folds (n = {', '.join(map(str, ns))}): a fold without a positive pair"
                " (verify) or without a query whose parent is a candidate (identify) has no such figure."
            )
        key = scenario if len(tasks) == 1 else f"{scenario}_{task}"
        out.append(
            table(
                key, title, ["method", "scorer"], [f[2] for f in fmts], rows, decimals=[f[1] for f in fmts], notes=notes
            )
        )
    return out


def reference_sweep_table(stages: dict) -> dict | None:
    """ModelGiF's AUC / TPR by reference count on the *verify* scenarios (all queries, no folds).

    The sweeps of every evaluation-layer stage (any scorer with ``per_reference``), in stage order.
    """
    sweeps = [
        sw
        for st in stages.values()
        if st.get("status") == "ok" and st.get("via") == "jaxlineage.eval"
        for sw in st["result"].get("reference_sweep", [])
    ]
    if not sweeps:
        return None
    cols = [("auc", "AUC"), ("tpr_at_1", "TPR@1% FPR (%)"), ("tpr_at_5", "TPR@5% FPR (%)")]
    rows = []
    for sw in sweeps:
        for contrast, points in sw["sweeps"].items():
            for pt in points:
                rows.append(
                    {
                        "label": [f"{sw['scenario']}/{sw['task']}", contrast, str(pt["n_refs"])],
                        "cells": [cell(pt[k] if k == "auc" else _pct(pt[k])) for k, _ in cols],
                    }
                )
    first = sweeps[0]
    pts = first["sweeps"]["all negatives"][0]
    s = first["settings"]
    notes = [
        f"Scorer `{first['scorer']}`: {s.get('steps')} Gauss-Legendre nodes; references a seeded draw from the"
        " scenario's probe (data only), fewer references are prefixes of it. Positives: (parent, descendant)"
        f" pairs ({pts['num_pos']}); negatives: every other pair ({pts['num_neg']}), or only pairs with a query"
        " unrelated to every candidate (vs independents). All queries, no folds: a diagnostic of the"
        " reference count; the verify table above has ModelGiF's figures over folds."
    ]
    return table(
        "modelgif_references",
        "ModelGiF: verification AUC / TPR by reference count",
        ["scenario", "negatives", "references"],
        [c for _, c in cols],
        rows,
        decimals=[3, 1, 1],
        notes=notes,
    )


def timing_table(results: dict) -> dict:
    rows = []
    for name, st in results["stages"].items():
        if st.get("wall_s") is None:
            continue
        rows.append({"label": [name, st["status"]], "cells": [cell(st["wall_s"])]})
    rows.append({"label": ["total", "-"], "cells": [cell(results["wall_s"])]})
    dev = results["environment"]["device"]
    notes = [
        f"Device {dev} ({results['environment']['device_count']} device(s), "
        f"{results['environment']['cpu_count']} CPUs); jax {results['environment']['jax']}."
    ]
    z = results["stages"].get("zoo", {}).get("result")
    if z:
        notes.append(f"Zoo: {z['trained']} models trained in this run, {z['reused']} reused from {z['workdir']}.")
    return table(
        "timing", "Wall time per stage (s)", ["stage", "status"], ["wall time (s)"], rows, decimals=1, notes=notes
    )


def provenance_tables(stages: dict) -> list[dict]:
    """The verify table of the provenance section: method x attack, ROC AUC and TPR at 1 % FPR; ModelGiF by refs."""
    prov = _ok(stages, "provenance")
    if prov is None:
        return []
    attacks = [a for a, _ in prov["attacks"]]
    labels = [lab for _, lab in prov["attacks"]]
    sc = prov["scenario"]

    def c(x, field):
        return na() if x is None or x.get(field) is None else cell(x[field])

    out = []
    for field, title in (("auc", "ROC AUC"), ("tpr@1%fpr", "TPR at 1 % FPR")):
        rows = [{"label": [r["name"]], "cells": [c(r["cells"].get(a), field) for a in attacks]} for r in prov["rows"]]
        notes = [
            f"Scenario `{sc['name']}`: sources {', '.join(sc['sources'])} against {sc['queries']} derived models"
            f" (probe {sc['probe_shape'][0]} defender inputs). Positives: (source, model derived from it by the"
            " attack); negatives: (source, the same attack applied to an independently trained model, or an"
            " independent model; scratch models of the transfer task for transfer). n/a: the scorer cannot read"
            " those pairs (weight space across architectures). Learning-free: default tap, fixed"
            f" alpha {sc['alpha']}; ModelGiF: {sc['modelgif_steps']} nodes, references a seeded draw from the"
            " probe."
        ]
        if any(r.get("method") == "mgmp" for r in prov["rows"]):
            notes.append(
                f"Model DNA: logits fragments on the probe, {sc.get('dna_steps')} training steps per source;"
                " fitted on the queries of one attack fold (alternate columns; positives = the sources'"
                " derivations, negatives = the same attacks on the independents) and scored on the other fold's"
                " queries and the independents / scratch models, which no fit sees (eval.provenance.learned_cells)."
            )
        notes += [f"{s['name']}: {s['why']}." for s in prov.get("slots", [])]
        out.append(
            table(
                f"provenance_{field}",
                f"Provenance (verify): {title} per attack",
                ["method"],
                labels,
                rows,
                decimals=2,
                notes=notes,
            )
        )
    cal = prov.get("calibration") or {}
    if cal.get("rows"):
        first = next(iter(cal["rows"].values()))
        alphas = [r["alpha"] for r in first]
        rows = [
            {
                "label": [name, str(rs[0]["n"]), str(rs[0]["n_calibration"])],
                "cells": [cell(100 * r["rate"]) for r in rs] + [cell(100 * r["margin"]) for r in rs],
            }
            for name, rs in cal["rows"].items()
        ]
        n_cal, n_test = cal["n_queries"]
        out.append(
            table(
                "provenance_calibration",
                "Provenance: calibration of conformal p-values on unrelated pairs (% with p <= alpha)",
                ["scorer", "test pairs", "calibration pairs"],
                [f"p <= {a:g}" for a in alphas] + [f"margin at {a:g}" for a in alphas],
                rows,
                decimals=1,
                notes=[
                    "Pairs (source, query) that the lineage graph calls unrelated; their queries split at random"
                    f" into {n_cal} calibration and {n_test} test models (no query in both). Valid: the rate is"
                    " at most alpha + margin (binomial 95 %; optimistic, since pairs share the sources). Fewer"
                    " than the 500 pairs of issue 16; the 500-pair calibration is benchmarks/pvalues.py"
                    " calibration. QQ plot: provenance_pvalues_qq.png."
                ],
            )
        )
    sweep = prov.get("modelgif_sweep", {})
    rows = []
    for field, by_n in sweep.items():
        for n, cells_ in by_n.items():
            rows.append({"label": [field, str(n)], "cells": [c(cells_.get(a), "auc") for a in attacks]})
    if rows:
        out.append(
            table(
                "provenance_modelgif",
                "Provenance: ModelGiF ROC AUC per attack by reference count",
                ["field", "references"],
                labels,
                rows,
                decimals=2,
                notes=["Fewer references are prefixes of one seeded draw from the defender's probe."],
            )
        )
    return out


def dna_table(stages: dict) -> dict | None:
    """Model DNA on DNA_QUICK: fragment accuracy, A_o, A_n, model AUC (%), mean ± std over repetitions."""
    d = _ok(stages, "dna")
    if d is None:
        return None
    cols = ["fragment acc.", "A_o", "A_n", "homologous accepted", "non-homologous rejected", "model AUC"]
    keys = ["fragment_accuracy", "a_o", "a_n", "homologous_accepted", "non_homologous_rejected", "model_auc"]
    rows = []
    for r in d["results"]:
        m = r["metrics"]
        rows.append(
            {
                "label": [r["scenario"], r["scorer"]],
                "cells": [cell(100 * m[k]["mean"], 100 * m[k]["std"]) if k in m else na() for k in keys],
            }
        )
    return table(
        "dna",
        "Model DNA on DNA_QUICK (verify): unseen tasks and seeds, with / without the generator (%)",
        ["scenario", "scorer"],
        cols,
        rows,
        decimals=1,
        notes=[
            "One source per repetition; pool and evaluation targets share no task and no seed"
            " (eval.dna.Split.STRICT). Paired comparison in results.json (stages.dna.result.table)."
        ],
    )


TABLES: list[Callable[[dict], dict | list[dict] | None]] = [
    scenario_tables,
    reference_sweep_table,
    provenance_tables,
    dna_table,
]


def build_tables(results: dict) -> list[dict]:
    out = []
    for f in TABLES:
        t = f(results["stages"])
        out += t if isinstance(t, list) else [] if t is None else [t]
    out.append(timing_table(results))
    return out


def _ok(stages: dict, name: str) -> dict | None:
    st = stages.get(name)
    return st["result"] if st and st.get("status") == "ok" else None


def _child_tasks(stages: dict) -> list[str]:
    return list(stages["zoo"]["result"]["child_tasks"])


# --------------------------------------------------------------------------- files


def to_markdown_report(results: dict) -> str:
    p = results["preset"]
    env = results["environment"]
    lines = [
        f"# jaxlineage bench: preset `{p['name']}`",
        "",
        f"{p['description']}. Command: `{results['command']}`. "
        f"jaxlineage {env['jaxlineage']}, jax {env['jax']}, {env['device']}, {env['cpu_count']} CPUs, "
        f"seed {results['settings']['seed']}, total wall time {results['wall_s']:.0f} s.",
        "",
    ]
    for d in results.get("data", []):
        if d["split"] == "train":
            from jaxlineage.bench.stages import describe_source

            lines.append(
                f"- data: `{d['dataset']}` (tasks {', '.join(d['tasks'])}) from {describe_source(d['source'])}"
            )
    z = results["stages"]["zoo"].get("result")
    if z:
        c = z["counts"]
        lines.append(
            f"- zoo `{z['spec_name']}` in `{z['workdir']}`: {c['parents']} parents, {c['children']} children, "
            f"{c['independents']} independents ({z['trained']} trained now, {z['reused']} reused)"
        )
    for name, st in results["stages"].items():
        if st["status"] != "ok":
            lines.append(f"- stage `{name}`: **{st['status']}**: {st.get('error', '')}")
    lines.append("")
    for t in results["tables"]:
        lines.append(to_markdown(t))
    if results.get("plots"):
        lines.append("Figures: " + ", ".join(f"[{pl}]({pl})" for pl in results["plots"]))
    return "\n".join(lines).rstrip() + "\n"


def write(results: dict, out: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    out = pathlib.Path(out)
    md = out / "results.md"
    js = out / "results.json"
    md.write_text(to_markdown_report(results))
    js.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    return md, js


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
