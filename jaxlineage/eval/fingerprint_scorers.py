"""``jaxlineage.eval.fingerprint_scorers``: the former path of :mod:`jaxlineage.eval.scorers.fingerprints`.

The scorers now live in ``jaxlineage/eval/scorers/fingerprints.py``. This module *is* that module
(``sys.modules`` alias): every name, private ones and monkeypatching included, is shared.
"""

import sys

from jaxlineage.eval.scorers import fingerprints as _moved

sys.modules[__name__] = _moved
