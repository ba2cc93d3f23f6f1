"""The scorer registry (jaxlineage/eval/registry.py): what the scorer files register, and its bad input.

That a registered scorer joins every bench table is tests/test_bench.py's
``test_a_registered_scorer_joins_every_table``; that every registered scorer passes the
contract battery is tests/test_eval.py's ``SCORERS``.
"""

from __future__ import annotations

import pytest

from jaxlineage.eval import registry
from jaxlineage.eval.core import Scorer
from jaxlineage.eval.scorers import methods, training_free


def test_the_scorer_files_register_in_the_bench_order():
    assert registry.names(bench=True) == ("learning_free", "baselines", "detector", "mgmp", "modelgif")
    assert set(registry.names(bench=False)) == {"permutation_test", "matched_weights", "sac", "conferrable", "ipguard"}
    assert {e.family for e in registry.registered()} <= set(registry.FAMILIES)
    assert registry.get("detector").questions == ("identify",) and registry.get("mgmp").questions == ("verify",)
    assert [e.name for e in registry.registered(family="learned")] == ["detector", "mgmp"]


def test_make_merges_the_defaults_and_returns_a_list():
    lf = registry.get("learning_free").make(metrics=("l2",), modes=("plain", "linearized"))
    assert [s.name for s in lf] == ["l2 plain", "l2 linearized"]
    assert [type(s) for s in registry.get("baselines").make()] == [
        training_free.WeightL2,
        training_free.WeightCosine,
        training_free.OutputAgreement,
        training_free.OutputKL,
    ]
    dna = registry.get("mgmp").make(config=dict(num_steps=5), tap="relu1")
    assert [s.config.uses_generator for s in dna] == [True, False] and {s.config.num_steps for s in dna} == {5}
    (gif,) = registry.get("modelgif").make(n_refs=4)
    assert isinstance(gif, methods.ModelGiFScorer) and gif.n_refs == 4


def test_provenance_rows_from_the_section_settings():
    settings = dict(seed=0, probe_len=64, metrics=("l2",), alpha=1e-3, modelgif_refs=(2, 8), modelgif_steps=3)
    lf = registry.get("learning_free").provenance_rows(settings)
    assert [r.label for r in lf] == ["l2 plain", "l2 first_order", "l2 linearized"]
    assert all(r.scorers[0].alphas == (1e-3,) for r in lf)
    logits, backbone = registry.get("modelgif").provenance_rows(settings)
    assert (logits.label, logits.sweep) == ("ModelGiF logits field (8 refs)", "logits field")
    assert [(s.field, s.archs) for s in backbone.scorers] == [
        (tap, (arch,)) for arch, tap in methods.BACKBONE_TAPS.items()
    ]
    assert registry.get("mgmp").provenance_rows({**settings, "dna_steps": None}) == []
    rows = registry.get("mgmp").provenance_rows({**settings, "dna_steps": 7})
    assert [r.scorers[0].config.batch_size for r in rows] == [min(64, methods.mgmp_lib.Config().batch_size)] * 2
    assert registry.get("detector").provenance_rows(settings) == []


def test_register_and_unregister():
    class Toy(Scorer):
        name = "toy"

    e = registry.register("toy_registry_test", Toy, family="other", questions="verify")
    try:
        assert e.label == "toy_registry_test" and e.questions == ("verify",)
        assert registry.names()[-1] == "toy_registry_test" and registry.get("toy_registry_test") is e
        with pytest.raises(ValueError, match="already registered"):
            registry.register("toy_registry_test", Toy, family="other")
        assert registry.register("toy_registry_test", Toy, family="other", label="T", replace=True).label == "T"
    finally:
        registry.unregister("toy_registry_test")
    assert "toy_registry_test" not in registry.names()


@pytest.mark.parametrize(
    "name, factory, kwargs, match",
    [
        ("", Scorer, dict(family="other"), "non-empty string"),
        ("a,b", Scorer, dict(family="other"), "without commas"),
        ("x", Scorer, dict(family="nope"), "unknown family 'nope'"),
        ("x", Scorer, dict(family="other", questions=("recover",)), "questions"),
        ("x", "not callable", dict(family="other"), "not callable"),
    ],
)
def test_register_bad_input(name, factory, kwargs, match):
    with pytest.raises(ValueError, match=match):
        registry.register(name, factory, **kwargs)


def test_lookups_name_the_registered():
    with pytest.raises(KeyError, match="no scorer registered as 'nope'.*learning_free"):
        registry.get("nope")
    with pytest.raises(KeyError, match="not registered"):
        registry.unregister("nope")
    with pytest.raises(ValueError, match="no scorer"):
        registry.Row("empty", ())
