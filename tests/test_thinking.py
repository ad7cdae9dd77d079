"""Thinking measured apart from the answer: the time to the first answer token, the thinking time and each phase's
tokens, read from each wire format's own thinking field, held against when the scripted server wrote each chunk
(the servers run in this process, so both sides stamp ``perf_counter_ns`` on one clock)."""

import json

import pytest

from fake_ollama import FakeOllama
from fake_openai import FakeOpenAI
from perfkit.analysis.metrics import CATALOGUE
from perfkit.client.backends import Sampling
from perfkit.core.errors import PerfkitError
from perfkit.core.records import RequestRecord
from perfkit.core.units import SECONDS, TOKENS
from perfkit.kinds.llamacpp.client import LlamaServerBackend
from perfkit.kinds.ollama import OllamaBackend
from perfkit.kinds.openai import OpenAIBackend

GAP_S = 0.12  # between chunks: wider than TOL_S, so a stamp taken from the wrong chunk cannot pass
TOL_S = 0.10  # how late the client may see a chunk on a loaded 2-core machine
THINKING, ANSWER = 3, 2
NS = 1_000_000_000


@pytest.fixture(scope="module")
def ollama():
    with FakeOllama(token_gap_s=GAP_S, tokens=ANSWER, thinking_tokens=THINKING) as f:
        yield f


@pytest.fixture(scope="module")
def v1():
    with FakeOpenAI(token_gap_s=GAP_S, tokens=ANSWER, thinking_tokens=THINKING) as f:
        yield f


def _seen_when_sent(t_seen_ns: int, chunk: dict) -> bool:
    """The client saw the chunk after the server began writing it, and at most TOL_S after it was out."""
    return chunk["t_write_ns"] <= t_seen_ns <= chunk["t_sent_ns"] + TOL_S * NS


def _check_phases(rec: RequestRecord, sent: list[dict]) -> None:
    assert rec.ok, rec.error
    thinking = [c for c in sent if c["phase"] == "thinking"]
    answer = [c for c in sent if c["phase"] == "answer"]
    assert len(thinking) == THINKING and len(answer) == ANSWER
    # TTFT keeps its meaning: the first token of any kind, here a thought.
    assert _seen_when_sent(rec.t_first_token_ns, thinking[0])
    assert _seen_when_sent(rec.t_first_answer_ns, answer[0])
    server_ttfa_s = (answer[0]["t_write_ns"] - rec.t_send_ns) / NS
    assert 0 <= rec.ttfa_s - server_ttfa_s <= TOL_S + (answer[0]["t_sent_ns"] - answer[0]["t_write_ns"]) / NS
    server_thinking_s = (answer[0]["t_write_ns"] - thinking[0]["t_write_ns"]) / NS
    assert rec.thinking_s == pytest.approx(server_thinking_s, abs=TOL_S)
    assert rec.thinking_s >= (THINKING - 1) * GAP_S  # the thinking really lies between the two marks
    assert rec.ttfa_s == pytest.approx(rec.ttft_s + rec.thinking_s, abs=1e-9)
    assert rec.thinking_tokens == THINKING and rec.answer_tokens == ANSWER
    assert rec.output_tokens == THINKING + ANSWER and rec.output_tokens_source == "server"
    assert rec.event_thinking == [True] * THINKING + [False] * ANSWER
    assert len(rec.token_times_ns) == THINKING + ANSWER  # thoughts are tokens too: ITL spans both phases
    assert rec.thinking_tok_s is not None and rec.answer_tok_s is not None


def _check_no_thinking(rec: RequestRecord) -> None:
    assert rec.ok, rec.error
    assert rec.thinking_tokens == 0 and rec.answer_tokens == ANSWER and rec.output_tokens == ANSWER
    assert rec.thinking_s is None and rec.thinking_tok_s is None and rec.event_thinking is None
    assert rec.ttfa_s == rec.ttft_s and rec.t_first_answer_ns == rec.t_first_token_ns


