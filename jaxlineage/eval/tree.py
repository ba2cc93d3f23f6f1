r"""Lineage tree recovery: from pairwise scores over a set of models to a forest.

Given ``P`` models, recovery answers *who was derived from whom, and in which
direction*. It has three independent parts:

1. **Edges** from any score matrix over ordered pairs, ``S[a, b]`` = how likely
   ``a`` is ``b``'s parent (higher = more likely; the diagonal is ignored):
   :func:`weight_scores` (negative L2 distance of the weights),
   :func:`aligned_weight_scores` (the same after matching hidden units: git
   re-basin's weight matching over a permutation spec, so that a permuted copy
   is at distance 0),
   :func:`learning_free_scores` (Neural Lineage's metrics in any
   :class:`~jaxlineage.linearize.Mode`, the population scored against itself),
   :func:`scorer_scores` (any :class:`~jaxlineage.eval.core.Scorer`).
2. **Direction** (:class:`Direction`): MoTHer's weight-kurtosis rule, the
   asymmetry of Taylor-approximated scores (the first-order step goes from the
   parent toward the child, so ``S_FO[a, b] != S_FO[b, a]``), or none (the
   score matrix's own asymmetry). :func:`edge_weights` turns scores and a rule
   into edge weights ``W[a, b]``.
3. **The forest**: a maximum spanning arborescence (Chu-Liu / Edmonds, from
   :mod:`networkx`, or :attr:`Solver.DENSE`, the same algorithm in numpy and
   ~1000x faster at 100 models) over the models plus a virtual root whose edges to the
   models carry *root scores* (:func:`max_arborescence`); the virtual root's
   children are the recovered roots. :func:`recover` does 2 and 3 and returns a
   :class:`~jaxlineage.graph.LineageGraph`.

Evaluation: :func:`tree_accuracy` (undirected, directed and root accuracy
against a true graph), :func:`tree_result` (an
:class:`~jaxlineage.eval.core.Result` for ``Question.RECOVER``) and
:func:`tree_plot` (the recovered forest beside the true one, wrong edges red).

Example::

    s = tree.weight_scores(stacked_params)                     # [P, P]
    k = tree.weight_kurtosis(stacked_params)                   # [P]
    g = tree.recover(s, ids=ids, direction=tree.Direction.KURTOSIS,
                     kurtosis=k, num_roots=4)
    tree.tree_accuracy(true_graph, g).directed

References:
  Horwitz, E., Shul, A. & Hoshen, Y. (2025). Unsupervised Model Tree Heritage
  Recovery (MoTHer). ICLR. Weight kurtosis for direction, weight distance for
  edges, a minimum directed spanning tree over ``d + lambda * mean(d) * T`` with
  ``T[a, b] = 1`` when ``b``'s kurtosis exceeds ``a``'s, ``lambda = 0.3`` (as in
  their public code, ``eliahuhorwitz/MoTHer``, ``MDST.build_tree``); forests by
  clustering first (``clustering.py``), here by a virtual root instead.
  Edmonds, J. (1967). Optimum branchings. J. Res. Nat. Bur. Standards 71B.
  Yu, R. & Wang, X. (2024). Neural Lineage. CVPR. Sec. 3 (the first-order score).
  Ainsworth, S., Hayase, J. & Srinivasa, S. (2023). Git Re-Basin: Merging Models modulo
  Permutation Symmetries. ICLR. Alg. 1 (weight matching).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxlineage import lineage as lineage_lib
from jaxlineage import linearize, matching
from jaxlineage import similarity as similarity_lib
from jaxlineage.errors import JaxlineageError, path_str
from jaxlineage.eval import core
from jaxlineage.eval import metrics as metrics_lib
from jaxlineage.graph import LineageGraph

__all__ = [
    "DEFAULT_STRENGTH",
    "AlignmentDetails",
    "Direction",
    "KurtosisOrder",
    "Solver",
    "TreeAccuracy",
    "TreeError",
    "aligned_weight_scores",
    "arborescence_weight",
    "choose_kurtosis_order",
    "direction_accuracy",
    "edge_weights",
    "learning_free_scores",
    "max_arborescence",
    "recover",
    "recover_parents",
    "restrict_graph",
    "scorer_scores",
    "tree_accuracy",
    "tree_plot",
    "tree_result",
    "weight_kurtosis",
    "weight_scores",
]

PyTree = Any
Mode = linearize.Mode
log = logging.getLogger(__name__)

#: Seconds between progress lines (with an ETA) of a long :func:`aligned_weight_scores`.
_PROGRESS_EVERY_S = 15.0

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


# ----------------------------------------------------------------------------
# Scores over ordered pairs.


def _stacked_leaves(
    params: Any, leaf_filter: Callable[[str, tuple[int, ...]], bool] | None, what: str
) -> tuple[list[str], list[np.ndarray | jax.Array], int]:
    """``(paths, leaves [P, ...], P)`` of the weights to compare, from any accepted input."""
    if isinstance(params, core.Population):
        params = core.ModelSet((params,))
    if isinstance(params, core.ModelSet):
        pops = params.populations
        archs = sorted({p.arch for p in pops})
        if len(archs) > 1:
            first = {a: next(p.ids[0] for p in pops if p.arch == a) for a in archs}
            raise TreeError(
                f"{what} compares weights, so every model needs one architecture; got "
                + ", ".join(f"{a!r} (e.g. model {first[a]!r})" for a in archs)
            )
        per_pop = [{path_str(k): v for k, v in jax.tree_util.tree_flatten_with_path(p.params)[0]} for p in pops]
        # Shared leaves: same path and per-model shape in every population (heads of other tasks drop out).
        paths = [
            k for k in per_pop[0] if all(k in d and np.shape(d[k])[1:] == np.shape(per_pop[0][k])[1:] for d in per_pop)
        ]
        leaves = [
            np.concatenate([np.asarray(d[k]) for d in per_pop]) if len(pops) > 1 else per_pop[0][k] for k in paths
        ]
        n = len(params)
    else:
        if isinstance(params, (list, tuple)):
            from jaxlineage import nets

            if not params:
                raise TreeError(f"{what}: tree recovery needs at least 2 models; got 0")
            try:
                params = nets.stack(params)
            except ValueError as e:
                raise TreeError(f"{what}: the models' parameter trees differ: {e}") from e
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        if not flat:
            raise TreeError(f"{what}: no parameter leaf")
        paths = [path_str(k) for k, _ in flat]
        leaves = [v for _, v in flat]
        sizes = {np.shape(v)[0] if np.ndim(v) else None for v in leaves}
        if len(sizes) != 1 or None in sizes:
            raise TreeError(
                f"{what}: every leaf must be stacked along a leading model axis of one size;"
                f" got leading sizes {sorted(str(s) for s in sizes)}"
            )
        n = sizes.pop()
    if leaf_filter is not None:
        keep = [i for i, (k, v) in enumerate(zip(paths, leaves)) if leaf_filter(k, tuple(np.shape(v)[1:]))]
        paths, leaves = [paths[i] for i in keep], [leaves[i] for i in keep]
    if not leaves:
        raise TreeError(f"{what}: no shared parameter leaf is left to compare")
    if n < 2:
        raise TreeError(f"{what}: tree recovery needs at least 2 models; got {n}")
    return paths, leaves, n


_COLUMN_CHUNK = 1 << 16


def weight_scores(params: Any, *, leaf_filter: Callable[[str, tuple[int, ...]], bool] | None = None) -> np.ndarray:
    r"""Negative L2 distance between every two models' weights: the baseline edge score.

    .. math:: S[a, b] = -\lVert \theta_a - \theta_b \rVert_2
              = -\sqrt{G_{aa} + G_{bb} - 2 G_{ab}}, \quad G = \Theta_c \Theta_c^\top

    over the shared leaves, with :math:`\Theta_c` the ``[P, n]`` flattened
    weights centred per coordinate (so the Gram form loses nothing to
    cancellation) in float64. Symmetric; the diagonal is NaN (not an edge).

    Args:
      params: the models' weights, one of: a stacked pytree (leaves ``[P, ...]``),
        a list of ``P`` same-structure pytrees, a
        :class:`~jaxlineage.eval.core.Population` or a
        :class:`~jaxlineage.eval.core.ModelSet` of one architecture (leaves
        whose path or per-model shape differ between its populations, e.g. heads
        of tasks with other class counts, are left out).
      leaf_filter: ``leaf_filter(path, shape) -> bool`` keeps a leaf (``shape``
        without the model axis); e.g. ``lambda p, s: "head" not in p``.

    Returns:
      ``[P, P]`` float64 scores, higher = closer.

    Raises:
      TreeError: fewer than 2 models, mixed architectures, parameter trees that
        differ, or no leaf left to compare.
    """
    _, leaves, p = _stacked_leaves(params, leaf_filter, "weight_scores")
    out = -_l2_distances(leaves, p)
    if not np.all(np.isfinite(out)):
        raise TreeError("weight_scores: non-finite weights")
    np.fill_diagonal(out, np.nan)
    return out


def _l2_distances(leaves: Sequence[Any], p: int) -> np.ndarray:
    """``[P, P]`` L2 distances between the models' flattened leaves (float64 Gram of centred columns)."""
    gram = np.zeros((p, p))
    for leaf in leaves:
        x = np.asarray(leaf).reshape(p, -1)
        for s in range(0, x.shape[1], _COLUMN_CHUNK):
            c = x[:, s : s + _COLUMN_CHUNK].astype(np.float64)
            c -= c.mean(axis=0, keepdims=True)
            gram += c @ c.T
    sq = np.diag(gram)[:, None] + np.diag(gram)[None, :] - 2 * gram
    return np.sqrt(np.maximum(sq, 0.0))


