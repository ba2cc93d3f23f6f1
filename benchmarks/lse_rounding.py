"""LSE's near-ties on the quick zoo: float32 against float64, argmax flips and top-2 gaps.

LSE scores are dominated by a large common term, so two candidates' scores can differ by about
1e-7 relative, and float32 summation order decides such ties. This prints, for LSE first order and
linearised at ``relu1`` on the ``identify`` scenario of a built QUICK zoo, how often the float32
argmax over candidates differs from float64's, the top-2 relative gaps in float64, and the largest
relative error of the float32 scores. Run it on two versions of the code to compare their rounding:

    python benchmarks/lse_rounding.py --workdir DIR   # DIR: a built QUICK zoo (e.g. the bench's workdir)
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from jaxlineage import lineage, zoo
from jaxlineage.eval import scenarios
from jaxlineage.linearize import Mode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True, help="a built QUICK zoo")
    args = ap.parse_args()
    z = zoo.build(zoo.QUICK, args.workdir, progress=False)
    sc = scenarios.identify(z)
    (cp,), (qp,) = sc.candidates.populations, sc.queries.populations
    f = cp.feature_fns["relu1"]
    out = {}
    for dt in (jnp.float32, jnp.float64):
        with jax.enable_x64(dt == jnp.float64):
            cast = lambda t, dt=dt: jax.tree.map(lambda a: jnp.asarray(np.asarray(a), dt), t)
            s = lineage.score_matrices(
                ["lse"],
                f,
                cast(cp.params),
                cast(qp.params),
                jnp.asarray(np.asarray(sc.probe), dt),
                alpha=np.asarray([0.001, 0.01, 0.1]),
                modes=(Mode.FIRST_ORDER, Mode.LINEARIZED),
            )
            out[dt.__name__] = {k: np.asarray(v, np.float64) for k, v in s.items()}
    for key in out["float32"]:
        a, b = out["float32"][key], out["float64"][key]
        flips = int(np.sum(np.argmax(a, axis=-2) != np.argmax(b, axis=-2)))
        top = np.sort(b, axis=-2)
        gap = (top[..., -1, :] - top[..., -2, :]) / np.abs(top[..., -1, :])
        print(
            f"{key[0]} {key[1].value}: argmax flips against float64 {flips} of {a.shape[0] * a.shape[-1]};"
            f" top-2 relative gap (float64) min {gap.min():.1e}, median {np.median(gap):.1e};"
            f" largest relative error {np.max(np.abs(a - b) / np.abs(b)):.1e}"
        )


if __name__ == "__main__":
    main()
