"""The scripted Ollama itself: real processes, Ollama's log formats, its scheduler's behaviour, its truth.

Each test starts its own server (about half a second) and checks afterwards that no process of it is
left. Timing is never asserted tightly: these tests run on busy 2-core machines.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from scripted_ollama import go_duration, parse_go_duration_ns
from scripted_ollama.harness import ScriptedOllama, scripted_ollama_fixture, shared_models_dir

JOURNALD = re.compile(r"^[A-Z][a-z]{2} \d{2} \d{2}:\d{2}:\d{2} \S+ ollama\[\d+\]: ")
DOCKER = re.compile(r"^ollama  \| ")
GIN = re.compile(r'\[GIN\] \d{4}/\d{2}/\d{2} - \d{2}:\d{2}:\d{2} \| (\d{3}) \| +(\S+) \| +127\.0\.0\.1 \| '
                 r'(GET|POST) +"([^"]+)"$')


@pytest.fixture
def start(tmp_path_factory):
    """start(**kw) → a started ScriptedOllama; all are stopped after the test, leaving no process."""
    started: list[ScriptedOllama] = []

    def _start(**kw) -> ScriptedOllama:
        so = ScriptedOllama(tmp_path_factory.mktemp("so"), models_dir=shared_models_dir(tmp_path_factory), **kw)
        started.append(so)
        return so.start()

    yield _start
    for so in started:
        so.stop()
        assert so.leftover_processes() == []


def chat(so: ScriptedOllama, model: str, text: str, **body) -> list[dict]:
    payload = {"model": model, "messages": [{"role": "user", "content": text}], **body}
    with httpx.stream("POST", f"{so.url}/api/chat", json=payload, timeout=30) as r:
        assert r.status_code == 200, r.read()
        return [json.loads(line) for line in r.iter_lines() if line.strip()]


def post(so: ScriptedOllama, path: str, **body) -> httpx.Response:
    return httpx.post(f"{so.url}{path}", json=body, timeout=30)


def lines(so: ScriptedOllama, needle: str) -> list[str]:
    return [ln for ln in so.log_text().splitlines() if needle in ln]


def wait_for(cond, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


# ---- processes -----------------------------------------------------------------------------------
def test_runner_is_a_real_child_process_named_like_ollamas(start):
    so = start()
    assert post(so, "/api/generate", model="tiny").json()["done_reason"] == "load"
    (pid,) = so.runner_pids()
    proc = psutil.Process(pid)
    blob = str(so.blob_path("tiny"))
    cmdline = proc.cmdline()
    assert cmdline[:4] == ["/usr/local/bin/ollama", "runner", "--model", blob]
    assert f"runner --model {blob}" in Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    assert proc.name() == "ollama"
    assert proc.ppid() == so.serve_pid()
    assert psutil.Process(so.serve_pid()).cmdline() == ["/usr/local/bin/ollama", "serve"]
    port = int(cmdline[cmdline.index("--port") + 1])
    assert wait_for(lambda: any(c.laddr.port == port and c.status == "LISTEN" for c in proc.net_connections()))


def _gone(pid: int) -> bool:
    """Exited or a zombie; a process can exit between two psutil calls, so no check-then-read."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_sigterm_kills_runners_and_stop_leaves_nothing(start):
    so = start()
    post(so, "/api/generate", model="tiny")
    post(so, "/api/generate", model="qwen2.5:32b-instruct-q4_0")
    runners = so.runner_pids()
    assert len(runners) == 2
    os.kill(so.serve_pid(), signal.SIGTERM)
    assert wait_for(lambda: all(_gone(p) for p in runners))
    assert wait_for(lambda: not (so.home / "serve.pid").exists())  # removed by the exiting server


def test_runners_exit_when_the_server_is_killed_outright(start):
    so = start()
    post(so, "/api/generate", model="tiny")
    (runner,) = so.runner_pids()
    os.kill(so.serve_pid(), signal.SIGKILL)  # no cleanup: the runner sees its pipe close and exits
    assert wait_for(lambda: _gone(runner), 5)


@pytest.fixture
def scripted_ollama(tmp_path_factory):
    yield from scripted_ollama_fixture(tmp_path_factory)


def test_the_fixture_function_gives_a_started_server(scripted_ollama):
    assert httpx.get(f"{scripted_ollama.url}/api/version").status_code == 200
    assert scripted_ollama.serve_pid() and scripted_ollama.log_path.exists()
    assert scripted_ollama.restart_command[-1] == str(scripted_ollama.home)


