"""Saving and restoring a trained Model DNA state.

Part of :mod:`jaxlineage.mgmp`, which re-exports the public names.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib

import jax
import jax.numpy as jnp

from jaxlineage._io import atomic_dir
from jaxlineage.mgmp._common import MGMPError
from jaxlineage.mgmp._model import Config, State, init

_STATE_DIR = "state"
_META_FILE = "mgmp.json"


def save(path: str | os.PathLike, state: State) -> None:
    """Writes ``state`` atomically with orbax: a checkpoint plus ``mgmp.json`` (config, shapes).

    The folder is written under a temporary sibling name and renamed into place.
    """
    import orbax.checkpoint as ocp

    tree = {
        "params": state.params,
        "opt_state": state.opt_state,
        "step": state.step,
        "x": state.x,
        "source_outputs": state.source_outputs,
    }
    meta = {
        "config": state.config.to_json(),
        "x_shape": list(state.x.shape),
        "x_dtype": str(state.x.dtype),
        "num_outputs": int(state.source_outputs.shape[-1]),
    }
    with atomic_dir(path) as tmp:
        tmp.mkdir(parents=True)
        ckpt = ocp.StandardCheckpointer()
        ckpt.save(tmp / _STATE_DIR, jax.device_get(tree))
        ckpt.wait_until_finished()
        (tmp / _META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))


def restore(path: str | os.PathLike) -> State:
    """Reads a :class:`State` written by :func:`save` (optimiser state included).

    Raises:
        MGMPError: a missing or unreadable checkpoint (naming the path).
    """
    import orbax.checkpoint as ocp

    path = pathlib.Path(path).absolute()
    if not (path / _META_FILE).exists():
        raise MGMPError(f"{path} holds no MGMP state (no {_META_FILE})")
    try:
        meta = json.loads((path / _META_FILE).read_text())
        config = Config.from_json(meta["config"])
        x = jax.ShapeDtypeStruct(tuple(meta["x_shape"]), jnp.dtype(meta["x_dtype"]))
        ys = jax.ShapeDtypeStruct((x.shape[0], meta["num_outputs"]), jnp.float32)
        template = jax.eval_shape(functools.partial(init, config, key=jax.random.key(0)), x, ys)
        tree = {
            "params": template.params,
            "opt_state": template.opt_state,
            "step": template.step,
            "x": template.x,
            "source_outputs": template.source_outputs,
        }
        restored = ocp.StandardCheckpointer().restore(path / _STATE_DIR, tree)
    except Exception as e:
        raise MGMPError(f"cannot restore an MGMP state from {path}: {type(e).__name__}: {e}") from e
    return State(config=config, **jax.tree.map(jnp.asarray, restored))
