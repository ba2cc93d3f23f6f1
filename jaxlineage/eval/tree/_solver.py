"""The maximum spanning arborescence (Chu-Liu / Edmonds): networkx's and a dense numpy one.

Part of :mod:`jaxlineage.eval.tree`, which re-exports the public names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxlineage.eval.tree._common import Solver, TreeError, _as_solver, _check_square, _check_vector

# ----------------------------------------------------------------------------
# Maximum spanning arborescence.


def _find_cycle(parent: np.ndarray) -> list[int] | None:
    """One cycle of the functional graph ``b -> parent[b]`` (``-1`` ends a path), or None."""
    state = np.zeros(parent.size, np.int8)  # 0 new, 1 on the current walk, 2 done
    for start in range(parent.size):
        walk, n = [], start
        while n >= 0 and state[n] == 0:
            state[n] = 1
            walk.append(n)
            n = parent[n]
        if n >= 0 and state[n] == 1:
            return walk[walk.index(n) :]
        state[walk] = 2
    return None


def _dense_branching(w: np.ndarray, root_w: np.ndarray) -> np.ndarray:
    """Chu-Liu / Edmonds on a dense matrix with a virtual root; returns parents (``-1`` = root).

    Each step takes every node's best incoming edge; if they form a cycle ``C``,
    ``C`` is contracted into one node whose incoming weights are
    ``w[i, j] - w[parent(j), j]`` (the gain of entering ``C`` at ``j``) and
    outgoing weights ``max_{k in C} w[k, j]``; the contracted problem's answer is
    expanded back by breaking ``C`` where the chosen edge enters it.
    """
    p = w.shape[0]
    cur = np.full((p + 1, p + 1), -np.inf)
    cur[:p, :p] = np.where(np.isfinite(w), w, -np.inf)
    cur[p, :p] = root_w
    np.fill_diagonal(cur, -np.inf)
    root = p
    levels = []
    while True:
        if np.any(np.all(np.isneginf(np.delete(cur, root, axis=1)), axis=0)):
            raise TreeError("no spanning forest: a model has no finite incoming edge")
        parent = np.argmax(cur, axis=0)
        parent[root] = -1
        cycle = _find_cycle(parent)
        if cycle is None:
            break
        n = cur.shape[0]
        in_c = np.zeros(n, bool)
        in_c[cycle] = True
        keep = np.flatnonzero(~in_c)  # new index k <-> old index keep[k]; the cycle becomes len(keep)
        m = keep.size
        sub = cur[np.ix_(cycle, keep)]  # cycle -> kept
        out_src = np.asarray(cycle)[np.argmax(sub, axis=0)]
        gain = cur[np.ix_(keep, cycle)] - cur[parent[cycle], cycle][None, :]  # kept -> cycle, per entry point
        in_tgt = np.asarray(cycle)[np.argmax(gain, axis=1)]
        nxt = np.full((m + 1, m + 1), -np.inf)
        nxt[:m, :m] = cur[np.ix_(keep, keep)]
        nxt[m, :m] = sub.max(axis=0)
        nxt[:m, m] = gain.max(axis=1)
        levels.append((keep, np.asarray(cycle), parent.copy(), out_src, in_tgt))
        cur = nxt
        root = int(np.flatnonzero(keep == root)[0])
    for keep, cycle, parent_old, out_src, in_tgt in reversed(levels):
        m = keep.size
        expanded = np.full(m + cycle.size, -1)
        for k in range(m):
            q = parent[k]
            expanded[keep[k]] = -1 if q < 0 else (out_src[k] if q == m else keep[q])
        expanded[cycle] = parent_old[cycle]
        entering = parent[m]
        expanded[in_tgt[entering]] = keep[entering]
        parent = expanded
    out = parent[:p].copy()
    out[out == p] = -1
    return out


def _branching(w: np.ndarray, root_w: np.ndarray, solver: Solver = Solver.NETWORKX) -> np.ndarray:
    """One Edmonds run over the models and a virtual root ``P``; returns parents (``-1`` = root)."""
    if solver is Solver.DENSE:
        return _dense_branching(w, root_w)
    import networkx as nx
    from networkx.algorithms.tree import branchings

    p = w.shape[0]
    g = nx.DiGraph()
    g.add_nodes_from(range(p + 1))
    a_idx, b_idx = np.nonzero(np.isfinite(w))
    g.add_weighted_edges_from(zip(a_idx.tolist(), b_idx.tolist(), w[a_idx, b_idx].tolist()))
    g.add_weighted_edges_from((p, b, float(root_w[b])) for b in range(p))
    t = branchings.maximum_spanning_arborescence(g, attr="weight", preserve_attrs=False)
    parents = np.full(p, -1)
    for a, b in t.edges():
        parents[b] = -1 if a == p else a
    return parents


def arborescence_weight(weights: Any, parents: Sequence[int], root_scores: Any = 0.0) -> float:
    """Total weight of a forest: ``sum W[parent(b), b]`` plus ``root_scores[b]`` for each root ``b``."""
    w = np.asarray(weights, np.float64)
    r = np.broadcast_to(np.asarray(root_scores, np.float64), (w.shape[0],))
    return float(sum(r[b] if a < 0 else w[a, b] for b, a in enumerate(parents)))


def _num_roots(parents: np.ndarray) -> int:
    return int(np.sum(parents < 0))


def max_arborescence(
    weights: Any,
    *,
    root_scores: Any = None,
    num_roots: int | None = None,
    solver: Solver | str = Solver.NETWORKX,
    max_iter: int = 100,
) -> np.ndarray:
    r"""The maximum-weight spanning forest of directed edges (Chu-Liu / Edmonds).

    A virtual root ``R`` gets an edge ``R -> b`` of weight ``r_b`` to every model
    (its *root score*); the maximum spanning arborescence of the models plus
    ``R`` (:func:`networkx.algorithms.tree.branchings.maximum_spanning_arborescence`)
    is the forest

    .. math:: \max_{\text{parent}} \sum_{b \text{ not a root}} W[\text{parent}(b), b]
              + \sum_{b \text{ a root}} r_b

    whose roots are ``R``'s children.

    * ``num_roots = k``: exactly ``k`` roots. A constant ``c`` is added to every
      root score and bisected until the optimum has ``k`` roots. The optimum with
      exactly ``k`` roots is a concave function of ``k`` (root-degree-constrained
      arborescences are a matroid intersection), so for weights in general
      position some ``c`` gives it, and the answer is exact; ``k = 1`` uses a
      constant below every forest's weight (exact for any weights).
    * otherwise ``root_scores`` (a scalar threshold or ``[P]``) as given; ``None``
      means a single tree.

    Args:
      weights: ``[P, P]``, ``W[a, b]`` for the edge ``a -> b``; the diagonal is
        ignored; ``-inf`` forbids an edge.
      root_scores: a scalar or ``[P]`` (default 0 with ``num_roots``).
      num_roots: the number of roots if known (``1 <= k <= P``).
      solver: :class:`Solver` (default: networkx's Edmonds).
      max_iter: bisection steps for ``num_roots``.

    Returns:
      ``[P]`` int: each model's parent index, ``-1`` for roots.

    Raises:
      TreeError: bad weights (shape, NaN, +inf, fewer than 2 models), a bad
        ``num_roots``, no forest with ``num_roots`` roots found (ties, or edges
        forbidden so that too few trees are possible).
    """
    w = _check_square(weights, "weights", allow_neg_inf=True)
    solver = _as_solver(solver)
    p = w.shape[0]
    finite = w[np.isfinite(w)]
    lo_w, hi_w = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    # Below any forest's weight difference: any forest with one root less is better.
    big = (hi_w - lo_w + 1.0) * (p + 1) + abs(hi_w) + abs(lo_w)
    if root_scores is None:
        base = np.zeros(p)
    elif np.ndim(root_scores) == 0:
        base = np.full(p, float(root_scores))
        if not np.isfinite(base).all():
            raise TreeError(f"root_scores must be finite; got {root_scores!r}")
    else:
        base = _check_vector(root_scores, p, "root_scores")
    if num_roots is None:
        if root_scores is None:
            num_roots = 1
        else:
            return _branching(w, base, solver)
    if not isinstance(num_roots, (int, np.integer)) or not 1 <= num_roots <= p:
        raise TreeError(f"num_roots must be an int in [1, {p}]; got {num_roots!r}")
    if num_roots == 1:
        # Every root after the first costs `big`, so the best forest is a tree when a spanning tree exists.
        parents = _branching(w, base - big - float(np.ptp(base)), solver)
        if _num_roots(parents) != 1:
            raise TreeError("no spanning tree exists: the finite edges cannot reach every model from one root")
        return parents
    # With every edge finite, c <= min W - max r gives one root and c >= max W - min r gives P
    # roots (ties aside); the number of roots grows with c, so bisect. The first step tries the c
    # that makes the k models with the weakest best parent (relative to their root score) roots.
    lo, hi = lo_w - float(base.max()) - 1.0, hi_w - float(base.min()) + 1.0
    slack = np.sort(np.max(np.where(np.isfinite(w), w, -np.inf), axis=0) - base)
    slack = slack[np.isfinite(slack)]
    c = float(0.5 * (slack[num_roots - 1] + slack[num_roots])) if num_roots < slack.size else 0.5 * (lo + hi)
    best = None
    for _ in range(max_iter):
        parents = _branching(w, base + c, solver)
        r = _num_roots(parents)
        if r == num_roots:
            return parents
        if best is None or abs(r - num_roots) < abs(_num_roots(best) - num_roots):
            best = parents
        if r < num_roots:
            lo = c
        else:
            hi = c
        if hi - lo <= 1e-12 * max(1.0, abs(lo), abs(hi)):
            break
        c = 0.5 * (lo + hi)
    raise TreeError(
        f"found no forest with exactly {num_roots} roots (closest: {_num_roots(best)} roots);"
        " ties in the weights or forbidden edges prevent it; break ties or pass root_scores"
    )
