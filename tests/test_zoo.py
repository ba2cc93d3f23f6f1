import dataclasses
import hashlib
import json

import jax
import numpy as np
import pytest

from jaxlineage import data, nets, zoo

# Smaller than TINY: one hidden layer, few examples; for the build/resume mechanics.
MICRO = dataclasses.replace(
    zoo.TINY,
    name="micro",
    arch_kwargs=(("features", (16,)),),
    parent_task=zoo.Task("A", "embedded", data.TASK_A, n_train=256),
    child_tasks=(zoo.Task("B", "embedded", data.TASK_B, n_train=256),),
)


def _tree_files(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_tiny_manifest_lineage(tiny_zoo):
    z = zoo.Zoo.open(tiny_zoo.workdir)
    assert len(z.parents) == 2 and len(z.children) == 4 and len(z.independents) == 2
    parent_ids = {p.id for p in z.parents}
    for c in z.children:
        assert c.parent_id in parent_ids and c.generation == 1 and c.task == "B"
    assert all(r.parent_id is None and r.generation == 0 for r in z.parents + z.independents)
    assert {p.task for p in z.parents} == {"A"} and {r.task for r in z.independents} == {"B"}
    # Top-k selection: every kept parent is at least as accurate as every dropped candidate.
    dropped = [r for r in z.records if r.role == "parent_candidate"]
    assert len(dropped) == 1 and min(p.test_acc for p in z.parents) >= dropped[0].test_acc
    for r in z.records:
        assert r.hparams.keys() >= {"lr", "batch_size", "seed", "epochs"} and 0.0 <= r.test_acc <= 1.0
    # Trained models beat chance (5 classes) on their task.
    assert min(r.test_acc for r in z.parents + z.children + z.independents) > 0.4


def test_children_start_from_their_parent(tiny_zoo):
    """A child's backbone is its parent's after a short fine-tune: much closer to it than to the other parent."""
    z = tiny_zoo
    c = z.children[0]
    child = nets.backbone(z.load(c.id))
    dist = {
        p.id: sum(
            float(np.sum((a - b) ** 2))
            for a, b in zip(jax.tree.leaves(child), jax.tree.leaves(nets.backbone(z.load(p.id))))
        )
        for p in z.parents
    }
    assert min(dist, key=dist.get) == c.parent_id


def test_stack_and_functions(tiny_zoo):
    z = tiny_zoo
    ids = [r.id for r in z.children]
    stacked = z.stack(ids)
    assert nets.population_size(stacked) == 4
    x = z.probe(8)
    assert x.shape == (8, 28, 28, 1)
    assert z.feature_fn("relu1")(nets.unstack(stacked)[0], x).shape == (8, 64)
    with pytest.raises(zoo.ZooError, match="empty"):
        z.stack([])
    with pytest.raises(zoo.ZooError, match="no model 'nope'"):
        z.load("nope")


def test_orbax_round_trip(tmp_path):
    params = nets.mlp(3, features=(8, 4)).init(jax.random.key(0))
    params["batch_stats"] = {"bn": {"mean": np.arange(4, dtype=np.float32), "var": np.ones((4,), np.float32)}}
    zoo.save_params(tmp_path / "m", params)
    back = zoo.load_params(tmp_path / "m")
    jax.tree.map(np.testing.assert_array_equal, params, back)
    assert jax.tree.structure(params) == jax.tree.structure(back)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary left behind


def test_missing_and_corrupt_checkpoint(tmp_path):
    with pytest.raises(zoo.ZooError, match="missing"):
        zoo.load_params(tmp_path / "absent")
    zoo.save_params(tmp_path / "m", {"params": {"w": np.ones((3,), np.float32)}})
    for f in (tmp_path / "m").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.raises(zoo.ZooError, match="corrupt or unreadable"):
        zoo.load_params(tmp_path / "m")


def test_nonfinite_checkpoint_is_reported(tmp_path):
    zoo.save_params(tmp_path / "m", {"params": {"w": np.array([1.0, np.nan], np.float32)}})
    with pytest.raises(zoo.ZooError, match="non-finite values at params/w"):
        zoo.load_params(tmp_path / "m")


def test_empty_grid_and_bad_spec():
    with pytest.raises(zoo.ZooError, match="Grid.lrs is empty"):
        zoo.Grid(lrs=(), batch_sizes=(64,), seeds=(0,), epochs=1)
    with pytest.raises(zoo.ZooError, match="top_k=5 but the parent grid has only 3"):
        dataclasses.replace(zoo.TINY, top_k=5)
    with pytest.raises(zoo.ZooError, match="unknown arch"):
        dataclasses.replace(zoo.TINY, arch="vgg")


def test_spec_json_round_trip():
    for spec in zoo.SPECS.values():
        assert zoo.spec_from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert zoo.ZooSpec.from_json(json.loads(json.dumps(zoo.QUICK.to_json()))) == zoo.QUICK


def test_open_without_zoo(tmp_path):
    with pytest.raises(zoo.ZooError, match="no built zoo"):
        zoo.Zoo.open(tmp_path)


class _Interrupt(Exception):
    pass


@pytest.mark.slow
def test_resume_after_interrupt_trains_only_missing(tmp_path, monkeypatch):
    real_save, saves = zoo.storage.save_params, []

    def flaky_save(path, params):
        if len(saves) == 4:
            raise _Interrupt("killed")
        real_save(path, params)
        saves.append(path.name)

    monkeypatch.setattr(zoo.storage, "save_params", flaky_save)
    with pytest.raises(_Interrupt):
        zoo.build(MICRO, tmp_path, progress=False)
    assert not (tmp_path / zoo.MANIFEST).exists()
    # Killed in the middle of group "child" (3 parent candidates, then 1 of 4 children were saved).
    assert ["__c-" in n for n in saves] == [False, False, False, True]
    models = tmp_path / "models"
    assert sorted(p.stem for p in models.glob("*.json")) == sorted(saves)
    assert not list(models.glob(".tmp-*"))
    # Simulate a kill between a checkpoint's rename and its record: that model must be retrained.
    orphan = saves.pop(0)
    (models / f"{orphan}.json").unlink()
    before = {k: v for k, v in _tree_files(models).items() if not k.startswith(orphan)}

    monkeypatch.setattr(zoo.storage, "save_params", real_save)
    trained = []
    real_train = zoo.training.train_population

    def counting_train(network, init_params, *a, **k):
        trained.append(nets.population_size(init_params))
        return real_train(network, init_params, *a, **k)

    monkeypatch.setattr(zoo.training, "train_population", counting_train)
    z = zoo.build(MICRO, tmp_path, progress=False)
    total = len(z.records)
    assert sum(trained) == total - len(saves)
    after = _tree_files(models)
    for name, digest in before.items():
        assert after[name] == digest, f"{name} changed on resume"
    # A third build trains nothing.
    trained.clear()
    zoo.build(MICRO, tmp_path, progress=False)
    assert trained == []


@pytest.mark.slow  # over 6 s on 2 loaded cores: the fast tier stays under 3 min
def test_deterministic_given_spec(tmp_path):
    a = zoo.build(MICRO, tmp_path / "a", progress=False)
    b = zoo.build(MICRO, tmp_path / "b", progress=False)
    assert [r.id for r in a.records] == [r.id for r in b.records]
    assert [r.test_acc for r in a.records] == [r.test_acc for r in b.records]
    for r in a.records:
        jax.tree.map(np.testing.assert_array_equal, a.load(r.id), b.load(r.id))


@pytest.mark.slow  # over 6 s on 2 cores: the fast tier stays under 3 min
def test_workdir_of_another_spec_is_refused(tmp_path):
    zoo.build(MICRO, tmp_path, progress=False)
    other = dataclasses.replace(MICRO, seed=1)
    with pytest.raises(zoo.ZooError, match="another spec"):
        zoo.build(other, tmp_path, progress=False)


def test_population_training_matches_single_model():
    """vmap over the population does not couple models: a member trained alone gives the same result."""
    network = nets.mlp(5, features=(16,))
    x, y = data.task("embedded", data.TASK_A, "test")
    inits = [network.init(jax.random.key(i)) for i in range(3)]
    pop = zoo.train_population(
        network, nets.stack(inits), x[:256], y[:256], lrs=[1e-3, 3e-3, 1e-2], seeds=[0, 1, 2], batch_size=32, epochs=2
    )
    alone = zoo.train_population(
        network, nets.stack(inits[1:2]), x[:256], y[:256], lrs=[3e-3], seeds=[1], batch_size=32, epochs=2
    )
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[1], b[0], rtol=1e-4, atol=1e-5), pop, alone)


