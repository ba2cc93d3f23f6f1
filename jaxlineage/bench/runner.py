"""``run``: build or reuse a preset's zoo, run the method stages, write the report.

The absl app in ``__main__`` is a thin shell over :func:`run`, which Colab and
tests call directly::

    from jaxlineage import bench
    results = bench.run("quick", workdir="/content/zoo", out="/content/report")
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import threading
import time
import traceback
from collections.abc import Callable, Sequence

import jax

from jaxlineage.bench import log_setup, report, stages
from jaxlineage.bench import presets as presets_lib
from jaxlineage.bench.stages import BenchError, MethodUnavailable

__all__ = [
    "SCHEMA",
    "TIMINGS_FILE",
    "check_writable",
    "default_out",
    "default_workdir",
    "parse_methods",
    "run",
]

log = logging.getLogger("jaxlineage.bench")

SCHEMA = 1
TIMINGS_FILE = "bench_timings.json"


def default_workdir(preset: str) -> pathlib.Path:
    return pathlib.Path(os.environ.get("JAXLINEAGE_CACHE", "~/.cache/jaxlineage")).expanduser() / preset


def default_out(preset: str) -> pathlib.Path:
    return pathlib.Path("jaxlineage_results") / preset


def parse_methods(methods: str | Sequence[str] | None) -> tuple[str, ...]:
    """``None``/``"all"`` -> every stage (:func:`jaxlineage.bench.presets.stage_names`: the registered
    scorers the bench runs, then the sections); else a comma list or sequence of stages or other
    registered scorers (:mod:`jaxlineage.eval.registry`), in registration order.

    ``baselines`` are always added: every table shows them next to the methods.
    """
    from jaxlineage.eval import registry

    every = presets_lib.stage_names()
    if methods is None:
        return every
    if isinstance(methods, str):
        methods = [m for m in methods.split(",") if m.strip()]
    methods = [m.strip() for m in methods]
    if not methods or methods == ["all"]:
        return every
    known = (*registry.names(), *presets_lib.SECTION_NAMES)
    bad = [m for m in methods if m not in known]
    if bad:
        raise BenchError(f"unknown method(s) {bad}; known: {', '.join(every)} (or 'all')")
    methods = set(methods) | {"baselines"}  # every table shows the baselines
    return tuple(m for m in known if m in methods)  # report order


def check_writable(out: pathlib.Path) -> None:
    """Creates ``out`` and writes a probe file; a clear :class:`BenchError` otherwise (before any work)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise BenchError(
            f"cannot write the report to --out {out}: {e.strerror or e}. Pass a writable --out folder."
        ) from e


class _Eta:
    """Stage progress with an ETA: from the previous run's stage times (kept in the workdir), else the
    preset's estimates; a heartbeat line every ``heartbeat_s`` while a stage runs."""

    def __init__(
        self, workdir: pathlib.Path, preset: presets_lib.Preset, names: Sequence[str], heartbeat_s: float = 30.0
    ):
        self.path = workdir / TIMINGS_FILE
        self.key = preset.name
        try:
            self.past = json.loads(self.path.read_text()).get(preset.name, {})
        except (OSError, ValueError):
            self.past = {}
        self.guess = {**dict(preset.stage_estimates_s), **self.past}
        self.source = {n: "last run" if n in self.past else "preset estimate" for n in self.guess}
        self.names = list(names)
        self.now: dict[str, float] = {}
        self.heartbeat_s = heartbeat_s
        self._stop: threading.Event | None = None

    def _eta(self, names: Sequence[str]) -> float | None:
        known = [self.guess[n] for n in names if n in self.guess]
        return sum(known) if len(known) == len(names) else None

    def start(self, i: int, name: str) -> None:
        eta = self._eta(self.names[i:])
        msg = f"stage {i + 1}/{len(self.names)}: {name}"
        if name in self.guess:
            msg += f" (~{self.guess[name]:.0f}s, {self.source[name]})"
        if eta is not None:
            msg += f"; ETA {eta:.0f}s for the remaining stages"
        log.info("%s", msg)
        self._stop = threading.Event()
        t0 = time.time()

        def beat(stop=self._stop):
            while not stop.wait(self.heartbeat_s):
                el = time.time() - t0
                g = self.guess.get(name)
                tail = f", ETA ~{max(g - el, 0):.0f}s ({self.source[name]})" if g is not None else ""
                log.info("stage %s: %.0fs elapsed%s", name, el, tail)

        threading.Thread(target=beat, daemon=True, name=f"jaxlineage-eta-{name}").start()

    def done(self, name: str, wall: float, ok: bool) -> None:
        if self._stop is not None:
            self._stop.set()
        if ok:
            self.now[name] = wall
        log.info("stage %s: %s in %.1fs", name, "done" if ok else "FAILED", wall)

    def save(self) -> None:
        try:
            allp = json.loads(self.path.read_text()) if self.path.exists() else {}
            allp[self.key] = {**self.past, **self.now}
            self.path.write_text(json.dumps(allp, indent=1))
        except (OSError, ValueError):
            pass


