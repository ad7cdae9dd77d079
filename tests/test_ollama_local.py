"""The production path: a local Ollama seen from its own host, against the scripted Ollama (real
`serve` and runner processes, a log in Ollama's formats, model blobs on disk, a real restart)."""

import time

import pytest

from perfkit.servers import pagecache
from perfkit.analysis import timeline
from perfkit.kinds.ollama import OllamaBackend
from perfkit.client.backends import Sampling
from perfkit.measure.cache_states import prepare_state, scheme_a
from perfkit.kinds.ollama import LocalOllamaControl, ollama_control
from perfkit.servers.control import RemoteControl
from perfkit.core.clock import now_ns
from perfkit.servers.serverlog import FileLogSource
from perfkit.core.store import RunStore
from scripted_ollama.harness import ScriptedOllama

BIG = "qwen2.5:72b-instruct-q4_K_M"  # scripted with a partial offload (60 of 81 layers on the GPU)
SMALL = "qwen2.5:32b-instruct-q4_0"  # scripted as not supporting flash attention


@pytest.fixture
def so(tmp_path, scripted_models_dir):
    with ScriptedOllama(tmp_path / "ollama", models_dir=scripted_models_dir,
                        env={"OLLAMA_NUM_PARALLEL": "1", "OLLAMA_KEEP_ALIVE": "10m"}) as s:
        yield s


def backend_for(so, **kw):
    control = ollama_control(so.url, restart_command=so.restart_command, log=FileLogSource(so.log_path), **kw)
    return OllamaBackend(so.url, control=control)


def test_a_local_ollama_is_found_by_its_port_with_its_runners(so):
    b = backend_for(so)
    assert isinstance(b.control, LocalOllamaControl)
    assert b.control.server_pids() == [so.serve_pid()]
    b.load(BIG)
    (runner,) = b.control.runners()
    assert runner.pid in so.runner_pids() and runner.model_path == str(so.blob_path(BIG))
    assert b.control.model_file(BIG) == so.blob_path(BIG)


def test_a_server_on_another_host_is_unknown_with_the_reason():
    c = ollama_control("http://gpu-box.example:11434")
    assert isinstance(c, RemoteControl) and "another host" in c.why_not_local()
    assert c.server_pids() == [] and c.device("m").unknown_because


def test_settings_confirmed_or_not_applied_from_the_servers_own_log(so):
    b = backend_for(so)
    info = b.control.restart({"OLLAMA_NUM_PARALLEL": 2, "OLLAMA_FLASH_ATTENTION": 1, "OLLAMA_CONTEXT_LENGTH": 8192})
    assert info.pid_after != info.pid_before and info.pid_after == so.serve_pid() and info.ready_s > 0
    b.load(SMALL)
    checks = b.control.settings_in_effect({"OLLAMA_NUM_PARALLEL": 2, "OLLAMA_FLASH_ATTENTION": 1,
                                           "OLLAMA_CONTEXT_LENGTH": 8192, "num_thread": 4}, SMALL)
    assert checks["OLLAMA_NUM_PARALLEL"].status == "confirmed"
    assert "server config" in checks["OLLAMA_NUM_PARALLEL"].evidence
    assert checks["OLLAMA_CONTEXT_LENGTH"].status == "confirmed"
    fa = checks["OLLAMA_FLASH_ATTENTION"]
    assert fa.status == "not applied" and fa.effective == "off" and "not supported" in fa.evidence
    assert checks["num_thread"].status == "unverifiable"
    # The user's own settings come back at the end of a study.
    b.control.restore()
    assert "OLLAMA_NUM_PARALLEL:1" in so.log_text().split('msg="server config"')[-1]


def test_settings_without_a_log_fall_back_to_the_process_environment(so):
    c = ollama_control(so.url, restart_command=so.restart_command)  # no log given
    c.restart({"OLLAMA_NUM_PARALLEL": 3})
    checks = c.settings_in_effect({"OLLAMA_NUM_PARALLEL": 3, "OLLAMA_KV_CACHE_TYPE": "q8_0"})
    assert checks["OLLAMA_NUM_PARALLEL"].status == "confirmed" and "environ" in checks["OLLAMA_NUM_PARALLEL"].evidence
    assert checks["OLLAMA_KV_CACHE_TYPE"].status == "unverifiable" and "server log" in checks["OLLAMA_KV_CACHE_TYPE"].evidence


def test_cold_disk_evicts_the_blob_and_cold_memory_waits_for_the_runner(so):
    b = backend_for(so)
    b.load(SMALL)
    disk = prepare_state(b, SMALL, "cold_disk")
    assert disk.verified and disk.file_resident_fraction < 0.05 and not so.runner_pids()
    # /api/ps drops the model before its runner exits and frees its memory: that wait is measured apart.
    assert disk.memory_release_wait_s >= 0.2
    b.load(SMALL)
    mem = prepare_state(b, SMALL, "cold_memory")
    assert mem.verified and mem.file_resident_fraction > 0.95
    assert pagecache.resident_fraction(so.blob_path(SMALL)) > 0.95


