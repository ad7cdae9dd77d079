"""Config tuning: server settings × client concurrency. The server restarts for each setting, each setting is
checked to have taken effect, and the best setting per objective is named with its CI; an optional open-loop
sweep finds the request rate each setting sustains within the SLOs."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator

from perfkit.analysis import figures as F, series as S, stats
from perfkit.analysis.figures import FigureSet
from perfkit.analysis.models import offload_warnings
from perfkit.analysis.requests import (ci_cell, col, est, failures, measured, method_note, negative_overhead_note,
                                       noisy_note, per_request_event_gap, per_request_itl)
from perfkit.analysis.capacity import (BRACKET_RATIO, KEPT_UP, NOT_SUSTAINED, SUSTAINED, SUSTAINED_SHARE,  # noqa: F401
                                       meets_slo, rate_verdict)
from perfkit.analysis.series import CANT_TELL
from perfkit.analysis.decisions import TARGET_EFFECT, best_of
from perfkit.analysis.verdicts import MIN_REPLICATES
from perfkit.client.backends import Sampling
from perfkit.core import fmt
from perfkit.core.events import (AutoRates, AutoRateStep, DeviceFound, RateExtended, SettingsConfirmed, events_of,
                                  last_of)
from perfkit.core.units import BYTES, REQUESTS_PER_S, SECONDS, SHARE, TOKENS_PER_S
from perfkit.core.schema import (MAX_PROMPT_WORDS, MAX_REQUESTS, MAX_TOKENS, Slo, Strict, concurrency_list,
                                 settings_list, unique)
from perfkit.core.settings import settings_label
from perfkit.measure.confirm import confirm_settings as verify
from perfkit.report import load
from perfkit.report.answer import answer_block
from perfkit.studies.base import Study, StudyContext, StudyResult, settings_preflight
from perfkit.studies.registry import register
from perfkit.workloads import WorkloadParams

class ConfigTuningParams(Strict):
    """``studies.config_tuning``: the settings to try, the client concurrencies, and optionally an open-loop
    rate sweep (absent: only closed-loop series are measured)."""

    model: str
    slo: Slo = Field(default_factory=Slo)
    settings: list[dict[str, Any]] = Field(min_length=1, description="one server configuration per entry")
    concurrency: list[int] = Field(default_factory=lambda: [1, 4])
    requests: int = Field(8, ge=1, le=MAX_REQUESTS)
    rates_rps: list[float] | Literal["auto"] = Field(
        default_factory=list, description="open-loop request rates to sweep (goodput vs rate); auto: fractions of "
        "each setting's measured capacity (rate_fractions); empty: no sweep")
    rate_fractions: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0],
                                        description="with rates_rps: auto, the rates as shares of the capacity the "
                                                    "closed loop measured at the most clients")
    rate_search_steps: int = Field(2, ge=0, le=8, description=(
        "with rates_rps: auto, rates tried beyond rate_fractions until one rate is sustained and the next is not, "
        "within 1.5× (the highest doubled while every rate was sustained, the lowest halved while none was, a "
        "wider bracket split at its geometric middle)"))
    rate_requests: int = Field(12, ge=2, le=MAX_REQUESTS, description="requests per open-loop rate")
    rate_extend: int = Field(2, ge=0, le=4, description=(
        "times a rate whose latency trend can't tell (at this n) whether the server kept up is measured again, "
        "each time with twice the requests, before the sweep moves on"))
    arrivals: Literal["poisson", "constant", "gamma"] = "poisson"
    burstiness: float = Field(1.0, gt=0, le=100, description="arrivals: gamma: the gaps' shape (1: Poisson; below 1: "
                                                             "bursts and lulls)")
    num_predict: int = Field(32, ge=2, le=MAX_TOKENS)
    prompt_words: int = Field(48, ge=4, le=MAX_PROMPT_WORDS)
    workload: WorkloadParams = Field(default_factory=WorkloadParams, description="what the requests say (default: "
                                     "synthetic prompts no cache can serve)")

    @model_validator(mode="after")
    def _workload_fits(self):
        if self.workload.multi_turn and self.rates_rps:
            raise ValueError("workload kind sessions runs closed-loop users; an open-loop rate sweep (rates_rps) sends "
                             "one-shot requests: use kind dataset for the sweep, or rates_rps: []")
        if self.burstiness != 1.0 and self.arrivals != "gamma":
            raise ValueError("burstiness is used only with arrivals: gamma")
        return self

    @field_validator("rates_rps")
    @classmethod
    def _rates(cls, v):
        if v == "auto":
            return v
        if any(not 0 < r <= 10_000 for r in v):
            raise ValueError("request rates must be > 0 and ≤ 10000 per second")
        return unique(v, "rate")

    @field_validator("rate_fractions")
    @classmethod
    def _fractions(cls, v):
        if not v or any(not 0 < f <= 4 for f in v):
            raise ValueError("a non-empty list of shares of the measured capacity, each > 0 and ≤ 4")
        return unique(v, "rate fraction")

    @field_validator("settings")
    @classmethod
    def _grid(cls, v):
        return settings_list(v)

    @field_validator("concurrency")
    @classmethod
    def _conc(cls, v):
        return concurrency_list(v)


@dataclass
class ConfigTuningResult(StudyResult):
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    rates: pd.DataFrame = field(default_factory=pd.DataFrame)
    checks: pd.DataFrame = field(default_factory=pd.DataFrame)
    best: dict[str, dict] = field(default_factory=dict)
    slo: dict[str, Any] = field(default_factory=dict)
    device: dict | None = None
    retries: int = 0
    clients: pd.DataFrame = field(default_factory=pd.DataFrame)
    load: pd.DataFrame = field(default_factory=pd.DataFrame)


def label(setting: dict) -> str:
    return settings_label(setting)


@register
class ConfigTuning(Study):
    name = "config_tuning"
    title = "Server settings × concurrency"
    question = "Which server settings are best for latency, throughput and memory, and what rate do they sustain?"
    Params = ConfigTuningParams
    order = 40

    def preflight(self, params: Any) -> list[str]:
        return settings_preflight(params, "studies.config_tuning.settings", params.studies.config_tuning.settings)

    def measure(self, ctx: StudyContext) -> None:
        c = ctx.cfg
        with ctx.session(c.settings[0], server_metrics=True) as s:
            for i, setting in enumerate(c.settings):
                if i:
                    s.restart(setting)
                check = verify(s, c.model)
                ctx.store.emit(SettingsConfirmed(config_index=i, config=label(setting), **check))
                if i == 0:
                    ctx.store.emit(DeviceFound(model=c.model, **s.control.device(c.model, s.backend).as_record()))
                tags = {"config": label(setting), "config_index": i}
                wl = ctx.workload(c.workload, s, c.model) if c.workload.kind != "synthetic" else None
                for conc in c.concurrency:
                    s.runner.closed_loop(c.model, conc, c.requests, series=f"cfg{i}/c{conc}",
                                         sampling=Sampling(c.num_predict), prompt_words=c.prompt_words, tags=tags,
                                         workload=wl)
                if wl is not None and wl.params.kind == "trace" and not c.rates_rps:
                    # A trace with no rates to sweep: replayed as it was recorded (time_scale applied).
                    s.runner.open_loop(c.model, None, c.rate_requests, series=f"cfg{i}/trace", seed=ctx.params.seed,
                                       sampling=Sampling(c.num_predict), prompt_words=c.prompt_words, tags=tags,
                                       workload=wl)
                rates, steps = _rates(ctx, i), 0
                slots = check.get("total_slots") or None
                while rates:
                    rate = rates.pop(0)
                    n, series = c.rate_requests, f"cfg{i}/r{rate:g}"
                    for look in range(c.rate_extend + 1):
                        if look:  # the trend could not tell: a longer series, from an empty queue again
                            n, series = 2 * n, f"cfg{i}/r{rate:g}/n{2 * n}"
                            ctx.store.emit(RateExtended(config_index=i, rate_rps=rate, requests=n, look=look))
                        s.runner.open_loop(c.model, rate, n, series=series, seed=series_seed(ctx.params.seed, series),
                                           arrivals=c.arrivals, sampling=Sampling(c.num_predict),
                                           prompt_words=c.prompt_words, tags=tags, workload=wl,
                                           burstiness=c.burstiness)
                        df = ctx.store.trials()
                        if judge_rate(df, i, rate, c.slo, slots)[0] != CANT_TELL:
                            break
                    if not rates and c.rates_rps == "auto" and steps < c.rate_search_steps:
                        nxt = _next_rate(ctx.store.trials(), i, c.slo, slots)
                        if nxt is not None:
                            ctx.store.emit(AutoRateStep(config_index=i, rate_rps=nxt, step=steps + 1))
                            rates.append(nxt)
                            steps += 1

    def analyze(self, ctx: StudyContext) -> ConfigTuningResult:
        return analyze(ctx)

    def conclusions(self, result: ConfigTuningResult) -> str:
        return conclusions(result)


def _rates(ctx: StudyContext, i: int) -> list[float]:
    """The open-loop rates for setting ``i``: as given, or (auto) shares of the capacity its closed loop measured
    at the most clients, chosen once and recorded so that a resumed run sweeps the same ones."""
    c = ctx.cfg
    if c.rates_rps != "auto":
        return list(c.rates_rps)
    got = events_of(ctx.store.events(), AutoRates)
    got = got[got["config_index"] == i]
    if len(got):
        return list(got.iloc[-1]["rates_rps"])
    df = ctx.store.trials()
    top = max(c.concurrency)
    g = S.last_attempt(df[(df["series"] == f"cfg{i}/c{top}")]) if len(df) and "series" in df else df.iloc[0:0]
    capacity = S.request_rate(g) if len(g) else math.nan
    if not (capacity > 0):
        ctx.store.emit(AutoRates(config_index=i, rates_rps=[], why="the closed loop measured no capacity to take shares of"))
        return []
    rates = sorted({float(f"{capacity * f:.2g}") for f in c.rate_fractions})
    ctx.store.emit(AutoRates(config_index=i, rates_rps=rates, capacity_rps=capacity, clients=top))
    return rates


def _next_rate(df: pd.DataFrame, i: int, slo: Slo, slots: int | None = None) -> float | None:
    """The next open-loop rate for setting ``i``: twice the highest when each rate so far was sustained, half
    the lowest when none was, the geometric middle of the bracket (highest sustained, next not sustained) while it
    spans more than :data:`BRACKET_RATIO`; None when the limit is bracketed that closely. Decided from the stored
    trials only, so a resumed run makes the same choices."""
    if df.empty or "mode" not in df or "rate_rps" not in df:
        return None
    tried = sorted(df[(df["mode"] == "open") & (df["config_index"] == i)]["rate_rps"].dropna().unique())
    if not tried:
        return None
    verdict = [judge_rate(df, i, r, slo, slots)[0] for r in tried]
    sustained = [v == SUSTAINED for v in verdict]
    missed = [v == NOT_SUSTAINED for v in verdict]
    if any(sustained) and any(missed):
        lo = max(r for r, ok in zip(tried, sustained) if ok)
        above = [r for r, no in zip(tried, missed) if no and r > lo]
        if not above or above[0] / lo <= BRACKET_RATIO:
            return None
        nxt = float(f"{math.sqrt(lo * above[0]):.2g}")  # narrow a wide bracket at its geometric middle
        return nxt if lo < nxt < above[0] and nxt not in tried else None
    if not any(sustained) and not any(missed):
        return None  # no rate could be told either way: more rates would not bracket anything
    nxt = float(f"{(2 * tried[-1] if any(sustained) else tried[0] / 2):.2g}")
    return nxt if nxt > 0 and nxt not in tried and nxt <= 10_000 else None


def setting_slots(events: pd.DataFrame, i: int) -> int | None:
    """The parallel slots setting ``i`` ran with, as its check found them (None when unknown)."""
    got = events_of(events, SettingsConfirmed)
    got = got[got["config_index"] == i]["total_slots"].dropna()
    return int(got.iloc[-1]) if len(got) and got.iloc[-1] > 0 else None


def closed_capacity(df: pd.DataFrame, i: int, slo: Slo) -> tuple[float, float, int]:
    """What setting ``i`` served in its closed loop at the most clients: requests/s, requests/s inside the SLOs
    (goodput), and that client count."""
    if df.empty or "mode" not in df:
        return math.nan, math.nan, 0
    closed = S.last_attempt(df[(df["mode"] == "closed") & (df["config_index"] == i)])
    if closed.empty:
        return math.nan, math.nan, 0
    top = int(closed["concurrency"].max())
    g = closed[closed["concurrency"] == top]
    return S.request_rate(g), S.goodput(g, ttft_s=slo.ttft_s, tpot_s=slo.tpot_s, e2e_s=slo.e2e_s), top


def judge_rate(df: pd.DataFrame, i: int, rate: float, slo: Slo,
               slots: int | None = None) -> tuple[str, S.Trend, str]:
    """The verdict on setting ``i`` at ``rate`` (its longest series, :func:`rate_verdict`), its trend, and why the
    open and the closed loop can't both be read ("" when they can; the verdict is then :data:`CANT_TELL`)."""
    rows = _rate_rows(df, i, rate)
    verdict, tr = rate_verdict(rows, slo, slots)
    clash = _contradiction(df, i, rate, slo, rows, verdict)
    return (CANT_TELL if clash else verdict), tr, clash


