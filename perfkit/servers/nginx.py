"""A perfkit-managed nginx reverse proxy in front of one or more LLM servers.

``Nginx`` is a context manager like ``Engine``: it writes its own nginx.conf under ``run_dir/nginx/``
(every path nginx writes — pid, logs, temp files, cache — lives there, so no root and no system nginx
are needed), starts nginx in the foreground on a free loopback port, and on exit (normal, error or
Ctrl-C) stops it and its workers. Each response carries ``X-Upstream-Addr`` (which server answered)
and ``X-Cache-Status``; the access log has nginx's own timings, read back by ``parse_access_log``.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from perfkit.core import children
from perfkit.servers.ports import free_port
from perfkit.core.errors import ConfigError, PerfkitError


MAX_CACHED_BODY_BYTES = 48 << 10  # see ProxyConfig.cache_max_body_bytes


class ProxyError(PerfkitError):
    """nginx is missing, rejects its configuration, or will not start."""


class ProxyConfigError(ConfigError, ValueError):
    """A bad proxy parameter (a ValueError too, so plain ``except ValueError`` works)."""


def install_hint() -> str:
    return ("install nginx: apt-get install nginx-light (Debian/Ubuntu), brew install nginx (macOS), "
            "or set PERFKIT_NGINX=/path/to/nginx")


def nginx_binary() -> str | None:
    """``$PERFKIT_NGINX``, else nginx on PATH or in the sbin directories a non-root PATH lacks."""
    env = os.environ.get("PERFKIT_NGINX")
    if env:
        return env if os.access(env, os.X_OK) else None
    found = shutil.which("nginx")
    if found:
        return found
    for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx", "/opt/homebrew/bin/nginx"):
        if os.access(p, os.X_OK):
            return p
    return None


def nginx_version(binary: str | None = None) -> str | None:
    """e.g. '1.22.1' (from ``nginx -v``, which prints to stderr); None when nginx is missing."""
    binary = binary or nginx_binary()
    if not binary:
        return None
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    text = (out.stderr + out.stdout).strip()
    return text.split("nginx/", 1)[1].split()[0] if "nginx/" in text else text or None


def _require_binary() -> str:
    b = nginx_binary()
    if not b:
        raise ProxyError(f"nginx not found; {install_hint()}")
    return b


@dataclass
class Upstream:
    """One server behind the proxy: ``http://host:port`` and its share of requests (weight ≥ 1)."""

    url: str
    weight: int = 1

    def __post_init__(self) -> None:
        u = urlsplit(self.url)
        try:
            port = u.port
        except ValueError:
            port = None
        if u.scheme != "http" or not u.hostname or port is None or u.path not in ("", "/") or u.query:
            raise ProxyConfigError(f"upstream url {self.url!r}: expected http://host:port")
        if not isinstance(self.weight, int) or self.weight < 1:
            raise ProxyConfigError(f"upstream {self.url}: weight must be an integer >= 1, got {self.weight!r}")

    @property
    def server(self) -> str:
        """``host:port`` as nginx's ``server`` directive wants it."""
        return urlsplit(self.url).netloc


