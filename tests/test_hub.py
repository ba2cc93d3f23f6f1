"""jaxlineage.hub: permutation-invariant fingerprints, the FAISS index on disk, stage-3 verification."""

import dataclasses
import json
import warnings

import jax
import numpy as np
import pytest

from jaxlineage import hub, nets
from jaxlineage import permutations as perm_lib
from jaxlineage.eval.core import NO_PARENT, ModelSet, Population
from jaxlineage.eval.pvalues import CalibratedScorer, binomial_margin, holm, open_set_decisions

FEATURES = (16, 8)


def _pop(params_list, ids, network, arch=None):
    return Population(
        ids=tuple(ids),
        params=nets.stack(params_list),
        logits_fn=network.logits_fn,
        feature_fns={t: network.feature_fn(t) for t in network.taps},
        arch=arch or network.name,
    )


@pytest.fixture(scope="module")
def net():
    return nets.make("mlp", 5, features=FEATURES)


@pytest.fixture(scope="module")
def probe():
    return np.asarray(jax.random.uniform(jax.random.key(9), (32, 28, 28, 1)), np.float32)


@pytest.fixture(scope="module")
def family(net):
    """12 roots, and of each root a permuted copy and a perturbed (noise 5 %) copy: 36 models."""
    rng = np.random.default_rng(0)
    roots = [jax.tree.map(np.asarray, net.init(jax.random.key(i))) for i in range(12)]
    spec = perm_lib.permutation_spec(net, roots[0])
    perms = [
        jax.tree.map(np.asarray, perm_lib.apply_permutations(r, spec, [rng.permutation(u) for u, _ in spec.values()]))
        for r in roots
    ]
    noisy = [
        jax.tree.map(lambda w: w + 0.05 * np.std(w) * rng.standard_normal(w.shape).astype(w.dtype), r) for r in roots
    ]
    ids = [f"root{i}" for i in range(12)] + [f"perm{i}" for i in range(12)] + [f"noisy{i}" for i in range(12)]
    return _pop(roots + perms + noisy, ids, net), spec


# --------------------------------------------------------------------------- fingerprints


@pytest.mark.parametrize("kind", ["logits", "weights", "weights_projected", "gram", "concat"])
def test_fingerprints_invariant_under_permutation_specs(kind, net, probe, family):
    pop, spec = family
    fps = {
        "logits": lambda: hub.LogitFingerprint(probe, dim=16),
        "weights": lambda: hub.WeightFingerprint(),
        "weights_projected": lambda: hub.WeightFingerprint(dim=12, seed=3),
        "gram": lambda: hub.GramFingerprint(m=6, seed=1),
        "concat": lambda: hub.ConcatFingerprint([hub.LogitFingerprint(probe, dim=8), hub.WeightFingerprint()], [1, 2]),
    }
    fp = fps[kind]()
    v = fp(pop)
    assert v.shape == (36, fp.dim) and v.dtype == np.float32
    roots, perms, noisy = v[:12], v[12:24], v[24:]
    scale = np.linalg.norm(roots, axis=1).mean()
    # every permuted copy lands on its root (up to float32 reassociation), ...
    np.testing.assert_allclose(perms, roots, atol=1e-4 * scale)
    # ... while fingerprints are not trivially constant: distinct roots are far apart
    d_roots = np.linalg.norm(roots[:, None] - roots[None], axis=-1)[np.triu_indices(12, 1)]
    assert d_roots.min() > 100 * np.abs(perms - roots).max()
    # a 5 % perturbation stays nearer its root than any other root
    d_noisy = np.linalg.norm(noisy[:, None] - roots[None], axis=-1)
    assert (d_noisy.argmin(1) == np.arange(12)).all()


def test_weight_fingerprint_is_singular_values_and_sorted_norms(net):
    p = net.init(jax.random.key(0))
    pop = _pop([p], ["m"], net)
    v = hub.WeightFingerprint()(pop)[0]
    parts = []
    for name in ("dense1", "dense2", "head"):
        k = np.asarray(p["params"][name]["kernel"])
        b = np.asarray(p["params"][name]["bias"])
        # tree order: bias before kernel
        parts += [np.sort(b), np.linalg.svd(k, compute_uv=False), np.sort(np.linalg.norm(k, axis=0))]
    np.testing.assert_allclose(v, np.concatenate(parts), rtol=1e-5, atol=1e-6)


