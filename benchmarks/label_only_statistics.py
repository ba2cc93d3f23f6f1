"""Exploratory: can an output statistic on natural inputs catch label-only students? (issue 24)

On a ``PROVENANCE`` draw and its source-side references (as ``verify_power.py power --references-like
source`` builds them, cached under the same workdir), each statistic ``s(X, suspect)`` gets the verdict's
source-side conformal p-value, ``p = (1 + #{j : s(R_j, suspect) >= s(source, suspect)}) / (n + 1)`` over the
``n`` references of the source's architecture, and per attack column this reports the derived pairs
rejected at alpha = 0.05, the negatives rejected, and the AUC of ``-log p``. Statistics, for ``X``'s labels
``y_X = argmax X(x)`` on the probe:

* output agreement and output KL (the battery's);
* agreement weighted by ``X``'s uncertainty, ``1 - max softmax X(x)``;
* agreement weighted by how unusual ``X``'s label is in the pool (the fraction of the other references and
  sources of its architecture that predict another label);
* the suspect's mean log-likelihood of ``X``'s labels (a label-only student's own training loss), and the
  same weighted by ``X``'s uncertainty.

    python benchmarks/label_only_statistics.py --zoo-seed 4 --workdir DIR --out benchmarks/results

Run in the tenth session on salt 4, a draw already seen: it decides nothing, it asks whether a statistic is
worth a fresh draw (BUILD_NOTES, issue 24).
"""

from __future__ import annotations

import argparse
import pathlib

import _common
import jax
import jax.numpy as jnp
import numpy as np
import verify_power

from jaxlineage import fingerprints
from jaxlineage.eval import metrics, provenance, scenarios


def _log_probs(models, x) -> tuple[np.ndarray, np.ndarray]:
    out, archs = [], []
    for pop in models.populations:
        logits = fingerprints.population_logits(pop.logits_fn, pop.params, x)
        out.append(np.asarray(jax.nn.log_softmax(logits), np.float64))
        archs += [pop.arch] * len(pop.ids)
    return np.concatenate(out), np.asarray(archs)


def statistics(lx: np.ndarray, lq: np.ndarray) -> dict[str, np.ndarray]:
    """``[X, Q]`` per statistic, from log-probabilities ``lx [X, N, C]`` (the pool) and ``lq [Q, N, C]``."""
    yx, yq, px = lx.argmax(-1), lq.argmax(-1), np.exp(lx)
    agree = (yx[:, None] == yq[None]).astype(np.float64)  # [X, Q, N]
    w = 1 - px.max(-1)  # [X, N]
    counts = np.stack([(yx == c).sum(0) for c in range(lx.shape[-1])], -1)  # [N, C]
    unusual = 1 - (np.take_along_axis(counts[None], yx[..., None], -1)[..., 0] - 1) / (len(lx) - 1)
    # the suspect's log-probability of X's label, [X, Q, N]
    shape = (*lq.shape[:2], 1)
    ll = np.stack([np.take_along_axis(lq, np.broadcast_to(y[None, :, None], shape), -1)[..., 0] for y in yx])
    weighted = lambda wt, v: np.einsum("xn,xqn->xq", wt, v) / wt.sum(-1)[:, None]  # noqa: E731
    return {
        "output agreement": agree.mean(-1),
        "output KL": -np.einsum("xnc,xqnc->xq", px, lx[:, None] - lq[None]) / lx.shape[1],
        "uncertainty-weighted agreement": weighted(w, agree),
        "unusual-label-weighted agreement": weighted(unusual, agree),
        "log-likelihood of the source's labels": ll.mean(-1),
        "uncertainty-weighted log-likelihood": weighted(w, ll),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo-seed", type=int, default=4)
    ap.add_argument("--workdir", default="verify_power_work")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--references", type=int, default=119)
    ap.add_argument("--probe", type=int, default=256, help="inputs the statistics read")
    ap.add_argument(
        "--probe-split",
        default="train",
        choices=("train", "test"),
        help="the source task's split the probe comes from: its training inputs (verify_power.py's probe) or"
        " held-out ones",
    )
    args = ap.parse_args()
    _common.setup_logging()
    vp = verify_power.parser().parse_args(
        ["power", "--spec", "provenance", "--zoo-seed", str(args.zoo_seed), "--workdir", args.workdir,
         "--references", str(args.references), "--references-like", "source",
         "--probe", str(args.probe), "--probe-split", args.probe_split]
    )  # fmt: skip
    _, z = verify_power._zoo(vp)
    scen = verify_power._with_probe(scenarios.provenance(z, probe_size=vp.probe), z, vp)
    masks = provenance.attack_masks(scen)
    _, refs = verify_power._references(z, scen, vp)
    x = jnp.asarray(scen.probe)
    lc, arch_c = _log_probs(scen.candidates, x)
    lr, arch_r = _log_probs(next(iter(refs.values())), x)
    lq, _ = _log_probs(scen.queries, x)
    pvals: dict[str, np.ndarray] = {}
    for arch in sorted(set(arch_c)):
        ci, ri = np.flatnonzero(arch_c == arch), np.flatnonzero(arch_r == arch)
        for name, s in statistics(np.concatenate([lc[ci], lr[ri]]), lq).items():
            src, ref = s[: ci.size], s[ci.size :]
            p = (1 + (ref[None] >= src[:, None]).sum(1)) / (ri.size + 1)
            pvals.setdefault(name, np.full(scen.related.shape, np.nan))[ci] = p
    table = {}
    for name, p in pvals.items():
        table[name] = {}
        for col, (pos, neg) in masks.items():
            pp, pn = p[pos], p[neg]
            table[name][col] = {
                "derived_rejected": int((pp <= 0.05).sum()),
                "derived": int(pp.size),
                "negatives_rejected": int((pn <= 0.05).sum()),
                "negatives": int(pn.size),
                "auc": metrics.roc_auc(-np.log(pp), -np.log(pn)),
            }
    record = {"benchmark": "label_only_statistics", "zoo": z.spec.name, "settings": vars(args), "table": table}
    _common.write(pathlib.Path(args.out) / "label_only_statistics.jsonl", record)


if __name__ == "__main__":
    main()
