"""Building and opening zoos: the population builder, model records and :class:`Zoo`.

The builder walks the groups of a :class:`~jaxlineage.zoo.GraphSpec` with every
source before the groups derived from it. A group's models (every kept source
model x every grid point) that share the operation's static hyper-parameters are
made together, ``max_population`` at a time, by one call of the operation
(vmapped, jitted training). Each finished model is written atomically (orbax
checkpoint into a temporary folder, renamed into place, then its JSON record); a
model counts as built only once its record exists, so a killed build resumes
where it stopped, inside a group too, and never leaves a half-written model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import shutil
import time
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxlineage import data as data_lib
from jaxlineage import graph as graph_lib
from jaxlineage import nets
from jaxlineage import text as text_lib
from jaxlineage._progress import Progress
from jaxlineage.zoo import ops as ops_lib
from jaxlineage.zoo import storage, training
from jaxlineage.zoo._base import PyTree, Role, ZooError, enum_value, log
from jaxlineage.zoo.spec import GraphSpec, Group, Task, ZooSpec, point_suffix, spec_from_json

__all__ = ["MANIFEST", "SPEC_FILE", "ModelRecord", "Zoo", "build", "task_arrays"]

MANIFEST = "manifest.json"
SPEC_FILE = "spec.json"


@dataclasses.dataclass(frozen=True)
class ModelRecord:
    """One stored model.

    Attributes:
      id: unique, file-system safe.
      role: the group's classic role (``"parent"``, ``"child"``, ``"grandchild"``,
        ``"independent"``, else the group name); ``"<role>_candidate"`` for models a top-k
        selection dropped.
      parent_id: the model it was derived from (``None`` for roots).
      generation: 0 for roots, 1 + the parent's otherwise.
      task: name of the task it was trained / evaluated on.
      hparams: the operation's hyper-parameters (grid point merged with defaults; for
        training operations lr, batch_size, seed, init_seed, epochs, optimizer, ...).
      test_acc: accuracy on the task's test split.
      kept: whether it passed its group's selection (top k / accuracy floor).
      group, op, kind: its group, the group's operation and derivation kind.
      arch: architecture family (``"mlp"``, ...).
      fidelity: agreement of argmax with the parent on the test split of the model's task;
        ``None`` for roots or where the two output spaces differ (transfer to another task).
      init_key: for roots, a string equal for roots trained from the same initialisation.
      partner_id: the second parent of a two-parent model (``merge``), else ``None``.
    """

    id: str
    role: str
    parent_id: str | None
    generation: int
    task: str
    hparams: dict
    test_acc: float
    kept: bool = True
    group: str | None = None
    op: str | None = None
    kind: str | None = None
    arch: str | None = None
    fidelity: float | None = None
    init_key: str | None = None
    partner_id: str | None = None

    @property
    def parent_ids(self) -> tuple[str, ...]:
        return tuple(p for p in (self.parent_id, self.partner_id) if p is not None)


#: Test windows of a text task (a fixed, shuffled subset: accuracy is next-byte accuracy over them).
_TEXT_TEST = 256


def task_arrays(task: Task, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ``(x [N, H, W, C], y [N])`` of a task's split (training: its half, fixed shuffle, cap)."""
    if text_lib.is_text_dataset(task.dataset):
        # Language-model tasks: next-byte windows [N, T] (text.sequences shuffles with a fixed seed).
        x, y = text_lib.sequences(task.dataset, split, limit=task.n_train if split == "train" else _TEXT_TEST)
        return x, y
    x, y = data_lib.task(task.dataset, task.classes, split)
    if split == "train":
        if task.half is not None:
            idx = data_lib.halves(y, seed=0)[task.half]
            x, y = x[idx], y[idx]
        # A fixed shuffle so that probes and n_train caps see all classes.
        order = np.random.default_rng(12345).permutation(len(y))
        x, y = x[order], y[order]
        if task.n_train is not None:
            x, y = x[: task.n_train], y[: task.n_train]
    return x, y


# --------------------------------------------------------------------------- Zoo


