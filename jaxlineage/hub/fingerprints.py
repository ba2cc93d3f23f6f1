r"""Fixed-size fingerprints of models, invariant to hidden-unit permutations.

A fingerprint maps one model to a vector :math:`f(\theta) \in \mathbb{R}^d` with
:math:`f(\sigma\theta) = f(\theta)` for every hidden-unit permutation
:math:`\sigma` of the network (the symmetries :mod:`jaxlineage.permutations`
describes), so that a permuted copy of a model lands exactly on it in the index.
Two kinds:

* :class:`LogitFingerprint` (functional): the model's logits on a fixed probe
  :math:`X` (``[N, ...]``), centred per input over the classes, flattened to
  :math:`z \in \mathbb{R}^{NC}` and randomly projected,
  :math:`f = R z / \sqrt{d}` with :math:`R_{ij} \sim \mathcal{N}(0, 1)` drawn
  once from ``seed`` (Johnson-Lindenstrauss: distances kept up to
  :math:`1 \pm \epsilon` for :math:`d = O(\log n / \epsilon^2)`). Permutations
  do not change the function, hence not the logits. Any architecture with the
  probe's input shape and the same number of classes gets a comparable vector.
* :class:`WeightFingerprint` (weight statistics): per kernel (``[..., in, out]``
  as a matrix ``[rows, out]``), its singular values (descending) and its output
  units' incoming-weight norms (sorted); per bias, its sorted values. Permuting
  units permutes a kernel's rows and columns, which changes neither its singular
  values nor the multiset of column norms. Architecture-specific: the vector's
  layout depends on the parameter shapes (:meth:`Fingerprint.signature`).

* :class:`GramFingerprint` (kernel products): for a chain of dense kernels (an MLP), the Gram
  matrices of :math:`G^\top W_1 \cdots W_l` for a fixed random input projection :math:`G`;
  inputs are never permuted, so the initialisation's imprint on the first layer survives
  fine-tuning, pruning and rounding (the best at retrieving parents in ``benchmarks/hub.py``).

:class:`ConcatFingerprint` concatenates several, each part scaled by a fixed weight
given by the user (never fitted to the models seen, so a model's fingerprint does
not depend on which others were indexed before it).

Every fingerprint has a JSON form (:meth:`Fingerprint.to_json`, arrays stored by
the index next to its manifest) so an index reloads the exact function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlineage import permutations as perm_lib
from jaxlineage.errors import JaxlineageError, path_str
from jaxlineage.eval.core import Population

__all__ = [
    "ConcatFingerprint",
    "Fingerprint",
    "GramFingerprint",
    "HubError",
    "LogitFingerprint",
    "WeightFingerprint",
    "fingerprint_from_json",
]

PyTree = Any


class HubError(JaxlineageError):
    """Bad input to the hub: mismatched architectures or shapes, a missing or corrupt index; names the culprit."""


def _projection(seed: int, rows: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, dim)) / np.sqrt(dim)).astype(np.float32)


class Fingerprint:
    """A permutation-invariant map from models to ``[P, dim]`` float32 vectors."""

    kind: str = "fingerprint"
    dim: int

    def signature(self, models: Population) -> str:
        """Which models this fingerprint compares: equal signatures give comparable vectors."""
        raise NotImplementedError

    def __call__(self, models: Population) -> np.ndarray:
        """``[P, dim]`` fingerprints of a population's models."""
        raise NotImplementedError

    def to_json(self) -> dict:
        raise NotImplementedError

    def arrays(self) -> dict[str, np.ndarray]:
        """Arrays the JSON form refers to by name (stored next to the manifest)."""
        return {}


