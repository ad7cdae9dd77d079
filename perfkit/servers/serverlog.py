"""The server's own account of a run: its log lines, parsed into events.

A client sees a slow first request; the server's log says why (runner spawn, weights load, partial
GPU offload, a setting that did not apply). This module turns log lines into ``LogEvent``s with
times in epoch seconds, and reads only the part of a log written during a run (``LogSource``).

The line grammars are each server kind's (a :class:`LineFormat` it registers); this module reads what every log
shares, leniently (unknown lines give None, never an exception): the source prefixes of journald (``short``,
``short-iso``, ``short-precise``), docker compose (``NAME-1  | ``) and docker ``--timestamps``
(``2026-11-24T10:00:00.123456789Z ``), the Go forms many servers write (durations, maps, slog attributes),
perfkit's own start marks, relative stamps put on the wall clock, and a line without a time inheriting the last.
"""

from __future__ import annotations

import abc
import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, Iterable

from perfkit.servers import marks
from perfkit.core.errors import PerfkitError
from perfkit.servers.procs import parse_runner_argv

KINDS = (
    "server_config",     # env: the full effective config (Ollama)
    "server_listening",  # address, version
    "runner_start",      # cmd, argv, model_path, flags (a runner / model instance is spawned)
    "runner_waiting",    # Ollama waits for the runner to answer: the load begins
    "load_progress",     # progress 0..1 (Ollama, OLLAMA_DEBUG=1)
    "offload",           # layers_gpu, layers_total, stage ("planned" by Ollama's estimate, "actual" by the loader)
    "model_buffer",      # device, mib: model weights per device
    "kv_cache",          # device, mib
    "compute_buffer",    # device, mib
    "gpu_init",          # backend, count
    "gpu_device",        # index, name (+ compute_capability, free_mib, total_mib where given)
    "backend_loaded",    # backend, path (ggml dynamic backends)
    "model_loading",     # model_path (llama-server starts reading a model)
    "runner_ready",      # seconds: Ollama's "llama runner started in N seconds"
    "model_loaded",      # llama-server's "model loaded"
    "runners_loaded",    # count (Ollama's "loaded runners")
    "request",           # status, latency_s, client, method, path (GIN)
    "timing",            # phase, ms, tokens, ms_per_token, tokens_per_s, slot, task (llama-server per request)
    "warning",           # level, msg
    "error",             # level, msg
    "load_timeout",      # msg, progress
    "unload",            # reason, name: a model is being unloaded (expiry, eviction, stop, idle sleep)
    "runner_exit",       # name, exit_status: a llama-server model instance ended
    "request_proxied",   # name, port: a llama-server router hands a request to a model instance
)

# Lines the parser raised on (and skipped): never an analysis stopped by one odd line, but never silent either.
MISREAD: list[str] = []
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# --- source prefixes ------------------------------------------------------------------------------

