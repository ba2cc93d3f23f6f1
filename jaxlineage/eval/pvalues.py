"""``jaxlineage.eval.pvalues``: the former path of :mod:`jaxlineage.eval.scorers.pvalues`, kept importable.

The scorers now live in ``jaxlineage/eval/scorers/pvalues.py``. This module *is* that module
(``sys.modules`` alias): every name, private ones and monkeypatching included, is shared.
"""

import sys

from jaxlineage.eval.scorers import pvalues as _moved

sys.modules[__name__] = _moved