def _contradiction(df: pd.DataFrame, i: int, rate: float, slo: Slo, rows: pd.DataFrame, verdict: str) -> str:
    """Why the open loop at ``rate`` and the closed loop can't both be read, or "": the open loop calls the rate
    not sustained though it is at most 0.9× what the same setting served in its closed loop — inside the SLOs when
    the open loop missed them, at all when its trend says the server fell behind. A server that serves R req/s to
    its clients, each waiting its turn, does not fail at 0.9 R offered on a schedule."""
    if verdict != NOT_SUSTAINED or not len(rows):
        return ""
    served, good, clients = closed_capacity(df, i, slo)
    missed = float(meets_slo(rows, slo).mean()) < SUSTAINED_SHARE
    ref = good if missed else served
    if not (ref > 0 and rate <= KEPT_UP * ref):
        return ""
    said = (f"only {fmt.pct(float(meets_slo(rows, slo).mean()))} of its requests met the SLOs" if missed else
            "the server fell behind by its own completions")
    what = "inside the SLOs" if missed else "in all"
    return (f"{said} at {fmt.number(rate)} req/s, while its closed loop served {fmt.number(ref)} req/s {what} to "
            f"{clients} clients: both can't hold, so at this n that rate's verdict is not read ({len(rows)} requests; "
            "a busy machine or a burst of arrivals can do this, and a longer series would settle it)")


