"""Private plumbing shared by ``linearize`` and ``lineage``.

Turns a user ``feature_fn(params, x)`` plus parent/child parameter trees into a
hashable, pruned feature function over *only the leaves the feature function
reads*, with the checks the public boundary promises:

* parent and child must agree (path, shape, dtype) on the used leaves; the
  first difference is reported by path with both shapes. Unused leaves (e.g.
  classifier heads of different tasks) may differ freely.
* parameters must be finite (checked when they are concrete, i.e. outside a
  user's ``jit``), and the offending path and model index are named.

Which leaves are used is read off the jaxpr of ``feature_fn`` (a leaf is used if
any equation reads it; calls to jitted sub-functions are followed), cached per
(feature_fn, tree structure, shapes, probe shape).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

from jaxlineage.errors import path_str

Array = jax.Array

_SUBJAXPR_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _used_invars(jaxpr: Any) -> list[bool]:
    """Which input variables of ``jaxpr`` are read by an equation or returned."""
    read: list[Any] = []
    for eqn in jaxpr.eqns:
        sub = None
        for name in _SUBJAXPR_PARAMS:
            cand = eqn.params.get(name)
            if cand is not None:
                sub = getattr(cand, "jaxpr", cand)
                break
        if sub is not None and hasattr(sub, "invars") and len(sub.invars) == len(eqn.invars):
            read.extend(v for v, used in zip(eqn.invars, _used_invars(sub)) if used)
        else:
            read.extend(eqn.invars)
    read.extend(jaxpr.outvars)
    read = {v for v in read if isinstance(v, jax_core.Var)}  # not literals
    return [v in read for v in jaxpr.invars]


def _struct(leaf: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(np.shape(leaf), jnp.result_type(leaf))


struct_of = _struct


@dataclasses.dataclass(frozen=True)
class PrunedFeatureFn:
    """``feature_fn`` as a function of its used leaves only; hashable by value.

    Calling it rebuilds the full tree with zero placeholders for unused leaves
    (which XLA removes as dead code) and flattens the output to ``[N, D]``.
    """

    feature_fn: Callable[[Any, Array], Array]
    treedef: Any
    used: tuple[bool, ...]
    structs: tuple[jax.ShapeDtypeStruct, ...]
    paths: tuple[str, ...]
    out_shape: tuple[int, ...]  # [N, D] after flattening, for the analysed probe

    @property
    def used_paths(self) -> tuple[str, ...]:
        return tuple(p for p, u in zip(self.paths, self.used) if u)

    @property
    def used_structs(self) -> tuple[jax.ShapeDtypeStruct, ...]:
        return tuple(s for s, u in zip(self.structs, self.used) if u)

    def __call__(self, used_leaves: Sequence[Array], x: Array) -> Array:
        it = iter(used_leaves)
        leaves = [next(it) if u else jnp.zeros(s.shape, s.dtype) for u, s in zip(self.used, self.structs)]
        tree = jax.tree_util.tree_unflatten(self.treedef, leaves)
        f = self.feature_fn(tree, x)
        return f.reshape(f.shape[0], -1)


@functools.lru_cache(maxsize=256)
def _analyse(
    feature_fn: Callable, treedef: Any, structs: tuple, paths: tuple, x_struct: jax.ShapeDtypeStruct
) -> PrunedFeatureFn:
    def flat_fn(leaves, x):
        return feature_fn(jax.tree_util.tree_unflatten(treedef, leaves), x)

    try:
        closed, out = jax.make_jaxpr(flat_fn, return_shape=True)(list(structs), x_struct)
    except Exception as e:  # the user's function failed on these shapes
        raise ValueError(
            f"feature_fn could not be applied to the parameters and to the probe batch"
            f" x of shape {x_struct.shape} ({x_struct.dtype}): {type(e).__name__}: {e}"
        ) from e
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(f"feature_fn must return one array [N, ...]; got the structure {out}.")
    n = x_struct.shape[0]
    if len(out.shape) < 2 or out.shape[0] != n:
        raise ValueError(
            f"feature_fn must return features [N, D...] with N = {n} (the probe batch"
            f" x has shape {x_struct.shape}); got shape {out.shape}."
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"feature_fn must return floating features; got dtype {out.dtype}.")
    used = _used_invars(closed.jaxpr)[: len(structs)]
    if not any(used):
        raise ValueError(
            "feature_fn does not read any parameter: every parent/child pair would have identical features."
        )
    d = int(np.prod(out.shape[1:]))
    return PrunedFeatureFn(feature_fn, treedef, tuple(used), structs, paths, (n, d))


def check_probe(x: Any) -> Array:
    """The probe batch as an array ``[N, ...]`` with ``N >= 1``."""
    try:
        x = x if isinstance(x, jax.Array) else jnp.asarray(x)
    except TypeError as e:
        raise TypeError(f"The probe batch x must be an array [N, ...]; got {type(x).__name__}.") from e
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"The probe batch x must have shape [N, ...] with N >= 1; got {x.shape}.")
    return x


def _flat_with_paths(tree: Any, name: str) -> tuple[list[str], list[Any], Any]:
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    if not path_leaves:
        raise ValueError(f"The {name} parameter tree has no leaves.")
    paths = [path_str(p) for p, _ in path_leaves]
    leaves = [leaf if isinstance(leaf, jax.Array) else jnp.asarray(leaf) for _, leaf in path_leaves]
    return paths, leaves, treedef


def analyse(
    feature_fn: Callable, reference: Any, x: Array, *, name: str, stacked: bool
) -> tuple[PrunedFeatureFn, list[Any], list[str]]:
    """Analyses ``feature_fn`` on the ``reference`` tree (stacked: leading model axis)."""
    if not callable(feature_fn):
        raise TypeError(f"feature_fn must be a callable f(params, x); got {feature_fn!r}.")
    paths, leaves, treedef = _flat_with_paths(reference, name)
    if stacked:
        sizes = {np.shape(l)[0] if np.ndim(l) else None for l in leaves}
        if None in sizes or len(sizes) != 1:
            bad = [(p, np.shape(l)) for p, l in zip(paths, leaves)]
            raise ValueError(
                f"The {name} stack must have one leading model axis of the same size on every"
                f" leaf; got leaf shapes {bad[:4]}{' ...' if len(bad) > 4 else ''}."
            )
        (size,) = sizes
        if size == 0:
            raise ValueError(f"The {name} stack is empty (leading model axis of size 0).")
        structs = tuple(jax.ShapeDtypeStruct(np.shape(l)[1:], jnp.result_type(l)) for l in leaves)
    else:
        structs = tuple(_struct(l) for l in leaves)
    pruned = _analyse(feature_fn, treedef, structs, tuple(paths), _struct(x))
    return pruned, leaves, paths


def select_used(pruned: PrunedFeatureFn, tree: Any, *, name: str, ref_name: str, stacked: bool) -> tuple[Array, ...]:
    """The leaves of ``tree`` at ``pruned``'s used paths, checked against the reference."""
    paths, leaves, _ = _flat_with_paths(tree, name)
    by_path = dict(zip(paths, leaves))
    out = []
    size = None
    for path, struct in zip(pruned.used_paths, pruned.used_structs):
        if path not in by_path:
            raise ValueError(
                f"The {name} parameters have no leaf at {path}, which feature_fn uses"
                f" ({ref_name} shape {struct.shape})."
            )
        leaf = by_path[path]
        shape = tuple(np.shape(leaf))
        if stacked:
            if len(shape) < 1 or (size is not None and shape[0] != size):
                raise ValueError(
                    f"The {name} stack must have one leading model axis on every leaf; got"
                    f" shape {shape} at {path} (other leaves: {size} models)."
                )
            size = shape[0]
            shape = shape[1:]
        if shape != tuple(struct.shape):
            raise ValueError(
                f"{ref_name.capitalize()} and {name} parameters differ at {path}:"
                f" {ref_name} shape {tuple(struct.shape)}, {name} shape {shape}."
            )
        if jnp.result_type(leaf) != struct.dtype:
            raise ValueError(
                f"{ref_name.capitalize()} and {name} parameters differ at {path}:"
                f" {ref_name} dtype {struct.dtype}, {name} dtype {jnp.result_type(leaf)}."
            )
        out.append(leaf)
    if stacked and size == 0:
        raise ValueError(f"The {name} stack is empty (leading model axis of size 0).")
    return tuple(out)


