"""Network families and the pure-function contract every method works on.

A *network* in jaxlineage is a pair ``(apply_fn, params)`` with
``apply_fn(params, x) -> array`` pure and ``params`` any pytree. This module
provides Flax linen families with named **feature taps** (the papers' MLP, a
small ConvNet, a CIFAR-style ResNet-18) wrapped in :class:`Network`, which hands
out pure ``logits_fn`` and ``feature_fn(tap)`` functions; population helpers
(:func:`stack`, :func:`unstack`, :func:`check_trees_match`, :func:`backbone`);
and adapters for NNX models and arbitrary apply functions.

``params`` of a linen network is its full variables dict
(``{"params": ..., "batch_stats": ...}``); the classifier is always the submodule
``head``, so :func:`backbone` can drop it when tasks (and heads) differ.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxlineage.errors import JaxlineageError, path_str

__all__ = [
    "ARCHITECTURES",
    "Arch",
    "BasicBlock",
    "ConvNet",
    "HEAD",
    "LinenApply",
    "MLP",
    "NNXApply",
    "Network",
    "ResNet18",
    "TreeMismatchError",
    "arch_name",
    "backbone",
    "check_trees_match",
    "convnet",
    "from_apply",
    "from_linen",
    "from_nnx",
    "make",
    "mlp",
    "population_size",
    "resnet18",
    "stack",
    "unstack",
    "with_head",
]

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]

HEAD = "head"


class TreeMismatchError(JaxlineageError):
    """Two parameter trees differ; the message names the first differing path and both shapes."""


# --------------------------------------------------------------------------- modules


class MLP(nn.Module):
    """Fully connected ReLU net, the Neural Lineage FC model (784-1024-256-128-classes).

    Taps: ``relu1``, ``relu2``, ``relu3`` (post-activation), ``logits``.
    """

    num_classes: int = 10
    features: Sequence[int] = (1024, 256, 128)

    @nn.compact
    def __call__(self, x, *, tap: str | None = None, train: bool = False):
        del train
        h = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.features, start=1):
            h = nn.relu(nn.Dense(width, name=f"dense{i}")(h))
            if tap == f"relu{i}":
                return h
        logits = nn.Dense(self.num_classes, name=HEAD)(h)
        return logits


class ConvNet(nn.Module):
    """A small ConvNet: two 3x3 conv + ReLU + 2x2 max-pool stages, one dense layer.

    Taps: ``conv1``, ``conv2`` (post-ReLU, pre-pool), ``fc1``, ``logits``.
    """

    num_classes: int = 10
    channels: Sequence[int] = (32, 64)
    hidden: int = 128

    @nn.compact
    def __call__(self, x, *, tap: str | None = None, train: bool = False):
        del train
        h = x
        for i, c in enumerate(self.channels, start=1):
            h = nn.relu(nn.Conv(c, (3, 3), name=f"conv{i}")(h))
            if tap == f"conv{i}":
                return h
            h = nn.max_pool(h, (2, 2), strides=(2, 2))
        h = nn.relu(nn.Dense(self.hidden, name="fc1")(h.reshape((h.shape[0], -1))))
        if tap == "fc1":
            return h
        return nn.Dense(self.num_classes, name=HEAD)(h)


class BasicBlock(nn.Module):
    channels: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
        h = nn.Conv(self.channels, (3, 3), (self.strides, self.strides), padding=1, use_bias=False)(x)
        h = nn.relu(norm()(h))
        h = nn.Conv(self.channels, (3, 3), padding=1, use_bias=False)(h)
        h = norm()(h)
        if x.shape[-1] != self.channels or self.strides != 1:
            x = nn.Conv(self.channels, (1, 1), (self.strides, self.strides), use_bias=False)(x)
            x = norm()(x)
        return nn.relu(h + x)


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 (3x3 stem, no max-pool) with a width multiplier.

    Taps: ``stem``, ``block1`` .. ``block4`` (output of each stage), ``pool``, ``logits``.
    """

    num_classes: int = 10
    width: float = 1.0

    @nn.compact
    def __call__(self, x, *, tap: str | None = None, train: bool = False):
        widths = [max(1, int(round(w * self.width))) for w in (64, 128, 256, 512)]
        h = nn.Conv(widths[0], (3, 3), padding=1, use_bias=False, name="stem_conv")(x)
        h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="stem_bn")(h))
        if tap == "stem":
            return h
        for stage, c in enumerate(widths, start=1):
            for j in range(2):
                strides = 2 if (stage > 1 and j == 0) else 1
                h = BasicBlock(c, strides, name=f"block{stage}_{j}")(h, train)
            if tap == f"block{stage}":
                return h
        h = jnp.mean(h, axis=(1, 2))
        if tap == "pool":
            return h
        return nn.Dense(self.num_classes, name=HEAD)(h)