# ----------------------------------------------------------------------------
# Weight distance modulo hidden-unit permutations (git re-basin weight matching).


@dataclasses.dataclass(frozen=True)
class AlignmentDetails:
    """What :func:`aligned_weight_scores` did (returned with ``return_details=True``).

    Attributes:
      raw: ``[P, P]`` :func:`weight_scores` over the same leaves (no alignment).
      lower_bound: ``[P, P]`` minus the sorted-weights lower bound on the aligned
        distance (see :func:`aligned_weight_scores`); ``lower_bound >= scores >= raw``.
      pairs: ``[N, 2]`` the unordered pairs ``(a, b)``, ``a < b``, that were aligned.
      sweeps: ``[N]`` coordinate-descent sweeps per aligned pair.
      converged: ``[N]`` whether the pair's last sweep improved nothing (else
        ``max_sweeps`` stopped it).
      spec: the permutation spec used, axes on leaves that are not compared dropped.
    """

    raw: np.ndarray
    lower_bound: np.ndarray
    pairs: np.ndarray
    sweeps: np.ndarray
    converged: np.ndarray
    spec: dict


def _first_model(params: Any) -> Any:
    """One model's variables from any input :func:`_stacked_leaves` accepts (for deriving a spec)."""
    if isinstance(params, core.ModelSet):
        params = params.populations[0]
    if isinstance(params, core.Population):
        params = params.params
    if isinstance(params, (list, tuple)):
        return params[0]
    return jax.tree.map(lambda v: v[0], params)


