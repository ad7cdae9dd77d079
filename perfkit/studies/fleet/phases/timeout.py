"""Proxy timeouts: cold starts measured directly (the basis for the proxy_read_timeout advice); then, on the fleet
perfkit runs, a proxy timeout shorter than a cold start, which must give a 504 (or cut the stream)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from perfkit.core import events as E
from perfkit.analysis.requests import ci_cell, error_summary, est, measured
from perfkit.client.backends import Backend
from perfkit.servers.nginx import Upstream

from ..phase_run import PhaseRun
from ..records import phase_rows
from ..results import TimeoutAdvice, TimeoutProbe, TimeoutSummary

PROXY_504 = "proxy timeout: HTTP 504"


def measure(run: PhaseRun) -> None:
    nat = run.native(0)
    if nat is None:
        run.skip("timeout", "unknown, because the servers' API can't unload a model, so no cold start "
                            "can be produced and measured")
        return
    for rep in range(run.cfg.cold_reps):
        nat.unload(run.model)
        run.one(run.direct[0], f"timeout/cold/{rep}", phase="timeout", target="direct", cold=True, rep=rep)
    if not run.fleet.managed:
        run.skip("timeout_504", "unknown, because perfkit does not change the timeout of a proxy it did not start")
        nat.close()
        return
    _probe_short_timeouts(run, nat)
    run.restore_proxy()
    nat.close()
    run.warm_all()


def _probe_short_timeouts(run: PhaseRun, nat: Backend) -> None:
    ok = measured(pd.DataFrame([r for r in run.ctx.store.trials_log.read() if r.get("phase") == "timeout"]))
    ttfb = float(ok["ttfb_s"].min()) if len(ok) else 1.0
    ttft = float(ok["ttft_s"].min()) if len(ok) else 1.0
    # proxy_read_timeout bounds each silence, the first included. Shorter than the cold wait for headers,
    # the proxy answers 504; if the server sends its headers early (llama-server does), a timeout between
    # headers and first token cuts the stream instead: both are probed, each its own failure class.
    probes = [("before headers", run.cfg.short_timeout_s or round(max(0.02, ttfb / 2), 3))]
    if ttft - 2 * ttfb > 0.05 and not run.cfg.short_timeout_s:
        # longer than the wait for headers, shorter than the silence after them (the timer restarts there)
        probes.append(("after headers", round(ttft / 2, 3)))
    for label, short in probes:
        # One failure must not bench the server for the rest of the run (max_fails 0), and with one
        # upstream nothing is retried elsewhere: what comes back is the proxy's own answer.
        run.fleet.reconfigure(proxy_read_timeout_s=short, max_fails=0,
                              upstreams=[Upstream(run.fleet.servers[0].url, 1)])
        run.emit(E.ShortTimeout, proxy_read_timeout_s=short, probe=label, cold_ttfb_s=ttfb, cold_ttft_s=ttft)
        nat.unload(run.model)
        run.one(run.proxy, f"timeout/proxy/{label}", phase="timeout", target="proxy", cold=True, probe=label,
                proxy_read_timeout_s=short)


def timeout_summary(df: pd.DataFrame, read_timeout_s: float) -> TimeoutSummary:
    g = phase_rows(df, "timeout")
    cold = measured(g[g["target"] == "direct"]) if len(g) else g
    proxied = g[g["target"] == "proxy"] if len(g) else g
    return TimeoutSummary(configured_read_timeout_s=read_timeout_s, advice=_advice(cold) if len(cold) else None,
                          probes=[TimeoutProbe(r.get("probe"), r.get("proxy_read_timeout_s"), r.get("http_status"),
                                               _timeout_class(r) + _missed(r)) for _, r in proxied.iterrows()])


def _advice(cold: pd.DataFrame) -> TimeoutAdvice:
    """Twice the longest cold start the data can vouch for: a p99's CI where n allows one, else the longest seen."""
    ttft = est(cold["ttft_s"], "p99")
    worst = float(cold["ttft_s"].max())
    if ttft.has_ci:
        basis, value = f"the upper end of the cold-start TTFT p99's CI (n={len(cold)})", ttft.hi
    else:
        basis, value = (f"the longest of {len(cold)} measured cold starts (n={len(cold)} is too small for a "
                        f"p99 CI; {ttft.need_n or '?'} would give one)"), worst
    return TimeoutAdvice(cold_n=len(cold), cold_ttft_p50_text=ci_cell(est(cold["ttft_s"])), cold_ttft_max_s=worst,
                         recommended_read_timeout_s=float(math.ceil(2 * value)), basis=basis)


def _missed(r: pd.Series | dict[str, Any]) -> str:
    """A probe that did not test what it names says so: one meant to time out after the server's headers that
    timed out before them (the cold start sent its headers later than the measured one did)."""
    if r.get("probe") == "after headers" and str(r.get("error") or "").startswith(PROXY_504):
        return (" — so this probe did not test a timeout after the headers: this cold start sent its headers later "
                "than the one its timeout was set from")
    return ""


def _timeout_class(r: pd.Series | dict[str, Any]) -> str:
    err = r.get("error") or ""
    if r.get("ok"):
        return "answered (no timeout)"
    if err.startswith(PROXY_504):
        return "proxy 504 (timed out before the server's headers)"
    if err.startswith("server connection lost") and pd.notna(r.get("ttfb_s")):
        return "cut mid-stream by the proxy (the server had sent its headers, then fell silent past the timeout)"
    return f"other failure: {error_summary(err, 60)}"
