"""Shared helpers for the benchmarks: timing, JSON output, logging, zoo variants.

Scripts import this file from their own folder (``python benchmarks/x.py`` puts that folder first on
``sys.path``); the environment record is the package's own, :func:`jaxlineage.bench.stages.environment`
(the bench writes the same fields).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import statistics
import time
from collections.abc import Callable

import jax

from jaxlineage import zoo
from jaxlineage.bench.stages import environment

__all__ = ["environment", "parse_floats", "quick_variant", "setup_logging", "timeit", "write"]


def setup_logging() -> None:
    """INFO log lines with timestamps (progress and ETA of long stages); absl (orbax) quieted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every checkpoint read


def quick_variant(*, child_seeds: int | None = None, child_lrs: tuple[float, ...] | None = None) -> zoo.ZooSpec:
    """``zoo.QUICK`` with other fine-tuning seeds (``range(child_seeds)``) and / or learning rates.

    Everything else (parents, heads, epochs, floor, independents) is ``QUICK``'s; with
    neither argument changed this is ``QUICK`` itself, so its workdirs are reused.
    """
    children, name = zoo.QUICK.children, zoo.QUICK.name
    if child_seeds is not None and tuple(range(child_seeds)) != children.seeds:
        children = dataclasses.replace(children, seeds=tuple(range(child_seeds)))
        name += f"_{child_seeds}_child_seeds"
    if child_lrs is not None and tuple(child_lrs) != children.lrs:
        children = dataclasses.replace(children, lrs=tuple(float(v) for v in child_lrs))
        name += "_child_lrs_" + "_".join(f"{v:g}" for v in children.lrs)
    return dataclasses.replace(zoo.QUICK, name=name, children=children)


def parse_floats(text: str) -> tuple[float, ...] | None:
    """``"1e-3,5e-4"`` -> ``(0.001, 0.0005)``; empty -> ``None``."""
    return tuple(float(v) for v in text.split(",")) if text else None


def timeit(fn: Callable[[], object], *, repeats: int = 3, warmup: int = 1) -> dict:
    """Median wall time of ``fn`` (results blocked on) after ``warmup`` untimed calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "times_s": times}


def write(path: str | os.PathLike, record: dict) -> None:
    """Appends ``record`` (plus the environment) as one JSON line and prints it."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "env": environment(), **record}
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=1))


def fresh_draw(spec, seed: int):
    """``spec`` (a zoo spec), or with a non-zero ``seed`` a fresh draw of it: the salt enters every model's keys
    and data order, and the name says which draw (``<name>_seed<seed>``)."""
    return dataclasses.replace(spec, name=f"{spec.name}_seed{seed}", seed=seed) if seed else spec
