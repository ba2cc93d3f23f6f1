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
    lines = [
        "| group | op | kind | task | arch | models (kept/all) | test acc | fidelity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in zoo.group_summary():
        lines.append(
            f"| {r['group']} | {r['op']} | {r['kind']} | {r['task']} | {r['arch']} | "
            f"{r['kept']}/{r['n']} | {_rng(r['acc'])} | {_rng(r['fidelity'])} |"
        )
    return "\n".join(lines)


def draw_graph(zoo: Zoo, path: str | pathlib.Path) -> pathlib.Path | None:
    """Draws the zoo's graph of groups as a PNG: one node per group (area ~ kept models, colour =
    operation, label = name, operation and count), an edge from each source group, one column per
    generation. Returns the path, or ``None`` if matplotlib or networkx is missing.

    Args:
      zoo: a built zoo.
      path: the PNG to write.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import networkx as nx
    except ImportError:
        log.warning("zoo: matplotlib or networkx missing; no lineage drawing")
        return None
    spec = zoo.graph_spec
    rows = {r["group"]: r for r in zoo.group_summary()}

    # Order each column by its groups' root group, so that edges from one root stay together.
    def root(name):
        g = spec.group(name)
        return name if g.source is None else root(g.source)

    roots = [g.name for g in spec.order() if g.source is None]
    ordered = sorted(spec.groups, key=lambda g: (spec.generation(g.name), roots.index(root(g.name))))
    graph = nx.DiGraph()
    for g in ordered:
        graph.add_node(g.name, layer=spec.generation(g.name))
    graph.add_edges_from((g.source, g.name) for g in spec.groups if g.source is not None)
    ops = sorted({g.op for g in spec.groups})
    cmap = plt.get_cmap("tab10")
    colour = {op: cmap(i % 10) for i, op in enumerate(ops)}
    # Columns by generation, rows in ``ordered`` order, centred (networkx's multipartite layout
    # does not keep the order).
    columns: dict[int, list[str]] = {}
    for g in ordered:
        columns.setdefault(spec.generation(g.name), []).append(g.name)
    pos = {n: (float(k), (len(col) - 1) / 2.0 - i) for k, col in columns.items() for i, n in enumerate(col)}
    height = max(4.0, 0.3 * max(len(col) for col in columns.values()))
    fig, ax = plt.subplots(figsize=(11, height))
    nx.draw_networkx_edges(graph, pos, ax=ax, arrows=True, arrowsize=6, alpha=0.35, width=0.6)
    for op in ops:
        nodes = [g.name for g in ordered if g.op == op]
        sizes = [40 + 12 * rows[n]["kept"] for n in nodes]
        nx.draw_networkx_nodes(graph, pos, nodelist=nodes, node_color=[colour[op]], node_size=sizes, ax=ax, label=op)
    for g in ordered:
        x, y = pos[g.name]
        ax.annotate(
            f"{g.name} ({rows[g.name]['kept']})",
            (x, y),
            xytext=(6, 0),
            textcoords="offset points",
            fontsize=7,
            va="center",
        )
    ax.legend(loc="upper left", fontsize=8, title="operation", title_fontsize=8)
    ax.set_title(
        f"zoo {zoo.spec.name!r}: {len(spec.groups)} groups, {sum(r['kept'] for r in rows.values())} kept "
        "models (in brackets); sources left, derivations right"
    )
    ax.axis("off")
    ax.margins(x=0.25)
    path = pathlib.Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m jaxlineage.zoo --spec NAME --workdir DIR``: build (or resume) a zoo, print its summary, draw it."""
    from jaxlineage.zoo.specs import SPECS

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--spec", default="quick", type=str.lower, choices=sorted(SPECS), help="a spec name (any case)")
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
