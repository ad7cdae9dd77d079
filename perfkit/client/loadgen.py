"""The request engine: one asyncio loop (uvloop where installed) in a background thread, aiohttp
connection pools reused per server, and a hot path that only sends, stamps and reads.

Every measured request goes through it, a study's single trial as much as a 256-stream series.
Parsing, resource windows, statistics and storage happen after a series, never while tokens of
other streams wait to be stamped. Each series checks itself (``SelfCheck``): the loop thread's CPU,
how late the loop wakes (lag probe), think time between a stream's requests (closed loop) and send
lag against the schedule (open loop); where the client was the bottleneck the series says so.

Timestamps are ``time.perf_counter_ns`` (CLOCK_MONOTONIC on Linux): one clock for every thread and
every worker process, and the one the samplers use.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import itertools
import math
import sys
import threading
import time
import weakref
from dataclasses import asdict, dataclass, field
from typing import Callable, Protocol, Sequence

import aiohttp

from perfkit.core.tools import Tools
from perfkit.client.stream import Capture, StreamCall, decode
from perfkit.core.records import RequestRecord

try:  # a faster loop halves the client's CPU per token; plain asyncio works the same, slower
    import uvloop
except ImportError:  # pragma: no cover - not on every platform
    uvloop = None

_now = time.perf_counter_ns

# A series is client-bound when the loop wakes this late (p99) or its thread is this busy: token
# stamps are then late by about as much, and ITLs at that scale are the client's, not the server's.
LAG_LIMIT_S = 1e-3
CPU_LIMIT = 0.85
# Open loop: sends this late (p99) mean the rate offered was not the one asked for. Latency from the
# schedule still counts the lateness, so the figures stay honest; the flag says the load was off.
SEND_LAG_LIMIT_S = 5e-3
_PROBE_S = 0.005
# A reused connection that fails this soon after the send (before any response) had been closed by the
# server while idle: the request never reached it and is resent. Later, the server had it.
RESEND_WINDOW_S = 0.02
_TIMER_SLACK_S = 0.002  # open loop: wake this early for a send (the loop's timers are late by up to 1 ms)


# ---- the loop thread ----------------------------------------------------------------------------
class _LoopThread:
    def __init__(self) -> None:
        # A thread holding the GIL (a sampler, a notebook) delays the loop by up to the switch interval
        # (5 ms by default) each time a token arrives: keep that well under the 1 ms client-bound limit.
        sys.setswitchinterval(min(sys.getswitchinterval(), 2e-4))
        self.loop = uvloop.new_event_loop() if uvloop else asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="perfkit-loop", daemon=True)
        self.thread.start()

    def run(self, coro):
        """Run ``coro`` on the loop and wait for it; Ctrl-C in the caller cancels it there."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()
            raise


_LOOP: _LoopThread | None = None
_LOOP_LOCK = threading.Lock()


def _loop() -> _LoopThread:
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or not _LOOP.thread.is_alive():
            _LOOP = _LoopThread()
        return _LOOP


def loop_kind() -> str:
    """Which event loop the engine runs on (recorded with each series)."""
    return f"uvloop {uvloop.__version__}" if uvloop else "asyncio"


# ---- one server's connection pool ---------------------------------------------------------------
async def _q0(_s, ctx, _p):
    ctx.trace_request_ctx._q0 = _now()


async def _q1(_s, ctx, _p):
    c = ctx.trace_request_ctx
    c.pool_wait_s = (_now() - c._q0) * 1e-9


async def _c0(_s, ctx, _p):
    ctx.trace_request_ctx._c0 = _now()


async def _c1(_s, ctx, _p):
    c = ctx.trace_request_ctx
    c.connect_s, c.conn_reused = (_now() - c._c0) * 1e-9, False


async def _reuse(_s, ctx, _p):
    ctx.trace_request_ctx.conn_reused = True


async def _sent(_s, ctx, _p):
    ctx.trace_request_ctx.t_send_ns = _now()


def _trace() -> aiohttp.TraceConfig:
    tc = aiohttp.TraceConfig()
    tc.on_connection_queued_start.append(_q0)
    tc.on_connection_queued_end.append(_q1)
    tc.on_connection_create_start.append(_c0)
    tc.on_connection_create_end.append(_c1)
    tc.on_connection_reuseconn.append(_reuse)
    tc.on_request_headers_sent.append(_sent)
    return tc


