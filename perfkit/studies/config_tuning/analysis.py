"""The config tuning study's analysis, from recorded data only: per setting and client count its latency,
throughput, goodput and memory figures, the open-loop sweep, and the best setting per objective as a tested claim."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from perfkit.core.events import DeviceFound, SettingsConfirmed, events_of, last_of
from perfkit.core.units import TOKENS_PER_S
from perfkit.analysis import figures as F, series as S, stats
from perfkit.analysis.decisions import best_of
from perfkit.analysis.figures import FigureSet
from perfkit.analysis.requests import (ci_cell, col, est, failures, measured, per_request_event_gap,
                                       per_request_itl)
from perfkit.analysis.verdicts import MIN_REPLICATES
from perfkit.core import fmt
from perfkit.studies.base import StudyContext

from .params import ConfigTuningParams
from .rates import rate_rows, rate_table, setting_slots
from .results import ConfigTuningResult


def figure_workload(c: ConfigTuningParams, **extra: Any) -> dict[str, Any]:
    """What a figure says it was measured under: two runs' figures compare only under the same."""
    w = c.workload
    out = {"prompt_words": c.prompt_words, "num_predict": c.num_predict, **extra}
    if w.kind != "synthetic":  # two runs' figures compare only over the same traffic
        out["workload"] = w.model_dump(mode="json", exclude_defaults=True)
    return out


def analyze(ctx: StudyContext) -> ConfigTuningResult:
    c = ctx.cfg
    df = ctx.store.trials()
    ev = ctx.store.events()
    checks = events_of(ev, SettingsConfirmed).drop_duplicates("config_index", keep="last")
    slo = c.slo
    sc = S.series_checks(ev)
    sres = S.series_resources(ev)
    load_rows: list[dict] = []
    closed = S.last_attempt(df[df["mode"] == "closed"]) if len(df) and "mode" in df else df.iloc[0:0]
    rows, figs = [], FigureSet()
    kinds_of_traffic = traits(closed)
    for (i, conc), g_all in closed.groupby(["config_index", "concurrency"]) if len(closed) else ():
        rows.append(_closed_row(c, figs, i, conc, g_all, sc, sres, checks, load_rows, kinds_of_traffic))
    table = pd.DataFrame(rows)
    rates = rate_table(df, sc, slo, {int(i): setting_slots(ev, int(i)) for i in df["config_index"].dropna().unique()}
                       if len(df) and "config_index" in df else None)
    _rate_figures(c, figs, df, rates, sres, load_rows)
    _sustained_figures(figs, rates)
    best_ = best(table, figs)
    _mark_headlines(figs, best_)
    _pairs(figs, table, best_)
    retries = int(df["stale_retry"].astype("boolean").fillna(False).astype(bool).sum()) if len(df) and "stale_retry" in df else 0
    return ConfigTuningResult("config_tuning", figs, df, ctx.store.manifest(), failures(df), table=table,
                              rates=rates, checks=checks, best=best_, slo=slo.model_dump(),
                              device=last_of(ev, DeviceFound), retries=retries,
                              clients=S.client_table(ev, df), load=pd.DataFrame(load_rows))


def traits(rows: pd.DataFrame) -> set[str]:
    """What the study's requests were beyond plain generation: ``draft`` (a draft model proposed tokens),
    ``thinking`` (a model thought before it answered). Their figures exist only then, for every setting, so a
    setting without them is compared with one with."""
    out = set()
    for trait, column in (("draft", "draft_tokens"), ("thinking", "thinking_tokens")):
        if column in rows and pd.to_numeric(rows[column], errors="coerce").fillna(0).gt(0).any():
            out.add(trait)
    return out