def is_concrete(tree: Any) -> bool:
    return not any(isinstance(l, jax.core.Tracer) for l in jax.tree_util.tree_leaves(tree))


def finite_rows(a: Array) -> Array:
    """Traceable: for each index of ``a``'s leading axis, whether all its values are finite.

    Sums each row first (on XLA:CPU a sum runs several times faster than ``all(isfinite(.))``); a finite
    sum means a finite row, and only when some sum is not finite (a NaN, an inf, or an overflow
    of finite values) are the rows checked value by value, so the answer is exact. Not for use
    under ``vmap`` (the ``cond`` would run both branches).
    """
    flat = a.reshape(a.shape[0], -1)
    ok = jnp.isfinite(jnp.sum(flat, axis=1))
    return jax.lax.cond(jnp.all(ok), lambda: ok, lambda: jnp.all(jnp.isfinite(flat), axis=1))


def leaf_flags(leaves: Sequence[Array], *, stacked: bool) -> tuple[Array, ...]:
    """Traceable: per floating leaf, whether it is finite (``[models]`` when stacked); ``()`` for others.

    Computed inside a caller's jitted core so that the check costs no dispatch of its own;
    :func:`raise_if_not_finite` reads the flags back.
    """
    out = []
    for l in leaves:
        if not jnp.issubdtype(l.dtype, jnp.inexact):
            out.append(jnp.ones((l.shape[0],) if stacked else (), bool))
        elif stacked:
            out.append(finite_rows(l))
        else:
            out.append(jnp.all(jnp.isfinite(l)))
    return tuple(out)


