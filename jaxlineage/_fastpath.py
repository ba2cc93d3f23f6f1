r"""Private: splitting a feature function at its first layer, for scoring at the floor.

Many feature functions start with a layer that is *linear in one parameter leaf*
and reads the probe directly: the first ``Dense`` of an MLP, the first ``Conv``
of a ConvNet or a ResNet stem, ``x @ w`` in a hand-written apply function. For
such an equation ``pre = B(x', W)`` with ``B`` bilinear (``dot_general`` or
``conv_general_dilated``), ``x'`` a function of the probe only and ``W`` a
parameter leaf (possibly reshaped / transposed / cast, all linear), its tangent
along ``Delta = theta_c - theta_p`` is

.. math:: \dot{pre} = B(x', W_c - W_p) = B(x', W_c) - B(x', W_p) = pre_c - pre_p ,

the difference of two outputs each model computes once anyway. Writing the
feature function as ``f(theta, X) = r(pre(theta, X), theta, X)``, the
Jacobian-vector product at the parent is

.. math:: J_p \Delta = \partial_{pre} r \cdot (pre_c - pre_p)
                       + \partial_\theta r \cdot \Delta ,

a jvp of the *remainder* ``r`` only. Scoring ``K`` parents against ``M``
children then costs ``K + M`` evaluations of the first layer, and per pair only
the jvp of ``r`` (elementwise for a tap right after the first layer, e.g. the
MLP's ``relu1``).

The split is read off the jaxpr of the (pruned) feature function, with calls to
jitted sub-functions inlined, so it applies to any pure ``f(params, x)`` (Flax
linen, NNX, hand-written), not only to :mod:`jaxlineage.nets`. When no equation
matches (e.g. the probe is normalised by parameters before the first layer, or
the weight is transformed non-linearly, as in weight normalisation) there is no
split and callers use the plain jvp path.

Numerics: ``pre_c - pre_p`` equals ``B(x', Delta W)`` up to rounding; in
float32 the tangent's relative error is about ``eps |pre| / |pre_c - pre_p|``,
i.e. an absolute error below the rounding of ``F_p`` itself after the step
``alpha`` (float64 agrees with the plain path to ~1e-12).

References:
  Yu, R. & Wang, X. (2024). Neural Lineage. CVPR. Sec. 3, Eq. (4).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core

from jaxlineage import _pairing

Array = jax.Array

#: Equations linear in each operand (the split points).
_BILINEAR = frozenset({"dot_general", "conv_general_dilated"})
#: Equations linear in their single array operand: a weight may pass through them.
_LINEAR_STRUCTURAL = frozenset(
    {"reshape", "transpose", "convert_element_type", "broadcast_in_dim", "squeeze", "expand_dims", "copy", "copy_p"}
)
#: Call primitives inlined before the analysis (``jax.jit`` inside the model).
_INLINE = frozenset({"pjit", "jit", "closed_call", "core_call"})


def _read(env: dict, v: Any) -> Any:
    return v.val if isinstance(v, jax_core.Literal) else env[v]


def _eval(
    jaxpr: Any,
    consts: Sequence[Any],
    args: Sequence[Any],
    *,
    keep: frozenset[int] | None = None,
    given: dict[int, Any] | None = None,
    outvars: Sequence[Any] | None = None,
) -> list[Any]:
    """Evaluates ``jaxpr``: only the equations in ``keep`` (default all); equation
    ``i`` in ``given`` is not run, its output is ``given[i]``; ``jit`` calls are inlined."""
    env: dict[Any, Any] = {}
    for v, val in zip(jaxpr.constvars, consts):
        env[v] = val
    for v, val in zip(jaxpr.invars, args):
        if val is not None:  # inputs the kept equations do not read
            env[v] = val
    given = given or {}
    for i, eqn in enumerate(jaxpr.eqns):
        if keep is not None and i not in keep:
            continue
        if i in given:
            outs = [given[i]]
        else:
            invals = [_read(env, v) for v in eqn.invars]
            if eqn.primitive.name in _INLINE and "jaxpr" in eqn.params:
                sub = eqn.params["jaxpr"]
                outs = _eval(sub.jaxpr, sub.consts, invals)
            else:
                params = eqn.primitive.get_bind_params(eqn.params)
                with eqn.ctx.manager:
                    outs = eqn.primitive.bind(*invals, **params)
                if not eqn.primitive.multiple_results:
                    outs = [outs]
        for v, o in zip(eqn.outvars, outs):
            if not isinstance(v, jax_core.DropVar):
                env[v] = o
    return [_read(env, v) for v in (jaxpr.outvars if outvars is None else outvars)]


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: one object per analysis
class SplitFeatureFn:
    """A pruned feature function split after its first (bilinear) layer.

    ``f(theta, X) = rest(theta, pre(theta, X), X)`` with ``pre`` a tuple of the
    outputs of the split equations (e.g. ``[N, H]`` before the bias of a Dense,
    ``[N, H, W, C]`` out of a conv), each linear in one parameter leaf.

    Attributes:
      pruned: the feature function over its used leaves.
      closed: its jaxpr (used leaves..., x) -> ``[N, D]``, jit calls inlined.
      split_eqns: indices of the split equations in ``closed.jaxpr.eqns``.
      split_leaves: for each, the index (among the used leaves) of its weight.
      pre_eqns: the equations ``pre`` evaluates (the split ones and what feeds them).
      rest_eqns: the equations ``rest`` evaluates (none that feeds only a split).
      rest_reads: which used leaves ``rest`` reads.
      pre_shapes: shapes of the ``pre`` outputs for one model.
    """

    pruned: _pairing.PrunedFeatureFn
    closed: Any
    split_eqns: tuple[int, ...]
    split_leaves: tuple[int, ...]
    pre_eqns: frozenset[int]
    rest_eqns: frozenset[int]
    rest_reads: tuple[bool, ...]
    pre_shapes: tuple[tuple[int, ...], ...]

    @property
    def split_primitives(self) -> tuple[str, ...]:
        return tuple(self.closed.jaxpr.eqns[i].primitive.name for i in self.split_eqns)

    @property
    def pre_size(self) -> int:
        """Numbers in one model's ``pre`` outputs."""
        return sum(math.prod(s) for s in self.pre_shapes)

    def pre(self, leaves: Sequence[Array], x: Array) -> tuple[Array, ...]:
        """The split equations' outputs for one model: the first layer's pass."""
        jaxpr = self.closed.jaxpr
        outvars = [jaxpr.eqns[i].outvars[0] for i in self.split_eqns]
        return tuple(
            _eval(jaxpr, self.closed.consts, [*leaves, x], keep=self.pre_eqns, outvars=outvars)
        )

    def rest(self, leaves: Sequence[Array], pre: Sequence[Array], x: Array) -> Array:
        """Features ``[N, D]`` from the model's ``pre`` outputs and its other leaves."""
        jaxpr = self.closed.jaxpr
        args = [l if r else None for l, r in zip(leaves, self.rest_reads)] + [x]
        given = dict(zip(self.split_eqns, pre))
        (out,) = _eval(jaxpr, self.closed.consts, args, keep=self.rest_eqns, given=given)
        return out