def _resolve_spec(  # noqa: C901 (one check per way a spec can fail to fit, each naming the path)
    params: Any, spec: Any, paths: list[str], leaves: list, dropped: set[str], what: str
) -> tuple[dict, list[list[tuple[int, int, int, int]]]]:
    """The spec fitted to the compared leaves, and per leaf its permuted axes ``(axis, entry, units, tile)``.

    A derived spec (``spec`` None or an architecture name) drops axes on leaves that are
    absent (a backbone without its head) or not compared; a given spec must name leaves
    that exist, with the right sizes (axes on leaves ``leaf_filter`` drops are ignored).
    """
    from jaxlineage import permutations

    derived = spec is None or isinstance(spec, str)
    if derived:
        arch = spec
        if arch is None:
            if isinstance(params, core.Population):
                arch = params.arch
            elif isinstance(params, core.ModelSet):
                arch = params.populations[0].arch
            else:
                raise TreeError(
                    f"{what}: pass spec= (a permutation spec {{name: (units, (PermAxis(path, axis), ...))}}"
                    " or an architecture name such as 'mlp') for weights that are not a Population / ModelSet"
                )
        try:
            spec = permutations.spec_from_variables(arch, _first_model(params))
        except (permutations.PermutationError, KeyError, TypeError, AttributeError) as e:
            raise TreeError(f"{what}: no permutation spec for architecture {arch!r}: {e}") from e
    if not isinstance(spec, Mapping):
        raise TreeError(f"{what}: spec must be a mapping {{name: (units, axes)}}; got {type(spec).__name__}")
    index = {k: i for i, k in enumerate(paths)}
    leaf_axes: list[list[tuple[int, int, int, int]]] = [[] for _ in paths]
    fitted: dict = {}
    seen: dict[tuple[str, int], str] = {}
    for name, entry in spec.items():
        try:
            units, axes = entry
            units = int(units)
        except (TypeError, ValueError):
            raise TreeError(f"{what}: spec entry {name!r} must be (units, axes); got {entry!r}") from None
        if units < 1:
            raise TreeError(f"{what}: spec entry {name!r} has {units} units")
        keep_axes = []
        for ax in axes:
            key = "/".join(str(k) for k in ax.path)
            if key not in index:
                if derived or key in dropped:
                    continue  # absent from these weights (e.g. a backbone's head) or left out by leaf_filter
                some = ", ".join(paths[:6]) + (", ..." if len(paths) > 6 else "")
                raise TreeError(
                    f"{what}: spec entry {name!r} names leaf {key}, which the weights lack (leaves: {some})"
                )
            li = index[key]
            shape = tuple(np.shape(leaves[li])[1:])
            tile = int(ax.tile)
            axis = int(ax.axis)
            if not -len(shape) <= axis < len(shape):
                raise TreeError(f"{what}: spec entry {name!r}: leaf {key} of shape {shape} has no axis {axis}")
            axis %= len(shape)
            if tile < 1 or shape[axis] != units * tile:
                raise TreeError(
                    f"{what}: spec entry {name!r}: leaf {key} of shape {shape} has {shape[axis]} entries on axis"
                    f" {axis}, but the entry permutes {units} units x tile {tile} = {units * tile}"
                )
            if (key, axis) in seen:
                raise TreeError(f"{what}: leaf {key} axis {axis} is in spec entries {seen[(key, axis)]!r} and {name!r}")
            seen[(key, axis)] = name
            keep_axes.append(dataclasses.replace(ax, axis=axis))
            leaf_axes[li].append((axis, len(fitted), units, tile))
        if keep_axes:
            fitted[name] = (units, tuple(keep_axes))
    if not fitted:
        raise TreeError(f"{what}: the permutation spec has no axis on the compared leaves ({', '.join(paths[:6])})")
    return fitted, leaf_axes


def _sorted_leaves(leaves: list, leaf_axes: list) -> list[np.ndarray]:
    """Each leaf ``[P, ...]`` with the entries along its permuted axes sorted, per index of the other axes.

    Any spec permutation moves entries only within these fibres, so the L2 distance of the
    sorted leaves is a lower bound on the distance under every spec permutation."""
    out = []
    for leaf, axes in zip(leaves, leaf_axes):
        x = np.asarray(leaf)
        if axes:
            perm_axes = sorted({a + 1 for a, *_ in axes})
            x = np.moveaxis(x, perm_axes, range(x.ndim - len(perm_axes), x.ndim))
            x = np.sort(x.reshape(x.shape[: x.ndim - len(perm_axes)] + (-1,)), axis=-1)
        out.append(x)
    return out


