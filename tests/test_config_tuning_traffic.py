"""Config tuning on the traffic of today's models: thinking on and off as two settings of one server (a request
option needs no restart), its first answer token and thinking in the report; a server that ignores ``think``
said; speculative decoding on the engine, its acceptance rate and its decode speed against no draft, with CIs."""

import html as htmllib
import json
import re

import pytest

from perfkit.cli import main


def _text(page) -> str:
    t = re.sub(r"<(style|script).*?</\1>", "", page.read_text(), flags=re.S)
    return htmllib.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", t)))


def _run(tmp_path, params: str):
    p = tmp_path / "p.yaml"
    p.write_text(params)
    results = tmp_path / "results"
    assert main(["run", str(p), "--results", str(results)]) == 0
    (run,) = [d for d in results.iterdir() if (d / "run.json").exists()]
    return run


def test_thinking_on_and_off_are_two_settings_and_the_first_answer_token_is_reported(tmp_path, fake_ollama):
    run = _run(tmp_path, f"name: think\nbackend: {{kind: ollama, url: '{fake_ollama.url}'}}\n"
                         "studies:\n  config_tuning:\n    model: thinker\n"
                         "    settings: [{think: false}, {think: true}]\n"
                         "    concurrency: [1]\n    requests: 6\n    num_predict: 8\n    prompt_words: 8\n")
    sent = [r.get("think") for r in fake_ollama.requests if r.get("model") == "thinker" and "messages" in r]
    assert False in sent and True in sent  # the option reached the server with each request
    figs = {f["key"]: f for f in json.loads((run / "config_tuning" / "figures.json").read_text())["figures"]}
    on, off = figs["config_tuning/ttfa/think=true/1"], figs["config_tuning/ttfa/think=false/1"]
    assert on["estimate"]["value"] > figs["config_tuning/ttft/think=true/1"]["estimate"]["value"]
    assert figs["config_tuning/thinking_tokens/think=true/1"]["estimate"]["value"] == 3
    assert off["estimate"]["value"] == pytest.approx(figs["config_tuning/ttft/think=false/1"]["estimate"]["value"])
    page = _text(run / "config_tuning.html")
    assert "Thinking" in page and "first answer token" in page and "was ignored" not in page
    events = [json.loads(x) for x in (run / "config_tuning" / "events.jsonl").read_text().splitlines()]
    assert not any(e["kind"] == "restart" for e in events)  # a request option is not a server setting


def test_a_server_that_ignores_think_is_said(tmp_path, fake_ollama):
    run = _run(tmp_path, f"name: ignores\nbackend: {{kind: ollama, url: '{fake_ollama.url}'}}\n"
                         "studies:\n  config_tuning:\n    model: ignores-think\n    settings: [{think: true}]\n"
                         "    concurrency: [1]\n    requests: 4\n    num_predict: 8\n    prompt_words: 8\n")
    assert "`think` was ignored" in (run / "config_tuning.html").read_text() or \
        "think was ignored" in _text(run / "config_tuning.html")


@pytest.mark.notebooks
def test_speculative_decoding_in_config_tuning_on_the_engine(tmp_path):
    run = _run(tmp_path, "name: spec\nbackend: {kind: embedded, settings: {num_thread: 2}}\n"
                         "studies:\n  config_tuning:\n    model: smollm2-135m-q8_0\n"
                         "    settings: [{}, {draft_model: smollm2-135m-q4_0, draft_max: 4}]\n"
                         "    concurrency: [1]\n    requests: 8\n    num_predict: 48\n    prompt_words: 16\n")
    figs = {f["key"]: f for f in json.loads((run / "config_tuning" / "figures.json").read_text())["figures"]}
    draft = "draft_model=smollm2-135m-q4_0, draft_max=4"
    acc = figs[f"config_tuning/draft_acceptance/{draft}/1"]["estimate"]
    assert 0 < acc["value"] <= 1 and acc["n"] >= 6
    assert "config_tuning/draft_acceptance/defaults/1" not in figs  # no draft ran there
    assert figs["config_tuning/decode_rate/defaults/1"]["estimate"]["value"] > 0
    page = _text(run / "config_tuning.html")
    assert "Speculative decoding" in page and "of the drafted tokens accepted" in page and "the same server without a draft" in page
    checks = [json.loads(x) for x in (run / "config_tuning" / "events.jsonl").read_text().splitlines()
              if '"setting_check"' in x]
    assert checks[-1]["checks"]["draft_model"]["status"] == "confirmed"


def test_speculative_acceptance_from_a_vllm_servers_counters_when_requests_carry_no_draft_counts(tmp_path):
    """vLLM streams no per-request draft counts; its /metrics count drafted and accepted tokens (this scripted one
    accepts 3 of every 4): config tuning's speculative line reads the rate from those counters over each series."""
    import yaml
    from scripted_vllm import ScriptedVllm

    with ScriptedVllm(max_num_seqs=2, token_gap_s=0.01, tokens=8) as v:
        run = _run(tmp_path, yaml.safe_dump({
            "name": "vllm-spec", "backend": {"kind": "vllm", "url": v.url},
            "sampling": {"interval_s": 0.05}, "telemetry": {"engine_interval_s": 0.05},
            "studies": {"config_tuning": {"model": v.model, "settings": [{}], "concurrency": [1, 2], "requests": 6,
                                          "rates_rps": [], "num_predict": 8, "prompt_words": 8}}}))
        assert v.metrics_reads > 0
    figs = {f["key"]: f for f in json.loads((run / "config_tuning" / "figures.json").read_text())["figures"]}
    assert not any("/draft_acceptance/" in k for k in figs)  # no request said what it drafted
    for clients in (1, 2):
        acc = figs[f"config_tuning/series_draft_acceptance/defaults/{clients}"]
        assert acc["estimate"]["value"] == pytest.approx(0.75, abs=0.01)
        assert re.search(r"\d+ of \d+ drafted tokens over the series'", acc["estimate"]["note"])
    page = _text(run / "config_tuning.html")
    line = page[page.index("Speculative decoding ("):][:600]
    assert "at 1 client" in line and "counters" in line and "defaults : 75%" in line.replace("**", "")
    assert "of the drafted tokens accepted" in line and "decode speed" not in line
