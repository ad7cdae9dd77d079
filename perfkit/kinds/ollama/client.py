"""Ollama's native API (``/api/chat`` streamed as NDJSON, ``/api/ps``, ``/api/show`` ...).

Facts this relies on: ../shared/reference/ollama.md. Durations arrive in nanoseconds and are
converted to seconds; metrics come only in the final ``done`` object and are omitted when zero.
"""

from __future__ import annotations

import json
import time
from typing import Any, Mapping

import httpx

from perfkit.core.errors import PerfkitError
from perfkit.core.clock import now_ns
from perfkit.core.records import RequestRecord
from perfkit.core.settings import parse_keep_alive_s
from perfkit.client.loadgen import HttpTarget
from perfkit.client.stream import MalformedLine, StreamCall, StreamError, mark_token
from perfkit.client.toolcalls import whole_call
from perfkit.core.tools import Tools
from perfkit.client.backends.base import (DEFAULT_TIMEOUT_S, Backend, Capabilities, ModelFacts, Prompt, Sampling,
                                          as_messages, as_text)

_NS = 1e-9


def keep_alive_value(value: object) -> object:
    """keep_alive as Ollama wants it: numbers stay numbers (negative ones too), durations stay strings."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    parse_keep_alive_s(value)  # validates
    text = str(value).strip()
    try:
        return int(text) if text.lstrip("-").isdigit() else float(text)
    except ValueError:
        return text


class OllamaBackend(Backend):
    """Args:
        url: the server, e.g. ``http://gpu-box:11434``.
        headers: extra HTTP headers (an auth proxy's key ...); sent, never recorded.
        endpoint: ``chat`` (default) or ``generate``.
    """

    name = "ollama"
    capabilities = Capabilities(residency=True, keep_alive_per_request=True, settings_by_restart_command=True)

    def __init__(self, url: str = "http://127.0.0.1:11434", *, headers: Mapping[str, str] | None = None,
                 endpoint: str = "chat", control_timeout_s: float = 30.0, control=None):
        if endpoint not in ("chat", "generate"):
            raise PerfkitError(f"ollama endpoint {endpoint!r} is not allowed; allowed: chat, generate")
        self.url = url.rstrip("/")
        self.endpoint = endpoint
        self._client = httpx.Client(base_url=self.url, headers=dict(headers or {}),
                                    timeout=control_timeout_s, limits=httpx.Limits(max_connections=256))
        self.target = HttpTarget(self.url, dict(headers or {}))
        if control is None:
            from perfkit.kinds.ollama.control import ollama_control

            control = ollama_control(self.url, headers=headers)
        self.control = control

    @classmethod
    def create(cls, url: str, *, headers: Mapping[str, str] | None = None, restart_command=None, log=None,
               ready_timeout_s: float = 120.0, inspect_host: bool = True, control=None, **_: Any) -> "OllamaBackend":
        from perfkit.kinds.ollama.control import ollama_control
        from perfkit.servers.control import RemoteControl

        if control is None:  # else the caller's: an agent on the server's host (perfkit.cluster.AgentControl)
            control = (ollama_control(url, restart_command=restart_command, log=log, headers=headers,
                                      ready_timeout_s=ready_timeout_s) if inspect_host else RemoteControl(url))
        return cls(url, headers=headers, control=control)

    @staticmethod
    def same_model(entry: Mapping[str, Any], model: str) -> bool:
        """Whether an /api/ps or /api/tags entry is ``model``: Ollama resolves names case-insensitively,
        and a name without a tag means ``:latest``."""
        want = canonical_name(model)
        return any(canonical_name(n) == want for n in (entry.get("name"), entry.get("model")) if n)

    # ---- control -------------------------------------------------------------------------------
    def _get(self, path: str) -> Any:
        out = self.control_get(path)
        if not isinstance(out, dict):
            raise PerfkitError(f"GET {self.url}{path} answered JSON that is not an object: not Ollama's API")
        return out

    def version(self) -> str:
        return self._get("/api/version").get("version", "unknown")

    def models(self) -> list[str]:
        tags = self._get("/api/tags")
        if not isinstance(tags.get("models"), list):
            raise PerfkitError(f"GET {self.url}/api/tags answered no model list: not Ollama's API")
        return [m["name"] for m in tags["models"] if isinstance(m, dict) and "name" in m]

    def ps(self) -> list[dict]:
        return self._get("/api/ps").get("models", []) or []

    def loaded(self) -> list[str]:
        return [m.get("name") or m.get("model") for m in self.ps()]

    def is_loaded(self, model: str) -> bool:
        return any(self.same_model(m, model) for m in self.ps())

    def resident_memory(self, model: str) -> dict[str, int]:
        """``size`` and ``size_vram`` of the loaded model from ``/api/ps`` (bytes)."""
        for m in self.ps():
            if self.same_model(m, model):
                return {"model_memory_bytes": m.get("size"), "model_vram_bytes": m.get("size_vram")}
        return {}

    def model_facts(self, model: str) -> ModelFacts:
        r = self._client.post("/api/show", json={"model": model})
        if r.status_code == 404:
            raise PerfkitError(f"ollama at {self.url} has no model {model!r}; pull it first (`ollama pull {model}`)")
        r.raise_for_status()
        show = r.json()
        details = show.get("details", {}) or {}
        info = show.get("model_info", {}) or {}
        tag = next((m for m in self._get("/api/tags").get("models", []) if self.same_model(m, model)), {})
        return ModelFacts(
            name=model, size_bytes=tag.get("size"), parameter_count=info.get("general.parameter_count"),
            quantization=details.get("quantization_level"), family=details.get("family"), digest=tag.get("digest"),
            extra={"parameter_size": details.get("parameter_size"), "format": details.get("format"),
                   **{k: v for k, v in info.items() if k.endswith((".context_length", ".block_count",
                                                                     ".embedding_length", ".head_count_kv"))}},
        )

    def model_capabilities(self, model: str) -> set[str] | None:
        """``capabilities`` of ``/api/show`` (since v0.6.4; ``thinking`` since v0.9.0); None on an older server."""
        try:
            r = self._client.post("/api/show", json={"model": model})
        except httpx.HTTPError:
            return None
        if r.status_code >= 400:
            return None
        caps = r.json().get("capabilities")
        return set(caps) if isinstance(caps, list) else None

    def load(self, model: str, timeout_s: float = DEFAULT_TIMEOUT_S, keep_alive: object = None) -> float:
        """Preload (empty request) and return Ollama's load_duration if given, else the request's wall time."""
        body: dict[str, Any] = {"model": model, "stream": False}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive_value(keep_alive)
        t0 = now_ns()
        r = self._client.post("/api/generate", json=body, timeout=timeout_s)
        wall = (now_ns() - t0) * _NS
        if r.status_code >= 400:
            raise PerfkitError(f"ollama could not load {model!r}: HTTP {r.status_code} {r.text[:200]}")
        if not self._wait(model, True, timeout_s=30.0):
            raise PerfkitError(f"ollama answered the preload of {model!r} but /api/ps does not list it")
        ld = r.json().get("load_duration")
        return ld * _NS if ld else wall

    def unload(self, model: str, timeout_s: float = 120.0) -> None:
        r = self._client.post("/api/generate", json={"model": model, "keep_alive": 0, "stream": False},
                              timeout=timeout_s)
        if r.status_code >= 400 and r.status_code != 404:
            raise PerfkitError(f"ollama could not unload {model!r}: HTTP {r.status_code} {r.text[:200]}")
        if not self._wait(model, False, timeout_s=timeout_s):
            raise PerfkitError(f"{model!r} still listed by /api/ps {timeout_s:g} s after keep_alive 0")

    def _wait(self, model: str, resident: bool, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.is_loaded(model) == resident:
                return True
            time.sleep(0.1)
        return False

    # ---- measured request ----------------------------------------------------------------------
    def stream_call(self, model: str, prompt: Prompt, sampling: Sampling | None = None, *,
                    logprobs: bool = False, keep_alive: object = None, tools: Tools | None = None) -> StreamCall:
        sampling = sampling or Sampling()
        body: dict[str, Any] = {"model": model, "stream": True, "options": sampling.options()}
        if sampling.think is not None:  # beside the options, not among them
            body["think"] = sampling.think
        if self.endpoint == "chat":
            body["messages"] = wire_messages(as_messages(prompt))
            if tools is not None:  # Ollama has no tool choice: the model decides
                body["tools"] = list(tools.definitions)
        else:
            if tools is not None:
                raise PerfkitError("tools need ollama's /api/chat: /api/generate takes a prompt, no tools")
            body["prompt"] = as_text(prompt, "ollama's /api/generate")
        if keep_alive is not None:
            body["keep_alive"] = keep_alive_value(keep_alive)
        if logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = 0
        rec = RequestRecord(backend=self.name, model=model, tokens=[] if logprobs else None,
                            logprobs=[] if logprobs else None, think_requested=sampling.think_requested())
        parts: list[str] = []
        chat = self.endpoint == "chat"

        def on_line(line: str, t_ns: int) -> bool:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise MalformedLine(line[:120]) from None
            if not isinstance(obj, dict):
                raise MalformedLine(line[:120])
            if "error" in obj:
                raise StreamError(str(obj["error"]))
            # Thinking arrives in its own chunks (/api/chat: message.thinking with content ""; /api/generate:
            # thinking with response ""), before the answer.
            src = (obj.get("message") or {}) if chat else obj
            thought, answer = src.get("thinking") or "", src.get("content" if chat else "response") or ""
            calls = src.get("tool_calls") or [] if chat else []  # a call arrives whole, in one chunk
            if thought or answer or calls:
                mark_token(rec, t_ns, thinking=not (answer or calls))
                parts.append(thought + answer)
            if calls:
                rec.tool_calls = (rec.tool_calls or []) + [whole_call(c).as_dict() for c in calls
                                                           if isinstance(c, dict)]
            for lp in obj.get("logprobs") or []:
                if rec.tokens is not None:
                    rec.tokens.append(lp.get("token", ""))
                    rec.logprobs.append(lp.get("logprob"))
            if obj.get("done"):
                _final_metrics(rec, obj)
                return True
            return False

        def after(r: RequestRecord) -> None:
            r.text = "".join(parts)

        return StreamCall.json("/api/chat" if chat else "/api/generate", body, rec, on_line, after)

    def describe(self) -> dict[str, Any]:
        try:
            version = self.version()
        except httpx.HTTPError as e:
            version = f"unreachable ({type(e).__name__})"
        return {"backend": self.name, "url": self.url, "version": version, "endpoint": self.endpoint}

    def close(self) -> None:
        self._client.close()
        self.target.close()


def _final_metrics(rec: RequestRecord, obj: dict) -> None:
    # Fields are omitted when zero (omitempty): absent means 0, not an error.
    rec.done_reason = obj.get("done_reason")
    rec.load_s = obj.get("load_duration", 0) * _NS
    rec.prompt_tokens = obj.get("prompt_eval_count", 0)
    # Since v0.30 prompt_eval_count includes prompt-cache hits (at least the chat template's head,
    # cached on every request) while prompt_eval_duration covers only the uncached ones: the uncached
    # count is unknown, so no exact prefill rate; finalize() gives prompt_tokens / duration as an upper bound.
    rec.prefill_tokens = None
    rec.prefill_s = obj.get("prompt_eval_duration", 0) * _NS
    rec.decode_s = obj.get("eval_duration", 0) * _NS
    if "eval_count" in obj or rec.token_times_ns:
        rec.output_tokens, rec.output_tokens_source = obj.get("eval_count", 0), "server"


def wire_messages(messages: list[dict]) -> list[dict]:
    """perfkit's neutral messages (``perfkit.client.toolcalls``) as Ollama's chat takes them: a call's arguments
    as an object, a result named by ``tool_name`` (and its call's id, which Ollama takes since v0.12.10)."""
    out = []
    for m in messages:
        if m.get("role") == "assistant" and m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                try:
                    args = json.loads(c.get("arguments") or "{}")
                except json.JSONDecodeError:
                    args = {}
                calls.append({**({"id": c["id"]} if c.get("id") else {}),
                              "function": {"name": c["name"], "arguments": args if isinstance(args, dict) else {}}})
            out.append({"role": "assistant", "content": m.get("content") or "", "tool_calls": calls})
        elif m.get("role") == "tool":
            out.append({"role": "tool", "content": m.get("content", ""),
                        **({"tool_name": m["name"]} if m.get("name") else {}),
                        **({"tool_call_id": m["tool_call_id"]} if m.get("tool_call_id") else {})})
        else:
            out.append({k: v for k, v in m.items() if k in ("role", "content")})
    return out


def canonical_name(name: str) -> str:
    name = name.strip().lower()
    return name if ":" in name else f"{name}:latest"