# --------------------------------------------------------------------------- Network


@dataclasses.dataclass(frozen=True)
class Network:
    """A linen module with its input shape and taps, exposing pure functions.

    Attributes:
      name: family name (``"mlp"``, ``"convnet"``, ``"resnet18"``).
      module: the linen module (never crosses into the methods).
      input_shape: one example's shape, e.g. ``(28, 28, 1)``.
      taps: names accepted by :meth:`feature_fn`.
      default_tap: the tap methods read when none is named (the first ReLU layer / first block;
        default: the first tap).
    """

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]
    taps: tuple[str, ...]
    default_tap: str = ""

    def __post_init__(self):
        if not self.default_tap and self.taps:
            object.__setattr__(self, "default_tap", self.taps[0])

    @property
    def num_classes(self) -> int:
        return self.module.num_classes

    @property
    def has_batch_stats(self) -> bool:
        return self.name == "resnet18"

    @property
    def label_ndim(self) -> int:
        """Rank of one batch of labels: 1 for classifiers (``[N]``); language models override it."""
        return 1

    def with_num_classes(self, num_classes: int) -> Network:
        return dataclasses.replace(self, module=self.module.clone(num_classes=num_classes))

    def init(self, key: jax.Array) -> PyTree:
        """Fresh variables (``{"params": ...}`` plus ``batch_stats`` for BatchNorm nets)."""
        variables = self.module.init(key, jnp.zeros((1, *self.input_shape), jnp.float32))
        return jax.tree.map(jnp.asarray, dict(variables))

    def logits_fn(self, params: PyTree, x: jax.Array) -> jax.Array:
        """Eval-mode logits ``[N, num_classes]`` of ``x`` ``[N, *input_shape]``."""
        return self.module.apply(params, x)

    def train_logits_fn(self, params: PyTree, x: jax.Array) -> tuple[jax.Array, PyTree]:
        """Train-mode logits and the updated non-trainable collections (e.g. ``batch_stats``)."""
        if self.has_batch_stats:
            logits, updates = self.module.apply(params, x, train=True, mutable=["batch_stats"])
            return logits, dict(updates)
        return self.module.apply(params, x, train=True), {}

    def feature_fn(self, tap: str) -> ApplyFn:
        """The pure function ``(params, x [N, ...]) -> features [N, D]`` at ``tap`` (eval mode).

        The returned function reads only the layers up to ``tap``, so it also accepts
        :func:`backbone` trees (no head).

        Raises:
          ValueError: unknown tap (the message lists the valid ones).
        """
        if tap not in self.taps:
            raise ValueError(f"unknown tap {tap!r} for {self.name}; known taps: {self.taps}")
        return _feature_fn(self.module, tap)


@functools.cache
def _feature_fn(module: nn.Module, tap: str) -> ApplyFn:
    """One function object per (module, tap): jitted scorers key their caches on it, so
    asking a network for the same tap twice must not force a recompilation."""
    if tap == "logits":
        return _flatten_fn(module.apply)
    return _flatten_fn(functools.partial(module.apply, tap=tap))


def _flatten_fn(apply):
    def feature_fn(params, x):
        out = apply(params, x)
        return out.reshape((out.shape[0], -1))

    return feature_fn