class HttpTarget:
    """A server's base URL and its pool of kept-alive connections in the engine.

    Args:
        url: e.g. ``http://gpu-box:11434``.
        headers: sent with every request (an auth proxy's key ...), never recorded.
    """

    def __init__(self, url: str, headers: dict[str, str] | None = None):
        self.url = url.rstrip("/")
        self.headers = dict(headers or {})  # for worker processes; never recorded
        self._headers = {**self.headers, "Content-Type": "application/json"}
        self._session: aiohttp.ClientSession | None = None
        _TARGETS.add(self)

    def _ensure(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No pool limit: the series bounds what is in flight; the pool must never queue a stream.
            # Idle connections are dropped after 4 s, before servers drop them (uvicorn, cpp-httplib: 5 s).
            conn = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=4)
            self._session = aiohttp.ClientSession(connector=conn, headers=self._headers, trace_configs=[_trace()],
                                                  timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False)
        return self._session

    async def capture(self, call: StreamCall, timeout_s: float, stall_timeout_s: float | None = None,
                      t_scheduled_ns: int | None = None) -> Capture:
        """The hot path: send, stamp, read, stamp. Never raises for server trouble.

        A kept-alive connection the server closed while idle fails at once, before any response: the
        request never reached it, so it is sent again on a new connection (as browsers and Go's client
        do), and ``stale_retry`` says so, keeping the first attempt's error and time. Only a failure within
        ``RESEND_WINDOW_S`` of the send counts: later, the server had the request (a load or a prefill
        before Ollama sends its headers) and its death is the server's failure, recorded as such.
        """
        cap = await self._capture(call, timeout_s, stall_timeout_s, t_scheduled_ns)
        if cap.conn_reused and cap.t_headers_ns is None and cap.exc is not None and cap.exc.startswith(
                ("server connection lost: ServerDisconnectedError", "server connection lost: ClientOSError",
                 "server connection lost: ClientConnectionResetError")):
            after_s = (cap.t_eof_ns - (cap.t_send_ns or cap.t_start_ns)) * 1e-9
            if after_s <= RESEND_WINDOW_S:
                first = cap.exc
                cap = await self._capture(call, timeout_s, stall_timeout_s, t_scheduled_ns)
                cap.stale_retry, cap.first_error, cap.first_error_after_s = True, first, after_s
        return cap

    async def _capture(self, call: StreamCall, timeout_s: float, stall_timeout_s: float | None,
                       t_scheduled_ns: int | None) -> Capture:
        session = self._ensure()
        stall_s = min(stall_timeout_s or timeout_s, timeout_s)
        cap = Capture(wall_start_unix_s=time.time(), t_scheduled_ns=t_scheduled_ns)
        # Only the connect timeout is aiohttp's: its read timeouts re-arm a timer on every chunk (a fifth
        # of the loop's CPU per token, profiled). A watchdog per request checks the silence instead, and
        # wakes once per stall period, not once per token.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(30.0, timeout_s), sock_read=None)
        dog = _Watchdog(cap, timeout_s, stall_s)
        cap.t_start_ns = _now()
        try:
            async with session.post(self.url + call.path, data=call.body, timeout=timeout,
                                    trace_request_ctx=cap) as resp:
                cap.t_headers_ns = _now()
                cap.status = resp.status
                for h in ("X-Upstream-Addr", "X-Cache-Status", "X-Accel-Buffering"):
                    if h in resp.headers:
                        cap.headers[h.lower()] = resp.headers[h]
                if resp.status >= 400:
                    cap.error_body = await resp.content.read(4096)
                else:
                    times, chunks, now = cap.chunk_times_ns, cap.chunks, _now
                    async for chunk in resp.content.iter_any():
                        times.append(now())
                        chunks.append(chunk)
                cap.t_eof_ns = _now()
        except asyncio.CancelledError:
            if not dog.fired:
                raise  # cancelled from outside (Ctrl-C): not a timeout
            asyncio.current_task().uncancel()
            cap.exc = (f"timeout (stall): no data for {stall_s:g} s" if dog.fired == "stall"
                       else f"timeout: request exceeded {timeout_s:g} s")
        except aiohttp.ConnectionTimeoutError as e:
            cap.exc = f"timeout (connect): {e or 'no connection'}"
        except aiohttp.ClientConnectorError as e:
            cap.exc = f"ConnectError: {e}"
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
                aiohttp.ClientConnectionResetError) as e:
            # The server (or the model process behind a router) died or dropped the connection mid-response.
            cap.exc = f"server connection lost: {type(e).__name__}: {e}"
        except asyncio.TimeoutError:
            cap.exc = f"timeout: request exceeded {timeout_s:g} s"
        except aiohttp.ClientError as e:
            cap.exc = f"{type(e).__name__}: {e}"
        finally:
            dog.stop()
        if cap.t_eof_ns is None:
            cap.t_eof_ns = _now()
        return cap

    def fetch(self, call: StreamCall, *, timeout_s: float, stall_timeout_s: float | None = None) -> RequestRecord:
        """One request, from any thread: sent on the engine's loop, parsed here."""
        return decode(call, _loop().run(self.capture(call, timeout_s, stall_timeout_s)))

    def __del__(self) -> None:
        # A backend dropped without close(): close its pool on the loop instead of warning about it.
        s, lp = self._session, _LOOP
        if s is not None and not s.closed and lp is not None and lp.thread.is_alive():
            try:
                lp.loop.call_soon_threadsafe(lambda: lp.loop.create_task(s.close()))
            except RuntimeError:
                pass

    def close(self) -> None:
        if self._session is not None and not self._session.closed and _LOOP is not None:
            try:
                _LOOP.run(self._session.close())
            except RuntimeError:  # the loop is gone (interpreter shutdown): nothing left to close
                pass


