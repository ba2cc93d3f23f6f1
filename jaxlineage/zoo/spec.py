"""Zoo specs as code: tasks, groups of models, and the graph of groups.

A :class:`GraphSpec` is a graph of :class:`Group` s. A group applies one
operation (``train``, ``finetune``, ``prune``, ``distill``, ``permute``,
``perturb`` or a registered one) to every kept model of its *source group* (or to
nothing, for ``train``) over a hyper-parameter grid, optionally keeping only the
top ``k`` by test accuracy or those above an accuracy floor. Specs are frozen
dataclasses with a JSON round trip; the builder stores them in the workdir.

:class:`ZooSpec` is the classic fixed shape (parents, children, independents,
grandchildren) kept as a template: :meth:`ZooSpec.to_graph` compiles it into the
groups ``parent``, ``child``, ``grandchild`` and ``independent`` (one per child
task, suffixed ``.<task>`` when there are several), which is what is built.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from jaxlineage import data as data_lib
from jaxlineage import nets
from jaxlineage.zoo import ops as ops_lib
from jaxlineage.zoo._base import HeadMode, Role, ZooError, enum_value

__all__ = ["GraphSpec", "Grid", "Group", "Task", "ZooSpec", "spec_from_json"]

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclasses.dataclass(frozen=True)
class Task:
    """A classification task: ``classes`` of ``dataset``, relabelled ``0..len-1``.

    Attributes:
      name: unique within a spec, file-system safe.
      dataset: ``"embedded"`` or a :func:`jaxlineage.data.load` name.
      classes: the original class ids, in label order.
      n_train: cap on training examples (the first ``n`` after a fixed shuffle).
      half: ``None`` (the whole training split), 0 or 1: one of two disjoint,
        class-stratified halves of the task's training split (:func:`jaxlineage.data.halves`,
        seed 0), e.g. a defender's (0) and an attacker's (1). The test split is whole.
    """

    name: str
    dataset: str = "embedded"
    classes: tuple[int, ...] = data_lib.TASK_A
    n_train: int | None = None
    half: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
        if not _SAFE.match(self.name):
            raise ZooError(f"task name {self.name!r} is not file-system safe (letters, digits, _ . + -)")
        if self.half not in (None, 0, 1):
            raise ZooError(f"task {self.name!r}: half must be None, 0 or 1, got {self.half!r}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def output_space(self) -> tuple:
        """What a classifier on this task predicts; models on tasks with equal output spaces can be compared."""
        return (self.dataset, self.classes)


@dataclasses.dataclass(frozen=True)
class Grid:
    """The classic zoos' hyper-parameter grid; every combination is one model.

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

    def axes(self) -> tuple[tuple[str, tuple], ...]:
        """The grid as :class:`Group` axes, in the classic enumeration order (init, seed, lr, batch size)."""
        out = [] if self.init_seeds is None else [("init_seed", tuple(self.init_seeds))]
        out += [
            ("seed", tuple(self.seeds)),
            ("lr", tuple(float(v) for v in self.lrs)),
            ("batch_size", tuple(int(v) for v in self.batch_sizes)),
            ("epochs", (int(self.epochs),)),
        ]
        return tuple(out)

    def points(self) -> list[dict]:
        inits = self.init_seeds if self.init_seeds is not None else (None,)
        out = []
        for init, seed, lr, bs in itertools.product(inits, self.seeds, self.lrs, self.batch_sizes):
            out.append(
                dict(
                    lr=float(lr),
                    batch_size=int(bs),
                    seed=int(seed),
                    epochs=int(self.epochs),
                    init_seed=int(seed if init is None else init),
                )
            )
        return out


def _norm_value(v):
    v = enum_value(v)
    if isinstance(v, list):
        return tuple(v)
    return v


