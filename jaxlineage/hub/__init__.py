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

Usage::

    from jaxlineage import hub, zoo
    z = zoo.build(zoo.specs.HUB_SIM(1000), "/tmp/hub")
    source = hub.ZooSource(z)
    index = hub.Index(hub.LogitFingerprint(z.probe(256)), kind="hnsw").build(source, workdir="/tmp/hub-fp")
    index.save("/tmp/hub-index")
    verifier = hub.AlignedWeightVerifier().calibrate(cal_models, cal_models, unrelated=cal_unrelated)
    search = hub.LineageSearch(index, source, verifier, k=10, alpha=0.05)  # or hub.VerdictVerifier(data=x)
    answers = search.find_parents(queries)          # Answer(query, parent or None, pvalue, ...)
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
