"""The llama.cpp runtime's log lines (llama-server's own log, and the runtime's lines inside the log of a server that
runs it), read into perfkit's log events (``perfkit.servers.serverlog``).

``--log-timestamps`` prints only together with ``--log-prefix``: ``0.00.035.060 I srv  main: ...`` is
minutes.seconds.milliseconds.microseconds since that process's logger started (common/log.cpp:
``t_us() - t_start``), a clock relative to process start, not wall time. A router forwards its child's stderr as
``[PORT] <child line>`` with no stamp of its own, so child lines carry the child's own relative clock, and prints
each child's argv one argument a line after "spawning server instance with args:". ``load_tensors``/buffer
lines need ``-lv 4`` (default verbosity 3 hides them). Older builds wrote ``llm_load_tensors:``.
"""

from __future__ import annotations

import re
import shlex
from datetime import tzinfo
from typing import Any

from perfkit.servers.serverlog import (OFFLOADED, UNLOAD_MESSAGES, LineFormat, LogEvent, Parsed, Prefix,
                                       fields_runner_start, register_format, strip_prefix)

# llama.cpp's --log-prefix/--log-timestamps ("M.SS.mmm.uuu L "), after a router's "[PORT] " for child lines.
_LLAMA_PREFIX = re.compile(
    r"^(?:\[\s*(?P<port>\d+)\] )?(?:(?P<ts>\d+\.\d{2}\.\d{3}\.\d{3}) )?(?:(?P<lvl>[IWED]) (?=\S))?"
)
_BUFFER = re.compile(
    r"^(?P<fn>[A-Za-z_][A-Za-z0-9_]*):\s+(?P<dev>\S+)\s+(?:(?P<what>model|KV|compute|output|RS)\s+)?"
    r"buffer size\s*=\s*(?P<mib>[\d.]+)\s*MiB"
)
_GPU_INIT = re.compile(r"ggml_(?P<be>cuda|vulkan|sycl|metal|hip|musa|cann)\w*: found (?P<n>\d+) (?P<name>\S+) devices?")
_GPU_DEVICE = re.compile(
    r"^\s*Device (?P<i>\d+): (?P<name>.+?)(?:, compute capability (?P<cc>[\d.]+))?(?:, VMM: (?P<vmm>\w+))?"
    r"(?:, ID: (?P<id>\S+))?\s*$"
)
_USING_DEVICE = re.compile(
    r"using device (?P<dev>\S+) \((?P<name>.*?)\)(?: \((?P<pci>[^)]*)\))? - (?P<free>\d+) MiB free"
)
_LOAD_BACKEND = re.compile(r"load_backend: loaded (?P<be>\S+) backend from (?P<path>.+)$")
_TIMING = re.compile(
    r"(?P<phase>prompt eval|eval|total) time =\s*(?P<ms>[\d.]+) ms /\s*(?P<n>\d+) (?:tokens|runs)"
    r"(?:\s*\(\s*(?P<mspt>[\d.]+) ms per token,\s*(?P<tps>[\d.]+|inf|nan) tokens per second\))?"
)
_SLOT = re.compile(r"id\s+(?P<slot>-?\d+) \| task (?P<task>-?\d+) \|")
_SRV = re.compile(r"^(?P<who>srv|slot|que|cmn|spec|mtd|res)\s+(?P<fn>\S+): (?P<msg>.*)$")
_SPAWN = re.compile(r"spawning server instance with name=(?P<name>\S+) on port (?P<port>\d+)")
_UNLOAD_MSGS = UNLOAD_MESSAGES + ("stopping llama-server", "llama-server stopped")
_ARG_LINE = re.compile(r"^srv\s+\S+:   (?P<arg>.*)$")


