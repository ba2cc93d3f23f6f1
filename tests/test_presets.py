"""The bench presets that Colab and GPU users run (``paper_fc``, ``cnn``, ``resnet``), end to end on tiny data.

Each test shrinks the real preset with ``dataclasses.replace`` (1 epoch, few seeds, tiny widths and
``n_train``, tiny method settings) but keeps its code path: the same architecture family, datasets,
data-loading route (TFDS through ``tfds.testing.mock_data``, which serves ``tfds.data_source``
without the network), child tasks, sections and method stages. Each runs the zoo build, the method
stages whose code depends on the preset (as each test says), the report and the figures, and checks
what was written. Every stage runs end to end in the tiny bench (``tests/test_bench.py``).
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from jaxlineage import data as data_lib
from jaxlineage import zoo as zoo_lib
from jaxlineage.bench import presets, report, runner

tfds = pytest.importorskip("tensorflow_datasets")

#: The figures every preset without a section draws (the ModelGiF one needs the modelgif stage).
FIGURES = {
    "fig3a_first_order_vs_linearized.png",
    "fig3b_similarity_change.png",
    "accuracy_vs_alpha.png",
    "modelgif_auc_vs_refs.png",
}

#: TINY-like method settings: the smallest that still exercise every stage.
_TINY_METHODS = dict(
    probe_size=32,
    num_folds=3,
    alpha_sweep=(0.01, 0.1),
    reference_sweep=(2, 4, 8),
    stage_estimates_s={},
)
#: The learned methods' and ModelGiF's tiny keyword arguments (one detector epoch, 20 Model DNA steps).
_TINY_KWARGS = {
    "detector": dict(epochs=1, n_probe=16, batch_size=4),
    "mgmp": dict(config=dict(num_steps=20, batch_size=32)),
    "modelgif": dict(n_refs=8, steps=4),
}


def _shrink(preset: presets.Preset, *, tap: str | None = None, **zoo_changes) -> presets.Preset:
    """``preset`` with a tiny zoo (``zoo_changes``) and tiny method settings; same scenarios, scorers and sections."""
    assert preset.scorers is None, "the presets read their scorers from the registry"
    kwargs = {name: dict(kw) for name, kw in preset.scorer_kwargs.items()}
    lf_kwargs = kwargs.get("learning_free", {})
    if tap is not None:
        assert lf_kwargs.get("tap") == tap, (preset.name, lf_kwargs)  # the preset's own tap is kept
    kwargs["learning_free"] = {**lf_kwargs, "metrics": ("l2", "linf", "cka"), "alphas": (0.01, 0.1)}
    for name, small in _TINY_KWARGS.items():
        own = kwargs.get(name, {})
        small = dict(small)
        if "config" in small:  # keep the preset's other Model DNA settings
            small["config"] = {**dict(own.get("config", {})), **small["config"]}
        kwargs[name] = {**own, **small}
    methods = [s.method for s in preset.specs()]
    assert set(methods) >= {"learning_free", "baselines", "detector", "mgmp", "modelgif"}
    # Verify folds by fine-tuning learning rate: the tiny grids' 2 child rates and 1 independent rate are
    # 3 folds, and every parent keeps a child in every training fold (Model DNA trains one per parent).
    scenarios = tuple(
        dataclasses.replace(sc, kwargs={**dict(sc.kwargs), "split_by": "lr"}) if sc.question == "verify" else sc
        for sc in preset.scenarios
    )
    small = dataclasses.replace(
        preset,
        zoo=dataclasses.replace(preset.zoo, **zoo_changes),
        scenarios=scenarios,
        scorer_kwargs=kwargs,
        **_TINY_METHODS,
    )
    assert [s.method for s in small.specs()] == methods
    assert small.sections == preset.sections
    return small


def _run(preset: presets.Preset, tmp_path, methods: str | None = None) -> dict:
    out = tmp_path / "out"
    res = runner.run(preset, methods=methods, workdir=tmp_path / "zoo", out=out, seed=0, progress=False, echo=None)
    failed = {k: v.get("error") for k, v in res["stages"].items() if v["status"] not in ("ok", "skipped")}
    assert not res["failed"] and not failed, failed
    return res


def _check(
    res: dict, preset: presets.Preset, tmp_path, *, groups: set[str], sources: set[str], methods: str | None = None
) -> zoo_lib.Zoo:
    """Every method stage asked for ran (the others did not); the report holds their tables; the figures are
    PNGs; the zoo's groups."""
    out = tmp_path / "out"
    ran = set(runner.parse_methods(methods))
    assert set(res["stages"]) & set(presets.stage_names()) == ran
    for m in ran:
        st = res["stages"][m]
        if m in ("provenance", "dna"):  # these presets have no provenance / DNA_QUICK section: the stage says so
            assert st["status"] == "skipped", st
        else:
            assert st["status"] == "ok" and st["wall_s"] > 0, (m, st)
    assert {d["source"] for d in res["data"]} == sources

    md, js = out / "results.md", out / "results.json"
    assert md.is_file() and js.is_file()
    data = json.loads(js.read_text())
    assert data["tables"] == res["tables"]
    keys = [t["key"] for t in res["tables"]]
    # One table per scenario (and child task where the zoo has several).
    tasks = [t.name for t in preset.zoo.child_tasks]
    names = [sc.name for sc in preset.scenarios]
    per_task = [f"{q}_{t}" for t in tasks for q in names] if len(tasks) > 1 else names
    assert keys == [*per_task, *(["modelgif_references"] if "modelgif" in ran else []), "timing"], keys
    md_tables = report.parse_markdown_tables(md.read_text())
    assert len(md_tables) == len(keys)
    # Every method has rows in the tables of the scenarios it is asked; the baselines in every one.
    specs = {s.method: s for s in preset.specs()}
    for key in per_task:
        t = next(t for t in res["tables"] if t["key"] == key)
        text = json.dumps(t["rows"])
        for label in ("learning_free", "baselines", "l2 plain", "weight L2"):
            assert label in text, (key, label)
        scenario = next(sc for sc in preset.scenarios if key == sc.name or key.startswith(f"{sc.name}_"))
        for method, label in (("detector", "Lineage Detector"), ("mgmp", "Model DNA"), ("modelgif", "ModelGiF")):
            assert (label in text) == (method in ran and specs[method].asks(scenario)), (key, label)
    if "modelgif" in ran:
        t = next(t for t in res["tables"] if t["key"] == "modelgif_references")
        assert {r["label"][0] for r in t["rows"]} == {f"verify/{task}" for task in tasks}

    assert FIGURES - ({"modelgif_auc_vs_refs.png"} if "modelgif" not in ran else set()) <= set(res["plots"])
    for png in res["plots"]:
        p = out / png
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000, png

    z = zoo_lib.Zoo.open(res["settings"]["workdir"])
    assert {g.name for g in z.groups} == groups
    for g in groups:
        assert z.group(g), g
    return z