class LogitFingerprint(Fingerprint):
    """Logits on a fixed probe, centred over classes, randomly projected to ``dim``.

    Args:
      probe: ``[N, ...]`` inputs every model sees (e.g. :meth:`jaxlineage.zoo.Zoo.probe`).
      dim: output dimension.
      seed: the projection's seed.
      batch: models evaluated at once (bounds memory: ``batch * N * C`` floats).
    """

    kind = "logits"

    def __init__(self, probe: np.ndarray, *, dim: int = 64, seed: int = 0, batch: int = 64):
        self.probe = np.asarray(probe, np.float32)
        if self.probe.ndim < 2 or len(self.probe) == 0:
            raise HubError(f"LogitFingerprint: probe must be [N, ...] with N >= 1, got shape {self.probe.shape}")
        self.dim, self.seed, self.batch = int(dim), int(seed), int(batch)
        self._proj: dict[int, np.ndarray] = {}

    def signature(self, models: Population) -> str:
        c = int(np.shape(jax.eval_shape(lambda p: models.logits_fn(p, self.probe[:1]), _first(models.params)))[-1])
        return f"logits:{tuple(self.probe.shape[1:])}->{c}"

    def __call__(self, models: Population) -> np.ndarray:
        fn = _vmapped(models.logits_fn)
        x = jnp.asarray(self.probe)
        out = []
        for s in range(0, len(models), self.batch):
            b = min(self.batch, len(models) - s)
            size = min(self.batch, 1 << (b - 1).bit_length())  # padded to a power of two: few compiled shapes
            take = np.minimum(np.arange(s, s + size), s + b - 1)
            params = jax.tree.map(lambda a, take=take: a[take], models.params)
            z = np.asarray(fn(params, x), np.float32)[:b]  # [b, N, C]
            if not np.all(np.isfinite(z)):
                bad = s + int(np.flatnonzero(~np.isfinite(z).all(axis=(1, 2)))[0])
                raise HubError(f"LogitFingerprint: model {models.ids[bad]!r} has non-finite logits on the probe")
            z = z - z.mean(-1, keepdims=True)
            z = z.reshape(len(z), -1)
            out.append(z @ self._matrix(z.shape[1]))
        return np.concatenate(out).astype(np.float32)

    def _matrix(self, rows: int) -> np.ndarray:
        if rows not in self._proj:
            self._proj[rows] = _projection(self.seed, rows, self.dim)
        return self._proj[rows]

    def to_json(self) -> dict:
        return dict(kind=self.kind, dim=self.dim, seed=self.seed, batch=self.batch, probe="probe")

    def arrays(self) -> dict[str, np.ndarray]:
        return {"probe": self.probe}


_VMAPPED: dict = {}


def _vmapped(logits_fn):
    """One compiled ``vmap`` per apply function, shared by every fingerprint and population."""
    try:
        key = hash(logits_fn), logits_fn
        return _VMAPPED.setdefault(key, jax.jit(jax.vmap(logits_fn, in_axes=(0, None))))
    except TypeError:  # an unhashable apply function: compiled per call
        return jax.jit(jax.vmap(logits_fn, in_axes=(0, None)))


def _first(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda a: a[0], tree)


def _kernel_stats(w: np.ndarray) -> list[np.ndarray]:
    """Singular values (descending) and sorted column norms of a batch of kernels ``[P, ..., in, out]``."""
    m = w.reshape(w.shape[0], -1, w.shape[-1])
    sv = np.linalg.svd(m, compute_uv=False)  # [P, min(rows, out)], descending
    norms = np.sort(np.linalg.norm(m, axis=1), axis=-1)  # [P, out]
    return [sv, norms]


