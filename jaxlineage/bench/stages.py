"""The bench's stages: importable functions, each returning a JSON-able dict.

One stage per method: :func:`evaluate` asks the preset's scenarios of the
method's scorers (:class:`~jaxlineage.bench.presets.ScorerSpec`) through
:mod:`jaxlineage.eval`, returning :class:`~jaxlineage.eval.Result` s, from which
:mod:`jaxlineage.bench.report` builds the tables and :mod:`jaxlineage.bench.plots`
the figures. Sections (:data:`SECTIONS`: provenance, Model DNA's protocol) ask
their question on a zoo of their own. Scorer modules are imported lazily, so a
missing or broken one costs only its own stage (:class:`MethodUnavailable`).

Usage in a notebook::

    from jaxlineage import zoo
    from jaxlineage.bench import presets, stages
    z = zoo.build(zoo.QUICK, "/tmp/zoo")
    p = presets.QUICK
    out = stages.evaluate(z, method="modelgif", preset=p, scenarios=stages.ScenarioCache(z, p))
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import logging
import os
import pathlib
import platform
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxlineage import data as data_lib
from jaxlineage import zoo as zoo_lib
from jaxlineage.eval import metrics as metrics_lib
from jaxlineage.eval.core import GridScorer

__all__ = [
    "BenchError",
    "MethodUnavailable",
    "PROVENANCE_METRICS",
    "SECTIONS",
    "ScenarioCache",
    "build_zoo",
    "check_data",
    "describe_source",
    "dna",
    "environment",
    "evaluate",
    "provenance",
    "resolve",
    "to_json",
]

log = logging.getLogger("jaxlineage.bench")


class BenchError(RuntimeError):
    """A user-facing problem (bad preset, unwritable folder, missing data); the message says what to do."""


class MethodUnavailable(BenchError):
    """A method module is missing from this installation."""


# --------------------------------------------------------------------------- JSON


def to_json(x: Any) -> Any:
    """Numbers, arrays, dataclasses, enums and mappings -> plain JSON types (non-finite floats -> None)."""
    if isinstance(x, Mapping):
        return {str(k): to_json(v) for k, v in x.items()}
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return to_json(dataclasses.asdict(x))
    if isinstance(x, enum.Enum):
        return to_json(x.value)
    if isinstance(x, (str, bool)) or x is None:
        return x
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, (np.ndarray, jax.Array)) or hasattr(x, "__array__"):
        a = np.asarray(x)
        if a.dtype == bool:
            return a.tolist()
        if np.issubdtype(a.dtype, np.integer):
            return a.tolist()
        if np.issubdtype(a.dtype, np.floating):
            return to_json(a.astype(np.float64).tolist()) if a.ndim else to_json(float(a))
        return a.tolist()
    if isinstance(x, (list, tuple)):
        return [to_json(v) for v in x]
    if isinstance(x, pathlib.PurePath):
        return str(x)
    return repr(x)


# --------------------------------------------------------------------------- environment and data


def environment() -> dict:
    """Versions, device and machine, recorded next to the numbers."""
    import importlib.metadata

    import flax
    import optax

    import jaxlineage

    def version(mod):
        try:
            return importlib.import_module(mod).__version__
        except Exception:  # noqa: BLE001 - optional packages
            return None

    devs = jax.devices()
    return {
        "jaxlineage": getattr(jaxlineage, "__version__", None) or importlib.metadata.version("jaxlineage"),
        "jax": jax.__version__,
        "jaxlib": version("jaxlib"),
        "flax": flax.__version__,
        "optax": optax.__version__,
        "orbax_checkpoint": version("orbax.checkpoint"),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "device": f"{devs[0].platform}:{getattr(devs[0], 'device_kind', '')}",
        "device_count": len(devs),
        "cpu_count": os.cpu_count(),
    }


def describe_source(source: str) -> str:
    if source == "embedded":
        return (
            "the embedded Fashion-MNIST subset shipped with jaxlineage"
            " (offline; 1000 train / 200 test images per class)"
        )
    if source == "tfds":
        return "TFDS (tfds.data_source, prepared data dir)"
    if source.startswith("local:"):
        return f"local raw files in {source[len('local:') :]}"
    return source


def check_data(spec: zoo_lib.ZooSpec, *, download: bool = False) -> list[dict]:
    """Loads every dataset the zoo's tasks need, before anything is trained, and says where each comes from.

    Args:
      spec: the zoo spec.
      download: let TFDS download and prepare missing datasets (network).

    Returns:
      One dict per (dataset, split): ``dataset``, ``split``, ``source``, ``examples``, ``tasks``.

    Raises:
      BenchError: a dataset is not available; the message names the offline options.
    """
    tasks: dict[str, list[str]] = {}
    for t in (spec.parent_task, *spec.child_tasks):
        tasks.setdefault(t.dataset, []).append(t.name)
    out = []
    for name, task_names in tasks.items():
        for split in data_lib.SPLITS:
            try:
                ds = data_lib.load(name, split, download=download)
            except data_lib.DataError as e:
                hint = (
                    ""
                    if download
                    else (
                        " Or rerun with --download to let TFDS fetch it (network), or use the offline"
                        " presets (quick, tiny, cnn) on the embedded data."
                    )
                )
                raise BenchError(f"data for zoo {spec.name!r}, task(s) {task_names}: {e}{hint}") from e
            out.append(dict(dataset=name, split=split, source=ds.source, examples=len(ds), tasks=task_names))
    for name in tasks:
        srcs = sorted({d["source"] for d in out if d["dataset"] == name})
        log.info(
            "data: %s (tasks %s) from %s", name, ", ".join(tasks[name]), "; ".join(describe_source(s) for s in srcs)
        )
    return out


# --------------------------------------------------------------------------- zoo


def build_zoo(
    spec: zoo_lib.ZooSpec, workdir: str | os.PathLike, *, rebuild: bool = False, progress: bool | None = None
) -> tuple[zoo_lib.Zoo, dict]:
    """Builds the zoo or reuses the cached one in ``workdir``.

    Returns:
      ``(zoo, info)``; ``info`` counts the models ``trained`` in this call and the
      ones ``reused`` from the cache, and lists the kept models' accuracies.

    Raises:
      BenchError: ``workdir`` holds a zoo of another spec and ``rebuild`` is false.
    """
    workdir = pathlib.Path(workdir).expanduser()
    spec_file = workdir / zoo_lib.SPEC_FILE
    rebuilt = False
    if spec_file.exists():
        import json

        try:
            old = json.loads(spec_file.read_text())
        except ValueError:
            old = None
        if old != spec.to_json():
            name = old.get("name") if isinstance(old, dict) else None
            if not rebuild:
                raise BenchError(
                    f"refusing to use --workdir {workdir}: it holds a zoo of another spec ({name!r}, different "
                    f"settings) than preset zoo {spec.name!r}. Pass another --workdir, or --rebuild to delete "
                    "that zoo and build this one there."
                )
            log.warning(
                "zoo: %s holds a zoo of another spec (%r); --rebuild given: deleting it and rebuilding", workdir, name
            )
            rebuilt = True
    models = workdir / "models"
    before = {p.stem for p in models.glob("*.json")} if models.is_dir() and not rebuilt else set()
    try:
        z = zoo_lib.build(spec, workdir, progress=progress, overwrite=rebuild)
    except zoo_lib.ZooError as e:
        raise BenchError(f"zoo {spec.name!r} in {workdir}: {e}") from e
    ids = {r.id for r in z.records}
    trained = len(ids - before)
    info = {
        "workdir": str(workdir),
        "spec_name": spec.name,
        "rebuilt": rebuilt,
        "trained": trained,
        "reused": len(ids & before),
        "counts": {
            "parents": len(z.parents),
            "children": len(z.children),
            "independents": len(z.independents),
            "grandchildren": len(z.grandchildren),
            "stored": len(z.records),
        },
        "accuracy": {
            role: _summary([r.test_acc for r in z.records if r.role == role and r.kept])
            for role in ("parent", "child", "independent", "grandchild")
            if any(r.role == role and r.kept for r in z.records)
        },
    }
    return z, info


def _summary(v: Sequence[float]) -> dict:
    a = np.asarray(v, np.float64)
    return {"n": int(a.size), "min": float(a.min()), "mean": float(a.mean()), "max": float(a.max())}


# --------------------------------------------------------------------------- methods


def resolve(spec: Any) -> list:
    """The scorers of a :class:`~jaxlineage.bench.presets.ScorerSpec`: ``factory(**kwargs)`` as a list.

    Raises:
      MethodUnavailable: the factory's module is missing from this installation.
    """
    factory = spec.factory
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                raise MethodUnavailable(f"{spec.method}: module {module} is not available in this installation") from e
            raise
        try:
            factory = getattr(mod, attr)
        except AttributeError:
            raise MethodUnavailable(f"{spec.method}: {module} has no {attr}") from None
    made = factory(**dict(spec.kwargs))
    return list(made) if isinstance(made, (list, tuple)) else [made]


class ScenarioCache:
    """The bench's scenarios, built once per (scenario, task) and shared by every method of a run."""

    def __init__(self, zoo: zoo_lib.Zoo, preset: Any):
        self.zoo, self.preset = zoo, preset
        self._built: dict = {}
        self.wall_s: dict[str, float] = {}
        from jaxlineage.eval import protocols

        #: Learning-free grids shared by the scenarios (verify reuses identify's pairs).
        self.grids = protocols.GridCache()

    def tasks(self) -> list[str]:
        return [t.name for t in self.zoo.spec.child_tasks]

    def get(self, spec: Any, task: str):
        from jaxlineage.eval import scenarios

        key = (spec.name, task)
        if key not in self._built:
            t0 = time.time()
            kwargs = {"probe_size": self.preset.probe_size, **dict(spec.kwargs), "task": task}
            fn = scenarios.identify if spec.question == "identify" else scenarios.verify
            self._built[key] = fn(self.zoo, name=f"{spec.name}/{task}", **kwargs)
            self.wall_s[f"{spec.name}/{task}"] = time.time() - t0
            log.info(
                "scenario %s/%s: %d candidates x %d queries built in %.1fs",
                spec.name,
                task,
                len(self._built[key].candidates),
                len(self._built[key].queries),
                time.time() - t0,
            )
        return self._built[key]