@pytest.mark.slow
def test_cnn_preset_end_to_end(tmp_path, monkeypatch):
    """``cnn``: the ConvNet on the embedded Fashion-MNIST subset (offline), fc1 tap.

    The stages that read a conv net's weights or taps (learning-free at ``fc1``, the detector's weight
    tokens); Model DNA and ModelGiF read only logits and input gradients, and run on the MLP in the tiny
    bench (each would add 15-20 s to a suite that must stay under 15 minutes on 2 cores)."""
    monkeypatch.delenv(data_lib.DATA_DIR_ENV, raising=False)
    p = presets.get("cnn")
    small = _shrink(
        p,
        tap="fc1",
        arch_kwargs=(("channels", (4, 8)), ("hidden", 16)),
        parent_task=dataclasses.replace(p.zoo.parent_task, n_train=500),
        child_tasks=tuple(dataclasses.replace(t, n_train=500) for t in p.zoo.child_tasks),
        parents=zoo_lib.Grid(lrs=(1e-3,), batch_sizes=(64,), seeds=(0,), init_seeds=(0, 1), epochs=1),
        top_k=2,
        children=zoo_lib.Grid(lrs=(1e-2, 3e-3), batch_sizes=(64,), seeds=(0,), epochs=1),
        child_floor=0.0,
        independents=zoo_lib.Grid(lrs=(1e-3,), batch_sizes=(64,), seeds=(100, 101), epochs=1),
    )
    assert small.zoo.arch == "convnet"
    stages = "learning_free,detector"
    res = _run(small, tmp_path, methods=stages)
    z = _check(res, small, tmp_path, methods=stages, groups={"parent", "child", "independent"}, sources={"embedded"})
    assert {r.arch for r in z.records} == {"convnet"}