class WeightFingerprint(Fingerprint):
    """Per-layer weight statistics no hidden-unit permutation changes, optionally randomly projected.

    Per kernel leaf (name ending in ``kernel``, ``[..., in, out]``): singular values of the
    ``[rows, out]`` matrix and sorted column norms; per other leaf: its sorted values
    (flattened). Leaves in tree order. The raw vector has a length fixed by the parameter
    shapes; ``dim=None`` keeps it, an integer projects it with a seeded Gaussian matrix.

    Args:
      dim: output dimension, or ``None`` for the raw statistics.
      seed: the projection's seed.
      include: leaf-path substrings to keep (default: all ``params`` leaves).
    """

    kind = "weights"

    def __init__(self, *, dim: int | None = None, seed: int = 0, include: Sequence[str] | None = None):
        self.dim_arg = None if dim is None else int(dim)
        self.seed = int(seed)
        self.include = None if include is None else tuple(include)
        self._raw: int | None = None

    @property
    def dim(self) -> int:
        if self.dim_arg is not None:
            return self.dim_arg
        if self._raw is None:
            raise HubError("WeightFingerprint(dim=None): the dimension is known once it has seen a model")
        return self._raw

    def _leaves(self, params: PyTree) -> list[tuple[str, np.ndarray]]:
        tree = params["params"] if isinstance(params, Mapping) and "params" in params else params
        out = []
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            name = path_str(path)
            if self.include is None or any(s in name for s in self.include):
                out.append((name, np.asarray(leaf, np.float32)))
        if not out:
            raise HubError(f"WeightFingerprint: no parameter leaf matches include={self.include}")
        return out

    def signature(self, models: Population) -> str:
        shapes = [(n, tuple(np.shape(a)[1:])) for n, a in self._leaves(models.params)]
        return "weights:" + ";".join(f"{n}{list(s)}" for n, s in shapes)

    def __call__(self, models: Population) -> np.ndarray:
        parts = []
        for name, w in self._leaves(models.params):
            if not np.all(np.isfinite(w)):
                bad = int(np.flatnonzero(~np.isfinite(w.reshape(len(w), -1)).all(1))[0])
                raise HubError(f"WeightFingerprint: model {models.ids[bad]!r} has non-finite values at {name}")
            if name.endswith("kernel") and w.ndim >= 3:
                parts += _kernel_stats(w)
            else:
                parts.append(np.sort(w.reshape(len(w), -1), axis=-1))
        raw = np.concatenate(parts, axis=1).astype(np.float32)
        if self._raw is None:
            self._raw = raw.shape[1]
        if self.dim_arg is None:
            return raw
        return (raw @ _projection(self.seed, raw.shape[1], self.dim_arg)).astype(np.float32)

    def to_json(self) -> dict:
        return dict(kind=self.kind, dim=self.dim_arg, seed=self.seed, include=self.include, raw=self._raw)


def _dense_chains(ks: list[tuple[str, np.ndarray]], limit: int = 2) -> list[list[tuple[str, np.ndarray]]]:
    """Orders of stacked dense kernels ``[P, in, out]`` in which each feeds the next, at most ``limit``: the tree's
    order when it chains, else the orders :mod:`jaxlineage.permutations` reads from the shapes (a tree's key order
    is alphabetical, not the network's)."""
    if any(a.ndim != 3 for _, a in ks):
        return []
    if all(a.shape[2] == b.shape[1] for (_, a), (_, b) in zip(ks, ks[1:])):
        return [ks]
    kernel = dict(ks)
    orders = perm_lib._chains([(n, a.shape[1:]) for n, a in ks], limit)
    return [[(n, kernel[n]) for n, _ in order] for order in orders]


class GramFingerprint(Fingerprint):
    r"""Hidden-unit-invariant products of a dense chain's kernels, seen through a fixed random input projection.

    For kernels :math:`W_1 \in \mathbb{R}^{d_0 \times d_1}, W_2, \dots, W_L` (each one's rows the
    previous one's columns: an MLP; the order is read from the shapes, not the layer names) and a
    seeded Gaussian :math:`G \in \mathbb{R}^{d_0 \times m}`, let :math:`A_l = G^\top W_1 \cdots W_l`
    (``[m, d_l]``). Permuting layer ``l``'s hidden units maps :math:`A_l \to A_l P` and leaves
    every later product unchanged, so the Gram matrix :math:`A_l A_l^\top` (``[m, m]``, upper
    triangle) is invariant for a hidden layer, and :math:`A_L` itself (the output units are the
    classes, never permuted) for the last. Each block is divided by its own Frobenius norm. Inputs
    are never permuted, so the first layer's untrained directions (e.g. always-zero pixels) keep
    the initialisation's signature, which survives fine-tuning, pruning and rounding.

    Args:
      m: the input projection's width (``m (m + 1) / 2`` numbers per hidden layer, ``m d_L`` for the last).
      seed: the projection's seed.
    """

    kind = "gram"

    def __init__(self, *, m: int = 16, seed: int = 0):
        self.m, self.seed = int(m), int(seed)
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        if self._dim is None:
            raise HubError("GramFingerprint: the dimension is known once it has seen a model")
        return self._dim

    def _kernels(self, models: Population) -> list[np.ndarray]:
        tree = (
            models.params["params"]
            if isinstance(models.params, Mapping) and "params" in models.params
            else models.params
        )
        ks = []
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if path_str(path).endswith("kernel"):
                ks.append((path_str(path), np.asarray(leaf, np.float64)))
        if not ks:
            raise HubError(f"GramFingerprint: models {models.ids[0]!r}... have no leaf named 'kernel'")
        chains = _dense_chains(ks)
        if len(chains) != 1:
            shapes = ", ".join(f"{n} {a.shape[1:]}" for n, a in ks)
            raise HubError(
                f"GramFingerprint needs one chain of dense kernels (an MLP), each feeding the next; models"
                f" {models.ids[0]!r}... ({models.arch}) have {shapes}, which "
                + ("allow several orders" if chains else "do not chain")
                + "; use LogitFingerprint or WeightFingerprint"
            )
        return [k for _, k in chains[0]]

    def signature(self, models: Population) -> str:
        return "gram:" + ";".join(str(list(k.shape[1:])) for k in self._kernels(models))

    def __call__(self, models: Population) -> np.ndarray:
        ks = self._kernels(models)
        for k in ks:
            if not np.all(np.isfinite(k)):
                bad = int(np.flatnonzero(~np.isfinite(k.reshape(len(k), -1)).all(1))[0])
                raise HubError(f"GramFingerprint: model {models.ids[bad]!r} has non-finite kernels")
        g = _projection(self.seed, ks[0].shape[1], self.m).astype(np.float64) * np.sqrt(self.m)
        a = np.einsum("ir,pio->pro", g, ks[0])
        iu = np.triu_indices(self.m)
        blocks = []
        for layer, k in enumerate(ks):
            if layer:
                a = a @ k
            blk = a.reshape(len(a), -1) if layer == len(ks) - 1 else (a @ a.transpose(0, 2, 1))[:, iu[0], iu[1]]
            blocks.append(blk / (np.linalg.norm(blk, axis=1, keepdims=True) + 1e-30))
        out = np.concatenate(blocks, axis=1).astype(np.float32)
        self._dim = out.shape[1]
        return out

    def to_json(self) -> dict:
        return dict(kind=self.kind, m=self.m, seed=self.seed, dim=self._dim)


