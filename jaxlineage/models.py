"""Models: the one population type, for your own models and the library's alike.

A :class:`Models` holds models of one network (one parameter-tree structure): their
ids, their parameters stacked along a leading model axis, a pure ``logits_fn``, named
feature taps, and the tree's **signature** (every leaf's path, shape and dtype). Every
method and the evaluation layer read models through it; a :class:`ModelSet` is an
ordered tuple of them (a question may mix networks).

Build one from what you have:

* :meth:`Models.from_linen`: a linen module and a list of variable trees; taps are
  submodule paths (``"fc1"``, ``"encoder/fc2"``: the submodule's output);
* :meth:`Models.from_nnx`: NNX models (split with ``nnx.split``);
* :meth:`Models.from_apply`: any pure ``apply_fn(params, x)`` and its parameter trees;
  taps are functions ``f(params, x)``;
* :meth:`Models.from_zoo`: models of a :class:`jaxlineage.zoo.Zoo` (a :class:`ModelSet`).

Taps are checked when the models are built (pass ``example``, a few inputs): a missing
tap is an error that names it and lists the ones that exist. Weight-space
comparability is read from the signature (:func:`weight_comparable`), never from a
name: your ``arch="mlp"`` is only a label.

    >>> import flax.linen as nn, jax, jax.numpy as jnp
    >>> from jaxlineage.models import Models
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         h = nn.relu(nn.Dense(16, name="fc1")(x))
    ...         return nn.Dense(3, name="out")(h)
    >>> x = jnp.ones((4, 8))
    >>> trees = [Net().init(jax.random.key(s), x) for s in range(2)]
    >>> m = Models.from_linen(Net(), trees, taps=("fc1",), example=x)
    >>> len(m), m.taps, m.feature_fn("fc1")(m.one(0), x).shape
    (2, ('fc1', 'logits'), (4, 16))
    >>> Models.from_linen(Net(), trees, taps=("fc_1",), example=x)
    Traceback (most recent call last):
    ...
    jaxlineage.models.ModelsError: models 'model0'...: no tap 'fc_1'; taps that exist: ('fc1', 'logits', 'out')
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlineage._progress import Progress
from jaxlineage.errors import JaxlineageError, path_str

log = logging.getLogger(__name__)

#: Seconds between :meth:`Models.from_zoo`'s progress lines (loading 10^4 checkpoints takes minutes).
_PROGRESS_EVERY_S = 30.0

__all__ = [
    "HEAD",
    "ModelSet",
    "Models",
    "ModelsError",
    "check_finite",
    "signature_of",
    "weight_comparable",
]

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]

#: The name of the classifier submodule that weight-space comparisons may ignore (heads differ between tasks).
HEAD = "head"


class ModelsError(JaxlineageError):
    """Models cannot be built or read as asked; the message names the model, tap or parameter path."""


def signature_of(params: PyTree, *, stacked: bool) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """``((path, shape, dtype), ...)`` of one model's leaves (``stacked``: drop the leading model axis)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return tuple(
        (path_str(p), tuple(np.shape(v)[1:] if stacked else np.shape(v)), str(jnp.result_type(v))) for p, v in leaves
    )


def _is_head(path: str) -> bool:
    return HEAD in path.split("/")


def weight_comparable(a: Models, b: Models) -> bool:
    """Whether weight-space scorers can compare models of ``a`` with models of ``b``.

    True when the two signatures have the same leaf paths and the same shapes on every
    leaf outside a ``head`` submodule (a classifier head may differ between tasks and is
    left out of the comparison). Decided from the trees alone, never from ``arch`` names.
    """
    if a.signature == b.signature:
        return True
    if [p for p, _, _ in a.signature] != [p for p, _, _ in b.signature]:
        return False
    return all(sa == sb for (p, sa, _), (_, sb, _) in zip(a.signature, b.signature) if not _is_head(p))


# --------------------------------------------------------------------------- feature functions


def _flat(out: jax.Array) -> jax.Array:
    return out.reshape((out.shape[0], -1))


