"""The catalogue: every metric perfkit reports, declared once.

A :class:`Metric` says what a number is (label), its :class:`~perfkit.core.units.Unit`, which direction is better, which
statistic it is, how it is computed and what its n counts. A :class:`perfkit.analysis.figures.Figure` is one
metric measured under one condition (a cache state, a model, a setting at a concurrency) in one run. Reports,
conclusions, the results index and ``perfkit compare`` all print a figure through its metric, so a figure
has one definition, one value and one CI wherever it appears. Definitions follow ``metrics.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

from perfkit.core.units import BYTES, JOULES, RATIO, REQUESTS_PER_S, SECONDS, SHARE, TOKENS, TOKENS_PER_S, Unit

BETTER = ("lower", "higher", "")  # "": neither (a fact, compared for information only)


@dataclass(frozen=True)
class Metric:
    """One metric's definition.

    ``unit``: what its value counts, and so how it reads everywhere (seconds, tokens/s, requests/s, bytes, a
    share 0–1, joules, a ratio); ``better``: ``lower``, ``higher`` or ``""`` for a fact with no good direction;
    ``stat``: the statistic (``median``, ``p90``, ``p99``, ``mean``, ``series``, ``reading``, ``share``, ``shift``, ``max``); ``method``: how the value and its CI
    are computed; ``n_counts``: what the n printed beside it counts; ``per_output``: whether it changes with the
    number of output tokens asked for (an end-to-end time does, a time to first token does not).
    """

    tag: str
    label: str
    unit: Unit
    better: str
    stat: str
    method: str
    n_counts: str
    per_output: bool = False

    def __post_init__(self) -> None:
        if self.better not in BETTER:
            raise ValueError(f"metric {self.tag}: better must be 'lower', 'higher' or ''")


_PCT = "order-statistic CI (exact, distribution-free)"
_REQ = "requests"
CATALOGUE: dict[str, Metric] = {m.tag: m for m in (
    Metric("e2e", "end-to-end latency", SECONDS, "lower", "median",
           f"median of each request's send → last byte (e2e_s), {_PCT}", _REQ, per_output=True),
    Metric("ttft", "time to first token", SECONDS, "lower", "median",
           f"median of each request's send → first token (ttft_s), {_PCT}", _REQ),
    Metric("ttft_p90", "TTFT p90", SECONDS, "lower", "p90", f"90th percentile of ttft_s, {_PCT}", _REQ),
    Metric("ttft_p99", "TTFT p99", SECONDS, "lower", "p99",
           f"99th percentile of ttft_s; failed requests count as beyond the limit, {_PCT}", _REQ),
    Metric("e2e_p99", "end-to-end latency p99", SECONDS, "lower", "p99",
           f"99th percentile of e2e_s; failed requests count as beyond the limit, {_PCT}", _REQ, per_output=True),
    Metric("ttft_sched_p99", "TTFT p99 from the schedule", SECONDS, "lower", "p99",
           "99th percentile of scheduled send → first token (no coordinated omission); failed requests count "
           f"as beyond the limit, {_PCT}", _REQ),
    # A thinking model's first token is a thought: what the user waits for is its first answer token.
    Metric("ttfa", "time to first answer token", SECONDS, "lower", "median",
           f"median of each request's send → first answer token, thinking excluded (ttfa_s; the TTFT of a request "
           f"that did not think), {_PCT}", _REQ),
    Metric("thinking_time", "thinking time", SECONDS, "lower", "median",
           "median over the requests that thought and answered of first thinking token → first answer token "
           f"(thinking_s), {_PCT}", _REQ),
    # Facts, not aims: fewer thinking tokens answer sooner, but may answer worse.
    Metric("thinking_tokens", "thinking tokens", TOKENS, "", "median",
           "median of each request's streamed thinking tokens (events; exact where the server counts each "
           f"event's tokens), {_PCT}", _REQ, per_output=True),
    Metric("answer_tokens", "answer tokens", TOKENS, "", "median",
           "median of each request's answer tokens: the server-counted output tokens − thinking tokens (streamed "
           f"answer events where the server counts none), {_PCT}", _REQ, per_output=True),
    Metric("tpot", "time per output token", SECONDS, "lower", "median",
           f"median over requests of (e2e − TTFT) / (server-counted output tokens − 1), {_PCT}", _REQ),
    Metric("itl", "inter-token latency", SECONDS, "lower", "median",
           "median over requests of each request's median gap per token (an event carrying k tokens spreads "
           f"its gap over them), {_PCT}", _REQ),
    Metric("event_gap", "gap between streamed events", SECONDS, "lower", "median",
           f"median over requests of each request's median gap between streamed events (what a reader sees), "
           f"{_PCT}", _REQ),
    Metric("load", "model load", SECONDS, "lower", "median",
           f"median of the server-reported (or polled) load time per request, {_PCT}", _REQ),
    Metric("decode_rate", "decode speed", TOKENS_PER_S, "higher", "median",
           f"median of server-counted output tokens / server-timed decode, per request, {_PCT}", _REQ),
    Metric("prefill_rate", "prefill speed", TOKENS_PER_S, "higher", "median",
           f"median of uncached prompt tokens / server-timed prefill, per request, {_PCT}", _REQ),
    Metric("memory", "resident model memory", BYTES, "lower", "reading",
           "one reading of the resident model's own memory while it is loaded and used", "readings"),
    Metric("peak_rss", "peak server memory (RSS)", BYTES, "lower", "max",
           "the largest server RSS sampled during the series' requests", "requests"),
    Metric("energy_per_token", "energy per output token", JOULES, "lower", "median",
           f"median over requests of the GPUs' energy in the request's window / output tokens, {_PCT}", _REQ, per_output=True),
    Metric("gpu_util", "GPU utilization", SHARE, "higher", "median",
           f"median over requests of the mean GPU utilization in the request's window, {_PCT}", _REQ),
    Metric("series_gpu_util", "GPU utilization under load", SHARE, "higher", "reading",
           "mean GPU utilization (averaged over the server's GPUs) over the whole series' window, from the GPU "
           "readings' source (NVML here, or the server host's exporter via Prometheus or a direct scrape)", "series"),
    Metric("series_energy_per_token", "energy per output token under load", JOULES, "lower", "reading",
           "the server's GPUs' energy over the whole series' window (energy counter, else power integrated) ÷ the "
           "server-counted output tokens of the series' requests", "series", per_output=True),
    Metric("prefix_reuse", "prompt served from the server's cache", SHARE, "higher", "median",
           "median over requests of the server-counted cached prompt tokens ÷ prompt tokens (the counts the server "
           f"reports with each request), {_PCT}", _REQ),
    Metric("draft_acceptance", "draft tokens accepted", SHARE, "higher", "median",
           "median over requests of the tokens the model accepted ÷ the tokens its draft proposed (speculative "
           f"decoding; the server's per-request counts), {_PCT}", _REQ),
    Metric("series_draft_acceptance", "draft tokens accepted (server counters)", SHARE, "higher", "reading",
           "the server's accepted ÷ drafted token counters over the whole series' window (speculative decoding, "
           "from its /metrics where it gives no per-request counts; server-wide, so other clients' traffic counts)",
           "series"),
    Metric("throughput", "output throughput", TOKENS_PER_S, "higher", "series",
           "server-counted output tokens per second inside the series' steady-state window; CI by batch means "
           "over 5 equal windows", "windows", per_output=True),
    Metric("goodput", "goodput", REQUESTS_PER_S, "higher", "series",
           "requests per second of the series' last completed attempt that met every SLO (failed requests "
           "never do)", _REQ, per_output=True),
    Metric("sustained_rate", "highest sustained rate", REQUESTS_PER_S, "higher", "reading",
           "the highest offered open-loop rate at which ≥ 90% of requests met the SLOs (latency from the "
           "schedule) and latency did not grow through the series (capacity ÷ rate ≥ 0.9 from its trend)", "rates tried", per_output=True),
    Metric("efficiency", "scaling efficiency", RATIO, "higher", "series",
           "fleet throughput at N·c clients ÷ (N × one server's throughput at c clients): 1 = perfect at every "
           "client count; CI from the two series' batch-means CIs", "windows"),
    Metric("proxy_overhead", "time the proxy adds to TTFT", SECONDS, "lower", "shift",
           "Hodges–Lehmann shift proxied − direct over alternating request pairs, Moses CI", "pairs"),
    Metric("failed", "failed requests", SHARE, "lower", "share",
           "share of the series' requests that failed or timed out (an error, an HTTP error status, or no answer "
           "in time), Clopper–Pearson CI; two runs compared by Boschloo's exact test", _REQ),
    # Tool calls: shares of a session's turns, each turn a 0/1 sample.
    Metric("tool_called", "questions answered with a tool call", SHARE, "", "share",
           "share of question turns (the tools offered) that the server answered with at least one tool call, "
           "Clopper–Pearson CI", "turns"),
    Metric("tool_valid", "tool calls with valid arguments", SHARE, "higher", "share",
           "share of turns with tool calls whose every call named an offered tool with arguments valid under its "
           "JSON schema, Clopper–Pearson CI", "turns"),
    Metric("tool_as_expected", "tool calls as the dataset's answer", SHARE, "higher", "share",
           "share of question turns whose tool calls (or none) named the same tools the dataset's own answer "
           "called, Clopper–Pearson CI", "turns"),
    Metric("tool_unparsed", "tool calls left in the answer text", SHARE, "lower", "share",
           "share of the turns sent with no parsed tool call whose answer text looks like one, or which the server "
           "failed because it could not parse the call the model wrote, Clopper–Pearson CI", "turns"),
    Metric("hit_ratio", "cache hit ratio", SHARE, "higher", "share",
           "share of identical requests the proxy answered from its cache, Clopper–Pearson CI", _REQ),
    Metric("agreement", "token agreement with the reference", SHARE, "higher", "mean",
           "mean over prompts of the share of greedy output tokens equal to the reference's, t-interval",
           "prompts"),
    Metric("prefix_match", "output reproduced before the first difference", SHARE, "higher", "mean",
           "mean over prompts of the share of the reference's greedy output reproduced exactly, t-interval",
           "prompts"),
    Metric("request_rate", "request rate the clients sustain", REQUESTS_PER_S, "higher", "median",
           "median over requests of the clients ÷ the request's e2e (Little's law: the rate that many clients sustain "
           f"in a closed loop), {_PCT}", _REQ, per_output=True),
    Metric("stream_throughput", "output throughput the clients sustain", TOKENS_PER_S, "higher", "median",
           f"median over requests of the clients × the request's output tokens ÷ its e2e, {_PCT}", _REQ,
           per_output=True),
    Metric("slo_met", "requests inside the SLOs", SHARE, "higher", "share",
           "share of the requests that met every SLO (failed requests never do), Clopper–Pearson CI", _REQ),
    Metric("cold_over_warm", "first request ÷ warm request", RATIO, "lower", "ratio",
           "Hodges–Lehmann ratio of e2e, Moses CI", _REQ, per_output=True),
)}


def metric(tag: str) -> Metric:
    try:
        return CATALOGUE[tag]
    except KeyError:
        raise KeyError(f"unknown metric {tag!r}; the catalogue has: {', '.join(CATALOGUE)}") from None
