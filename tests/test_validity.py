"""Defects that made figures wrong (issue 8), each with a test that fails on the code as it was.
Fast: the fake Ollama, synthetic records, a mocked NVML."""

import subprocess
import sys
import time
import types

import pandas as pd
import pytest

from perfkit.core import host
from perfkit.kinds.ollama import OllamaBackend
from perfkit.client.backends import Sampling
from perfkit.measure.cache_states import KeepWarm, StateCheck, confirm, mid_cycle_offset, prepare_state
from perfkit.servers.control import RemoteControl
from perfkit.servers.control.device import local_device
from perfkit.core.clock import now_ns
from perfkit.core.records import RequestRecord
from perfkit.measure.runner import Runner, Trial, plan
from perfkit.sampling import Monitor
from perfkit.core.store import RunStore
from perfkit.analysis.requests import measured, noisy_note, state_note


def _chat(reqs):
    return [r for r in reqs if r.get("messages") or r.get("prompt")]


def _generate(reqs):
    """Requests to /api/generate or /api/chat (the fake records /api/show bodies too; they carry no stream)."""
    return [r for r in reqs if "stream" in r]


def test_warm_trial_after_a_load_is_primed_first(fake_ollama, tmp_path):
    """A measured warm request never directly follows a load: an unrecorded priming request does."""
    b = OllamaBackend(fake_ollama.url)
    Runner(b, RunStore(tmp_path), progress=False).run([Trial("w", "good", "warm", prompt_words=8)])
    seq = [("load" if not (r.get("messages") or r.get("prompt")) else r["messages"][0]["content"])
           for r in _generate(fake_ollama.requests)]
    assert seq[0] == "load" and seq[1] == "ok" and seq[2].startswith("[")  # load → prime → measured
    row = RunStore(tmp_path).trials().iloc[0]
    assert row["state_primed"]


def test_first_after_load_is_its_own_state(fake_ollama):
    b = OllamaBackend(fake_ollama.url)
    b.load("good")
    n = len(fake_ollama.requests)
    check = prepare_state(b, "good", "first_after_load")
    sent = _generate(fake_ollama.requests[n:])
    assert check.verified and not _chat(sent)  # unload + load, and no request that would prime it
    assert sent[0].get("keep_alive") == 0 and sent[-1] == {"model": "good", "stream": False}


def _rec(state_backend="llama-server", cached=None, loaded_ns=None, load_s=0.0):
    r = RequestRecord(state_backend, "m", t_send_ns=1, t_first_token_ns=2, t_end_ns=3, cached_tokens=cached,
                      t_loaded_ns=loaded_ns, load_s=load_s)
    return r.finalize()


@pytest.mark.parametrize("state,cached,prefix,want", [
    ("warm", 25, 25, True),            # only the chat template's head came from the cache
    ("warm", 59, 25, False),           # a prompt-cache hit in a "warm" trial
    ("warm", 27, 25, True),            # two tokens shared by chance after the template: not a hit
    ("warm_cached", 59, 25, True),
    ("warm_cached", 25, 25, False),    # claimed cached, no hit
    ("warm", None, None, None),        # Ollama: no cached count → not verifiable, never "verified"
    ("warm_cached", None, None, None),
])
def test_cache_state_is_checked_against_the_request(state, cached, prefix, want):
    backend = "llama-server" if cached is not None else "ollama"
    check = confirm(StateCheck(state, True, True), _rec(backend, cached), prefix, load_seen=backend == "llama-server")
    assert check.verified is want
    if want is None:
        assert "not verifiable" in check.note


def test_cold_claim_without_a_load_is_contradicted():
    check = confirm(StateCheck("cold_memory", False, True), _rec("llama-server", 0), 25, load_seen=True)
    assert check.verified is False and "did not load" in check.note


def test_failed_state_checks_are_kept_but_excluded_and_counted():
    df = pd.DataFrame([
        {"trial_id": "a", "ok": True, "warmup": False, "cache_state": "warm", "state_verified": True, "e2e_s": 1.0},
        {"trial_id": "b", "ok": True, "warmup": False, "cache_state": "warm", "state_verified": False,
         "state_note": "34 of the prompt's 35 own tokens came from the cache", "e2e_s": 0.1},
        {"trial_id": "c", "ok": True, "warmup": False, "cache_state": "warm", "state_verified": None,
         "state_note": "residency verified; prompt-cache hits are not verifiable", "e2e_s": 1.1},
    ])
    assert list(measured(df)["trial_id"]) == ["a", "c"]
    note = state_note(df)
    assert "1 of 3 trials are excluded" in note and "came from the cache" in note
    assert "1 of 3 trials' cache state is only partly verifiable" in note


