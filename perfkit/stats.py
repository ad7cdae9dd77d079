"""Medians and tail percentiles with bootstrap confidence intervals, and ratios between samples.

Every estimate carries its n. Intervals: ``scipy.stats.bootstrap`` (percentile method, 2000
resamples by default, fixed seed so a report re-renders identically).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as _st

N_RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 20261123

_STATS: dict[str, Callable] = {
    "median": lambda x, axis=-1: np.median(x, axis=axis),
    "mean": lambda x, axis=-1: np.mean(x, axis=axis),
    "p90": lambda x, axis=-1: np.percentile(x, 90, axis=axis),
    "p99": lambda x, axis=-1: np.percentile(x, 99, axis=axis),
}


@dataclass(frozen=True)
class Estimate:
    """A statistic with its confidence interval and sample size (``lo``/``hi`` NaN when n < 2)."""

    stat: str
    value: float
    lo: float
    hi: float
    n: int
    confidence: float = CONFIDENCE

    def fmt(self, unit: str = "", digits: int = 3) -> str:
        def f(v: float) -> str:
            return "n/a" if v is None or math.isnan(v) else f"{v:.{digits}g}"
        ci = "" if math.isnan(self.lo) else f" [{f(self.lo)}, {f(self.hi)}]"
        return f"{f(self.value)}{unit}{ci} (n={self.n})"

    def as_dict(self) -> dict:
        return asdict(self)


def _clean(values: Sequence[float]) -> np.ndarray:
    a = np.asarray(pd.to_numeric(pd.Series(list(values)), errors="coerce"), dtype=float)
    return a[np.isfinite(a)]


def estimate(values: Sequence[float], stat: str = "median", *, n_resamples: int = N_RESAMPLES,
             confidence: float = CONFIDENCE, seed: int = SEED) -> Estimate:
    """``stat`` ∈ median | mean | p90 | p99 of ``values`` (NaN/None dropped) with a bootstrap CI."""
    if stat not in _STATS:
        raise ValueError(f"unknown statistic {stat!r}; allowed: {', '.join(_STATS)}")
    x = _clean(values)
    n = len(x)
    if n == 0:
        return Estimate(stat, math.nan, math.nan, math.nan, 0, confidence)
    value = float(_STATS[stat](x))
    if n < 2 or np.ptp(x) == 0:
        lo = hi = value if n >= 2 else math.nan
        return Estimate(stat, value, lo, hi, n, confidence)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = _st.bootstrap((x,), _STATS[stat], n_resamples=n_resamples, confidence_level=confidence,
                            method="percentile", vectorized=True, random_state=np.random.default_rng(seed))
    return Estimate(stat, value, float(res.confidence_interval.low), float(res.confidence_interval.high), n,
                    confidence)


def ratio(a: Sequence[float], b: Sequence[float], stat: str = "median", *, n_resamples: int = N_RESAMPLES,
          confidence: float = CONFIDENCE, seed: int = SEED) -> Estimate:
    """stat(a) / stat(b), with a CI from resampling both samples independently. ``n`` is min(n_a, n_b)."""
    fa, xa, xb = _STATS[stat], _clean(a), _clean(b)
    n = min(len(xa), len(xb))
    if n == 0 or float(fa(xb)) == 0:
        return Estimate(f"{stat} ratio", math.nan, math.nan, math.nan, n, confidence)
    value = float(fa(xa)) / float(fa(xb))
    if len(xa) < 2 or len(xb) < 2:
        return Estimate(f"{stat} ratio", value, math.nan, math.nan, n, confidence)

    def r(x, y, axis=-1):
        with np.errstate(divide="ignore", invalid="ignore"):
            return fa(x, axis=axis) / fa(y, axis=axis)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = _st.bootstrap((xa, xb), r, n_resamples=n_resamples, confidence_level=confidence,
                            method="percentile", vectorized=True, paired=False,
                            random_state=np.random.default_rng(seed))
    return Estimate(f"{stat} ratio", value, float(res.confidence_interval.low),
                    float(res.confidence_interval.high), n, confidence)


def summarize(df: pd.DataFrame, by: str | list[str], metric: str,
              stats: Sequence[str] = ("median", "p90", "p99")) -> pd.DataFrame:
    """One row per group: n, and for each stat its value and CI (``<stat>``, ``<stat>_lo``, ``<stat>_hi``)."""
    rows = []
    for key, g in df.groupby(by, sort=False):
        row = dict(zip([by] if isinstance(by, str) else by, key if isinstance(key, tuple) else (key,)))
        vals = g[metric].tolist()
        row["n"] = len(_clean(vals))
        for s in stats:
            e = estimate(vals, s)
            row[s], row[f"{s}_lo"], row[f"{s}_hi"] = e.value, e.lo, e.hi
        rows.append(row)
    return pd.DataFrame(rows)


def pooled(series: pd.Series) -> list[float]:
    """Flatten a column of lists (e.g. per-request ``itl_s``) into one pooled sample."""
    out: list[float] = []
    for v in series.dropna():
        out.extend(v if isinstance(v, (list, tuple, np.ndarray)) else [v])
    return out
