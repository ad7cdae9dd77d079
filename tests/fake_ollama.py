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
    'omitted' (final object without the zero metrics)."""

    def __init__(self, token_gap_s: float = 0.02, tokens: int = 5):
        self.token_gap_s, self.tokens = token_gap_s, tokens
        self.loaded: set[str] = set()
        self.requests: list[dict] = []
        self.headers_seen: list[dict] = []
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
                    return self._json(200, {"models": [{"name": "good:latest", "size": 123456, "digest": "sha256:abc"}]})
                self._json(404, {"error": "not found"})

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                req = json.loads(self.rfile.read(n) or b"{}")
                owner.requests.append(req)
                owner.headers_seen.append(dict(self.headers))
                if self.path == "/api/show":
                    if not req.get("model", "").startswith("good"):
                        return self._json(404, {"error": f"model '{req.get('model')}' not found"})
                    return self._json(200, {"details": {"family": "qwen2", "parameter_size": "72.7B",
                                                        "quantization_level": "Q4_K_M"},
                                            "model_info": {"general.parameter_count": 72_700_000_000,
                                                           "qwen2.context_length": 32768}})
                if self.path in ("/api/generate", "/api/chat"):
                    return self._generate(req)
                self._json(404, {"error": "not found"})

            def _line(self, obj) -> None:
                data = (obj if isinstance(obj, str) else json.dumps(obj)) + "\n"
                self.wfile.write(f"{len(data.encode()):x}\r\n".encode() + data.encode() + b"\r\n")
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
                    piece = {"content": f"t{i} "} if chat else None
                    obj = {"model": model, "done": False, **({"message": {"role": "assistant", **piece}} if chat
                                                            else {"response": f"t{i} "})}
                    if req.get("logprobs"):
                        obj["logprobs"] = [{"token": f"t{i}", "logprob": -0.1 * i}]
                    self._line(obj)
                    time.sleep(owner.token_gap_s)
                if model != "no-done":
                    final = {"model": model, "done": True, "done_reason": "stop",
                             "total_duration": int(0.5 * NS), "load_duration": int(0.2 * NS) if model == "slow-load" else 0,
                             "prompt_eval_count": 12, "prompt_eval_duration": int(0.012 * NS),
                             "eval_count": owner.tokens, "eval_duration": int(0.1 * NS)}
                    if model == "omitted":
                        final = {k: v for k, v in final.items() if k not in ("load_duration", "prompt_eval_count",
                                                                           "prompt_eval_duration")}
                    final.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
                    self._line(final)
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
