"""Is a difference real? One figure before and after a change, as a ratio with its CI, a p-value and a verdict.

Three ways to compare, by what the two sides have:

* **runs** (both sides ≥ :data:`MIN_REPLICATES` replicate runs): the runs are the unit. Ratio = exp of the
  difference of the mean log values, CI and p from a t-test on the log values: Student's pooled test when both
  sides have as many runs (then it is robust to unequal variances, and with 3 runs a side its n−2 = 4 degrees
  of freedom keep the power that Welch's ≈2 lose), Welch's otherwise. Run-to-run variation (a restart, the
  page cache, thermal state, a busy neighbour) is inside the interval.
* **requests** (per-request samples on both sides, fewer replicates): Hodges–Lehmann ratio with the Moses
  distribution-free CI and the Mann–Whitney p-value. These treat the requests of one run as independent
  samples of it, which they are not of the *next* run: a verdict also needs the CI to lie entirely beyond
  the minimum practical effect (:data:`MIN_EFFECT`, measured from A/A runs; overridable).
* **estimates** (a series' throughput, one CI per side, no samples): ratio of the values, CI and p from the
  two CIs on the log scale (normal approximation); the minimum practical effect applies as above.
* **tail** (a percentile above the median, per-request samples on both sides, failures kept as +inf): the
  ratio of the two percentiles, its CI from each side's order-statistic interval, and an exact placement test:
  how many of B's requests lie beyond (1 + minimum effect) × A's percentile, against how many would if nothing
  had changed (and the same the other way round). A median's ratio never speaks for a tail.
* **shares** (a per-request yes/no, e.g. failed): the difference of the two shares in percentage points with its
  exact CI, and Boschloo's exact test.
* one reading per side (resident memory): no CI, never a verdict.

Across many rows the p-values are adjusted for the false-discovery rate (Benjamini–Hochberg,
:func:`fdr_adjust`): a row is *improved* or *worse* only when its adjusted q ≤ :data:`FDR` as well.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats as st
from scipy.special import gammaln

from perfkit.analysis import stats
from perfkit.analysis.figures import Figure, clean
from perfkit.core import fmt, units
from perfkit.core.units import Unit

IMPROVED = "improved"
WORSE = "worse"
NO_CHANGE = "no detectable change at this n"
NOT_COMPARABLE = "not comparable"
VERDICTS = (IMPROVED, WORSE, NO_CHANGE, NOT_COMPARABLE)

MIN_REPLICATES = 3
FDR = 0.05
# The smallest change a single-run comparison may call: the CI of the ratio must lie entirely outside
# [1/(1+MIN_EFFECT), 1+MIN_EFFECT]. Measured with bench/aa_verdicts.py on the embedded engine (2 shared cores, load
# 0.1–0.4), A/A pairs of the same parameters, concurrency series included (config tuning at 1 and 4 clients):
# |after/before − 1| of the per-request and series figures had a median of 2.1–4.0 % and a 95th percentile of
# 13–20 % (one pair's config-tuning latencies moved by 14–25 % between two runs of the same thing). At 10 %, 5.6 and
# 8.9 % of the rows of two benches were called; at 20 %, 4 of 90 (4.4 %, all from that pair) in the second. Only runs
# as the unit (--repeat 3) take such a shift into the interval. Halving the threads (+87 % warm TTFT) is far beyond.
MIN_EFFECT = 0.20


@dataclass
class Row:
    """One figure before (A) and after (B).

    ``ratio`` is after / before with its CI; ``change_*_pct`` are 100·(ratio − 1) and its CI (NaN without
    one); ``p_value`` tests "no change", ``q_value`` is it adjusted over the comparison's rows; ``mode`` is
    how the two sides were compared (``runs``, ``requests``, ``estimates``, ``readings``); ``verdict`` is
    one of :data:`VERDICTS`, ``reason`` says why; ``confounds`` what else could explain a difference.
    """

    key: str
    label: str
    unit: Unit
    better: str
    before: str
    after: str
    ratio: stats.Estimate
    verdict: str
    reason: str
    n_before: int
    n_after: int
    p_value: float = math.nan
    q_value: float = math.nan
    mode: str = ""
    min_effect: float = 0.0
    headline: str = ""
    confounds: list[str] = field(default_factory=list)

    @property
    def change_pct(self) -> float:
        return 100 * (self.ratio.value - 1)

    @property
    def change_lo_pct(self) -> float:
        return 100 * (self.ratio.lo - 1) if math.isfinite(self.ratio.lo) else math.nan

    @property
    def change_hi_pct(self) -> float:
        return 100 * (self.ratio.hi - 1) if math.isfinite(self.ratio.hi) else math.nan

    @property
    def is_difference(self) -> bool:
        """A share compared by its difference (percentage points), not a ratio."""
        return self.ratio.stat == "difference"

    @property
    def ratio_text(self) -> str:
        """'2.01× [1.83, 2.24] (n=8 vs 8)'; a share's difference: '+5.0 pp [+1.2, +9.1] (n=80 vs 80)'."""
        if self.is_difference:
            return self.change_text + f" ({self.ratio.annotation()})"
        return units.RATIO.estimate(self.ratio)

    @property
    def change_text(self) -> str:
        """'+101% [+83%, +124%]', or '+101% (no CI)'; a share's difference in percentage points."""
        if self.is_difference:
            return _pp(self.ratio)
        if self.ratio.value == math.inf:
            return "beyond the limit (failures)"
        if not math.isfinite(self.ratio.value):
            return fmt.NA
        text = signed_pct(self.ratio.value - 1)
        if math.isfinite(self.ratio.lo) and math.isfinite(self.ratio.hi) and self.ratio.hi > self.ratio.lo:
            return f"{text} [{signed_pct(self.ratio.lo - 1)}, {signed_pct(self.ratio.hi - 1)}]"
        return f"{text} (no CI)"

    @property
    def called(self) -> bool:
        return self.verdict in (IMPROVED, WORSE)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(unit=self.unit.name, ratio=self.ratio.as_dict(), ratio_text=self.ratio_text,
                 change_text=self.change_text, change_pct=self.change_pct, change_lo_pct=self.change_lo_pct,
                 change_hi_pct=self.change_hi_pct)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Row":
        """A row as :meth:`as_dict` wrote it, read back from JSON (what it derives, such as its texts, is derived
        again)."""
        own = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        own.update(unit=units.named(d["unit"]), ratio=stats.Estimate.from_dict(d["ratio"]),
                   p_value=stats.as_float(d.get("p_value")), q_value=stats.as_float(d.get("q_value")),
                   confounds=list(d.get("confounds") or []))
        return cls(**own)