def mlp(num_classes: int = 10, *, features: Sequence[int] = (1024, 256, 128), input_shape=(28, 28, 1)) -> Network:
    """The Neural Lineage FC net (784-1024-256-128-classes by default)."""
    features = tuple(features)
    taps = tuple(f"relu{i}" for i in range(1, len(features) + 1)) + ("logits",)
    return Network("mlp", MLP(num_classes, features), tuple(input_shape), taps)


def convnet(
    num_classes: int = 10, *, channels: Sequence[int] = (32, 64), hidden: int = 128, input_shape=(28, 28, 1)
) -> Network:
    channels = tuple(channels)
    taps = tuple(f"conv{i}" for i in range(1, len(channels) + 1)) + ("fc1", "logits")
    return Network("convnet", ConvNet(num_classes, channels, hidden), tuple(input_shape), taps)


def resnet18(num_classes: int = 10, *, width: float = 1.0, input_shape=(32, 32, 3)) -> Network:
    taps = ("stem", "block1", "block2", "block3", "block4", "pool", "logits")
    return Network("resnet18", ResNet18(num_classes, width), tuple(input_shape), taps, default_tap="block1")


class Arch(enum.Enum):
    """The built-in architectures; their values are the names specs, manifests and :data:`ARCHITECTURES` use."""

    MLP = "mlp"  #: :func:`mlp`, the Neural Lineage paper's fully connected network
    CONVNET = "convnet"  #: :func:`convnet`, a small ConvNet with BatchNorm
    RESNET18 = "resnet18"  #: :func:`resnet18`, CIFAR-style ResNet-18
    TRANSFORMER_LM = "transformer_lm"  #: :func:`jaxlineage.nets_lm.transformer_lm`, a byte-level decoder-only LM


#: Name -> constructor ``f(num_classes, **kwargs) -> Network``; register your own under a new name.
ARCHITECTURES: dict[str, Callable[..., Network]] = {
    Arch.MLP.value: mlp,
    Arch.CONVNET.value: convnet,
    Arch.RESNET18.value: resnet18,
}


def arch_name(arch: Arch | str) -> str:
    """The registry name of ``arch`` (an :class:`Arch` or a name); ``ValueError`` names the known ones."""
    name = arch.value if isinstance(arch, Arch) else arch
    if name not in ARCHITECTURES:
        hint = " (import jaxlineage.nets_lm, which registers it)" if name == Arch.TRANSFORMER_LM.value else ""
        raise ValueError(f"unknown architecture {arch!r}{hint}; known: {sorted(ARCHITECTURES)}")
    return name


def make(arch: Arch | str, num_classes: int, **kwargs) -> Network:
    """``make(Arch.MLP, 5)`` or ``make("mlp", 5)``; raises ``ValueError`` naming the known architectures."""
    return ARCHITECTURES[arch_name(arch)](num_classes, **kwargs)


# --------------------------------------------------------------------------- trees


def backbone(params: PyTree) -> PyTree:
    """``params`` without the classifier ``head`` in any collection.

    Heads differ between tasks, so lineage compares backbones.
    """
    if not isinstance(params, dict):
        raise TypeError(f"backbone expects a flax variables dict, got {type(params).__name__}")
    return {
        col: {k: v for k, v in tree.items() if k != HEAD} if isinstance(tree, dict) else tree
        for col, tree in params.items()
    }


def with_head(backbone_params: PyTree, head_params: PyTree) -> PyTree:
    """Joins a backbone with the ``head`` entries of another tree of the same family."""
    out = {}
    for col, tree in backbone_params.items():
        out[col] = dict(tree)
        if HEAD in head_params.get(col, {}):
            out[col][HEAD] = head_params[col][HEAD]
    return out


def check_trees_match(a: PyTree, b: PyTree, *, names: tuple[str, str] = ("parent", "child")) -> None:
    """Raises :class:`TreeMismatchError` unless ``a`` and ``b`` have the same paths and leaf shapes.

    The message names the first differing path and both shapes (or which side lacks it).
    """
    la = {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(a)[0]}
    lb = {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(b)[0]}
    for path in sorted(set(la) | set(lb)):
        if path not in lb:
            raise TreeMismatchError(
                f"{path} is in the {names[0]} tree (shape {np.shape(la[path])}) but not in the {names[1]} tree"
            )
        if path not in la:
            raise TreeMismatchError(
                f"{path} is in the {names[1]} tree (shape {np.shape(lb[path])}) but not in the {names[0]} tree"
            )
        sa, sb = np.shape(la[path]), np.shape(lb[path])
        if sa != sb:
            raise TreeMismatchError(f"{path} has shape {sa} in the {names[0]} tree but {sb} in the {names[1]} tree")