@dataclasses.dataclass(frozen=True)
class FlatOutputs:
    """``f(params, x) = apply_fn(params, x)`` flattened to ``[N, D]`` (the ``logits`` tap); equal by value."""

    apply_fn: ApplyFn

    def __call__(self, params: PyTree, x: jax.Array) -> jax.Array:
        return _flat(self.apply_fn(params, x))


@dataclasses.dataclass(frozen=True)
class LinenTap:
    """The output of one linen submodule (``path`` as ``"a/b"``), flattened to ``[N, D]``; equal by value.

    Runs ``module.apply`` with ``capture_intermediates`` restricted to that submodule's
    ``__call__``; equal taps of equal modules share compiled code.
    """

    module: Any
    path: tuple[str, ...]
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __call__(self, params: PyTree, x: jax.Array) -> jax.Array:
        path = self.path

        def wanted(mdl, method_name):
            return method_name == "__call__" and tuple(mdl.path) == path

        _, state = self.module.apply(
            params, x, capture_intermediates=wanted, mutable=["intermediates"], **dict(self.kwargs)
        )
        node = state["intermediates"]
        for k in path:
            node = node[k]
        return _flat(node["__call__"][0])


def _linen_submodules(module: Any, variables: PyTree, example: Any, kwargs: tuple) -> tuple[str, ...]:
    """Paths (``"a/b"``) of every submodule whose ``__call__`` runs on ``example``."""

    def run(v, x):
        _, state = module.apply(v, x, capture_intermediates=True, mutable=["intermediates"], **dict(kwargs))
        return state["intermediates"]

    tree = jax.eval_shape(run, variables, example)
    out = []

    def walk(node, prefix):
        for k, v in node.items():
            if k == "__call__":
                if prefix:
                    out.append("/".join(prefix))
            elif isinstance(v, Mapping):
                walk(v, prefix + (k,))

    walk(tree, ())
    return tuple(sorted(out))


# --------------------------------------------------------------------------- Models


def _stack(trees: Sequence[PyTree], ids: Sequence[str]) -> PyTree:
    first = jax.tree_util.tree_structure(trees[0])
    ref = signature_of(trees[0], stacked=False)
    for i, t in zip(ids[1:], trees[1:]):
        if jax.tree_util.tree_structure(t) != first or signature_of(t, stacked=False) != ref:
            sig = signature_of(t, stacked=False)
            diff = next(
                ((a, b) for a, b in zip(ref, sig) if a != b),
                (ref[len(sig)] if len(ref) > len(sig) else None, sig[len(ref)] if len(sig) > len(ref) else None),
            )
            raise ModelsError(
                f"model {i!r} does not share {ids[0]!r}'s parameter tree: first difference {diff[0]} vs {diff[1]}"
                " (path, shape, dtype); models of another network go into another Models"
            )
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


