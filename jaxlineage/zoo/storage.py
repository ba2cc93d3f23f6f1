"""Zoo storage: orbax checkpoints written atomically, JSON written atomically."""

from __future__ import annotations

import json
import os
import pathlib
import uuid

import jax
import jax.numpy as jnp
import numpy as np

from jaxlineage._io import atomic_dir
from jaxlineage.errors import path_str
from jaxlineage.zoo._base import PyTree, ZooError

__all__ = ["load_params", "save_params"]


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def save_params(path: str | os.PathLike, params: PyTree) -> None:
    """Writes ``params`` atomically: an orbax checkpoint in a temporary sibling, renamed into place."""
    ckpt = _checkpointer()
    with atomic_dir(path) as tmp:
        ckpt.save(tmp, jax.device_get(params))
        ckpt.wait_until_finished()


def load_params(path: str | os.PathLike) -> PyTree:
    """Reads a checkpoint written by :func:`save_params`; a missing or corrupt one raises :class:`ZooError`."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise ZooError(f"checkpoint {path} is missing")
    try:
        tree = _checkpointer().restore(path.absolute())
    except Exception as e:
        raise ZooError(f"checkpoint {path} is corrupt or unreadable: {type(e).__name__}: {e}") from e
    check_finite(tree, str(path))
    return jax.tree.map(jnp.asarray, tree)


def check_finite(tree, what):
    """Raises :class:`ZooError` naming ``what`` and the first leaf path with a NaN or inf."""
    for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not np.all(np.isfinite(np.asarray(leaf))):
            raise ZooError(f"{what}: non-finite values at {path_str(p)}")


def write_json(path: pathlib.Path, obj) -> None:
    """Writes JSON to a temporary sibling and renames it into place (readers never see half a file)."""
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)