# ---- Ollama: /api/chat message.thinking, /api/generate thinking -------------------------------------------------
@pytest.mark.parametrize("endpoint", ["chat", "generate"])
def test_ollama_thinking_is_timed_apart_from_the_answer(ollama, endpoint):
    rec = OllamaBackend(ollama.url, endpoint=endpoint).generate("thinker", "hi", Sampling(num_predict=8, think=True))
    _check_phases(rec, ollama.sent[-1])
    assert rec.think_requested == "true"
    assert rec.text == "h0 h1 h2 t0 t1 "
    body = ollama.requests[-1]
    assert body["think"] is True and "think" not in body["options"]  # beside the options, as Ollama takes it


def test_ollama_think_false_is_sent_and_the_model_does_not_think(ollama):
    rec = OllamaBackend(ollama.url).generate("thinker", "hi", Sampling(num_predict=8, think=False))
    _check_no_thinking(rec)
    assert rec.think_requested == "false" and ollama.requests[-1]["think"] is False


def test_ollama_without_think_sends_none_and_a_thinking_model_thinks(ollama):
    rec = OllamaBackend(ollama.url, endpoint="generate").generate("thinker", "hi", Sampling(num_predict=8))
    assert "think" not in ollama.requests[-1] and rec.think_requested is None
    _check_phases(rec, ollama.sent[-1])


def test_ollama_a_server_that_ignores_think_is_told_apart(ollama):
    rec = OllamaBackend(ollama.url).generate("ignores-think", "hi", Sampling(num_predict=8, think=True))
    _check_no_thinking(rec)
    assert rec.think_requested == "true"  # asked to think, streamed no thought


def test_ollama_think_level(ollama):
    rec = OllamaBackend(ollama.url).generate("thinker", "hi", Sampling(num_predict=8, think="high"))
    assert ollama.requests[-1]["think"] == "high" and rec.think_requested == "high"
    _check_phases(rec, ollama.sent[-1])


# ---- /v1 chat: delta.reasoning_content (llama-server, DeepSeek), delta.reasoning (vLLM, Ollama's /v1) ----------
@pytest.mark.parametrize("model", ["thinker", "thinker-reasoning"])
def test_v1_thinking_is_timed_apart_from_the_answer(v1, model):
    rec = OpenAIBackend(v1.url).generate(model, "hi", Sampling(num_predict=8, think=True))
    _check_phases(rec, v1.sent[-1])
    assert rec.text == "h0 h1 h2 t0 t1 "
    assert v1.requests[-1]["chat_template_kwargs"] == {"enable_thinking": True}


def test_v1_think_false_asks_the_template_not_to_think(v1):
    rec = OpenAIBackend(v1.url).generate("thinker", "hi", Sampling(num_predict=8, think=False))
    _check_no_thinking(rec)
    assert v1.requests[-1]["chat_template_kwargs"] == {"enable_thinking": False}
    assert rec.think_requested == "false"


def test_v1_a_server_that_ignores_think_is_told_apart(v1):
    rec = OpenAIBackend(v1.url).generate("ignores-think", "hi", Sampling(num_predict=8, think=True))
    _check_no_thinking(rec)
    assert rec.think_requested == "true"


def test_v1_think_level_is_reasoning_effort(v1):
    rec = OpenAIBackend(v1.url).generate("thinker-reasoning", "hi", Sampling(num_predict=8, think="low"))
    body = v1.requests[-1]
    assert body["reasoning_effort"] == "low" and "chat_template_kwargs" not in body
    assert rec.think_requested == "low"
    _check_phases(rec, v1.sent[-1])


def test_v1_without_think_sends_neither_field():
    call = OpenAIBackend("http://127.0.0.1:9").stream_call("m", "hi", Sampling())
    body = json.loads(call.body)
    assert "reasoning_effort" not in body and "chat_template_kwargs" not in body and call.rec.think_requested is None


