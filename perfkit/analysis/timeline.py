"""The server's own account of a run: its log, parsed and put on the run's clock, and each cold
request's time split as the server saw it (spawn → init → weights → ready → first token) beside the
client's split (load + prefill + decode + overhead).

Works from recorded data only (``<study>/server.log`` and ``events.jsonl``), so a report re-renders
without a server. An empty or unparsed log gives empty frames and a reason, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from perfkit.core import settings as S
from perfkit.servers import marks
from perfkit.core.clock import parse_tz
from perfkit.core.events import ClockAnchor, ServerLogKept, events_of, last_of
from perfkit.servers.serverlog import LogEvent, naive_times_zone, parse

# Kinds worth a row in the report's timeline (progress lines and per-buffer details are summarised).
TIMELINE_KINDS = ("server_config", "server_listening", "runner_start", "runner_waiting", "gpu_init", "gpu_device",
                  "offload", "model_buffer", "model_loading", "runner_ready", "model_loaded", "request", "warning",
                  "error", "load_timeout", "unload")


@dataclass
class ServerAccount:
    """The parsed server log of one study: events with run-clock times, and why it may be empty."""

    events: list[LogEvent] = field(default_factory=list)
    anchor: tuple[float, int] | None = None  # (wall epoch s, perf_counter ns) taken at the same instant
    why_empty: str = ""
    zone: str = ""  # the zone of the log's zone-less stamps, and how it was known
    clock_offset_s: float | None = None  # the server's request ends − the client's (median), after the zone
    clock_n: int = 0  # requests that offset is from
    host_clock_uncertainty_s: float | None = None  # a log kept from another host: its clock offset's uncertainty

    def t_ns(self, wall_unix_s: float | None) -> float | None:
        """A server wall time on the run's perf_counter clock."""
        if wall_unix_s is None or self.anchor is None:
            return None
        wall0, t0 = self.anchor
        return t0 + (wall_unix_s - wall0) * 1e9


def _segments(lines: list[str]) -> list[tuple[float | None, float | None, list[str]]]:
    """Split an engine log at perfkit's start marks: each segment's --log-timestamps count from its own
    start. Returns (start mark, ready mark, lines without the marks) per segment."""
    out: list[list] = [[None, None, []]]
    for ln in lines:
        for read, slot in ((marks.started_at, 0), (marks.ready_at, 1)):
            t = read(ln)
            if t is not None:
                if slot == 0:
                    out.append([t, None, []])
                else:
                    out[-1][1] = t
                break
        else:
            out[-1][2].append(ln)
    return [tuple(s) for s in out if s[2]]


def _parse_segment(start: float | None, ready: float | None, seg: list[str],
                   local_tz: tzinfo | None = None) -> list[LogEvent]:
    """Events of one server start. Its relative clock is pinned where the server said it was listening
    and perfkit saw it answer (``ready``), else at the start mark."""
    if start is None:
        return parse(seg, local_tz=local_tz)
    events = parse(seg, t0_wall_unix_s=start, local_tz=local_tz)
    if ready is not None:
        listen = next((e for e in events if e.kind == "server_listening" and e.fields.get("instance_port") is None
                       and e.fields.get("log_t_s") is not None), None)
        if listen is not None:
            t0 = max(start, ready - listen.fields["log_t_s"])
            events = parse(seg, t0_wall_unix_s=t0, local_tz=local_tz)
    return events


def _request_ends(trials: pd.DataFrame | None) -> list[float]:
    if trials is None or trials.empty or "wall_send_unix_s" not in trials or "e2e_s" not in trials:
        return []
    ends = (pd.to_numeric(trials["wall_send_unix_s"], errors="coerce") + pd.to_numeric(trials["e2e_s"],
                                                                                       errors="coerce")).dropna()
    return sorted(float(x) for x in ends if x > 0)


def _zone_from_requests(lines: list[str], ends: list[float]) -> tuple[tzinfo | None, int]:
    """The zone offset (15-minute steps, ±14 h) under which the log's zone-less request lines (GIN, whole
    seconds, when each request ended) land on the ends of the requests this run made; (None, 0) when no
    offset matches most of them."""
    gins = [e.wall_unix_s for e in parse(lines, local_tz=timezone.utc)
            if e.kind == "request" and e.wall_unix_s is not None and e.fields.get("time_resolution_s")]
    if not gins or not ends:
        return None, 0
    arr = np.array(ends)
    best, best_n = None, 0
    for k in range(-56, 57):
        off = k * 900
        shifted = np.array(gins) - off
        idx = np.clip(np.searchsorted(arr, shifted), 1, len(arr) - 1) if len(arr) > 1 else np.zeros(len(shifted), int)
        near = np.minimum(np.abs(arr[idx] - shifted), np.abs(arr[np.maximum(idx - 1, 0)] - shifted))
        n = int((near <= 1.5).sum())
        if n > best_n:
            best, best_n = off, n
    if best is None or best_n < max(1, 0.5 * len(gins)):
        return None, 0
    return timezone(timedelta(seconds=best)), best_n