def series_seed(seed: int, series: str) -> int:
    """Each series its own arrivals: one seed for all would give every rate the same random pattern, so their
    errors (a realised rate 1.2× the offered one, say) would repeat across the whole sweep."""
    return zlib.crc32(f"{seed}/{series}".encode())


def slo_text(slo: dict) -> str:
    """'TTFT ≤ 1.50 s and TPOT ≤ 100 ms': the SLOs set, in words."""
    parts = [f"{name} ≤ {fmt.duration(slo[k])}" for k, name in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"),
                                                                   ("e2e_s", "e2e")) if slo.get(k) is not None]
    return " and ".join(parts) or "no SLO (every successful request counts)"


def _workload(c: ConfigTuningParams, **extra: Any) -> dict[str, Any]:
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
    for (i, conc), g_all in closed.groupby(["config_index", "concurrency"]) if len(closed) else ():
        chk = sc.get(g_all["series"].iloc[0], {}) if "series" in g_all else {}
        g = measured(g_all)
        if g.empty:
            rows.append({"config_index": i, "config": g_all["config"].iloc[0], "concurrency": conc, "n": 0,
                         "failed": len(g_all), "client_check": S.client_cell(chk), "client_bound": False,
                         "steady_window": bool(chk.get("steady", False))})
            continue
        steady = S.in_window(g, chk)
        burst = S.burst(g)
        cfg = g["config"].iloc[0]
        where = {"setting": cfg, "clients": int(conc)}
        wl = _workload(c, clients=int(conc))
        steady_all = S.in_window(g_all, chk)
        ttft_cens = S.censored(steady_all, "ttft_s")
        tput = S.throughput(g, chk)
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
        good = S.goodput(g_all, ttft_s=slo.ttft_s, tpot_s=slo.tpot_s, e2e_s=slo.e2e_s)
        figs.add(F.from_estimate("config_tuning", "goodput", stats.Estimate("goodput", good, math.nan, math.nan,
                                                                            len(g_all), method="one series"),
                                 where=where, workload={**wl, **slo.model_dump()}))
        rss = g["res_server_rss_bytes_max"].max() if "res_server_rss_bytes_max" in g else np.nan
        figs.add(F.reading("config_tuning", "peak_rss", rss, where=where, note="largest sample over the series"))
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
        ck = checks[checks["config_index"] == i].iloc[0] if len(checks) and (checks["config_index"] == i).any() else None
        ttft50 = f_ttft.estimate if f_ttft else est([])
        tp = f_tput.estimate if f_tput else tput
        itl = est(per_request_itl(steady, "median"))
        rows.append({"config_index": i, "config": cfg, "concurrency": conc, "n": len(steady), "n_series": len(g),
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
                     "total_slots": None if ck is None else ck.get("total_slots")})
    table = pd.DataFrame(rows)
    rates = rate_table(df, sc, slo, {int(i): setting_slots(ev, int(i)) for i in df["config_index"].dropna().unique()}
                       if len(df) and "config_index" in df else None)
    for _, r in rates.iterrows():
        where = {"setting": r["config"], "rate_rps": f"{r['rate_rps']:g}"}
        g_all = _rate_rows(df, r["config_index"], r["rate_rps"])
        wl = _workload(c, rate_rps=float(r["rate_rps"]), arrivals=c.arrivals)
        figs.add(F.per_request("config_tuning", "ttft_sched_p99", g_all, lambda x: S.censored(x, "ttft_sched_s"),
                               where=where, workload={**wl, **slo.model_dump()}))
        figs.add(F.failed_share("config_tuning", g_all, where=where, workload=wl))
        series_name = g_all["series"].iloc[0] if len(g_all) and "series" in g_all else None
        if series_name in sres:
            load_rows.append({"config": r["config"], "load": f"{r['rate_rps']:g} req/s offered",
                              **S.load_row(sres[series_name], g_all)})
    if len(rates):
        for cfg, g in rates.groupby("config", sort=False):
            okr = g[g["sustained"]]
            if len(okr):
                top = float(okr["rate_rps"].max())
                bound = bool((g["rate_rps"] > top).any())
                figs.add(F.reading("config_tuning", "sustained_rate", top, where={"setting": cfg},
                                   note=f"of {len(g)} rates tried" + ("" if bound else
                                                                      "; a lower bound: every rate tried was sustained")))
    best_ = best(table, figs)
    _mark_headlines(figs, best_)
    _pairs(figs, table, best_)
    retries = int(df["stale_retry"].astype("boolean").fillna(False).astype(bool).sum()) if len(df) and "stale_retry" in df else 0
    return ConfigTuningResult("config_tuning", figs, df, ctx.store.manifest(), failures(df), table=table,
                              rates=rates, checks=checks, best=best_, slo=slo.model_dump(),
                              device=last_of(ev, DeviceFound), retries=retries,
                              clients=S.client_table(ev, df), load=pd.DataFrame(load_rows))


