"""Point estimates with confidence intervals that stay honest at small n.

Every estimate carries its n, the method that made its interval and, when n is too small for any interval
at the requested confidence, the n that would give one (``need_n``). Methods:

* Percentiles (median, p90, p99, any ``pXX``): value = sample percentile (numpy ``linear``); interval =
  distribution-free order-statistic interval [X_(l), X_(u)] from Binomial(n, q). A bootstrap is not used: it
  cannot reach beyond the sample maximum, so its "p99 interval" from a dozen samples covers nothing.
* Mean: Student t-interval (valid at small n for roughly normal data).
* Ratio of two samples: Hodges–Lehmann estimate of the scale factor (shift on the log scale) with the Moses
  distribution-free interval from the exact Mann–Whitney null distribution.
* Throughput of one load series: batch means over equal time windows; across repeated series: t-interval.

All intervals are two-sided with coverage >= ``confidence`` (exact methods) or approximately equal to it (t).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as _st

CONFIDENCE = 0.95

ORDER_STAT_METHOD = "order statistics (binomial, exact)"
T_METHOD = "t-interval (Student, n-1 dof; assumes roughly normal data)"
HL_METHOD = "Hodges–Lehmann ratio, Moses distribution-free CI (log scale)"

# Exact Mann–Whitney null distribution up to this m·n (200 × 200); normal approximation beyond.
_EXACT_MWU_MAX_CELLS = 40_000
# Coverage sums of binomial probabilities are compared with this slack so floating-point rounding cannot
# flip an interval that exactly reaches the confidence level.
_TOL = 1e-12


@dataclass(frozen=True)
class Estimate:
    """A statistic, its two-sided confidence interval and its sample size.

    ``lo``/``hi`` are NaN when there is no interval; ``need_n`` is then the smallest n (per sample for
    ratios) that would give one at this ``confidence``, when such an n exists. ``note`` carries caveats
    shown by :meth:`annotation` (identical values, dropped values). ``n_a``/``n_b`` are the two sample sizes of a
    ratio (``n`` is their minimum). Its unit prints it (``perfkit.core.units.SECONDS.estimate(e)``:
    "412 ms [398, 431] (n=5)").
    """

    stat: str
    value: float
    lo: float
    hi: float
    n: int
    confidence: float = CONFIDENCE
    method: str = ""
    need_n: int | None = None
    note: str = ""
    n_a: int | None = None
    n_b: int | None = None

    @property
    def has_ci(self) -> bool:
        """True when there is an interval worth printing (finite and of nonzero width)."""
        return math.isfinite(self.lo) and math.isfinite(self.hi) and self.hi > self.lo

    def annotation(self) -> str:
        """The parenthetical that goes with a formatted value: note, n, and why there is no CI.

        e.g. ``"n=5"``, ``"all 5 values identical; n=5"``,
        ``"n=4; no 95% CI of p99 below n=299"``.
        """
        parts = [self.note] if self.note else []
        parts.append(f"n={self.n_a} vs {self.n_b}" if self.n_a is not None and self.n_b is not None
                     else f"n={self.n}")
        if self.need_n is not None and not math.isfinite(self.lo):
            per = " per sample" if self.n_a is not None else ""
            parts.append(f"no {100 * self.confidence:g}% CI of {self.stat} below n={self.need_n}{per}")
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Estimate":
        """An estimate as :meth:`as_dict` wrote it, read back from JSON (NaN as null, ±inf as "inf"/"-inf")."""
        e = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("value", "lo", "hi", "confidence"):
            e[k] = as_float(e.get(k))
        return cls(**e)


def as_float(v: Any) -> float:
    """``v`` as a float: a number, or "inf" as JSON carries one; NaN for None or anything else."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


# --------------------------------------------------------------------------------------------- cleaning

def _clean(values: Sequence[float], keep_censored: bool = False) -> np.ndarray:
    """Finite values; with ``keep_censored``, +inf too (a failed or timed-out request: beyond any limit)."""
    a = np.asarray(pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce"), dtype=float)
    return a[np.isfinite(a) | (keep_censored & (a == np.inf))]


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence!r}")


def _identical_note(n: int, what: str = "values") -> str:
    return f"all {n} {what} identical"


# ---------------------------------------------------------------------------------- percentiles & mean

_PCT = re.compile(r"^p(\d+(?:\.\d+)?)$")


