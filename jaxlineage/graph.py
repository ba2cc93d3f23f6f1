"""Lineage graphs: which model was derived from which.

A :class:`LineageGraph` is a directed acyclic graph over model ids. An edge
``a -> b`` says that ``b`` was made from ``a`` by one operation (fine-tuning,
pruning, distillation, permutation, ...). A model made from nothing (trained
from scratch) is a *root*; roots may carry an *initialisation key*, so that two
roots trained from the same random initialisation are known to share it.

The graph knows nothing of parameters or training: zoos build graphs
(:mod:`jaxlineage.zoo`), the evaluation layer asks them for ground truth, and
tree recovery produces them.

Example::

    >>> g = LineageGraph.from_parents({"p": None, "c": "p", "g": "c", "q": None})
    >>> g.ancestors("g")
    ('c', 'p')
    >>> g.relation("p", "g")
    <Relation.ANCESTOR: 'ancestor'>
    >>> g.relation("q", "g")
    <Relation.UNRELATED: 'unrelated'>
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from typing import Any

from jaxlineage.errors import JaxlineageError

__all__ = ["GraphError", "LineageGraph", "Relation"]


class GraphError(JaxlineageError):
    """A lineage graph is malformed (unknown node, cycle); the message names the node."""


class Relation(enum.Enum):
    """How model ``a`` relates to model ``b`` (read ``relation(a, b)`` as "a is b's ...").

    The first that holds, in this order:

    * ``SELF``: the same model.
    * ``PARENT``: ``a`` is a direct parent of ``b``.
    * ``CHILD``: ``b`` is a direct parent of ``a``.
    * ``ANCESTOR``: ``a`` is an ancestor of ``b`` two or more edges up.
    * ``DESCENDANT``: ``b`` is an ancestor of ``a`` two or more edges up.
    * ``SIBLING``: ``a`` and ``b`` share a direct parent.
    * ``SHARED_INIT``: neither descends from the other, but they share an
      ancestor, or their roots share an initialisation key (e.g. two models
      trained from scratch from the same random initialisation, or their
      descendants).
    * ``UNRELATED``: none of the above.
    """

    SELF = "self"
    PARENT = "parent"
    CHILD = "child"
    ANCESTOR = "ancestor"
    DESCENDANT = "descendant"
    SIBLING = "sibling"
    SHARED_INIT = "shared_init"
    UNRELATED = "unrelated"

    @property
    def is_lineal(self) -> bool:
        """Whether one model descends from the other (or they are the same)."""
        return self in (Relation.SELF, Relation.PARENT, Relation.CHILD, Relation.ANCESTOR, Relation.DESCENDANT)

    @property
    def is_related(self) -> bool:
        """Whether the two models share any weights' history (anything but ``UNRELATED``)."""
        return self is not Relation.UNRELATED


