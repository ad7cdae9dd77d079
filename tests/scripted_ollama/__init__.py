"""A scripted Ollama that behaves like a real local one, for testing perfkit's production path.

It is real processes, not an in-thread stub: ``serve.py`` stands in for ``ollama serve`` (HTTP API,
scheduler, log), and each loaded model is a child process, ``runner.py``, whose command line reads
``ollama runner --model <blob> ...`` like the real runner's. Models have real blob files (so the page
cache matters), the log is written in Ollama's own formats (slog text, GIN request lines, the
runner's llama.cpp lines), and every timing is an injected, known delay. The server writes its own
view of each request to ``truth.jsonl``, which is what perfkit's figures are checked against.

``harness.ScriptedOllama`` starts and stops it; ``restart.sh`` restarts it the way a user's restart
command would. Formats were read from Ollama's source (v0.5.7 and v0.12.x: envconfig/config.go,
server/routes.go, llm/server.go, server/sched.go, logutil/logutil.go) and gin's default logger.

This module holds the formats shared by the server, the runner and the harness; stdlib only, because
``serve.py`` and ``runner.py`` run as scripts outside the test process.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import json
import os
import re
import socket
import threading
import time
from typing import Any, TextIO

GO_MAX_DURATION_NS = 2**63 - 1  # time.Duration(math.MaxInt64): what Ollama stores for "forever"
# v0.12.11 is the first Ollama whose API has `logprobs` (v0.12.3 silently drops it); its log formats are
# v0.12's ("starting runner", settings sent over the runner's port, not on its command line).
DEFAULT_VERSION = "0.12.11"
LOG_STYLES = ("slog", "journald", "docker")
FAKE_EXE = "/usr/local/bin/ollama"  # where install.sh puts the real binary; what the runner's argv shows


# ---- versions ----------------------------------------------------------------------------------
def version_tuple(version: str) -> tuple[int, ...]:
    """'0.12.3' → (0, 12, 3); pre-release tails ('-rc1') are ignored."""
    return tuple(int(p) for p in re.findall(r"\d+", version.split("-")[0])[:3])


def supports_logprobs(version: str) -> bool:
    # api.GenerateRequest/ChatRequest gained Logprobs in v0.12.11; older servers drop the field silently.
    return version_tuple(version) >= (0, 12, 11)


def new_runner_style(version: str) -> bool:
    """v0.12+: msg="starting runner" with only --model/--port on the command line (settings go over
    the runner's port); older: msg="starting llama server" with every llama.cpp flag on it."""
    return version_tuple(version) >= (0, 12)


# ---- Go formats --------------------------------------------------------------------------------
def go_duration(ns: int) -> str:
    """Go's ``time.Duration.String()``: 178.535µs, 12.5ms, 2.345678s, 3m9.5s, 1h2m3s."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(int(ns))
    if u < 1_000_000_000:
        if u < 1_000:
            return f"{sign}{u}ns"
        unit, digits = ("µs", 3) if u < 1_000_000 else ("ms", 6)
        whole, frac = divmod(u, 10**digits)
        frac_s = f"{frac:0{digits}d}".rstrip("0")
        return f"{sign}{whole}{'.' + frac_s if frac_s else ''}{unit}"
    secs, frac = divmod(u, 1_000_000_000)
    frac_s = f"{frac:09d}".rstrip("0")
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    out = f"{h}h" if h else ""
    out += f"{m}m" if (h or m) else ""
    return f"{sign}{out}{s}{'.' + frac_s if frac_s else ''}s"


_GO_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
             "m": 60_000_000_000, "h": 3_600_000_000_000}
_GO_PART = re.compile(r"(\d*\.?\d*)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration_ns(text: str) -> int:
    """Go's ``time.ParseDuration`` (raises ValueError with Go's message on a bad string)."""
    s = text.strip()
    orig = s
    sign = 1
    if s[:1] in "+-":
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f'time: invalid duration "{orig}"')
    total, pos = 0.0, 0
    while pos < len(s):
        m = _GO_PART.match(s, pos)
        if not m or m.group(1) in ("", "."):
            if re.fullmatch(r"\d+(\.\d*)?", s[pos:]):
                raise ValueError(f'time: missing unit in duration "{orig}"')
            raise ValueError(f'time: invalid duration "{orig}"')
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    return sign * int(round(total))


def keep_alive_ns(value: Any, default_ns: int) -> int:
    """A request's keep_alive as Ollama's api.Duration reads it: number = seconds, string = Go duration,
    negative = forever (MaxInt64); absent (None) → the server default."""
    if value is None:
        return default_ns
    if isinstance(value, bool):
        raise ValueError("Unsupported type: 'bool'")
    if isinstance(value, (int, float)):
        return GO_MAX_DURATION_NS if value < 0 else int(value * 1e9)
    if isinstance(value, str):
        ns = parse_go_duration_ns(value)
        return GO_MAX_DURATION_NS if ns < 0 else ns
    raise ValueError(f"Unsupported type: '{type(value).__name__}'")


def env_keep_alive_ns(raw: str) -> int:
    """envconfig.KeepAlive(): Go duration, else integer seconds, else 5m; negative → forever."""
    ns = 5 * 60 * 1_000_000_000
    raw = raw.strip().strip("\"'")
    if raw:
        try:
            ns = parse_go_duration_ns(raw)
        except ValueError:
            try:
                ns = int(raw) * 1_000_000_000
            except ValueError:
                pass
    return GO_MAX_DURATION_NS if ns < 0 else ns


def go_bool(raw: str, default: bool = False) -> bool:
    """envconfig.Bool: strconv.ParseBool, and (Ollama's quirk) anything unparsable counts as true."""
    raw = raw.strip().strip("\"'")
    if not raw:
        return default
    if raw in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if raw in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return True


def rfc3339(t: float, *, utc: bool = False, millis_only: bool = False) -> str:
    """Go time formatting: RFC3339Nano (trailing zeros trimmed) or slog's millisecond form; local zone
    unless ``utc``; 'Z' for a zero offset."""
    ns = int(round(t * 1e9))
    secs, frac = divmod(ns, 1_000_000_000)
    dt = _dt.datetime.fromtimestamp(secs, _dt.timezone.utc)
    if not utc:
        dt = dt.astimezone()
    off = dt.utcoffset() or _dt.timedelta(0)
    if off == _dt.timedelta(0):
        zone = "Z"
    else:
        total = int(off.total_seconds())
        sign = "+" if total >= 0 else "-"
        hh, mm = divmod(abs(total) // 60, 60)
        zone = f"{sign}{hh:02d}:{mm:02d}"
    if millis_only:
        frac_s = f".{frac // 1_000_000:03d}"
    else:
        f = f"{frac:09d}".rstrip("0")
        frac_s = f".{f}" if f else ""
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + frac_s + zone


def _slog_value(v: Any) -> str:
    s = v if isinstance(v, str) else ("true" if v is True else "false" if v is False else str(v))
    # slog's TextHandler quotes empty strings and any value with a space, '=', '"' or a non-printable.
    if s == "" or any(c in ' ="\\' or not c.isprintable() for c in s):
        return json.dumps(s, ensure_ascii=False)
    return s


def slog_line(level: str, source: str, msg: str, *, t: float | None = None, **attrs: Any) -> str:
    """One line of Ollama's log (slog TextHandler, AddSource with the file's base name)."""
    parts = [f"time={rfc3339(time.time() if t is None else t, millis_only=True)}", f"level={level}",
             f"source={source}", f"msg={_slog_value(msg)}"]
    parts += [f"{k}={_slog_value(v)}" for k, v in attrs.items()]
    return " ".join(parts)


def go_map(values: dict[str, str]) -> str:
    """fmt's %v of a map[string]string: keys sorted bytewise, ``map[K:V K:V]``."""
    return "map[" + " ".join(f"{k}:{values[k]}" for k in sorted(values)) + "]"


def gin_line(status: int, latency_ns: int, client: str, method: str, path: str, *,
             t_end: float | None = None) -> str:
    """gin's default logger line (no colours: not a terminal), written when the request ends."""
    lat = latency_ns
    if lat > 60_000_000_000:  # gin truncates latencies over a minute to whole seconds
        lat -= lat % 1_000_000_000
    stamp = time.strftime("%Y/%m/%d - %H:%M:%S", time.localtime(time.time() if t_end is None else t_end))
    # gin's format is "[GIN] %v |%s %3d %s| %13v | %15s |%s %-7s %s %#v" with empty colour codes.
    return f'[GIN] {stamp} | {status:3d} | {go_duration(lat):>13} | {client:>15} | {method:<7}  {json.dumps(path)}'


# ---- the log stream ----------------------------------------------------------------------------
class LogWriter:
    """Writes whole lines to a stream, with the prefix the chosen log transport adds.

    ``journald``: ``Nov 24 10:12:32 host ollama[PID]: `` (journalctl's short format, the service's PID);
    ``docker``: ``ollama  | `` (compose's service-name column). One lock, so lines from the HTTP
    threads and the runner relay never interleave.
    """

    def __init__(self, stream: TextIO, style: str = "slog", pid: int | None = None, debug: bool = False):
        if style not in LOG_STYLES:
            raise ValueError(f"log style {style!r}; allowed: {', '.join(LOG_STYLES)}")
        self.stream, self.style, self.debug = stream, style, debug
        self.pid = pid or os.getpid()
        self.host = socket.gethostname().split(".")[0]
        self._lock = threading.Lock()

    def prefix(self) -> str:
        if self.style == "journald":
            return time.strftime("%b %d %H:%M:%S", time.localtime()) + f" {self.host} ollama[{self.pid}]: "
        if self.style == "docker":
            return "ollama  | "
        return ""

    def raw(self, line: str) -> None:
        with self._lock:
            try:
                self.stream.write(self.prefix() + line.rstrip("\n") + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass  # the log going away must never take a request down

    def log(self, level: str, source: str, msg: str, **attrs: Any) -> None:
        if level == "DEBUG" and not self.debug:
            return
        self.raw(slog_line(level, source, msg, **attrs))


# ---- process titles ----------------------------------------------------------------------------
def set_proctitle(title: str, comm: str | None = None) -> bool:
    """Make /proc/self/cmdline read ``title`` (what ps, pgrep -f and psutil show), like setproctitle(3).

    CPython keeps its own copy of argv, so the kernel's argv area can be overwritten in place; the
    last byte is made non-NUL, which tells the kernel to show the area up to the first NUL (the
    setproctitle convention, handled by psutil). Only when the title fits the original area.
    """
    ok = False
    try:
        stat = open("/proc/self/stat").read()
        fields = stat[stat.rindex(")") + 2:].split()
        arg_start, arg_end = int(fields[45]), int(fields[46])  # stat fields 48 and 49
        room = arg_end - arg_start
        data = title.encode()
        if 0 < len(data) + 2 <= room:
            buf = data + b"\0" * (room - len(data) - 1) + b" "
            ctypes.memmove(arg_start, buf, room)
            ok = True
    except (OSError, ValueError, IndexError):
        ok = False
    if comm:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(15, comm.encode()[:15], 0, 0, 0)  # PR_SET_NAME: what pgrep -x / psutil name() match
        except (OSError, AttributeError):
            pass
    return ok


def now_pair() -> tuple[float, float]:
    """(time.time(), time.monotonic()) taken back to back: truth.jsonl carries both clocks."""
    return time.time(), time.monotonic()


__all__ = ["DEFAULT_VERSION", "FAKE_EXE", "GO_MAX_DURATION_NS", "LOG_STYLES", "LogWriter", "env_keep_alive_ns",
           "gin_line", "go_bool", "go_duration", "go_map", "keep_alive_ns", "new_runner_style",
           "parse_go_duration_ns", "rfc3339", "set_proctitle", "slog_line", "supports_logprobs", "version_tuple"]