def evaluate(zoo: zoo_lib.Zoo, *, method: str, preset: Any, scenarios: ScenarioCache, seed: int = 0) -> dict:
    """One method's scorers asked the preset's scenarios (per child task) through :mod:`jaxlineage.eval`.

    Every scorer of every method sees the same scenarios and the same folds
    (``key = jax.random.key(seed)``), so the rows of a table are paired; a
    :class:`~jaxlineage.bench.presets.ScorerSpec` with ``scenarios`` or ``questions`` is
    asked only those (the others are listed in ``not_asked``). The learning-free results on
    the first task's first *identify* scenario keep their score grids (for Fig. 3a
    / 3b), and the preset's ``alpha_sweep`` adds accuracy-vs-alpha results on it;
    the preset's ``reference_sweep`` adds ModelGiF's AUC by reference count on
    every *verify* scenario (:func:`jaxlineage.eval.methods.reference_sweep`).
    Both sweeps are diagnostics over all queries, without folds.

    Returns:
      ``{"results": [Result.to_json()], "alpha_sweep": [Result.to_json()], "reference_sweep": [...],
      "not_asked": [{"label", "scorer", "scenario", "task", "asked"}], "scorers": [names]}``;
      each result's ``details`` carries ``method``, ``label``, ``scenario`` (the spec's name) and ``task``.
    """
    from jaxlineage import eval as eval_lib

    specs = preset.scorer_specs(method)
    labelled = [(spec.label or method, s, spec) for spec in specs for s in resolve(spec)]
    out: dict = {
        "results": [],
        "alpha_sweep": [],
        "reference_sweep": [],
        "not_asked": [],
        "scorers": [s.name for _, s, _ in labelled],
    }
    tasks = scenarios.tasks()
    figures_on = next(((sc, tasks[0]) for sc in preset.scenarios if sc.question == "identify"), None)
    for task in tasks:
        for sc in preset.scenarios:
            asked = [(label, s) for label, s, spec in labelled if spec.asks(sc)]
            out["not_asked"] += [
                {
                    "label": label,
                    "scorer": s.name,
                    "scenario": sc.name,
                    "task": task,
                    "asked": [x.name for x in preset.scenarios if spec.asks(x)],
                }
                for label, s, spec in labelled
                if not spec.asks(sc)
            ]
            if not asked:
                continue
            scen = scenarios.get(sc, task)
            t0 = time.time()
            keep = method == "learning_free" and (sc, task) == figures_on
            results = eval_lib.run_all(
                scen,
                [s for _, s in asked],
                key=jax.random.key(seed),
                num_folds=preset.num_folds,
                keep_scores=keep,
                cache=scenarios.grids,
            )
            for (label, _), r in zip(asked, results):
                r.details.update(method=method, label=label, scenario=sc.name, task=task)
                out["results"].append(to_json(r.to_json()))
            log.info("%s: %s/%s, %d scorers in %.1fs", method, sc.name, task, len(results), time.time() - t0)
            if keep and preset.alpha_sweep:
                t0 = time.time()
                swept = [s for _, s in asked if isinstance(s, GridScorer) and s.selects_alpha]
                for r in eval_lib.alpha_sweep(scen, swept, alphas=preset.alpha_sweep):
                    r.details.update(method=method, scenario=sc.name, task=task)
                    out["alpha_sweep"].append(to_json(r.to_json()))
                log.info(
                    "%s: accuracy vs alpha (%d alphas, all queries) in %.1fs",
                    method,
                    len(preset.alpha_sweep),
                    time.time() - t0,
                )
            if sc.question == "verify" and preset.reference_sweep:
                for label, s in asked:
                    if hasattr(s, "per_reference"):
                        sweep = _reference_sweep(scen, s, preset.reference_sweep, label, sc, task)
                        out["reference_sweep"].append(sweep)
    return out