class Zoo:
    """A built zoo in ``workdir``: records, the lineage graph, lazy parameter loading, networks.

    Selection for the evaluation layer: :meth:`group` (kept models of a group, by name),
    :meth:`models` (by group / op / kind / task / arch / tag); ground truth from
    :attr:`graph` (``parent``, ``ancestors``, ``relation``...). The classic role views
    (:attr:`parents`, :attr:`children`, :attr:`independents`, :attr:`grandchildren`) are the
    kept models of the groups with those roles.
    """

    def __init__(self, workdir: str | os.PathLike, spec: ZooSpec | GraphSpec, records: Sequence[ModelRecord]):
        self.workdir = pathlib.Path(workdir)
        self.spec = spec
        self.graph_spec: GraphSpec = spec.to_graph()
        self.records = list(records)
        self._by_id = {r.id: r for r in self.records}
        self._data_cache: dict = {}

    @classmethod
    def open(cls, workdir: str | os.PathLike) -> Zoo:
        """Opens a built zoo; raises :class:`ZooError` if the workdir holds none or a broken manifest."""
        workdir = pathlib.Path(workdir)
        man = workdir / MANIFEST
        if not man.exists():
            raise ZooError(f"{workdir} holds no built zoo (no {MANIFEST}); run zoo.build(spec, workdir)")
        try:
            d = json.loads(man.read_text())
            spec = spec_from_json(d["spec"])
            records = [ModelRecord(**r) for r in d["models"]]
        except (ValueError, KeyError, TypeError) as e:
            raise ZooError(f"{man} is corrupt: {type(e).__name__}: {e}") from e
        return cls(workdir, spec, _fill_legacy(spec.to_graph(), records))

    def __repr__(self):
        if isinstance(self.spec, ZooSpec):
            return (
                f"Zoo({self.spec.name!r}: {len(self.parents)} parents, {len(self.children)} children, "
                f"{len(self.independents)} independents, {len(self.grandchildren)} grandchildren)"
            )
        return f"Zoo({self.spec.name!r}: {len(self.records)} models in {len(self.graph_spec.groups)} groups)"

    # ------------------------------------------------------------------ selection

    def _role(self, role: Role | str, task=None):
        role = enum_value(role)
        return [r for r in self.records if r.role == role and r.kept and (task is None or r.task == task)]

    @property
    def parents(self) -> list[ModelRecord]:
        return self._role(Role.PARENT)

    @property
    def children(self) -> list[ModelRecord]:
        return self._role(Role.CHILD)

    @property
    def independents(self) -> list[ModelRecord]:
        return self._role(Role.INDEPENDENT)

    @property
    def grandchildren(self) -> list[ModelRecord]:
        return self._role(Role.GRANDCHILD)

    @property
    def groups(self) -> tuple[Group, ...]:
        return self.graph_spec.groups

    def group(self, name: str, *, kept: bool | None = True) -> list[ModelRecord]:
        """The models of group ``name`` (kept ones by default; ``kept=None`` for all), in build order."""
        self.graph_spec.group(name)
        return [r for r in self.records if r.group == name and (kept is None or r.kept == kept)]

    def models(
        self,
        *,
        group: str | Sequence[str] | None = None,
        op: str | None = None,
        kind: str | None = None,
        task: str | None = None,
        arch: nets.Arch | str | None = None,
        tag: str | None = None,
        role: Role | str | None = None,
        kept: bool | None = True,
    ) -> list[ModelRecord]:
        """Models matching every given filter (``tag``: the group carries that tag), in build order.

        ``arch`` takes a :class:`jaxlineage.nets.Arch` or a name, ``role`` a :class:`Role` or a name.
        """
        arch, role = enum_value(arch), enum_value(role)
        groups = {group} if isinstance(group, str) else (set(group) if group is not None else None)
        tagged = None if tag is None else {g.name for g in self.groups if tag in g.tags}
        return [
            r
            for r in self.records
            if (groups is None or r.group in groups)
            and (op is None or r.op == op)
            and (kind is None or r.kind == kind)
            and (task is None or r.task == task)
            and (arch is None or r.arch == arch)
            and (tagged is None or r.group in tagged)
            and (role is None or r.role == role)
            and (kept is None or r.kept == kept)
        ]

    def children_of(self, parent_id: str, task: str | None = None) -> list[ModelRecord]:
        return [r for r in self.children if r.parent_id == parent_id and (task is None or r.task == task)]

    def get(self, model_id: str) -> ModelRecord:
        try:
            return self._by_id[model_id]
        except KeyError:
            raise ZooError(f"no model {model_id!r} in zoo {self.spec.name!r}") from None

    # ------------------------------------------------------------------ summaries

    def summary(self) -> dict[str, dict[str, float]]:
        """Per classic role (kept models only): count and min / mean / max test accuracy."""
        out = {}
        for role in (Role.PARENT, Role.CHILD, Role.GRANDCHILD, Role.INDEPENDENT):
            accs = [r.test_acc for r in self._role(role)]
            if accs:
                out[role.value] = {"n": len(accs), "min": min(accs), "mean": float(np.mean(accs)), "max": max(accs)}
        return out

    def group_summary(self) -> list[dict[str, Any]]:
        """One row per group: op, kind, task, arch, models (stored / kept), test accuracy and fidelity
        (min / mean / max over kept models; fidelity ``None`` where undefined)."""
        rows = []
        for g in self.groups:
            recs = self.group(g.name, kept=None)
            kept = [r for r in recs if r.kept]
            accs = [r.test_acc for r in kept]
            fids = [r.fidelity for r in kept if r.fidelity is not None]
            rows.append(
                {
                    "group": g.name,
                    "op": g.op,
                    "kind": g.kind_name,
                    "source": g.source,
                    "task": self.graph_spec.task_of(g.name).name,
                    "arch": self.graph_spec.arch_of(g.name)[0],
                    "n": len(recs),
                    "kept": len(kept),
                    "acc": _stats(accs),
                    "fidelity": _stats(fids),
                }
            )
        return rows

    # ------------------------------------------------------------------ lineage

    @functools.cached_property
    def graph(self) -> graph_lib.LineageGraph:
        """The lineage graph over every stored model (kept or not).

        Roots trained from the same initialisation (same architecture and widths, number of
        classes, init seed and spec seed) share an init key, so their relation is ``SHARED_INIT``.
        """
        return graph_lib.LineageGraph.from_parents(
            {r.id: r.parent_ids for r in self.records},
            init_keys={r.id: r.init_key for r in self.records if r.parent_id is None and r.init_key is not None},
        )

    # ------------------------------------------------------------------ networks and parameters

    @property
    def network(self) -> nets.Network:
        """The parents' network (group ``parent``, else the first root group); children of other
        tasks differ only in the head."""
        names = [g.name for g in self.groups]
        return self.graph_spec.network("parent" if "parent" in names else self.graph_spec.order()[0].name)

    def network_for(self, model_id: str) -> nets.Network:
        return self.graph_spec.network(self.get(model_id).group)

    def feature_fn(self, tap: str):
        return self.network.feature_fn(tap)

    def load(self, model_id: str) -> PyTree:
        """The variables of one model (checked finite)."""
        self.get(model_id)
        return storage.load_params(self.workdir / "models" / model_id)

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
            self._data_cache[key] = task_arrays(self.graph_spec.task(task), split)
        return self._data_cache[key]

    def probe(self, n: int = 512, *, task: str | None = None, split: str = "train") -> np.ndarray:
        """The first ``n`` inputs of a task's split (default: the first child task, else the first task),
        the paper's probe batch, ``[n, H, W, C]``."""
        if task is None:
            tasks = self.graph_spec.child_tasks or self.graph_spec.tasks
            task = tasks[0].name
        x, _ = self.task_data(task, split)
        if n > len(x):
            raise ZooError(f"probe of {n} inputs but task {task!r}/{split} has {len(x)}")
        return x[:n]