_ISO_TS = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})"
_JOURNAL_ISO = re.compile(rf"^(?P<ts>{_ISO_TS}) (?P<host>\S+) (?P<ident>[^\s\[\]:]+)(?:\[(?P<pid>\d+)\])?: ?")
_JOURNAL_SHORT = re.compile(
    r"^(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +(?P<day>\d{1,2}) "
    r"(?P<hms>\d{2}:\d{2}:\d{2})(?P<frac>\.\d+)? (?P<host>\S+) (?P<ident>[^\s\[\]:]+)(?:\[(?P<pid>\d+)\])?: ?"
)
_COMPOSE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*) +\| ?")
_DOCKER_TS = re.compile(rf"^(?P<ts>{_ISO_TS}) ")
_MONTHS = {m: i for i, m in enumerate("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), 1)}


@dataclass
class Prefix:
    rest: str
    time_unix_s: float | None = None
    resolution_s: float | None = None


def local_ts(dt: datetime, local_tz: tzinfo | None) -> float:
    """Epoch seconds of a naive local time: in ``local_tz``, or the machine's zone when None."""
    if local_tz is not None:
        return dt.replace(tzinfo=local_tz).timestamp()
    return dt.timestamp()  # naive datetime: Python applies the machine's local zone


def iso_ts(text: str, local_tz: tzinfo | None) -> float | None:
    try:
        dt = datetime.fromisoformat(text.replace(",", "."))
    except ValueError:
        return None
    return dt.timestamp() if dt.tzinfo else local_ts(dt, local_tz)


def split_prefix(line: str, local_tz: tzinfo | None = None, year: int | None = None) -> Prefix:
    line = _ANSI.sub("", line.rstrip("\r\n"))
    p = Prefix(line)
    m = _JOURNAL_ISO.match(line)
    if m:
        p = Prefix(line[m.end():], iso_ts(m["ts"], local_tz), None if re.search(r"[.,]\d", m["ts"]) else 1.0)
    else:
        m = _JOURNAL_SHORT.match(line)
        if m:
            p = Prefix(line[m.end():], _journal_short_ts(m, local_tz, year), None if m["frac"] else 1.0)
    m = _COMPOSE.match(p.rest)
    if m:
        p.rest = p.rest[m.end():]
    m = _DOCKER_TS.match(p.rest)
    if m:
        t = iso_ts(m["ts"], local_tz)
        p.rest = p.rest[m.end():]
        if p.time_unix_s is None and t is not None:
            p.time_unix_s, p.resolution_s = t, None
    return p


def _journal_short_ts(m: re.Match, local_tz: tzinfo | None, year: int | None) -> float | None:
    hh, mm, ss = (int(x) for x in m["hms"].split(":"))
    frac = float(m["frac"]) if m["frac"] else 0.0
    explicit = year is not None
    y = year if explicit else datetime.now(local_tz).year
    try:
        dt = datetime(y, _MONTHS[m["mon"]], int(m["day"]), hh, mm, ss)
    except ValueError:
        return None
    t = local_ts(dt, local_tz) + frac
    # journald's short format has no year: a December line read in January belongs to last year.
    if not explicit and t > time.time() + 86400:
        t = local_ts(dt.replace(year=y - 1), local_tz) + frac
    return t


def _zoned_prefix(line: str) -> bool:
    """Whether the line starts with a source prefix that carries a time zone."""
    line = _ANSI.sub("", line)
    return bool(_JOURNAL_ISO.match(line) or _DOCKER_TS.match(line)
                or ((m := _COMPOSE.match(line)) and _DOCKER_TS.match(line[m.end():])))


def naive_times_zone(lines: Iterable[str]) -> tuple[tzinfo | None, int]:
    """The zone of the server's zone-less stamps (GIN, Go log lines), told by lines whose source prefix
    carries a zone: (that zone as a fixed offset rounded to 15 minutes, lines that agreed), or (None, 0)
    when no line has both or they disagree."""
    from datetime import timedelta, timezone

    offsets = []
    for ln in lines:
        if not _zoned_prefix(ln):
            continue
        pre = split_prefix(ln, timezone.utc)
        stamp = next((t for t in (f.naive_time(pre.rest) for f in _FORMATS) if t is not None), None)
        if pre.time_unix_s is None or stamp is None:
            continue
        naive = stamp.replace(tzinfo=timezone.utc).timestamp()
        offsets.append(round((naive - pre.time_unix_s) / 900) * 900)
    if not offsets:
        return None, 0
    best = max(set(offsets), key=offsets.count)
    agree = offsets.count(best)
    if agree < 0.8 * len(offsets):
        return None, 0
    return timezone(timedelta(seconds=best)), agree


def strip_prefix(line: str) -> str:
    """The line as the server wrote it: without a journald, docker compose or docker --timestamps prefix
    (and without terminal colour codes)."""
    return split_prefix(line).rest


# --- Go value formats -----------------------------------------------------------------------------

_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
    """A Go ``time.Duration`` string in seconds: "178.535µs", "12.5ms", "9.79s", "3m9s", "1h2m3s",
    "2m38.123s", "0s". ValueError if it is not one."""
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(s):
        m = _GO_DURATION_PART.match(s, pos)
        if not m:
            raise ValueError(f"not a Go duration: {text!r}")
        total += float(m[1]) * _GO_UNITS_S[m[2]]
        pos = m.end()
    if pos == 0:
        raise ValueError(f"not a Go duration: {text!r}")
    return sign * total


_GO_MAP_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_.\-]*):")


