"""``references.train`` / ``references.derive``: reference models and their attacked strata, checked against
their definitions (exact magnitude pruning, masks held through repair, students of their own teachers)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlineage import references
from jaxlineage.models import Models
from jaxlineage.references import ReferenceError


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="out")(nn.relu(nn.Dense(24, name="fc1")(x)))


def _task(n=256):
    x = jax.random.normal(jax.random.key(0), (n, 8))
    w = jax.random.normal(jax.random.key(1), (8, 3))
    return np.asarray(x), np.asarray(jnp.argmax(x @ w, axis=1))


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    x, y = _task()
    like = Models.from_linen(Net(), [Net().init(jax.random.key(0), x[:1])], ids=["A"])
    return references.train(like, x, y, n=4, epochs=2, lr=1e-2, batch_size=32, chunk=2)


class Narrow(nn.Module):
    """Another architecture: students of ``Net``'s teachers."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="head_out")(nn.tanh(nn.Dense(10, name="h")(x)))


def _kl_teacher_student(teachers, students, x):
    logp = lambda ms: jax.nn.log_softmax(jax.vmap(ms.logits_fn, in_axes=(0, None))(ms.params, x), -1)
    t, s = logp(teachers), logp(students)
    return np.asarray(jnp.mean(jnp.sum(jnp.exp(t)[:, None] * (t[:, None] - s[None]), -1), -1))  # [teacher, student]


def _own_teacher_nearest(kl):
    return np.all(np.diag(kl) < np.min(np.where(np.eye(len(kl), dtype=bool), np.inf, kl), axis=0))


def _kernels(params):
    return [np.asarray(w) for path, w in jax.tree_util.tree_leaves_with_path(params) if "kernel" in str(path[-1])]


def test_prune_zeros_exactly_the_smallest_weights(refs):
    x, y = _task()
    pruned = references.derive(refs, "prune", x, y, sparsity=0.5, epochs=0)
    assert pruned.ids == tuple(f"prune-{i}" for i in refs.ids)
    assert pruned.info["prune-ref0"]["derived_from"] == "ref0"
    for i in range(len(refs)):
        before = np.concatenate([w.ravel() for w in _kernels(refs.one(i))])
        after = np.concatenate([w.ravel() for w in _kernels(pruned.one(i))])
        zero = after == 0
        assert zero.sum() == round(0.5 * before.size)  # exact sparsity over all kernels (no layer named head)
        assert np.abs(before[zero]).max() <= np.abs(before[~zero]).min()  # the smallest magnitudes went
        np.testing.assert_array_equal(after[~zero], before[~zero])  # one-shot: the rest untouched


def test_prune_repair_keeps_the_mask_and_trains_the_rest(refs):
    x, y = _task()
    shot = references.derive(refs, "prune", x, y, sparsity=0.5, epochs=0)
    repaired = references.derive(refs, "prune", x, y, sparsity=0.5, epochs=1, lr=1e-2)
    a = np.concatenate([w.ravel() for w in _kernels(shot.one(0))])
    b = np.concatenate([w.ravel() for w in _kernels(repaired.one(0))])
    assert np.all(b[a == 0] == 0) and not np.allclose(a[a != 0], b[a != 0])


@pytest.mark.slow  # about 8 s: two distillations
def test_distilled_students_follow_their_own_teachers_and_are_cached(refs, tmp_path, monkeypatch):
    x, _ = _task()
    students = references.derive(refs, "distill", x, epochs=8, lr=5e-2, temperature=4.0, workdir=tmp_path, chunk=2)
    # Fresh initialisations, not copies of the teachers.
    assert not np.allclose(_kernels(students.one(0))[0], _kernels(refs.one(0))[0])
    assert _own_teacher_nearest(_kl_teacher_student(refs, students, x))
    # Students of another architecture (``student=``): its signature and functions, still their teachers'.
    narrow = Models.from_linen(Narrow(), [Narrow().init(jax.random.key(0), x[:1])], ids=["N"])
    other = references.derive(refs, "distill", x, epochs=8, lr=5e-2, temperature=4.0, student=narrow, chunk=2)
    assert other.signature == narrow.signature and other.ids == tuple(f"distill-{i}" for i in refs.ids)
    assert _own_teacher_nearest(_kl_teacher_student(refs, other, x))
    # A second call loads the cached chunks: no training.
    from jaxlineage.zoo import training

    monkeypatch.setattr(training, "train_population", lambda *a, **k: pytest.fail("retrained"))
    again = references.derive(refs, "distill", x, epochs=8, lr=5e-2, temperature=4.0, workdir=tmp_path, chunk=2)
    np.testing.assert_array_equal(_kernels(again.one(3))[0], _kernels(students.one(3))[0])


