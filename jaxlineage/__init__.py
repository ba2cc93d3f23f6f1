"""jaxlineage: model lineage and provenance in JAX.

Neural Lineage (learning-free and the Lineage Detector), Model DNA (MGMP) and
ModelGiF on one substrate of pure apply functions over pytrees.
"""

from jaxlineage import data, nets, zoo
from jaxlineage.nets import Network, backbone, check_trees_match, stack, unstack
from jaxlineage.zoo import Zoo, ZooSpec

__version__ = "0.1.0"

__all__ = [
    "data",
    "nets",
    "zoo",
    "Network",
    "Zoo",
    "ZooSpec",
    "backbone",
    "check_trees_match",
    "stack",
    "unstack",
    "__version__",
]
