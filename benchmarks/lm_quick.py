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
* ``modelgif_tokens``: ModelGiF in token space (:func:`jaxlineage.modelgif.token_field`): minus the mean
  cosine distance of the two models' fields at the 32 probe windows, each window's one-hot path from the
  uniform distribution (1/256 per byte) to the window, 8 Gauss-Legendre nodes, attributing the summed
  log-probability of the true next bytes over all positions. Works across widths (the input space is
  the bytes). Each model's field is computed once.
* ``model_dna`` / ``model_dna_no_generator``: Model DNA (:mod:`jaxlineage.mgmp`, with and without the DNA
  generator) on next-byte logits (:func:`jaxlineage.mgmp.next_token_outputs`: one fragment per
  window of the probe length, the centred logits after its last byte). Learned, so fitted on folds as the classifier
  provenance section does (:func:`jaxlineage.eval.provenance.learned_cells`): the attack columns
  alternate between two folds in the zoo's group order (``perm_all*`` last); for each fold and base, a
  generator + classifier is trained on that fold's queries (homologous: derived from the base; non-
  homologous: the others, i.e. the same recipes on the other bases) with DNA inputs = 512 windows of
  the bases' pretraining split (stdlib train), 300 steps, batch 128 (``mgmp.Config`` defaults
  otherwise), and scores the other fold's queries on 128 test windows (64 stdlib + 64 pydoc); score =
  the fraction of fragments called homologous. Cost per pair = (fits + scoring) / scored pairs.

Attacks: the zoo's derived groups, plus ``perm_all*`` (made by this script from every base: all the
spec's symmetries at once; function-preserving).

``--calibration 33`` instead trains 33 LMs from independent initialisations (528 pairs) and reports
the permutation tests' rejection rates at alpha = 0.01, 0.05, 0.1 with the binomial margin.

Each JSON line: one method's AUC per attack with a 95 % bootstrap interval (1000 resamples of pairs,
positives and negatives separately), the mean scores of the positive and negative pairs, and its mean
cost per pair (wall time over all pairs after one warm-up pair; Model DNA: fits and scoring over the
scored pairs). Runs in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import setup_logging, write

from jaxlineage import linearize, lm_invariants, mgmp, modelgif, permutations, text
from jaxlineage import zoo as zoo_lib
from jaxlineage.eval import metrics
from jaxlineage.eval import pvalues as pv

ALPHA = 0.01
TAP = "block2"
VOCAB = 256
GIF_STEPS = 8  # ModelGiF's Gauss-Legendre nodes (fixed before any LM_QUICK figure)
DNA = dict(fit_windows=512, score_windows_per_corpus=64, num_steps=300, batch_size=128)


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


def _probe_targets(t: int) -> np.ndarray:
    """The next bytes of :func:`_probe`'s windows (same windows, same order)."""
    code = text.sequences("stdlib", "test", seq_len=t, limit=16)[1]
    prose = text.sequences("pydoc", "test", seq_len=t, limit=16)[1]
    return np.concatenate([code, prose])


class _GifScores:
    """ModelGiF in token space for the pair loop: each model's field once, the query's distances to every
    base at its first pair (so that at most the bases' fields and one query's are held)."""

    def __init__(self, x, y, bases, net_of, load):
        self.x, self.y, self.bases, self.net_of, self.load = x, y, bases, net_of, load
        self.fns = {}  # kept by reset: the compiled fields stay compiled
        self.reset()

    def reset(self):
        self.base_fields, self.dist = {}, {}

    def field(self, mid):
        net = self.net_of(mid)
        # One bound method per (equal) network: a new one is a new static argument, so a recompilation.
        fn = self.fns.setdefault(net, net.logits_fn)
        return modelgif.token_field(
            fn, self.load(mid), self.x, self.y, vocab_size=VOCAB, steps=GIF_STEPS, chunk_size=8, name=mid
        )

    def __call__(self, b, q, pb, pq):
        if q not in self.dist:
            fq = self.field(q)
            for base in self.bases:
                if base not in self.base_fields:
                    self.base_fields[base] = self.field(base)
                self.dist[q, base] = float(modelgif.distance(self.base_fields[base], fq))
            self.dist[q] = True
        return -self.dist[q, b]


def _methods(z, x, net_of, load, bases=()):
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
        "modelgif_tokens": _GifScores(x, _probe_targets(x.shape[1]), bases, net_of, load),
    }


def _dna_windows(t: int) -> tuple[np.ndarray, np.ndarray]:
    """Model DNA's inputs: (fit: the bases' pretraining split, score: test windows of code and prose)."""
    fit = text.sequences("stdlib", "train", seq_len=t, limit=DNA["fit_windows"])[0]
    k = DNA["score_windows_per_corpus"]
    score = np.concatenate([text.sequences(c, "test", seq_len=t, limit=k)[0] for c in ("stdlib", "pydoc")])
    return fit.astype(np.float32), score.astype(np.float32)