def test_gram_fingerprint_is_normalised_gram_of_kernel_products(net):
    p = jax.tree.map(np.asarray, net.init(jax.random.key(2)))
    fp = hub.GramFingerprint(m=4, seed=3)
    v = fp(_pop([p], ["m"], net))[0]
    k = [np.asarray(p["params"][n]["kernel"], np.float64) for n in ("dense1", "dense2", "head")]
    g = np.random.default_rng(3).standard_normal((784, 4))
    a1, a2 = g.T @ k[0], g.T @ k[0] @ k[1]
    iu = np.triu_indices(4)
    blocks = [(a1 @ a1.T)[iu], (a2 @ a2.T)[iu], (a2 @ k[2]).ravel()]
    want = np.concatenate([b / np.linalg.norm(b) for b in blocks])
    np.testing.assert_allclose(v, want, rtol=1e-4, atol=1e-5)
    conv = nets.make("convnet", 5, channels=(2, 2), hidden=4)
    with pytest.raises(hub.HubError, match="chain of dense kernels"):
        fp(_pop([conv.init(jax.random.key(0))], ["cnn"], conv))


def test_logit_fingerprint_is_projected_centred_logits(net, probe):
    p = net.init(jax.random.key(1))
    fp = hub.LogitFingerprint(probe, dim=7, seed=5)
    z = np.asarray(net.logits_fn(p, probe))
    z = (z - z.mean(-1, keepdims=True)).reshape(-1)
    r = np.random.default_rng(5).standard_normal((z.size, 7)) / np.sqrt(7)
    np.testing.assert_allclose(fp(_pop([p], ["m"], net))[0], z @ r, rtol=1e-4, atol=1e-4)


def test_fingerprint_names_the_model_with_non_finite_weights(net):
    p = net.init(jax.random.key(0))
    bad = jax.tree.map(lambda a: a, p)
    bad["params"]["dense1"]["kernel"] = bad["params"]["dense1"]["kernel"].at[0, 0].set(np.nan)
    with pytest.raises(hub.HubError, match="'broken'.*dense1"):
        hub.WeightFingerprint()(_pop([p, bad], ["ok", "broken"], net))


# --------------------------------------------------------------------------- the index


@pytest.mark.parametrize("kind,shards", [("flat", 1), ("flat", 3), ("ivf", 1), ("hnsw", 2)])
def test_index_finds_permuted_copies_and_save_load_is_identical(kind, shards, probe, family, tmp_path):
    pop, _ = family
    index = hub.Index(hub.LogitFingerprint(probe, dim=16), kind=kind, shards=shards, nlist=2, nprobe=2, chunk=10)
    index.build(pop, progress=False)
    assert len(index) == 36
    queries = pop.take(range(12, 24))  # the permuted copies
    res = index.search(queries, k=3, exclude={f"perm{i}": [f"perm{i}"] for i in range(12)})
    assert [r[0] for r in res.ids] == [f"root{i}" for i in range(12)]
    index.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["ids"] == list(pop.ids) and manifest["settings"]["kind"] == kind
    loaded = hub.Index.load(tmp_path / "idx")
    res2 = loaded.search(queries, k=3, exclude={f"perm{i}": [f"perm{i}"] for i in range(12)})
    assert res2.ids == res.ids
    np.testing.assert_array_equal(res2.distances, res.distances)
    assert not list(tmp_path.glob(".tmp-*"))  # atomic write left nothing behind


