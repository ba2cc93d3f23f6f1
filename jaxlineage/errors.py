"""The one base class of jaxlineage's errors.

Every error the library raises on purpose derives from :class:`JaxlineageError`,
which is a :class:`ValueError` (bad input is the usual cause), so
``except jaxlineage.JaxlineageError`` catches all of them and existing
``except ValueError`` code keeps working.
"""

from __future__ import annotations

__all__ = ["JaxlineageError"]


class JaxlineageError(ValueError):
    """Base class of the errors jaxlineage raises; the message names the offending model, path or field."""
