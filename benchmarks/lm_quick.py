"""Language-model lineage on LM_QUICK: method x attack AUC with bootstrap CIs, and cost per pair.

    python -m jaxlineage.zoo --spec lm_quick --workdir /tmp/lmq        # the zoo (see jaxlineage/zoo/specs.py)
    python benchmarks/lm_quick.py --workdir /tmp/lmq [--out benchmarks/results/lm_quick.jsonl]

Pairs: every base (candidate) x every derived model (query). A pair is positive when the base is an
ancestor of the query (the query was derived from it, through two parents for ``merge``); negatives
are the same recipes applied to the other, independently pretrained bases. Methods (fixed before
looking at any figure):

* ``weight_l2`` / ``weight_cos``: minus the L2 distance / the cosine of all parameters (same shapes only).
* ``output_kl``: minus the mean KL(base || query) of next-byte distributions on 32 probe windows
  (16 code, 16 prose; test splits).
* ``taylor_plain`` / ``taylor_lin``: Neural Lineage's l2 score on the residual stream after the last
  block (tap ``block2``), PLAIN and LINEARIZED with alpha = 0.01 (the middle of the paper's grid).
* ``perm_corr`` / ``perm_matched``: Zhu et al.'s permutation test over the MLP units
  (``transformer_lm_spec(parts=("mlp",))``), 99 permutations; score = minus the p-value.
  Null: the query's weights are independent of the base's and their law is invariant under permutations
  of MLP units (independent initialisations, unit-order-equivariant training).
* ``attn_invariant``: :func:`jaxlineage.lm_invariants.attention_match_score`, head-matched probe-token
  attention scores, invariant to every permutation of the spec; a score (empirical null).

Attacks: the zoo's derived groups, plus ``perm_all*`` (made by this script from every base: all the
spec's symmetries at once; function-preserving).

``--calibration 33`` instead trains 33 LMs from independent initialisations (528 pairs) and reports
the permutation tests' rejection rates at alpha = 0.01, 0.05, 0.1 with the binomial margin.

Each JSON line: one method's AUC per attack with a 95 % bootstrap interval (1000 resamples of pairs,
positives and negatives separately) and its mean cost per pair (wall time over all pairs after one
warm-up pair). Runs in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from _common import setup_logging, write

from jaxlineage import linearize, lm_invariants, permutations, text
from jaxlineage import zoo as zoo_lib
from jaxlineage.eval import metrics
from jaxlineage.eval import pvalues as pv

ALPHA = 0.01
TAP = "block2"


def _flat(tree):
    return np.concatenate([np.asarray(w, np.float64).ravel() for w in jax.tree.leaves(tree)])


def _same_shapes(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        x.shape == y.shape for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def _probe(t: int) -> np.ndarray:
    code = text.sequences("stdlib", "test", seq_len=t, limit=16)[0]
    prose = text.sequences("pydoc", "test", seq_len=t, limit=16)[0]
    return np.concatenate([code, prose])


def _methods(z, x, net_of, load):
    net = z.network
    feat = net.feature_fn(TAP)
    logp = {}

    def log_probs(mid):
        if mid not in logp:
            n = net_of(mid)
            logp[mid] = np.asarray(jax.nn.log_softmax(n.logits_fn(load(mid), x), axis=-1), np.float64)
        return logp[mid]

    def w_l2(b, q, pb, pq):
        return -float(np.linalg.norm(_flat(pb) - _flat(pq))) if _same_shapes(pb, pq) else None

    def w_cos(b, q, pb, pq):
        if not _same_shapes(pb, pq):
            return None
        u, v = _flat(pb), _flat(pq)
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))

    def kl(b, q, pb, pq):
        lb, lq = log_probs(b), log_probs(q)
        return -float(np.mean(np.sum(np.exp(lb) * (lb - lq), axis=-1)))

    def taylor(mode):
        def f(b, q, pb, pq):
            if not _same_shapes(pb, pq):
                return None
            s = linearize.pair_similarity("l2", feat, pb, pq, x, alpha=ALPHA, mode=mode)
            return float(np.asarray(s).ravel()[0])

        return f

    def perm(statistic):
        def f(b, q, pb, pq):
            if not _same_shapes(pb, pq):
                return None
            spec = permutations.transformer_lm_spec(pb, parts=("mlp",))
            r = pv.permutation_test(pb, pq, spec, key=jax.random.key(0), num_permutations=99, statistic=statistic)
            return -r.pvalue

        return f

    def attn(b, q, pb, pq):
        return lm_invariants.attention_match_score(pb, pq)

    return {
        "weight_l2": w_l2,
        "weight_cos": w_cos,
        "output_kl": kl,
        "taylor_plain": taylor(linearize.Mode.PLAIN),
        "taylor_lin": taylor(linearize.Mode.LINEARIZED),
        "perm_corr": perm(pv.Statistic.WEIGHT_CORR),
        "perm_matched": perm(pv.Statistic.MATCHED),
        "attn_invariant": attn,
    }


def _auc_ci(pos, neg, rng, reps=1000):
    pos, neg = np.asarray(pos), np.asarray(neg)
    auc = metrics.roc_auc(pos, neg)
    boots = [metrics.roc_auc(rng.choice(pos, pos.size), rng.choice(neg, neg.size)) for _ in range(reps)]
    return auc, float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def null_spec(n: int) -> zoo_lib.GraphSpec:
    """``n`` LMs of LM_QUICK's architecture trained from independent initialisations and data orders
    (100 Adam steps on the stdlib's code): the permutation test's null population."""
    return zoo_lib.GraphSpec(
        f"lm_null_{n}",
        (zoo_lib.Task("code", "stdlib@64", tuple(range(256)), n_train=1600),),
        (
            zoo_lib.Group(
                "null",
                "train",
                task="code",
                arch="transformer_lm",
                arch_kwargs=zoo_lib.specs.LM_ARCH,
                grid=dict(seed=tuple(range(1000, 1000 + n)), lr=3e-3, batch_size=32, epochs=2),
            ),
        ),
        max_population=17,
    )


def calibration(args) -> None:
    """Permutation-test p-values on every pair of independently trained LMs: rate at each alpha."""
    z = zoo_lib.build(null_spec(args.calibration), args.workdir, progress=False)
    ids = [r.id for r in z.group("null")]
    params = {i: z.load(i) for i in ids}
    spec = permutations.transformer_lm_spec(params[ids[0]], parts=("mlp",))
    for statistic in (pv.Statistic.WEIGHT_CORR, pv.Statistic.MATCHED):
        t0 = time.time()
        ps = [
            pv.permutation_test(
                params[a], params[b], spec, key=jax.random.key(k), num_permutations=99, statistic=statistic
            ).pvalue
            for k, (a, b) in enumerate((a, b) for i, a in enumerate(ids) for b in ids[i + 1 :])
        ]
        write(
            args.out,
            {
                "benchmark": "lm_quick_calibration",
                "statistic": statistic.value,
                "models": len(ids),
                "pairs": len(ps),
                "table": pv.calibration_table(ps, alphas=(0.01, 0.05, 0.1)),
                "seconds": time.time() - t0,
                "settings": {"spec": "transformer_lm_spec(parts=('mlp',))", "num_permutations": 99},
                "loadavg": open("/proc/loadavg").read().split()[:3],
            },
        )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--workdir",
        default=None,
        help="the zoo's folder, built if absent (default: /tmp/lmq, or /tmp/lmq_null with --calibration)",
    )
    ap.add_argument("--out", default="benchmarks/results/lm_quick.jsonl")
    ap.add_argument("--spec", default="lm_quick", help="zoo spec (lm_tiny for a smoke run)")
    ap.add_argument("--methods", default="", help="comma-separated subset of the methods (default: all)")
    ap.add_argument("--calibration", type=int, default=0, help="instead: the null calibration over N models")
    args = ap.parse_args(argv)
    setup_logging()
    if args.calibration:
        args.workdir = args.workdir or "/tmp/lmq_null"
        return calibration(args)
    args.workdir = args.workdir or "/tmp/lmq"
    z = zoo_lib.build(zoo_lib.SPECS[args.spec], args.workdir, progress=False)
    bases = z.group("base")
    derived = [r for r in z.models(tag="derived")]
    x = _probe(z.network.input_shape[0])
    params = {r.id: z.load(r.id) for r in bases + derived}
    # One more attack made here, not in the zoo: every symmetry of the spec at once (heads, inside-head
    # Q/K and V/O dims, MLP units and the residual stream), function-preserving; column "perm_all*".
    made = {}
    for i, b in enumerate(bases):
        pb = z.load(b.id)
        made[f"{b.id}__perm_all"] = (
            b.id,
            permutations.permute_params(pb, permutations.transformer_lm_spec(pb), jax.random.key(100 + i)),
        )
    params.update({k: v for k, (_, v) in made.items()})
    methods = _methods(z, x, lambda mid: z.network if mid in made else z.network_for(mid), lambda mid: params[mid])
    if args.methods:
        methods = {k: methods[k] for k in args.methods.split(",")}
    pairs = [(b.id, q.id, q.group, z.graph.is_ancestor(b.id, q.id)) for b in bases for q in derived]
    pairs += [(b.id, k, "perm_all*", b.id == src) for b in bases for k, (src, _) in made.items()]
    rng = np.random.default_rng(0)
    for name, fn in methods.items():
        t0 = time.time()
        fn(*pairs[0][:2], params[pairs[0][0]], params[pairs[0][1]])  # warm-up (compilation)
        t1 = time.time()
        scores = [fn(b, q, params[b], params[q]) for b, q, _, _ in pairs]
        cost = (time.time() - t1) / len(pairs)
        table = {}
        for g in sorted({p[2] for p in pairs}):
            pos = [s for s, p in zip(scores, pairs) if p[2] == g and p[3] and s is not None]
            neg = [s for s, p in zip(scores, pairs) if p[2] == g and not p[3] and s is not None]
            if pos and neg:
                auc, lo, hi = _auc_ci(pos, neg, rng)
                table[g] = {"auc": auc, "ci95": [lo, hi], "n_pos": len(pos), "n_neg": len(neg)}
            else:
                table[g] = None  # not applicable (e.g. weight methods on a student of another width)
        print(name, " ".join(f"{g}:{'n/a' if v is None else round(v['auc'], 3)}" for g, v in table.items()))
        write(
            args.out,
            {
                "benchmark": "lm_quick",
                "method": name,
                "auc_by_attack": table,
                "cost_per_pair_s": cost,
                "warmup_s": t1 - t0,
                "pairs": len(pairs),
                "settings": {"alpha": ALPHA, "tap": TAP, "probe": "16 stdlib + 16 pydoc test windows"},
                "spec": args.spec,
                "loadavg": open("/proc/loadavg").read().split()[:3],
            },
        )


if __name__ == "__main__":
    main()