def _reference_sweep(scen: Any, scorer: Any, n_refs: Sequence[int], label: str, spec: Any, task: str) -> dict:
    """A ModelGiF scorer's AUC / TPR by reference count on a *verify* scenario (all queries, no folds).

    Positives: (candidate, query) pairs with ``related``; negatives: every other pair
    (``"all negatives"``), or only the pairs of queries unrelated to every candidate
    (``"vs independents"``). Fewer references are prefixes of the scorer's one draw.
    """
    from jaxlineage.eval import methods

    t0 = time.time()
    d = scorer.per_reference(scen.candidates, scen.queries, probe=scen.probe)
    readable = ~np.isnan(d[..., 0])  # pairs it cannot read (NaN) stay out of both sets
    related = np.asarray(scen.related, bool)
    unrelated_queries = ~related.any(axis=0)
    counts = [int(n) for n in n_refs if int(n) <= d.shape[-1]]
    pos, neg = related & readable, ~related & readable
    sweeps = {"all negatives": methods.reference_sweep(d, pos, neg, n_refs=counts)}
    if (neg & unrelated_queries[None, :]).any():
        sweeps["vs independents"] = methods.reference_sweep(d, pos, neg & unrelated_queries[None, :], n_refs=counts)
    log.info("%s: AUC by reference count %s on %s/%s in %.1fs", scorer.name, counts, spec.name, task, time.time() - t0)
    return to_json(
        {
            "label": label,
            "scorer": scorer.name,
            "scenario": spec.name,
            "task": task,
            "settings": scorer.settings,
            "sweeps": sweeps,
            "wall_s": time.time() - t0,
        }
    )


