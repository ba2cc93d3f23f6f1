"""The detector's shared names: its logger and the AUTO choice.

Part of :mod:`jaxlineage.detector`, which re-exports the public names.
"""

from __future__ import annotations

import enum
import logging
from typing import Any

log = logging.getLogger("jaxlineage.detector")

PyTree = Any


class Auto(enum.Enum):
    """Let the detector choose (a documented default per argument), e.g. ``weight_layer=AUTO``.

    * for a weight layer: the backbone kernel with the fewest entries (ties: the later one);
    * for a feature tap: the first tap (the first hidden layer).
    """

    AUTO = "auto"


#: Default for ``weight_layer`` / ``feature_tap``: see :class:`Auto`.
AUTO = Auto.AUTO
