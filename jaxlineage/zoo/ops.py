"""Operations: how a zoo derives models, in one registry users can extend.

An operation turns a population of source models (or nothing, for training from
scratch) into a population of new models. Mathematically each is a pure function
of ``(source params, data, hyper-parameters, key)``; the zoo calls it on a whole
population at once (stacked parameters ``[P, ...]``, one hyper-parameter dict and
one key per model) so that training runs in one vmapped, jitted step.

Built in (``OPERATIONS``):

===============  ==============================================================================
``train``        from scratch: init key ``fold_in(key(init_seed), spec seed)``
``finetune``     all parameters or the head only; keep the head or a fresh one
``prune``        magnitude pruning to an exact sparsity, optional masked repair
``distill``      a fresh student trained on a transfer set labelled by the teacher
``permute``      a random permutation of hidden units (same function)
``perturb``      Gaussian weight noise or int8 rounding
``extract_adv``  a label-only extraction student, then PGD adversarial training (SAC's extract-Adv)
===============  ==============================================================================

Extend it with :func:`register_op`::

    def scale(inp: OpInput) -> PyTree:
        f = jnp.asarray([hp["factor"] for hp in inp.hparams])
        return jax.tree.map(lambda w: w * f.reshape((-1,) + (1,) * (w.ndim - 1)), inp.sources)

    zoo.register_op("scale", scale, needs_source=True, defaults={"factor": 1.0, "seed": 0})
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlineage import nets
from jaxlineage.permutations import PermAxis, permutation_spec, permute_params  # re-exported
from jaxlineage.zoo import training
from jaxlineage.zoo._base import (
    DistillMode,
    HeadMode,
    Optimizer,
    PerturbKind,
    PruneScope,
    PyTree,
    TrainParams,
    ZooError,
)

__all__ = [
    "LMPermuteParts",
    "LM_PERMUTATION_PARTS",
    "LoRANetwork",
    "OPERATIONS",
    "OpInput",
    "Operation",
    "PermAxis",
    "get_op",
    "lora_apply_unmerged",
    "lora_init",
    "lora_merge",
    "magnitude_prune",
    "merge_params",
    "permutation_spec",
    "permute_params",
    "register_op",
]


@dataclasses.dataclass(frozen=True)
class OpInput:
    """What an operation receives for one population of ``P`` new models.

    Attributes:
      network: the new models' network (architecture and number of classes).
      source_network: the sources' network, ``None`` for roots.
      sources: stacked source variables ``[P, ...]`` (source ``i`` for model ``i``), ``None`` for roots.
      x, y: the training split of the group's task, ``[N, ...]`` and ``[N]`` (for
        ``distill``, the transfer set; its labels are not used).
      hparams: one dict per model, the grid point merged with the operation's defaults.
      init_keys: ``[P]`` keys ``fold_in(key(init_seed), spec.seed)`` for fresh parameters
        (models with equal ``init_seed`` get equal initialisations).
      keys: ``[P]`` keys for any other randomness, distinct per (source, seed).
      data_seeds: per-model data-order seeds ``seed * 7919 + spec.seed``.
      sequential: train / evaluate the new models (``sequential``) and the sources
        (``source_sequential``) one after another instead of vmapped (conv nets on CPU;
        :attr:`GraphSpec.sequential_archs`).
      partners: stacked second parents ``[P, ...]`` for two-parent operations (``merge``), else ``None``.
    """

    network: nets.Network
    source_network: nets.Network | None
    sources: PyTree | None
    x: np.ndarray
    y: np.ndarray
    hparams: tuple[dict, ...]
    init_keys: jax.Array
    keys: jax.Array
    data_seeds: tuple[int, ...]
    sequential: bool = False
    source_sequential: bool = False
    partners: PyTree | None = None

    @property
    def size(self) -> int:
        return len(self.hparams)

    def shared(self, name: str) -> Any:
        """A hyper-parameter that the population shares (the builder groups models so that it does)."""
        return self.hparams[0][name]

    def per_model(self, name: str) -> list:
        return [hp[name] for hp in self.hparams]


@dataclasses.dataclass(frozen=True)
class Operation:
    """A registered operation.

    Attributes:
      name: the registry key a :class:`~jaxlineage.zoo.Group` names.
      fn: ``fn(OpInput) -> stacked variables [P, ...]`` of the new models.
      needs_source: whether groups using it derive from a source group (else roots).
      supports: architectures it can apply to (``None``: all).
      defaults: every hyper-parameter it reads with its default; a grid may set only these.
      static: hyper-parameters that must be equal within one population (they change
        the compiled step or the shapes); the builder splits a group by them.
      enums: ``{hyper-parameter: Enum class}`` whose values are validated.
      output: ``"target"`` (the new model has the group task's classes; the default),
        ``"source"`` (it keeps the source's output layer and must match the task's classes).
      fresh_arch: whether the group chooses the architecture (``train``, ``distill``); else
        models keep their source's.
      needs_partner: whether groups using it name a second source group (``merge``: two parents).
    """

    name: str
    fn: Callable[[OpInput], PyTree]
    needs_source: bool
    supports: frozenset[str] | None = None
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    static: tuple[str, ...] = ()
    enums: Mapping[str, type] = dataclasses.field(default_factory=dict)
    output: str = "target"
    fresh_arch: bool = False
    needs_partner: bool = False

    def check_arch(self, arch: str, group: str) -> None:
        if self.supports is not None and arch not in self.supports:
            raise ZooError(
                f"group {group!r}: operation {self.name!r} does not support architecture {arch!r} "
                f"(unsupported; it supports {sorted(self.supports)})"
            )


OPERATIONS: dict[str, Operation] = {}


def register_op(
    name: str,
    fn: Callable[[OpInput], PyTree],
    *,
    needs_source: bool,
    supports: Iterable[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    static: Sequence[str] = (),
    enums: Mapping[str, type] | None = None,
    output: str = "target",
    fresh_arch: bool = False,
    overwrite: bool = False,
    needs_partner: bool = False,
) -> Operation:
    """Adds an operation to the registry (see :class:`Operation` for the arguments).

    ``defaults`` must contain ``seed`` (every model's data-order and key seed).

    Returns:
      The registered :class:`Operation`.

    Raises:
      ZooError: the name is taken (unless ``overwrite``), or ``defaults`` lacks ``seed``.
    """
    if name in OPERATIONS and not overwrite:
        raise ZooError(f"operation {name!r} is already registered; pass overwrite=True to replace it")
    defaults = dict(defaults or {})
    defaults.setdefault("seed", 0)
    if output not in ("target", "source"):
        raise ZooError(f"operation {name!r}: output must be 'target' or 'source', got {output!r}")
    op = Operation(
        name,
        fn,
        needs_source,
        None if supports is None else frozenset(supports),
        defaults,
        tuple(static),
        dict(enums or {}),
        output,
        fresh_arch,
        needs_partner,
    )
    OPERATIONS[name] = op
    return op


def get_op(name: str, *, group: str | None = None) -> Operation:
    """The registered operation ``name``; raises :class:`ZooError` naming the group and the known ones."""
    if name not in OPERATIONS:
        where = f"group {group!r}: " if group else ""
        raise ZooError(f"{where}unknown operation {name!r}; registered: {sorted(OPERATIONS)}")
    return OPERATIONS[name]


# --------------------------------------------------------------------------- training helpers

_TRAIN_DEFAULTS = dict(
    lr=1e-3,
    batch_size=128,
    epochs=1,
    seed=0,
    init_seed=None,
    optimizer=Optimizer.ADAM.value,
    momentum=0.9,
    weight_decay=0.0,
)
_TRAIN_STATIC = ("batch_size", "epochs", "optimizer", "momentum", "weight_decay")


def _train(
    inp: OpInput,
    init,
    *,
    labels=None,
    soft=None,
    temperature=1.0,
    alpha=0.0,
    mask=None,
    freeze_stats=False,
    epochs: int | None = None,
    lr_key: str = "lr",
):
    """Population training of ``init`` with the shared recipe in ``inp.hparams``."""
    return training.train_population(
        inp.network,
        init,
        inp.x,
        inp.y if labels is None else labels,
        lrs=inp.per_model(lr_key),
        seeds=list(inp.data_seeds),
        batch_size=int(inp.shared("batch_size")),
        epochs=int(inp.shared("epochs") if epochs is None else epochs),
        optimizer=training.OptimizerConfig(
            Optimizer(inp.shared("optimizer")), float(inp.shared("momentum")), float(inp.shared("weight_decay"))
        ),
        distillation=None if soft is None else training.Distillation(soft, temperature, alpha),
        update_mask=mask,
        freeze_stats=freeze_stats,
        sequential=inp.sequential,
    )


def _fresh(network: nets.Network, keys: jax.Array) -> PyTree:
    return nets.stack([network.init(k) for k in keys])


def _head_mask(params: PyTree) -> PyTree:
    """1 on the classifier head's parameters, 0 elsewhere, structured like ``params["params"]``."""
    return {
        k: jax.tree.map(lambda w, one=(k == nets.HEAD): jnp.full_like(w, 1.0 if one else 0.0), v)
        for k, v in params["params"].items()
    }


# --------------------------------------------------------------------------- train


def _op_train(inp: OpInput) -> PyTree:
    return _train(inp, _fresh(inp.network, inp.init_keys))


# --------------------------------------------------------------------------- finetune


def _op_finetune(inp: OpInput) -> PyTree:
    src = nets.unstack(inp.sources)
    if HeadMode(inp.shared("head")) is HeadMode.FRESH:
        # The fresh head's key depends only on init_seed (as the classic zoos' children), not on the source.
        fresh = [inp.network.init(k) for k in inp.init_keys]
        src = [nets.with_head(nets.backbone(s), f) for s, f in zip(src, fresh)]
    init = nets.stack(src)
    if TrainParams(inp.shared("params")) is TrainParams.HEAD:
        mask = jax.vmap(_head_mask)(init)
        return _train(inp, init, mask=mask, freeze_stats=True)
    return _train(inp, init)


# --------------------------------------------------------------------------- prune


def _prunable(path: tuple[str, ...], leaf, include_head: bool) -> bool:
    # Kernels (matrices and conv filters) only: biases, BatchNorm scales and the optional head stay dense.
    return path[0] == "params" and path[-1] == "kernel" and leaf.ndim >= 2 and (include_head or nets.HEAD not in path)


def magnitude_prune(
    params: PyTree, sparsity: jax.Array | float, *, scope: PruneScope = PruneScope.GLOBAL, include_head: bool = False
) -> tuple[PyTree, PyTree]:
    """Zeros the smallest-magnitude kernel weights of one model to an exact sparsity.

    Exactly ``round(sparsity * n)`` weights are zeroed among the ``n`` prunable ones
    (all kernels together for ``GLOBAL``; per kernel for ``LAYER``), ties broken by
    position, so the achieved sparsity is exact. Biases, normalisation parameters and
    (unless ``include_head``) the classifier head are not pruned.

    Args:
      params: one model's variables (``{"params": ...}``).
      sparsity: fraction in ``[0, 1]`` (a traced scalar is fine: vmap over models).
      scope: :class:`PruneScope`.
      include_head: prune the head's kernel too.

    Returns:
      ``(pruned params, mask)``: the mask is structured like ``params["params"]``, 1.0 where
      a weight is kept and 0.0 where it was pruned.
    """
    scope = PruneScope(scope)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params["params"])
    paths = [("params",) + tuple(str(getattr(k, "key", k)) for k in p) for p, _ in flat]
    leaves = [leaf for _, leaf in flat]
    prunable = [_prunable(p, w, include_head) for p, w in zip(paths, leaves)]

    def keep_mask(ws: list[jax.Array]) -> list[jax.Array]:
        mags = jnp.concatenate([jnp.abs(w).ravel() for w in ws])
        n = mags.shape[0]
        k = jnp.round(jnp.asarray(sparsity, jnp.float32) * n).astype(jnp.int32)
        rank = jnp.empty((n,), jnp.int32).at[jnp.argsort(mags, stable=True)].set(jnp.arange(n, dtype=jnp.int32))
        keep = (rank >= k).astype(jnp.float32)
        out, s = [], 0
        for w in ws:
            out.append(keep[s : s + w.size].reshape(w.shape))
            s += w.size
        return out

    masks = [jnp.ones_like(w) for w in leaves]
    idx = [i for i, p in enumerate(prunable) if p]
    if idx:
        if scope is PruneScope.GLOBAL:
            for i, m in zip(idx, keep_mask([leaves[i] for i in idx])):
                masks[i] = m
        else:
            for i in idx:
                masks[i] = keep_mask([leaves[i]])[0]
    mask = jax.tree.unflatten(treedef, masks)
    pruned = dict(params)
    pruned["params"] = jax.tree.map(lambda w, m: w * m, params["params"], mask)
    return pruned, mask


@functools.cache
def _prune_population_fn(scope: PruneScope, include_head: bool):
    # One compiled function per setting: op-by-op dispatch of the vmapped sort is slow on CPU.
    return jax.jit(jax.vmap(lambda p, s: magnitude_prune(p, s, scope=scope, include_head=include_head)))


def _op_prune(inp: OpInput) -> PyTree:
    fn = _prune_population_fn(PruneScope(inp.shared("scope")), bool(inp.shared("include_head")))
    pruned, mask = fn(inp.sources, jnp.asarray(inp.per_model("sparsity"), jnp.float32))
    if int(inp.shared("epochs")) == 0:
        return pruned
    # Repair: fine-tune with the mask fixed (pruned weights get a zero update, so stay exactly 0).
    return _train(inp, pruned, mask=mask)


# --------------------------------------------------------------------------- distill


def _op_distill(inp: OpInput) -> PyTree:
    mode = DistillMode(inp.shared("mode"))
    teacher = training.population_logits(
        inp.source_network, inp.sources, inp.x, sequential=inp.source_sequential
    )  # [P, N, C]
    labels = teacher.argmax(-1).astype(np.int32)
    student = _fresh(inp.network, inp.keys)  # a student's init depends on its teacher: no shared inits across teachers
    if mode is DistillMode.LABEL:
        return _train(inp, student, labels=labels)
    t = float(inp.shared("temperature"))
    soft = np.asarray(jax.nn.softmax(jnp.asarray(teacher) / t, axis=-1))
    return _train(inp, student, labels=labels, soft=soft, temperature=t, alpha=float(inp.shared("alpha")))


# --------------------------------------------------------------------------- permute


@functools.cache
def _permute_population_fn(spec_items: tuple):
    spec = dict(spec_items)
    return jax.jit(jax.vmap(lambda p, k: permute_params(p, spec, k)))


def _op_permute(inp: OpInput) -> PyTree:
    # One copy of the symmetries: jaxlineage.permutations (ResNet-18 is described there too,
    # but the op keeps supports=("mlp", "convnet") until a zoo trains permuted ResNets).
    spec = permutation_spec(inp.network, nets.unstack(inp.sources)[0])
    return _permute_population_fn(tuple(spec.items()))(inp.sources, inp.keys)


# --------------------------------------------------------------------------- perturb


@functools.cache
def _perturb_population_fn(kind: PerturbKind):
    def one(variables, s, key):
        flat, treedef = jax.tree.flatten(variables["params"])
        if kind is PerturbKind.NOISE:
            # One draw for all leaves (a draw per leaf compiles one random-bits kernel each).
            eps = jax.random.normal(key, (sum(w.size for w in flat),), jnp.float32)
            out, at = [], 0
            for w in flat:
                out.append(w + s * jnp.std(w) * eps[at : at + w.size].reshape(w.shape).astype(w.dtype))
                at += w.size
            flat = out
        else:

            def q(w):
                step = jnp.max(jnp.abs(w)) / 127.0
                return jnp.where(step > 0, jnp.round(w / jnp.where(step > 0, step, 1.0)) * step, w)

            flat = [q(w) for w in flat]
        out = dict(variables)
        out["params"] = jax.tree.unflatten(treedef, flat)
        return out

    return jax.jit(jax.vmap(one))


def _op_perturb(inp: OpInput) -> PyTree:
    fn = _perturb_population_fn(PerturbKind(inp.shared("kind")))
    return fn(inp.sources, jnp.asarray(inp.per_model("scale"), jnp.float32), inp.keys)


# --------------------------------------------------------------------------- registry

register_op(
    "train",
    _op_train,
    needs_source=False,
    defaults=_TRAIN_DEFAULTS,
    static=_TRAIN_STATIC,
    enums={"optimizer": Optimizer},
    fresh_arch=True,
)
register_op(
    "finetune",
    _op_finetune,
    needs_source=True,
    defaults=dict(_TRAIN_DEFAULTS, params=TrainParams.ALL.value, head=HeadMode.FRESH.value),
    static=_TRAIN_STATIC + ("params", "head"),
    enums={"optimizer": Optimizer, "params": TrainParams, "head": HeadMode},
)
register_op(
    "prune",
    _op_prune,
    needs_source=True,
    defaults=dict(_TRAIN_DEFAULTS, sparsity=0.5, scope=PruneScope.GLOBAL.value, include_head=False, epochs=0),
    static=_TRAIN_STATIC + ("scope", "include_head"),
    enums={"optimizer": Optimizer, "scope": PruneScope},
    output="source",
)
register_op(
    "distill",
    _op_distill,
    needs_source=True,
    defaults=dict(_TRAIN_DEFAULTS, mode=DistillMode.SOFT.value, temperature=20.0, alpha=0.9),
    static=_TRAIN_STATIC + ("mode", "temperature", "alpha"),
    enums={"optimizer": Optimizer, "mode": DistillMode},
    output="source",
    fresh_arch=True,
)
register_op(
    "permute", _op_permute, needs_source=True, supports=("mlp", "convnet"), defaults=dict(seed=0), output="source"
)
register_op(
    "perturb",
    _op_perturb,
    needs_source=True,
    defaults=dict(seed=0, kind=PerturbKind.NOISE.value, scale=0.05),
    static=("kind",),
    enums={"kind": PerturbKind},
    output="source",
)


# --------------------------------------------------------------------------- language models: LoRA, permutations


def _lora_targets(params: PyTree) -> dict[str, tuple[tuple[str, ...], int]]:
    """``{"<module path>": (path in params["params"], input axes)}`` of the kernels LoRA adapts: every
    attention projection and MLP kernel of a transformer LM (not the embeddings, not the head)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params["params"])[0]:
        keys = tuple(str(getattr(k, "key", k)) for k in path)
        if keys[-1] == "kernel" and leaf.ndim >= 2 and keys[0] != nets.HEAD:
            out["/".join(keys[:-1])] = (keys, 2 if keys[-2] == "out" else 1)  # out: [H, Dh, D] reads 2 axes
    return out


def lora_init(params: PyTree, rank: int, key: jax.Array) -> dict[str, dict[str, jax.Array]]:
    """Fresh LoRA adapters for one model: ``{module: {"a": [in, r], "b": [r, out]}}``.

    ``a`` is Gaussian with variance ``1 / in``, ``b`` is zero, so the adapted model starts as the
    source (Hu et al., 2022, Sec. 4.1). Kernels with several input or output axes (attention's
    ``[D, H, Dh]`` projections) are adapted as the matrices they are when those axes are flattened.
    """
    out = {}
    for i, (name, (keys, n_in)) in enumerate(sorted(_lora_targets(params).items())):
        w = params["params"]
        for k in keys:
            w = w[k]
        d_in, d_out = int(np.prod(w.shape[:n_in])), int(np.prod(w.shape[n_in:]))
        a = jax.random.normal(jax.random.fold_in(key, i), (d_in, rank), w.dtype) / np.sqrt(d_in)
        out[name] = {"a": a, "b": jnp.zeros((rank, d_out), w.dtype)}
    return out


def lora_merge(params: PyTree, adapters: Mapping[str, Mapping[str, jax.Array]], scale: float) -> PyTree:
    r"""Merges LoRA adapters into the weights: :math:`W' = W + s \, A B` (reshaped to ``W``'s shape).

    Args:
      params: one model's variables ``{"params": ...}``.
      adapters: :func:`lora_init`'s structure (trained).
      scale: ``s = alpha / r``.

    Returns:
      Variables of the same structure as ``params``: the merged model, which needs no adapter at
      inference (:func:`lora_apply_unmerged` computes the same function with the adapters apart).
    """
    targets = _lora_targets(params)
    out = jax.tree.map(lambda v: v, params)
    for name, ab in adapters.items():
        keys, _ = targets[name]
        node = out["params"]
        for k in keys[:-1]:
            node = node[k]
        w = node[keys[-1]]
        node[keys[-1]] = w + scale * (ab["a"] @ ab["b"]).reshape(w.shape).astype(w.dtype)
    return out


def lora_apply_unmerged(
    network: nets.Network, params: PyTree, adapters: Mapping[str, Mapping[str, jax.Array]], scale: float, x
) -> jax.Array:
    """The adapted model's logits with the adapters beside the frozen weights, as LoRA trains:
    every adapted layer returns ``W h + s (h A) B`` (Flax method interception).

    Oracle for :func:`lora_merge` in tests; the zoo trains through the merged form.
    """
    targets = _lora_targets(params)

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        name = "/".join(context.module.path)
        if context.method_name != "__call__" or name not in adapters:
            return out
        h = args[0]
        n_in = targets[name][1]
        flat = h.reshape(h.shape[: h.ndim - n_in] + (-1,))
        low = (flat @ adapters[name]["a"]) @ adapters[name]["b"]
        return out + scale * low.reshape(out.shape)

    with nn.intercept_methods(interceptor):
        return network.logits_fn(params, x)


@dataclasses.dataclass(frozen=True)
class LoRANetwork(nets.Network):
    """A network trained through LoRA adapters: variables ``{"params": adapters, "lora_base": base}``.

    The population trainer updates only ``params`` (the adapters); ``lora_base`` (the frozen source
    weights, per model) passes through unchanged. Its logits are the merged model's.
    """

    scale: float = 1.0

    @property
    def label_ndim(self) -> int:
        return self.base_label_ndim

    base_label_ndim: int = 1

    def logits_fn(self, params: PyTree, x: jax.Array) -> jax.Array:
        return self.module.apply(lora_merge({"params": params["lora_base"]}, params["params"], self.scale), x)

    def train_logits_fn(self, params: PyTree, x: jax.Array) -> tuple[jax.Array, PyTree]:
        return self.logits_fn(params, x), {}


def _op_lora(inp: OpInput) -> PyTree:
    rank, alpha = int(inp.shared("rank")), float(inp.shared("alpha"))
    scale = alpha / rank
    src = nets.unstack(inp.sources)
    adapters = [lora_init(s, rank, k) for s, k in zip(src, inp.keys)]
    net = LoRANetwork(
        inp.network.name,
        inp.network.module,
        inp.network.input_shape,
        inp.network.taps,
        scale=scale,
        base_label_ndim=inp.network.label_ndim,
    )
    init = nets.stack([{"params": a, "lora_base": s["params"]} for a, s in zip(adapters, src)])
    trained = _train(dataclasses.replace(inp, network=net), init)
    merged = [lora_merge({"params": t["lora_base"]}, t["params"], scale) for t in nets.unstack(trained)]
    return nets.stack(merged)


class LMPermuteParts(enum.Enum):
    """Which symmetries ``permute_lm`` draws (:data:`LM_PERMUTATION_PARTS` maps them to spec parts)."""

    ALL = "all"  #: every symmetry of :func:`jaxlineage.permutations.transformer_lm_spec`
    HEADS = "heads"  #: whole heads, and the dimensions inside each head (Q/K and V/O)
    MLP = "mlp"  #: the MLP units of every block
    RESIDUAL = "residual"  #: the residual stream's coordinates


#: Which symmetries ``permute_lm`` draws: ``parts`` values and the spec parts they mean.
LM_PERMUTATION_PARTS = {
    "all": ("mlp", "heads", "qk", "vo", "residual"),
    "heads": ("heads", "qk", "vo"),
    "mlp": ("mlp",),
    "residual": ("residual",),
}


def _op_permute_lm(inp: OpInput) -> PyTree:
    from jaxlineage.permutations import transformer_lm_spec

    spec = transformer_lm_spec(nets.unstack(inp.sources)[0], parts=LM_PERMUTATION_PARTS[inp.shared("parts")])
    return _permute_population_fn(tuple(spec.items()))(inp.sources, inp.keys)


register_op(
    "lora",
    _op_lora,
    needs_source=True,
    supports=("transformer_lm",),
    defaults=dict(_TRAIN_DEFAULTS, rank=4, alpha=8.0),
    static=_TRAIN_STATIC + ("rank", "alpha"),
    enums={"optimizer": Optimizer},
    output="source",
)
register_op(
    "permute_lm",
    _op_permute_lm,
    needs_source=True,
    supports=("transformer_lm",),
    defaults=dict(seed=0, parts=LMPermuteParts.ALL.value),
    static=("parts",),
    enums={"parts": LMPermuteParts},
    output="source",
)


# --------------------------------------------------------------------------- merge (two parents)


def merge_params(a: PyTree, b: PyTree, weight: jax.Array | float) -> PyTree:
    r"""Weighted average of two models' parameters: :math:`\theta = w\,\theta_a + (1 - w)\,\theta_b`.

    The model-soup / task-arithmetic merge of two fine-tunes of one base (Wortsman et al., 2022);
    it needs the two trees to share their units' order, which fine-tunes of one base do.
    """
    return jax.tree.map(lambda x, y: weight * x + (1.0 - weight) * y, a, b)


def _op_merge(inp: OpInput) -> PyTree:
    w = jnp.asarray(inp.per_model("weight"), jnp.float32)
    return jax.vmap(merge_params)(inp.sources, inp.partners, w)


register_op(
    "merge",
    _op_merge,
    needs_source=True,
    needs_partner=True,
    defaults=dict(seed=0, weight=0.5),
    output="source",
)


# --------------------------------------------------------------------------- extract_adv (appended: issue 25)


@functools.partial(
    jax.jit, static_argnames=("network", "batch_size", "steps", "eps", "step_size", "pgd_steps", "sequential")
)
def _adv_epoch(network, params, lrs, keys, x, labels, *, batch_size, steps, eps, step_size, pgd_steps, sequential):
    """One epoch of SAC's adversarial training for a population: plain SGD on CE(x) + CE(PGD(x)).

    ``labels`` are ``[P, N]`` (each student's teacher's argmax); PGD maximises the
    student's CE on them in the L-infinity ball of ``eps`` (no random start, SAC's
    ``model_extract_adv.py``), clipped to [0, 1].
    """
    from jaxlineage import fingerprints  # local: fingerprints imports nothing of the zoo, the zoo only this

    n = x.shape[0]

    def one(args):
        variables, lr, key, y = args
        order = jax.random.permutation(key, n)[: steps * batch_size].reshape(steps, batch_size)

        def step(variables, idx):
            xb, yb = x[idx], y[idx]
            ce = lambda v, z: training._cross_entropy(network.logits_fn(v, z), yb)  # noqa: E731

            def adv_loss(z):
                return optax.softmax_cross_entropy_with_integer_labels(network.logits_fn(variables, z), yb)

            x_adv = jax.lax.stop_gradient(
                fingerprints.pgd(adv_loss, xb, eps=eps, step_size=step_size, steps=pgd_steps, bounds=(0.0, 1.0))
            )
            loss, g = jax.value_and_grad(lambda v: ce(v, xb) + ce(v, x_adv))(variables)
            variables = jax.tree.map(lambda p, d: p - lr * d, variables, g)
            return variables, loss

        variables, losses = jax.lax.scan(step, variables, order)
        return variables, losses.mean()

    args = (params, lrs, keys, labels)
    return jax.lax.map(one, args) if sequential else jax.vmap(lambda *a: one(a))(*args)


def _op_extract_adv(inp: OpInput) -> PyTree:
    """SAC's extract-Adv: a label-only extraction student, then ``adv_epochs`` of PGD adversarial training."""
    teacher = training.population_logits(inp.source_network, inp.sources, inp.x, sequential=inp.source_sequential)
    labels = teacher.argmax(-1).astype(np.int32)
    student = _train(inp, _fresh(inp.network, inp.keys), labels=labels)
    if inp.network.has_batch_stats:
        raise ZooError("extract_adv: networks with BatchNorm statistics are not supported (mlp, convnet are)")
    batch_size = int(inp.shared("batch_size"))
    steps = len(inp.x) // batch_size
    base = jax.vmap(jax.random.key)(jnp.asarray([s + 104729 for s in inp.data_seeds], jnp.uint32))
    lrs = jnp.asarray(inp.per_model("adv_lr"), jnp.float32)
    xd, yd = jnp.asarray(inp.x), jnp.asarray(labels)
    for epoch in range(int(inp.shared("adv_epochs"))):
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(base, epoch)
        student, _ = _adv_epoch(
            inp.network,
            student,
            lrs,
            keys,
            xd,
            yd,
            batch_size=batch_size,
            steps=steps,
            eps=float(inp.shared("eps")),
            step_size=float(inp.shared("step_size")),
            pgd_steps=int(inp.shared("pgd_steps")),
            sequential=inp.sequential,
        )
    return student


register_op(
    "extract_adv",
    _op_extract_adv,
    needs_source=True,
    supports=("mlp", "convnet"),
    # SAC (guanjiyang/SAC, model_extract_adv.py): 2 epochs, plain SGD lr 1e-3, PGD eps 4/256, step 1/256,
    # 30 iterations, on [0, 1] images; the label-only student before it uses the group's recipe.
    defaults=dict(_TRAIN_DEFAULTS, adv_epochs=2, adv_lr=1e-3, eps=4 / 256, step_size=1 / 256, pgd_steps=30),
    static=_TRAIN_STATIC + ("adv_epochs", "eps", "step_size", "pgd_steps"),
    enums={"optimizer": Optimizer},
    output="source",
    fresh_arch=True,
)