#: Every ``±`` of the bench is this (sample std, ddof = 1): the evaluation layer's one definition.
mean_std = metrics_lib.mean_std


# --------------------------------------------------------------------------- provenance (verify, every attack)

#: The learning-free rows of the provenance table: L2 (the paper's best) and CKA in every mode.
PROVENANCE_METRICS = ("l2", "cka")


def provenance(
    zoo: zoo_lib.Zoo,
    *,
    seed: int = 0,
    probe_size: int = 512,
    metrics: Sequence[str] = PROVENANCE_METRICS,
    alpha: float = 1e-3,
    modelgif_refs: Sequence[int] = (8, 16, 32, 64, 128, 256),
    modelgif_steps: int = 20,
    dna_steps: int | None = 300,
    rows: Sequence[str] | None = None,
) -> dict:
    """Every registered scorer against every attack on a ``PROVENANCE_QUICK``-style zoo (SAC / ModelGiF's benchmark).

    One :func:`jaxlineage.eval.scenarios.provenance` scenario (candidates: the
    sources; queries: every positive and negative derived model; probe: the first
    ``probe_size`` inputs of the defender's data); one cell per (row, attack)
    from :func:`jaxlineage.eval.provenance.cells`. The rows are those of every
    entry of :mod:`jaxlineage.eval.registry` run by the bench (``bench=True``)
    with a ``provenance`` hook, in registration order, made from this stage's
    settings: the learning-free ``metrics`` in every mode at the default backbone
    tap with a fixed ``alpha`` (no selection: nothing is tuned on the evaluated
    models), the weight / output baselines, Model DNA with and without the
    generator (logits fragments, ``D_s`` = the probe) fitted on one attack fold
    and scored on the other (:func:`jaxlineage.eval.provenance.learned_cells`),
    and ModelGiF's logits and backbone fields at ``max(modelgif_refs)``
    references (plus the AUC by reference count, prefixes of one draw).
    Calibration: conformal p-values of unrelated pairs against unrelated pairs of
    disjoint queries for every fixed row (:func:`jaxlineage.eval.provenance.null_calibration`).

    Args:
      zoo: the built provenance zoo.
      seed: the key of ModelGiF's reference draw and of Model DNA's fits (``jax.random.key(seed)``).
      probe_size: ``N`` (at least ``max(modelgif_refs)``).
      metrics: learning-free metric names.
      alpha: the first-order / linearised step size (the library's default grid's first value).
      modelgif_refs: reference counts of the sweep (prefixes of one draw).
      modelgif_steps: Gauss-Legendre nodes per reference (paper 50).
      dna_steps: Model DNA's training steps per source and fold (:class:`jaxlineage.mgmp.Config`
        ``num_steps``); ``None`` leaves its rows out (a slot).
      rows: registry names whose rows to compute (``None``: every bench entry with a provenance hook).

    Returns:
      ``{"scenario", "attacks" [(id, label)], "rows" [{"name", "method", "cells", "wall_s"}],
      "modelgif_sweep" {field: {n_refs: cells}}, "dna_folds" [...], "calibration", "slots" [{"name", "why"}]}``.
    """
    from jaxlineage.eval import provenance as prov
    from jaxlineage.eval import registry, scenarios

    t0 = time.time()
    scen = scenarios.provenance(zoo, probe_size=probe_size)
    masks = prov.attack_masks(scen)
    log.info(
        "provenance: %d sources x %d queries, probe %s, built in %.1fs",
        len(scen.candidates),
        len(scen.queries),
        np.shape(scen.probe),
        time.time() - t0,
    )
    settings = dict(
        seed=seed,
        probe_size=probe_size,
        probe_len=len(scen.probe),
        metrics=tuple(metrics),
        alpha=alpha,
        modelgif_refs=tuple(modelgif_refs),
        modelgif_steps=modelgif_steps,
        dna_steps=dna_steps,
    )
    entries = [e for e in registry.registered(bench=True) if e.provenance is not None]
    if rows is not None:
        unknown = sorted(set(rows) - {e.name for e in entries})
        if unknown:
            raise BenchError(f"provenance: rows={unknown} name no registered scorer with a provenance hook")
        entries = [e for e in entries if e.name in rows]
    out = _ProvenanceRows(scen, masks, key=jax.random.key(seed), refs=tuple(int(r) for r in modelgif_refs))
    slots = []
    for e in entries:
        made = e.provenance_rows(settings)
        if not made:
            slots.append({"name": e.label, "why": f"no row with these settings ({e.name}; e.g. dna_steps=None)"})
        out.add(e.name, made)
    t = time.time()
    calibration = prov.null_calibration(scen, out.fixed, key=jax.random.fold_in(jax.random.key(seed), 1))
    log.info("provenance: null calibration of %d rows in %.1fs", len(calibration["rows"]), time.time() - t)
    return to_json(
        {
            "scenario": {
                "name": scen.name,
                "sources": list(scen.candidates.ids),
                "queries": len(scen.queries),
                "probe_shape": list(np.shape(scen.probe)),
                "alpha": alpha,
                "modelgif_steps": modelgif_steps,
                "modelgif_refs": list(modelgif_refs),
                "seed": seed,
                "dna_steps": dna_steps,
                "pairs": {a: {"pos": int(p.sum()), "neg": int(n.sum())} for a, (p, n) in masks.items()},
            },
            "attacks": [list(a) for a in prov.ATTACKS if a[0] in masks],
            "rows": out.rows,
            "modelgif_sweep": out.sweep,
            "dna_folds": out.folds,
            "calibration": calibration,
            "slots": slots,
        }
    )