def quantile_of(stat: str) -> float | None:
    """The probability q of a percentile statistic name (``median``/``p50`` → 0.5, ``p99`` → 0.99),
    None for ``mean``. Raises ValueError for anything else."""
    if stat == "mean":
        return None
    if stat == "median":
        return 0.5
    m = _PCT.match(stat)
    if m and 0 < float(m.group(1)) < 100:
        return float(m.group(1)) / 100
    raise ValueError(f"unknown statistic {stat!r}; allowed: median, mean, p50, p90, p95, p99, "
                     f"or any pXX with 0 < XX < 100")


def _max_coverage(n: int, q: float) -> float:
    """Coverage of the widest order-statistic interval [X_(1), X_(n)]: P(1 ≤ B ≤ n−1), B ~ Binom(n, q)."""
    return 1.0 - q ** n - (1.0 - q) ** n


def min_n_for(q: float, confidence: float = CONFIDENCE) -> int:
    """Smallest sample size n for which a distribution-free two-sided CI of the q-quantile exists at
    ``confidence`` (the widest one, [min, max], must cover with probability ≥ confidence).

    Coverage of [min, max] increases with n, so this is an exponential-then-binary search.
    """
    _check_confidence(confidence)
    if not 0 < q < 1:
        raise ValueError(f"q must be strictly between 0 and 1, got {q!r}")
    ok = lambda n: _max_coverage(n, q) >= confidence - _TOL  # noqa: E731
    hi = 2
    while not ok(hi):
        hi *= 2
    lo = hi // 2  # ok(lo) is False unless lo < 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return max(hi, 2)


@lru_cache(maxsize=1024)
def order_stat_ranks(n: int, q: float, confidence: float = CONFIDENCE) -> tuple[int, int] | None:
    """1-based ranks (l, u), l < u, of the order-statistic CI [X_(l), X_(u)] of the q-quantile, or None
    when no interval reaches ``confidence`` at this n.

    B ~ Binom(n, q) counts samples below the true quantile; the interval misses below with probability
    P(B < l) and above with P(B ≥ u), so coverage = P(l ≤ B ≤ u−1). Tails are made as equal as the binomial
    allows: each ≤ α/2 (α = 1 − confidence; the usual equal-tailed interval, symmetric ranks for the
    median) when both can be; otherwise the side that cannot reach α/2 takes the extreme order statistic and
    the other side gets the rest of α, so an interval exists from :func:`min_n_for` on (strictly equal
    tails would need a larger n for tail percentiles). Where both tails fit, the result equals
    ``scipy.stats.quantile_test(x, p=q).confidence_interval(confidence)``.
    """
    _check_confidence(confidence)
    if n < 2 or _max_coverage(n, q) < confidence - _TOL:
        return None
    cdf = _st.binom.cdf(np.arange(n + 1), n, q)  # cdf[k] = P(B ≤ k)
    alpha = 1 - confidence

    def largest_l(budget: float) -> int:  # largest l with P(B < l) = cdf[l−1] ≤ budget
        return int(np.searchsorted(cdf, budget + _TOL, side="right"))

    def smallest_u(budget: float) -> int:  # smallest u with P(B ≥ u) = 1 − cdf[u−1] ≤ budget
        return int(np.searchsorted(cdf, 1 - budget - _TOL, side="left")) + 1

    lower_tail_at_min, upper_tail_at_max = cdf[0], 1 - cdf[n - 1]
    if upper_tail_at_max > alpha / 2:
        return min(largest_l(alpha - upper_tail_at_max), n - 1), n
    if lower_tail_at_min > alpha / 2:
        return 1, max(smallest_u(alpha - lower_tail_at_min), 2)
    return largest_l(alpha / 2), smallest_u(alpha / 2)


def _quantile_estimate(x: np.ndarray, stat: str, q: float, confidence: float) -> Estimate:
    n = len(x)
    censored = int(np.isinf(x).sum())
    with np.errstate(invalid="ignore"):
        value = float(np.percentile(x, 100 * q))
    if math.isnan(value):  # between two censored values: beyond the limit too
        value = math.inf
    note = _identical_note(n) if n >= 2 and censored == 0 and np.ptp(x) == 0 else ""
    if censored:
        note = (f"{censored} of {n} failed or timed out, counted as beyond the limit" + (f"; {note}" if note else ""))
    ranks = order_stat_ranks(n, q, confidence)
    if ranks is None:
        return Estimate(stat, value, math.nan, math.nan, n, confidence, ORDER_STAT_METHOD,
                        need_n=min_n_for(q, confidence), note=note)
    xs = np.sort(x)
    l, u = ranks
    return Estimate(stat, value, float(xs[l - 1]), float(xs[u - 1]), n, confidence, ORDER_STAT_METHOD,
                    note=note)