def _stats(v: Sequence[float]) -> dict | None:
    if not v:
        return None
    return {"min": float(min(v)), "mean": float(np.mean(v)), "max": float(max(v))}


def _fill_legacy(gspec: GraphSpec, records: list[ModelRecord]) -> list[ModelRecord]:
    """Records written before groups existed (classic zoos): infer group, op, kind and arch from the role."""
    out = []
    multi = len(gspec.child_tasks) > 1
    for r in records:
        if r.group is None:
            base = r.role.removesuffix("_candidate")
            name = base if base == "parent" or not multi else f"{base}.{r.task}"
            g = gspec.group(name)
            arch = gspec.arch_of(name)
            init_key = None
            if r.parent_id is None:
                init_seed = r.hparams.get("init_seed", r.hparams["seed"])
                init_key = _init_key(arch, gspec.task(r.task).num_classes, init_seed, gspec.seed)
            r = dataclasses.replace(r, group=name, op=g.op, kind=g.kind_name, arch=arch[0], init_key=init_key)
        out.append(r)
    return out


def _init_key(arch: tuple[str, tuple], num_classes: int, init_seed: int, salt: int) -> str:
    name, kw = arch
    kws = ",".join(f"{k}={v}" for k, v in kw)
    return f"{name}({kws})/{num_classes}/init{init_seed}/salt{salt}"