def model_dna_scores(pairs, order, net_of, load, t, *, generator: str, key=None) -> tuple[list, list]:
    """Model DNA's score of every pair, each from the fold that did not fit the pair's attack.

    Args:
      pairs: ``(base, query, attack, positive)`` tuples.
      order: the attacks in table order; they alternate between two folds. An attack not in ``order`` is
        fitted by neither fold and scored by the last.
      net_of, load: a model id's network and parameters.
      t: the window length.
      generator: ``"mlp"`` or ``"none"``.
      key: the fits' key (default ``key(0)``); fold ``f``, base ``k``: ``fold_in(fold_in(key, f), k)``.

    Returns:
      ``(scores aligned with pairs, per-fold info)``.
    """
    key = jax.random.key(0) if key is None else key
    cfg = mgmp.Config(generator=generator, num_steps=DNA["num_steps"], batch_size=DNA["batch_size"])
    x_fit, x_score = _dna_windows(t)
    fns = {}

    def fn(mid):
        net = net_of(mid)
        if net not in fns:  # one function per (equal) network: the jitted population calls stay compiled
            fns[net] = mgmp.next_token_outputs(net.logits_fn, vocab_size=VOCAB, name=net.name)
        return fns[net]

    def outputs(mid, xs):
        return mgmp.model_outputs((fn(mid), load(mid)), xs)

    folds = (tuple(order[0::2]), tuple(order[1::2]))
    bases = list(dict.fromkeys(p[0] for p in pairs))
    scores, info = [None] * len(pairs), []
    for f, group in enumerate(folds):
        t0 = time.time()
        fit_q = list(dict.fromkeys(p[1] for p in pairs if p[2] in group))
        pool = {q: outputs(q, x_fit) for q in fit_q}
        held = [i for i, p in enumerate(pairs) if p[2] not in group]
        held_q = list(dict.fromkeys(pairs[i][1] for i in held))
        targets = {q: outputs(q, x_score) for q in held_q}
        for k, b in enumerate(bases):
            related = {p[1]: p[3] for p in pairs if p[0] == b and p[2] in group}
            hom = jnp.stack([pool[q] for q in fit_q if related[q]])
            non = jnp.stack([pool[q] for q in fit_q if not related[q]])
            source = (fn(b), load(b))
            state, _ = mgmp.train(
                source, mgmp.PoolOutputs(hom, non), x_fit, cfg, key=jax.random.fold_in(jax.random.fold_in(key, f), k)
            )
            state = mgmp.with_inputs(state, source, x_score)
            frac = np.asarray(mgmp.predict_outputs(state, jnp.stack([targets[q] for q in held_q])).fraction)
            at = dict(zip(held_q, frac))
            for i in held:
                if pairs[i][0] == b:
                    scores[i] = float(at[pairs[i][1]])
        info.append({"fit_attacks": list(group), "n_fit_queries": len(fit_q), "wall_s": time.time() - t0})
        print(f"model_dna ({generator}) fold {f}: {len(fit_q)} fit queries, {time.time() - t0:.0f} s", flush=True)
    return scores, info


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
    ap.add_argument(
        "--dna-unseen",
        default="",
        help="comma-separated attacks no Model DNA fit sees (a diagnostic; default: none, the two attack folds)",
    )
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
    net_of = lambda mid: z.network if mid in made else z.network_for(mid)  # noqa: E731
    methods = _methods(z, x, net_of, lambda mid: params[mid], bases=[b.id for b in bases])
    dna = {"model_dna": "mlp", "model_dna_no_generator": "none"}
    if args.methods:
        methods = {k: methods[k] for k in args.methods.split(",") if k not in dna}
        dna = {k: v for k, v in dna.items() if k in args.methods.split(",")}
    pairs = [(b.id, q.id, q.group, z.graph.is_ancestor(b.id, q.id)) for b in bases for q in derived]
    pairs += [(b.id, k, "perm_all*", b.id == src) for b in bases for k, (src, _) in made.items()]
    rng = np.random.default_rng(0)
    for name, fn in methods.items():
        t0 = time.time()
        fn(*pairs[0][:2], params[pairs[0][0]], params[pairs[0][1]])  # warm-up (compilation)
        if hasattr(fn, "reset"):
            fn.reset()  # cached per-model work is timed in the loop, not in the warm-up
        t1 = time.time()
        scores = [fn(b, q, params[b], params[q]) for b, q, _, _ in pairs]
        cost = (time.time() - t1) / len(pairs)
        _report(args, name, pairs, scores, cost, t1 - t0, rng)
    unseen = [a for a in args.dna_unseen.split(",") if a]
    order = [a for a in list(dict.fromkeys(q.group for q in derived)) + ["perm_all*"] if a not in unseen]
    for name, generator in dna.items():
        t0 = time.time()
        scores, folds = model_dna_scores(pairs, order, net_of, lambda mid: params[mid], x.shape[1], generator=generator)
        cost = (time.time() - t0) / sum(s is not None for s in scores)
        extra = {"dna": DNA, "folds": folds, "cost_includes": "both folds' fits (compilation included) and scoring"}
        extra |= {"dna_unseen": unseen} if unseen else {}
        _report(args, name, pairs, scores, cost, 0.0, rng, extra)


def _report(args, name, pairs, scores, cost, warmup, rng, extra=None):
    """One method's table row: AUC per attack with a bootstrap interval, printed and written."""
    table = {}
    for g in sorted({p[2] for p in pairs}):
        pos = [s for s, p in zip(scores, pairs) if p[2] == g and p[3] and s is not None]
        neg = [s for s, p in zip(scores, pairs) if p[2] == g and not p[3] and s is not None]
        if pos and neg:
            auc, lo, hi = _auc_ci(pos, neg, rng)
            table[g] = {"auc": auc, "ci95": [lo, hi], "n_pos": len(pos), "n_neg": len(neg)}
            table[g] |= {"mean_pos": float(np.mean(pos)), "mean_neg": float(np.mean(neg))}
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
            "warmup_s": warmup,
            "pairs": len(pairs),
            "settings": {
                "alpha": ALPHA,
                "tap": TAP,
                "probe": "16 stdlib + 16 pydoc test windows",
                "modelgif": {"steps": GIF_STEPS, "baseline": "uniform", "target": "sum log p(next byte)"},
                **(extra or {}),
            },
            "spec": args.spec,
            "loadavg": open("/proc/loadavg").read().split()[:3],
        },
    )


if __name__ == "__main__":
    main()
