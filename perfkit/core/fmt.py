"""How a number reads: significant digits, durations, sizes, counts and percentages in the prefix that suits
their magnitude.

Rules shared by every function: 3 significant digits by default, never scientific notation, the unit that
reads well for the magnitude (chosen after rounding, so 0.9996 s prints as "1.00 s", not "1000 ms"), and
"n/a" for None/NaN. A metric's value, its interval and its chart axis read through its unit
(:mod:`perfkit.core.units`), which uses these.
"""

from __future__ import annotations

import math
from typing import Sequence


NA = "n/a"
BEYOND = "> limit"  # a censored value: a failed or timed-out request, beyond any latency limit

# (factor, unit), largest first; a unit is used when the value rounds to ≥ 1 of it.
_DURATION_UNITS: Sequence[tuple[float, str]] = (
    (3600.0, "h"), (60.0, "min"), (1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns"))
_COUNT_UNITS: Sequence[tuple[float, str]] = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"))
_SIZE_UNITS: Sequence[tuple[float, str]] = (
    (1e15, "PB"), (1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB"))


def finite(v: object) -> float | None:
    """``v`` as a float when it is a finite number, else None (JSON, a table, a chart: no NaN or inf)."""
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def missing(x: object) -> bool:
    """True for None, NaN and anything that is not a number (±inf is a number: a censored value)."""
    try:
        return x is None or math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def _round_sig(x: float, digits: int) -> float:
    """x rounded to ``digits`` significant digits (as a float)."""
    return float(f"{x:.{digits - 1}e}") if x else 0.0


def number(x: float | None, digits: int = 3) -> str:
    """``x`` with ``digits`` significant digits in plain decimal notation: 412 → "412", 12.5 → "12.5",
    1548 → "1550", 0.000512 → "0.000512", 3.38e3 → "3380" (never "3.38e+03"). None/NaN → "n/a"."""
    if missing(x):
        return NA
    x = float(x)
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    r = _round_sig(x, digits)
    if r == 0:
        return "0"
    exponent = math.floor(math.log10(abs(r)))
    return f"{r:.{max(digits - 1 - exponent, 0)}f}"


def _pick_unit(x: float, units: Sequence[tuple[float, str]], digits: int) -> tuple[float, str] | None:
    """The largest (factor, unit) in which |x| rounds to ≥ 1, or None when x is below all of them."""
    for factor, unit in units:
        if abs(_round_sig(x / factor, digits)) >= 1:
            return factor, unit
    return None


def duration_scale(seconds: float, digits: int = 3) -> tuple[float, str]:
    """(factor, unit) a duration reads in: the largest of h … ns in which it rounds to ≥ 1 (ns below that)."""
    if seconds == 0:
        return 1.0, "s"
    return _pick_unit(seconds, _DURATION_UNITS, digits) or _DURATION_UNITS[-1]


def duration(seconds: float | None, digits: int = 3) -> str:
    """A duration given in seconds, in ns/µs/ms/s/min/h with ``digits`` significant digits:
    0.00085 → "850 µs", 0.0125 → "12.5 ms", 1.549 → "1.55 s", 189 → "3.15 min", 5580 → "1.55 h".
    Minutes and hours are decimal (not "3 min 9 s") so interval bounds can share the unit."""
    if missing(seconds):
        return NA
    if float(seconds) == math.inf:
        return BEYOND
    factor, unit = duration_scale(float(seconds), digits)
    return f"{number(float(seconds) / factor, digits)} {unit}"


def count(n: float | None, digits: int = 3) -> str:
    """A count such as a parameter count: 999 → "999", 134_515_008 → "135M", 7_241_732_096 → "7.24B",
    32_763_876_352 → "32.8B" (k, M, B, T = 10³, 10⁶, 10⁹, 10¹²)."""
    if missing(n):
        return NA
    picked = _pick_unit(float(n), _COUNT_UNITS, digits)
    if picked is None:
        return str(int(round(float(n))))
    factor, unit = picked
    return f"{number(float(n) / factor, digits)}{unit}"


def size(nbytes: float | None, digits: int = 3) -> str:
    """A size in bytes with decimal units (kB, MB, GB, TB, PB = 10³…10¹⁵ B): 98_000_000 → "98.0 MB",
    47_400_000_000 → "47.4 GB", 512 → "512 B". Use for files and transfer volumes."""
    if missing(nbytes):
        return NA
    picked = _pick_unit(float(nbytes), _SIZE_UNITS, digits)
    if picked is None:
        return f"{int(round(float(nbytes)))} B"
    factor, unit = picked
    return f"{number(float(nbytes) / factor, digits)} {unit}"


def percent_digits(v: float) -> str:
    """A value already in percent as digits: whole percent from 10 up ("45", "100", "123"), two significant digits
    below ("4.5", "0.41"), no trailing zeros."""
    if abs(v) >= 10:
        return f"{v:.0f}"
    s = number(v, 2)
    return s.rstrip("0").rstrip(".") if "." in s else s


def pct(x: float | None, *, fraction: bool = True) -> str:
    """A percentage: whole percent from 10 % up, two significant digits below. ``x`` is a fraction by
    default (0.45 → "45%", 0.004 → "0.4%"); pass ``fraction=False`` for values already in percent
    (e.g. ``server_cpu_pct``: 45 → "45%")."""
    if missing(x):
        return NA
    return f"{percent_digits(float(x) * (100 if fraction else 1))}%"