def _t_interval(x: np.ndarray, stat: str, confidence: float, method: str) -> Estimate:
    """Mean of x with a Student t-interval (n−1 dof)."""
    n = len(x)
    value = float(np.mean(x))
    if n < 2:
        return Estimate(stat, value, math.nan, math.nan, n, confidence, method, need_n=2)
    if np.ptp(x) == 0:
        return Estimate(stat, value, value, value, n, confidence, method, note=_identical_note(n))
    half = float(_st.t.ppf((1 + confidence) / 2, n - 1) * np.std(x, ddof=1) / math.sqrt(n))
    return Estimate(stat, value, value - half, value + half, n, confidence, method)


def estimate(values: Sequence[float], stat: str = "median", *, confidence: float = CONFIDENCE) -> Estimate:
    """``stat`` of ``values`` (NaN/None dropped) with a two-sided CI at ``confidence``. For a percentile, +inf
    values are censored observations (a failed or timed-out request: beyond the limit) and stay in the order
    statistics, so a failure never leaves a latency percentile; the value or a bound may then be +inf.

    ``stat``: ``median`` (= ``p50``), ``p90``, ``p95``, ``p99``, any ``pXX``, or ``mean``. Percentiles:
    sample percentile (linear interpolation) with the exact order-statistic interval, NaN bounds plus
    ``need_n`` when n is too small. Mean: t-interval.
    """
    _check_confidence(confidence)
    q = quantile_of(stat)
    x = _clean(values, keep_censored=q is not None)
    method = ORDER_STAT_METHOD if q is not None else T_METHOD
    if len(x) == 0:
        return Estimate(stat, math.nan, math.nan, math.nan, 0, confidence, method,
                        need_n=min_n_for(q, confidence) if q is not None else 2)
    if q is None:
        return _t_interval(x, stat, confidence, method)
    return _quantile_estimate(x, stat, q, confidence)


# ----------------------------------------------------------------------------------------------- ratio

@lru_cache(maxsize=256)
def _mwu_cdf(m: int, n: int) -> np.ndarray:
    """Exact null CDF of the Mann–Whitney U for sample sizes m, n: ``cdf[u] = P(U ≤ u)``, u = 0..m·n.

    The counts are the coefficients of the Gaussian binomial [m+n choose m]_q =
    ∏_{i=1..m} (1 − q^(n+i)) / (1 − q^i); built one factor at a time and renormalised each step so the
    floats stay in range (relative error ~1e-8 in the far tail at 200 × 200, far below what matters here).
    """
    if m > n:
        m, n = n, m
    size = m * n + 1
    c = np.zeros(size)
    c[0] = 1.0
    for i in range(1, m + 1):
        s = n + i
        if s < size:
            c[s:] -= c[:-s].copy()
        # dividing by (1 − q^i) is a running sum with stride i
        pad = (-size) % i
        c = np.cumsum(np.concatenate([c, np.zeros(pad)]).reshape(-1, i), axis=0).ravel()[:size]
        c /= c.sum()
    return np.cumsum(c)


def _moses_k(m: int, n: int, confidence: float) -> int:
    """Largest k ≥ 1 with P(U ≤ k−1) ≤ (1−confidence)/2, or 0 when none: the Moses CI is
    [d_(k), d_(mn+1−k)] of the sorted pairwise differences, coverage 1 − 2·P(U ≤ k−1)."""
    half_alpha = (1 - confidence) / 2
    if m * n <= _EXACT_MWU_MAX_CELLS:
        cdf = _mwu_cdf(m, n)
        return int(np.searchsorted(cdf, half_alpha + _TOL, side="right"))  # count of u with cdf ≤ α/2
    # normal approximation with continuity correction: P(U ≤ k−1) ≈ Φ((k − 1/2 − mn/2) / σ)
    sigma = math.sqrt(m * n * (m + n + 1) / 12)
    return max(int(math.floor(m * n / 2 + 0.5 + _st.norm.ppf(half_alpha) * sigma)), 0)


def min_n_ratio(confidence: float = CONFIDENCE) -> int:
    """Smallest equal per-sample size n for which the Moses CI exists: P(U = 0) = 1/C(2n, n) ≤ α/2."""
    _check_confidence(confidence)
    n = 1
    while 1 / math.comb(2 * n, n) > (1 - confidence) / 2 + _TOL:
        n += 1
    return n