def test_prompts_are_unique_per_run_and_kept_on_resume(tmp_path):
    trials = plan(["m"], 3, prefix="p", warmup=0)
    a, b = RunStore(tmp_path / "a"), RunStore(tmp_path / "b")
    pa = [t.prompt_with(a.nonce()) for t in trials]
    pb = [t.prompt_with(b.nonce()) for t in trials]
    assert not set(pa) & set(pb)  # a second run of the same parameters sends other prompts
    assert [t.prompt_with(RunStore(tmp_path / "a").nonce()) for t in trials] == pa  # a resume sends the same


def test_second_run_against_a_long_lived_server_sends_new_prompts(fake_ollama, tmp_path):
    b = OllamaBackend(fake_ollama.url)
    trials = plan(["good"], 2, prefix="p", warmup=0, sampling=Sampling(num_predict=2))
    for run in ("r1", "r2"):
        Runner(b, RunStore(tmp_path / run), progress=False).run(trials)
    sent = [r["messages"][0]["content"] for r in fake_ollama.requests if r.get("messages")
            and r["messages"][0]["content"] != "ok"]
    assert len(sent) == 4 and len(set(sent)) == 4


def test_model_names_resolve_case_insensitively(fake_ollama):
    b = OllamaBackend(fake_ollama.url)
    b.load("good")
    assert b.is_loaded("GOOD") and b.is_loaded("Good:Latest") and b.resident_memory("GOOD:latest")


def test_preload_and_requests_carry_the_studys_keep_alive(fake_ollama, tmp_path):
    b = OllamaBackend(fake_ollama.url)
    Runner(b, RunStore(tmp_path), progress=False, keep_alive=300).run([Trial("w", "good", "warm", prompt_words=8)])
    sent = _generate(fake_ollama.requests)
    assert len(sent) == 3 and all(r.get("keep_alive") == 300 for r in sent)  # preload, prime, measured


def test_keep_warm_refreshes_never_coincide_with_the_measured_request(fake_ollama):
    """Refreshes at start + k·interval and a request at start + gap collide whenever gap is a multiple
    of the interval; the offset schedule puts the request mid-cycle, and the phase it had is recorded."""
    assert mid_cycle_offset(6.0, 1.0) == pytest.approx(0.5)
    assert mid_cycle_offset(600, 120) == pytest.approx(60)
    from fake_ollama import FakeOllama

    with FakeOllama(token_gap_s=0.03, tokens=3) as slow:  # each refresh takes ~0.1 s
        b = OllamaBackend(slow.url)
        b.load("good")
        interval, gap = 0.3, 0.9
        with KeepWarm(b, "good", interval, offset_s=mid_cycle_offset(gap, interval)) as kw:
            time.sleep(gap - (now_ns() - kw.t_start_ns) * 1e-9)
            phase = kw.phase_at(now_ns())
        assert phase["keep_warm_phase"] == pytest.approx(0.5, abs=0.15) and not phase["keep_warm_collision"]
        with KeepWarm(b, "good", interval, offset_s=0.0) as kw:  # the old schedule
            time.sleep(gap - (now_ns() - kw.t_start_ns) * 1e-9 + 0.01)
            old = kw.phase_at(now_ns())
        assert old["keep_warm_collision"] or old["keep_warm_phase"] < 0.15


def test_gpu_bandwidth_comes_from_nvml_not_a_name_table(monkeypatch):
    nv = types.SimpleNamespace(NVML_CLOCK_MEM=2, nvmlInit=lambda: None, nvmlShutdown=lambda: None,
                               nvmlDeviceGetHandleByIndex=lambda i: i,
                               nvmlDeviceGetMemoryBusWidth=lambda h: 5120,
                               nvmlDeviceGetMaxClockInfo=lambda h, c: 2619)
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    bw, src = host.gpu_memory_bandwidth_bytes_s(0)
    assert bw == pytest.approx(3.35e12, rel=0.01) and "5120-bit" in src  # an H100 SXM, whatever NVML calls it


def test_cpu_bandwidth_uses_every_core():
    one = host.memory_bandwidth_bytes_s(64 << 20, repeats=3, threads=1)
    many = host.memory_bandwidth_bytes_s(64 << 20, repeats=3)
    assert one > 1e8 and many > 1e8  # both measured; on one core they are the same code path


def test_limit_belongs_to_the_device_that_runs_the_model():
    remote = RemoteControl("http://gpu-box:11434").device("m")
    assert remote.kind == "unknown" and "another host" in remote.unknown_because
    cpu = local_device(1000, 0, set(), "/api/ps: size_vram 0")
    assert cpu.kind == "cpu" and cpu.memory_bandwidth_bytes_s > 0 and cpu.cpu_share == 1.0
    part = local_device(1000, 600, set(), "/api/ps")
    assert part.kind == "gpu+cpu" and part.cpu_share == pytest.approx(0.4) and part.unknown_because


