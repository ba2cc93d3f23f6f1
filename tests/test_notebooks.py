"""The Colab notebooks: each executes on its tiny setting, and the committed files are stripped and current.

Every notebook in ``colab/`` runs in a fresh ``python3`` kernel with
``JAXLINEAGE_NOTEBOOK_SIZE=tiny`` (read by its ``parameters`` cell). All of them share
one ``JAXLINEAGE_CACHE`` folder, where the test builds the tiny zoo once; each
notebook's ``zoo.build`` call then reuses it. No cell touches the network: the install
cell acts only on Colab.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

COLAB = pathlib.Path(__file__).resolve().parent.parent / "colab"
NOTEBOOKS = sorted(COLAB.glob("[0-9][0-9]_*.ipynb"))
KERNEL = "python3"
CELL_TIMEOUT_S = 600  # per cell (generous: CI machines are shared); a tiny cell takes seconds
WORKERS = 2  # notebooks executed side by side


def _ensure_kernel() -> str:
    """The ``python3`` kernel spec, registered for this interpreter if none is found."""
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL not in KernelSpecManager().find_kernel_specs():
        subprocess.run(
            [sys.executable, "-m", "ipykernel", "install", "--user", "--name", KERNEL], check=True, capture_output=True
        )
    return KERNEL


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """The kernels' environment: tiny size, one shared zoo cache, no progress bars.

    The test process forces 4 CPU devices (conftest.py); the kernels run as a user's
    would, so that flag is dropped from their ``XLA_FLAGS``.
    """
    env = dict(os.environ)
    flags = [f for f in env.pop("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    env.update(
        JAXLINEAGE_NOTEBOOK_SIZE="tiny",
        JAXLINEAGE_CACHE=str(tmp_path_factory.mktemp("notebook_cache")),
        JAXLINEAGE_NO_PROGRESS="1",
        MPLBACKEND="module://matplotlib_inline.backend_inline",
    )
    return env


def _execute(path: pathlib.Path, env: dict, cwd: pathlib.Path):
    """Runs ``path`` in a fresh kernel; returns the executed notebook (raises on a failing cell)."""
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL, resources={"metadata": {"path": str(cwd)}}
    )
    client.execute(env=env)
    return nb


@pytest.fixture(scope="module")
def executions(kernel_env, tmp_path_factory):
    """Starts every notebook, ``WORKERS`` kernels at a time; ``{name: Future of the executed notebook}``.

    The tiny zoo is built here first (the notebooks' own ``zoo.build`` call then finds
    it finished), so the notebooks can run side by side: XLA compiles on one core, so
    two kernels roughly halve the wall time on a 2-core machine.
    """
    from jaxlineage import zoo

    _ensure_kernel()
    zoo.build(zoo.TINY, pathlib.Path(kernel_env["JAXLINEAGE_CACHE"]) / "tiny", progress=False)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS)
    futures = {p.name: pool.submit(_execute, p, kernel_env, tmp_path_factory.mktemp(p.stem)) for p in NOTEBOOKS}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def _text(output) -> str:
    if output.output_type == "stream":
        return output.text
    if output.output_type in ("execute_result", "display_data"):
        return output.data.get("text/plain", "")
    return ""


def test_there_are_notebooks():
    names = [p.name for p in NOTEBOOKS]
    assert names == [
        "01_quickstart.ipynb",
        "02_lineage_detector.ipynb",
        "03_model_dna.ipynb",
        "04_modelgif.ipynb",
        "05_your_own_models.ipynb",
        "06_is_this_my_model.ipynb",
    ], names


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_on_tiny_setting(path, executions):
    nb = executions[path.name].result()  # re-raises CellExecutionError (with the traceback) on any error

    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert any("parameters" in c.metadata.get("tags", []) for c in code), f"{path.name}: no 'parameters' cell"
    last = "".join(_text(o) for o in code[-1].outputs)
    assert last.strip(), f"the last cell of {path.name} printed nothing"


def test_notebooks_are_stripped_and_start_with_badge_and_install():
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name}: outputs not stripped"
        first, install, params = nb["cells"][:3]
        assert "colab-badge.svg" in "".join(first["source"]) and path.name in "".join(first["source"])
        src = "".join(install["source"])
        assert '"google.colab" in sys.modules' in src and "%pip install" in src, path.name
        assert "parameters" in params["metadata"].get("tags", []) and "JAXLINEAGE_NOTEBOOK_SIZE" in "".join(
            params["source"]
        )


def test_notebooks_match_their_generator():
    spec = importlib.util.spec_from_file_location("_make_notebooks", COLAB / "_make_notebooks.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)

    def cells(text):  # what the generator decides (robust to nbformat's version-specific JSON details)
        nb = json.loads(text)
        return [(c["cell_type"], "".join(c["source"]), c["metadata"]) for c in nb["cells"]], nb["metadata"]

    for name, text in gen.build().items():
        assert cells((COLAB / name).read_text()) == cells(text), (
            f"colab/{name} differs from colab/_make_notebooks.py; run `python colab/_make_notebooks.py`"
        )