class _ProvenanceRows:
    """Fills the provenance section's rows from :class:`jaxlineage.eval.registry.Row` s (see :func:`provenance`)."""

    def __init__(self, scen: Any, masks: Mapping, *, key: jax.Array, refs: tuple[int, ...]):
        self.scen, self.masks, self.key, self.refs = scen, masks, key, refs
        self.rows: list[dict] = []
        self.fixed: dict[str, np.ndarray] = {}  # the fixed rows' [K, M] scores (calibration)
        self.sweep: dict[str, dict] = {}
        self.folds: dict[str, list] = {}

    def add(self, method: str, rows: Sequence[Any]) -> None:
        """One entry's rows, in their order."""
        grids = self._grids(rows)
        for i, r in enumerate(rows):
            t = time.time()
            if i in grids:
                scores, wall = grids[i]
                self._fixed(r.label, method, scores, wall)
            elif any(getattr(s, "learned", False) for s in r.scorers):
                self._learned(r, method, t)
            elif r.sweep is not None:
                d = _first_readable(
                    [s.per_reference(self.scen.candidates, self.scen.queries, probe=self.scen.probe) for s in r.scorers]
                )
                n_max = d.shape[-1]
                self.sweep[r.sweep] = {n: _cells(-d[..., :n].mean(-1), self.masks) for n in self.refs if n <= n_max}
                self._fixed(r.label, method, -d.mean(-1), time.time() - t)
            else:
                scores = _first_readable([_score_matrix(self.scen, s) for s in r.scorers])
                self._fixed(r.label, method, scores, time.time() - t)

    def _grids(self, rows: Sequence[Any]) -> dict[int, tuple[np.ndarray, float]]:
        """The rows of one learning-free grid scorer each (fixed alpha), scored in one pass per scorer type
        (their shared jvp): ``{row index: (scores [K, M], wall)}``; the pass's time goes to its first row."""
        by_type: dict[type, list[int]] = {}
        for i, r in enumerate(rows):
            if len(r.scorers) == 1 and isinstance(r.scorers[0], GridScorer) and not r.scorers[0].learned:
                by_type.setdefault(type(r.scorers[0]), []).append(i)
        out = {}
        for cls, idx in by_type.items():
            t = time.time()
            grids = cls.score_grids(
                [rows[i].scorers[0] for i in idx],
                self.scen.candidates,
                self.scen.queries,
                probe=self.scen.probe,
                unreadable="nan",
            )
            wall = time.time() - t
            for j, (i, g) in enumerate(zip(idx, grids)):
                out[i] = (g[0], wall if j == 0 else 0.0)
        return out

    def _fixed(self, name: str, method: str, scores: np.ndarray, wall: float) -> None:
        self.rows.append({"name": name, "method": method, "cells": _cells(scores, self.masks), "wall_s": wall})
        self.fixed[name] = scores
        log.info("provenance: %s in %.1fs", name, wall)

    def _learned(self, r: Any, method: str, t: float) -> None:
        from jaxlineage.eval import provenance as prov

        if len(r.scorers) != 1:
            raise BenchError(f"provenance row {r.label!r}: a learned row takes one scorer, got {len(r.scorers)}")
        cells_, folds = prov.learned_cells(self.scen, r.scorers[0], key=self.key)
        self.rows.append({"name": r.label, "method": method, "cells": cells_, "wall_s": time.time() - t})
        self.folds[r.label] = folds
        log.info("provenance: %s in %.1fs", r.label, time.time() - t)