def load_account(study_dir: str | Path, events: pd.DataFrame, trials: pd.DataFrame | None = None,
                 tz: str | None = None, wall_offset_s: float = 0.0) -> ServerAccount:
    """The server log a study kept (``server.log``), parsed, with the run's clock anchor.

    Log stamps written without a zone (Ollama's GIN and Go log lines) are read in ``tz`` when the parameters
    give one; else in the zone that the log's zoned source prefixes (docker --timestamps, journald
    short-iso) show them to be in; else in the zone under which its request lines land on the requests this
    run made (``trials``); else, with nothing to tell it, in perfkit's own zone, and the account says so.
    ``wall_offset_s``: the server host's wall clock − this one's (a server on another host, its offset measured)."""
    study_dir = Path(study_dir)
    acc = ServerAccount()
    clocks, logs = events_of(events, ClockAnchor), events_of(events, ServerLogKept)
    if len(clocks):
        c = clocks.iloc[0]
        if not wall_offset_s:
            # A log kept from another host (an agent's): its wall clock's measured offset from this one.
            off = logs["wall_offset_s"].dropna()
            wall_offset_s = float(off.iloc[-1]) if len(off) else 0.0
            if len(off):
                u = logs["clock_uncertainty_s"].dropna()
                acc.host_clock_uncertainty_s = float(u.iloc[-1]) if len(u) else None
        acc.anchor = (float(c["wall_unix_s"]) + wall_offset_s, int(c["t_ns"]))
    path = study_dir / "server.log"
    if not path.exists():
        acc.why_empty = (last_of(events, ServerLogKept) or {}).get("why") or "no server log was recorded"
        return acc
    lines = path.read_text(errors="replace").splitlines()
    local_tz: tzinfo | None = None
    if tz:
        local_tz, acc.zone = parse_tz(tz), f"{tz} (from the parameters)"
    else:
        local_tz, n = naive_times_zone(lines)
        if local_tz is not None:
            acc.zone = f"{local_tz} (detected from {n} lines whose source prefix carries a zone)"
        else:
            local_tz, n = _zone_from_requests(lines, _request_ends(trials))
            acc.zone = (f"{local_tz} (detected: {n} request lines land on this run's requests under it)"
                        if local_tz is not None else "")
    for start, ready, seg in _segments(lines):
        acc.events += _parse_segment(start, ready, seg, local_tz)
    if not acc.events:
        acc.why_empty = f"the server log ({len(lines)} lines) has no line perfkit can parse"
    elif not acc.zone and any(e.kind == "request" and e.fields.get("time_resolution_s") for e in acc.events):
        acc.zone = "perfkit's own zone (nothing in the log or the run tells the server's; set backend.server_log.tz)"
    return acc


def _summary(ev: LogEvent) -> str:
    f = ev.fields
    k = ev.kind
    if k == "server_config":
        env = f.get("env", {})
        keys = [n for n in S.names() if n in env and S.is_server_env(n)]
        return "server config: " + " ".join(f"{S.short_name(x)}={env.get(x, '')}" for x in keys)
    if k == "runner_start":
        return f"runner spawned: {f.get('cmd') or ' '.join(f.get('argv') or [])}"[:200]
    if k == "runner_ready":
        return f"runner started in {f.get('seconds')} s"
    if k == "offload":
        return f"offloaded {f.get('layers_gpu')}/{f.get('layers_total')} layers to GPU"
    if k == "model_buffer":
        return f"{f.get('device')} model buffer {f.get('mib')} MiB"
    if k == "request":
        return f"{f.get('method')} {f.get('path')} → {f.get('status')} in {f.get('latency_s'):.3g} s (server)"
    if k in ("warning", "error"):
        return f"{k}: {f.get('msg') or ev.line}"[:200]
    if k == "gpu_device":
        return f"GPU {f.get('index')}: {f.get('name')}"
    return (f.get("msg") or ev.line)[:160]


def timeline_frame(acc: ServerAccount, t_origin_ns: int | None = None) -> pd.DataFrame:
    """One row per notable log event: seconds on the run clock (from ``t_origin_ns``), kind, summary."""
    rows = []
    for ev in acc.events:
        if ev.kind not in TIMELINE_KINDS:
            continue
        t = acc.t_ns(ev.wall_unix_s)
        rows.append({"t_ns": t, "kind": ev.kind, "what": _summary(ev), "wall_unix_s": ev.wall_unix_s,
                     "time_resolution_s": ev.fields.get("time_resolution_s", 0.0)})
    df = pd.DataFrame(rows)
    if len(df) and t_origin_ns is not None:
        df["t_s"] = (df["t_ns"] - t_origin_ns) * 1e-9
    return df


