"""A zero-delay OpenAI-compatible streaming server with injected delays and per-token send stamps.

It does no work besides the protocol, so a client measured against it is the only thing that can be
slow; and where the server itself falls behind, it says so (its own lateness and CPU, ``stats()``).

    .venv/bin/python bench/_sse_server.py [--port 8000] [--first-ms 20] [--gap-ms 5] [--server-procs 1]
        [--tokens 100] [--slack-us 100] [--timer timerfd|call_at]

Routes: POST /v1/chat/completions and /v1/completions (SSE over chunked transfer encoding),
GET /v1/models (one model, "bench"), GET /health, GET /stats (this process's figures as JSON;
``?reset=1`` starts a new window). With several processes GET /stats answers for whichever process
took the connection; ``SSEServer.stats()`` (the bench's way) adds them all up.

Each response: headers at once; the first token ``first_ms`` after the request was read, then one
every ``gap_ms``; each token's content is the server's ``time.perf_counter_ns()`` taken just before
its write, then a space (CLOCK_MONOTONIC on Linux, the clock perfkit stamps with, so the client's
receive stamp minus it is the client's timing error). The last token's write also carries the
finish_reason chunk, the usage chunk, ``data: [DONE]`` and the terminating zero-length chunk.
``max_completion_tokens`` or ``max_tokens`` from the body set the token count (default ``--tokens``).
``--gap-ms 0``: tokens back to back, one per loop iteration (the clients' saturation rate).

Deadlines are precomputed (first + i × gap from the request's arrival), never slept relative to the
last write, so lateness does not accumulate. All of a process's streams wait in one heap, woken by
one timer at the earliest deadline + --slack-us (default 100 µs: tokens due within it share a
wake-up, ~40% less kernel time per token at 256 streams; none is ever written early).
uvloop's own timers have millisecond resolution (measured here: up to ~1 ms early, 1.6 ms late p99),
too coarse for 5 ms gaps and µs errors, so on Linux the timer is a timerfd on CLOCK_MONOTONIC
(through ctypes; ~50 µs late p50); elsewhere, or with --timer call_at, ``loop.call_at`` against the
same deadlines. Lateness = write stamp − deadline per token, kept per process with its CPU time.
Measured cost here (2 cores, 256 streams × 200 tokens/s, a trivial client): ~10 µs of CPU per token
write, two thirds of it the kernel's (loopback TCP, timer); at 256 streams the server alone is half
a core.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import ctypes
import heapq
import json
import math
import os
import signal
import socket
import sys
import time
from urllib.parse import parse_qs, urlsplit

_now = time.perf_counter_ns

try:
    import uvloop
except ImportError:  # pragma: no cover - plain asyncio works, with more CPU per write
    uvloop = None


# ---- a precise per-stream timer (Linux timerfd through ctypes: os.timerfd_* only from Python 3.13) ----
class _TS(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _ITS(ctypes.Structure):
    _fields_ = [("it_interval", _TS), ("it_value", _TS)]


_CLOCK_MONOTONIC, _TFD_TIMER_ABSTIME = 1, 1


def _libc_timerfd():
    if not sys.platform.startswith("linux"):
        return None
    # The fd's absolute deadlines must be on perf_counter_ns's clock.
    if "CLOCK_MONOTONIC" not in time.get_clock_info("perf_counter").implementation:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc if hasattr(libc, "timerfd_create") and hasattr(libc, "timerfd_settime") else None
    except OSError:
        return None


_LIBC = _libc_timerfd()


def _timerfd() -> int:
    fd = _LIBC.timerfd_create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "timerfd_create")
    return fd


def _timerfd_at(fd: int, t_ns: int) -> None:
    t_ns = max(t_ns, 1)  # an all-zero it_value would disarm the timer
    its = _ITS(_TS(0, 0), _TS(t_ns // 1_000_000_000, t_ns % 1_000_000_000))
    if _LIBC.timerfd_settime(fd, _TFD_TIMER_ABSTIME, ctypes.byref(its), None) != 0:
        raise OSError(ctypes.get_errno(), "timerfd_settime")


class _Scheduler:
    """Every stream's next deadline in one heap per process, one timer armed at the earliest.

    The timer fires at the earliest deadline + ``slack``: tokens due within that window go out in one
    wake-up, each stamped (and its lateness counted) at its own write. A wake-up per token costs the
    server ~9 µs of kernel time (timer interrupt, epoll, read); at 256 streams × 200 tokens/s that
    alone is half a core. Tokens are never written early.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timerfd: bool, slack_ns: int):
        self.loop, self.slack_ns = loop, slack_ns
        self.heap: list = []
        self.seq = 0  # ties on a deadline pop in arrival order, never compare streams
        self.armed_ns: int | None = None
        self.handle: asyncio.TimerHandle | None = None
        self.fd = _timerfd() if timerfd else -1
        if self.fd >= 0:
            loop.add_reader(self.fd, self._on_fd)

    def add(self, dl: int, stream: "_Stream") -> None:
        self.seq += 1
        heapq.heappush(self.heap, (dl, self.seq, stream))
        if self.armed_ns is None or dl + self.slack_ns < self.armed_ns:
            self._arm(dl + self.slack_ns)

    def _arm(self, t_ns: int) -> None:
        self.armed_ns = t_ns
        if self.fd >= 0:
            _timerfd_at(self.fd, t_ns)
        else:  # millisecond timers: up to ~1 ms early (then _run finds nothing due and re-arms) or late
            if self.handle is not None:
                self.handle.cancel()
            self.handle = self.loop.call_at(self.loop.time() + (t_ns - _now()) * 1e-9, self._run)

    def _on_fd(self) -> None:
        try:
            os.read(self.fd, 8)
        except (BlockingIOError, InterruptedError):
            return
        self._run()

    def _run(self) -> None:
        heap, now = self.heap, _now
        self.armed_ns = self.handle = None
        while heap and heap[0][0] <= now():
            _, _, stream = heapq.heappop(heap)
            dl = stream.due()
            if dl is not None:
                self.seq += 1
                heapq.heappush(heap, (dl, self.seq, stream))
        if heap:
            self._arm(heap[0][0] + self.slack_ns)