def aligned_weight_scores(
    params: Any,
    *,
    spec: Any = None,
    leaf_filter: Callable[[str, tuple[int, ...]], bool] | None = None,
    candidates: int | None = None,
    max_sweeps: int = 100,
    return_details: bool = False,
) -> np.ndarray | tuple[np.ndarray, AlignmentDetails]:
    r"""Negative L2 weight distance after aligning hidden units: :func:`weight_scores` modulo permutations.

    .. math:: S[a, b] = -\min\bigl(\lVert \theta_a - \theta_b \rVert_2,\
              \lVert \theta_a - \hat\pi_{ab}(\theta_b) \rVert_2\bigr)
              \;\approx\; -\min_{\pi} \lVert \theta_a - \pi(\theta_b) \rVert_2

    where :math:`\pi` ranges over the hidden-unit permutations of a permutation spec
    (:mod:`jaxlineage.permutations`, git re-basin's format: permuting a layer's units
    leaves the function unchanged, but the plain weight distance sees a permuted copy as
    far as an unrelated model) and :math:`\hat\pi_{ab}` is found by **weight matching**
    (Ainsworth et al. 2023, Alg. 1): coordinate descent over the spec's entries, each step
    a linear assignment (:func:`jaxlineage.matching.hungarian`) maximising the summed
    inner products of the weights along the entry's axes, taken only when it strictly
    increases them, until a sweep improves nothing. It needs no data. Unlike Alg. 1 it does
    not start from the identity but from one pass in the spec's order that uses only the
    terms already determined (the first layer matched by its input weights alone, then
    each next layer given the previous one's matching): from the identity, the first
    layer's assignment also sees the next layer's still unmatched weights and can lock into
    a wrong matching (4 of 30 permuted, slightly perturbed copies of a 3-4-unit MLP; none
    from this start). It is a local method: on a permuted (and slightly changed) copy it
    finds the permutation, but between unrelated models it can stop above the true
    minimum (13 of 30 unrelated pairs of that tiny MLP, against brute force). The ``min``
    with the raw distance is explicit, so ``S >=`` :func:`weight_scores` always (float64
    throughout). One matching per unordered pair, so ``S`` is symmetric; the diagonal is NaN.

    Cost: one matching per pair, tens of ms to seconds at 1024 units (a few LSAs of
    ``1024 x 1024`` per sweep; a related pair converges in one or two sweeps, an
    unrelated one in ~10). ``candidates=k`` aligns only likely pairs: each model's ``k``
    nearest under the raw distance and its ``k`` nearest under a permutation-invariant
    **lower bound**, the L2 distance of the weights sorted along their permuted axes
    (separately for each index of the other axes; every spec permutation moves entries
    only within those fibres, so ``bound <= min_pi distance <= raw``; a permuted copy is
    at bound 0). The other pairs keep the raw distance (``min(raw, aligned)`` with nothing
    aligned). Pairs whose bound equals the raw distance (to ``1e-9`` relative) are never
    aligned: no permutation can bring them closer.

    Args:
      params: as in :func:`weight_scores`.
      spec: ``{name: (units, (PermAxis(path, axis, tile), ...))}`` (see
        :func:`jaxlineage.permutations.permutation_spec`), or an architecture name
        (``"mlp"``, ``"convnet"``, ``"resnet18"``) to derive it from the weights, or None
        (derived from a :class:`~jaxlineage.eval.core.Population`'s / ``ModelSet``'s
        ``arch``). A derived spec drops axes on leaves the weights lack (a backbone has
        no ``head``); a given spec must fit: every leaf it names present (or left out by
        ``leaf_filter``), of the right size on the named axis.
      leaf_filter: as in :func:`weight_scores`.
      candidates: ``k``: align only each model's ``k`` nearest under the raw distance and
        under the lower bound (see above); None aligns every pair.
      max_sweeps: at most this many sweeps over the spec's entries per pair (git
        re-basin's default 100).
      return_details: also return an :class:`AlignmentDetails`.

    Returns:
      ``[P, P]`` float64 scores, higher = closer (and the details if asked).

    Raises:
      TreeError: as :func:`weight_scores`; a spec that does not fit the weights (names the
        entry, leaf, axis and shape), no spec for plain weights, bad ``candidates`` /
        ``max_sweeps``.
    """
    what = "aligned_weight_scores"
    paths, leaves, p = _stacked_leaves(params, None, what)
    shapes = {k: tuple(np.shape(v)[1:]) for k, v in zip(paths, leaves)}
    kept = {k for k in paths if leaf_filter is None or leaf_filter(k, shapes[k])}
    dropped = set(paths) - kept
    keep = [i for i, k in enumerate(paths) if k in kept]
    paths, leaves = [paths[i] for i in keep], [leaves[i] for i in keep]
    if not leaves:
        raise TreeError(f"{what}: no shared parameter leaf is left to compare")
    if not isinstance(max_sweeps, (int, np.integer)) or isinstance(max_sweeps, bool) or max_sweeps < 1:
        raise TreeError(f"{what}: max_sweeps must be a positive integer; got {max_sweeps!r}")
    if candidates is not None and (
        not isinstance(candidates, (int, np.integer)) or isinstance(candidates, bool) or candidates < 1
    ):
        raise TreeError(f"{what}: candidates must be a positive integer or None; got {candidates!r}")
    fitted, leaf_axes = _resolve_spec(params, spec, paths, leaves, dropped, what)
    units = [u for u, _ in fitted.values()]

    raw = _l2_distances(leaves, p)
    if not np.all(np.isfinite(raw)):
        raise TreeError(f"{what}: non-finite weights")
    lower = _l2_distances(_sorted_leaves(leaves, leaf_axes), p)
    off = ~np.eye(p, dtype=bool)
    if candidates is None or candidates >= p - 1:
        pick = off.copy()
    else:
        pick = np.zeros((p, p), dtype=bool)
        for d in (raw, lower):
            d = np.where(off, d, np.inf)
            near = np.argsort(d, axis=1, kind="stable")[:, :candidates]
            pick[np.arange(p)[:, None], near] = True
        pick |= pick.T
    pick &= lower < raw * (1.0 - 1e-9)
    pairs = np.argwhere(np.triu(pick, 1))

    dist = raw.copy()
    host = [np.asarray(v) for v in leaves]
    sweeps = np.zeros(len(pairs), dtype=int)
    converged = np.zeros(len(pairs), dtype=bool)
    cache: tuple[int, list[np.ndarray]] | None = None
    t0 = last = time.monotonic()
    for n, (i, j) in enumerate(pairs):
        now = time.monotonic()
        if n and now - last >= _PROGRESS_EVERY_S:
            last = now
            eta = (now - t0) / n * (len(pairs) - n)
            log.info("%s: aligned %d/%d pairs, %.0fs elapsed, ETA %.0fs", what, n, len(pairs), now - t0, eta)
        if cache is None or cache[0] != i:
            cache = (i, [v[i].astype(np.float64) for v in host])
        b = [v[j].astype(np.float64) for v in host]
        _, d, sweeps[n], converged[n] = matching.weight_matching(cache[1], b, leaf_axes, units, max_sweeps=max_sweeps)
        dist[i, j] = dist[j, i] = min(raw[i, j], d)
    out = -dist
    np.fill_diagonal(out, np.nan)
    if not return_details:
        return out
    raw_s, low_s = -raw, -lower
    np.fill_diagonal(raw_s, np.nan)
    np.fill_diagonal(low_s, np.nan)
    return out, AlignmentDetails(
        raw=raw_s, lower_bound=low_s, pairs=pairs, sweeps=sweeps, converged=converged, spec=fitted
    )


