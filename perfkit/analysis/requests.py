"""Requests from recorded data: the rows a figure is made of (successful, not warm-up, cache state not
contradicted), per-request ITL, latency tables, and the notes a report owes its reader (failed trials,
unverifiable states, a busy machine, physics contradicted, how the numbers were made)."""

from __future__ import annotations

import math

import html
from typing import Iterable

import pandas as pd

import numpy as np

from perfkit.core import fmt, host
from perfkit.core.units import SECONDS
from perfkit.analysis import stats


def col(df: pd.DataFrame, name: str) -> pd.Series:
    """Column ``name`` of ``df``, or NaN for every row when no row has it (a field a server did not report)."""
    return df[name] if name in df else pd.Series(np.nan, index=df.index, dtype=float)


def _state_failed(df: pd.DataFrame) -> pd.Series:
    if "state_verified" not in df:
        return pd.Series(False, index=df.index)
    # JSON false reads back as bool or numpy bool; None/NaN (not verifiable, no check) is not a failure.
    # Always a boolean mask: an empty object-dtype Series would index columns, not rows.
    return df["state_verified"].map(lambda v: isinstance(v, (bool, np.bool_)) and not v).astype(bool)


def attempted(df: pd.DataFrame) -> pd.DataFrame:
    """Every measured request, failed ones included: no warmup, no row of a killed series that was re-run."""
    if df.empty:
        return df
    out = df
    for flag in ("interrupted", "warmup"):
        if flag in out:
            out = out[~out[flag].astype("boolean").fillna(False).astype(bool)]
    return out


def measured(df: pd.DataFrame, **eq) -> pd.DataFrame:
    """Successful, non-warmup rows whose cache state was not contradicted, optionally filtered by
    column equality. A trial whose state check failed stays in the data; ``state_note`` counts it."""
    if df.empty:
        return df
    out = df[df.get("ok", True).astype(bool)]
    if "interrupted" in out:  # kept from a killed load series; its re-run is the measurement
        out = out[out["interrupted"].astype("boolean").fillna(False).astype(bool) == False]  # noqa: E712
    if "warmup" in out:
        out = out[~out["warmup"].astype("boolean").fillna(False).astype(bool)]
    out = out[~_state_failed(out)]
    for k, v in eq.items():
        out = out[out[k] == v]
    return out


def state_note(df: pd.DataFrame) -> str:
    """A sentence on trials whose cache state check failed (excluded) or could not be made, or ''."""
    if df.empty or "state_verified" not in df:
        return ""
    ok = df[df.get("ok", True).astype(bool)]
    if "warmup" in ok:
        ok = ok[~ok["warmup"].astype("boolean").fillna(False).astype(bool)]
    if "state_prepare_s" in ok:  # only trials that had a state check (not strategy or load-series rows)
        ok = ok[ok["state_prepare_s"].notna()]
    failed = ok[_state_failed(ok)]
    unknown = ok[ok["state_verified"].isna()]
    out = []
    if len(failed):
        notes = failed.get("state_note", pd.Series(dtype=str)).fillna("").str.slice(0, 90).value_counts().head(3)
        out.append(f"**{len(failed)} of {len(ok)} trials are excluded** because their cache state was not what "
                   "they claimed: " + "; ".join(f"{failed['cache_state'].iloc[0] if n == '' else n} (×{c})"
                                               for n, c in notes.items()) + ".")
    if len(unknown):
        note = unknown.get("state_note", pd.Series([""])).fillna("").iloc[0]
        out.append(f"{len(unknown)} of {len(ok)} trials' cache state is only partly verifiable: {note}.")
    return " ".join(out)


