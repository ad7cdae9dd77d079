"""How a candidate is judged: the objective per steady request, the share inside the SLOs, its peak memory,
whether it may win, and the best of the eligible ones as a tested claim."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from perfkit.analysis import figures as F, series as S
from perfkit.analysis.decisions import BestClaim, best_of
from perfkit.analysis.requests import measured
from perfkit.core import fmt

from .params import SLO_SHARE, TuningParams, objective_metric


def steady(rows: pd.DataFrame, concurrency: int) -> pd.DataFrame:
    """Each closed-loop series' requests inside its steady window: the start, when every client sends at once and
    the first wait behind the others, and the end, when clients run out, are not the server's sustained rate."""
    if rows.empty or "series" not in rows:
        return rows
    parts = [S.in_window(g, S.steady_window(g, concurrency)) for _, g in rows.groupby("series", sort=False)]
    return pd.concat(parts) if parts else rows


def served(rows: pd.DataFrame, per: str = "requests") -> list[float]:
    """Per request: what the server completed while it was in flight ÷ its e2e — requests/s, or output tokens/s with
    ``per="tokens"``. The server's rate as each request saw it, whatever its place in the queue (c ÷ e2e would make
    the first of a burst look fast and the last slow)."""
    import numpy as np

    out: list[float] = []
    for _, g in rows.groupby("series", sort=False) if "series" in rows and len(rows) else ():
        done = g[g["ok"].astype("boolean").fillna(False).astype(bool)].dropna(subset=["t_send_ns", "t_end_ns"])
        if done.empty:
            continue
        order = np.argsort(done["t_end_ns"].astype("int64").to_numpy())
        ends = done["t_end_ns"].astype("int64").to_numpy()[order]
        weight = (pd.to_numeric(done["output_tokens"], errors="coerce").fillna(0).to_numpy()[order]
                  if per == "tokens" else np.ones(len(ends)))
        cum = np.concatenate([[0.0], np.cumsum(weight)])
        for send, end in zip(done["t_send_ns"].astype("int64"), done["t_end_ns"].astype("int64")):
            span = (end - send) / 1e9
            if span > 0:
                k = cum[np.searchsorted(ends, end, "right")] - cum[np.searchsorted(ends, send, "right")]
                out.append(float(k / span))
    return out


def objective_values(c: TuningParams, rows: pd.DataFrame) -> list[float]:
    """The objective per steady request: its TTFT (its first answer token where ``think`` is searched), or the
    server's rate while it was in flight (:func:`served`)."""
    inside = steady(rows, c.concurrency)
    if c.objective == "ttft":
        column = "ttfa_s" if objective_metric(c)[0] == "ttfa" and "ttfa_s" in inside else "ttft_s"
        return list(pd.to_numeric(measured(inside)[column], errors="coerce").dropna())
    return _served_in(rows, inside, "tokens" if c.objective == "throughput" else "requests")


def _served_in(rows: pd.DataFrame, inside: pd.DataFrame, per: str) -> list[float]:
    """:func:`served` for the steady requests, counting every completion of their series (steady or not)."""
    if inside.empty or "trial_id" not in rows:
        return []
    keep = set(measured(inside)["trial_id"])
    out = []
    for _, g in rows.groupby("series", sort=False):
        vals = served(g, per)
        ok = g[g["ok"].astype("boolean").fillna(False).astype(bool)].dropna(subset=["t_send_ns", "t_end_ns"])
        ok = ok[(ok["t_end_ns"].astype("int64") - ok["t_send_ns"].astype("int64")) > 0]
        out += [v for v, t in zip(vals, ok["trial_id"]) if t in keep]
    return out


def objective_figure(c: TuningParams, rows: pd.DataFrame, key: str, where: dict | None = None) -> F.Figure | None:
    tag = objective_metric(c)[0]
    return F.per_request("tuning", tag, rows, lambda r: objective_values(c, r), where=where or {"setting": key},
                         workload=figure_workload(c))


def slo_share(c: TuningParams, rows: pd.DataFrame) -> float:
    """The share of the requests that met every SLO (a failed request never does)."""
    if rows.empty:
        return math.nan
    ok = rows["ok"].astype("boolean").fillna(False).astype(bool)
    meets = ok.copy()
    ttft = pd.to_numeric(rows.get("ttft_s"), errors="coerce")
    tpot = pd.to_numeric(rows.get("tpot_s"), errors="coerce")
    if c.slo.ttft_s is not None:
        meets &= ttft.le(c.slo.ttft_s).fillna(False)
    if c.slo.tpot_s is not None and tpot is not None:
        meets &= tpot.le(c.slo.tpot_s).fillna(True)
    if c.slo.e2e_s is not None:
        meets &= pd.to_numeric(rows.get("e2e_s"), errors="coerce").le(c.slo.e2e_s).fillna(False)
    return float(meets.mean())


def peak_rss(rows: pd.DataFrame) -> float:
    return float(rows["res_server_rss_bytes_max"].max()) if "res_server_rss_bytes_max" in rows and len(rows) \
        and rows["res_server_rss_bytes_max"].notna().any() else math.nan


def eligible(c: TuningParams, rows: pd.DataFrame) -> tuple[bool, str]:
    """Whether a candidate may win: its requests meet the SLOs often enough and its memory fits; else why not."""
    share = slo_share(c, rows)
    if not math.isfinite(share) or share < SLO_SHARE:
        return False, f"{fmt.pct(share)} of its requests met the SLOs (needs {SLO_SHARE:.0%})"
    rss = peak_rss(rows)
    if c.memory_limit_bytes and math.isfinite(rss) and rss > c.memory_limit_bytes:
        return False, f"its server RSS peaked at {fmt.size(rss)}, above the {fmt.size(c.memory_limit_bytes)} limit"
    return True, ""


def race_claim(c: TuningParams, df: pd.DataFrame, cands: dict[str, dict], confidence: float) -> BestClaim | None:
    """The best eligible candidate as a tested claim at ``confidence`` (each candidate's requests over its looks)."""
    if df.empty or "candidate" not in df:
        return None
    search = df[df["series"].astype(str).str.startswith("cand/")]
    figs = {}
    for key, d in cands.items():
        if d["merged_into"]:
            continue
        rows = search[search["candidate"] == key]
        if eligible(c, rows)[0]:
            fig = objective_figure(c, rows, key)
            if fig is not None:
                figs[key] = fig
    return best_of(figs, confidence=confidence) if figs else None


def figure_workload(c: TuningParams) -> dict[str, Any]:
    """What a figure says it was measured under: two runs' figures compare only under the same."""
    return {"prompt_words": c.prompt_words, "num_predict": c.num_predict, "concurrency": c.concurrency,
            **{f"slo_{k}": v for k, v in c.slo.model_dump().items() if v is not None}}
