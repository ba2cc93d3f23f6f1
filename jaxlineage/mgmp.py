"""MGMP / Model DNA: DNA generation, the DNA similarity loss and a provenance classifier.

Given a *source* model ``M_s`` and a *target* ``M_t``, decide whether ``M_s`` is the
provenance of ``M_t`` (``M_t`` was derived from ``M_s``, e.g. by fine-tuning). The
method learns, from a **model pool** of targets known to be homologous (derived
from the source) or non-homologous (independents, models derived from other
sources), two networks:

* a **DNA generator** ``g`` that turns each input ``x_i`` of the source's training
  data into a vector ``z_i = g(x_i)`` ``[D]``, assembled with a model's output
  ``y_i = M(x_i)`` ``[C]`` into the model's **DNA fragment** ``o_i = z_i + y_i``
  (``ADD``, needs ``D == C``) or ``o_i = [z_i ; y_i]`` (``CONCAT``, ``[D + C]``);
* a **provenance classifier** ``f_p`` (dense layers, sigmoid) on the concatenated
  source and target fragments ``[o^s_i ; o^t_i]``.

Both are trained jointly, one (homologous, non-homologous) pair of pool models
per mini-batch, on the DNA similarity loss (:func:`dna_similarity_loss`) plus an
L2 penalty on the generator plus the binary cross-entropy of the classifier.
A target is then classified per fragment (``f_p > 0.5``) and per model (the
fraction of homologous fragments ``>= delta``). The *no-generator baseline*
(``Generator.NONE``) uses the model outputs alone as fragments, ``o_i = y_i``.

Everything works on the library's one contract, pure ``apply_fn(params, x)`` over
pytrees (DESIGN.md, section 2). Pool outputs are computed once per population
(a ``vmap`` over stacked params) and stay on device; the training step is one
jitted function that only gathers from them.

Notation: ``N`` DNA inputs, ``B`` mini-batch size, ``C`` model outputs (logits),
``D`` DNA dim, ``H`` / ``K`` homologous / non-homologous pool models.

Usage::

    import jax
    import jaxlineage.mgmp as mgmp

    pool = mgmp.Pool(homologous=Models.from_apply(apply_fn, own_children),
                     non_homologous=Models.from_apply(apply_fn, others))
    state, history = mgmp.train((apply_fn, source_params), pool, x_source_train,
                                mgmp.Config(), key=jax.random.key(0))
    pred = mgmp.predict(state, (apply_fn, target_params))
    print(pred.fraction, pred.homologous)               # homologous-fragment rate, decision

Reading zoos and scenarios is the evaluation layer's job:
:class:`jaxlineage.eval.methods.ModelDNAScorer` fits one generator + classifier
per source on a training scenario and scores targets (the bench asks it the
*verify* scenario through :func:`jaxlineage.eval.protocols.run_all`).
:func:`jaxlineage.eval.dna.run` is the paper's own protocol (Sec. 5.2) on a zoo like
``zoo.DNA_QUICK``: evaluation targets on tasks and seeds the pool never saw.

References:
    Mu, Wang, Zhang, Zhang, Wang, Xiang, Yu. "Model Provenance via Model DNA".
    ECAI 2024 (FAIA 392, doi:10.3233/FAIA240595), arXiv:2308.02121. Eq. 3-9:
    DNA generation and assembly, the DNA similarity loss (``L_S``, ``L_I``, ``L``),
    the provenance classifier and its binary cross-entropy; Table 1 (accuracy
    ``(A_n + A_o) / 2N`` with and without the generator). No public
    implementation exists; this one follows the equations as given in
    jaxlineage's DESIGN.md, section 5.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxlineage._io import atomic_dir
from jaxlineage.errors import JaxlineageError
from jaxlineage.models import Models

__all__ = [
    "Assembly",
    "Config",
    "Generator",
    "MGMPError",
    "Optimizer",
    "PairInput",
    "Pool",
    "PoolOutputs",
    "Prediction",
    "State",
    "assemble",
    "cosine_similarity_matrix",
    "dna_similarity_loss",
    "fragment_cosine",
    "init",
    "model_outputs",
    "pair_features",
    "pool_outputs",
    "population_outputs",
    "predict",
    "predict_outputs",
    "restore",
    "save",
    "train",
    "train_step",
    "with_inputs",
]

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]
Network = tuple[ApplyFn, PyTree]


class MGMPError(JaxlineageError):
    """Bad input at the public boundary; the message names the model, shape or field."""


# --------------------------------------------------------------------------- config


class Generator(enum.Enum):
    """The DNA generator ``g``.

    Attributes:
        MLP: dense ReLU layers of ``generator_features`` widths, dropout after each,
            then a linear layer to ``dna_dim``. The default.
        CNN: 3x3 conv + ReLU + 2x2 average-pool stages of ``generator_features``
            channels (dropout after each), then a linear layer to ``dna_dim``.
        NONE: no generator, the paper's baseline: fragments are the model outputs
            alone, ``o_i = y_i`` (``assembly`` and ``dna_dim`` are ignored).
    """

    MLP = "mlp"
    CNN = "cnn"
    NONE = "none"


class Assembly(enum.Enum):
    """How a DNA vector ``z_i`` ``[D]`` and a model output ``y_i`` ``[C]`` form a fragment.

    Attributes:
        ADD: ``o_i = z_i + y_i``; needs ``D == C``.
        CONCAT: ``o_i = [z_i ; y_i]`` ``[D + C]``; the paper's ablation finds it
            better than ``ADD``. The default.
    """

    ADD = "add"
    CONCAT = "concat"


class PairInput(enum.Enum):
    """What the provenance classifier ``f_p`` sees of a fragment pair ``(o^s_i, o^t_i)``.

    Attributes:
        CONCAT: ``[o^s_i ; o^t_i]``, the paper. The default. The classifier can then
            also learn what a *particular* pool target's fragments look like,
            regardless of the source's.
        RELATION: ``[o^s_i * o^t_i ; |o^s_i - o^t_i|]`` (element-wise): only how the
            two fragments relate, the usual input of a siamese comparison head.
        BOTH: ``[o^s_i ; o^t_i ; o^s_i * o^t_i ; |o^s_i - o^t_i|]``.
    """

    CONCAT = "concat"
    RELATION = "relation"
    BOTH = "both"

    def width(self, fragment_dim: int) -> int:
        return (4 if self is PairInput.BOTH else 2) * fragment_dim


class Optimizer(enum.Enum):
    """The optimiser for generator and classifier (jointly). The paper uses Adam.

    Attributes:
        ADAM: ``optax.adam(learning_rate)``. The default.
        ADAMW: ``optax.adamw(learning_rate, weight_decay=weight_decay)``.
        SGD: ``optax.sgd(learning_rate, momentum=0.9)``.
    """

    ADAM = "adam"
    ADAMW = "adamw"
    SGD = "sgd"


@dataclasses.dataclass(frozen=True)
class Config:
    """Hyper-parameters of MGMP (hashable: it is a static argument of the jitted step).

    Attributes:
        generator: the DNA generator architecture (:class:`Generator`).
        generator_features: hidden widths (``MLP``) or channels (``CNN``).
        assembly: ``ADD`` or ``CONCAT`` (:class:`Assembly`).
        dna_dim: ``D``, the generator's output dim (must equal ``C`` for ``ADD``).
        tau: the temperature ``τ`` of the DNA similarity loss.
        lam: ``λ``, the weight of the L2 norm of the generator's parameters.
        dna_weight: weight ``w_dna`` of ``L_S + L_I`` against the classifier's BCE.
            The paper adds them with weight 1 (``dna_weight=1``,
            ``normalize_dna_loss=False``). As written, ``L_I`` is minimised by
            collapsing all fragments of a model onto one direction; at weight 1 that
            collapse dominates the generator and the classifier trains worse than
            without a generator, hence the default 0.1 on the per-term means.
        l_i_weight: weight of ``L_I`` against ``L_S`` (1 = the paper).
        normalize_dna_loss: divide ``L_S`` by ``B`` and ``L_I`` by ``B (B - 1)``
            (their numbers of terms), so that the loss scale does not grow with the
            batch. ``False`` uses the sums exactly as written in the paper.
        pair_input: what ``f_p`` sees of a fragment pair (:class:`PairInput`;
            paper: ``CONCAT``).
        classifier_depth: the number of dense layers of ``f_p`` (paper: 3).
        classifier_width: the width of its hidden layers.
        dropout: dropout rate in generator and classifier (training only).
        optimizer: :class:`Optimizer`; ``learning_rate`` and ``weight_decay`` (ADAMW).
        batch_size: ``B``, fragments per mini-batch (drawn without replacement).
        num_steps: training steps (one pool pair per step).
        threshold: the per-fragment decision threshold on ``f_p`` (paper: 0.5).
        delta: the model-level threshold ``δ`` on the fraction of homologous
            fragments (paper: e.g. 0.9).
    """

    generator: Generator = Generator.MLP
    generator_features: tuple[int, ...] = (256,)
    assembly: Assembly = Assembly.CONCAT
    dna_dim: int = 64
    tau: float = 0.5
    lam: float = 1e-3
    dna_weight: float = 0.1
    l_i_weight: float = 1.0
    normalize_dna_loss: bool = True
    pair_input: PairInput = PairInput.CONCAT
    classifier_depth: int = 3
    classifier_width: int = 128
    dropout: float = 0.1
    optimizer: Optimizer = Optimizer.ADAM
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 128
    num_steps: int = 1000
    threshold: float = 0.5
    delta: float = 0.9

    def __post_init__(self):
        for name, enum_cls in (
            ("generator", Generator),
            ("assembly", Assembly),
            ("pair_input", PairInput),
            ("optimizer", Optimizer),
        ):
            value = getattr(self, name)
            if not isinstance(value, enum_cls):
                try:
                    object.__setattr__(self, name, enum_cls(value))
                except ValueError:
                    raise MGMPError(f"Config.{name}={value!r}; known: {[m.value for m in enum_cls]}") from None
        object.__setattr__(self, "generator_features", tuple(int(f) for f in self.generator_features))
        positive = (
            "dna_dim",
            "tau",
            "classifier_depth",
            "classifier_width",
            "learning_rate",
            "batch_size",
            "num_steps",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise MGMPError(f"Config.{name} must be > 0, got {getattr(self, name)!r}")
        if any(f < 1 for f in self.generator_features):
            raise MGMPError(f"Config.generator_features must be positive, got {self.generator_features}")
        for name in ("lam", "dna_weight", "l_i_weight", "weight_decay"):
            if getattr(self, name) < 0:
                raise MGMPError(f"Config.{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise MGMPError(f"Config.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.threshold < 1.0 or not 0.0 < self.delta <= 1.0:
            raise MGMPError(
                f"Config.threshold must be in (0, 1) and delta in (0, 1], got {self.threshold}, {self.delta}"
            )
        if self.batch_size < 2:
            raise MGMPError(f"Config.batch_size must be >= 2 (L_I compares fragments pairwise), got {self.batch_size}")

    @property
    def uses_generator(self) -> bool:
        return self.generator is not Generator.NONE

    def fragment_dim(self, num_outputs: int) -> int:
        """The dim of a fragment ``o_i`` for models with ``num_outputs`` outputs."""
        if not self.uses_generator or self.assembly is Assembly.ADD:
            return num_outputs
        return self.dna_dim + num_outputs

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in d.items()}

    @classmethod
    def from_json(cls, d: dict) -> Config:
        d = dict(d)
        d["generator_features"] = tuple(d["generator_features"])
        return cls(**d)


# --------------------------------------------------------------------------- the equations


def cosine_similarity_matrix(a: jax.Array, b: jax.Array, *, eps: float = 1e-8) -> jax.Array:
    """All pairwise cosine similarities ``S[i, k] = <a_i, b_k> / (|a_i| |b_k|)``.

    Args:
        a: ``[B, F]``.
        b: ``[B', F]``.
        eps: added under the square root of each squared norm, so that a zero
            vector has similarity 0 instead of NaN.

    Returns:
        ``[B, B']``.
    """
    an = a * jax.lax.rsqrt(jnp.sum(a * a, axis=-1, keepdims=True) + eps)
    bn = b * jax.lax.rsqrt(jnp.sum(b * b, axis=-1, keepdims=True) + eps)
    return an @ bn.T


def dna_similarity_loss(o_s: jax.Array, o_t: jax.Array, o_n: jax.Array, *, tau: float) -> tuple[jax.Array, jax.Array]:
    """The DNA similarity losses ``(L_S, L_I)`` of one mini-batch, as written in the paper.

    .. math::
        L_S = -\\sum_i \\log \\frac{\\exp(\\mathrm{sim}(o^s_i, o^t_i) / \\tau)}
                                  {\\sum_k \\exp(\\mathrm{sim}(o^s_i, \\bar o^t_k) / \\tau)}

        L_I = -\\sum_i \\sum_{k \\ne i} \\log\\Big(
                 e^{\\mathrm{sim}(o^s_i, o^s_k) / \\tau}
               + e^{\\mathrm{sim}(o^t_i, o^t_k) / \\tau}
               + e^{\\mathrm{sim}(\\bar o^t_i, \\bar o^t_k) / \\tau}\\Big)

    with ``sim`` the cosine similarity. ``L_S`` pulls the source's fragment of each
    input towards the homologous target's fragment of the same input and away from
    the non-homologous target's fragments; ``L_I`` rewards similarity between the
    fragments of different inputs *within* each model. The positive pair is not
    part of ``L_S``'s denominator, exactly as in the paper (so ``L_S`` can be
    negative).

    Args:
        o_s: source fragments ``[B, F]`` (``o^s``).
        o_t: homologous-target fragments ``[B, F]`` (``o^t``), row ``i`` from input ``x_i``.
        o_n: non-homologous-target fragments ``[B, F]`` (``\\bar o^t``).
        tau: the temperature ``τ > 0``.

    Returns:
        ``(L_S, L_I)``, two scalars: sums over the ``B`` and ``B (B - 1)`` terms.

    References:
        Mu et al., "Model Provenance via Model DNA", ECAI 2024: the DNA similarity
        loss (``L_S``, ``L_I``).
    """
    s_st = jnp.sum(_unit(o_s) * _unit(o_t), axis=-1)  # [B]: sim(o^s_i, o^t_i)
    s_sn = cosine_similarity_matrix(o_s, o_n)  # [B, B]: sim(o^s_i, ō^t_k)
    l_s = -jnp.sum(s_st / tau - jax.nn.logsumexp(s_sn / tau, axis=1))
    within = jnp.stack([cosine_similarity_matrix(o, o) for o in (o_s, o_t, o_n)]) / tau  # [3, B, B]
    lse = jax.nn.logsumexp(within, axis=0)
    off_diagonal = 1.0 - jnp.eye(o_s.shape[0], dtype=lse.dtype)
    l_i = -jnp.sum(lse * off_diagonal)
    return l_s, l_i


def _unit(a, eps=1e-8):
    return a * jax.lax.rsqrt(jnp.sum(a * a, axis=-1, keepdims=True) + eps)


def assemble(z: jax.Array | None, y: jax.Array, assembly: Assembly) -> jax.Array:
    """A DNA fragment from a DNA vector and a model output (the paper's DNA assembly).

    .. math::
        o_i = z_i + y_i \\quad (\\text{ADD}), \\qquad o_i = [z_i ; y_i] \\quad (\\text{CONCAT})

    Args:
        z: DNA vectors ``[..., D]``, or ``None`` for the no-generator baseline
            (then ``o_i = y_i``).
        y: model outputs ``[..., C]``.
        assembly: :class:`Assembly`.

    Returns:
        ``[..., C]`` (``ADD`` or no generator) or ``[..., D + C]`` (``CONCAT``).

    Raises:
        MGMPError: ``ADD`` with ``D != C``.
    """
    if z is None:
        return y
    assembly = Assembly(assembly)
    if assembly is Assembly.ADD:
        if z.shape != y.shape:
            raise MGMPError(
                f"assembly 'add' needs DNA vectors and model outputs of one shape, got z {z.shape} "
                f"and y {y.shape} (use dna_dim = number of outputs, or assembly 'concat')"
            )
        return z + y
    return jnp.concatenate([z, y], axis=-1)


# --------------------------------------------------------------------------- networks


class _MLPGenerator(nn.Module):
    features: tuple[int, ...]
    dna_dim: int
    dropout: float

    @nn.compact
    def __call__(self, x, *, train: bool):
        h = x.reshape((x.shape[0], -1))
        for width in self.features:
            h = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(nn.Dense(width)(h)))
        return nn.Dense(self.dna_dim)(h)


class _CNNGenerator(nn.Module):
    features: tuple[int, ...]
    dna_dim: int
    dropout: float

    @nn.compact
    def __call__(self, x, *, train: bool):
        h = x
        for channels in self.features:
            h = nn.relu(nn.Conv(channels, (3, 3))(h))
            if h.shape[1] >= 2 and h.shape[2] >= 2:
                h = nn.avg_pool(h, (2, 2), strides=(2, 2))
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.Dense(self.dna_dim)(h.reshape((h.shape[0], -1)))


class _Classifier(nn.Module):
    depth: int
    width: int
    dropout: float

    @nn.compact
    def __call__(self, pair, *, train: bool):
        h = pair
        for _ in range(self.depth - 1):
            h = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(nn.Dense(self.width)(h)))
        return nn.Dense(1)(h)[..., 0]


def _generator_module(config: Config) -> nn.Module | None:
    if config.generator is Generator.MLP:
        return _MLPGenerator(config.generator_features, config.dna_dim, config.dropout)
    if config.generator is Generator.CNN:
        return _CNNGenerator(config.generator_features, config.dna_dim, config.dropout)
    return None


def _classifier_module(config: Config) -> nn.Module:
    return _Classifier(config.classifier_depth, config.classifier_width, config.dropout)


def _optimizer(config: Config) -> optax.GradientTransformation:
    if config.optimizer is Optimizer.ADAM:
        return optax.adam(config.learning_rate)
    if config.optimizer is Optimizer.ADAMW:
        return optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
    return optax.sgd(config.learning_rate, momentum=0.9)


def _generate(config: Config, gen_params, x, *, train: bool, key=None):
    """``z = g(x)`` ``[N, D]``, or ``None`` without a generator."""
    module = _generator_module(config)
    if module is None:
        return None
    rngs = {"dropout": key} if train else {}
    return module.apply({"params": gen_params}, x, train=train, rngs=rngs)


def pair_features(o_s: jax.Array, o_t: jax.Array, pair_input: PairInput = PairInput.CONCAT) -> jax.Array:
    """The classifier's input for fragment pairs ``[..., F]`` (:class:`PairInput`)."""
    parts = {
        PairInput.CONCAT: (o_s, o_t),
        PairInput.RELATION: (o_s * o_t, jnp.abs(o_s - o_t)),
        PairInput.BOTH: (o_s, o_t, o_s * o_t, jnp.abs(o_s - o_t)),
    }[PairInput(pair_input)]
    return jnp.concatenate(parts, axis=-1)


def _classify(config: Config, clf_params, o_s, o_t, *, train: bool, key=None):
    """Logits ``f_p(pair_features(o^s, o^t))`` ``[...]`` of fragment pairs ``[..., F]``."""
    rngs = {"dropout": key} if train else {}
    pair = pair_features(o_s, o_t, config.pair_input)
    return _classifier_module(config).apply({"params": clf_params}, pair, train=train, rngs=rngs)


# --------------------------------------------------------------------------- state


@struct.dataclass
class State:
    """Everything a trained (or training) MGMP needs; a pytree with ``config`` static.

    Attributes:
        config: the :class:`Config` (static).
        params: ``{"generator": ..., "classifier": ...}`` (``generator`` is ``{}``
            for ``Generator.NONE``).
        opt_state: the optimiser state.
        step: int32 scalar, steps taken.
        x: the DNA inputs ``[N, *S]`` (the source's training data).
        source_outputs: the source model's outputs on ``x``, ``[N, C]``.
    """

    config: Config = struct.field(pytree_node=False)
    params: PyTree
    opt_state: PyTree
    step: jax.Array
    x: jax.Array
    source_outputs: jax.Array


@functools.partial(jax.jit, static_argnames=("config",))
def init(config: Config, x: jax.Array, source_outputs: jax.Array, *, key: jax.Array) -> State:
    """A fresh :class:`State` for DNA inputs ``x`` ``[N, *S]`` and source outputs ``[N, C]``."""
    k_gen, k_clf = jax.random.split(key)
    module = _generator_module(config)
    gen_params = {} if module is None else module.init(k_gen, x[:1], train=False)["params"]
    frag = config.fragment_dim(source_outputs.shape[-1])
    pair = jnp.zeros((1, config.pair_input.width(frag)), jnp.float32)
    clf_params = _classifier_module(config).init(k_clf, pair, train=False)["params"]
    params = {"generator": gen_params, "classifier": clf_params}
    return State(
        config=config,
        params=params,
        opt_state=_optimizer(config).init(params),
        step=jnp.zeros((), jnp.int32),
        x=x,
        source_outputs=source_outputs,
    )


# --------------------------------------------------------------------------- pool


class Pool(NamedTuple):
    """The model pool: targets known to derive (or not) from the source.

    Attributes:
        homologous: populations of models derived from the source (``M_t``).
        non_homologous: populations of models not derived from it (``M̄_t``).
    """

    homologous: Models | Sequence[Models]
    non_homologous: Models | Sequence[Models]


class PoolOutputs(NamedTuple):
    """The pool models' outputs on the DNA inputs, precomputed once, on device.

    Attributes:
        homologous: ``[H, N, C]``.
        non_homologous: ``[K, N, C]``.
    """

    homologous: jax.Array
    non_homologous: jax.Array


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def _population_apply(apply_fn, params, x):
    return jax.vmap(apply_fn, in_axes=(0, None))(params, x)


def population_outputs(apply_fn: ApplyFn, params: PyTree, x: jax.Array, *, chunk_size: int = 1024) -> jax.Array:
    """Outputs ``[M, N, C]`` of a stacked population on ``x`` ``[N, *S]``: one jitted ``vmap``.

    The inputs are processed in chunks of ``chunk_size`` (the last one padded, so
    there is one compilation) to bound memory.
    """
    x = jnp.asarray(x)
    n = x.shape[0]
    if n == 0:
        raise MGMPError(f"population_outputs: empty inputs x (shape {x.shape})")
    chunk = min(chunk_size, n)
    outs = []
    for s in range(0, n, chunk):
        xb = x[s : s + chunk]
        pad = chunk - xb.shape[0]
        if pad:
            xb = jnp.concatenate([xb, jnp.zeros((pad, *xb.shape[1:]), xb.dtype)])
        outs.append(_population_apply(apply_fn, params, xb)[:, : chunk - pad])
    return jnp.concatenate(outs, axis=1)


def model_outputs(network: Network, x: jax.Array, *, chunk_size: int = 1024) -> jax.Array:
    """Outputs ``[N, C]`` of one ``(apply_fn, params)`` network on ``x``."""
    apply_fn, params = network
    stacked = jax.tree.map(lambda p: jnp.asarray(p)[None], params)
    return population_outputs(apply_fn, stacked, x, chunk_size=chunk_size)[0]


def _as_models(apply_fn, params, names=None) -> Models:
    try:
        return Models.from_apply(apply_fn, params, stacked=True, ids=names or None)
    except JaxlineageError as e:
        raise MGMPError(str(e)) from e


def _as_populations(side, name: str) -> list[Models]:
    """A pool side as :class:`~jaxlineage.models.Models`: one, a list, or ``(apply_fn, params[, names])``."""
    if isinstance(side, Models):
        return [side]
    if isinstance(side, tuple) and len(side) in (2, 3) and callable(side[0]):
        return [_as_models(*side)]
    return [p if isinstance(p, Models) else _as_models(*p) for p in side]


def _population_size(pop: Models, what: str) -> int:
    leaves = jax.tree.leaves(pop.params)
    if not leaves:
        raise MGMPError(f"{what}: the population's params have no leaves")
    sizes = {int(np.shape(leaf)[0]) if np.ndim(leaf) else -1 for leaf in leaves}
    if len(sizes) != 1 or -1 in sizes:
        raise MGMPError(
            f"{what}: params must be stacked with one leading model axis, got leading sizes {sorted(sizes)}"
        )
    m = sizes.pop()
    return m


def pool_outputs(pool: Pool, x: jax.Array, *, chunk_size: int = 1024) -> PoolOutputs:
    """Runs every pool model on ``x`` once (a jitted ``vmap`` per population).

    Raises:
        MGMPError: a side of the pool is empty, outputs are not ``[N, C]`` or are
            not finite, or the output dims differ within the pool (naming the model).
    """
    outputs, _ = _pool_outputs_named(pool, _as_inputs(x), chunk_size=chunk_size)
    return outputs


def _pool_outputs_named(pool: Pool, x, *, chunk_size: int = 1024):
    """:func:`pool_outputs` and the models' names ``(homologous, non_homologous)``."""
    sides, all_names = [], []
    for side, label in ((pool.homologous, "homologous"), (pool.non_homologous, "non_homologous")):
        pops = _as_populations(side, label)
        outs, names = [], []
        for j, pop in enumerate(pops):
            _population_size(pop, f"pool.{label}[{j}]")
            out = population_outputs(pop.logits_fn, pop.params, x, chunk_size=chunk_size)
            pop_names = tuple(pop.ids)
            for i, nm in enumerate(pop_names):
                _check_output(out[i], x, nm)
            outs.append(out)
            names.extend(pop_names)
        if not names:
            raise MGMPError(
                f"the pool has no {label.replace('_', '-')} models: MGMP needs at least one "
                "homologous and one non-homologous model to train on"
            )
        c = outs[0].shape[-1]
        for out_i, nm in zip((o_i for o in outs for o_i in o), names):
            if out_i.shape[-1] != c:
                raise MGMPError(f"pool model {nm!r} has outputs {tuple(out_i.shape)}, but {names[0]!r} has {c} outputs")
        sides.append(jnp.concatenate(outs) if len(outs) > 1 else outs[0])
        all_names.append(tuple(names))
    return PoolOutputs(*sides), tuple(all_names)


def _check_output(out, x, name):
    if out.ndim != 2 or out.shape[0] != x.shape[0]:
        raise MGMPError(
            f"model {name!r} gives outputs of shape {tuple(out.shape)} on inputs {tuple(x.shape)}; MGMP needs [N, C]"
        )
    if not bool(jnp.all(jnp.isfinite(out))):
        raise MGMPError(f"model {name!r} gives non-finite outputs")


def _check_fit(config: Config, c: int, name: str, source_c: int | None = None):
    """Raises unless a model with ``c`` outputs fits the assembly (and the source)."""
    if config.uses_generator and config.assembly is Assembly.ADD and c != config.dna_dim:
        raise MGMPError(
            f"{name} has {c} outputs, but assembly 'add' needs outputs of dna_dim={config.dna_dim} "
            "(o = z + y); set dna_dim to the number of outputs or use assembly 'concat'"
        )
    if source_c is not None and c != source_c:
        raise MGMPError(
            f"{name} has {c} outputs but the source has {source_c}: the source and target fragments "
            "must have one dim to be compared"
        )


# --------------------------------------------------------------------------- training


class _Arrays(NamedTuple):
    x: jax.Array  # [N, *S]
    source: jax.Array  # [N, C]
    homologous: jax.Array  # [H, N, C]
    non_homologous: jax.Array  # [K, N, C]


def _loss(params, config: Config, xb, ysb, ytb, ynb, key):
    """The joint objective on one mini-batch and one (homologous, non-homologous) pair."""
    k_gen, k_pos, k_neg = jax.random.split(key, 3)
    z = _generate(config, params["generator"], xb, train=True, key=k_gen)
    # One z_i per input, shared by the source's and both targets' fragments.
    o_s, o_t, o_n = (assemble(z, y, config.assembly) for y in (ysb, ytb, ynb))
    b = xb.shape[0]
    if config.uses_generator:
        l_s, l_i = dna_similarity_loss(o_s, o_t, o_n, tau=config.tau)
        if config.normalize_dna_loss:
            l_s, l_i = l_s / b, l_i / (b * (b - 1))
        reg = config.lam * optax.tree.norm(params["generator"])
    else:  # Nothing to shape: the fragments are fixed model outputs.
        l_s = l_i = reg = jnp.zeros((), jnp.float32)
    logit_pos = _classify(config, params["classifier"], o_s, o_t, train=True, key=k_pos)
    logit_neg = _classify(config, params["classifier"], o_s, o_n, train=True, key=k_neg)
    logits = jnp.concatenate([logit_pos, logit_neg])
    labels = jnp.concatenate([jnp.ones((b,), logits.dtype), jnp.zeros((b,), logits.dtype)])
    bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))
    total = config.dna_weight * (l_s + config.l_i_weight * l_i) + reg + bce
    acc = jnp.mean((logits > 0) == (labels > 0.5))
    return total, dict(loss=total, l_s=l_s, l_i=l_i, l2=reg, bce=bce, train_accuracy=acc)


