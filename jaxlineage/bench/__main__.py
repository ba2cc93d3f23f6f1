"""Entry point: ``python -m jaxlineage.bench`` (placeholder until the full bench lands).

Builds (or reuses) the zoo of a preset and prints its members' accuracies.
"""

from __future__ import annotations

import logging
import os

from absl import app, flags

from jaxlineage import zoo

_PRESET = flags.DEFINE_enum("preset", "quick", sorted(zoo.SPECS), "Zoo preset.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Zoo cache folder (default: ~/.cache/jaxlineage/<preset>).")


def main(argv):
    del argv
    logging.getLogger("jaxlineage").setLevel(logging.INFO)
    spec = zoo.SPECS[_PRESET.value]
    workdir = _WORKDIR.value or os.path.join(os.path.expanduser("~/.cache/jaxlineage"), spec.name)
    z = zoo.build(spec, workdir)
    print(z)
    for role in ("parent", "child", "independent"):
        accs = [r.test_acc for r in z.records if r.role == role and r.kept]
        print(f"{role:12s} n={len(accs):3d} test acc min {min(accs):.3f} mean {sum(accs) / len(accs):.3f}")


if __name__ == "__main__":
    app.run(main)
