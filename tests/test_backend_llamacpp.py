"""The llama-server backend against the real embedded engine."""

import pytest

from perfkit.client.backends import Sampling
from perfkit.measure.cache_states import prepare_state
from perfkit.core.errors import PerfkitError

pytestmark = pytest.mark.engine
MODEL = "smollm2-135m-q4_1"


def test_generates_real_tokens_with_server_timings(backend):
    backend.load(MODEL)
    rec = backend.generate(MODEL, "Write a long story about a dragon and a baker.", Sampling(num_predict=16))
    assert rec.ok, rec.error
    assert rec.text.strip() and 4 <= rec.output_tokens <= 16 and rec.output_tokens_source == "server"
    assert rec.done_reason == ("length" if rec.output_tokens == 16 else "stop")
    assert 0 < rec.ttfb_s <= rec.ttft_s < rec.e2e_s
    assert rec.prefill_tokens > 5 and rec.prefill_s > 0 and rec.decode_s > 0 and rec.decode_tok_s > 1
    assert len(rec.itl_s) >= 3 and rec.tpot_s > 0
    assert rec.load_s == 0  # resident before the request
    assert abs(rec.overhead_s) < 0.5 * rec.e2e_s


def test_load_unload_and_status_change(backend):
    backend.unload(MODEL)
    assert backend.state(MODEL) == "unloaded" and MODEL not in backend.loaded()
    load_s = backend.load(MODEL)
    assert load_s > 0.01 and backend.state(MODEL) == "loaded"
    backend.unload(MODEL)
    assert backend.state(MODEL) == "unloaded"


def test_unknown_model(backend):
    with pytest.raises(PerfkitError, match="llama-server has no model 'gpt-9'; available: .*smollm2-135m-q4_1"):
        backend.load("gpt-9")


def test_cold_and_warm_differ_in_the_right_direction(backend):
    """Interleaved cold/warm pairs: the cold request pays a measured load, the warm one doesn't."""
    s = Sampling(num_predict=8)
    colds, warms = [], []
    for i in range(3):
        prepare_state(backend, MODEL, "cold_memory")
        colds.append(backend.generate(MODEL, f"[{i}c] Say hello.", s))
        warms.append(backend.generate(MODEL, f"[{i}w] Say hello.", s))
    assert all(r.ok for r in colds + warms)
    assert all(r.load_s > 0.02 for r in colds) and all(r.load_s == 0 for r in warms)
    assert sorted(r.ttft_s for r in colds)[1] > sorted(r.ttft_s for r in warms)[1]
    assert min(r.ttft_s - r.load_s for r in colds) > 0  # load is inside the first token's wait


def test_states_are_what_the_trials_say(backend):
    path = backend.model_facts(MODEL).path
    disk = prepare_state(backend, MODEL, "cold_disk")
    assert disk.verified and disk.file_resident_fraction < 0.05 and not backend.is_loaded(MODEL)
    mem = prepare_state(backend, MODEL, "cold_memory")
    assert mem.verified and mem.file_resident_fraction > 0.95 and not backend.is_loaded(MODEL)
    warm = prepare_state(backend, MODEL, "warm")
    assert warm.verified and backend.is_loaded(MODEL) and path
    prompt = "[cache-test] Repeat after me: the quick brown fox."
    cached = prepare_state(backend, MODEL, "warm_cached", prompt=prompt, sampling=Sampling(num_predict=4))
    assert cached.verified
    rec = backend.generate(MODEL, prompt, Sampling(num_predict=4))
    assert rec.cached_tokens > 5 and rec.prefill_tokens <= 2  # served from the prompt cache


def test_model_facts_come_from_the_gguf_header(backend):
    f = backend.model_facts("gemma3-270m-q4_k_m")
    assert f.quantization == "Q4_K_M" and f.family == "gemma3" and 2.5e8 < f.parameter_count < 2.8e8
    assert f.digest == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def test_each_model_has_its_own_resident_memory(backend):
    for m in ("smollm2-135m-q4_1", "gemma3-270m-q4_k_m"):
        backend.load(m)
    small = backend.resident_memory("smollm2-135m-q4_1")["model_memory_bytes"]
    large = backend.resident_memory("gemma3-270m-q4_k_m")["model_memory_bytes"]
    assert large > small + 100e6  # 253 MB vs 98 MB of weights, measured per process, not the sum
    backend.unload("gemma3-270m-q4_k_m")
    assert backend.resident_memory("gemma3-270m-q4_k_m") == {}


def test_speculative_decoding_with_a_draft_model_is_counted_per_request(store_dir, tmp_path):
    """A smaller quantization of the same model drafts: the server's drafted and accepted counts reach the record,
    and the model process is confirmed to run with the draft."""
    from perfkit import kinds
    from perfkit.kinds.llamacpp.engine import Engine

    with Engine(store_dir, {"num_thread": 2, "draft_model": "smollm2-135m-q4_0", "draft_max": 4},
                log_path=tmp_path / "engine.log") as e:
        b = kinds.create("embedded", engine=e)
        rec = b.generate("smollm2-135m-q8_0", "Count from 1 to 30, separated by commas.", Sampling.greedy(40))
        assert rec.ok, rec.error
        assert rec.draft_tokens and rec.draft_tokens > 0 and 0 <= rec.draft_accepted_tokens <= rec.draft_tokens
        assert rec.draft_acceptance == rec.draft_accepted_tokens / rec.draft_tokens
        checks = b.control.settings_in_effect({"draft_model": "smollm2-135m-q4_0", "draft_max": 4},
                                              "smollm2-135m-q8_0")
        assert checks["draft_model"].status == "confirmed" and checks["draft_max"].status == "confirmed"
        plain = Engine(store_dir, {"num_thread": 2}, log_path=tmp_path / "plain.log")
        assert "--spec-draft-model" not in plain.flags
