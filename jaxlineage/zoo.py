"""Model zoos: populations of networks with known lineage, trained together and stored with orbax.

A zoo has three roles (plus optional later generations):

* **parents**: trained from scratch on the parent task over a grid of
  init seeds x data seeds x learning rates x batch sizes; the top ``top_k`` by
  test accuracy are kept;
* **children**: every kept parent fine-tuned on each child task with a fresh
  head over a grid of learning rates x batch sizes x seeds; those below an
  accuracy floor are stored but not kept;
* **independents**: the same architecture trained from scratch on each child
  task (negatives for MGMP, ModelGiF and calibration);
* **grandchildren** (``generations=2``): every kept child fine-tuned again on its
  own task.

Models of one architecture and batch size train **together**: one jitted epoch
(``lax.scan`` over steps) ``vmap``-ed over the population, with per-model
learning rates, data orders and initialisations. Each finished model is written
atomically (orbax checkpoint into a temporary folder, renamed into place, then
its JSON record); a model counts as built only once its record exists, so a
killed build resumes where it stopped and never leaves a half-written model.

Usage::

    z = zoo.build(zoo.QUICK, "/tmp/zoo")    # minutes on 2 CPU cores; resumable
    z = zoo.Zoo.open("/tmp/zoo")            # later
    parents = z.stack([r.id for r in z.parents])
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import math
import os
import pathlib
import shutil
import time
import uuid
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlineage import data as data_lib
from jaxlineage import graph as graph_lib
from jaxlineage import nets
from jaxlineage._io import atomic_dir
from jaxlineage.errors import JaxlineageError, path_str

log = logging.getLogger("jaxlineage.zoo")

PyTree = Any
MANIFEST = "manifest.json"
SPEC_FILE = "spec.json"


class ZooError(JaxlineageError):
    """A zoo cannot be built or read; the message names the model, file or field."""


# --------------------------------------------------------------------------- spec


@dataclasses.dataclass(frozen=True)
class Task:
    """A classification task: ``classes`` of ``dataset``, relabelled ``0..len-1``."""

    name: str
    dataset: str = "embedded"
    classes: tuple[int, ...] = data_lib.TASK_A
    n_train: int | None = None  # cap on training examples (first n after a fixed shuffle)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclasses.dataclass(frozen=True)
class Grid:
    """A hyper-parameter grid; every combination is one model.

    ``init_seeds`` (if given) set the initialisation separately from ``seeds``
    (which then set only the data order), so parents can share an init.
    """

    lrs: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    epochs: int
    init_seeds: tuple[int, ...] | None = None

    def __post_init__(self):
        for field in ("lrs", "batch_sizes", "seeds"):
            if not getattr(self, field):
                raise ZooError(f"Grid.{field} is empty: a grid needs at least one value per axis")
        if self.init_seeds is not None and not self.init_seeds:
            raise ZooError("Grid.init_seeds is empty (use None to tie the init to the seed)")
        if self.epochs < 1:
            raise ZooError(f"Grid.epochs must be >= 1, got {self.epochs}")

    def points(self) -> list[dict]:
        inits = self.init_seeds if self.init_seeds is not None else (None,)
        out = []
        for init, seed, lr, bs in itertools.product(inits, self.seeds, self.lrs, self.batch_sizes):
            out.append(dict(lr=float(lr), batch_size=int(bs), seed=int(seed), epochs=int(self.epochs),
                            init_seed=int(seed if init is None else init)))
        return out


@dataclasses.dataclass(frozen=True)
class ZooSpec:
    """Everything that defines a zoo; stored as ``spec.json`` in the workdir.

    Attributes:
      name: a label (``"quick"``, ``"paper_fc"``).
      arch: ``"mlp"``, ``"convnet"`` or ``"resnet18"``; ``arch_kwargs`` go to :func:`nets.make`.
      parent_task, child_tasks: the parents' task and the children's task(s).
      parents: grid for parent candidates; the best ``top_k`` by test accuracy are kept.
      children: fine-tuning grid, applied to every kept parent and child task.
      child_floor: children below this test accuracy are stored but not kept.
      independents: from-scratch grid on each child task.
      generations: 1 = parents and children; 2 adds grandchildren (children fine-tuned again
        on their own task with ``grandchildren`` grid).
      max_population: most models trained together in one vmapped population (memory bound).
      seed: salt mixed into every model's keys.
    """

    name: str
    arch: str = "mlp"
    arch_kwargs: tuple[tuple[str, Any], ...] = ()
    parent_task: Task = Task("A", "embedded", data_lib.TASK_A)
    child_tasks: tuple[Task, ...] = (Task("B", "embedded", data_lib.TASK_B),)
    parents: Grid = Grid((1e-3,), (128,), (0, 1), 1)
    top_k: int = 2
    children: Grid = Grid((1e-3,), (128,), (0,), 1)
    child_floor: float = 0.0
    independents: Grid = Grid((1e-3,), (128,), (100,), 1)
    generations: int = 1
    grandchildren: Grid | None = None
    max_population: int = 16
    seed: int = 0

    def __post_init__(self):
        if self.arch not in nets.ARCHITECTURES:
            raise ZooError(f"unknown arch {self.arch!r}; known: {sorted(nets.ARCHITECTURES)}")
        if not self.child_tasks:
            raise ZooError("ZooSpec.child_tasks is empty")
        names = [self.parent_task.name] + [t.name for t in self.child_tasks]
        if len(set(names)) != len(names):
            raise ZooError(f"task names must be distinct, got {names}")
        if self.top_k < 1:
            raise ZooError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_k > len(self.parents.points()):
            raise ZooError(f"top_k={self.top_k} but the parent grid has only {len(self.parents.points())} points")
        if self.generations not in (1, 2):
            raise ZooError(f"generations must be 1 or 2, got {self.generations}")
        if self.generations == 2 and self.grandchildren is None:
            raise ZooError("generations=2 needs a grandchildren grid")

    def network(self, task: Task) -> nets.Network:
        return nets.make(self.arch, task.num_classes, **dict(self.arch_kwargs))

    def task(self, name: str) -> Task:
        for t in (self.parent_task, *self.child_tasks):
            if t.name == name:
                return t
        raise ZooError(f"unknown task {name!r}; this zoo has {[self.parent_task.name] + [t.name for t in self.child_tasks]}")

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, d: dict) -> "ZooSpec":
        def grid(g):
            if g is None:
                return None
            g = dict(g)
            for k in ("lrs", "batch_sizes", "seeds"):
                g[k] = tuple(g[k])
            g["init_seeds"] = None if g.get("init_seeds") is None else tuple(g["init_seeds"])
            return Grid(**g)

        def task(t):
            t = dict(t)
            t["classes"] = tuple(t["classes"])
            return Task(**t)

        d = dict(d)
        d["arch_kwargs"] = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in d["arch_kwargs"])
        d["parent_task"] = task(d["parent_task"])
        d["child_tasks"] = tuple(task(t) for t in d["child_tasks"])
        for k in ("parents", "children", "independents", "grandchildren"):
            d[k] = grid(d.get(k))
        return cls(**d)


def _emb(name, classes):
    return Task(name, "embedded", tuple(classes))


#: A tiny zoo for tests: 2 parents, 4 children, 2 independents; seconds to build.
TINY = ZooSpec(
    name="tiny",
    arch="mlp",
    arch_kwargs=(("features", (64, 32)),),
    parent_task=Task("A", "embedded", data_lib.TASK_A, n_train=1000),
    child_tasks=(Task("B", "embedded", data_lib.TASK_B, n_train=1000),),
    parents=Grid(lrs=(1e-3,), batch_sizes=(64,), seeds=(0, 1, 2), epochs=1),
    top_k=2,
    children=Grid(lrs=(1e-3, 3e-4), batch_sizes=(64,), seeds=(0,), epochs=1),
    independents=Grid(lrs=(1e-3,), batch_sizes=(64,), seeds=(100, 101), epochs=1),
)

#: The default zoo on the embedded Fashion-MNIST subset: parents on classes 0-4, children on 5-9.
#: 8 parents (top 8 of 12), 48 children, 8 independents of the paper's MLP.
QUICK = ZooSpec(
    name="quick",
    arch="mlp",
    parent_task=_emb("A", data_lib.TASK_A),
    child_tasks=(_emb("B", data_lib.TASK_B),),
    # Parents share four initialisations (siblings differ only in data order) and children
    # fine-tune with large learning rates, which keeps lineage non-trivial: with independent
    # inits and gentle fine-tuning the plain L2 metric is above 90 % (BUILD_NOTES.md).
    parents=Grid(lrs=(1e-3,), batch_sizes=(128,), seeds=(0, 1, 2), init_seeds=(0, 1, 2, 3), epochs=3),
    top_k=8,
    children=Grid(lrs=(1e-2, 5e-3, 3e-3), batch_sizes=(128,), seeds=(0, 1), epochs=4),
    child_floor=0.90,
    independents=Grid(lrs=(1e-3, 5e-4), batch_sizes=(128,), seeds=(100, 101, 102, 103), epochs=3),
)

#: The Neural Lineage FC recipe (DESIGN.md section 7): MNIST parents, FMNIST / EMNIST-letters children.
PAPER_FC = ZooSpec(
    name="paper_fc",
    arch="mlp",
    parent_task=Task("mnist", "mnist", tuple(range(10))),
    child_tasks=(
        Task("fmnist", "fashion_mnist", tuple(range(10))),
        Task("emnist_letters", "emnist/letters", tuple(range(1, 27))),
    ),
    parents=Grid(lrs=(0.1, 0.01, 0.001), batch_sizes=(64, 256, 1024), seeds=(0, 1, 2, 3), epochs=50),
    top_k=20,
    children=Grid(lrs=(1e-2, 1e-3, 1e-4), batch_sizes=(256, 1024), seeds=(0, 1, 2, 3), epochs=36),
    child_floor=0.80,
    independents=Grid(lrs=(1e-3,), batch_sizes=(256,), seeds=tuple(range(100, 110)), epochs=36),
)

SPECS = {s.name: s for s in (TINY, QUICK, PAPER_FC)}


# --------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class ModelRecord:
    """One stored model.

    Attributes:
      id: unique, file-system safe.
      role: ``"parent_candidate"`` (trained, not in the top k), ``"parent"``,
        ``"child"``, ``"grandchild"``, ``"independent"``.
      parent_id: the model it was fine-tuned from (``None`` for roots).
      generation: 0 for roots, 1 for children, 2 for grandchildren.
      task: name of the task it was trained on.
      hparams: lr, batch_size, seed, init_seed, epochs.
      test_acc: accuracy on the task's test split.
      kept: whether it passed selection (top k / accuracy floor).
    """

    id: str
    role: str
    parent_id: str | None
    generation: int
    task: str
    hparams: dict
    test_acc: float
    kept: bool = True


def _fmt(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e")


def _model_id(prefix: str, task: str, hp: dict) -> str:
    init = f"i{hp['init_seed']}-" if hp["init_seed"] != hp["seed"] else ""
    return f"{prefix}{task}-{init}s{hp['seed']}-lr{_fmt(hp['lr'])}-bs{hp['batch_size']}"


# --------------------------------------------------------------------------- training


def _cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@functools.partial(jax.jit, static_argnames=("network", "batch_size", "steps"))
def _train_epoch(network: nets.Network, params, opt_state, lrs, keys, x, y, *, batch_size: int, steps: int):
    """One epoch of Adam for a population: vmap over models of a lax.scan over steps.

    Args:
      params, opt_state: stacked over models ``[P, ...]``.
      lrs: ``[P]`` learning rates. keys: ``[P]`` data-order keys for this epoch.
      x, y: the whole training set on device, shared by all models.
    """
    adam = optax.scale_by_adam()
    n = x.shape[0]

    def one_model(variables, state, lr, key):
        order = jax.random.permutation(key, n)[: steps * batch_size].reshape(steps, batch_size)

        def step(carry, idx):
            variables, state = carry
            trainable = variables["params"]
            rest = {k: v for k, v in variables.items() if k != "params"}

            def loss_fn(p):
                logits, updates = network.train_logits_fn({"params": p, **rest}, x[idx])
                return _cross_entropy(logits, y[idx]), updates

            (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
            direction, state = adam.update(grads, state, trainable)
            trainable = jax.tree.map(lambda p, d: p - lr * d, trainable, direction)
            return ({"params": trainable, **rest, **updates}, state), loss

        (variables, state), losses = jax.lax.scan(step, (variables, state), order)
        return variables, state, losses.mean()

    return jax.vmap(one_model)(params, opt_state, lrs, keys)


@functools.partial(jax.jit, static_argnames=("network",))
def _accuracy(network: nets.Network, params, x, y):
    def one(p):
        return jnp.mean(jnp.argmax(network.logits_fn(p, x), -1) == y)

    return jax.vmap(one)(params)


def population_accuracy(network: nets.Network, params: PyTree, x, y, *, chunk: int = 2048) -> np.ndarray:
    """Test accuracy ``[P]`` of a stacked population, evaluated in chunks of examples."""
    correct = np.zeros(nets.population_size(params))
    for s in range(0, len(y), chunk):
        xb, yb = jnp.asarray(x[s : s + chunk]), jnp.asarray(y[s : s + chunk])
        correct += np.asarray(_accuracy(network, params, xb, yb)) * len(yb)
    return correct / max(len(y), 1)


def train_population(
    network: nets.Network,
    init_params: PyTree,
    x: np.ndarray,
    y: np.ndarray,
    *,
    lrs: Sequence[float],
    seeds: Sequence[int],
    batch_size: int,
    epochs: int,
    on_epoch=None,
) -> PyTree:
    """Trains a stacked population with Adam, all models in one vmapped, jitted epoch.

    Args:
      network: the architecture (all models share it).
      init_params: stacked initial variables ``[P, ...]``.
      x, y: training data ``[N, ...]``, ``[N]`` (put on device once).
      lrs, seeds: per-model learning rate and data-order seed, length ``P``.
      batch_size, epochs: shared by the population (drop-remainder batches).

    Returns:
      The trained stacked variables.
    """
    p = nets.population_size(init_params)
    if len(lrs) != p or len(seeds) != p:
        raise ZooError(f"population of {p} models but {len(lrs)} lrs and {len(seeds)} seeds")
    steps = len(y) // batch_size
    if steps < 1:
        raise ZooError(f"batch_size {batch_size} exceeds the {len(y)} training examples")
    adam = optax.scale_by_adam()
    opt_state = jax.vmap(lambda v: adam.init(v["params"]))(init_params)
    lrs = jnp.asarray(lrs, jnp.float32)
    base = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
    xd, yd = jnp.asarray(x), jnp.asarray(y)
    params = init_params
    for epoch in range(epochs):
        keys = jax.vmap(lambda k: jax.random.fold_in(k, epoch))(base)
        params, opt_state, loss = _train_epoch(network, params, opt_state, lrs, keys, xd, yd, batch_size=batch_size, steps=steps)
        if on_epoch is not None:
            on_epoch(epoch, np.asarray(loss))
    return params


# --------------------------------------------------------------------------- storage


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def save_params(path: str | os.PathLike, params: PyTree) -> None:
    """Writes ``params`` atomically: an orbax checkpoint in a temporary sibling, renamed into place."""
    ckpt = _checkpointer()
    with atomic_dir(path) as tmp:
        ckpt.save(tmp, jax.device_get(params))
        ckpt.wait_until_finished()


def load_params(path: str | os.PathLike) -> PyTree:
    """Reads a checkpoint written by :func:`save_params`; a missing or corrupt one raises :class:`ZooError`."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise ZooError(f"checkpoint {path} is missing")
    try:
        tree = _checkpointer().restore(path.absolute())
    except Exception as e:
        raise ZooError(f"checkpoint {path} is corrupt or unreadable: {type(e).__name__}: {e}") from e
    _check_finite(tree, str(path))
    return jax.tree.map(jnp.asarray, tree)


