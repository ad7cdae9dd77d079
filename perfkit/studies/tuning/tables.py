"""The tuning report's tables and charts: today's settings against the tuned ones, every candidate's trace, and
the trade-offs the winner sits among."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from perfkit.core.units import BYTES, REQUESTS_PER_S, SECONDS
from perfkit.analysis.requests import measured

from .objective import peak_rss, served
from .results import TuningResult


@dataclass
class PairRow:
    """One before/after row of the proof: what it compares, and its verdict row (before, after, ratio, verdict)."""

    what: str
    row: Any


def pair_rows(res: TuningResult) -> list[PairRow]:
    """The proof's before/after pairs, each with its verdict (runs as the unit where each side has enough)."""
    from perfkit.analysis import verdicts

    out = []
    for p in res.figures.pairs:
        fa, fb = res.figures[p.before], res.figures[p.after]
        runs = len(fa.replicates) >= verdicts.MIN_REPLICATES and len(fb.replicates) >= verdicts.MIN_REPLICATES
        out.append(PairRow(p.row, verdicts.compare_figure_pair(fa, fb, runs_mode=runs, min_effect=verdicts.MIN_EFFECT)))
    return out


def before_after(res: TuningResult) -> pd.DataFrame:
    """The guides' before/after table: today's settings against the tuned ones, each restarted in turn."""
    rows = [{"": r.what, "before (today)": r.row.before, "after (tuned)": r.row.after,
             "after / before": r.row.ratio_text, "verdict": r.row.verdict, "why": r.row.reason}
            for r in pair_rows(res)]
    return pd.DataFrame(rows).set_index("") if rows else pd.DataFrame()


def trace(res: TuningResult) -> pd.DataFrame:
    """Every candidate in the order measured: its figures and what became of it."""
    t = res.candidates
    if t.empty:
        return t
    # think is in the setting's name; the numbers behind the cells are for the conclusions
    return t.drop(columns=["value", "think", "thinking_median"], errors="ignore").set_index("setting")


def pareto_charts(res: TuningResult) -> list:
    """Each measured candidate as a point: its TTFT, and its peak server memory, against the request rate its clients
    sustained (down and to the right is better): the trade-offs the winner sits among."""
    from perfkit.report.charts import Chart, Series

    df = res.trials
    if df.empty or "candidate" not in df:
        return []
    search = measured(df[df["series"].astype(str).str.startswith("cand/")])
    pts = []
    for key, g in search.groupby("candidate", sort=False):
        rate = float(pd.Series(served(g)).median())
        pts.append((key, rate, float(pd.to_numeric(g["ttft_s"]).median()), peak_rss(g), len(g)))
    if not pts:
        return []
    lat = [Series(k, [r], [SECONDS.plot(t)], text=[f"{REQUESTS_PER_S.text(r)}, TTFT {SECONDS.text(t)} (n={n})"])
           for k, r, t, _, n in pts]
    mem = [Series(k, [r], [BYTES.plot(m)], text=[f"{REQUESTS_PER_S.text(r)}, peak RSS {BYTES.text(m)}"])
           for k, r, _, m, _ in pts]
    rate = REQUESTS_PER_S.axis_label("request rate, median")
    return [Chart("scatter", "Each candidate: time to first token against the request rate",
                  SECONDS.axis_label("median TTFT"),
                  "One point per candidate setting: its median TTFT against the request rate its clients sustained; "
                  "down and to the right is better", lat, xlabel=rate, legend_title="setting"),
            Chart("scatter", "Each candidate: peak server memory against the request rate",
                  BYTES.axis_label("peak RSS"),
                  "One point per candidate setting: its server's peak resident memory against the request rate its "
                  "clients sustained", mem, xlabel=rate, legend_title="setting")]