@pytest.mark.slow  # over 6 s on 2 loaded cores: the fast tier stays under 3 min
def test_population_training_configs():
    """OptimizerConfig / Distillation: the kind alone means the config's defaults; alpha = 0 is labels only."""
    network = nets.mlp(5, features=(8,))
    x, y = data.task("embedded", data.TASK_A, "test")
    x, y = x[:128], y[:128]
    init = nets.stack([network.init(jax.random.key(i)) for i in range(2)])
    kw = dict(lrs=[1e-2, 3e-2], seeds=[0, 1], batch_size=32, epochs=1)
    run = lambda **k: zoo.train_population(network, init, x, y, **kw, **k)
    same = lambda a, b: jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), a, b)
    sgd = run(optimizer=zoo.Optimizer.SGD)
    same(sgd, run(optimizer=zoo.OptimizerConfig(zoo.Optimizer.SGD, momentum=0.9, weight_decay=0.0)))
    same(run(), run(optimizer=zoo.OptimizerConfig()))
    soft = np.full((2, len(x), 5), 0.2, np.float32)  # uniform teachers
    same(run(), run(distillation=zoo.Distillation(soft, temperature=2.0, alpha=0.0)))
    distilled = run(distillation=zoo.Distillation(soft, temperature=2.0, alpha=1.0))
    assert not np.allclose(distilled["params"]["dense1"]["kernel"], run()["params"]["dense1"]["kernel"])
    assert not np.allclose(sgd["params"]["dense1"]["kernel"], run()["params"]["dense1"]["kernel"])