def _first(acc: ServerAccount, kinds: tuple[str, ...], lo: float, hi: float) -> LogEvent | None:
    for ev in acc.events:
        if ev.kind in kinds and ev.wall_unix_s is not None and lo <= ev.wall_unix_s <= hi:
            return ev
    return None


def request_split(acc: ServerAccount, row: dict[str, Any]) -> dict[str, Any]:
    """The server's split of one request (seconds): send → runner spawn, spawn → backend/GPU init,
    spawn → runner ready (process start + init + weights), ready → first token, and the server's own
    latency for the request (GIN) beside the client's e2e. Missing pieces are None."""
    send = row.get("wall_send_unix_s")
    e2e = row.get("e2e_s")
    if not send or e2e is None or pd.isna(e2e):
        return {}
    end = send + e2e
    # GIN has whole seconds: allow one second either side when matching.
    slack = 1.0 if any(e.fields.get("time_resolution_s") for e in acc.events if e.kind == "request") else 0.05
    out: dict[str, Any] = {}
    spawn = _first(acc, ("runner_start",), send - 0.05, end)
    if spawn is not None:
        out["server_spawn_s"] = spawn.wall_unix_s - send
        init = _first(acc, ("gpu_init", "gpu_device", "backend_loaded"), spawn.wall_unix_s, end)
        if init is not None:
            out["server_init_s"] = init.wall_unix_s - spawn.wall_unix_s
        ready = _first(acc, ("runner_ready", "model_loaded"), spawn.wall_unix_s, end + slack)
        if ready is not None:
            secs = ready.fields.get("seconds")
            out["server_runner_start_s"] = secs if secs is not None else ready.wall_unix_s - spawn.wall_unix_s
            ready_wall = spawn.wall_unix_s + out["server_runner_start_s"]
            ttft = row.get("ttft_s")
            if ttft is not None and not pd.isna(ttft):
                out["server_ready_to_first_token_s"] = send + ttft - ready_wall
        off = _first(acc, ("offload",), spawn.wall_unix_s, end + slack)
        if off is not None:
            out["server_layers_gpu"] = off.fields.get("layers_gpu")
            out["server_layers_total"] = off.fields.get("layers_total")
    gin = _gin_for(acc, send, e2e, row.get("_claimed"))
    if gin is not None:
        out["server_latency_s"] = gin.fields.get("latency_s")
        out["server_status"] = gin.fields.get("status")
        out["server_end_minus_client_s"] = gin.wall_unix_s - end
        if row.get("_claimed") is not None:
            row["_claimed"].add(id(gin))
    return out


def _gin_for(acc: ServerAccount, send: float, e2e: float, claimed: set | None) -> LogEvent | None:
    """The server's request line (GIN) of the request sent at ``send`` that took ``e2e``: GIN stamps whole
    seconds at the request's end, so several requests may share a second; its own latency, and so its
    implied start, tells them apart. A line already matched to another request is not taken again."""
    end = send + e2e
    cands = []
    for ev in acc.events:
        if ev.kind != "request" or ev.wall_unix_s is None or ev.fields.get("path") not in ("/api/chat", "/api/generate"):
            continue
        res = ev.fields.get("time_resolution_s") or 0.05
        # The line's true time lies in [stamp, stamp + resolution) for a truncated second.
        if not (ev.wall_unix_s - 0.05 <= end + 0.05 and end - 0.05 <= ev.wall_unix_s + res + 0.05):
            continue
        if claimed is not None and id(ev) in claimed:
            continue
        lat = ev.fields.get("latency_s")
        cost = abs(lat - e2e) if lat is not None else abs(ev.wall_unix_s + res / 2 - end)
        cands.append((cost, ev))
    return min(cands, key=lambda c: c[0])[1] if cands else None


def splits(acc: ServerAccount, trials: pd.DataFrame) -> pd.DataFrame:
    """``request_split`` for every trial row, joined to its id, state and client-side split. Each server
    request line is matched to one request at most (by time, then by its own latency)."""
    rows = []
    claimed: set = set()
    for _, r in trials.sort_values("wall_send_unix_s").iterrows() if "wall_send_unix_s" in trials else trials.iterrows():
        s = request_split(acc, {**r.to_dict(), "_claimed": claimed})
        rows.append({"trial_id": r.get("trial_id"), "cache_state": r.get("cache_state"), "e2e_s": r.get("e2e_s"),
                     "ttft_s": r.get("ttft_s"), "load_s": r.get("load_s"), "prefill_s": r.get("prefill_s"),
                     "decode_s": r.get("decode_s"), "overhead_s": r.get("overhead_s"),
                     **{k: r.get(k) for k in ("ttfa_s", "thinking_s", "answer_decode_s", "thinking_tokens") if k in r},
                     **s})
    df = pd.DataFrame(rows)
    if "server_end_minus_client_s" in df and df["server_end_minus_client_s"].notna().any():
        d = df["server_end_minus_client_s"].dropna()
        acc.clock_offset_s, acc.clock_n = float(d.median()), int(len(d))
    return df
