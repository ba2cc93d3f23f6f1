"""Why the Lineage Detector's own open-set answer is "no parent" for every query (issue 16), as JSON lines.

    python -m jaxlineage.zoo --spec quick --workdir /tmp/jl_pvalues/quick
    python benchmarks/detector_open_set.py --workdir /tmp/jl_pvalues/quick       # 3 folds, ~3 min at load 2-3
    python benchmarks/detector_open_set.py --epochs 100 --only-fold 0   # ~12 min at load 4-5

The open-set scenario of ``benchmarks/pvalues.py openset`` (quick, parents 0, 1 and 6
withheld: 30 known queries, 20 unrelated to every candidate, 6 shared-init children left
out), random folds of its queries. Per fold: ``DetectorScorer`` fitted on the others, then
``decide`` (the detector's argmax over its candidate logits and its constant "no parent"
logit) on the test and the training queries, the margin (best candidate logit minus the
no-parent logit) and its AUC of known against parentless queries, and the training history.
Appends one JSON line per fold to ``--out`` (default ``benchmarks/results/detector_open_set.jsonl``).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from _common import setup_logging, write

from jaxlineage import zoo as zoo_lib
from jaxlineage.eval import NO_PARENT, metrics
from jaxlineage.eval import pvalues as pv
from jaxlineage.eval.methods import DetectorScorer


def fold_record(s, train, test, *, epochs: int, key: jax.Array) -> dict:
    t0 = time.time()
    fitted = DetectorScorer(epochs=epochs).fit(s.take_queries(train), key=key)
    p = fitted.detector.variables["params"]
    no_parent = float(np.dot(p["no_parent_token"], p["head"]["kernel"][:, 0]) + p["head"]["bias"][0])
    out = {"epochs": epochs, "best_epoch": fitted.detector.best_epoch, "no_parent_logit": no_parent}
    for name, idx in (("test", test), ("train", train)):
        st = fitted.score(s.candidates, s.queries.take(idx), probe=s.probe)
        lab = s.labels[idx]
        known = lab != NO_PARENT
        d = fitted.decide(st)
        margin = st.max(0)  # open-set scores are candidate logits minus the no-parent logit
        out[name] = {
            "known": int(known.sum()),
            "no_parent": int((~known).sum()),
            "known_right": int(np.sum(d[known] == lab[known])),
            "no_parent_right": int(np.sum(d[~known] == NO_PARENT)),
            "closed_set_right": int(np.sum(st.argmax(0)[known] == lab[known])),
            "margin_auc": metrics.roc_auc(margin[known], margin[~known]),
            "margin_range": [float(margin.min()), float(margin.max())],
        }
    out["history"] = list(fitted.detector.history)
    out["wall_s"] = time.time() - t0
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="/tmp/jl_pvalues/quick", help="zoo.QUICK's folder (built if absent)")
    ap.add_argument("--withhold", default="0,1,6", help="indices of the parents withheld from the candidates")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--only-fold", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/detector_open_set.jsonl")
    args = ap.parse_args(argv)
    setup_logging()
    z = zoo_lib.build(zoo_lib.QUICK, args.workdir, progress=False)
    parents = [r.id for r in z.group("parent")]
    s = pv.open_set_scenario(z, withheld=[parents[int(i)] for i in args.withhold.split(",")]).scenario
    folds = np.array_split(np.random.default_rng(args.seed).permutation(len(s.queries)), args.folds)
    for f in range(args.folds) if args.only_fold is None else [args.only_fold]:
        test = np.sort(folds[f])
        train = np.sort(np.concatenate([folds[g] for g in range(args.folds) if g != f]))
        rec = fold_record(s, train, test, epochs=args.epochs, key=jax.random.fold_in(jax.random.key(args.seed), f))
        write(args.out, {"experiment": "detector-open-set", "fold": f, "folds": args.folds, **rec})


if __name__ == "__main__":
    main()
