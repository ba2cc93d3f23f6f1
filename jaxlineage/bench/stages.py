"""The bench's stages: importable functions, each returning a JSON-able dict.

One stage per method calls that method module's protocol function on a built
zoo and reduces its answer to plain numbers (lists, dicts, floats) that
:mod:`jaxlineage.bench.report` turns into tables and :mod:`jaxlineage.bench.plots`
into figures. Method modules are imported lazily, so a missing or broken one
costs only its own stage (:class:`MethodUnavailable`).

Usage in a notebook::

    from jaxlineage import zoo
    from jaxlineage.bench import stages
    z = zoo.build(zoo.QUICK, "/tmp/zoo")
    out = stages.modelgif(z, seed=0, n_refs=(8, 32), steps=20)
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

log = logging.getLogger("jaxlineage.bench")


class BenchError(RuntimeError):
    """A user-facing problem (bad preset, unwritable folder, missing data); the message says what to do."""


class MethodUnavailable(BenchError):
    """A method module is missing from this installation."""


def _import(method: str, module: str):
    try:
        return importlib.import_module(f"jaxlineage.{module}")
    except ModuleNotFoundError as e:
        if e.name == f"jaxlineage.{module}":
            raise MethodUnavailable(f"{method}: module jaxlineage.{module} is not available in this installation") from e
        raise


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
        return "the embedded Fashion-MNIST subset shipped with jaxlineage (offline; 1000 train / 200 test images per class)"
    if source == "tfds":
        return "TFDS (tfds.data_source, prepared data dir)"
    if source.startswith("local:"):
        return f"local raw files in {source[len('local:'):]}"
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
                hint = "" if download else (
                    " Or rerun with --download to let TFDS fetch it (network), or use the offline"
                    " presets (quick, tiny, cnn) on the embedded data."
                )
                raise BenchError(f"data for zoo {spec.name!r}, task(s) {task_names}: {e}{hint}") from e
            out.append(dict(dataset=name, split=split, source=ds.source, examples=len(ds), tasks=task_names))
    for name in tasks:
        srcs = sorted({d["source"] for d in out if d["dataset"] == name})
        log.info("data: %s (tasks %s) from %s", name, ", ".join(tasks[name]), "; ".join(describe_source(s) for s in srcs))
    return out


# --------------------------------------------------------------------------- zoo


def build_zoo(spec: zoo_lib.ZooSpec, workdir: str | os.PathLike, *, rebuild: bool = False,
              progress: bool | None = None) -> tuple[zoo_lib.Zoo, dict]:
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
            log.warning("zoo: %s holds a zoo of another spec (%r); --rebuild given: deleting it and rebuilding",
                        workdir, name)
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
        "counts": {"parents": len(z.parents), "children": len(z.children), "independents": len(z.independents),
                   "grandchildren": len(z.grandchildren), "stored": len(z.records)},
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


#: Step sizes of the accuracy-vs-alpha figure (one jvp per pair serves them all).
ALPHA_SWEEP = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def learning_free(zoo: zoo_lib.Zoo, *, seed: int = 0, figures: bool = True,
                  alpha_sweep: Sequence[float] = ALPHA_SWEEP, **settings) -> dict:
    """Neural Lineage Table 1 (learning-free rows) via ``lineage.evaluate``, once per child task.

    Args:
      zoo: a built zoo.
      seed: seeds the fold split (``key=jax.random.key(seed)``).
      figures: also score every (parent, child) pair of the first child task over
        ``alpha_sweep`` for the figures (one more pass over the pairs).
      **settings: ``lineage.evaluate``'s keyword arguments (``metrics``, ``modes``, ``alphas``,
        ``tap``, ``probe_size``, ``num_folds``, ...).

    Returns:
      ``{"rows": [{"metric", "mode", "tasks": {task: mean_std of fold accuracies + "alphas"}}],
      "pairs": per-pair scores for Fig. 3a/3b, "alpha_sweep": accuracy per alpha}``.
    """
    lineage = _import("learning_free", "lineage")
    rows: dict = {}
    for t in zoo.spec.child_tasks:
        t0 = time.time()
        res = lineage.evaluate(zoo, task=t.name, key=jax.random.key(seed), **settings)
        for r in res:
            mode = getattr(r.mode, "value", r.mode)
            row = rows.setdefault((r.metric, mode), {"metric": r.metric, "mode": mode, "tasks": {}})
            row["tasks"][t.name] = {**mean_std(r.fold_accuracies), "alphas": [float(a) for a in r.alphas]}
        log.info("learning_free: task %s, %d metric x mode rows in %.1fs", t.name, len(res), time.time() - t0)
    out = {"rows": list(rows.values()), "settings": to_json(settings)}
    if figures:
        t0 = time.time()
        out.update(_learning_free_figures(lineage, zoo, list(rows.values()), alpha_sweep, settings))
        log.info("learning_free: figure data (all pairs, %d alphas) in %.1fs", len(alpha_sweep), time.time() - t0)
    return out


def _learning_free_figures(lineage, zoo, rows, alpha_sweep, settings) -> dict:
    """Per-pair scores at each metric's chosen alpha, and accuracy over an alpha sweep, on the first child task."""
    task = zoo.spec.child_tasks[0].name
    from jaxlineage import similarity as similarity_lib

    given = settings.get("metrics")
    fns = similarity_lib.all_metrics() if given is None else [similarity_lib.get(m) for m in given]
    by_name = {f.name: f for f in fns}
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    chosen = {}
    for m in metrics:  # the alpha the folds chose most often for the FIRST_ORDER (else LINEARIZED) row
        for mode in ("first_order", "linearized"):
            r = next((r for r in rows if r["metric"] == m and r["mode"] == mode), None)
            if r and r["tasks"][task]["alphas"]:
                vals, counts = np.unique(r["tasks"][task]["alphas"], return_counts=True)
                chosen[m] = float(vals[np.argmax(counts)])
                break
    sweep = sorted(set(float(a) for a in alpha_sweep) | set(chosen.values()))
    scores, labels = lineage.zoo_scores(zoo, [by_name[m] for m in metrics], modes=modes, alphas=sweep,
                                        tap=settings.get("tap"), task=task,
                                        probe_size=settings.get("probe_size", 512))
    scores = {(name, getattr(mode, "value", mode)): np.asarray(v) for (name, mode), v in scores.items()}
    num_parents = len(list(zoo.parents))
    is_parent = (np.arange(num_parents)[:, None] == labels[None, :])
    pairs = {"task": task, "metrics": [m for m in metrics if m in chosen], "alpha": chosen, "scores": {},
             "is_parent": is_parent.ravel().tolist(), "num_parents": num_parents, "num_children": int(labels.size)}
    for m in pairs["metrics"]:
        a = sweep.index(chosen[m])
        pairs["scores"][m] = {mode: to_json(scores[(m, mode)][a].ravel()) for mode in modes if (m, mode) in scores}
    acc = {}
    for (m, mode), s in scores.items():
        if mode == "plain":
            continue
        acc[f"{m} {mode}"] = to_json(np.asarray(lineage.accuracy(s, labels)))
    return {"pairs": pairs, "alpha_sweep": {"task": task, "alphas": sweep, "accuracy": acc,
                                            "note": "all children of the task, no fold split (a diagnostic, not a result)"}}


