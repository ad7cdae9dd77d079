"""Units: what a number measures, declared once, and how it reads in a table, a sentence and on a chart.

A :class:`Unit` knows its symbol, how a value reads (significant digits, the scale that suits its magnitude —
µs, ms or s — or a fixed one — bytes as MiB), how an interval reads beside the value, and how a chart labels and
scales its axis. The metric catalogue (:mod:`perfkit.analysis.metrics`) declares each metric's unit; figures,
comparison rows, report tables and charts all print through it, so one unit reads the same everywhere. The digits
themselves (three significant, never scientific notation, "n/a" for a missing value) are
:mod:`perfkit.core.fmt`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from perfkit.core import fmt


class Estimate(Protocol):
    """What :meth:`Unit.estimate` prints (``perfkit.analysis.stats.Estimate`` is one): a value, its CI and the
    parenthetical that goes with it. A protocol, as the foundation imports nothing above it."""

    value: float
    lo: float
    hi: float

    @property
    def has_ci(self) -> bool: ...

    def annotation(self) -> str: ...


@dataclass(frozen=True)
class Unit:
    """One unit. ``name``: how a comparison file names it (``tokens_per_s``); ``symbol``: after a value and on an
    axis (``tok/s``; "" for a bare number); ``axis``: an axis title when nothing more is said (``tokens/s``);
    ``per``: a value reads, in text and on a chart alike, as value ÷ ``per`` of ``symbol`` (bytes: 2²⁰ per MiB);
    ``spaced``: a space between the number and its symbol ("132 tok/s", but "3.02×", "45%")."""

    name: str
    symbol: str
    axis: str
    per: float = 1.0
    spaced: bool = True

    # ---- text ---------------------------------------------------------------------------------------------
    def scale(self, value: float, digits: int = 3) -> tuple[float, str]:
        """(divisor, symbol) that ``value`` reads in; the bounds of its interval share them."""
        return self.per, self.symbol

    def number(self, x: float, div: float, digits: int = 3) -> str:
        """``x`` read in the scale ``div``, as digits without a symbol: '412', '12.5', '0.000512'."""
        return fmt.number(x / div, digits)

    def text(self, value: float | None, digits: int = 3) -> str:
        """The value with its symbol: '132 tok/s', '473 MiB', '3.02×'; 'n/a' when there is none."""
        if fmt.missing(value):
            return fmt.NA
        div, symbol = self.scale(float(value), digits)
        return self._join(self.number(float(value), div, digits), symbol)

    def ci(self, value: float | None, lo: float | None, hi: float | None, digits: int = 3) -> str:
        """The value and its interval, the bounds in the value's scale: '412 ms [398, 431]'. The value alone when
        there is no interval: a missing bound, or a zero-width one, which would read as certainty."""
        text = self.text(value, digits)
        if fmt.missing(value) or fmt.missing(lo) or fmt.missing(hi) or float(lo) == float(hi):
            return text
        div, _ = self.scale(float(value), digits)
        return f"{text} [{self._bound(float(lo), div, digits)}, {self._bound(float(hi), div, digits)}]"

    def estimate(self, e: Estimate, digits: int = 3) -> str:
        """An estimate as 'value [lo, hi] (n=…)', with its note and, when n is too small for a CI, the n that would
        give one: '412 ms [398, 431] (n=5)', '3.02× (n=3 vs 3; no 95% CI of ratio below n=4 per sample)'."""
        shown = self.ci(e.value, e.lo, e.hi, digits) if e.has_ci else self.text(e.value, digits)
        return f"{shown} ({e.annotation()})"

    def _bound(self, x: float, div: float, digits: int) -> str:
        # Bare digits: the value beside them already says the unit.
        return self.number(x, div, digits)

    def _join(self, number: str, symbol: str) -> str:
        return f"{number} {symbol}" if self.spaced and symbol else f"{number}{symbol}"

    # ---- charts -------------------------------------------------------------------------------------------
    def plot(self, value: object) -> float | None:
        """``value`` as a chart plots it, in the axis label's ``symbol`` (bytes as MiB, a share as percent);
        None where there is no finite number to plot."""
        x = fmt.finite(value)
        return None if x is None else x / self.per

    def axis_label(self, what: str = "") -> str:
        """An axis title: 'median TTFT (s)', 'peak RSS (MiB)'; without ``what``, the unit in words ('seconds')."""
        if not what:
            return self.axis
        return f"{what} ({self.symbol})" if self.symbol else what


@dataclass(frozen=True)
class _Seconds(Unit):
    """Seconds, read in the unit that suits the magnitude (ns … h, chosen after rounding, so 0.9996 s reads
    "1.00 s"); +inf is a censored value, a failed or timed-out request beyond any latency limit. A chart plots
    seconds as they are."""

    def scale(self, value: float, digits: int = 3) -> tuple[float, str]:
        return fmt.duration_scale(value, digits)

    def text(self, value: float | None, digits: int = 3) -> str:
        return fmt.duration(value, digits)

    def ci(self, value: float | None, lo: float | None, hi: float | None, digits: int = 3) -> str:
        if not fmt.missing(value) and float(value) == math.inf:
            # Beyond the limit has no scale for a bound to share: the lower bound says its own unit.
            has_lo = not fmt.missing(lo) and float(lo) != math.inf
            return fmt.BEYOND + (f" [{fmt.duration(lo, digits)}, {fmt.BEYOND}]" if has_lo else "")
        return super().ci(value, lo, hi, digits)

    def _bound(self, x: float, div: float, digits: int) -> str:
        return fmt.BEYOND if x == math.inf else super()._bound(x, div, digits)


@dataclass(frozen=True)
class _Percent(Unit):
    """A percentage: whole percent from 10 % up, two significant digits below ("45%", "4.5%", "0.41%"); with
    ``fraction`` the value is a share 0–1, shown (and plotted) × 100. Each bound carries its "%" too: a bare
    "[40, 50]" beside "45%" could be read as a count."""

    fraction: bool = False

    def number(self, x: float, div: float, digits: int = 3) -> str:
        # × 100, never ÷ 0.01: 0.375 is 37.5 % (whole: "38%"), where ÷ 0.01 gives 37.4999… ("37%").
        return fmt.percent_digits(x * 100 if self.fraction else x / div)

    def plot(self, value: object) -> float | None:
        x = super().plot(value)
        return x * 100 if x is not None and self.fraction else x

    def _bound(self, x: float, div: float, digits: int) -> str:
        return self._join(self.number(x, div, digits), self.symbol)


SECONDS = _Seconds("seconds", "s", "seconds")
TOKENS_PER_S = Unit("tokens_per_s", "tok/s", "tokens/s")
REQUESTS_PER_S = Unit("requests_per_s", "req/s", "requests/s")
TOKENS = Unit("tokens", "tok", "tokens")  # a count of tokens (a request's thinking or answer tokens)
# Memory always in MiB, however large: rows of a memory table compare at a glance ("473 MiB" beside "49200 MiB").
BYTES = Unit("bytes", "MiB", "MiB", per=2**20)
SHARE = _Percent("share", "%", "percent", spaced=False, fraction=True)
PERCENT = _Percent("percent", "%", "percent", spaced=False)  # already in percent: a process's CPU, 0–100 × cores
JOULES = Unit("joules", "J", "joules")
WATTS = Unit("watts", "W", "watts")
RATIO = Unit("ratio", "×", "ratio", spaced=False)

_BY_NAME = {u.name: u for u in (SECONDS, TOKENS_PER_S, REQUESTS_PER_S, TOKENS, BYTES, SHARE, PERCENT, JOULES, WATTS,
                                RATIO)}


def named(name: str) -> Unit:
    """The unit a file names (``Unit.name``); ValueError naming the known ones otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown unit {name!r}; known: {', '.join(_BY_NAME)}") from None