def _step(params, opt_state, arrays: _Arrays, key, config: Config):
    k_batch, k_h, k_n, k_loss = jax.random.split(key, 4)
    n = arrays.x.shape[0]
    idx = jax.random.choice(k_batch, n, (config.batch_size,), replace=False)
    h = jax.random.randint(k_h, (), 0, arrays.homologous.shape[0])
    k = jax.random.randint(k_n, (), 0, arrays.non_homologous.shape[0])
    xb, ysb = arrays.x[idx], arrays.source[idx]
    ytb, ynb = arrays.homologous[h, idx], arrays.non_homologous[k, idx]
    (_, metrics), grads = jax.value_and_grad(_loss, has_aux=True)(params, config, xb, ysb, ytb, ynb, k_loss)
    updates, opt_state = _optimizer(config).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics


@jax.jit
def train_step(state: State, outputs: PoolOutputs, key: jax.Array) -> tuple[State, dict]:
    """One jitted training step: sample a mini-batch and a pool pair, update both networks.

    The mini-batch (``B`` input indices, drawn without replacement) and the pair
    (one homologous and one non-homologous pool model, uniformly) are sampled on
    device from ``fold_in(key, state.step)`` and gathered from ``state.x``,
    ``state.source_outputs`` and the precomputed ``outputs``; nothing goes through
    the host, so a loop of calls with one fixed ``key`` runs asynchronously.

    .. math::
        L = w_{dna} (L_S + w_I L_I) + \\lambda \\lVert w_g \\rVert_2
            + \\mathrm{BCE}(f_p([o^s ; o^t]), 1) + \\mathrm{BCE}(f_p([o^s ; \\bar o^t]), 0)

    Args:
        state: the :class:`State` (its ``config`` is static).
        outputs: :class:`PoolOutputs` on ``state.x``.
        key: PRNG key of the run; the step counter is folded in.

    Returns:
        ``(new_state, metrics)`` with scalar ``loss, l_s, l_i, l2, bce, train_accuracy``
        (``l_s`` and ``l_i`` as weighted in the loss: divided by their numbers of
        terms when ``config.normalize_dna_loss``).

    References:
        Mu et al., "Model Provenance via Model DNA", ECAI 2024: the joint loss
        ``L + BCE`` and the pool sampling.
    """
    arrays = _Arrays(state.x, state.source_outputs, outputs.homologous, outputs.non_homologous)
    step_key = jax.random.fold_in(key, state.step)
    params, opt_state, metrics = _step(state.params, state.opt_state, arrays, step_key, state.config)
    return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics


