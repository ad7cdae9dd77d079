"""Benchmark: perfkit's client overhead per streamed token and its timing error.

A local streaming server (a separate process, Ollama's NDJSON wire format) sends tokens with
known injected delays and stamps each line with its own CLOCK_MONOTONIC time just before
writing it. perfkit's Ollama backend times the stream as usual; since perf_counter_ns is
CLOCK_MONOTONIC in both processes, receive − send stamp is the client's timing error (loopback
transit + read + parse). Client CPU per token is the client process's CPU time / tokens.

    .venv/bin/python bench/client_overhead.py [--tokens 200] [--gap-ms 5] [--concurrency 1 64]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def serve(port_q: mp.Queue, tokens: int, gap_s: float, first_s: float) -> None:
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            next_t = time.perf_counter() + first_s
            for i in range(tokens + 1):
                # Plain sleep: its overshoot does not matter, errors are taken against the send stamp.
                time.sleep(max(0.0, next_t - time.perf_counter()))
                done = i == tokens
                obj = {"done": done, "message": {"role": "assistant", "content": "" if done else f"{time.perf_counter_ns()} "}}
                if done:
                    obj.update(eval_count=tokens, eval_duration=int(tokens * gap_s * 1e9), done_reason="stop")
                data = (json.dumps(obj) + "\n").encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
                next_t += gap_s
            self.wfile.write(b"0\r\n\r\n")

    class Server(ThreadingHTTPServer):
        request_queue_size = 256  # 64 clients connect at once; the default backlog of 5 resets them
        daemon_threads = True

        def handle_error(self, request, client_address):
            pass  # a client closing after the final line is not news

    srv = Server(("127.0.0.1", 0), H)
    port_q.put(srv.server_address[1])
    srv.serve_forever()


def run(concurrency: int, tokens: int, gap_ms: float, first_ms: float, requests_per_stream: int) -> dict:
    from perfkit.backends import OllamaBackend

    q: mp.Queue = mp.Queue()
    p = mp.Process(target=serve, args=(q, tokens, gap_ms / 1e3, first_ms / 1e3), daemon=True)
    p.start()
    url = f"http://127.0.0.1:{q.get(timeout=30)}"
    b = OllamaBackend(url)
    b.generate("warmup", "x")  # connection set-up and imports out of the measurement

    def stream(_):
        return [b.generate("bench", "x", timeout_s=120) for _ in range(requests_per_stream)]

    cpu0, wall0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        recs = [r for rs in pool.map(stream, range(concurrency)) for r in rs]
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    p.terminate()
    assert all(r.ok for r in recs), [r.error for r in recs if not r.ok][:3]
    errors_us, itl_err_us = [], []
    for r in recs:
        sent = [int(x) for x in r.text.split()]
        errors_us += [(got - s) / 1e3 for got, s in zip(r.token_times_ns, sent)]
        itl_err_us += [((g - s) / 1e3) for g, s in zip([b - a for a, b in zip(r.token_times_ns, r.token_times_ns[1:])],
                                                        [b - a for a, b in zip(sent, sent[1:])])]
    n_tok = sum(len(r.token_times_ns) for r in recs)
    errors_us.sort()
    return {"concurrency": concurrency, "requests": len(recs), "tokens": n_tok,
            "client_cpu_us_per_token": 1e6 * cpu / n_tok, "wall_s": wall,
            "timing_error_us_p50": statistics.median(errors_us),
            "timing_error_us_p99": errors_us[int(0.99 * (len(errors_us) - 1))],
            "timing_error_us_max": errors_us[-1],
            "itl_error_us_median_abs": statistics.median(abs(x) for x in itl_err_us),
            "itl_measured_ms_median": statistics.median(x for r in recs for x in r.itl_s) * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--gap-ms", type=float, default=5.0, help="injected inter-token delay")
    ap.add_argument("--first-ms", type=float, default=50.0, help="injected delay before the first token")
    ap.add_argument("--requests-per-stream", type=int, default=5)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    a = ap.parse_args()
    print(f"offered load at the largest concurrency: {max(a.concurrency) * 1e3 / a.gap_ms:.0f} tokens/s; "
          f"injected: first token after {a.first_ms} ms, then one every {a.gap_ms} ms, {a.tokens} tokens/request; "
          f"{os.cpu_count()} CPUs")
    for c in a.concurrency:
        r = run(c, a.tokens, a.gap_ms, a.first_ms, a.requests_per_stream)
        print(f"concurrency {c:>3}: {r['requests']} requests, {r['tokens']} tokens in {r['wall_s']:.1f} s | "
              f"client CPU {r['client_cpu_us_per_token']:.0f} µs/token | timing error (receive − server send stamp) "
              f"p50 {r['timing_error_us_p50']:.0f} µs, p99 {r['timing_error_us_p99']:.0f} µs, max {r['timing_error_us_max']:.0f} µs | "
              f"ITL error median |{r['itl_error_us_median_abs']:.0f}| µs (ITL median {r['itl_measured_ms_median']:.2f} ms "
              f"with {a.gap_ms} ms injected)")


if __name__ == "__main__":
    main()