def test_flat_index_equals_brute_force(probe, family):
    pop, _ = family
    fp = hub.LogitFingerprint(probe, dim=16)
    pop = pop.take(list(range(12)) + list(range(24, 36)))  # no permuted copy: no exact ties
    index = hub.Index(fp, kind="flat", shards=2).build(pop, progress=False)
    v = fp(pop)
    d, pos = index.search_vectors(v[:5], 4)
    brute = ((v[:5, None] - v[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(pos, np.argsort(brute, axis=1, kind="stable")[:, :4])
    np.testing.assert_allclose(d, np.sort(brute, axis=1)[:, :4], rtol=1e-4, atol=1e-4)


def test_add_extends_the_index(probe, family):
    pop, _ = family
    index = hub.Index(hub.WeightFingerprint(), kind="flat", shards=2).build(pop.take(range(24)), progress=False)
    index.add(pop.take(range(24, 36)), progress=False)
    assert len(index) == 36
    res = index.search(pop.take([30]), k=1)
    assert res.ids[0] == ("noisy6",)
    with pytest.raises(hub.HubError, match="already indexed"):
        index.add(pop.take([0]), progress=False)


class _CountingSource:
    """A model source that counts loaded models and can fail after some chunks (a killed build)."""

    def __init__(self, pop, fail_after=None):
        self.pop, self.ids, self.fail_after, self.loaded, self.calls = pop, pop.ids, fail_after, 0, 0

    def load(self, ids):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        self.loaded += len(ids)
        pos = {m: i for i, m in enumerate(self.pop.ids)}
        return ModelSet((self.pop.take([pos[i] for i in ids]),))


def test_interrupted_build_resumes(probe, family, tmp_path):
    pop, _ = family
    fp = hub.LogitFingerprint(probe, dim=16)
    with pytest.raises(KeyboardInterrupt):
        hub.Index(fp, chunk=8).build(_CountingSource(pop, fail_after=2), workdir=tmp_path / "wd", progress=False)
    assert sorted(p.name for p in (tmp_path / "wd").glob("fp-*.npz")) == ["fp-000000.npz", "fp-000001.npz"]
    again = _CountingSource(pop)
    resumed = hub.Index(fp, chunk=8).build(again, workdir=tmp_path / "wd", progress=False)
    assert again.loaded == 36 - 16  # the two finished chunks were not loaded again
    fresh = hub.Index(fp, chunk=8).build(pop, progress=False)
    np.testing.assert_array_equal(resumed.vectors, fresh.vectors)
    assert resumed.ids == fresh.ids
    with pytest.raises(hub.HubError, match="other models or settings"):
        hub.Index(fp, chunk=8).build(pop.take(range(10)), workdir=tmp_path / "wd", progress=False)


def test_load_of_a_missing_index_names_the_path(tmp_path):
    with pytest.raises(hub.HubError, match="not a saved index"):
        hub.Index.load(tmp_path / "nope")


# --------------------------------------------------------------------------- another architecture


def test_query_of_another_architecture_gets_a_clear_answer(probe, family):
    pop, _ = family
    other = nets.make("mlp", 5, features=(12,))
    q = _pop([other.init(jax.random.key(0))], ["stranger"], other)
    index = hub.Index(hub.WeightFingerprint()).build(pop, progress=False)
    with pytest.raises(hub.HubError, match="'stranger'.*signature"):
        index.search(q, k=3)
    scorer = CalibratedScorer(hub.AlignedWeightScorer()).calibrate(
        ModelSet((pop.take(range(6)),)), ModelSet((pop.take(range(6, 12)),)), probe=None
    )
    search = hub.LineageSearch(index, pop, hub.ScorerVerifier(scorer), k=3)
    (ans,) = search.find_parents(q)
    assert ans.parent is None and ans.decision == NO_PARENT and "signature" in ans.reason


# --------------------------------------------------------------------------- stage 3


def test_aligned_similarity_sees_through_permutations(net, family):
    pop, spec = family
    p = [jax.tree.map(lambda a, i=i: np.asarray(a[i]), pop.params) for i in range(36)]
    a, s = hub.aligned_similarity(p[0], p[12], spec)  # root0 vs its permuted copy
    assert a == pytest.approx(1.0, abs=1e-9) and s < 0.9
    a2, _ = hub.aligned_similarity(p[0], p[1], spec)  # two independent inits
    assert a2 < 0.5
    a3, s3 = hub.aligned_similarity(p[0], p[0], spec)
    assert a3 == pytest.approx(1.0) and s3 == pytest.approx(1.0)
    d, d_stored = hub.aligned_distance(p[0], p[12], spec)
    assert d == pytest.approx(0.0, abs=1e-9) and d_stored > 0.5


def test_verifier_names_the_source_of_a_pruned_copy_not_its_int8_sibling(net, family):
    from jaxlineage.zoo import magnitude_prune

    pop, _ = family
    root = jax.tree.map(lambda a: np.asarray(a[0]), pop.params)
    pruned = jax.tree.map(np.asarray, magnitude_prune(root, 0.6)[0])

    def rounded(w):
        scale = np.abs(w).max() / 127 if np.abs(w).max() > 0 else 1.0
        return np.round(w / scale) * scale

    int8 = jax.tree.map(rounded, root)
    perm = jax.tree.map(lambda a: np.asarray(a[12]), pop.params)
    cands = ModelSet((_pop([int8, perm, root], ["root.int8", "root.perm", "root"], net),))
    cal = ModelSet((pop.take(range(1, 12)),))
    verifier = hub.AlignedWeightVerifier().calibrate(cal, cal, unrelated=~np.eye(11, dtype=bool))
    scores, pvals = verifier(cands, ModelSet((_pop([pruned], ["q"], net),)))
    assert int(np.argmax(scores)) == 2  # the exact source, though its int8 copy is nearer in L2
    assert (pvals == 1 / 111).all()  # all three related, above every unrelated pair


def test_holm_adjusted_matches_holm():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.uniform(0, 0.05, 8) ** rng.uniform(0.5, 2)
        p[rng.integers(8)] = np.nan
        adj = hub.holm_adjusted(p)
        for alpha in (0.01, 0.05, 0.1):
            np.testing.assert_array_equal(np.nan_to_num(adj, nan=2) <= alpha, holm(p, alpha=alpha))


@pytest.mark.slow
def test_pipeline_parent_and_no_parent(net, family):
    """Permuted and noisy copies find their root; roots (their family excluded) get NO_PARENT."""
    pop, _ = family
    index = hub.Index(hub.WeightFingerprint(), kind="flat").build(pop, progress=False)
    # calibration: 30 independent inits (870 unrelated pairs), disjoint from every tested pair
    cal = ModelSet(
        (_pop([net.init(jax.random.key(1000 + i)) for i in range(30)], [f"cal{i}" for i in range(30)], net),)
    )
    verifier = hub.AlignedWeightVerifier().calibrate(cal, cal, unrelated=~np.eye(30, dtype=bool))
    search = hub.LineageSearch(index, pop, verifier, k=3, alpha=0.05)
    tested = [f"perm{i}" for i in range(6, 12)] + [f"noisy{i}" for i in range(6, 12)]
    qpop = pop.take([pop.ids.index(t) for t in tested])
    answers = search.find_parents(qpop, exclude={t: [t] for t in tested})
    assert [a.parent for a in answers] == [f"root{i}" for i in range(6, 12)] * 2
    assert all(a.pvalue <= 0.05 for a in answers)
    for a in answers:
        pick = open_set_decisions(np.asarray(a.pvalues)[:, None], np.asarray(a.scores)[:, None], alpha=0.05)[0]
        assert a.candidates[pick] == a.parent
    # unrelated queries (the roots 6-11 with their family excluded, and 34 fresh inits): Holm keeps the
    # family-wise error per query at alpha, so the rate of named parents is at most alpha + its binomial margin
    roots = pop.take(range(6, 12))
    excl = {f"root{i}": [f"root{i}", f"perm{i}", f"noisy{i}"] for i in range(6, 12)}
    fresh = _pop([net.init(jax.random.key(5000 + i)) for i in range(34)], [f"new{i}" for i in range(34)], net)
    answers = search.find_parents(roots, exclude=excl) + search.find_parents(fresh)
    named = [a.parent is not None for a in answers]
    assert np.mean(named) <= 0.05 + binomial_margin(0.05, len(answers))
    for a in answers:
        assert (a.parent is None) == (a.pvalue > 0.05)
        assert a.parent is not None or "Holm" in a.reason


@pytest.mark.slow
def test_verdict_verifier_drops_verify_into_stage_three(net, probe, family):
    """jaxlineage.verify as the stage-3 verifier: the exact weight test finds the noisy copies' roots."""
    pop, _ = family
    index = hub.Index(hub.WeightFingerprint(), kind="flat").build(pop, progress=False)
    verifier = hub.VerdictVerifier(data=probe, num_permutations=199, tests=[])  # floor 1/200 < 0.05 / k
    search = hub.LineageSearch(index, pop, verifier, k=3, alpha=0.05)
    tested = [f"noisy{i}" for i in range(3)]
    answers = search.find_parents(pop.take([pop.ids.index(t) for t in tested]), exclude={t: [t] for t in tested})
    assert [a.parent for a in answers] == [f"root{i}" for i in range(3)]
    assert all(a.pvalue <= 0.05 for a in answers)


# --------------------------------------------------------------------------- HUB_SIM


def _expected_models(spec):
    n = {}
    for g in spec.order():
        n[g.name] = len(g.points()) * (1 if g.source is None else n[g.source])
    return n


@pytest.mark.parametrize("n,want", [(18, 18), (1000, 1002), (3000, 3006), (10000, 10004)])
def test_hub_sim_sizes(n, want):
    from jaxlineage.zoo.specs import HUB_FAMILY, HUB_SIM

    spec = HUB_SIM(n)
    sizes = _expected_models(spec)
    assert sum(sizes.values()) == want
    roots = sizes["hub_root"]
    assert (
        sum(v for k, v in sizes.items() if not k.startswith("hub_teacher") and k != "hub_distill") == roots * HUB_FAMILY
    )
    assert sizes["hub_distill"] == sizes["hub_teacher"] >= 1
    with pytest.raises(ValueError, match="n must be"):
        HUB_SIM(10)


@pytest.mark.slow
def test_hub_sim_builds_with_the_true_graph(tmp_path):
    from jaxlineage import zoo
    from jaxlineage.zoo.specs import HUB_SIM

    z = zoo.build(HUB_SIM(18), tmp_path / "hub", progress=False)
    g = z.graph
    assert len(z.models()) == 18 and len(g.roots()) == 2
    kinds = sorted(r.kind for r in z.models() if r.parent_id is not None)
    assert kinds.count("permute") == 3 and kinds.count("int8") == 3 and kinds.count("distill") == 1
    root = next(r.id for r in z.models() if r.group == "hub_root")
    assert len(g.descendants(root)) == 15
    # permuted copies compute the same function as their parent
    perm = next(r for r in z.models() if r.group == "hub_perm")
    x = z.probe(16)
    net = z.network_for(perm.id)
    np.testing.assert_allclose(
        net.logits_fn(z.load(perm.id), x), net.logits_fn(z.load(perm.parent_id), x), rtol=1e-4, atol=1e-4
    )


def test_build_keeps_the_requested_order_when_a_source_regroups(family):
    pop, _ = family

    class Reversed:
        ids = pop.ids

        def load(self, ids):
            pos = {m: i for i, m in enumerate(pop.ids)}
            return ModelSet((pop.take([pos[i] for i in reversed(ids)]),))

    fp = hub.WeightFingerprint()
    a = hub.Index(fp, chunk=7).build(Reversed(), progress=False)
    b = hub.Index(fp, chunk=7).build(pop, progress=False)
    assert a.ids == b.ids
    np.testing.assert_array_equal(a.vectors, b.vectors)


def test_a_prune_of_a_prune_names_the_fullest_source(net, family):
    """Global magnitude pruning at 60 % of a model and of its own 30 %-pruned copy give the same weights bit
    for bit, so weights cannot tell the two parents apart; the verifier names the model that explains both
    (the root), not the nearer 30 %-pruned sibling, and still the exact source over its int8 copy."""
    from jaxlineage.zoo import magnitude_prune

    pop, _ = family
    root = jax.tree.map(lambda a: np.asarray(a[0]), pop.params)
    p30 = jax.tree.map(np.asarray, magnitude_prune(root, 0.3)[0])
    p60 = jax.tree.map(np.asarray, magnitude_prune(root, 0.6)[0])
    again = jax.tree.map(np.asarray, magnitude_prune(p30, 0.6)[0])
    for a, b in zip(jax.tree.leaves(p60), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)  # the identity the rule rests on
    cands = ModelSet((_pop([p30, root], ["root.p30", "root"], net),))
    cal = ModelSet((pop.take(range(1, 12)),))
    verifier = hub.AlignedWeightVerifier().calibrate(cal, cal, unrelated=~np.eye(11, dtype=bool))
    st = verifier.pair_stats(cands.populations[0], _pop([p60], ["q"], net))
    assert st[0, 2] < st[1, 2]  # the 30 %-pruned sibling is nearer in L2 ...
    assert (st[:, 4] == 1.0).all()  # ... and holds every weight of the query, as the root does
    scores, _ = verifier(cands, ModelSet((_pop([p60], ["q"], net),)))
    assert int(np.argmax(scores)) == 1
    # A 30 %-pruned query: only the root holds all its weights (the 60 %-pruned candidate lacks some).
    cands = ModelSet((_pop([p60, root], ["root.p60", "root"], net),))
    scores, _ = verifier(cands, ModelSet((_pop([p30], ["q"], net),)))
    assert int(np.argmax(scores)) == 1
    np.testing.assert_allclose(
        scores, hub.choice_score(verifier.pair_stats(cands.populations[0], _pop([p30], ["q"], net)))
    )


def test_calibrate_on_retrieved_unrelated_candidates(net, family):
    """``LineageSearch.calibrate``: the null is the statistic of each calibration query against exactly the
    k candidates the index retrieves for it (its own family excluded), recomputed here pair by pair."""
    pop, _ = family
    index = hub.Index(hub.WeightFingerprint(), kind="flat").build(pop, progress=False)
    search = hub.LineageSearch(index, pop, hub.AlignedWeightVerifier(), k=3)
    cal_ids = [f"root{i}" for i in range(4)]
    excl = {f"root{i}": [f"root{i}", f"perm{i}", f"noisy{i}"] for i in range(4)}
    with pytest.warns(UserWarning, match="no parent can be named"):  # 12 pairs: a null too small for k=3
        search.calibrate(pop.take([pop.ids.index(c) for c in cal_ids]), exclude=excl)
    res = index.search(pop.take([pop.ids.index(c) for c in cal_ids]), 3, exclude=excl)
    want = []
    for j, q in enumerate(cal_ids):
        qp = pop.take([pop.ids.index(q)])
        for c in res.ids[j]:
            assert c not in excl[q]
            ci = pop.ids.index(c)
            a, s = hub.aligned_similarity(
                jax.tree.map(lambda x, ci=ci: np.asarray(x[ci]), pop.params),
                jax.tree.map(lambda x: np.asarray(x[0]), qp.params),
                search.verifier.scorer.spec(qp, jax.tree.map(lambda x: np.asarray(x[0]), qp.params)),
            )
            want.append(a + hub.search.TIE_BREAK * s)
    np.testing.assert_allclose(np.sort(search.verifier.null_scores), np.sort(want), rtol=1e-12)
    with pytest.raises(hub.HubError, match="statistic"):
        hub.LineageSearch(index, pop, lambda c, q: (np.zeros(len(c)), np.ones(len(c))), k=3).calibrate(pop.take([0]))


# --------------------------------------------------------------------------- stage 3 over a mesh


@pytest.mark.slow  # 6-10 s each (four forced devices): the fast tier stays under 3 min
@pytest.mark.parametrize("arch", ["mlp", "convnet"])
def test_mesh_pair_stats_equal_the_numpy_pairs(arch):
    """Stage 3 over a mesh of 4 (forced CPU) devices: every pair's six statistics equal the numpy path's, for
    permuted, pruned, noisy and unrelated pairs (7 pairs: padded to 8 over the mesh)."""
    from jax.sharding import Mesh

    from jaxlineage.hub import sharded
    from jaxlineage.hub.search import _pair_stats
    from jaxlineage.zoo import magnitude_prune

    kwargs = {"features": FEATURES} if arch == "mlp" else {"channels": (3, 4), "hidden": 6}
    net = nets.make(arch, 5, **kwargs)
    rng = np.random.default_rng(1)
    roots = [jax.tree.map(np.asarray, net.init(jax.random.key(i))) for i in range(3)]
    spec = perm_lib.permutation_spec(net, roots[0])
    perm = jax.tree.map(
        np.asarray, perm_lib.apply_permutations(roots[0], spec, [rng.permutation(u) for u, _ in spec.values()])
    )
    pruned = jax.tree.map(np.asarray, magnitude_prune(roots[0], 0.5)[0])
    noisy = jax.tree.map(lambda w: w + 0.05 * np.std(w) * rng.standard_normal(w.shape).astype(w.dtype), roots[0])
    pairs = [(0, perm), (0, pruned), (0, noisy), (0, roots[1]), (1, roots[2]), (2, perm), (0, roots[0])]
    cands = nets.stack([roots[i] for i, _ in pairs])
    queries = nets.stack([q for _, q in pairs])
    want = np.array([_pair_stats(roots[i], q, spec) for i, q in pairs])
    assert len(jax.devices()) >= 4  # tests/conftest.py forces 4 host devices
    mesh = Mesh(np.array(jax.devices()[:4]), ("pairs",))
    with jax.enable_x64(True):
        got = sharded.pair_stats(cands, queries, spec, mesh=mesh)
        alone = sharded.pair_stats(cands, queries, spec)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(alone, want, rtol=1e-9, atol=1e-12)
    assert got[0, 0] == pytest.approx(1.0) and got[0, 4] == 1.0  # the permuted copy: aligned exactly, all copied
    got32 = sharded.pair_stats(cands, queries, spec, mesh=mesh)  # float32: to rounding
    np.testing.assert_allclose(got32, want, rtol=1e-4, atol=1e-5)


def test_verifier_on_a_mesh_gives_the_numpy_answers(net, family):
    from jax.sharding import Mesh

    pop, _ = family
    cal = ModelSet((pop.take(range(1, 12)),))
    unrelated = ~np.eye(11, dtype=bool)
    mesh = Mesh(np.array(jax.devices()[:4]), ("pairs",))
    plain = hub.AlignedWeightVerifier().calibrate(cal, cal, unrelated=unrelated)
    meshed = hub.AlignedWeightVerifier(mesh=mesh).calibrate(cal, cal, unrelated=unrelated)
    cands = ModelSet((pop.take([0, 1, 2, 24, 25]),))  # root0, two unrelated roots, noisy copies of root0, root1
    query = ModelSet((pop.take([12]),))  # root0's permuted copy
    with jax.enable_x64(True):
        s_mesh, p_mesh = meshed(cands, query)
    s_plain, p_plain = plain(cands, query)
    np.testing.assert_allclose(s_mesh, s_plain, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(p_mesh, p_plain)
    assert int(np.argmax(s_mesh)) == 0


# --------------------------------------------------------------------------- a user's own network


def _own_models(widths=(12, 7), n_roots=8, seed=0, arch="mlp"):
    """A user's MLP (layers ``enc``, ``mid``, ``cls``: alphabetical order is not the network's), labelled
    ``arch`` (the library's own name by default, which must not matter): roots and a noisy copy of root 0."""
    import flax.linen as nn  # noqa: PLC0415

    class Own(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = x.reshape((x.shape[0], -1))
            h = nn.relu(nn.Dense(widths[0], name="enc")(x))
            h = nn.relu(nn.Dense(widths[1], name="mid")(h))
            for j, w in enumerate(widths[2:]):
                h = nn.relu(nn.Dense(w, name=f"mid{j + 2}")(h))
            return nn.Dense(5, name="cls")(h)

    x = np.zeros((2, 28, 28, 1), np.float32)
    init = jax.jit(Own().init)
    roots = [jax.tree.map(np.asarray, init(jax.random.key(seed + i), x)) for i in range(n_roots)]
    rng = np.random.default_rng(seed)
    child = jax.tree.map(lambda w: w + 0.05 * np.std(w) * rng.standard_normal(w.shape).astype(w.dtype), roots[0])
    ids = [f"own{i}" for i in range(n_roots)]
    from jaxlineage import Models  # noqa: PLC0415

    return (
        Own(),
        Models.from_linen(Own(), roots, ids=ids, arch=arch),
        Models.from_linen(Own(), [child], ids=["own0-child"], arch=arch),
    )


def test_aligned_weights_on_a_users_network_read_the_spec_from_shapes_or_the_models():
    _, roots, child = _own_models(n_roots=5)
    scorer = hub.AlignedWeightScorer()
    one = jax.tree.map(lambda a: np.asarray(a[0]), roots.params)
    spec = scorer.spec(roots, one)  # the label "mlp" is not the library's MLP: inferred from the shapes
    assert [axes[0].path for _, axes in spec.values()] == [("params", "enc", "kernel"), ("params", "mid", "kernel")]
    s = scorer.score(ModelSet.of(roots), ModelSet.of(child), probe=None)[:, 0]
    assert int(np.argmax(s)) == 0 and s[0] > 0.99 > s[1:].max()
    # a permuted copy scores as its original
    perm = perm_lib.apply_permutations(one, spec, [np.random.default_rng(1).permutation(u) for u, _ in spec.values()])
    assert np.isclose(hub.aligned_similarity(one, jax.tree.map(np.asarray, perm), spec)[0], 1.0)
    # the models' own spec is used when given
    mine = {"mid": spec["mid"]}
    assert scorer.spec(dataclasses.replace(roots, perm_spec=mine), one) is mine
    # two square hidden layers allow several orders: a clear error that says what to pass
    _, square, _ = _own_models(widths=(9, 9, 9))
    with pytest.raises(hub.HubError, match=r"several layer orders.*perm_spec=.*spec_fn="):
        scorer.spec(square, jax.tree.map(lambda a: np.asarray(a[0]), square.params))
    # Models and ModelSet both calibrate
    v = hub.AlignedWeightVerifier().calibrate(roots, roots.take([1, 2, 3, 4]))
    assert v.null_scores.size == 20


def test_search_never_names_the_query_itself_and_warns_when_the_null_cannot_reach_alpha(probe):
    _, roots, child = _own_models(n_roots=8)
    index = hub.Index(hub.LogitFingerprint(probe, dim=8), kind="flat").build(roots)
    search = hub.LineageSearch(index, roots, hub.AlignedWeightVerifier(), k=3, alpha=0.05)
    # calibration on indexed models without exclude: each is left out of its own candidates, so the
    # null holds no self-match (aligned correlation 1)
    with pytest.warns(UserWarning, match=r"smallest Holm-adjusted p-value over k=3 candidates is 0.136 > alpha=0.05"):
        search.calibrate(roots.take([0, 1, 2, 3, 4, 5, 6]))  # 7 queries x 3 candidates: 3 / 22 > 0.05
    assert search.verifier.null_scores.size == 21 and search.verifier.null_scores.max() < 0.9
    (ans,) = search.find_parents(child)
    assert ans.parent is None and "no parent can be named" in ans.reason and "at least 59 pairs" in ans.reason
    (own,) = search.find_parents(roots.take([3]))
    assert "own3" not in own.candidates


def test_gram_fingerprint_reads_the_layer_order_from_shapes():
    _, roots, _ = _own_models()
    fp = hub.GramFingerprint(m=4)
    v = fp(roots)
    # the same models with layers renamed in the network's order give the same fingerprints
    ren = {"enc": "l1", "mid": "l2", "cls": "l3"}
    renamed = dataclasses.replace(roots, params={"params": {ren[k]: w for k, w in roots.params["params"].items()}})
    np.testing.assert_array_equal(v, fp(renamed))
    assert fp.signature(roots) == fp.signature(renamed) and "mlp" not in fp.signature(roots)
    _, square, _ = _own_models(widths=(9, 9, 9))
    with pytest.raises(hub.HubError, match="allow several orders"):
        fp(square)


@pytest.mark.slow  # ~5 s (238 reference inits): the fast tier stays under 3 min
def test_search_with_the_verdict_warns_when_its_references_cannot_reach_alpha_after_holm(probe):
    module, roots, _ = _own_models(n_roots=5)
    from jaxlineage import Models  # noqa: PLC0415

    init = jax.jit(module.init)
    x = np.zeros((2, 28, 28, 1), np.float32)

    def refs(n):
        trees = [init(jax.random.key(100 + i), x) for i in range(n)]
        return Models.from_linen(module, trees, ids=[f"r{i}" for i in range(n)])

    index = hub.Index(hub.LogitFingerprint(probe, dim=8), kind="flat").build(roots)
    # 39 references: a pair only the reference test sees has p >= 2 / 40, and Holm over k = 5 makes it 0.25
    with pytest.warns(UserWarning, match=r"with 39 references.*0\.25 > alpha=0\.05.*at least 199 references"):
        hub.LineageSearch(index, roots, hub.VerdictVerifier(data=probe, references=refs(39)), k=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hub.LineageSearch(index, roots, hub.VerdictVerifier(data=probe, references=refs(199)), k=5)
        hub.LineageSearch(index, roots, hub.VerdictVerifier(data=probe), k=5)  # the weight test alone: no floor