def parse_go_map(text: str) -> dict[str, str]:
    """A Go ``fmt`` map (``map[K1:V1 K2: K3:[a b]]``) as a dict of strings: an empty value is "",
    a bracketed list is kept as the text inside its brackets. Keys are identifiers (env names)."""
    s = text.strip()
    if s.startswith("map[") and s.endswith("]"):
        s = s[4:-1]
    out: dict[str, str] = {}
    pos = 0
    n = len(s)
    while pos < n:
        while pos < n and s[pos] == " ":
            pos += 1
        m = _GO_MAP_KEY.match(s, pos)
        if not m:
            break
        key, pos = m[1], m.end()
        if pos < n and s[pos] == "[":
            depth, j = 0, pos
            while j < n:
                depth += s[j] == "["
                depth -= s[j] == "]"
                if depth == 0:
                    break
                j += 1
            out[key] = s[pos + 1:j]
            pos = j + 1
            continue
        # A value runs to the next " KEY:"; an empty value is directly followed by it. Values may hold
        # colons (http://127.0.0.1:11434) but not a space followed by an identifier and a colon.
        nxt = re.compile(r" (?=[A-Za-z_][A-Za-z0-9_.\-]*:)").search(s, pos)
        end = nxt.start() if nxt else n
        out[key] = s[pos:end].strip()
        pos = end
    return out


_GO_ESCAPES = {"a": b"\a", "b": b"\b", "f": b"\f", "n": b"\n", "r": b"\r", "t": b"\t", "v": b"\v",
               "\\": b"\\", '"': b'"', "'": b"'"}


def go_unquote(q: str) -> str:
    """The string a Go ``strconv.Quote`` literal stands for (slog quotes values that need it)."""
    body = q[1:-1] if len(q) >= 2 and q[0] == q[-1] == '"' else q
    out = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\" or i + 1 >= len(body):
            out += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        e = body[i + 1]
        try:
            if e in _GO_ESCAPES:
                out += _GO_ESCAPES[e]
                i += 2
            elif e == "x":
                out.append(int(body[i + 2:i + 4], 16))  # a raw byte: invalid UTF-8 in the original
                i += 4
            elif e in "uU":
                n = 4 if e == "u" else 8
                out += chr(int(body[i + 2:i + 2 + n], 16)).encode("utf-8", "surrogatepass")
                i += 2 + n
            elif e in "01234567":
                out.append(int(body[i + 1:i + 4], 8) & 0xFF)
                i += 4
            else:
                out += ("\\" + e).encode()
                i += 2
        except ValueError:
            out += b"\\"
            i += 1
    return out.decode("utf-8", "replace")


_SLOG_PAIR = re.compile(r'\s*(?P<key>"(?:[^"\\]|\\.)*"|[^\s="]+)=(?P<val>"(?:[^"\\]|\\.)*"|\S*)')


def slog_attrs(text: str) -> dict[str, str]:
    attrs: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _SLOG_PAIR.match(text, pos)
        if not m:
            nxt = text.find(" ", pos + 1)  # skip a token that isn't key=value
            if nxt < 0:
                break
            pos = nxt
            continue
        key = m["key"]
        key = go_unquote(key) if key.startswith('"') else key
        val = m["val"]
        attrs[key] = go_unquote(val) if val.startswith('"') else val
        pos = m.end()
    return attrs


_HUMAN_BYTES = re.compile(r"^\s*([\d.]+)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)\s*$")
_BYTES_PER = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
              "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}


def mib(text: str) -> float | None:
    """Ollama's format.HumanBytes2 ("16.3 GiB", "512 MiB", "0 B") in MiB."""
    m = _HUMAN_BYTES.match(text or "")
    if not m:
        return None
    return float(m[1]) * _BYTES_PER[m[2]] / (1 << 20)