def test_v1_completions_refuses_think():
    with pytest.raises(PerfkitError, match="think needs the chat endpoint"):
        OpenAIBackend("http://127.0.0.1:9", endpoint="completions").stream_call("m", "hi", Sampling(think=True))


def test_llama_server_sends_think_as_the_v1_servers_take_it():
    b = LlamaServerBackend("http://127.0.0.1:9")
    assert json.loads(b.stream_call("m", "hi", Sampling(think=False)).body)["chat_template_kwargs"] == \
        {"enable_thinking": False}
    assert json.loads(b.stream_call("m", "hi", Sampling(think="medium")).body)["reasoning_effort"] == "medium"


def test_think_takes_a_bool_or_a_level():
    with pytest.raises(PerfkitError, match="allowed: true, false, low, medium, high"):
        Sampling(think="hard")
    s = Sampling(num_predict=3, think="low")
    assert s.options() == {"num_predict": 3} and s.present() == {"num_predict": 3, "think": "low"}


# ---- the record ------------------------------------------------------------------------------------------------
def test_a_phase_rate_is_its_tokens_after_its_first_event_over_its_span():
    ms = 1_000_000
    r = RequestRecord("x", "m", t_send_ns=0, t_end_ns=700 * ms, output_tokens=9, output_tokens_source="server",
                      token_times_ns=[100 * ms, 200 * ms, 300 * ms, 500 * ms, 600 * ms, 700 * ms],
                      event_thinking=[True, True, True, False, False, False],
                      t_first_token_ns=100 * ms, t_first_answer_ns=500 * ms).finalize()
    assert r.ttft_s == pytest.approx(0.1) and r.ttfa_s == pytest.approx(0.5) and r.thinking_s == pytest.approx(0.4)
    assert r.thinking_tokens == 3 and r.answer_tokens == 6  # the server's 9 − the 3 thinking events
    assert r.thinking_tok_s == pytest.approx(2 / 0.2) and r.answer_tok_s == pytest.approx(5 / 0.2)


def test_per_event_counts_split_the_phases_exactly():
    r = RequestRecord("x", "m", t_send_ns=0, t_end_ns=40, token_times_ns=[10, 20, 30, 40], event_tokens=[2, 3, 1, 1],
                      event_thinking=[True, True, False, False], t_first_token_ns=10, t_first_answer_ns=30).finalize()
    assert r.thinking_tokens == 5 and r.answer_tokens == 2 and r.output_tokens == 4


def test_thinking_cut_off_before_any_answer_has_no_answer_time():
    r = RequestRecord("x", "m", t_send_ns=0, t_end_ns=40, token_times_ns=[10, 20, 30], output_tokens=3,
                      output_tokens_source="server", event_thinking=[True] * 3, t_first_token_ns=10).finalize()
    assert r.thinking_tokens == 3 and r.answer_tokens == 0
    assert r.ttfa_s is None and r.thinking_s is None and r.ttft_s == pytest.approx(1e-8)


def test_an_older_record_reads_and_its_first_token_is_its_answer():
    old = {"backend": "x", "model": "m", "t_send_ns": 0, "t_first_token_ns": 100, "t_end_ns": 300,
           "token_times_ns": [100, 200, 300], "ttft_s": 1e-7}
    r = RequestRecord(**old)
    assert r.ttfa_s is None and r.thinking_tokens is None and r.think_requested is None
    r.finalize()
    assert r.ttfa_s == r.ttft_s and r.thinking_tokens == 0 and r.answer_tokens == 3


def test_the_catalogue_declares_the_thinking_metrics():
    assert (CATALOGUE["ttfa"].unit, CATALOGUE["thinking_time"].unit) == (SECONDS, SECONDS)
    assert CATALOGUE["ttfa"].better == "lower" and CATALOGUE["thinking_time"].better == "lower"
    assert CATALOGUE["thinking_tokens"].unit is TOKENS and CATALOGUE["answer_tokens"].unit is TOKENS
    assert TOKENS.text(412.0) == "412 tok"