def _as_inputs(data) -> jax.Array:
    if isinstance(data, (tuple, list)):  # (x, y) as returned by Zoo.task_data
        data = data[0]
    x = jnp.asarray(data)
    if x.ndim < 2:
        raise MGMPError(f"data must be inputs [N, *S], got shape {x.shape}")
    if x.shape[0] == 0:
        raise MGMPError(f"empty data: no DNA inputs (shape {x.shape})")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return x


def train(
    source: Network,
    pool: Pool | PoolOutputs,
    data,
    config: Config | None = None,
    *,
    key: jax.Array,
) -> tuple[State, dict[str, np.ndarray]]:
    """Jointly trains the DNA generator and the provenance classifier for one source model.

    Each step draws ``B`` DNA inputs and one (homologous, non-homologous) pair from
    the pool, builds the fragments ``o^s, o^t, ō^t`` and minimises

    .. math::
        w_{dna} (L_S + w_I L_I) + \\lambda \\lVert w_g \\rVert_2 + \\mathrm{BCE}

    (:func:`dna_similarity_loss`, :func:`train_step`). The pool's outputs on the
    DNA inputs are computed once and stay on device; each step is one call of the
    jitted :func:`train_step`, which samples and gathers its batch on device, so
    the loop never waits for the host. Runs unchanged on CPU, GPU and TPU.

    Args:
        source: the source model ``(apply_fn, params)``, ``apply_fn(params, x) -> [N, C]``.
        pool: a :class:`Pool` of populations, or :class:`PoolOutputs` already
            computed on ``data``.
        data: the DNA inputs ``x`` ``[N, *S]`` from the source's training data, or
            an ``(x, y)`` pair (labels are not used).
        config: :class:`Config` (default ``Config()``).
        key: PRNG key; the result is a deterministic function of it.

    Returns:
        ``(state, history)``: the trained :class:`State` and per-step metrics
        (numpy ``[num_steps]`` each: ``loss, l_s, l_i, l2, bce, train_accuracy``).

    Raises:
        MGMPError: empty data; a pool without homologous or non-homologous models;
        outputs that do not fit the assembly (``ADD`` needs ``C == dna_dim``) or
        differ from the source's (naming the model and shape); a batch larger than
        the data.

    References:
        Mu et al., "Model Provenance via Model DNA", ECAI 2024: DNA generation, DNA
        similarity loss and provenance classifier, trained jointly.
    """
    config = Config() if config is None else config
    x = _as_inputs(data)
    if config.batch_size > x.shape[0]:
        raise MGMPError(f"Config.batch_size={config.batch_size} exceeds the {x.shape[0]} DNA inputs")
    ys = model_outputs(source, x)
    _check_output(ys, x, "source")
    _check_fit(config, ys.shape[-1], "the source model")
    if isinstance(pool, PoolOutputs):
        outputs, names = pool, ((), ())
    else:
        outputs, names = _pool_outputs_named(pool, x)
    for arr, side_names, label in (
        (outputs.homologous, names[0], "homologous"),
        (outputs.non_homologous, names[1], "non-homologous"),
    ):
        if arr.shape[0] == 0:
            raise MGMPError(f"the pool has no {label} models: MGMP needs at least one of each to train on")
        if arr.ndim != 3 or arr.shape[1] != x.shape[0]:
            raise MGMPError(f"{label} pool outputs have shape {tuple(arr.shape)}; expected [M, {x.shape[0]}, C]")
        name = side_names[0] if side_names else f"{label} pool model 0"
        _check_fit(config, int(arr.shape[-1]), f"pool model {name!r}", source_c=int(ys.shape[-1]))
    k_init, k_train = jax.random.split(key)
    state = init(config, x, ys, key=k_init)
    outputs = jax.device_put(outputs)
    history = []
    for _ in range(config.num_steps):  # asynchronous dispatch: no host round trip in the loop
        state, metrics = train_step(state, outputs, k_train)
        history.append(metrics)
    history = jax.device_get(history)
    return state, {k: np.asarray([h[k] for h in history]) for k in history[0]}


