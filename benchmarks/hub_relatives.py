"""Can weights tell a hub model's parent from its relatives? Stage 3's choice with every relative in view.

    python benchmarks/hub_relatives.py --workdir /tmp/jl_hub --zoo-n 1000 --families 40

For each derived model (distilled students aside) of the first ``--families`` families of
``zoo.specs.HUB_SIM(--zoo-n)`` (built under ``<workdir>/hub_sim_<n>`` as ``benchmarks/hub.py`` builds it),
every member of its family that is not the query or one of its descendants is a candidate (no index, no
Holm: every relative is in view, which is stage 3's hardest case). Per zoo group of the query:

* ``right``: queries whose true parent stage 3's rule picks (:func:`jaxlineage.hub.choice_score`);
* ``named``: what the rule names instead (the named model's group);
* ``nearer_relative``: queries with a relative nearer than the parent in aligned L2 by more than 1 % (the
  rule's last term). The parent's own permuted and int8 copies are not counted as relatives here: they are
  the parent re-encoded;
* ``copied_tie``: queries with such a relative holding at least as many of the query's weights bit for bit
  as the parent (so the rule's first terms cannot separate them);
* ``median_ratio``: median of (nearest such relative's aligned distance) / (parent's);
* ``kurtosis_above_parent``: queries whose weight kurtosis (the mean over kernels of the kurtosis of each
  kernel's entries) is above their parent's, MoTHer's cue for the direction of fine-tuning, and
  ``nearest_relative_kurtosis_below``: queries whose nearest such relative has a lower kurtosis than the
  query (so the cue, too, reads the query as that relative's descendant).

One JSON line in ``--out``. The question it answers is whether the end-to-end shortfall of ``hub.py``
is stage 3's rule or what weights can show.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import pathlib
import time

import _common
import jax
import numpy as np

from jaxlineage import hub, zoo
from jaxlineage.eval.scenarios import model_set


def _kurtosis(params) -> np.ndarray:
    """``[P]``: per model, the mean over kernel leaves of the kurtosis of the kernel's entries (MoTHer's cue)."""
    out = []
    for path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
        if "kernel" in jax.tree_util.keystr(path):
            w = np.asarray(w, np.float64).reshape(w.shape[0], -1)
            w = w - w.mean(1, keepdims=True)
            out.append((w**4).mean(1) / (w**2).mean(1) ** 2)
    return np.mean(out, axis=0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="/tmp/jl_hub")
    ap.add_argument("--zoo-n", type=int, default=1000)
    ap.add_argument("--families", type=int, default=40)
    ap.add_argument("--out", default="benchmarks/results/hub_relatives.jsonl")
    args = ap.parse_args(argv)
    _common.setup_logging()
    t0 = time.time()
    z = zoo.build(zoo.specs.HUB_SIM(args.zoo_n), pathlib.Path(args.workdir) / f"hub_sim_{args.zoo_n}", progress=False)
    g = z.graph
    fams = collections.defaultdict(list)
    for r in z.models():
        fams[g.root(r.id)].append(r.id)
    roots = [r for r in sorted(fams) if z.get(r).kind == "root"][: args.families]
    ids = [m for r in roots for m in fams[r]]
    (pop,) = model_set(z, ids).populations
    pop = dataclasses.replace(pop, params=jax.tree.map(np.asarray, pop.params))  # on the host once, not per pair
    pos = {m: i for i, m in enumerate(pop.ids)}
    kurt = _kurtosis(pop.params)
    stats = hub.AlignedWeightVerifier().pair_stats  # [K, 6] of K candidates against one query
    per = collections.defaultdict(lambda: collections.Counter())
    ratios = collections.defaultdict(list)
    for r in roots:
        for q in fams[r]:
            rec = z.get(q)
            if rec.parent_id is None or rec.kind == "distill":
                continue
            out = {q} | set(g.descendants(q))
            cands = [c for c in fams[r] if c not in out]
            st = stats(pop.take([pos[c] for c in cands]), pop.take([pos[q]]))
            pick = cands[int(np.argmax(hub.choice_score(st)))]
            ip = cands.index(rec.parent_id)
            copies = {c for c in cands if z.get(c).parent_id == rec.parent_id and z.get(c).kind in ("permute", "int8")}
            rel = [i for i, c in enumerate(cands) if i != ip and c not in copies]
            c = per[rec.group]
            c["queries"] += 1
            c["right"] += pick == rec.parent_id
            if pick != rec.parent_id:
                c[f"named {z.get(pick).group}"] += 1
            c["nearer_relative"] += bool(np.any(st[rel, 2] < 0.99 * st[ip, 2]))
            c["copied_tie"] += bool(np.any(st[rel, 4] >= st[ip, 4]))
            c["kurtosis_above_parent"] += bool(kurt[pos[q]] > kurt[pos[rec.parent_id]])
            if rel:
                near = cands[rel[int(np.argmin(st[rel, 2]))]]
                c["nearest_relative_kurtosis_below"] += bool(kurt[pos[near]] < kurt[pos[q]])
            if st[ip, 2] > 0:
                ratios[rec.group].append(float(np.min(st[rel, 2]) / st[ip, 2]))
    groups = {
        k: dict(v, median_ratio=float(np.median(ratios[k])) if ratios[k] else None) for k, v in sorted(per.items())
    }
    for k, v in groups.items():
        print(k, v)
    rec = dict(
        benchmark="hub_relatives",
        zoo=z.spec.name,
        families=len(roots),
        settings=vars(args),
        groups=groups,
        wall_s=time.time() - t0,
    )
    _common.write(args.out, rec)
    return rec


if __name__ == "__main__":
    main()
