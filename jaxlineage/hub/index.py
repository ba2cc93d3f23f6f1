"""Stage 2 of hub search: a FAISS index over model fingerprints, saved with a JSON manifest.

:class:`Index` keeps one fingerprint function (:mod:`jaxlineage.hub.fingerprints`), the
ids of the models it holds, in insertion order, and a FAISS index of their vectors:

* ``kind="flat"``: exact L2 search (:class:`faiss.IndexFlatL2`), the baseline;
* ``kind="ivf"``: inverted lists (:class:`faiss.IndexIVFFlat`, ``nlist`` k-means cells
  trained on the build's vectors, ``nprobe`` cells visited per query);
* ``kind="hnsw"``: a navigable small-world graph (:class:`faiss.IndexHNSWFlat`, ``M`` links,
  ``efSearch`` candidates per query).

``shards > 1`` splits the models into contiguous ranges, one FAISS index each, searched
together by FAISS's own :class:`faiss.IndexShards` (``successive_ids``: shard ``s``'s local
ids are offset by the sizes of the shards before it), as one would place them on several
machines.

Building is chunked and resumable: with a ``workdir``, each chunk's fingerprints are written
atomically (``fp-<chunk>.npz``, with the chunk's ids); a killed build run again with the same
models reuses every finished chunk and loads no model of it. :meth:`Index.save` writes the
FAISS shards, the fingerprint's arrays and ``manifest.json`` into a temporary sibling folder
renamed into place (:func:`jaxlineage._io.atomic_dir`), so a reader sees the old index or the
new one, never half of one.

Models come as a :class:`jaxlineage.eval.core.Population`, a :class:`~jaxlineage.eval.core.ModelSet`
or any *source* with ``ids`` and ``load(ids) -> ModelSet`` (:class:`ZooSource` reads a zoo's
checkpoints lazily, chunk by chunk).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from jaxlineage._io import atomic_dir
from jaxlineage._progress import Progress
from jaxlineage.eval.core import ModelSet, Population
from jaxlineage.hub.fingerprints import Fingerprint, HubError, fingerprint_from_json

__all__ = ["Index", "ModelSource", "SearchResult", "ZooSource", "as_source"]

log = logging.getLogger("jaxlineage.hub")

MANIFEST = "manifest.json"
_VERSION = 1
KINDS = ("flat", "ivf", "hnsw")


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is a dependency
        raise HubError("jaxlineage.hub needs faiss: pip install faiss-cpu") from e
    return faiss


class ModelSource(Protocol):
    """Models loaded on demand: ``ids`` and ``load(ids) -> ModelSet``."""

    ids: Sequence[str]

    def load(self, ids: Sequence[str]) -> ModelSet: ...


@dataclasses.dataclass
class _SetSource:
    models: ModelSet

    def __post_init__(self):
        self.ids = self.models.ids
        self._pos = {m: i for i, m in enumerate(self.ids)}

    def load(self, ids: Sequence[str]) -> ModelSet:
        return self.models.take([self._pos[i] for i in ids])


class ZooSource:
    """A zoo's models as a :class:`ModelSource`, read from their checkpoints only when loaded.

    Args:
      zoo: a :class:`jaxlineage.zoo.Zoo`.
      ids: which models (default: every kept one).
    """

    def __init__(self, zoo: Any, ids: Sequence[str] | None = None):
        self.zoo = zoo
        self.ids = tuple(ids) if ids is not None else tuple(r.id for r in zoo.models())

    def load(self, ids: Sequence[str]) -> ModelSet:
        from jaxlineage.eval.scenarios import model_set

        return model_set(self.zoo, list(ids))


def as_source(models: Any) -> ModelSource:
    """A :class:`ModelSource` from a Population, a ModelSet or a source (returned as is)."""
    if isinstance(models, Population):
        models = ModelSet((models,))
    if isinstance(models, ModelSet):
        return _SetSource(models)
    if hasattr(models, "ids") and hasattr(models, "load"):
        return models
    raise HubError(f"expected a Population, a ModelSet or a source with ids and load(ids), got {type(models).__name__}")


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """Nearest models per query.

    Attributes:
      query_ids: ``[M]``.
      ids: ``[M][<=k]`` ids of the nearest indexed models, nearest first.
      distances: ``[M, k]`` squared L2 distances (``inf`` where fewer than ``k`` were found).
      seconds: wall time of the FAISS search, per query (``[M]``, the batch's time divided evenly
        when searched as one batch).
    """

    query_ids: tuple[str, ...]
    ids: tuple[tuple[str, ...], ...]
    distances: np.ndarray
    seconds: np.ndarray


def _atomic_npz(path: pathlib.Path, **arrays) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _atomic_json(path: pathlib.Path, obj) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


class Index:
    """Fingerprints of many models in FAISS; nearest models of a query in sublinear time.

    Args:
      fingerprint: the :class:`~jaxlineage.hub.fingerprints.Fingerprint` of every indexed model.
      kind: ``"flat"`` (exact), ``"ivf"`` or ``"hnsw"``.
      shards: number of FAISS shards (contiguous ranges of models), searched as one
        :class:`faiss.IndexShards`.
      nlist: IVF cells per shard (default ``4 * sqrt(shard size)``, at most ``size / 39``).
      nprobe: IVF cells visited per query.
      hnsw_m: HNSW links per node.
      ef_search: HNSW candidates per query.
      ef_construction: HNSW candidates while building.
      chunk: models fingerprinted (and loaded) at once during a build.
    """

    def __init__(
        self,
        fingerprint: Fingerprint,
        *,
        kind: str = "flat",
        shards: int = 1,
        nlist: int | None = None,
        nprobe: int = 16,
        hnsw_m: int = 32,
        ef_search: int = 128,
        ef_construction: int = 80,
        chunk: int = 256,
    ):
        if kind not in KINDS:
            raise HubError(f"Index kind {kind!r} is not one of {KINDS}")
        if shards < 1 or chunk < 1:
            raise HubError(f"Index: shards and chunk must be >= 1, got shards={shards}, chunk={chunk}")
        self.fingerprint = fingerprint
        self.kind, self.shards = kind, int(shards)
        self.nlist, self.nprobe = nlist, int(nprobe)
        self.hnsw_m, self.ef_search, self.ef_construction = int(hnsw_m), int(ef_search), int(ef_construction)
        self.chunk = int(chunk)
        self.ids: tuple[str, ...] = ()
        self.signature: str | None = None
        self.vectors = np.zeros((0, 0), np.float32)
        self._subs: list = []
        self._shards = None
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ building

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Index({len(self)} models, kind={self.kind!r}, shards={self.shards}, signature={self.signature!r})"

    def _check_signature(self, pop: Population, what: str) -> None:
        sig = self.fingerprint.signature(pop)
        if self.signature is None:
            self.signature = sig
        elif sig != self.signature:
            raise HubError(
                f"{what} {pop.ids[0]!r}... ({pop.arch}): fingerprint signature {sig!r} differs from the index's"
                f" {self.signature!r} (another architecture or output space); use an index per signature"
            )

    def fingerprints(self, models: Any, *, workdir: str | os.PathLike | None = None, progress: bool | None = None):
        """``(ids, [n, dim] vectors)`` of the models, chunk by chunk, resuming from ``workdir``'s finished chunks."""
        src = as_source(models)
        ids = tuple(src.ids)
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise HubError(f"model {dup!r} appears twice in the models to index")
        wd = None if workdir is None else pathlib.Path(workdir)
        if wd is not None:
            wd.mkdir(parents=True, exist_ok=True)
            state = dict(fingerprint=self.fingerprint.to_json(), chunk=self.chunk, n=len(ids))
            state["ids_sha1"] = hashlib.sha1("\n".join(ids).encode()).hexdigest()
            old = wd / "build.json"
            if old.exists() and json.loads(old.read_text()) != json.loads(json.dumps(state)):
                raise HubError(f"{wd} holds a build of other models or settings; use another workdir or delete it")
            _atomic_json(old, state)
        if progress is None:
            progress = not os.environ.get("JAXLINEAGE_NO_PROGRESS")
        bar = Progress("hub: fingerprints", len(ids), bar=progress, logger=log)
        out, reused = [], 0
        try:
            for c, s in enumerate(range(0, len(ids), self.chunk)):
                part = ids[s : s + self.chunk]
                path = None if wd is None else wd / f"fp-{c:06d}.npz"
                vec = self._stored_chunk(path, part)
                if vec is None:
                    vec = self._chunk_vectors(src.load(part), part)
                    if path is not None:
                        _atomic_npz(path, ids=np.asarray(part), vectors=vec, signature=np.asarray(self.signature))
                    bar.update(len(part))
                else:
                    reused += len(part)
                    bar.update(len(part), resumed=True)
                out.append(vec)
        finally:
            bar.close()
        if reused:
            log.info("hub: reused the fingerprints of %d of %d models from %s", reused, len(ids), wd)
        vectors = np.concatenate(out) if out else np.zeros((0, self.fingerprint.dim), np.float32)
        return ids, vectors

    def _stored_chunk(self, path: pathlib.Path | None, part: Sequence[str]) -> np.ndarray | None:
        if path is None or not path.exists():
            return None
        try:
            with np.load(path) as z:
                if tuple(str(i) for i in z["ids"]) != tuple(part):
                    return None
                sig = str(z["signature"])
                vec = np.asarray(z["vectors"], np.float32)
        except (OSError, ValueError, KeyError) as e:
            log.warning("hub: chunk %s is corrupt (%s); recomputing it", path, e)
            return None
        if self.signature is None:
            self.signature = sig
        elif sig != self.signature:
            raise HubError(f"{path}: signature {sig!r} differs from the index's {self.signature!r}")
        return vec

    def _chunk_vectors(self, models: ModelSet, part: Sequence[str]) -> np.ndarray:
        if sorted(models.ids) != sorted(part):
            raise HubError(f"source returned models {models.ids[:3]}... for ids {tuple(part)[:3]}...")
        vecs = []
        for pop in models.populations:
            self._check_signature(pop, "model")
            vecs.append(self.fingerprint(pop))
        # a source may group models by population: back to the requested order
        at = {m: i for i, m in enumerate(models.ids)}
        return np.concatenate(vecs).astype(np.float32)[[at[m] for m in part]]

    def build(self, models: Any, *, workdir: str | os.PathLike | None = None, progress: bool | None = None) -> Index:
        """Fingerprints every model and builds the FAISS index from scratch (replacing any content).

        Args:
          models: a Population, ModelSet or :class:`ModelSource`.
          workdir: where each chunk's fingerprints are kept; a build run again with the same
            models and settings resumes from the finished chunks.
          progress: a progress bar (default: unless ``$JAXLINEAGE_NO_PROGRESS`` is set); log lines always.

        Returns:
          ``self``.
        """
        t0 = time.perf_counter()
        self.signature = None
        ids, vectors = self.fingerprints(models, workdir=workdir, progress=progress)
        if not ids:
            raise HubError("Index.build: no model to index")
        t1 = time.perf_counter()
        self.ids, self.vectors = ids, vectors
        self._make_faiss()
        self.timings = dict(fingerprint_s=t1 - t0, faiss_s=time.perf_counter() - t1)
        log.info("hub: built %r in %.1fs (fingerprints %.1fs)", self, time.perf_counter() - t0, t1 - t0)
        return self

    def add(self, models: Any, *, progress: bool | None = None) -> Index:
        """Adds models to a built index (to its last shard; IVF cells and HNSW graphs are not retrained)."""
        if not self._subs:
            return self.build(models, progress=progress)
        ids, vectors = self.fingerprints(models, progress=progress)
        clash = set(ids) & set(self.ids)
        if clash:
            raise HubError(f"Index.add: models already indexed: {sorted(clash)[:5]}")
        self._subs[-1].add(vectors)
        self.ids = self.ids + tuple(ids)
        self.vectors = np.concatenate([self.vectors, vectors])
        self._wrap()
        return self

    def _bounds(self) -> list[tuple[int, int]]:
        n = len(self.ids)
        cuts = np.linspace(0, n, min(self.shards, n) + 1).round().astype(int)
        return list(zip(cuts[:-1], cuts[1:]))

    def _make_faiss(self) -> None:
        faiss = _faiss()
        d = self.vectors.shape[1]
        self._subs = []
        for lo, hi in self._bounds():
            x = np.ascontiguousarray(self.vectors[lo:hi])
            if self.kind == "flat":
                sub = faiss.IndexFlatL2(d)
            elif self.kind == "hnsw":
                sub = faiss.IndexHNSWFlat(d, self.hnsw_m)
                sub.hnsw.efConstruction = self.ef_construction
            else:
                nlist = self.nlist or int(4 * np.sqrt(len(x)))
                nlist = max(1, min(nlist, len(x) // 39))
                sub = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist, faiss.METRIC_L2)
                sub.cp.seed = 1234
                sub.train(x)
            sub.add(x)
            self._subs.append(sub)
        self._set_search_params()
        self._wrap()

    def _set_search_params(self) -> None:
        for sub in self._subs:
            if self.kind == "ivf":
                sub.nprobe = self.nprobe
            elif self.kind == "hnsw":
                sub.hnsw.efSearch = self.ef_search

    def _wrap(self) -> None:
        faiss = _faiss()
        if len(self._subs) == 1:
            self._shards = self._subs[0]
            return
        self._shards = faiss.IndexShards(self.vectors.shape[1], False, True)
        for sub in self._subs:
            self._shards.add_shard(sub)

    # ------------------------------------------------------------------ searching

    def search_vectors(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search of raw fingerprints: ``([M, k] squared distances, [M, k] positions, -1 if none)``."""
        if self._shards is None:
            raise HubError("Index.search: the index is empty (build or load it first)")
        x = np.ascontiguousarray(np.asarray(vectors, np.float32))
        if x.ndim != 2 or x.shape[1] != self.vectors.shape[1]:
            raise HubError(
                f"Index.search: vectors of shape {x.shape}, the index holds dimension {self.vectors.shape[1]}"
            )
        k = int(min(k, len(self.ids)))
        return self._shards.search(x, k)

    def search(
        self, queries: Any, k: int = 10, *, exclude: Mapping[str, Sequence[str]] | None = None, one_by_one: bool = False
    ) -> SearchResult:
        """The ``k`` nearest indexed models of each query.

        Args:
          queries: a Population, ModelSet or source; every population must have the index's signature.
          k: neighbours per query.
          exclude: ``{query id: ids not to return}`` (e.g. the query itself and its known descendants);
            the search fetches ``k + len(excluded)`` and drops them.
          one_by_one: search each query alone (per-query latency) instead of as one batch.

        Raises:
          HubError: a query of another signature (names it and both signatures).
        """
        src = as_source(queries)
        models = src.load(tuple(src.ids))
        ids, vecs = [], []
        for pop in models.populations:
            sig = self.fingerprint.signature(pop)
            if sig != self.signature:
                raise HubError(
                    f"query {pop.ids[0]!r}... ({pop.arch}): fingerprint signature {sig!r} is not the index's"
                    f" {self.signature!r} (another architecture or output space)"
                )
            ids += list(pop.ids)
            vecs.append(self.fingerprint(pop))
        return self.search_fingerprints(ids, np.concatenate(vecs), k, exclude=exclude, one_by_one=one_by_one)

    def search_fingerprints(
        self,
        query_ids: Sequence[str],
        vectors: np.ndarray,
        k: int = 10,
        *,
        exclude: Mapping[str, Sequence[str]] | None = None,
        one_by_one: bool = False,
    ) -> SearchResult:
        """:meth:`search` from precomputed query fingerprints (same signature as the index)."""
        exclude = exclude or {}
        extra = max((len(exclude.get(q, ())) for q in query_ids), default=0)
        kk = k + extra
        if one_by_one:
            dist, pos, secs = [], [], []
            for v in vectors:
                t = time.perf_counter()
                d_, p_ = self.search_vectors(v[None], kk)
                secs.append(time.perf_counter() - t)
                dist.append(d_[0])
                pos.append(p_[0])
            dist, pos, secs = np.stack(dist), np.stack(pos), np.asarray(secs)
        else:
            t = time.perf_counter()
            dist, pos = self.search_vectors(vectors, kk)
            secs = np.full(len(query_ids), (time.perf_counter() - t) / max(len(query_ids), 1))
        out_ids, out_d = [], np.full((len(query_ids), k), np.inf, np.float32)
        for m, q in enumerate(query_ids):
            skip = set(exclude.get(q, ()))
            row = [(self.ids[p], d) for p, d in zip(pos[m], dist[m]) if p >= 0 and self.ids[p] not in skip][:k]
            out_ids.append(tuple(i for i, _ in row))
            out_d[m, : len(row)] = [d for _, d in row]
        return SearchResult(tuple(query_ids), tuple(out_ids), out_d, secs)

    # ------------------------------------------------------------------ disk

    def settings(self) -> dict:
        return dict(
            kind=self.kind,
            shards=self.shards,
            nlist=self.nlist,
            nprobe=self.nprobe,
            hnsw_m=self.hnsw_m,
            ef_search=self.ef_search,
            ef_construction=self.ef_construction,
            chunk=self.chunk,
        )

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        """Writes the index to folder ``path`` atomically: ``manifest.json``, ``shard-<i>.faiss``,
        ``vectors.npy`` and ``fingerprint.npz``. Returns the path."""
        if self._shards is None:
            raise HubError("Index.save: nothing to save (build the index first)")
        faiss = _faiss()
        path = pathlib.Path(path)
        with atomic_dir(path) as tmp:
            tmp.mkdir(parents=True)
            for i, sub in enumerate(self._subs):
                faiss.write_index(sub, str(tmp / f"shard-{i}.faiss"))
            np.save(tmp / "vectors.npy", self.vectors)
            np.savez(tmp / "fingerprint.npz", **self.fingerprint.arrays())
            manifest = dict(
                version=_VERSION,
                faiss=faiss.__version__,
                fingerprint=self.fingerprint.to_json(),
                signature=self.signature,
                settings=self.settings(),
                ids=list(self.ids),
                shard_sizes=[int(s.ntotal) for s in self._subs],
            )
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Index:
        """Reads an index written by :meth:`save`.

        Raises:
          HubError: a missing or corrupt index folder (names the path and file).
        """
        faiss = _faiss()
        path = pathlib.Path(path)
        mpath = path / MANIFEST
        if not mpath.exists():
            raise HubError(f"{path} is not a saved index (no {MANIFEST})")
        try:
            m = json.loads(mpath.read_text())
            with np.load(path / "fingerprint.npz") as z:
                arrays = {k: z[k] for k in z.files}
            fp = fingerprint_from_json(m["fingerprint"], arrays)
            index = cls(fp, **m["settings"])
            index.ids, index.signature = tuple(m["ids"]), m["signature"]
            index.vectors = np.load(path / "vectors.npy")
            index._subs = [faiss.read_index(str(path / f"shard-{i}.faiss")) for i in range(len(m["shard_sizes"]))]
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise HubError(f"{path}: corrupt or unreadable index ({type(e).__name__}: {e})") from e
        if sum(int(s.ntotal) for s in index._subs) != len(index.ids) or len(index.vectors) != len(index.ids):
            held = sum(int(s.ntotal) for s in index._subs)
            raise HubError(
                f"{path}: the shards hold {held} vectors and vectors.npy {len(index.vectors)} for {len(index.ids)} ids"
            )
        index._set_search_params()
        index._wrap()
        return index

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held: FAISS shards (serialised size), the kept vectors, the ids."""
        faiss = _faiss()
        fa = sum(int(faiss.serialize_index(s).size) for s in self._subs)
        return dict(faiss=fa, vectors=int(self.vectors.nbytes), ids=sum(len(i) + 1 for i in self.ids))