# --------------------------------------------------------------------------- prediction


class Prediction(NamedTuple):
    """Provenance decisions for one or more targets.

    Attributes:
        probabilities: per-fragment ``P(homologous)`` ``[N]`` (``[M, N]`` for ``M`` targets).
        fraction: fraction of fragments with probability above ``config.threshold`` (``[]`` / ``[M]``).
        homologous: model-level decision ``fraction >= config.delta`` (bool).
    """

    probabilities: jax.Array
    fraction: jax.Array
    homologous: jax.Array


@jax.jit
def _probabilities(state: State, target_outputs: jax.Array) -> jax.Array:
    config = state.config
    z = _generate(config, state.params["generator"], state.x, train=False)
    o_s = assemble(z, state.source_outputs, config.assembly)

    def one(y_t):
        o_t = assemble(z, y_t, config.assembly)
        return jax.nn.sigmoid(_classify(config, state.params["classifier"], o_s, o_t, train=False))

    return jax.vmap(one)(target_outputs)


def predict_outputs(state: State, outputs: jax.Array, *, delta: float | None = None) -> Prediction:
    """Classifies targets from their precomputed outputs on ``state.x``.

    .. math::
        p_i = f_p([o^s_i ; o^t_i]), \\qquad
        \\text{homologous} \\iff \\tfrac{1}{N} \\sum_i [p_i > 0.5] \\ge \\delta

    Args:
        state: a trained :class:`State`.
        outputs: one target's outputs ``[N, C]`` or ``M`` targets' ``[M, N, C]`` on ``state.x``.
        delta: the model-level threshold (default ``state.config.delta``).

    Returns:
        A :class:`Prediction` (leading ``[M]`` axis when ``outputs`` has one).

    References:
        Mu et al., "Model Provenance via Model DNA", ECAI 2024: fragment- and
        model-level provenance decisions.
    """
    outputs = jnp.asarray(outputs)
    single = outputs.ndim == 2
    batch = outputs[None] if single else outputs
    n, c = state.source_outputs.shape
    if batch.ndim != 3 or batch.shape[1:] != (n, c):
        raise MGMPError(
            f"target outputs of shape {tuple(outputs.shape)}; expected [{n}, {c}] or [M, {n}, {c}] "
            "(the target must give the source's number of outputs on the DNA inputs)"
        )
    probs = _probabilities(state, batch)
    delta = state.config.delta if delta is None else float(delta)
    frac = jnp.mean(probs > state.config.threshold, axis=-1)
    pred = Prediction(probs, frac, frac >= delta)
    return jax.tree.map(lambda a: a[0], pred) if single else pred


