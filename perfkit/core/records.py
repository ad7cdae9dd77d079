"""The record every measured request yields (units in names; client times on one monotonic clock)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from perfkit.core.clock import now_ns

# cold_server: the server restarted, then the first request (the seed's "first request after a
# (container) restart"); first_after_load: the model just loaded and never used, whose first request
# pays allocation and first kernels; warm: resident and primed, prompt not cached.
CACHE_STATES = ("cold_server", "cold_disk", "cold_memory", "first_after_load", "warm", "warm_cached")


@dataclass
class RequestRecord:
    """One request, as the client saw it and as the server reported it.

    Client timestamps are ``perf_counter_ns`` values: comparable with each other and with the
    sampler's samples, not with wall time (``wall_send_unix_s`` is for that).
    Server figures are converted to seconds (Ollama reports ns, llama-server ms).
    """

    backend: str
    model: str
    ok: bool = True
    error: str | None = None
    http_status: int | None = None
    wall_send_unix_s: float = 0.0
    t_send_ns: int = 0
    t_headers_ns: int | None = None
    t_first_token_ns: int | None = None
    t_end_ns: int | None = None
    t_loaded_ns: int | None = None  # llama-server: when /models first said "loaded" during this request
    t_start_ns: int | None = None  # the client began the request (before finding or opening a connection)
    t_scheduled_ns: int | None = None  # open loop: when the schedule said to send it
    connect_s: float | None = None  # opening a new connection; None when one was reused (never inside TTFT)
    pool_wait_s: float | None = None  # waiting for a free connection in the client's pool
    conn_reused: bool | None = None
    stream: int | None = None  # closed loop: which of the concurrent client streams sent it
    stale_retry: bool = False  # resent once: the server had closed the kept-alive connection while idle
    first_error: str | None = None  # a resent request's first attempt: its error ...
    first_error_after_s: float | None = None  # ... and how long after that attempt's send it failed
    served_by: str | None = None  # the upstream a proxy says served it (X-Upstream-Addr)
    proxy_cache: str | None = None  # the proxy's cache status (X-Cache-Status: HIT, MISS ...)
    accel_buffering: str | None = None  # the server's X-Accel-Buffering (tells nginx not to buffer)
    token_times_ns: list[int] = field(default_factory=list)  # one stamp per streamed event carrying text
    event_tokens: list[int] | None = None  # tokens in each event, where the server says (logprobs per event)
    # Derived from the client timestamps (finalize()).
    ttfb_s: float | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    tpot_s: float | None = None
    send_lag_s: float | None = None  # open loop: when perfkit began the request − its scheduled time
    ttft_sched_s: float | None = None  # open loop: TTFT from the scheduled send (no coordinated omission)
    e2e_sched_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    # Server-reported.
    load_s: float | None = None
    load_resolution_s: float | None = None  # ± on load_s where it is polled, not reported (llama-server)
    prompt_tokens: int | None = None  # every prompt token the server saw, cached or not
    cached_tokens: int | None = None  # served from the prompt cache (llama-server cache_n)
    prefill_tokens: int | None = None  # uncached prompt tokens actually evaluated
    prefill_s: float | None = None
    decode_s: float | None = None
    output_tokens: int | None = None
    output_tokens_source: str | None = None  # "server" or "chunks" (fallback)
    prefill_tok_s: float | None = None  # only where the uncached count is known
    prefill_tok_s_max: float | None = None  # an upper bound where it isn't (Ollama: the count includes cache hits)
    decode_tok_s: float | None = None
    overhead_s: float | None = None
    done_reason: str | None = None
    text: str = ""
    tokens: list[str] | None = None
    logprobs: list[float] | None = None

    def finalize(self) -> "RequestRecord":
        """Compute the derived metrics from the raw timestamps and server figures (definitions: metrics.md)."""
        s = 1e-9
        if self.t_headers_ns is not None:
            self.ttfb_s = (self.t_headers_ns - self.t_send_ns) * s
        if self.t_first_token_ns is not None:
            self.ttft_s = (self.t_first_token_ns - self.t_send_ns) * s
        if self.t_end_ns is not None:
            self.e2e_s = (self.t_end_ns - self.t_send_ns) * s
        if self.t_scheduled_ns is not None:
            self.send_lag_s = ((self.t_start_ns or self.t_send_ns) - self.t_scheduled_ns) * s
            if self.t_first_token_ns is not None:
                self.ttft_sched_s = (self.t_first_token_ns - self.t_scheduled_ns) * s
            if self.t_end_ns is not None and self.ok:
                self.e2e_sched_s = (self.t_end_ns - self.t_scheduled_ns) * s
        if self.output_tokens is None and self.token_times_ns:
            self.output_tokens, self.output_tokens_source = len(self.token_times_ns), "chunks"
        # Per token, not per event: a server that packs k tokens into one event (vLLM behind a busy API
        # server, speculative decoding) spreads that event's gap over its k tokens.
        self.itl_s = [(b - a) * s / k for a, b, k in zip(self.token_times_ns, self.token_times_ns[1:],
                                                        self.tokens_per_event()[1:]) if k for _ in range(k)]
        if self.output_tokens and self.output_tokens > 1 and self.e2e_s is not None and self.ttft_s is not None:
            self.tpot_s = (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)
        if self.prefill_tokens and self.prefill_s:
            self.prefill_tok_s = self.prefill_tokens / self.prefill_s
        elif self.prefill_tokens is None and self.prompt_tokens and self.prefill_s:
            self.prefill_tok_s_max = self.prompt_tokens / self.prefill_s
        if self.output_tokens and self.decode_s and self.output_tokens_source == "server":
            self.decode_tok_s = self.output_tokens / self.decode_s
        if self.e2e_s is not None and self.ok:
            parts = [x for x in (self.load_s, self.prefill_s, self.decode_s) if x is not None]
            if parts:
                self.overhead_s = self.e2e_s - sum(parts)
        return self

    def tokens_per_event(self) -> list[int]:
        """How many output tokens each streamed event carried: the server's own per-event count where it gave
        one, else the server's total spread evenly over the events (integers, summing to the total); one per
        event when the server gave no count."""
        n = len(self.token_times_ns)
        if self.event_tokens is not None and len(self.event_tokens) == n:
            return list(self.event_tokens)
        total = self.output_tokens if self.output_tokens_source == "server" and self.output_tokens else n
        if n == 0 or total <= n:
            return [1] * n
        return [round(total * (i + 1) / n) - round(total * i / n) for i in range(n)]

    def fail(self, reason: str, t_end_ns: int | None = None) -> "RequestRecord":
        self.ok = False
        self.error = reason
        if self.t_end_ns is None:
            self.t_end_ns = t_end_ns or now_ns()
        return self.finalize()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
