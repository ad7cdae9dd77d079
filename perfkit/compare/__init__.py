"""Before and after: two runs compared figure by figure, from their figures files only.

``compare(a, b)`` → a :class:`Comparison`: each figure both runs measured as a ratio after/before with its CI,
p-value (false-discovery adjusted) and verdict; the figures only one has; what differs between their
manifests; what else could explain a row. ``Comparison.to_json`` stores it (``comparison.json``) and
``Comparison.read`` reads it back. Statistics: :mod:`perfkit.analysis.verdicts`.
"""

from perfkit.analysis.verdicts import (IMPROVED, MIN_EFFECT, NO_CHANGE, NOT_COMPARABLE, WORSE, Row,
                                       compare_estimates, compare_replicates, compare_samples)
from perfkit.compare.comparison import BEFORE_AFTER_ROWS, FILE_NAME, Comparison, compare
from perfkit.compare.manifests import Difference
from perfkit.compare.runs import Run, load

__all__ = ["compare", "Comparison", "FILE_NAME", "Row", "Difference", "Run", "load", "BEFORE_AFTER_ROWS", "IMPROVED",
           "WORSE", "NO_CHANGE", "NOT_COMPARABLE", "MIN_EFFECT", "compare_samples", "compare_estimates", "compare_replicates"]