def signed_pct(fraction: float) -> str:
    return ("+" if fraction > 0 else "") + fmt.pct(fraction)


def _signed_pp(d: float) -> str:
    return ("+" if d > 0 else "") + fmt.number(100 * d, 2) + " pp"


def _pp(e: stats.Estimate) -> str:
    """A difference of shares in percentage points: '+5.0 pp [+1.2, +9.1]'."""
    if not math.isfinite(e.value):
        return fmt.NA
    ci = f" [{_signed_pp(e.lo)}, {_signed_pp(e.hi)}]" if e.has_ci else ""
    return _signed_pp(e.value) + ci


def _direction(up: bool, better: str) -> str:
    return IMPROVED if up == (better == "higher") else WORSE


def _check_better(better: str) -> None:
    if better not in ("lower", "higher", ""):
        raise ValueError(f"better must be 'lower', 'higher' or '', got {better!r}")


def _band(min_effect: float) -> tuple[float, float]:
    return 1 / (1 + min_effect), 1 + min_effect


def _judge(r: stats.Estimate, better: str, min_effect: float, ci: str) -> tuple[str, str]:
    """Verdict and reason from a ratio's CI: it must exclude 1 and lie outside the practical band."""
    if not math.isfinite(r.value):
        return NO_CHANGE, f"nothing to compare ({r.annotation()})"
    if not (math.isfinite(r.lo) and math.isfinite(r.hi)):
        return NO_CHANGE, (f"n={r.n_a} vs {r.n_b} is too small for a {ci} of the ratio"
                           + (f": one needs n ≥ {r.need_n} per run" if r.need_n else ""))
    bounds = f"[{fmt.number(r.lo)}, {fmt.number(r.hi)}]"
    if not (r.lo > 1 or r.hi < 1):
        return NO_CHANGE, f"the {ci} of the ratio {bounds} includes 1"
    lo_b, hi_b = _band(min_effect)
    if min_effect and not (r.lo > hi_b or r.hi < lo_b):
        return NO_CHANGE, (f"the {ci} of the ratio {bounds} excludes 1 but reaches within ±{min_effect:.0%}, the "
                           "smallest change two single runs of the same thing can't produce by themselves "
                           "(repeat each run ≥ 3 times to compare runs, not requests)")
    if not better:
        return NO_CHANGE, f"the {ci} of the ratio {bounds} excludes 1 (a fact with no better direction)"
    return _direction(r.value > 1, better), f"the {ci} of the ratio {bounds} excludes 1" + (
        f" and ±{min_effect:.0%}" if min_effect else "")


