"""Atomic folder writes shared by the zoo, the detector and MGMP."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import uuid
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yields a temporary sibling of ``path`` to write into; on success it replaces ``path``.

    The sibling is named ``.tmp-<name>-<random>`` and is not created (an orbax
    checkpoint may be saved to it directly). If the block raises, or is
    interrupted, ``path`` is left as it was and the sibling is removed, so a
    reader never sees a half-written folder.
    """
    path = pathlib.Path(path).absolute()
    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
