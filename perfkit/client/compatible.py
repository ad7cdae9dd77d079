"""The chat-completions wire protocol that most servers speak on ``/v1`` (the server kinds built on it subclass
:class:`CompatibleBackend`).

Streams ``/v1/chat/completions`` or ``/v1/completions`` as SSE with ``stream_options.include_usage``
(token counts from the final ``usage`` chunk; cached prompt tokens from
``usage.prompt_tokens_details.cached_tokens`` where the server fills it). The API has no notion of
loading: which models are resident, loading, unloading and so every cold state are unknown here,
and say so (``perfkit.control.Unknown``) instead of guessing.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

import httpx

from perfkit.servers.control.base import Unknown
from perfkit.core.errors import PerfkitError
from perfkit.client.loadgen import HttpTarget
from perfkit.core.records import RequestRecord
from perfkit.client.stream import MalformedLine, StreamCall, StreamError, mark_token
from perfkit.client.toolcalls import CallFragments, v1_fields, v1_messages
from perfkit.core.tools import Tools
from perfkit.client.backends.base import (DEFAULT_TIMEOUT_S, Backend, Capabilities, ModelFacts, Prompt, Sampling,
                                          as_messages, as_text)

_NO_LOAD = ("the /v1 chat-completions API does not say which models are resident, nor load or unload them; "
            "cold states need a server kind whose own API does")


class CompatibleBackend(Backend):
    """Args:
        url: the server's base URL without ``/v1`` (e.g. ``http://gpu-box:8000``).
        endpoint: ``chat`` (``/v1/chat/completions``, default) or ``completions`` (``/v1/completions``).
        headers: extra HTTP headers, e.g. ``{"Authorization": "Bearer …"}``; sent, never recorded.
    """

    name = "compatible"
    capabilities = Capabilities(cached_tokens=True)

    def __init__(self, url: str, *, endpoint: str = "chat", headers: Mapping[str, str] | None = None,
                 control_timeout_s: float = 30.0):
        if endpoint not in ("chat", "completions"):
            raise PerfkitError(f"{self.name} endpoint {endpoint!r} is not allowed; allowed: chat, completions")
        self.url = url.rstrip("/").removesuffix("/v1")
        self.endpoint = endpoint
        self._client = httpx.Client(base_url=self.url, headers=dict(headers or {}), timeout=control_timeout_s)
        self.target = HttpTarget(self.url, dict(headers or {}))

    @classmethod
    def create(cls, url: str, *, endpoint: str = "chat", headers: Mapping[str, str] | None = None,
               **_: Any) -> "CompatibleBackend":
        return cls(url, endpoint=endpoint, headers=headers)

    # ---- what the API shows ----------------------------------------------------------------------
    def _models(self) -> list[dict]:
        r = self._client.get("/v1/models")
        r.raise_for_status()
        return r.json().get("data", []) or []

    def models(self) -> list[str]:
        return [m.get("id") for m in self._models()]

    def version(self) -> str:
        """The server's own version where a well-known route gives it; the /v1 API itself has none."""
        for path, key in (("/version", "version"), ("/info", "version"), ("/api/version", "version"),
                          ("/props", "build_info")):
            try:
                r = self._client.get(path)
                if r.status_code == 200 and isinstance(r.json(), dict) and r.json().get(key):
                    return f"{r.json()[key]} (from {path})"
            except (httpx.HTTPError, ValueError):
                continue
        return "unknown (no version route answered; the /v1 API has none)"

    def model_facts(self, model: str) -> ModelFacts:
        entry = next((m for m in self._models() if m.get("id") == model), None)
        if entry is None:
            raise PerfkitError(f"the server at {self.url} serves no model {model!r}; it lists: "
                               f"{', '.join(self.models()) or 'none'}")
        extra = {k: entry[k] for k in ("owned_by", "max_model_len", "root", "created") if k in entry}
        return ModelFacts(name=model, extra=extra)

    def loaded(self) -> list[str]:
        raise Unknown(_NO_LOAD)

    def is_loaded(self, model: str) -> bool:
        raise Unknown(_NO_LOAD)

    def load(self, model: str, timeout_s: float = DEFAULT_TIMEOUT_S, keep_alive: object = None) -> float:
        raise Unknown(_NO_LOAD)

    def unload(self, model: str, timeout_s: float = 120.0) -> None:
        raise Unknown(_NO_LOAD)

    # ---- measured request ----------------------------------------------------------------------
    def stream_call(self, model: str, prompt: Prompt, sampling: Sampling | None = None, *,
                    logprobs: bool = False, keep_alive: object = None, tools: Tools | None = None) -> StreamCall:
        sampling = sampling or Sampling()
        chat = self.endpoint == "chat"
        body: dict[str, Any] = {"model": model, "stream": True, "max_tokens": sampling.num_predict,
                                "stream_options": {"include_usage": True}}
        if chat:
            body["messages"] = v1_messages(as_messages(prompt))
            body.update(v1_fields(tools))
        else:
            if tools is not None:
                raise PerfkitError("tools need the chat endpoint: /v1/completions takes text, no tools")
            body["prompt"] = as_text(prompt, "/v1/completions")
        for name in ("temperature", "top_p", "seed", "top_k"):  # top_k: not in the protocol, but most servers take it
            v = getattr(sampling, name)
            if v is not None:
                body[name] = v
        if sampling.think is not None:
            if not chat:
                raise PerfkitError("think needs the chat endpoint: /v1/completions applies no chat template and "
                                   "streams no thinking apart from the answer")
            body.update(think_fields(sampling.think))
        if logprobs:
            body["logprobs"] = True if chat else 1
            if chat:
                body["top_logprobs"] = 1
        rec = RequestRecord(backend=self.name, model=model, tokens=[] if logprobs else None,
                            logprobs=[] if logprobs else None, think_requested=sampling.think_requested())
        parts: list[str] = []

        def usage(obj: dict) -> None:
            if obj.get("usage"):
                _usage(rec, obj["usage"])

        on_line = sse_parser(rec, parts, chat=chat, on_obj=usage)

        def after(r: RequestRecord) -> None:
            r.text = "".join(parts)

        return StreamCall.json("/v1/chat/completions" if chat else "/v1/completions", body, rec, on_line, after)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "url": self.url, "endpoint": self.endpoint, "version": self.version(),
                "unknown": _NO_LOAD}

    def close(self) -> None:
        self._client.close()
        self.target.close()