def noisy_counts(df: pd.DataFrame) -> dict[str, float] | None:
    """How many of a study's measured requests ran while other processes used the machine: ``noisy`` of
    ``requests``, with the outside load on those (``other_cpu_pct``, ``steal_pct``); None when not sampled. The one
    count the study's page, the results index and ``perfkit compare`` all show."""
    if df.empty or "res_noisy" not in df or df["res_noisy"].isna().all():
        return None
    d = df[df.get("ok", True).astype(bool)]
    bad = d[d["res_noisy"].astype("boolean").fillna(False).astype(bool)]
    other = bad.get("res_other_cpu_pct_mean", pd.Series(dtype=float)).mean() if len(bad) else 0.0
    steal = bad.get("res_steal_pct_mean", pd.Series(dtype=float)).mean() if len(bad) else 0.0
    return {"noisy": int(len(bad)), "requests": int(len(d)), "other_cpu_pct": float(other),
            "steal_pct": float(steal)}


def noisy_text(c: dict[str, float]) -> str:
    """'16 of 53 requests ran while other processes used it (on average 41% of a core …)'."""
    other, steal = c.get("other_cpu_pct"), c.get("steal_pct")
    load = (f" (on average {other:.0f}% of a core outside the server and the client, steal {steal or 0:.1f}%)"
            if isinstance(other, (int, float)) and math.isfinite(other) else "")
    return f"{c['noisy']:.0f} of {c['requests']:.0f} requests ran while other processes used it{load}"


def noisy_note(df: pd.DataFrame) -> str:
    """A warning when requests ran while other processes competed for the machine, or ''."""
    c = noisy_counts(df)
    if not c or not c["noisy"]:
        return ""
    t = noisy_text(c)
    head, _, rest = t.partition(" (")
    return (f"⚠ **Noisy machine: {head}**{' (' + rest if rest else ''}. "
            "Their timings are suspect: rerun on a quiet machine before drawing conclusions.")


def negative_overhead_note(df: pd.DataFrame) -> str:
    """Physics check: a request can't take less than the sum of its server-reported parts."""
    d = measured(df)
    if d.empty or "overhead_s" not in d:
        return ""
    # A polled load time is known to ± its resolution: only an overhead below that is a contradiction.
    tol = 1e-3 + (d["load_resolution_s"].fillna(0) if "load_resolution_s" in d else 0)
    neg = d[d["overhead_s"] < -tol]
    if neg.empty:
        return ""
    return (f"⚠ **Suspect data:** {len(neg)} requests show a negative overhead (down to "
            f"{fmt.duration(neg['overhead_s'].min())}): their server-reported parts add up to more than the "
            "whole request, so a reported part is wrong (e.g. a polled load time on a busy machine).")


PCTS = ("median", "p90", "p99")


def ci_cell(e: stats.Estimate) -> str:
    """A compact table cell: '412 ms [398, 431]', or '412 ms (no CI: n < 6)' when n is too small."""
    if e.has_ci:
        return SECONDS.ci(e.value, e.lo, e.hi)
    if e.need_n:
        return f"{fmt.duration(e.value)} (no CI: n < {e.need_n})"
    return f"{fmt.duration(e.value)} ({e.note})" if e.note else fmt.duration(e.value)


def per_request_itl(df: pd.DataFrame, stat: str) -> list[float]:
    """Each request's own ``stat`` of its inter-token gaps: one value per request, so the CI's n is
    requests, not gaps (gaps within one request are not independent)."""
    q = {"median": 50, "p90": 90, "p99": 99}[stat]
    return [float(np.percentile(v, q)) for v in df.get("itl_s", pd.Series(dtype=object)).dropna()
            if isinstance(v, (list, tuple, np.ndarray)) and len(v)]


def per_request_event_gap(df: pd.DataFrame, stat: str = "median") -> list[float]:
    """Each request's own ``stat`` of the gaps between its streamed events (what a reader sees arrive, however
    many tokens each event carries): one value per request."""
    q = {"median": 50, "p90": 90, "p99": 99}[stat]
    out = []
    for t in df.get("token_times_ns", pd.Series(dtype=object)).dropna():
        if isinstance(t, (list, tuple, np.ndarray)) and len(t) > 1:
            out.append(float(np.percentile(np.diff(np.asarray(t, dtype=float)) * 1e-9, q)))
    return out


