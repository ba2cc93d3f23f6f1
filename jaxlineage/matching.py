r"""Matching hidden units between two models: one Hungarian solver, column matching and weight matching.

Every place in jaxlineage that pairs the units of one model with the units of another goes through
:func:`hungarian` (a linear assignment, :func:`scipy.optimize.linear_sum_assignment`):

* :func:`match_columns`: the permutation of ``b``'s columns that maximises the summed correlation
  with ``a``'s columns (one layer's units matched by their incoming weights; used by
  :mod:`jaxlineage.eval.pvalues` and :mod:`jaxlineage.hub.search`);
* :func:`weight_matching`: git re-basin's weight matching over a whole permutation spec
  (coordinate descent, one assignment per spec entry per sweep; used by
  :func:`jaxlineage.eval.tree.aligned_weight_scores`).

Permutations follow one convention: ``perm[i]`` is the unit of ``b`` matched to unit ``i`` of
``a``, so ``np.take(b, perm, axis)`` puts ``b``'s units in ``a``'s order.

References:
  Kuhn, H. W. (1955). The Hungarian method for the assignment problem. Naval Research
  Logistics Quarterly 2. (SciPy solves it by Crouse's shortest augmenting path, 2016.)
  Ainsworth, S., Hayase, J. & Srinivasa, S. (2023). Git Re-Basin: Merging Models modulo
  Permutation Symmetries. ICLR. Alg. 1 (weight matching).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxlineage.errors import JaxlineageError

__all__ = ["MatchingError", "hungarian", "match_columns", "tile_index", "weight_matching"]


class MatchingError(JaxlineageError):
    """A score matrix or a pair of weights that cannot be matched; the message names the shapes."""


def hungarian(scores: Any, *, maximize: bool = True) -> np.ndarray:
    r"""The assignment of rows to distinct columns with the largest (or smallest) summed score.

    .. math:: \hat\pi = \arg\max_{\pi\ \text{injective}} \sum_i S[i, \pi(i)]

    Exact (a linear assignment: :func:`scipy.optimize.linear_sum_assignment`), in
    ``O(n^2 m)`` time for an ``n x m`` matrix.

    Args:
      scores: ``[n, m]`` finite scores, ``n <= m``.
      maximize: maximise the summed score (the default) or minimise it (a cost).

    Returns:
      ``[n]`` int array ``perm``: row ``i`` is assigned column ``perm[i]`` (distinct columns;
      a permutation of ``range(n)`` when the matrix is square).

    Raises:
      MatchingError: not a 2-D matrix, more rows than columns, or a non-finite score.

    Example:
      >>> hungarian(np.array([[1.0, 5.0], [4.0, 1.0]])).tolist()
      [1, 0]
    """
    from scipy.optimize import linear_sum_assignment

    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] > s.shape[1]:
        raise MatchingError(f"hungarian: needs a [n, m] score matrix with n <= m; got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise MatchingError(f"hungarian: the {s.shape} score matrix has non-finite entries")
    rows, cols = linear_sum_assignment(s, maximize=maximize)
    perm = np.empty(s.shape[0], dtype=np.int64)
    perm[rows] = cols
    return perm


def match_columns(a: Any, b: Any) -> np.ndarray:
    r"""The permutation of ``b``'s columns that best matches ``a``'s: max summed correlation.

    .. math:: \hat\pi = \arg\max_\pi \sum_i \rho(a_{:, i},\ b_{:, \pi(i)})

    with :math:`\rho` the Pearson correlation of two columns (a constant column correlates 0
    with everything). Used to match one layer's units by their incoming weights.

    Args:
      a: ``[rows, units]`` one model's weights (a unit per column).
      b: ``[rows, units]`` the other model's, same shape.

    Returns:
      ``[units]`` ``perm``: column ``perm[i]`` of ``b`` is matched to column ``i`` of ``a``.

    Raises:
      MatchingError: the shapes differ or are not 2-D.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise MatchingError(f"match_columns: needs two [rows, units] matrices of one shape; got {a.shape}, {b.shape}")
    a = a - a.mean(0)
    b = b - b.mean(0)
    a = a / (np.linalg.norm(a, axis=0) + 1e-12)
    b = b / (np.linalg.norm(b, axis=0) + 1e-12)
    return hungarian(a.T @ b)


def tile_index(perm: np.ndarray, units: int, tile: int) -> np.ndarray:
    """The index that applies a permutation of ``units`` to an axis holding ``tile`` blocks of them.

    An axis of ``tile * units`` entries indexed ``block * units + unit`` (a conv layer's channels
    flattened with its positions) is permuted by ``np.take(x, tile_index(perm, units, tile), axis)``.
    """
    perm = np.asarray(perm)
    return (np.arange(tile)[:, None] * units + perm[None, :]).ravel() if tile > 1 else perm