def serving(what: str) -> Callable[[dict, str, int], str]:
    """A probe's reading of ``GET /v1/models``: '<what> at URL serving m1, m2' (see ``perfkit.client.probe``)."""
    def identify(body: dict, shown: str, status: int) -> str:
        models = [m.get("id") for m in body.get("data", []) if isinstance(m, dict)]
        return f"{what} at {shown} serving {', '.join(models) or 'no model'}"
    return identify


def think_fields(think: bool | str) -> dict[str, Any]:
    """Ollama's ``think`` in a /v1 chat request: a level as ``reasoning_effort`` (gpt-oss on vLLM, Ollama's /v1);
    true or false as the chat template's ``enable_thinking`` (Qwen3-style templates on vLLM, SGLang and
    llama-server). A server or template that knows neither ignores it: the record's thinking tokens tell."""
    if isinstance(think, bool):
        return {"chat_template_kwargs": {"enable_thinking": think}}
    return {"reasoning_effort": think}


def sse_parser(rec: RequestRecord, parts: list[str], *, chat: bool = True,
               on_obj: Callable[[dict], None] | None = None) -> Callable[[str, int], bool]:
    """A line parser for OpenAI-style SSE (``data: {...}``, ``data: [DONE]``), llama-server's included:
    text (and reasoning) into ``parts`` with token stamps, logprobs and the finish reason into ``rec``;
    ``on_obj(chunk)`` sees every chunk for what a server adds (usage, llama.cpp's timings).

    Thinking is ``delta.reasoning`` (vLLM since late 2025, Ollama's /v1) or ``delta.reasoning_content``
    (llama-server with --reasoning-format, DeepSeek, older vLLM); a server sending both sends the same text
    twice, so one is read. Thoughts a server leaves inside ``content`` (no reasoning parser) read as answer.
    Tool calls are ``delta.tool_calls`` fragments, joined by index into ``rec.tool_calls``."""
    calls = CallFragments()

    def on_line(line: str, t_ns: int) -> bool:
        if not line.startswith("data:"):
            if line.startswith((":", "event:", "id:", "retry:")):
                return False
            raise MalformedLine(line[:120])
        data = line[5:].strip()
        if data == "[DONE]":
            return True
        try:
            obj = json.loads(data)
        except json.JSONDecodeError:
            raise MalformedLine(data[:120]) from None
        if not isinstance(obj, dict):
            raise MalformedLine(data[:120])
        if "error" in obj:
            raise StreamError(json.dumps(obj["error"])[:300])
        for choice in obj.get("choices") or []:
            delta = choice.get("delta") or {}
            thought = (delta.get("reasoning") or delta.get("reasoning_content") or "") if chat else ""
            answer = (delta.get("content") or "") if chat else choice.get("text") or ""
            fragments = delta.get("tool_calls") or [] if chat else []
            if thought or answer or fragments:
                mark_token(rec, t_ns, thinking=not (answer or fragments))
                parts.append(thought + answer)
            if fragments:
                for f in fragments:
                    if isinstance(f, dict):
                        calls.add(f)
                rec.tool_calls = [c.as_dict() for c in calls.calls()]
            _logprobs(rec, choice.get("logprobs"))
            if choice.get("finish_reason"):
                rec.done_reason = choice["finish_reason"]
        if on_obj is not None:
            on_obj(obj)
        return False

    return on_line


def _usage(rec: RequestRecord, u: dict) -> None:
    rec.prompt_tokens = u.get("prompt_tokens")
    if u.get("completion_tokens") is not None:
        rec.output_tokens, rec.output_tokens_source = u["completion_tokens"], "server"
    details = u.get("prompt_tokens_details") or {}
    if details.get("cached_tokens") is not None:
        rec.cached_tokens = details["cached_tokens"]
        if rec.prompt_tokens is not None:
            rec.prefill_tokens = rec.prompt_tokens - rec.cached_tokens


def _logprobs(rec: RequestRecord, lp: Any) -> None:
    if rec.tokens is None or not lp:
        return
    if isinstance(lp.get("content"), list):  # chat
        for item in lp["content"]:
            rec.tokens.append(item.get("token", ""))
            rec.logprobs.append(item.get("logprob"))
    else:  # completions: parallel lists
        rec.tokens.extend(lp.get("tokens") or [])
        rec.logprobs.extend(lp.get("token_logprobs") or [])
