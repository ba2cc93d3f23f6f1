"""Lineage search over a model hub: fingerprint, retrieve, verify.

"Which of these thousands of models is this model's parent, if any?" in three stages:

1. **Fingerprint** (:mod:`jaxlineage.hub.fingerprints`): a small vector per model, invariant
   to hidden-unit permutations: logits on a fixed probe, randomly projected
   (:class:`LogitFingerprint`), or per-layer sorted singular values and unit norms
   (:class:`WeightFingerprint`), or both (:class:`ConcatFingerprint`).
2. **Retrieve** (:mod:`jaxlineage.hub.index`): the ``k`` nearest fingerprints in FAISS
   (:class:`Index`: flat = exact, IVF, HNSW; sharded with ``faiss.IndexShards``), built
   resumably and saved atomically with a JSON manifest.
3. **Verify** (:mod:`jaxlineage.hub.search`): exact scoring of the ``k`` candidates with
   p-values, Holm over the ``k``, a parent or ``NO_PARENT`` (:class:`LineageSearch`).

On your own models (any linen module; the layer order is read from the shapes, not the names).
Here 25 untrained models stand in for a hub, and a noisy copy of one for a fine-tune:

>>> import flax.linen as nn, jax, numpy as np
>>> from jaxlineage import Models, hub
>>> class MyMLP(nn.Module):
...     @nn.compact
...     def __call__(self, x):
...         h = nn.relu(nn.Dense(32, name="enc")(x.reshape(len(x), -1)))
...         return nn.Dense(10, name="cls")(nn.relu(nn.Dense(16, name="mid")(h)))
>>> x = np.random.default_rng(0).normal(size=(64, 784)).astype(np.float32)  # a probe of your inputs
>>> trees = [MyMLP().init(jax.random.key(i), x[:1]) for i in range(25)]
>>> models = Models.from_linen(MyMLP(), trees, ids=[f"m{i}" for i in range(25)])
>>> index = hub.Index(hub.LogitFingerprint(x, dim=32)).build(models, progress=False)  # stages 1-2
>>> search = hub.LineageSearch(index, models, hub.AlignedWeightVerifier(), k=5, alpha=0.05)
>>> search = search.calibrate(models)  # indexed models as unrelated queries: pass exclude={id: its family}
>>> child = jax.tree.map(lambda w: w + 0.01 * jax.random.normal(jax.random.key(1), w.shape), trees[7])
>>> (answer,) = search.find_parents(Models.from_linen(MyMLP(), [child], ids=["mine"]))
>>> answer.parent, round(answer.pvalue, 4)  # 1 / (125 null pairs + 1), times Holm's k = 5
('m7', 0.0397)
>>> stranger = Models.from_linen(MyMLP(), [MyMLP().init(jax.random.key(99), x[:1])], ids=["new"])
>>> search.find_parents(stranger)[0].parent is None  # NO_PARENT: no candidate's null is rejected
True

The null's size bounds the p-values: with ``n`` calibration pairs no p-value is below ``k / (n + 1)``
after Holm, so calibrate on at least ``1 / alpha`` queries (a warning says when too few).
Which fingerprint: on MLPs, :class:`GramFingerprint` retrieved the parents of fine-tunes, prunes,
int8 and permuted copies best in ``benchmarks/hub.py`` (recall@10 at least 0.998 at 10^4 models);
:class:`LogitFingerprint` reads any architecture, but ranks models fine-tuned on the same data
close together, so give it a larger ``k``. ``hub.VerdictVerifier(data=x, references=...)`` needs no
calibration, but only references made like the hub's models keep its p-values valid (see its docs).
On a zoo with known lineage: ``hub.ZooSource(zoo.build(zoo.specs.HUB_SIM(1000), dir))`` and
``benchmarks/hub.py``.
"""

from jaxlineage.hub.fingerprints import (
    ConcatFingerprint,
    Fingerprint,
    GramFingerprint,
    HubError,
    LogitFingerprint,
    WeightFingerprint,
    fingerprint_from_json,
)
from jaxlineage.hub.index import Index, ModelSource, SearchResult, ZooSource, as_source
from jaxlineage.hub.search import (
    AlignedWeightScorer,
    AlignedWeightVerifier,
    Answer,
    LineageSearch,
    ScorerVerifier,
    VerdictVerifier,
    Verifier,
    aligned_distance,
    aligned_similarity,
    choice_score,
    holm_adjusted,
)

__all__ = [
    "AlignedWeightScorer",
    "AlignedWeightVerifier",
    "Answer",
    "ConcatFingerprint",
    "Fingerprint",
    "GramFingerprint",
    "HubError",
    "Index",
    "LineageSearch",
    "LogitFingerprint",
    "ModelSource",
    "ScorerVerifier",
    "VerdictVerifier",
    "SearchResult",
    "Verifier",
    "WeightFingerprint",
    "ZooSource",
    "aligned_distance",
    "aligned_similarity",
    "as_source",
    "choice_score",
    "fingerprint_from_json",
    "holm_adjusted",
]
