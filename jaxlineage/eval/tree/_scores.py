"""Edge scores over ordered pairs of models: weight distance (raw and modulo permutations), weight kurtosis,
Neural Lineage's metrics and any scorer.

Part of :mod:`jaxlineage.eval.tree`, which re-exports the public names.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxlineage import lineage as lineage_lib
from jaxlineage import matching
from jaxlineage import similarity as similarity_lib
from jaxlineage._progress import Progress
from jaxlineage.errors import path_str
from jaxlineage.eval import core
from jaxlineage.eval.tree._common import Mode, PyTree, TreeError, _check_square

log = logging.getLogger(__name__)

#: Seconds between progress lines (with an ETA) of a long :func:`aligned_weight_scores`.
_PROGRESS_EVERY_S = 15.0

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
    bar = Progress(what, len(pairs), unit="pairs", verb="aligned", every=_PROGRESS_EVERY_S, logger=log)
    for n, (i, j) in enumerate(pairs):
        if cache is None or cache[0] != i:
            cache = (i, [v[i].astype(np.float64) for v in host])
        b = [v[j].astype(np.float64) for v in host]
        _, d, sweeps[n], converged[n] = matching.weight_matching(cache[1], b, leaf_axes, units, max_sweeps=max_sweeps)
        dist[i, j] = dist[j, i] = min(raw[i, j], d)
        bar.update(1)
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