def raise_if_not_finite(flags: Sequence[Any], paths: Sequence[str], *, name: str, stacked: bool) -> None:
    """Raises ``ValueError`` naming the first leaf (and model index) whose :func:`leaf_flags` flag is false."""
    for path, ok in zip(paths, flags):
        ok = np.asarray(ok)
        if not ok.all():
            where = f"{name}[{int(np.argmin(ok))}]" if stacked else name
            raise ValueError(f"{where} has NaN or inf parameters at {path}.")


def pack(flags: Sequence[Array]) -> Array:
    """Traceable: boolean flags of any shapes as one vector, so the host reads them back in one transfer."""
    return jnp.concatenate([jnp.ravel(f) for f in flags]) if flags else jnp.ones((0,), bool)


def unpack(vector: Any, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """The inverse of :func:`pack` on the host, given the flags' shapes."""
    vector = np.asarray(vector)
    out, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        out.append(vector[start : start + size].reshape(shape))
        start += size
    return out


@functools.partial(jax.jit, static_argnames=("stacked",))
def _finite_flags_pair(p: tuple[Array, ...], c: tuple[Array, ...], stacked: bool) -> Array:
    return pack([*leaf_flags(p, stacked=stacked), *leaf_flags(c, stacked=stacked)])


def check_finite_pair(
    p: Sequence[Array], c: Sequence[Array], paths: Sequence[str], *, names: tuple[str, str], stacked: bool
) -> None:
    """Raises ``ValueError`` naming the first non-finite leaf (and model index) of either side.

    One dispatch and one read-back for both sides; skipped on traced values (inside a user's ``jit``).
    """
    p, c = tuple(p), tuple(c)
    if not is_concrete((p, c)):
        return
    flags = np.asarray(_finite_flags_pair(p, c, stacked))
    if flags.all():
        return
    shape = lambda l: (l.shape[0],) if stacked else ()
    parts = unpack(flags, [shape(l) for l in (*p, *c)])
    raise_if_not_finite(parts[: len(p)], paths, name=names[0], stacked=stacked)
    raise_if_not_finite(parts[len(p) :], paths, name=names[1], stacked=stacked)


#: Structure analyses of :func:`boundary`, most recent last (an LRU of ``_BOUNDARY_SIZE``).
_BOUNDARY: collections.OrderedDict = collections.OrderedDict()
_BOUNDARY_SIZE = 256


def _leaf_key(leaf: Any) -> tuple:
    if isinstance(leaf, (jax.Array, np.ndarray)):
        return leaf.shape, leaf.dtype, getattr(leaf, "weak_type", False)
    return np.shape(leaf), type(leaf)


def _select(leaves: Sequence[Any], index: tuple[int, ...]) -> tuple[Array, ...]:
    return tuple(l if isinstance(l, jax.Array) else jnp.asarray(l) for l in (leaves[i] for i in index))


def boundary(
    feature_fn: Any, parents: Any, children: Any, x: Any, *, stacked: bool, names: tuple[str, str]
) -> tuple[Any, tuple[Array, ...], tuple[Array, ...], Array]:
    """The structural half of :func:`prepare`, cached: ``(pruned, parent leaves, child leaves, probe)``.

    Every check that depends only on the trees' structure, the leaves' shapes and dtypes, the
    probe's shape and ``feature_fn`` (used leaves, matching paths / shapes / dtypes, stack
    sizes, the feature shape) runs once per such key; a later call with the same key flattens
    both trees, looks the key up and picks the used leaves by position. Values are not
    checked: callers compute :func:`leaf_flags` inside their jitted core and call
    :func:`raise_if_not_finite` on the result.
    """
    x = check_probe(x)
    p_leaves, p_def = jax.tree_util.tree_flatten(parents)
    c_leaves, c_def = jax.tree_util.tree_flatten(children)
    try:
        key = (
            feature_fn,
            stacked,
            names,
            p_def,
            tuple(_leaf_key(l) for l in p_leaves),
            c_def,
            tuple(_leaf_key(l) for l in c_leaves),
            x.shape,
            x.dtype,
            x.weak_type,
        )
        hit = _BOUNDARY.get(key)
    except TypeError:  # an unhashable feature_fn or leaf: the uncached analysis reports it
        key = hit = None
    if hit is None:
        hit = _analyse_boundary(feature_fn, parents, children, x, stacked=stacked, names=names)
        if key is not None:
            _BOUNDARY[key] = hit
            while len(_BOUNDARY) > _BOUNDARY_SIZE:
                _BOUNDARY.popitem(last=False)
    else:
        _BOUNDARY.move_to_end(key)
    pruned, p_index, c_index = hit
    return pruned, _select(p_leaves, p_index), _select(c_leaves, c_index), x


def _analyse_boundary(feature_fn, parents, children, x, *, stacked, names):
    """``(pruned, used parent leaf positions, used child leaf positions)``, with every structural check."""
    parent_name, child_name = names
    pruned, _, p_paths = analyse(feature_fn, parents, x, name=parent_name, stacked=stacked)
    select_used(pruned, parents, name=parent_name, ref_name=parent_name, stacked=stacked)
    select_used(pruned, children, name=child_name, ref_name=parent_name, stacked=stacked)
    c_paths, _, _ = _flat_with_paths(children, child_name)
    p_pos, c_pos = {p: i for i, p in enumerate(p_paths)}, {p: i for i, p in enumerate(c_paths)}
    return (
        pruned,
        tuple(p_pos[p] for p in pruned.used_paths),
        tuple(c_pos[p] for p in pruned.used_paths),
    )


def prepare(
    feature_fn: Any, parents: Any, children: Any, x: Any, *, stacked: bool, names: tuple[str, str]
) -> tuple[Any, tuple[Array, ...], tuple[Array, ...], Array]:
    """Checks the boundary once: ``(pruned feature fn, parent leaves, child leaves, probe)``.

    The probe is validated, the used leaves found on ``parents``, both sides
    restricted to them (``children`` must match ``parents`` there), and both
    checked for NaN / inf. ``names`` name the two sides in error messages.
    The structural part is cached (:func:`boundary`).
    """
    pruned, p, c, x = boundary(feature_fn, parents, children, x, stacked=stacked, names=names)
    check_finite_pair(p, c, pruned.used_paths, names=names, stacked=stacked)
    return pruned, p, c, x


def delta(child: Sequence[Array], parent: Sequence[Array]) -> tuple[Any, ...]:
    """``theta_c - theta_p`` leafwise; integer leaves get a symbolic-zero tangent."""
    out = []
    for c, p in zip(child, parent):
        if jnp.issubdtype(p.dtype, jnp.inexact):
            out.append(c - p)
        else:
            out.append(np.zeros(p.shape, dtype=jax.dtypes.float0))
    return tuple(out)