def test_partial_offload_is_reported_with_its_cpu_share(so):
    b = backend_for(so)
    b.load(BIG)
    d = b.control.device(BIG, b)
    assert d.kind == "gpu+cpu" and 0.1 < d.cpu_share < 0.5
    assert "size_vram" in d.offload_evidence and "offloaded 60/81" in d.offload_evidence


def test_cold_server_and_the_servers_split_of_the_first_request(so, tmp_path):
    b = backend_for(so)
    store = RunStore(tmp_path / "study")
    mark = b.control.log_source().mark()
    store.event("clock", wall_unix_s=time.time(), t_ns=now_ns())
    check = prepare_state(b, BIG, "cold_server")
    assert check.verified and check.restart["ready_s"] > 0
    rec = b.generate(BIG, "[x] explain tides", Sampling(num_predict=8))
    assert rec.ok and rec.load_s > 0.3
    deadline = time.monotonic() + 5  # like gin, the server logs a request just after answering it
    while '"/api/chat"' not in so.log_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    (store.dir / "server.log").write_text("\n".join(b.control.log_source().read_since(mark)) + "\n")
    acc = timeline.load_account(store.dir, store.events())
    split = timeline.request_split(acc, rec.as_dict())
    assert split["server_runner_start_s"] > 0.3  # the scripted 0.4 s load, as the server logged it
    assert 0 <= split["server_spawn_s"] < rec.e2e_s and split["server_status"] == 200
    assert split["server_latency_s"] == pytest.approx(rec.e2e_s, abs=1.1)  # GIN has whole... units, ±1 s lines
    kinds = set(timeline.timeline_frame(acc)["kind"])
    assert {"server_config", "runner_start", "runner_ready", "request", "offload"} <= kinds


def test_scheme_a_restart_then_preload(so):
    b = backend_for(so)
    early = scheme_a(b, BIG, delay_s=0.0, prompt="[a] hi", sampling=Sampling(num_predict=4))
    late = scheme_a(b, BIG, delay_s=early.warm_after_s + 0.5, prompt="[b] hi", sampling=Sampling(num_predict=4))
    assert early.record.ok and late.record.ok
    assert not early.preload_done_at_send and late.preload_done_at_send
    assert late.record.e2e_s < early.record.e2e_s and early.warm_after_s > 0.3


def test_drift_without_logprobs_compares_words(tmp_path, scripted_models_dir):
    from perfkit.studies.quantization import units

    with ScriptedOllama(tmp_path / "old", models_dir=scripted_models_dir, version="0.5.7") as old:
        rec = OllamaBackend(old.url).generate("tiny", "[d] hi", Sampling.greedy(6), logprobs=True)
    assert rec.ok and not rec.tokens  # an Ollama older than the logprobs field
    words, method = units(rec.as_dict())
    assert method == "words" and words == rec.text.split()


def test_a_kill_9_of_perfkit_gives_the_user_their_settings_back_at_once(so, tmp_path):
    """perfkit killed with -9 while the user's server runs on the run's settings: the host's watchdog restarts it
    on the user's own at once, with none of the run's environment; the record is gone afterwards."""
    import json
    import os
    import re
    import signal
    import subprocess
    import sys

    from perfkit.kinds.ollama import restore

    script = tmp_path / "perfkit_like.py"
    script.write_text(f"""
import json, time
from perfkit.kinds.ollama import LocalOllamaControl
c = LocalOllamaControl({so.url!r}, restart_command={so.restart_command!r}, ready_timeout_s=30)
c.restart({{"OLLAMA_NUM_PARALLEL": 3}})
print(json.dumps(c.describe()), flush=True)
time.sleep(600)
""")
    env = {**os.environ, "PERFKIT_RUN_DIR": str(tmp_path / "run"), "PERFKIT_OWNER": "1:1"}
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    described = json.loads(p.stdout.readline())
    parallel = lambda: re.findall(r"OLLAMA_NUM_PARALLEL:(\d+)", so.log_text())[-1]  # noqa: E731
    assert parallel() == "3" and described["restore_watchdog_pid"]
    assert restore.host_record_path(so.port).exists()
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and parallel() != "1":
        time.sleep(0.1)
    assert parallel() == "1" and so.serve_pid() is not None
    environ = open(f"/proc/{so.serve_pid()}/environ", "rb").read()
    assert b"PERFKIT_RUN_DIR" not in environ and b"PERFKIT_OWNER" not in environ
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and restore.host_record_path(so.port).exists():
        time.sleep(0.1)
    assert not restore.host_record_path(so.port).exists()