def compare_samples(before: Sequence[float], after: Sequence[float], better: str, *, unit: Unit = units.SECONDS,
                    key: str = "", label: str = "", confidence: float = stats.CONFIDENCE,
                    min_effect: float = 0.0) -> Row:
    """Two samples of one figure (e.g. e2e seconds of each request) before and after a change: Hodges–Lehmann
    ratio with its Moses CI, Mann–Whitney p-value; a verdict when the CI excludes 1 (and ``min_effect``)."""
    _check_better(better)
    b, a = clean(before), clean(after)
    r = stats.ratio(a, b, confidence=confidence)
    eb, ea = stats.estimate(b, confidence=confidence), stats.estimate(a, confidence=confidence)
    verdict, reason = _judge(r, better, min_effect, f"{100 * confidence:g}% CI")
    p = math.nan
    if len(a) and len(b) and math.isfinite(r.value):
        try:
            p = float(st.mannwhitneyu(a, b, alternative="two-sided").pvalue)
        except ValueError:
            p = math.nan
    return Row(key, label, unit, better, unit.estimate(eb), unit.estimate(ea), r, verdict, reason,
               len(b), len(a), p, mode="requests", min_effect=min_effect)


def compare_replicates(before: Sequence[float], after: Sequence[float], better: str, *, unit: Unit = units.SECONDS,
                       before_text: str = "", after_text: str = "", key: str = "", label: str = "",
                       confidence: float = stats.CONFIDENCE) -> Row:
    """Runs as the unit: each side's replicate values (one per run). Ratio of geometric means with a t-interval
    and p-value on the log values (pooled with equal runs a side, else Welch); a verdict when the CI excludes 1."""
    _check_better(better)
    b = [v for v in clean(before) if v > 0 and math.isfinite(v)]
    a = [v for v in clean(after) if v > 0 and math.isfinite(v)]
    pooled = len(a) == len(b)
    method = (f"ratio of geometric means over runs, {'pooled Student' if pooled else 'Welch'} t-interval "
              f"(log scale), {len(b)} vs {len(a)} runs")
    if len(a) < 2 or len(b) < 2:
        r = stats.Estimate("ratio", math.nan, math.nan, math.nan, min(len(a), len(b)), confidence, method,
                           need_n=MIN_REPLICATES, n_a=len(a), n_b=len(b))
        return Row(key, label, unit, better, before_text, after_text, r, NO_CHANGE, "fewer than 2 runs a side",
                   len(b), len(a), mode="runs")
    la, lb = np.log(a), np.log(b)
    diff = float(la.mean() - lb.mean())
    va, vb = la.var(ddof=1) / len(a), lb.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        lo = hi = math.exp(diff)
        p = 0.0 if diff else 1.0
    else:
        if pooled:  # equal n: the pooled standard error equals Welch's; only the degrees of freedom differ
            dof = float(len(a) + len(b) - 2)
        else:
            dof = (va + vb) ** 2 / ((va ** 2 / (len(a) - 1) if va else 0) + (vb ** 2 / (len(b) - 1) if vb else 0)
                                    or 1e-300)
        t = float(st.t.ppf((1 + confidence) / 2, dof))
        lo, hi = math.exp(diff - t * se), math.exp(diff + t * se)
        p = float(2 * st.t.sf(abs(diff) / se, dof))
    r = stats.Estimate("ratio", math.exp(diff), lo, hi, min(len(a), len(b)), confidence, method,
                       n_a=len(a), n_b=len(b))
    verdict, reason = _judge(r, better, 0.0, f"{100 * confidence:g}% CI over runs")
    return Row(key, label, unit, better, before_text, after_text, r, verdict, reason, len(b), len(a), p, mode="runs")


