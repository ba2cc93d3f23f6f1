"""The learned and field-based methods as scorers of the evaluation layer.

Every method answers the same call, :meth:`jaxlineage.eval.core.Scorer.score`:
``score(candidates, queries, probe=...) -> S [K, M]``, higher = more related.
The method modules keep only their maths (pure functions over arrays, apply
functions and pytrees); this module reads :class:`~jaxlineage.eval.core.Population`
objects (stacked parameters, ``logits_fn``, ``feature_fns[tap]``) and turns a
training :class:`~jaxlineage.eval.core.Scenario` into what each method trains on.

* :class:`DetectorScorer`: the Lineage Detector (Neural Lineage, Sec. 4).
  ``S[k, m]`` = the detector's logit of candidate ``k`` for query ``m``.
* :class:`ModelDNAScorer`: MGMP / Model DNA (Mu et al., ECAI 2024). Candidates
  are sources, queries are targets; ``S[k, m]`` = the fraction of query ``m``'s
  DNA fragments that source ``k``'s provenance classifier calls homologous.
* :class:`ModelGiFScorer`: ModelGiF (Song et al., ICCV 2023), learning-free.
  ``S[k, m] = -d(k, m)``, the negated mean cosine distance between gradient fields.

Usage::

    from jaxlineage.eval import methods
    det = methods.DetectorScorer(epochs=8).fit(train_scenario, key=jax.random.key(0))
    S = det.score(test.candidates, test.queries, probe=test.probe)          # [K, M]
    S = methods.ModelGiFScorer(n_refs=64, steps=20).score(cands, queries, probe=x)

Each scorer checks its input at this boundary: non-finite parameters, a query
whose parameters do not fit its functions, or a missing tap raise
:class:`~jaxlineage.eval.core.ScorerError` naming the model.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxlineage import detector as detector_lib
from jaxlineage import mgmp as mgmp_lib
from jaxlineage import modelgif as modelgif_lib
from jaxlineage.eval import metrics, registry
from jaxlineage.eval.core import NO_PARENT, ModelSet, Population, Scenario, Scorer, ScorerError, check_finite

__all__ = [
    "BACKBONE_TAPS",
    "DetectorScorer",
    "Field",
    "ModelDNAScorer",
    "ModelGiFScorer",
    "SweepPoint",
    "model_dna",
    "reference_sweep",
]

#: The backbone tap of each zoo architecture (the provenance section's ModelGiF backbone field): the last
#: hidden layer before the classifier head.
BACKBONE_TAPS = {"mlp": "relu2", "convnet": "fc1"}


# --------------------------------------------------------------------------- shared checks


def _first(pop: Population) -> Any:
    """The first model's (unstacked) parameters."""
    return jax.tree.map(lambda a: a[0], pop.params)


def _check_applies(pop: Population, fn: Callable, x: np.ndarray, who: str, what: str) -> None:
    """Raises :class:`ScorerError` naming the model if ``fn`` cannot take ``pop``'s parameters and ``x``."""
    try:
        jax.eval_shape(fn, _first(pop), jnp.asarray(x[:1]))
    except Exception as e:  # re-raised with the model's name; the cause is chained
        raise ScorerError(
            f"{who}: {what} cannot be applied to model {pop.ids[0]!r} ({pop.arch}) on inputs of shape"
            f" {tuple(np.shape(x)[1:])}: {type(e).__name__}: {e}"
        ) from e


def _outputs(pop: Population, fn: Callable, x: Any) -> jax.Array:
    """``[P, N, ...]``: ``fn`` of every model of ``pop`` on ``x`` (one jitted ``vmap`` per function)."""
    return mgmp_lib.population_outputs(fn, pop.params, jnp.asarray(x))


def _fn(pop: Population, tap: str | None) -> Callable:
    """The population's logits (``tap=None``) or feature function at ``tap``."""
    return pop.logits_fn if tap is None else pop.feature_fn(tap)


def _checked_fn(pop: Population, tap: str | None, x: Any, who: str, role: str, what: str) -> Callable:
    """``pop``'s function at ``tap`` (logits when None), after checking the tap exists, the weights are finite and
    the function applies to ``x``; errors name the scorer ``who``, the model's ``role`` and ``what`` is checked."""
    if tap is not None and tap not in pop.feature_fns:
        raise ScorerError(
            f"{who}: {role} {pop.ids[0]!r} ({pop.arch}) has no feature tap {tap!r};"
            f" valid taps: {tuple(pop.feature_fns)}"
        )
    check_finite(who, ModelSet((pop,)))
    fn = _fn(pop, tap)
    _check_applies(pop, fn, x, who, what)
    return fn


def _probe(probe: Any, who: str) -> np.ndarray:
    x = np.asarray(probe)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ScorerError(f"{who}: the probe must be a non-empty batch [N, ...]; got shape {x.shape}")
    return x.astype(np.float32) if not np.issubdtype(x.dtype, np.floating) else x


