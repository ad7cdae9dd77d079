"""A scripted fake Ollama server, following the documented wire format (NDJSON, ns durations,
metrics only on the final ``done`` object), for what a real Ollama can't give us on demand:
errors, stalls, malformed lines. Behaviour is chosen per model name.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NS = 1_000_000_000


class FakeOllama:
    """Models: 'good' (5 tokens, 20 ms apart), 'slow-load' (200 ms before the first byte, load_duration),
    'http500', 'stall' (2 tokens then silence), 'malformed', 'stream-error', 'no-done' (ends without done),
    'omitted' (final object without the zero metrics), 'thinker' (``thinking_tokens`` thinking chunks, then
    ``tokens`` answer chunks, ``token_gap_s`` apart; ``think: false`` skips the thinking; eval_count counts
    both, as Ollama's does), 'ignores-think' (never thinks, whatever ``think`` says), 'tool-caller' (offered
    tools and not answering a tool result: one chunk calling the first tool, every required argument "x", as
    Ollama sends a call whole; answering a tool result: ``tokens`` answer chunks), 'tool-caller-bad' (the same,
    but the call names a tool no one offered), 'tool-text' (writes the call as answer text: a call the server
    failed to parse).

    ``sent``: per streamed request, each chunk's phase ("thinking", "answer", "final") with ``perf_counter_ns``
    just before its write and just after its flush, for tests to hold perfkit's stamps against."""

    def __init__(self, token_gap_s: float = 0.02, tokens: int = 5, thinking_tokens: int = 3):
        self.token_gap_s, self.tokens, self.thinking_tokens = token_gap_s, tokens, thinking_tokens
        self.loaded: set[str] = set()
        self.requests: list[dict] = []
        self.headers_seen: list[dict] = []
        self.sent: list[list[dict]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _json(self, code: int, obj) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/api/version":
                    return self._json(200, {"version": "0.33.0"})
                if self.path == "/api/ps":
                    return self._json(200, {"models": [{"name": m, "model": m, "size": 1000, "size_vram": 1000,
                                                        "context_length": 4096} for m in sorted(owner.loaded)]})
                if self.path == "/api/tags":
                    return self._json(200, {"models": [{"name": f"{m}:latest", "size": 123456, "digest": "sha256:abc"}
                                                       for m in ("good", "thinker", "ignores-think", "tool-caller",
                                                                 "tool-caller-bad", "tool-text")]})
                self._json(404, {"error": "not found"})

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                req = json.loads(self.rfile.read(n) or b"{}")
                owner.requests.append(req)
                owner.headers_seen.append(dict(self.headers))
                if self.path == "/api/show":
                    caps = {"thinker": ["completion", "thinking"], "tool-caller": ["completion", "tools"],
                            "tool-caller-bad": ["completion", "tools"], "tool-text": ["completion", "tools"]}
                    if req.get("model") in caps:  # what a model can do (Ollama since v0.6.4)
                        return self._json(200, {"details": {"family": "qwen3"}, "model_info": {},
                                                "capabilities": caps[req["model"]]})
                    if not req.get("model", "").startswith("good"):
                        return self._json(404, {"error": f"model '{req.get('model')}' not found"})
                    return self._json(200, {"capabilities": ["completion"],
                                            "details": {"family": "qwen2", "parameter_size": "72.7B",
                                                        "quantization_level": "Q4_K_M"},
                                            "model_info": {"general.parameter_count": 72_700_000_000,
                                                           "qwen2.context_length": 32768}})
                if self.path in ("/api/generate", "/api/chat"):
                    return self._generate(req)
                self._json(404, {"error": "not found"})

            def _line(self, obj, phase: str | None = None) -> None:
                data = (obj if isinstance(obj, str) else json.dumps(obj)) + "\n"
                t_write_ns = time.perf_counter_ns()
                self.wfile.write(f"{len(data.encode()):x}\r\n".encode() + data.encode() + b"\r\n")
                self.wfile.flush()
                if phase is not None:
                    self._sent.append({"phase": phase, "t_write_ns": t_write_ns,
                                           "t_sent_ns": time.perf_counter_ns()})

            def _piece(self, model: str, chat: bool, i: int, thinking: bool) -> dict:
                text = f"{'h' if thinking else 't'}{i} "
                if chat:
                    msg = {"role": "assistant", "content": "", "thinking": text} if thinking else \
                        {"role": "assistant", "content": text}
                    return {"model": model, "done": False, "message": msg}
                return {"model": model, "done": False, **({"thinking": text, "response": ""} if thinking
                                                           else {"response": text})}

            def _call(self, model, req):
                fn = req["tools"][0]["function"]
                args = {k: "x" for k in fn.get("parameters", {}).get("required", [])}
                name = "no_such_tool" if model == "tool-caller-bad" else fn["name"]
                time.sleep(owner.token_gap_s)
                if model == "tool-text":
                    self._line({"model": model, "done": False, "message": {
                        "role": "assistant", "content": json.dumps({"name": name, "arguments": args})}}, "answer")
                else:
                    self._line({"model": model, "done": False, "message": {
                        "role": "assistant", "content": "",
                        "tool_calls": [{"id": "call_1", "function": {"index": 0, "name": name, "arguments": args}}]}},
                        "call")
                self._line({"model": model, "done": True, "done_reason": "stop", "prompt_eval_count": 30,
                            "prompt_eval_duration": 1000000, "eval_count": 9, "eval_duration": 9000000,
                            "message": {"role": "assistant", "content": ""}}, "final")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def _generate(self, req):
                model = req["model"]
                chat = self.path == "/api/chat"
                empty = not req.get("prompt") and not req.get("messages")
                if req.get("keep_alive") == 0:
                    owner.loaded.discard(model)
                    return self._json(200, {"model": model, "done": True, "done_reason": "unload", "response": ""})
                if model == "http500":
                    return self._json(500, {"error": "llama runner process has terminated"})
                if empty:  # load-only: no metrics (ollama#9275)
                    owner.loaded.add(model)
                    return self._json(200, {"model": model, "done": True, "done_reason": "load", "response": ""})
                if model == "slow-load":
                    time.sleep(0.2)
                owner.loaded.add(model)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self._sent: list[dict] = []  # this request's own: concurrent requests never mix
                owner.sent.append(self._sent)
                msgs = req.get("messages") or []
                if model.startswith("tool") and req.get("tools") and not (msgs and msgs[-1].get("role") == "tool"):
                    return self._call(model, req)
                # A thinking model thinks unless told not to (Ollama since v0.12.4).
                thinks = model == "thinker" and req.get("think", True) is not False
                for i in range(owner.thinking_tokens if thinks else 0):
                    self._line(self._piece(model, chat, i, thinking=True), "thinking")
                    time.sleep(owner.token_gap_s)
                for i in range(owner.tokens):
                    if model == "stall" and i == 2:
                        time.sleep(3)
                        return
                    if model == "malformed" and i == 2:
                        self._line("{this is not json")
                        continue
                    if model == "stream-error" and i == 2:
                        self._line({"error": "an error was encountered while running the model"})
                        break
                    obj = self._piece(model, chat, i, thinking=False)
                    if req.get("logprobs"):
                        obj["logprobs"] = [{"token": f"t{i}", "logprob": -0.1 * i}]
                    self._line(obj, "answer")
                    time.sleep(owner.token_gap_s)
                if model != "no-done":
                    final = {"model": model, "done": True, "done_reason": "stop",
                             "total_duration": int(0.5 * NS), "load_duration": int(0.2 * NS) if model == "slow-load" else 0,
                             "prompt_eval_count": 12, "prompt_eval_duration": int(0.012 * NS),
                             "eval_count": owner.tokens + (owner.thinking_tokens if thinks else 0),
                             "eval_duration": int(0.1 * NS)}
                    if model == "omitted":
                        final = {k: v for k, v in final.items() if k not in ("load_duration", "prompt_eval_count",
                                                                           "prompt_eval_duration")}
                    final.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
                    self._line(final, "final")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeOllama":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
