"""Model DNA's model: the config, the paper's equations, the generator and classifier, the state.

Part of :mod:`jaxlineage.mgmp`, which re-exports the public names.
"""

from __future__ import annotations

import dataclasses
import enum
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxlineage.mgmp._common import MGMPError, PyTree


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
