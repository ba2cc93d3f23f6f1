"""jaxlineage: model lineage and provenance in JAX.

Was this model derived from that one, and how sure are we? Which of these candidates is
its parent, if any? :func:`verify` and :func:`identify` answer on your own models (a
:class:`Models` built from a linen / NNX module or any ``apply_fn(params, x)``) with
calibrated p-values. Underneath, three published methods on one substrate (pure apply
functions over pytrees): Neural Lineage (learning-free metrics linearised with
``jax.jvp``, and the learned Lineage Detector), Model DNA (MGMP) and ModelGiF.

Any pure apply function and two parameter trees give a lineage score:

    >>> import jax
    >>> from jaxlineage import linearize
    >>> def f(params, x):
    ...     return jax.nn.relu(x @ params["w"])
    >>> parent = {"w": jax.random.normal(jax.random.key(0), (8, 16))}
    >>> child = {"w": parent["w"] + 0.01}
    >>> x = jax.random.normal(jax.random.key(1), (32, 8))
    >>> s = linearize.pair_similarity("l2", f, parent, child, x, alpha=0.1, mode="first_order")
    >>> s.shape
    ()

Imports are lazy: ``import jaxlineage.linearize`` loads the metrics alone, not the zoo,
the evaluation layer, the detector or TFDS.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Submodules reachable as ``jaxlineage.<name>`` (imported on first access).
_MODULES = (
    "data",
    "detector",
    "errors",
    "eval",
    "graph",
    "lineage",
    "linearize",
    "mgmp",
    "modelgif",
    "models",
    "nets",
    "permutations",
    "references",
    "similarity",
    "verify",
    "zoo",
)

#: Names re-exported at the top level: ``name -> (module, attribute)``.
_NAMES = {
    "JaxlineageError": ("errors", "JaxlineageError"),
    "LineageGraph": ("graph", "LineageGraph"),
    "Relation": ("graph", "Relation"),
    "Mode": ("linearize", "Mode"),
    "taylor_features": ("linearize", "taylor_features"),
    "Network": ("nets", "Network"),
    "backbone": ("nets", "backbone"),
    "check_trees_match": ("nets", "check_trees_match"),
    "stack": ("nets", "stack"),
    "unstack": ("nets", "unstack"),
    "Zoo": ("zoo", "Zoo"),
    "ZooSpec": ("zoo", "ZooSpec"),
    "Models": ("models", "Models"),
    "ModelSet": ("models", "ModelSet"),
    "NO_PARENT": ("verify", "NO_PARENT"),
    "Verdict": ("verify", "Verdict"),
    "Identification": ("verify", "Identification"),
    "verify": ("verify", "verify"),
    "identify": ("verify", "identify"),
}

__all__ = [
    # modules (not "eval": `from jaxlineage import *` must not shadow the builtin; import it by name,
    # `from jaxlineage import eval as jl_eval`)
    *(m for m in _MODULES if m != "eval"),
    *_NAMES,
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        module = importlib.import_module(f"jaxlineage.{name}")
        globals()[name] = module
        return module
    if name in _NAMES:
        mod, attr = _NAMES[name]
        value = getattr(importlib.import_module(f"jaxlineage.{mod}"), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jaxlineage' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULES) | set(_NAMES))


if TYPE_CHECKING:  # static tools see the eager names
    from jaxlineage import (  # noqa: F401
        data,
        detector,
        errors,
        eval,
        graph,
        lineage,
        linearize,
        mgmp,
        modelgif,
        models,
        nets,
        permutations,
        similarity,
        zoo,
    )