def predict(state: State, target: Network, *, delta: float | None = None) -> Prediction:
    """Classifies one target model ``(apply_fn, params)`` on the DNA inputs ``state.x``.

    Returns per-fragment probabilities ``[N]``, the fraction above ``threshold``
    and the model-level decision at ``delta`` (see :func:`predict_outputs`).

    Raises:
        MGMPError: the target's outputs are not ``[N, C]`` with the source's ``C``.
    """
    out = model_outputs(target, state.x)
    _check_output(out, state.x, "target")
    _check_fit(state.config, int(out.shape[-1]), "the target model", source_c=int(state.source_outputs.shape[-1]))
    return predict_outputs(state, out, delta=delta)


def with_inputs(state: State, source: Network, x) -> State:
    """The same trained state on other DNA inputs (e.g. held-out data): ``x`` and the source's outputs on it."""
    x = _as_inputs(x)
    if x.shape[1:] != state.x.shape[1:]:
        raise MGMPError(f"inputs of shape {tuple(x.shape)} but the state was trained on {tuple(state.x.shape)}")
    ys = model_outputs(source, x)
    if ys.shape[-1] != state.source_outputs.shape[-1]:
        raise MGMPError(
            f"the source gives {ys.shape[-1]} outputs, the state was trained with {state.source_outputs.shape[-1]}"
        )
    return state.replace(x=x, source_outputs=ys)