def latency_table(df: pd.DataFrame, by: str, metrics: Iterable[str] = ("ttft_s", "e2e_s", "tpot_s", "itl"),
                  groups: Iterable | None = None) -> pd.DataFrame:
    """Display table: one row per group and metric, with p50/p90/p99, each with its CI, and n."""
    names = {"ttft_s": "TTFT", "e2e_s": "e2e", "tpot_s": "TPOT", "itl": "ITL (per request)",
             "load_s": "load", "prefill_s": "prefill", "decode_s": "decode"}
    rows = []
    keys = list(groups) if groups is not None else list(dict.fromkeys(df[by])) if len(df) else []
    for key in keys:
        g = df[df[by] == key] if len(df) else df
        for m in metrics:
            row = {by: key, "metric": names.get(m, m)}
            for s in PCTS:
                vals = per_request_itl(g, s) if m == "itl" else g[m].tolist() if m in g else []
                e = stats.estimate(vals, "median" if m == "itl" else s)
                row["n"] = e.n
                row["p50" if s == "median" else s] = ci_cell(e)
            rows.append(row)
    return pd.DataFrame(rows).set_index([by, "metric"]) if rows else pd.DataFrame()


def est(values: Iterable[float], stat: str = "median") -> stats.Estimate:
    return stats.estimate(list(values), stat)


def error_summary(text: str, limit: int = 80) -> str:
    """An error as a reader takes it in: an HTML error page (a proxy's 504, say) becomes its title, other markup
    its text, whitespace folded; at most ``limit`` characters."""
    import re

    t = str(text)
    status = re.search(r"(?:Client|Server) error '(\d{3}[^']*)'", t)  # httpx's HTTPStatusError, URL and all
    if status:
        t = f"HTTP {status.group(1)}"
    message = re.search(r'"message"\s*:\s*"([^"]*)"', t)  # a JSON error body: its message is what it says
    if message:
        t = t[:t.index("{")].strip() + " " + message.group(1) if "{" in t else message.group(1)
    t = re.sub(r"https?://[^\s'\"<>]+", _url_words, t)  # an address on the server's host is no link for a reader
    title = re.search(r"<title[^>]*>(.*?)</title>", t, re.I | re.S)
    if title:
        head = t[:t.lower().find("<")].strip(" :")
        t = (head + ": " if head else "") + "an HTML error page: " + title.group(1)
    elif re.search(r"<[a-zA-Z][^>]*>", t):
        t = re.sub(r"<[^>]+>", " ", t)
    t = html.unescape(re.sub(r"\s+", " ", t)).strip()
    return t if len(t) <= limit else t[:limit - 1] + "…"


def _url_words(m) -> str:
    from urllib.parse import urlsplit

    u = urlsplit(m.group(0))
    return f"{u.path or '/'} on port {u.port}" if u.port else (u.path or "/")


def failures(df: pd.DataFrame) -> str:
    """A sentence on failed trials, or ''."""
    if df.empty or "ok" not in df or df["ok"].astype(bool).all():
        return ""
    bad = df[~df["ok"].astype(bool)]
    # A server's own words (an HTML error page, say) go into a report: summarised, escaped, never markup.
    reasons = bad["error"].fillna("unknown").map(error_summary).map(html.escape).value_counts().head(3)
    return (f"**{len(bad)} of {len(df)} trials failed** and are excluded from the statistics: "
            + "; ".join(f"{r} (×{n})" for r, n in reasons.items()) + ".")