def weight_kurtosis(
    params: Any,
    *,
    leaf_filter: Callable[[str, tuple[int, ...]], bool] | None = None,
    min_ndim: int = 2,
    model_chunk: int = 8,
) -> np.ndarray:
    r"""MoTHer's per-model direction statistic: summed excess kurtosis of the weight matrices.

    .. math:: k(\theta) = \sum_{W \in \theta,\ \mathrm{ndim}(W) \ge 2}
              \left(\frac{m_4(W)}{m_2(W)^2} - 3\right), \quad
              m_j(W) = \frac{1}{n}\sum_i (w_i - \bar w)^j

    (the biased, Fisher estimator: ``scipy.stats.kurtosis`` with its defaults).
    MoTHer sums it over the square 2-D matrices of one layer kind (ViT's
    ``attention.output.dense``); the MLPs here have no square matrix, so every
    kernel (``ndim >= 2``, biases excluded) counts unless ``leaf_filter`` says
    otherwise.

    Args:
      params: as in :func:`weight_scores`.
      leaf_filter: ``leaf_filter(path, shape) -> bool`` keeps a leaf.
      min_ndim: leaves with fewer dimensions (per model) are left out.
      model_chunk: models per float64 batch (bounds memory).

    Returns:
      ``[P]`` float64, one statistic per model.

    Raises:
      TreeError: as :func:`weight_scores`; a constant weight matrix (kurtosis undefined).
    """
    paths, leaves, p = _stacked_leaves(params, leaf_filter, "weight_kurtosis")
    keep = [(k, v) for k, v in zip(paths, leaves) if np.ndim(v) - 1 >= min_ndim]
    if not keep:
        raise TreeError(f"weight_kurtosis: no leaf with at least {min_ndim} dimensions; got {paths}")
    out = np.zeros(p)
    for path, leaf in keep:
        for s in range(0, p, model_chunk):
            x = np.asarray(leaf[s : s + model_chunk]).reshape(min(model_chunk, p - s), -1).astype(np.float64)
            x = x - x.mean(axis=1, keepdims=True)
            m2 = np.mean(x * x, axis=1)
            if np.any(m2 == 0):
                raise TreeError(f"weight_kurtosis: leaf {path!r} of model {s + int(np.argmin(m2))} is constant")
            out[s : s + len(m2)] += np.mean(x**4, axis=1) / m2**2 - 3.0
    return out


def learning_free_scores(
    metrics: Any,
    feature_fn: Callable,
    params: PyTree,
    x: Any,
    *,
    alpha: float,
    modes: Any = tuple(Mode),
    reported: bool = True,
    chunk_size: int | None = None,
) -> dict[tuple[str, Mode], np.ndarray]:
    r"""Learning-free scores of every ordered pair of one population: each model as parent of each.

    .. math:: S[a, b] = s_{\text{mode}}(\theta_a \to \theta_b; X, \alpha)

    i.e. :func:`jaxlineage.lineage.score_matrices` with the population as both
    parents and children. ``PLAIN`` L1 / L2 / CKA are symmetric; in
    ``FIRST_ORDER`` and ``LINEARIZED`` the Taylor step starts at ``a`` (the
    candidate parent), so ``S[a, b] != S[b, a]`` in general.

    Args:
      metrics: one metric or a sequence (names or :mod:`~jaxlineage.similarity` metrics).
      feature_fn: ``f(params_of_one_model, x) -> [N, D]``.
      params: stacked parameters, leaves ``[P, ...]`` (``P >= 2``).
      x: the probe batch ``[N, ...]``.
      alpha: the step size (a scalar).
      modes: one :class:`~jaxlineage.linearize.Mode` or a sequence.
      reported: apply the paper's reporting transform (``l2`` becomes
        ``-distance`` instead of ``-distance**2``), which changes sums of edge
        weights (hence the arborescence) but not the sign of ``S[a, b] - S[b, a]``.
      chunk_size: children per vmapped chunk (default: from the memory budget).

    Returns:
      ``{(metric name, mode): [P, P]}`` float64, the diagonal NaN.

    Raises:
      TreeError: fewer than 2 models, or a non-scalar ``alpha``.
    """
    leaves = jax.tree.leaves(params)
    p = np.shape(leaves[0])[0] if leaves and np.ndim(leaves[0]) else 0
    if p < 2:
        raise TreeError(f"learning_free_scores: tree recovery needs at least 2 models; got {p}")
    if np.ndim(alpha) != 0:
        raise TreeError(f"learning_free_scores: alpha must be a scalar; got shape {np.shape(alpha)}")
    mats = lineage_lib.score_matrices(
        metrics, feature_fn, params, params, x, alpha=alpha, modes=modes, chunk_size=chunk_size
    )
    out = {}
    for (name, mode), s in mats.items():
        s = similarity_lib.report(name, s) if reported else s
        s = np.array(s, np.float64)
        np.fill_diagonal(s, np.nan)
        out[(name, mode)] = s
    return out


def scorer_scores(scorer: core.Scorer, models: core.ModelSet, *, probe: np.ndarray) -> np.ndarray:
    """Any :class:`~jaxlineage.eval.core.Scorer`'s scores of every model against every other.

    ``S = scorer.score(models, models, probe=probe)``: candidates are the
    parents, queries the children, so ``S[a, b]`` scores ``a`` as ``b``'s
    parent. The diagonal is NaN.

    Raises:
      TreeError: fewer than 2 models, or a score matrix that is not finite off
        the diagonal (e.g. pairs the scorer cannot read).
    """
    if len(models) < 2:
        raise TreeError(f"scorer_scores: tree recovery needs at least 2 models; got {len(models)}")
    return _check_square(scorer.score(models, models, probe=probe), f"{scorer.name} scores")


