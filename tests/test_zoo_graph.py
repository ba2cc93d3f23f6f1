"""Zoos as lineage graphs: every operation's defining property, relation queries, bad specs, determinism."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlineage import data, nets, zoo
from jaxlineage.errors import path_str
from jaxlineage.graph import Relation
from jaxlineage.zoo import DistillMode, HeadMode, Optimizer, PerturbKind, PruneScope, TrainParams

ARCHS = {"mlp": ("mlp", (("features", (32, 16)),)), "cnn": ("convnet", (("channels", (4, 8)), ("hidden", 16)))}
TASKS = (
    zoo.Task("A", "embedded", data.TASK_A, n_train=320, half=0),
    zoo.Task("A-att", "embedded", data.TASK_A, n_train=320, half=1),
    zoo.Task("B", "embedded", data.TASK_B, n_train=320, half=1),
)
FIT = dict(lr=3e-3, batch_size=32, epochs=2)


def _groups(a):
    """Every operation on architecture ``a``; the MLP also gets the variants (ft-all, transfer, per-layer
    pruning, label-only extraction into the other architecture, int8) and a second source."""
    arch, kw = ARCHS[a]
    other = "cnn" if a == "mlp" else "mlp"
    G = lambda name, op, **k: zoo.Group(f"{a}.{name}", op, **k)  # noqa: E731
    src = f"{a}.src"
    groups = [
        # The MLP's two sources share an initialisation (init_seed 0) and differ in data order.
        G(
            "src",
            "train",
            task="A",
            arch=arch,
            arch_kwargs=kw,
            grid=dict(FIT, seed=(0, 1) if a == "mlp" else (0,), init_seed=(0,)),
        ),
        G("ind", "train", task="A-att", arch=arch, arch_kwargs=kw, grid=dict(FIT, seed=(5,))),
        G("ft_head", "finetune", source=src, task="A-att", grid=dict(FIT, params=TrainParams.HEAD, head=HeadMode.KEEP)),
        G("prune", "prune", source=src, task="A-att", grid=dict(FIT, epochs=1, sparsity=(0.5, 0.9))),
        G(
            "distill",
            "distill",
            source=src,
            task="A-att",
            arch=arch,
            arch_kwargs=kw,
            grid=dict(FIT, epochs=4, mode=DistillMode.SOFT),
        ),
        G("permute", "permute", source=src, grid=dict(seed=(0, 1))),
        G("noise", "perturb", source=src, grid=dict(kind=PerturbKind.NOISE, scale=0.1)),
    ]
    if a == "mlp":
        groups += [
            G(
                "ft_all",
                "finetune",
                source=src,
                task="A-att",
                grid=dict(FIT, head=HeadMode.KEEP, optimizer=Optimizer.SGD, lr=1e-2),
            ),
            G("transfer", "finetune", source=src, task="B", grid=dict(FIT, head=HeadMode.FRESH)),
            G("prune_layer", "prune", source=f"{a}.ft_all", grid=dict(sparsity=0.6, scope=PruneScope.LAYER)),
            G(
                "extract_l",
                "distill",
                source=src,
                task="A-att",
                arch=ARCHS[other][0],
                arch_kwargs=ARCHS[other][1],
                grid=dict(FIT, mode=DistillMode.LABEL),
            ),
            G("int8", "perturb", source=src, grid=dict(kind=PerturbKind.INT8)),
        ]
    return groups


OPS_SPEC = zoo.GraphSpec(
    "ops", TASKS, tuple(_groups("mlp") + _groups("cnn")), max_population=8, sequential_archs=("convnet",)
)


@pytest.fixture(scope="module")
def ops_zoo(tmp_path_factory):
    """Every operation on every architecture that supports it (tiny widths, few examples)."""
    return zoo.build(OPS_SPEC, tmp_path_factory.mktemp("ops_zoo"), progress=False)


def _leaves(tree):
    return jax.tree.leaves(tree)


def _logits(z, model_id, x):
    return np.asarray(z.network_for(model_id).logits_fn(z.load(model_id), x))


def test_every_group_built_with_records(ops_zoo):
    z = ops_zoo
    for g in OPS_SPEC.groups:
        recs = z.group(g.name)
        assert recs, g.name
        for r in recs:
            assert r.group == g.name and r.op == g.op and r.arch == OPS_SPEC.arch_of(g.name)[0]
            assert 0.0 <= r.test_acc <= 1.0
            if r.parent_id is None or g.name.endswith("transfer"):
                assert r.fidelity is None  # roots, and transfers to another output space
            else:
                assert 0.0 <= r.fidelity <= 1.0
    assert len(z.group("mlp.prune")) == 2 * 2 and len(z.group("cnn.permute")) == 2
    # Trained sources beat chance (5 classes).
    assert min(r.test_acc for r in z.models(tag=None, op="train")) > 0.3


@pytest.mark.parametrize("a", ["mlp", "cnn"])
def test_permute_keeps_function_changes_weights(ops_zoo, a):
    z = ops_zoo
    x = z.task_data("A", "test")[0][:64]
    for r in z.group(f"{a}.permute"):
        assert r.fidelity == 1.0
        np.testing.assert_allclose(_logits(z, r.id, x), _logits(z, r.parent_id, x), rtol=1e-4, atol=1e-4)
        src, new = z.load(r.parent_id), z.load(r.id)
        assert jax.tree.structure(src) == jax.tree.structure(new)
        assert any(not np.array_equal(u, v) for u, v in zip(_leaves(nets.backbone(src)), _leaves(nets.backbone(new))))
    a0, a1 = z.group(f"{a}.permute")[:2]  # two seeds of one source: different permutations
    assert a0.parent_id == a1.parent_id
    assert not np.array_equal(_leaves(z.load(a0.id))[0], _leaves(z.load(a1.id))[0])


def _kernel_sparsity(params, include_head=False):
    ks = [
        np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(params["params"])[0]
        if path_str(p).endswith("kernel") and (include_head or not path_str(p).startswith("head"))
    ]
    return sum(int((k == 0).sum()) for k in ks), sum(k.size for k in ks), ks


@pytest.mark.parametrize("a", ["mlp", "cnn"])
def test_prune_exact_sparsity_kept_through_repair(ops_zoo, a):
    z = ops_zoo
    for r in z.group(f"{a}.prune"):
        zeros, n, _ = _kernel_sparsity(z.load(r.id))
        assert zeros == round(r.hparams["sparsity"] * n), (r.id, zeros, n)
        # The head is not pruned.
        np.testing.assert_array_equal(
            z.load(r.id)["params"]["head"]["kernel"] != 0, z.load(r.parent_id)["params"]["head"]["kernel"] != 0
        )
    for r in z.models(group=f"{a}.prune_layer"):  # per layer: every kernel at the target
        _, _, ks = _kernel_sparsity(z.load(r.id))
        for k in ks:
            assert (k == 0).sum() == round(0.6 * k.size)


def test_magnitude_prune_removes_smallest():
    params = {
        "params": {
            "d": {"kernel": jnp.array([[0.1, -3.0], [2.0, -0.2]]), "bias": jnp.array([0.0, 1e-9])},
            "head": {"kernel": jnp.array([[1e-6], [5.0]])},
        }
    }
    pruned, mask = zoo.magnitude_prune(params, 0.5)
    np.testing.assert_array_equal(pruned["params"]["d"]["kernel"], [[0.0, -3.0], [2.0, 0.0]])
    np.testing.assert_array_equal(pruned["params"]["head"]["kernel"], params["params"]["head"]["kernel"])
    np.testing.assert_array_equal(mask["d"]["bias"], 1.0)
    pruned, _ = zoo.magnitude_prune(params, 0.5, include_head=True)
    assert float(pruned["params"]["head"]["kernel"][0, 0]) == 0.0


@pytest.mark.parametrize("a", ["mlp", "cnn"])
def test_finetune_head_only_keeps_backbone_bit_identical(ops_zoo, a):
    z = ops_zoo
    for r in z.group(f"{a}.ft_head"):
        src, new = z.load(r.parent_id), z.load(r.id)
        jax.tree.map(np.testing.assert_array_equal, nets.backbone(src), nets.backbone(new))
        assert not np.array_equal(src["params"]["head"]["kernel"], new["params"]["head"]["kernel"])
    for r in z.group("mlp.ft_all"):  # all parameters move
        src, new = z.load(r.parent_id), z.load(r.id)
        assert all(not np.array_equal(u, v) for u, v in zip(_leaves(src), _leaves(new)))


@pytest.mark.parametrize("a", ["mlp", "cnn"])
def test_distilled_student_agrees_with_teacher_more_than_an_independent(ops_zoo, a):
    z = ops_zoo
    x = z.task_data("A-att", "test")[0]
    ind = z.group(f"{a}.ind")[0]
    for r in z.group(f"{a}.distill"):
        teacher = _logits(z, r.parent_id, x).argmax(-1)
        ind_agree = float((_logits(z, ind.id, x).argmax(-1) == teacher).mean())
        assert r.fidelity > ind_agree, (r.id, r.fidelity, ind_agree)
    # Label-only extraction into the other architecture is a fresh network of that architecture.
    assert [r.arch for r in z.group("mlp.extract_l")] == ["convnet", "convnet"]


@pytest.mark.parametrize("a", ["mlp", "cnn"])
def test_perturb_noise_and_int8(ops_zoo, a):
    z = ops_zoo
    for r in z.models(group=f"{a}.int8"):
        for w in _leaves(z.load(r.id)["params"]):
            assert len(np.unique(np.asarray(w))) <= 255
        assert r.fidelity > 0.9
    for r in z.group(f"{a}.noise"):
        assert all(not np.array_equal(u, v) for u, v in zip(_leaves(z.load(r.parent_id)), _leaves(z.load(r.id))))


def test_relation_queries_on_a_zoo(ops_zoo):
    z, g = ops_zoo, ops_zoo.graph
    s0, s1 = z.group("mlp.src")
    ft = z.models(group="mlp.ft_all")[0]
    assert g.parent(ft.id) == ft.parent_id and g.relation(ft.parent_id, ft.id) is Relation.PARENT
    pl = z.group("mlp.prune_layer")[0]
    assert g.relation(pl.id, g.parent(pl.id)) is Relation.CHILD
    assert g.ancestors(pl.id) == (g.parent(pl.id), g.root(pl.id))
    assert g.relation(g.root(pl.id), pl.id) is Relation.ANCESTOR and pl.generation == 2
    assert pl.id in g.descendants(g.root(pl.id))
    sib = [r for r in z.group("mlp.ft_head") if r.parent_id == ft.parent_id][0]
    assert g.relation(ft.id, sib.id) is Relation.SIBLING
    # Sources with the same init seed share an initialisation; so do their descendants.
    assert g.relation(s0.id, s1.id) is Relation.SHARED_INIT
    other = [r for r in z.group("mlp.permute") if r.parent_id != ft.parent_id][0]
    assert g.relation(ft.id, other.id) is Relation.SHARED_INIT
    ind = z.group("mlp.ind")[0]
    assert g.relation(ind.id, ft.id) is Relation.UNRELATED
    assert g.relation(z.group("cnn.src")[0].id, ft.id) is Relation.UNRELATED
    # Distilled students descend from their teachers.
    st = z.group("mlp.extract_l")[0]
    assert g.relation(st.parent_id, st.id) is Relation.PARENT
    edges = set(g.edges())
    assert all((r.parent_id, r.id) in edges for r in z.records if r.parent_id)
    # The manifest stores the graph.
    man = json.loads((z.workdir / zoo.MANIFEST).read_text())
    assert zoo.Zoo.open(z.workdir).graph == g and man["graph"] == g.to_json()


def test_selection_helpers(ops_zoo):
    z = ops_zoo
    assert {r.group for r in z.models(op="perturb", arch="mlp")} == {"mlp.noise", "mlp.int8"}
    assert z.models(op="perturb", arch=nets.Arch.MLP) == z.models(op="perturb", arch="mlp")
    assert {r.group for r in z.models(group=["mlp.src", "cnn.src"])} == {"mlp.src", "cnn.src"}
    rows = {r["group"]: r for r in z.group_summary()}
    assert rows["mlp.permute"]["fidelity"]["min"] == 1.0 and rows["mlp.transfer"]["fidelity"] is None
    assert "| mlp.prune | prune |" in zoo.format_summary(z)
    with pytest.raises(zoo.ZooError, match="no group 'nope'"):
        z.group("nope")


# --------------------------------------------------------------------------- bad specs


def _root(name="r", **kw):
    return zoo.Group(name, "train", task="A", arch="mlp", arch_kwargs=(("features", (8,)),), grid=dict(seed=(0,)), **kw)


BAD = {
    "cycle": (
        lambda: (_root(), zoo.Group("x", "finetune", source="y"), zoo.Group("y", "finetune", source="x")),
        "group 'x'.*cycle",
    ),
    "unknown source": (
        lambda: (_root(), zoo.Group("d", "finetune", source="missing")),
        "group 'd': unknown source group 'missing'",
    ),
    "unknown op": (lambda: (_root(), zoo.Group("d", "sharpen", source="r")), "group 'd': unknown operation 'sharpen'"),
    "unsupported arch": (
        lambda: (
            zoo.Group("res", "train", task="A", arch="resnet18", grid=dict(seed=0)),
            zoo.Group("perm", "permute", source="res"),
        ),
        "group 'perm'.*'permute' does not support architecture 'resnet18'",
    ),
    "empty grid": (
        lambda: (_root(), zoo.Group("d", "prune", source="r", grid=dict(sparsity=()))),
        "group 'd': grid axis 'sparsity' is empty",
    ),
    "unknown hparam": (
        lambda: (_root(), zoo.Group("d", "prune", source="r", grid=dict(lr_typo=1.0))),
        "group 'd'.*no hyper-parameter 'lr_typo'",
    ),
    "bad enum": (
        lambda: (_root(), zoo.Group("d", "perturb", source="r", grid=dict(kind="gauss"))),
        "group 'd': kind='gauss'",
    ),
    "unknown task": (lambda: (_root(), zoo.Group("d", "prune", source="r", task="B3")), "group 'd': unknown task 'B3'"),
    "duplicate": (lambda: (_root(), _root()), "group 'r' is defined 2 times"),
    "output space": (
        lambda: (_root(), zoo.Group("d", "finetune", source="r", task="C", grid=dict(head=HeadMode.KEEP))),
        "group 'd'.*keeps the source's 5 outputs",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_specs_name_the_group(case, tmp_path):
    make, match = BAD[case]
    tasks = (zoo.Task("A", "embedded", data.TASK_A), zoo.Task("C", "embedded", (1, 2, 3)))
    with pytest.raises(zoo.ZooError, match=match):
        zoo.GraphSpec("bad", tasks, make())


def test_build_revalidates_and_writes_nothing(tmp_path):
    op = zoo.register_op("identity_test", lambda inp: inp.sources, needs_source=True, output="source")
    try:
        spec = zoo.GraphSpec("s", TASKS[:1], (_root(), zoo.Group("d", "identity_test", source="r")))
    finally:
        zoo.OPERATIONS.pop(op.name)
    with pytest.raises(zoo.ZooError, match="group 'd': unknown operation 'identity_test'"):
        zoo.build(spec, tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()


def test_registered_op_builds(tmp_path):
    def negate_head(inp):
        def one(p):
            return {**p, "params": {**p["params"], "head": jax.tree.map(jnp.negative, p["params"]["head"])}}

        return jax.vmap(one)(inp.sources)

    zoo.register_op("negate_head", negate_head, needs_source=True, output="source")
    try:
        spec = zoo.GraphSpec(
            "reg",
            (zoo.Task("A", "embedded", data.TASK_A, n_train=64),),
            (
                zoo.Group(
                    "r", "train", task="A", arch="mlp", arch_kwargs=(("features", (8,)),), grid=dict(batch_size=32)
                ),
                zoo.Group("n", "negate_head", source="r"),
            ),
        )
        z = zoo.build(spec, tmp_path, progress=False)
    finally:
        zoo.OPERATIONS.pop("negate_head")
    (r,), (n,) = z.group("r"), z.group("n")
    np.testing.assert_array_equal(-z.load(r.id)["params"]["head"]["kernel"], z.load(n.id)["params"]["head"]["kernel"])
    assert z.graph.parent(n.id) == r.id and n.kind == "negate_head"


def test_graph_spec_json_round_trip():
    for spec in (OPS_SPEC, zoo.PROVENANCE_QUICK, zoo.DNA_QUICK, zoo.QUICK.to_graph()):
        back = zoo.spec_from_json(json.loads(json.dumps(spec.to_json())))
        assert back == spec


def test_enums_are_stored_by_value():
    # Role and Arch members and their names make equal specs, so manifests and spec JSON do not change.
    by_enum = zoo.Group("c", "finetune", source="p", role=zoo.Role.CHILD)
    assert by_enum == zoo.Group("c", "finetune", source="p", role="child") and by_enum.role_name == "child"
    assert zoo.Group("r", "train", arch=nets.Arch.CONVNET).arch == "convnet"
    assert dataclasses.replace(zoo.QUICK, arch=nets.Arch.MLP) == zoo.QUICK
    with pytest.raises(ValueError, match="unknown architecture 'vgg'"):
        nets.make("vgg", 3)
    assert nets.make(nets.Arch.MLP, 3).name == "mlp"


def test_quick_compiles_to_classic_groups():
    g = zoo.QUICK.to_graph()
    assert [x.name for x in g.groups] == ["parent", "child", "independent"]
    assert g.group("parent").top_k == 8 and g.group("child").floor == 0.90 and g.child_tasks == zoo.QUICK.child_tasks
    multi = zoo.PAPER_FC.to_graph()
    assert {x.name for x in multi.groups} >= {"child.fmnist", "child.emnist_letters", "independent.fmnist"}


def test_halves_are_disjoint_stratified_and_deterministic():
    y = np.repeat(np.arange(3), [10, 7, 4])
    a, b = data.halves(y, seed=0)
    assert set(a).isdisjoint(b) and len(a) + len(b) == len(y)
    assert [int((y[a] == c).sum()) for c in range(3)] == [5, 4, 2]
    np.testing.assert_array_equal(a, data.halves(y, seed=0)[0])


@pytest.mark.slow
def test_graph_zoo_deterministic(tmp_path):
    """Same spec, same params, for the operations with their own randomness (permutation, noise, students)."""
    groups = [g for g in _groups("mlp") if g.name in ("mlp.src", "mlp.permute", "mlp.noise", "mlp.extract_l")]
    groups = [g for g in groups if g.name != "mlp.extract_l"] + [
        zoo.Group(
            "mlp.extract_l",
            "distill",
            source="mlp.src",
            task="A-att",
            arch="mlp",
            arch_kwargs=ARCHS["mlp"][1],
            grid=dict(FIT, epochs=1, mode=DistillMode.LABEL),
        )
    ]
    spec = zoo.GraphSpec("det", TASKS, tuple(groups))
    a = zoo.build(spec, tmp_path / "a", progress=False)
    b = zoo.build(spec, tmp_path / "b", progress=False)
    assert [r.id for r in a.records] == [r.id for r in b.records]
    for r in a.records:
        jax.tree.map(np.testing.assert_array_equal, a.load(r.id), b.load(r.id))