def _mark_headlines(figs: FigureSet, b: dict[str, dict]) -> None:
    """The index shows the best setting's figures: throughput at the most clients, TTFT at the fewest."""
    for obj, tag, name in (("throughput", "throughput", "best throughput"), ("latency", "ttft", "best latency")):
        if obj in b:
            f = figs.get(f"config_tuning/{tag}/{b[obj]['config']}/{b[obj]['at_concurrency']}")
            if f is not None:  # "best" only where the data call it best
                f.headline = name if b[obj]["claim"].called else name.replace("best", "leading")


def _rate_rows(df: pd.DataFrame, i: int, rate: float) -> pd.DataFrame:
    """The requests of the longest series at this rate (each longer one was run because a shorter one could not
    tell), its last attempt."""
    g = df[(df["mode"] == "open") & (df["config_index"] == i) & (df["rate_rps"] == rate)]
    if "series" in g and len(g) and g["series"].nunique() > 1:
        g = g[g["series"] == g.groupby("series").size().idxmax()]
    return g[g["attempt"] == g["attempt"].max()] if "attempt" in g and len(g) else g


def rate_table(df: pd.DataFrame, sc: dict[str, dict], slo, slots: dict[int, int | None] | None = None) -> pd.DataFrame:
    """Open-loop sweep: per setting and offered rate, what was achieved, latency from the send and from
    the schedule (the one a user waits; failed requests count as beyond the limit), and goodput: requests/s
    meeting the SLOs, timed from the schedule. Empty when the parameters have no sweep."""
    if df.empty or "mode" not in df or "rate_rps" not in df or not (df["mode"] == "open").any():
        return pd.DataFrame()
    rows = []
    for (i, rate), _ in df[df["mode"] == "open"].groupby(["config_index", "rate_rps"]):
        g_all = _rate_rows(df, i, rate)
        chk = sc.get(g_all["series"].iloc[0], {})
        g = measured(g_all)
        good_mask = meets_slo(g_all, slo)
        verdict, tr, clash = judge_rate(df, i, rate, slo, (slots or {}).get(int(i)))
        t50 = est(col(g, "ttft_s"))
        rows.append({"config_index": i, "config": g_all["config"].iloc[0], "rate_rps": rate, "n": len(g_all),
                     "failed": int(len(g_all) - len(g)), "achieved_rate_rps": chk.get("achieved_rate_rps", math.nan),
                     "scheduled_rate_rps": chk.get("scheduled_rate_rps", math.nan),
                     "achieved_concurrency": chk.get("achieved_concurrency", math.nan),
                     "ttft_p50_s": t50.value, "ttft_p50_lo": t50.lo, "ttft_p50_hi": t50.hi,
                     "ttft_p99": ci_cell(est(S.censored(g_all, "ttft_s"), "p99")),
                     "ttft_sched_p99": ci_cell(est(S.censored(g_all, "ttft_sched_s"), "p99")),
                     "e2e_sched_p99": ci_cell(est(S.censored(g_all, "e2e_sched_s"), "p99")),
                     "send_lag_p99_s": g_all["send_lag_s"].quantile(0.99) if "send_lag_s" in g_all else math.nan,
                     "goodput_rps": S.goodput(g_all, ttft_s=slo.ttft_s, tpot_s=slo.tpot_s, e2e_s=slo.e2e_s,
                                              ttft_column="ttft_sched_s", e2e_column="e2e_sched_s"),
                     "meets_slo_share": float(good_mask.mean()), "kept_up": tr.kept_up,
                     "kept_up_text": _trend_text(tr), "trend_method": tr.method, "verdict": verdict,
                     "sustained": verdict == SUSTAINED,
                     "not_sustained": verdict == NOT_SUSTAINED, "contradiction": clash,
                     "client_check": S.client_cell(chk), "client_bound": bool(chk.get("client_client_bound", False))})
    return pd.DataFrame(rows)


