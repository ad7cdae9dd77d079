"""The vllm kind, one folder (perfkit/kinds/vllm/), against a scripted vLLM of known capacity: recognised by its
own routes, its version and model from its endpoints, its prefix cache reset when a session opens, its
``/metrics`` read into the same columns as every other server's; and config tuning and the workload study run
on it end to end with its queue, KV cache, prefix-cache hits and speculative acceptance in the report."""

import html as htmllib
import json
import re

import pytest

from perfkit import kinds
from perfkit.client.backends import Sampling
from perfkit.sampling import exposition
from scripted_vllm import ScriptedVllm


@pytest.fixture
def vllm():
    with ScriptedVllm(max_num_seqs=2, token_gap_s=0.01) as v:
        yield v


def test_a_vllm_server_is_recognised_and_described_by_its_own_endpoints(vllm):
    assert "vllm" in kinds.names()
    assert kinds.probe("vllm", vllm.url, {}, "backend.url") == f"a vLLM server at {vllm.url} serving qwen2.5-0.5b"
    b = kinds.create("vllm", vllm.url)
    try:
        assert b.version() == "0.9.2"
        f = b.model_facts("qwen2.5-0.5b")
        assert f.extra["max_model_len"] == 4096 and f.extra["root"] == "/models/qwen2.5-0.5b"
        assert b.metrics_urls(["qwen2.5-0.5b"]) == [f"{vllm.url}/metrics"]
        assert b.capabilities.cached_tokens and not b.capabilities.residency
        r = b.generate("qwen2.5-0.5b", "hello", Sampling(num_predict=6))
        assert r.ok and r.output_tokens == 6
        assert b.control.reset_prefix_cache() == "reset" and vllm.resets == 1
    finally:
        b.close()


def test_its_metrics_become_the_server_columns_every_report_reads(vllm):
    b = kinds.create("vllm", vllm.url)
    b.generate("qwen2.5-0.5b", "hello", Sampling(num_predict=6))
    b.generate("qwen2.5-0.5b", "hello", Sampling(num_predict=6))  # the same first message: a prefix-cache hit
    b.close()
    conv = exposition.Converter("engine", 0.5)
    rows = conv.rows(1, exposition.parse(vllm.metrics_text()))
    (server,) = [r for r in rows if "server_prompt_tokens_total" in r]
    assert server["server_tokens_predicted_total"] == 12
    assert server["server_prefix_cache_hits_tokens_total"] == 10 and server["server_prefix_cache_queries_tokens_total"] == 40
    assert server["server_spec_accepted_tokens_total"] / server["server_spec_draft_tokens_total"] == pytest.approx(0.75)
    assert server["server_kv_cache_usage_ratio"] == 0.0 and server["server_requests_waiting"] == 0


def test_a_vllm_section_takes_its_own_keys_only(tmp_path):
    from perfkit.core.errors import ConfigError
    from perfkit.studies import params

    p = tmp_path / "p.yaml"
    p.write_text("name: x\nbackend: {kind: vllm, url: 'http://h:8000', restart_command: [x]}\n"
                 "studies: {workload: {model: m, workload: {kind: sessions, file: 'builtin:chat'}}}\n")
    with pytest.raises(ConfigError, match=r"backend: restart_command is used only with kind ollama"):
        params.load(p)
    p.write_text("name: x\nbackend: {kind: vllm}\nstudies: {workload: {model: m, workload: {kind: sessions, "
                 "file: 'builtin:chat'}}}\n")
    with pytest.raises(ConfigError, match=r"backend kind 'vllm' needs a url"):
        params.load(p)


def _text(page) -> str:
    t = re.sub(r"<(style|script).*?</\1>", "", page.read_text(), flags=re.S)
    return htmllib.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", t)))


@pytest.mark.notebooks
def test_config_tuning_and_the_workload_study_run_on_vllm_with_its_metrics(tmp_path):
    from conftest import perfkit_run

    with ScriptedVllm(max_num_seqs=2, token_gap_s=0.02, tokens=8) as v:
        p = {"name": "vllm-scripted", "backend": {"kind": "vllm", "url": v.url},
             "sampling": {"interval_s": 0.05}, "telemetry": {"engine_interval_s": 0.05},
             "studies": {
                 "config_tuning": {"model": v.model, "settings": [{}], "concurrency": [1, 4], "requests": 8,
                                   "rates_rps": [], "num_predict": 8, "prompt_words": 24},
                 "workload": {"model": v.model, "users": [4], "settings": [{}], "requests": 8, "num_predict": 8,
                              "workload": {"kind": "sessions", "file": "builtin:chat", "max_turns": 2}}}}
        run_dir = perfkit_run(p, tmp_path, name="vllm.yaml", timeout_s=600)
        assert v.resets == 2  # one per study's session: no run measures what an earlier one cached
        assert v.max_running <= 2
    events = [json.loads(x) for x in (run_dir / "config_tuning" / "events.jsonl").read_text().splitlines()]
    assert any(e.get("kind") == "prefix_cache_reset" and e.get("result") == "reset" for e in events)
    cfg = _text(run_dir / "config_tuning.html")
    assert "requests queued" in cfg and "KV cache used" in cfg and "draft tokens accepted" in cfg
    assert "75%" in cfg  # 3 of every 4 drafted tokens accepted, as the server counted them
    wl = _text(run_dir / "workload.html")
    assert "prefix-cache hits" in wl or "from the server's cache" in wl
    manifest = json.loads((run_dir / "config_tuning" / "manifest.json").read_text())
    assert manifest["backend"]["backend"] == "vllm" and manifest["backend"]["version"] == "0.9.2"