def _traffic_figures(figs: FigureSet, steady: pd.DataFrame, where: dict[str, Any], wl: dict[str, Any],
                     kinds_of_traffic: set[str]) -> None:
    if "draft" in kinds_of_traffic:
        figs.add(F.per_request("config_tuning", "decode_rate", steady, "decode_tok_s", where=where, workload=wl))
        figs.add(F.per_request("config_tuning", "draft_acceptance", steady, "draft_acceptance", where=where,
                               workload=wl))
    if "thinking" in kinds_of_traffic:
        for tag, column in (("ttfa", "ttfa_s"), ("thinking_time", "thinking_s"), ("thinking_tokens", "thinking_tokens"),
                            ("answer_tokens", "answer_tokens")):
            figs.add(F.per_request("config_tuning", tag, steady, column, where=where, workload=wl))


def _closed_row(c: ConfigTuningParams, figs: FigureSet, i: int, conc: int, g_all: pd.DataFrame,
                sc: dict[str, dict], sres: dict[str, Any], checks: pd.DataFrame,
                load_rows: list[dict], kinds_of_traffic: set[str] = frozenset()) -> dict[str, Any]:
    """Setting ``i`` at ``conc`` clients (the last attempt of its closed loop): its figures added to ``figs``, its
    load to ``load_rows``; returns its row of the table."""
    chk = sc.get(g_all["series"].iloc[0], {}) if "series" in g_all else {}
    g = measured(g_all)
    if g.empty:
        return {"config_index": i, "config": g_all["config"].iloc[0], "concurrency": conc, "n": 0,
                "failed": len(g_all), "client_check": S.client_cell(chk), "client_bound": False,
                "steady_window": bool(chk.get("steady", False))}
    slo = c.slo
    steady, steady_all = S.in_window(g, chk), S.in_window(g_all, chk)
    burst = S.burst(g)
    cfg = g["config"].iloc[0]
    where = {"setting": cfg, "clients": int(conc)}
    ttft_cens = S.censored(steady_all, "ttft_s")
    tput = S.throughput(g, chk)
    good = S.goodput(g_all, ttft_s=slo.ttft_s, tpot_s=slo.tpot_s, e2e_s=slo.e2e_s)
    rss = g["res_server_rss_bytes_max"].max() if "res_server_rss_bytes_max" in g else np.nan
    f_ttft, f_tput = _closed_figures(c, figs, g, g_all, steady, steady_all, chk, where, tput, good, rss)
    _traffic_figures(figs, steady, where, figure_workload(c, clients=int(conc)), kinds_of_traffic)
    series_name = g_all["series"].iloc[0] if "series" in g_all else None
    if series_name in sres:
        lr = S.load_row(sres[series_name], g_all)
        load_rows.append({"config": cfg, "load": f"{int(conc)} client{'s' if conc != 1 else ''}", **lr})
        figs.add(F.reading("config_tuning", "series_gpu_util", lr["gpu_util_pct_mean"] / 100, where=where,
                           note=f"mean over the series' {fmt.duration(lr['window_s'])} window, from "
                                f"{lr['gpu_source']}"))
        figs.add(F.reading("config_tuning", "series_energy_per_token", lr["energy_per_token_j"], where=where,
                           note=f"{fmt.number(lr['energy_j'])} J over {lr['output_tokens']} tokens, from "
                                f"{lr['gpu_source']}"))
        if "draft" not in kinds_of_traffic:  # no per-request draft counts: the server's counters over the window
            figs.add(F.reading("config_tuning", "series_draft_acceptance", lr["spec_acceptance"], where=where,
                               note=_drafted_note(lr)))
    ck = checks[checks["config_index"] == i].iloc[0] if len(checks) and (checks["config_index"] == i).any() else None
    ttft50 = f_ttft.estimate if f_ttft else est([])
    tp = f_tput.estimate if f_tput else tput
    itl = est(per_request_itl(steady, "median"))
    return {"config_index": i, "config": cfg, "concurrency": conc, "n": len(steady), "n_series": len(g),
            "failed": int(len(g_all) - len(g)),
            "ttft_p50_s": ttft50.value, "ttft_p50_lo": ttft50.lo, "ttft_p50_hi": ttft50.hi,
            "ttft_p90": ci_cell(est(ttft_cens, "p90")), "ttft_p99": ci_cell(est(ttft_cens, "p99")),
            "burst_ttft_p50": ci_cell(est(col(burst, "ttft_s"))) if len(burst) and chk.get("steady") else "—",
            "tpot_p50": ci_cell(est(col(steady, "tpot_s"))), "itl_p50": ci_cell(itl),
            "decode_tok_s": est(col(steady, "decode_tok_s")).value,
            "throughput_tok_s": tp.value, "throughput_lo": tp.lo, "throughput_hi": tp.hi,
            "throughput_text": TOKENS_PER_S.estimate(tp), "throughput_method": tp.method,
            "requests_s": S.request_rate(g),
            "concurrency_achieved": chk.get("achieved_concurrency", math.nan),
            "steady_window": bool(chk.get("steady", False)),
            "client_check": S.client_cell(chk, {"TTFT": ttft50.value, "ITL": itl.value}),
            "client_bound": bool(chk.get("client_client_bound", False)),
            "client_moves": S.client_can_move(chk, itl.value) or S.client_can_move(chk, ttft50.value),
            "retries": int(g_all["stale_retry"].astype("boolean").fillna(False).astype(bool).sum()) if "stale_retry" in g_all else 0,
            "goodput_rps": good,
            "noisy_requests": int(g.get("res_noisy", pd.Series(dtype=bool)).astype("boolean").fillna(False).astype(bool).sum()),
            "server_rss_max_bytes": rss, "prompt_cached_share": _cached_share(g),
            "setting_applied": None if ck is None else ck.get("all_applied"),
            "total_slots": None if ck is None else ck.get("total_slots")}


