r"""Extraction-aware fingerprints: the maths, as pure functions over apply functions and arrays.

Nothing here knows about zoos or the evaluation layer: an *apply function* is
``apply_fn(params_of_one_model, x [N, ...]) -> logits [N, C]`` and a
*population* is a parameter pytree stacked on a leading model axis ``[P, ...]``
(the layout of :class:`jaxlineage.eval.core.Population`).

* **SAC** (Guan et al., NeurIPS 2022). :func:`correlation_matrix` is the
  sample-correlation matrix of one model's outputs ``O [N, C]`` over ``N``
  samples, SAC's cosine correlation

  .. math:: C_{ij} = \tfrac12\big(1 - \cos(O_i, O_j)\big),

  and :func:`correlation_distance` the mean absolute difference
  :math:`\frac{1}{N^2}\sum_{ij} |C^A_{ij} - C^B_{ij}|`. SAC-w uses samples the
  source misclassifies (:func:`misclassified`), SAC-m CutMix samples
  (:func:`cutmix`, SAC's corner patch of 0.2 x the side).
* **PGD** (:func:`pgd`): projected sign-gradient ascent in an
  :math:`L_\infty` ball, jit- and vmap-friendly (the loss is any pure function of
  ``x``); used by the conferrable search and by the zoo's ``extract_adv``.
* **Conferrable adversarial examples** (Lukas et al., ICLR 2021).
  :func:`conferrability` is

  .. math:: \sigma(x') = \mathbb{E}_{S}\big[\mathrm{softmax}(S(x'))_c\big]
      \Big(1 - \mathbb{E}_{R}\big[\mathrm{softmax}(R(x'))_c\big]\Big),
      \qquad c = \arg\max M(x'),

  with surrogates ``S`` (models extracted from the source ``M``) and references
  ``R`` (independent models on the same data). :func:`conferrable_examples`
  minimises Lukas et al.'s loss
  :math:`-\lambda_1 \log\sigma(x') - \lambda_2\,\mathrm{CE}(M(x'), y_0)
  + \lambda_3\,\mathbb{E}_S \mathrm{CE}(S(x'), c)` by PGD and keeps the most
  conferrable examples that the source misclassifies.
* **IPGuard** (Cao et al., AsiaCCS 2021): :func:`ipguard_examples` finds points
  near the source's decision boundary between two classes ``i, j`` by
  minimising :math:`\mathrm{ReLU}(g_i - g_j + k) + \mathrm{ReLU}(\max_{t \ne i,j} g_t - g_i)`.
* :func:`agreement`: the fraction of fingerprints on which each model of a
  population predicts the fingerprint's label (verification of both).
* :func:`train_population`, :func:`fresh_like`: the library's own training of
  surrogates and references (Adam, vmapped or one model after another).

References:
  Guan et al., "Are You Stealing My Model? Sample Correlation for Fingerprinting Deep Neural Networks", NeurIPS 2022.
  Lukas, Zhang & Kerschbaum, "Deep Neural Network Fingerprinting by Conferrable Adversarial Examples", ICLR 2021.
  Cao, Jia & Gong, "IPGuard: Protecting Intellectual Property of Deep Neural Networks via Fingerprinting the
  Classification Boundary", AsiaCCS 2021.
  Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018 (PGD).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "Fingerprints",
    "agreement",
    "conferrability",
    "conferrable_examples",
    "correlation_distance",
    "correlation_matrix",
    "cutmix",
    "fresh_like",
    "ipguard_examples",
    "misclassified",
    "pgd",
    "population_correlations",
    "population_logits",
    "train_population",
]

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]


class Fingerprints(NamedTuple):
    """Fingerprint inputs and the labels the source gives them.

    Attributes:
      x: ``[F, ...]`` inputs.
      labels: ``[F]`` the source's predicted class on each (the label a suspect must match).
      scores: ``[F]`` the generation's quality per fingerprint (conferrability; IPGuard: minus the loss).
      index: ``[F]`` each fingerprint's seed: its row in the seed inputs ``x0``.
    """

    x: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    index: np.ndarray


# --------------------------------------------------------------------------- population helpers


def _map(fn, params, sequential: bool):
    """``fn`` over the leading model axis: ``vmap`` or one model after another (``lax.map``, conv nets on CPU)."""
    return jax.lax.map(fn, params) if sequential else jax.vmap(fn)(params)


@functools.partial(jax.jit, static_argnames=("apply_fn", "sequential"))
def population_logits(apply_fn: ApplyFn, params: PyTree, x: jax.Array, sequential: bool = False) -> jax.Array:
    """``[P, N, C]``: logits of every model of a stacked population on ``x`` (flattened to ``[N, C]``)."""
    return _map(lambda p: apply_fn(p, x).reshape(x.shape[0], -1), params, sequential)


# --------------------------------------------------------------------------- SAC


def correlation_matrix(outputs: jax.Array) -> jax.Array:
    """SAC's sample-correlation matrix ``[N, N]`` of one model's outputs ``[N, C]``: ``(1 - cos(O_i, O_j)) / 2``.

    Outputs are the network's raw outputs (logits), as in SAC's code; an all-zero
    output row has cosine 0 with everything (no NaN).
    """
    o = outputs.reshape(outputs.shape[0], -1)
    o = o / jnp.maximum(jnp.linalg.norm(o, axis=-1, keepdims=True), 1e-12)
    return 0.5 * (1.0 - o @ o.T)


def correlation_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """SAC's distance of two correlation matrices: the mean absolute difference (broadcasts over leading axes)."""
    return jnp.mean(jnp.abs(a - b), axis=(-2, -1))