def _offline_tfds(monkeypatch, tmp_path):
    """No local folder and no Debian copy, so every dataset goes through ``tfds.data_source`` (mocked)."""
    monkeypatch.delenv(data_lib.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(data_lib, "DEBIAN_DIRS", {})
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))


def _tiny_grids(p: presets.Preset) -> dict:
    return dict(
        parents=zoo_lib.Grid(lrs=(1e-3,), batch_sizes=(64,), seeds=(0, 1), epochs=1),
        top_k=2,
        children=zoo_lib.Grid(lrs=(1e-2, 3e-3), batch_sizes=(64,), seeds=(0,), epochs=1),
        child_floor=0.0,
        independents=zoo_lib.Grid(lrs=(1e-3,), batch_sizes=(64,), seeds=(100, 101), epochs=1),
    )


@pytest.mark.slow
def test_paper_fc_preset_end_to_end_through_tfds(tmp_path, monkeypatch):
    """``paper_fc``: the MLP on MNIST parents, Fashion-MNIST and EMNIST-letters children, all through TFDS.

    Its own paths are the three datasets through TFDS and one table per child task; the learning-free and
    baseline stages exercise them. The learned methods and ModelGiF on the MLP run in the tiny bench
    (``test_bench``), which runs every stage, so they are not run twice (the suite's time budget)."""
    _offline_tfds(monkeypatch, tmp_path)
    p = presets.get("paper_fc")
    small = _shrink(p, arch_kwargs=(("features", (32, 16)),), **_tiny_grids(p))
    assert small.zoo.arch == "mlp"
    assert [t.dataset for t in (small.zoo.parent_task, *small.zoo.child_tasks)] == [
        "mnist",
        "fashion_mnist",
        "emnist/letters",
    ]
    # Random images with labels drawn from each dataset's classes; enough that EMNIST's letters 1-26 all occur.
    with tfds.testing.mock_data(num_examples=400):
        res = _run(small, tmp_path, methods="learning_free")
    z = _check(
        res,
        small,
        tmp_path,
        methods="learning_free",
        sources={"tfds"},
        groups={"parent", "child.fmnist", "child.emnist_letters", "independent.fmnist", "independent.emnist_letters"},
    )
    assert {(d["dataset"], d["split"]) for d in res["data"]} == {
        (n, s) for n in ("mnist", "fashion_mnist", "emnist/letters") for s in data_lib.SPLITS
    }
    assert {r.arch for r in z.records} == {"mlp"}


#: The ResNet preset's end-to-end run (85-100 s on 2 cores) is opt-in: ``JAXLINEAGE_HEAVY_TESTS=1``. ResNet's
#: own code (shapes, taps, BatchNorm statistics, the block1 fast path, its permutation spec) is tested in
#: ``test_nets``, ``test_fastpath`` and ``test_permutations``; this run adds the preset's zoo through TFDS.
HEAVY = os.environ.get("JAXLINEAGE_HEAVY_TESTS") == "1"


@pytest.mark.slow
@pytest.mark.skipif(not HEAVY, reason="opt-in (JAXLINEAGE_HEAVY_TESTS=1): keeps CI under 15 minutes on 2 cores")
def test_resnet_preset_end_to_end_through_tfds(tmp_path, monkeypatch):
    """``resnet``: ResNet-18 (narrow) on CIFAR-10 through TFDS, block1 tap, BatchNorm statistics carried.

    Its own paths are the zoo of ResNets through TFDS and the learning-free scores at ``block1``; the other
    method stages run on a conv family in the ``cnn`` preset's test (each of them here would add 15-25 s
    to the suite, which must stay under 15 minutes on 2 cores)."""
    _offline_tfds(monkeypatch, tmp_path)
    p = presets.get("resnet")
    small = _shrink(p, tap="block1", arch_kwargs=(("width", 0.0625),), **_tiny_grids(p))
    assert small.zoo.arch == "resnet18" and small.zoo.max_population == p.zoo.max_population
    stages = "learning_free"
    with tfds.testing.mock_data(num_examples=160):
        res = _run(small, tmp_path, methods=stages)
    z = _check(res, small, tmp_path, methods=stages, sources={"tfds"}, groups={"parent", "child", "independent"})
    assert {d["dataset"] for d in res["data"]} == {"cifar10"}
    assert {r.arch for r in z.records} == {"resnet18"}