@dataclasses.dataclass(frozen=True, eq=False)
class Models:
    """Models of one network: ids, stacked parameters, a pure logits function and named taps.

    Attributes:
      ids: ``[P]`` model ids (unique).
      params: stacked parameters, leaves ``[P, ...]``.
      logits_fn: ``logits_fn(params_of_one_model, x [N, ...]) -> [N, C]``.
      feature_fns: ``{tap: f(params_of_one_model, x) -> [N, D]}``.
      arch: a label for messages and tables (comparability never reads it).
      info: optional per-model metadata ``{id: {...}}`` (task, kind, ...).
      perm_spec: the hidden-unit permutation spec of one model's tree
        (:mod:`jaxlineage.permutations`), or ``None`` (inferred where asked).
      default_tap: the tap methods use when none is named (default: the first tap).
    """

    ids: tuple[str, ...]
    params: PyTree
    logits_fn: ApplyFn
    feature_fns: Mapping[str, ApplyFn] = dataclasses.field(default_factory=dict)
    arch: str = "model"
    info: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    perm_spec: Any = None
    default_tap: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "ids", tuple(str(i) for i in self.ids))
        leaves = jax.tree.leaves(self.params)
        if not self.ids:
            raise ModelsError(f"models of {self.arch!r}: no model")
        if len(set(self.ids)) != len(self.ids):
            dup = next(i for i in self.ids if self.ids.count(i) > 1)
            raise ModelsError(f"model id {dup!r} appears twice")
        if not leaves or any(np.shape(leaf)[:1] != (len(self.ids),) for leaf in leaves):
            raise ModelsError(
                f"models {self.ids[0]!r}...: every parameter leaf must be stacked with a leading model axis of"
                f" {len(self.ids)} models"
            )
        if not callable(self.logits_fn):
            raise ModelsError(f"models {self.ids[0]!r}...: logits_fn must be callable")
        if self.default_tap is not None and self.default_tap not in self.feature_fns:
            raise ModelsError(
                f"models {self.ids[0]!r}...: default tap {self.default_tap!r} is not one of {tuple(self.feature_fns)}"
            )
        object.__setattr__(self, "signature", signature_of(self.params, stacked=True))

    signature: tuple = dataclasses.field(init=False, default=())

    # ----------------------------------------------------------------- constructors

    @classmethod
    def from_apply(
        cls,
        apply_fn: ApplyFn,
        params: Sequence[PyTree] | PyTree,
        *,
        ids: Sequence[str] | None = None,
        taps: Mapping[str, ApplyFn] | None = None,
        example: Any = None,
        stacked: bool = False,
        arch: str = "model",
        perm_spec: Any = None,
        default_tap: str | None = None,
        info: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Models:
        """Models from a pure ``apply_fn(params, x) -> logits`` and their parameter trees.

        Args:
          apply_fn: one model's logits function.
          params: a list of parameter trees (one per model), or one stacked tree with ``stacked=True``.
          ids: model ids (default ``model0``, ``model1``, ...).
          taps: ``{name: f(params, x)}`` feature functions (flattened to ``[N, D]``); ``logits`` is
            always added.
          example: a few inputs ``[n, ...]``; when given, ``apply_fn`` and every tap are run on it (shapes
            only) and a failure names the tap.
          stacked: ``params`` is already stacked along a leading model axis.
          arch: a label for messages.
          perm_spec: the permutation spec of one model's tree, if you have one.
          default_tap: the tap methods use by default (default: the first of ``taps``, else ``logits``).
          info: per-model metadata.

        Raises:
          ModelsError: no model, trees that differ (names the model and the first differing path),
            a tap that is not a function or fails on ``example`` (names it).
        """
        if not callable(apply_fn):
            raise ModelsError(f"apply_fn must be callable, got {type(apply_fn).__name__}")
        taps = dict(taps or {})
        for name, fn in taps.items():
            if not callable(fn):
                raise ModelsError(
                    f"tap {name!r} must be a function f(params, x); got {type(fn).__name__} (with from_apply, taps"
                    " are functions; from_linen takes submodule names)"
                )
        feature_fns = {name: FlatOutputs(fn) for name, fn in taps.items()}
        feature_fns.setdefault("logits", FlatOutputs(apply_fn))
        models = cls._build(apply_fn, params, ids, stacked, arch, feature_fns, perm_spec, info)
        models = dataclasses.replace(models, default_tap=default_tap or next(iter(feature_fns)))
        if example is not None:
            models.check(example)
        return models

    @classmethod
    def from_linen(
        cls,
        module: Any,
        variables: Sequence[PyTree] | PyTree,
        *,
        taps: Sequence[str] = (),
        example: Any = None,
        ids: Sequence[str] | None = None,
        stacked: bool = False,
        arch: str | None = None,
        perm_spec: Any = None,
        default_tap: str | None = None,
        info: Mapping[str, Mapping[str, Any]] | None = None,
        **apply_kwargs,
    ) -> Models:
        """Models from a linen module and a list of its variable trees (``module.init`` outputs).

        Args:
          module: the linen module; ``logits_fn(v, x) = module.apply(v, x, **apply_kwargs)``.
          variables: a list of variable dicts (``{"params": ...}``), or one stacked dict with ``stacked=True``.
          taps: submodule paths whose outputs are feature taps (``"fc1"``, ``"block/dense"``); ``logits``
            is always available. Checked on ``example`` (required when ``taps`` is given).
          example: a few inputs ``[n, ...]``.
          ids, stacked, arch, perm_spec, default_tap, info: as :meth:`from_apply` (``arch`` defaults to
            the module's class name).
          **apply_kwargs: hashable keywords passed to ``module.apply`` (e.g. ``train=False``).

        Raises:
          ModelsError: a tap that no submodule has (names it and lists those that exist), taps without
            ``example``, trees that differ.
        """
        from jaxlineage import nets  # noqa: PLC0415 (flax linen is imported only when used)

        try:
            apply_fn, _ = nets.from_linen(module, None, **apply_kwargs)  # checks the keywords are hashable
        except TypeError as e:
            raise ModelsError(str(e)) from None
        kwargs = apply_fn.kwargs
        feature_fns: dict[str, ApplyFn] = {t: LinenTap(module, tuple(t.split("/")), kwargs) for t in taps}
        feature_fns.setdefault("logits", FlatOutputs(apply_fn))
        models = cls._build(
            apply_fn, variables, ids, stacked, arch or type(module).__name__, feature_fns, perm_spec, info
        )
        models = dataclasses.replace(models, default_tap=default_tap or next(iter(feature_fns)))
        if taps and example is None:
            raise ModelsError(
                f"models {models.ids[0]!r}...: pass example= (a few inputs) so that taps {tuple(taps)} can be checked"
            )
        if example is not None:
            known = _linen_submodules(module, models.one(0), jnp.asarray(example), kwargs)
            for t in taps:
                if t not in known:
                    raise ModelsError(
                        f"models {models.ids[0]!r}...: no tap {t!r};"
                        f" taps that exist: {tuple(sorted((*known, 'logits')))}"
                    )
            models.check(example)
        return models

    @classmethod
    def from_nnx(
        cls,
        models: Sequence[Any],
        *,
        taps: Mapping[str, Callable[[Any, jax.Array], jax.Array]] | None = None,
        example: Any = None,
        ids: Sequence[str] | None = None,
        arch: str | None = None,
        perm_spec: Any = None,
        default_tap: str | None = None,
        info: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Models:
        """Models from Flax NNX modules of one architecture (``nnx.split`` / ``nnx.merge``).

        Args:
          models: NNX modules; ``logits_fn(state, x) = nnx.merge(graphdef, state)(x)``.
          taps: ``{name: f(module, x)}``, called on the merged module (e.g. ``lambda m, x: m.fc1(x)``).
          example, ids, arch, perm_spec, default_tap, info: as :meth:`from_apply`.
        """
        from flax import nnx  # noqa: PLC0415

        from jaxlineage.nets import NNXApply  # noqa: PLC0415

        models = list(models)
        if not models:
            raise ModelsError("from_nnx: no model")
        graphdef, _ = nnx.split(models[0])
        states = [nnx.split(m)[1] for m in models]
        wrapped = {name: _NNXTap(graphdef, fn) for name, fn in (taps or {}).items()}
        return cls.from_apply(
            NNXApply(graphdef),
            states,
            ids=ids,
            taps=wrapped,
            example=example,
            arch=arch or type(models[0]).__name__,
            perm_spec=perm_spec,
            default_tap=default_tap,
            info=info,
        )

    @staticmethod
    def from_zoo(zoo: Any, ids: Sequence[str]) -> ModelSet:
        """Zoo models as a :class:`ModelSet`: one :class:`Models` per network and parameter shapes.

        Parameters are the full variables (heads included); each population carries every tap of
        its network, its default tap and its permutation spec (read from the library's network
        object, not from a name). Populations keep the order of first appearance in ``ids``.
        """
        ids = list(ids)
        if not ids:
            raise ModelsError("from_zoo: empty list of model ids")
        groups: dict[tuple, dict] = {}
        bar = Progress("from_zoo", len(ids), verb="loaded", every=_PROGRESS_EVERY_S, logger=log)
        for i in ids:
            network = zoo.network_for(i)
            params = zoo.load(i)
            bar.update(1)
            key = (network.name, getattr(network, "module", None), signature_of(params, stacked=False))
            g = groups.setdefault(key, {"network": network, "ids": [], "params": []})
            g["ids"].append(i)
            g["params"].append(params)
        return ModelSet(tuple(_zoo_models(zoo, g) for g in groups.values()))

    @classmethod
    def _build(cls, apply_fn, params, ids, stacked, arch, feature_fns, perm_spec, info) -> Models:
        if stacked:
            dims = [np.shape(leaf)[:1] for leaf in jax.tree.leaves(params)]
            n = int(next((d[0] for d in dims if d), 0))
            if not n or any(d != (n,) for d in dims):
                raise ModelsError(
                    f"models of {arch!r}: every parameter leaf must be stacked with a leading model axis; got"
                    f" leading sizes {sorted({d[0] if d else None for d in dims}, key=str)}"
                )
            stacked_params = jax.tree.map(jnp.asarray, params)
        else:
            trees = list(params) if isinstance(params, (list, tuple)) else None
            if trees is None:
                raise ModelsError(
                    "params must be a list of parameter trees (one per model), or one stacked tree with stacked=True"
                )
            if not trees:
                raise ModelsError(f"models of {arch!r}: no model")
            n = len(trees)
        ids = tuple(ids) if ids is not None else tuple(f"model{i}" for i in range(n))
        if len(ids) != n:
            raise ModelsError(f"{len(ids)} ids for {n} models")
        if not stacked:
            stacked_params = _stack(trees, ids)
        return cls(
            ids=ids,
            params=stacked_params,
            logits_fn=apply_fn,
            feature_fns=feature_fns,
            arch=arch,
            info=dict(info or {}),
            perm_spec=perm_spec,
        )

    # ----------------------------------------------------------------- access

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def taps(self) -> tuple[str, ...]:
        return tuple(self.feature_fns)

    def one(self, i: int | str) -> PyTree:
        """Model ``i``'s (index or id) unstacked parameters."""
        if isinstance(i, str):
            try:
                i = self.ids.index(i)
            except ValueError:
                raise ModelsError(f"no model {i!r} among {self.ids[:5]}...") from None
        return jax.tree.map(lambda a: a[i], self.params)

    def feature_fn(self, tap: str | None = None) -> ApplyFn:
        """The feature function at ``tap`` (default :attr:`default_tap`)."""
        tap = tap or self.default_tap or next(iter(self.feature_fns), None)
        try:
            return self.feature_fns[tap]
        except KeyError:
            raise ModelsError(
                f"models {self.ids[0]!r}... ({self.arch}) have no feature tap {tap!r};"
                f" known: {sorted(self.feature_fns)}"
            ) from None

    def take(self, index: Sequence[int]) -> Models:
        """The models at ``index``, in that order."""
        index = np.asarray(index, int)
        return dataclasses.replace(
            self, ids=tuple(self.ids[i] for i in index), params=jax.tree.map(lambda a: a[index], self.params)
        )

    def check(self, example: Any) -> None:
        """Runs ``logits_fn`` and every tap on ``example`` (shapes only); a failure names the tap.

        Raises:
          ModelsError: a function that cannot be applied to these parameters and inputs.
        """
        x = jax.ShapeDtypeStruct(np.shape(example), jnp.result_type(example))
        one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a)[1:], a.dtype), self.params)
        for name, fn in (("logits", self.logits_fn), *self.feature_fns.items()):
            try:
                out = jax.eval_shape(fn, one, x)
            except Exception as e:  # noqa: BLE001 (any failure of user code becomes one clear error)
                raise ModelsError(
                    f"models {self.ids[0]!r}... ({self.arch}): {'logits_fn' if name == 'logits' else f'tap {name!r}'}"
                    f" fails on inputs of shape {np.shape(example)}: {type(e).__name__}: {e}"
                ) from e
            if not hasattr(out, "shape") or not out.shape or out.shape[0] != np.shape(example)[0]:
                raise ModelsError(
                    f"models {self.ids[0]!r}... ({self.arch}): {name!r} must return one row per input"
                    f" ([{np.shape(example)[0]}, ...]); got {getattr(out, 'shape', type(out).__name__)}"
                )


