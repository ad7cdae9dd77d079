"""vLLM: the OpenAI-compatible API, plus what vLLM says of itself: its version (``/version``), each model's
context and weights (``/v1/models``: ``max_model_len``, ``root``), its ``/metrics`` (queue, running requests,
KV-cache use, prefix-cache hits, speculative decoding's drafted and accepted tokens), and its prefix cache
reset (``POST /reset_prefix_cache``) at the start of each session, so a run never measures a cache that an
earlier one warmed."""

from __future__ import annotations

from typing import Any

import httpx

from perfkit import kinds
from perfkit.client.compatible import CompatibleBackend, serving
from perfkit.client.probe import ProbeSpec
from perfkit.kinds.base import ServerKind
from perfkit.sampling import exposition
from perfkit.sampling.exposition import Series
from perfkit.servers.control import RemoteControl

# Its "perc" gauges are ratios 0–1; the spec_decode counters exist where a draft model or n-gram speculation runs.
exposition.register([
    Series("vllm:num_requests_running", "server_requests_running", "server"),
    Series("vllm:num_requests_waiting", "server_requests_waiting", "server"),
    Series("vllm:gpu_cache_usage_perc", "server_kv_cache_usage_ratio", "server", combine="max"),
    Series("vllm:kv_cache_usage_perc", "server_kv_cache_usage_ratio", "server", combine="max"),
    Series("vllm:prompt_tokens_total", "server_prompt_tokens_total", "server"),
    Series("vllm:generation_tokens_total", "server_tokens_predicted_total", "server"),
    Series("vllm:prefix_cache_hits_total", "server_prefix_cache_hits_tokens_total", "server"),
    Series("vllm:prefix_cache_queries_total", "server_prefix_cache_queries_tokens_total", "server"),
    Series("vllm:spec_decode_num_draft_tokens_total", "server_spec_draft_tokens_total", "server"),
    Series("vllm:spec_decode_num_accepted_tokens_total", "server_spec_accepted_tokens_total", "server"),
])


class VllmControl(RemoteControl):
    """A vLLM server seen over its API: beyond it nothing is visible, but its prefix cache can be emptied."""

    name = "vllm"

    def __init__(self, url: str, headers: dict[str, str] | None = None):
        super().__init__(url)
        self._headers = dict(headers or {})

    def reset_prefix_cache(self) -> str:
        """Empty the server's prefix cache; what happened, in words (a server that refuses says so)."""
        try:
            r = httpx.post(f"{self.url}/reset_prefix_cache", headers=self._headers, timeout=30.0)
        except httpx.HTTPError:
            return "not reset: the server did not answer POST /reset_prefix_cache"
        if r.status_code >= 400:
            return f"not reset: POST /reset_prefix_cache answered HTTP {r.status_code}"
        return "reset"


class VllmBackend(CompatibleBackend):
    name = "vllm"

    def version(self) -> str:
        try:
            r = self._client.get("/version")
            if r.status_code == 200 and isinstance(r.json(), dict) and r.json().get("version"):
                return str(r.json()["version"])
        except (httpx.HTTPError, ValueError):
            pass
        return "unknown (GET /version did not answer with one)"

    def metrics_urls(self, models: list[str]) -> list[str]:
        return [f"{self.url}/metrics"]


@kinds.register
class Vllm(ServerKind):
    name = "vllm"
    title = "vLLM"
    backend = VllmBackend
    probe = ProbeSpec("/v1/models", "a vLLM server's /v1 API", "vllm serve", serving("a vLLM server"),
                      strip_suffix="/v1")
    keys = frozenset({"endpoint"})
    order = 45

    def create_backend(self, url: str | None, *, engine=None, **opts: Any) -> VllmBackend:
        b: VllmBackend = super().create_backend(url, **opts)  # type: ignore[assignment]
        b.control = VllmControl(b.url, opts.get("headers"))
        return b


__all__ = ["Vllm", "VllmBackend", "VllmControl"]