class _Watchdog:
    """Cancels the request's task when it has been silent for ``stall_s`` (no headers, no chunk) or has
    run ``timeout_s`` in all; ``fired`` says which. Re-arms at most once per stall period."""

    def __init__(self, cap: Capture, timeout_s: float, stall_s: float):
        self.cap, self.stall_ns, self.fired = cap, int(stall_s * 1e9), ""
        self.task = asyncio.current_task()
        self.loop = asyncio.get_running_loop()
        self.deadline_ns = _now() + int(timeout_s * 1e9)
        self.handle = self.loop.call_later(min(stall_s, timeout_s), self._check)

    def _check(self) -> None:
        c, now = self.cap, _now()
        last = max(c.chunk_times_ns[-1] if c.chunk_times_ns else 0, c.t_headers_ns or 0, c.t_start_ns)
        if now >= self.deadline_ns:
            self.fired = "total"
        elif now - last >= self.stall_ns:
            self.fired = "stall"
        else:
            wait_ns = min(self.deadline_ns - now, last + self.stall_ns - now)
            self.handle = self.loop.call_later(max(wait_ns * 1e-9, 1e-3), self._check)
            return
        self.task.cancel()

    def stop(self) -> None:
        self.handle.cancel()


_TARGETS: "weakref.WeakSet[HttpTarget]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # Backends a notebook never closed: close their pools cleanly instead of warning at exit.
    for t in list(_TARGETS):
        t.close()


# ---- series -------------------------------------------------------------------------------------
@dataclass
class SelfCheck:
    """How the client itself did during a series (the figures a reader needs to trust the others).

    ``loop_cpu_s``: CPU seconds of the engine's loop thread; ``loop_busy``: that ÷ wall time;
    ``cpu_us_per_chunk``: per streamed chunk received; ``loop_lag_*_s``: how long the loop took to run a
    callback handed to it from another thread every 5 ms (a token arriving then was stamped about that late); ``think_*_s`` (closed loop): gap between a
    stream's response end and its next send; ``send_lag_*_s`` (open loop): the moment perfkit began the
    request − its scheduled time (a new connection's set-up is not the client's lateness: ``connect_s``).
    """

    wall_s: float = 0.0
    loop_cpu_s: float = 0.0
    loop_busy: float = 0.0
    chunks: int = 0
    cpu_us_per_chunk: float = math.nan
    loop_lag_p50_s: float = math.nan
    loop_lag_p99_s: float = math.nan
    loop_lag_max_s: float = math.nan
    think_p99_s: float = math.nan
    send_lag_p50_s: float = math.nan
    send_lag_p99_s: float = math.nan
    new_connections: int = 0
    loop: str = field(default_factory=loop_kind)
    workers: int = 1
    lost_requests: int = 0  # requests of a share whose client was lost (never measured)
    lost_because: str = ""
    client_bound: bool = False
    reason: str = ""

    def judge(self) -> "SelfCheck":
        why = []
        if self.loop_lag_p99_s > LAG_LIMIT_S:
            why.append(f"event loop late by {self.loop_lag_p99_s * 1e3:.1f} ms (p99)")
        if self.loop_busy > CPU_LIMIT:
            why.append(f"loop thread {self.loop_busy:.0%} busy")
        if self.send_lag_p99_s > SEND_LAG_LIMIT_S:
            why.append(f"sends late by {self.send_lag_p99_s * 1e3:.1f} ms (p99)")
        self.client_bound = bool(why)
        self.reason = "client-bound: figures unreliable (" + "; ".join(why) + ")" if why else ""
        return self

    def as_dict(self) -> dict:
        return asdict(self)


