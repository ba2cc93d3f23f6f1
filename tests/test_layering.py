"""The package's import graph: imports flow one way (down), no circle, and the metrics import alone.

Layers, bottom to top: data / nets / zoo / models / the method maths; the evaluation layer
(``jaxlineage.eval``); the answers (``jaxlineage.verify``, ``jaxlineage.hub``); the bench.
Every import counts, the ones inside functions too.
"""

import ast
import pathlib
import subprocess
import sys

import networkx as nx

ROOT = pathlib.Path(__file__).resolve().parents[1] / "jaxlineage"
METHODS = ("jaxlineage.detector", "jaxlineage.mgmp", "jaxlineage.modelgif")


def _module(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _graph() -> nx.DiGraph:
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    g = nx.DiGraph()
    g.add_nodes_from(modules)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                while t and t not in modules:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != name:
                    g.add_edge(name, t)
    return g


def _layer(module: str) -> int:
    if module.startswith("jaxlineage.bench"):
        return 3
    if module.startswith(("jaxlineage.verify", "jaxlineage.hub")):
        return 2
    if module.startswith("jaxlineage.eval"):
        return 1
    return 0


def test_imports_flow_down():
    g = _graph()
    up = [
        (a, b)
        for a, b in g.edges
        if a != "jaxlineage" and _layer(b) > _layer(a) and not (a.startswith(b + ".") or b.startswith(a + "."))
    ]
    assert not up, f"imports that point up a layer: {up}"


def test_no_import_circle():
    g = _graph()
    # A package's __init__ importing its own submodules is not a circle of layers; the rest must be a DAG.
    h = g.copy()
    h.remove_edges_from([(a, b) for a, b in g.edges if b.startswith(a + ".")])
    h.remove_node("jaxlineage")  # the lazy top level imports nothing at import time
    cycles = list(nx.simple_cycles(h))
    assert not cycles, f"import circles: {cycles[:3]}"


def test_no_method_module_imports_another():
    g = _graph()

    def method(m: str) -> str | None:  # a method module or a submodule of its package
        return next((x for x in METHODS if m == x or m.startswith(x + ".")), None)

    bad = [(a, b) for a, b in g.edges if method(a) and method(b) and method(a) != method(b)]
    assert not bad, bad


def test_importing_the_metrics_loads_nothing_else():
    code = (
        "import sys, jaxlineage.linearize, jaxlineage.lineage, jaxlineage.similarity\n"
        "bad = [m for m in sys.modules if m.startswith(('jaxlineage.eval', 'jaxlineage.zoo', 'jaxlineage.detector',"
        " 'tensorflow_datasets', 'matplotlib', 'orbax', 'flax'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out


def test_top_level_names_resolve_lazily():
    code = (
        "import sys, jaxlineage as jl\n"
        "assert 'jaxlineage.eval' not in sys.modules and 'jaxlineage.zoo' not in sys.modules\n"
        "assert callable(jl.verify) and callable(jl.identify) and jl.Models.__name__ == 'Models'\n"
        "import jaxlineage.verify\n"
        "assert callable(jl.verify)\n"
        "print(sorted(set(jl.__all__) - set(dir(jl))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
