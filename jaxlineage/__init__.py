"""jaxlineage: model lineage and provenance in JAX.

Neural Lineage (learning-free metrics linearised with ``jax.jvp``, and the learned
Lineage Detector), Model DNA (MGMP) and ModelGiF on one substrate: pure
``apply_fn(params, x)`` functions over pytrees.

    >>> from jaxlineage import zoo, lineage
    >>> z = zoo.build(zoo.QUICK, "/tmp/zoo")
    >>> print(lineage.format_table(lineage.evaluate(z)))

The evaluation layer (:mod:`jaxlineage.eval`) asks any method and the trivial
baselines the same question on the same folds::

    >>> from jaxlineage import eval as jl_eval
    >>> print(jl_eval.table(jl_eval.run_zoo(z)))   # learning-free table + baselines
"""

from jaxlineage import data, detector, eval, lineage, linearize, mgmp, modelgif, nets, similarity, zoo  # noqa: A004
from jaxlineage.linearize import Mode, taylor_features
from jaxlineage.nets import Network, backbone, check_trees_match, stack, unstack
from jaxlineage.zoo import Zoo, ZooSpec

__version__ = "0.1.0"

__all__ = [
    # modules
    "data",
    "detector",
    "eval",
    "lineage",
    "linearize",
    "mgmp",
    "modelgif",
    "nets",
    "similarity",
    "zoo",
    # the names used most often
    "Mode",
    "Network",
    "Zoo",
    "ZooSpec",
    "backbone",
    "check_trees_match",
    "stack",
    "taylor_features",
    "unstack",
    "__version__",
]