def split_cmd(cmd: str) -> list[str]:
    try:
        # Windows paths (C:\Users\...) lose their backslashes in POSIX mode.
        if re.search(r"(^|\s)[A-Za-z]:\\", cmd):
            return [a.strip('"') for a in shlex.split(cmd, posix=False)]
        return shlex.split(cmd)
    except ValueError:
        return cmd.split()


# --- events ---------------------------------------------------------------------------------------


@dataclass
class LogEvent:
    """One thing the server said. ``wall_unix_s``: when it wrote it (epoch seconds, UTC), None when the
    line carries no time. ``fields`` hold parsed values with units in their names."""

    kind: str
    wall_unix_s: float | None
    fields: dict[str, Any]
    line: str


@dataclass
class Parsed:
    event: LogEvent | None
    time_unix_s: float | None = None  # wall time the line itself (or its source prefix) carries
    rel_s: float | None = None        # a relative log stamp: seconds since the writing process started
    instance_port: int | None = None  # router-forwarded child line: the child's port
    extra: dict[str, Any] = field(default_factory=dict)
    fmt: Any = None  # the LineFormat that read the line


# Phrases servers log when a model is being unloaded (a kind adds its own spellings in its format).
UNLOAD_MESSAGES = (
    "timer expired, expiring to unload", "gone idle, expiring to unload", "runner expired event received",
    "shutting down runner", "sending an unloaded event", "unload completed", "evicting", "stopping model instance",
    "removing LRU", "server is entering sleeping state", "expiring loaded models",
)
# What a log line says a runner was started with, from its command line (any kind's shape, see procs).
OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")


def fields_runner_start(cmd: str, argv: list[str] | None = None) -> dict[str, Any]:
    argv = argv if argv is not None else split_cmd(cmd)
    r = parse_runner_argv(argv)
    return {"cmd": cmd, "argv": argv, "model_path": r.model_path, "flags": r.flags, "runner_kind": r.kind,
            "port": r.port}


NOT_MINE = object()  # a format's answer for a line that is not in its format


class LineFormat(abc.ABC):
    """One log-line grammar a server kind writes (registered by the kind, :func:`register_format`).

    ``parse`` reads the line's text (its source prefix gone: ``pre``), may set ``res``'s times
    (``time_unix_s``, ``rel_s``, ``instance_port``) and ``extra`` fields (``time_resolution_s``), and returns
    ``(kind, fields)`` for an event, None for a line of its format that says nothing tracked, or ``NOT_MINE``.
    ``catch_all``: a grammar that accepts any line (tried after every other)."""

    catch_all = False

    @abc.abstractmethod
    def parse(self, text: str, pre: Prefix, res: Parsed, extra: dict[str, Any], local_tz: tzinfo | None) -> Any:
        ...

    def naive_time(self, text: str) -> datetime | None:
        """The zone-less local time a line of this format carries (None: it carries none, or one with a zone)."""
        return None

    def collects(self, ev: LogEvent) -> bool:
        """Whether ``ev`` takes the lines that follow it (a runner's argv printed one argument a line)."""
        return False

    def continues(self, ev: LogEvent, raw: str, parsed: Parsed) -> bool:
        """Whether ``raw`` belongs to the collecting ``ev`` (then it is added and consumed)."""
        return False

    def finish(self, ev: LogEvent) -> None:
        """Complete ``ev`` once its lines are collected."""


_FORMATS: list[LineFormat] = []


def register_format(fmt: LineFormat) -> None:
    """A log-line grammar (at a kind's import); catch-all grammars are tried last."""
    if not any(type(f) is type(fmt) for f in _FORMATS):
        _FORMATS.append(fmt)
        _FORMATS.sort(key=lambda f: f.catch_all)


