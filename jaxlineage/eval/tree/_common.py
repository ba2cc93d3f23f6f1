"""Tree recovery's shared pieces: its error, the direction / order / solver enums and input checks.

Part of :mod:`jaxlineage.eval.tree`, which re-exports the public names.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxlineage import linearize
from jaxlineage.errors import JaxlineageError

PyTree = Any
Mode = linearize.Mode

#: MoTHer's weight of the direction term (their ``lambda = 0.3``, every experiment).
DEFAULT_STRENGTH = 0.3


class TreeError(JaxlineageError):
    """Tree recovery cannot run on its input; the message names the model, shape or entry."""


class Direction(enum.Enum):
    """How an edge's direction is decided (see :func:`edge_weights`).

    * ``NONE``: the score matrix's own asymmetry, ``W = S``. For symmetric
      scores (weight distance, PLAIN L1 / L2 / CKA) every direction ties and
      the arborescence picks one.
    * ``KURTOSIS``: MoTHer's rule. Each model has a weight-kurtosis statistic
      ``k`` (:func:`weight_kurtosis`); an edge against the expected order
      (:class:`KurtosisOrder`) is penalised.
    * ``TAYLOR``: the asymmetry of a Taylor-approximated score matrix ``D``
      (``FIRST_ORDER`` or ``LINEARIZED``): ``a -> b`` is the expected direction
      when ``D[a, b] > D[b, a]``, i.e. the first-order step from ``a`` toward
      ``b`` explains ``b`` better than the step from ``b`` explains ``a``.
    """

    NONE = "none"
    KURTOSIS = "kurtosis"
    TAYLOR = "taylor"


class KurtosisOrder(enum.Enum):
    """Which way weight kurtosis moves from parent to child.

    * ``DECREASING`` (default): the parent's kurtosis is higher. MoTHer's rule
      for fine-tuning (their ViT, LoRA and Llama 2 trees, ``rev=False``).
    * ``INCREASING``: the child's kurtosis is higher. MoTHer's rule for
      continued pre-training (their Stable Diffusion tree, ``rev=True``).
    * ``AUTO``: whichever of the two the weights support, chosen without labels
      by :func:`choose_kurtosis_order` (the order whose best forest is heavier).
      MoTHer picks the order by prior knowledge of the training regime; which way
      kurtosis moves depends on it (small MLPs trained from a Gaussian-like init
      gain kurtosis when fine-tuned or pruned, the opposite of MoTHer's ViTs).
    """

    DECREASING = "decreasing"
    INCREASING = "increasing"
    AUTO = "auto"


class Solver(enum.Enum):
    """Which Chu-Liu / Edmonds implementation finds the maximum spanning arborescence.

    * ``NETWORKX`` (default): :func:`networkx.algorithms.tree.branchings.maximum_spanning_arborescence`,
      a well-kept library's. It copies the graph at every cycle contraction: ~1.3 s
      for 105 models on one idle CPU core (6 s on the loaded 2-core machine), and
      ``num_roots`` runs it several times.
    * ``DENSE``: the same algorithm on the dense ``[P, P]`` weight matrix in
      numpy (one cycle contracted per step, ``O(P^2)`` each): milliseconds at
      ``P = 105``. Tested against ``NETWORKX`` and brute force.
    """

    NETWORKX = "networkx"
    DENSE = "dense"


# ----------------------------------------------------------------------------
# Input checks.


def _as_enum(value: Any, cls: type[enum.Enum], what: str) -> Any:
    """``value`` as a member of ``cls`` (a member or its value, case-insensitive); a clear error otherwise."""
    if isinstance(value, cls):
        return value
    try:
        return cls(str(value).lower())
    except ValueError:
        raise TreeError(f"unknown {what} {value!r}; expected one of {[m.value for m in cls]}") from None


def _as_direction(direction: Direction | str) -> Direction:
    return _as_enum(direction, Direction, "direction rule")


def _as_order(order: KurtosisOrder | str) -> KurtosisOrder:
    return _as_enum(order, KurtosisOrder, "kurtosis order")


def _as_solver(solver: Solver | str) -> Solver:
    return _as_enum(solver, Solver, "solver")


def _check_square(scores: Any, name: str, *, allow_neg_inf: bool = False) -> np.ndarray:
    """``scores`` as float64 ``[P, P]`` with ``P >= 2``, finite off the diagonal; the diagonal becomes NaN."""
    s = np.array(jax.device_get(scores), dtype=np.float64, copy=True)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise TreeError(f"{name} must be a square [P, P] matrix over ordered pairs of models; got shape {s.shape}")
    p = s.shape[0]
    if p < 2:
        raise TreeError(f"{name}: tree recovery needs at least 2 models; got {p}")
    off = ~np.eye(p, dtype=bool)
    bad = off & ~np.isfinite(s)
    if allow_neg_inf:
        bad &= ~np.isneginf(s)
    if bad.any():
        a, b = np.argwhere(bad)[0]
        raise TreeError(
            f"{name}[{a}, {b}] is {s[a, b]} (every off-diagonal entry must be finite"
            f"{' or -inf' if allow_neg_inf else ''})"
        )
    np.fill_diagonal(s, np.nan)
    return s


def _check_vector(v: Any, p: int, name: str) -> np.ndarray:
    v = np.asarray(jax.device_get(v), dtype=np.float64)
    if v.shape != (p,):
        raise TreeError(f"{name} must have shape [{p}] (one value per model); got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise TreeError(f"{name}[{int(np.argmin(np.isfinite(v)))}] is not finite")
    return v


def _ids(ids: Sequence[str] | None, p: int) -> tuple[str, ...]:
    if ids is None:
        return tuple(str(i) for i in range(p))
    ids = tuple(str(i) for i in ids)
    if len(ids) != p:
        raise TreeError(f"{len(ids)} ids for {p} models")
    if len(set(ids)) != p:
        dup = next(i for i in ids if ids.count(i) > 1)
        raise TreeError(f"model id {dup!r} appears twice")
    return ids