def _pct(xs: Sequence[float], q: float) -> float:
    if not xs:
        return math.nan
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


class _Probe:
    """How long the loop takes to react to a new event, which is how late a token arriving then is stamped.

    A thread (precise sleeps, unlike the loop's millisecond timers) wakes every 5 ms, stamps, and
    hands the loop a callback through its self-pipe, the same wake-up path a socket takes; the
    callback stamps again. A busy loop, or a thread holding the GIL, shows up as the gap.
    """

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        lags = self.lags

        def landed(t: int) -> None:
            lags.append((_now() - t) * 1e-9)

        while not self._stop.wait(_PROBE_S):
            try:
                loop.call_soon_threadsafe(landed, _now())
            except RuntimeError:  # the loop closed
                return

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, args=(asyncio.get_running_loop(),),
                                        name="perfkit-loop-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Job:
    """One request of a series: where to send it, what, and (open loop) when."""

    target: HttpTarget
    call: StreamCall
    offset_s: float = 0.0
    tags: dict = field(default_factory=dict)  # stored with its row (a conversation, a shared prefix)
    tools: Tools | None = None  # the tools it offers: its row gets the verdict on the calls it got
    expected_tools: list[str] | None = None  # the tools the dataset's own answer called


async def _series(jobs: Sequence[Job], *, concurrency: int | None, timeout_s: float, stall_timeout_s: float | None,
                  on_done: Callable[[int, Capture], None] | None,
                  start_ns: int | None = None) -> tuple[list[Capture], SelfCheck]:
    """Captures in job order (every job runs to an end: the engine never raises for server trouble).
    ``start_ns``: a common start for worker processes (their schedules share one base)."""
    if start_ns is not None and start_ns > _now():
        await asyncio.sleep((start_ns - _now()) * 1e-9)
    caps: list[Capture | None] = [None] * len(jobs)
    probe = _Probe()
    think: list[float] = []
    cpu0, t0 = time.thread_time(), _now()
    probe.start()

    async def one(i: int, t_sched: int | None, stream: int | None = None) -> Capture:
        j = jobs[i]
        cap = await j.target.capture(j.call, timeout_s, stall_timeout_s, t_sched)
        cap.stream = stream
        caps[i] = cap
        if on_done is not None:
            on_done(i, cap)
        return cap

    if concurrency is not None:  # closed loop: each stream sends its next request the moment one ends
        counter = itertools.count()

        async def stream(w: int) -> None:
            last_end: int | None = None
            while (i := next(counter)) < len(jobs):
                if last_end is not None:
                    think.append((_now() - last_end) * 1e-9)
                last_end = (await one(i, None, w)).t_eof_ns

        await asyncio.gather(*(stream(w) for w in range(concurrency)))
    else:  # open loop: every request at its scheduled time, whatever is still in flight
        tasks = []
        base = start_ns if start_ns is not None else _now()
        for i, j in enumerate(jobs):
            t_sched = base + int(j.offset_s * 1e9)
            delay = (t_sched - _now()) * 1e-9 - _TIMER_SLACK_S
            if delay > 0:
                await asyncio.sleep(delay)
            while _now() < t_sched:  # the loop's timers have 1 ms resolution: the last stretch yields, not spins
                await asyncio.sleep(0)
            tasks.append(asyncio.ensure_future(one(i, t_sched)))
        await asyncio.gather(*tasks)
    probe.stop()
    done: list[Capture] = [c for c in caps if c is not None]
    return done, _self_check(probe, done, think, cpu0, t0)  # all of them: gather() returned, so every job ended