def _log_comb(n: np.ndarray | int, k: np.ndarray | int) -> np.ndarray:
    return gammaln(np.asarray(n) + 1) - gammaln(np.asarray(k) + 1) - gammaln(np.asarray(n) - np.asarray(k) + 1)


def exceedance_p(k: int, r: int, m: int, n: int) -> float:
    """P(K ≥ k) when nothing changed, K = how many of n new values exceed the r-th largest of m earlier ones.

    Exchangeable samples (the same distribution before and after) give the exact law of Gumbel and von
    Schelling: P(K = j) = C(r−1+j, j) · C(m−r+n−j, n−j) / C(m+n, n), whatever the distribution. Ties and a
    threshold raised by a minimum effect only make K smaller, so the p-value stays valid (conservative)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    j = np.arange(k, n + 1)
    logp = _log_comb(r - 1 + j, j) + _log_comb(m - r + n - j, n - j) - _log_comb(m + n, n)
    return float(min(1.0, np.exp(logp).sum()))


def _tail_rank(n: int, q: float) -> int:
    """The rank from the top of a sample's q-quantile: 1 is the largest."""
    return int(min(n, max(1, round(n * (1 - q)))))


def _tail_side(ref: np.ndarray, new: np.ndarray, q: float, min_effect: float) -> tuple[int, int, float, float]:
    """(count, rank, threshold, p): how many of ``new`` lie beyond (1 + min_effect) × ``ref``'s q-quantile
    (its r-th largest value), and the exact p-value of at least that many if nothing changed."""
    r = _tail_rank(len(ref), q)
    x = float(np.sort(ref)[::-1][r - 1])
    threshold = x * (1 + min_effect) if math.isfinite(x) else math.inf
    k = int((new > threshold).sum()) if math.isfinite(threshold) else 0
    return k, r, threshold, exceedance_p(k, r, len(ref), len(new))


def _quantile_ratio(a: float, b: float) -> float:
    """after / before of two percentiles that may be +inf (beyond the limit)."""
    if math.isinf(a) and math.isinf(b):
        return math.nan
    if math.isinf(a):
        return math.inf
    if math.isinf(b):
        return 0.0
    return a / b if b > 0 else math.nan