# ---- logs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("style", ["slog", "journald", "docker"])
def test_log_lines_in_each_style(start, style):
    so = start(log_style=style)
    chat(so, "tiny", "hello there", options={"num_predict": 3})
    assert wait_for(lambda: '"/api/chat"' in so.log_text())  # GIN writes its line after the reply is sent
    text = so.log_text()
    for ln in text.splitlines():
        if style == "journald":
            assert JOURNALD.match(ln), ln
        elif style == "docker":
            assert DOCKER.match(ln), ln
    body = [JOURNALD.sub("", DOCKER.sub("", ln)) for ln in text.splitlines()]
    config = next(ln for ln in body if 'msg="server config"' in ln)
    assert re.match(r"time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d) "
                    r"level=INFO source=routes\.go:\d+ ", config)
    for kv in ("OLLAMA_CONTEXT_LENGTH:4096", "OLLAMA_FLASH_ATTENTION:false", "OLLAMA_KEEP_ALIVE:5m0s",
               "OLLAMA_KV_CACHE_TYPE: ", "OLLAMA_MAX_LOADED_MODELS:0", "OLLAMA_NUM_PARALLEL:1",
               f"OLLAMA_HOST:http://127.0.0.1:{so.port}", "CUDA_VISIBLE_DEVICES: "):
        assert kv in config
    assert any(f'msg="Listening on 127.0.0.1:{so.port} (version 0.12.11)"' in ln for ln in body)
    blob = so.blob_path("tiny")
    assert any(f'msg="starting runner" cmd="/usr/local/bin/ollama runner --model {blob} --port ' in ln for ln in body)
    assert any('msg="waiting for llama runner to start responding"' in ln for ln in body)
    assert "load_tensors: offloaded 25/25 layers to GPU" in body
    assert any(re.fullmatch(r"load_tensors: +CUDA0 model buffer size = +[\d.]+ MiB", ln) for ln in body)
    assert any(re.fullmatch(r"load_tensors: +CPU_Mapped model buffer size = +[\d.]+ MiB", ln) for ln in body)
    assert any(re.search(r'msg="llama runner started in \d+\.\d\d seconds"', ln) for ln in body)
    gins = [m for m in (GIN.search(ln) for ln in body) if m]
    assert ("200", "POST", "/api/chat") in {(m[1], m[3], m[4]) for m in gins}
    started = next(i for i, ln in enumerate(body) if "llama runner started" in ln)
    chat_gin = next(i for i, ln in enumerate(body) if '"/api/chat"' in ln)
    assert body.index("load_tensors: offloaded 25/25 layers to GPU") < started < chat_gin  # GIN logs at the end
    lat = next(m[2] for m in gins if m[4] == "/api/chat")
    assert parse_go_duration_ns(lat) > 0


def test_old_version_formats_and_no_logprobs(start):
    so = start(version="0.5.7")
    assert httpx.get(f"{so.url}/api/version").json() == {"version": "0.5.7"}
    out = chat(so, "tiny", "hi", options={"num_predict": 3}, logprobs=True)
    assert all("logprobs" not in o for o in out)  # an Ollama before the field ignores it
    cmd = lines(so, 'msg="starting llama server"')[0]
    assert re.search(r'cmd="/usr/local/bin/ollama runner --model \S+ --ctx-size 2048 --batch-size 512 '
                     r'--n-gpu-layers 25 --threads \d+ --parallel 1 --port \d+"', cmd)
    assert lines(so, "llm_load_tensors: offloaded 25/25 layers to GPU")
    assert "OLLAMA_CONTEXT_LENGTH" not in lines(so, "server config")[0]


def test_logprobs_on_a_version_that_has_them(start):
    so = start()
    out = chat(so, "tiny", "hi", options={"num_predict": 3}, logprobs=True, top_logprobs=2)
    toks = [o["logprobs"][0] for o in out if not o["done"]]
    assert [t["token"] for t in toks] == [o["message"]["content"] for o in out if not o["done"]]
    assert all(t["logprob"] <= 0 and len(t["top_logprobs"]) == 2 for t in toks)