def latency_display(res: ConfigTuningResult) -> pd.DataFrame:
    """Latency per setting and client count, readable: TTFT p50/p90/p99, the start-up burst apart, TPOT, ITL."""
    from perfkit.report.page import format_table

    t = res.table
    if t.empty:
        return t
    return format_table(t, {"config": "setting", "concurrency": "clients", "n": "n (steady)",
                            "ttft_p50_s": "TTFT p50", "ttft_p90": "TTFT p90", "ttft_p99": "TTFT p99",
                            "burst_ttft_p50": "start-up burst TTFT p50", "tpot_p50": "TPOT p50", "itl_p50": "ITL p50"},
                        ci={"ttft_p50_s": ("ttft_p50_lo", "ttft_p50_hi")}, units={"ttft_p50_s": SECONDS})


def throughput_display(res: ConfigTuningResult) -> pd.DataFrame:
    """Throughput (the figure, with its CI and n windows), requests/s, goodput, achieved concurrency, memory."""
    from perfkit.report.page import format_table

    t = res.table
    if t.empty:
        return t
    return format_table(t, {"config": "setting", "concurrency": "clients", "throughput_text": "output throughput",
                            "requests_s": "request rate", "goodput_rps": "goodput",
                            "concurrency_achieved": "achieved clients", "server_rss_max_bytes": "peak RSS",
                            "prompt_cached_share": "prompt from the server's cache",
                            "setting_applied": "all confirmed", "total_slots": "slots", "failed": "failed"},
                        units={"requests_s": REQUESTS_PER_S, "goodput_rps": REQUESTS_PER_S,
                               "server_rss_max_bytes": BYTES, "prompt_cached_share": SHARE})


def _cached_share(rows: pd.DataFrame) -> float:
    """Share of the series' prompt tokens the server served from its cache, by its own counts (NaN where it does
    not count them): synthetic prompts keep it to the chat template's head; a workload's shared prefixes and
    histories raise it."""
    if "cached_tokens" not in rows or "prompt_tokens" not in rows:
        return math.nan
    r = rows[rows["cached_tokens"].notna() & rows["prompt_tokens"].notna()]
    total = float(pd.to_numeric(r["prompt_tokens"], errors="coerce").sum())
    return float(pd.to_numeric(r["cached_tokens"], errors="coerce").sum()) / total if total > 0 else math.nan


def load_display(res: ConfigTuningResult) -> pd.DataFrame:
    """What the server and its host did under each load (see :func:`perfkit.report.load.load_display`)."""
    return load.load_display(res.load)


def load_sources(res: ConfigTuningResult) -> str:
    return load.load_sources(res.load, res.manifest)


def _trend_text(tr: S.Trend) -> str:
    """'0.62 [0.41, 0.80]: fell behind'."""
    if not math.isfinite(tr.kept_up):
        return "too few requests for a trend"
    if tr.method.startswith(S.SATURATED):
        if not math.isfinite(tr.lo):
            return "no request waited for a slot: kept up"
        return (f"{fmt.number(tr.lo)}–{fmt.number(tr.hi)} (capacity while every slot was busy ÷ rate, "
                f"{S.KEPT_UP_CAPACITY_CONFIDENCE:.0%}–{S.TREND_CONFIDENCE:.0%} bounds): {tr.verdict}")
    ci = f" [{fmt.number(tr.lo)}, {fmt.number(tr.hi)}]" if math.isfinite(tr.lo) and tr.hi > tr.lo else ""
    return f"{fmt.number(tr.kept_up)}{ci}: {tr.verdict}"


def rates_display(res: ConfigTuningResult) -> pd.DataFrame:
    from perfkit.report.page import format_table

    rt = res.rates
    if rt.empty:
        return rt
    rates = ("rate_rps", "scheduled_rate_rps", "achieved_rate_rps", "goodput_rps")
    return format_table(rt, {"config": "setting", "rate_rps": "offered rate",
                             "scheduled_rate_rps": "this series' scheduled rate", "achieved_rate_rps": "achieved rate",
                             "achieved_concurrency": "in flight", "n": "n", "failed": "failed",
                             "ttft_sched_p99": "TTFT p99 from schedule", "e2e_sched_p99": "e2e p99 from schedule",
                             "goodput_rps": "goodput", "meets_slo_share": "share in SLO",
                             "kept_up_text": "did the server keep up? (capacity ÷ rate)",
                             "verdict": "sustained?"},
                        units={**dict.fromkeys(rates, REQUESTS_PER_S), "meets_slo_share": SHARE})


