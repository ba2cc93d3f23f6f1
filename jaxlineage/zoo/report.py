"""Zoo reports: the per-group summary table and a drawing of the lineage graph, and the CLI.

``python -m jaxlineage.zoo --spec provenance_quick --workdir /tmp/pq`` builds (or resumes) the zoo,
prints one row per group (models, test accuracy range, fidelity range) and, with matplotlib and
networkx installed, writes ``lineage.png`` into the workdir.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import time
from collections.abc import Sequence

from jaxlineage.zoo._base import log
from jaxlineage.zoo.build import Zoo, build

__all__ = ["draw_graph", "format_summary", "main"]


def _rng(s: dict | None) -> str:
    return "-" if s is None else f"{s['min']:.3f}-{s['max']:.3f}"


def format_summary(zoo: Zoo) -> str:
    """A Markdown table, one row per group: op, kind, task, arch, models (kept / stored),
    test accuracy range and fidelity-to-parent range of the kept models."""
    lines = ["| group | op | kind | task | arch | models (kept/all) | test acc | fidelity |",
             "|---|---|---|---|---|---|---|---|"]
    for r in zoo.group_summary():
        lines.append(f"| {r['group']} | {r['op']} | {r['kind']} | {r['task']} | {r['arch']} | "
                     f"{r['kept']}/{r['n']} | {_rng(r['acc'])} | {_rng(r['fidelity'])} |")
    return "\n".join(lines)


def draw_graph(zoo: Zoo, path: str | pathlib.Path, *, max_nodes: int = 600) -> pathlib.Path | None:
    """Draws the model-level lineage graph (one node per kept model, coloured by operation, one
    column per generation) as a PNG; returns the path, or ``None`` if matplotlib or networkx is missing.

    Args:
      zoo: a built zoo.
      path: the PNG to write.
      max_nodes: draw only the first ``max_nodes`` kept models (large zoos are unreadable anyway).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import networkx as nx
    except ImportError:
        log.warning("zoo: matplotlib or networkx missing; no lineage drawing")
        return None
    recs = [r for r in zoo.records if r.kept][:max_nodes]
    ids = {r.id for r in recs}
    g = nx.DiGraph()
    for r in recs:
        g.add_node(r.id, layer=r.generation)
    g.add_edges_from((r.parent_id, r.id) for r in recs if r.parent_id in ids)
    ops = sorted({r.op for r in recs})
    cmap = plt.get_cmap("tab10")
    colour = {op: cmap(i % 10) for i, op in enumerate(ops)}
    pos = nx.multipartite_layout(g, subset_key="layer", align="vertical")
    fig, ax = plt.subplots(figsize=(10, max(4, len(recs) * 0.06)))
    nx.draw_networkx_edges(g, pos, ax=ax, arrows=False, alpha=0.3, width=0.5)
    for op in ops:
        nodes = [r.id for r in recs if r.op == op]
        nx.draw_networkx_nodes(g, pos, nodelist=nodes, node_color=[colour[op]], node_size=18, ax=ax, label=op)
    ax.legend(loc="upper left", fontsize=8, markerscale=1.5)
    ax.set_title(f"zoo {zoo.spec.name!r}: {len(recs)} kept models, generations left to right")
    ax.axis("off")
    path = pathlib.Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m jaxlineage.zoo --spec NAME --workdir DIR``: build (or resume) a zoo, print its summary, draw it."""
    from jaxlineage.zoo.specs import SPECS

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--spec", default="quick", choices=sorted(SPECS))
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--no-plot", action="store_true", help="do not draw lineage.png")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    t0 = time.time()
    z = build(SPECS[args.spec], args.workdir)
    print(f"{z} in {time.time() - t0:.0f}s")
    print(format_summary(z))
    if not args.no_plot:
        out = draw_graph(z, pathlib.Path(args.workdir) / "lineage.png")
        if out is not None:
            print(f"lineage graph: {out}")