def _parse(line: str, local_tz: tzinfo | None, year: int | None) -> Parsed:
    pre = split_prefix(line, local_tz, year)
    text = pre.rest
    res = Parsed(None, pre.time_unix_s)
    fields_extra: dict[str, Any] = {}
    if pre.resolution_s:
        fields_extra["time_resolution_s"] = pre.resolution_s
    kf = None
    for fmt in _FORMATS:
        kf = fmt.parse(text, pre, res, fields_extra, local_tz)
        if kf is not NOT_MINE:
            res.fmt = fmt
            break
    else:
        kf = None
    if kf:
        kind, fields = kf
        fields.update(fields_extra)
        if res.rel_s is not None:
            fields["log_t_s"] = res.rel_s
        if res.instance_port is not None:
            fields["instance_port"] = res.instance_port
        res.event = LogEvent(kind, res.time_unix_s, fields, text)
    res.extra = fields_extra
    return res


def parse_line(line: str, *, local_tz: tzinfo | None = None, year: int | None = None) -> LogEvent | None:
    """One log line as an event, or None for a line that says nothing we track (never raises).

    ``local_tz``: the zone of lines that carry local time without a zone (GIN, journald short, old Go
    log); None means this machine's zone. ``year``: for journald's short format, which has none
    (default: the current year, or last year for a date in the future). A llama.cpp relative timestamp
    is given in ``fields["log_t_s"]`` with ``wall_unix_s`` None: use ``parse(..., t0_wall_unix_s=)``.
    """
    try:
        return _parse(line, local_tz, year).event
    except Exception as e:  # noqa: BLE001  (a log line we misread must not stop an analysis)
        MISREAD.append(f"{type(e).__name__}: {e}: {line[:120]!r}")
        return None


def parse(lines: Iterable[str], *, local_tz: tzinfo | None = None, year: int | None = None,
          t0_wall_unix_s: float | None = None) -> list[LogEvent]:
    """Events of a whole log, in order.

    A line without a time of its own (``load_tensors: ...`` inside Ollama's log) takes the time of the
    last timed line and says so in ``fields["time_inherited"] = True``.

    llama-server's ``--log-timestamps`` are seconds since its process started (``fields["log_t_s"]``);
    ``t0_wall_unix_s`` (epoch seconds) is that start, which makes them wall times. Without it such
    lines keep ``wall_unix_s`` None. perfkit's start mark (``perfkit.servers.marks``, written into
    the log just before each start) sets ``t0_wall_unix_s`` for the lines after it.
    A router's forwarded child lines (``[PORT] ...``) count from the child's own start, taken as the
    router's time of its "spawning server instance ... on port PORT" line: ``fields["router_t_s"]`` is
    the child line on the router's relative clock, and its wall time has ``fields["t0_estimated"]``
    (the child starts a few ms after that line). The router's "spawning server instance with args:"
    block fills ``argv``/``flags``/``model_path`` of that runner_start event.
    """
    events: list[LogEvent] = []
    last_t: float | None = None
    spawn_rel_s: dict[int, float] = {}  # child port → router-relative time of its spawn line
    collecting: LogEvent | None = None  # an event waiting for the lines that complete it
    collecting_fmt: LineFormat | None = None
    for raw in lines:
        started = marks.started_at(raw)
        if started is not None:
            t0_wall_unix_s = started
            spawn_rel_s.clear()
            continue
        try:
            p = _parse(raw, local_tz, year)
        except Exception as e:  # noqa: BLE001 - a misread line never stops an analysis; MISREAD says which
            MISREAD.append(f"{type(e).__name__}: {e}: {raw[:120]!r}")
            continue
        ev = p.event

        # An event whose format prints more of it on the lines that follow (a router's child argv).
        if collecting is not None:
            if collecting_fmt.continues(collecting, raw, p):
                continue
            collecting_fmt.finish(collecting)
            collecting = None

        wall = p.time_unix_s
        if wall is None and p.rel_s is not None:
            if p.instance_port is None:
                if t0_wall_unix_s is not None:
                    wall = t0_wall_unix_s + p.rel_s
            elif p.instance_port in spawn_rel_s:
                router_t_s = round(spawn_rel_s[p.instance_port] + p.rel_s, 6)
                if ev is not None:
                    ev.fields["router_t_s"] = router_t_s
                if t0_wall_unix_s is not None:
                    wall = t0_wall_unix_s + router_t_s
                    if ev is not None:
                        ev.fields["t0_estimated"] = True
        if ev is not None and p.fmt is not None and p.fmt.collects(ev):
            collecting, collecting_fmt = ev, p.fmt
            if p.rel_s is not None and p.instance_port is None:
                spawn_rel_s[ev.fields["port"]] = p.rel_s
        if wall is not None:
            res_s = p.extra.get("time_resolution_s") or 0.0
            # A whole-second stamp inside the second of a finer one already seen says nothing newer:
            # keep the finer one for the untimed lines that follow.
            if not (res_s and last_t is not None and wall <= last_t < wall + res_s):
                last_t = wall
            if ev is not None:
                ev.wall_unix_s = wall
        elif ev is not None and last_t is not None and p.rel_s is None:
            # A line with a relative time of its own but no t0 keeps wall None rather than borrow one.
            ev.wall_unix_s = last_t
            ev.fields["time_inherited"] = True
        if ev is not None:
            events.append(ev)
    if collecting is not None:
        collecting_fmt.finish(collecting)
    return events


