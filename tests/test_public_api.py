"""Guards the curated public API."""
import importlib

import jaxlineage

MODULES = ("data", "detector", "eval", "lineage", "linearize", "mgmp", "modelgif", "nets", "similarity", "zoo")


def test_all_names_resolve():
    for name in jaxlineage.__all__:
        assert hasattr(jaxlineage, name), name
    assert set(MODULES) <= set(jaxlineage.__all__)
    assert isinstance(jaxlineage.__version__, str)


def test_module_all_names_resolve():
    for mod in MODULES:
        m = importlib.import_module(f"jaxlineage.{mod}")
        for name in getattr(m, "__all__", ()):
            assert hasattr(m, name), f"jaxlineage.{mod}.{name}"


def test_eval_submodules_all_names_resolve():
    for mod in ("core", "metrics", "protocols", "scenarios", "scorers"):
        m = importlib.import_module(f"jaxlineage.eval.{mod}")
        for name in m.__all__:
            assert hasattr(m, name), f"jaxlineage.eval.{mod}.{name}"


def test_bench_is_importable():
    importlib.import_module("jaxlineage.bench.__main__")
