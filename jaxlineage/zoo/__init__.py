"""Model zoos as lineage graphs: populations of networks with known derivations.

A zoo is a graph of **groups** (:class:`GraphSpec`). A group applies one
**operation** to every kept model of its source group (or to nothing, for
training from scratch) over a hyper-parameter grid, optionally keeping the top
``k`` by test accuracy or those above an accuracy floor. Operations live in one
registry (:data:`OPERATIONS`, extend it with :func:`register_op`): ``train``,
``finetune`` (all / head only; keep the head or a fresh one), ``prune``
(magnitude, exact sparsity, masked repair), ``distill`` (soft or label-only, any
student architecture), ``permute`` (hidden units; same function), ``perturb``
(Gaussian noise, int8 rounding).

Every model records its group, operation, parent, generation, task,
architecture, hyper-parameters, test accuracy and fidelity to its parent;
:attr:`Zoo.graph` is the :class:`jaxlineage.graph.LineageGraph` (parents,
ancestors, descendants, roots, relation; roots carry init keys so shared
initialisations are known).

Models of one group that share the operation's static hyper-parameters are made
**together**: one jitted epoch (``lax.scan`` over steps) ``vmap``-ed over the
population, with per-model learning rates, data orders and initialisations.
Each finished model is written atomically (orbax checkpoint, then its JSON
record); a killed build resumes where it stopped.

Specs (:mod:`jaxlineage.zoo.specs`): ``TINY`` (tests), ``QUICK`` (Neural
Lineage's question; the classic :class:`ZooSpec` shape, compiled to groups
``parent`` / ``child`` / ``independent``), ``PAPER_FC``, ``PROVENANCE_QUICK``
(SAC / ModelGiF's IP-protection benchmark), ``DNA_QUICK`` (Model DNA's
protocol) and ``TREE_QUICK`` (lineage-tree recovery: 4 roots, 3 generations).

Usage::

    z = zoo.build(zoo.PROVENANCE_QUICK, "/tmp/pq")     # minutes on 2 CPU cores; resumable
    z = zoo.Zoo.open("/tmp/pq")                        # later
    victims = z.group("src_mlp")
    suspects = z.models(tag="positive") + z.models(tag="negative")
    truth = [[z.graph.is_ancestor(v.id, s.id) for s in suspects] for v in victims]

    python -m jaxlineage.zoo --spec provenance_quick --workdir /tmp/pq
"""

from jaxlineage import nets_lm as _nets_lm  # noqa: F401 (registers the "transformer_lm" architecture)
from jaxlineage.zoo import ops, spec, specs, storage, training
from jaxlineage.zoo._base import (
    DistillMode,
    HeadMode,
    Optimizer,
    PerturbKind,
    PruneScope,
    Role,
    TrainParams,
    ZooError,
)
from jaxlineage.zoo.build import MANIFEST, SPEC_FILE, ModelRecord, Zoo, build, task_arrays
from jaxlineage.zoo.ops import (
    OPERATIONS,
    Operation,
    OpInput,
    PermAxis,
    get_op,
    magnitude_prune,
    permutation_spec,
    permute_params,
    register_op,
)
from jaxlineage.zoo.report import draw_graph, format_summary, main
from jaxlineage.zoo.spec import GraphSpec, Grid, Group, Task, ZooSpec, spec_from_json
from jaxlineage.zoo.specs import (
    DNA_QUICK,
    LM_QUICK,
    LM_TINY,
    PAPER_FC,
    PROVENANCE,
    PROVENANCE_QUICK,
    PROVENANCE_TINY,
    QUICK,
    SPECS,
    TINY,
    TREE_QUICK,
)
from jaxlineage.zoo.storage import load_params, save_params
from jaxlineage.zoo.training import (
    Distillation,
    OptimizerConfig,
    population_accuracy,
    population_logits,
    train_population,
)

__all__ = [
    # specs
    "DNA_QUICK",
    "LM_QUICK",
    "LM_TINY",
    "PAPER_FC",
    "PROVENANCE",
    "PROVENANCE_QUICK",
    "PROVENANCE_TINY",
    "QUICK",
    "SPECS",
    "TINY",
    "TREE_QUICK",
    "GraphSpec",
    "Grid",
    "Group",
    "Task",
    "ZooSpec",
    "spec_from_json",
    # operations
    "OPERATIONS",
    "Operation",
    "OpInput",
    "PermAxis",
    "get_op",
    "magnitude_prune",
    "permutation_spec",
    "permute_params",
    "register_op",
    "DistillMode",
    "HeadMode",
    "Optimizer",
    "PerturbKind",
    "PruneScope",
    "Role",
    "TrainParams",
    # building and reading
    "MANIFEST",
    "SPEC_FILE",
    "ModelRecord",
    "Zoo",
    "ZooError",
    "build",
    "task_arrays",
    "load_params",
    "save_params",
    "population_accuracy",
    "population_logits",
    "train_population",
    "Distillation",
    "OptimizerConfig",
    "draw_graph",
    "format_summary",
    "main",
    # submodules
    "ops",
    "spec",
    "specs",
    "storage",
    "training",
]