def _cluster_note(manifest: dict) -> str:
    """Where a run's other hosts were and how well their clocks are known (every time they stamped is put on the
    run's clock within that)."""
    ctl = manifest.get("control") or {}
    nodes = {n: d for n, d in ((manifest.get("cluster") or {}).get("nodes") or {}).items()}
    if ctl.get("host") and ctl.get("clock"):
        nodes.setdefault(ctl["host"], {"role": "host", "clock": ctl["clock"]})
    for c in manifest.get("client_nodes") or []:
        nodes.setdefault(c["node"], {"role": "client", "clock": c["clock"]})
    if not nodes:
        return ""
    hosts = [n for n, d in nodes.items() if d.get("role") == "host"]
    clients = [n for n, d in nodes.items() if d.get("role") == "client"]
    worst = max(d["clock"]["uncertainty_s"] for d in nodes.values())
    driver = manifest.get("sent_from_driver")
    lost = manifest.get("client_nodes_lost") or []
    lost_note = "".join(f" ({x['because']} during series {x['series']}: {x['requests_lost']} of its {x['requests']} "
                        "requests never measured, and later series were split over the nodes left)" for x in lost)
    return ((f" on host{'s' if len(hosts) > 1 else ''} {', '.join(hosts)} (through perfkit's agent{'s' if len(hosts) > 1 else ''})" if hosts else "")
            + (f", load sent from client node{'s' if len(clients) > 1 else ''} {', '.join(clients)}" if clients else "")
            + (f" except {driver}, sent from the driver" if clients and driver else "")
            + lost_note
            + f"; their clocks on the run's within ± {worst * 1e3:.2g} ms")


def method_note(manifest: dict, n_note: str = "") -> str:
    """How the numbers were made: engine, versions, host, sampling (from the study's manifest)."""
    b = manifest.get("backend", {})
    h = manifest.get("host", {})
    v = h.get("versions", {})
    gpus = ", ".join(g["name"] for g in h.get("gpus", [])) or "none"
    return (f"Measured on **{b.get('backend', '?')}** {b.get('version', '')}"
            + _cluster_note(manifest)
            + (f" {b['served_as']}" if b.get("served_as") else "") + f" · host {h.get('cpu', '?')}, "
            f"{h.get('cpu_cores_logical', '?')} logical cores, {h.get('memory_total_bytes', 0) / 2**30:.0f} GiB, "
            f"GPUs: {gpus} · perfkit {v.get('perfkit', '?')}"
            + "".join(f", {d} {v.get(d, 'n/a')}" for d in sorted(host.ENGINE_DISTS)) + " · "
            f"client clock perf_counter_ns; percentiles with exact distribution-free 95% CIs (order statistics), "
            f"ratios as Hodges–Lehmann estimates with Moses 95% CIs; warmup and priming requests and trials "
            f"whose cache state check failed excluded. {n_note}")


def thought(rows: pd.DataFrame) -> bool:
    """Whether any of ``rows`` thought before it answered (streamed thinking tokens)."""
    return bool(len(rows)) and "thinking_tokens" in rows and \
        bool(pd.to_numeric(rows["thinking_tokens"], errors="coerce").fillna(0).gt(0).any())


def ignored_think(trials: pd.DataFrame) -> int:
    """Requests that asked to think (``think: true`` or a level) and streamed no thought."""
    if trials.empty or "think_requested" not in trials or "thinking_tokens" not in trials:
        return 0
    ok = trials[trials["ok"].astype("boolean").fillna(False).astype(bool)] if "ok" in trials else trials
    asked = ok["think_requested"].isin(["true", "low", "medium", "high"])
    none = pd.to_numeric(ok["thinking_tokens"], errors="coerce").fillna(0).eq(0)
    return int((asked & none).sum())


def thought_without_answer(trials: pd.DataFrame) -> tuple[int, int]:
    """(requests that thought and streamed no answer token, requests that thought): a model that spends its whole
    output thinking never reaches the answer a user waits for, so its time to first answer token is missing."""
    if trials.empty or "thinking_tokens" not in trials:
        return 0, 0
    ok = trials[trials["ok"].astype("boolean").fillna(False).astype(bool)] if "ok" in trials else trials
    thinking = pd.to_numeric(ok["thinking_tokens"], errors="coerce").fillna(0).gt(0)
    answered = pd.to_numeric(col(ok, "answer_tokens"), errors="coerce").fillna(0).gt(0) | \
        col(ok, "tool_calls").notna()
    return int((thinking & ~answered).sum()), int(thinking.sum())
