"""Text shared by the report's tables and its conclusions."""

from __future__ import annotations

import math

from perfkit.core import fmt


def signed(x: float | None) -> str:
    """A duration with its sign: a proxy that seems to take time away is suspect, so the sign must show."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return ("+" if x >= 0 else "−") + fmt.duration(abs(x))


def span(value: float, lo: float, hi: float) -> str:
    """``value [lo, hi]``, each signed."""
    return f"{signed(value)} [{signed(lo)}, {signed(hi)}]"
