"""Timing one streamed HTTP response: the single hot path every backend shares."""

from __future__ import annotations

import time
from typing import Callable

import httpx

from ..records import RequestRecord, now_ns


class MalformedLine(ValueError):
    """A line of the stream that is not what the wire format promises."""


class StreamError(RuntimeError):
    """The server reported an error inside the stream."""


def timed_stream(client: httpx.Client, url: str, payload: dict, rec: RequestRecord,
                 on_line: Callable[[str, int], bool], *, timeout_s: float,
                 stall_timeout_s: float | None = None) -> RequestRecord:
    """POST ``payload`` and feed each non-empty line to ``on_line(line, t_ns)`` until it returns True.

    ``timeout_s`` bounds the whole request; ``stall_timeout_s`` bounds the silence between two
    reads (it defaults to ``timeout_s`` because a cold load sends nothing for minutes).
    Never raises for server trouble: the record comes back failed with the reason.
    """
    stall_s = min(stall_timeout_s or timeout_s, timeout_s)
    timeout = httpx.Timeout(connect=min(30.0, timeout_s), read=stall_s, write=30.0, pool=timeout_s)
    limit_ns = int(timeout_s * 1e9)
    rec.wall_send_unix_s = time.time()
    rec.t_send_ns = now_ns()
    finished = False
    cut: MalformedLine | None = None  # a bad line: malformed if more follows, a cut-off if the stream ends there
    try:
        with client.stream("POST", url, json=payload, timeout=timeout) as resp:
            rec.t_headers_ns = now_ns()
            rec.http_status = resp.status_code
            if resp.status_code >= 400:
                body = resp.read().decode(errors="replace")[:300]
                return rec.fail(f"HTTP {resp.status_code}: {body.strip()}")
            for line in resp.iter_lines():
                t = now_ns()
                if cut is not None:  # the bad line was not the last one: the server sent garbage
                    raise cut
                if t - rec.t_send_ns > limit_ns:
                    return rec.fail(f"timeout: request exceeded {timeout_s:g} s")
                try:
                    if line.strip() and on_line(line, t):
                        finished = True
                        break
                except MalformedLine as e:
                    cut = e
            rec.t_end_ns = now_ns()
            if cut is not None:  # the stream broke off on a bad last line: a cut-off write, or a router's
                # "proxy error: Failed to read connection" when the model process behind it died
                return rec.fail(f"server connection lost: the stream broke off; its last line: {cut}")
    except httpx.TimeoutException as e:
        kind = "connect" if isinstance(e, httpx.ConnectTimeout) else "stall"
        return rec.fail(f"timeout ({kind}): no data for {stall_s:g} s" if kind == "stall"
                        else f"timeout (connect): {e}")
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.CloseError) as e:
        # The server (or the model process behind a router) died or dropped the connection mid-response,
        # e.g. "peer closed connection without sending complete message body (incomplete chunked read)".
        return rec.fail(f"server connection lost: {type(e).__name__}: {e}")
    except httpx.HTTPError as e:
        return rec.fail(f"{type(e).__name__}: {e}")
    except MalformedLine as e:
        return rec.fail(f"malformed line: {e}")
    except StreamError as e:
        return rec.fail(f"server error: {e}")
    if not finished:
        return rec.fail("stream ended before the final message")
    return rec.finalize()


def mark_token(rec: RequestRecord, t_ns: int) -> None:
    if rec.t_first_token_ns is None:
        rec.t_first_token_ns = t_ns
    rec.token_times_ns.append(t_ns)