def test_go_duration_matches_go():
    assert [go_duration(n) for n in (0, 999, 178_535, 12_500_000, 2_345_678_000, 189_500_000_000,
                                     3_723_000_000_000, 300_000_000_000)] == \
        ["0s", "999ns", "178.535µs", "12.5ms", "2.345678s", "3m9.5s", "1h2m3s", "5m0s"]
    assert parse_go_duration_ns("1h30m") == 5_400_000_000_000


# ---- restart -------------------------------------------------------------------------------------
def test_restart_applies_the_callers_environment(start):
    so = start()
    post(so, "/api/generate", model="tiny")
    old_pid, old_runner = so.serve_pid(), so.runner_pids()[0]
    # As perfkit runs it: its own environment plus the OLLAMA_* settings under test.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    env.update(OLLAMA_NUM_PARALLEL="2", OLLAMA_FLASH_ATTENTION="1", OLLAMA_KEEP_ALIVE="10m")
    t0 = time.monotonic()
    subprocess.run(so.restart_command, env=env, check=True, timeout=30, capture_output=True)
    assert time.monotonic() - t0 < 5  # it does not wait for readiness
    new_pid = so.wait_ready(new_pid_of=old_pid)
    assert new_pid != old_pid and not psutil.pid_exists(old_runner)
    configs = lines(so, 'msg="server config"')
    assert len(configs) == 2  # the log is appended across restarts
    assert "OLLAMA_NUM_PARALLEL:1" in configs[0] and "OLLAMA_FLASH_ATTENTION:false" in configs[0]
    assert "OLLAMA_NUM_PARALLEL:2" in configs[1] and "OLLAMA_FLASH_ATTENTION:true" in configs[1]
    assert "OLLAMA_KEEP_ALIVE:10m0s" in configs[1] and f"OLLAMA_HOST:http://127.0.0.1:{so.port}" in configs[1]
    post(so, "/api/generate", model="tiny")
    assert "--parallel" not in lines(so, "starting runner")[-1]  # v0.12 sends settings over the port...
    assert lines(so, "llama_context: n_seq_max     = 2")  # ...and the runner shows them
    assert so.ps()[0]["name"] == "tiny:latest"


# ---- scheduler -----------------------------------------------------------------------------------
def test_keep_alive_zero_drops_from_ps_before_the_runner_exits(start):
    so = start(models={"tiny": {"vram_release_s": 0.5}})
    post(so, "/api/generate", model="tiny")
    (runner,) = so.runner_pids()
    r = post(so, "/api/generate", model="tiny", keep_alive=0)
    assert r.json()["done_reason"] == "unload"
    assert so.ps() == []
    assert psutil.Process(runner).is_running()  # the scheduler dropped it, its "VRAM" is not free yet
    assert wait_for(lambda: _gone(runner), 5)


def test_keep_alive_expiry_and_expires_at(start):
    so = start()
    chat(so, "tiny", "hello", options={"num_predict": 1}, keep_alive="300ms")
    assert so.ps()[0]["expires_at"]
    assert wait_for(lambda: so.ps() == [], 3)
    post(so, "/api/generate", model="tiny", keep_alive=-1)
    assert int(so.ps()[0]["expires_at"][:4]) > 2200  # forever: now + MaxInt64 ns, as Ollama shows it
    assert post(so, "/api/generate", model="tiny", keep_alive="300").status_code == 400  # no unit: Go rejects it


def test_partial_offload_in_ps_and_log(start):
    so = start()
    post(so, "/api/generate", model="qwen2.5:72b-instruct-q4_K_M")
    post(so, "/api/generate", model="tiny")
    ps = {m["name"]: m for m in so.ps()}
    big, tiny = ps["qwen2.5:72b-instruct-q4_K_M"], ps["tiny:latest"]
    assert 0 < big["size_vram"] < big["size"]
    assert tiny["size_vram"] == tiny["size"]
    assert big["size"] >= so.blob_path("qwen2.5:72b-instruct-q4_K_M").stat().st_size
    assert big["details"]["parameter_size"] == "72.7B" and big["context_length"] == 4096
    assert lines(so, "load_tensors: offloaded 60/81 layers to GPU")


def test_flash_attention_warning_when_the_model_cannot(start):
    so = start(env={"OLLAMA_FLASH_ATTENTION": "1"})
    chat(so, "qwen2.5:32b-instruct-q4_0", "hi", options={"num_predict": 1})
    warn = lines(so, 'msg="flash attention enabled but not supported by model"')
    assert len(warn) == 1 and "level=WARN" in warn[0]
    chat(so, "tiny", "hi", options={"num_predict": 1})
    assert lines(so, "flash_attn    = 0") and lines(so, "flash_attn    = 1")
    fa = {t["model"]: t["flash_attention"] for t in so.truth() if t["kind"] == "generate"}
    assert fa == {"qwen2.5:32b-instruct-q4_0": False, "tiny:latest": True}


