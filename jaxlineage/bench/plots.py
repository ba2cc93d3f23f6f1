"""The bench's figures as PNG, drawn with matplotlib (an optional dependency: ``pip install jaxlineage[plots]``).

* ``fig3a_first_order_vs_linearized.png``: FIRST_ORDER vs exact linearised similarity per
  (parent, child) pair (Neural Lineage Fig. 3a);
* ``fig3b_similarity_change.png``: the change of similarity from the plain score, true vs false
  parents (Fig. 3b);
* ``accuracy_vs_alpha.png``: learning-free accuracy against the step size alpha;
* ``modelgif_auc_vs_refs.png``: ModelGiF AUC against the number of reference points;
* ``provenance_heatmap.png``, ``provenance_modelgif_auc_vs_refs.png``: the provenance section's
  method x attack AUC and ModelGiF's AUC by reference count;
* ``provenance_pvalues_qq.png``: QQ plot of the provenance section's conformal p-values of
  unrelated pairs against the uniform (:func:`jaxlineage.eval.pvalues.qq_plot`).

Each figure is drawn only from numbers the run computed; a figure whose data a
stage did not produce is skipped.
"""

from __future__ import annotations

import logging
import pathlib

import numpy as np

from jaxlineage.bench import report

__all__ = [
    "PlotsUnavailable",
    "accuracy_vs_alpha",
    "draw_all",
    "fig3a",
    "fig3b",
    "modelgif_auc",
    "provenance_heatmap",
    "provenance_modelgif_refs",
    "provenance_qq",
]

log = logging.getLogger("jaxlineage.bench")


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise PlotsUnavailable(f"matplotlib is not installed ({e}); pip install 'jaxlineage[plots]'") from e
    return plt


def draw_all(results: dict, out: str | pathlib.Path) -> list[str]:
    """Draws every figure the run has data for into ``out``; returns the file names."""
    plt = _plt()
    out = pathlib.Path(out)
    files = []
    for fn in (
        fig3a,
        fig3b,
        accuracy_vs_alpha,
        modelgif_auc,
        provenance_heatmap,
        provenance_modelgif_refs,
        provenance_qq,
    ):
        try:
            name = fn(results["stages"], out, plt)
        except Exception as e:  # noqa: BLE001 - a figure must not cost the tables
            log.warning("figure %s failed: %s: %s", fn.__name__, type(e).__name__, e)
            name = None
        finally:
            plt.close("all")
        if name:
            files.append(name)
    return files


def _save(fig, out: pathlib.Path, name: str) -> str:
    """Lays out and writes ``fig`` as ``out / name`` (110 dpi); returns ``name``."""
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    return name


def _grid(plt, n, size, ncols=4):
    """A figure with ``n`` panels in rows of ``ncols``; unused panels hidden. Returns ``(fig, flat axes)``."""
    cols = min(n, ncols)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _lf(stages):
    return report._ok(stages, "learning_free")


def _pairs(stages) -> dict | None:
    """Per-pair scores of the learning-free results that kept their grids (first task's identify scenario).

    For each metric, the alpha the folds chose most often for its ``first_order`` row (else its
    ``linearized`` row), and every mode's ``[K, M]`` scores at that alpha, read off the results'
    ``[A, K, M]`` grids: no scoring here.
    """
    lf = _lf(stages)
    if not lf:
        return None
    kept = [d for d in lf.get("results", []) if "scores" in d["details"]]
    if not kept:
        return None
    by: dict[str, dict[str, dict]] = {}
    for d in kept:
        metric, _, mode = d["scorer"].rpartition(" ")
        by.setdefault(metric, {})[mode] = d
    labels = np.asarray(kept[0]["details"]["labels"])
    k = np.asarray(kept[0]["details"]["scores"]).shape[1]
    pairs = {
        "task": kept[0]["details"]["task"],
        "metrics": [],
        "alpha": {},
        "scores": {},
        "is_parent": (np.arange(k)[:, None] == labels[None, :]).ravel(),
    }
    for metric, modes in by.items():
        chosen = None
        for mode in ("first_order", "linearized"):
            alphas = modes.get(mode, {}).get("details", {}).get("alphas")
            if alphas:
                vals, counts = np.unique(alphas, return_counts=True)
                chosen = float(vals[np.argmax(counts)])
                break
        if chosen is None:
            continue
        pairs["metrics"].append(metric)
        pairs["alpha"][metric] = chosen
        pairs["scores"][metric] = {}
        for mode, d in modes.items():
            grid_alphas = [float(a) for a in d["details"]["grid_alphas"]]
            a = grid_alphas.index(chosen) if chosen in grid_alphas else 0  # PLAIN: any alpha
            pairs["scores"][metric][mode] = np.asarray(d["details"]["scores"], np.float64)[a].ravel()
    return pairs if pairs["metrics"] else None


