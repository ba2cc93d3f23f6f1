"""Why the combined Lineage Detector can lose to its weight token (issue 26): one fold, epoch by epoch.

    python benchmarks/detector_diagnose.py --workdir /tmp/quick --fold 0 [--variant both]
        [--epochs 8] [--batch-size 4] [--n-probe 16] [--weight-pool 1] [--feature-pool 1]
        [--out benchmarks/results/detector_diagnose.jsonl]

Replays one fold of ``eval.protocols.run`` on the closed-set identify scenario (the same folds,
the same fold key, the same validation split as :meth:`DetectorScorer.fit`), trains the detector
with the fold's *test* children as a monitor (recorded every epoch, never used to choose the
epoch) and writes one JSON line: the training history (train / validation / test loss and
accuracy per epoch), the chosen epoch, the test accuracy at it, the label counts, and the
feature and weight scales of the fold's examples.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import numpy as np
from _common import setup_logging, write

from jaxlineage import detector, zoo
from jaxlineage.eval import methods, protocols, scenarios


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/jl_zoo_quick", help="the built zoo's folder")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", default="both", choices=("both", "weights", "features"))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--learning-rate", type=float, default=0.01)
    ap.add_argument("--n-probe", type=int, default=16)
    ap.add_argument("--weight-pool", type=int, default=1)
    ap.add_argument("--feature-pool", type=int, default=1)
    ap.add_argument("--init-seed", type=int, default=None, help="another training key (default: the protocol's)")
    ap.add_argument("--out", default="benchmarks/results/detector_diagnose.jsonl")
    args = ap.parse_args(argv)
    setup_logging()

    z = zoo.Zoo.open(args.workdir)
    s = scenarios.identify(z)
    key = jax.random.key(args.seed)
    fold_idx = protocols.folds(s.split_keys, args.folds, key=key)
    test = fold_idx[args.fold]
    train = np.concatenate([g for h, g in enumerate(fold_idx) if h != args.fold])
    drop = {"both": {}, "weights": {"feature_tap": None}, "features": {"weight_layer": None}}[args.variant]
    scorer = methods.DetectorScorer(
        n_probe=args.n_probe,
        module=dict(difference_init=True),
        batch_size=args.batch_size,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        weight_pool=args.weight_pool,
        feature_pool=args.feature_pool,
        **drop,
    )
    tr_s = s.take_queries(train)
    # DetectorScorer.fit's split: split key, train key; the validation share is the first
    # round(val_fraction * n) queries of a permutation (one split key per query here).
    split_key, train_key = jax.random.split(jax.random.fold_in(key, args.fold))
    if args.init_seed is not None:
        train_key = jax.random.key(args.init_seed)
    n = len(train)
    perm = np.asarray(jax.random.permutation(split_key, n))
    n_val = max(1, int(round(scorer.val_fraction * n)))
    va, tr = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    ex = scorer.examples(tr_s.candidates, tr_s.queries, probe=s.probe, labels=tr_s.labels)
    ex_test = scorer.examples(s.candidates, s.queries.take(test), probe=s.probe, labels=s.labels[test])
    t0 = time.perf_counter()
    det = detector.train(
        ex.take(tr),
        ex.take(va),
        key=train_key,
        module=detector.LineageDetector(difference_init=True),
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        monitor=ex_test,
    )
    wall = time.perf_counter() - t0
    res = detector.assess(det, ex_test)
    scales = {}
    for name in ("weights", "features"):
        a = getattr(ex, f"parent_{name}")
        if a is not None:
            d = np.abs(getattr(ex, f"child_{name}")[:, None] - a[None]).mean(axis=(2, 3))  # [M, K]
            scales[name] = {
                "mean_abs": float(np.abs(a).mean()),
                "std": float(a.std()),
                "nearest_parent_accuracy_train": float(np.mean(d.argmin(1) == ex.labels)),
            }
    rec = {
        "benchmark": "detector_diagnose",
        "zoo_dir": args.workdir,
        "settings": {**vars(args), **scorer.settings},
        "fold": args.fold,
        "test_ids": [s.queries.ids[i] for i in test],
        "n_train": len(tr),
        "n_val": len(va),
        "train_label_counts": np.bincount(ex.labels[tr], minlength=ex.num_candidates).tolist(),
        "test_label_counts": np.bincount(ex_test.labels, minlength=ex.num_candidates).tolist(),
        "best_epoch": det.best_epoch,
        "test_accuracy": res["accuracy"],
        "test_predictions": res["predictions"].tolist(),
        "test_labels": res["labels"].tolist(),
        "history": list(det.history),
        "scales": scales,
        "wall_s": wall,
        "load": pathlib.Path("/proc/loadavg").read_text().split()[:3],
    }
    write(args.out, rec)
    print(
        f"fold {args.fold} {args.variant}: best epoch {det.best_epoch}, test {res['accuracy']:.2f}; per epoch test "
        + " ".join(f"{h['monitor_accuracy']:.2f}" for h in det.history)
        + "; val "
        + " ".join(f"{h['val_accuracy']:.2f}/{h['val_loss']:.2f}" for h in det.history)
        + f" ({wall:.0f}s)",
        flush=True,
    )


if __name__ == "__main__":
    main()