# --------------------------------------------------------------------------- build


def build(
    spec: ZooSpec | GraphSpec, workdir: str | os.PathLike, *, progress: bool | None = None, overwrite: bool = False
) -> Zoo:
    """Builds (or resumes building) a zoo in ``workdir`` and returns it.

    Args:
      spec: what to build (a :class:`GraphSpec`, or a classic :class:`ZooSpec`).
      workdir: where models (``models/<id>`` checkpoints and ``models/<id>.json`` records),
        ``spec.json`` and ``manifest.json`` live.
      progress: show a progress bar (default: unless ``$JAXLINEAGE_NO_PROGRESS`` is set).
      overwrite: if ``workdir`` holds a zoo of another spec, delete it and rebuild
        (otherwise that raises :class:`ZooError`).

    Returns:
      The :class:`Zoo`. Already finished models are never retrained.

    Raises:
      ZooError: a malformed spec (before anything is written), a workdir of another spec.
    """
    gspec = spec.to_graph()
    gspec.validate()  # operations may have been (un)registered since the spec was made
    workdir = pathlib.Path(workdir)
    if progress is None:
        progress = not os.environ.get("JAXLINEAGE_NO_PROGRESS")
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
    workdir.mkdir(parents=True, exist_ok=True)
    storage.write_json(spec_path, spec.to_json())
    models = workdir / "models"
    models.mkdir(exist_ok=True)
    for leftover in models.glob(".tmp-*"):  # a killed save
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink()

    builder = _Builder(gspec, workdir, progress)
    try:
        records = builder.run()
    finally:
        builder.bar.close()
    storage.write_json(
        workdir / MANIFEST,
        {
            "spec": spec.to_json(),
            "models": [dataclasses.asdict(r) for r in records],
            "graph": Zoo(workdir, spec, records).graph.to_json(),
        },
    )
    zoo = Zoo(workdir, spec, records)
    log.info("zoo: built %r", zoo)
    return zoo


@dataclasses.dataclass
class _Job:
    id: str
    group: Group
    source: ModelRecord | None
    hparams: dict
    partner: ModelRecord | None = None


