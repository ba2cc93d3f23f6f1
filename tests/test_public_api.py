"""Guards the curated public API: every public module has ``__all__``, and the exported names
match the committed snapshot ``tests/public_api.txt``.

A name removed or renamed fails ``test_public_api_matches_snapshot``. When a change of the
API is intended, regenerate the snapshot and commit it with the change::

    python tests/test_public_api.py --update
"""

import importlib
import pathlib
import pkgutil
import sys

import jaxlineage

SNAPSHOT = pathlib.Path(__file__).with_name("public_api.txt")


def public_modules() -> list[str]:
    """``jaxlineage`` and every submodule whose dotted name has no part starting with ``_``."""
    names = ["jaxlineage"]
    for info in pkgutil.walk_packages(jaxlineage.__path__, prefix="jaxlineage."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def exported() -> list[str]:
    lines = []
    for mod in public_modules():
        m = importlib.import_module(mod)
        lines += [f"{mod}.{name}" for name in getattr(m, "__all__", ())]
    return sorted(lines)


def test_every_public_module_has_all_and_its_names_resolve():
    for mod in public_modules():
        m = importlib.import_module(mod)
        assert hasattr(m, "__all__"), f"{mod} has no __all__"
        for name in m.__all__:
            assert hasattr(m, name), f"{mod}.__all__ names {name!r}, which {mod} does not define"
    assert isinstance(jaxlineage.__version__, str)


def test_public_api_matches_snapshot():
    want = [line for line in SNAPSHOT.read_text().splitlines() if line and not line.startswith("#")]
    have = exported()
    removed = sorted(set(want) - set(have))
    added = sorted(set(have) - set(want))
    assert not removed and not added, (
        f"the public API changed: removed {removed}, added {added}. If intended, run"
        " `python tests/test_public_api.py --update` and commit tests/public_api.txt with the change."
    )


def test_star_import_keeps_the_builtins():
    ns: dict = {}
    exec("from jaxlineage import *", ns)
    assert "eval" not in ns and "zoo" in ns and "linearize" in ns


def test_bench_is_importable():
    importlib.import_module("jaxlineage.bench.__main__")


if __name__ == "__main__":
    if sys.argv[1:] == ["--update"]:
        SNAPSHOT.write_text(
            "# The public API: one `module.name` per line (tests/test_public_api.py --update).\n"
            + "\n".join(exported())
            + "\n"
        )
        print(f"wrote {SNAPSHOT}")
