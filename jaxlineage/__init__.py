"""jaxlineage: model lineage and provenance in JAX.

Neural Lineage (learning-free metrics linearised with ``jax.jvp``, and the learned
Lineage Detector), Model DNA (MGMP) and ModelGiF on one substrate: pure
``apply_fn(params, x)`` functions over pytrees.

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

A zoo of models with known lineage and the evaluation layer (:mod:`jaxlineage.eval`),
which asks every method and the trivial baselines the same question on the same
folds (minutes on a CPU)::

    from jaxlineage import zoo, eval as jl_eval
    print(jl_eval.table(jl_eval.run_zoo(zoo.build(zoo.QUICK, "/tmp/zoo"))))
"""

from jaxlineage import (  # noqa: A004, F401 (jaxlineage.eval: the evaluation layer, imported, not starred)
    data,
    detector,
    errors,
    eval,
    graph,
    lineage,
    linearize,
    mgmp,
    modelgif,
    nets,
    permutations,
    similarity,
    zoo,
)
from jaxlineage.errors import JaxlineageError
from jaxlineage.graph import LineageGraph, Relation
from jaxlineage.linearize import Mode, taylor_features
from jaxlineage.nets import Network, backbone, check_trees_match, stack, unstack
from jaxlineage.zoo import Zoo, ZooSpec

__version__ = "0.1.0"

__all__ = [
    # modules
    "data",
    "detector",
    "errors",
    # not "eval": `from jaxlineage import *` must not shadow the builtin; import it by name
    # (`from jaxlineage import eval as jl_eval`).
    "graph",
    "lineage",
    "linearize",
    "mgmp",
    "modelgif",
    "nets",
    "permutations",
    "similarity",
    "zoo",
    # the names used most often
    "JaxlineageError",
    "LineageGraph",
    "Mode",
    "Network",
    "Zoo",
    "Relation",
    "ZooSpec",
    "backbone",
    "check_trees_match",
    "stack",
    "taylor_features",
    "unstack",
    "__version__",
]
