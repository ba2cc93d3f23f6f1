r"""Hidden-unit permutation symmetries: which axes of which leaves share one permutation.

Permuting the hidden units of a layer (the output axis of its kernel and bias,
the matching input axis of the next layer, its normalisation parameters and
statistics) leaves a network's function unchanged. A **permutation spec**
describes these symmetries as in git re-basin (Ainsworth et al., 2023):

.. code-block:: python

    {name: (units, (PermAxis(path, axis, tile), ...))}

permuting ``units`` along every listed axis together is one symmetry; entries
are independent. :func:`permutation_spec` gives the spec of the MLP, the
ConvNet and ResNet-18 of :mod:`jaxlineage.nets`; :func:`infer_specs` reads one
from the kernels' shapes for any chain of Dense / Conv layers. For other networks
write your own (a dict of the same shape), check it with :func:`check_spec`, and
pass it to :class:`~jaxlineage.models.Models` (``perm_spec=``), to
:func:`permute_params` or to :func:`jaxlineage.eval.pvalues.permutation_test`.
For a linen module ``Dense(32, name="enc") -> relu -> Dense(4, name="head")``:

>>> import flax.linen as nn
>>> class Net(nn.Module):
...     @nn.compact
...     def __call__(self, x):
...         return nn.Dense(4, name="head")(nn.relu(nn.Dense(32, name="enc")(x)))
>>> x = jax.random.normal(jax.random.key(0), (8, 5))
>>> variables = Net().init(jax.random.key(1), x)
>>> spec = {
...     "enc": (32, (
...         PermAxis(("params", "enc", "kernel"), 1),  # enc's outputs
...         PermAxis(("params", "enc", "bias"), 0),
...         PermAxis(("params", "head", "kernel"), 0),  # the next layer's inputs
...     )),
... }
>>> check_spec(Net().apply, variables, spec, x, key=jax.random.key(2)) < 1e-5  # raises if the function changes
True
>>> infer_spec(variables) == spec  # a Dense / Conv chain's spec can also be read from the shapes
True

References:
  Ainsworth, Hayase and Srinivasa, "Git Re-Basin: Merging Models modulo
  Permutation Symmetries", ICLR 2023 (permutation specs, Sec. 3).
  Zhu et al., "Independence Tests for Language Models", ICML 2025 (random
  hidden-unit permutations give exact p-values).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlineage import nets
from jaxlineage.errors import JaxlineageError

__all__ = [
    "PermAxis",
    "PermutationError",
    "PermutationSpec",
    "apply_permutations",
    "check_spec",
    "infer_spec",
    "infer_checked_spec",
    "infer_specs",
    "permutation_spec",
    "permute_params",
    "random_permutations",
    "spec_from_variables",
    "transformer_lm_spec",
]

PyTree = Any


class PermutationError(JaxlineageError):
    """A network has no permutation description, or a spec does not fit its parameters; names the path."""


@dataclasses.dataclass(frozen=True)
class PermAxis:
    """One axis of one leaf that a hidden-unit permutation acts on.

    Attributes:
      path: the leaf's path in the variables, e.g. ``("params", "dense1", "kernel")``.
      axis: the axis indexed by the permuted units.
      tile: that axis holds ``tile`` consecutive blocks of the units (a conv layer's
        channels flattened with its spatial positions into a dense layer: index
        ``position * units + unit``); 1 otherwise.
    """

    path: tuple[str, ...]
    axis: int
    tile: int = 1


#: ``{name: (units, axes)}``: one hidden-unit permutation per entry.
PermutationSpec = Mapping[str, tuple[int, Sequence[PermAxis]]]


def _count(p: PyTree, prefix: str) -> int:
    n = 0
    while f"{prefix}{n + 1}" in p:
        n += 1
    return n


def _mlp_spec(p: PyTree) -> dict:
    n = _count(p, "dense")
    spec = {}
    for i in range(1, n + 1):
        nxt = f"dense{i + 1}" if i < n else nets.HEAD
        spec[f"dense{i}"] = (
            p[f"dense{i}"]["kernel"].shape[-1],
            (
                PermAxis(("params", f"dense{i}", "kernel"), 1),
                PermAxis(("params", f"dense{i}", "bias"), 0),
                PermAxis(("params", nxt, "kernel"), 0),
            ),
        )
    return spec


def _convnet_spec(p: PyTree) -> dict:
    n = _count(p, "conv")
    spec = {}
    for i in range(1, n + 1):
        c = p[f"conv{i}"]["kernel"].shape[-1]
        axes = [PermAxis(("params", f"conv{i}", "kernel"), 3), PermAxis(("params", f"conv{i}", "bias"), 0)]
        if i < n:
            axes.append(PermAxis(("params", f"conv{i + 1}", "kernel"), 2))
        else:
            # The last conv's channels reach fc1 flattened as (row, col, channel).
            axes.append(PermAxis(("params", "fc1", "kernel"), 0, tile=p["fc1"]["kernel"].shape[0] // c))
        spec[f"conv{i}"] = (c, tuple(axes))
    spec["fc1"] = (
        p["fc1"]["kernel"].shape[-1],
        (
            PermAxis(("params", "fc1", "kernel"), 1),
            PermAxis(("params", "fc1", "bias"), 0),
            PermAxis(("params", nets.HEAD, "kernel"), 0),
        ),
    )
    return spec


def _bn(module: tuple[str, ...], stats: bool) -> list[PermAxis]:
    axes = [PermAxis(("params",) + module + ("scale",), 0), PermAxis(("params",) + module + ("bias",), 0)]
    if stats:
        axes += [PermAxis(("batch_stats",) + module + ("mean",), 0), PermAxis(("batch_stats",) + module + ("var",), 0)]
    return axes


def _resnet18_spec(variables: PyTree) -> dict:
    # One permutation per residual stream (the skip connections add a stage's stream to every
    # block's output, so all its blocks share it; a stage whose first block has no projection
    # shortcut continues its input's stream) and one per block's inner layer.
    p = variables["params"]
    stats = "batch_stats" in variables
    stages = sorted({int(k[len("block") :].split("_")[0]) for k in p if k.startswith("block")})
    streams: dict[str, list[PermAxis]] = {
        "stem": [PermAxis(("params", "stem_conv", "kernel"), 3)] + _bn(("stem_bn",), stats)
    }
    inner: dict = {}
    cur = "stem"
    for s in stages:
        blocks = sorted((k for k in p if k.startswith(f"block{s}_")), key=lambda k: int(k.split("_")[1]))
        for b in blocks:
            src = cur
            if "Conv_2" in p[b]:  # projection shortcut: a new stream starts here
                cur = f"stage{s}"
                streams[cur] = []
                streams[src].append(PermAxis(("params", b, "Conv_2", "kernel"), 2))
                streams[cur] += [PermAxis(("params", b, "Conv_2", "kernel"), 3)] + _bn((b, "BatchNorm_2"), stats)
            streams[src].append(PermAxis(("params", b, "Conv_0", "kernel"), 2))
            streams[cur] += [PermAxis(("params", b, "Conv_1", "kernel"), 3)] + _bn((b, "BatchNorm_1"), stats)
            inner[f"{b}/inner"] = (
                p[b]["Conv_0"]["kernel"].shape[-1],
                tuple(
                    [PermAxis(("params", b, "Conv_0", "kernel"), 3)]
                    + _bn((b, "BatchNorm_0"), stats)
                    + [PermAxis(("params", b, "Conv_1", "kernel"), 2)]
                ),
            )
    streams[cur].append(PermAxis(("params", nets.HEAD, "kernel"), 0))
    spec = {name: (_leaf(variables, axes[0].path).shape[axes[0].axis], tuple(axes)) for name, axes in streams.items()}
    spec.update(inner)
    return spec


def _leaf(variables: PyTree, path: Sequence[str]) -> jax.Array:
    node = variables
    for k in path:
        try:
            node = node[k]
        except (KeyError, TypeError, IndexError):
            raise PermutationError(f"permutation spec names {'/'.join(path)}, which the parameters lack") from None
    return node


def permutation_spec(network: nets.Network, params: PyTree) -> dict[str, tuple[int, tuple[PermAxis, ...]]]:
    """The hidden-unit permutation symmetries of a network (as in git re-basin).

    Args:
      network: an ``mlp``, ``convnet`` or ``resnet18`` from :mod:`jaxlineage.nets`.
      params: one model's variables (for the sizes; ResNet-18's ``batch_stats`` are
        included when present).

    Returns:
      ``{name: (units, axes)}``: permuting the ``units`` along every listed axis together
      leaves the network's function unchanged. MLP: one entry per hidden layer
      (``dense1`` ...); ConvNet: ``conv1`` ... and ``fc1``; ResNet-18: one per residual
      stage (``stem``/``stage2``...; a stage without a projection shortcut shares its
      input stream's) and one per block's inner layer (``block1_0/inner`` ...).

    Raises:
      PermutationError: an architecture without a description (names it).
    """
    return spec_from_variables(network.name, params)


def spec_from_variables(arch: str, variables: PyTree) -> dict[str, tuple[int, tuple[PermAxis, ...]]]:
    """:func:`permutation_spec` from the architecture's name and one model's variables alone.

    Layer counts are read from the parameter names (``dense1``.., ``conv1``.., ``block1_0``..).

    Raises:
      PermutationError: an architecture without a description, or variables without ``params``.
    """
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise PermutationError(f"permutation spec of {arch!r}: expected variables {{'params': ...}}")
    p = variables["params"]
    make = {
        "mlp": lambda: _mlp_spec(p),
        "convnet": lambda: _convnet_spec(p),
        "resnet18": lambda: _resnet18_spec(variables),
        "transformer_lm": lambda: transformer_lm_spec(variables),
    }
    if arch in make:
        spec = make[arch]()
        if not spec:
            raise PermutationError(
                f"these variables are not jaxlineage's {arch!r} (its layer names are missing: {sorted(p)[:6]});"
                " for your own network use infer_spec or write a spec"
            )
        return spec
    raise PermutationError(
        f"architecture {arch!r} has no permutation description (supported: convnet, mlp,"
        " resnet18, transformer_lm); write a spec {name: (units, (PermAxis(path, axis), ...))} for it"
    )


def random_permutations(spec: PermutationSpec, key: jax.Array) -> tuple[jax.Array, ...]:
    """One uniform random permutation per entry of ``spec`` (entry ``i`` uses ``fold_in(key, i)``).

    Returns:
      A tuple of ``[units_i]`` int arrays, in the spec's order.
    """
    return tuple(
        jax.random.permutation(jax.random.fold_in(key, i), units) for i, (units, _) in enumerate(spec.values())
    )


def apply_permutations(params: PyTree, spec: PermutationSpec, perms: Sequence[jax.Array]) -> PyTree:
    """Permutes ``params`` by given permutations, one per entry of ``spec``.

    .. math::
      \\theta'[\\ldots, j, \\ldots] = \\theta[\\ldots, \\pi(j), \\ldots]
      \\quad\\text{on every axis of the entry of } \\pi

    Args:
      params: one model's variables.
      spec: ``{name: (units, axes)}``.
      perms: ``[units_i]`` index arrays in the spec's order (traced arrays are fine: vmap over them).

    Returns:
      Variables with the same function and permuted hidden units.
    """
    out = jax.tree.map(lambda v: v, params)
    for perm, (units, axes) in zip(perms, spec.values()):
        for ax in axes:
            idx = (jnp.arange(ax.tile)[:, None] * units + perm[None, :]).ravel() if ax.tile > 1 else perm
            node = out
            for k in ax.path[:-1]:
                node = node[k]
            node[ax.path[-1]] = jnp.take(node[ax.path[-1]], idx, axis=ax.axis)
    return out


def permute_params(params: PyTree, spec: PermutationSpec, key: jax.Array) -> PyTree:
    """Applies one random permutation per entry of ``spec`` (see :func:`permutation_spec`).

    Args:
      params: one model's variables.
      spec: ``{name: (units, axes)}``.
      key: the permutations' key (entry ``i`` uses ``fold_in(key, i)``).

    Returns:
      Variables with the same function and permuted hidden units.
    """
    return apply_permutations(params, spec, random_permutations(spec, key))


# --------------------------------------------------------------------------- specs of other networks


def _kernel_modules(params: Mapping) -> list[tuple[str, tuple[int, ...]]] | None:
    """``[(module, kernel shape)]`` in the tree's insertion order (linen keeps definition order), or ``None``."""
    out = []
    for name, node in params.items():
        if not isinstance(node, Mapping):
            return None
        if "kernel" in node and jnp.ndim(node["kernel"]) in (2, 4):
            out.append((name, tuple(jnp.shape(node["kernel"]))))
    return out


def _feeds(shape: tuple[int, ...], nshape: tuple[int, ...]) -> int | None:
    """The tile with which a layer of kernel ``shape`` feeds one of kernel ``nshape``, or ``None``."""
    units, n_in = shape[-1], nshape[-2]
    if n_in == units:
        return 1
    if len(shape) == 4 and len(nshape) == 2 and n_in % units == 0:  # a Conv flattened into a Dense
        return n_in // units
    return None


def _chains(layers: list[tuple[str, tuple[int, ...]]], limit: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Every order of the layers in which each one feeds the next (tree order first), at most ``limit``.

    jax tree maps return dicts with sorted keys, so a trained model's tree order says nothing about the
    layers' order; shapes do: a chain starts at a layer fed by no other (any layer if each is fed by one)
    and uses every layer once. Layers of one square shape give several orders; only the function can tell
    them apart (:func:`check_spec`).
    """
    fed = {n for n, s in layers for m, t in layers if m != n and _feeds(t, s) is not None}
    out: list[list] = []

    def grow(chain: list, rest: list) -> None:
        if len(out) >= limit:
            return
        if not rest:
            out.append(chain)
            return
        for ly in rest:
            if _feeds(chain[-1][1], ly[1]) is not None:
                grow([*chain, ly], [r for r in rest if r is not ly])

    for first in [ly for ly in layers if ly[0] not in fed] or layers:
        grow([first], [ly for ly in layers if ly is not first])
    return out


def _norms_of(variables: PyTree, kernels: set[str]) -> dict[int, list[tuple[str, str, list[str]]]]:
    """``{width: [(collection, module, leaves)]}`` of the submodules whose leaves are all 1-d of one width."""
    out: dict[int, list] = {}
    for col, tree in variables.items():
        if not isinstance(tree, Mapping):
            continue
        for name, node in tree.items():
            if name in kernels or not isinstance(node, Mapping) or not node:
                continue
            shapes = {tuple(np.shape(v)) for v in node.values()}
            if len(shapes) == 1 and len(next(iter(shapes))) == 1:
                out.setdefault(next(iter(shapes))[0], []).append((col, name, list(node)))
    return out


def infer_specs(variables: PyTree, *, limit: int = 24) -> list[dict[str, tuple[int, tuple[PermAxis, ...]]]]:
    """Permutation specs for a chain of Dense / Conv layers, read from the variables alone: one per order.

    Layers are the submodules of ``variables["params"]`` with a 2-d (Dense ``[in, out]``) or 4-d
    (Conv ``[h, w, in, out]``) ``kernel``. They are ordered by their shapes, never by their names: the
    first is fed by no other layer, each next one reads the last one's outputs (a Conv flattened into a
    Dense: inputs a multiple of the channels, channels last), and every layer is used once. Hidden
    layers of one square shape allow several orders; each gives a spec (tree order first, at most
    ``limit``), and :func:`check_spec` on a few inputs tells which one is the network's. Every layer but
    the last gets one entry: its kernel's output axis, its bias, the submodules whose leaves are all
    vectors of that width (LayerNorm / BatchNorm scales, biases and statistics; assigned only when one
    layer has that width), and the next kernel's input axis.

    The inference assumes a plain chain; skip connections or attention break it, which :func:`check_spec`
    detects. Use a spec only after :func:`check_spec` passes.

    Returns:
      The specs, empty when the variables are not a chain of at least two such layers.
    """
    if not isinstance(variables, Mapping) or not isinstance(variables.get("params"), Mapping):
        return []
    p = variables["params"]
    layers = _kernel_modules(p)
    if not layers or len(layers) < 2:
        return []
    norms = _norms_of(variables, {n for n, _ in layers})
    specs = []
    for chain in _chains(layers, limit):
        widths = [shape[-1] for _, shape in chain[:-1]]
        spec = {}
        for (name, shape), (nxt, nshape) in zip(chain, chain[1:]):
            units, tile = shape[-1], _feeds(shape, nshape)
            axes = [PermAxis(("params", name, "kernel"), len(shape) - 1)]
            if "bias" in p[name] and jnp.shape(p[name]["bias"]) == (units,):
                axes.append(PermAxis(("params", name, "bias"), 0))
            if widths.count(units) == 1:
                axes += [PermAxis((col, mod, leaf), 0) for col, mod, leaves in norms.get(units, []) for leaf in leaves]
            axes.append(PermAxis(("params", nxt, "kernel"), len(nshape) - 2, tile=tile))
            spec[name] = (units, tuple(axes))
        specs.append(spec)
    return specs


def infer_spec(variables: PyTree) -> dict[str, tuple[int, tuple[PermAxis, ...]]] | None:
    """The first of :func:`infer_specs` (``None`` if none): the chain's spec when its order is unambiguous.

    Use it only after :func:`check_spec` passes; :func:`jaxlineage.verify` tries every order of
    :func:`infer_specs` and keeps the one that keeps the function.
    """
    specs = infer_specs(variables, limit=1)
    return specs[0] if specs else None


def check_spec(
    apply_fn: Any, variables: PyTree, spec: PermutationSpec, x: Any, *, key: jax.Array, rtol: float = 1e-4
) -> float:
    """Checks that a random permutation by ``spec`` keeps ``apply_fn``'s outputs on ``x``.

    Returns:
      The largest absolute change of the outputs, relative to ``1 + max |outputs|``.

    Raises:
      PermutationError: the spec does not fit the variables (names the path), or the outputs move by more
        than ``rtol`` (relative): the spec is not a symmetry of this network.
    """
    for units, axes in spec.values():
        for ax in axes:
            leaf = _leaf(variables, ax.path)
            if ax.axis >= jnp.ndim(leaf) or jnp.shape(leaf)[ax.axis] != units * ax.tile:
                raise PermutationError(
                    f"permutation spec: {'/'.join(ax.path)} has shape {jnp.shape(leaf)},"
                    f" the spec asks {units * ax.tile} units on axis {ax.axis}"
                )
    x = jnp.asarray(x)
    before = jnp.asarray(apply_fn(variables, x), jnp.float32)
    after = jnp.asarray(apply_fn(permute_params(variables, spec, key), x), jnp.float32)
    change = float(jnp.max(jnp.abs(after - before)) / (1.0 + jnp.max(jnp.abs(before))))
    if not change <= rtol:
        raise PermutationError(
            f"permutation spec {sorted(spec)} does not keep the network's function: a random permutation moved its"
            f" outputs by {change:.3g} (relative to 1 + max |output|; allowed {rtol:g}). An axis is missing or wrong;"
            " pass a spec that lists every axis each hidden unit touches"
        )
    return change


def infer_checked_spec(
    apply_fn: Any, variables: PyTree, x: Any, *, key: jax.Array
) -> tuple[dict[str, tuple[int, tuple[PermAxis, ...]]] | None, list[str]]:
    """The first inferred layer order (:func:`infer_specs`) whose random permutation keeps ``apply_fn`` on ``x``.

    Returns:
      ``(spec, errors)``: ``errors`` says why each order tried before ``spec`` failed :func:`check_spec`.
      ``(None, [])``: no order can be inferred; ``(None, errors)``: none of ``len(errors)`` orders keeps
      the function.
    """
    errors = []
    for spec in infer_specs(variables):
        try:
            check_spec(apply_fn, variables, spec, x, key=key)
        except PermutationError as e:
            errors.append(str(e))
            continue
        return spec, errors
    return None, errors


# --------------------------------------------------------------------------- transformer LM


def _ln(name: str) -> list[PermAxis]:
    return [PermAxis(("params", name, "scale"), 0), PermAxis(("params", name, "bias"), 0)]


def transformer_lm_spec(
    variables: PyTree, *, parts: Sequence[str] = ("mlp", "heads", "qk", "vo", "residual")
) -> dict[str, tuple[int, tuple[PermAxis, ...]]]:
    """The permutation symmetries of :class:`jaxlineage.nets_lm.TransformerLM`.

    Entries (block ``i`` = 1..L):

    * ``mlp<i>``: the MLP's hidden units (``mlp_in`` outputs, ``mlp_out`` inputs).
    * ``heads<i>``: whole attention heads (the head axis of query, key, value and out).
    * ``qk<i>``: dimensions inside a head, one permutation shared by query and key (their dot
      product is a sum over it) and by all heads of the block.
    * ``vo<i>``: dimensions inside a head, shared by value and the output projection's input.
    * ``residual``: the residual stream's ``D`` coordinates, everywhere the stream is read or
      written: both embeddings, every LayerNorm's gain and bias (LayerNorm's mean and variance
      do not depend on the order of coordinates), the kernels reading it (query, key, value,
      ``mlp_in``, ``head``) and writing it (``out``, ``mlp_out`` and their biases).

    Inside-head permutations are shared by all heads of a block (the spec format ties a
    permutation to an axis); per-head ones are also symmetries but are not generated.

    Args:
      variables: one model's variables ``{"params": ...}`` (sizes and block count are read off).
      parts: which kinds of entries to include (any of ``mlp``, ``heads``, ``qk``, ``vo``, ``residual``).

    Returns:
      ``{name: (units, axes)}`` as :func:`permutation_spec`.

    Raises:
      PermutationError: unknown part, or variables that are not a transformer LM's.
    """
    known = ("mlp", "heads", "qk", "vo", "residual")
    bad = [x for x in parts if x not in known]
    if bad:
        raise PermutationError(f"unknown transformer_lm spec parts {bad}; known: {known}")
    p = variables["params"]
    n = _count(p, "attn")
    if n == 0 or "tok_embed" not in p:
        raise PermutationError("transformer_lm spec: the variables have no tok_embed / attn1 (not a TransformerLM)")
    spec: dict = {}
    residual = [PermAxis(("params", "tok_embed"), 1), PermAxis(("params", "pos_embed"), 1)]
    for i in range(1, n + 1):
        a = ("params", f"attn{i}")
        heads, dh = p[f"attn{i}"]["query"]["kernel"].shape[1:]
        if "mlp" in parts:
            spec[f"mlp{i}"] = (
                p[f"mlp_in{i}"]["kernel"].shape[1],
                (
                    PermAxis(("params", f"mlp_in{i}", "kernel"), 1),
                    PermAxis(("params", f"mlp_in{i}", "bias"), 0),
                    PermAxis(("params", f"mlp_out{i}", "kernel"), 0),
                ),
            )
        if "heads" in parts:
            axes = [PermAxis(a + (m, "kernel"), 1) for m in ("query", "key", "value")]
            axes += [PermAxis(a + (m, "bias"), 0) for m in ("query", "key", "value")]
            spec[f"heads{i}"] = (heads, tuple(axes + [PermAxis(a + ("out", "kernel"), 0)]))
        if "qk" in parts:
            axes = [PermAxis(a + (m, "kernel"), 2) for m in ("query", "key")]
            axes += [PermAxis(a + (m, "bias"), 1) for m in ("query", "key")]
            spec[f"qk{i}"] = (dh, tuple(axes))
        if "vo" in parts:
            spec[f"vo{i}"] = (
                dh,
                (
                    PermAxis(a + ("value", "kernel"), 2),
                    PermAxis(a + ("value", "bias"), 1),
                    PermAxis(a + ("out", "kernel"), 1),
                ),
            )
        residual += _ln(f"ln1_{i}") + _ln(f"ln2_{i}")
        residual += [PermAxis(a + (m, "kernel"), 0) for m in ("query", "key", "value")]
        residual += [PermAxis(a + ("out", "kernel"), 2), PermAxis(a + ("out", "bias"), 0)]
        residual += [
            PermAxis(("params", f"mlp_in{i}", "kernel"), 0),
            PermAxis(("params", f"mlp_out{i}", "kernel"), 1),
            PermAxis(("params", f"mlp_out{i}", "bias"), 0),
        ]
    if "residual" in parts:
        residual += _ln("ln_f") + [PermAxis(("params", nets.HEAD, "kernel"), 0)]
        spec["residual"] = (p["tok_embed"].shape[1], tuple(residual))
    return spec