def stack(trees: Sequence[PyTree]) -> PyTree:
    """Stacks same-structure trees along a new leading model axis.

    Raises:
      ValueError: empty list; :class:`TreeMismatchError` naming the first model
        and path that differ from model 0.
    """
    trees = list(trees)
    if not trees:
        raise ValueError("stack: empty list of trees")
    for i, t in enumerate(trees[1:], start=1):
        check_trees_match(trees[0], t, names=("model 0", f"model {i}"))
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: PyTree) -> list[PyTree]:
    """Inverse of :func:`stack`: a list of trees, one per index of the leading axis."""
    leaves, treedef = jax.tree.flatten(tree)
    if not leaves:
        return []
    n = leaves[0].shape[0]
    return [jax.tree.unflatten(treedef, [leaf[i] for leaf in leaves]) for i in range(n)]


def population_size(tree: PyTree) -> int:
    leaves = jax.tree.leaves(tree)
    return int(leaves[0].shape[0]) if leaves else 0


# --------------------------------------------------------------------------- adapters


@dataclasses.dataclass(frozen=True)
class LinenApply:
    """``apply_fn(params, x) = module.apply(params, x, **kwargs)``, equal by value.

    Jitted scorers key their compilation caches on the apply function. A fresh
    ``lambda`` or ``functools.partial`` per call is a new key and recompiles
    every time; two ``LinenApply`` of equal modules and keyword arguments are
    equal and hash alike, so a freshly built adapter reuses the compiled code.
    """

    module: nn.Module
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __call__(self, params: PyTree, x: jax.Array) -> jax.Array:
        return self.module.apply(params, x, **dict(self.kwargs))


@dataclasses.dataclass(frozen=True)
class NNXApply:
    """``apply_fn(params, x) = nnx.merge(graphdef, params)(x)``, equal by value (see :class:`LinenApply`)."""

    graphdef: Any

    def __call__(self, params: PyTree, x: jax.Array) -> jax.Array:
        from flax import nnx

        return nnx.merge(self.graphdef, params)(x)


def from_linen(module: nn.Module, variables: PyTree, **apply_kwargs) -> tuple[ApplyFn, PyTree]:
    """``(apply_fn, params)`` for any linen module: ``apply_fn(params, x) = module.apply(params, x, **kw)``.

    ``apply_fn`` is a :class:`LinenApply`: calling ``from_linen`` again with an
    equal module and keywords gives an equal function, so jitted scorers do not
    recompile. The keyword values must be hashable (strings, numbers, tuples).

    Raises:
      TypeError: an unhashable keyword value (the message names it).
    """
    kwargs = tuple(sorted(apply_kwargs.items()))
    for k, v in kwargs:
        try:
            hash(v)
        except TypeError:
            raise TypeError(
                f"from_linen: keyword {k}={v!r} is not hashable; pass a tuple instead of a list or dict"
            ) from None
    return LinenApply(module, kwargs), variables


def from_nnx(model) -> tuple[ApplyFn, PyTree]:
    """``(apply_fn, params)`` for a Flax NNX model via ``nnx.split`` / ``nnx.merge``.

    ``params`` is the model's ``nnx.State``; ``apply_fn`` (an :class:`NNXApply`)
    rebuilds the model from it, so it is pure and can be differentiated, vmapped
    and jitted; adapters of models with equal graph definitions are equal, so
    they share compiled code.
    """
    from flax import nnx

    graphdef, state = nnx.split(model)
    return NNXApply(graphdef), state


def from_apply(apply_fn: ApplyFn, params: PyTree) -> tuple[ApplyFn, PyTree]:
    """Validates and returns a hand-written ``apply_fn(params, x)`` with its params."""
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable, got {type(apply_fn).__name__}")
    return apply_fn, params