def test_max_loaded_models_evicts_least_recently_used(start):
    so = start(env={"OLLAMA_MAX_LOADED_MODELS": "2"})
    for m in ("tiny", "qwen2.5:32b-instruct-q4_0", "tiny", "qwen2.5:32b-instruct-q4_K_M"):
        post(so, "/api/generate", model=m)
    assert {m["name"] for m in so.ps()} == {"tiny:latest", "qwen2.5:32b-instruct-q4_K_M"}


def test_num_parallel_queues_the_rest(start):
    so = start(models={"tiny": {"itl_s": 0.01}})  # OLLAMA_NUM_PARALLEL defaults to 1: one slot
    post(so, "/api/generate", model="tiny")
    go = threading.Barrier(2)

    def one(i: int) -> None:
        go.wait()
        chat(so, "tiny", f"question {i}", options={"num_predict": 30})

    ts = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    # Ordered by who got the slot first: two requests sent together arrive in either order.
    a, b = sorted((t for t in so.truth() if t["kind"] == "generate"), key=lambda t: t["first_token_mono"])
    assert b["first_token_mono"] >= a["end_mono"] - 0.01  # never generating at the same time
    if b["arrival_mono"] < a["first_token_mono"]:  # both arrived before the first one started answering
        assert b["queue_s"] > 0.1  # so the second waited for the slot (30 tokens × 10 ms)


def test_runner_that_dies_is_noticed_and_reloaded(start):
    so = start()
    post(so, "/api/generate", model="tiny")
    (runner,) = so.runner_pids()
    os.kill(runner, signal.SIGKILL)
    assert wait_for(lambda: so.ps() == [], 3)
    assert lines(so, 'msg="llama runner process no longer running"')
    out = chat(so, "tiny", "again", options={"num_predict": 1})
    assert out[-1]["load_duration"] > 0 and so.runner_pids() != [runner]


def test_load_timeout_is_a_stall_timeout(start):
    so = start(models={"tiny": {"load_s": 3.0}}, env={"OLLAMA_LOAD_TIMEOUT": "400ms"})
    t0 = time.monotonic()
    r = post(so, "/api/generate", model="tiny")
    assert r.status_code == 500
    assert r.json()["error"].startswith("timed out waiting for llama runner to start - progress")
    assert time.monotonic() - t0 < 2.5
    assert so.runner_pids() == [] and so.ps() == []
    assert "OLLAMA_LOAD_TIMEOUT:400ms" in lines(so, "server config")[0]


def test_broken_model_answers_500(start):
    so = start()
    r = post(so, "/api/chat", model="broken", messages=[{"role": "user", "content": "hi"}])
    assert r.status_code == 500 and r.json()["error"].startswith("llama runner process has terminated")
    assert so.runner_pids() == [] and so.ps() == []
    assert lines(so, 'level=ERROR') and wait_for(lambda: bool(lines(so, "| 500 |")))


# ---- names, listing ------------------------------------------------------------------------------
def test_names_resolve_case_insensitively_with_default_tag(start):
    so = start()
    for name in ("tiny", "TINY", "Tiny:Latest", "tiny:latest"):
        assert post(so, "/api/generate", model=name).status_code == 200, name
    assert [m["name"] for m in so.ps()] == ["tiny:latest"]
    show = post(so, "/api/show", model="QWEN2.5:72B-INSTRUCT-Q4_K_M").json()
    assert show["details"]["quantization_level"] == "Q4_K_M" and show["details"]["family"] == "qwen2"
    assert show["model_info"]["general.parameter_count"] == 72_706_203_648
    assert show["model_info"]["qwen2.block_count"] == 80 and show["model_info"]["qwen2.context_length"] == 32768
    assert f"FROM {so.blob_path('qwen2.5:72b-instruct-q4_K_M')}\n" in show["modelfile"]
    r = post(so, "/api/chat", model="nope", messages=[{"role": "user", "content": "x"}])
    assert r.status_code == 404 and r.json() == {"error": "model 'nope' not found"}
    assert post(so, "/api/show", model="nope").status_code == 404


