"""The transformer LM: its symmetries, its Taylor scores against full Jacobians, text data, LM zoo ops."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlineage import linearize as L
from jaxlineage import nets, permutations
from jaxlineage import similarity as S
from jaxlineage.nets_lm import transformer_lm

Mode = L.Mode
PARTS = ("mlp", "heads", "qk", "vo", "residual")


def _tiny(**kw):
    cfg = dict(d_model=16, num_heads=4, num_layers=2, mlp_dim=24, max_len=12)
    cfg.update(kw)
    return transformer_lm(**cfg)


@jax.jit
def _randomise(variables, key):
    # O(1) weights everywhere (LayerNorm gains and biases included), so that a wrong permutation
    # moves the logits by far more than the tolerance.
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [w + 0.3 * jax.random.normal(k, w.shape) for k, w in zip(keys, leaves)])


@functools.cache
def _model():
    net = _tiny()
    return net, _randomise(net.init(jax.random.key(0)), jax.random.key(1))


def _tokens(n=3, t=12, seed=2, vocab=256):
    return jax.random.randint(jax.random.key(seed), (n, t), 0, vocab)


@pytest.mark.slow
def test_shapes_taps_and_causality():
    net, v = _model()
    x = _tokens()
    assert net.logits_fn(v, x).shape == (3, 12, 256)
    for tap in net.taps:
        d = 256 if tap == "logits" else 16
        assert net.feature_fn(tap)(v, x).shape == (3, 12 * d), tap
    # Causal: changing the last token changes no earlier position's logits.
    y = x.at[:, -1].set((x[:, -1] + 1) % 256)
    a, b = net.logits_fn(v, x), net.logits_fn(v, y)
    np.testing.assert_array_equal(a[:, :-1], b[:, :-1])
    assert float(jnp.abs(a[:, -1] - b[:, -1]).max()) > 1e-3
    assert nets.make("transformer_lm", 256, d_model=16, num_heads=4).name == "transformer_lm"
    with pytest.raises(ValueError, match="known taps"):
        net.feature_fn("block9")


@pytest.mark.slow  # 12-14 s (the transformer's compile): the fast tier stays under 3 min
@pytest.mark.parametrize("part", PARTS + ("all",))
def test_each_permutation_keeps_logits_and_moves_weights(part):
    net, v = _model()
    parts = PARTS if part == "all" else (part,)
    spec = permutations.transformer_lm_spec(v, parts=parts)
    assert spec and all(any(k.startswith(p) for k in spec) for p in parts)
    x = _tokens()
    base = net.logits_fn(v, x)
    assert float(jnp.abs(base).max()) > 1.0  # not vacuous: O(1) logits
    for seed in range(3):
        w = permutations.permute_params(v, spec, jax.random.key(10 + seed))
        np.testing.assert_allclose(net.logits_fn(w, x), base, atol=1e-5, rtol=0)
        moved = [
            float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(w)) if a.shape == b.shape
        ]
        assert max(moved) > 0.1


@pytest.mark.parametrize("part", PARTS)
def test_a_permutation_missing_one_axis_changes_logits(part):
    # The spec is not merely a set of axes the output ignores: dropping its first axis (a kernel)
    # breaks the function. (Not every axis is needed: the key bias adds a constant to each query's
    # scores, which the softmax removes, so leaving it unpermuted keeps the function.)
    net, v = _model()
    spec = permutations.transformer_lm_spec(v, parts=(part,))
    name, (units, axes) = next(iter(spec.items()))
    broken = {name: (units, axes[1:])}
    x = _tokens()
    w = permutations.permute_params(v, broken, jax.random.key(3))
    assert float(jnp.abs(net.logits_fn(w, x) - net.logits_fn(v, x)).max()) > 1e-3


def test_spec_by_name_and_errors():
    net, v = _model()
    full = permutations.permutation_spec(net, v)
    assert set(full) == {f"{p}{i}" for p in ("mlp", "heads", "qk", "vo") for i in (1, 2)} | {"residual"}
    assert full["residual"][0] == 16 and full["heads1"][0] == 4 and full["qk1"][0] == 4 and full["mlp2"][0] == 24
    with pytest.raises(permutations.PermutationError, match="unknown transformer_lm spec parts"):
        permutations.transformer_lm_spec(v, parts=("heads", "rows"))
    with pytest.raises(permutations.PermutationError, match="not a TransformerLM"):
        permutations.transformer_lm_spec({"params": {"dense1": {}}})


# --------------------------------------------------------------------------- Taylor scores: oracle


def _full_jacobian_jd(f, parent, child, x):
    """J_p Delta by contracting the full Jacobian of the whole batch (jacrev), the oracle."""
    jac = jax.jacrev(lambda th: f(th, x))(parent)  # leaves [N, D, *leaf.shape]
    delta = jax.tree.map(jnp.subtract, child, parent)
    terms = jax.tree.map(lambda j, d: jnp.tensordot(j, d, axes=d.ndim), jac, delta)
    return sum(jax.tree.leaves(terms))


@pytest.mark.slow  # 45-195 s per tap on 2 loaded cores (float64 compilations of 8 metric x mode pairs)
@pytest.mark.parametrize("tap", ["attn1", "block2", "logits"])
def test_taylor_scores_equal_full_jacobian_contraction_float64(tap):
    with jax.enable_x64(True):
        net = _tiny(d_model=8, num_heads=2, mlp_dim=12, max_len=5, num_classes=11)
        key = jax.random.key(4)
        parent = jax.tree.map(lambda w: w.astype(jnp.float64), _randomise(net.init(key), jax.random.key(5)))
        noise = _randomise(jax.tree.map(jnp.zeros_like, parent), jax.random.key(6))
        child = jax.tree.map(lambda p, e: p + 0.1 * e.astype(jnp.float64), parent, noise)
        x = jax.random.randint(jax.random.key(7), (4, 5), 0, 11)
        f = net.feature_fn(tap)
        f_p, f_c = f(parent, x), f(child, x)
        assert f_p.dtype == jnp.float64
        jd = jax.jit(_full_jacobian_jd, static_argnums=0)(f, parent, child, x)
        _, jd_lib = L.feature_jvp(f, parent, child, x)
        np.testing.assert_allclose(jd_lib, jd, rtol=1e-10, atol=1e-12)
        alphas = jnp.array([0.0, 1e-2, 0.5])
        # J Delta above is what depends on the tap. Each metric's own Taylor step is checked elsewhere in float64:
        # the norm metrics against the paper's closed forms (tests/test_linearize.py), CKA and dCor against their
        # definitions on the linearised features (tests/test_fastpath.py). Here a norm and a Gram metric at one
        # tap, and L2 end to end at the others (each metric x mode is a float64 compilation).
        metrics = ("l2", "cka") if tap == "attn1" else ("l2",)
        for metric in map(S.get, metrics):
            s0 = metric(f_p, f_c)
            # FIRST_ORDER: s0 + alpha <grad_F s, J Delta>, the gradient by autodiff of the metric alone.
            g = jax.grad(metric)(f_p, f_c)
            want = s0 + alphas * jnp.sum(g * jd)
            got = L.pair_similarity(metric, f, parent, child, x, alpha=alphas, mode=Mode.FIRST_ORDER)
            assert abs(float(want[-1] - s0)) > 1e-6 * abs(float(s0)) + 1e-12, metric.name  # not vacuous
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, err_msg=f"{metric.name} first_order")
            # LINEARIZED: the metric on the exactly linearised child.
            want = jnp.stack([metric(f_p + a * jd, f_c) for a in alphas])
            got = L.pair_similarity(metric, f, parent, child, x, alpha=alphas, mode=Mode.LINEARIZED)
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, err_msg=f"{metric.name} linearized")


# --------------------------------------------------------------------------- text


def test_text_corpora_splits_and_windows():
    from jaxlineage import text

    tr, te = text.load_text("pydoc", "train"), text.load_text("pydoc", "test")
    assert tr.tokens.dtype == np.uint8 and len(tr) > 5 * len(te) > 0
    assert "pydoc_data" in tr.source and "sha256" in tr.source and "Python 3" in tr.source
    docs, _ = text.documents("pydoc")
    assert tr.documents + te.documents == len(docs)
    # Every document lands in exactly one split (by its name's hash).
    test_docs = [b for d, b in docs if text._is_test(d)]
    assert te.tokens.tobytes() == b"".join(b + b"\n" for b in test_docs)
    x, y = text.sequences("pydoc@16", "test")
    assert x.shape[1] == 16 and x.dtype == np.int32 and x.shape == y.shape
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # y is x shifted by one byte
    n = (len(te) - 1) // 16
    assert x.shape[0] == n
    x2, _ = text.sequences("pydoc", "test", seq_len=16, limit=5)
    np.testing.assert_array_equal(x2, x[:5])  # a cap keeps a prefix of the same shuffle
    code = text.load_text("stdlib", "train")
    assert b"def " in code.tokens[:200000].tobytes() and "*.py" in code.source
    assert text.is_text_dataset("stdlib_net@32") and not text.is_text_dataset("embedded")
    with pytest.raises(text.TextError, match="unknown text corpus"):
        text.sequences("shakespeare")
    with pytest.raises(text.TextError, match="unknown split"):
        text.load_text("pydoc", "valid")


# --------------------------------------------------------------------------- LoRA


def test_lora_merged_equals_adapter_run_unmerged():
    from jaxlineage.zoo import ops

    net, v = _model()
    adapters = ops.lora_init(v, 3, jax.random.key(8))
    assert set(adapters) == {f"attn{i}/{m}" for i in (1, 2) for m in ("query", "key", "value", "out")} | {
        f"{m}{i}" for i in (1, 2) for m in ("mlp_in", "mlp_out")
    }
    x = _tokens()
    # Fresh adapters (b = 0) are the identity; trained ones (random b here) are not.
    np.testing.assert_array_equal(net.logits_fn(ops.lora_merge(v, adapters, 2.0), x), net.logits_fn(v, x))
    adapters = jax.tree.map(lambda w: w + 0.3 * jax.random.normal(jax.random.key(9), w.shape), adapters)
    merged = net.logits_fn(ops.lora_merge(v, adapters, 2.0), x)
    unmerged = ops.lora_apply_unmerged(net, v, adapters, 2.0, x)
    assert float(jnp.abs(merged - net.logits_fn(v, x)).max()) > 0.1
    np.testing.assert_allclose(merged, unmerged, atol=2e-5, rtol=1e-5)


# --------------------------------------------------------------------------- the LM zoo


@pytest.fixture(scope="module")
def lm_zoo(tmp_path_factory):
    from jaxlineage import zoo

    return zoo.build(zoo.LM_TINY, tmp_path_factory.mktemp("lm_tiny"), progress=False)


@pytest.mark.slow
def test_lm_zoo_operations_do_what_they_say(lm_zoo):
    from jaxlineage import text

    z = lm_zoo
    net = z.network
    x = text.sequences("pydoc@16", "test", limit=8)[0]
    bases = z.group("base")
    assert len(bases) == 2 and len({b.init_key for b in bases}) == 2
    for b in bases:
        assert 0.05 < b.test_acc < 1.0  # learnt something beyond chance (1/256)
    for b in bases:
        pb = z.load(b.id)
        kids = {r.group: r for r in z.records if r.parent_id == b.id}
        assert set(kids) >= {"ft", "ft_net", "lora", "cpt", "prune", "int8", "distill", "distill_small"}
        # Function-preserving permutations: same logits (float32), other weights.
        for g in ("perm_heads", "perm_mlp", "perm_residual"):
            pp = z.load(kids[g].id)
            np.testing.assert_allclose(net.logits_fn(pp, x), net.logits_fn(pb, x), atol=1e-4, rtol=1e-4)
            assert kids[g].fidelity > 0.99
        # Prune: exactly half of the prunable kernels are zero; int8: at most 255 levels per tensor.
        pr = z.load(kids["prune"].id)["params"]
        ks = [np.asarray(pr[m][k]["kernel"]) for m in ("attn1", "attn2") for k in ("query", "key", "value", "out")]
        ks += [np.asarray(pr[f"{m}{i}"]["kernel"]) for m in ("mlp_in", "mlp_out") for i in (1, 2)]
        n = sum(k.size for k in ks)
        assert sum(int((k == 0).sum()) for k in ks) == round(0.5 * n)
        assert (np.asarray(pr["head"]["kernel"]) != 0).all()
        q = z.load(kids["int8"].id)
        assert all(len(np.unique(np.asarray(w))) <= 255 for w in jax.tree.leaves(q))
        # LoRA moved every adapted kernel by a rank <= 4 update and left embeddings and head alone.
        lo = z.load(kids["lora"].id)
        d = np.asarray(lo["params"]["mlp_in1"]["kernel"] - pb["params"]["mlp_in1"]["kernel"])
        assert np.abs(d).max() > 0 and np.linalg.matrix_rank(d, tol=1e-6) <= 4
        np.testing.assert_array_equal(lo["params"]["tok_embed"], pb["params"]["tok_embed"])
        np.testing.assert_array_equal(lo["params"]["head"]["kernel"], pb["params"]["head"]["kernel"])
        # The small student has half the width.
        st = z.load(kids["distill_small"].id)
        assert st["params"]["tok_embed"].shape[1] == pb["params"]["tok_embed"].shape[1] // 2
    # Merge: two parents (the two fine-tunes of one base), the average of their weights.
    for m in z.group("merge"):
        a, b = z.get(m.parent_id), z.get(m.partner_id)
        assert (a.group, b.group) == ("ft", "ft_net") and a.parent_id == b.parent_id
        assert z.graph.parents(m.id) == (a.id, b.id) and m.generation == 2
        want = jax.tree.map(lambda u, v: 0.5 * u + 0.5 * v, z.load(a.id), z.load(b.id))
        jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7), z.load(m.id), want)
        assert z.graph.relation(a.parent_id, m.id).value == "ancestor"
    assert len(z.group("merge")) == 2


# --------------------------------------------------------------------------- the attention invariant


def test_attention_invariant_survives_every_symmetry_and_separates_strangers():
    from jaxlineage import lm_invariants as inv

    net, v = _model()
    base = inv.attention_invariants(v)
    assert base.shape == (2, 4, len(inv.PROBE_TOKENS), len(inv.PROBE_TOKENS))
    spec = permutations.transformer_lm_spec(v)
    # Residual and inside-head permutations leave every head's matrix unchanged.
    for parts in (("residual",), ("qk",), ("vo",), ("mlp",)):
        w = permutations.permute_params(v, permutations.transformer_lm_spec(v, parts=parts), jax.random.key(5))
        np.testing.assert_allclose(inv.attention_invariants(w), base, rtol=1e-4, atol=1e-4 * float(jnp.abs(base).max()))
    # Heads permuted: the same matrices in another order, and the matched score is 1.
    w = permutations.permute_params(v, spec, jax.random.key(6))
    assert inv.attention_match_score(v, w) > 1 - 1e-5
    other = _randomise(net.init(jax.random.key(7)), jax.random.key(8))
    assert inv.attention_match_score(v, other) < 0.5


def test_lm_specs_validate_partners_and_parts():
    from jaxlineage import zoo

    tiny = zoo.LM_TINY
    assert tiny.generation("merge") == 2 and tiny.group("merge").partner == "ft_net"
    assert zoo.spec_from_json(tiny.to_json()) == tiny
    assert "partner" not in zoo.TINY.to_graph().to_json()["groups"][0]  # one-parent specs' JSON unchanged
    base = tiny.groups[:1]
    with pytest.raises(zoo.ZooError, match="is not one of"):
        zoo.GraphSpec("x", tiny.tasks, base + (zoo.Group("p", "permute_lm", source="base", grid=dict(parts="rows")),))
    with pytest.raises(zoo.ZooError, match="needs a partner group"):
        zoo.GraphSpec("x", tiny.tasks, base + (zoo.Group("m", "merge", source="base"),))
    with pytest.raises(zoo.ZooError, match="takes no partner"):
        zoo.GraphSpec("x", tiny.tasks, base + (zoo.Group("f", "finetune", source="base", partner="base"),))
    with pytest.raises(zoo.ZooError, match="unknown partner group"):
        zoo.GraphSpec("x", tiny.tasks, base + (zoo.Group("m", "merge", source="base", partner="nope"),))
