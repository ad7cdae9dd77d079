"""Each server's own host: its process tree as that host sampled it, per phase, and its own log put on the run's
clock through the host's measured offset."""

from __future__ import annotations

from perfkit.core import events as E
import math
from pathlib import Path

import pandas as pd

Span = tuple[str, int, int]  # (phase, start ns, end ns) on the run's clock


def phase_spans(ev: pd.DataFrame) -> list[Span]:
    """(phase, start ns, end ns) on the run's clock, from the phase events."""
    if ev.empty or "phase" not in ev:
        return []
    out = []
    starts = E.events_of(ev, E.PhaseStarted)
    for _, r in starts.iterrows():
        done = E.events_of(ev, E.PhaseDone)
        end = done[(done["phase"] == r["phase"]) & (done["t_ns"] >= r["t_ns"])]
        out.append((r["phase"], int(r["t_ns"]), int(end["t_ns"].iloc[0]) if len(end) else int(ev["t_ns"].max())))
    return out


def _phase_at(spans: list[Span], t_ns: float) -> str:
    if spans and t_ns < spans[0][1]:
        return "set-up"
    return next((p for p, a, b in spans if a <= t_ns <= b), "between phases")


def hosts_table(samples: pd.DataFrame, ev: pd.DataFrame) -> pd.DataFrame:
    """Per server host and phase: the server's process tree as its own host sampled it (CPU in % of one core,
    resident memory), and the host's GPUs where NVML saw any."""
    if samples.empty or "host" not in samples:
        return pd.DataFrame()
    spans = phase_spans(ev)
    rows = []
    sys_ = samples[(samples["source"] == "system") & samples["host"].notna()]
    gpu = samples[(samples["source"] == "gpu") & samples["host"].notna()] if "source" in samples else samples.iloc[0:0]
    for host, h in sys_.groupby("host", sort=False):
        for phase, a, b in spans:
            w = h[(h["t_ns"] >= a) & (h["t_ns"] <= b)]
            if w.empty:
                continue
            g = gpu[(gpu["host"] == host) & (gpu["t_ns"] >= a) & (gpu["t_ns"] <= b)]
            rows.append({"server": host, "phase": phase, "samples": len(w),
                         "server_cpu_pct_mean": float(w["server_cpu_pct"].clip(lower=0).mean()),
                         "server_cpu_pct_max": float(w["server_cpu_pct"].max()),
                         "server_rss_bytes_max": float(w["server_rss_bytes"].max()),
                         "server_processes_max": int(w["server_processes"].max()),
                         "gpu_util_pct_mean": float(g["gpu_util_pct"].mean()) if len(g) and "gpu_util_pct" in g
                         else math.nan})
    return pd.DataFrame(rows)


def host_timelines(study_dir: str | Path, ev: pd.DataFrame, df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each server's own log (kept per host), put on the run's clock through its host's measured offset: the
    notable events with the phase they fell in, seconds from the study's start and the clock's uncertainty."""
    from perfkit.analysis.timeline import load_account, timeline_frame

    out: dict[str, pd.DataFrame] = {}
    if ev.empty or "kind" not in ev:
        return out
    logs = E.events_of(ev, E.HostLogKept)
    if logs.empty or "available" not in logs:
        return out
    spans = phase_spans(ev)
    clock = E.events_of(ev, E.ClockAnchor)
    t0 = int(clock["t_ns"].iloc[0]) if len(clock) else None
    for _, r in logs[logs["available"].astype(bool)].iterrows():
        acc = load_account(Path(study_dir) / "hosts" / r["dir"], ev, df, wall_offset_s=float(r["wall_offset_s"]))
        t = timeline_frame(acc, t0)
        if t.empty:
            continue
        t = t[t["kind"] != "request"].copy()  # per-request lines are the requests' own rows already
        t["phase"] = [_phase_at(spans, x) if pd.notna(x) else "?" for x in t["t_ns"]]
        t["clock_uncertainty_s"] = float(r.get("clock_uncertainty_s") or 0.0)
        out[r["server"]] = t
    return out