# ----------------------------------------------------------------------------
# Direction and edge weights.


def _score_gap(sym: np.ndarray) -> float:
    """Mean gap below the best off-diagonal score: MoTHer's ``mean(d)`` for ``S = -d`` when ``min d = 0``."""
    vals = sym[np.isfinite(sym)]
    gap = float(np.mean(vals.max() - vals)) if vals.size else 0.0
    return gap if gap > 0 else 1.0


def edge_weights(
    scores: Any,
    *,
    direction: Direction | str = Direction.NONE,
    kurtosis: Any = None,
    kurtosis_order: KurtosisOrder | str = KurtosisOrder.DECREASING,
    direction_scores: Any = None,
    strength: float = DEFAULT_STRENGTH,
) -> np.ndarray:
    r"""Edge weights ``W[a, b]`` (``a -> b``, higher = better) from scores and a direction rule.

    .. math::
        W &= S && \text{(NONE)} \\
        W[a, b] &= \bar S[a, b] - \lambda\, \sigma\, \mathbb{1}[E[a, b] < 0]
        && \text{(KURTOSIS, TAYLOR)}

    with :math:`\bar S = (S + S^\top)/2` (the edge evidence), :math:`\lambda` =
    ``strength``, :math:`\sigma = \operatorname{mean}_{a \ne b}(\max \bar S - \bar S[a, b])`
    the mean score gap (MoTHer scales by ``mean(d)`` of the distances ``d``; for
    ``S = -d`` this is ``mean(d) - min(d)``, and it is defined for any score)
    and the direction evidence

    * KURTOSIS: :math:`E[a, b] = k_a - k_b` (``DECREASING``) or :math:`k_b - k_a` (``INCREASING``);
    * TAYLOR: :math:`E[a, b] = D[a, b] - D[b, a]`, ``D`` a ``FIRST_ORDER`` or
      ``LINEARIZED`` score matrix (``direction_scores``; by default ``scores`` itself).

    An edge against the evidence pays the penalty; equal evidence (``E = 0``) pays
    nothing either way, as in MoTHer.

    Args:
      scores: ``[P, P]`` scores over ordered pairs (the diagonal is ignored).
      direction: the rule (:class:`Direction` or its name).
      kurtosis: ``[P]`` per-model statistics (:func:`weight_kurtosis`), for KURTOSIS.
      kurtosis_order: :class:`KurtosisOrder` (default: MoTHer's fine-tuning rule).
      direction_scores: ``[P, P]`` for TAYLOR (default: ``scores``).
      strength: :math:`\lambda` (MoTHer: 0.3). Large values make direction a hard
        constraint; 0 ignores it.

    Returns:
      ``[P, P]`` float64 weights, the diagonal NaN.

    Raises:
      TreeError: a non-square or non-finite matrix, fewer than 2 models, a
        missing or misshapen ``kurtosis`` / ``direction_scores``, or a negative ``strength``.
    """
    s = _check_square(scores, "scores")
    direction = _as_direction(direction)
    if not (isinstance(strength, (int, float)) and math.isfinite(strength) and strength >= 0):
        raise TreeError(f"strength must be a finite number >= 0; got {strength!r}")
    if direction is Direction.NONE:
        return s
    p = s.shape[0]
    if direction is Direction.KURTOSIS:
        if kurtosis is None:
            raise TreeError("Direction.KURTOSIS needs kurtosis=[P] (see weight_kurtosis)")
        k = _check_vector(kurtosis, p, "kurtosis")
        order = _as_order(kurtosis_order)
        if order is KurtosisOrder.AUTO:
            raise TreeError(
                "edge_weights needs a definite kurtosis order; KurtosisOrder.AUTO is resolved by"
                " recover / recover_parents, or call choose_kurtosis_order first"
            )
        sign = 1.0 if order is KurtosisOrder.DECREASING else -1.0
        evidence = sign * (k[:, None] - k[None, :])
    else:
        d = s if direction_scores is None else _check_square(direction_scores, "direction_scores")
        if d.shape != s.shape:
            raise TreeError(f"direction_scores has shape {d.shape} but scores {s.shape}")
        evidence = d - d.T
    sym = 0.5 * (s + s.T)
    w = sym - strength * _score_gap(sym) * (evidence < 0)
    np.fill_diagonal(w, np.nan)
    return w


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


def _gap_threshold(w: np.ndarray) -> float:
    """The largest gap in the sorted best incoming weights: a model whose best parent scores below it starts a tree."""
    best_in = np.sort(np.max(np.where(np.isfinite(w), w, -np.inf), axis=0))
    best_in = best_in[np.isfinite(best_in)]
    if best_in.size < 2:
        return float(np.min(best_in) - 1.0) if best_in.size else 0.0
    i = int(np.argmax(np.diff(best_in)))
    return float(0.5 * (best_in[i] + best_in[i + 1]))


