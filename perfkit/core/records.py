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
    # Thinking models stream thoughts before the answer; TTFT still counts the first token of any kind, these
    # time the answer apart. ``event_thinking``: per streamed event, whether it carried thinking and no answer
    # text (None when no event did, so a model that does not think stores nothing more).
    event_thinking: list[bool] | None = None
    t_first_answer_ns: int | None = None  # the first event carrying answer text (not thinking)
    think_requested: str | None = None  # the request's think option as sent ("true", "false", "low" ...); None: not sent
    # The tools the server called ({"name", "arguments" (JSON text), "id"}, perfkit.client.toolcalls.ToolCall);
    # None when it called none. A call's fragments are answer output: they stop time to first answer token.
    tool_calls: list[dict] | None = None
    # Derived from the client timestamps (finalize()).
    ttfb_s: float | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    tpot_s: float | None = None
    send_lag_s: float | None = None  # open loop: when perfkit began the request − its scheduled time
    ttft_sched_s: float | None = None  # open loop: TTFT from the scheduled send (no coordinated omission)
    e2e_sched_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    ttfa_s: float | None = None  # send → first answer token; equals ttft_s for a request that did not think
    thinking_s: float | None = None  # first thinking token → first answer token; None without thinking or answer
    # Token events of each phase (exact per-event counts where the server gives them); where the server counts
    # all output, answer = that count − thinking, so tokens a server packs into one thinking event land in answer.
    thinking_tokens: int | None = None
    answer_tokens: int | None = None
    # Each phase's decode speed on the client clock, like tpot: its tokens after its first event over the span
    # from its first event to its last (None below two tokens).
    thinking_tok_s: float | None = None
    answer_tok_s: float | None = None
    # Server-reported.
    load_s: float | None = None
    load_resolution_s: float | None = None  # ± on load_s where it is polled, not reported (llama-server)
    prompt_tokens: int | None = None  # every prompt token the server saw, cached or not
    cached_tokens: int | None = None  # served from the prompt cache (llama-server cache_n)
    prefill_tokens: int | None = None  # uncached prompt tokens actually evaluated
    # Speculative decoding: tokens the draft proposed and those the model accepted (llama-server draft_n,
    # draft_n_accepted); their ratio is the acceptance rate. None where no draft ran or the server doesn't say.
    draft_tokens: int | None = None
    draft_accepted_tokens: int | None = None
    draft_acceptance: float | None = None
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
        if self.draft_tokens and self.draft_accepted_tokens is not None:
            self.draft_acceptance = self.draft_accepted_tokens / self.draft_tokens
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
        self._phases()
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

    def _phases(self) -> None:
        """Thinking and answer apart: time to first answer token, thinking time, each phase's tokens and speed."""
        s = 1e-9
        times = self.token_times_ns
        flags = self.event_thinking if self.event_thinking is not None and len(self.event_thinking) == len(times) \
            else [False] * len(times)
        thinking = [i for i, f in enumerate(flags) if f]
        answer = [i for i, f in enumerate(flags) if not f]
        if not thinking and self.t_first_answer_ns is None and self.t_first_token_ns is not None:
            # A record made without phase marks (an older parser, a test) that did not think: its first token
            # was its first answer token.
            self.t_first_answer_ns = self.t_first_token_ns
        if self.t_first_answer_ns is not None:
            self.ttfa_s = (self.t_first_answer_ns - self.t_send_ns) * s
        if not times:
            return
        exact = self.event_tokens is not None and len(self.event_tokens) == len(times)
        per_event = list(self.event_tokens) if exact else [1] * len(times)  # type: ignore[arg-type]
        self.thinking_tokens = sum(per_event[i] for i in thinking)
        if not answer:
            self.answer_tokens = 0
        elif self.output_tokens_source == "server" and self.output_tokens is not None \
                and self.output_tokens >= self.thinking_tokens:
            self.answer_tokens = self.output_tokens - self.thinking_tokens
        else:
            self.answer_tokens = sum(per_event[i] for i in answer)
        if thinking and self.t_first_answer_ns is not None:
            # Thinking that only follows the first answer token kept no one waiting for it.
            self.thinking_s = max(0, self.t_first_answer_ns - times[thinking[0]]) * s
        self.thinking_tok_s = _phase_rate(times, thinking, self.thinking_tokens, per_event)
        self.answer_tok_s = _phase_rate(times, answer, self.answer_tokens, per_event)

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


def _phase_rate(times_ns: list[int], events: list[int], tokens: int, per_event: list[int]) -> float | None:
    """Tokens per second of one phase: the tokens after its first event over its first → last event span."""
    if len(events) < 2 or tokens < 2:
        return None
    span_ns = times_ns[events[-1]] - times_ns[events[0]]
    after_first = tokens - per_event[events[0]]
    return after_first / (span_ns * 1e-9) if span_ns > 0 and after_first > 0 else None
