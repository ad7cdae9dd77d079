"""The proof: today's settings against the winner, each restarted in turn (runs as the unit), and the
before/after pairs the report reads."""

from __future__ import annotations

import math

import pandas as pd

from perfkit.analysis import figures as F, stats
from perfkit.analysis.figures import FigureSet
from perfkit.client.backends import Sampling
from perfkit.core.settings import settings_label, think_of
from perfkit.measure.progress import Progress
from perfkit.measure.runner import Trial
from perfkit.measure.session import Session
from perfkit.studies.base import StudyContext

from .objective import figure_workload, objective_values, peak_rss
from .params import TuningParams, thinking_searched
from .records import recorded_candidates


def measure_proof(ctx: StudyContext, s: Session, winner: str) -> None:
    """Before (the baseline) against after (the winner), each restarted ``replicates`` times in turn; each restart
    gives one cold first request and a closed loop of the stated clients."""
    c = ctx.cfg
    sides = {"before": dict(c.baseline), "after": recorded_candidates(ctx)[winner]["settings"]}
    with Progress(ctx.store.dir, "tuning: proof (before and after, restarted in turn)", 2 * c.replicates,
                  interactive=ctx.params.progress) as bar:
        for r in range(c.replicates):
            for side in (("before", "after") if r % 2 == 0 else ("after", "before")):
                bar.update(1, f"{side}, restart {r + 1}")
                s.restart(sides[side])
                tags = {"proof": side, "replicate": r + 1, "candidate": winner if side == "after" else "baseline"}
                sampling = Sampling(c.num_predict, think=think_of(sides[side]))  # a request option: sent, not set
                s.runner.run([Trial(f"proof/{side}/r{r}/cold", c.model, "cold_server", r, False, side,
                                    c.prompt_words, sampling, tags=tags)], desc="proof: cold start")
                s.runner.closed_loop(c.model, c.concurrency, c.proof_requests, series=f"proof/{side}/r{r}",
                                     sampling=sampling, prompt_words=c.prompt_words, tags=tags)


def proof_figures(c: TuningParams, df: pd.DataFrame, figs: FigureSet, winner: str | None) -> list[tuple[str, str, str]]:
    """The proof's figures per side (each restart one replicate) and the before/after pairs; returns the pairs
    (row, before key, after key)."""
    if df.empty or "proof" not in df or winner is None:
        return []
    pairs = []
    wl = figure_workload(c)
    thinking = thinking_searched(c)
    for side in ("before", "after"):
        rows = df[df["proof"] == side]
        warm, cold = rows[~rows["trial_id"].astype(str).str.endswith("/cold")], rows[rows["trial_id"].astype(str).str.endswith("/cold")]
        where = {"side": side}
        figs.add(F.per_request("tuning", "e2e", cold, "e2e_s", where={**where, "state": "cold_server"}, workload=wl,
                               headline="cold start" if side == "after" else ""))
        figs.add(F.per_request("tuning", "ttft", warm, "ttft_s", where={**where, "clients": c.concurrency}, workload=wl,
                               headline="warm start" if side == "after" else ""))
        if thinking:  # what a user waits for when the model thinks (its TTFT is its first thought)
            figs.add(F.per_request("tuning", "ttfa", warm, "ttfa_s", where={**where, "clients": c.concurrency},
                                   workload=wl))
        figs.add(F.per_request("tuning", "request_rate", warm,
                               lambda r: objective_values(c.model_copy(update={"objective": "rate"}), r),
                               where={**where, "clients": c.concurrency}, workload=wl))
        figs.add(F.per_request("tuning", "stream_throughput", warm,
                               lambda r: objective_values(c.model_copy(update={"objective": "throughput"}), r),
                               where={**where, "clients": c.concurrency}, workload=wl))
        # One value per restart (its largest RSS sample): the restarts are the replicates a run-level test needs.
        peaks = [peak_rss(g) for _, g in warm.groupby("replicate")] if "replicate" in warm else []
        peaks = [p for p in peaks if math.isfinite(p)]
        if peaks:
            est = stats.Estimate("max", max(peaks), math.nan, math.nan, len(peaks),
                                 method=f"the largest RSS sample of each of {len(peaks)} restarts; the largest shown")
            figs.add(F.from_estimate("tuning", "peak_rss", est, warm, where=where, per_replicate=peak_rss,
                                     headline="memory" if side == "after" else ""))
    clients = f"{c.concurrency} client{'s' if c.concurrency != 1 else ''}"
    for row, tag, extra in (("first request after a restart", "e2e", "/cold_server"),
                            (f"time to first token ({clients})", "ttft", f"/{c.concurrency}"),
                            *([(f"time to first answer token ({clients})", "ttfa", f"/{c.concurrency}")] if thinking
                              else []),
                            (f"request rate at {clients}", "request_rate", f"/{c.concurrency}"),
                            (f"output throughput at {clients}", "stream_throughput", f"/{c.concurrency}"),
                            ("peak server memory", "peak_rss", "")):
        b, a = f"tuning/{tag}/before{extra}", f"tuning/{tag}/after{extra}"
        figs.pair(F.Pair(row, b, a, "today's settings" + (f" ({settings_label(c.baseline)})" if c.baseline else
                                                           " (the server's defaults)"), f"tuned ({winner})"))
        pairs.append((row, b, a))
    return pairs
