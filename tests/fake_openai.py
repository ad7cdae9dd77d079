"""A scripted OpenAI-compatible server (SSE chat/completions with usage, as vLLM and SGLang send it),
for what a real one can't give us on demand: errors, stalls, fixed latencies, connection counts.
Behaviour is chosen per model name.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAI:
    """Models: 'good' (``tokens`` tokens, ``token_gap_s`` apart), 'fixed' (one token after
    ``fixed_latency_s``, then done), 'http500', 'stall' (2 tokens then silence), 'no-done' (ends
    without ``[DONE]``), 'cached' (reports 8 cached prompt tokens), 'drop-idle' (like 'good', but a second
    request on the same connection finds it closed, as when a server's idle timeout races the send),
    'die-later' (like 'good', but a second request on the same connection is read and then, 150 ms later,
    dropped unanswered: a server dying during a load or prefill), 'packed' (like 'good' at the same token
    rate, but ``pack`` tokens per streamed event, as vLLM sends when its API server falls behind),
    'thinker' (first a bookkeeping chunk, role and ``content: ""``, as vLLM sends; then ``thinking_tokens``
    chunks of ``delta.reasoning_content``, as llama-server sends, then ``tokens`` answer chunks, ``token_gap_s``
    apart; ``chat_template_kwargs: {"enable_thinking": false}`` skips the thinking; usage counts both),
    'thinker-reasoning' (the same in ``delta.reasoning``, as current vLLM sends), 'ignores-think' (never thinks),
    'tool-caller' (offered tools and not answering a tool result: a call of the first tool in three fragments,
    ``token_gap_s`` apart, as llama-server streams one: id and name, then two pieces of the arguments, every
    required argument "x"; finish_reason "tool_calls"; answering a tool result: ``tokens`` answer chunks),
    'tool-caller-bad' (the same, but the arguments are not JSON), 'tool-text' (the call written as answer text),
    'tool-parse-500' (offered tools: HTTP 500 "Failed to parse tool call arguments as JSON", as llama-server
    fails a request whose call it cannot parse).

    ``sent``: per streamed request, each chunk's phase ("thinking", "answer") with ``perf_counter_ns`` just
    before its write and just after its flush, for tests to hold perfkit's stamps against."""

    def __init__(self, token_gap_s: float = 0.01, tokens: int = 5, fixed_latency_s: float = 0.1, pack: int = 4,
                 thinking_tokens: int = 3):
        self.token_gap_s, self.tokens, self.fixed_latency_s, self.pack = token_gap_s, tokens, fixed_latency_s, pack
        self.thinking_tokens = thinking_tokens
        self.requests: list[dict] = []
        self.sent: list[list[dict]] = []
        self.connections = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.arrivals: list[float] = []  # perf_counter() when each request arrived
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def setup(self):
                with owner._lock:
                    owner.connections += 1
                super().setup()

            def _json(self, code: int, obj) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/v1/models":
                    return self._json(200, {"object": "list", "data": [
                        {"id": m, "object": "model", "owned_by": "fake", "max_model_len": 4096}
                        for m in ("good", "fixed", "http500", "stall", "no-done", "cached", "thinker",
                                  "thinker-reasoning", "ignores-think", "tool-caller", "tool-caller-bad",
                                  "tool-text", "tool-parse-500")]})
                if self.path == "/version":
                    return self._json(200, {"version": "0.0-fake"})
                self._json(404, {"error": "not found"})

            def _chunk(self, obj, phase: str | None = None) -> None:
                data = (obj if isinstance(obj, bytes) else f"data: {json.dumps(obj)}\n\n".encode())
                t_write_ns = time.perf_counter_ns()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
                if phase is not None:
                    self._sent.append({"phase": phase, "t_write_ns": t_write_ns, "t_sent_ns": time.perf_counter_ns()})

            def _call(self, model, req):
                fn = req["tools"][0]["function"]
                args = json.dumps({k: "x" for k in fn.get("parameters", {}).get("required", [])})
                if model == "tool-caller-bad":
                    args = args[:-1]  # cut short: not JSON
                self._chunk({"id": "x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]})
                if model == "tool-text":
                    time.sleep(owner.token_gap_s)
                    self._chunk({"id": "x", "choices": [{"index": 0, "delta": {"content": json.dumps(
                        {"name": fn["name"], "arguments": json.loads(args)})}}]}, "answer")
                    finish = "stop"
                else:
                    half = len(args) // 2
                    for k, frag in enumerate(({"index": 0, "id": "call_9", "type": "function",
                                               "function": {"name": fn["name"], "arguments": ""}},
                                              {"index": 0, "function": {"arguments": args[:half]}},
                                              {"index": 0, "function": {"arguments": args[half:]}})):
                        time.sleep(owner.token_gap_s)
                        self._chunk({"id": "x", "choices": [{"index": 0, "delta": {"tool_calls": [frag]}}]}, "call")
                    finish = "tool_calls"
                self._chunk({"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
                self._chunk({"id": "x", "choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 9,
                                                                 "total_tokens": 39}})
                self._chunk(b"data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                req = json.loads(self.rfile.read(n) or b"{}")
                if req.get("model") == "drop-idle" and getattr(self, "_served", False):
                    self.close_connection = True  # closed, unanswered: the request is never processed
                    return
                if req.get("model") == "die-later" and getattr(self, "_served", False):
                    with owner._lock:
                        owner.requests.append(req)
                    time.sleep(0.15)  # the server had the request, then died
                    self.close_connection = True
                    return
                self._served = True
                with owner._lock:
                    owner.requests.append(req)
                    owner.arrivals.append(time.perf_counter())
                    owner.in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
                try:
                    self._serve(req)
                finally:
                    with owner._lock:
                        owner.in_flight -= 1

            def _serve(self, req):
                model = req.get("model", "")
                chat = self.path == "/v1/chat/completions"
                if model == "http500":
                    return self._json(500, {"error": {"message": "boom", "type": "server_error"}})
                if model == "tool-parse-500" and req.get("tools"):  # as llama-server fails a call it can't parse
                    return self._json(500, {"error": {"code": 500, "message": "Failed to parse tool call arguments "
                                                      "as JSON: [json.exception.parse_error.101] parse error",
                                                      "type": "server_error"}})
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self._sent: list[dict] = []  # this request's own: concurrent requests never mix
                with owner._lock:
                    owner.sent.append(self._sent)
                msgs = req.get("messages") or []
                if model.startswith("tool") and req.get("tools") and not (msgs and msgs[-1].get("role") == "tool"):
                    return self._call(model, req)
                count = 1 if model == "fixed" else owner.tokens
                thinking = 0
                if chat and model in ("thinker", "thinker-reasoning", "ignores-think"):
                    self._chunk({"id": "x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
                    enabled = (req.get("chat_template_kwargs") or {}).get("enable_thinking", True)
                    thinking = owner.thinking_tokens if model != "ignores-think" and enabled is not False else 0
                    field = "reasoning" if model == "thinker-reasoning" else "reasoning_content"
                    for i in range(thinking):
                        time.sleep(owner.token_gap_s)
                        self._chunk({"id": "x", "object": "chat.completion.chunk",
                                     "choices": [{"index": 0, "delta": {field: f"h{i} "}}]}, "thinking")
                if model == "fixed":
                    time.sleep(owner.fixed_latency_s)
                if model == "packed":
                    for i in range(0, count, owner.pack):
                        k = min(owner.pack, count - i)
                        time.sleep(owner.token_gap_s * k)
                        piece = "".join(f"t{j} " for j in range(i, i + k))
                        choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
                        self._chunk({"id": "x", "object": "chat.completion.chunk", "choices": [choice]})
                    count_sent = count
                    last = {"index": 0, "delta": {}, "finish_reason": "length"} if chat else \
                        {"index": 0, "text": "", "finish_reason": "length"}
                    self._chunk({"id": "x", "choices": [last]})
                    self._chunk({"id": "x", "choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": count_sent,
                                                                     "total_tokens": 20 + count_sent}})
                    self._chunk(b"data: [DONE]\n\n")
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                    return
                for i in range(count):
                    if model == "stall" and i == 2:
                        time.sleep(30)
                        return
                    if model != "fixed":
                        time.sleep(owner.token_gap_s)
                    piece = f"t{i} "
                    choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
                    self._chunk({"id": "x", "object": "chat.completion.chunk", "choices": [choice]}, "answer")
                last = {"index": 0, "delta": {}, "finish_reason": "length"} if chat else \
                    {"index": 0, "text": "", "finish_reason": "length"}
                self._chunk({"id": "x", "choices": [last]})
                usage = {"prompt_tokens": 20, "completion_tokens": thinking + count,
                         "total_tokens": 20 + thinking + count}
                if model == "cached":
                    usage["prompt_tokens_details"] = {"cached_tokens": 8}
                self._chunk({"id": "x", "choices": [], "usage": usage})
                if model != "no-done":
                    self._chunk(b"data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 512

            def handle_error(self, request, client_address):
                pass

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeOpenAI":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