def run(  # noqa: C901 (one linear pass over the stages, each a guarded block)
    preset: presets_lib.Preset | str = "quick",
    *,
    methods: str | Sequence[str] | None = None,
    workdir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    rebuild: bool = False,
    download: bool = False,
    progress: bool | None = None,
    plots: bool | None = None,
    strict: bool = False,
    echo: Callable[[str], None] | None = print,
    command: str | None = None,
) -> dict:
    """Builds (or reuses) the preset's zoo, runs the method stages and writes the report.

    Args:
      preset: a :class:`Preset` or its name (``quick``, ``tiny``, ``cnn``, ``paper_fc``, ``resnet``).
      methods: which stages (``"learning_free,detector"``, a list, ``None``/``"all"`` for every one).
      workdir: the zoo cache (default ``~/.cache/jaxlineage/<preset>``); a zoo already there is
        reused and nothing is retrained.
      out: the report folder (default ``./jaxlineage_results/<preset>``): ``results.md``,
        ``results.json`` and the figures.
      seed: seeds the method stages (folds, splits, references). The zoo's own seeds are part of its spec.
      rebuild: if ``workdir`` holds a zoo of another spec, delete it and build this one (else refuse).
      download: let TFDS download missing datasets (network).
      progress: zoo progress bar (default: unless ``$JAXLINEAGE_NO_PROGRESS``).
      plots: draw the figures (default: the preset's ``plots``; skipped without matplotlib).
      strict: re-raise a failing stage's exception instead of recording it and going on.
      echo: where the Markdown tables go (``print``; ``None`` for silence).
      command: the command line recorded in the report.

    Returns:
      The results dict, as written to ``results.json``. ``results["failed"]`` lists failed stages.

    Raises:
      BenchError: unknown preset or method, unwritable ``out``, a workdir holding another zoo,
        unavailable data (the message says what to do).
    """
    t_start = time.time()
    log_setup.ensure_handler()
    if isinstance(preset, str):
        try:
            preset = presets_lib.get(preset)
        except ValueError as e:
            raise BenchError(str(e)) from None
    methods = parse_methods(methods)
    workdir = pathlib.Path(workdir).expanduser() if workdir is not None else default_workdir(preset.name)
    out = pathlib.Path(out).expanduser() if out is not None else default_out(preset.name)
    check_writable(out)
    if command is None:
        command = f"python -m jaxlineage.bench --preset {preset.name} --methods {','.join(methods)} --seed {seed}"

    results: dict = {
        "schema": SCHEMA,
        "command": command,
        "preset": preset.to_json(),
        "settings": {
            "methods": list(methods),
            "seed": seed,
            "workdir": str(workdir),
            "out": str(out),
            "rebuild": rebuild,
            "download": download,
        },
        "environment": stages.environment(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "stages": {},
    }
    log.info("preset %s: %s; zoo cache %s; report %s", preset.name, preset.description, workdir, out)

    # Data first: a missing dataset must fail before anything is trained.
    t0 = time.time()
    results["data"] = stages.check_data(preset.zoo, download=download)
    results["stages"]["data"] = {"status": "ok", "wall_s": time.time() - t0}

    t0 = time.time()
    log.info("stage zoo: building or reusing %r in %s", preset.zoo.name, workdir)
    zoo, info = stages.build_zoo(preset.zoo, workdir, rebuild=rebuild, progress=progress)
    info["child_tasks"] = [t.name for t in preset.zoo.child_tasks]
    results["stages"]["zoo"] = {"status": "ok", "wall_s": time.time() - t0, "result": info}
    log.info(
        "stage zoo: %r; %d models trained now, %d reused, %.1fs", zoo, info["trained"], info["reused"], time.time() - t0
    )

    eta = _Eta(workdir, preset, methods)
    failed = []
    scenarios = stages.ScenarioCache(zoo, preset)
    for i, name in enumerate(methods):
        eta.start(i, name)
        t0 = time.time()
        specs = preset.scorer_specs(name)
        section = preset.section(name)
        if section is not None:  # a question on a zoo of its own, built in <workdir>/<name>
            entry = {"settings": stages.to_json(dict(section.settings)), "via": "section", "zoo_spec": section.zoo.name}

            def call(section=section, entry=entry):
                tz = time.time()
                z, zinfo = stages.build_zoo(section.zoo, workdir / section.name, rebuild=rebuild, progress=progress)
                entry["zoo"] = {**zinfo, "wall_s": time.time() - tz}
                log.info(
                    "section %s: zoo %r, %d trained, %d reused, %.1fs",
                    section.name,
                    section.zoo.name,
                    zinfo["trained"],
                    zinfo["reused"],
                    time.time() - tz,
                )
                return stages.SECTIONS[section.name](z, seed=seed, **section.settings)
        elif specs:  # through the evaluation layer: every scenario x this method's scorers
            entry: dict = {"settings": [sp.to_json() for sp in specs], "via": "jaxlineage.eval"}

            def call(name=name):
                return stages.evaluate(zoo, method=name, preset=preset, scenarios=scenarios, seed=seed)
        else:
            entry = {"status": "skipped", "error": f"preset {preset.name!r} has no scorer for {name}", "wall_s": 0.0}
            eta.done(name, 0.0, False)
            results["stages"][name] = entry
            continue
        try:
            entry["result"] = call()
            entry["status"] = "ok"
        except MethodUnavailable as e:
            if strict:
                raise
            entry.update(status="unavailable", error=str(e))
            log.warning("stage %s skipped: %s", name, e)
        except Exception as e:  # noqa: BLE001 - one failing method must not cost the others' results
            if strict:
                raise
            entry.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
            log.error("stage %s failed:\n%s", name, traceback.format_exc())
            failed.append(name)
        entry["wall_s"] = time.time() - t0
        eta.done(name, entry["wall_s"], entry["status"] == "ok")
        results["stages"][name] = entry
        # Each stage compiles its own functions; dropping them keeps the process's memory mappings
        # (about three per XLA:CPU executable, 65530 allowed by default) from piling up across stages.
        jax.clear_caches()
    eta.save()
    results["scenarios"] = {"wall_s": scenarios.wall_s}

    t0 = time.time()
    results["plots"] = []
    status = "skipped"
    if plots if plots is not None else preset.plots:
        from jaxlineage.bench import plots as plots_lib

        try:
            results["plots"] = plots_lib.draw_all(results, out)
            status = "ok"
        except plots_lib.PlotsUnavailable as e:
            log.warning("plots skipped: %s", e)
    results["stages"]["plots"] = {"status": status, "wall_s": time.time() - t0}
    results["failed"] = failed
    results["wall_s"] = time.time() - t_start
    results["tables"] = report.build_tables(results)
    md, js = report.write(results, out)
    if echo is not None:
        echo(report.to_markdown_report(results))
    log.info("report written to %s and %s", md, js)
    return results
