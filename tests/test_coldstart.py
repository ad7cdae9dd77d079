"""Warmup strategies against the real engine, with a short keep-alive (sleep-idle)."""

import pytest

from perfkit.kinds.llamacpp import LlamaServerBackend
from perfkit.client.backends import Sampling
from perfkit.measure.cache_states import KeepWarm, user_first_request
from perfkit.kinds.llamacpp.engine import Engine
from perfkit.core.errors import PerfkitError

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


def test_the_engines_own_log_gives_the_server_side_split(store_dir, tmp_path):
    """The embedded engine's log (relative timestamps, pinned to wall time by perfkit's marks) puts the
    model process's spawn and load on the run's clock, inside the cold request that caused them."""
    import time as _time

    from perfkit.analysis import timeline
    from perfkit.measure.cache_states import prepare_state
    from perfkit.core.clock import now_ns
    from perfkit.core.store import RunStore
    from perfkit.kinds.llamacpp.engine import ENGINE_LOG_ARGS

    store = RunStore(tmp_path / "study")
    with Engine(store_dir, {"num_thread": 2}, log_path=tmp_path / "engine.log", extra_args=ENGINE_LOG_ARGS) as e:
        b = LlamaServerBackend.from_engine(e)
        store.event("clock", wall_unix_s=_time.time(), t_ns=now_ns())
        prepare_state(b, MODEL, "cold_memory")
        rec = b.generate(MODEL, "[tl] Explain tides.", Sampling(num_predict=4))
        b.close()
    (store.dir / "server.log").write_text((tmp_path / "engine.log").read_text())
    acc = timeline.load_account(store.dir, store.events())
    split = timeline.request_split(acc, rec.as_dict())
    assert rec.ok and rec.load_s > 0
    assert 0 <= split["server_spawn_s"] < rec.ttft_s  # the model process was spawned by this request
    assert 0 < split["server_runner_start_s"] < rec.ttft_s
    assert abs(split["server_spawn_s"] + split["server_runner_start_s"] - rec.load_s) < 0.25
    kinds = set(timeline.timeline_frame(acc)["kind"])
    assert {"server_listening", "runner_start", "model_loaded"} <= kinds