@functools.partial(jax.jit, static_argnames=("apply_fn", "sequential"))
def population_correlations(apply_fn: ApplyFn, params: PyTree, x: jax.Array, sequential: bool = False) -> jax.Array:
    """``[P, N, N]``: :func:`correlation_matrix` of every model of a population on samples ``x``."""
    return _map(lambda p: correlation_matrix(apply_fn(p, x)), params, sequential)


def misclassified(logits: Any, labels: Any) -> np.ndarray:
    """Indices (ascending) of the samples whose argmax differs from the label: SAC-w's sample pool."""
    logits, labels = np.asarray(logits), np.asarray(labels).reshape(-1)
    if logits.ndim != 2 or logits.shape[0] != labels.size:
        raise ValueError(f"logits must be [N, C] with N = len(labels) = {labels.size}; got {logits.shape}")
    return np.flatnonzero(logits.argmax(-1) != labels)


def cutmix(x: Any, *, n: int, seed: int = 0, ratio: float = 0.2) -> np.ndarray:
    """SAC-m's CutMix samples: ``n`` images, each with a square patch taken from another image.

    SAC's recipe (guanjiyang/SAC, ``cut_mix.py``): the first ``n`` images; one
    patch of ``ratio`` x (height, width) for the whole batch, centred at a random
    point outside the middle two thirds of *both* axes (near a corner), filled
    from a random permutation of the batch. Labels are not used.

    Args:
      x: images ``[N, H, W, C]`` (``N >= n``) or ``[N, H, W]``.
      n: samples to make.
      seed: NumPy seed of the patch position and the permutation.
      ratio: patch side over image side.

    Returns:
      ``[n, ...]`` float32 images.
    """
    x = np.asarray(x, np.float32)
    if x.ndim < 3:
        raise ValueError(f"cutmix needs images [N, H, W(, C)]; got shape {x.shape}")
    if not 1 <= n <= len(x):
        raise ValueError(f"cutmix: n = {n} samples from {len(x)} images")
    rng = np.random.default_rng(seed)
    out = x[:n].copy()
    h, w = x.shape[1], x.shape[2]
    cut_h, cut_w = max(1, int(h * ratio)), max(1, int(w * ratio))
    while True:
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        if not (h / 6 < cy < 5 * h / 6 or w / 6 < cx < 5 * w / 6):
            break
    y1, y2 = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, h)
    x1, x2 = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, w)
    perm = rng.permutation(n)
    out[:, y1:y2, x1:x2] = x[:n][perm][:, y1:y2, x1:x2]
    return out


# --------------------------------------------------------------------------- PGD


