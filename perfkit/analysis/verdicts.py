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
* one reading per side (resident memory): no CI, never a verdict.

Across many rows the p-values are adjusted for the false-discovery rate (Benjamini–Hochberg,
:func:`fdr_adjust`): a row is *improved* or *worse* only when its adjusted q ≤ :data:`FDR` as well.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import stats as st

from perfkit.analysis import stats
from perfkit.analysis.figures import clean, format_estimate
from perfkit.core import fmt

IMPROVED = "improved"
WORSE = "worse"
NO_CHANGE = "no detectable change at this n"
NOT_COMPARABLE = "not comparable"
VERDICTS = (IMPROVED, WORSE, NO_CHANGE, NOT_COMPARABLE)

MIN_REPLICATES = 3
FDR = 0.05
# The smallest change a single-run comparison may call: the CI of the ratio must lie entirely outside
# [1/(1+MIN_EFFECT), 1+MIN_EFFECT]. Measured with bench/aa_verdicts.py (3 A/A pairs of the same parameters on
# the embedded engine, 2 shared cores, load 0.4): |after/before − 1| of the per-request figures had a median
# of 3.8 % and a 95th percentile of 13 %, far wider than the within-run CIs; 0 of 57 rows were called, while
# halving the threads (+87 % warm TTFT, −29 % decode rate) was called worse in every row the bench watches.
MIN_EFFECT = 0.10


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
    kind: str
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
    def ratio_text(self) -> str:
        """'2.01× [1.83, 2.24] (n=8 vs 8)'."""
        return fmt.estimate(self.ratio, "ratio")

    @property
    def change_text(self) -> str:
        """'+101% [+83%, +124%]', or '+101% (no CI)'."""
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
        d.update(ratio=self.ratio.as_dict(), ratio_text=self.ratio_text, change_text=self.change_text,
                 change_pct=self.change_pct, change_lo_pct=self.change_lo_pct, change_hi_pct=self.change_hi_pct)
        return d


def signed_pct(fraction: float) -> str:
    return ("+" if fraction > 0 else "") + fmt.pct(fraction)


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


def compare_samples(before: Sequence[float], after: Sequence[float], better: str, *, kind: str = "duration",
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
    return Row(key, label, kind, better, format_estimate(eb, kind), format_estimate(ea, kind), r, verdict, reason,
               len(b), len(a), p, mode="requests", min_effect=min_effect)


def compare_replicates(before: Sequence[float], after: Sequence[float], better: str, *, kind: str = "duration",
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
        return Row(key, label, kind, better, before_text, after_text, r, NO_CHANGE, "fewer than 2 runs a side",
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
    return Row(key, label, kind, better, before_text, after_text, r, verdict, reason, len(b), len(a), p, mode="runs")


def _log_se(e: stats.Estimate) -> float:
    """The standard error of log(value) implied by a two-sided CI (normal approximation)."""
    if not (e.has_ci and e.value > 0):
        return math.nan
    z = float(st.norm.ppf((1 + e.confidence) / 2))
    if e.lo > 0:
        return (math.log(e.hi) - math.log(e.lo)) / (2 * z)
    return (e.hi - e.lo) / (2 * z * e.value)  # a CI cut at 0: the delta method on the linear scale


def compare_estimates(before: stats.Estimate, after: stats.Estimate, better: str, *, kind: str = "rate",
                      key: str = "", label: str = "", confidence: float = stats.CONFIDENCE,
                      min_effect: float = 0.0) -> Row:
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
    return Row(key, label, kind, better, format_estimate(before, kind), format_estimate(after, kind), r, verdict,
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
            r.reason = (f"{r.reason}, but with {m} figures tested at once its false-discovery-adjusted q = "
                        f"{fmt.number(qv)} > {q:g} (Benjamini–Hochberg)")
            r.verdict = NO_CHANGE
