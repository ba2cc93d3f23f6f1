r"""Extraction-aware fingerprints as scorers: SAC-w, SAC-m, conferrable adversarial examples, IPGuard.

Each follows :class:`~jaxlineage.eval.core.Scorer` (``score(candidates, queries,
probe=...) -> [K, M]``, higher = more related) and is learning-free in the
protocol's sense: nothing is fitted on training *pairs*. What a fingerprint
needs besides the candidate (the source) is the **defender's data**
``data = (x, y)`` given at construction (e.g. the source's own training or test
split), never an evaluated model. The maths lives in :mod:`jaxlineage.fingerprints`.

* :class:`SACScorer` (Guan et al., NeurIPS 2022): ``S[k, m] = -d(C_k, C_m)``,
  SAC's mean absolute difference of sample-correlation matrices of the models'
  raw outputs (:func:`jaxlineage.fingerprints.correlation_matrix`) on
  ``n_samples`` samples. ``mode="w"``: the first ``n_samples`` inputs of ``data``
  that source ``k`` misclassifies (SAC-w; per source); ``mode="m"``: SAC's CutMix of
  the first ``n_samples`` inputs of ``data`` (or of the probe when ``data`` is
  ``None``; SAC-m; shared by every source).
  Paper defaults kept: cosine correlation, L1 mean, raw outputs, CutMix patch
  0.2 x side near a corner, 100 samples (the batch of SAC's scripts).
  Departure: SAC-w's samples come from ``data`` in order (SAC: its own h5 file of the
  source's errors on the CIFAR-10 test set).
* :class:`ConferrableScorer` (Lukas et al., ICLR 2021): ``S[k, m]`` = the fraction
  of source ``k``'s conferrable fingerprints on which query ``m`` predicts the
  source's label (fingerprint retention). Per source, the library trains
  ``n_surrogates`` surrogates (extracted from the source on ``data``'s inputs:
  label-only, or soft at ``temperature``) and, once per architecture,
  ``n_references`` references (independent models on ``data`` with its true
  labels), both from :func:`jaxlineage.fingerprints.fresh_like` of the source's
  tree, population-trained (:func:`jaxlineage.fingerprints.train_population`);
  then :func:`jaxlineage.fingerprints.conferrable_examples` from ``n_seeds``
  inputs of ``data`` drawn with ``seed``. Fingerprints are cached per source
  (by the hash of its parameters and the settings) in memory and, with
  ``cache_dir``, on disk.
  Kept from the paper: 100 fingerprints, the CEM loss's three terms, retention as the
  score. Departures: surrogates and references share the source's architecture (the
  paper mixes several); few surrogates / references (defaults 4 + 4); PGD with sign
  steps instead of Adam on the input; the search's target class (see
  :func:`jaxlineage.fingerprints.conferrable_examples`); ``lambdas = (1, 1, 1)``,
  ``eps = 0.025`` on [0, 1] images and 50 iterations are this library's choices (not
  checked against the paper's values).
* :class:`IPGuardScorer` (Cao et al., AsiaCCS 2021): ``S[k, m]`` = the fraction
  of source ``k``'s boundary points on which query ``m`` predicts the source's
  label (the matching rate). Paper defaults: 100 fingerprints, Adam on the input,
  random class pairs, seeds from the data. Departures: ``k``, the step count and
  the learning rate are this library's choices (not checked against the paper's
  grid); seeds are data inputs, not random noise.

Queries whose output size differs from the source's are unreadable (``NaN`` with
``unreadable="nan"``, else a :class:`~jaxlineage.eval.core.ScorerError` naming them).

Example::

    from jaxlineage.eval import fingerprint_scorers as fs
    sac = fs.SACScorer(mode="w", data=(x_test, y_test))
    S = sac.score(candidates, queries, probe=x_probe)          # [K, M]
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlineage import fingerprints as fp
from jaxlineage.eval import registry
from jaxlineage.eval.core import ModelSet, Population, Scorer, ScorerError, check_finite, check_models

__all__ = ["ConferrableScorer", "IPGuardScorer", "SACScorer"]


class _Unreadable(Exception):
    pass


def _one(pop: Population, i: int) -> Any:
    return jax.tree.map(lambda a: a[i], pop.params)


def _params_hash(params: Any) -> str:
    h = hashlib.sha1()
    for leaf in jax.tree.leaves(params):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(str(a.shape).encode() + a.tobytes())
    return h.hexdigest()[:16]


def _digest(settings: dict, *arrays: Any) -> str:
    """A short hash of settings and data arrays (fingerprint cache keys)."""
    h = hashlib.sha1(repr(sorted(settings.items())).encode())
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(str(a.shape).encode() + a.tobytes())
    return h.hexdigest()[:12]


def _output_width(pop: Population, x: np.ndarray, who: str) -> int:
    try:
        out = jax.eval_shape(pop.logits_fn, _one(pop, 0), jax.ShapeDtypeStruct((1, *np.shape(x)[1:]), jnp.float32))
    except Exception as e:
        raise ScorerError(
            f"{who}: logits_fn cannot be applied to model {pop.ids[0]!r} ({pop.arch}) on inputs of shape"
            f" {tuple(np.shape(x)[1:])}: {type(e).__name__}: {e}"
        ) from e
    return int(np.prod(out.shape[1:]))


def _data(data: Any, who: str, *, labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
    if data is None:
        raise ScorerError(f"{who}: needs the defender's labelled data, data=(x, y)")
    x, y = data
    x = np.asarray(x, np.float32)
    y = None if y is None else np.asarray(y).astype(np.int32).reshape(-1)
    if x.ndim < 2 or len(x) == 0:
        raise ScorerError(f"{who}: data inputs must be a non-empty batch [N, ...]; got shape {x.shape}")
    if labels and (y is None or y.size != len(x)):
        raise ScorerError(
            f"{who}: data needs one label per input; got {len(x)} inputs and {None if y is None else y.size}"
        )
    return x, y


class _FingerprintScorer(Scorer):
    """Shared loop: every (candidate population, query population) block; output sizes must agree."""

    sequential: bool | tuple[str, ...] = False

    def _seq(self, pop: Population) -> bool:
        """Whether ``pop``'s models run one after another: ``sequential`` is ``True`` or names its architecture."""
        s = self.sequential
        return bool(s) if isinstance(s, bool) else pop.arch in tuple(s)

    def score(self, candidates: ModelSet, queries: ModelSet, *, probe: Any, unreadable: str = "raise") -> np.ndarray:
        check_models(self.name, candidates, queries)
        x = np.asarray(probe, np.float32)
        out = np.full((len(candidates), len(queries)), np.nan)
        for ko, cp in zip(candidates.offsets(), candidates.populations):
            for mo, qp in zip(queries.offsets(), queries.populations):
                try:
                    wc, wq = _output_width(cp, x, self.name), _output_width(qp, x, self.name)
                    if wc != wq:
                        raise _Unreadable(
                            f"{self.name} cannot compare outputs of size {wq} (query {qp.ids[0]!r}) with"
                            f" {wc} (candidate {cp.ids[0]!r})"
                        )
                except _Unreadable as e:
                    if unreadable == "raise":
                        raise ScorerError(str(e)) from None
                    continue
                block = np.asarray(self.score_block(cp, qp, probe=x), np.float64)
                out[ko : ko + len(cp), mo : mo + len(qp)] = block
        return out

    def _query_check(self, qp: Population, x: np.ndarray) -> None:
        _output_width(qp, x, self.name)


