"""llama.cpp's ``llama-server`` in router mode: ``/models`` load/unload/status and streamed
``/v1/chat/completions`` (SSE) whose final chunk carries ``timings`` in milliseconds.

Load time is measured, since the server reports none: from the load request (or from the send
of a request that autoloads the model) to the first ``/models`` poll that says ``loaded``.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from perfkit.core.errors import EngineError, PerfkitError
from perfkit.core.clock import now_ns
from perfkit.core.records import RequestRecord
from perfkit.client.loadgen import HttpTarget
from perfkit.client.stream import StreamCall
from perfkit.client.toolcalls import v1_fields, v1_messages
from perfkit.core.tools import Tools
from perfkit.client.compatible import sse_parser, think_fields
from perfkit.client.backends.base import (DEFAULT_TIMEOUT_S, Backend, Capabilities, ModelFacts, Prompt, Sampling,
                                          as_messages)

_MS = 1e-3
_POLL_S = 0.01


class LlamaServerBackend(Backend):
    """Args:
        url: the router, e.g. ``engine.base_url``.
        models_dir: the directory the router serves (enables file facts and cold_disk).
    """

    name = "llama-server"
    capabilities = Capabilities(residency=True, load_seen_per_request=True, cached_tokens=True)

    def __init__(self, url: str, models_dir: str | Path | None = None, *, control_timeout_s: float = 30.0,
                 server_pid: int | None = None):
        self.url = url.rstrip("/")
        self.models_dir = Path(models_dir) if models_dir else None
        self.server_pid = server_pid  # the local router, when perfkit started it
        self._prefix: dict[str, int | None] = {}
        self._client = httpx.Client(base_url=self.url, timeout=control_timeout_s,
                                    limits=httpx.Limits(max_connections=256))
        self.target = HttpTarget(self.url)

    @classmethod
    def from_engine(cls, engine) -> "LlamaServerBackend":
        from perfkit.kinds.llamacpp.control import EngineControl

        b = cls(engine.base_url, engine.models_dir, server_pid=engine.proc.pid if engine.proc else None)
        b.control = EngineControl(engine, b)
        return b

    def metrics_urls(self, models: list[str]) -> list[str]:
        """Per model in router mode (a model not loaded is skipped, never loaded by the read); only the engine
        perfkit started is known to run with --metrics."""
        from urllib.parse import quote

        if self.server_pid is None:
            return []
        return [f"{self.url}/metrics?model={quote(m)}&autoload=false" for m in models]

    # ---- control -------------------------------------------------------------------------------
    def status(self) -> dict[str, dict]:
        """model id → its ``status`` object (``value`` ∈ unloaded | loading | loaded | sleeping)."""
        return {m["id"]: (m.get("status") or {}) for m in self.control_get("/models").get("data", [])}

    def state(self, model: str) -> str:
        st = self.status()
        if model not in st:
            raise PerfkitError(f"llama-server has no model {model!r}; available: {', '.join(sorted(st))}")
        return st[model].get("value", "unknown")

    def props(self, model: str) -> dict[str, Any]:
        """The model process's ``/props`` (slots, context per slot, generation defaults)."""
        return self.control_get("/props", params={"model": model})

    def version(self) -> str:
        try:
            from perfkit.kinds.llamacpp.engine import engine_version

            return engine_version()
        except Exception:  # a remote llama-server: ask it
            props = self._client.get("/props").json()
            return str(props.get("build_info") or "unknown")

    def models(self) -> list[str]:
        return sorted(self.status())

    def loaded(self) -> list[str]:
        return [m for m, s in self.status().items() if s.get("value") == "loaded"]

    def model_facts(self, model: str) -> ModelFacts:
        self.state(model)  # raises a clear error for an unknown model
        path = self.model_path(model)
        if path is None:
            return ModelFacts(name=model)
        from perfkit.kinds.llamacpp.models import VARIANT_SOURCE, VARIANTS, read_gguf

        info = read_gguf(path)
        derived = {"requantized_from": VARIANT_SOURCE} if model in VARIANTS else {}
        return ModelFacts(name=model, size_bytes=info.size_bytes, parameter_count=info.parameter_count,
                          quantization=info.quantization, family=info.architecture, digest=info.sha256,
                          path=str(path), extra={"context_length": info.context_length,
                                                 "block_count": info.block_count,
                                                 "embedding_length": info.embedding_length, **derived})

    def model_path(self, model: str) -> Path | None:
        if self.models_dir is None:
            return None
        p = self.models_dir / f"{model}.gguf"
        return p if p.exists() else None

    def _wait_state(self, model: str, want: set[str], timeout_s: float) -> tuple[str, int]:
        deadline = time.monotonic() + timeout_s
        while True:
            st = self.status().get(model, {})
            value = st.get("value", "unknown")
            if value in want:
                return value, now_ns()
            if value == "unloaded" and st.get("failed"):
                raise EngineError(f"model {model!r} failed to load (exit code {st.get('exit_code')}); "
                                  "see the engine log")
            if time.monotonic() > deadline:
                raise EngineError(f"model {model!r} still {value!r} after {timeout_s:g} s (wanted {sorted(want)})")
            time.sleep(_POLL_S)

    def load(self, model: str, timeout_s: float = DEFAULT_TIMEOUT_S, keep_alive: object = None) -> float:
        # keep_alive is a server setting here (OLLAMA_KEEP_ALIVE → --sleep-idle-seconds), not per request.
        state = self.state(model)
        if state == "loaded":
            return 0.0
        t0 = now_ns()
        if state == "sleeping":
            # A sleeping instance refuses /models/load ("already running"); only a request wakes it.
            rec = self.generate(model, "ok", Sampling(num_predict=1), timeout_s=timeout_s)
            if not rec.ok:
                raise EngineError(f"waking {model!r} failed: {rec.error}")
        else:
            r = self._client.post("/models/load", json={"model": model})
            if r.status_code >= 400 and "already" not in r.text:
                raise EngineError(f"llama-server refused to load {model!r}: HTTP {r.status_code} {r.text[:200]}")
        _, t1 = self._wait_state(model, {"loaded"}, timeout_s)
        return (t1 - t0) * 1e-9

    def unload(self, model: str, timeout_s: float = 120.0) -> None:
        if self.state(model) in ("unloaded",):
            return
        r = self._client.post("/models/unload", json={"model": model})
        if r.status_code >= 400 and self.state(model) != "unloaded":
            raise EngineError(f"llama-server refused to unload {model!r}: HTTP {r.status_code} {r.text[:200]}")
        self._wait_state(model, {"unloaded"}, timeout_s)

    def resident_memory(self, model: str) -> dict[str, int]:
        """RSS of the model's own process (the router runs one per model), local engine only."""
        if self.server_pid is None:
            return {}
        import psutil

        try:
            for child in psutil.Process(self.server_pid).children(recursive=True):
                cmd = child.cmdline()
                if "--alias" in cmd and cmd[cmd.index("--alias") + 1:cmd.index("--alias") + 2] == [model]:
                    return {"model_memory_bytes": child.memory_info().rss}
        except psutil.Error:
            pass
        return {}

    def shared_prefix_tokens(self, model: str) -> int | None:
        """The chat template's head shared by every prompt: the common token prefix of two different
        one-message chats, as the server itself renders (/apply-template) and tokenizes (/tokenize) them."""
        if model in self._prefix:
            return self._prefix[model]
        try:
            seqs = []
            for text in ("[a] x", "[b] y"):
                r = self._client.post("/apply-template", json={"model": model, "messages": [
                    {"role": "user", "content": text}]})
                r.raise_for_status()
                t = self._client.post("/tokenize", json={"model": model, "content": r.json()["prompt"]})
                t.raise_for_status()
                seqs.append(t.json()["tokens"])
            n = 0
            for a, b in zip(*seqs):
                if a != b:
                    break
                n += 1
        except (httpx.HTTPError, KeyError, ValueError):
            n = None
        self._prefix[model] = n
        return n

    # ---- measured request ----------------------------------------------------------------------
    def stream_call(self, model: str, prompt: Prompt, sampling: Sampling | None = None, *,
                    logprobs: bool = False, keep_alive: object = None, tools: Tools | None = None) -> StreamCall:
        """A streamed chat completion; ``load_s`` is 0 (a series runs on a resident model; ``generate``
        times an autoload instead). keep_alive is a server setting here, not per request."""
        sampling = sampling or Sampling()
        body: dict[str, Any] = {"model": model, "stream": True, "max_tokens": sampling.num_predict,
                                "messages": v1_messages(as_messages(prompt)),
                                "stream_options": {"include_usage": True}, **v1_fields(tools)}
        for ours, theirs in (("temperature", "temperature"), ("top_k", "top_k"), ("top_p", "top_p"),
                             ("seed", "seed")):
            v = getattr(sampling, ours)
            if v is not None:
                body[theirs] = v
        if sampling.think is not None:
            body.update(think_fields(sampling.think))
        if logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = 1
        rec = RequestRecord(backend=self.name, model=model, tokens=[] if logprobs else None,
                            logprobs=[] if logprobs else None, think_requested=sampling.think_requested())
        parts: list[str] = []

        def timings(obj: dict) -> None:
            if "timings" in obj:
                _timings(rec, obj["timings"])

        on_line = sse_parser(rec, parts, on_obj=timings)

        def after(r: RequestRecord) -> None:
            r.text = "".join(parts)
            if r.load_s is None:
                r.load_s = 0.0
                r.finalize()

        return StreamCall.json("/v1/chat/completions", body, rec, on_line, after)

    def generate(self, model: str, prompt: Prompt, sampling: Sampling | None = None, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S, stall_timeout_s: float | None = None,
                 logprobs: bool = False, keep_alive: object = None, tools: Tools | None = None) -> RequestRecord:
        call = self.stream_call(model, prompt, sampling, logprobs=logprobs, tools=tools)
        watcher = _LoadWatcher(self, model)
        try:
            watcher.start_if_needed()
        except httpx.HTTPError as e:
            return call.rec.fail(f"{type(e).__name__}: {e}")
        if watcher.needed:
            call.rec.load_s = math.nan  # set below from the watcher; nan keeps after() from zeroing it
        rec = self.target.fetch(call, timeout_s=timeout_s, stall_timeout_s=stall_timeout_s)
        watcher.stop()
        if watcher.needed:
            rec.load_s = None
            rec.t_loaded_ns = watcher.t_loaded_ns
            if rec.t_loaded_ns is not None:
                rec.load_s = max(0.0, (rec.t_loaded_ns - rec.t_send_ns) * 1e-9)
                rec.load_resolution_s = watcher.resolution_s
        return rec.finalize()

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"backend": self.name, "url": self.url}
        try:
            d["version"] = self.version()
        except Exception as e:  # noqa: BLE001 - the manifest records what it can
            d["version"] = f"unknown ({type(e).__name__})"
        return d

    def close(self) -> None:
        self._client.close()
        self.target.close()