# ---- per-process figures ---------------------------------------------------------------------------
class Stats:
    """Lateness of every token write (ns) and CPU since the last reset; one per process."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.late_ns = array.array("q")
        self.writes = self.requests = self.connections = 0
        self.t_first_ns: int | None = None  # first request read in this window
        self.t_last_ns: int | None = None  # last stream finished
        self.cpu0, self.t0_ns = time.process_time(), _now()

    def summary(self, raw: bool = False) -> dict:
        now, cpu = _now(), time.process_time() - self.cpu0
        active_s = ((self.t_last_ns or now) - self.t_first_ns) * 1e-9 if self.t_first_ns else 0.0
        d = {"pid": os.getpid(), "writes": self.writes, "requests": self.requests,
             "connections": self.connections, "cpu_s": cpu,
             "window_s": (now - self.t0_ns) * 1e-9, "active_s": active_s,
             "busy": cpu / active_s if active_s > 0 else math.nan}
        d.update(late_summary(self.late_ns))
        if raw:
            d["late_ns"] = self.late_ns.tobytes()
        return d


def pct(xs, q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not len(xs):
        return math.nan
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


def late_summary(late_ns) -> dict:
    s = sorted(late_ns)
    return {"late_us_p50": pct(s, 0.5) / 1e3, "late_us_p99": pct(s, 0.99) / 1e3,
            "late_us_max": (s[-1] / 1e3) if s else math.nan}


# ---- the protocol ------------------------------------------------------------------------------------
_MAX_HEAD = 64 * 1024


class _Cfg:
    def __init__(self, first_ms: float, gap_ms: float, tokens: int, timer: str, slack_us: float):
        self.first_ns, self.gap_ns, self.tokens = int(first_ms * 1e6), int(gap_ms * 1e6), tokens
        self.timerfd = timer == "timerfd" and _LIBC is not None
        self.slack_ns = int(slack_us * 1e3)


class _Stream:
    """One streamed response: tokens at precomputed deadlines, each stamped just before its write."""

    __slots__ = ("conn", "cfg", "stats", "loop", "n", "i", "dl", "pre", "post", "tail", "done")

    def __init__(self, conn: "_Conn", n: int, chat: bool, t0: int, prompt_tokens: int):
        self.conn, self.cfg, self.stats, self.loop = conn, conn.cfg, conn.stats, conn.loop
        self.n, self.i, self.dl, self.done = n, 0, t0 + conn.cfg.first_ns, False
        created = int(time.time())
        head = f'data: {{"id":"cmpl-bench","object":"{"chat.completion.chunk" if chat else "text_completion"}",' \
               f'"created":{created},"model":"bench","choices":[{{"index":0,'
        if chat:
            self.pre = (head + '"delta":{"content":"').encode()
            fin = head + '"delta":{},"finish_reason":"length"}]}\n\n'
        else:
            self.pre = (head + '"text":"').encode()
            fin = head + '"text":"","finish_reason":"length"}]}\n\n'
        self.post = (' "},"finish_reason":null}]}\n\n' if chat else ' ","finish_reason":null}]}\n\n').encode()
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
        tail = (fin + head.split('"choices"')[0] + f'"choices":[],"usage":{json.dumps(usage)}}}\n\n'
                + "data: [DONE]\n\n").encode()
        self.tail = b"%x\r\n%s\r\n0\r\n\r\n" % (len(tail), tail)

    def start(self) -> None:
        self.conn.sched.add(self.dl, self)

    def due(self) -> int | None:
        """Write the token due now; return the next deadline (None: done, or gap 0 goes on by itself)."""
        if self._write():
            return None
        if self.cfg.gap_ns == 0:
            self.loop.call_soon(self._soon)
            return None
        return self.dl

    def _soon(self) -> None:
        # gap 0: one token per loop iteration, so the other streams' tokens interleave
        if not self._write():
            self.loop.call_soon(self._soon)

    def _write(self) -> bool:
        """The next token (with the tail if it is the last); True when the response is over."""
        tr = self.conn.transport
        if tr is None or self.done:  # the client went away
            self.done = True
            return True
        last = self.i >= self.n - 1
        t = _now()
        if self.n == 0:
            tr.write(self.tail)
        else:
            data = b"%s%d%s" % (self.pre, t, self.post)
            tr.write(b"%x\r\n%s\r\n%s" % (len(data), data, self.tail if last else b""))
        st = self.stats
        if self.cfg.gap_ns or self.i == 0:  # back to back (gap 0) has no deadline past the first token
            st.late_ns.append(t - self.dl)
        st.writes += 1
        self.i += 1
        self.dl += self.cfg.gap_ns
        if last:
            st.t_last_ns = _now()
            self.done = True
            self.conn.stream_done()
            return True
        return False

    def stop(self) -> None:
        self.done = True  # the scheduler drops it at its next deadline


class _Conn(asyncio.Protocol):
    """HTTP/1.1 with keep-alive: request line, headers, Content-Length body; one response at a time
    (a pipelined request waits in the buffer until the stream before it ends)."""

    def __init__(self, cfg: _Cfg, stats: Stats, sched: _Scheduler, loop: asyncio.AbstractEventLoop):
        self.cfg, self.stats, self.sched, self.loop = cfg, stats, sched, loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.stream: _Stream | None = None
        self.keep_alive = True

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Nagle would hold each small token write back until the previous one is acknowledged.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stats.connections += 1

    def connection_lost(self, exc) -> None:
        if self.stream is not None:
            self.stream.stop()
        self.stream = None
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.stream is None:
            self._next()

    def stream_done(self) -> None:
        self.stream = None
        if not self.keep_alive:
            self.transport.close()
        elif self.buf:
            self._next()

    def _next(self) -> None:
        while self.stream is None and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _MAX_HEAD:
                    self._reply(431, b"headers too large\n", close=True)
                return
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            try:
                method, target, version = lines[0].split(" ", 2)
            except ValueError:
                self._reply(400, b"bad request line\n", close=True)
                return
            headers = {}
            for h in lines[1:]:
                k, _, v = h.partition(":")
                headers[k.strip().lower()] = v.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._reply(411, b"send a Content-Length body\n", close=True)
                return
            n = int(headers.get("content-length") or 0)
            if len(self.buf) < end + 4 + n:
                return
            body = bytes(self.buf[end + 4:end + 4 + n])
            del self.buf[:end + 4 + n]
            conn_h = headers.get("connection", "").lower()
            self.keep_alive = conn_h != "close" if version == "HTTP/1.1" else conn_h == "keep-alive"
            self._handle(method, target, body)

    def _reply(self, status: int, body: bytes, ctype: str = "text/plain", close: bool = False) -> None:
        close = close or not self.keep_alive
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 411: "Length Required",
                  431: "Request Header Fields Too Large"}.get(status, "Error")
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
            status, reason.encode(), ctype.encode(), len(body), b"Connection: close\r\n" if close else b"", body))
        if close:
            self.transport.close()
            self.transport = None

    def _json(self, obj, status: int = 200) -> None:
        self._reply(status, json.dumps(obj).encode(), "application/json")

    def _handle(self, method: str, target: str, body: bytes) -> None:
        url = urlsplit(target)
        path = url.path.rstrip("/")
        if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            t0 = _now()
            st = self.stats
            if st.t_first_ns is None:
                st.t_first_ns = t0
            st.requests += 1
            try:
                req = json.loads(body or b"{}")
                n = req.get("max_completion_tokens") or req.get("max_tokens") or self.cfg.tokens
                n = int(n)
            except (ValueError, TypeError, AttributeError):
                self._json({"error": {"message": "body is not a JSON object with an integer max_tokens"}}, 400)
                return
            chat = path.endswith("chat/completions")
            prompt = " ".join(str(m.get("content", "")) for m in req.get("messages", []) if isinstance(m, dict)) \
                if chat else str(req.get("prompt", ""))
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                                 b"Transfer-Encoding: chunked\r\n%s\r\n"
                                 % (b"" if self.keep_alive else b"Connection: close\r\n"))
            self.stream = _Stream(self, max(0, n), chat, t0, len(prompt.split()))
            self.stream.start()
        elif method == "GET" and path == "/v1/models":
            self._json({"object": "list", "data": [{"id": "bench", "object": "model", "created": 0,
                                                    "owned_by": "perfkit-bench"}]})
        elif method == "GET" and path == "/health":
            self._json({"status": "ok"})
        elif method == "GET" and path == "/stats":
            d = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.stats.summary().items()}
            if parse_qs(url.query).get("reset"):
                self.stats.reset()
            self._json(d)
        else:
            self._json({"error": {"message": f"no route {method} {path}"}}, 404)


# ---- processes ----------------------------------------------------------------------------------------
def _listen_socket(host: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):  # several processes, one port: the kernel spreads the connections
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    return s


def _serve(host: str, port: int, cfg_args: tuple, ctl) -> None:
    """One server process: its own loop on its own SO_REUSEPORT socket; ``ctl`` a Pipe end for
    reset / stats / stop from the process that started it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it still asks for stats
    loop = uvloop.new_event_loop() if uvloop else asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    cfg, stats = _Cfg(*cfg_args), Stats()
    sched = _Scheduler(loop, cfg.timerfd, cfg.slack_ns)
    sock = _listen_socket(host, port)
    sock.listen(4096)  # 256 clients connect at once; a short backlog would reset some of them
    server = loop.run_until_complete(loop.create_server(lambda: _Conn(cfg, stats, sched, loop), sock=sock))

    def on_ctl() -> None:
        # The loop's poll made the fd non-blocking: a large stats message would then be cut short.
        os.set_blocking(ctl.fileno(), True)
        try:
            while ctl.poll():
                msg = ctl.recv()
                if msg == "reset":
                    stats.reset()
                    ctl.send("ok")
                elif msg == "stats":
                    ctl.send(stats.summary(raw=True))
                elif msg == "stop":
                    loop.stop()
                    return
        except (EOFError, OSError):  # the parent is gone
            loop.stop()

    loop.add_reader(ctl.fileno(), on_ctl)
    ctl.send(("ready", os.getpid(), "timerfd" if cfg.timerfd else "call_at",
              f"uvloop {uvloop.__version__}" if uvloop else "asyncio"))
    try:
        loop.run_forever()
    finally:
        server.close()