def mean_std(values: Sequence[float]) -> dict:
    """``{"mean", "std", "n", "values"}`` with the sample standard deviation (ddof=1; 0 for one value).

    Every ``±`` in the bench's tables is this, recomputed from the per-fold or
    per-repetition values the methods return, so all rows use one convention.
    """
    v = np.asarray([float(x) for x in values], np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("mean_std of no finite values")
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size),
            "values": v.tolist()}


def detector(zoo: zoo_lib.Zoo, *, seed: int = 0, open_set: bool | Sequence[bool] = False, **settings) -> dict:
    """The Lineage Detector rows of Table 1 via ``detector.run_protocol``, once per child task.

    Args:
      zoo: a built zoo.
      seed: the protocol's seed.
      open_set: ``False`` (closed set, the paper's Table 1), ``True`` (a held-out parent per
        repetition, "no parent" logit) or a sequence of both to run each.
      **settings: the rest of ``run_protocol``'s keyword arguments (``repetitions``, ``epochs``, ...);
        ``weight_layer``, ``feature_tap``, ``n_probe`` go to ``make_examples``.

    Returns:
      ``{"variants": {"closed set" | "open set": {"tasks": {task: mean_std of test accuracy}}},
      "raw": {task: {variant: run_protocol's dict}}}``.
    """
    det = _import("detector", "detector")
    variants = [open_set] if isinstance(open_set, bool) else list(open_set)
    ex_keys = ("weight_layer", "feature_tap", "n_probe")
    ex_kwargs = {k: settings.pop(k) for k in ex_keys if k in settings}
    out: dict = {"variants": {}, "raw": {}}
    for t in zoo.spec.child_tasks:
        t0 = time.time()
        examples = det.make_examples(zoo, task=t.name, **ex_kwargs)
        log.info("detector: %d examples on task %s (%d candidates) in %.1fs", len(examples), t.name,
                 examples.num_candidates, time.time() - t0)
        for o in variants:
            name = "open set" if o else "closed set"
            res = det.run_protocol(examples=examples, seed=seed, open_set=o, **settings)
            accs = [r["test_accuracy"] for r in res["per_repetition"]]
            out["variants"].setdefault(name, {"tasks": {}})["tasks"][t.name] = mean_std(accs)
            out["raw"].setdefault(t.name, {})[name] = to_json(res)
            log.info("detector: task %s, %s: test accuracy %.3f", t.name, name, float(np.mean(accs)))
    return out


