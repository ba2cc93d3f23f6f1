"""``python -m jaxlineage.bench``: reproduce the papers' tables on a zoo, end to end.

A thin absl app over :func:`jaxlineage.bench.run` (importable, used by Colab and the tests)::

    python -m jaxlineage.bench                                  # quick preset, offline, < 10 min on 2 CPUs
    python -m jaxlineage.bench --methods learning_free,modelgif
    python -m jaxlineage.bench --preset paper_fc --download     # TFDS data; a GPU
    python -m jaxlineage.bench --preset tiny --out /tmp/r       # seconds

Exit codes: 0 all stages ran; 1 a method stage failed (the others' results are
still written); 2 bad input (unknown preset or method, unwritable ``--out``, a
``--workdir`` holding another zoo, data not available).
"""

from __future__ import annotations

import shlex
import sys

from absl import app, flags

from jaxlineage.bench import log_setup, presets, runner
from jaxlineage.bench.stages import BenchError

_PRESET = flags.DEFINE_enum(
    "preset",
    "quick",
    list(presets.PRESETS),
    "Preset: " + "; ".join(f"{p.name}: {p.description}" for p in presets.PRESETS.values()),
)
_METHODS = flags.DEFINE_list("methods", ["all"], f"Comma list of {', '.join(presets.stage_names())}, or 'all'.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Zoo cache (default ~/.cache/jaxlineage/<preset>); a second run reuses it."
)
_OUT = flags.DEFINE_string("out", None, "Report folder (default ./jaxlineage_results/<preset>).")
_SEED = flags.DEFINE_integer(
    "seed", 0, "Seeds the method stages (folds, splits, references); the zoo's seeds are in its spec."
)
_REBUILD = flags.DEFINE_bool(
    "rebuild", False, "If --workdir holds a zoo of another spec, delete it and rebuild (default: refuse)."
)
_DOWNLOAD = flags.DEFINE_bool("download", False, "Let TFDS download missing datasets (network; paper_fc, resnet).")
_PLOTS = flags.DEFINE_bool("plots", True, "Draw the PNG figures (needs matplotlib).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    log_setup.quiet()
    try:
        results = runner.run(
            _PRESET.value,
            methods=_METHODS.value,
            workdir=_WORKDIR.value,
            out=_OUT.value,
            seed=_SEED.value,
            rebuild=_REBUILD.value,
            download=_DOWNLOAD.value,
            plots=_PLOTS.value,
            command=_command(),
        )
    except BenchError as e:
        print(f"jaxlineage.bench: error: {e}", file=sys.stderr, flush=True)
        return 2
    return 1 if results["failed"] else 0


def _command() -> str:
    """The command line as parsed: this app's flags that were given, in a copy-pasteable form."""
    given = [f.serialize() for f in flags.FLAGS.get_key_flags_for_module(sys.modules[__name__]) if f.present]
    return shlex.join(["python", "-m", "jaxlineage.bench", *given])


def run_main():
    app.run(main)


if __name__ == "__main__":
    run_main()
