"""The Ollama backend against the scripted fake server: wire format, units, errors, stalls."""

import time

import pytest

from perfkit.kinds.ollama import OllamaBackend
from perfkit.client.backends import Sampling
from perfkit.kinds.ollama import keep_alive_value
from perfkit.core.errors import PerfkitError
from perfkit.core.store import RunStore


@pytest.mark.parametrize("endpoint", ["chat", "generate"])
def test_stream_is_timed_and_metrics_converted_from_ns(fake_ollama, endpoint):
    b = OllamaBackend(fake_ollama.url, endpoint=endpoint)
    rec = b.generate("slow-load", "hi", Sampling(num_predict=5))
    assert rec.ok, rec.error
    assert rec.text == "t0 t1 t2 t3 t4 "
    assert rec.load_s == pytest.approx(0.2)
    assert rec.prefill_s == pytest.approx(0.012) and rec.prompt_tokens == 12
    # prompt_eval_count includes cached tokens while the duration covers only uncached ones: no exact
    # prefill rate, only an upper bound, labelled as such.
    assert rec.prefill_tokens is None and rec.prefill_tok_s is None
    assert rec.prefill_tok_s_max == pytest.approx(1000)
    assert rec.decode_s == pytest.approx(0.1) and rec.output_tokens == 5
    assert rec.decode_tok_s == pytest.approx(50)
    assert rec.output_tokens_source == "server"
    assert rec.done_reason == "stop"
    # The fake waits 200 ms before the first byte, then 20 ms between tokens.
    assert rec.ttft_s >= 0.2 and rec.ttfb_s >= 0.2
    assert len(rec.itl_s) == 4 and all(g >= 0.015 for g in rec.itl_s)
    assert rec.e2e_s >= rec.ttft_s + 4 * 0.015
    assert rec.tpot_s == pytest.approx((rec.e2e_s - rec.ttft_s) / 4)
    assert rec.overhead_s == pytest.approx(rec.e2e_s - (0.2 + 0.012 + 0.1))
    sent = fake_ollama.requests[-1]
    assert sent["options"] == {"num_predict": 5} and sent["stream"] is True


def test_omitted_zero_metrics_are_not_errors(fake_ollama):
    rec = OllamaBackend(fake_ollama.url).generate("omitted", "hi")
    assert rec.ok and rec.load_s == 0 and rec.prefill_s == 0 and rec.prompt_tokens == 0


def test_logprobs_collected(fake_ollama):
    rec = OllamaBackend(fake_ollama.url).generate("good", "hi", Sampling.greedy(5), logprobs=True)
    assert rec.tokens == ["t0", "t1", "t2", "t3", "t4"]
    assert rec.logprobs[1] == pytest.approx(-0.1)
    assert fake_ollama.requests[-1]["options"] == {"num_predict": 5, "temperature": 0.0, "top_k": 1, "seed": 0}


@pytest.mark.parametrize("model,reason", [
    ("http500", "HTTP 500: "), ("malformed", "malformed line"), ("stream-error", "server error: an error was"),
    ("no-done", "stream ended before the final message"),
])
def test_failures_become_failed_records(fake_ollama, model, reason):
    rec = OllamaBackend(fake_ollama.url).generate(model, "hi")
    assert not rec.ok and reason in rec.error
    assert rec.e2e_s is not None


def test_stall_is_cut_at_the_stall_timeout_not_hung(fake_ollama):
    t0 = time.monotonic()
    rec = OllamaBackend(fake_ollama.url).generate("stall", "hi", stall_timeout_s=0.5)
    took = time.monotonic() - t0
    assert not rec.ok and rec.error.startswith("timeout (stall)")
    assert len(rec.token_times_ns) == 2  # what arrived before the stall is kept
    assert took < 2.5


def test_server_down_is_a_failed_record():
    rec = OllamaBackend("http://127.0.0.1:9").generate("good", "hi", timeout_s=2)
    assert not rec.ok and ("Connect" in rec.error or "timeout" in rec.error)


def test_preload_unload_and_residency(fake_ollama):
    b = OllamaBackend(fake_ollama.url)
    assert not b.is_loaded("good")
    load_s = b.load("good")  # load-only reply carries no metrics: the wall time is used
    assert load_s >= 0 and b.is_loaded("good") and b.is_loaded("good:latest")
    assert fake_ollama.requests[-1] == {"model": "good", "stream": False}
    b.unload("good")
    assert not b.is_loaded("good")
    assert fake_ollama.requests[-1]["keep_alive"] == 0


def test_model_facts_from_show(fake_ollama):
    f = OllamaBackend(fake_ollama.url).model_facts("good")
    assert f.quantization == "Q4_K_M" and f.parameter_count == 72_700_000_000 and f.size_bytes == 123456
    with pytest.raises(PerfkitError, match="no model 'nope'"):
        OllamaBackend(fake_ollama.url).model_facts("nope")


def test_keep_alive_forms():
    assert keep_alive_value(-1) == -1 and keep_alive_value("-1") == -1
    assert keep_alive_value("10m") == "10m" and keep_alive_value(300) == 300
    with pytest.raises(ValueError):
        keep_alive_value("ten minutes")


def test_auth_header_sent_but_never_stored(fake_ollama, tmp_path):
    b = OllamaBackend(fake_ollama.url, headers={"Authorization": "Bearer s3cret"})
    rec = b.generate("good", "hi")
    assert fake_ollama.headers_seen[-1]["Authorization"] == "Bearer s3cret"
    store = RunStore(tmp_path)
    store.append_trial({"trial_id": "x", **rec.as_dict()})
    store.write_manifest(backend=b.describe(), params={"backend": {"headers": {"Authorization": "Bearer s3cret"},
                                                                   "api_key": "k"}})
    for f in tmp_path.iterdir():
        assert "s3cret" not in f.read_text()


def test_resident_memory_from_ps(fake_ollama):
    b = OllamaBackend(fake_ollama.url)
    assert b.resident_memory("good") == {}
    b.load("good")
    assert b.resident_memory("good") == {"model_memory_bytes": 1000, "model_vram_bytes": 1000}


def test_a_server_restarting_for_a_few_seconds_is_waited_for_and_html_is_a_clear_error(tmp_path):
    """A control call that finds the server gone retries (a 1 s restart is not a failed study); an API that
    answers a web page is a PerfkitError naming the URL, never a JSON traceback."""
    import socket
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from perfkit.kinds.ollama import OllamaBackend
    from perfkit.core.errors import PerfkitError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            body = b"<!doctype html><html>sign in</html>" if self.path == "/api/ps" else b'{"models": []}'
            self.send_response(200)
            self.send_header("Content-Type", "text/html" if self.path == "/api/ps" else "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def later():
        time.sleep(1.0)
        srv = ThreadingHTTPServer(("127.0.0.1", port), H)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        started.append(srv)

    started: list = []
    threading.Thread(target=later, daemon=True).start()
    from perfkit.servers.control import RemoteControl

    url = f"http://127.0.0.1:{port}"
    b = OllamaBackend(url, control=RemoteControl(url))
    try:
        t0 = time.monotonic()
        assert b.models() == [] and time.monotonic() - t0 >= 0.9  # waited for the server to come back
        with pytest.raises(PerfkitError, match=r"/api/ps answered an HTML page"):
            b.ps()
    finally:
        for srv in started:
            srv.shutdown()
