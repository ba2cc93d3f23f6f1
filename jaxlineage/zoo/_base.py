"""Shared bits of the zoo package: its error class, enums for algorithm choices, the logger."""

from __future__ import annotations

import enum
import logging
from typing import Any

from jaxlineage.errors import JaxlineageError

__all__ = ["DistillMode", "HeadMode", "Optimizer", "PerturbKind", "PruneScope", "Role", "TrainParams", "ZooError"]

log = logging.getLogger("jaxlineage.zoo")
PyTree = Any


class ZooError(JaxlineageError):
    """A zoo cannot be built or read, or a spec is malformed; the message names the group, model, file or field."""


class Optimizer(enum.Enum):
    """The optimiser of a training operation (default ``ADAM``, as the classic zoos)."""

    ADAM = "adam"  #: optax.scale_by_adam, step ``-lr * direction``
    SGD = "sgd"  #: SGD with (PyTorch-style coupled) weight decay and heavy-ball momentum, as SAC's recipes


class TrainParams(enum.Enum):
    """Which parameters a fine-tune updates."""

    ALL = "all"
    HEAD = "head"  #: the classifier ``head`` only; the backbone (and BatchNorm statistics) stay bit-identical


class HeadMode(enum.Enum):
    """What a fine-tune does with the source's classifier head."""

    FRESH = "fresh"  #: a freshly initialised head (needed when the task, hence the output space, changes)
    KEEP = "keep"  #: the source's head (same number of classes)


class PruneScope(enum.Enum):
    """Where magnitude pruning ranks weights."""

    GLOBAL = "global"  #: one threshold over all prunable kernels together
    LAYER = "layer"  #: the target sparsity in every prunable kernel separately


class DistillMode(enum.Enum):
    """What a distilled student learns from its teacher."""

    SOFT = "soft"  #: KL at temperature T (weight alpha, times T^2) + CE on the teacher's argmax (weight 1 - alpha)
    LABEL = "label"  #: CE on the teacher's argmax only (label-only model extraction)


class Role(enum.Enum):
    """The classic zoo's roles (:class:`~jaxlineage.zoo.ZooSpec`), as :attr:`ModelRecord.role` stores them.

    A graph spec's groups may carry any role name (default: the group's name); these are the ones the
    classic zoo, its views (``Zoo.parents`` ...) and the evaluation layer's defaults use.
    """

    PARENT = "parent"  #: trained from scratch on the parent task; the candidates of Neural Lineage's question
    CHILD = "child"  #: fine-tuned from a parent on a child task
    GRANDCHILD = "grandchild"  #: fine-tuned from a child (second generation)
    INDEPENDENT = "independent"  #: trained from scratch on a child task; related to no parent


class PerturbKind(enum.Enum):
    """How ``perturb`` changes weights."""

    NOISE = "noise"  #: w + scale * std(w) * N(0, 1), per tensor
    INT8 = "int8"  #: symmetric per-tensor int8 rounding, round(w / s) * s with s = max|w| / 127


def enum_value(v: Any) -> Any:
    """An enum member as its value (what specs and records store); anything else unchanged."""
    return v.value if isinstance(v, enum.Enum) else v