@dataclass
class ProxyConfig:
    """What the proxy does. Times are seconds.

    next_upstream: failures after which a request is tried on another server (``proxy_next_upstream``).
        The default ("error", "timeout") retries POSTs only when nothing was sent to the failed server
        yet (connection refused, connect timeout): nginx never re-sends a POST once sent unless
        "non_idempotent" is listed, and we leave it out because re-running a generation on a second
        server would double its load and hide the timeout (504) the study measures.
    max_fails / fail_timeout_s: passive health check; after ``max_fails`` failures (of the kinds in
        next_upstream, a read timeout included) within fail_timeout_s a server gets no requests for
        fail_timeout_s (whole seconds). Ignored by nginx when there is a single upstream.
    cache_max_body_bytes: with the cache on and ``$request_body`` in cache_key, the largest request
        body accepted (larger ones get 413), at most 48 KiB. Two nginx limits, both silent (measured
        with 1.22.1): ``$request_body`` is empty for a body spilled to a temp file, so different prompts
        would share one entry; and the key is stored behind a 16-bit offset, so a key over ~64 KiB is
        written but never read back (every request a MISS). 48 KiB of body leaves room for an 8 KiB URI.
        Longer prompts: key on something shorter, e.g. a digest header the client sends.
    """

    upstreams: list[Upstream]
    proxy_read_timeout_s: float = 900
    proxy_connect_timeout_s: float = 5
    proxy_send_timeout_s: float = 60
    buffering: bool = False  # proxy_buffering; off so streamed tokens reach the client as they come
    keepalive: int = 32  # idle keep-alive connections to the upstreams kept per worker; 0 = none
    max_fails: int = 1
    fail_timeout_s: float = 10
    next_upstream: list[str] = field(default_factory=lambda: ["error", "timeout"])
    next_upstream_tries: int = 0  # 0 = as many as there are servers
    cache: bool = False
    cache_valid_s: float = 3600  # whole seconds, for 200 responses
    cache_key: str = "$request_method$request_uri$request_body"
    cache_max_body_bytes: int = MAX_CACHED_BODY_BYTES
    cache_methods: list[str] = field(default_factory=lambda: ["POST"])  # GET and HEAD are always cached
    worker_connections: int = 1024  # each proxied request takes two
    # Upstream headers nginx must not obey. llama-server sends "X-Accel-Buffering: no", which turns
    # buffering off per response whatever proxy_buffering says, and with it the cache (nginx stores only
    # buffered responses): the configured cache then caches nothing. Listing it here makes the config rule.
    ignore_headers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not self.upstreams:
            raise ProxyConfigError("a proxy needs at least one upstream")
        self.upstreams = [u if isinstance(u, Upstream) else Upstream(u) for u in self.upstreams]
        for u in self.upstreams:
            u.__post_init__()  # fields may have been changed since construction
        for name in ("proxy_read_timeout_s", "proxy_connect_timeout_s", "proxy_send_timeout_s"):
            v = getattr(self, name)
            if not v > 0 or round(v * 1000) < 1:
                raise ProxyConfigError(f"{name} must be > 0 (at least 0.001 s), got {v!r}")
        for name in ("fail_timeout_s", "cache_valid_s"):  # nginx takes whole seconds here
            v = getattr(self, name)
            if not v > 0 or float(v) != int(v):
                raise ProxyConfigError(f"{name} must be a whole number of seconds > 0, got {v!r}")
        for name in ("keepalive", "max_fails", "next_upstream_tries"):
            if getattr(self, name) < 0:
                raise ProxyConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 1 <= self.cache_max_body_bytes <= MAX_CACHED_BODY_BYTES:
            raise ProxyConfigError(f"cache_max_body_bytes must be 1 .. {MAX_CACHED_BODY_BYTES} (nginx keeps a "
                                   f"cache key under 64 KiB), got {self.cache_max_body_bytes!r}")
        if self.worker_connections < 2:
            raise ProxyConfigError(f"worker_connections must be >= 2, got {self.worker_connections!r}")
        allowed = {"error", "timeout", "invalid_header", "http_500", "http_502", "http_503", "http_504",
                   "http_403", "http_404", "http_429", "non_idempotent", "off"}
        bad = set(self.next_upstream) - allowed
        if bad or not self.next_upstream:
            raise ProxyConfigError(f"next_upstream: unknown {sorted(bad)}; allowed: {sorted(allowed)}")
        if any(c in self.cache_key for c in '"\\\n') or not self.cache_key.strip():
            raise ProxyConfigError(f"cache_key {self.cache_key!r}: nginx variables and text, "
                                   "without quotes, backslashes or line breaks")
        if not self.cache_methods or set(self.cache_methods) - {"GET", "HEAD", "POST"}:
            raise ProxyConfigError(f"cache_methods must be among GET, HEAD, POST, got {self.cache_methods!r}")
        allowed_ignore = {"X-Accel-Redirect", "X-Accel-Expires", "X-Accel-Limit-Rate", "X-Accel-Buffering",
                          "X-Accel-Charset", "Expires", "Cache-Control", "Set-Cookie", "Vary"}
        if set(self.ignore_headers) - allowed_ignore:
            raise ProxyConfigError(f"ignore_headers: unknown {sorted(set(self.ignore_headers) - allowed_ignore)}; "
                                   f"allowed: {sorted(allowed_ignore)}")
        if self.cache and not self.buffering:
            # Measured with nginx 1.22: with proxy_buffering off every response is a MISS, none is stored.
            raise ProxyConfigError("cache=True needs buffering=True: nginx never stores unbuffered responses")


def _ms(s: float) -> str:
    return f"{round(s * 1000)}ms"


LOG_FIELDS = ("msec", "status", "request_time", "upstream_addr", "upstream_status", "upstream_response_time",
              "upstream_connect_time", "upstream_header_time", "upstream_cache_status", "request_method",
              "request_uri", "request_length", "bytes_sent")