# --------------------------------------------------------------------------- SAC


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class SACScorer(_FingerprintScorer):
    """SAC-w / SAC-m: ``S[k, m] = -mean|C_k - C_m|`` of sample-correlation matrices (see the module docstring).

    Attributes:
      mode: ``"w"`` (samples the source misclassifies; needs labelled ``data``) or ``"m"`` (CutMix).
      data: the defender's ``(x, y)``; ``mode="m"`` uses the probe when ``None`` (labels unused).
      n_samples: samples per source (SAC: 100); SAC-w uses all the source's errors if it has fewer
        (at least 2).
      seed: CutMix's seed.
      sequential: run models one after another (``True``, or the architectures to do so for: conv nets on CPU).
    """

    mode: str = "w"
    data: Any = None
    n_samples: int = 100
    seed: int = 0
    sequential: bool | tuple[str, ...] = False

    def __post_init__(self):
        if self.mode not in ("w", "m"):
            raise ScorerError(f"SACScorer: mode must be 'w' or 'm', got {self.mode!r}")
        if isinstance(self.n_samples, bool) or int(self.n_samples) != self.n_samples or self.n_samples < 2:
            raise ScorerError(f"SACScorer: n_samples must be an integer >= 2, got {self.n_samples!r}")
        if self.mode == "w":
            _data(self.data, self.name, labels=True)

    @property
    def name(self) -> str:
        return f"SAC-{self.mode}"

    @property
    def settings(self) -> dict:
        return dict(mode=self.mode, n_samples=int(self.n_samples), seed=self.seed)

    def samples(self, candidates: Population, probe: Any) -> list[np.ndarray]:
        """The samples of every candidate (SAC-m: one shared array; SAC-w: the source's own errors)."""
        if self.mode == "m":
            x = probe if self.data is None else self.data[0]
            x = np.asarray(x, np.float32)
            n = min(int(self.n_samples), len(x))
            if n < 2:
                raise ScorerError(f"{self.name}: needs at least 2 inputs to mix; got {len(x)}")
            return [fp.cutmix(x, n=n, seed=self.seed) if x.ndim >= 3 else x[:n]] * len(candidates)
        x, y = _data(self.data, self.name, labels=True)
        logits = np.asarray(
            fp.population_logits(candidates.logits_fn, candidates.params, jnp.asarray(x), self._seq(candidates))
        )
        out = []
        for k in range(len(candidates)):
            idx = fp.misclassified(logits[k], y)[: int(self.n_samples)]
            if idx.size < 2:
                raise ScorerError(
                    f"{self.name}: source {candidates.ids[k]!r} misclassifies {idx.size} of the {len(x)} data"
                    " inputs; SAC-w needs at least 2"
                )
            out.append(x[idx])
        return out

    def score_block(self, candidates: Population, queries: Population, *, probe: np.ndarray) -> np.ndarray:
        samples = self.samples(candidates, probe)
        out = np.zeros((len(candidates), len(queries)))
        for k, xs in enumerate(samples):
            xs = jnp.asarray(xs)
            if k == 0 or self.mode == "w":
                cq = fp.population_correlations(queries.logits_fn, queries.params, xs, self._seq(queries))
            ck = fp.population_correlations(candidates.logits_fn, candidates.take([k]).params, xs, False)
            out[k] = -np.asarray(fp.correlation_distance(ck, cq))
        return out


