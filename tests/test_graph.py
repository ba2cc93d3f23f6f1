import pytest

from jaxlineage.graph import GraphError, LineageGraph, Relation

# r1 -> a -> a1 -> a11 ; r1 -> b ; r2 (same init as r1) -> c ; r3 -> d ; e has two parents a and d.
PARENTS = {
    "r1": None,
    "a": "r1",
    "a1": "a",
    "a11": "a1",
    "b": "r1",
    "r2": None,
    "c": "r2",
    "r3": None,
    "d": "r3",
    "e": ("a", "d"),
}
INITS = {"r1": "init0", "r2": "init0", "r3": "init1"}


@pytest.fixture
def g():
    return LineageGraph.from_parents(PARENTS, init_keys=INITS)


def test_parent_children_ancestors_descendants(g):
    assert g.parent("a1") == "a" and g.parent("r1") is None
    assert g.parents("e") == ("a", "d")
    with pytest.raises(GraphError, match="'e' has 2 parents"):
        g.parent("e")
    assert g.children("a") == ("a1", "e")
    assert g.ancestors("a11") == ("a1", "a", "r1")
    assert set(g.ancestors("e")) == {"a", "d", "r1", "r3"}
    assert g.descendants("r1") == ("a", "b", "a1", "e", "a11")
    assert g.roots("a11") == ("r1",) and g.root("a11") == "r1" and g.root("r1") == "r1"
    assert set(g.roots("e")) == {"r1", "r3"}
    with pytest.raises(GraphError, match="2 roots"):
        g.root("e")
    assert set(g.roots()) == {"r1", "r2", "r3"}
    assert [g.generation(n) for n in ("r1", "a", "a1", "a11", "e")] == [0, 1, 2, 3, 2]
    assert g.is_ancestor("r1", "a11") and not g.is_ancestor("a11", "r1") and not g.is_ancestor("a", "a")


@pytest.mark.parametrize(
    "a, b, rel",
    [
        ("a", "a", Relation.SELF),
        ("a", "a1", Relation.PARENT),
        ("a1", "a", Relation.CHILD),
        ("r1", "a11", Relation.ANCESTOR),
        ("a11", "a", Relation.DESCENDANT),
        ("a", "b", Relation.SIBLING),
        ("a1", "b", Relation.SHARED_INIT),  # cousins through r1
        ("c", "a11", Relation.SHARED_INIT),  # roots r2 and r1 share an initialisation
        ("d", "a", Relation.UNRELATED),
        ("e", "d", Relation.CHILD),
        ("e", "b", Relation.SHARED_INIT),
        ("r3", "r1", Relation.UNRELATED),
    ],
)
def test_relation(g, a, b, rel):
    assert g.relation(a, b) is rel


def test_relation_brute_force_symmetry(g):
    """relation(a, b) and relation(b, a) are mirror images; lineal relations match is_ancestor."""
    mirror = {Relation.PARENT: Relation.CHILD, Relation.ANCESTOR: Relation.DESCENDANT}
    mirror.update({v: k for k, v in mirror.items()})
    for a in g.ids:
        for b in g.ids:
            r, s = g.relation(a, b), g.relation(b, a)
            assert s is mirror.get(r, r)
            assert (r in (Relation.PARENT, Relation.ANCESTOR)) == g.is_ancestor(a, b)


def test_edges_and_json_round_trip(g):
    assert ("a", "e") in g.edges() and ("d", "e") in g.edges() and len(g.edges()) == 8
    back = LineageGraph.from_json(g.to_json())
    assert back == g


def test_bad_graphs():
    with pytest.raises(GraphError, match="'x' names parent 'nope'"):
        LineageGraph.from_parents({"x": "nope"})
    with pytest.raises(GraphError, match="own parent"):
        LineageGraph.from_parents({"x": "x"})
    with pytest.raises(GraphError, match="cycle"):
        LineageGraph.from_parents({"x": "y", "y": "z", "z": "x", "r": None})
    with pytest.raises(GraphError, match="no model 'q'"):
        LineageGraph.from_parents({"x": None}).ancestors("q")