def ratio(a: Sequence[float], b: Sequence[float], stat: str = "median", *,
          confidence: float = CONFIDENCE) -> Estimate:
    """How many times larger ``a`` is than ``b`` (two independent samples, e.g. cold e2e / warm e2e).

    Hodges–Lehmann on the log scale: value = exp(median of all log a_i − log b_j); CI = exp of the order
    statistics of those differences at ranks from the exact Mann–Whitney null distribution (Moses), normal
    approximation beyond 200 × 200. Distribution-free under a scale model (same shape, different scale), valid
    at any n; below the minimum n the bounds are NaN and ``need_n`` is the equal per-sample n that would give
    one. Non-positive values cannot be log-ratioed and are dropped (``note`` says how many). ``n`` is
    min(n_a, n_b); ``n_a``/``n_b`` are both. ``stat`` must be ``"median"``.
    """
    if stat != "median":
        raise ValueError(f"ratio supports stat='median' only (Hodges–Lehmann); got {stat!r}")
    _check_confidence(confidence)
    xa, xb = _clean(a), _clean(b)
    dropped = int((xa <= 0).sum() + (xb <= 0).sum())
    xa, xb = xa[xa > 0], xb[xb > 0]
    note = f"dropped {dropped} non-positive value{'s' if dropped != 1 else ''}" if dropped else ""
    m, n = len(xa), len(xb)
    common = dict(confidence=confidence, method=HL_METHOD, n_a=m, n_b=n)
    if m == 0 or n == 0:
        return Estimate("ratio", math.nan, math.nan, math.nan, min(m, n), note=note,
                        need_n=min_n_ratio(confidence), **common)
    d = (np.log(xa)[:, None] - np.log(xb)[None, :]).ravel()
    value = float(np.exp(np.median(d)))
    if np.ptp(xa) == 0 and np.ptp(xb) == 0:
        note = "; ".join(filter(None, [note, "all values identical within each sample"]))
    k = _moses_k(m, n, confidence)
    if k < 1:
        return Estimate("ratio", value, math.nan, math.nan, min(m, n), note=note,
                        need_n=min_n_ratio(confidence), **common)
    lo_i, hi_i = k - 1, m * n - k  # 0-based ranks k and mn+1−k
    part = np.partition(d, [lo_i, hi_i])
    return Estimate("ratio", value, float(np.exp(part[lo_i])), float(np.exp(part[hi_i])), min(m, n),
                    note=note, **common)


def shift(a: Sequence[float], b: Sequence[float], *, confidence: float = CONFIDENCE) -> Estimate:
    """How much larger ``a`` is than ``b`` (same unit), e.g. TTFT through a proxy − TTFT direct.

    Hodges–Lehmann shift: value = median of all differences a_i − b_j; CI = Moses (order statistics of the
    differences at ranks from the exact Mann–Whitney null), distribution-free under a shift model, as
    ``ratio`` is under a scale model. Below the minimum n the bounds are NaN and ``need_n`` says what would do.
    """
    _check_confidence(confidence)
    xa, xb = _clean(a), _clean(b)
    m, n = len(xa), len(xb)
    common = dict(confidence=confidence, method="Hodges–Lehmann shift, Moses CI", n_a=m, n_b=n)
    if m == 0 or n == 0:
        return Estimate("shift", math.nan, math.nan, math.nan, min(m, n), need_n=min_n_ratio(confidence), **common)
    d = (xa[:, None] - xb[None, :]).ravel()
    value = float(np.median(d))
    k = _moses_k(m, n, confidence)
    if k < 1:
        return Estimate("shift", value, math.nan, math.nan, min(m, n), need_n=min_n_ratio(confidence), **common)
    lo_i, hi_i = k - 1, m * n - k
    part = np.partition(d, [lo_i, hi_i])
    return Estimate("shift", value, float(part[lo_i]), float(part[hi_i]), min(m, n), **common)


def proportion(k: int, n: int, *, confidence: float = CONFIDENCE) -> Estimate:
    """k of n as a share, with the exact (Clopper–Pearson) CI: always within [0, 1]."""
    _check_confidence(confidence)
    if n <= 0:
        return Estimate("share", math.nan, math.nan, math.nan, 0, confidence, "Clopper–Pearson")
    ci = _st.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return Estimate("share", k / n, float(ci.low), float(ci.high), int(n), confidence, "Clopper–Pearson")


# ------------------------------------------------------------------------------------------ throughput

