"""Ollama's log lines, read into perfkit's log events (``perfkit.servers.serverlog``; lenient: a line of another
shape is not theirs, an odd one says nothing).

* slog text lines: ``time=2026-11-24T10:00:00.123Z level=INFO source=server.go:398 msg="..." k=v``
  (server/routes.go "server config" and "Listening on", llm/server.go "starting llama server" /
  "starting runner", llm/llama_server.go "starting llama-server" (v0.30+), "... started in N seconds",
  "model load progress", sched.go "loaded runners", the scheduler's unload messages).
* the Go ``log`` form Ollama writes before its own handler is set up
  (``2026/11/24 10:00:00 routes.go:1187: INFO server config env="map[...]"``, local time).
* GIN request lines: ``[GIN] 2026/02/21 - 12:10:32 | 200 |  2m38s |  127.0.0.1 | POST  "/api/chat"``
  (local time, no zone, whole seconds; written when the request ends).
* the old embedded server's JSON lines and ext_server lines
  (``INFO [main] model loaded | ... timestamp=EPOCH``, Ollama < 0.4).
The llama.cpp runtime's own lines inside Ollama's log are read by that runtime's format.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, tzinfo
from typing import Any

from perfkit.servers.serverlog import (NOT_MINE, OFFLOADED, UNLOAD_MESSAGES, LineFormat, Parsed, Prefix,
                                       fields_runner_start, go_unquote, iso_ts, local_ts, mib, parse_go_duration,
                                       parse_go_map, register_format, slog_attrs)

_GIN = re.compile(
    r"^\[GIN\] (?P<ts>\d{4}/\d{2}/\d{2} - \d{2}:\d{2}:\d{2}) \|\s*(?P<status>\d{3})\s*\|\s*(?P<lat>[^|]*?)\s*\|"
    r"\s*(?P<client>[^|]*?)\s*\|\s*(?P<method>[A-Za-z]+)\s+(?P<path>\".*\"|\S+)\s*$"
)
_GOLOG = re.compile(
    r"^(?P<ts>\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2})(?P<frac>\.\d+)? (?:(?P<src>[\w.-]+\.go:\d+): )?(?P<msg>.*)$"
)
_EXT_SERVER = re.compile(r"^(?P<lvl>INFO|WARN|ERROR|DEBUG|VERB) \[(?P<fn>[^\]]*)\] (?P<msg>.*?)(?: \| (?P<kv>.*))?$")

_STARTED_IN = re.compile(r"(?:llama runner|llama-server|runner) started in (?P<s>[\d.]+) seconds")
_LOAD_PROGRESS = re.compile(r"model load progress (?P<p>[\d.]+)")
_LISTENING = re.compile(r"Listening on (?P<addr>\S+)(?: \(version (?P<ver>[^)]*)\))?")
_TIMED_OUT = re.compile(r"timed out waiting for (?:llama runner|llama-server|runner) to start")
_PROGRESS_IN = re.compile(r"progress (?P<p>[\d.]+)")
_UNLOAD_MSGS = UNLOAD_MESSAGES + ("stopping llama-server", "llama-server stopped")


def _from_msg(msg: str, attrs: dict[str, str], level: str | None) -> tuple[str, dict[str, Any]] | None:
    """Kind and fields of an Ollama message (slog ``msg`` or an old Go log line's text)."""
    lvl = (level or "").upper()
    if msg == "server config":
        return "server_config", {"env": parse_go_map(attrs.get("env", ""))}
    m = _LISTENING.search(msg)
    if m and msg.startswith("Listening on"):
        return "server_listening", {"address": m["addr"], "version": m["ver"]}
    if msg in ("starting llama server", "starting runner", "starting llama-server") and "cmd" in attrs:
        return "runner_start", fields_runner_start(attrs["cmd"])
    if msg.startswith("waiting for llama runner to start responding") or msg.startswith(
            "waiting for llama-server to start responding"):
        return "runner_waiting", {}
    m = _LOAD_PROGRESS.search(msg)
    if m:
        return "load_progress", {"progress": float(m["p"])}
    m = _STARTED_IN.search(msg)
    if m:
        return "runner_ready", {"seconds": float(m["s"])}
    everything = " ".join([msg, *attrs.values()])
    if _TIMED_OUT.search(everything):
        p = _PROGRESS_IN.search(everything)
        return "load_timeout", {"level": lvl or "ERROR", "msg": msg, "error": attrs.get("error"),
                                "progress": float(p["p"]) if p else None}
    if msg == "offload" or msg.startswith("offload to "):
        if "layers.offload" in attrs and "layers.model" in attrs:
            try:
                return "offload", {"layers_gpu": int(attrs["layers.offload"]),
                                   "layers_total": int(attrs["layers.model"]), "stage": "planned",
                                   "library": attrs.get("library") or msg.removeprefix("offload to ").strip() or None}
            except ValueError:
                pass
    m = OFFLOADED.search(msg)
    if m:
        return "offload", {"layers_gpu": int(m[1]), "layers_total": int(m[2]), "stage": "actual"}
    if msg in ("model weights", "kv cache", "compute graph") and "device" in attrs:
        kind = {"model weights": "model_buffer", "kv cache": "kv_cache", "compute graph": "compute_buffer"}[msg]
        return kind, {"device": attrs["device"], "mib": mib(attrs.get("size", ""))}
    if msg == "inference compute":
        idx = attrs.get("id", "")
        return "gpu_device", {"index": int(idx) if idx.isdigit() else None, "id": idx or None,
                              "name": attrs.get("name") or attrs.get("description"),
                              "library": attrs.get("library"), "compute": attrs.get("compute"),
                              "total_mib": mib(attrs.get("total", "")),
                              "available_mib": mib(attrs.get("available", ""))}
    if msg == "loaded runners" and attrs.get("count", "").isdigit():
        return "runners_loaded", {"count": int(attrs["count"])}
    if any(s in msg for s in _UNLOAD_MSGS):
        name = next((attrs[k] for k in ("runner.name", "model", "modelPath", "runner.model") if attrs.get(k)), None)
        return "unload", {"reason": msg, "name": name}
    if lvl.startswith("WARN"):
        return "warning", {"level": "WARN", "msg": msg}
    if lvl.startswith("ERR"):
        return "error", {"level": "ERROR", "msg": msg, "error": attrs.get("error")}
    return None



class SlogFormat(LineFormat):
    def parse(self, text: str, pre: Prefix, res: Parsed, extra: dict[str, Any], local_tz: tzinfo | None) -> Any:
        if not text.startswith("time="):
            return NOT_MINE
        attrs = slog_attrs(text)
        t = iso_ts(attrs.get("time", ""), local_tz)
        if t is not None:
            res.time_unix_s = t
            extra.pop("time_resolution_s", None)
        level = attrs.get("level")
        kf = _from_msg(attrs.get("msg", ""), attrs, level)
        if kf:
            kf[1].setdefault("level", level)
            kf[1]["source"] = attrs.get("source")
            kf[1]["attrs"] = attrs
        return kf


class GinFormat(LineFormat):
    def naive_time(self, text: str) -> datetime | None:
        m = _GIN.match(text)
        try:
            return datetime.strptime(m["ts"], "%Y/%m/%d - %H:%M:%S") if m else None
        except ValueError:
            return None

    def parse(self, text: str, pre: Prefix, res: Parsed, extra: dict[str, Any], local_tz: tzinfo | None) -> Any:
        if not text.startswith("[GIN]"):
            return NOT_MINE
        m = _GIN.match(text)
        try:
            dt = datetime.strptime(m["ts"], "%Y/%m/%d - %H:%M:%S") if m else None
        except ValueError:  # an impossible date: not a line GIN wrote
            m = dt = None
        if not m:
            return None
        # GIN writes local time without a zone, whole seconds, when the request *ends*. A source prefix
        # (journald, docker --timestamps) stamped the same moment with a zone and often finer: keep that one.
        if pre.time_unix_s is None:
            res.time_unix_s = local_ts(dt, local_tz)
            extra["time_resolution_s"] = 1.0
        try:
            lat = parse_go_duration(m["lat"])
        except ValueError:
            lat = None
        path = m["path"]
        return ("request", {"status": int(m["status"]), "latency_s": lat, "client": m["client"],
                            "method": m["method"].upper(), "path": go_unquote(path) if path.startswith('"') else path})


class GoLogFormat(LineFormat):
    """Ollama before slog (2023): Go's log package, local time."""

    def naive_time(self, text: str) -> datetime | None:
        m = _GOLOG.match(text)
        try:
            return datetime.strptime(m["ts"], "%Y/%m/%d %H:%M:%S") if m else None
        except ValueError:
            return None

    def parse(self, text: str, pre: Prefix, res: Parsed, extra: dict[str, Any], local_tz: tzinfo | None) -> Any:
        mg = _GOLOG.match(text)
        try:
            gdt = datetime.strptime(mg["ts"], "%Y/%m/%d %H:%M:%S") if mg else None
        except ValueError:  # an impossible date: not a line Go's log package wrote
            mg = gdt = None
        if not mg:
            return NOT_MINE
        if pre.time_unix_s is None:  # as for GIN: a source prefix's time has a zone
            res.time_unix_s = local_ts(gdt, local_tz) + (float(mg["frac"]) if mg["frac"] else 0.0)
            if not mg["frac"]:
                extra["time_resolution_s"] = 1.0
        # slog's default handler before Ollama installs its own: "INFO server config env=..." with the message
        # unquoted up to the first key=value.
        ml = re.match(r"^(?P<lvl>DEBUG|INFO|WARN|ERROR)(?:[+-]\d+)? (?P<rest>.*)$", mg["msg"])
        level, rest = (ml["lvl"], ml["rest"]) if ml else (None, mg["msg"])
        kv = re.search(r" [A-Za-z_][\w.]*=", rest) if ml else None
        msg, attrs = (rest[:kv.start()], slog_attrs(rest[kv.start():])) if kv else (rest, {})
        kf = _from_msg(msg.strip(), attrs, level)
        if kf:
            kf[1].setdefault("level", level)
            kf[1]["source"] = mg["src"]
            kf[1]["attrs"] = attrs
        return kf


class OldServerFormat(LineFormat):
    """The old embedded server: JSON lines with epoch seconds, and ext_server's
    'INFO [main] model loaded | tid="..." timestamp=1718100000'."""

    def parse(self, text: str, pre: Prefix, res: Parsed, extra: dict[str, Any], local_tz: tzinfo | None) -> Any:
        if text.startswith("{") and '"timestamp"' in text:
            try:
                obj = json.loads(text)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                if isinstance(obj.get("timestamp"), (int, float)):
                    res.time_unix_s = float(obj["timestamp"])
                    extra["time_resolution_s"] = 1.0
                if obj.get("msg") == "model loaded":
                    return ("model_loaded", {})
            return None
        me = _EXT_SERVER.match(text)
        if not me:
            return NOT_MINE
        kv = slog_attrs(me["kv"] or "")
        if kv.get("timestamp", "").isdigit():
            res.time_unix_s = float(kv["timestamp"])
            extra["time_resolution_s"] = 1.0
        return ("model_loaded", {}) if me["msg"].strip() == "model loaded" else None


for _fmt in (SlogFormat(), GinFormat(), GoLogFormat(), OldServerFormat()):
    register_format(_fmt)