def _inlined_jaxpr(pruned: _pairing.PrunedFeatureFn, x_struct: jax.ShapeDtypeStruct):
    closed = jax.make_jaxpr(pruned)(list(pruned.used_structs), x_struct)
    return jax.make_jaxpr(lambda leaves, x: _eval(closed.jaxpr, closed.consts, [*leaves, x])[0])(
        list(pruned.used_structs), x_struct
    )


def _live(jaxpr: Any, roots: Sequence[Any], *, stop: frozenset[int] = frozenset()) -> frozenset[int]:
    """Equations needed for ``roots``; equations in ``stop`` are needed but not their inputs."""
    live = {v for v in roots if isinstance(v, jax_core.Var)}
    keep = set()
    for i in range(len(jaxpr.eqns) - 1, -1, -1):
        eqn = jaxpr.eqns[i]
        if not any(v in live for v in eqn.outvars):
            continue
        keep.add(i)
        if i not in stop:
            live.update(v for v in eqn.invars if isinstance(v, jax_core.Var))
    return frozenset(keep)


@functools.lru_cache(maxsize=256)
def split(pruned: _pairing.PrunedFeatureFn, x_struct: jax.ShapeDtypeStruct) -> SplitFeatureFn | None:
    """The split of ``pruned`` at its probe-reading bilinear layers, or ``None``.

    An equation is a split point when it is a ``dot_general`` or
    ``conv_general_dilated`` with one operand computed from the probe ``x`` and
    constants only, and the other from exactly one parameter leaf through
    linear structural operations only (reshape, transpose, cast, broadcast).

    Args:
      pruned: the feature function over its used leaves (``_pairing.analyse``).
      x_struct: shape and dtype of the probe batch ``[N, ...]``.

    Returns:
      A :class:`SplitFeatureFn`, or ``None`` when no equation qualifies.
    """
    try:
        closed = _inlined_jaxpr(pruned, x_struct)
    except Exception:  # pylint: disable=broad-except
        return None  # an unusual primitive we cannot re-bind: use the plain path
    jaxpr = closed.jaxpr
    n_leaves = len(pruned.used_structs)
    leaf_of = {v: i for i, v in enumerate(jaxpr.invars[:n_leaves])}
    x_var = jaxpr.invars[n_leaves]
    deps: dict[Any, frozenset[int]] = {v: frozenset({i}) for v, i in leaf_of.items()}
    reads_x: dict[Any, bool] = {x_var: True}
    linear_leaf: dict[Any, int] = dict(leaf_of)  # var = a linear function of that leaf alone
    dep = lambda v: deps.get(v, frozenset()) if isinstance(v, jax_core.Var) else frozenset()
    rx = lambda v: reads_x.get(v, False) if isinstance(v, jax_core.Var) else False
    split_eqns, split_leaves = [], []
    for i, eqn in enumerate(jaxpr.eqns):
        d = frozenset().union(*(dep(v) for v in eqn.invars)) if eqn.invars else frozenset()
        r = any(rx(v) for v in eqn.invars)
        for v in eqn.outvars:
            deps[v], reads_x[v] = d, r
        name = eqn.primitive.name
        if name in _LINEAR_STRUCTURAL and len(eqn.invars) == 1 and isinstance(eqn.invars[0], jax_core.Var) and eqn.invars[0] in linear_leaf:
            if jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.floating):
                linear_leaf[eqn.outvars[0]] = linear_leaf[eqn.invars[0]]
        if name in _BILINEAR and len(eqn.invars) == 2 and len(eqn.outvars) == 1:
            a, b = eqn.invars
            for probe_side, weight_side in ((a, b), (b, a)):
                if (
                    isinstance(weight_side, jax_core.Var)
                    and weight_side in linear_leaf
                    and not dep(probe_side)
                    and rx(probe_side)
                    and not rx(weight_side)
                    and jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.floating)
                ):
                    split_eqns.append(i)
                    split_leaves.append(linear_leaf[weight_side])
                    break
    if not split_eqns:
        return None
    stop = frozenset(split_eqns)
    pre_eqns = _live(jaxpr, [jaxpr.eqns[i].outvars[0] for i in split_eqns])
    rest_eqns = _live(jaxpr, jaxpr.outvars, stop=stop)
    # Inputs rest reads: those read by a kept, non-split equation, or returned.
    read = set(v for v in jaxpr.outvars if isinstance(v, jax_core.Var))
    for i in rest_eqns - stop:
        read.update(v for v in jaxpr.eqns[i].invars if isinstance(v, jax_core.Var))
    rest_reads = tuple(v in read for v in jaxpr.invars[:n_leaves])
    pre_shapes = tuple(tuple(jaxpr.eqns[i].outvars[0].aval.shape) for i in split_eqns)
    return SplitFeatureFn(
        pruned, closed, tuple(split_eqns), tuple(split_leaves), pre_eqns, rest_eqns, rest_reads, pre_shapes
    )