def mgmp(zoo: zoo_lib.Zoo, *, seed: int = 0, config: Any = None, **settings) -> dict:
    """The MGMP table (with / without generator) via ``mgmp.run_protocol``.

    Args:
      config: an ``mgmp.Config``, or a dict of its fields (so presets need not import mgmp).

    Returns:
      ``{"methods": {"with generator" | "without generator": {"accuracy", "A_o", "A_n", "model_auc": mean_std
      over repetitions, "model_accuracy": fraction of evaluation models decided correctly}}, "raw": ...}``.
    """
    mg = _import("mgmp", "mgmp")
    if isinstance(config, Mapping):
        config = mg.Config(**config)
    res = mg.run_protocol(zoo, seed=seed, config=config, **settings)
    methods = {}
    for key, label in (("with_generator", "with generator"), ("without_generator", "without generator")):
        runs = [r[key] for r in res["runs"]]
        summ = res[key]
        methods[label] = {
            "accuracy": mean_std([r["accuracy"] for r in runs]),
            "A_o": mean_std([r["A_o"] for r in runs]),
            "A_n": mean_std([r["A_n"] for r in runs]),
            "model_auc": mean_std([r["model_auc"] for r in runs]),
            "model_accuracy": {"mean": summ["models_correct"] / max(summ["models_total"], 1), "std": None,
                               "correct": summ["models_correct"], "total": summ["models_total"]},
        }
        # The pooled model-level figure is dominated by the non-homologous targets; split it by kind.
        for kind, homologous in (("homologous_accepted", True), ("non_homologous_rejected", False)):
            ds = [d for r in runs for d in r.get("decisions", []) if d["homologous"] == homologous]
            ok = sum(bool(d["correct"]) for d in ds)
            methods[label][kind] = {"mean": ok / len(ds) if ds else float("nan"), "std": None, "correct": ok,
                                    "total": len(ds)}
    raw = to_json(res)
    for run in raw.get("runs", []):  # per-target decisions are long; keep the counts
        for key in ("with_generator", "without_generator"):
            if key in run:
                run[key].pop("decisions", None)
    return {"methods": methods, "raw": raw}


def modelgif(zoo: zoo_lib.Zoo, *, seed: int = 0, **settings) -> dict:
    """ModelGiF AUC / TPR by reference count via ``modelgif.evaluate``, once per child task.

    Returns:
      ``{"tasks": {task: {"children_vs_independents": [SweepPoint...], "other_children": [...],
      "pair_distance": [P, C + I] mean distances with all references, "parent_ids", "column_ids",
      "settings"}}}``.
    """
    mg = _import("modelgif", "modelgif")
    out = {}
    tasks = [t.name for t in zoo.spec.child_tasks]
    for i, task in enumerate(tasks, 1):
        t0 = time.time()
        res = mg.evaluate(zoo, seed=seed, task=task, **settings)
        dist = np.asarray(res["distances"])
        out[task] = to_json({
            "children_vs_independents": res["children_vs_independents"],
            "other_children": res["other_children"],
            "pair_distance": dist.mean(-1),
            "parent_ids": res["parent_ids"],
            "column_ids": res["column_ids"],
            "settings": res.get("settings", {}),
        })
        log.info("modelgif: task %s done (%d/%d) in %.1fs", task, i, len(tasks), time.time() - t0)
    return {"tasks": out}


#: stage name -> function(zoo, *, seed, **settings) -> JSON-able dict.
STAGES = {"learning_free": learning_free, "detector": detector, "mgmp": mgmp, "modelgif": modelgif}