def test_tags_list_real_blob_sizes_and_digests(start):
    so = start()
    tags = {m["name"]: m for m in httpx.get(f"{so.url}/api/tags").json()["models"]}
    assert {"qwen2.5:72b-instruct-q4_K_M", "qwen2.5:32b-instruct-q4_K_M", "qwen2.5:32b-instruct-q8_0",
            "qwen2.5:32b-instruct-q4_0", "tiny:latest", "broken:latest"} <= set(tags)
    for name, m in tags.items():
        blob = so.blob_path(name)
        assert m["size"] == blob.stat().st_size
        assert blob.name == "sha256-" + __import__("hashlib").sha256(blob.read_bytes()).hexdigest()
        assert len(m["digest"]) == 64 and m["modified_at"]
    assert tags["qwen2.5:32b-instruct-q8_0"]["details"]["quantization_level"] == "Q8_0"
    assert so.blob_path("tiny").read_bytes()[:4] == b"GGUF"


# ---- generation, cache, truth --------------------------------------------------------------------
def test_prompt_cache_counts_cached_tokens_in_prompt_eval_count(start):
    so = start(models={"tiny": {"prefill_s_per_token": 0.002}})
    text = " ".join(f"w{i}" for i in range(40))
    first = chat(so, "tiny", text, options={"num_predict": 2})[-1]
    second = chat(so, "tiny", text, options={"num_predict": 2})[-1]
    other = chat(so, "tiny", "something else entirely", options={"num_predict": 2})[-1]
    assert first["prompt_eval_count"] == second["prompt_eval_count"] == 52  # 12 template + 40 words
    assert other["prompt_eval_count"] == 15
    assert second["prompt_eval_duration"] < first["prompt_eval_duration"] / 5
    gens = [t for t in so.truth() if t["kind"] == "generate"]
    assert [(t["cached_tokens"], t["uncached_tokens"]) for t in gens] == [(0, 52), (51, 1), (12, 3)]
    assert second["total_duration"] >= second["prompt_eval_duration"] + second["eval_duration"]
    assert "load_duration" in second  # warm: small, but not zero (scheduler time)


def test_greedy_output_is_deterministic_and_quantizations_drift(start):
    so = start()
    text = "explain how a bicycle stays upright in plain words"

    def answer(model: str) -> str:
        out = chat(so, model, text, options={"num_predict": 48, "temperature": 0})
        return "".join(o["message"]["content"] for o in out)

    a, b = answer("qwen2.5:32b-instruct-q8_0"), answer("qwen2.5:32b-instruct-q8_0")
    c = answer("qwen2.5:32b-instruct-q4_0")
    assert a == b and len(a.split()) == 48
    assert a != c  # same weights, another quantization: greedy output drifts somewhere


def test_truth_jsonl_lines(start):
    so = start()
    post(so, "/api/generate", model="tiny")
    out = chat(so, "tiny", "the quick brown fox", options={"num_predict": 4})
    post(so, "/api/generate", model="tiny", keep_alive=0)
    kinds = [t["kind"] for t in so.truth()]
    assert kinds == ["load", "generate", "unload"]
    load, gen, _ = so.truth()
    assert load["loaded_at_arrival"] is False and load["loaded_during"] is True and load["load_s"] > 0
    assert load["runner_bytes_read"] == so.blob_path("tiny").stat().st_size
    assert gen["loaded_at_arrival"] is True and gen["loaded_during"] is False
    assert gen["arrival_mono"] < gen["first_token_mono"] < gen["end_mono"]
    assert gen["arrival_wall"] < gen["first_token_wall"] < gen["end_wall"]
    assert gen["prompt_head"] == "the quick brown fox" and gen["endpoint"] == "/api/chat"
    assert gen["eval_count"] == 4 == out[-1]["eval_count"] and len(gen["gaps_s"]) == 3
    assert gen["prefill_s"] >= gen["prefill_s_planned"] == pytest.approx(16 * 0.0005)
    assert gen["itl_s"] == 0.002 and gen["done_reason"] == "length"


def test_cold_blob_is_really_read(start):
    so = start()
    blob = so.blob_path("qwen2.5:32b-instruct-q4_K_M")
    fd = os.open(blob, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    post(so, "/api/generate", model="qwen2.5:32b-instruct-q4_K_M")
    read = lines(so, "scripted_runner: read ")
    assert read and f"read {blob.stat().st_size} bytes of {blob} in " in read[-1]