# --------------------------------------------------------------------------- save / restore

_STATE_DIR = "state"
_META_FILE = "mgmp.json"


def save(path: str | os.PathLike, state: State) -> None:
    """Writes ``state`` atomically with orbax: a checkpoint plus ``mgmp.json`` (config, shapes).

    The folder is written under a temporary sibling name and renamed into place.
    """
    import orbax.checkpoint as ocp

    tree = {
        "params": state.params,
        "opt_state": state.opt_state,
        "step": state.step,
        "x": state.x,
        "source_outputs": state.source_outputs,
    }
    meta = {
        "config": state.config.to_json(),
        "x_shape": list(state.x.shape),
        "x_dtype": str(state.x.dtype),
        "num_outputs": int(state.source_outputs.shape[-1]),
    }
    with atomic_dir(path) as tmp:
        tmp.mkdir(parents=True)
        ckpt = ocp.StandardCheckpointer()
        ckpt.save(tmp / _STATE_DIR, jax.device_get(tree))
        ckpt.wait_until_finished()
        (tmp / _META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))


def restore(path: str | os.PathLike) -> State:
    """Reads a :class:`State` written by :func:`save` (optimiser state included).

    Raises:
        MGMPError: a missing or unreadable checkpoint (naming the path).
    """
    import orbax.checkpoint as ocp

    path = pathlib.Path(path).absolute()
    if not (path / _META_FILE).exists():
        raise MGMPError(f"{path} holds no MGMP state (no {_META_FILE})")
    try:
        meta = json.loads((path / _META_FILE).read_text())
        config = Config.from_json(meta["config"])
        x = jax.ShapeDtypeStruct(tuple(meta["x_shape"]), jnp.dtype(meta["x_dtype"]))
        ys = jax.ShapeDtypeStruct((x.shape[0], meta["num_outputs"]), jnp.float32)
        template = jax.eval_shape(functools.partial(init, config, key=jax.random.key(0)), x, ys)
        tree = {
            "params": template.params,
            "opt_state": template.opt_state,
            "step": template.step,
            "x": template.x,
            "source_outputs": template.source_outputs,
        }
        restored = ocp.StandardCheckpointer().restore(path / _STATE_DIR, tree)
    except Exception as e:
        raise MGMPError(f"cannot restore an MGMP state from {path}: {type(e).__name__}: {e}") from e
    return State(config=config, **jax.tree.map(jnp.asarray, restored))