def render(cfg: ProxyConfig, prefix: Path, listen_port: int) -> str:
    """The nginx.conf text for ``cfg``, with every file nginx writes under ``prefix``."""
    cfg.validate()
    p = Path(prefix).resolve()
    user = ""
    if os.geteuid() == 0:
        # A root master drops its workers to `nobody`, who cannot write the temp and cache dirs under
        # prefix (pytest's tmp dirs are 0700). Workers keeping the master's user is simpler than chowning
        # every dir (and any run_dir above them), and is what a non-root run gets anyway.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"
    servers = "\n".join(f"        server {u.server} weight={u.weight} max_fails={cfg.max_fails} "
                        f"fail_timeout={int(cfg.fail_timeout_s)}s;" for u in cfg.upstreams)
    keepalive = f"\n        keepalive {cfg.keepalive};" if cfg.keepalive else ""
    log_format = "\\t".join(f"${f}" for f in LOG_FIELDS)
    cache_http = cache_loc = ""
    # Bodies up to 1 MiB stay in memory (a temp-file write would count as proxy overhead), and no size
    # is refused: long prompts are the point of some studies.
    body_buf, body_max = 1 << 20, 0
    if cfg.cache and "$request_body" in cfg.cache_key:
        body_buf = body_max = cfg.cache_max_body_bytes
    hdr = 72 << 10 if body_max else 8 << 10  # key ≤ 48k body + 8k URI, then the response headers
    nbufs = hdr // (8 << 10) + 1  # proxy_busy_buffers_size (>= hdr) must fit in all buffers but one
    if cfg.cache:
        cache_http = (f"\n    proxy_cache_path {p}/cache levels=1:2 keys_zone=perfkit:10m "
                      f"use_temp_path=off inactive={int(cfg.cache_valid_s)}s;")
        cache_loc = f"""
            proxy_cache perfkit;
            proxy_cache_key "{cfg.cache_key}";
            proxy_cache_methods {" ".join(cfg.cache_methods)};
            proxy_cache_valid 200 {int(cfg.cache_valid_s)}s;
            # The key is stored in the header buffer; when it does not fit nginx logs "proxy_buffer_size
            # ... is not enough for cache key" and bypasses the cache (a ~3.5 KB prompt in the 4k default).
            proxy_buffer_size {hdr};
            proxy_buffers {nbufs} 8k;
            proxy_busy_buffers_size {hdr};"""
    # With the cache on, its policy is this config's, not the upstream's headers.
    ignore = list(dict.fromkeys((["Cache-Control", "Expires", "Set-Cookie", "Vary"] if cfg.cache else [])
                                + list(cfg.ignore_headers)))
    if ignore:
        cache_loc += f"\n            proxy_ignore_headers {' '.join(ignore)};"
    tries = f"\n            proxy_next_upstream_tries {cfg.next_upstream_tries};" if cfg.next_upstream_tries else ""
    return f"""# written by perfkit.proxy
{user}daemon off;
master_process on;
worker_processes 1;
pid {p}/nginx.pid;
lock_file {p}/nginx.lock;
error_log {p}/error.log notice;

events {{
    worker_connections {cfg.worker_connections};
}}

http {{
    log_format perfkit '{log_format}';
    access_log {p}/access.log perfkit;
    client_body_temp_path {p}/temp/body;
    proxy_temp_path {p}/temp/proxy;
    fastcgi_temp_path {p}/temp/fastcgi;
    uwsgi_temp_path {p}/temp/uwsgi;
    scgi_temp_path {p}/temp/scgi;{cache_http}

    upstream perfkit_upstreams {{
{servers}{keepalive}
    }}

    server {{
        listen 127.0.0.1:{listen_port};
        client_body_buffer_size {body_buf};
        client_max_body_size {body_max};

        location / {{
            proxy_pass http://perfkit_upstreams;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout {_ms(cfg.proxy_connect_timeout_s)};
            proxy_send_timeout {_ms(cfg.proxy_send_timeout_s)};
            proxy_read_timeout {_ms(cfg.proxy_read_timeout_s)};
            proxy_buffering {"on" if cfg.buffering else "off"};
            # the whole body is read before the upstream is chosen: $request_body (cache key) needs it,
            # and a failed connect can be retried elsewhere with the full body
            proxy_request_buffering on;
            proxy_next_upstream {" ".join(cfg.next_upstream)};{tries}{cache_loc}
            add_header X-Upstream-Addr $upstream_addr always;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
}}
"""


