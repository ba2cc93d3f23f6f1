"""The one base class of jaxlineage's errors.

Every error the library raises on purpose derives from :class:`JaxlineageError`,
which is a :class:`ValueError` (bad input is the usual cause), so
``except jaxlineage.JaxlineageError`` catches all of them and existing
``except ValueError`` code keeps working.
"""

from __future__ import annotations

__all__ = ["JaxlineageError", "path_str"]


class JaxlineageError(ValueError):
    """Base class of the errors jaxlineage raises; the message names the offending model, path or field."""


def path_str(path) -> str:
    """The one format of parameter-tree paths in jaxlineage's messages: ``params/dense1/kernel``.

    Args:
      path: a key path from ``jax.tree_util.tree_flatten_with_path`` (dict keys,
        sequence indices, attribute names).
    """
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)
