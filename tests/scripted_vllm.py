"""A scripted vLLM (``vllm serve``'s HTTP face) for what a real one can't give us here: its ``/v1`` API streamed
as SSE with usage, ``/version``, ``/v1/models`` with ``max_model_len`` and ``root``, ``POST
/reset_prefix_cache``, and ``/metrics`` in vLLM's names, with a scheduler of known capacity: at most
``max_num_seqs`` requests decode at once (the rest wait in its queue), each token takes ``token_gap_s``, a
prompt whose first message was seen before is a prefix-cache hit, and a draft model proposes ``draft_k`` tokens
per step of which ``accept_k`` are accepted."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROMPT_TOKENS = 20


class ScriptedVllm:
    def __init__(self, model: str = "qwen2.5-0.5b", *, max_num_seqs: int = 2, token_gap_s: float = 0.01,
                 tokens: int = 6, draft_k: int = 4, accept_k: int = 3, version: str = "0.9.2"):
        self.model, self.max_num_seqs, self.token_gap_s, self.tokens = model, max_num_seqs, token_gap_s, tokens
        self.draft_k, self.accept_k, self.version = draft_k, accept_k, version
        self.running = self.waiting = 0
        self.counters = {"prompt": 0, "generation": 0, "prefix_hits": 0, "prefix_queries": 0, "draft": 0,
                         "accepted": 0}
        self.seen_prefixes: set[str] = set()
        self.resets = 0
        self.max_running = 0
        self.metrics_reads = 0
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(max_num_seqs)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/v1/models":
                    return self._send(200, json.dumps({"object": "list", "data": [
                        {"id": owner.model, "object": "model", "owned_by": "vllm", "max_model_len": 4096,
                         "root": f"/models/{owner.model}"}]}).encode(), "application/json")
                if self.path == "/version":
                    return self._send(200, json.dumps({"version": owner.version}).encode(), "application/json")
                if self.path == "/health":
                    return self._send(200, b"", "text/plain")
                if self.path == "/metrics":
                    with owner._lock:
                        owner.metrics_reads += 1
                    return self._send(200, owner.metrics_text().encode(), "text/plain; version=0.0.4")
                self._send(404, b'{"detail":"Not Found"}', "application/json")

            def _chunk(self, obj) -> None:
                data = obj if isinstance(obj, bytes) else f"data: {json.dumps(obj)}\n\n".encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                req = json.loads(self.rfile.read(n) or b"{}")
                if self.path == "/reset_prefix_cache":
                    with owner._lock:
                        owner.seen_prefixes.clear()
                        owner.resets += 1
                    return self._send(200, b"", "text/plain")
                if req.get("model") != owner.model:
                    return self._send(404, json.dumps({"object": "error", "message": f"The model `{req.get('model')}` "
                                                       "does not exist.", "type": "NotFoundError", "code": 404}).encode(),
                                      "application/json")
                self._serve(req)

            def _serve(self, req):
                chat = self.path == "/v1/chat/completions"
                msgs = req.get("messages") or [{"content": req.get("prompt", "")}]
                prefix = json.dumps(msgs[0], sort_keys=True)
                count = int(req.get("max_tokens") or owner.tokens)
                with owner._lock:
                    owner.waiting += 1
                owner._slots.acquire()
                with owner._lock:
                    owner.waiting -= 1
                    owner.running += 1
                    owner.max_running = max(owner.max_running, owner.running)
                    hit = prefix in owner.seen_prefixes
                    owner.seen_prefixes.add(prefix)
                    owner.counters["prefix_queries"] += PROMPT_TOKENS
                    owner.counters["prefix_hits"] += PROMPT_TOKENS // 2 if hit else 0
                    owner.counters["prompt"] += PROMPT_TOKENS
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(count):
                        time.sleep(owner.token_gap_s)
                        piece = f"t{i} "
                        choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
                        self._chunk({"id": "cmpl-x", "object": "chat.completion.chunk", "choices": [choice]})
                        with owner._lock:
                            owner.counters["generation"] += 1
                            if i % owner.accept_k == 0:  # one verification step per accept_k tokens made
                                owner.counters["draft"] += owner.draft_k
                                owner.counters["accepted"] += owner.accept_k
                    last = {"index": 0, "delta": {}, "finish_reason": "length"} if chat else \
                        {"index": 0, "text": "", "finish_reason": "length"}
                    self._chunk({"id": "cmpl-x", "choices": [last]})
                    usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": count,
                             "total_tokens": PROMPT_TOKENS + count,
                             "prompt_tokens_details": {"cached_tokens": PROMPT_TOKENS // 2 if hit else 0}}
                    self._chunk({"id": "cmpl-x", "choices": [], "usage": usage})
                    self._chunk(b"data: [DONE]\n\n")
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                finally:
                    with owner._lock:
                        owner.running -= 1
                    owner._slots.release()

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

            def handle_error(self, request, client_address):
                pass

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def metrics_text(self) -> str:
        with self._lock:
            c, running, waiting = dict(self.counters), self.running, self.waiting
        lab = f'{{model_name="{self.model}"}}'
        lines = []
        for name, kind, value in [
            ("vllm:num_requests_running", "gauge", running), ("vllm:num_requests_waiting", "gauge", waiting),
            ("vllm:kv_cache_usage_perc", "gauge", running / self.max_num_seqs),
            ("vllm:prompt_tokens_total", "counter", c["prompt"]),
            ("vllm:generation_tokens_total", "counter", c["generation"]),
            ("vllm:prefix_cache_queries_total", "counter", c["prefix_queries"]),
            ("vllm:prefix_cache_hits_total", "counter", c["prefix_hits"]),
            ("vllm:spec_decode_num_draft_tokens_total", "counter", c["draft"]),
            ("vllm:spec_decode_num_accepted_tokens_total", "counter", c["accepted"]),
        ]:
            base = name.removesuffix("_total")
            lines += [f"# HELP {base} scripted", f"# TYPE {base} {kind}", f"{name}{lab} {float(value)}"]
        return "\n".join(lines) + "\n"

    def __enter__(self) -> "ScriptedVllm":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
