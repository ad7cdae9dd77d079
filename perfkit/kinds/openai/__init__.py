"""Any OpenAI-compatible server (vLLM, SGLang, TGI, a single-model llama-server, Ollama's ``/v1`` routes): the
``/v1`` chat-completions or completions API streamed as SSE, and nothing beyond it."""

from __future__ import annotations

from perfkit import kinds
from perfkit.client.compatible import CompatibleBackend, serving
from perfkit.client.probe import ProbeSpec
from perfkit.kinds.base import ServerKind


class OpenAIBackend(CompatibleBackend):
    name = "openai"


@kinds.register
class OpenAI(ServerKind):
    name = "openai"
    title = "an OpenAI-compatible server"
    backend = OpenAIBackend
    probe = ProbeSpec("/v1/models", "an OpenAI-compatible API", "the server", serving("an OpenAI-compatible server"),
                      strip_suffix="/v1")
    keys = frozenset({"endpoint"})
    order = 40
    generic = True


__all__ = ["OpenAI", "OpenAIBackend"]