def goodput_chart(res: ConfigTuningResult):
    """Goodput against offered rate per setting (one line each), and the offered rate itself for reference."""
    from perfkit.report.charts import Chart, Series

    rt = res.rates.sort_values("rate_rps")
    series = [Series(cfg, [fmt.number(r) for r in g["rate_rps"]], [REQUESTS_PER_S.plot(v) for v in g["goodput_rps"]],
                     text=[f"goodput {REQUESTS_PER_S.text(v)} of {fmt.number(r)} offered; {SHARE.text(s)} in SLO"
                           for v, r, s in zip(g["goodput_rps"], g["rate_rps"], g["meets_slo_share"])])
              for cfg, g in rt.groupby("config", sort=False)]
    return Chart("line", "Goodput against offered rate (SLOs from the parameters)",
                 REQUESTS_PER_S.axis_label("goodput: requests meeting the SLOs"),
                 "Requests per second that met the SLOs at each offered open-loop rate, one line per setting", series,
                 xlabel=REQUESTS_PER_S.axis_label("offered rate"))


def settings_table(res: ConfigTuningResult) -> pd.DataFrame:
    """Per configuration and setting: confirmed / not applied / unverifiable, the effective value and the evidence."""
    rows = []
    for _, c in res.checks.iterrows():
        for name, chk in (c.get("checks") or {}).items():
            rows.append({"configuration": c["config"], "setting": name, "wanted": chk.get("wanted"),
                         "status": chk.get("status"), "in effect": chk.get("effective") or "—",
                         "evidence": chk.get("evidence", "")})
    return pd.DataFrame(rows).set_index(["configuration", "setting"]) if rows else pd.DataFrame()


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
    figs.pair(F.Pair("highest sustained request rate", f"config_tuning/sustained_rate/{base}",
                     f"config_tuning/sustained_rate/{after}", f"first setting ({base})", f"leading setting ({after})"))


def _replicated(figs) -> bool:
    """Runs are the unit when every candidate has a value from ≥ 3 replicate runs."""
    figs = list(figs)
    return bool(figs) and all(len(f.replicates) >= MIN_REPLICATES for f in figs)


def baseline_vs_best(res: ConfigTuningResult) -> pd.DataFrame:
    """The first setting (the baseline) against the leader per objective: the row of the best-setting claim that
    compares them (so this verdict and the claim can't disagree). Empty when the baseline leads."""
    t, b = res.table, res.best
    if t.empty or not b:
        return pd.DataFrame()
    base = t.sort_values("config_index")["config"].iloc[0]
    rows = []
    for obj, name in (("latency", "TTFT at concurrency {}"), ("throughput", "output throughput at concurrency {}")):
        x = b.get(obj)
        if x and x["config"] != base and base in x["claim"].rows:
            rows.append((name.format(x["at_concurrency"]), x["config"], x["claim"].rows[base]))
    return pd.DataFrame([{"objective": o, "baseline": base, "best": cfg, "baseline value": r.before,
                          "best value": r.after, "best / baseline": r.ratio_text, "change": r.change_text,
                          "verdict": r.verdict, "why": r.reason} for o, cfg, r in rows]).set_index("objective") \
        if rows else pd.DataFrame()


def _rate_conclusion(rt: pd.DataFrame, slo: dict) -> str:
    """Each setting's limit as the sweep bracketed it: the highest rate shown sustained and the lowest above it
    shown not sustained; a lower or upper bound where the rates tried did not bracket it; the rates whose trend
    could not tell either way, inside the bracket, named."""
    parts = []
    order = ["config_index", "rate_rps"] if "config_index" in rt else ["rate_rps"]  # settings as the parameters list them
    for cfg, g in rt.sort_values(order).groupby("config", sort=False):
        ok = g["sustained"].astype(bool)
        no = g["not_sustained"].astype(bool) if "not_sustained" in g else ~ok
        unsure = g[~ok & ~no]
        top = g[ok]["rate_rps"].max() if ok.any() else None
        above = g[no & (g["rate_rps"] > top)] if top is not None else g[no]
        clash = unsure[unsure["contradiction"].astype(bool)] if "contradiction" in unsure else unsure.iloc[0:0]
        vague = unsure.drop(clash.index)
        cant = "".join(f"; at {fmt.number(r['rate_rps'])} req/s {r['contradiction']}" for _, r in clash.iterrows())
        if len(vague):
            cant += (f"; at {', '.join(fmt.number(r) for r in vague['rate_rps'])} req/s the data could not "
                     f"tell whether the server kept up (measured up to {int(vague['n'].max())} requests)")
        if top is None and not len(above):
            parts.append(f"{cfg}: no rate tried could be told sustained or not{cant}")
        elif top is None:
            parts.append(f"{cfg}: below {fmt.number(above['rate_rps'].min())} req/s (none of "
                         f"{', '.join(fmt.number(r) for r in g['rate_rps'])} req/s was sustained){cant}")
        elif len(above):
            nxt = above.iloc[0]
            why = (f"{fmt.pct(nxt['meets_slo_share'])} inside the SLOs" if nxt["meets_slo_share"] < SUSTAINED_SHARE
                   else f"the server fell behind: while all its slots were busy it completed about "
                        f"{fmt.number(nxt['kept_up'])}× the rate offered, and even the top of that estimate's "
                        f"{S.TREND_CONFIDENCE:.0%} interval is below the rate"
                   if str(nxt.get("trend_method", "")).startswith(S.SATURATED) else
                   f"the server fell behind: its latency grew through the series, as a queue does when the "
                   f"server serves about {fmt.number(nxt['kept_up'])}× the rate offered, and even the top of "
                   "that estimate's interval is below 0.9")
            parts.append(f"{cfg}: {fmt.number(top)} req/s sustained, {fmt.number(nxt['rate_rps'])} req/s not ({why})"
                         + cant)
        else:
            parts.append(f"{cfg}: at least {fmt.number(top)} req/s (every rate tried was sustained or could not be "
                         f"told; its limit lies above: add higher rates or rate_search_steps){cant}"
                         if len(unsure) else
                         f"{cfg}: at least {fmt.number(top)} req/s (every rate tried was sustained; its limit lies "
                         "above: add higher rates or rate_search_steps)")
    saturated = "trend_method" in rt and rt["trend_method"].astype(str).str.startswith(S.SATURATED).all()
    kept = ("the server kept up: its capacity while every slot was busy (completions ÷ that time, an exact interval) "
            f"reaches the rate at the bottom of its {S.KEPT_UP_CAPACITY_CONFIDENCE:.0%} interval, or no request ever "
            f"waited for a slot; not sustained when the share is lower or the top of the capacity's "
            f"{S.TREND_CONFIDENCE:.0%} interval is below the rate" if saturated else
            f"its latency does not grow through the series faster than a server at {KEPT_UP:.0%} of the rate would "
            f"make it; not sustained when the share is lower or the trend's {S.TREND_CONFIDENCE:.0%} interval shows "
            "such growth")
    return (f"- **Open-loop sweep** (a rate is sustained when ≥ {SUSTAINED_SHARE:.0%} of its requests meet "
            f"{slo_text(slo)}, latency timed from the schedule, failed requests counted as misses, and {kept}; "
            f"{_n_text(rt)}): "
            + "; ".join(parts) + ".")


