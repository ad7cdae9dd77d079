"""What a backend hands the request engine (``StreamCall``) and how a captured response becomes a record.

The engine's hot path only sends, stamps and reads (``perfkit.loadgen``); everything here runs
after the response is in: splitting chunks into lines (each line stamped with the arrival of the
chunk that completed it), the backend's parser, and the failure classes reports group by.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from perfkit.core.records import RequestRecord


class MalformedLine(ValueError):
    """A line of the stream that is not what the wire format promises."""


class StreamError(RuntimeError):
    """The server reported an error inside the stream."""


@dataclass
class StreamCall:
    """One streamed POST, ready to send: ``body`` is serialized once, before any timing starts.

    ``on_line(line, t_ns) -> bool`` parses one line into ``rec`` and says whether it was the final
    message; it may raise ``MalformedLine`` or ``StreamError``. ``after(rec)`` runs once parsing is done.
    """

    path: str
    body: bytes
    rec: RequestRecord
    on_line: Callable[[str, int], bool]
    after: Callable[[RequestRecord], None] | None = None

    @classmethod
    def json(cls, path: str, payload: dict[str, Any], rec: RequestRecord, on_line, after=None) -> "StreamCall":
        return cls(path, json.dumps(payload).encode(), rec, on_line, after)


@dataclass
class Capture:
    """A response as the hot path saw it: client stamps (``perf_counter_ns``) and raw bytes, unparsed.

    ``t_start_ns``: the engine began the request (a free connection then had to be found or opened);
    ``t_send_ns``: the request's headers were on the wire (TTFT counts from here, so connection
    set-up is never inside it); ``connect_s``: opening a new connection (None when one was reused).
    """

    wall_start_unix_s: float = 0.0
    t_scheduled_ns: int | None = None
    t_start_ns: int = 0
    t_send_ns: int | None = None
    t_headers_ns: int | None = None
    t_eof_ns: int | None = None
    connect_s: float | None = None
    pool_wait_s: float | None = None
    conn_reused: bool | None = None
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    error_body: bytes = b""
    chunk_times_ns: list[int] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    stale_retry: bool = False  # sent again: the kept-alive connection had been closed by the server
    first_error: str | None = None  # the resent request's first attempt: its error ...
    first_error_after_s: float | None = None  # ... and how long after its send it came
    stream: int | None = None  # closed loop: which of the concurrent streams sent it
    exc: str | None = None  # failure class + message, set by the engine when reading stopped early


def decode(call: StreamCall, cap: Capture) -> RequestRecord:
    """Parse a captured response into ``call.rec`` (finalized, failed with the reason where it failed)."""
    rec = call.rec
    rec.wall_send_unix_s = cap.wall_start_unix_s
    rec.t_send_ns = cap.t_send_ns if cap.t_send_ns is not None else cap.t_start_ns
    rec.t_headers_ns = cap.t_headers_ns
    rec.t_start_ns, rec.t_scheduled_ns = cap.t_start_ns, cap.t_scheduled_ns
    rec.connect_s, rec.pool_wait_s, rec.conn_reused = cap.connect_s, cap.pool_wait_s, cap.conn_reused
    rec.http_status = cap.status
    rec.stream = cap.stream
    rec.stale_retry = cap.stale_retry
    rec.first_error, rec.first_error_after_s = cap.first_error, cap.first_error_after_s
    rec.served_by = cap.headers.get("x-upstream-addr")
    rec.proxy_cache = cap.headers.get("x-cache-status")
    rec.accel_buffering = cap.headers.get("x-accel-buffering")
    try:
        if cap.status is not None and cap.status >= 400:
            body = " ".join(cap.error_body.decode(errors="replace")[:300].split())
            if cap.status == 504:  # a gateway's answer, not the server's: its own class
                return rec.fail(f"proxy timeout: HTTP 504: {body}", t_end_ns=cap.t_eof_ns)
            return rec.fail(f"HTTP {cap.status}: {body}", t_end_ns=cap.t_eof_ns)
        finished, cut, t_last = _feed(call, cap)
        if finished:
            rec.t_end_ns = t_last
            return rec.finalize()
        if cap.exc is not None:
            return rec.fail(cap.exc, t_end_ns=cap.t_eof_ns)
        if cut is not None:  # the stream broke off on a bad last line: a cut-off write, or a router's
            # "proxy error: Failed to read connection" when the model process behind it died
            return rec.fail(f"server connection lost: the stream broke off; its last line: {cut}", t_end_ns=cap.t_eof_ns)
        return rec.fail("stream ended before the final message", t_end_ns=cap.t_eof_ns)
    except MalformedLine as e:
        return rec.fail(f"malformed line: {e}", t_end_ns=cap.t_eof_ns)
    except StreamError as e:
        return rec.fail(f"server error: {e}", t_end_ns=cap.t_eof_ns)
    finally:
        if call.after is not None:
            call.after(rec)


def _feed(call: StreamCall, cap: Capture) -> tuple[bool, MalformedLine | None, int | None]:
    """Feed every complete line to the parser; a line's time is the arrival of its last byte."""
    buf = b""
    cut: MalformedLine | None = None  # a bad line: malformed if more follows, a cut-off if the stream ends there
    for t, chunk in zip(cap.chunk_times_ns, cap.chunks):
        buf += chunk
        if b"\n" not in chunk:
            continue
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace").rstrip("\r")
            if not line.strip():
                continue
            if cut is not None:  # the bad line was not the last one: the server sent garbage
                raise cut
            try:
                if call.on_line(line, t):
                    return True, None, t
            except MalformedLine as e:
                cut = e
    if buf.strip():  # a last line without its newline
        line = buf.decode(errors="replace").rstrip("\r")
        if cut is not None:
            raise cut
        t = cap.chunk_times_ns[-1]
        try:
            if call.on_line(line, t):
                return True, None, t
        except MalformedLine as e:
            cut = e
    return False, cut, None


def mark_token(rec: RequestRecord, t_ns: int, *, thinking: bool = False) -> None:
    """Stamp one streamed event that carried generated text. ``thinking``: it carried thinking and no answer
    text; it still counts for TTFT and the token times (the server generated it), but not as the answer."""
    if rec.t_first_token_ns is None:
        rec.t_first_token_ns = t_ns
    if thinking:
        if rec.event_thinking is None:
            rec.event_thinking = [False] * len(rec.token_times_ns)
        rec.event_thinking.append(True)
    else:
        if rec.t_first_answer_ns is None:
            rec.t_first_answer_ns = t_ns
        if rec.event_thinking is not None:
            rec.event_thinking.append(False)
    rec.token_times_ns.append(t_ns)
