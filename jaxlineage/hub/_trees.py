"""Reading a permutation group's leaves out of a variable tree, shared by the numpy aligner
(:mod:`jaxlineage.hub.search`) and the mesh path (:mod:`jaxlineage.hub.sharded`), which sits above it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxlineage import permutations as perm_lib

PyTree = Any


def _get(tree: PyTree, path: Sequence[str]) -> np.ndarray:
    for k in path:
        tree = tree[k]
    return tree


def _producing_kernel(
    axes: Sequence[perm_lib.PermAxis], tree: PyTree, *, stacked: bool = False
) -> perm_lib.PermAxis | None:
    """The axis of a permutation group that its units are matched by: a ``kernel`` whose last axis holds them
    (``tree`` holds one model, or with ``stacked`` models along a leading axis); ``None`` if the group has none."""
    last = lambda a: np.ndim(_get(tree, a.path)) - 1 - int(stacked)  # noqa: E731
    return next((a for a in axes if a.path[-1] == "kernel" and a.axis == last(a)), None)
