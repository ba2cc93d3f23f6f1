"""Saving and restoring a trained detector (config JSON plus orbax variables).

Part of :mod:`jaxlineage.detector`, which re-exports the public names.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import jax.numpy as jnp

from jaxlineage._io import atomic_dir
from jaxlineage.detector._model import module_config, module_from_config
from jaxlineage.detector._training import Detector

_CONFIG_FILE = "detector.json"
_VARIABLES_DIR = "variables"


def save(path: str | os.PathLike, detector: Detector, *, metadata: dict | None = None) -> None:
    """Writes ``detector`` to the folder ``path`` atomically: orbax variables plus a JSON config.

    Args:
      path: target folder (replaced if it exists).
      detector: what to save (history and best epoch included).
      metadata: extra JSON-serialisable facts to keep (e.g. the weight layer and tap).
    """
    import orbax.checkpoint as ocp

    path = pathlib.Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(path) as tmp:
        tmp.mkdir()
        ckpt = ocp.StandardCheckpointer()
        ckpt.save(tmp / _VARIABLES_DIR, jax.device_get(detector.variables))
        ckpt.wait_until_finished()
        (tmp / _CONFIG_FILE).write_text(
            json.dumps(
                dict(
                    module=module_config(detector.module),
                    history=list(detector.history),
                    best_epoch=detector.best_epoch,
                    metadata=metadata or {},
                ),
                indent=1,
            )
        )


def restore(path: str | os.PathLike) -> tuple[Detector, dict]:
    """Reads a detector written by :func:`save`; returns ``(detector, metadata)``.

    Raises:
      FileNotFoundError: ``path`` holds no saved detector.
    """
    import orbax.checkpoint as ocp

    path = pathlib.Path(path).absolute()
    if not (path / _CONFIG_FILE).exists() or not (path / _VARIABLES_DIR).is_dir():
        raise FileNotFoundError(f"{path} holds no saved detector ({_CONFIG_FILE} and {_VARIABLES_DIR}/ expected)")
    config = json.loads((path / _CONFIG_FILE).read_text())
    variables = jax.tree.map(jnp.asarray, ocp.StandardCheckpointer().restore(path / _VARIABLES_DIR))
    det = Detector(
        module=module_from_config(config["module"]),
        variables=variables,
        history=tuple(config["history"]),
        best_epoch=int(config["best_epoch"]),
    )
    return det, config["metadata"]