def test_derive_reports_bad_settings(refs):
    x, y = _task()
    with pytest.raises(ReferenceError, match="unknown kind 'quantise'"):
        references.derive(refs, "quantise", x, y)
    with pytest.raises(ReferenceError, match="'prune' takes no temperature"):
        references.derive(refs, "prune", x, y, temperature=2.0)
    with pytest.raises(ReferenceError, match="sparsity must be in"):
        references.derive(refs, "prune", x, y, sparsity=1.5)
    with pytest.raises(ReferenceError, match="pass y"):
        references.derive(refs, "prune", x)
    with pytest.raises(ReferenceError, match="student= is for 'distill'"):
        references.derive(refs, "prune", x, y, student=refs)
    with pytest.raises(ReferenceError, match="'transfer' trains on labelled data; pass y"):
        references.derive(refs, "transfer", x, head="out")
    with pytest.raises(ReferenceError, match=r"re-initialises the head 'head'.*one of \['fc1', 'out'\]"):
        references.derive(refs, "transfer", x, y)


def test_transfer_gives_a_fresh_head_and_trains_every_parameter_on_the_new_task(refs):
    x, y = _task()
    y2 = np.asarray((y + 1) % 3)  # another task on the same inputs
    still = references.derive(refs, "transfer", x, y2, lr=0.0, epochs=1, head="out")
    moved = references.derive(refs, "transfer", x, y2, lr=5e-2, epochs=5, head="out")
    acc = lambda ms: np.mean(
        np.asarray(jax.vmap(ms.logits_fn, in_axes=(0, None))(ms.params, x)).argmax(-1) == y2[None], axis=1
    )
    heads = [np.asarray(still.one(i)["params"]["out"]["kernel"]) for i in range(len(refs))]
    for i in range(len(refs)):
        ref, new = refs.one(i)["params"], still.one(i)["params"]
        np.testing.assert_array_equal(new["fc1"]["kernel"], ref["fc1"]["kernel"])  # lr 0: the backbone kept
        assert not np.allclose(heads[i], ref["out"]["kernel"])  # a fresh head, not the reference's
        assert all(not np.allclose(heads[i], heads[j]) for j in range(i))  # its own draw
        assert not np.allclose(moved.one(i)["params"]["fc1"]["kernel"], ref["fc1"]["kernel"])  # every parameter
    assert np.all(acc(moved) > acc(refs) + 0.2), (acc(moved), acc(refs))  # they learned the new task
    assert moved.ids[0].startswith("transfer-")


def test_references_never_start_from_a_zoo_models_keys():
    """The zoo starts a model from ``fold_in(key(init_seed), salt)`` with small seeds and salts; reference ``i``
    once started from ``fold_in(key(seed), i)``, which is the zoo's source seed 0 under salt ``i``: a
    "reference" was then the source itself. With lr = 0 the references keep their initial weights, and none
    may be any such zoo start."""
    x, y = _task()
    kernel = lambda tree: _kernels(tree)[0]  # a kernel identifies the key (biases start at 0)
    like = Models.from_linen(Net(), [Net().init(jax.random.key(0), x[:1])], ids=["A"])
    still = references.train(like, x, y, n=3, epochs=1, lr=0.0, batch_size=64, seed=0)
    starts = [np.asarray(kernel(still.params))[i] for i in range(3)]
    zoo = [
        np.asarray(kernel(Net().init(jax.random.fold_in(jax.random.key(s), salt), x[:1])))
        for s in range(20)
        for salt in range(20)
    ]
    assert all(not np.array_equal(r, z) for r in starts for z in zoo)
    # The documented keys: fold_in(key(seed + KEY_OFFSET), i).
    for i, r in enumerate(starts):
        want = kernel(Net().init(jax.random.fold_in(jax.random.key(references.KEY_OFFSET), i), x[:1]))
        np.testing.assert_array_equal(r, np.asarray(want))
