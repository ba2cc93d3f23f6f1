"""Model DNA's shared names: its error and the network types.

Part of :mod:`jaxlineage.mgmp`, which re-exports the public names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from jaxlineage.errors import JaxlineageError

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]
Network = tuple[ApplyFn, PyTree]


class MGMPError(JaxlineageError):
    """Bad input at the public boundary; the message names the model, shape or field."""
