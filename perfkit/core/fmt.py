"""Display formatting for report tables and text: durations, rates, sizes, counts, percentages, estimates.

Rules shared by every function: 3 significant digits by default, never scientific notation, the unit that
reads well for the magnitude (chosen after rounding, so 0.9996 s prints as "1.00 s", not "1000 ms"), and
"n/a" for None/NaN. Intervals print their bounds in the value's unit.
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence


class Estimate(Protocol):
    """What :func:`estimate` prints (``perfkit.analysis.stats.Estimate`` is one): a value, its CI, and the
    parenthetical that goes with it."""

    value: float
    lo: float
    hi: float

    @property
    def has_ci(self) -> bool: ...

    def annotation(self) -> str: ...

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


def _missing(x: float | None) -> bool:
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
    if _missing(x):
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


def _duration_unit(seconds: float, digits: int) -> tuple[float, str]:
    if seconds == 0:
        return 1.0, "s"
    return _pick_unit(seconds, _DURATION_UNITS, digits) or _DURATION_UNITS[-1]


def duration(seconds: float | None, digits: int = 3) -> str:
    """A duration given in seconds, in ns/µs/ms/s/min/h with ``digits`` significant digits:
    0.00085 → "850 µs", 0.0125 → "12.5 ms", 1.549 → "1.55 s", 189 → "3.15 min", 5580 → "1.55 h".
    Minutes and hours are decimal (not "3 min 9 s") so interval bounds can share the unit."""
    if _missing(seconds):
        return NA
    if float(seconds) == math.inf:
        return BEYOND
    factor, unit = _duration_unit(float(seconds), digits)
    return f"{number(float(seconds) / factor, digits)} {unit}"


def _bounds(lo: float | None, hi: float | None, scale: float, digits: int, suffix: str = "") -> str:
    """" [lo, hi]" in the value's scale, or "" when there is no interval (missing or zero-width, which
    would read as certainty)."""
    if _missing(lo) or _missing(hi) or float(lo) == float(hi):
        return ""
    top = BEYOND if float(hi) == math.inf else f"{number(float(hi) / scale, digits)}{suffix}"
    return f" [{number(float(lo) / scale, digits)}{suffix}, {top}]"


def duration_ci(value: float | None, lo: float | None, hi: float | None, digits: int = 3) -> str:
    """Seconds with an interval, bounds in the value's unit: (0.412, 0.398, 0.431) → "412 ms [398, 431]"."""
    if _missing(value):
        return NA
    if float(value) == math.inf:
        return BEYOND + (f" [{duration(lo, digits)}, {BEYOND}]" if not _missing(lo) and float(lo) != math.inf else "")
    factor, unit = _duration_unit(float(value), digits)
    return f"{number(float(value) / factor, digits)} {unit}{_bounds(lo, hi, factor, digits)}"


def count(n: float | None, digits: int = 3) -> str:
    """A count such as a parameter count: 999 → "999", 134_515_008 → "135M", 7_241_732_096 → "7.24B",
    32_763_876_352 → "32.8B" (k, M, B, T = 10³, 10⁶, 10⁹, 10¹²)."""
    if _missing(n):
        return NA
    picked = _pick_unit(float(n), _COUNT_UNITS, digits)
    if picked is None:
        return str(int(round(float(n))))
    factor, unit = picked
    return f"{number(float(n) / factor, digits)}{unit}"


def size(nbytes: float | None, digits: int = 3) -> str:
    """A size in bytes with decimal units (kB, MB, GB, TB, PB = 10³…10¹⁵ B): 98_000_000 → "98.0 MB",
    47_400_000_000 → "47.4 GB", 512 → "512 B". Use for files and transfer volumes."""
    if _missing(nbytes):
        return NA
    picked = _pick_unit(float(nbytes), _SIZE_UNITS, digits)
    if picked is None:
        return f"{int(round(float(nbytes)))} B"
    factor, unit = picked
    return f"{number(float(nbytes) / factor, digits)} {unit}"


def mib(nbytes: float | None, digits: int = 3) -> str:
    """Memory in bytes, always in MiB (2²⁰ B) so rows of a memory table compare at a glance:
    495_976_448 → "473 MiB"."""
    if _missing(nbytes):
        return NA
    return f"{number(float(nbytes) / 2**20, digits)} MiB"


def rate(x: float | None, unit: str = "tok/s", digits: int = 3) -> str:
    """A rate with its unit, ``digits`` significant digits, plain notation: 132.4 → "132 tok/s",
    1548 → "1550 tok/s", 0.5123 → "0.512 tok/s"."""
    if _missing(x):
        return NA
    return f"{number(x, digits)} {unit}".rstrip()


def ratio(x: float | None, digits: int = 3) -> str:
    """A dimensionless factor: 3.021 → "3.02×"."""
    return NA if _missing(x) else f"{number(x, digits)}×"


def _pct_number(v: float) -> str:
    # Two significant digits below 10 % ("4.5", "0.41"), whole percent above: "45", "100", "123".
    if abs(v) >= 10:
        return f"{v:.0f}"
    s = number(v, 2)
    return s.rstrip("0").rstrip(".") if "." in s else s


def pct(x: float | None, *, fraction: bool = True) -> str:
    """A percentage: whole percent from 10 % up, two significant digits below. ``x`` is a fraction by
    default (0.45 → "45%", 0.004 → "0.4%"); pass ``fraction=False`` for values already in percent
    (e.g. ``server_cpu_pct``: 45 → "45%")."""
    if _missing(x):
        return NA
    return f"{_pct_number(float(x) * (100 if fraction else 1))}%"


def estimate(e: Estimate, kind: str = "duration", unit: str = "", digits: int = 3) -> str:
    """An estimate (e.g. :class:`perfkit.analysis.stats.Estimate`) as "value [lo, hi] (n=…)", with its note and, when there is no CI
    because n is too small, the n that would give one:

    * ``duration`` (value in seconds): "412 ms [398, 431] (n=5)", "412 ms (all 5 values identical; n=5)"
    * ``rate``: "132 tok/s [120, 141] (n=5)" (``unit`` defaults to "tok/s")
    * ``ratio``: "3.02× [2.91, 3.15] (n=8 vs 8)"
    * ``pct`` (value a fraction): "45% [40%, 50%] (n=20)"
    * ``plain``: number, then ``unit`` if given: "412 ms [398, 431] (n=5)" with unit="ms"
    """
    ann = f" ({e.annotation()})"
    lo, hi = (e.lo, e.hi) if e.has_ci else (math.nan, math.nan)
    if _missing(e.value):
        return NA + ann
    if kind == "duration":
        return duration_ci(e.value, lo, hi, digits) + ann
    if kind == "rate":
        return rate(e.value, unit or "tok/s", digits) + _bounds(lo, hi, 1.0, digits) + ann
    if kind == "ratio":
        return f"{number(e.value, digits)}{unit or '×'}" + _bounds(lo, hi, 1.0, digits) + ann
    if kind == "pct":
        b = "" if _missing(lo) else f" [{pct(lo)}, {pct(hi)}]"
        return pct(e.value) + b + ann
    if kind == "plain":
        return f"{number(e.value, digits)}{' ' + unit if unit else ''}" + _bounds(lo, hi, 1.0, digits) + ann
    raise ValueError(f"unknown kind {kind!r}; allowed: duration, rate, ratio, pct, plain")