def _check_finite(tree, what):
    for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not np.all(np.isfinite(np.asarray(leaf))):
            raise ZooError(f"{what}: non-finite values at {path_str(p)}")


def _write_json(path: pathlib.Path, obj) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- Zoo


class Zoo:
    """A built zoo in ``workdir``: records, lazy parameter loading and the networks' functions."""

    def __init__(self, workdir: str | os.PathLike, spec: ZooSpec, records: Sequence[ModelRecord]):
        self.workdir = pathlib.Path(workdir)
        self.spec = spec
        self.records = list(records)
        self._by_id = {r.id: r for r in self.records}
        self._data_cache: dict = {}

    @classmethod
    def open(cls, workdir: str | os.PathLike) -> "Zoo":
        """Opens a built zoo; raises :class:`ZooError` if the workdir holds none or a broken manifest."""
        workdir = pathlib.Path(workdir)
        man = workdir / MANIFEST
        if not man.exists():
            raise ZooError(f"{workdir} holds no built zoo (no {MANIFEST}); run zoo.build(spec, workdir)")
        try:
            d = json.loads(man.read_text())
            spec = ZooSpec.from_json(d["spec"])
            records = [ModelRecord(**r) for r in d["models"]]
        except (ValueError, KeyError, TypeError) as e:
            raise ZooError(f"{man} is corrupt: {type(e).__name__}: {e}") from e
        return cls(workdir, spec, records)

    def __repr__(self):
        return (f"Zoo({self.spec.name!r}: {len(self.parents)} parents, {len(self.children)} children, "
                f"{len(self.independents)} independents, {len(self.grandchildren)} grandchildren)")

    def _role(self, role, task=None):
        return [r for r in self.records if r.role == role and r.kept and (task is None or r.task == task)]

    @property
    def parents(self) -> list[ModelRecord]:
        return self._role("parent")

    @property
    def children(self) -> list[ModelRecord]:
        return self._role("child")

    @property
    def independents(self) -> list[ModelRecord]:
        return self._role("independent")

    @property
    def grandchildren(self) -> list[ModelRecord]:
        return self._role("grandchild")

    def summary(self) -> dict[str, dict[str, float]]:
        """Per role (kept models only): count and min / mean / max test accuracy."""
        out = {}
        for role in ("parent", "child", "grandchild", "independent"):
            accs = [r.test_acc for r in self._role(role)]
            if accs:
                out[role] = {"n": len(accs), "min": min(accs), "mean": float(np.mean(accs)), "max": max(accs)}
        return out

    @functools.cached_property
    def graph(self) -> graph_lib.LineageGraph:
        """The lineage graph over every stored model (kept or not).

        Roots trained from the same initialisation (same architecture, number of
        classes, init seed and spec seed) share an init key, so their relation is
        ``SHARED_INIT``.
        """
        return graph_lib.LineageGraph.from_parents(
            {r.id: r.parent_id for r in self.records},
            init_keys={r.id: f"{self.spec.arch}/{self.spec.task(r.task).num_classes}/init{r.hparams.get('init_seed', r.hparams['seed'])}"
                       for r in self.records if r.parent_id is None},
        )

    def children_of(self, parent_id: str, task: str | None = None) -> list[ModelRecord]:
        return [r for r in self.children if r.parent_id == parent_id and (task is None or r.task == task)]

    def get(self, model_id: str) -> ModelRecord:
        try:
            return self._by_id[model_id]
        except KeyError:
            raise ZooError(f"no model {model_id!r} in zoo {self.spec.name!r}") from None

    @property
    def network(self) -> nets.Network:
        """The parents' network (children of other tasks differ only in the head)."""
        return self.spec.network(self.spec.parent_task)

    def network_for(self, model_id: str) -> nets.Network:
        return self.spec.network(self.spec.task(self.get(model_id).task))

    def feature_fn(self, tap: str):
        return self.network.feature_fn(tap)

    def load(self, model_id: str) -> PyTree:
        """The variables of one model (checked finite)."""
        self.get(model_id)
        return load_params(self.workdir / "models" / model_id)

    def stack(self, ids: Sequence[str], *, backbone: bool = False) -> PyTree:
        """Stacked variables ``[len(ids), ...]``; ``backbone=True`` drops the heads (mixed tasks)."""
        ids = list(ids)
        if not ids:
            raise ZooError("stack: empty list of model ids")
        trees = [self.load(i) for i in ids]
        if backbone:
            trees = [nets.backbone(t) for t in trees]
        return nets.stack(trees)

    def task_data(self, task: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """Normalised ``(x, y)`` of a task (cached)."""
        key = (task, split)
        if key not in self._data_cache:
            self._data_cache[key] = _task_arrays(self.spec.task(task), split)
        return self._data_cache[key]

    def probe(self, n: int = 512, *, task: str | None = None, split: str = "train") -> np.ndarray:
        """The first ``n`` inputs of a child task's split (the paper's probe batch), ``[n, H, W, C]``."""
        task = task or self.spec.child_tasks[0].name
        x, _ = self.task_data(task, split)
        if n > len(x):
            raise ZooError(f"probe of {n} inputs but task {task!r}/{split} has {len(x)}")
        return x[:n]


def _task_arrays(task: Task, split: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = data_lib.task(task.dataset, task.classes, split)
    if split == "train":
        # A fixed shuffle so that probes and n_train caps see all classes.
        order = np.random.default_rng(12345).permutation(len(y))
        x, y = x[order], y[order]
        if task.n_train is not None:
            x, y = x[: task.n_train], y[: task.n_train]
    return x, y


# --------------------------------------------------------------------------- build


class _Progress:
    """tqdm over models when available and wanted, else log lines with an ETA."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.t0 = total, 0, time.time()
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, unit="model", desc="zoo")
            except ImportError:
                pass

    def update(self, n: int, what: str):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix_str(what)
        else:
            el = time.time() - self.t0
            eta = el / max(self.done, 1) * (self.total - self.done)
            log.info("zoo: %d/%d models (%s), %.0fs elapsed, ETA %.0fs", self.done, self.total, what, el, eta)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def build(spec: ZooSpec, workdir: str | os.PathLike, *, progress: bool | None = None, overwrite: bool = False) -> Zoo:
    """Builds (or resumes building) a zoo in ``workdir`` and returns it.

    Args:
      spec: what to build.
      workdir: where models, records and the manifest live.
      progress: show a progress bar (default: unless ``$JAXLINEAGE_NO_PROGRESS`` is set).
      overwrite: if ``workdir`` holds a zoo of another spec, delete it and rebuild
        (otherwise that raises :class:`ZooError`).

    Returns:
      The :class:`Zoo`. Already finished models are never retrained.
    """
    workdir = pathlib.Path(workdir)
    if progress is None:
        progress = not os.environ.get("JAXLINEAGE_NO_PROGRESS")
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path = workdir / SPEC_FILE
    if spec_path.exists():
        old = json.loads(spec_path.read_text())
        if old != spec.to_json():
            if not overwrite:
                raise ZooError(
                    f"{workdir} holds a zoo of another spec ({old.get('name')!r}, different settings); "
                    "use another workdir or pass overwrite=True to delete it and rebuild"
                )
            log.warning("zoo: %s holds a zoo of another spec; deleting it and rebuilding", workdir)
            shutil.rmtree(workdir)
            workdir.mkdir(parents=True)
    _write_json(spec_path, spec.to_json())
    models = workdir / "models"
    models.mkdir(exist_ok=True)
    for leftover in models.glob(".tmp-*"):  # a killed save
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink()

    builder = _Builder(spec, workdir, progress)
    try:
        records = builder.run()
    finally:
        builder.bar.close()
    _write_json(workdir / MANIFEST, {"spec": spec.to_json(), "models": [dataclasses.asdict(r) for r in records]})
    zoo = Zoo(workdir, spec, records)
    log.info("zoo: built %r", zoo)
    return zoo


class _Builder:
    def __init__(self, spec: ZooSpec, workdir: pathlib.Path, progress: bool):
        self.spec, self.workdir = spec, workdir
        self.models = workdir / "models"
        n_parent = len(spec.parents.points())
        n_child = spec.top_k * len(spec.child_tasks) * len(spec.children.points())
        n_ind = len(spec.child_tasks) * len(spec.independents.points())
        n_gc = n_child * len(spec.grandchildren.points()) if spec.generations == 2 else 0
        self.bar = _Progress(n_parent + n_child + n_ind + n_gc, progress)

    def record(self, model_id: str) -> ModelRecord | None:
        path = self.models / f"{model_id}.json"
        if not path.exists():
            return None
        try:
            return ModelRecord(**json.loads(path.read_text()))
        except (ValueError, TypeError) as e:
            log.warning("zoo: record %s is corrupt (%s); retraining the model", path, e)
            return None

    def run(self) -> list[ModelRecord]:
        spec = self.spec
        ptask = spec.parent_task
        # Parents.
        jobs = [dict(id=_model_id("p-", ptask.name, hp), role="parent_candidate", parent_id=None, generation=0,
                     task=ptask.name, hparams=hp, init=None) for hp in spec.parents.points()]
        cands = self.train_jobs(jobs)
        ranked = sorted(cands, key=lambda r: (-r.test_acc, r.id))
        top = {r.id for r in ranked[: spec.top_k]}
        records = [dataclasses.replace(r, role="parent" if r.id in top else "parent_candidate", kept=r.id in top) for r in cands]
        parents = [r for r in records if r.role == "parent"]
        # Children (and grandchildren) of every kept parent, per child task; independents per task.
        for task in spec.child_tasks:
            jobs = [dict(id=f"{p.id}__{_model_id('c-', task.name, hp)}", role="child", parent_id=p.id, generation=1,
                         task=task.name, hparams=hp, init=p.id) for p in parents for hp in spec.children.points()]
            children = [self.floor(r) for r in self.train_jobs(jobs)]
            records += children
            if spec.generations == 2:
                jobs = [dict(id=f"{c.id}__{_model_id('g-', task.name, hp)}", role="grandchild", parent_id=c.id,
                             generation=2, task=task.name, hparams=hp, init=c.id)
                        for c in children if c.kept for hp in spec.grandchildren.points()]
                records += [self.floor(r) for r in self.train_jobs(jobs)]
            jobs = [dict(id=_model_id("ind-", task.name, hp), role="independent", parent_id=None, generation=0,
                         task=task.name, hparams=hp, init=None) for hp in spec.independents.points()]
            records += self.train_jobs(jobs)
        return records

    def floor(self, r: ModelRecord) -> ModelRecord:
        return dataclasses.replace(r, kept=r.test_acc >= self.spec.child_floor)

    def train_jobs(self, jobs: list[dict]) -> list[ModelRecord]:
        """Trains the jobs without a record, grouped by batch size and epochs, in populations."""
        done = {j["id"]: self.record(j["id"]) for j in jobs}
        todo = [j for j in jobs if done[j["id"]] is None]
        if len(jobs) > len(todo):
            self.bar.update(len(jobs) - len(todo), "already built")
        groups: dict = {}
        for j in todo:
            groups.setdefault((j["task"], j["hparams"]["batch_size"], j["hparams"]["epochs"]), []).append(j)
        for (task_name, _, _), group in groups.items():
            for s in range(0, len(group), self.spec.max_population):
                for r in self.train_group(task_name, group[s : s + self.spec.max_population]):
                    done[r.id] = r
        return [done[j["id"]] for j in jobs]

    def train_group(self, task_name: str, group: list[dict]) -> list[ModelRecord]:
        spec = self.spec
        task = spec.task(task_name)
        network = spec.network(task)
        x, y = _task_arrays(task, "train")
        xt, yt = _task_arrays(task, "test")
        inits = []
        for j in group:
            hp = j["hparams"]
            key = jax.random.fold_in(jax.random.key(hp["init_seed"]), spec.seed)
            fresh = network.init(key)
            if j["init"] is None:
                inits.append(fresh)
            else:
                src = load_params(self.models / j["init"])
                if self.spec.task(self.record(j["init"]).task).num_classes == task.num_classes and j["role"] == "grandchild":
                    inits.append(src)  # same task: keep the head
                else:
                    inits.append(nets.with_head(nets.backbone(src), fresh))  # fresh head for the new task
        hp0 = group[0]["hparams"]
        t0 = time.time()
        params = train_population(
            network, nets.stack(inits), x, y,
            lrs=[j["hparams"]["lr"] for j in group],
            seeds=[j["hparams"]["seed"] * 7919 + spec.seed for j in group],
            batch_size=hp0["batch_size"], epochs=hp0["epochs"],
        )
        accs = population_accuracy(network, params, xt, yt)
        log.info("zoo: trained %d %s models on %s in %.1fs", len(group), group[0]["role"], task_name, time.time() - t0)
        out = []
        for j, p, acc in zip(group, nets.unstack(params), accs):
            _check_finite(p, f"model {j['id']} after training")
            rec = ModelRecord(id=j["id"], role=j["role"], parent_id=j["parent_id"], generation=j["generation"],
                              task=j["task"], hparams=j["hparams"], test_acc=float(acc))
            save_params(self.models / j["id"], p)
            _write_json(self.models / f"{j['id']}.json", dataclasses.asdict(rec))
            out.append(rec)
            self.bar.update(1, f"{j['role']} {acc:.3f}")
        return out


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m jaxlineage.zoo --spec quick --workdir DIR``: build (or reuse) a zoo, print its accuracies."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--spec", default="quick", choices=sorted(SPECS))
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    t0 = time.time()
    z = build(SPECS[args.spec], args.workdir)
    print(f"{z} in {time.time() - t0:.0f}s")
    for role, s in z.summary().items():
        print(f"{role:12s} n={s['n']:3d}  test acc min {s['min']:.3f}  mean {s['mean']:.3f}  max {s['max']:.3f}")


if __name__ == "__main__":
    main()