def fig3a(stages, out, plt) -> str | None:
    """Per pair: FIRST_ORDER similarity (x) vs the metric on the exactly linearised child (y)."""
    pairs = _pairs(stages)
    if not pairs:
        return None
    metrics = [
        m for m in pairs["metrics"] if "first_order" in pairs["scores"][m] and "linearized" in pairs["scores"][m]
    ]
    if not metrics:
        return None
    fig, axes = _grid(plt, len(metrics), 3.2)
    true = np.asarray(pairs["is_parent"], bool)
    for ax, m in zip(axes, metrics):
        fo = np.asarray(pairs["scores"][m]["first_order"], np.float64)
        li = np.asarray(pairs["scores"][m]["linearized"], np.float64)
        ax.scatter(fo[~true], li[~true], s=6, alpha=0.5, label="false parent")
        ax.scatter(fo[true], li[true], s=8, alpha=0.8, label="true parent")
        lo, hi = np.nanmin([fo.min(), li.min()]), np.nanmax([fo.max(), li.max()])
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.7)
        ax.set_title(f"{report.METRIC_LABELS.get(m, m)} (alpha={pairs['alpha'][m]:g})")
        ax.set_xlabel("w approx. (first order)")
        ax.set_ylabel("linearised (exact metric)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"First-order vs linearised similarity per (parent, child) pair, task {pairs['task']}")
    return _save(fig, out, "fig3a_first_order_vs_linearized.png")


def fig3b(stages, out, plt) -> str | None:
    """Similarity change (mode score - plain score) for true vs false parents."""
    pairs = _pairs(stages)
    if not pairs:
        return None
    true = np.asarray(pairs["is_parent"], bool)
    metrics = [m for m in pairs["metrics"] if "plain" in pairs["scores"][m]]
    mode = "first_order"
    metrics = [m for m in metrics if mode in pairs["scores"][m]]
    if not metrics:
        return None
    fig, axes = _grid(plt, len(metrics), 3.0)
    for ax, m in zip(axes, metrics):
        d = np.asarray(pairs["scores"][m][mode], np.float64) - np.asarray(pairs["scores"][m]["plain"], np.float64)
        ax.boxplot([d[true], d[~true]])
        ax.set_xticks([1, 2], ["true", "false"])
        ax.set_title(f"{report.METRIC_LABELS.get(m, m)} (alpha={pairs['alpha'][m]:g})")
        ax.set_ylabel("similarity change")
    fig.suptitle(f"Similarity change by the first-order step, true vs false parents, task {pairs['task']}")
    return _save(fig, out, "fig3b_similarity_change.png")


def accuracy_vs_alpha(stages, out, plt) -> str | None:
    """Accuracy against alpha, one panel per mode (w approx. / linearised), one line per metric."""
    lf = _lf(stages)
    if not lf or not lf.get("alpha_sweep"):
        return None
    sweep = lf["alpha_sweep"]
    modes = [m for m in ("first_order", "linearized") if any(d["scorer"].endswith(" " + m) for d in sweep)]
    if not modes:
        return None
    fig, axes = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), 3.8), squeeze=False, sharey=True)
    metrics = list(dict.fromkeys(d["scorer"].rpartition(" ")[0] for d in sweep))
    for ax, mode in zip(axes[0], modes):
        for d in sweep:
            metric, _, m = d["scorer"].rpartition(" ")
            if m == mode:  # one colour per metric in every panel (a panel may lack a metric: linf has no first order)
                ax.plot(
                    np.asarray(d["details"]["alphas"], np.float64),
                    100 * np.asarray(d["details"]["values"], np.float64),
                    marker="o",
                    ms=3,
                    color=f"C{metrics.index(metric) % 10}",
                    label=report.METRIC_LABELS.get(metric, metric),
                )
        ax.set_xscale("log")
        ax.set_xlabel("alpha")
        ax.set_title(report.MODE_LABELS.get(mode, mode))
    sweep = {"task": sweep[0]["details"]["task"]}
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"Learning-free lineage: accuracy vs alpha (task {sweep['task']}, all children, no fold split)")
    return _save(fig, out, "accuracy_vs_alpha.png")