def choose_kurtosis_order(
    scores: Any,
    kurtosis: Any,
    *,
    strength: float = DEFAULT_STRENGTH,
    num_roots: int | None = None,
    solver: Solver | str = Solver.DENSE,
) -> KurtosisOrder:
    r"""The kurtosis order (:class:`KurtosisOrder`) that the scores support, chosen without labels.

    For each order, the maximum spanning forest of its :func:`edge_weights` (KURTOSIS rule)
    with ``num_roots`` roots (one tree when None, so that both forests have ``P - k`` edges);
    the order whose forest has the larger total edge weight wins (``DECREASING``, MoTHer's
    default, on a tie). Under the wrong order a forest must either pay the penalty on many
    edges or chain models along the reversed kurtosis ranking through longer edges, so its
    best weight is lower: a minimum-evolution choice between the two monotone hypotheses.

    Args:
      scores, kurtosis, strength: as in :func:`edge_weights`.
      num_roots: the number of trees, if known (else the comparison uses one tree).
      solver: :class:`Solver` (default ``DENSE``: two solves).

    Returns:
      ``KurtosisOrder.DECREASING`` or ``KurtosisOrder.INCREASING``.
    """
    k = 1 if num_roots is None else num_roots
    best, best_w = KurtosisOrder.DECREASING, -math.inf
    for order in (KurtosisOrder.DECREASING, KurtosisOrder.INCREASING):
        w = edge_weights(
            scores, direction=Direction.KURTOSIS, kurtosis=kurtosis, kurtosis_order=order, strength=strength
        )
        total = arborescence_weight(w, max_arborescence(w, num_roots=k, solver=solver))  # edges only: roots score 0
        if total > best_w:
            best, best_w = order, total
    return best


def recover_parents(
    scores: Any,
    *,
    direction: Direction | str = Direction.NONE,
    kurtosis: Any = None,
    kurtosis_order: KurtosisOrder | str = KurtosisOrder.DECREASING,
    direction_scores: Any = None,
    strength: float = DEFAULT_STRENGTH,
    num_roots: int | None = None,
    root_scores: Any = None,
    solver: Solver | str = Solver.NETWORKX,
) -> np.ndarray:
    """:func:`recover` as a parent index array ``[P]`` (``-1`` for roots)."""
    if _as_direction(direction) is Direction.KURTOSIS and _as_order(kurtosis_order) is KurtosisOrder.AUTO:
        kurtosis_order = choose_kurtosis_order(scores, kurtosis, strength=strength, num_roots=num_roots, solver=solver)
    w = edge_weights(
        scores,
        direction=direction,
        kurtosis=kurtosis,
        kurtosis_order=kurtosis_order,
        direction_scores=direction_scores,
        strength=strength,
    )
    if num_roots is None and root_scores is None:
        root_scores = _gap_threshold(w)
    return max_arborescence(w, root_scores=root_scores, num_roots=num_roots, solver=solver)


def recover(
    scores: Any,
    *,
    ids: Sequence[str] | None = None,
    direction: Direction | str = Direction.NONE,
    kurtosis: Any = None,
    kurtosis_order: KurtosisOrder | str = KurtosisOrder.DECREASING,
    direction_scores: Any = None,
    strength: float = DEFAULT_STRENGTH,
    num_roots: int | None = None,
    root_scores: Any = None,
    solver: Solver | str = Solver.NETWORKX,
) -> LineageGraph:
    r"""Recovers the lineage forest of ``P`` models from their pairwise scores.

    Edge weights :func:`edge_weights` (scores plus the direction rule), then
    :func:`max_arborescence` with a virtual root. How many trees:

    * ``num_roots`` given: exactly that many (e.g. the number of base models);
    * else ``root_scores`` given: each model's score for starting a tree (a
      scalar is a threshold on the edge weights);
    * else the **largest-gap threshold**: sort each model's best incoming weight
      :math:`m_b = \max_a W[a, b]`; the threshold is the midpoint of the largest
      gap between consecutive values. Unrelated models' best edges are far
      weaker than a derived model's edge to its parent; when the trees are not
      separated by a gap (or there is only one) this over- or under-splits,
      so pass ``num_roots`` when it is known.

    Args:
      scores: ``[P, P]``, ``S[a, b]`` scores ``a`` as ``b``'s parent (higher =
        more likely); the diagonal is ignored.
      ids: the models' ids (default ``"0"..``).
      direction, kurtosis, kurtosis_order, direction_scores, strength: see
        :func:`edge_weights`.
      num_roots: the number of trees, if known.
      root_scores: a scalar or ``[P]``, see :func:`max_arborescence`.
      solver: :class:`Solver` (default: networkx's Edmonds; ``DENSE`` is faster).

    Returns:
      The recovered forest as a :class:`~jaxlineage.graph.LineageGraph` (one
      parent per non-root model, nodes in ``ids`` order).

    Raises:
      TreeError: see :func:`edge_weights` and :func:`max_arborescence`.
    """
    p = np.shape(scores)[0] if np.ndim(scores) == 2 else -1
    parents = recover_parents(
        scores,
        direction=direction,
        kurtosis=kurtosis,
        kurtosis_order=kurtosis_order,
        direction_scores=direction_scores,
        strength=strength,
        num_roots=num_roots,
        root_scores=root_scores,
        solver=solver,
    )
    names = _ids(ids, p)
    return LineageGraph.from_parents({names[b]: None if a < 0 else names[a] for b, a in enumerate(parents)})


# ----------------------------------------------------------------------------
# Evaluation.


def restrict_graph(graph: LineageGraph, ids: Sequence[str]) -> LineageGraph:
    """The lineage among ``ids`` only: a model's parents outside ``ids`` are replaced by their nearest ancestors inside.

    E.g. a zoo's graph restricted to the kept models (a grandchild whose parent
    was dropped hangs from its grandparent). Root initialisation keys are kept.

    Raises:
      TreeError: an id that is not in ``graph``.
    """
    keep = list(dict.fromkeys(str(i) for i in ids))
    missing = [i for i in keep if i not in graph]
    if missing:
        raise TreeError(f"model {missing[0]!r} is not in the lineage graph")
    inside = set(keep)
    out = {}
    for n in keep:
        ps: list[str] = []
        frontier = list(graph.parents(n))
        seen = set()
        while frontier:
            nxt = []
            for q in frontier:
                if q in seen:
                    continue
                seen.add(q)
                if q in inside:
                    ps.append(q)
                else:
                    nxt.extend(graph.parents(q))
            frontier = nxt
        out[n] = tuple(dict.fromkeys(ps))
    keys = {n: k for n, k in graph.init_keys.items() if n in inside and not out[n]}
    return LineageGraph.from_parents(out, init_keys=keys)


