"""``jaxlineage.eval.methods``: the former path of :mod:`jaxlineage.eval.scorers.methods`, kept importable.

The scorers now live in ``jaxlineage/eval/scorers/methods.py``. This module *is* that module
(``sys.modules`` alias): every name, private ones and monkeypatching included, is shared.
"""

import sys

from jaxlineage.eval.scorers import methods as _moved

sys.modules[__name__] = _moved