def modelgif_auc(stages, out, plt) -> str | None:
    """ModelGiF AUC against the number of references on the verify scenarios (``reference_sweep``)."""
    gif = report._ok(stages, "modelgif")
    sweeps = (gif or {}).get("reference_sweep", [])
    if not sweeps:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for sw in sweeps:
        for contrast, points in sw["sweeps"].items():
            n = [p["n_refs"] for p in points]
            auc = [p["auc"] for p in points]
            ax.plot(n, auc, marker="o", label=f"{sw['scenario']}/{sw['task']}: {contrast}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("reference points")
    ax.set_ylabel("AUC")
    ax.set_ylim(0.0, 1.02)
    ax.legend(fontsize=7)
    ax.set_title("ModelGiF: AUC vs number of references")
    return _save(fig, out, "modelgif_auc_vs_refs.png")


def provenance_heatmap(stages, out, plt) -> str | None:
    """Method x attack ROC AUC of the provenance section (grey: n/a)."""
    prov = report._ok(stages, "provenance")
    if not prov:
        return None
    import numpy as np

    attacks = prov["attacks"]
    names = [r["name"] for r in prov["rows"]]
    auc = np.array(
        [
            [np.nan if (r["cells"].get(a) or {}).get("auc") is None else r["cells"][a]["auc"] for a, _ in attacks]
            for r in prov["rows"]
        ],
        float,
    )
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(attacks), 0.9 + 0.38 * len(names)))
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(auc), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(len(names)):
        for j in range(len(attacks)):
            ax.text(j, i, "n/a" if np.isnan(auc[i, j]) else f"{auc[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(attacks)), [lab for _, lab in attacks], rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    fig.colorbar(im, ax=ax, label="ROC AUC")
    ax.set_title("Provenance: ROC AUC, method x attack")
    return _save(fig, out, "provenance_heatmap.png")


def provenance_modelgif_refs(stages, out, plt) -> str | None:
    """ModelGiF ROC AUC per attack against the number of references (logits field)."""
    prov = report._ok(stages, "provenance")
    if not prov or not prov.get("modelgif_sweep"):
        return None
    fields = list(prov["modelgif_sweep"])
    fig, axes = plt.subplots(1, len(fields), figsize=(5.5 * len(fields), 4.0), squeeze=False)
    for ax, field in zip(axes[0], fields):
        by_n = prov["modelgif_sweep"][field]
        ns = sorted(by_n, key=int)
        for a, label in prov["attacks"]:
            ys = [(by_n[n].get(a) or {}).get("auc") for n in ns]
            if all(y is None for y in ys):
                continue
            ax.plot([int(n) for n in ns], [float("nan") if y is None else y for y in ys], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("reference points")
        ax.set_ylabel("ROC AUC")
        ax.set_ylim(0.0, 1.02)
        ax.set_title(f"ModelGiF {field}")
        ax.legend(fontsize=6, ncol=2)
    return _save(fig, out, "provenance_modelgif_auc_vs_refs.png")


def provenance_qq(stages, out, plt) -> str | None:
    """QQ plot against the uniform of the conformal p-values of unrelated pairs (the provenance section's scorers)."""
    del plt  # qq_plot draws its own figure
    prov = report._ok(stages, "provenance")
    cal = (prov or {}).get("calibration") or {}
    if not cal.get("pvalues"):
        return None
    from jaxlineage.eval.scorers import pvalues

    n_cal, n_test = cal["n_queries"]
    name = "provenance_pvalues_qq.png"
    pvalues.qq_plot(
        cal["pvalues"],
        str(out / name),
        title=f"Unrelated pairs, conformal p-values\n({n_test} test vs {n_cal} calibration queries)",
    )
    return name
