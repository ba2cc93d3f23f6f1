"""The README's examples run as written (the zoo example in the slow tier, in a temporary folder)."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_is_a_front_page():
    assert len(README.read_text().splitlines()) <= 150


@pytest.mark.slow  # over 13 s on 2 loaded cores: the fast tier stays under 3 min
def test_readme_verify_and_metric_examples_run(capsys):
    ns: dict = {}
    blocks = [b for b in _blocks() if "zoo.build" not in b]
    assert len(blocks) == 2
    for b in blocks:
        exec(compile(b, str(README), "exec"), ns)  # noqa: S102 (the README's own code)
    v = ns["verdict"]
    assert v.pair("mine", "suspect").derived is True
    assert v.pair("mine", "other").derived is False
    out = capsys.readouterr().out
    assert "DERIVED" in out and "first_order" in out


@pytest.mark.slow
def test_readme_zoo_example_runs(tmp_path, capsys):
    (block,) = [b for b in _blocks() if "zoo.build" in b]
    exec(compile(block.replace("/tmp/jl_tiny_zoo", str(tmp_path / "zoo")), str(README), "exec"), {})  # noqa: S102
    assert "| l2 first_order |" in capsys.readouterr().out
