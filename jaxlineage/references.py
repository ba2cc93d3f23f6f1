"""Reference models: independent models of your architecture, trained on your data, for calibrated p-values.

:func:`jaxlineage.verify`'s reference tests compare a suspect with models known to be
unrelated to the source: independent initialisations of the suspect's architecture trained
on the suspect's task. With ``verify(..., references_like="source")`` they stand in for the
source instead: train them ``like`` the source, on its task and with its recipe. :func:`train`
builds ``n`` of them with the library's population trainer (all models in one vmapped, jitted
epoch), caches them on disk and resumes an interrupted build chunk by chunk. With ``n``
references the smallest reference p-value is ``1 / (n + 1)``; ``verify``'s Bonferroni
combination with the weight test doubles it, so a derivation only the references see (a
student, a permuted copy) is decided at ``alpha`` when ``2 / (n + 1) <= alpha``: the default
``n = 199`` reaches ``alpha = 0.01``, 39 reach 0.05 (``verify`` warns when ``n`` is short).

Cost (measured by ``benchmarks/verify_power.py``, its ``references_s``): see ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlineage._progress import Progress
from jaxlineage.errors import JaxlineageError
from jaxlineage.models import Models, signature_of

__all__ = ["DERIVATIONS", "KEY_OFFSET", "ReferenceError", "derive", "train"]

log = logging.getLogger("jaxlineage.references")

#: Added to ``seed`` in the references' initialisation keys and data-order seeds. The zoo's models
#: start from ``fold_in(key(init_seed), spec seed)`` with small seeds; before this offset, reference
#: ``i`` of seed 0 started from ``fold_in(key(0), i)`` and its data order ``i``, which is source seed 0
#: of a zoo with salt ``i``: on the sources' own task it *was* that source (bit for bit for the
#: ConvNet), so a "reference" was the source itself (BUILD_NOTES, issue 24, sixth session).
KEY_OFFSET = 2_000_003


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


def _bare(models: Models) -> bool:
    """The models' parameters are a bare tree, not flax variables ``{"params": ...}``."""
    one = models.one(0)
    return not (isinstance(one, dict) and "params" in one)


def _sequential(like: Models, sequential: bool | None) -> bool:
    if sequential is None:
        return jax.default_backend() == "cpu" and any(len(shape) == 4 for _, shape, _ in like.signature)
    return bool(sequential)


def _init_fn(like: Models, example: Any) -> Callable[[jax.Array], Any]:
    module = getattr(like.logits_fn, "module", None)
    if module is None:
        raise ReferenceError(
            f"references: models {like.ids[0]!r}... were not built from a linen module; pass init_fn=(key -> params)"
        )
    kwargs = dict(getattr(like.logits_fn, "kwargs", ()))
    return lambda key: module.init(key, example, **{k: v for k, v in kwargs.items() if k != "train"})