def _n_text(rt: pd.DataFrame) -> str:
    """How long each rate ran, which bounds what the sweep can see: a queue that grows too slowly to break the
    SLOs within that many requests passes."""
    n = sorted({int(x) for x in rt["n"].dropna()}) if "n" in rt else []
    what = f"{n[0]}" if len(n) == 1 else f"{n[0]}–{n[-1]}" if n else "?"
    return f"{what} requests per rate: a queue too slow to break the SLOs within them is not seen"


def _closed_span_s(trials: pd.DataFrame) -> float:
    """Seconds the closed-loop series took, all settings together (what "more requests" would cost again)."""
    if trials.empty or "mode" not in trials:
        return math.nan
    closed = S.last_attempt(trials[trials["mode"] == "closed"])
    if closed.empty:
        return math.nan
    spans = closed.groupby("series").apply(lambda g: (g["t_end_ns"].max() - g["t_send_ns"].min()) * 1e-9,
                                           include_groups=False)
    return float(spans.sum())


def answer(res: ConfigTuningResult) -> list[str]:
    """Which setting to run and how much load it holds, as the data support it (at most three sentences)."""
    b, t = res.best, res.table
    if not b or t.empty:
        return []
    base = t.sort_values("config_index")["config"].iloc[0]
    out = []
    T, L = b.get("throughput"), b.get("latency")
    pick = None
    for x, what in ((T, "throughput"), (L, "TTFT")):
        if x and x["claim"].called:
            f = res.figures.get(f"config_tuning/{'throughput' if what == 'throughput' else 'ttft'}/{x['config']}/"
                                f"{x['at_concurrency']}")
            vs = x["claim"].rows.get(base)
            gain = f", {vs.change_text} against the baseline **{base}**" if vs is not None else " (it is the baseline)"
            out.append(f"Run **{x['config']}** for {what}: {f.link() if f else fmt.NA} at {x['at_concurrency']} "
                       f"client{'s' if x['at_concurrency'] != 1 else ''}{gain}.")
            pick = pick or x["config"]
    if not out:
        span, target, parts = _closed_span_s(res.trials), f"{TARGET_EFFECT:.0%}", []
        for x, what in ((T, "throughput"), (L, "TTFT")):
            if not x:
                continue
            need = x["claim"].more_needed()
            if not math.isfinite(need):
                parts.append(f"for {what}, more requests per series would separate them")
            elif need <= 1.05:
                parts.append(f"for {what}, a {target} difference would have been separated, so they differ by less")
            else:
                parts.append(f"for {what}, about {math.ceil(need)}× the requests"
                             + (f" (≈ {fmt.duration(span * (need - 1))} more measuring)" if math.isfinite(span) else "")
                             + f" would separate a {target} difference")
        out.append("At this n no setting is separable from the others" + (": " + "; ".join(parts) if parts else "")
                   + ".")
    rt = res.rates
    who = pick or base
    if len(rt) and (rt["config"] == who).any():
        g = rt[rt["config"] == who].sort_values("rate_rps")
        ok, no = g[g["sustained"].astype(bool)], g[g["not_sustained"].astype(bool)] if "not_sustained" in g else g.iloc[0:0]
        top = ok["rate_rps"].max() if len(ok) else None
        f = res.figures.get(f"config_tuning/sustained_rate/{who}")
        above = no[no["rate_rps"] > top]["rate_rps"].min() if top is not None and len(no) else None
        slo = slo_text(res.slo or {})
        if top is not None:
            out.append(f"**{who}** holds {f.link() if f else REQUESTS_PER_S.text(top)} inside {slo}"
                       + (f" and not {REQUESTS_PER_S.text(above)}." if above is not None and math.isfinite(above)
                          else " (its limit lies above the rates tried)."))
        elif len(no):
            out.append(f"**{who}** held none of the rates tried inside {slo} (the lowest: "
                       f"{REQUESTS_PER_S.text(no['rate_rps'].min())}).")
    bad = [c for _, c in res.checks.iterrows() if c.get("all_applied") is False] if len(res.checks) else []
    if bad:
        out.append(f"⚠ {len(bad)} setting{'s were' if len(bad) != 1 else ' was'} not applied as asked (see below).")
    return out


