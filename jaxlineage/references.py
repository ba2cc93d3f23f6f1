"""Reference models: independent models of your architecture, trained on your data, for calibrated p-values.

:func:`jaxlineage.verify`'s reference tests compare a suspect with models known to be
unrelated to the source: independent initialisations of the suspect's architecture trained
on the suspect's task. :func:`train` builds ``n`` of them with the library's population
trainer (all models in one vmapped, jitted epoch), caches them on disk and resumes an
interrupted build chunk by chunk. With ``n`` references the smallest reference p-value is
``1 / (n + 1)``: the default ``n = 99`` reaches ``alpha = 0.01``.

Cost (measured by ``benchmarks/verify_power.py``, its ``references_s``): see ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlineage.errors import JaxlineageError
from jaxlineage.models import Models, signature_of

__all__ = ["ReferenceError", "train"]

log = logging.getLogger("jaxlineage.references")


class ReferenceError(JaxlineageError):  # noqa: A001 (the module's own error, named for it)
    """Reference models cannot be trained as asked; the message names the setting or model."""


@dataclasses.dataclass(frozen=True)
class _ApplyNetwork:
    """The population trainer's view of any apply function (no batch statistics)."""

    apply_fn: Any
    wrapped: bool
    label_ndim: int = 1  # one integer label per input (classifiers)

    def train_logits_fn(self, variables, x):
        return self.apply_fn(variables["params"] if self.wrapped else variables, x), {}

    def logits_fn(self, variables, x):
        return self.apply_fn(variables["params"] if self.wrapped else variables, x)


def _init_fn(like: Models, example: Any) -> Callable[[jax.Array], Any]:
    module = getattr(like.logits_fn, "module", None)
    if module is None:
        raise ReferenceError(
            f"references.train: models {like.ids[0]!r}... were not built from a linen module;"
            " pass init_fn=(key -> params)"
        )
    kwargs = dict(getattr(like.logits_fn, "kwargs", ()))
    return lambda key: module.init(key, example, **{k: v for k, v in kwargs.items() if k != "train"})


def train(
    like: Models,
    x: Any,
    y: Any,
    *,
    n: int = 99,
    init_fn: Callable[[jax.Array], Any] | None = None,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    workdir: str | pathlib.Path | None = None,
    chunk: int = 33,
    id_prefix: str = "ref",
    sequential: bool | None = None,
) -> Models:
    """Trains ``n`` independent models of ``like``'s architecture on ``(x, y)``; cached and resumable.

    Each model starts from its own initialisation (``init_fn(fold_in(key(seed), i))``) and sees the data
    in its own order; Adam at ``lr``, cross-entropy, ``epochs`` epochs, batches of ``batch_size``. Train
    them like the suspect was trained (same recipe family): reference p-values are valid when an
    unrelated suspect is exchangeable with the references.

    Args:
      like: models whose architecture (logits function and parameter signature) the references share.
      x, y: training inputs ``[N, ...]`` and integer labels ``[N]``.
      n: the number of references (``1 / (n + 1)`` is the smallest reference p-value).
      init_fn: ``key -> variables`` of one fresh model; default ``module.init`` for linen-built models.
      epochs, lr, batch_size: the recipe.
      seed: the references' seeds are ``fold_in(key(seed), i)``.
      workdir: cache folder; chunks of ``chunk`` models are saved atomically as they finish and a
        second call with the same settings loads them (an interrupted build resumes).
      chunk: models trained together (bounds memory).
      id_prefix: ids are ``f"{id_prefix}{i}"``.
      sequential: train a chunk's models one after another in one compiled loop rather than vmapped
        (faster for convolutions on a CPU); default: when the tree has a 4-d kernel and the backend is the CPU.

    Returns:
      :class:`~jaxlineage.models.Models` with ``like``'s functions and taps.

    Raises:
      ReferenceError: ``n < 1``, labels that do not match ``x``, an ``init_fn`` whose trees differ from
        ``like``'s (names the first differing leaf), a corrupt cache.
    """
    from jaxlineage.zoo import storage, training  # noqa: PLC0415 (the trainer is loaded only when training)

    if n < 1 or chunk < 1:
        raise ReferenceError(f"references.train: n and chunk must be >= 1; got n={n}, chunk={chunk}")
    x, y = np.asarray(x), np.asarray(y).astype(np.int32)
    if y.shape != (len(x),):
        raise ReferenceError(f"references.train: labels of shape {y.shape} for {len(x)} inputs (want [{len(x)}])")
    init_fn = init_fn or _init_fn(like, jnp.asarray(x[:1]))
    fresh = init_fn(jax.random.key(seed))
    if signature_of(fresh, stacked=False) != like.signature:
        diff = next(
            (a, b)
            for a, b in zip(signature_of(fresh, stacked=False) + ((None,),), like.signature + ((None,),))
            if a != b
        )
        raise ReferenceError(f"references.train: init_fn's tree differs from the models': {diff[0]} vs {diff[1]}")
    wrapped = not (isinstance(fresh, dict) and "params" in fresh)
    net = _ApplyNetwork(like.logits_fn, wrapped)
    if sequential is None:
        sequential = jax.default_backend() == "cpu" and any(len(shape) == 4 for _, shape, _ in like.signature)
    settings = {"n": n, "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed, "signature": like.signature}
    tag = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    tag += hashlib.sha1(np.ascontiguousarray(x).tobytes() + y.tobytes()).hexdigest()[:8]
    root = pathlib.Path(workdir) / f"references-{tag}" if workdir is not None else None
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
        storage.write_json(
            root / "settings.json", {**settings, "signature": [list(map(str, s)) for s in like.signature]}
        )
    chunks, t0, done = [], time.time(), 0
    for start in range(0, n, chunk):
        idx = list(range(start, min(n, start + chunk)))
        path = root / f"chunk-{start:05d}" if root is not None else None
        if path is not None and path.is_dir():
            try:
                chunks.append(storage.load_params(path))
                done += len(idx)
                continue
            except JaxlineageError as e:
                raise ReferenceError(f"references.train: cached chunk {path} is unreadable ({e}); delete it") from e
        inits = [init_fn(jax.random.fold_in(jax.random.key(seed), i)) for i in idx]
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *inits)
        variables = {"params": stacked} if wrapped else stacked
        trained = training.train_population(
            net,
            variables,
            x,
            y,
            lrs=[lr] * len(idx),
            seeds=[seed * 100003 + i for i in idx],
            batch_size=min(batch_size, len(x)),
            epochs=epochs,
            sequential=sequential,
        )
        trained = trained["params"] if wrapped else trained
        if path is not None:
            storage.save_params(path, trained)
        chunks.append(trained)
        done += len(idx)
        eta = (time.time() - t0) / max(done, 1) * (n - done)
        log.info("references: %d / %d models trained (%.0fs, ETA %.0fs)", done, n, time.time() - t0, eta)
    params = jax.tree.map(lambda *a: jnp.concatenate(a), *chunks)
    return dataclasses.replace(
        like,
        ids=tuple(f"{id_prefix}{i}" for i in range(n)),
        params=params,
        info={f"{id_prefix}{i}": {"kind": "reference", "seed": seed, "index": i} for i in range(n)},
    )