@dataclasses.dataclass(frozen=True)
class _NNXTap:
    graphdef: Any
    fn: Callable

    def __call__(self, params: PyTree, x: jax.Array) -> jax.Array:
        from flax import nnx  # noqa: PLC0415

        return self.fn(nnx.merge(self.graphdef, params), x)


def _zoo_models(zoo: Any, g: dict) -> Models:
    network = g["network"]
    info = {}
    for i in g["ids"]:
        r = zoo.get(i)
        info[i] = {
            "task": getattr(r, "task", None),
            "kind": _kind(r),
            "parent_id": getattr(r, "parent_id", None),
            "hparams": dict(getattr(r, "hparams", {}) or {}),
            "test_acc": getattr(r, "test_acc", None),
        }
    spec = None
    try:
        from jaxlineage.permutations import spec_from_variables  # noqa: PLC0415

        spec = spec_from_variables(network.name, g["params"][0])
    except JaxlineageError:
        spec = None
    taps = tuple(network.taps)
    return Models(
        ids=tuple(g["ids"]),
        params=_stack(g["params"], g["ids"]),
        logits_fn=network.logits_fn,
        feature_fns={tap: network.feature_fn(tap) for tap in taps},
        arch=network.name,
        info=info,
        perm_spec=spec,
        default_tap=getattr(network, "default_tap", None) or (taps[0] if taps else None),
    )


