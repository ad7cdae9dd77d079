"""Whether a server sustains an offered open-loop rate: the share of requests inside the SLOs (latency timed from
the schedule) and the latency trend through the series (:func:`perfkit.analysis.series.trend`). Config tuning's
sweep and tune's capacity bracket read rates with these same rules."""

from __future__ import annotations

import math

import pandas as pd

from perfkit.analysis import series as S
from perfkit.analysis.series import CANT_TELL
from perfkit.core.schema import Slo

SUSTAINED_SHARE = 0.9  # a rate is sustained when at least this share of its requests met every SLO ...
KEPT_UP = 0.9  # ... and the server's completions kept up with at least this share of the rate offered
BRACKET_RATIO = 1.5  # a capacity is bracketed once the lowest rate not sustained is within this of the highest one


def meets_slo(rows: pd.DataFrame, slo: Slo) -> pd.Series:
    """Which open-loop requests met every SLO set, latency timed from the schedule (a failed request never does)."""
    good = rows["ok"].astype(bool)
    if slo.ttft_s is not None:
        good &= rows["ttft_sched_s"].fillna(math.inf) <= slo.ttft_s
    if slo.tpot_s is not None:
        good &= rows["tpot_s"].fillna(0) <= slo.tpot_s
    if slo.e2e_s is not None:
        good &= rows["e2e_sched_s" if "e2e_sched_s" in rows else "e2e_s"].fillna(math.inf) <= slo.e2e_s
    return good


SUSTAINED, NOT_SUSTAINED = "sustained", "not sustained"


def rate_verdict(rows: pd.DataFrame, slo: Slo, slots: int | None = None) -> tuple[str, S.Trend]:
    """Was this open-loop rate sustained? :data:`NOT_SUSTAINED` when fewer than :data:`SUSTAINED_SHARE` of its
    requests met the SLOs (the user's definition, applied to what was measured) or when the latency trend proves the
    server fell behind (:func:`perfkit.analysis.series.trend`); :data:`CANT_TELL` when the trend points that way but
    its interval does not exclude keeping up; else :data:`SUSTAINED`. The trend too. With the server's ``slots``
    the trend is read from its capacity while every slot was busy."""
    tr = S.trend(rows, KEPT_UP, slots=slots)
    if not len(rows):
        return CANT_TELL, tr
    return _verdict(float(meets_slo(rows, slo).mean()), tr), tr


def _verdict(share: float, tr: S.Trend) -> str:
    if share < SUSTAINED_SHARE or tr.verdict == S.FELL_BEHIND:
        return NOT_SUSTAINED
    return CANT_TELL if tr.verdict == CANT_TELL else SUSTAINED  # no trend (too few requests): the SLOs decide


def sustains(rows: pd.DataFrame, slo: Slo, slots: int | None = None) -> bool:
    """True only when the rate was shown sustained (:func:`rate_verdict`)."""
    return rate_verdict(rows, slo, slots)[0] == SUSTAINED