def _test_conf(binary: str, prefix: Path, conf: Path) -> None:
    r = subprocess.run([binary, "-t", "-q", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                       capture_output=True, text=True, timeout=30)
    if r.returncode:
        raise ProxyError(f"nginx rejected {conf}:\n{(r.stderr + r.stdout).strip()}")


def _make_dirs(prefix: Path) -> None:
    for d in ("temp", "cache"):
        (prefix / d).mkdir(parents=True, exist_ok=True)


def check_config(cfg: ProxyConfig, listen_port: int | None = None) -> None:
    """Render ``cfg`` into a scratch prefix and have ``nginx -t`` check it; ProxyError with nginx's message."""
    binary = _require_binary()
    with tempfile.TemporaryDirectory(prefix="perfkit-nginx-") as d:
        prefix = Path(d)
        _make_dirs(prefix)
        conf = prefix / "nginx.conf"
        conf.write_text(render(cfg, prefix, listen_port or free_port()))
        _test_conf(binary, prefix, conf)


class Nginx:
    """nginx in front of ``cfg.upstreams``, its files under ``run_dir/nginx/``.

    Attributes once started: ``url`` (http://127.0.0.1:PORT), ``pid`` (the master), ``version``,
    ``access_log``, ``error_log``, ``conf_path``, ``prefix``.
    """

    def __init__(self, cfg: ProxyConfig, run_dir: str | Path, *, port: int | None = None,
                 ready_timeout_s: float = 10.0, die_with_parent: bool = True):
        cfg.validate()
        self.cfg = cfg
        self.prefix = (Path(run_dir) / "nginx").resolve()
        self.conf_path = self.prefix / "nginx.conf"
        self.access_log = self.prefix / "access.log"
        self.error_log = self.prefix / "error.log"
        self.port = port
        self.ready_timeout_s = ready_timeout_s
        self.die_with_parent = die_with_parent
        self.version: str | None = None
        self.proc: subprocess.Popen | None = None
        self._pgid: int | None = None
        self._binary: str | None = None
        self._logs = (self.prefix / "stderr.log", self.error_log)
        self._log_from: dict[Path, int] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def process_group(self) -> int | None:
        """The master's process group (its workers are in it), None when stopped."""
        return self._pgid if self.proc is not None else None

    def start(self) -> "Nginx":
        if self.proc is not None:
            return self
        self._binary = _require_binary()
        self.version = nginx_version(self._binary)
        _make_dirs(self.prefix)
        fixed = self.port is not None
        for attempt in range(3):  # a picked free port can be taken before nginx binds it
            if not fixed:
                self.port = free_port()
            self.conf_path.write_text(render(self.cfg, self.prefix, self.port))
            (self.prefix / "nginx.pid").unlink(missing_ok=True)
            # Logs are appended to across starts: only what this start wrote explains its failure.
            self._log_from = {f: f.stat().st_size if f.exists() else 0 for f in self._logs}
            with open(self._logs[0], "ab") as out:
                self.proc = children.spawn(
                    [self._binary, "-p", str(self.prefix), "-c", str(self.conf_path), "-e", str(self.error_log)],
                    stdout=out, die_with_parent_signal=signal.SIGTERM if self.die_with_parent else None)
            self._pgid = self.proc.pid
            children.register(self)
            try:
                self._wait_ready()
                return self
            except ProxyError as e:
                self.stop()
                if fixed or "Address already in use" not in str(e) or attempt == 2:
                    raise
            except BaseException:
                self.stop()
                raise
        return self

    def _wait_ready(self) -> None:
        pidfile = self.prefix / "nginx.pid"
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ProxyError(f"nginx exited with code {self.proc.returncode} while starting:\n{self.log_tail()}")
            # The pid file is written after the listen socket is bound: a connect that succeeds
            # before it could be reaching someone else who took the port.
            try:
                if pidfile.read_text().strip() == str(self.proc.pid):
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        return
            except OSError:
                pass
            if "Address already in use" in self.log_tail():  # nginx would retry the bind for 2.5 s
                raise ProxyError(f"nginx could not listen on port {self.port}:\n{self.log_tail()}")
            time.sleep(0.01)
        raise ProxyError(f"nginx did not accept connections on port {self.port} within "
                         f"{self.ready_timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        """The last lines nginx wrote (stderr, then error.log) since the latest start."""
        text = ""
        for f in self._logs:
            try:
                with open(f, "rb") as fh:
                    fh.seek(self._log_from.get(f, 0))
                    text += fh.read().decode(errors="replace")
            except OSError:
                pass
        return "\n".join(text.splitlines()[-lines:])

    def _workers(self) -> set[int]:
        try:
            return {c.pid for c in psutil.Process(self.proc.pid).children()
                    if "worker process" in " ".join(c.cmdline()) and "shutting down" not in " ".join(c.cmdline())}
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return set()

    def reload(self, cfg: ProxyConfig, timeout_s: float = 10.0) -> None:
        """Switch to ``cfg`` on the same port (SIGHUP): requests from then on get it, in-flight ones
        finish under the old one (idle client keep-alive connections are closed). The new config is
        checked first (``nginx -t``); on rejection the old one stays and ProxyError says why."""
        if self.proc is None:
            raise ProxyError("nginx is not running")
        cfg.validate()
        old_text = self.conf_path.read_text()
        self.conf_path.write_text(render(cfg, self.prefix, self.port))
        try:
            _test_conf(self._binary, self.prefix, self.conf_path)
        except ProxyError:
            self.conf_path.write_text(old_text)
            raise
        old = self._workers()
        os.kill(self.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout_s
        # Done when a new worker runs and every old one has begun shutting down: until then an old one
        # can still take a request on a client's keep-alive connection, under the old config.
        while not ((cur := self._workers()) - old) or cur & old:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise ProxyError(f"nginx did not reload within {timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.01)
        self.cfg = cfg

    def leftover_pids(self) -> list[int]:
        """Live processes of this nginx: its process group (workers' titles do not name the prefix)
        or a command line naming the prefix."""
        out = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if p.status() == psutil.STATUS_ZOMBIE:
                    continue
                if (self._pgid is not None and os.getpgid(p.pid) == self._pgid) or \
                        str(self.prefix) in " ".join(p.info["cmdline"] or ()):
                    out.append(p.pid)
            except (psutil.Error, OSError):
                continue
        return out

    def stop(self, graceful_s: float = 2.0) -> None:
        """SIGQUIT (finish in-flight requests) for ``graceful_s``, then SIGTERM/SIGKILL to the group.
        Safe to call twice."""
        if self.proc is None:
            return
        try:
            os.kill(self.proc.pid, signal.SIGQUIT)
            self.proc.wait(timeout=graceful_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        children.kill_process_group(self._pgid, grace_s=2.0, proc=self.proc)  # workers outlive a killed master
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for pid in self.leftover_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        children.unregister(self)
        self.proc = None

    def __enter__(self) -> "Nginx":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _split(v: str) -> list[str]:
    # Several servers tried: "a, b"; an internal redirect to another upstream group: "a : b".
    return [] if v == "-" else [x.strip() for x in v.replace(" : ", ", ").split(", ")]


def _num(x: str, kind=float):
    try:
        return kind(x)
    except ValueError:
        return None  # "-": no response from that server


def parse_access_log(path: str | Path) -> list[dict]:
    """One dict per request, oldest first. Keys: ``msec`` (unix seconds when the request ended),
    ``status`` (int), ``request_time_s``, ``upstream_addrs``/``upstream_statuses`` and
    ``upstream_{connect,header,response}_s`` (lists, one entry per server tried, None where it gave no
    answer; empty for a cache hit), ``upstream_addr``/``upstream_status`` (the last server tried, or
    None), ``cache_status`` (HIT, MISS ... or None), ``method``, ``uri``, ``request_length``,
    ``bytes_sent`` (bytes)."""
    out = []
    for line in Path(path).read_text(errors="replace").splitlines():
        f = dict(zip(LOG_FIELDS, line.split("\t")))
        if len(f) != len(LOG_FIELDS):
            continue
        addrs = _split(f["upstream_addr"])
        statuses = [_num(x, int) for x in _split(f["upstream_status"])]
        out.append({
            "msec": float(f["msec"]), "status": int(f["status"]), "request_time_s": float(f["request_time"]),
            "upstream_addrs": addrs, "upstream_statuses": statuses,
            "upstream_addr": addrs[-1] if addrs else None, "upstream_status": statuses[-1] if statuses else None,
            "upstream_connect_s": [_num(x) for x in _split(f["upstream_connect_time"])],
            "upstream_header_s": [_num(x) for x in _split(f["upstream_header_time"])],
            "upstream_response_s": [_num(x) for x in _split(f["upstream_response_time"])],
            "cache_status": None if f["upstream_cache_status"] == "-" else f["upstream_cache_status"],
            "method": f["request_method"], "uri": f["request_uri"],
            "request_length": int(f["request_length"]), "bytes_sent": int(f["bytes_sent"]),
        })
    return out