# --------------------------------------------------------------------------- Lineage Detector


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class DetectorScorer(Scorer):
    """The Lineage Detector as a learned scorer: ``S[k, m]`` = logit of candidate ``k`` for query ``m``.

    Fitted on an open-set scenario (some training label :data:`NO_PARENT`), the
    detector has a "no parent" logit and ``S[k, m]`` is candidate ``k``'s logit minus
    it: the ranking of candidates is unchanged, and :meth:`decide` answers "no parent"
    where every ``S[:, m] < 0`` (the protocol's open-set accuracy).

    .. math::
        S_{km} = v^\\top \\mathrm{std}_m(h_{m,:})_k + b,\\qquad
        h_{mk} = \\mathrm{T}([c,\\; E_w(W_k, W_m) + t_0,\\; E_f(F_k, F_m) + t_1])_0

    (:class:`jaxlineage.detector.LineageDetector`). ``W`` are one backbone
    layer's ``[out, in]`` weight matrices and ``F`` the features at ``feature_tap``
    on the first ``n_probe`` probe inputs; the examples are built by the pure
    :func:`jaxlineage.detector.examples_from_arrays`. The ``K`` outputs of one
    query are standardised together, so :meth:`score` scores all candidate
    populations jointly (they must give arrays of one shape).

    :meth:`fit` trains on the training scenario's queries: one example = one query
    against all ``K`` candidates, label = ``scenario.labels``; when some label is
    :data:`NO_PARENT` the detector gets its "no parent" logit (open set). A
    validation split of the training queries (``val_fraction``, whole split-key
    groups) picks the best epoch, unless a ``validation`` scenario is given.

    Attributes:
      weight_layer: a backbone layer name (``"dense3"``, ``"params/dense3/kernel"``),
        ``None`` (features only) or :data:`jaxlineage.detector.AUTO` (the smallest kernel).
      feature_tap: a feature tap, ``None`` (weights only) or ``AUTO`` (the population's first tap).
      n_probe: probe inputs of the feature pairs (paper: 64).
      weight_pool, feature_pool: block-average factors (:func:`jaxlineage.detector.block_mean`).
      module: the :class:`~jaxlineage.detector.LineageDetector` (default: the paper's), or a
        mapping of its fields (e.g. ``{"difference_init": True}``: presets stay plain data);
        ``no_parent`` follows the training labels.
      epochs, batch_size, learning_rate, decay_rate, eval_chunk: see :func:`jaxlineage.detector.train`.
      val_fraction: share of the training queries held out for epoch selection.
      balance_no_parent: in an open-set fit, repeat the training queries of the rarer side
        ("no parent" or "has a parent") until both sides count as many examples per epoch
        (:func:`_balanced_no_parent`), so the "no parent" logit is not learnt from a rare class.
      calibrate_no_parent: :meth:`decide` answers "no parent" below ``no_parent_threshold``
        (chosen on the validation queries) instead of below 0 (the detector's own argmax).
      detector: the fitted :class:`~jaxlineage.detector.Detector` (``None`` before :meth:`fit`).
      no_parent_threshold: set by an open-set fit: the margin (best candidate logit minus the
        "no parent" logit) that best separates the validation queries with a parent from those
        without (:func:`_margin_threshold`); 0 when the validation split lacks one side.

    References:
      Yu & Wang, "Neural Lineage", CVPR 2024, Sec. 4 and supplement S2.5.
    """

    weight_layer: str | detector_lib.Auto | None = detector_lib.AUTO
    feature_tap: str | detector_lib.Auto | None = detector_lib.AUTO
    n_probe: int = 64
    weight_pool: int = 1
    feature_pool: int = 1
    module: detector_lib.LineageDetector | Mapping[str, Any] | None = None
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 0.01
    decay_rate: float = 0.7
    eval_chunk: int = 64
    val_fraction: float = 0.125
    balance_no_parent: bool = False
    calibrate_no_parent: bool = False
    detector: detector_lib.Detector | None = None
    no_parent_threshold: float = 0.0

    learned: ClassVar[bool] = True

    def __post_init__(self):
        # "auto" is the old string spelling of AUTO (stored presets); any other string names a layer / tap.
        auto = lambda v: detector_lib.AUTO if isinstance(v, str) and v == detector_lib.AUTO.value else v
        object.__setattr__(self, "weight_layer", auto(self.weight_layer))
        object.__setattr__(self, "feature_tap", auto(self.feature_tap))
        if isinstance(self.module, Mapping):
            try:
                object.__setattr__(self, "module", detector_lib.LineageDetector(**self.module))
            except TypeError as e:
                raise ScorerError(f"DetectorScorer: module={dict(self.module)!r}: {e}") from e
        if self.weight_layer is None and self.feature_tap is None:
            raise ScorerError(
                "DetectorScorer: weight_layer and feature_tap are both None; the detector needs weights,"
                " features or both"
            )
        for name in ("n_probe", "weight_pool", "feature_pool"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ScorerError(f"DetectorScorer: {name} must be a positive integer, got {v!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ScorerError(f"DetectorScorer: val_fraction must be in (0, 1), got {self.val_fraction}")

    @property
    def name(self) -> str:
        parts = [p for p, v in (("weights", self.weight_layer), ("features", self.feature_tap)) if v is not None]
        return "lineage_detector" + ("" if len(parts) == 2 else "_" + parts[0])

    @property
    def settings(self) -> dict:
        """JSON-able settings (for :class:`~jaxlineage.eval.core.Result`)."""
        val = lambda v: v.value if isinstance(v, enum.Enum) else v
        return dict(
            weight_layer=val(self.weight_layer),
            feature_tap=val(self.feature_tap),
            n_probe=self.n_probe,
            weight_pool=self.weight_pool,
            feature_pool=self.feature_pool,
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            decay_rate=self.decay_rate,
            val_fraction=self.val_fraction,
            balance_no_parent=self.balance_no_parent,
            calibrate_no_parent=self.calibrate_no_parent,
            module=detector_lib.module_config(self.module or detector_lib.LineageDetector()),
        )

    # -- reading populations

    def _resolve(self, pop: Population) -> tuple[str | None, str | None]:
        """The weight layer and feature tap on ``pop`` (``AUTO`` resolved on its first model)."""
        layer, tap = self.weight_layer, self.feature_tap
        if layer is detector_lib.AUTO:
            layer = detector_lib.auto_layer(_first(pop))
        elif layer is not None:
            layer = detector_lib.resolve_layer(layer, _first(pop))
        if tap is detector_lib.AUTO:
            if not pop.feature_fns:
                raise ScorerError(f"{self.name}: models {pop.ids[0]!r}... ({pop.arch}) have no feature tap")
            tap = next(iter(pop.feature_fns))
        return layer, tap

    def readable(self, candidates: Population, queries: Population) -> bool:
        """Whether the queries have the candidates' weight layer (same matrix shape) and feature tap.

        Features of another architecture are not compared (their widths may differ); a
        query of the same architecture whose arrays still differ is an error naming it.
        """
        layer, tap = self._resolve(candidates)
        if tap is not None and (tap not in queries.feature_fns or queries.arch != candidates.arch):
            return False
        if layer is not None:
            ck, qk = (
                detector_lib.backbone_kernels(candidates.params)[layer],
                detector_lib.backbone_kernels(queries.params).get(layer),
            )
            if qk is None or (queries.arch != candidates.arch and np.shape(qk)[1:] != np.shape(ck)[1:]):
                return False
        return True

    def _arrays(self, pop: Population, layer: str | None, tap: str | None, x: np.ndarray):
        """``([P, out, in] or None, [P, n_probe, D] or None)`` of one population."""
        check_finite(self.name, ModelSet((pop,)))
        w = f = None
        if layer is not None:
            kernels = detector_lib.backbone_kernels(pop.params)
            if layer not in kernels:
                valid = detector_lib.weight_layers(_first(pop))
                raise ScorerError(
                    f"{self.name}: model {pop.ids[0]!r} ({pop.arch}) has no weight layer {layer!r}; its layers: {valid}"
                )
            w = detector_lib.kernel_matrices(kernels[layer])
        if tap is not None:
            if tap not in pop.feature_fns:
                raise ScorerError(
                    f"{self.name}: feature tap {tap!r} does not exist for model {pop.ids[0]!r}"
                    f" ({pop.arch}); valid taps: {tuple(pop.feature_fns)}"
                )
            fn = pop.feature_fns[tap]
            _check_applies(pop, fn, x, self.name, f"feature tap {tap!r}")
            f = np.asarray(_outputs(pop, fn, x), np.float32)
            f = f.reshape(f.shape[0], f.shape[1], -1)
        return w, f

    def _stack(self, models: ModelSet, layer, tap, x):
        """Arrays of every population of ``models``, concatenated in model order (shapes checked, naming models)."""
        ws, fs, first = [], [], None
        for pop in models.populations:
            w, f = self._arrays(pop, layer, tap, x)
            for arr, out, what in ((w, ws, f"weight layer {layer!r}"), (f, fs, f"feature tap {tap!r}")):
                if arr is None:
                    continue
                if out and arr.shape[1:] != out[0].shape[1:]:
                    raise ScorerError(
                        f"{self.name}: {what} of model {pop.ids[0]!r} has shape {arr.shape[1:]} but"
                        f" {first!r} has {out[0].shape[1:]}"
                    )
                out.append(arr)
            first = first or pop.ids[0]
        cat = lambda xs: np.concatenate(xs) if xs else None
        return cat(ws), cat(fs)

    def examples(
        self,
        candidates: ModelSet | Population,
        queries: ModelSet | Population,
        *,
        probe: Any,
        labels: Any = None,
        open_set: bool = False,
    ) -> detector_lib.Examples:
        """The detector's examples: every query against all candidates (labels default to 0).

        Args:
          candidates, queries: model sets (or single populations).
          probe: ``[N, ...]`` probe inputs; the first ``n_probe`` are used.
          labels: ``[M]`` parent index per query, :data:`NO_PARENT` allowed with ``open_set``.
          open_set: allow "no parent" labels.

        Returns:
          :class:`jaxlineage.detector.Examples` via :func:`jaxlineage.detector.examples_from_arrays`.
        """
        candidates, queries = _as_set(candidates), _as_set(queries)
        if len(candidates) == 0 or len(queries) == 0:
            raise ScorerError(f"{self.name}: empty {'candidate' if len(candidates) == 0 else 'query'} set")
        layer, tap = self._resolve(candidates.populations[0])
        x = _probe(probe, self.name)
        if tap is not None:
            if self.n_probe > len(x):
                raise ScorerError(f"{self.name}: n_probe={self.n_probe} exceeds the {len(x)} probe inputs")
            x = x[: self.n_probe]
        pw, pf = self._stack(candidates, layer, tap, x)
        cw, cf = self._stack(queries, layer, tap, x)
        if pw is not None and cw.shape[1:] != pw.shape[1:]:
            raise ScorerError(
                f"{self.name}: weight layer {layer!r} of query {queries.ids[0]!r} has shape {cw.shape[1:]}"
                f" but candidate {candidates.ids[0]!r} has {pw.shape[1:]}"
            )
        if pf is not None and cf.shape[1:] != pf.shape[1:]:
            raise ScorerError(
                f"{self.name}: features at {tap!r} of query {queries.ids[0]!r} have shape {cf.shape[1:]}"
                f" but candidate {candidates.ids[0]!r} has {pf.shape[1:]}"
            )
        labels = np.zeros(len(queries), int) if labels is None else np.asarray(labels)
        return detector_lib.examples_from_arrays(
            labels=labels,
            parent_weights=pw,
            child_weights=cw,
            parent_features=pf,
            child_features=cf,
            parent_ids=candidates.ids,
            child_ids=queries.ids,
            open_set=open_set,
            weight_pool=self.weight_pool,
            feature_pool=self.feature_pool,
            weight_layer=layer,
            feature_tap=tap,
        )

    # -- fitting

    def fit_examples(
        self, train: detector_lib.Examples, val: detector_lib.Examples, *, key: jax.Array
    ) -> DetectorScorer:
        """Trains on prepared examples (train / validation); returns the fitted scorer."""
        module = self.module or detector_lib.LineageDetector()
        module = module.clone(no_parent=train.open_set or val.open_set)
        if self.balance_no_parent and train.open_set:
            train = train.take(_balanced_no_parent(train.labels, train.num_candidates))
        det = detector_lib.train(
            train,
            val,
            key=key,
            module=module,
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            decay_rate=self.decay_rate,
            eval_chunk=self.eval_chunk,
        )
        threshold = 0.0
        if module.no_parent and len(val):
            logits = detector_lib.predict_logits(det, val, chunk=self.eval_chunk)
            k = val.num_candidates
            threshold = _margin_threshold(logits[:, :k].max(1) - logits[:, k], val.labels != k)
        return dataclasses.replace(self, detector=det, no_parent_threshold=threshold)

    def fit(self, train: Scenario, *, key: jax.Array, validation: Scenario | None = None) -> DetectorScorer:
        """Fits on ``train``'s queries (labels = ``train.labels``); returns the fitted scorer.

        Args:
          train: the training scenario (only its queries, candidates, labels, split
            keys and probe are read).
          key: PRNG key (validation split, initialisation, data order).
          validation: optional scenario of validation queries (same candidates);
            default: ``val_fraction`` of ``train``'s queries, whole split-key groups.
        """
        split_key, train_key = jax.random.split(key)
        open_set = bool(np.any(train.labels == NO_PARENT)) or (
            validation is not None and bool(np.any(validation.labels == NO_PARENT))
        )
        ex = self.examples(train.candidates, train.queries, probe=train.probe, labels=train.labels, open_set=open_set)
        if validation is not None:
            if validation.candidates.ids != train.candidates.ids:
                raise ScorerError(f"{self.name}: the validation scenario's candidates differ from the training ones")
            val = self.examples(
                validation.candidates,
                validation.queries,
                probe=train.probe,
                labels=validation.labels,
                open_set=open_set,
            )
            return self.fit_examples(ex, val, key=train_key)
        tr, va = _group_split(train.split_keys, self.val_fraction, split_key, self.name)
        return self.fit_examples(ex.take(tr), ex.take(va), key=train_key)

    # -- scoring

    def _fitted(self) -> detector_lib.Detector:
        if self.detector is None:
            raise ScorerError(f"{self.name} is not fitted: call fit(train_scenario, key=...) first")
        return self.detector

    def logits(self, candidates: ModelSet | Population, queries: ModelSet | Population, *, probe: Any) -> np.ndarray:
        """``[M, K]`` logits (``[M, K + 1]`` with the "no parent" logit last, for an open-set detector)."""
        det = self._fitted()
        ex = self.examples(candidates, queries, probe=probe, open_set=det.module.no_parent)
        return detector_lib.predict_logits(det, ex, chunk=self.eval_chunk)

    def _scores(self, logits: np.ndarray, k: int) -> np.ndarray:
        """``[K, M]`` from ``[M, K (+ 1)]`` logits: relative to the "no parent" logit when the detector has one."""
        s = logits[:, :k]
        if self._fitted().module.no_parent:
            s = s - logits[:, k : k + 1]
        return s.T

    def score_block(self, candidates: Population, queries: Population, *, probe: np.ndarray) -> np.ndarray:
        return self._scores(self.logits(candidates, queries, probe=probe), len(candidates))

    def decide(self, scores: np.ndarray) -> np.ndarray | None:
        """The open-set detector's own answer: its argmax over the ``K + 1`` logits.

        For a detector fitted with "no parent" labels, :meth:`score_block` returns the candidate
        logits minus the "no parent" logit, so a query is :data:`NO_PARENT` where no score reaches 0
        (NaN, an unreadable pair, never does). That logit is the head applied to the learned token,
        which is appended *after* the per-query standardisation: one constant ``v.u + b`` for every
        query. With ``calibrate_no_parent`` the cut is ``no_parent_threshold`` (chosen on the
        validation queries at :meth:`fit`) instead of 0. ``None`` (closed-set figures only) for a
        detector trained without the "no parent" logit.
        """
        if self.detector is None or not self.detector.module.no_parent:
            return None
        s = np.nan_to_num(np.asarray(scores, np.float64), nan=-np.inf)
        t = self.no_parent_threshold if self.calibrate_no_parent else 0.0
        return np.where(s.max(axis=0) >= t, s.argmax(axis=0), NO_PARENT)

    def score(
        self, candidates: ModelSet, queries: ModelSet, *, probe: np.ndarray, unreadable: str = "raise"
    ) -> np.ndarray:
        """``[K, M]`` logits, all candidates standardised together per query (see the class doc).

        ``unreadable="nan"`` leaves NaN columns for query populations that some
        candidate population cannot be read against.
        """
        if len(candidates) == 0:
            raise ScorerError(f"{self.name}: empty candidate set")
        if len(queries) == 0:
            raise ScorerError(f"{self.name}: empty query set")
        out = np.full((len(candidates), len(queries)), np.nan)
        keep = []
        for mo, qp in zip(queries.offsets(), queries.populations):
            bad = next((cp for cp in candidates.populations if not self.readable(cp, qp)), None)
            if bad is None:
                keep.extend(range(mo, mo + len(qp)))
            elif unreadable == "raise":
                raise ScorerError(
                    f"{self.name} cannot score query {qp.ids[0]!r} ({qp.arch}) against candidate"
                    f" {bad.ids[0]!r} ({bad.arch})"
                )
        if keep:
            out[:, keep] = self._scores(self.logits(candidates, queries.take(keep), probe=probe), len(candidates))
        return out


def _margin_threshold(margin: np.ndarray, known: np.ndarray) -> float:
    """The cut ``t`` (answer "has a parent" where ``margin >= t``) with the best balanced accuracy.

    Candidates are the midpoints between consecutive sorted margins (and one below / above all);
    ties go to the cut nearest the middle of the tied range. ``0.0`` when one side is empty.
    """
    margin, known = np.asarray(margin, np.float64), np.asarray(known, bool)
    if known.all() or not known.any():
        return 0.0
    m = np.sort(np.unique(margin))
    cuts = np.concatenate([[m[0] - 1.0], (m[:-1] + m[1:]) / 2, [m[-1] + 1.0]])
    bal = np.array([(np.mean(margin[known] >= t) + np.mean(margin[~known] < t)) / 2 for t in cuts])
    best = np.flatnonzero(bal == bal.max())
    return float(cuts[best[len(best) // 2]])


def _balanced_no_parent(labels: np.ndarray, k: int) -> np.ndarray:
    """Indices of ``labels`` with the rarer side ("no parent" = ``k``, or a parent) repeated to the other's size.

    Both sides are kept whole; the rarer one is cycled (``np.resize``) up to the larger count, so
    an epoch sees as many "no parent" examples as examples with a parent. With one side empty the
    indices are unchanged.
    """
    labels = np.asarray(labels)
    none, known = np.flatnonzero(labels == k), np.flatnonzero(labels != k)
    if not len(none) or not len(known):
        return np.arange(len(labels))
    n = max(len(none), len(known))
    return np.sort(np.concatenate([np.resize(none, n), np.resize(known, n)]))


def _as_set(models: ModelSet | Population) -> ModelSet:
    return ModelSet((models,)) if isinstance(models, Population) else models


def _group_split(split_keys: Sequence[str], fraction: float, key: jax.Array, who: str) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) query indices; the held-out part is about ``fraction``, whole split-key groups."""
    groups = list(dict.fromkeys(split_keys))
    n = len(split_keys)
    if len(groups) < 2:
        raise ScorerError(
            f"{who}: {n} training queries in {len(groups)} split-key group(s); a validation split needs"
            " at least 2 groups"
        )
    order = [groups[i] for i in np.asarray(jax.random.permutation(key, len(groups)))]
    want, held = max(1, int(round(fraction * n))), []
    for g in order[:-1]:  # at least one group stays for training
        if sum(split_keys[i] in held for i in range(n)) >= want:
            break
        held.append(g)
    mask = np.array([k in held for k in split_keys])
    return np.flatnonzero(~mask), np.flatnonzero(mask)


# --------------------------------------------------------------------------- Model DNA (MGMP)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ModelDNAScorer(Scorer):
    """MGMP / Model DNA as a learned scorer: ``S[k, m]`` = fraction of query ``m``'s fragments called homologous.

    .. math::
        S_{km} = \\frac1N \\sum_{i=1}^N \\big[f_p^{(k)}(o^{k}_i, o^{m}_i) > \\theta\\big],\\qquad
        o_i = [g^{(k)}(x_i) ; y_i]

    with ``y_i`` the model's output at ``tap`` on probe input ``x_i`` and
    ``(g^{(k)}, f_p^{(k)})`` the DNA generator and provenance classifier trained for
    source (candidate) ``k`` (:func:`jaxlineage.mgmp.train`). ``S >= delta`` is the
    paper's model-level decision.

    :meth:`fit` trains one generator + classifier per candidate on the training
    scenario, and reads nothing else: the pool is the training queries,
    homologous where ``train.related[k, m]``, non-homologous elsewhere; the DNA
    inputs ``D_s`` are ``train.probe``. The paper draws ``D_s`` from the
    *source's* training data: :func:`jaxlineage.eval.dna.run` builds its training
    scenario with the source task's train inputs as probe; a generic
    :func:`jaxlineage.eval.scenarios.verify` scenario carries a probe of the
    queries' task, which then serves as ``D_s``. Only training queries whose
    fragments have the candidate's width enter its pool (e.g. at the logits, a
    transfer target with another head is left out; the ids left out are in
    ``left_out``). A candidate without a homologous or without a non-homologous
    training query is not fitted (scoring it raises). :meth:`score` builds every
    fragment on the probe it is given (the state's ``x`` and the source's
    outputs are replaced by the probe's); :meth:`readable` is ``False`` for
    queries whose fragment width differs from the candidate's, so
    ``score(..., unreadable="nan")`` leaves those pairs NaN.

    Attributes:
      config: :class:`jaxlineage.mgmp.Config` (``Generator.NONE`` = the paper's
        no-generator baseline; ``pair_input`` CONCAT / RELATION), or a mapping of its
        fields (enum fields by value, e.g. ``{"generator": "none", "num_steps": 300}``).
      tap: the fragments' outputs: ``None`` = the logits (the paper), or a feature
        tap shared by sources and targets (e.g. ``"relu1"``) when heads differ.
      states: ``{candidate id: trained mgmp.State}`` (after :meth:`fit`).
      histories: ``{candidate id: per-step training metrics}``.
      left_out: ``{candidate id: training query ids of another fragment width}``.

    References:
      Mu et al., "Model Provenance via Model DNA", ECAI 2024, Eq. 3-9 and Table 1.
    """

    config: mgmp_lib.Config | Mapping[str, Any] = dataclasses.field(default_factory=mgmp_lib.Config)
    tap: str | None = None
    states: Mapping[str, mgmp_lib.State] = dataclasses.field(default_factory=dict)
    histories: Mapping[str, Mapping[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    left_out: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    learned: ClassVar[bool] = True

    def __post_init__(self):
        if isinstance(self.config, Mapping):
            try:
                object.__setattr__(self, "config", mgmp_lib.Config(**self.config))
            except TypeError as e:
                raise ScorerError(f"ModelDNAScorer: config={dict(self.config)!r}: {e}") from e

    @property
    def name(self) -> str:
        gen = "" if self.config.uses_generator else "_no_generator"
        return f"model_dna{gen}" + ("" if self.tap is None else f"@{self.tap}")

    @property
    def settings(self) -> dict:
        return dict(config=self.config.to_json(), fragment_tap=self.tap or "logits")

    def readable(self, candidates: Population, queries: Population) -> bool:
        if self.tap is not None and not (self.tap in candidates.feature_fns and self.tap in queries.feature_fns):
            return False
        state = next((self.states[i] for i in candidates.ids if i in self.states), None)
        if state is None:  # not fitted: score_block raises with the reason
            return True
        x = jax.ShapeDtypeStruct((1, *state.x.shape[1:]), state.x.dtype)
        try:
            return _fragment_width(candidates, self.tap, x) == _fragment_width(queries, self.tap, x)
        except Exception:  # score_block names the model that cannot be applied
            return True

    def _model_outputs(self, models: ModelSet, x: np.ndarray, what: str) -> jax.Array:
        """``[M, N, C]`` fragment outputs of every model (names the model whose outputs do not fit)."""
        outs, first = [], None
        for pop in models.populations:
            fn = _checked_fn(pop, self.tap, x, self.name, what, "the fragment function")
            o = _outputs(pop, fn, x)
            o = o.reshape(o.shape[0], o.shape[1], -1)
            if outs and o.shape[2:] != outs[0].shape[2:]:
                raise ScorerError(
                    f"{self.name}: {what} {pop.ids[0]!r} gives outputs of dim {o.shape[2]} but {first!r}"
                    f" gives {outs[0].shape[2]}"
                )
            first = first or pop.ids[0]
            outs.append(o)
        return jnp.concatenate(outs) if len(outs) > 1 else outs[0]

    def fit(self, train: Scenario, *, key: jax.Array) -> ModelDNAScorer:
        """Trains one generator + classifier per candidate of ``train``; candidate ``k`` uses ``fold_in(key, k)``."""
        x = jnp.asarray(_probe(train.probe, self.name))
        # Pool outputs per query population: queries of another fragment width (e.g. another head at the
        # logits) cannot be compared with a candidate of this width and stay out of its pool.
        pools, widths = [], np.zeros(len(train.queries), int)
        for off, qpop in zip(train.queries.offsets(), train.queries.populations):
            o = self._model_outputs(ModelSet((qpop,)), np.asarray(x), "training query")
            pools.append(o)
            widths[off : off + len(qpop)] = o.shape[-1]
        states, histories, left_out = {}, {}, {}
        cand_ids = train.candidates.ids
        k = 0
        for pop in train.candidates.populations:
            check_finite(self.name, ModelSet((pop,)))
            fn = _fn(pop, self.tap)
            width = _fragment_width(pop, self.tap, jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype))
            fits = widths == width
            pool = jnp.concatenate([o for o in pools if o.shape[-1] == width]) if fits.any() else None
            index = np.cumsum(fits) - 1  # position of query m among the queries of this width
            for j in range(len(pop)):
                if not fits.all():
                    left_out[cand_ids[k]] = tuple(q for q, f in zip(train.queries.ids, fits) if not f)
                hom = index[np.flatnonzero(train.related[k] & fits)]
                non = index[np.flatnonzero(~train.related[k] & fits)]
                if hom.size and non.size:
                    source = (_flat(fn), jax.tree.map(lambda a, j=j: a[j], pop.params))
                    outputs = mgmp_lib.PoolOutputs(pool[hom], pool[non])
                    try:
                        state, history = mgmp_lib.train(source, outputs, x, self.config, key=jax.random.fold_in(key, k))
                    except mgmp_lib.MGMPError as e:
                        raise ScorerError(f"{self.name}: cannot train for source {cand_ids[k]!r}: {e}") from e
                    states[cand_ids[k]], histories[cand_ids[k]] = state, history
                k += 1
        if not states:
            raise ScorerError(
                f"{self.name}: no candidate of {train.name!r} has both a homologous and a non-homologous"
                " training query (of its fragment width)"
            )
        return dataclasses.replace(self, states=states, histories=histories, left_out=left_out)

    def score_block(self, candidates: Population, queries: Population, *, probe: np.ndarray) -> np.ndarray:
        if not self.states:
            raise ScorerError(f"{self.name} is not fitted: call fit(train_scenario, key=...) first")
        missing = [i for i in candidates.ids if i not in self.states]
        if missing:
            raise ScorerError(
                f"{self.name}: candidate {missing[0]!r} has no trained provenance classifier (it had no"
                " homologous or no non-homologous training query)"
            )
        x = _probe(probe, self.name)
        targets = self._model_outputs(ModelSet((queries,)), x, "query")
        sources = self._model_outputs(ModelSet((candidates,)), x, "candidate")
        out = np.zeros((len(candidates), len(queries)))
        for k, cid in enumerate(candidates.ids):
            state = self.states[cid]
            if targets.shape[-1] != state.source_outputs.shape[-1]:
                raise ScorerError(
                    f"{self.name}: query {queries.ids[0]!r} gives {targets.shape[-1]} outputs but source"
                    f" {cid!r} was trained with {state.source_outputs.shape[-1]}"
                )
            state = state.replace(x=jnp.asarray(x), source_outputs=sources[k])
            out[k] = np.asarray(mgmp_lib.predict_outputs(state, targets).fraction)
        return out


def _fragment_width(pop: Population, tap: str | None, x: jax.ShapeDtypeStruct) -> int:
    """The width of ``pop``'s flattened fragment outputs on inputs like ``x`` (shapes only, nothing runs)."""
    out = jax.eval_shape(_fn(pop, tap), _first(pop), x)
    return int(np.prod(out.shape[1:]))


@functools.cache
def _flat(fn: Callable) -> Callable:
    """``fn`` with its outputs flattened to ``[N, D]`` (one function object per ``fn``: jit caches stay warm)."""

    def flat(params, x):
        y = fn(params, x)
        return y.reshape(y.shape[0], -1)

    return flat


# --------------------------------------------------------------------------- ModelGiF


class Field(enum.Enum):
    """Which gradient field :class:`ModelGiFScorer` compares.

    * ``LOGITS`` (default): the paper's field, of the model's logits (scalar:
      the logit of its own predicted class, :data:`jaxlineage.modelgif.Target.PREDICTED`).

    A feature tap name (a ``str``) instead gives the *backbone field*: the field of
    ``feature_sum`` of the features at that tap, which ignores classifier heads.
    """

    LOGITS = "logits"


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ModelGiFScorer(Scorer):
    """ModelGiF as a learning-free scorer: ``S[k, m] = -d(k, m)``.

    .. math::
        d(A, B) = \\frac{1}{N K} \\sum_{n=1}^{N} \\sum_{k=1}^{K}
            \\Big[1 - \\cos\\big(G^A_k(x_n), G^B_k(x_n)\\big)\\Big]

    (:func:`jaxlineage.modelgif.distance_matrix`) at ``n_refs`` reference inputs
    drawn from the probe by :func:`jaxlineage.modelgif.sample_references` with
    ``key``: the draw sees the data only, never an evaluated model (the official
    code's leak). Works across architectures (only the input space must agree).

    Attributes:
      field: :attr:`Field.LOGITS` or a feature tap (backbone field).
      n_refs: reference inputs (at most the probe's size).
      steps: Gauss-Legendre nodes ``K`` (paper: 50).
      key: PRNG key of the reference draw.
      strategy: :class:`jaxlineage.modelgif.ReferenceSampling` (``CLASS_BALANCED``
        needs labels: :meth:`per_reference` only).
      target: the scalar output (default: ``PREDICTED`` for the logits, ``feature_sum`` for a tap).
      chunk_size: references per chunk (bounds memory).
      archs: the architectures it reads (both models' must be among them; ``None``: any).
        A tap name means different layers in different architectures: the provenance
        section's backbone field is one scorer per architecture, each at its own tap
        (:data:`BACKBONE_TAPS`).

    References:
      Song et al., "ModelGiF: Gradient Fields for Model Functional Distance", ICCV 2023.
    """

    field: Field | str = Field.LOGITS
    n_refs: int = 256
    steps: int = 50
    key: jax.Array = dataclasses.field(default_factory=lambda: jax.random.key(0))
    strategy: modelgif_lib.ReferenceSampling = modelgif_lib.ReferenceSampling.RANDOM
    target: Any = None
    chunk_size: int | None = 32
    archs: tuple[str, ...] | None = None

    def __post_init__(self):
        if isinstance(self.archs, str):
            object.__setattr__(self, "archs", (self.archs,))
        # A str is always a tap: zoo networks have a tap called "logits" (the backbone field of the logits).
        if isinstance(self.n_refs, bool) or int(self.n_refs) != self.n_refs or self.n_refs < 1:
            raise ScorerError(f"ModelGiFScorer: n_refs must be a positive integer, got {self.n_refs!r}")

    @property
    def tap(self) -> str | None:
        return None if self.field is Field.LOGITS else self.field

    @property
    def name(self) -> str:
        return "modelgif" + ("" if self.tap is None else f"@{self.tap}")

    @property
    def settings(self) -> dict:
        t = self.scalar_output
        return dict(
            field=self.field.value if isinstance(self.field, Field) else self.field,
            n_refs=self.n_refs,
            steps=self.steps,
            key=np.asarray(jax.random.key_data(self.key)).tolist(),
            strategy=self.strategy.value,
            target=getattr(t, "value", getattr(t, "__name__", repr(t))),
        ) | ({} if self.archs is None else {"archs": list(self.archs)})

    @property
    def scalar_output(self):
        """The field's scalar output ``F``: ``target``, else ``PREDICTED`` (logits) or ``feature_sum`` (a tap)."""
        if self.target is not None:
            return self.target
        return modelgif_lib.Target.PREDICTED if self.tap is None else modelgif_lib.feature_sum

    def readable(self, candidates: Population, queries: Population) -> bool:
        if self.archs is not None and not (candidates.arch in self.archs and queries.arch in self.archs):
            return False
        return self.tap is None or (self.tap in candidates.feature_fns and self.tap in queries.feature_fns)

    def references(self, probe: Any, labels: Any = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """``(x_ref [n_refs, ...], labels_ref or None, indices)``: the draw of ``key`` from the probe, data only."""
        x = _probe(probe, self.name)
        if self.n_refs > len(x):
            raise ScorerError(f"{self.name}: n_refs={self.n_refs} exceeds the {len(x)} probe inputs")
        return modelgif_lib.sample_references(x, labels, n=int(self.n_refs), key=self.key, strategy=self.strategy)

    def per_reference(
        self, candidates: ModelSet | Population, queries: ModelSet | Population, *, probe: Any, labels: Any = None
    ) -> np.ndarray:
        """``[K, M, n_refs]`` distances per reference (prefix means give fewer references).

        Model sets are read population by population; pairs the scorer cannot read
        (:meth:`readable`: a backbone tap one side lacks) are NaN.
        """
        if isinstance(candidates, Population) and isinstance(queries, Population):
            return self._per_reference(candidates, queries, probe=probe, labels=labels)
        candidates, queries = _as_set(candidates), _as_set(queries)
        if len(candidates) == 0 or len(queries) == 0:
            raise ScorerError(f"{self.name}: empty {'candidate' if len(candidates) == 0 else 'query'} set")
        out = np.full((len(candidates), len(queries), int(self.n_refs)), np.nan)
        for ko, cp in zip(candidates.offsets(), candidates.populations):
            for mo, qp in zip(queries.offsets(), queries.populations):
                if self.readable(cp, qp):
                    block = self._per_reference(cp, qp, probe=probe, labels=labels)
                    out[ko : ko + len(cp), mo : mo + len(qp)] = block
        return out

    def _per_reference(self, candidates: Population, queries: Population, *, probe: Any, labels: Any) -> np.ndarray:
        x_ref, y_ref, _ = self.references(probe, labels)
        x_ref = np.asarray(x_ref, np.float32)
        target = self.scalar_output
        sides = []
        for pop, what in ((candidates, "candidate"), (queries, "query")):
            fn = _checked_fn(pop, self.tap, x_ref, self.name, what, "the field's function")
            sides.append(dataclasses.replace(pop, logits_fn=fn, feature_fns={}, default_tap=None))
        use_labels = target is modelgif_lib.Target.LABEL
        if use_labels and y_ref is None:
            raise ScorerError(f"{self.name}: target LABEL needs labels of the probe")
        try:
            d = modelgif_lib.distance_matrix(
                sides[0],
                sides[1],
                x=x_ref,
                steps=self.steps,
                target=target,
                labels=jnp.asarray(y_ref) if use_labels else None,
                chunk_size=self.chunk_size,
                per_reference=True,
            )
        except ValueError as e:
            raise ScorerError(
                f"{self.name}: candidates {candidates.ids[0]!r}... vs queries {queries.ids[0]!r}...: {e}"
            ) from e
        return np.asarray(d)

    def score_block(self, candidates: Population, queries: Population, *, probe: np.ndarray) -> np.ndarray:
        return -self._per_reference(candidates, queries, probe=probe, labels=None).mean(axis=-1)


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """Verification quality with ``n_refs`` reference points (score = ``-distance``).

    Attributes:
      n_refs: the number of reference points (a prefix of one draw).
      auc: ROC AUC of positive vs negative pairs (:func:`jaxlineage.eval.metrics.roc_auc`).
      tpr_at_1, tpr_at_5: TPR at 1 % / 5 % FPR (:func:`jaxlineage.eval.metrics.tpr_at_fpr`).
      num_pos, num_neg: the numbers of positive and negative pairs.
      mean_pos, mean_neg: mean distances of positive and negative pairs.
    """

    n_refs: int
    auc: float
    tpr_at_1: float
    tpr_at_5: float
    num_pos: int
    num_neg: int
    mean_pos: float
    mean_neg: float


def reference_sweep(per_reference: Any, positive: Any, negative: Any, *, n_refs: Sequence[int]) -> list[SweepPoint]:
    """Verification metrics as a function of the number of reference points.

    The distance of pair ``(k, m)`` with ``r`` references is the mean of
    ``per_reference[k, m, :r]``.

    Args:
      per_reference: ``[K, M, N]`` from :meth:`ModelGiFScorer.per_reference`.
      positive, negative: disjoint boolean ``[K, M]`` masks.
      n_refs: reference counts, each in ``[1, N]``.

    Returns:
      One :class:`SweepPoint` per count, in the given order.
    """
    per_reference = np.asarray(per_reference, np.float64)
    positive, negative = np.asarray(positive, bool), np.asarray(negative, bool)
    if per_reference.ndim != 3 or positive.shape != per_reference.shape[:2] or negative.shape != positive.shape:
        raise metrics.MetricError(
            f"per_reference must be [K, M, N] and the masks [K, M]; got {per_reference.shape},"
            f" {positive.shape} and {negative.shape}"
        )
    if np.any(positive & negative):
        raise metrics.MetricError("a pair cannot be both positive and negative")
    points = []
    for r in n_refs:
        if not 1 <= r <= per_reference.shape[2]:
            raise metrics.MetricError(f"n_refs entries must be in [1, {per_reference.shape[2]}]; got {r}")
        dist = per_reference[..., :r].mean(axis=-1)
        pos, neg = dist[positive], dist[negative]
        points.append(
            SweepPoint(
                n_refs=int(r),
                auc=metrics.roc_auc(-pos, -neg),
                tpr_at_1=metrics.tpr_at_fpr(-pos, -neg, 0.01),
                tpr_at_5=metrics.tpr_at_fpr(-pos, -neg, 0.05),
                num_pos=int(pos.size),
                num_neg=int(neg.size),
                mean_pos=float(pos.mean()),
                mean_neg=float(neg.mean()),
            )
        )
    return points


# --------------------------------------------------------------------------- registration


def model_dna(*, config: mgmp_lib.Config | Mapping[str, Any] | None = None, **kwargs) -> list[ModelDNAScorer]:
    """Model DNA with and without the generator (the paper's baseline): two :class:`ModelDNAScorer` s.

    Args:
      config: :class:`jaxlineage.mgmp.Config` or a mapping of its fields; its ``generator`` is set
        to ``"mlp"``, then ``"none"``.
      **kwargs: the other :class:`ModelDNAScorer` fields (``tap``).
    """
    if config is None:
        config = {}
    if isinstance(config, mgmp_lib.Config):
        configs = [dataclasses.replace(config, generator=mgmp_lib.Generator(g)) for g in ("mlp", "none")]
    else:
        configs = [{**dict(config), "generator": g} for g in ("mlp", "none")]
    return [ModelDNAScorer(config=c, **kwargs) for c in configs]


def _model_dna_rows(settings: Mapping[str, Any]) -> list[registry.Row]:
    """The provenance section's Model DNA rows: logits fragments, ``dna_steps`` per source, ``D_s`` = the probe."""
    if settings.get("dna_steps") is None:
        return []
    # Mini-batches of DNA inputs are drawn from the probe: at most its size (the tiny preset's 64).
    batch = min(mgmp_lib.Config().batch_size, int(settings["probe_len"]))
    return [
        registry.Row(
            label,
            ModelDNAScorer(config=mgmp_lib.Config(num_steps=settings["dna_steps"], generator=gen, batch_size=batch)),
        )
        for label, gen in (
            ("Model DNA (generator)", mgmp_lib.Generator.MLP),
            ("Model DNA (no generator)", mgmp_lib.Generator.NONE),
        )
    ]


def _modelgif_rows(settings: Mapping[str, Any]) -> list[registry.Row]:
    """The provenance section's ModelGiF rows at ``max(modelgif_refs)`` references: the logits field (every
    pair) and the backbone field (same-architecture pairs, each architecture at its :data:`BACKBONE_TAPS` tap)."""
    n, steps, key = max(settings["modelgif_refs"]), settings["modelgif_steps"], jax.random.key(settings["seed"])
    backbone = [
        ModelGiFScorer(field=tap, archs=(arch,), n_refs=n, steps=steps, key=key) for arch, tap in BACKBONE_TAPS.items()
    ]
    return [
        registry.Row(
            f"ModelGiF logits field ({n} refs)", ModelGiFScorer(n_refs=n, steps=steps, key=key), "logits field"
        ),
        registry.Row(f"ModelGiF backbone field ({n} refs)", backbone, "backbone field"),
    ]


registry.register(
    "detector",
    DetectorScorer,
    family="learned",
    questions=("identify",),  # a parent-identification model; one training per fold
    label="Lineage Detector",
    description="Neural Lineage's Lineage Detector (Sec. 4), trained per fold on the training queries",
)
registry.register(
    "mgmp",
    model_dna,
    family="learned",
    questions=("verify",),  # the provenance question it answers; one generator + classifier per candidate and fold
    label="Model DNA",
    provenance=_model_dna_rows,
    description="Model DNA (MGMP, ECAI 2024) with and without the generator",
)
registry.register(
    "modelgif",
    ModelGiFScorer,
    family="field",
    label="ModelGiF",
    provenance=_modelgif_rows,
    description="ModelGiF (ICCV 2023): gradient-field distance at seeded reference inputs",
)