class SSEServer:
    """``procs`` server processes on one port (SO_REUSEPORT), started at once; a context manager.

    ``reset()`` starts a new measurement window in every process; ``stats()`` adds their windows up:
    lateness percentiles over all token writes, CPU summed, ``busy_max`` the busiest process's
    CPU ÷ active time, ``late_us_p99 > 1000`` meaning the server, not the client, set the pace.
    """

    def __init__(self, *, procs: int = 1, first_ms: float = 20.0, gap_ms: float = 5.0, tokens: int = 100,
                 host: str = "127.0.0.1", port: int = 0, timer: str = "timerfd", slack_us: float = 100.0):
        import multiprocessing as mp

        # Spawned: the caller may already run threads (perfkit's loop) that a fork would copy mid-lock.
        ctx = mp.get_context("spawn")
        reserve = _listen_socket(host, port)  # holds the port (not listening: takes no connections)
        self.port = reserve.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.procs, self._ctl = [], []
        try:
            for _ in range(procs):
                a, b = ctx.Pipe()
                p = ctx.Process(target=_serve, args=(host, self.port, (first_ms, gap_ms, tokens, timer, slack_us), b),
                                daemon=True, name="sse-server")
                p.start()
                self.procs.append(p)
                self._ctl.append(a)
            info = []
            for c, p in zip(self._ctl, self.procs):
                deadline = time.monotonic() + 60
                while not c.poll(0.1):
                    if not p.is_alive():
                        raise RuntimeError(f"an SSE server process exited at start (exit code {p.exitcode})")
                    if time.monotonic() > deadline:
                        raise RuntimeError("an SSE server process did not start within 60 s")
                info.append(c.recv())
        except BaseException:
            self.close()
            raise
        finally:
            reserve.close()
        self.pids = [i[1] for i in info]
        self.timer, self.loop = info[0][2], info[0][3]

    def _all(self, msg: str) -> list:
        for c in self._ctl:
            c.send(msg)
        return [c.recv() for c in self._ctl]

    def reset(self) -> None:
        self._all("reset")

    def stats(self) -> dict:
        per = self._all("stats")
        late = array.array("q")
        for d in per:
            late.frombytes(d.pop("late_ns"))
        out = {k: sum(d[k] for d in per) for k in ("writes", "requests", "connections", "cpu_s")}
        out.update(late_summary(late))
        busy = [d["busy"] for d in per if not math.isnan(d["busy"])]
        out["busy_max"] = max(busy, default=math.nan)
        out["procs"] = len(per)
        out["per_process"] = per
        return out

    def close(self) -> None:
        for c in self._ctl:
            try:
                c.send("stop")
            except OSError:
                pass
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)
        self.procs, self._ctl = [], []

    def __enter__(self) -> "SSEServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--first-ms", type=float, default=20.0, help="injected delay before the first token")
    ap.add_argument("--gap-ms", type=float, default=5.0, help="injected gap between tokens (0: back to back)")
    ap.add_argument("--tokens", type=int, default=100, help="tokens when the request sets no max_tokens")
    ap.add_argument("--server-procs", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    ap.add_argument("--timer", choices=("timerfd", "call_at"), default="timerfd")
    ap.add_argument("--slack-us", type=float, default=100.0,
                    help="tokens due within this window share a wake-up (each still stamped at its write)")
    a = ap.parse_args()

    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # kill (and a background job's ignored SIGINT) still prints the figures
    signal.signal(signal.SIGINT, stop)
    with SSEServer(procs=a.server_procs, first_ms=a.first_ms, gap_ms=a.gap_ms, tokens=a.tokens, host=a.host,
                   port=a.port, timer=a.timer, slack_us=a.slack_us) as srv:
        print(f"serving {srv.url} ({len(srv.pids)} process(es), {srv.loop}, timer {srv.timer}); "
              "Ctrl-C or SIGTERM stops and prints its figures", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        s = srv.stats()
        s.pop("per_process")
        print(json.dumps(s, indent=1))


if __name__ == "__main__":
    main()