def conclusions(res: ConfigTuningResult) -> str:
    b, t = res.best, res.table
    ev = res.device
    lines = (offload_warnings(pd.DataFrame([{"model": ev.get("model"), **ev}])) if ev else []) + [
        answer_block(answer(res), res.failures) + "### What the measurements say"]
    if not b:
        return "\n".join(lines + ["- No successful trials: nothing to conclude.", res.failures])
    L, T, M = b.get("latency"), b.get("throughput"), b["memory"]
    if L:
        lines.append(f"- **Latency** (TTFT p50 at concurrency {L['at_concurrency']}, steady-state window): "
                     + L["claim"].sentence("TTFT") + f" Its TTFT: {L['text']}.")
    if T:
        lines.append(f"- **Throughput** (output tok/s at concurrency {T['at_concurrency']}): "
                     + T["claim"].sentence("throughput") + f" Its throughput: {T['text']}.")
    for obj, r in baseline_vs_best(res).iterrows():
        lines.append(f"- **Baseline vs the leader** ({obj}): the first setting **{r['baseline']}** {r['baseline value']} → "
                     f"**{r['best']}** {r['best value']}, {r['best / baseline']}: {r['verdict']} ({r['why']}).")
    T = T or L
    slo = res.slo or {}
    g = t[(t["concurrency"] == T["at_concurrency"]) & (t["n"] > 0)].sort_values("goodput_rps", ascending=False)
    if len(g):
        lines.append(f"- **Goodput** at concurrency {T['at_concurrency']} in the closed loop (requests/s meeting "
                     f"{slo_text(slo)}; one series each, no CI, so no ranking): "
                     + "; ".join(f"**{r['config']}** {fmt.number(r['goodput_rps'])} of {fmt.number(r['requests_s'])}"
                                 for _, r in g.iterrows()) + ".")
    if not math.isnan(M["value"]):
        lines.append(f"- **Memory**: lowest peak server RSS with **{M['config']}**, {BYTES.text(M['value'])} "
                     f"(the largest sample over {M['n']} requests' windows; one reading per setting, no CI).")
    moved = t[t.get("client_moves", pd.Series(False, index=t.index)).astype("boolean").fillna(False).astype(bool)] if len(t) else t
    if len(moved):
        lines.append(f"- ⚠ **The client's own timing error can move figures** in {len(moved)} series: "
                     f"{moved['client_check'].iloc[0]}.")
    bound = t[t["client_bound"] & ~t.get("client_moves", pd.Series(False, index=t.index)).astype("boolean").fillna(False).astype(bool)] \
        if len(t) else t
    if len(bound):
        lines.append(f"- The client was busy in {len(bound)} series ({bound['client_check'].iloc[0]}), too little to "
                     "change those figures.")
    steady = t[t["steady_window"]] if "steady_window" in t else t.iloc[0:0]
    low = steady[steady["concurrency_achieved"] < 0.9 * steady["concurrency"]]
    if len(low):
        lines.append(f"- Achieved concurrency in the steady-state window fell below 90% of the nominal one in "
                     f"{len(low)} series (e.g. {fmt.number(low['concurrency_achieved'].iloc[0])} of "
                     f"{int(low['concurrency'].iloc[0])}): gaps between a client's requests lowered the offered load.")
    if len(t) > len(steady):
        lines.append(f"- {len(t) - len(steady)} series had too few requests per client for a steady-state window; "
                     "their figures span the whole series, start-up burst and tail included.")
    if res.retries:
        lines.append(f"- {res.retries} request(s) were resent once on a fresh connection because the server had "
                     "closed the kept-alive one before answering; each kept its first attempt's error.")
    rt = res.rates
    if len(rt):
        lines.append(_rate_conclusion(rt, slo))
    else:
        lines.append("- No open-loop sweep in these parameters (`rates_rps` is empty): the sustained request rate "
                     "was not measured.")
    st = settings_table(res)
    if len(st):
        bad = st[st["status"] == "not applied"]
        unv = st[st["status"] == "unverifiable"]
        if len(bad):
            lines.append("- ⚠ **Settings not applied**: " + "; ".join(
                f"{cfg}: {name} wanted {r['wanted']}, the server runs {r['in effect']} ({r['evidence']})"
                for (cfg, name), r in bad.iterrows()) + ". Results under those labels are for what the server ran.")
        if len(unv):
            lines.append(f"- {len(unv)} setting checks are unverifiable: {unv['evidence'].iloc[0]}.")
        if not len(bad) and not len(unv):
            lines.append("- Every setting was confirmed by the server's own evidence after each restart.")
    for w in (noisy_note(res.trials), negative_overhead_note(res.trials)):
        if w:
            lines.append("- " + w)
    if res.failures:
        lines.append("- " + res.failures)
    lines += ["", method_note(res.manifest, "Latency percentiles over the requests sent inside each series' "
                                            "steady-state window (closed loop: from every stream's first response to "
                                            "the first stream running out of work; the start-up burst is shown "
                                            "apart); TTFT p99 counts failed requests as beyond the limit. Throughput: "
                                            "server-counted output tokens in that window, CI by batch means over 5 "
                                            "windows. Client: one asyncio loop, connections reused, connection set-up "
                                            "outside TTFT; each series checks the client itself.")]
    return "\n".join(lines)