def _drafted_note(lr: dict[str, Any]) -> str:
    """How many drafted tokens the server's counters saw accepted over a series' window (whole tokens: the counters
    are read at each sample and the window's ends fall between two samples)."""
    drafted, share = lr.get("spec_draft_tokens"), lr.get("spec_acceptance")
    if drafted is None or share is None or not (drafted == drafted and share == share):
        return "one reading"
    return f"{round(drafted * share)} of {round(drafted)} drafted tokens over the series' {fmt.duration(lr['window_s'])} window"


def _closed_figures(c: ConfigTuningParams, figs: FigureSet, g: pd.DataFrame, g_all: pd.DataFrame,
                    steady: pd.DataFrame, steady_all: pd.DataFrame, chk: dict, where: dict[str, Any],
                    tput: stats.Estimate, good: float, rss: float) -> tuple[F.Figure | None, F.Figure | None]:
    """One closed-loop series' figures (latency over its steady window, throughput, goodput, peak memory); returns
    its TTFT and throughput figures, which the table quotes."""
    slo = c.slo
    wl = figure_workload(c, clients=int(where["clients"]))
    f_ttft = figs.add(F.per_request("config_tuning", "ttft", steady, "ttft_s", where=where, workload=wl))
    figs.add(F.per_request("config_tuning", "ttft_p99", steady_all, lambda r: S.censored(r, "ttft_s"),
                           where=where, workload=wl))
    figs.add(F.failed_share("config_tuning", g_all, where=where, workload=wl))
    figs.add(F.per_request("config_tuning", "e2e", steady, "e2e_s", where=where, workload=wl))
    figs.add(F.per_request("config_tuning", "itl", steady, lambda r: per_request_itl(r, "median"), where=where,
                           workload=wl))
    figs.add(F.per_request("config_tuning", "event_gap", steady, per_request_event_gap, where=where, workload=wl))
    f_tput = figs.add(F.from_estimate("config_tuning", "throughput", tput, g, where=where, workload=wl,
                                      per_replicate=lambda r, chk=chk: S.throughput(r, chk).value))
    figs.add(F.from_estimate("config_tuning", "goodput", stats.Estimate("goodput", good, math.nan, math.nan,
                                                                        len(g_all), method="one series"),
                             where=where, workload={**wl, **slo.model_dump()}))
    figs.add(F.reading("config_tuning", "peak_rss", rss, where=where, note="largest sample over the series"))
    return f_ttft, f_tput


