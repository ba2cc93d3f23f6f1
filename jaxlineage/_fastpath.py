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

The same holds for anything affine in the parameters with probe-only
coefficients built on top (``+ b``, ``- running_mean``), so ``pre`` is taken at
the *frontier*: the affine values read by the first non-affine equation (the
ReLU, the BatchNorm's scale, a LayerNorm). When the remainder reads no
parameter and acts elementwise (``F = h(U)``, e.g. the MLP's ``relu1`` or the
ConvNet's ``conv1``), ``J_p Delta = h'(U_p) (U_c - U_p)`` needs no jvp per
pair, and the row-separable metrics (L1, L2, Lp, L-inf, LSE) are evaluated in
every mode from per-model arrays by :func:`tiled_norm_scores`, except L2, whose
three modes expand into matrix products of per-model arrays
(:func:`quadratic_scores`).

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
from jaxlineage import similarity as similarity_lib

Array = jax.Array

#: Equations linear in each operand (the split points).
_BILINEAR = frozenset({"dot_general", "conv_general_dilated"})
#: Equations linear in their single array operand: a weight may pass through them.
_LINEAR_STRUCTURAL = frozenset(
    {
        "reshape",
        "transpose",
        "convert_element_type",
        "broadcast_in_dim",
        "squeeze",
        "expand_dims",
        "copy",
        "copy_p",
    }
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
    """A pruned feature function split after its first (affine-in-parameters) layer.

    ``f(theta, X) = rest(theta, pre(theta, X), X)`` with ``pre`` a tuple of
    arrays affine in the parameters with coefficients that depend on the probe
    only (e.g. ``x @ W + b`` ``[N, H]`` of a Dense, ``conv(x, W) - mean`` of a
    conv followed by a BatchNorm), so that their tangent is ``pre_c - pre_p``.

    Attributes:
      pruned: the feature function over its used leaves.
      closed: its jaxpr (used leaves..., x) -> ``[N, D]``, jit calls inlined.
      pre_eqns_out: indices of the equations whose outputs are ``pre``.
      first_layers: indices of the bilinear probe-reading equations.
      pre_eqns: the equations ``pre`` evaluates.
      rest_eqns: the equations ``rest`` evaluates (given ``pre``).
      rest_reads: which used leaves ``rest`` reads.
      pre_shapes: shapes of the ``pre`` outputs for one model.
      elementwise: ``rest`` reads no parameter and acts elementwise on a single
        ``pre`` of ``N * D`` numbers (then ``J_p Delta = h'(pre_p) (pre_c - pre_p)``).
    """

    pruned: _pairing.PrunedFeatureFn
    closed: Any
    pre_eqns_out: tuple[int, ...]
    first_layers: tuple[int, ...]
    pre_eqns: frozenset[int]
    rest_eqns: frozenset[int]
    rest_reads: tuple[bool, ...]
    pre_shapes: tuple[tuple[int, ...], ...]
    elementwise: bool

    @property
    def first_layer_primitives(self) -> tuple[str, ...]:
        return tuple(self.closed.jaxpr.eqns[i].primitive.name for i in self.first_layers)

    @property
    def pre_size(self) -> int:
        """Numbers in one model's ``pre`` outputs."""
        return sum(math.prod(s) for s in self.pre_shapes)

    def pre(self, leaves: Sequence[Array], x: Array) -> tuple[Array, ...]:
        """The first layer's outputs for one model (its only matrix products)."""
        jaxpr = self.closed.jaxpr
        outvars = [jaxpr.eqns[i].outvars[0] for i in self.pre_eqns_out]
        return tuple(_eval(jaxpr, self.closed.consts, [*leaves, x], keep=self.pre_eqns, outvars=outvars))

    def rest(self, leaves: Sequence[Array], pre: Sequence[Array], x: Array) -> Array:
        """Features ``[N, D]`` from the model's ``pre`` outputs and its other leaves."""
        jaxpr = self.closed.jaxpr
        args = [l if r else None for l, r in zip(leaves, self.rest_reads)] + [x]
        given = dict(zip(self.pre_eqns_out, pre))
        (out,) = _eval(jaxpr, self.closed.consts, args, keep=self.rest_eqns, given=given)
        return out

    def elementwise_arrays(self, leaves: Sequence[Array], x: Array) -> tuple[Array, Array, Array]:
        """For an ``elementwise`` split: ``(F, U, H)``, each ``[N, D]``.

        ``U`` is ``pre`` flattened, ``F = h(U)`` the features and ``H = h'(U)``
        the diagonal of the remainder's Jacobian (one jvp with a tangent of
        ones), so that a pair's ``J_p Delta = H_p * (U_c - U_p)``.
        """
        (pre,) = self.pre(leaves, x)
        h = lambda u: self.rest(leaves, (u,), x)
        f, dh = jax.jvp(h, (pre,), (jnp.ones_like(pre),))
        return f, pre.reshape(f.shape), dh


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
def split(pruned: _pairing.PrunedFeatureFn, x_struct: jax.ShapeDtypeStruct) -> SplitFeatureFn | None:  # noqa: C901 (walks the jaxpr once; one branch per primitive kind)
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
    is_var = lambda v: isinstance(v, jax_core.Var)
    floating = lambda v: jnp.issubdtype(v.aval.dtype, jnp.floating)
    params_in: set[Any] = set(leaf_of)  # vars that depend on some parameter
    reads_x: set[Any] = {x_var}  # vars that depend on the probe
    # Linear in one floating leaf, no probe. Integer leaves have no tangent on the plain
    # path (float0), so a weight cast from one must not contribute pre_c - pre_p.
    linear_leaf: set[Any] = {v for v in leaf_of if floating(v)}
    affine: set[Any] = set()  # affine in the parameters, probe-only coefficients, reads x
    producer: dict[Any, int] = {}
    first_layers = []
    param_free = lambda v: not is_var(v) or v not in params_in
    for i, eqn in enumerate(jaxpr.eqns):
        ins = [v for v in eqn.invars if is_var(v)]
        has_p = any(v in params_in for v in ins)
        has_x = any(v in reads_x for v in ins)
        for v in eqn.outvars:
            producer[v] = i
            if has_p:
                params_in.add(v)
            if has_x:
                reads_x.add(v)
        if len(eqn.outvars) != 1 or not floating(eqn.outvars[0]):
            continue
        (out,) = eqn.outvars
        name = eqn.primitive.name
        if name in _LINEAR_STRUCTURAL and len(eqn.invars) == 1 and is_var(eqn.invars[0]):
            if eqn.invars[0] in linear_leaf:
                linear_leaf.add(out)
            elif eqn.invars[0] in affine:
                affine.add(out)
        elif name in _BILINEAR and len(eqn.invars) == 2:
            a, b = eqn.invars
            for probe_side, weight_side in ((a, b), (b, a)):
                if (
                    is_var(weight_side)
                    and weight_side in linear_leaf
                    and param_free(probe_side)
                    and is_var(probe_side)
                    and probe_side in reads_x
                ):
                    affine.add(out)
                    first_layers.append(i)
                    break
        elif name in ("add", "sub", "add_any") and any(v in affine for v in ins):
            # pre + bias, pre - running mean, pre + probe-only term: still affine.
            if all(param_free(v) or v in affine or v in linear_leaf for v in eqn.invars):
                affine.add(out)
        elif name == "neg" and ins and ins[0] in affine:
            affine.add(out)
        elif name in ("mul", "div") and len(eqn.invars) == 2:
            a, b = eqn.invars
            if (is_var(a) and a in affine and param_free(b)) or (
                name == "mul" and is_var(b) and b in affine and param_free(a)
            ):
                affine.add(out)
    if not first_layers:
        return None
    # pre = the affine vars read by a non-affine equation (or returned): the frontier.
    frontier = set(v for v in jaxpr.outvars if is_var(v) and v in affine)
    for eqn in jaxpr.eqns:
        if not (len(eqn.outvars) == 1 and eqn.outvars[0] in affine):
            frontier.update(v for v in eqn.invars if is_var(v) and v in affine)
    if not frontier:
        return None
    pre_eqns_out = tuple(sorted(producer[v] for v in frontier))
    stop = frozenset(pre_eqns_out)
    pre_eqns = _live(jaxpr, [jaxpr.eqns[i].outvars[0] for i in pre_eqns_out])
    rest_eqns = _live(jaxpr, jaxpr.outvars, stop=stop)
    # Inputs rest reads: those read by a kept equation that it runs, or returned.
    read = set(v for v in jaxpr.outvars if is_var(v))
    for i in rest_eqns - stop:
        read.update(v for v in jaxpr.eqns[i].invars if is_var(v))
    rest_reads = tuple(v in read for v in jaxpr.invars[:n_leaves])
    pre_shapes = tuple(tuple(jaxpr.eqns[i].outvars[0].aval.shape) for i in pre_eqns_out)
    elementwise = (
        len(pre_eqns_out) == 1
        and not any(rest_reads)
        and math.prod(pre_shapes[0]) == math.prod(pruned.out_shape)
        and all(_is_elementwise(jaxpr.eqns[i], pre_shapes[0], pruned.out_shape) for i in sorted(rest_eqns - stop))
    )
    return SplitFeatureFn(
        pruned,
        closed,
        pre_eqns_out,
        tuple(first_layers),
        pre_eqns,
        rest_eqns,
        rest_reads,
        pre_shapes,
        elementwise,
    )


#: Primitives that act elementwise on same-shape operands (scalars broadcast).
_ELEMENTWISE = frozenset(
    {
        "add",
        "sub",
        "mul",
        "div",
        "max",
        "min",
        "neg",
        "abs",
        "sign",
        "exp",
        "exp2",
        "log",
        "log1p",
        "expm1",
        "tanh",
        "logistic",
        "sin",
        "cos",
        "sqrt",
        "rsqrt",
        "cbrt",
        "integer_pow",
        "pow",
        "square",
        "erf",
        "erfc",
        "select_n",
        "clamp",
        "convert_element_type",
        "copy",
        "copy_p",
        "ge",
        "gt",
        "le",
        "lt",
        "eq",
        "ne",
        "and",
        "or",
        "not",
        "is_finite",
    }
)


def _is_elementwise(eqn: Any, shape: tuple[int, ...], out_shape: tuple[int, ...]) -> bool:
    """Whether ``eqn`` maps arrays of ``shape`` elementwise (scalars broadcast), or is
    the final reshape to the features' ``out_shape``."""
    same = lambda v: tuple(v.aval.shape) in (shape, ())
    name = eqn.primitive.name
    if name == "reshape":  # row-major only (dimensions=None): no transposition
        return (
            eqn.params.get("dimensions") is None
            and tuple(eqn.invars[0].aval.shape) == shape
            and tuple(eqn.outvars[0].aval.shape)
            in (
                shape,
                tuple(out_shape),
            )
        )
    if name in ("custom_jvp_call", "custom_vjp_call"):
        sub = eqn.params.get("call_jaxpr") or eqn.params.get("fun_jaxpr")
        sub = getattr(sub, "jaxpr", sub)
        if sub is None or not all(same(v) for v in [*eqn.invars, *eqn.outvars]):
            return False
        return all(_is_elementwise(e, shape, shape) for e in sub.eqns)
    if name in _INLINE and "jaxpr" in eqn.params:
        return all(same(v) for v in [*eqn.invars, *eqn.outvars]) and all(
            _is_elementwise(e, shape, shape) for e in eqn.params["jaxpr"].jaxpr.eqns
        )
    return name in _ELEMENTWISE and all(same(v) for v in [*eqn.invars, *eqn.outvars])


# ----------------------------------------------------------------------------
# Row-tiled norm metrics for an elementwise split.


#: Built-in metrics that are sums over rows of a function of one row of ``d = a - b``.
_ROW_METRICS = frozenset(
    {
        similarity_lib.Metric.L1,
        similarity_lib.Metric.L2,
        similarity_lib.Metric.LP,
        similarity_lib.Metric.LINF,
        similarity_lib.Metric.LSE,
    }
)


def row_separable(metric: Any) -> bool:
    """Whether :func:`tiled_norm_scores` evaluates ``metric`` (L1, L2, Lp, L-inf, LSE)."""
    return metric.metric in _ROW_METRICS


def _lse_phi_jvp(t: float):
    """``(d, g) -> jvp(phi)(d; g)`` for LSE's ``phi(d) = exp(min(t |d|, 10))``, written out.

    The same value as ``jax.jvp`` (``|.|``'s rule ``g`` where ``d >= 0`` else
    ``-g``; ``min``'s ``1 / 0.5 / 0`` below / at / above the clamp), but as
    plain selects: XLA's CPU backend vectorises this form, while the traced
    jvp of the composition ran 8x slower per element (LSE's first order was
    two thirds of all the norm metrics' time).
    """
    clamp = similarity_lib.LSE_CLAMP

    def dphi(d, g):
        z = t * jnp.abs(d)
        e = jnp.exp(jnp.minimum(z, clamp))
        dz = t * jnp.where(d >= 0, g, -g)
        return jnp.where(z < clamp, e * dz, jnp.where(z == clamp, e * (0.5 * dz), jnp.zeros_like(e)))

    return dphi


def _elementwise_term(metric: Any):
    """``(phi, kind)``: the metric's per-element function of ``d`` and its row reduction."""
    kind = metric.metric
    kw = dict(metric.kwargs)
    if kind is similarity_lib.Metric.L1:
        return jnp.abs, "sum"
    if kind is similarity_lib.Metric.L2:
        return jnp.square, "sum"
    if kind is similarity_lib.Metric.LP:
        p = kw["p"]
        return (lambda d: similarity_lib._power(jnp.abs(d), p)), "sum"  # pylint: disable=protected-access
    if kind is similarity_lib.Metric.LINF:
        return jnp.abs, "max"
    t = kw["t"]
    # LSE: exp(min(t|d|, 10)) <= e^10, so row sums need no max-shift (the clamp is the official code's).
    return (lambda d: jnp.exp(jnp.minimum(t * jnp.abs(d), similarity_lib.LSE_CLAMP))), "sum_exp"


def _finish(metric: Any, n: int, d: int):
    """Row reductions ``[..., R]`` -> the block's share of the metric (before nothing else)."""
    kind = metric.metric
    if kind is similarity_lib.Metric.LINF:
        return lambda r: -jnp.sum(r, axis=-1) / n
    if kind is similarity_lib.Metric.LSE:
        t = dict(metric.kwargs)["t"]
        return lambda r: -jnp.sum(jnp.log(r), axis=-1) / (t * n * d)
    return lambda r: -jnp.sum(r, axis=-1) / (n * d)


def _largest_divisor(n: int, cap: int) -> int:
    return max(r for r in range(1, max(1, min(n, cap)) + 1) if n % r == 0)


#: Probe rows per block of :func:`tiled_norm_scores`: the vector lanes of its reductions.
_LANES = 256


def per_row(metric: Any) -> bool:
    """Whether a :func:`row_separable` metric reduces each probe row apart (L-inf's max, LSE's log)."""
    return metric.metric in (similarity_lib.Metric.LINF, similarity_lib.Metric.LSE)


def block_shape(
    n: int, d: int, element_bytes: int, *, per_row: bool = False, target_bytes: int = 2**21
) -> tuple[int, int]:
    """``(rows, cols)`` of :func:`tiled_norm_scores`: divisors of ``d`` (features) and ``n`` (probe rows).

    ``cols``, the probe rows, are the block's contiguous axis (the vector lanes): the largest
    divisor of ``n`` up to 256. For sums (L1, Lp) ``rows`` then fill about ``target_bytes``, with
    ``element_bytes`` what one position costs over all the models of a block (e.g.
    ``(3 K + 2 B) * itemsize``); for :func:`per_row` metrics ``rows`` is 1, so that their max and
    exps accumulate elementwise (on XLA:CPU that ran faster than reducing even four features per
    block, while the sums ran faster with several; measured in BUILD_NOTES, issue 27).
    """
    cols = _largest_divisor(n, _LANES)
    if per_row:
        return 1, cols
    rows = _largest_divisor(d, max(1, target_bytes // max(element_bytes * cols, 1)))
    return rows, cols


def tiled_norm_scores(combos, parent, child, alpha, *, block):  # noqa: C901 (one branch per metric and mode)
    r"""Row-separable metrics of all pairs, from per-model arrays only.

    For an elementwise split the linearised pair is ``F_p + alpha G`` with
    ``G = H_p * (U_c - U_p)``, so every score is a sum over the probe's rows of
    a row reduction (a sum, or a max for L-inf) of an elementwise function
    ``phi`` of ``d = F_p - F_c`` and ``G``:

    .. math::
       \texttt{PLAIN}: \sum \phi(d), \quad
       \texttt{LINEARIZED}: \sum \phi(d + \alpha G), \quad
       \texttt{FIRST\_ORDER}: \sum \phi(d) + \alpha \sum \phi'(d) G

    (LSE: ``-(1/t) sum_i log sum_j phi``, first order ``sum_i (sum_j phi' G) /
    (sum_j phi)``; ``phi'`` by ``jax.jvp``, as the plain path's chain rule).

    The arrays come **feature-major**, ``[models, D, N]``: a probe row's reduction
    over its ``D`` features then runs along a non-contiguous axis, with the probe
    rows as vector lanes. XLA:CPU vectorises that form; reducing along the
    contiguous axis (``[models, N, D]``) ran several times slower per element. Blocks of
    ``rows`` features x ``cols`` probe rows keep every parent's and child's block
    in cache while all metrics, modes and alphas read it (cheap terms in one
    variadic reduction, i.e. one sweep; the exp terms of LSE on their own);
    nothing of size ``K x M x N x D`` is ever stored.

    Args:
      combos: ``(metric, mode)`` pairs, each metric :func:`row_separable`.
      parent: ``(F_p, U_p, H_p)``, each ``[K, D, N]`` (feature-major).
      child: ``(F_c, U_c)``, each ``[B, D, N]``.
      alpha: ``[A]``.
      block: ``(rows, cols)``, divisors of ``D`` and ``N`` (:func:`block_shape`).

    Returns:
      Scores ``[len(combos), A, K, B]``.
    """
    f_p, u_p, h_p = parent
    f_c, u_c = child
    (k, d, n), b = f_p.shape, f_c.shape[0]
    rows, cols = block
    alpha = jnp.asarray(alpha, f_p.dtype)
    n_alpha = alpha.shape[0]

    # The terms to reduce, shared between modes where equal (PLAIN = FIRST_ORDER's primal).
    makers, kinds, index, plans = [], [], {}, []

    def term(key, make, kind):
        if key not in index:
            index[key] = len(makers)
            makers.append(make)
            kinds.append(kind)
        return index[key]

    for metric, mode in combos:
        phi, kind = _elementwise_term(metric)
        name = metric.name
        if mode.value == "linearized":
            ids = [
                term((name, i), lambda diff, g, phi=phi, i=i: phi(diff + alpha[i] * g), kind) for i in range(n_alpha)
            ]
            plans.append(("lin", metric, ids))
            continue
        i0 = term((name, "plain"), lambda diff, g, phi=phi: phi(diff), kind)
        if mode.value == "plain":
            plans.append(("plain", metric, [i0]))
        else:
            if metric.metric is similarity_lib.Metric.LSE:
                dphi = _lse_phi_jvp(dict(metric.kwargs)["t"])
            else:
                dphi = lambda diff, g, phi=phi: jax.jvp(phi, (diff,), (g,))[1]  # noqa: E731
            i1 = term((name, "jvp"), dphi, kind)
            plans.append(("first_order", metric, [i0, i1]))
    joint = [i for i, kd in enumerate(kinds) if kd != "sum_exp"]
    alone = [i for i, kd in enumerate(kinds) if kd == "sum_exp"]
    merge = lambda xs, ys, ks: tuple(jnp.maximum(x, y) if kd == "max" else x + y for x, y, kd in zip(xs, ys, ks))

    def feature_block(acc, starts):
        r0, c0 = starts
        take = lambda a: jax.lax.dynamic_slice(a, (0, r0, c0), (a.shape[0], rows, cols))
        fp, up, hp = (take(a)[:, None] for a in (f_p, u_p, h_p))  # [K, 1, R, C]
        fc, uc = (take(a)[None] for a in (f_c, u_c))  # [1, B, R, C]
        g = hp * (uc - up)
        diff = fp - fc
        full = lambda i: jnp.broadcast_to(makers[i](diff, g), (k, b, rows, cols))
        red = [None] * len(makers)
        if joint:
            # |.|, |.|^p, (.)^2 and their jvps: 0 is the identity of the sum and of the max (>= 0).
            outs = jax.lax.reduce(
                tuple(full(i) for i in joint),
                tuple(jnp.zeros((), f_p.dtype) for _ in joint),
                lambda xs, ys: merge(xs, ys, [kinds[i] for i in joint]),
                (2,),
            )
            for i, o in zip(joint, outs):
                red[i] = o
        for i in alone:
            red[i] = jnp.sum(full(i), axis=2)
        return merge(acc, red, kinds), None

    def probe_block(total, c0):
        acc = tuple(jnp.zeros((k, b, cols), f_p.dtype) for _ in makers)
        starts = (jnp.arange(0, d, rows), jnp.full((d // rows,), c0))
        red, _ = jax.lax.scan(feature_block, acc, starts)  # each probe row's reductions, [K, B, C]
        out = []
        for how, metric, ids in plans:
            fin = _finish(metric, n, d)
            if how == "lin":
                out.append(jnp.stack([fin(red[i]) for i in ids]))
            elif how == "plain":
                out.append(jnp.broadcast_to(fin(red[ids[0]]), (n_alpha, k, b)))
            else:
                s0 = fin(red[ids[0]])
                if metric.metric is similarity_lib.Metric.LSE:
                    t = dict(metric.kwargs)["t"]
                    ds = -jnp.sum(red[ids[1]] / red[ids[0]], axis=-1) / (t * n * d)
                else:
                    ds = fin(red[ids[1]])
                out.append(s0[None] + alpha[:, None, None] * ds[None])
        return total + jnp.stack(out), None

    zero = jnp.zeros((len(combos), n_alpha, k, b), f_p.dtype)
    total, _ = jax.lax.scan(probe_block, zero, jnp.arange(0, n, cols))
    return total


# ----------------------------------------------------------------------------
# Quadratic metrics (L2) for an elementwise split, as matrix products.


def quadratic(metric: Any) -> bool:
    """Whether :func:`quadratic_scores` evaluates ``metric``: L2, or Lp with ``p = 2``."""
    if metric.metric is similarity_lib.Metric.L2:
        return True
    return metric.metric is similarity_lib.Metric.LP and float(dict(metric.kwargs)["p"]) == 2.0


#: Left (parent) operands of the six products, as functions of ``(F, U, H)``.
_LEFT = {
    "F": lambda f, u, h: f,
    "FH": lambda f, u, h: f * h,
    "H": lambda f, u, h: h,
    "HU": lambda f, u, h: h * u,
    "H2": lambda f, u, h: h * h,
    "H2U": lambda f, u, h: (h * h) * u,
}
#: For h = ReLU (h' in {0, 1}, h(u) = h'(u) u) the left operands coincide: F H = H U = H^2 U = F, H^2 = H.
_RELU_LEFT = {"F": "F", "FH": "F", "H": "H", "HU": "F", "H2": "H", "H2U": "F"}
#: Right (child) operands, as functions of ``(F, U)``.
_RIGHT = {"F": lambda f, u: f, "U": lambda f, u: u, "FU": lambda f, u: f * u, "U2": lambda f, u: u * u}
#: The products: sum d^2 needs P1; sum d G needs P2, P3, P4; sum G^2 needs P5, P6.
_PRODUCTS = {
    "P1": ("F", "F"),
    "P2": ("FH", "U"),
    "P3": ("H", "FU"),
    "P4": ("HU", "F"),
    "P5": ("H2", "U2"),
    "P6": ("H2U", "U"),
}


def quadratic_parent_terms(f_p: Array, u_p: Array, h_p: Array) -> dict[str, Array]:
    """Per-parent sums of :func:`quadratic_scores` (``[K]`` each) and whether ``h`` acts as a ReLU on them.

    ``relu`` is true when ``F H = H U = H^2 U = F`` and ``H^2 = H`` hold exactly (bit for bit) on
    every parent, as they do for ``jax.nn.relu``; then four of the six products coincide.
    """
    axes = tuple(range(1, f_p.ndim))
    fh = f_p * h_p
    same = lambda a, b: jnp.all(a == b)
    relu = same(fh, f_p) & same(h_p * u_p, f_p) & same(h_p * h_p, h_p) & same((h_p * h_p) * u_p, f_p)
    return {
        "ff": jnp.sum(f_p * f_p, axis=axes),
        "fhu": jnp.sum(fh * u_p, axis=axes),
        "hhuu": jnp.sum(jnp.square(h_p * u_p), axis=axes),
        "relu": relu,
    }


#: Contraction block of the products: XLA:CPU runs one ``[K, c] x [c, B]`` product per block
#: at about 5x the rate of a single product contracting all ``N D`` positions at once, and
#: blocks of 4096 faster than of 1024 (BUILD_NOTES, issue 27).
_CONTRACTION_BLOCK = 4096


def _products(needed: Sequence[str], parent, child, *, relu: bool) -> dict[str, Array]:
    """The ``[K, B]`` inner products ``needed``, over blocks of positions.

    Per block, each distinct left operand is one matrix product against its right operands
    stacked; the operands are formed per block from ``(F, U, H)`` and ``(F, U)``.
    """
    flat = lambda a: a.reshape(a.shape[0], -1)
    f_p, u_p, h_p = (flat(a) for a in parent)
    f_c, u_c = (flat(a) for a in child)
    (k, n), b = f_p.shape, f_c.shape[0]
    c = min(n, _CONTRACTION_BLOCK)
    if n % c:  # zeros add nothing to any product
        pad = lambda a: jnp.pad(a, ((0, 0), (0, c - n % c)))
        f_p, u_p, h_p, f_c, u_c = (pad(a) for a in (f_p, u_p, h_p, f_c, u_c))
    left_of = lambda name: _RELU_LEFT[name] if relu else name
    groups: dict[str, list[tuple[str, str]]] = {}
    for prod in needed:
        left, right = _PRODUCTS[prod]
        groups.setdefault(left_of(left), []).append((prod, right))
    rights = {left: list(dict.fromkeys(r for _, r in items)) for left, items in groups.items()}

    def body(i, carry):
        take = lambda a: jax.lax.dynamic_slice_in_dim(a, i * c, c, axis=1)
        fp, up, hp, fc, uc = (take(a) for a in (f_p, u_p, h_p, f_c, u_c))
        out = {}
        for left in groups:
            lhs = _LEFT[left](fp, up, hp)  # [K, c]
            rhs = jnp.concatenate([_RIGHT[r](fc, uc) for r in rights[left]], axis=0)  # [R B, c]
            block = jax.lax.dot_general(lhs, rhs, (((1,), (1,)), ((), ())), precision=jax.lax.Precision.HIGHEST)
            # Compensated (Kahan) sum over blocks: the blocks' rounding does not add up.
            total, comp = carry[left]
            y = block - comp
            t = total + y
            out[left] = (t, (t - total) - y)
        return out

    zero = {left: (jnp.zeros((k, len(r) * b), f_p.dtype),) * 2 for left, r in rights.items()}
    acc = {left: total for left, (total, _) in jax.lax.fori_loop(0, f_p.shape[1] // c, body, zero).items()}
    out = {}
    for left, items in groups.items():
        res = acc[left].reshape(k, len(rights[left]), b)
        for prod, right in items:
            out[prod] = res[:, rights[left].index(right)]
    return out


def quadratic_scores(combos, parent, parent_terms, child, alpha) -> Array:
    r"""L2 (and Lp, ``p = 2``) of all pairs in every mode, from ``[K, n] x [n, B]`` matrix products.

    With ``d = F_p - F_c`` and ``G = H_p (U_c - U_p)`` (an elementwise split) the three sums every
    mode needs expand into inner products of per-model arrays:

    .. math::
       \sum d^2 &= \sum F_p^2 + \sum F_c^2 - 2 \langle F_p, F_c \rangle \\
       \sum d G &= \langle F_p H_p, U_c \rangle - \sum F_p H_p U_p - \langle H_p, F_c U_c \rangle
                   + \langle H_p U_p, F_c \rangle \\
       \sum G^2 &= \langle H_p^2, U_c^2 \rangle - 2 \langle H_p^2 U_p, U_c \rangle + \sum H_p^2 U_p^2

    so ``PLAIN = -sum d^2 / n``, ``FIRST_ORDER = PLAIN - 2 alpha sum dG / n`` (the jvp of the
    metric along ``G``) and ``LINEARIZED = -(sum d^2 + 2 alpha sum dG + alpha^2 sum G^2) / n``.
    For a ReLU the six products reduce to four, two matrix products (``F_p`` and ``H_p`` each
    against two child arrays), chosen at run time when the identities hold exactly
    (:func:`quadratic_parent_terms`). Exact algebra; in floating point the expansion cancels
    ``sum F^2`` against ``2 <F_p, F_c>``, so its absolute error is a small multiple of
    ``eps sum F^2`` rather than of ``eps sum d^2`` (the blocks are summed with compensation, so
    only the rounding within a block remains; tested against the elementwise form in float64,
    and the float32 error against that bound).

    Args:
      combos: ``(metric, mode)`` pairs, each metric :func:`quadratic`.
      parent: ``(F_p, U_p, H_p)``, each ``[K, N, D]``.
      parent_terms: :func:`quadratic_parent_terms` of ``parent``.
      child: ``(F_c, U_c)``, each ``[B, N, D]``.
      alpha: ``[A]``.

    Returns:
      Scores ``[len(combos), A, K, B]``.
    """
    f_c = child[0]
    n = math.prod(f_c.shape[1:])
    modes = {mode.value for _, mode in combos}
    needed = ["P1"]
    if modes - {"plain"}:
        needed += ["P2", "P3", "P4"]
    if "linearized" in modes:
        needed += ["P5", "P6"]
    branch = lambda relu: lambda: _products(needed, parent, child, relu=relu)
    prods = jax.lax.cond(parent_terms["relu"], branch(True), branch(False))
    axes = tuple(range(1, f_c.ndim))
    dd = parent_terms["ff"][:, None] + jnp.sum(f_c * f_c, axis=axes)[None, :] - 2 * prods["P1"]
    alpha = jnp.asarray(alpha, f_c.dtype)[:, None, None]
    out = {"plain": jnp.broadcast_to(-dd / n, (alpha.shape[0], *dd.shape))}
    dd = dd[None]
    if "P2" in prods:
        dg = (prods["P2"] - parent_terms["fhu"][:, None] - prods["P3"] + prods["P4"])[None]
        out["first_order"] = -(dd + 2 * alpha * dg) / n
    if "P5" in prods:
        gg = (prods["P5"] - 2 * prods["P6"] + parent_terms["hhuu"][:, None])[None]
        out["linearized"] = -(dd + alpha * (2 * dg + alpha * gg)) / n
    return jnp.stack([out[mode.value] for _, mode in combos])