def _flatten_times(token_times_ns: Sequence, weights: Sequence | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(times, weights) pooled over requests: ``token_times_ns`` is one flat sequence or one sequence per
    request; ``weights`` (tokens per time, same shape) default to 1."""
    flat: list[float] = []
    w: list[float] = []
    for i, item in enumerate(token_times_ns):
        wi = weights[i] if weights is not None else None
        if isinstance(item, (list, tuple, np.ndarray, pd.Series)):
            flat.extend(item)
            w.extend(wi if wi is not None else [1.0] * len(item))
        elif item is not None:
            flat.append(item)
            w.append(wi if wi is not None else 1.0)
    a, b = np.asarray(flat, dtype=float), np.asarray(w, dtype=float)
    keep = np.isfinite(a)
    return a[keep], b[keep]


def throughput_ci(token_times_ns: Sequence, t_start_ns: int, t_end_ns: int, *, batches: int = 5,
                  confidence: float = CONFIDENCE, weights: Sequence | None = None) -> Estimate:
    """Output tokens/s of one load series, CI by the method of batch means.

    ``token_times_ns``: the arrival time (ns, same clock as ``t_start_ns``/``t_end_ns``) of every output
    token (or streamed event), either flat or one sequence per request; ``weights``: the tokens each time
    carries (an event with k tokens weighs k), same shape, default 1. [t_start, t_end] is split into ``batches`` equal windows;
    rate_k = tokens in window k / window length (s). Value = all tokens in the span / span (s); CI = t-interval
    over the k window rates (k−1 dof), which treats windows as roughly independent — true when each window
    is long compared with a request. ``n`` is the number of windows. No CI with fewer than 3 windows or
    fewer than 3 windows containing tokens.
    """
    _check_confidence(confidence)
    if batches < 1:
        raise ValueError(f"batches must be ≥ 1, got {batches!r}")
    method = f"batch means (k={batches} windows)"
    span_s = (t_end_ns - t_start_ns) / 1e9
    if not span_s > 0:
        return Estimate("throughput", math.nan, math.nan, math.nan, 0, confidence, method,
                        note="empty time span")
    t, w = _flatten_times(token_times_ns, weights)
    inside = (t >= t_start_ns) & (t <= t_end_ns)
    t, w = t[inside], w[inside]
    counts, _ = np.histogram(t, bins=np.linspace(t_start_ns, t_end_ns, batches + 1), weights=w)
    rates = counts / (span_s / batches)
    value = float(w.sum()) / span_s
    if batches < 3:
        return Estimate("throughput", value, math.nan, math.nan, batches, confidence, method, need_n=3)
    filled = int((counts > 0).sum())
    if filled < 3:
        return Estimate("throughput", value, math.nan, math.nan, batches, confidence, method,
                        note=f"only {filled} of {batches} windows contain tokens")
    half = float(_st.t.ppf((1 + confidence) / 2, batches - 1) * np.std(rates, ddof=1) / math.sqrt(batches))
    note = _identical_note(batches, "window rates") if half == 0 else ""
    # A rate can't be negative: a wide interval from few windows is cut at 0, not printed below it.
    return Estimate("throughput", value, max(0.0, value - half), value + half, batches, confidence, method, note=note)


def replicate_ci(values: Sequence[float], stat: str = "mean", *, confidence: float = CONFIDENCE) -> Estimate:
    """Mean over independent repeated series (one value per series, e.g. tokens/s of each repeat) with a
    Student t-interval (n−1 dof); ``stat`` only names the result."""
    _check_confidence(confidence)
    x = _clean(values)
    method = f"t-interval across {len(x)} repeated series"
    if len(x) == 0:
        return Estimate(stat, math.nan, math.nan, math.nan, 0, confidence, method, need_n=2)
    return _t_interval(x, stat, confidence, method)


# ------------------------------------------------------------------------------------------- tables

def summarize(df: pd.DataFrame, by: str | list[str], metric: str,
              stats: Sequence[str] = ("median", "p90", "p99")) -> pd.DataFrame:
    """One row per group: ``n``, and for each stat ``<stat>``, ``<stat>_lo``, ``<stat>_hi`` and
    ``<stat>_need_n`` (the n needed for a CI when there is none, else None)."""
    rows = []
    for key, g in df.groupby(by, sort=False):
        row = dict(zip([by] if isinstance(by, str) else by, key if isinstance(key, tuple) else (key,)))
        vals = g[metric].tolist()
        row["n"] = len(_clean(vals))
        for s in stats:
            e = estimate(vals, s)
            row[s], row[f"{s}_lo"], row[f"{s}_hi"], row[f"{s}_need_n"] = e.value, e.lo, e.hi, e.need_n
        rows.append(row)
    return pd.DataFrame(rows)


def pooled(series: pd.Series) -> list[float]:
    """Flatten a column of lists (e.g. per-request ``itl_s``) into one pooled sample."""
    out: list[float] = []
    for v in series.dropna():
        out.extend(v if isinstance(v, (list, tuple, np.ndarray)) else [v])
    return out