def test_zoo_graph(tiny_zoo):
    from jaxlineage.graph import Relation

    g = tiny_zoo.graph
    p0, p1 = tiny_zoo.parents
    kids = tiny_zoo.children_of(p0.id)
    assert g.parent(kids[0].id) == p0.id and g.relation(p0.id, kids[0].id) is Relation.PARENT
    assert g.relation(kids[0].id, kids[1].id) is Relation.SIBLING
    assert g.relation(p0.id, tiny_zoo.children_of(p1.id)[0].id) is Relation.UNRELATED
    assert all(g.relation(i.id, c.id) is Relation.UNRELATED for i in tiny_zoo.independents for c in tiny_zoo.children)


def test_classic_zoo_is_a_graph_of_groups(tiny_zoo):
    z = tiny_zoo
    assert [g.name for g in z.groups] == ["parent", "child", "independent"]
    assert z.group("child") == z.children and z.group("parent") == z.parents
    assert z.models(role=zoo.Role.CHILD) == z.children and z.models(arch=nets.Arch.MLP) == z.models(arch="mlp")
    assert len(z.group("parent", kept=None)) == 3 and z.models(role="parent_candidate", kept=None)[0].kept is False
    assert all(r.op == "finetune" and r.fidelity is None for r in z.children)  # new task: no fidelity
    assert all(r.op == "train" and r.init_key for r in z.parents + z.independents)
    assert z.spec.child_tasks[0].name == "B" and z.graph_spec.child_tasks == z.spec.child_tasks


def test_manifest_of_an_earlier_build_opens(tiny_zoo, tmp_path):
    """Records written before groups existed (only the classic fields) still open, with groups inferred."""
    man = json.loads((tiny_zoo.workdir / zoo.MANIFEST).read_text())
    classic = {"id", "role", "parent_id", "generation", "task", "hparams", "test_acc", "kept"}
    man["models"] = [{k: v for k, v in r.items() if k in classic} for r in man["models"]]
    (tmp_path / zoo.MANIFEST).write_text(json.dumps(man))
    old = zoo.Zoo.open(tmp_path)
    assert [r.group for r in old.records] == [r.group for r in tiny_zoo.records]
    assert old.graph.edges() == tiny_zoo.graph.edges()
    p0, p1 = old.parents
    assert old.graph.relation(p0.id, p1.id) is tiny_zoo.graph.relation(p0.id, p1.id)


def test_cli_prints_summary_and_draws(tiny_zoo, capsys):
    zoo.main(["--spec", "TINY", "--workdir", str(tiny_zoo.workdir)])  # spec names in any case
    out = capsys.readouterr().out
    assert "| child | finetune |" in out and "| parent | train |" in out
    assert (tiny_zoo.workdir / "lineage.png").stat().st_size > 1000