def _norm_axes(grid) -> tuple[tuple[str, tuple], ...]:
    items = grid.items() if isinstance(grid, Mapping) else grid
    out = []
    for k, vs in items:
        if isinstance(vs, (str, bytes, enum.Enum)) or not isinstance(vs, Sequence):
            vs = (vs,)
        out.append((str(k), tuple(_norm_value(v) for v in vs)))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Group:
    """Models made by one operation from every kept model of one source group.

    Attributes:
      name: unique in the spec (letters, digits, ``_ . + -``); the evaluation layer selects by it.
      op: a registered operation (:data:`jaxlineage.zoo.OPERATIONS`).
      source: the source group (``None`` for ``train``).
      task: the task the new models are trained / evaluated on (default: the source's).
      arch, arch_kwargs: the architecture for ``train`` and ``distill`` students
        (default for ``distill``: the teacher's); other operations keep the source's.
      grid: ``{hyper-parameter: values}`` (a mapping or ``((name, values), ...)``); every
        combination, for every source model, is one model. Enum members are stored by value.
      top_k: keep the ``k`` most accurate models of the group (the rest are stored, not kept).
      floor: keep models with test accuracy ``>= floor``.
      prefix: model ids are ``[<source id>__]<prefix><task>-<varying hyper-parameters>``
        (default ``"<name>-"``).
      role: the classic role (a :class:`~jaxlineage.zoo.Role` or any name) for
        :attr:`ModelRecord.role` (default: ``name``); stored by value. ``arch`` likewise takes a
        :class:`jaxlineage.nets.Arch` or a registered name.
      kind: derivation kind for evaluation tables (default: ``op``), e.g. ``"extract_l"``.
      tags: free labels, e.g. ``("positive",)``, ``("pool",)``.
      partner: a second source group, for operations with two parents (``merge``): each model of
        ``source`` is paired with the model of ``partner`` that has the same parent and the same
        position among that parent's kept models there; the new model records both as parents.
    """

    name: str
    op: str
    source: str | None = None
    task: str | None = None
    arch: nets.Arch | str | None = None
    arch_kwargs: tuple[tuple[str, Any], ...] = ()
    grid: tuple[tuple[str, tuple], ...] = ()
    top_k: int | None = None
    floor: float | None = None
    prefix: str | None = None
    role: Role | str | None = None
    kind: str | None = None
    tags: tuple[str, ...] = ()
    partner: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "arch", enum_value(self.arch))
        object.__setattr__(self, "role", enum_value(self.role))
        object.__setattr__(self, "grid", _norm_axes(self.grid))
        kw = self.arch_kwargs.items() if isinstance(self.arch_kwargs, Mapping) else self.arch_kwargs
        object.__setattr__(self, "arch_kwargs", tuple((str(k), _norm_value(v)) for k, v in kw))
        object.__setattr__(self, "tags", tuple(self.tags))
        if not isinstance(self.name, str) or not _SAFE.match(self.name):
            raise ZooError(f"group name {self.name!r} is not file-system safe (letters, digits, _ . + -)")
        for k, vs in self.grid:
            if not vs:
                raise ZooError(f"group {self.name!r}: grid axis {k!r} is empty (the grid has no points)")
        if self.top_k is not None and self.top_k < 1:
            raise ZooError(f"group {self.name!r}: top_k must be >= 1, got {self.top_k}")

    @property
    def id_prefix(self) -> str:
        return self.prefix if self.prefix is not None else f"{self.name}-"

    @property
    def role_name(self) -> str:
        return self.role or self.name

    @property
    def kind_name(self) -> str:
        return self.kind or self.op

    def axes(self) -> dict[str, tuple]:
        return dict(self.grid)

    def points(self) -> list[dict]:
        """Every grid point as ``{hyper-parameter: value}``, the last axis varying fastest."""
        names = [k for k, _ in self.grid]
        return [dict(zip(names, vals)) for vals in itertools.product(*(vs for _, vs in self.grid))]


