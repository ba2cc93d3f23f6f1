"""The helpers behind the figures of ``benchmarks/mgmp_fragments.py``, ``lineage_power.py`` and ``tree_recovery.py``."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import types

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import _common  # noqa: E402
import mgmp_fragments  # noqa: E402
import tree_recovery  # noqa: E402

from jaxlineage import zoo  # noqa: E402
from jaxlineage.graph import LineageGraph  # noqa: E402


def test_quick_variant_changes_only_the_children():
    assert _common.quick_variant() == zoo.QUICK
    assert _common.quick_variant(child_seeds=2, child_lrs=zoo.QUICK.children.lrs) == zoo.QUICK
    spec = _common.quick_variant(child_seeds=6, child_lrs=(1e-3, 5e-4))
    assert spec.name == "quick_6_child_seeds_child_lrs_0.001_0.0005"
    assert spec.children.seeds == tuple(range(6)) and spec.children.lrs == (1e-3, 5e-4)
    assert dataclasses.replace(spec, name="quick", children=zoo.QUICK.children) == zoo.QUICK
    assert _common.parse_floats("") is None and _common.parse_floats("1e-3,2") == (1e-3, 2.0)


def test_best_threshold_accuracy_matches_brute_force():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1.0, 1.0, 37).round(1), rng.normal(0.0, 1.0, 53).round(1)  # ties included
    brute = max(0.5 * ((pos > t).mean() + (neg <= t).mean()) for t in [-np.inf, *np.concatenate([pos, neg])])
    assert mgmp_fragments.best_threshold_accuracy(pos, neg) == pytest.approx(brute, abs=1e-12)
    assert mgmp_fragments.best_threshold_accuracy([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert mgmp_fragments.best_threshold_accuracy([0.0], [1.0]) == 0.5  # the always-"no" threshold


def test_mgmp_fragments_default_folds_leave_one_split_value_out():
    import jax

    from jaxlineage.eval import protocols

    # quick's verify queries split by seed: 48 children at seeds 0 / 1, 8 independents at seeds 100-103
    keys = [str(k % 2) for k in range(48)] + [str(100 + k % 4) for k in range(8)]
    scen = types.SimpleNamespace(split_keys=tuple(keys))
    assert mgmp_fragments.num_folds(scen, None) == 6 and mgmp_fragments.num_folds(scen, 3) == 3
    folds = protocols.folds(keys, mgmp_fragments.num_folds(scen, None), key=jax.random.key(0))
    assert sorted(len({keys[i] for i in f}) for f in folds) == [1] * 6  # one value per fold
    # so every training fold keeps children (the default 3 folds could put both child seeds in one)
    assert all({keys[i] for i in range(len(keys)) if i not in set(f)} & {"0", "1"} for f in folds)


def _rec(i, role, parent=None, init=None):
    return types.SimpleNamespace(id=i, role=role, parent_id=parent, hparams={"init_seed": init})


class _FakeZoo:
    """Parents p0, p1 (one initialisation), p2 (another), a child of each, one independent."""

    def __init__(self):
        self.parents = [_rec("p0", "parent", init=0), _rec("p1", "parent", init=0), _rec("p2", "parent", init=1)]
        self.children = [_rec(f"c{k}", "child", parent=f"p{k}") for k in range(3)]
        self.independents = [_rec("i0", "independent")]
        self._by_id = {r.id: r for r in self.parents + self.children + self.independents}

    def get(self, i):
        return self._by_id[i]


def test_fragment_cosine_matches_a_loop_over_pairs_and_inputs():
    z = _FakeZoo()
    rng = np.random.default_rng(1)
    out = {r: rng.normal(size=(20, 5)) for r in ("p0", "p1", "p2", "i0")}
    for k in range(3):  # children close to their parent
        out[f"c{k}"] = out[f"p{k}"] + 0.3 * rng.normal(size=(20, 5))
    res = mgmp_fragments.fragment_cosine(z, out)

    kinds = {"homologous": [], "sibling_init_child": [], "other_init_child": [], "independent": []}
    for p in ("p0", "p1", "p2"):
        for t in ("c0", "c1", "c2", "i0"):
            if t == "i0":
                kind = "independent"
            elif t[1] == p[1]:
                kind = "homologous"
            else:
                same_init = (p == "p2") == (t == "c2")
                kind = "sibling_init_child" if same_init else "other_init_child"
            cos = [
                float(np.dot(out[p][n], out[t][n]) / np.linalg.norm(out[p][n]) / np.linalg.norm(out[t][n]))
                for n in range(20)
            ]
            kinds[kind].append(cos)
    assert len(kinds["sibling_init_child"]) == 2 and len(kinds["other_init_child"]) == 4
    for kind, pairs in kinds.items():
        assert res[kind]["pairs"] == len(pairs)
        assert res[kind]["mean"] == pytest.approx(np.mean(pairs), abs=1e-12)
        assert res[kind]["std"] == pytest.approx(np.std(pairs), abs=1e-12)
    hom_means = [np.mean(c) for c in kinds["homologous"]]
    for kind in ("sibling_init_child", "other_init_child", "independent"):
        neg_means = [np.mean(c) for c in kinds[kind]]
        auc = np.mean([(h > n) + 0.5 * (h == n) for h in hom_means for n in neg_means])
        assert res[kind]["model_auc"] == pytest.approx(auc)
        assert res[kind]["best_threshold_accuracy"] == pytest.approx(
            mgmp_fragments.best_threshold_accuracy(np.concatenate(kinds["homologous"]), np.concatenate(kinds[kind]))
        )
    assert res["independent"]["model_auc"] == 1.0  # children at noise 0.3 vs an unrelated model


def test_tree_recovery_error_breakdown_by_hand():
    truth = LineageGraph.from_parents({"r": None, "a": "r", "b": "r", "g": "a", "s": None, "t": "s"})
    # g hangs from its grandparent, a from its own child g, b from its sibling a, s from another tree.
    rec = LineageGraph.from_parents({"r": None, "g": "r", "a": "g", "b": "a", "s": "g", "t": "s"})
    relations = {"ancestor": 1, "child": 1, "sibling": 1, "unrelated": 1}
    assert tree_recovery.wrong_parent_relations(truth, rec) == relations
    kind = {"a": "finetune", "b": "prune", "g": "finetune", "t": "permute"}
    by = tree_recovery.edge_breakdown(truth, rec, lambda p, c: kind[c])
    assert by["finetune"] == {"n": 2, "undirected": 0.5, "directed": 0.0, "reversed": 0.5}
    assert by["prune"]["directed"] == 0.0 and by["permute"]["directed"] == 1.0
    assert tree_recovery.relation_label(truth, "b", "g") == "same tree, other branch"
    assert tree_recovery.relation_label(truth, "s", "a") == "unrelated"
    rows = [
        {"scorer": "w", "direction": d, "roots": "known", "undirected": 1.0, "directed": 0.5, "root": 0.25}
        for d in ("none", "kurtosis")
    ]
    table = tree_recovery.markdown_table(rows, "known", ["w"], ("none", "kurtosis"))
    assert table.splitlines()[2] == "| w | 100.0 / 50.0 / 25.0 | 100.0 / 50.0 / 25.0 |"


@pytest.mark.slow  # builds a 42-model TREE_QUICK of one epoch on 256 inputs per task (64 s at load 8, 2 cores)
def test_tree_recovery_runs_end_to_end_on_a_tiny_tree_quick(tmp_path, monkeypatch):
    spec = zoo.TREE_QUICK
    groups = []
    for g in spec.groups:
        grid = dict(g.grid)
        if g.source is None:
            grid["seed"] = (0,)  # one root: one tree of every generation and operation
        if "epochs" in grid and grid["epochs"] != (0,):
            grid["epochs"] = (1,)
        groups.append(dataclasses.replace(g, grid=tuple(grid.items())))
    tiny = dataclasses.replace(
        spec,
        name="tree_tiny",
        tasks=tuple(dataclasses.replace(t, n_train=256) for t in spec.tasks),
        groups=tuple(groups),
    )
    monkeypatch.setitem(tree_recovery.SPECS, "tree_tiny", tiny)
    out = tmp_path / "tree.jsonl"
    tree_recovery.main(
        ["--spec", "tree_tiny", "--workdir", str(tmp_path / "zoo"), "--metrics", "l2", "--probe-size", "32"]
        + ["--out", str(out), "--plot", str(tmp_path / "tree.png"), "--table", str(tmp_path / "tree.md")]
        + ["--align-candidates", "2"]
    )
    rec = json.loads(out.read_text().splitlines()[-1])
    assert rec["settings"]["models"] == 21 and rec["settings"]["true_edges"] == 20
    assert rec["settings"]["true_edges_by_kind"] == {"finetune": 13, "prune": 5, "permute": 2}
    scorers = {r["scorer"] for r in rec["rows"]}
    assert scorers == {"weight-l2", "weight-l2-aligned", "l2/plain", "l2/first_order", "l2/linearized"}
    # The 2 permuted copies sit at bound 0 from their parents, so those pairs are aligned and come closer.
    align = rec["weight_alignment"]
    assert align["candidates"] == 2 and 0 < align["pairs_aligned"] < align["pairs_total"]
    assert align["pairs_closer"] >= 2 and align["converged"]
    assert all(0.0 <= r[k] <= 1.0 for r in rec["rows"] for k in ("undirected", "directed", "root"))
    assert "| weight-l2 |" in (tmp_path / "tree.md").read_text()
    assert (tmp_path / "tree.png").read_bytes()[:4] == b"\x89PNG"


def test_verify_power_criteria_follow_the_issue_definition():
    """``verify_power.criteria``: power >= 90 % and AUC >= best single row - 0.02 only where some single row
    (not a combination) reaches 0.95; negatives within alpha + 1.96 sqrt(alpha (1 - alpha) / n) everywhere."""
    import verify_power  # noqa: PLC0415

    record = {
        "settings": {"alpha": 0.05, "combine": "bonferroni"},
        "auc": {
            "verify (bonferroni)": {"a": 0.97, "b": 0.70, "c": 1.0},
            "verify (cauchy of weight-perm, references)": {"a": 1.0, "b": 1.0, "c": 1.0},  # a combination: ignored
            "earlier rule: cauchy over every test's own p": {"a": 1.0, "b": 1.0, "c": 1.0},  # ignored too
            "verify test: output-kl": {"a": 0.995, "b": 0.80, "c": None},
            "weight L2": {"a": 0.60, "b": 0.94, "c": 1.0},
        },
        "rejections@alpha": {
            "a": {"derived_rejected": 14, "derived": 16, "negatives_rejected": 35, "negatives": 512},
            "b": {"derived_rejected": 2, "derived": 16, "negatives_rejected": 36, "negatives": 512},
            "c": {"derived_rejected": 16, "derived": 16, "negatives_rejected": 5, "negatives": 100},
        },
    }
    out = verify_power.criteria(record)
    limit = 0.05 + 1.96 * np.sqrt(0.05 * 0.95 / 512)  # 0.0689
    assert out["a"]["best_single_row"] == "verify test: output-kl" and out["a"]["negatives_limit"] == pytest.approx(
        limit
    )
    assert out["a"]["power_met"] is False and out["a"]["auc_met"] is False  # 14/16 < 0.9; 0.97 < 0.995 - 0.02
    assert out["a"]["negatives_met"] is True  # 35/512 = 0.0684 <= 0.0689
    assert out["b"]["power_met"] is None and out["b"]["auc_met"] is None  # best single row 0.94 < 0.95
    assert out["b"]["negatives_met"] is False  # 36/512 = 0.0703
    assert out["c"]["best_single_row"] == "weight L2" and out["c"]["power_met"] and out["c"]["auc_met"]
    assert out["c"]["negatives_limit"] == pytest.approx(0.05 + 1.96 * np.sqrt(0.05 * 0.95 / 100))