class ConcatFingerprint(Fingerprint):
    """Several fingerprints side by side, part ``i`` multiplied by ``weights[i]`` (fixed, not data-dependent).

    Args:
      parts: the fingerprints.
      weights: one scale per part (default 1).
    """

    kind = "concat"

    def __init__(self, parts: Sequence[Fingerprint], weights: Sequence[float] | None = None):
        self.parts = tuple(parts)
        if not self.parts:
            raise HubError("ConcatFingerprint needs at least one part")
        self.weights = tuple(float(w) for w in (weights if weights is not None else [1.0] * len(self.parts)))
        if len(self.weights) != len(self.parts):
            raise HubError(f"ConcatFingerprint: {len(self.parts)} parts but {len(self.weights)} weights")

    @property
    def dim(self) -> int:
        return sum(p.dim for p in self.parts)

    def signature(self, models: Population) -> str:
        return " | ".join(p.signature(models) for p in self.parts)

    def __call__(self, models: Population) -> np.ndarray:
        return np.concatenate([w * p(models) for p, w in zip(self.parts, self.weights)], axis=1).astype(np.float32)

    def to_json(self) -> dict:
        return dict(kind=self.kind, weights=self.weights, parts=[p.to_json() for p in self.parts])

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for i, p in enumerate(self.parts):
            out.update({f"{i}.{k}": v for k, v in p.arrays().items()})
        return out


def fingerprint_from_json(d: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *, prefix: str = "") -> Fingerprint:
    """The fingerprint a :meth:`Fingerprint.to_json` (and its :meth:`Fingerprint.arrays`) describe."""
    kind = d.get("kind")
    if kind == LogitFingerprint.kind:
        return LogitFingerprint(arrays[prefix + d["probe"]], dim=d["dim"], seed=d["seed"], batch=d["batch"])
    if kind == WeightFingerprint.kind:
        fp = WeightFingerprint(dim=d["dim"], seed=d["seed"], include=d["include"])
        fp._raw = d.get("raw")
        return fp
    if kind == GramFingerprint.kind:
        fp = GramFingerprint(m=d["m"], seed=d["seed"])
        fp._dim = d.get("dim")
        return fp
    if kind == ConcatFingerprint.kind:
        parts = [fingerprint_from_json(p, arrays, prefix=f"{prefix}{i}.") for i, p in enumerate(d["parts"])]
        return ConcatFingerprint(parts, d["weights"])
    raise HubError(f"unknown fingerprint kind {kind!r} in the index manifest (known: logits, weights, gram, concat)")
