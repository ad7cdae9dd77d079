"""The workload study: how the assistant behaves with N users chatting. Chat sessions (conversations whose later
turns carry the history the server answered) at several user counts × server settings: TTFT by turn index (does
the prompt cache keep later turns fast?), the prompt share the server served from its cache per turn, the
tokens in flight, the server's memory and queue, conversations that outgrow the context, and any model reload
the server did during a session."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pydantic import Field, field_validator, model_validator

from perfkit.analysis import figures as F, series as S, toolturns
from perfkit.analysis.figures import FigureSet
from perfkit.analysis.requests import attempted, ci_cell, col, est, failures, measured, thought_without_answer
from perfkit.analysis.verdicts import compare_samples
from perfkit.client.backends import Sampling
from perfkit.core import fmt
from perfkit.core.events import SeriesDone, WorkloadUsed, events_of, last_of
from perfkit.core.units import RATIO, SECONDS
from perfkit.core.schema import MAX_REQUESTS, MAX_TOKENS, Slo, Strict, concurrency_list, settings_list
from perfkit.core.settings import most_alike, settings_label, think_of
from perfkit.report import load
from perfkit.report.answer import answer_block
from perfkit.studies.base import Study, StudyContext, StudyResult, settings_preflight
from perfkit.studies.registry import register
from perfkit.workloads import WorkloadParams
from perfkit.workloads.spec import resolve_file

RELOAD_S = 0.5  # a turn whose server-reported load took longer: the model was (re)loaded during the session


def _chat() -> WorkloadParams:
    return WorkloadParams(kind="sessions", file="builtin:chat")


class WorkloadStudyParams(Strict):
    """``studies.workload``: chat sessions (``workload``, kind sessions; default: the conversations shipped with
    perfkit) at each user count of ``users`` and each server setting of ``settings``, about ``requests`` turns per
    series (whole conversations). A setting may be a request option (``think: true``): it is sent with each
    request, and the server is not restarted for it."""

    model: str
    workload: WorkloadParams = Field(default_factory=_chat)
    users: list[int] = Field(default_factory=lambda: [1, 4])
    settings: list[dict[str, Any]] = Field(default_factory=lambda: [{}], min_length=1)
    requests: int = Field(24, ge=1, le=MAX_REQUESTS, description="turns per series, about (whole conversations)")
    num_predict: int = Field(48, ge=2, le=MAX_TOKENS)
    temperature: float | None = Field(None, ge=0, le=2, description="sent with each request (0: greedy, as agents "
                                                                    "calling tools often run); default: the server's")
    slo: Slo = Field(default_factory=Slo)

    @field_validator("users")
    @classmethod
    def _users(cls, v):
        return concurrency_list(v)

    @field_validator("settings")
    @classmethod
    def _grid(cls, v):
        return settings_list(v)

    @model_validator(mode="after")
    def _sessions(self):
        if not self.workload.multi_turn:
            raise ValueError("the workload study measures chat sessions: workload kind sessions (one-shot traffic "
                             "of a dataset, a shared prefix or a trace goes through config_tuning's workload)")
        return self


@dataclass
class WorkloadResult(StudyResult):
    turns: pd.DataFrame = field(default_factory=pd.DataFrame)
    sessions: pd.DataFrame = field(default_factory=pd.DataFrame)
    load: pd.DataFrame = field(default_factory=pd.DataFrame)
    reuse_visible: bool = False
    load_visible: bool = False
    workload: dict[str, Any] = field(default_factory=dict)
    events: pd.DataFrame = field(default_factory=pd.DataFrame)
    tools: pd.DataFrame = field(default_factory=pd.DataFrame)  # per setting, users and turn kind (question, tool)


@register
class WorkloadStudy(Study):
    name = "workload"
    title = "Chat sessions: N users talking to the assistant"
    question = "How does the assistant behave with N users chatting: do later turns stay fast, and what does it hold?"
    Params = WorkloadStudyParams
    order = 45

    def preflight(self, params: Any) -> list[str]:
        return settings_preflight(params, "studies.workload.settings", params.studies.workload.settings)

    def measure(self, ctx: StudyContext) -> None:
        c = ctx.cfg
        with ctx.session(c.settings[0], server_metrics=True) as s:
            for i, setting in enumerate(c.settings):
                if i:
                    s.restart(setting)
                wl = ctx.workload(c.workload, s, c.model)
                path = resolve_file(c.workload.file, wl.base_dir)
                ctx.store.emit(WorkloadUsed(config_index=i, config=settings_label(setting), file=str(path),
                                            file_sha256=_sha256(path), context_tokens=wl.context_tokens,
                                            load_seen_per_request=s.backend.capabilities.load_seen_per_request,
                                            cached_tokens_counted=s.backend.capabilities.cached_tokens))
                tags = {"config": settings_label(setting), "config_index": i}
                for u in c.users:
                    s.runner.sessions(c.model, u, c.requests, series=f"set{i}/u{u}", workload=wl,
                                      sampling=Sampling(c.num_predict, temperature=c.temperature,
                                                        think=think_of(setting)), tags=tags)

    def analyze(self, ctx: StudyContext) -> WorkloadResult:
        return analyze(ctx)

    def conclusions(self, result: WorkloadResult) -> str:
        return conclusions(result)


def _sha256(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _reuse(rows: pd.DataFrame) -> pd.Series:
    """Cached ÷ prompt tokens of each request, as the server counted them (NaN where it did not say)."""
    cached, prompt = col(rows, "cached_tokens"), col(rows, "prompt_tokens")
    return (pd.to_numeric(cached, errors="coerce") / pd.to_numeric(prompt, errors="coerce")).where(prompt > 0)


def in_flight(rows: pd.DataFrame) -> tuple[float, float]:
    """Tokens held by the requests in flight (prompt + output, the server's counts), time-averaged over the series
    and at most: what the KV cache must hold."""
    r = rows.dropna(subset=["t_send_ns", "t_end_ns"]) if {"t_send_ns", "t_end_ns"} <= set(rows) else rows.iloc[0:0]
    if r.empty:
        return math.nan, math.nan
    tok = pd.to_numeric(col(r, "prompt_tokens"), errors="coerce").fillna(0) + \
        pd.to_numeric(col(r, "output_tokens"), errors="coerce").fillna(0)
    t0, t1 = float(r["t_send_ns"].min()), float(r["t_end_ns"].max())
    if t1 <= t0:
        return math.nan, math.nan
    dur = (r["t_end_ns"] - r["t_send_ns"]).astype(float)
    mean = float((tok * dur).sum() / (t1 - t0))
    events = sorted([(float(a), float(k)) for a, k in zip(r["t_send_ns"], tok)] +
                    [(float(b), -float(k)) for b, k in zip(r["t_end_ns"], tok)], key=lambda e: (e[0], e[1]))
    level = peak = 0.0
    for _, d in events:
        level += d
        peak = max(peak, level)
    return mean, peak


def analyze(ctx: StudyContext) -> WorkloadResult:
    c = ctx.cfg
    df = S.last_attempt(ctx.store.trials())
    ev = ctx.store.events()
    winfo = last_of(ev, WorkloadUsed) or {}
    reuse_visible = bool(winfo.get("cached_tokens_counted", False))
    load_visible = bool(winfo.get("load_seen_per_request", False))
    ok = measured(df) if len(df) else df
    sres = S.series_resources(ev)
    log_counts = _log_counts(ctx, ev, df)
    figs, turn_rows, sess_rows, load_rows = FigureSet(), [], [], []
    wl_fig = {"workload": c.workload.model_dump(mode="json", exclude_defaults=True), "num_predict": c.num_predict,
              "requests": c.requests}
    for (i, users), g_all in (df.groupby(["config_index", "users"], sort=True) if len(df) else ()):
        g = ok[(ok["config_index"] == i) & (ok["users"] == users)] if len(ok) else ok
        cfg = g_all["config"].iloc[0]
        every = attempted(g_all)
        figs.add(F.failed_share("workload", every, where={"setting": cfg, "users": int(users)},
                                workload={**wl_fig, "users": int(users)}))
        figs.add(F.per_request("workload", "ttft_p99", every, lambda r: S.censored(r, "ttft_s"),
                               where={"setting": cfg, "users": int(users)}, workload={**wl_fig, "users": int(users)}))
        if toolturns.has_tools(g_all):
            toolturns.add_figures(figs, "workload", g, every, {"setting": cfg, "users": int(users)},
                                  {**wl_fig, "users": int(users)})
        if pd.to_numeric(col(g, "thinking_tokens"), errors="coerce").fillna(0).gt(0).any():
            for tag, column in (("ttfa", "ttfa_s"), ("thinking_time", "thinking_s"),
                                ("thinking_tokens", "thinking_tokens")):
                figs.add(F.per_request("workload", tag, g, column, where={"setting": cfg, "users": int(users)},
                                       workload={**wl_fig, "users": int(users)}))
        for turn, t in g.groupby("turn", sort=True):
            where = {"setting": cfg, "users": int(users), "turn": int(turn) + 1}
            figs.add(F.per_request("workload", "ttft", t, "ttft_s", where=where, workload={**wl_fig, "users": int(users)}))
            reuse = _reuse(t)
            if reuse_visible:
                figs.add(F.per_request("workload", "prefix_reuse", t, lambda r: _reuse(r), where=where,
                                       workload={**wl_fig, "users": int(users)}))
            ta = g_all[g_all["turn"] == turn]
            e_ttft = est(col(t, "ttft_s"))
            turn_rows.append({"config": cfg, "users": int(users), "turn": int(turn) + 1, "n": len(t),
                              "failed": int(len(ta) - len(t)), "ttft_p50_s": e_ttft.value, "ttft_lo": e_ttft.lo,
                              "ttft_hi": e_ttft.hi, "ttft": ci_cell(e_ttft),
                              "prompt_tokens": float(pd.to_numeric(col(t, "prompt_tokens"), errors="coerce").median()),
                              "reuse": float(reuse.median()) if reuse_visible and reuse.notna().any() else math.nan,
                              "prefill": ci_cell(est(col(t, "prefill_s"))),
                              "over_context": int(col(ta, "over_context").fillna(False).astype(bool).sum()),
                              "truncated": int(col(ta, "server_truncated").fillna(False).astype(bool).sum())})
        mean_tok, max_tok = in_flight(g)
        loads = pd.to_numeric(col(g, "load_s"), errors="coerce")
        over = g_all[col(g_all, "over_context").fillna(False).astype(bool)]
        refused = over[~over["ok"].astype(bool)] if "ok" in over else over.iloc[0:0]
        sess_rows.append({"config": cfg, "users": int(users), "conversations": int(g_all["session"].nunique())
                          if "session" in g_all else 0, "turns": len(g_all), "failed": int(len(g_all) - len(g)),
                          "turns_per_conversation": (float(g_all.groupby("session")["turn"].max().mean() + 1)
                                                     if "session" in g_all and len(g_all) else math.nan),
                          "tokens_in_flight_mean": mean_tok, "tokens_in_flight_max": max_tok,
                          "reloads": int((loads > RELOAD_S).sum()) if load_visible else None,
                          "over_context": len(over), "refused_over_context": len(refused),
                          "truncated": int(col(g_all, "server_truncated").fillna(False).astype(bool).sum()),
                          "context_tokens": winfo.get("context_tokens"),
                          **log_counts.get(g_all["series"].iloc[0], {"log": log_counts.get("", "")})})
        series = g_all["series"].iloc[0]
        if series in sres:
            load_rows.append({"config": cfg, "load": f"{int(users)} user{'s' if users != 1 else ''}",
                              **S.load_row(sres[series], attempted(g_all))})
    turns, sess = pd.DataFrame(turn_rows), pd.DataFrame(sess_rows)
    _mark_headlines(figs, turns)
    tools = toolturns.table(ok, df, ["config", "users"]) if len(df) else pd.DataFrame()
    return WorkloadResult("workload", figs, df, ctx.store.manifest(), failures(df) if len(df) else "",
                          turns=turns, sessions=sess, load=pd.DataFrame(load_rows), reuse_visible=reuse_visible,
                          load_visible=load_visible, workload=winfo, events=ev, tools=tools)


def _log_counts(ctx: StudyContext, ev: pd.DataFrame, df: pd.DataFrame) -> dict[str, Any]:
    """series → model (re)starts (runner_start) and prompt truncations the server's log shows inside the series'
    window; key "" holds why there is no log to read."""
    from perfkit.analysis.timeline import load_account

    acc = load_account(ctx.store.dir, ev, df)
    if not acc.events:
        return {"": acc.why_empty or "no server log"}
    done = events_of(ev, SeriesDone).drop_duplicates("series", keep="last")
    out: dict[str, Any] = {}
    for _, d in done.iterrows():
        inside = [e for e in acc.events if (t := acc.t_ns(e.wall_unix_s)) is not None
                  and d["t_start_ns"] <= t <= d["t_end_ns"]]
        out[d["series"]] = {
            "log_reloads": sum(e.kind == "runner_start" for e in inside),
            "log_truncations": sum(e.kind == "warning" and "truncat" in str(e.fields.get("msg", "")).lower()
                                   for e in inside),
            "log": ""}
    return out


def _mark_headlines(figs: FigureSet, turns: pd.DataFrame) -> None:
    """The index shows TTFT of the first and the last turn at the most users (of the first setting)."""
    if turns.empty:
        return
    t = turns[turns["config"] == turns["config"].iloc[0]]
    u = int(t["users"].max())
    t = t[t["users"] == u]
    enough = t[t["n"] >= MIN_TURN_N]  # a "last turn" of one long conversation says nothing of the others
    turns_ = [(int(t["turn"].min()), "first-turn TTFT")] + (
        [(int(enough["turn"].max()), "last-turn TTFT")] if len(enough) and enough["turn"].max() > t["turn"].min() else [])
    for turn, name in turns_:
        f = figs.get(f"workload/ttft/{t['config'].iloc[0]}/{u}/{turn}")
        if f is not None and not f.headline:
            f.headline = name


def turns_display(res: WorkloadResult) -> pd.DataFrame:
    """TTFT (p50, 95% CI) by setting, users and turn, with the prompt's size in server tokens, the share the server
    served from its cache, the prefill time, and turns over the context."""
    t = res.turns
    if t.empty:
        return t
    out = pd.DataFrame({"setting": t["config"], "users": t["users"], "turn": t["turn"], "n": t["n"],
                        "TTFT p50": t["ttft"],
                        "prompt tokens (p50)": [fmt.number(x) for x in t["prompt_tokens"]],
                        "from the server's cache (p50)": [fmt.pct(x) if pd.notna(x) else "not counted by this server"
                                                          for x in t["reuse"]],
                        "prefill p50": t["prefill"], "over the context": t["over_context"],
                        "failed": t["failed"]})
    return out.set_index(["setting", "users", "turn"])


def sessions_display(res: WorkloadResult) -> pd.DataFrame:
    t = res.sessions
    if t.empty:
        return t
    rows = []
    for _, r in t.iterrows():
        rows.append({"setting": r["config"], "users": r["users"], "conversations": r["conversations"],
                     "turns sent": r["turns"], "failed": r["failed"],
                     "turns per conversation": fmt.number(r["turns_per_conversation"]),
                     "tokens in flight (mean / max)": f"{fmt.number(r['tokens_in_flight_mean'])} / "
                                                      f"{fmt.number(r['tokens_in_flight_max'])}",
                     "model reloads": _reload_cell(r),
                     "over the context": (f"{r['over_context']} (refused {r['refused_over_context']}, truncated "
                                          f"{r['truncated']})" if r["over_context"] else "0"),
                     "context per request": (fmt.number(r["context_tokens"]) + " tokens"
                                             if pd.notna(r.get("context_tokens")) else "unknown")})
    return pd.DataFrame(rows).set_index(["setting", "users"])


def _reload_cell(r: pd.Series) -> str:
    """Reloads from the requests' load figures and from the server's log (runner starts in the window)."""
    parts = []
    if r.get("reloads") is not None and pd.notna(r.get("reloads")):
        parts.append(f"{int(r['reloads'])} by load time")
    if pd.notna(r.get("log_reloads", math.nan)):
        parts.append(f"{int(r['log_reloads'])} runner starts in the log")
    if not parts:
        why = r.get("log") or "no server log"
        return f"not visible: no load time per request, and {why}"
    return "; ".join(parts)


def tools_display(res: WorkloadResult) -> pd.DataFrame:
    """Question turns and the turns answering a tool's result, by setting and user count: TTFT, and how the server
    used the tools (empty when no conversation offered tools)."""
    return toolturns.display(res.tools, {"config": "setting", "users": "users"})


def _users_label(key: tuple) -> str:
    return f"{key[0]}, {key[1]} user{'s' if key[1] != 1 else ''}"


def thinking_lines(res: WorkloadResult) -> list[str]:
    """Per setting and user count where the model thought: the first answer token beside TTFT (the first thought),
    the thinking time and tokens."""
    out = []
    for f in res.figures.values():
        if f.metric != "ttfa":
            continue
        w = f.where
        get = lambda tag: res.figures.get(f"workload/{tag}/{w['setting']}/{w['users']}")  # noqa: E731
        parts = [f"first answer token {f.text()}"]
        for tag, what in (("thinking_time", "thinking"), ("thinking_tokens", "thinking tokens")):
            g = get(tag)
            if g is not None:
                parts.append(f"{what} {g.text()}")
        parts.append(_thinking_cost(res, f, w))
        out.append(f"- **{_users_label((w['setting'], int(w['users'])))}**: the model thought before answering: "
                   + ", ".join(p for p in parts if p) + " (TTFT counts the first thought; what a user waits for is the first answer "
                   "token).")
    unanswered, thinking = thought_without_answer(res.trials)
    if unanswered:
        out.append(f"- **{unanswered} of {thinking} turns that thought never reached an answer** within num_predict "
                   "tokens: their first answer token is missing from the figures above.")
    return out


def _thinking_cost(res: WorkloadResult, f, w: dict) -> str:
    """The first answer token against the same users' on the setting most like this one that did not think: a
    ratio with its CI."""
    df = measured(res.trials)
    if df.empty or "ttfa_s" not in df:
        return ""
    same = df[df["users"] == w["users"]]
    thinking = same.groupby("config")["thinking_tokens"].apply(
        lambda x: pd.to_numeric(x, errors="coerce").fillna(0).gt(0).any())
    others = [c for c, t in thinking.items() if not t and c != w["setting"]]
    if not others:
        return ""
    base = most_alike(str(w["setting"]), [str(c) for c in others])
    row = compare_samples(col(same[same["config"] == base], "ttfa_s").tolist(),
                          col(same[same["config"] == w["setting"]], "ttfa_s").tolist(), "lower")
    r = row.ratio
    if not math.isfinite(r.value) or not r.has_ci:
        return f"against {base} too few turns for a CI"
    verdict = "later" if r.lo > 1 else "sooner" if r.hi < 1 else "no change detectable at this n"
    return f"the first answer came {RATIO.ci(r.value, r.lo, r.hi)} as late as on {base} ({verdict})"


def load_display(res: WorkloadResult) -> pd.DataFrame:
    return load.load_display(res.load)


def load_sources(res: WorkloadResult) -> str:
    return load.load_sources(res.load, res.manifest)


MIN_TURN_N = 5  # a turn is compared only with at least this many requests


def turn_pair(res: WorkloadResult, cfg: str, users: int) -> tuple[int, pd.DataFrame, pd.DataFrame] | None:
    """The fair comparison of a later turn with the first, at one setting and user count: the latest turn with
    ≥ :data:`MIN_TURN_N` requests, against turn 1 of the *same* conversations (late turns exist only for long
    conversations), each user's first request left out when several users start at once (the synchronized start
    burst queues them), requests sent inside the series' steady window where it has one. (last turn, first rows,
    last rows), or None when no turn qualifies."""
    df = measured(res.trials)
    g = df[(df["config"] == cfg) & (df["users"] == users)] if len(df) else df
    if g.empty or g["turn"].nunique() < 2:
        return None
    chk = S.series_checks(res.events).get(g["series"].iloc[0], {}) if "series" in g and len(res.events) else {}
    g = S.in_window(g, chk)
    if users > 1:
        g = g.drop(S.burst(g).index)
    n = g.groupby("turn").size()
    first = int(g["turn"].min()) if len(g) else 0
    later = [int(t) for t, k in n.items() if t > first and k >= MIN_TURN_N]
    if not later:
        return None
    last = max(later)
    b = g[g["turn"] == last]
    a = g[g["turn"] == first]
    if "session" in g:
        a = a[a["session"].isin(set(b["session"]))]
    return last, a, b


def _later_vs_first(res: WorkloadResult, cfg: str, users: int) -> str:
    """TTFT of a later turn against the first of the same conversations (:func:`turn_pair`): a verdict only when
    its CI says so."""
    pair = turn_pair(res, cfg, users)
    if pair is None:
        return (f"no later turn had {MIN_TURN_N} requests outside the start burst to compare with the first"
                if users else "")
    last, a, b = pair
    row = compare_samples(col(a, "ttft_s").tolist(), col(b, "ttft_s").tolist(), "lower")
    r = row.ratio
    base = (f"turn {last + 1}'s TTFT ({SECONDS.estimate(est(col(b, 'ttft_s')))}) against turn 1 of the "
            f"same conversations ({SECONDS.estimate(est(col(a, 'ttft_s')))})"
            + (", the start burst left out" if users > 1 else ""))
    if not math.isfinite(r.value) or not r.has_ci:
        return f"{base}: too few requests per turn for a CI of their ratio"
    ratio = RATIO.ci(r.value, r.lo, r.hi)
    if r.lo > 1:
        return f"{base}: **later turns are slower**, {ratio} (Hodges–Lehmann, 95% CI)"
    if r.hi < 1:
        return f"{base}: later turns are faster, {ratio}"
    return f"{base}: no difference the data can show, {ratio}"


def answer(res: WorkloadResult) -> list[str]:
    """How the assistant holds up with the most users: TTFT of a later turn against the first, failures."""
    if res.turns.empty:
        return []
    cfg = res.turns["config"].iloc[0]
    users = int(res.turns[res.turns["config"] == cfg]["users"].max())
    out = []
    line = _later_vs_first(res, cfg, users)
    if line:
        out.append(f"With {users} user{'s' if users != 1 else ''} on **{cfg}**, {line}.")
    fail = res.figures.get(f"workload/failed/{cfg}/{users}")
    if fail is not None:
        out.append(f"{fail.link()} of their turns failed.")
    for tag, what in (("tool_called", "of the questions were answered with a tool call"),
                      ("tool_valid", "of the turns with tool calls had valid arguments")):
        f = res.figures.get(f"workload/{tag}/{cfg}/{users}")
        if f is not None:
            out.append(f"{f.link()} {what}.")
    s = res.sessions[(res.sessions["config"] == cfg) & (res.sessions["users"] == users)] if len(res.sessions) else None
    if s is not None and len(s) and s.iloc[0]["over_context"]:
        out.append(f"{s.iloc[0]['over_context']} turns outgrew the context.")
    return out


def conclusions(res: WorkloadResult) -> str:
    """Per setting and user count: later turns against the first (a verdict only where the CI excludes no change),
    the prompt share served from the cache, tokens in flight, conversations over the context, reloads."""
    head = "### What the measurements say"
    if res.turns.empty:
        return f"{head}\n\nNo chat turn was measured" + (f": {res.failures}" if res.failures else ".")
    lines = [answer_block(answer(res), res.failures) + head, ""]
    for (cfg, users), t in res.turns.groupby(["config", "users"], sort=False):
        head = f"- **{cfg}, {users} user{'s' if users != 1 else ''}**: "
        parts = [_later_vs_first(res, cfg, int(users))]
        later = t[t["turn"] > 1]
        if res.reuse_visible and later["reuse"].notna().any():
            parts.append(f"the server served {fmt.pct(float(later['reuse'].median()))} of later turns' prompt tokens "
                         f"from its cache (median of the turns' medians; turn 1: "
                         f"{fmt.pct(float(t[t['turn'] == 1]['reuse'].median())) if (t['turn'] == 1).any() else '—'})")
        elif not res.reuse_visible:
            parts.append("how much of each prompt came from the server's cache is not counted by this server "
                         "(it counts cached tokens among the prompt's, without saying how many)")
        s = res.sessions[(res.sessions["config"] == cfg) & (res.sessions["users"] == users)]
        if len(s):
            r = s.iloc[0]
            parts.append(f"{fmt.number(r['tokens_in_flight_mean'])} tokens in flight on average, "
                         f"{fmt.number(r['tokens_in_flight_max'])} at most")
            if r["over_context"]:
                parts.append(f"**{r['over_context']} turns outgrew the context** of {fmt.number(r['context_tokens'])} "
                             f"tokens (estimated before sending): the server refused {r['refused_over_context']} and "
                             f"truncated {r['truncated']}")
            if r["reloads"]:
                parts.append(f"**the server reloaded the model {r['reloads']} times during the sessions** (a load of "
                             f"> {RELOAD_S:g} s reported by a request)")
            if pd.notna(r.get("log_reloads", math.nan)) and r["log_reloads"]:
                parts.append(f"**its log shows {int(r['log_reloads'])} model process starts during the sessions**")
            if pd.notna(r.get("log_truncations", math.nan)) and r["log_truncations"]:
                parts.append(f"its log says it truncated {int(r['log_truncations'])} prompts")
        lines.append(head + "; ".join(p for p in parts if p) + ".")
    tool_lines = toolturns.lines(res.tools, measured(res.trials), ["config", "users"], _users_label)
    if tool_lines:
        lines += ["", "**Tools.** Each question offered its conversation's tools; when the server called one, perfkit "
                      "answered with the file's result for it (a stand-in where the file has none) and the "
                      "conversation went on.", *tool_lines]
    think = thinking_lines(res)
    if think:
        lines += ["", "**Thinking.**", *think]
    n = int(res.turns["n"].sum())
    lines.append(f"\n{n} turns measured in all; TTFT per turn is the median with its 95% CI (order statistics).")
    if res.failures:
        lines.append(f"\n{res.failures}")
    return "\n".join(lines)