def _fmt_lr(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e")


def point_suffix(group: Group, hp: Mapping[str, Any]) -> str:
    """The hyper-parameter part of a model id: init seed (if it differs from the seed), seed, lr,
    batch size (if in the grid), then every other axis that takes several values."""
    axes = group.axes()
    parts = []
    if "init_seed" in axes and hp.get("init_seed") is not None and hp["init_seed"] != hp["seed"]:
        parts.append(f"i{hp['init_seed']}")
    parts.append(f"s{hp['seed']}")
    if "lr" in axes:
        parts.append(f"lr{_fmt_lr(hp['lr'])}")
    if "batch_size" in axes:
        parts.append(f"bs{hp['batch_size']}")
    for k, vs in group.grid:
        if k not in ("init_seed", "seed", "lr", "batch_size") and len(vs) > 1:
            v = hp[k]
            parts.append(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}")
    return "-".join(parts)


def _check_partner(g: Group, op, by: Mapping[str, Group]) -> None:
    """A two-parent operation names an existing partner group; any other names none."""
    if op.needs_partner != (g.partner is not None):
        raise ZooError(
            f"group {g.name!r}: operation {g.op!r} "
            + ("needs a partner group (a second source)" if op.needs_partner else "takes no partner group")
        )
    if g.partner is not None and (g.partner not in by or g.partner == g.name):
        raise ZooError(f"group {g.name!r}: unknown partner group {g.partner!r}; groups: {sorted(by)}")


@dataclasses.dataclass(frozen=True)
class GraphSpec:
    """A zoo as a graph of groups; stored as ``spec.json`` in the workdir.

    Attributes:
      name: a label (``"provenance_quick"``).
      tasks: every task a group uses.
      groups: the groups, in any order (the builder sorts them topologically, keeping the
        given order where it can).
      max_population: most models trained together in one vmapped population (memory bound).
      seed: salt mixed into every model's keys.
      notes: free text (the recipe's provenance), stored with the spec.
      sequential_archs: architectures whose populations run one model after another in one
        compiled loop instead of vmapped (XLA on CPU runs a vmapped convolution several times
        slower per model); results agree with vmapped training up to float reassociation.
        ``None`` (default): the convolutional ones (``convnet``, ``resnet18``) on a CPU backend,
        none on accelerators. Classic :class:`ZooSpec` s compile with ``()`` (always vmapped,
        as they always were).

    Raises:
      ZooError: on construction, for a malformed graph; the message names the group
        (duplicate name, unknown operation / source group / task / architecture, an
        operation that does not support the architecture, a hyper-parameter the operation
        does not take, an empty grid, a cycle, mismatched output spaces).
    """

    name: str
    tasks: tuple[Task, ...]
    groups: tuple[Group, ...]
    max_population: int = 16
    seed: int = 0
    notes: str = ""
    sequential_archs: tuple[str, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if self.sequential_archs is not None:
            object.__setattr__(self, "sequential_archs", tuple(self.sequential_archs))
        object.__setattr__(self, "groups", tuple(self.groups))
        self.validate()

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:  # noqa: C901 (a flat list of independent checks, each with its own message)
        """Checks the whole graph (see the class docstring); called on construction and before a build."""
        tnames = [t.name for t in self.tasks]
        if len(set(tnames)) != len(tnames):
            raise ZooError(f"spec {self.name!r}: task names must be distinct, got {tnames}")
        names = [g.name for g in self.groups]
        for n in names:
            if names.count(n) > 1:
                raise ZooError(f"spec {self.name!r}: group {n!r} is defined {names.count(n)} times")
        if not self.groups:
            raise ZooError(f"spec {self.name!r} has no groups")
        if self.max_population < 1:
            raise ZooError(f"spec {self.name!r}: max_population must be >= 1")
        by = {g.name: g for g in self.groups}
        for g in self.groups:
            op = ops_lib.get_op(g.op, group=g.name)
            if op.needs_source and g.source is None:
                raise ZooError(f"group {g.name!r}: operation {g.op!r} needs a source group")
            if not op.needs_source and g.source is not None:
                raise ZooError(
                    f"group {g.name!r}: operation {g.op!r} makes models from scratch; it takes no source "
                    f"(got {g.source!r})"
                )
            if g.source is not None and g.source not in by:
                raise ZooError(f"group {g.name!r}: unknown source group {g.source!r}; groups: {names}")
            _check_partner(g, op, by)
            if g.task is not None and g.task not in tnames:
                raise ZooError(f"group {g.name!r}: unknown task {g.task!r}; tasks: {tnames}")
            if g.source is None and g.task is None:
                raise ZooError(f"group {g.name!r}: a root group needs a task")
            if g.arch is not None and not op.fresh_arch:
                raise ZooError(
                    f"group {g.name!r}: operation {g.op!r} keeps its source's architecture; "
                    f"do not set arch ({g.arch!r})"
                )
            if g.source is None and g.arch is None:
                raise ZooError(f"group {g.name!r}: a root group needs an architecture")
            if g.arch is not None and g.arch not in nets.ARCHITECTURES:
                raise ZooError(
                    f"group {g.name!r}: unknown architecture {g.arch!r}; known: {sorted(nets.ARCHITECTURES)}"
                )
            for k, vs in g.grid:
                if k not in op.defaults:
                    raise ZooError(
                        f"group {g.name!r}: operation {g.op!r} takes no hyper-parameter {k!r}; "
                        f"it takes {sorted(op.defaults)}"
                    )
                if k in op.enums:
                    for v in vs:
                        try:
                            op.enums[k](v)
                        except ValueError:
                            raise ZooError(
                                f"group {g.name!r}: {k}={v!r} is not one of {[e.value for e in op.enums[k]]}"
                            ) from None
            if not g.points():
                raise ZooError(f"group {g.name!r}: the grid has no points")
        self._check_acyclic(by)
        for g in self.groups:
            op = ops_lib.OPERATIONS[g.op]
            op.check_arch(self.arch_of(g.name)[0], g.name)
            if g.source is None:
                if g.top_k is not None and g.top_k > len(g.points()):
                    raise ZooError(f"group {g.name!r}: top_k={g.top_k} but the grid has only {len(g.points())} points")
                continue
            t, s = self.task_of(g.name), self.task_of(g.source)
            keep_head = g.op == "finetune" and self.hparams_of(g.name, "head") == {HeadMode.KEEP.value}
            if (op.output == "source" or keep_head) and t.num_classes != s.num_classes:
                raise ZooError(
                    f"group {g.name!r}: operation {g.op!r} keeps the source's {s.num_classes} outputs "
                    f"(task {s.name!r}) but its task {t.name!r} has {t.num_classes} classes"
                )
        # Model ids must be unique within each group (e.g. lrs 1e-3 and 1.2e-3 print alike).
        for g in self.groups:
            sfx = [point_suffix(g, self._merged(g, hp)) for hp in g.points()]
            dup = {s for s in sfx if sfx.count(s) > 1}
            if dup:
                raise ZooError(
                    f"group {g.name!r}: grid points give equal model ids {sorted(dup)}; "
                    "make the values distinguishable at the id's precision"
                )

    def _check_acyclic(self, by: Mapping[str, Group]) -> None:
        def walk(name: str, seen: list[str]) -> None:
            for nxt in (by[name].source, by[name].partner):
                if nxt is None:
                    continue
                if nxt in seen:
                    raise ZooError(f"group {seen[0]!r}: the source links form a cycle {' -> '.join(seen + [nxt])}")
                walk(nxt, seen + [nxt])

        for g in self.groups:
            walk(g.name, [g.name])

    def _merged(self, g: Group, hp: Mapping[str, Any]) -> dict:
        out = dict(ops_lib.OPERATIONS[g.op].defaults)
        out.update(hp)
        if "init_seed" in out and out["init_seed"] is None:
            out["init_seed"] = out["seed"]
        return out

    # ------------------------------------------------------------------ queries

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise ZooError(f"spec {self.name!r} has no group {name!r}; groups: {[g.name for g in self.groups]}")

    def task(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise ZooError(f"unknown task {name!r}; spec {self.name!r} has {[t.name for t in self.tasks]}")

    def task_of(self, group: str) -> Task:
        g = self.group(group)
        return self.task(g.task) if g.task is not None else self.task_of(g.source)

    def arch_of(self, group: str) -> tuple[str, tuple[tuple[str, Any], ...]]:
        """``(architecture, arch_kwargs)`` of the group's models."""
        g = self.group(group)
        if g.arch is not None:
            return g.arch, g.arch_kwargs
        return self.arch_of(g.source)

    def hparams_of(self, group: str, name: str) -> set:
        """The values hyper-parameter ``name`` takes in the group (grid or the operation's default)."""
        g = self.group(group)
        return {self._merged(g, hp)[name] for hp in g.points()}

    def network(self, group: str) -> nets.Network:
        arch, kw = self.arch_of(group)
        return nets.make(arch, self.task_of(group).num_classes, **dict(kw))

    def generation(self, group: str) -> int:
        g = self.group(group)
        if g.source is None:
            return 0
        return 1 + max(self.generation(s) for s in (g.source, g.partner) if s is not None)

    def order(self) -> list[Group]:
        """Groups with every source before its derived groups, otherwise in the given order."""
        done, out = set(), []
        while len(out) < len(self.groups):
            for g in self.groups:
                if g.name not in done and all(s is None or s in done for s in (g.source, g.partner)):
                    done.add(g.name)
                    out.append(g)
                    break
        return out

    @property
    def child_tasks(self) -> tuple[Task, ...]:
        """Tasks of the groups with role ``child`` (the classic zoos' children), in order."""
        out = []
        for g in self.groups:
            if g.role_name == Role.CHILD.value:
                t = self.task_of(g.name)
                if t not in out:
                    out.append(t)
        return tuple(out)

    # ------------------------------------------------------------------ JSON

    def to_json(self) -> dict:
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        d["kind"] = "graph"
        for g in d["groups"]:  # one-parent groups store no partner: spec.json files written before it stay equal
            if g.get("partner") is None:
                g.pop("partner", None)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GraphSpec:
        d = dict(d)
        d.pop("kind", None)
        if d.get("sequential_archs") is not None:
            d["sequential_archs"] = tuple(d["sequential_archs"])
        tasks = tuple(Task(**{**t, "classes": tuple(t["classes"])}) for t in d.pop("tasks"))
        groups = []
        for g in d.pop("groups"):
            g = dict(g)
            g["grid"] = tuple((k, tuple(_norm_value(v) for v in vs)) for k, vs in g["grid"])
            g["arch_kwargs"] = tuple((k, _norm_value(v)) for k, v in g["arch_kwargs"])
            g["tags"] = tuple(g.get("tags", ()))
            g.setdefault("partner", None)
            groups.append(Group(**g))
        return cls(tasks=tasks, groups=tuple(groups), **d)

    def to_graph(self) -> GraphSpec:
        return self

    def resolved_sequential_archs(self) -> tuple[str, ...]:
        """:attr:`sequential_archs`, with ``None`` resolved for the current JAX backend."""
        if self.sequential_archs is not None:
            return self.sequential_archs
        import jax

        return ("convnet", "resnet18") if jax.default_backend() == "cpu" else ()


@dataclasses.dataclass(frozen=True)
class ZooSpec:
    """The classic fixed-shape zoo, a template compiled to a :class:`GraphSpec` by :meth:`to_graph`.

    Attributes:
      name: a label (``"quick"``, ``"paper_fc"``).
      arch: a :class:`jaxlineage.nets.Arch` (or its name, ``"mlp"``, ``"convnet"``, ``"resnet18"``);
        stored by name. ``arch_kwargs`` go to :func:`nets.make`.
      parent_task, child_tasks: the parents' task and the children's task(s).
      parents: grid for parent candidates (group ``parent``); the best ``top_k`` by test accuracy are kept.
      children: fine-tuning grid (fresh head, Adam), applied to every kept parent and child task
        (group ``child``).
      child_floor: children (and grandchildren) below this test accuracy are stored but not kept.
      independents: from-scratch grid on each child task (group ``independent``).
      generations: 1 = parents and children; 2 adds grandchildren (group ``grandchild``: kept
        children fine-tuned again on their own task, keeping the head, with the ``grandchildren`` grid).
      max_population: most models trained together in one vmapped population (memory bound).
      seed: salt mixed into every model's keys.
    """

    name: str
    arch: nets.Arch | str = nets.Arch.MLP
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
        object.__setattr__(self, "arch", enum_value(self.arch))
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
        names = [self.parent_task.name] + [t.name for t in self.child_tasks]
        raise ZooError(f"unknown task {name!r}; this zoo has {names}")

    def to_graph(self) -> GraphSpec:
        """The groups ``parent``, ``child``, ``grandchild``, ``independent`` (suffixed ``.<task>``
        with several child tasks), with the classic ids, keys and training."""
        multi = len(self.child_tasks) > 1
        groups = [
            Group(
                "parent",
                "train",
                task=self.parent_task.name,
                arch=self.arch,
                arch_kwargs=self.arch_kwargs,
                grid=self.parents.axes(),
                top_k=self.top_k,
                prefix="p-",
                tags=("classic",),
            )
        ]
        for t in self.child_tasks:
            sfx = f".{t.name}" if multi else ""
            groups.append(
                Group(
                    f"child{sfx}",
                    "finetune",
                    source="parent",
                    task=t.name,
                    grid=self.children.axes(),
                    floor=self.child_floor,
                    prefix="c-",
                    role=Role.CHILD,
                    kind="finetune_transfer",
                    tags=("classic",),
                )
            )
            if self.generations == 2:
                groups.append(
                    Group(
                        f"grandchild{sfx}",
                        "finetune",
                        source=f"child{sfx}",
                        task=t.name,
                        grid=self.grandchildren.axes() + (("head", (HeadMode.KEEP.value,)),),
                        floor=self.child_floor,
                        prefix="g-",
                        role=Role.GRANDCHILD,
                        kind="finetune",
                        tags=("classic",),
                    )
                )
            groups.append(
                Group(
                    f"independent{sfx}",
                    "train",
                    task=t.name,
                    arch=self.arch,
                    arch_kwargs=self.arch_kwargs,
                    grid=self.independents.axes(),
                    prefix="ind-",
                    role=Role.INDEPENDENT,
                    tags=("classic",),
                )
            )
        return GraphSpec(
            self.name,
            (self.parent_task, *self.child_tasks),
            tuple(groups),
            max_population=self.max_population,
            seed=self.seed,
            sequential_archs=(),
        )

    def to_json(self) -> dict:
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        # Tasks of classic specs never use halves; leaving the field out keeps spec.json files
        # written before halves existed equal to today's (their workdirs resume).
        for t in [d["parent_task"], *d["child_tasks"]]:
            if t.get("half") is None:
                t.pop("half", None)
        return d

    @classmethod
    def from_json(cls, d: dict) -> ZooSpec:
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


def spec_from_json(d: Mapping[str, Any]) -> ZooSpec | GraphSpec:
    """A :class:`GraphSpec` (``"kind": "graph"``) or a classic :class:`ZooSpec` from its JSON."""
    return GraphSpec.from_json(d) if d.get("kind") == "graph" else ZooSpec.from_json(dict(d))