def _timings(rec: RequestRecord, t: dict) -> None:
    rec.cached_tokens = t.get("cache_n")
    rec.prefill_tokens = t.get("prompt_n")
    if rec.prefill_tokens is not None:
        rec.prompt_tokens = rec.prefill_tokens + (rec.cached_tokens or 0)
    rec.prefill_s = t["prompt_ms"] * _MS if "prompt_ms" in t else None
    rec.decode_s = t["predicted_ms"] * _MS if "predicted_ms" in t else None
    if "predicted_n" in t:
        rec.output_tokens, rec.output_tokens_source = t["predicted_n"], "server"
    if t.get("draft_n"):  # present only where a draft model ran for this request
        rec.draft_tokens, rec.draft_accepted_tokens = t["draft_n"], t.get("draft_n_accepted")


class _LoadWatcher:
    """Polls ``/models`` while a request autoloads its model, to time the load the server doesn't report."""

    def __init__(self, backend: LlamaServerBackend, model: str):
        self.backend, self.model = backend, model
        self.needed = False
        self.t_loaded_ns: int | None = None
        self.resolution_s: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start_if_needed(self) -> None:
        if self.backend.state(self.model) == "loaded":
            return
        self.needed = True
        # A separate client: the request's own connection must not queue behind the polls.
        self._thread = threading.Thread(target=self._run, name="perfkit-load-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # The load ended after the last poll that said "not loaded" was sent and before the first that
        # said "loaded" came back: the midpoint is the estimate, half the span its resolution. Taking the
        # later end instead overstated every load by half a poll and made overheads negative.
        t_prev = now_ns()
        with httpx.Client(base_url=self.backend.url, timeout=10.0) as c:
            while not self._stop.is_set():
                t_sent = now_ns()
                try:
                    st = {m["id"]: m.get("status", {}) for m in c.get("/models").json().get("data", [])}
                    if st.get(self.model, {}).get("value") == "loaded":
                        t_recv = now_ns()
                        self.t_loaded_ns = (t_prev + t_recv) // 2
                        self.resolution_s = (t_recv - t_prev) * 0.5e-9
                        return
                    t_prev = t_sent
                except (httpx.HTTPError, ValueError):
                    pass
                self._stop.wait(_POLL_S)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