def pgd(
    loss_fn: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    *,
    eps: float,
    step_size: float,
    steps: int,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    start: jax.Array | None = None,
) -> jax.Array:
    r"""Projected gradient *ascent* of ``sum(loss_fn(x))`` in the :math:`L_\infty` ball of radius ``eps`` around ``x0``.

    .. math:: x_{t+1} = \Pi_{B_\infty(x_0, \epsilon) \cap [lo, hi]}\big(x_t + \alpha\,\mathrm{sign}\nabla_x L(x_t)\big)

    Pure and traceable: call it inside ``jit`` / ``vmap`` (e.g. once per model of a
    population). To minimise a loss, pass its negative.

    Args:
      loss_fn: ``x [N, ...] -> [N]`` (or a scalar) loss to maximise; examples are independent.
      x0: ``[N, ...]`` clean inputs.
      eps: the ball's radius (e.g. 4/256 on [0, 1] images).
      step_size: ``alpha`` (e.g. 1/256).
      steps: iterations (a Python int).
      bounds: the valid input range, ``None`` for none.
      start: the first iterate (default ``x0``; e.g. a random start in the ball).

    Returns:
      ``[N, ...]`` adversarial inputs.
    """
    lo, hi = (None, None) if bounds is None else bounds

    def project(x):
        x = jnp.clip(x, x0 - eps, x0 + eps)
        return x if lo is None else jnp.clip(x, lo, hi)

    grad = jax.grad(lambda x: jnp.sum(loss_fn(x)))

    def body(_, x):
        return project(x + step_size * jnp.sign(grad(x)))

    x = project(x0 if start is None else start)
    return jax.lax.fori_loop(0, int(steps), body, x)


# --------------------------------------------------------------------------- training surrogates / references


