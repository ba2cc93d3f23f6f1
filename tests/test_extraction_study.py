"""``benchmarks/extraction_study.py``: its zoo varies one factor at a time, and its decision rule is the docstring's."""

from __future__ import annotations

import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import extraction_negatives  # noqa: E402
import extraction_study as es  # noqa: E402

from jaxlineage import zoo  # noqa: E402


def _grid(spec, name):
    return dict(next(g for g in spec.groups if g.name == name).grid)


def test_study_zoo_copies_provenance_and_changes_one_factor_per_level():
    s, p = es.study_spec(), zoo.PROVENANCE
    s.validate()
    for teacher, copied, seeds in (("src", "src_mlp", range(8)), ("ind", "ind_mlp", range(10, 18))):
        assert _grid(s, teacher) == {**_grid(p, copied), "seed": tuple(seeds)}
        for k in es.BASE_KINDS:  # base students: PROVENANCE's recipe, 2 seeds
            assert _grid(s, f"{teacher}.{k}") == {**_grid(p, f"mlp.{k}"), "seed": (0, 1)}
    # (c): one hyper-parameter changed from the copied recipe.
    assert _grid(s, "src.extract_p_t1") == {**_grid(p, "mlp.extract_p"), "seed": (0, 1), "temperature": (1.0,)}
    assert _grid(s, "ind.extract_l_ep20") == {**_grid(p, "mlp.extract_l"), "seed": (0, 1), "epochs": (20,)}
    by = {g.name: g for g in s.groups}
    # (b): the shared-data independents differ from ``ind`` only in their task (the sources' half) and seeds.
    assert by["ind_shared"].task == by["src"].task == "A-def" and by["ind"].task == "A-att"
    assert {k: v for k, v in _grid(s, "ind_shared").items() if k != "seed"} == {
        k: v for k, v in _grid(s, "ind").items() if k != "seed"
    }
    # (a): ten classes, same halves.
    assert s.task("C10-def").classes == tuple(range(10)) and s.task("C10-def").half == 0
    assert s.task("C10-att").half == 1 and by["src10.extract_l"].task == "C10-att"
    assert {g.kind for g in s.groups if g.name.startswith("ind")} >= {"independent"}


def _cell(auc, lo, hi):
    return {"auc": auc, "auc_ci": [lo, hi]}


def _rows(base_auc, level_auc):
    rows = {}
    for level, (auc, lo, hi) in (("base", base_auc), ("a", level_auc), ("b", base_auc)):
        for r in es.BASE_ROWS:
            cells = {a: _cell(0.6, 0.4, 0.8) for a in es.C_COLUMNS}
            if r == "SAC-m":
                cells["extract_l"] = _cell(auc, lo, hi)
            rows[(level, r)] = {"cells": cells}
    return rows


def test_verdict_applies_the_rule():
    # Base below the bar, level (a) meets it: (a) explains extract-L; its interval is above the base's: "up".
    v = es.verdict(_rows((0.80, 0.60, 0.90), (0.99, 0.95, 1.0)))["attacks"]["extract_l"]
    assert v["reproduced"] and v["factors"]["a"]["explains"] and v["explained_by"] == ["a"]
    assert v["effects"]["a"]["SAC-m"] == "up" and v["effects"]["a"]["output KL"] == "no measured effect"
    # A lower bound at 0.85 is not above 0.85: nothing explains.
    v = es.verdict(_rows((0.80, 0.60, 0.90), (0.96, 0.85, 1.0)))["attacks"]["extract_l"]
    assert not v["factors"]["a"]["explains"] and v["explained_by"] == []
    # Base meets the bar: not reproduced, so no factor explains.
    v = es.verdict(_rows((0.97, 0.90, 1.0), (0.99, 0.95, 1.0)))["attacks"]["extract_l"]
    assert not v["reproduced"] and v["explained_by"] == []
    # The control row never counts, and a weight L2 lower bound above 0.5 is flagged.
    rows = _rows((0.80, 0.60, 0.90), (0.80, 0.60, 0.90))
    rows[("a", "weight L2")]["cells"]["extract_l"] = _cell(0.99, 0.97, 1.0)
    ver = es.verdict(rows)
    assert ver["attacks"]["extract_l"]["explained_by"] == [] and ver["control_problems"]


def test_negative_split_partitions_the_study_negatives():
    class Q:
        ids = ("i0", "s0", "s1", "i1")

    scen = type("S", (), {"queries": Q})()
    pos = np.array([[False, True, False, False]])
    neg = np.array([[True, False, True, True]])
    kinds = {"i0": "independent", "i1": "independent", "s0": "extract_l", "s1": "extract_l"}
    m = extraction_negatives.split_masks(scen, {"extract_l": (pos, neg)}, kinds)
    students, inds = m["students"]["extract_l"][1], m["independents"]["extract_l"][1]
    assert (students | inds).tolist() == neg.tolist() and not (students & inds).any()
    assert students.tolist() == [[False, False, True, False]]
    assert all((m[s]["extract_l"][0] == pos).all() for s in m)