def _first_readable(scores: Sequence[np.ndarray]) -> np.ndarray:
    """Each pair's first non-NaN score over scorers that read disjoint pairs (NaN where none reads it)."""
    out = np.asarray(scores[0], np.float64)
    for s in scores[1:]:
        out = np.where(np.isnan(out), np.asarray(s, np.float64), out)
    return out


def _cells(scores: np.ndarray, masks: Mapping) -> dict:
    from jaxlineage.eval import provenance as prov

    return prov.cells(scores, masks)


def _score_matrix(scen: Any, scorer: Any) -> np.ndarray:
    from jaxlineage.eval import provenance as prov

    return prov.score_matrix(scen, scorer)


def dna(zoo: zoo_lib.Zoo, *, seed: int = 0, **settings) -> dict:
    """Model DNA on its own protocol (``DNA_QUICK``): :func:`jaxlineage.eval.dna.run` with and without the generator.

    One source per repetition; evaluation targets on tasks and seeds the pool never saw
    (:attr:`jaxlineage.eval.dna.Split.STRICT`). ``settings`` override
    :func:`jaxlineage.eval.dna.quick_settings`.

    Returns:
      ``{"results": [Result JSON], "table": markdown}``.
    """
    from jaxlineage.eval import dna as dna_lib

    results = dna_lib.run(zoo, key=jax.random.key(seed), **{**dna_lib.quick_settings(), **settings})
    return to_json({"results": [r.to_json() for r in results], "table": dna_lib.table(results)})


#: Sections (questions on zoos of their own, :class:`jaxlineage.bench.presets.Section`): name -> stage.
SECTIONS = {"provenance": provenance, "dna": dna}
