"""Import time of each public module against ``import jax, jax.numpy``, measured in one run.

Each import runs in a fresh interpreter (``python -c``), alternating with the baseline, ``--repeats``
times after one warm-up round (the OS file cache); reported: the median wall time and the ratio to
the baseline's median, plus the number of modules each import loads.

    python benchmarks/import_time.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys

import _common

BASELINE = "import jax, jax.numpy"
MODULES = (
    "jaxlineage",
    "jaxlineage.similarity",
    "jaxlineage.linearize",
    "jaxlineage.lineage",
    "jaxlineage.models",
    "jaxlineage.nets",
    "jaxlineage.permutations",
    "jaxlineage.modelgif",
    "jaxlineage.mgmp",
    "jaxlineage.detector",
    "jaxlineage.zoo",
    "jaxlineage.eval",
    "jaxlineage.verify",
    "jaxlineage.bench",
)


def _run(stmt: str) -> tuple[float, int]:
    code = f"import sys, time; t = time.perf_counter(); {stmt}; print(time.perf_counter() - t, len(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), int(out[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    stmts = {"jax, jax.numpy": BASELINE, **{m: f"import {m}" for m in MODULES}}
    for s in stmts.values():  # warm-up: file caches
        _run(s)
    times: dict[str, list[float]] = {k: [] for k in stmts}
    counts: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, s in stmts.items():
            t, n = _run(s)
            times[name].append(t)
            counts[name] = n
    base = statistics.median(times["jax, jax.numpy"])
    rows = {
        name: {"median_s": statistics.median(ts), "ratio": statistics.median(ts) / base, "modules": counts[name]}
        for name, ts in times.items()
    }
    record = {
        "benchmark": "import_time",
        "settings": vars(args),
        "loadavg": os.getloadavg(),
        "imports": rows,
    }
    _common.write(pathlib.Path(args.out) / "import_time.jsonl", record)
    for name, r in rows.items():
        print(f"{name:26s} {r['median_s']:.3f} s  {r['ratio']:.2f}x  {r['modules']} modules")


if __name__ == "__main__":
    main()