def _cache_root(workdir, name: str, settings: dict, *arrays) -> pathlib.Path | None:
    """``workdir/<name>-<hash of settings and data>`` with its ``settings.json`` (None without a workdir)."""
    from jaxlineage.zoo import storage  # noqa: PLC0415

    if workdir is None:
        return None
    tag = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    tag += hashlib.sha1(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()[:8]
    root = pathlib.Path(workdir) / f"{name}-{tag}"
    root.mkdir(parents=True, exist_ok=True)
    storage.write_json(root / "settings.json", json.loads(json.dumps(settings, default=str)))
    return root


def _cached_chunks(root: pathlib.Path | None, n: int, chunk: int, build: Callable, what: str) -> Any:
    """``build(indices) -> stacked params`` chunk by chunk; each chunk saved atomically and reloaded when present."""
    from jaxlineage.zoo import storage  # noqa: PLC0415

    chunks = []
    bar = Progress(what, n, verb="made", logger=log, every=0.0)
    for start in range(0, n, chunk):
        idx = list(range(start, min(n, start + chunk)))
        path = root / f"chunk-{start:05d}" if root is not None else None
        if path is not None and path.is_dir():
            try:
                chunks.append(storage.load_params(path))
                bar.update(len(idx), "saved earlier", resumed=True)
                continue
            except JaxlineageError as e:
                raise ReferenceError(f"references: cached chunk {path} is unreadable ({e}); delete it") from e
        out = build(idx)
        if path is not None:
            storage.save_params(path, out)
        chunks.append(out)
        bar.update(len(idx))
    return jax.tree.map(lambda *a: jnp.concatenate(a), *chunks)


def train(
    like: Models,
    x: Any,
    y: Any,
    *,
    n: int = 199,
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

    Each model starts from its own initialisation (``init_fn(fold_in(key(seed + KEY_OFFSET), i))``) and
    sees the data in its own order; Adam at ``lr``, cross-entropy, ``epochs`` epochs, batches of ``batch_size``.
    Train them like the models they stand in for. With ``verify(..., references_like="source")`` (what a
    model owner can do) that is *your* model: its data and recipe, and reference p-values are valid when
    your model is exchangeable with the references. With the default ``"suspect"``: the suspect's task and
    recipe family, valid when an unrelated suspect is exchangeable with them. If your model was trained
    another way (SGD, augmentation, another loss), train the references with your own loop and wrap them
    with :meth:`jaxlineage.Models.from_linen`.

    Args:
      like: models whose architecture (logits function and parameter signature) the references share.
      x, y: training inputs ``[N, ...]`` and integer labels ``[N]``.
      n: the number of references (``1 / (n + 1)`` is the smallest reference p-value; see the module's
        note on the combination: 199 for ``alpha = 0.01``, 39 for 0.05).
      init_fn: ``key -> variables`` of one fresh model; default ``module.init`` for linen-built models.
      epochs, lr, batch_size: the recipe.
      seed: the references' keys are ``fold_in(key(seed + KEY_OFFSET), i)``. References must be
        independent of the sources: a reference that starts from a source's initialisation is not.
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
    from jaxlineage.zoo import training  # noqa: PLC0415 (the trainer is loaded only when training)

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
    sequential = _sequential(like, sequential)
    settings = {
        "n": n,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "key_offset": KEY_OFFSET,
        "signature": like.signature,
    }
    root = _cache_root(workdir, "references", settings, x, y)

    def build(idx):
        inits = [init_fn(jax.random.fold_in(jax.random.key(seed + KEY_OFFSET), i)) for i in idx]
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *inits)
        trained = training.train_population(
            net,
            {"params": stacked} if wrapped else stacked,
            x,
            y,
            lrs=[lr] * len(idx),
            seeds=[KEY_OFFSET + seed * 100003 + i for i in idx],
            batch_size=min(batch_size, len(x)),
            epochs=epochs,
            sequential=sequential,
        )
        return trained["params"] if wrapped else trained

    params = _cached_chunks(root, n, chunk, build, "references")
    return dataclasses.replace(
        like,
        ids=tuple(f"{id_prefix}{i}" for i in range(n)),
        params=params,
        info={f"{id_prefix}{i}": {"kind": "reference", "seed": seed, "index": i} for i in range(n)},
    )


#: The kinds :func:`derive` makes, with their defaults (the provenance zoo's recipes, after SAC's).
DERIVATIONS = {
    "prune": dict(sparsity=0.6, epochs=1, lr=1e-3),
    "distill": dict(temperature=20.0, alpha=0.9, epochs=5, lr=1e-2),
    "transfer": dict(epochs=3, lr=1e-2),
}


def _derive_settings(kind: str, given: dict, x: Any, y: Any, chunk: int) -> tuple[dict, np.ndarray, Any]:
    """:func:`derive`'s recipe (``given`` over the kind's defaults) and data, checked."""
    if kind not in DERIVATIONS:
        raise ReferenceError(f"references.derive: unknown kind {kind!r}; choose from {sorted(DERIVATIONS)}")
    unused = sorted(k for k, v in given.items() if v is not None and k not in DERIVATIONS[kind])
    if unused:
        raise ReferenceError(f"references.derive: {kind!r} takes no {', '.join(unused)}")
    hp = {k: (given[k] if given[k] is not None else v) for k, v in DERIVATIONS[kind].items()}
    if kind == "prune" and not 0 <= hp["sparsity"] <= 1:
        raise ReferenceError(f"references.derive: sparsity must be in [0, 1]; got {hp['sparsity']}")
    if kind == "distill" and (hp["temperature"] <= 0 or not 0 <= hp["alpha"] <= 1):
        raise ReferenceError(f"references.derive: need temperature > 0 and alpha in [0, 1]; got {hp}")
    if hp["epochs"] < 0 or (kind != "prune" and hp["epochs"] < 1) or chunk < 1:
        raise ReferenceError(f"references.derive: epochs {hp['epochs']} / chunk {chunk} out of range")
    x = np.asarray(x)
    if kind == "transfer" or (kind == "prune" and hp["epochs"] > 0):
        if y is None:
            raise ReferenceError(
                f"references.derive: {kind!r} trains on labelled data; pass y"
                + (" (or epochs=0)" if kind == "prune" else "")
            )
        y = np.asarray(y).astype(np.int32)
        if y.shape != (len(x),):
            raise ReferenceError(f"references.derive: labels of shape {y.shape} for {len(x)} inputs")
    return hp, x, y


def derive(
    refs: Models,
    kind: str,
    x: Any,
    y: Any = None,
    *,
    sparsity: float | None = None,
    temperature: float | None = None,
    alpha: float | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int = 64,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    student: Models | None = None,
    init_fn: Callable[[jax.Array], Any] | None = None,
    seed: int = 0,
    workdir: str | pathlib.Path | None = None,
    chunk: int = 33,
    id_prefix: str | None = None,
    sequential: bool | None = None,
    head: str = "head",
) -> Models:
    """Attacked copies of reference models: a stratum of references for unrelated suspects that were attacked.

    An independent model that was pruned, or distilled from an independent teacher, is unrelated to
    your source but is not exchangeable with references trained from scratch (its outputs are softer),
    and the reference tests reject it too often. Give :func:`jaxlineage.verify` the attacked copies as
    their own stratum: ``references={"trained": refs, "pruned": derive(refs, "prune", x, y), ...}``.

    Kinds (the recipes of the provenance zoo, after SAC; SGD with ``momentum`` and ``weight_decay``):

    * ``"prune"``: each reference's kernels magnitude-pruned (globally, the layer named ``head`` kept
      dense) to ``sparsity`` (default 0.6), then ``epochs`` (default 1) of repair on ``(x, y)`` at
      ``lr`` (default 1e-3) with the pruned weights held at 0 (``epochs=0``: one-shot).
    * ``"distill"``: one student per reference, a fresh model of the same architecture (``init_fn``)
      trained on its teacher's outputs on ``x``: ``alpha * T^2 KL(teacher_T || student_T) + (1 - alpha)
      CE(teacher's argmax)`` at ``temperature`` T (defaults 20 and 0.9), ``epochs`` (5) at ``lr`` (1e-2).
      ``y`` is not used. ``student``: models of the students' architecture when it is not the teachers'
      (a suspect distilled from a teacher of another architecture carries that architecture's function:
      its stratum needs teachers of that architecture); ``init_fn`` makes one fresh student.
    * ``"transfer"``: references trained on *another* task, moved to ``(x, y)``: the submodule named
      ``head`` re-initialised (``init_fn``), then every parameter fine-tuned ``epochs`` (default 3) at
      ``lr`` (default 1e-2). For unrelated suspects that were pre-trained elsewhere and fine-tuned on
      the suspect's task: their features come from the other task, so references trained from scratch on
      this one do not stand for them.

    Cached under ``workdir`` like :func:`train` (chunks saved atomically; an interrupted run resumes).

    Returns:
      :class:`~jaxlineage.models.Models` with ids ``f"{id_prefix}{i}"`` (default ``"<kind>-<ref id>"``-like
      prefix ``f"{kind}-"``), one per reference, and ``info[id]["derived_from"]`` naming it.

    Raises:
      ReferenceError: an unknown kind, a setting out of range, ``"prune"`` or ``"transfer"`` without
        labels, a ``head`` the models do not have.
    """
    from jaxlineage.zoo import ops, training  # noqa: PLC0415 (the trainer is loaded only when training)

    hp, x, y = _derive_settings(
        kind, dict(sparsity=sparsity, temperature=temperature, alpha=alpha, epochs=epochs, lr=lr), x, y, chunk
    )
    n = len(refs)
    wrapped = _bare(refs)
    net, seq = _ApplyNetwork(refs.logits_fn, wrapped), _sequential(refs, sequential)
    optimizer = training.OptimizerConfig(training.Optimizer.SGD, momentum, weight_decay)
    if student is not None and kind != "distill":
        raise ReferenceError(f"references.derive: student= is for 'distill', not {kind!r}")
    student = refs if student is None else student
    if kind in ("distill", "transfer"):
        init_fn = init_fn or _init_fn(student, jnp.asarray(x[:1]))
        if signature_of(init_fn(jax.random.key(seed)), stacked=False) != student.signature:
            raise ReferenceError("references.derive: init_fn's tree differs from the students' models")
    if kind == "transfer":
        modules = refs.one(0) if wrapped else refs.one(0)["params"]
        if head not in modules:
            raise ReferenceError(
                f"references.derive: 'transfer' re-initialises the head {head!r}, which the models lack;"
                f" pass head= one of {sorted(modules)}"
            )
    s_wrapped = _bare(student)
    s_net, s_seq = _ApplyNetwork(student.logits_fn, s_wrapped), _sequential(student, sequential)
    prefix = f"{kind}-" if id_prefix is None else id_prefix
    settings = {
        "kind": kind,
        **hp,
        "batch_size": batch_size,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "seed": seed,
        "ids": list(refs.ids),
        "signature": refs.signature,
        **({} if student is refs else {"student": student.signature}),
        **({"head": head} if kind == "transfer" else {}),
    }
    root = _cache_root(workdir, f"derived-{kind}", settings, x, *(() if y is None else (y,)))
    bs = min(batch_size, len(x))

    def build(idx):
        teachers = jax.tree.map(lambda a: a[np.asarray(idx)], refs.params)
        variables = {"params": teachers} if wrapped else teachers
        seeds = [seed * 100003 + i for i in idx]

        def train(start, **kw):  # the references' architecture, labels and recipe, from ``start``
            return training.train_population(
                net,
                start,
                x,
                y,
                lrs=[hp["lr"]] * len(idx),
                seeds=seeds,
                batch_size=bs,
                epochs=hp["epochs"],
                optimizer=optimizer,
                sequential=seq,
                **kw,
            )

        if kind == "transfer":
            # A fresh head per model (its own key), the rest from the reference, then every parameter trained.
            # init_fn's trees are the references' (checked above), bare or not alike.
            fresh = [init_fn(jax.random.fold_in(jax.random.key(seed + 2_000_029), i)) for i in idx]
            heads = jax.tree.map(lambda *a: jnp.stack(a), *[(f if wrapped else f["params"])[head] for f in fresh])
            out = train({**variables, "params": {**variables["params"], head: heads}})
        elif kind == "prune":
            pruned, mask = ops._prune_population_fn(ops.PruneScope.GLOBAL, False)(
                variables, jnp.full((len(idx),), hp["sparsity"], jnp.float32)
            )
            out = train(pruned, update_mask=mask) if hp["epochs"] > 0 else pruned
        else:
            logits = training.population_logits(net, variables, x, sequential=seq)  # [P, N, C]
            soft = np.asarray(jax.nn.softmax(jnp.asarray(logits) / hp["temperature"], axis=-1))
            inits = [init_fn(jax.random.fold_in(jax.random.key(seed + 1_000_003), i)) for i in idx]
            stacked = jax.tree.map(lambda *a: jnp.stack(a), *inits)
            out = training.train_population(
                s_net,
                {"params": stacked} if s_wrapped else stacked,
                x,
                logits.argmax(-1).astype(np.int32),
                lrs=[hp["lr"]] * len(idx),
                seeds=seeds,
                batch_size=bs,
                epochs=hp["epochs"],
                optimizer=optimizer,
                distillation=training.Distillation(soft, hp["temperature"], hp["alpha"]),
                sequential=s_seq,
            )
            return out["params"] if s_wrapped else out
        return out["params"] if wrapped else out

    params = _cached_chunks(root, n, chunk, build, f"derived references ({kind})")
    ids = tuple(f"{prefix}{i}" for i in refs.ids)
    return dataclasses.replace(
        student,
        ids=ids,
        params=params,
        info={d: {"kind": f"reference-{kind}", "derived_from": r, **hp} for d, r in zip(ids, refs.ids)},
    )
