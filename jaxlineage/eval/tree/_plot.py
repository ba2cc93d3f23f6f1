"""The recovered forest drawn beside the true one (matplotlib, imported only when drawing).

Part of :mod:`jaxlineage.eval.tree`, which re-exports the public names.
"""

from __future__ import annotations

from typing import Any

from jaxlineage.eval.tree._accuracy import tree_accuracy
from jaxlineage.graph import LineageGraph

# ----------------------------------------------------------------------------
# Plot.


def _layered_positions(graph: LineageGraph) -> dict[str, tuple[float, float]]:
    """x = leaf order of a depth-first walk (children in insertion order), y = -depth."""
    kids: dict[str, list[str]] = {n: [] for n in graph.ids}
    for a, b in graph.edges():
        if graph.parents(b)[0] == a:  # draw a merge under its first parent only
            kids[a].append(b)
    pos: dict[str, tuple[float, float]] = {}
    nxt = [0.0]

    def place(n: str, depth: int) -> float:
        if not kids[n]:
            x = nxt[0]
            nxt[0] += 1.0
        else:
            xs = [place(c, depth + 1) for c in kids[n]]
            x = 0.5 * (xs[0] + xs[-1])
        pos[n] = (x, -float(depth))
        return x

    for r in graph.roots():
        place(r, 0)
        nxt[0] += 0.5  # a little space between trees
    return pos


def tree_plot(
    true: LineageGraph, recovered: LineageGraph, path: Any, *, title: str | None = None, labels: bool | None = None
) -> None:
    """Draws the true forest (left) and the recovered one (right) as a PNG.

    Both panels place the models where the true forest has them, so a wrong edge
    crosses the layout. Recovered edges: black when right, orange when reversed,
    red when absent from the truth; recovered roots are drawn as squares.

    Args:
      true, recovered: graphs over the same models.
      path: the PNG file to write.
      title: a figure title (default: the three accuracies).
      labels: draw model ids (default: only with at most 30 models).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import networkx as nx
    from matplotlib.lines import Line2D

    acc = tree_accuracy(true, recovered)
    pos = _layered_positions(true)
    labels = len(true) <= 30 if labels is None else labels
    e_true = set(true.edges())
    width = max(6.0, min(24.0, 0.18 * len(true) + 4))
    fig, axes = plt.subplots(1, 2, figsize=(2 * width, 6))
    for ax, g, name in ((axes[0], true, "true"), (axes[1], recovered, "recovered")):
        dg = nx.DiGraph()
        dg.add_nodes_from(g.ids)
        dg.add_edges_from(g.edges())
        roots = set(g.roots())
        node_size = 120 if len(g) <= 30 else 40
        nx.draw_networkx_nodes(
            dg, pos, ax=ax, nodelist=[n for n in g.ids if n not in roots], node_size=node_size, node_color="#9ecae1"
        )
        nx.draw_networkx_nodes(
            dg,
            pos,
            ax=ax,
            nodelist=[n for n in g.ids if n in roots],
            node_size=2 * node_size,
            node_color="#3182bd",
            node_shape="s",
        )
        if g is true:
            colors = ["black"] * dg.number_of_edges()
        else:
            colors = ["black" if e in e_true else "orange" if (e[1], e[0]) in e_true else "red" for e in dg.edges()]
        nx.draw_networkx_edges(
            dg, pos, ax=ax, edge_color=colors, arrows=True, arrowsize=8, width=1.0, node_size=node_size
        )
        if labels:
            nx.draw_networkx_labels(dg, pos, ax=ax, font_size=6)
        ax.set_title(f"{name}: {len(g.edges())} edges, {len(roots)} roots")
        ax.set_axis_off()
    axes[1].legend(
        handles=[
            Line2D([], [], color="black", label="right"),
            Line2D([], [], color="orange", label="reversed"),
            Line2D([], [], color="red", label="wrong"),
        ],
        loc="lower right",
        fontsize=8,
    )
    fig.suptitle(title or f"directed {acc.directed:.1%}, undirected {acc.undirected:.1%}, roots {acc.root:.1%}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