def line_time(line: str, *, local_tz: tzinfo | None = None, year: int | None = None) -> tuple[float | None, float]:
    """(wall time the line carries in epoch seconds or None, its resolution in seconds; 0 = sub-second)."""
    try:
        p = _parse(line, local_tz, year)
    except Exception:  # noqa: BLE001
        return None, 0.0
    return p.time_unix_s, float(p.extra.get("time_resolution_s") or 0.0)


# --- where the log is -----------------------------------------------------------------------------


def source_of(spec: Any) -> "LogSource | None":
    """The server log a parameter file names (``backend.server_log``: a file, or a command such as journalctl;
    the model or its plain-data form as it travels to an agent), or None."""
    if not spec:
        return None
    from perfkit.core.clock import parse_tz

    get = spec.get if isinstance(spec, dict) else lambda k: getattr(spec, k)
    if get("file"):
        return FileLogSource(get("file"))
    return CommandLogSource(get("command"), local_tz=parse_tz(get("tz")) if get("tz") else None)


class LogSource(abc.ABC):
    """A server log perfkit can read the new part of: ``m = src.mark()`` before a run,
    ``src.read_since(m)`` after it gives only the lines written in between (prefixes stripped)."""

    notes: list[str]

    @abc.abstractmethod
    def describe(self) -> str:
        """What this source is, for a report."""

    @abc.abstractmethod
    def mark(self) -> object:
        """A point in the log to read from later."""

    @abc.abstractmethod
    def read_since(self, mark: object) -> list[str]:
        """The lines written after ``mark``."""


