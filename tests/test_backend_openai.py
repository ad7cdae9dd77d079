"""The OpenAI-compatible backend against a scripted server: SSE, usage, errors, what it can't know."""

import pytest

from fake_openai import FakeOpenAI
from perfkit.kinds.openai import OpenAIBackend
from perfkit.client.backends import Sampling
from perfkit.measure.cache_states import ensure_warm, prepare_state
from perfkit.servers.control.base import Unknown
from perfkit.core.errors import PerfkitError


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAI(token_gap_s=0.01) as f:
        yield f


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_stream_usage_and_timing(fake, endpoint):
    b = OpenAIBackend(fake.url + "/v1", endpoint=endpoint)  # a /v1 suffix is accepted
    rec = b.generate("good", "hi", Sampling(num_predict=5, temperature=0.0, top_k=1))
    assert rec.ok, rec.error
    assert rec.text == "t0 t1 t2 t3 t4 " and rec.output_tokens == 5 and rec.output_tokens_source == "server"
    assert rec.prompt_tokens == 20 and rec.done_reason == "length"
    assert rec.ttft_s >= 0.01 and len(rec.itl_s) == 4
    body = fake.requests[-1]
    assert body["stream_options"] == {"include_usage": True} and body["max_tokens"] == 5 and body["top_k"] == 1
    assert ("messages" in body) == (endpoint == "chat")


def test_cached_tokens_from_usage_details(fake):
    rec = OpenAIBackend(fake.url).generate("cached", "hi")
    assert rec.cached_tokens == 8 and rec.prefill_tokens == 12


@pytest.mark.parametrize("model,reason", [("http500", "HTTP 500: "), ("no-done", "stream ended before the final message")])
def test_failures_are_classified(fake, model, reason):
    rec = OpenAIBackend(fake.url).generate(model, "hi")
    assert not rec.ok and reason in rec.error


def test_stall(fake):
    rec = OpenAIBackend(fake.url).generate("stall", "hi", stall_timeout_s=0.5, timeout_s=5)
    assert not rec.ok and rec.error.startswith("timeout (stall)")


def test_what_the_api_cannot_show_is_unknown_and_says_why(fake, tmp_path):
    b = OpenAIBackend(fake.url)
    assert "good" in b.models() and b.version().startswith("0.0-fake")
    assert b.model_facts("good").extra["max_model_len"] == 4096
    with pytest.raises(PerfkitError, match="serves no model 'nope'"):
        b.model_facts("nope")
    with pytest.raises(Unknown, match="does not say which models are resident"):
        b.loaded()
    assert ensure_warm(b, "good") is False  # primed by a request instead
    check = prepare_state(b, "good", "warm")
    assert check.verified is None and "residency unknown" in check.note
    with pytest.raises(Unknown):
        prepare_state(b, "good", "cold_memory")


STUDY = """name: oa
backend: {{kind: openai, url: "{url}"}}
timeouts: {{request_s: 60}}
sampling: {{interval_s: 0.1}}
studies:
  config_tuning:
    model: {model}
    settings: [{{}}]
    concurrency: [1, 2]
    requests: 6
    rates_rps: [4]
    rate_requests: 6
    rate_extend: 0
    num_predict: 8
    prompt_words: 16
"""


def _run_config_tuning(tmp_path, url: str, model: str):
    from perfkit.studies import config_tuning
    from perfkit.studies.base import StudyContext

    p = tmp_path / "p.yaml"
    p.write_text(STUDY.format(url=url, model=model))
    res = (_ctx := StudyContext(p, tmp_path / "run", "config_tuning")).study.run(_ctx)
    assert len(res.table) == 2 and (res.table["n_series"] == 6).all(), res.failures
    assert len(res.rates) == 1 and res.rates["n"].iloc[0] == 6
    text = config_tuning.conclusions(res)
    assert "**Latency**" in text and "Open-loop sweep" in text
    return res


def test_a_study_runs_unchanged_against_an_openai_server(tmp_path):
    with FakeOpenAI(fixed_latency_s=0.03) as f:
        res = _run_config_tuning(tmp_path, f.url, "fixed")
    assert res.manifest["backend"]["backend"] == "openai"
    assert "does not say which models are resident" in res.manifest["backend"]["unknown"]


@pytest.mark.engine
def test_a_study_runs_against_llama_server_v1_in_single_model_mode(tmp_path):
    """The real engine as a plain OpenAI-compatible server (one model, no router): what vLLM or
    SGLang look like to perfkit."""
    import subprocess

    from perfkit import models_dir
    from perfkit.kinds.llamacpp import engine

    port = engine.free_port()
    proc = subprocess.Popen([str(engine.binary()), "-m", str(models_dir() / "smollm2-135m-q4_1.gguf"),
                             "--alias", "smollm2", "--port", str(port), "-t", "2", "-c", "2048", "-np", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        import time

        import httpx

        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        b = OpenAIBackend(url)
        assert "smollm2" in b.models()
        rec = b.generate("smollm2", "Say hi", Sampling(num_predict=8))
        assert rec.ok and rec.output_tokens_source == "server" and rec.prompt_tokens > 0, rec.error
        _run_config_tuning(tmp_path, url, "smollm2")
    finally:
        proc.terminate()
        proc.wait(10)