def _unit_major(x: np.ndarray, axis: int, units: int, tile: int) -> np.ndarray:
    """``x`` as ``[units, rest]``: row ``u`` holds every entry of unit ``u`` on ``axis`` (all its tiles)."""
    x = np.moveaxis(x, axis, 0)
    x = x.reshape((tile, units) + x.shape[1:])
    return np.moveaxis(x, 1, 0).reshape(units, -1)


def _permute_leaf(x: np.ndarray, axes: Sequence, perms: list, skip: int | None = None) -> np.ndarray:
    for axis, e, units, tile in axes:
        if e != skip:
            x = np.take(x, tile_index(perms[e], units, tile), axis=axis)
    return x


def _entry_scores(a_rows: dict, b: list, leaf_axes: Sequence, terms: list, e: int, fixed: np.ndarray, perms: list):
    """Entry ``e``'s assignment scores: ``fixed`` plus its ``terms`` with ``b``'s other axes permuted."""
    c = fixed.copy()
    for li, axis, u, tile in terms:
        y = _permute_leaf(b[li], leaf_axes[li], perms, skip=e)
        c += a_rows[(li, axis)] @ _unit_major(y, axis, u, tile).T
    return c


def weight_matching(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    leaf_axes: Sequence[Sequence[tuple[int, int, int, int]]],
    units: Sequence[int],
    *,
    max_sweeps: int = 100,
) -> tuple[list[np.ndarray], float, int, bool]:
    r"""Git re-basin weight matching of model ``b`` onto model ``a``.

    Coordinate descent over the spec's entries: for each entry in turn, the others fixed, the
    permutation maximising :math:`\sum_{\text{axes}} \langle a, \pi(b) \rangle` is a linear
    assignment (:func:`hungarian`) over the entry's units; an entry's permutation changes only
    when the matched inner product strictly increases; a sweep that changes nothing ends it.
    Start: one pass in the spec's order using only the terms already determined (an entry's
    axes on leaves whose other permuted axes belong to entries not matched yet are left out,
    unless nothing else is left), instead of Alg. 1's identity, whose wrong downstream
    permutation can trap the first layer.

    Args:
      a: one model's leaves (float64 arrays, one model each).
      b: the other model's leaves, same shapes.
      leaf_axes: per leaf, its permuted axes as ``(axis, entry, units, tile)``: ``entry``
        indexes ``units``, the axis holds ``tile`` blocks of the entry's ``units``.
      units: per spec entry, its number of units.
      max_sweeps: at most this many sweeps over the entries.

    Returns:
      ``(perms, distance, sweeps, converged)``: per entry the permutation of ``b``'s units,
      the L2 distance of ``a`` and the permuted ``b``, the sweeps run, and whether the last
      sweep changed nothing (else ``max_sweeps`` stopped it).
    """
    n_entries = len(units)
    terms: list[list[tuple[int, int, int, int]]] = [[] for _ in range(n_entries)]  # (leaf, axis, units, tile)
    for li, axes in enumerate(leaf_axes):
        for axis, e, u, tile in axes:
            terms[e].append((li, axis, u, tile))
    a_rows = {(li, axis): _unit_major(a[li], axis, u, tile) for e in range(n_entries) for li, axis, u, tile in terms[e]}
    # Terms on leaves permuted by this entry alone do not change between sweeps.
    fixed = [np.zeros((u, u)) for u in units]
    moving: list[list[tuple[int, int, int, int]]] = [[] for _ in range(n_entries)]
    for e in range(n_entries):
        for li, axis, u, tile in terms[e]:
            if len(leaf_axes[li]) == 1:
                fixed[e] += a_rows[(li, axis)] @ _unit_major(b[li], axis, u, tile).T
            else:
                moving[e].append((li, axis, u, tile))
    perms = [np.arange(u) for u in units]
    done: set[int] = set()
    for e in range(n_entries):  # the start: only terms already determined
        use = [t for t in moving[e] if all(f in done for _, f, _, _ in leaf_axes[t[0]] if f != e)]
        if not use and len(moving[e]) == len(terms[e]):
            use = moving[e]
        perms[e] = hungarian(_entry_scores(a_rows, b, leaf_axes, use, e, fixed[e], perms))
        done.add(e)
    sweeps, converged = 0, False
    rows = [np.arange(u) for u in units]
    while sweeps < max_sweeps:
        sweeps += 1
        changed = False
        for e in range(n_entries):
            c = _entry_scores(a_rows, b, leaf_axes, moving[e], e, fixed[e], perms)
            col = hungarian(c)
            old, new = c[rows[e], perms[e]].sum(), c[rows[e], col].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[e] = col
                changed = True
        if not changed:
            converged = True
            break
    sq = sum(float(np.sum((x - _permute_leaf(y, axes, perms)) ** 2)) for x, y, axes in zip(a, b, leaf_axes))
    return perms, math.sqrt(sq), sweeps, converged