def compare_tail(before: Sequence[float], after: Sequence[float], stat: str, better: str, *,
                 unit: Unit = units.SECONDS, key: str = "", label: str = "", confidence: float = stats.CONFIDENCE,
                 min_effect: float = 0.0) -> Row:
    """A percentile above the median before and after, compared as a tail, failures kept (+inf).

    Ratio: after's percentile ÷ before's; CI from the two sides' order-statistic intervals (each at √confidence,
    so both hold together at ``confidence``), absent where n is too small for one. Test: how many of after's
    requests lie beyond (1 + ``min_effect``) × before's percentile, and of before's beyond (1 + ``min_effect``) ×
    after's, each against the exact law of that count when nothing changed (:func:`exceedance_p`); two-sided p
    = twice the smaller. Improved or worse when p ≤ 1 − confidence (then the FDR correction over rows)."""
    _check_better(better)
    q = stats.quantile_of(stat)
    if q is None or q <= 0.5:
        raise ValueError(f"compare_tail compares a percentile above the median, got {stat!r}")
    b = np.asarray(clean(before), dtype=float)
    a = np.asarray(clean(after), dtype=float)
    eb, ea = stats.estimate(b, stat, confidence=confidence), stats.estimate(a, stat, confidence=confidence)
    both = math.sqrt(confidence)
    jb, ja = stats.estimate(b, stat, confidence=both), stats.estimate(a, stat, confidence=both)
    lo = hi = math.nan
    if not any(math.isnan(v) for v in (jb.lo, jb.hi, ja.lo, ja.hi)):
        lo, hi = _quantile_ratio(ja.lo, jb.hi), _quantile_ratio(ja.hi, jb.lo)
    name = stat
    method = (f"ratio of the two {name}s (CI from each side's order-statistic interval); exact placement test of "
              f"the requests beyond the other side's {name}")
    r = stats.Estimate("ratio", _quantile_ratio(ea.value, eb.value), lo, hi, min(len(a), len(b)), confidence,
                       method, n_a=len(a), n_b=len(b))
    row = Row(key, label, unit, better, unit.estimate(eb), unit.estimate(ea), r, NO_CHANGE, "",
              len(b), len(a), mode="tail", min_effect=min_effect)
    if len(a) < 2 or len(b) < 2:
        row.reason = "fewer than 2 requests a side"
        return row
    k_up, r_b, thr_b, p_up = _tail_side(b, a, q, min_effect)
    k_dn, r_a, thr_a, p_dn = _tail_side(a, b, q, min_effect)
    row.p_value = min(1.0, 2 * min(p_up, p_dn))
    alpha = 1 - confidence
    beyond = f"{1 + min_effect:g} × " if min_effect else ""
    if math.isinf(eb.value) and math.isinf(ea.value):
        row.reason = (f"both {name}s lie beyond the limit (failures): the failed share compares them")
        row.p_value = math.nan
        return row
    floor_p = min(1.0, 2 * min(exceedance_p(len(a), r_b, len(b), len(a)), exceedance_p(len(b), r_a, len(a), len(b))))
    if floor_p > alpha:
        row.reason = (f"not measurable at this n: with {len(b)} vs {len(a)} requests no change of the {name} can "
                      f"reach p ≤ {alpha:g} (its tail holds too few requests)")
        return row
    up = p_up <= p_dn
    k, thr, ref_n, new_n, r_ref = (k_up, thr_b, len(b), len(a), r_b) if up else (k_dn, thr_a, len(a), len(b), r_a)
    who_new, who_ref = ("after", "before") if up else ("before", "after")
    expected = new_n * r_ref / (ref_n + 1)
    thr_text = unit.text(thr) if math.isfinite(thr) else "the limit"
    detail = (f"{k} of {who_new}'s {new_n} requests lie beyond {beyond}{who_ref}'s {name} ({thr_text}); about "
              f"{fmt.number(expected, 2)} would if nothing had changed (exact placement test, two-sided p = "
              f"{fmt.number(row.p_value)})")
    if row.p_value > alpha:
        row.reason = detail + f": not enough to call a change at p ≤ {alpha:g}"
    elif not better:
        row.reason = detail + " (a fact with no better direction)"
    else:
        row.verdict, row.reason = _direction(up, better), detail
    return row


def _wilson(k: int, n: int, z: float) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def is_binary(values: Sequence[float]) -> bool:
    """Per-request yes/no values (0 or 1), e.g. whether each request failed."""
    x = clean(values)
    return bool(x) and all(v in (0.0, 1.0) for v in x)