def fresh_like(params: PyTree, key: jax.Array) -> PyTree:
    """A fresh initialisation of one model's parameter tree, for any tree of dense / conv layers.

    Leaves of rank >= 2 (kernels) get LeCun-normal values (variance ``1 / fan_in``,
    ``fan_in`` = product of all axes but the last: Flax's default for ``Dense`` and
    ``Conv``); leaves named ``scale`` or ``var`` get ones (normalisation); every
    other leaf (biases, means) zeros. The tree's structure, shapes and dtypes are kept.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(key, max(1, len(flat)))
    out = []
    for (path, leaf), k in zip(flat, keys):
        leaf = jnp.asarray(leaf)
        name = str(getattr(path[-1], "key", getattr(path[-1], "name", path[-1]))) if path else ""
        if leaf.ndim >= 2:
            fan_in = int(np.prod(leaf.shape[:-1]))
            out.append((jax.random.normal(k, leaf.shape, jnp.float32) / np.sqrt(fan_in)).astype(leaf.dtype))
        elif name in ("scale", "var"):
            out.append(jnp.ones_like(leaf))
        else:
            out.append(jnp.zeros_like(leaf))
    return jax.tree.unflatten(treedef, out)


@functools.partial(
    jax.jit, static_argnames=("apply_fn", "steps", "batch_size", "lr", "temperature", "alpha", "sequential")
)
def _train(apply_fn, params, keys, x, labels, soft, *, steps, batch_size, lr, temperature, alpha, sequential):
    tx = optax.adam(lr)
    n = x.shape[0]

    def one(args):
        p, key, y, t = args
        state = tx.init(p)

        def step(carry, i):
            p, state = carry
            idx = jax.random.randint(jax.random.fold_in(key, i), (batch_size,), 0, n)

            def loss_fn(q):
                logits = apply_fn(q, x[idx]).reshape(batch_size, -1)
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean()
                if t is not None:
                    log_s = jax.nn.log_softmax(logits / temperature)
                    kl = jnp.sum(t[idx] * (jnp.log(jnp.clip(t[idx], 1e-12)) - log_s), axis=-1).mean()
                    loss = alpha * temperature**2 * kl + (1.0 - alpha) * loss
                return loss

            g = jax.grad(loss_fn)(p)
            updates, state = tx.update(g, state, p)
            return (optax.apply_updates(p, updates), state), None

        (p, _), _ = jax.lax.scan(step, (p, state), jnp.arange(steps))
        return p

    per_model_y = labels.ndim == 2
    if sequential:
        return jax.lax.map(
            lambda a: one((a[0], a[1], a[2] if per_model_y else labels, a[3])),
            (params, keys, labels if per_model_y else None, soft),
        )
    return jax.vmap(lambda p, k, y, t: one((p, k, y, t)), in_axes=(0, 0, 0 if per_model_y else None, 0))(
        params, keys, labels, soft
    )


def train_population(
    apply_fn: ApplyFn,
    init_params: PyTree,
    x: Any,
    labels: Any,
    *,
    key: jax.Array,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    soft_targets: Any = None,
    temperature: float = 1.0,
    alpha: float = 0.0,
    sequential: bool = False,
) -> PyTree:
    """Trains a stacked population with Adam in one jitted ``scan`` (vmapped, or one model after another).

    The loss is the cross-entropy on ``labels``; with ``soft_targets`` ``[P, N, C]``
    it is ``alpha * T^2 * KL(soft || softmax(logits / T)) + (1 - alpha) * CE``.
    Each step draws a batch uniformly with replacement with ``fold_in(key_p, step)``
    (model ``p``'s key is ``split(key, P)[p]``): no epoch bookkeeping in the scan.

    Args:
      apply_fn: the models' apply function.
      init_params: stacked ``[P, ...]`` initial parameters.
      x: ``[N, ...]`` inputs. labels: ``[N]`` shared or ``[P, N]`` per model (e.g. each teacher's argmax).
      key: the batches' key. steps, batch_size, lr: the schedule (constant ``lr``).
      soft_targets, temperature, alpha: distillation targets (optional).
      sequential: one model after another (``lax.map``) instead of ``vmap``.

    Returns:
      The trained stacked parameters.
    """
    x = jnp.asarray(x)
    labels = jnp.asarray(labels, jnp.int32)
    p = jax.tree.leaves(init_params)[0].shape[0]
    if batch_size > x.shape[0]:
        raise ValueError(f"batch_size {batch_size} exceeds the {x.shape[0]} training inputs")
    if labels.shape not in ((x.shape[0],), (p, x.shape[0])):
        raise ValueError(f"labels of shape {labels.shape} for {x.shape[0]} inputs and {p} models")
    soft = None if soft_targets is None else jnp.asarray(soft_targets, jnp.float32)
    return _train(
        apply_fn,
        init_params,
        jax.random.split(key, p),
        x,
        labels,
        soft,
        steps=int(steps),
        batch_size=int(batch_size),
        lr=float(lr),
        temperature=float(temperature),
        alpha=float(alpha),
        sequential=bool(sequential),
    )


# --------------------------------------------------------------------------- conferrable adversarial examples


def conferrability(
    source_logits: jax.Array, surrogate_logits: jax.Array, reference_logits: jax.Array, label: jax.Array | None = None
) -> jax.Array:
    """Lukas et al.'s conferrability ``[N]``: ``E_S[p_S(c)] * (1 - E_R[p_R(c)])`` with ``c = argmax`` of the source.

    Args:
      source_logits: ``[N, C]``. surrogate_logits: ``[S, N, C]``. reference_logits: ``[R, N, C]``.
      label: ``[N]`` the class ``c`` to use instead of the source's argmax (the search's target class).
    """
    c = jnp.argmax(source_logits, axis=-1) if label is None else label
    pick = lambda logits: jnp.take_along_axis(jax.nn.softmax(logits, -1), c[None, :, None], axis=-1)[..., 0]  # noqa: E731
    return pick(surrogate_logits).mean(0) * (1.0 - pick(reference_logits).mean(0))


@functools.partial(
    jax.jit,
    static_argnames=("source_fn", "surrogate_fn", "reference_fn", "steps", "bounds", "lambdas", "sequential"),
)
def _conferrable_search(
    source_fn,
    source,
    surrogate_fn,
    surrogates,
    reference_fn,
    references,
    x0,
    y0,
    start,
    *,
    eps,
    step_size,
    steps,
    bounds,
    lambdas,
    sequential,
):
    l1, l2, l3 = lambdas

    def logits(fn, params, x):
        return _map(lambda p: fn(p, x).reshape(x.shape[0], -1), params, sequential)

    def loss(x):  # per example, to maximise (PGD ascends)
        m = source_fn(source, x).reshape(x.shape[0], -1)
        s, r = logits(surrogate_fn, surrogates, x), logits(reference_fn, references, x)
        # The target class: the source's leading class other than y0. (With c = argmax M(x'), c = y0 until the
        # source flips, and the term would push the references off the true label instead.)
        c = jax.lax.stop_gradient(jnp.argmax(jnp.where(jax.nn.one_hot(y0, m.shape[-1]) > 0, -jnp.inf, m), -1))
        conf = conferrability(m, s, r, c)
        ce_source = optax.softmax_cross_entropy_with_integer_labels(m, y0)  # the source leaves y0 (adversarial)
        ce_sur = optax.softmax_cross_entropy_with_integer_labels(s, c[None]).mean(0)  # surrogates follow the source
        return l1 * jnp.log(conf + 1e-12) + l2 * ce_source - l3 * ce_sur

    x = pgd(loss, x0, eps=eps, step_size=step_size, steps=steps, bounds=bounds, start=start)
    m = source_fn(source, x).reshape(x.shape[0], -1)
    conf = conferrability(m, logits(surrogate_fn, surrogates, x), logits(reference_fn, references, x))
    return x, jnp.argmax(m, -1), conf


def conferrable_examples(
    source_fn: ApplyFn,
    source: PyTree,
    surrogate_fn: ApplyFn,
    surrogates: PyTree,
    reference_fn: ApplyFn,
    references: PyTree,
    x0: Any,
    y0: Any,
    *,
    n: int,
    eps: float,
    step_size: float,
    steps: int,
    key: jax.Array,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    lambdas: tuple[float, float, float] = (1.0, 1.0, 1.0),
    sequential: bool = False,
) -> Fingerprints:
    """Conferrable adversarial examples of one source (Lukas et al.'s CEM, by PGD).

    From every seed input ``x0`` (the defender's data, labels ``y0``), PGD
    (:func:`pgd`, random start in the ball drawn with ``key``) maximises
    ``l1 log sigma_c(x') + l2 CE(M(x'), y0) - l3 E_S CE(S(x'), c)`` (``sigma_c`` =
    :func:`conferrability` at class ``c``, the source's leading class other than
    ``y0``: the class the example is pushed to; departure: the paper writes the
    source's label at ``x'``, which is ``y0`` until the source flips, where the term
    would push the references off the true label). Kept: the ``n``
    most conferrable results among those the source misclassifies (``c != y0``),
    topped up with the most conferrable of the rest if fewer than ``n`` are
    misclassified.

    Args:
      source_fn, source: the source's apply function and (unstacked) parameters.
      surrogate_fn, surrogates: stacked ``[S, ...]`` surrogates (models extracted from the source).
      reference_fn, references: stacked ``[R, ...]`` references (independent models).
      x0, y0: ``[N, ...]`` seed inputs and their true labels (``N >= n``).
      n: fingerprints to keep. eps, step_size, steps: PGD (L-infinity).
      key: the random start's key. bounds: the valid input range (``None``: none).
      lambdas: ``(l1, l2, l3)``.
      sequential: evaluate surrogates and references one after another (``lax.map``; conv nets on CPU).

    Returns:
      :class:`Fingerprints` ``(x [n, ...], labels [n] = c, scores [n] = conferrability, index [n])``, best first.
    """
    x0 = jnp.asarray(x0, jnp.float32)
    y0 = jnp.asarray(y0, jnp.int32).reshape(-1)
    if x0.shape[0] != y0.shape[0] or not 1 <= n <= x0.shape[0]:
        raise ValueError(f"conferrable_examples: {x0.shape[0]} seeds, {y0.shape[0]} labels, n = {n}")
    start = x0 + jax.random.uniform(key, x0.shape, jnp.float32, -eps, eps)
    x, c, conf = _conferrable_search(
        source_fn,
        source,
        surrogate_fn,
        surrogates,
        reference_fn,
        references,
        x0,
        y0,
        start,
        eps=float(eps),
        step_size=float(step_size),
        steps=int(steps),
        bounds=None if bounds is None else (float(bounds[0]), float(bounds[1])),
        lambdas=tuple(float(v) for v in lambdas),
        sequential=bool(sequential),
    )
    x, c, conf = np.asarray(x), np.asarray(c), np.asarray(conf, np.float64)
    adversarial = c != np.asarray(y0)
    # Misclassified first, then by conferrability (stable: ties keep the seed order).
    order = np.lexsort((-conf, ~adversarial))[:n]
    return Fingerprints(x[order], c[order], conf[order], order)


# --------------------------------------------------------------------------- IPGuard


@functools.partial(jax.jit, static_argnames=("apply_fn", "steps", "bounds"))
def _ipguard_search(apply_fn, params, x, i, j, *, k, lr, steps, bounds):
    tx = optax.adam(lr)

    def loss(x):
        g = apply_fn(params, x).reshape(x.shape[0], -1)
        gi = jnp.take_along_axis(g, i[:, None], -1)[:, 0]
        gj = jnp.take_along_axis(g, j[:, None], -1)[:, 0]
        other = jnp.where(jax.nn.one_hot(i, g.shape[-1]) + jax.nn.one_hot(j, g.shape[-1]) > 0, -jnp.inf, g).max(-1)
        return jax.nn.relu(gi - gj + k) + jax.nn.relu(other - gi)

    def step(carry, _):
        x, state = carry
        value, vjp = jax.vjp(loss, x)
        (g,) = vjp(jnp.ones_like(value))
        u, state = tx.update(g, state, x)
        # An example whose loss reached 0 stops where it is (Adam's momentum would carry it past the boundary).
        active = (value > 0).reshape((-1,) + (1,) * (x.ndim - 1))
        x = jnp.where(active, optax.apply_updates(x, u), x)
        if bounds is not None:
            x = jnp.clip(x, bounds[0], bounds[1])
        return (x, state), None

    (x, _), _ = jax.lax.scan(step, (x, tx.init(x)), None, length=steps)
    g = apply_fn(params, x).reshape(x.shape[0], -1)
    return x, jnp.argmax(g, -1), loss(x)


def ipguard_examples(
    apply_fn: ApplyFn,
    params: PyTree,
    x0: Any,
    *,
    num_classes: int,
    k: float,
    steps: int,
    lr: float,
    key: jax.Array,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> Fingerprints:
    """IPGuard fingerprints of one model: points just on class ``j``'s side of its boundary with class ``i``.

    For each seed ``x0[n]`` a random ordered class pair ``(i, j)``, ``i != j``
    (drawn with ``key``); Adam on the input minimises
    ``ReLU(g_i - g_j + k) + ReLU(max_{t != i, j} g_t - g_i)``: ``j`` leads ``i`` by
    at least ``k`` and ``i`` is second; an example stops moving once its loss is 0,
    so it stays near the boundary. The fingerprint's label is the model's
    prediction at the result (``j`` where the search succeeded).

    Returns:
      :class:`Fingerprints` with ``scores = -loss`` (0 where the search succeeded).
    """
    x0 = jnp.asarray(x0, jnp.float32)
    if num_classes < 2:
        raise ValueError(f"IPGuard needs at least 2 classes; got {num_classes}")
    ki, kj = jax.random.split(key)
    i = jax.random.randint(ki, (x0.shape[0],), 0, num_classes)
    j = (i + jax.random.randint(kj, (x0.shape[0],), 1, num_classes)) % num_classes
    x, lab, loss = _ipguard_search(
        apply_fn,
        params,
        x0,
        i,
        j,
        k=float(k),
        lr=float(lr),
        steps=int(steps),
        bounds=None if bounds is None else (float(bounds[0]), float(bounds[1])),
    )
    return Fingerprints(np.asarray(x), np.asarray(lab), -np.asarray(loss, np.float64), np.arange(x.shape[0]))


# --------------------------------------------------------------------------- verification


@functools.partial(jax.jit, static_argnames=("apply_fn", "sequential"))
def agreement(apply_fn: ApplyFn, params: PyTree, x: jax.Array, labels: jax.Array, sequential: bool = False):
    """``[P]``: the fraction of fingerprints ``x`` on which each model predicts ``labels`` (fingerprint retention)."""
    return _map(
        lambda p: jnp.mean(jnp.argmax(apply_fn(p, x).reshape(x.shape[0], -1), -1) == labels), params, sequential
    )