def _from_llama(text: str, level: str | None) -> tuple[str, dict[str, Any]] | None:
    """Kind and fields of a llama.cpp line (after any timestamp / level prefix)."""
    m = OFFLOADED.search(text)
    if m:
        return "offload", {"layers_gpu": int(m[1]), "layers_total": int(m[2]), "stage": "actual"}
    m = _BUFFER.match(text)
    if m:
        what = m["what"] or "model"  # llm_load_tensors' old "CUDA0 buffer size" lines are weights
        kind = {"model": "model_buffer", "KV": "kv_cache"}.get(what, "compute_buffer")
        return kind, {"device": m["dev"], "mib": float(m["mib"]), "buffer": what, "source": m["fn"]}
    m = _GPU_INIT.search(text)
    if m:
        return "gpu_init", {"backend": m["name"], "count": int(m["n"])}
    m = _GPU_DEVICE.match(text)
    if m:
        return "gpu_device", {"index": int(m["i"]), "name": m["name"], "compute_capability": m["cc"],
                              "vmm": m["vmm"], "id": m["id"]}
    m = _USING_DEVICE.search(text)
    if m:
        d = re.search(r"(\d+)$", m["dev"])
        return "gpu_device", {"index": int(d[1]) if d else None, "device": m["dev"], "name": m["name"],
                              "pci": m["pci"], "free_mib": float(m["free"])}
    m = _LOAD_BACKEND.search(text)
    if m:
        return "backend_loaded", {"backend": m["be"], "path": m["path"].strip()}
    m = _TIMING.search(text)
    if m:
        s = _SLOT.search(text)
        tps = m["tps"]
        return "timing", {"phase": m["phase"].replace(" ", "_"), "ms": float(m["ms"]), "tokens": int(m["n"]),
                          "ms_per_token": float(m["mspt"]) if m["mspt"] else None,
                          "tokens_per_s": float(tps) if tps else None,
                          "slot": int(s["slot"]) if s else None, "task": int(s["task"]) if s else None}
    srv = _SRV.match(text)
    msg = srv["msg"].strip() if srv else text.strip()
    if srv:
        if msg == "model loaded":
            return "model_loaded", {}
        m = re.match(r"loading model '(?P<p>.*)'$", msg)
        if m:
            return "model_loading", {"model_path": m["p"]}
        m = re.match(r"listening on (?P<addr>\S+)", msg)
        if m:
            return "server_listening", {"address": m["addr"], "version": None}
        m = _SPAWN.search(msg)
        if m:
            # The argv follows on the next lines ("spawning server instance with args:"); parse() adds it.
            return "runner_start", {"name": m["name"], "port": int(m["port"]), "cmd": None, "argv": [],
                                    "model_path": None, "flags": {}, "runner_kind": "llama-server"}
        m = re.search(r"instance name=(?P<name>\S+) exited with status (?P<st>-?\d+)", msg)
        if m:
            return "runner_exit", {"name": m["name"], "exit_status": int(m["st"])}
        m = re.search(r"proxying request to model (?P<name>\S+) on port (?P<port>\d+)", msg)
        if m:
            return "request_proxied", {"name": m["name"], "port": int(m["port"])}
        if any(s in msg for s in _UNLOAD_MSGS):
            m = re.search(r"name=(?P<name>\S+)", msg)
            return "unload", {"reason": msg, "name": m["name"] if m else None}
    if level == "W":
        return "warning", {"level": "WARN", "msg": msg}
    if level == "E":
        return "error", {"level": "ERROR", "msg": msg}
    return None



class RuntimeFormat(LineFormat):
    catch_all = True  # its prefix is optional: any line left over may be one of its

    def parse(self, text: str, pre: Prefix, res: Parsed, extra: dict[str, Any], local_tz: tzinfo | None) -> Any:
        lp = _LLAMA_PREFIX.match(text)
        body = text[lp.end():] if lp else text
        if lp and lp["port"]:
            res.instance_port = int(lp["port"])
            # A forwarded child line carries the child's own prefix, if any.
            lp2 = _LLAMA_PREFIX.match(body)
            if lp2 and (lp2["ts"] or lp2["lvl"]):
                lp, body = lp2, body[lp2.end():]
        if lp and lp["ts"]:
            mins, secs, ms, us = (int(x) for x in lp["ts"].split("."))
            res.rel_s = round(mins * 60 + secs + ms / 1e3 + us / 1e6, 6)
        level = lp["lvl"] if lp else None
        kf = _from_llama(body, level)
        if kf and level:
            kf[1].setdefault("level", {"I": "INFO", "W": "WARN", "E": "ERROR", "D": "DEBUG"}[level])
        return kf

    def collects(self, ev: LogEvent) -> bool:
        # A router's spawn line: the child's argv follows, one argument a line.
        return ev.kind == "runner_start" and ev.fields.get("cmd") is None and "port" in ev.fields

    def continues(self, ev: LogEvent, raw: str, parsed: Parsed) -> bool:
        body = _LLAMA_PREFIX.sub("", strip_prefix(raw), count=1)
        if body.rstrip().endswith("spawning server instance with args:"):
            return True
        ma = _ARG_LINE.match(body)
        if ma and parsed.instance_port is None:
            ev.fields["argv"].append(ma["arg"].strip())
            return True
        return False

    def finish(self, ev: LogEvent) -> None:
        argv = ev.fields["argv"]
        if not argv:
            return
        f = fields_runner_start(shlex.join(argv), argv)
        if f["runner_kind"] == "unknown":
            f["runner_kind"] = ev.fields["runner_kind"]
        f["port"] = ev.fields.get("port") or f["port"]
        ev.fields.update(f)


register_format(RuntimeFormat())
