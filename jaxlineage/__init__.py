"""jaxlineage: model lineage and provenance in JAX.

Neural Lineage (learning-free metrics linearised with ``jax.jvp``, and the learned
Lineage Detector), Model DNA (MGMP) and ModelGiF on one substrate: pure
``apply_fn(params, x)`` functions over pytrees.

    >>> from jaxlineage import zoo, lineage
    >>> z = zoo.build(zoo.QUICK, "/tmp/zoo")
    >>> print(lineage.format_table(lineage.evaluate(z)))
"""

from jaxlineage import data, detector, lineage, linearize, mgmp, modelgif, nets, similarity, zoo
from jaxlineage.linearize import Mode, taylor_features
from jaxlineage.nets import Network, backbone, check_trees_match, stack, unstack
from jaxlineage.zoo import Zoo, ZooSpec

__version__ = "0.1.0"

__all__ = [
    # modules
    "data",
    "detector",
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
