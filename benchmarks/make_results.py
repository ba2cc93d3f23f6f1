"""Renders the generated section of ``benchmarks/RESULTS.md`` from ``benchmarks/results/*.jsonl``.

For every results file, the newest record of each experiment (the ``benchmark`` / ``experiment`` /
``section`` field, else the file) is shown with its time, machine and figures: numbers, short
lists and nested tables flattened to ``a.b.c = value`` lines. Everything between the markers
``<!-- generated: begin -->`` and ``<!-- generated: end -->`` is replaced; the rest is kept.

    python benchmarks/make_results.py [--results benchmarks/results] [--out benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import pathlib

BEGIN, END = "<!-- generated: begin -->", "<!-- generated: end -->"
SKIP = {"env", "time", "settings", "scores", "values", "per_pair", "null", "pvalues", "fit_ids"}


def _flat(d, prefix=""):
    for k, v in d.items():
        name = f"{prefix}{k}"
        if k in SKIP:
            continue
        if isinstance(v, dict):
            yield from _flat(v, name + ".")
        elif isinstance(v, float):
            yield name, f"{v:.4g}"
        elif isinstance(v, (int, bool, str)) and len(str(v)) <= 80:
            yield name, str(v)
        elif isinstance(v, list) and len(v) <= 8 and all(isinstance(x, (int, float)) for x in v):
            yield name, "[" + ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v) + "]"


def render(results: pathlib.Path, max_lines: int = 40) -> str:
    out = []
    for path in sorted(results.glob("*.jsonl")):
        newest: dict[str, dict] = {}
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                name = str(r.get("benchmark") or r.get("experiment") or r.get("section") or path.stem)
                variant = r.get("variant") or r.get("scorer") or r.get("name")
                newest[f"{name} / {variant}" if isinstance(variant, str) else name] = r
        out.append(f"### `{path.name}`\n")
        for name, r in newest.items():
            env = r.get("env", {})
            out.append(
                f"**{name}** — {r.get('time', '?')}, {env.get('device', '?')} x{env.get('cpu_count', '?')} CPUs,"
                f" jax {env.get('jax', '?')}\n"
            )
            lines = [f"    {k} = {v}" for k, v in _flat(r)]
            out += lines[:max_lines] + (
                [f"    ... ({len(lines) - max_lines} more in the JSON)"] if len(lines) > max_lines else []
            )
            out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="benchmarks/results")
    ap.add_argument("--out", default="benchmarks/RESULTS.md")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    text = out.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    out.write_text(f"{head}{BEGIN}\n\n{render(pathlib.Path(args.results))}\n{END}{tail}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
