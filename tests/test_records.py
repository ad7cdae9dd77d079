import pytest

from perfkit.core.records import RequestRecord


def test_derived_metrics_follow_the_definitions():
    ms = 1_000_000
    r = RequestRecord("x", "m", t_send_ns=0, t_headers_ns=5 * ms, t_first_token_ns=100 * ms, t_end_ns=400 * ms,
                      token_times_ns=[100 * ms, 200 * ms, 300 * ms, 400 * ms], output_tokens=4,
                      output_tokens_source="server", load_s=0.05, prefill_s=0.04, decode_s=0.29, prefill_tokens=20)
    r.finalize()
    assert r.ttfb_s == pytest.approx(0.005) and r.ttft_s == pytest.approx(0.1) and r.e2e_s == pytest.approx(0.4)
    assert r.itl_s == pytest.approx([0.1, 0.1, 0.1])
    assert r.tpot_s == pytest.approx(0.1)
    assert r.prefill_tok_s == pytest.approx(500) and r.decode_tok_s == pytest.approx(4 / 0.29)
    assert r.overhead_s == pytest.approx(0.4 - 0.38)


def test_chunk_count_is_only_a_fallback():
    r = RequestRecord("x", "m", t_send_ns=0, t_first_token_ns=1, t_end_ns=3, token_times_ns=[1, 2, 3]).finalize()
    assert r.output_tokens == 3 and r.output_tokens_source == "chunks" and r.decode_tok_s is None


def test_fail_keeps_what_was_measured():
    r = RequestRecord("x", "m", t_send_ns=0, t_first_token_ns=10, token_times_ns=[10]).fail("timeout")
    assert not r.ok and r.error == "timeout" and r.ttft_s == pytest.approx(1e-8) and r.overhead_s is None