def _self_check(probe: "_Probe", done: list[Capture], think: list[float], cpu0: float, t0: int) -> SelfCheck:
    wall_s, cpu_s = (_now() - t0) * 1e-9, time.thread_time() - cpu0
    chunks = sum(len(c.chunks) for c in done)
    # When perfkit began the request against its schedule: a new connection's set-up is the network's
    # (its own figure, connect_s), not the client being late.
    lags = [c.t_start_ns - c.t_scheduled_ns for c in done if c.t_scheduled_ns is not None]
    check = SelfCheck(wall_s=wall_s, loop_cpu_s=cpu_s, loop_busy=cpu_s / wall_s if wall_s > 0 else math.nan,
                      chunks=chunks, cpu_us_per_chunk=1e6 * cpu_s / chunks if chunks else math.nan,
                      loop_lag_p50_s=_pct(probe.lags, 0.5), loop_lag_p99_s=_pct(probe.lags, 0.99),
                      loop_lag_max_s=max(probe.lags, default=math.nan), think_p99_s=_pct(think, 0.99),
                      send_lag_p50_s=_pct([x * 1e-9 for x in lags], 0.5),
                      send_lag_p99_s=_pct([x * 1e-9 for x in lags], 0.99),
                      new_connections=sum(1 for c in done if c.conn_reused is False))
    return check.judge()


def run_series(jobs: Sequence[Job], *, concurrency: int | None = None, timeout_s: float,
               stall_timeout_s: float | None = None, on_done: Callable[[int, Capture], None] | None = None,
               workers: int = 1, shares: Shares | None = None) -> tuple[list[RequestRecord | None], SelfCheck]:
    """Run a closed-loop series (``concurrency`` streams over ``jobs`` in order) or, with
    ``concurrency=None``, an open-loop one (each job sent at its ``offset_s`` from the start).

    ``on_done(i, capture)`` runs on the loop as each response ends (keep it cheap: a spool write,
    a progress tick). Records are parsed after the series, in the caller's thread.
    ``workers`` > 1 splits the streams (or the schedule) over that many processes, each with its own
    loop, when one core can't keep up; their stamps share the one clock. ``shares``: another runner of shares
    (client nodes of a cluster, their stamps put on this clock). ``on_done`` then runs here, after the
    series, and a request of a lost share (a client node died) is None.
    """
    if shares is None and workers > 1:
        shares = ProcessShares(workers)
    if shares is not None:
        caps, check = _run_shares(jobs, concurrency, timeout_s, stall_timeout_s, shares)
        for i, cap in enumerate(caps):
            if on_done is not None and cap is not None:
                on_done(i, cap)
        return [decode(j.call, c) if c is not None else None for j, c in zip(jobs, caps)], check
    # A full garbage collection pauses every thread for milliseconds: collect now, not mid-series.
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        caps, check = _loop().run(_series(jobs, concurrency=concurrency, timeout_s=timeout_s,
                                          stall_timeout_s=stall_timeout_s, on_done=on_done))
    finally:
        if was_enabled:
            gc.enable()
    return [decode(j.call, c) for j, c in zip(jobs, caps)], check


# ---- chat sessions ------------------------------------------------------------------------------
@dataclass
class SessionTurn:
    """One sent turn of a chat session: which session (and the user who ran it), which turn, the record."""

    session: int
    turn: int
    user: int
    rec: RequestRecord


MakeCall = Callable[[int, int, list[RequestRecord]], "StreamCall | None"]