def test_model_size_gives_no_limit_for_a_remote_server(tmp_path):
    """Against a remote Ollama the old code divided by the *client's* RAM bandwidth (18383% of limit)."""
    from perfkit.studies.base import StudyContext

    params = tmp_path / "p.yaml"
    params.write_text("name: t\nbackend: {kind: ollama, url: 'http://gpu-box:11434'}\n"
                      "studies: {model_size: {models: [a, b], reps: 1, cold_reps: 1}}\n")
    ctx = StudyContext(params, tmp_path / "run", "model_size")
    for m in ("a", "b"):
        ctx.store.event("device", model=m, **RemoteControl("http://gpu-box:11434").device(m).as_record())
        ctx.store.append_trial({"trial_id": f"warm/{m}/rep0", "variant": m, "model": m, "cache_state": "warm",
                                "ok": True, "warmup": False, "decode_tok_s": 184.0, "ttft_s": 0.1, "e2e_s": 1.0,
                                "load_s": 0.0, "prefill_tok_s": None, "tpot_s": 0.01, "itl_s": [0.01]})
    ctx.store.write_manifest(models={"a": {"size_bytes": 10**9}, "b": {"size_bytes": 2 * 10**9}})
    from perfkit.analysis.models import per_model

    t = per_model(ctx.store, ctx.store.trials(), ["a", "b"])
    assert "decode_pct_of_limit" not in t or t["decode_pct_of_limit"].isna().all()
    assert t["limit_unknown_because"].str.contains("another host").all()


def test_a_busy_machine_is_detected(tmp_path):
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<3: pass"])
    try:
        idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
        with Monitor(0.05, lambda: [idle.pid], gpu=False) as m:
            time.sleep(0.3)
            t0 = now_ns()
            time.sleep(1.0)
            rec = RequestRecord("x", "m", t_send_ns=t0, t_end_ns=now_ns(), output_tokens=1)
            s = m.request_summary(rec)
        idle.kill()
    finally:
        busy.kill()
    assert s["res_other_cpu_pct_mean"] > 50 and s["res_noisy"]
    df = pd.DataFrame([{"ok": True, **s}])
    assert "Noisy machine" in noisy_note(df)


def test_closed_loop_has_no_think_time_with_a_monitor(tmp_path):
    """Resource windows used to be computed inside each client's loop (waiting for samples), so the
    achieved concurrency was far below the nominal one; they now come after the series."""
    from fake_ollama import FakeOllama
    from perfkit.analysis.series import steady_window

    with FakeOllama(token_gap_s=0.05, tokens=5) as f, Monitor(0.05, None, gpu=False) as m:
        r = Runner(OllamaBackend(f.url), RunStore(tmp_path), progress=False, monitor=m)
        df = r.closed_loop("good", 2, 16, series="c2")
    busy = (df["t_end_ns"] - df["t_send_ns"]).sum() / (df["t_end_ns"].max() - df["t_send_ns"].min())
    assert busy >= 0.9 * 2 and steady_window(df, 2)["achieved_concurrency"] >= 0.9 * 2
    stored = RunStore(tmp_path).trials()
    assert len(stored) == 16 and stored["res_host_cpu_pct_mean"].notna().all()


def test_best_setting_without_a_ci_is_not_called_best():
    from perfkit.analysis import figures as F
    from perfkit.analysis.decisions import best_of

    rows = pd.DataFrame({"ttft_s": [0.1, 0.2]})
    claim = best_of({c: F.per_request("config_tuning", "ttft", rows, "ttft_s", where={"setting": c}) for c in "ab"})
    assert not claim.called and claim.not_separated == ["b"]
    assert "No setting is separable as the best" in claim.sentence("TTFT")


def test_a_model_process_found_late_is_the_servers_load_not_other_processes(tmp_path):
    """The tree is rescanned every 250 ms: a model process spawned in between used to be counted as
    other processes' load, so every cold load looked like a noisy machine."""
    code = ("import subprocess, sys, time\ntime.sleep(0.4)\n"
            "subprocess.run([sys.executable, '-c', 'import time\\nt=time.time()\\nwhile time.time()-t<1.2: pass'])\n"
            "time.sleep(5)")
    root = subprocess.Popen([sys.executable, "-c", code])
    try:
        with Monitor(0.05, lambda: [root.pid], gpu=False) as m:
            t0 = now_ns()
            time.sleep(2.0)
            s = m.request_summary(RequestRecord("x", "m", t_send_ns=t0, t_end_ns=now_ns(), output_tokens=1))
    finally:
        root.kill()
    assert s["res_server_cpu_pct_mean"] > 40 and s["res_other_cpu_pct_mean"] < 25 and not s["res_noisy"]