class _Builder:
    def __init__(self, spec: GraphSpec, workdir: pathlib.Path, progress: bool):
        self.spec, self.workdir = spec, workdir
        self.models = workdir / "models"
        # Expected models: every grid point for every kept source (top-k groups keep k; floors are
        # unknown in advance, so the total can shrink once they apply).
        n, kept = {}, {}
        for g in spec.order():
            n[g.name] = len(g.points()) * (1 if g.source is None else kept[g.source])
            kept[g.name] = min(g.top_k, n[g.name]) if g.top_k is not None else n[g.name]
        self.bar = Progress("zoo", sum(n.values()), bar=progress, every=0.0 if not progress else 60.0, logger=log)
        self._params_cache: dict[str, PyTree] = {}

    def _expected(self, g: Group) -> int:
        src = self.spec.group(g.source)
        n_src = len(src.points()) if src.source is None else self._expected(src)
        return len(g.points()) * (min(src.top_k, n_src) if src.top_k is not None else n_src)

    def stored(self, model_id: str) -> ModelRecord | None:
        path = self.models / f"{model_id}.json"
        if not path.exists():
            return None
        try:
            return ModelRecord(**json.loads(path.read_text()))
        except (ValueError, TypeError) as e:
            log.warning("zoo: record %s is corrupt (%s); rebuilding the model", path, e)
            return None

    def run(self) -> list[ModelRecord]:
        spec = self.spec
        records: list[ModelRecord] = []
        kept: dict[str, list[ModelRecord]] = {}
        for g in spec.order():
            task = spec.task_of(g.name)
            if g.source is None:
                sources: list[ModelRecord | None] = [None]
            else:
                sources = kept[g.source]
                self.bar.add_total(len(sources) * len(g.points()) - self._expected(g))
                if not sources:
                    log.warning("zoo: group %r has no models: its source group %r kept none", g.name, g.source)
            partners = _partners(sources, kept[g.partner]) if g.partner is not None else {}
            jobs = []
            for src in sources:
                if g.partner is not None and src.id not in partners:
                    log.warning("zoo: group %r: %s has no partner in group %r; skipped", g.name, src.id, g.partner)
                    continue
                for hp in g.points():
                    hp = spec._merged(g, hp)
                    mid = f"{src.id}__" if src is not None else ""
                    jid = f"{mid}{g.id_prefix}{task.name}-{point_suffix(g, hp)}"
                    jobs.append(_Job(jid, g, src, hp, partners.get(src.id if src is not None else None)))
            recs = self.select(g, self.run_jobs(g, jobs))
            kept[g.name] = [r for r in recs if r.kept]
            records += recs
        return records

    def select(self, g: Group, recs: list[ModelRecord]) -> list[ModelRecord]:
        keep = {r.id for r in recs}
        if g.top_k is not None:
            keep = {r.id for r in sorted(recs, key=lambda r: (-r.test_acc, r.id))[: g.top_k]}
        out = []
        for r in recs:
            ok = r.id in keep and (g.floor is None or r.test_acc >= g.floor)
            role = g.role_name if (r.id in keep or g.top_k is None) else f"{g.role_name}_candidate"
            out.append(dataclasses.replace(r, kept=ok, role=role))
        return out

    def run_jobs(self, g: Group, jobs: list[_Job]) -> list[ModelRecord]:
        """Makes the jobs without a record, split by the operation's static hyper-parameters, in populations."""
        op = ops_lib.get_op(g.op, group=g.name)
        done = {j.id: self.stored(j.id) for j in jobs}
        todo = [j for j in jobs if done[j.id] is None]
        if len(jobs) > len(todo):
            self.bar.update(len(jobs) - len(todo), f"{g.name}: already built", resumed=True)
        pops: dict = {}
        for j in todo:
            pops.setdefault(tuple(j.hparams[k] for k in op.static), []).append(j)
        for pop in pops.values():
            for s in range(0, len(pop), self.spec.max_population):
                for r in self.make(g, op, pop[s : s + self.spec.max_population]):
                    done[r.id] = r
        self._params_cache.clear()
        return [self.describe(g, j, done[j.id]) for j in jobs]

    def describe(self, g: Group, j: _Job, r: ModelRecord) -> ModelRecord:
        """A stored record with its group's metadata (records of older builds may lack it)."""
        if r.group is not None:
            return r
        spec = self.spec
        init_key = (
            None
            if j.source is not None
            else _init_key(
                spec.arch_of(g.name),
                spec.task_of(g.name).num_classes,
                j.hparams.get("init_seed", j.hparams["seed"]),
                spec.seed,
            )
        )
        return dataclasses.replace(
            r, group=g.name, op=g.op, kind=g.kind_name, arch=spec.arch_of(g.name)[0], init_key=init_key
        )

    def source_params(self, model_id: str) -> PyTree:
        if model_id not in self._params_cache:
            self._params_cache[model_id] = storage.load_params(self.models / model_id)
        return self._params_cache[model_id]

    def make(self, g: Group, op: ops_lib.Operation, jobs: list[_Job]) -> list[ModelRecord]:
        spec = self.spec
        task = spec.task_of(g.name)
        network = spec.network(g.name)
        src_net = spec.network(g.source) if g.source is not None else None
        x, y = task_arrays(task, "train")
        xt, yt = task_arrays(task, "test")
        sources = None if g.source is None else nets.stack([self.source_params(j.source.id) for j in jobs])
        partners = None if g.partner is None else nets.stack([self.source_params(j.partner.id) for j in jobs])
        data_seeds = tuple(int(j.hparams["seed"]) * 7919 + spec.seed for j in jobs)
        init_keys = jax.numpy.stack(
            [
                jax.random.fold_in(jax.random.key(int(j.hparams.get("init_seed", j.hparams["seed"]))), spec.seed)
                for j in jobs
            ]
        )
        # Other randomness (permutations, noise, students' inits) differs per source, so that two
        # sources' derived models never share it.
        keys = jax.numpy.stack(
            [
                jax.random.fold_in(
                    jax.random.key(d), zlib.crc32((j.source.id if j.source else "").encode()) & 0x7FFFFFFF
                )
                for j, d in zip(jobs, data_seeds)
            ]
        )
        seq_archs = spec.resolved_sequential_archs()
        seq = network.name in seq_archs
        src_seq = src_net is not None and src_net.name in seq_archs
        t0 = time.time()
        params = op.fn(
            ops_lib.OpInput(
                network,
                src_net,
                sources,
                x,
                y,
                tuple(j.hparams for j in jobs),
                init_keys,
                keys,
                data_seeds,
                seq,
                src_seq,
                partners,
            )
        )
        # Argmax per chunk: a language model's logits [P, N, T, V] are not held whole; accuracy and
        # fidelity average over every predicted position (examples, and tokens for language models).
        mine = training.population_predictions(network, params, xt, sequential=seq).reshape(len(jobs), -1)
        accs = (mine == np.asarray(yt).reshape(1, -1)).mean(-1)
        fids = [None] * len(jobs)
        if g.source is not None and spec.task_of(g.source).output_space == task.output_space:
            theirs = training.population_predictions(src_net, sources, xt, sequential=src_seq).reshape(len(jobs), -1)
            fids = [float(v) for v in (mine == theirs).mean(-1)]
        log.info(
            "zoo: made %d models of group %r (%s) on %s in %.1fs", len(jobs), g.name, g.op, task.name, time.time() - t0
        )
        arch = spec.arch_of(g.name)
        out = []
        for j, p, acc, fid in zip(jobs, nets.unstack(params), accs, fids):
            storage.check_finite(p, f"model {j.id} of group {g.name!r} after {g.op}")
            init_key = (
                None
                if j.source is not None
                else _init_key(arch, task.num_classes, j.hparams.get("init_seed", j.hparams["seed"]), spec.seed)
            )
            rec = ModelRecord(
                id=j.id,
                role=g.role_name,
                parent_id=None if j.source is None else j.source.id,
                generation=spec.generation(g.name),
                task=task.name,
                hparams=_jsonable(j.hparams),
                test_acc=float(acc),
                group=g.name,
                op=g.op,
                kind=g.kind_name,
                arch=arch[0],
                fidelity=fid,
                init_key=init_key,
                partner_id=None if j.partner is None else j.partner.id,
            )
            storage.save_params(self.models / j.id, p)
            storage.write_json(self.models / f"{j.id}.json", dataclasses.asdict(rec))
            out.append(rec)
            self.bar.update(1, f"{g.name} {acc:.3f}")
        return out


def _partners(sources: list[ModelRecord], candidates: list[ModelRecord]) -> dict[str, ModelRecord]:
    """``{source id: partner}``: the i-th source model of a parent pairs with the i-th partner model of
    the same parent (both in build order)."""
    by_parent: dict = {}
    for r in candidates:
        by_parent.setdefault(r.parent_id, []).append(r)
    out, seen = {}, {}
    for s in sources:
        i = seen.get(s.parent_id, 0)
        seen[s.parent_id] = i + 1
        cands = by_parent.get(s.parent_id, [])
        if i < len(cands):
            out[s.id] = cands[i]
    return out


def _jsonable(hp: dict) -> dict:
    return json.loads(json.dumps(hp))