async def _sessions(target: HttpTarget, n_sessions: int, users: int, make_call: MakeCall,
                    think_s: Callable[[int, int], float], timeout_s: float, stall_timeout_s: float | None,
                    on_done: Callable[[int, Capture], None] | None) -> tuple[list[SessionTurn], SelfCheck]:
    out: list[SessionTurn] = []
    caps: list[Capture] = []
    probe = _Probe()
    think: list[float] = []
    cpu0, t0 = time.thread_time(), _now()
    probe.start()
    counter = itertools.count()

    async def user(u: int) -> None:
        last_end: int | None = None
        while (s := next(counter)) < n_sessions:
            recs: list[RequestRecord] = []
            for turn in itertools.count():
                if recs and not recs[-1].ok:
                    break  # no answer to carry: the conversation ends here (the failure is its record)
                call = make_call(s, turn, recs)  # the next question, with the history the server answered
                if call is None:
                    break
                pause = think_s(s, turn) if turn else 0.0
                if pause > 0:
                    await asyncio.sleep(pause)
                if last_end is not None:  # the client's own gap, the user's pause not counted
                    think.append(max(0.0, (_now() - last_end) * 1e-9 - pause))
                cap = await target.capture(call, timeout_s, stall_timeout_s, None)
                cap.stream = u
                last_end = cap.t_eof_ns
                rec = decode(call, cap)  # the answer's text is the next turn's history: parsed now, on the loop
                recs.append(rec)
                out.append(SessionTurn(s, turn, u, rec))
                caps.append(cap)
                if on_done is not None:
                    on_done(len(out) - 1, cap)

    await asyncio.gather(*(user(u) for u in range(users)))
    probe.stop()
    return out, _self_check(probe, caps, think, cpu0, t0)