class FileLogSource(LogSource):
    """A log file (``~/.ollama/logs/server.log``, a redirect of ``ollama serve``, llama-server's log).
    The mark is a byte offset; a file that shrank or was replaced (rotation, truncation) is read from its
    start, and ``notes`` says so."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).expanduser()
        self.notes: list[str] = []
        self._inode: int | None = None

    def describe(self) -> str:
        return f"file {self.path}"

    def _stat(self) -> os.stat_result | None:
        try:
            return self.path.stat()
        except OSError:
            return None

    def mark(self) -> int:
        st = self._stat()
        self._inode = st.st_ino if st else None
        return st.st_size if st else 0

    def read_since(self, mark: object) -> list[str]:
        offset = int(mark)  # type: ignore[call-overload]
        st = self._stat()
        if st is None:
            self.notes.append(f"{self.path} does not exist")
            return []
        if st.st_size < offset:
            self.notes.append(f"{self.path} shrank from {offset} to {st.st_size} bytes (rotated or truncated): "
                              "read from its start")
            offset = 0
        elif self._inode is not None and st.st_ino != self._inode:
            self.notes.append(f"{self.path} was replaced (rotated): read the new file from its start")
            offset = 0
        with open(self.path, "rb") as f:
            f.seek(offset)
            data = f.read()
        return data.decode("utf-8", "replace").splitlines()


class CommandLogSource(LogSource):
    """A command printing the log: ``journalctl -u ollama --no-pager -o short-iso``, ``docker logs ollama``,
    ``docker compose logs ollama``. The mark is the wall time (epoch seconds). The command gets
    ``--since`` where it is journalctl or ``docker [compose] logs``; lines are then kept when their time is
    at or after the mark (within the line's time resolution), and an untimed line when the timed line
    before it was kept (a continuation, e.g. ``load_tensors:`` output)."""

    def __init__(self, argv: list[str] | str, *, timeout_s: float = 60.0, local_tz: tzinfo | None = None):
        if isinstance(argv, str):
            argv = shlex.split(argv)
        if not argv:
            raise PerfkitError("log command is empty")
        self.argv = [str(a) for a in argv]
        self.timeout_s = timeout_s
        self.local_tz = local_tz
        self.notes: list[str] = []

    def describe(self) -> str:
        return "command " + shlex.join(self.argv)

    def mark(self) -> float:
        return time.time()

    def command_for(self, since_unix_s: float) -> list[str]:
        """The argv that is run for ``read_since(since_unix_s)``."""
        argv = list(self.argv)
        names = [Path(a).name for a in argv]
        # A second of slack: --since takes whole seconds here; the time filter does the exact cut.
        since = int(since_unix_s) - 1
        if "journalctl" in names and not any(a in ("--since", "-S") or a.startswith("--since=") for a in argv):
            argv += ["--since", f"@{since}"]
        elif names and names[0] in ("docker", "podman") and "logs" in argv:
            i = argv.index("logs") + 1
            if "--since" not in argv and not any(a.startswith("--since=") for a in argv):
                argv[i:i] = ["--since", str(since)]
            # Each line stamped with a zone by the container runtime: the container's own zone (Ollama's GIN
            # lines carry local time without one) can then be told apart from the host's.
            if not any(a in ("-t", "--timestamps") for a in argv):
                argv[i:i] = ["--timestamps"]
        return argv

    def read_since(self, mark: object) -> list[str]:
        since = float(mark)  # type: ignore[arg-type]
        argv = self.command_for(since)
        # docker logs writes the container's stderr (where Ollama logs) to its own stderr: merge the two
        # streams in the order written instead of losing one.
        merge = Path(argv[0]).name in ("docker", "podman")
        try:
            r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge else subprocess.PIPE,
                               text=True, errors="replace", timeout=self.timeout_s)
        except FileNotFoundError:
            raise PerfkitError(f"log command not found: {shlex.join(argv)}") from None
        except subprocess.TimeoutExpired:
            raise PerfkitError(f"log command took over {self.timeout_s:g} s: {shlex.join(argv)}") from None
        if r.returncode != 0:
            err = (r.stdout if merge else r.stderr) or ""
            tail = "\n".join(err.strip().splitlines()[-5:]) or "(no stderr)"
            raise PerfkitError(f"log command failed (exit {r.returncode}): {shlex.join(argv)}\n{tail}")
        return self._filter(r.stdout.splitlines(), since)

    def _filter(self, lines: list[str], since: float) -> list[str]:
        out: list[str] = []
        keep_untimed = False
        for ln in lines:
            if ln.startswith("-- ") and ln.rstrip().endswith(" --"):  # journalctl's "-- No entries --"
                continue
            t, res = line_time(ln, local_tz=self.local_tz)
            body = strip_prefix(ln)
            if t is None:
                if keep_untimed:
                    out.append(body)
                continue
            keep_untimed = t + res >= since if res else t >= since
            if keep_untimed:
                # A zoned source prefix (docker --timestamps, journald short-iso) stays: it dates the line
                # better than the server's own zone-less stamp, and tells that stamp's zone.
                out.append(ln if _zoned_prefix(ln) else body)
        return out
