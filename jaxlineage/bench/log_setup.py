"""Console output of the bench: jaxlineage's own progress lines, without orbax/absl INFO spam."""

from __future__ import annotations

import logging
import sys

__all__ = [
    "ensure_handler",
    "quiet",
]

_HANDLER_NAME = "jaxlineage.bench"


def quiet(level: int = logging.INFO) -> None:
    """Shows ``jaxlineage.*`` log lines at ``level`` on stderr; silences other libraries below WARNING.

    orbax logs every checkpoint save and restore at INFO through absl logging;
    jax logs compilation details. Those go to WARNING, jaxlineage's progress and
    data-source lines stay visible. Idempotent.
    """
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("absl", "orbax", "jax", "etils", "tensorflow_datasets"):
        logging.getLogger(name).setLevel(logging.WARNING)
    ours = logging.getLogger("jaxlineage")
    ours.setLevel(level)
    if not any(getattr(h, "name", None) == _HANDLER_NAME for h in ours.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.name = _HANDLER_NAME
        h.setFormatter(logging.Formatter("[jaxlineage] %(message)s"))
        ours.addHandler(h)
    ours.propagate = False


def ensure_handler(level: int = logging.INFO) -> None:
    """Makes ``jaxlineage.*`` INFO lines visible (stderr) when nothing else handles them, e.g. in a notebook."""
    ours = logging.getLogger("jaxlineage")
    if ours.level == logging.NOTSET or ours.level > level:
        ours.setLevel(level)
    if not ours.handlers and not logging.getLogger().handlers:
        h = logging.StreamHandler(sys.stderr)
        h.name = _HANDLER_NAME
        h.setFormatter(logging.Formatter("[jaxlineage] %(message)s"))
        ours.addHandler(h)