@dataclasses.dataclass(frozen=True)
class TreeAccuracy:
    r"""How well a recovered forest matches the true lineage graph (same model set).

    With :math:`E` the true edges ``(parent, child)``, :math:`\hat E` the
    recovered ones, :math:`R, \hat R` the root sets, and :math:`\{a, b\}` an
    edge without its direction:

    * ``undirected`` :math:`= |\{\{a,b\}: (a,b) \in E\} \cap \{\{a,b\}: (a,b) \in \hat E\}| / |E|`:
      the fraction of true edges recovered, either way round;
    * ``directed`` :math:`= |E \cap \hat E| / |E|`: the fraction recovered the
      right way round (MoTHer's accuracy);
    * ``root`` :math:`= |R \cap \hat R| / \max(|R|, |\hat R|)`: 1 only when the
      root sets are equal; the fraction of true roots found when the number of
      roots is given; spurious roots lower it as much as missed ones;
    * ``model_root``: the fraction of models whose recovered root is their true
      root (right tree *and* right base model);
    * ``reversed``: the fraction of true edges recovered the wrong way round.

    A forest has one parent per model, so a true graph with merges (several
    parents) caps ``directed`` below 1. With no true edge (only roots) the edge
    accuracies are 1 when nothing was recovered either and 0 otherwise.
    """

    undirected: float
    directed: float
    root: float
    model_root: float
    reversed: float
    n_true_edges: int
    n_recovered_edges: int
    n_true_roots: int
    n_recovered_roots: int

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def tree_accuracy(true: LineageGraph, recovered: LineageGraph) -> TreeAccuracy:
    """Compares a recovered forest with the true lineage graph (see :class:`TreeAccuracy`).

    Raises:
      TreeError: the two graphs are not over the same models (the message names one that differs).
    """
    if set(true.ids) != set(recovered.ids):
        only = min(set(true.ids) ^ set(recovered.ids))
        where = "true" if only in true else "recovered"
        raise TreeError(
            f"the graphs differ in their models: {only!r} is only in the {where} graph;"
            " restrict the truth with restrict_graph(true, ids)"
        )
    e_true, e_rec = set(true.edges()), set(recovered.edges())
    u_rec = {frozenset(e) for e in e_rec}
    n = len(e_true)
    if n:
        undirected = sum(frozenset(e) in u_rec for e in e_true) / n
        directed = len(e_true & e_rec) / n
        rev = sum((b, a) in e_rec and (a, b) not in e_rec for a, b in e_true) / n
    else:
        undirected = directed = float(not e_rec)
        rev = 0.0
    r_true, r_rec = set(true.roots()), set(recovered.roots())
    root = len(r_true & r_rec) / max(len(r_true), len(r_rec))
    model_root = float(np.mean([set(true.roots(m)) == set(recovered.roots(m)) for m in true.ids]))
    return TreeAccuracy(
        undirected=float(undirected),
        directed=float(directed),
        root=float(root),
        model_root=model_root,
        reversed=float(rev),
        n_true_edges=n,
        n_recovered_edges=len(e_rec),
        n_true_roots=len(r_true),
        n_recovered_roots=len(r_rec),
    )


def direction_accuracy(true: LineageGraph, evidence: Any, ids: Sequence[str]) -> float:
    """The fraction of true edges ``(a, b)`` whose direction evidence points the right way, ``E[a, b] > 0``.

    A diagnostic of a direction rule on its own (ties count half): ``E`` is
    ``k_a - k_b`` for the kurtosis rule, ``D[a, b] - D[b, a]`` for the Taylor rule.

    Args:
      true: the true graph over ``ids``.
      evidence: ``[P, P]`` antisymmetric evidence (only the true edges' entries are read).
      ids: the models' ids, in the order of ``evidence``.
    """
    e = np.asarray(evidence, np.float64)
    index = {m: i for i, m in enumerate(_ids(ids, e.shape[0]))}
    edges = true.edges()
    if not edges:
        raise TreeError("direction_accuracy: the true graph has no edge")
    vals = np.array([e[index[a], index[b]] for a, b in edges])
    return float(np.mean((vals > 0) + 0.5 * (vals == 0)))


def tree_result(
    true: LineageGraph,
    recovered: LineageGraph,
    *,
    scenario: str,
    scorer: str,
    settings: Mapping[str, Any] | None = None,
    details: Mapping[str, Any] | None = None,
) -> core.Result:
    """A :class:`~jaxlineage.eval.core.Result` for ``Question.RECOVER``.

    ``metrics`` holds ``undirected_edge_accuracy``, ``directed_edge_accuracy``,
    ``root_accuracy`` and ``model_root_accuracy`` (one value each, as
    :func:`~jaxlineage.eval.metrics.mean_std`); ``details`` the counts and both
    graphs.
    """
    acc = tree_accuracy(true, recovered)
    metric_values = {
        "undirected_edge_accuracy": acc.undirected,
        "directed_edge_accuracy": acc.directed,
        "root_accuracy": acc.root,
        "model_root_accuracy": acc.model_root,
    }
    return core.Result(
        scenario=scenario,
        question=core.Question.RECOVER.value,
        scorer=scorer,
        metrics={k: metrics_lib.mean_std([v]) for k, v in metric_values.items()},
        settings=dict(settings or {}),
        details={
            **acc.as_dict(),
            "true_graph": true.to_json(),
            "recovered_graph": recovered.to_json(),
            **dict(details or {}),
        },
    )


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