# --------------------------------------------------------------------------- protocol


def fragment_cosine(source_outputs: Any, target_outputs: Any) -> np.ndarray:
    r"""Per-input cosine between a source's and targets' outputs: how much lineage one fragment carries untrained.

    .. math:: c_{mi} = \frac{\langle y^s_i, y^{t_m}_i \rangle}{\lVert y^s_i \rVert\, \lVert y^{t_m}_i \rVert}

    (norm products floored at ``1e-12``), in float64. The no-generator fragments
    of MGMP are these outputs, so a single threshold on ``c`` is a reference
    point for what the provenance classifier can learn from one fragment.

    Args:
        source_outputs: ``[N, C]``.
        target_outputs: ``[N, C]`` (one target) or ``[M, N, C]``.

    Returns:
        ``[N]`` or ``[M, N]``.
    """
    s = np.asarray(source_outputs, np.float64)
    t = np.asarray(target_outputs, np.float64)
    if s.ndim != 2 or t.shape[-2:] != s.shape:
        raise MGMPError(
            f"fragment_cosine: source outputs must be [N, C] and targets [N, C] or [M, N, C] of the same"
            f" N, C; got {s.shape} and {t.shape}"
        )
    num = np.sum(s * t, axis=-1)
    return num / np.maximum(np.linalg.norm(s, axis=-1) * np.linalg.norm(t, axis=-1), 1e-12)
