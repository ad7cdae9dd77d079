"""Warmup strategies against the real engine, with a short keep-alive (sleep-idle)."""

import pytest

from perfkit.backends import LlamaServerBackend, Sampling
from perfkit.coldstart import KeepWarm, user_first_request
from perfkit.engine import Engine
from perfkit.errors import PerfkitError

pytestmark = pytest.mark.engine
MODEL = "smollm2-135m-q4_1"


@pytest.fixture(scope="module")
def short_keep_alive(store_dir):
    with Engine(store_dir, {"num_thread": 2, "OLLAMA_KEEP_ALIVE": 2}) as e:
        b = LlamaServerBackend.from_engine(e)
        yield b
        b.close()


def test_keep_alive_expiry_and_keep_warm(short_keep_alive, tmp_path):
    b = short_keep_alive
    s = Sampling(num_predict=4)
    none = user_first_request(b, MODEL, "none", idle_gap_s=0.5, prompt="[a] hi", sampling=s)
    preload_expired = user_first_request(b, MODEL, "preload", idle_gap_s=3.5, prompt="[b] hi", sampling=s)
    kept = user_first_request(b, MODEL, "keep_warm", idle_gap_s=3.5, prompt="[c] hi", sampling=s,
                              keep_warm_interval_s=0.5)
    assert not none.loaded_at_send and none.record.load_s > 0
    assert not preload_expired.loaded_at_send  # idle gap beyond keep-alive: the model went to sleep
    assert kept.loaded_at_send and kept.record.load_s == 0 and kept.keep_warm_refreshes >= 5
    assert kept.record.ttft_s < none.record.ttft_s


def test_keep_warm_log(short_keep_alive, tmp_path):
    log = tmp_path / "kw.jsonl"
    import time

    with KeepWarm(short_keep_alive, MODEL, 0.3, log_path=log) as kw:
        time.sleep(1.0)
    assert 3 <= len(kw.log) <= 5 and all(e["ok"] for e in kw.log)
    assert len(log.read_text().splitlines()) == len(kw.log)


def test_bad_strategy(short_keep_alive):
    with pytest.raises(PerfkitError, match="unknown warmup strategy 'pray'; allowed: none, preload, keep_warm"):
        user_first_request(short_keep_alive, MODEL, "pray", idle_gap_s=0, prompt="x")
