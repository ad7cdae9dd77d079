"""Decisions as tested claims: "X is the best setting" is said only when X beats every other candidate.

Picking the best of several settings after the fact and then comparing it with the baseline on its own favours
the winner by chance (the winner's curse): with four identical settings, one of them always looks best. Here the
best by point estimate is compared with each other candidate the way ``perfkit compare`` compares two runs
(:func:`perfkit.analysis.verdicts.compare_figure_pair`: the minimum practical effect for single runs, runs as the
unit when replicated), and the p-values of those k − 1 comparisons are adjusted together (Holm). The best is
*called* only when it is better than each of them after that adjustment; otherwise the claim names the candidates
it is not separated from. The baseline-vs-best row is one of those comparisons, so the two statements can't
disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from perfkit.analysis import stats, verdicts
from perfkit.analysis.figures import Figure
from perfkit.analysis.verdicts import IMPROVED, Row


@dataclass
class BestClaim:
    """The best candidate by point estimate (``best``), whether the data call it best (``called``), each other
    candidate's comparison with it (``rows``: before = that candidate, after = the best; ``holm_p``: the adjusted
    p-values) and the candidates it is not separated from (``not_separated``)."""

    best: str
    called: bool
    rows: dict[str, Row] = field(default_factory=dict)
    holm_p: dict[str, float] = field(default_factory=dict)
    not_separated: list[str] = field(default_factory=list)
    equivalent: list[str] = field(default_factory=list)
    min_effect: float = verdicts.MIN_EFFECT

    @property
    def settled(self) -> bool:
        """Whether the data answer the question: the best is called, or every candidate it is not separated from
        is shown equal to it within ± the minimum effect (the CI of their ratio inside that band)."""
        return self.called or (bool(self.rows) and set(self.not_separated) <= set(self.equivalent)) \
            or not self.rows

    def more_needed(self) -> float:
        """How many times the data would separate the leader from each candidate it is not separated from by a
        difference of :data:`TARGET_EFFECT` (:func:`more_needed`); NaN when a comparison has no CI to scale from."""
        need = [more_needed(self.rows[k]) for k in self.not_separated]
        return max(need) if need and all(math.isfinite(x) for x in need) else math.nan

    def sentence(self, what: str) -> str:
        """One sentence that says what the data support, e.g. 'A is the best for TTFT: it beats B, C beyond ±10 %
        (Holm-adjusted over 2 comparisons)'."""
        if not self.rows:
            return f"**{self.best}** is the only candidate measured for {what}."
        if self.called:
            others = ", ".join(self.rows)
            return (f"**{self.best}** is the best for {what}: it beats {others}, each beyond the smallest change "
                    f"single runs can show, with the {len(self.rows)} comparisons adjusted together (Holm).")
        ns = ", ".join(f"**{c}**" for c in self.not_separated)
        if self.settled:
            beaten = [k for k in self.rows if k not in self.not_separated]
            return (f"**{self.best}** and {ns} are equal for {what} within ±{self.min_effect:.0%}: the CI of their "
                    f"ratio lies inside that band" + (f"; they beat {', '.join(beaten)}" if beaten else "") + ".")
        return (f"No setting is separable as the best for {what} at this n: the leader by point estimate, "
                f"**{self.best}**, is not separated from {ns}.")


TARGET_EFFECT = verdicts.MIN_EFFECT + 0.10  # the difference a report says how many more requests would separate


def more_needed(row: Row, target: float = TARGET_EFFECT, min_effect: float = verdicts.MIN_EFFECT) -> float:
    """How many times the data behind ``row`` would let a difference of ``target`` (a ratio of 1 + target) be
    called: its CI's half-width on the log scale shrinks as 1/√n and must fit between the minimum effect and the
    target. NaN when the row has no CI to scale from."""
    r = row.ratio
    if row.is_difference or not (r.has_ci and r.lo > 0 and math.isfinite(r.hi)):
        return math.nan
    half = (math.log(r.hi) - math.log(r.lo)) / 2
    room = math.log((1 + target) / (1 + (min_effect if row.mode != "runs" else 0.0)))
    return max(1.0, (half / room) ** 2)


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment (family-wise error ≤ α over the whole set); NaN stays NaN."""
    tested = sorted(((p, k) for k, p in p_values.items() if math.isfinite(p)))
    m, out, running = len(tested), {k: math.nan for k in p_values}, 0.0
    for i, (p, k) in enumerate(tested):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def _inside_band(row: Row, min_effect: float) -> bool:
    r = row.ratio
    return (not row.is_difference and r.has_ci and math.isfinite(r.lo) and math.isfinite(r.hi)
            and r.lo > 1 / (1 + min_effect) and r.hi < 1 + min_effect)


def best_of(candidates: dict[str, Figure], *, runs_mode: bool = False, min_effect: float = verdicts.MIN_EFFECT,
            confidence: float = stats.CONFIDENCE) -> BestClaim | None:
    """The best of ``candidates`` (label → the same figure measured under each) as a tested claim; None when
    there are none. Direction from the figures' metric (lower or higher is better). ``confidence``: the level of
    every comparison (higher than 95% where the data were looked at more than once,
    :class:`perfkit.analysis.sequential.Looks`)."""
    alpha = 1 - confidence
    figs = {k: f for k, f in candidates.items() if f is not None and math.isfinite(f.value)}
    if not figs:
        return None
    better = next(iter(figs.values())).better
    order = sorted(figs, key=lambda k: figs[k].value, reverse=better == "higher")
    best = order[0]
    rows = {k: verdicts.compare_figure_pair(figs[k], figs[best], runs_mode=runs_mode, min_effect=min_effect,
                                            confidence=confidence) for k in order[1:]}
    adj = holm({k: r.p_value for k, r in rows.items()})
    not_sep = [k for k, r in rows.items() if not (r.verdict == IMPROVED and adj[k] <= alpha)]
    for k in not_sep:
        r = rows[k]
        if r.verdict == IMPROVED:  # its own test passed, the adjustment over the candidates did not
            r.verdict = verdicts.NO_CHANGE
            r.reason += (f", but with {len(rows)} candidates compared with the leader its Holm-adjusted p = "
                         f"{adj[k]:.3g} > {alpha:g}")
    equal = [k for k in not_sep if _inside_band(rows[k], min_effect)]
    return BestClaim(best, not not_sep, rows, adj, not_sep, equal, min_effect)