def compare_shares(before: Sequence[float], after: Sequence[float], better: str, *, unit: Unit = units.SHARE,
                   key: str = "", label: str = "", confidence: float = stats.CONFIDENCE) -> Row:
    """A per-request yes/no share (1 = yes, e.g. the request failed) before and after: the difference after −
    before in percentage points with Newcombe's CI (from the two Wilson intervals), and Boschloo's exact test.
    No minimum effect: a reliable change in how many requests fail is a change whatever its size."""
    _check_better(better)
    b, a = clean(before), clean(after)
    kb, nb, ka, na = int(sum(b)), len(b), int(sum(a)), len(a)
    eb, ea = stats.proportion(kb, nb, confidence=confidence), stats.proportion(ka, na, confidence=confidence)
    method = "difference of the shares (Newcombe's CI from Wilson intervals), Boschloo's exact test"
    if not (na and nb):
        d = stats.Estimate("difference", math.nan, math.nan, math.nan, 0, confidence, method, n_a=na, n_b=nb)
        return Row(key, label, unit, better, unit.estimate(eb), unit.estimate(ea), d, NO_CHANGE,
                   "no requests on one side", nb, na, mode="shares")
    z = float(st.norm.ppf((1 + confidence) / 2))
    pa, pb = ka / na, kb / nb
    la, ua = _wilson(ka, na, z)
    lb, ub = _wilson(kb, nb, z)
    diff = pa - pb
    lo = diff - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2)
    hi = diff + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)
    d = stats.Estimate("difference", diff, lo, hi, min(na, nb), confidence, method, n_a=na, n_b=nb)
    if ka == kb == 0 or (ka == na and kb == nb):
        p = 1.0
    else:
        try:
            p = float(st.boschloo_exact([[ka, na - ka], [kb, nb - kb]], alternative="two-sided").pvalue)
        except (ValueError, FloatingPointError):
            p = float(st.fisher_exact([[ka, na - ka], [kb, nb - kb]]).pvalue)
    row = Row(key, label, unit, better, unit.estimate(eb), unit.estimate(ea), d, NO_CHANGE, "",
              nb, na, p, mode="shares")
    detail = f"{kb} of {nb} before, {ka} of {na} after; Boschloo's exact test p = {fmt.number(p)}"
    alpha = 1 - confidence
    if p > alpha or diff == 0:
        row.reason = detail + f": not enough to call a change at p ≤ {alpha:g}"
    elif not better:
        row.reason = detail + " (a fact with no better direction)"
    else:
        row.verdict, row.reason = _direction(diff > 0, better), detail
    return row


def compare_figure_pair(fa: Figure, fb: Figure, *, runs_mode: bool, min_effect: float,
                        confidence: float = stats.CONFIDENCE) -> Row:
    """One figure of two runs (A before, B after), compared the way its statistic needs: a per-request share by
    its difference, a tail percentile as a tail (failures kept), runs as the unit where both sides have
    ≥ :data:`MIN_REPLICATES` runs (a run whose tail is beyond the limit can't be averaged: that row is compared by
    its requests pooled, and says so), per-request samples by Hodges–Lehmann, else the two estimates."""
    better, unit = fb.better, fb.unit
    stat = fb.estimate.stat if fb.estimate.stat.startswith("p") else fb.m.stat
    q = _quantile_or_none(stat)
    tail = q is not None and q > 0.5 and bool(fa.samples) and bool(fb.samples)
    if fb.m.stat == "share" and fa.samples and fb.samples and is_binary(fa.samples) and is_binary(fb.samples):
        row = compare_shares(fa.samples, fb.samples, better, unit=unit, confidence=confidence)
        row.before, row.after = fa.text(), fb.text()
        return row
    runs = runs_mode and len(fa.replicates) >= MIN_REPLICATES and len(fb.replicates) >= MIN_REPLICATES
    censored = any(v == math.inf for v in list(fa.replicates) + list(fb.replicates))
    if runs and not (censored and tail):
        return compare_replicates(fa.replicates, fb.replicates, better, unit=unit, before_text=fa.text(),
                                  after_text=fb.text(), confidence=confidence)
    if tail:
        row = compare_tail(fa.samples, fb.samples, stat, better, unit=unit, confidence=confidence,
                           min_effect=min_effect)
        if runs:
            row.reason = (f"a run's {stat} lies beyond the limit (failures), so the runs' values can't be averaged: "
                          f"compared by their requests pooled; {row.reason}")
    elif fa.samples and fb.samples:
        row = compare_samples(fa.samples, fb.samples, better, unit=unit, confidence=confidence,
                              min_effect=min_effect)
    else:
        row = compare_estimates(fa.estimate, fb.estimate, better, unit=unit, confidence=confidence,
                                min_effect=min_effect)
        row.before, row.after = unit.estimate(fa.estimate), unit.estimate(fb.estimate)
        return row
    row.before, row.after = fa.text(), fb.text()
    return row


def _quantile_or_none(stat: str) -> float | None:
    try:
        return stats.quantile_of(stat)
    except ValueError:
        return None