# --------------------------------------------------------------------------- fingerprints by search


def _agreement_block(self, candidates: Population, queries: Population, make: Callable) -> np.ndarray:
    out = np.zeros((len(candidates), len(queries)))
    for k in range(len(candidates)):
        f = make(candidates, k)
        out[k] = np.asarray(
            fp.agreement(queries.logits_fn, queries.params, jnp.asarray(f.x), jnp.asarray(f.labels), self._seq(queries))
        )
    return out


class _Cached:
    """Fingerprints per (source hash, settings), in memory and optionally as ``.npz`` files under ``cache_dir``."""

    def __init__(self, cache_dir: str | None):
        self.cache_dir = cache_dir
        self.memory: dict[str, fp.Fingerprints] = {}
        self.seconds: dict[str, float] = {}

    def get(self, key: str, build: Callable[[], fp.Fingerprints]) -> fp.Fingerprints:
        if key in self.memory:
            return self.memory[key]
        path = None if self.cache_dir is None else os.path.join(self.cache_dir, f"{key}.npz")
        if path is not None and os.path.exists(path):
            with np.load(path) as z:
                f = fp.Fingerprints(z["x"], z["labels"], z["scores"], z["index"])
        else:
            t0 = time.perf_counter()
            f = build()
            self.seconds[key] = time.perf_counter() - t0
            if path is not None:
                os.makedirs(self.cache_dir, exist_ok=True)
                tmp = path + ".tmp.npz"
                np.savez(tmp, x=f.x, labels=f.labels, scores=f.scores, index=f.index)
                os.replace(tmp, path)
        self.memory[key] = f
        return f


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ConferrableScorer(_FingerprintScorer):
    """Conferrable adversarial examples: ``S[k, m]`` = fingerprint retention of query ``m`` (module docstring).

    Attributes:
      data: the defender's labelled ``(x, y)``: surrogates' and references' training set and the seeds' pool.
      n_fingerprints: fingerprints per source (paper: 100).
      n_seeds: PGD starts per source (the best ``n_fingerprints`` are kept).
      n_surrogates, n_references: models trained per source / per architecture.
      extraction: ``"label"`` (surrogates on the source's argmax) or ``"soft"`` (KL at ``temperature``).
      temperature: soft extraction's temperature.
      train_steps, batch_size, lr: Adam training of surrogates and references.
      eps, step_size, steps: PGD (L-infinity).
      lambdas: the CEM loss weights ``(l1, l2, l3)``.
      bounds: the valid input range (``None``: none).
      seed: the key of every draw (inits, batches, seeds, random starts).
      cache_dir: a folder for the fingerprints (``None``: memory only).
      sequential: train / evaluate one model after another (``True``, or the architectures to do so for).
    """

    data: Any = None
    n_fingerprints: int = 100
    n_seeds: int = 400
    n_surrogates: int = 4
    n_references: int = 4
    extraction: str = "label"
    temperature: float = 4.0
    train_steps: int = 400
    batch_size: int = 64
    lr: float = 1e-3
    eps: float = 0.025
    step_size: float = 0.0025
    steps: int = 50
    lambdas: tuple[float, float, float] = (1.0, 1.0, 1.0)
    bounds: tuple[float, float] | None = (0.0, 1.0)
    seed: int = 0
    cache_dir: str | None = None
    sequential: bool | tuple[str, ...] = False
    _cache: _Cached = dataclasses.field(default=None, init=False, repr=False)
    _refs: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

    name = "conferrable"

    def __post_init__(self):
        _data(self.data, self.name, labels=True)
        if self.extraction not in ("label", "soft"):
            raise ScorerError(f"{self.name}: extraction must be 'label' or 'soft', got {self.extraction!r}")
        for f in ("n_fingerprints", "n_seeds", "n_surrogates", "n_references", "train_steps", "steps"):
            v = getattr(self, f)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ScorerError(f"{self.name}: {f} must be a positive integer, got {v!r}")
        if self.n_fingerprints > self.n_seeds or self.n_seeds > len(self.data[0]):
            raise ScorerError(
                f"{self.name}: need n_fingerprints <= n_seeds <= len(data); got {self.n_fingerprints},"
                f" {self.n_seeds}, {len(self.data[0])}"
            )
        object.__setattr__(self, "_cache", _Cached(self.cache_dir))

    @property
    def settings(self) -> dict:
        keys = (
            "n_fingerprints",
            "n_seeds",
            "n_surrogates",
            "n_references",
            "extraction",
            "temperature",
            "train_steps",
            "batch_size",
            "lr",
            "eps",
            "step_size",
            "steps",
            "lambdas",
            "bounds",
            "seed",
        )
        return {k: getattr(self, k) for k in keys}

    @property
    def generation_seconds(self) -> dict[str, float]:
        """Seconds spent generating each source's fingerprints (keys: cache keys), this instance only."""
        return dict(self._cache.seconds)

    def _key(self, *parts: Any) -> jax.Array:
        k = jax.random.key(int(self.seed))
        for p in parts:
            k = jax.random.fold_in(k, int(p))
        return k

    def _fresh(self, one: Any, n: int, key: jax.Array) -> Any:
        return jax.tree.map(lambda *a: jnp.stack(a), *[fp.fresh_like(one, k) for k in jax.random.split(key, n)])

    def references(self, candidates: Population) -> Any:
        """``[R, ...]`` references of the candidates' architecture (trained once per architecture and tree)."""
        one = _one(candidates, 0)
        sig = (candidates.logits_fn, str(jax.tree.structure(one)), tuple(np.shape(a) for a in jax.tree.leaves(one)))
        if sig not in self._refs:
            x, y = _data(self.data, self.name, labels=True)
            init = self._fresh(one, int(self.n_references), self._key(1))
            self._refs[sig] = fp.train_population(
                candidates.logits_fn,
                init,
                x,
                y,
                key=self._key(2),
                steps=int(self.train_steps),
                batch_size=int(self.batch_size),
                lr=float(self.lr),
                sequential=self._seq(candidates),
            )
        return self._refs[sig]

    def surrogates(self, candidates: Population, k: int) -> Any:
        """``[S, ...]`` surrogates of candidate ``k``: extracted from it on the data's inputs."""
        x, _ = _data(self.data, self.name, labels=True)
        src = candidates.take([k])
        logits = np.asarray(fp.population_logits(candidates.logits_fn, src.params, jnp.asarray(x)))[0]
        init = self._fresh(_one(candidates, k), int(self.n_surrogates), self._key(3, k))
        soft = None
        if self.extraction == "soft":
            p = np.asarray(jax.nn.softmax(jnp.asarray(logits) / self.temperature, -1))
            soft = np.broadcast_to(p, (int(self.n_surrogates), *p.shape))
        return fp.train_population(
            candidates.logits_fn,
            init,
            x,
            logits.argmax(-1),
            key=self._key(4, k),
            steps=int(self.train_steps),
            batch_size=int(self.batch_size),
            lr=float(self.lr),
            soft_targets=soft,
            temperature=float(self.temperature),
            alpha=0.9 if soft is not None else 0.0,
            sequential=self._seq(candidates),
        )

    def fingerprints(self, candidates: Population, k: int) -> fp.Fingerprints:
        """Candidate ``k``'s fingerprints (cached; generated from the data and the candidate only)."""
        check_finite(self.name, ModelSet((candidates.take([k]),)))
        key = f"conferrable-{_params_hash(_one(candidates, k))}-{_digest(self.settings, self.data[0], self.data[1])}"

        def build():
            x, y = _data(self.data, self.name, labels=True)
            seeds = np.sort(np.asarray(jax.random.permutation(self._key(5), len(x)))[: int(self.n_seeds)])
            fn = candidates.logits_fn
            return fp.conferrable_examples(
                fn,
                _one(candidates, k),
                fn,
                self.surrogates(candidates, k),
                fn,
                self.references(candidates),
                x[seeds],
                y[seeds],
                n=int(self.n_fingerprints),
                eps=float(self.eps),
                step_size=float(self.step_size),
                steps=int(self.steps),
                key=self._key(6, k),
                bounds=self.bounds,
                lambdas=self.lambdas,
                sequential=self._seq(candidates),
            )

        return self._cache.get(key, build)

    def score_block(self, candidates: Population, queries: Population, *, probe: np.ndarray) -> np.ndarray:
        return _agreement_block(self, candidates, queries, self.fingerprints)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class IPGuardScorer(_FingerprintScorer):
    """IPGuard: ``S[k, m]`` = matching rate of query ``m`` on source ``k``'s boundary points (module docstring).

    Attributes:
      data: ``(x, y)`` whose inputs seed the search (labels unused); ``None``: the probe.
      n_fingerprints: boundary points per source (paper: 100).
      k: the margin of class ``j`` over class ``i``.
      steps, lr: Adam on the inputs.
      bounds: the valid input range (``None``: none).
      seed: the key of the seeds' draw and of the class pairs.
      cache_dir: a folder for the fingerprints (``None``: memory only).
      sequential: evaluate the queries one model after another (``True``, or the architectures to do so for).
    """

    data: Any = None
    n_fingerprints: int = 100
    k: float = 0.5
    steps: int = 200
    lr: float = 0.01
    bounds: tuple[float, float] | None = (0.0, 1.0)
    seed: int = 0
    cache_dir: str | None = None
    sequential: bool | tuple[str, ...] = False
    _cache: _Cached = dataclasses.field(default=None, init=False, repr=False)

    name = "IPGuard"

    def __post_init__(self):
        if (
            isinstance(self.n_fingerprints, bool)
            or int(self.n_fingerprints) != self.n_fingerprints
            or self.n_fingerprints < 1
        ):
            raise ScorerError(f"{self.name}: n_fingerprints must be a positive integer, got {self.n_fingerprints!r}")
        object.__setattr__(self, "_cache", _Cached(self.cache_dir))

    @property
    def settings(self) -> dict:
        return dict(
            n_fingerprints=int(self.n_fingerprints),
            k=self.k,
            steps=self.steps,
            lr=self.lr,
            bounds=self.bounds,
            seed=self.seed,
        )

    @property
    def generation_seconds(self) -> dict[str, float]:
        return dict(self._cache.seconds)

    def fingerprints(self, candidates: Population, k: int, probe: Any) -> fp.Fingerprints:
        check_finite(self.name, ModelSet((candidates.take([k]),)))
        x = np.asarray(probe if self.data is None else self.data[0], np.float32)
        if len(x) < self.n_fingerprints:
            raise ScorerError(f"{self.name}: n_fingerprints={self.n_fingerprints} exceeds the {len(x)} seed inputs")
        key = f"ipguard-{_params_hash(_one(candidates, k))}-{_digest(self.settings, x)}"

        def build():
            base = jax.random.key(int(self.seed))
            seeds = np.sort(np.asarray(jax.random.permutation(base, len(x)))[: int(self.n_fingerprints)])
            return fp.ipguard_examples(
                candidates.logits_fn,
                _one(candidates, k),
                x[seeds],
                num_classes=_output_width(candidates, x, self.name),
                k=float(self.k),
                steps=int(self.steps),
                lr=float(self.lr),
                key=jax.random.fold_in(base, 1),
                bounds=self.bounds,
            )

        return self._cache.get(key, build)

    def score_block(self, candidates: Population, queries: Population, *, probe: np.ndarray) -> np.ndarray:
        return _agreement_block(self, candidates, queries, lambda c, k: self.fingerprints(c, k, probe))


# --------------------------------------------------------------------------- registration

# The fingerprints need the defender's labelled data (``data=(x, y)``; SAC-m and IPGuard fall back to the
# probe) and have their own benchmark (benchmarks/provenance.py): registered for lookups and the contract
# battery, not run by the bench's presets (``bench=False``).
registry.register(
    "sac",
    SACScorer,
    family="fingerprint",
    questions=("verify",),
    label="SAC",
    bench=False,
    description="SAC-w / SAC-m (Guan et al., NeurIPS 2022): sample-correlation matrices on the defender's data",
)
registry.register(
    "conferrable",
    ConferrableScorer,
    family="fingerprint",
    questions=("verify",),
    label="Conferrable examples",
    bench=False,
    description="conferrable adversarial examples (Lukas et al., ICLR 2021), from surrogates and references",
)
registry.register(
    "ipguard",
    IPGuardScorer,
    family="fingerprint",
    questions=("verify",),
    label="IPGuard",
    bench=False,
    description="IPGuard (Cao et al., AsiaCCS 2021): points near the source's classification boundary",
)