def _kind(record: Any) -> str:
    """A record's derivation kind (e.g. ``"finetune_all"``, ``"extract_l"``), pooled across architectures.

    Records without one (a duck-typed zoo of roles) fall back to the role."""
    return str(getattr(record, "kind", None) or getattr(record, "role", None))


# --------------------------------------------------------------------------- ModelSet


@dataclasses.dataclass(frozen=True, eq=False)
class ModelSet:
    """An ordered tuple of :class:`Models`; model ``i`` is the ``i``-th id over them in order."""

    populations: tuple[Models, ...]

    def __post_init__(self):
        pops = self.populations
        if isinstance(pops, Models):
            pops = (pops,)
        object.__setattr__(self, "populations", tuple(pops))
        ids = self.ids
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ModelsError(f"model {dup!r} appears twice in one model set")

    @classmethod
    def of(cls, models: Models | ModelSet | Sequence[Models]) -> ModelSet:
        """``models`` as a :class:`ModelSet` (a :class:`Models`, a list of them, or a set already)."""
        if isinstance(models, ModelSet):
            return models
        if isinstance(models, Models):
            return cls((models,))
        return cls(tuple(models))

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(i for p in self.populations for i in p.ids)

    def __len__(self) -> int:
        return sum(len(p) for p in self.populations)

    def offsets(self) -> list[int]:
        """Index of each population's first model."""
        return list(np.cumsum([0] + [len(p) for p in self.populations])[:-1])

    def locate(self, i: int) -> tuple[Models, int]:
        """``(population, index within it)`` of model ``i``."""
        for off, p in zip(self.offsets(), self.populations):
            if off <= i < off + len(p):
                return p, i - off
        raise IndexError(i)

    def take(self, index: Sequence[int]) -> ModelSet:
        """The models at ``index`` (in the order of ``index`` within each population; populations keep their order)."""
        index = np.asarray(index, int)
        pops = []
        for off, p in zip(self.offsets(), self.populations):
            local = [i - off for i in index if off <= i < off + len(p)]
            if local:
                pops.append(p.take(local))
        return ModelSet(tuple(pops))


# --------------------------------------------------------------------------- checks


@functools.partial(jax.jit)
def _finite_per_model(leaves):
    return tuple(jnp.all(jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1) for leaf in leaves)


def check_finite(who: str, models: ModelSet | Models, *, error: type[Exception] = ModelsError) -> None:
    """Raises ``error`` (:class:`ModelsError`) naming the first model (and parameter path) with a NaN or inf."""
    for p in ModelSet.of(models).populations:
        path_leaves = [
            (path, leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(p.params)[0]
            if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
        ]
        if not path_leaves:
            continue
        flags = jax.device_get(_finite_per_model(tuple(jnp.asarray(leaf) for _, leaf in path_leaves)))
        for (path, _), ok in zip(path_leaves, flags):
            ok = np.asarray(ok)
            if not ok.all():
                raise error(
                    f"{who}: model {p.ids[int(np.argmin(ok))]!r} ({p.arch}) has non-finite"
                    f" (NaN or inf) parameters at {path_str(path)}"
                )
