"""Peak memory and time of `verify`'s ModelGiF test against the number of reference inputs per chunk.

One ConvNet source of a provenance zoo, its first 4 extract-P students as suspects, and 119 trained
references of their (architecture, task): the ConvNet pairs of ``verify_power.py``, on which the sixth
session's power run was killed for memory. Each chunk size runs in a fresh interpreter (peak RSS is
per process) and the four ModelGiF statistics must agree across chunk sizes (chunks split the
reference inputs; each input's field is computed alone).

    python benchmarks/verify_memory.py --workdir DIR [--spec provenance --zoo-seed 1] [--chunks 8,32]

``DIR`` is a ``verify_power.py`` workdir (the zoo and references are built or reused there).
One JSON line per run in ``<out>/verify_memory.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import time

import _common


def one(args) -> None:
    """Runs the ModelGiF test once with ``--chunk`` and prints a JSON line."""
    import jax  # noqa: PLC0415 (each run in its own process: peak RSS is per process)
    import verify_power as vp  # noqa: PLC0415

    from jaxlineage import references  # noqa: PLC0415
    from jaxlineage import verify as verify_lib  # noqa: PLC0415
    from jaxlineage.eval import scenarios  # noqa: PLC0415
    from jaxlineage.eval.scorers import methods  # noqa: PLC0415

    _, z = vp._zoo(args)  # the zoo verify_power.py builds for these settings
    src = [r.id for r in z.group("src_cnn")][:1]
    sus = [r.id for r in z.group("cnn.extract_p")][:4]
    task = z.get(sus[0]).task
    x, y = z.task_data(task, "train")
    like = scenarios.model_set(z, src).populations[0]
    refs = references.train(
        like,
        x,
        y,
        init_fn=z.network_for(src[0]).init,
        n=119,
        seed=0,
        workdir=pathlib.Path(args.workdir) / "references",
        id_prefix=f"ref-convnet-{task}-",
        **vp.SOURCE_RECIPE["convnet"],
    )
    probe = scenarios.provenance(z, probe_size=256).probe
    gif = methods.ModelGiFScorer(n_refs=64, steps=10, chunk_size=args.chunk)
    test = verify_lib.ReferenceTest("modelgif", gif, "functional copies")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    t = time.perf_counter()
    v = verify_lib.verify(
        scenarios.model_set(z, src),
        scenarios.model_set(z, sus),
        data=probe,
        references=refs,
        key=jax.random.key(0),
        num_permutations=9,
        tests=[test],
    )
    seconds = time.perf_counter() - t
    stats = [next(e.statistic for e in pv.evidence if e.test == "modelgif") for pv in v.pairs]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(json.dumps({"chunk": args.chunk, "peak_gb": peak, "before_gb": before, "seconds": seconds, "stats": stats}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--spec", default="provenance")
    ap.add_argument("--zoo-seed", type=int, default=1)
    ap.add_argument("--chunks", default="8,32")
    ap.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)  # one run, in a child process
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    if args.chunk:
        one(args)
        return
    runs = []
    for c in (int(s) for s in args.chunks.split(",")):
        cmd = [sys.executable, __file__, "--workdir", args.workdir, "--spec", args.spec]
        cmd += ["--zoo-seed", str(args.zoo_seed), "--chunk", str(c)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
        print(runs[-1])
    stats = [r["stats"] for r in runs]
    agree = max(abs(a - b) for s in stats for a, b in zip(s, stats[0]))
    _common.write(
        pathlib.Path(args.out) / "verify_memory.jsonl",
        {"benchmark": "verify_memory", "settings": vars(args), "runs": runs, "largest_stat_difference": agree},
    )
    print(f"largest difference between chunk sizes: {agree:.3g}")


if __name__ == "__main__":
    main()