def _rate_figures(c: ConfigTuningParams, figs: FigureSet, df: pd.DataFrame, rates: pd.DataFrame,
                  sres: dict[str, Any], load_rows: list[dict]) -> None:
    """Per setting and offered rate: the TTFT timed from the schedule (p99, failures beyond the limit) and the
    failed share; its load to ``load_rows``."""
    slo = c.slo
    for _, r in rates.iterrows():
        where = {"setting": r["config"], "rate_rps": f"{r['rate_rps']:g}"}
        g_all = rate_rows(df, r["config_index"], r["rate_rps"])
        wl = figure_workload(c, rate_rps=float(r["rate_rps"]), arrivals=c.arrivals)
        figs.add(F.per_request("config_tuning", "ttft_sched_p99", g_all, lambda x: S.censored(x, "ttft_sched_s"),
                               where=where, workload={**wl, **slo.model_dump()}))
        figs.add(F.failed_share("config_tuning", g_all, where=where, workload=wl))
        series_name = g_all["series"].iloc[0] if len(g_all) and "series" in g_all else None
        if series_name in sres:
            load_rows.append({"config": r["config"], "load": f"{r['rate_rps']:g} req/s offered",
                              **S.load_row(sres[series_name], g_all)})


def _sustained_figures(figs: FigureSet, rates: pd.DataFrame) -> None:
    """Per setting: the highest rate it sustained (a lower bound when every rate tried was)."""
    if len(rates):
        for cfg, g in rates.groupby("config", sort=False):
            okr = g[g["sustained"]]
            if len(okr):
                top = float(okr["rate_rps"].max())
                bound = bool((g["rate_rps"] > top).any())
                figs.add(F.reading("config_tuning", "sustained_rate", top, where={"setting": cfg},
                                   note=f"of {len(g)} rates tried" + ("" if bound else
                                                                      "; a lower bound: every rate tried was sustained")))


def _mark_headlines(figs: FigureSet, b: dict[str, dict]) -> None:
    """The index shows the best setting's figures: throughput at the most clients, TTFT at the fewest."""
    for obj, tag, name in (("throughput", "throughput", "best throughput"), ("latency", "ttft", "best latency")):
        if obj in b:
            f = figs.get(f"config_tuning/{tag}/{b[obj]['config']}/{b[obj]['at_concurrency']}")
            if f is not None:  # "best" only where the data call it best
                f.headline = name if b[obj]["claim"].called else name.replace("best", "leading")


def _cached_share(rows: pd.DataFrame) -> float:
    """Share of the series' prompt tokens the server served from its cache, by its own counts (NaN where it does
    not count them): synthetic prompts keep it to the chat template's head; a workload's shared prefixes and
    histories raise it."""
    if "cached_tokens" not in rows or "prompt_tokens" not in rows:
        return math.nan
    r = rows[rows["cached_tokens"].notna() & rows["prompt_tokens"].notna()]
    total = float(pd.to_numeric(r["prompt_tokens"], errors="coerce").sum())
    return float(pd.to_numeric(r["cached_tokens"], errors="coerce").sum()) / total if total > 0 else math.nan