@dataclasses.dataclass(frozen=True)
class LineageGraph:
    """An immutable DAG of model ids with parent links and root initialisation keys.

    Build it with :meth:`from_parents`; the constructor expects already
    validated, normalised input.

    Attributes:
      parent_map: ``{id: (parent ids...)}`` for every node, in insertion order;
        roots map to ``()``.
      init_keys: ``{root id: key}``; roots with equal keys share an initialisation.
    """

    parent_map: Mapping[str, tuple[str, ...]]
    init_keys: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    # ------------------------------------------------------------------ building

    @classmethod
    def from_parents(
        cls,
        parents: Mapping[str, str | Iterable[str] | None],
        *,
        init_keys: Mapping[str, Any] | None = None,
    ) -> LineageGraph:
        """A graph from ``{id: parent id | (parent ids) | None}``.

        Args:
          parents: every node with its parent(s); ``None`` or ``()`` for a root.
          init_keys: optional ``{root id: hashable key}``; roots with equal keys
            share an initialisation (relation ``SHARED_INIT``). Keys of non-roots
            are ignored.

        Raises:
          GraphError: a parent that is not a node, a node that is its own parent,
            or a cycle (the message names a node on it).
        """
        norm: dict[str, tuple[str, ...]] = {}
        for node, ps in parents.items():
            if ps is None:
                ps = ()
            elif isinstance(ps, str):
                ps = (ps,)
            ps = tuple(dict.fromkeys(ps))
            norm[str(node)] = ps
        for node, ps in norm.items():
            for p in ps:
                if p not in norm:
                    raise GraphError(f"model {node!r} names parent {p!r}, which is not in the graph")
                if p == node:
                    raise GraphError(f"model {node!r} is its own parent")
        keys = {k: v for k, v in (init_keys or {}).items() if k in norm and not norm[k]}
        g = cls(norm, keys)
        g._check_acyclic()
        return g

    def _check_acyclic(self) -> None:
        state: dict[str, int] = {}  # 1 = on the stack, 2 = done
        for start in self.parent_map:
            if state.get(start):
                continue
            stack = [(start, iter(self.parent_map[start]))]
            state[start] = 1
            while stack:
                node, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    state[node] = 2
                    stack.pop()
                elif state.get(nxt) == 1:
                    raise GraphError(f"the lineage graph has a cycle through model {nxt!r}")
                elif not state.get(nxt):
                    state[nxt] = 1
                    stack.append((nxt, iter(self.parent_map[nxt])))

    # ------------------------------------------------------------------ queries

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self.parent_map)

    def __len__(self) -> int:
        return len(self.parent_map)

    def __contains__(self, node: object) -> bool:
        return node in self.parent_map

    def _check(self, node: str) -> str:
        if node not in self.parent_map:
            raise GraphError(f"no model {node!r} in the lineage graph")
        return node

    def parents(self, node: str) -> tuple[str, ...]:
        """The direct parents of ``node`` (``()`` for a root)."""
        return self.parent_map[self._check(node)]

    def parent(self, node: str) -> str | None:
        """The single direct parent of ``node``, or ``None`` for a root.

        Raises:
          GraphError: ``node`` has several parents (use :meth:`parents`).
        """
        ps = self.parents(node)
        if len(ps) > 1:
            raise GraphError(f"model {node!r} has {len(ps)} parents {ps}; use parents()")
        return ps[0] if ps else None

    def children(self, node: str) -> tuple[str, ...]:
        """The models with ``node`` among their direct parents, in insertion order."""
        self._check(node)
        return tuple(n for n, ps in self.parent_map.items() if node in ps)

    def ancestors(self, node: str) -> tuple[str, ...]:
        """All ancestors of ``node``, nearest first (breadth first), each once."""
        out: dict[str, None] = {}
        frontier = list(self.parents(node))
        while frontier:
            nxt = []
            for p in frontier:
                if p not in out:
                    out[p] = None
                    nxt.extend(self.parent_map[p])
            frontier = nxt
        return tuple(out)

    def descendants(self, node: str) -> tuple[str, ...]:
        """All descendants of ``node``, nearest first (breadth first), each once."""
        kids: dict[str, list[str]] = {n: [] for n in self.parent_map}
        for n, ps in self.parent_map.items():
            for p in ps:
                kids[p].append(n)
        out: dict[str, None] = {}
        frontier = list(kids[self._check(node)])
        while frontier:
            nxt = []
            for c in frontier:
                if c not in out:
                    out[c] = None
                    nxt.extend(kids[c])
            frontier = nxt
        return tuple(out)

    def roots(self, node: str | None = None) -> tuple[str, ...]:
        """The roots that ``node`` descends from (itself if a root); all roots if ``node`` is None."""
        if node is None:
            return tuple(n for n, ps in self.parent_map.items() if not ps)
        if not self.parents(node):
            return (node,)
        return tuple(a for a in self.ancestors(node) if not self.parent_map[a])

    def root(self, node: str) -> str:
        """The single root ``node`` descends from.

        Raises:
          GraphError: ``node`` descends from several roots (use :meth:`roots`).
        """
        rs = self.roots(node)
        if len(rs) != 1:
            raise GraphError(f"model {node!r} descends from {len(rs)} roots {rs}; use roots()")
        return rs[0]

    def generation(self, node: str) -> int:
        """The number of edges on the longest path from a root to ``node`` (0 for a root)."""
        memo: dict[str, int] = {}

        def gen(n: str) -> int:
            if n not in memo:
                ps = self.parent_map[n]
                memo[n] = 0 if not ps else 1 + max(gen(p) for p in ps)
            return memo[n]

        return gen(self._check(node))

    def is_ancestor(self, a: str, b: str) -> bool:
        """Whether ``a`` is an ancestor of ``b`` (at any distance; not ``a == b``)."""
        self._check(a)
        return a in self.ancestors(b)

    def relation(self, a: str, b: str) -> Relation:
        """How ``a`` relates to ``b`` ("``a`` is ``b``'s ..."); see :class:`Relation`."""
        self._check(a), self._check(b)
        if a == b:
            return Relation.SELF
        if a in self.parent_map[b]:
            return Relation.PARENT
        if b in self.parent_map[a]:
            return Relation.CHILD
        anc_a, anc_b = set(self.ancestors(a)), set(self.ancestors(b))
        if a in anc_b:
            return Relation.ANCESTOR
        if b in anc_a:
            return Relation.DESCENDANT
        if set(self.parent_map[a]) & set(self.parent_map[b]):
            return Relation.SIBLING
        if anc_a & anc_b:
            return Relation.SHARED_INIT
        keys_a = {self.init_keys[r] for r in self.roots(a) if r in self.init_keys}
        keys_b = {self.init_keys[r] for r in self.roots(b) if r in self.init_keys}
        if keys_a & keys_b:
            return Relation.SHARED_INIT
        return Relation.UNRELATED

    def edges(self) -> list[tuple[str, str]]:
        """Every edge as ``(parent, child)``, in node insertion order."""
        return [(p, n) for n, ps in self.parent_map.items() for p in ps]

    # ------------------------------------------------------------------ (de)serialisation

    def to_json(self) -> dict:
        return {
            "parents": {n: list(ps) for n, ps in self.parent_map.items()},
            "init_keys": {n: k for n, k in self.init_keys.items()},
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LineageGraph:
        return cls.from_parents(d["parents"], init_keys=d.get("init_keys") or {})