def _log_se(e: stats.Estimate) -> float:
    """The standard error of log(value) implied by a two-sided CI (normal approximation)."""
    if not (e.has_ci and e.value > 0):
        return math.nan
    z = float(st.norm.ppf((1 + e.confidence) / 2))
    if e.lo > 0:
        return (math.log(e.hi) - math.log(e.lo)) / (2 * z)
    return (e.hi - e.lo) / (2 * z * e.value)  # a CI cut at 0: the delta method on the linear scale


def compare_estimates(before: stats.Estimate, after: stats.Estimate, better: str, *,
                      unit: Unit = units.TOKENS_PER_S, key: str = "", label: str = "",
                      confidence: float = stats.CONFIDENCE, min_effect: float = 0.0) -> Row:
    """Two estimates without samples (a series' throughput, a single memory reading) before and after: the
    ratio of their values, with a CI and p-value from the two CIs on the log scale where both have one."""
    _check_better(better)
    value = after.value / before.value if before.value and math.isfinite(before.value) else math.nan
    sa, sb = _log_se(after), _log_se(before)
    method = "ratio of the two estimates"
    p = math.nan
    lo = hi = math.nan
    if math.isfinite(value) and value > 0 and math.isfinite(sa) and math.isfinite(sb):
        se = math.hypot(sa, sb)
        z = float(st.norm.ppf((1 + confidence) / 2))
        lo, hi = value * math.exp(-z * se), value * math.exp(z * se)
        p = float(2 * st.norm.sf(abs(math.log(value)) / se)) if se > 0 else (0.0 if value != 1 else 1.0)
        method += ", CI from both CIs on the log scale (normal approximation)"
    r = stats.Estimate("ratio", value, lo, hi, min(before.n, after.n), confidence, method,
                       n_a=after.n, n_b=before.n)
    if math.isfinite(value) and not math.isfinite(lo):
        missing = [w for w, e in (("before", before), ("after", after)) if not e.has_ci]
        which = "on either side" if len(missing) == 2 else missing[0] if missing else "for the ratio"
        why = "one reading per run" if max(before.n, after.n) <= 1 else "n too small for one"
        verdict, reason = NO_CHANGE, f"no CI {which} ({why}), so the difference cannot be tested"
    else:
        verdict, reason = _judge(r, better, min_effect, f"{100 * confidence:g}% CI")
    return Row(key, label, unit, better, unit.estimate(before), unit.estimate(after), r, verdict,
               reason, before.n, after.n, p, mode="estimates" if math.isfinite(lo) else "readings",
               min_effect=min_effect)


def fdr_adjust(rows: Sequence[Row], q: float = FDR) -> None:
    """Benjamini–Hochberg over the rows' p-values (in place): each row gets its ``q_value``, and a verdict
    whose q exceeds ``q`` becomes "no detectable change" with the reason."""
    tested = [r for r in rows if math.isfinite(r.p_value)]
    m = len(tested)
    if not m:
        return
    order = sorted(tested, key=lambda r: r.p_value)
    qs = [0.0] * m
    prev = 1.0
    for i in range(m - 1, -1, -1):
        prev = min(prev, order[i].p_value * m / (i + 1))
        qs[i] = prev
    for r, qv in zip(order, qs):
        r.q_value = qv
        if r.called and qv > q:
            r.reason = (f"{r.reason}, but with {m} figures of its kind tested at once its false-discovery-adjusted "
                        f"q = {fmt.number(qv)} > {q:g} (Benjamini–Hochberg)")
            r.verdict = NO_CHANGE


def fdr_by_family(rows: Sequence[Row], q: float = FDR) -> None:
    """:func:`fdr_adjust` within each family of rows: one metric of one study over its conditions (TTFT p99 of
    every setting and client count is one family, the failed share another). Each row's own test already holds
    its false-call rate; the correction bounds the share of false calls among a family's calls, without letting
    a hundred unrelated rows drown a change that shows in one metric's tail."""
    families: dict[str, list[Row]] = {}
    for r in rows:
        families.setdefault("/".join(r.key.split("/", 2)[:2]), []).append(r)
    for fam in families.values():
        fdr_adjust(fam, q)