def best(table: pd.DataFrame, figs: FigureSet) -> dict[str, dict]:
    """The best setting per objective as a tested claim (:func:`perfkit.analysis.decisions.best_of`): TTFT p50 at
    the fewest clients, throughput at the most; memory by its single reading (no claim). Each entry holds the
    leader's figures and its ``claim``."""
    if table.empty or "ttft_p50_s" not in table or table["ttft_p50_s"].isna().all():
        return {}
    t = table[table["n"] > 0]
    lo_c, hi_c = t["concurrency"].min(), t["concurrency"].max()
    out: dict[str, dict] = {}
    for obj, tag, conc, metric_name in (("latency", "ttft", lo_c, "TTFT p50 (s)"),
                                        ("throughput", "throughput", hi_c, "output tok/s")):
        cands = {cfg: figs.get(f"config_tuning/{tag}/{cfg}/{int(conc)}") for cfg in t[t["concurrency"] == conc]["config"]}
        cands = {k: f for k, f in cands.items() if f is not None}
        claim = best_of(cands, runs_mode=_replicated(cands.values()))
        if claim is None:
            continue
        f = cands[claim.best]
        lead = t[(t["concurrency"] == conc) & (t["config"] == claim.best)].iloc[0]
        out[obj] = {"config": claim.best, "at_concurrency": int(conc), "value": f.value, "lo": f.estimate.lo,
                    "hi": f.estimate.hi, "n": int(lead["n"] if obj == "latency" else lead["n_series"]),
                    "text": f.text(), "metric": metric_name, "claim": claim}
    if not out:
        return {}
    mem = t.groupby("config")["server_rss_max_bytes"].max().sort_values()
    out["memory"] = {"config": mem.index[0], "value": float(mem.iloc[0]), "metric": "peak server RSS (bytes)",
                     "lo": math.nan, "hi": math.nan, "n": int(t[t["config"] == mem.index[0]]["n_series"].sum())}
    return out


def _pairs(figs: FigureSet, table: pd.DataFrame, best_: dict[str, dict]) -> None:
    """The before/after rows: the first setting (where the user starts) against the setting that leads on
    throughput (else latency), the latency rows at the fewest clients, the rest at the most."""
    lead = best_.get("throughput") or best_.get("latency")
    if table.empty or not lead:
        return
    t = table[table["n"] > 0].sort_values("config_index")
    if t.empty:
        return
    base, after = t["config"].iloc[0], lead["config"]
    lo_c, hi_c = int(t["concurrency"].min()), int(t["concurrency"].max())
    clients = lambda c: f"{c} client{'s' if c != 1 else ''}"  # noqa: E731
    for row, tag, conc in ((f"warm request, time to first token ({clients(lo_c)})", "ttft", lo_c),
                           (f"warm request, end to end ({clients(lo_c)})", "e2e", lo_c),
                           (f"output throughput ({clients(hi_c)})", "throughput", hi_c),
                           (f"GPU utilization under load ({clients(hi_c)})", "series_gpu_util", hi_c),
                           (f"peak server memory ({clients(hi_c)})", "peak_rss", hi_c)):
        figs.pair(F.Pair(row, f"config_tuning/{tag}/{base}/{conc}", f"config_tuning/{tag}/{after}/{conc}",
                         f"first setting ({base})", f"leading setting ({after})"))
    for row, tag in ((f"decode speed ({clients(lo_c)})", "decode_rate"),
                     (f"time to first answer token ({clients(lo_c)})", "ttfa")):
        if figs.get(f"config_tuning/{tag}/{base}/{lo_c}") and figs.get(f"config_tuning/{tag}/{after}/{lo_c}"):
            figs.pair(F.Pair(row, f"config_tuning/{tag}/{base}/{lo_c}", f"config_tuning/{tag}/{after}/{lo_c}",
                             f"first setting ({base})", f"leading setting ({after})"))
    figs.pair(F.Pair("highest sustained request rate", f"config_tuning/sustained_rate/{base}",
                     f"config_tuning/sustained_rate/{after}", f"first setting ({base})", f"leading setting ({after})"))


def _replicated(figs) -> bool:
    """Runs are the unit when every candidate has a value from ≥ 3 replicate runs."""
    figs = list(figs)
    return bool(figs) and all(len(f.replicates) >= MIN_REPLICATES for f in figs)