def run_sessions(target: HttpTarget, n_sessions: int, users: int, make_call: MakeCall, *, timeout_s: float,
                 stall_timeout_s: float | None = None, think_s: Callable[[int, int], float] = lambda s, t: 0.0,
                 on_done: Callable[[int, Capture], None] | None = None) -> tuple[list[SessionTurn], SelfCheck]:
    """Chat sessions: ``users`` concurrent users each take the next of ``n_sessions`` sessions and send its turns
    one after another; ``make_call(session, turn, records so far)`` builds a turn from the answers before it (None:
    the session is over), ``think_s(session, turn)`` is the pause before a turn. A failed turn ends its session.
    Turns come back in the order they were sent."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        return _loop().run(_sessions(target, n_sessions, users, make_call, think_s, timeout_s, stall_timeout_s,
                                     on_done))
    finally:
        if was_enabled:
            gc.enable()


# ---- worker processes ---------------------------------------------------------------------------
def _split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if k < n % parts else 0) for k in range(parts)]


def run_share(spec: dict) -> tuple[list[Capture], dict]:
    """One share of a series on its own loop (a worker process, a client node's actor), from ``start_ns`` on
    this process's clock. Calls travel as (path, body) only; parsing stays with the caller, which holds the
    parsers."""
    gc.disable()
    targets: dict[tuple, HttpTarget] = {}
    jobs = []
    for (url, headers), path, body, off in spec["jobs"]:
        key = (url, tuple(sorted(headers.items())))
        if key not in targets:
            targets[key] = HttpTarget(url, headers)
        jobs.append(Job(targets[key], StreamCall(path, body, None, None), off))  # type: ignore[arg-type]
    loop = uvloop.new_event_loop() if uvloop else asyncio.new_event_loop()
    try:
        caps, check = loop.run_until_complete(_series(
            jobs, concurrency=spec["concurrency"], timeout_s=spec["timeout_s"],
            stall_timeout_s=spec["stall_timeout_s"], on_done=None, start_ns=spec["start_ns"]))
        for t in targets.values():
            if t._session is not None:
                loop.run_until_complete(t._session.close())
    finally:
        loop.close()
    for c in caps:  # the trace's scratch stamps don't travel
        c.__dict__.pop("_q0", None)
        c.__dict__.pop("_c0", None)
    return caps, check.as_dict()


class Shares(Protocol):
    """Runs shares of a series elsewhere: other processes here (:class:`ProcessShares`) or client nodes of a
    cluster. ``run(specs)`` starts every share at one agreed instant and returns, per share, its captures
    (stamped on *this* process's clock) and its self-check, or None where the share was lost (a node died);
    ``lost`` then says why, per share index."""

    parts: int
    lost: dict[int, str]
    start_lead_s: float  # how long after run() is called the shares start sending (the agreed instant)

    def run(self, specs: list[dict]) -> list[tuple[list[Capture], dict] | None]: ...


class ProcessShares:
    """Shares in spawned worker processes on this host (one clock: no translation)."""

    start_lead_s = 3.0

    def __init__(self, parts: int):
        self.parts, self.lost = parts, {}

    def run(self, specs: list[dict]) -> list[tuple[list[Capture], dict] | None]:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # Spawned (a forked copy of a process running the loop thread would inherit its locks); the common
        # start leaves time for the workers' imports.
        with ProcessPoolExecutor(len(specs), mp_context=mp.get_context("spawn")) as pool:
            pool.submit(int).result()  # the pool's first process is up; the rest start alongside
            start_ns = _now() + int(self.start_lead_s * 1e9)
            futs = [pool.submit(run_share, {**spec, "start_ns": start_ns}) for spec in specs]
            return [f.result() for f in futs]


def share_specs(jobs: Sequence[Job], concurrency: int | None, timeout_s: float, stall_timeout_s: float | None,
                parts: int) -> tuple[list[list[int]], list[int | None], list[dict]]:
    """The series split in ``parts``: which jobs each share sends, with how many streams, and the spec a
    share runner takes (calls as (path, body) only; ``start_ns`` is the runner's to add). Closed loop: the
    streams split evenly, each share a contiguous run of jobs in proportion; open loop: the schedule dealt
    round-robin, every send keeping its own offset, so the merged schedule is exactly the one asked for."""
    if concurrency is not None:
        parts = min(parts, concurrency)
        streams: list[int | None] = list(_split(concurrency, parts))
        sizes = [round(len(jobs) * c / concurrency) for c in streams]  # type: ignore[operator]
        sizes[-1] = len(jobs) - sum(sizes[:-1])
        bounds = [sum(sizes[:k]) for k in range(parts + 1)]
        shares = [list(range(bounds[k], bounds[k + 1])) for k in range(parts)]
    else:
        parts = min(parts, len(jobs))
        streams = [None] * parts
        shares = [list(range(k, len(jobs), parts)) for k in range(parts)]
    specs = [{"jobs": [((jobs[i].target.url, jobs[i].target.headers), jobs[i].call.path, jobs[i].call.body,
                        jobs[i].offset_s) for i in share],
              "concurrency": c, "timeout_s": timeout_s, "stall_timeout_s": stall_timeout_s}
             for share, c in zip(shares, streams)]
    return shares, streams, specs


def _run_shares(jobs: Sequence[Job], concurrency: int | None, timeout_s: float, stall_timeout_s: float | None,
                runner: Shares) -> tuple[list[Capture | None], SelfCheck]:
    shares, streams, specs = share_specs(jobs, concurrency, timeout_s, stall_timeout_s, runner.parts)
    results = runner.run(specs)
    caps: list[Capture | None] = [None] * len(jobs)
    checks = []
    for k, (share, res) in enumerate(zip(shares, results)):
        if res is None:
            continue
        wcaps, d = res
        checks.append(SelfCheck(**{key: v for key, v in d.items() if key in SelfCheck.__dataclass_fields__}))
        for i, cap in zip(share, wcaps):
            if cap.stream is not None:  # stream ids unique across shares
                cap.stream += sum(s or 0 for s in streams[:k])
            caps[i] = cap
    done = [c for c in caps if c is not None]
    lost = [i for i, c in enumerate(caps) if c is None]
    if not checks:
        raise RuntimeError("every share of the series was lost: " + "; ".join(runner.lost.values()))
    cpu, chunks = sum(c.loop_cpu_s for c in checks), sum(c.chunks for c in checks)
    lags = [c.t_start_ns - c.t_scheduled_ns for c in done if c.t_scheduled_ns is not None]
    merged = SelfCheck(wall_s=max(c.wall_s for c in checks), loop_cpu_s=cpu,
                       loop_busy=max(c.loop_busy for c in checks), chunks=chunks,
                       cpu_us_per_chunk=1e6 * cpu / chunks if chunks else math.nan,
                       loop_lag_p50_s=max(c.loop_lag_p50_s for c in checks),
                       loop_lag_p99_s=max(c.loop_lag_p99_s for c in checks),
                       loop_lag_max_s=max(c.loop_lag_max_s for c in checks),
                       think_p99_s=max(c.think_p99_s for c in checks),
                       send_lag_p50_s=_pct([x * 1e-9 for x in lags], 0.5),
                       send_lag_p99_s=_pct([x * 1e-9 for x in lags], 0.99),
                       new_connections=sum(c.new_connections for c in checks), workers=len(specs),
                       lost_requests=len(lost), lost_because="; ".join(runner.lost.values()))
    # A series is client-bound if any share's client was (a merged mean would hide the one that fell behind).
    merged = merged.judge()
    bound = [c.reason for c in checks if c.client_bound]
    if bound and not merged.client_bound:
        merged.client_bound, merged.reason = True, bound[0]
    return caps, merged
