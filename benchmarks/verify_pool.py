"""Exploratory: which pooled statistic should `verify`'s reference test rank the pool on?

The pooled reference test (:func:`jaxlineage.verify.pooled_conformal`) turns each test's *rank* in the pool of
the suspect and its ``n`` references into a term and ranks the pool on their sum. A rank forgets how far
beyond the references a suspect lies: a student whose output KL to its teacher is ten spreads above every
reference counts as much as one just above the best reference, and a reference that tops one of the six tests
by chance ties it. This script runs ``verify_power.py power``'s protocol once and records, for every pair,
the pooled p-value under several statistics of the pool, each a symmetric function of the pool applied to
every member alike (so each is a valid conformal p-value under the references' null):

- ``ranks``: the library's statistic (one-sided Cauchy transform of the ranks);
- ``z-sum``: per test, the pool's robust z-score (median and MAD of the pool), summed over the tests where
  it is positive;
- ``z-max``: the largest of those z-scores.

It prints, per attack column, the verdict (Bonferroni of the exact weight test and the pooled test) under each
statistic, read with ``verify_power.criteria``. It is a study on an already-seen draw: it chooses a statistic,
and the choice is then measured on a fresh draw with ``verify_power.py power``. It takes ``verify_power.py
power``'s arguments (and defaults):

    python benchmarks/verify_pool.py --spec provenance --zoo-seed 2 --workdir DIR --out DIR2 \
        --references 119 --strata 119 --cross-distill --transfer-stratum --source-chunk 8
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import verify_power  # noqa: E402

from jaxlineage import verify as verify_lib  # noqa: E402

_ORIGINAL_POOLED = verify_lib.pooled_conformal
_ORIGINAL_EVIDENCE = verify_lib._pooled_evidence


def _robust_z(s: np.ndarray) -> np.ndarray:
    """Per column, (x - median) / (1.4826 MAD) over the pool; a column with MAD 0 uses its standard deviation."""
    med = np.median(s, axis=0)
    mad = 1.4826 * np.median(np.abs(s - med), axis=0)
    sd = s.std(axis=0)
    scale = np.where(mad > 0, mad, np.where(sd > 0, sd, 1.0))
    return (s - med) / scale


def _p(c: np.ndarray) -> tuple[float, float]:
    return float(c[0]), float(np.sum(c >= c[0] - 1e-12 * max(1.0, abs(c[0]))) / c.size)


def z_sum(statistics: np.ndarray) -> tuple[float, float]:
    return _p(np.maximum(_robust_z(np.asarray(statistics, np.float64)), 0.0).sum(axis=1))


def z_max(statistics: np.ndarray) -> tuple[float, float]:
    return _p(_robust_z(np.asarray(statistics, np.float64)).max(axis=1))


VARIANTS = {"ranks": _ORIGINAL_POOLED, "z-sum": z_sum, "z-max": z_max}
RECORDED: dict[tuple[str, str], dict[str, float]] = {}


def _recording_evidence(scores, k, m, sid, qid, alpha, strata):
    out = None
    for name, fn in VARIANTS.items():
        verify_lib.pooled_conformal = fn
        try:
            ev = _ORIGINAL_EVIDENCE(scores, k, m, sid, qid, alpha, strata)
        finally:
            verify_lib.pooled_conformal = _ORIGINAL_POOLED
        RECORDED.setdefault((sid, qid), {})[name] = ev.pvalue
        if name == "ranks":
            out = ev
    return out


def main() -> None:
    # ``verify_power.py power``'s own arguments and defaults.
    args = verify_power.parser().parse_args(["power", *sys.argv[1:]])
    args.pool_study = True  # its own chunk folder: the recorded variants are not in a plain run's chunks
    verify_power._common.setup_logging()
    verify_lib._pooled_evidence = _recording_evidence
    pathlib.Path(args.out).mkdir(parents=True, exist_ok=True)
    verify_power.power(args)
    pairs = np.load(pathlib.Path(args.out) / "verify_power_pairs.npz")
    cands, queries = list(pairs["candidates"]), list(pairs["queries"])
    weight = pairs["test:weight-perm"]
    pooled = {v: np.full(weight.shape, np.nan) for v in VARIANTS}
    for (sid, qid), ps in RECORDED.items():
        for v, p in ps.items():
            pooled[v][cands.index(sid), queries.index(qid)] = np.nan if p is None else p
    np.savez_compressed(
        pathlib.Path(args.out) / "verify_pool_variants.npz", **{f"pooled:{v}": a for v, a in pooled.items()}
    )
    cols = [c[4:] for c in pairs.files if c.startswith("pos:")]
    print("| column | " + " | ".join(f"{v}: derived / negatives at 0.05, AUC" for v in VARIANTS) + " |")
    print("|---|" + "---|" * len(VARIANTS))
    for col in cols:
        pos, neg = pairs[f"pos:{col}"], pairs[f"neg:{col}"]
        cells = []
        for v in VARIANTS:
            p = verify_power._bonferroni(np.stack([weight, pooled[v]]))
            s = verify_power._neg_log(p)
            ok = np.isfinite(s)
            auc = verify_power.metrics.roc_auc(s[pos & ok], s[neg & ok])
            cells.append(f"{np.sum(p[pos] <= 0.05)}/{pos.sum()} ; {np.sum(p[neg] <= 0.05)}/{neg.sum()}, {auc:.3f}")
        print(f"| {col} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
