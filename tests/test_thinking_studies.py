"""Thinking in the studies beyond config tuning: the cold start study's split of the first request shows a thinking
model's thinking (its first answer token beside TTFT, the thinking time and tokens) and nothing new for a model that
does not think; ``think`` is one of its parameters, checked like the others; ``perfkit tune`` searches ``think`` as a
request option (no restart), judges a TTFT objective by the first answer token, and deploys it as something the
client sends."""

import csv
import html as htmllib
import json
import re

import pytest

from perfkit.cli import main
from perfkit.core.errors import ConfigError


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


def _cold_start(url: str, model: str, extra: str = "") -> str:
    return (f"name: cold-think\nbackend: {{kind: ollama, url: '{url}'}}\nstudies:\n  cold_start:\n    model: {model}\n"
            "    states: [cold_memory, warm]\n    reps: 2\n    strategies: [none]\n    strategy_reps: 1\n"
            "    idle_gaps_s: [0.1]\n    num_predict: 8\n    prompt_words: 8\n" + extra)


def _figures(run, study: str) -> dict:
    return {f["key"]: f for f in json.loads((run / study / "figures.json").read_text())["figures"]}


def _state_table(run) -> list[dict]:
    with open(run / "tables" / "cold_start" / "latency-by-cache-state.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_the_cold_start_split_shows_a_thinking_models_thinking(tmp_path, fake_ollama):
    run = _run(tmp_path, _cold_start(fake_ollama.url, "thinker", "    think: true\n"))
    sent = [r.get("think") for r in fake_ollama.requests if r.get("model") == "thinker"
            and (r.get("options") or {}).get("num_predict") == 8]
    assert len(sent) >= 5 and all(t is True for t in sent)  # every measured request carried the parameter
    figs = _figures(run, "cold_start")
    for state in ("cold_memory", "warm"):
        ttfa = figs[f"cold_start/ttfa/{state}"]["estimate"]["value"]
        thinking = figs[f"cold_start/thinking_time/{state}"]["estimate"]["value"]
        assert figs[f"cold_start/thinking_tokens/{state}"]["estimate"]["value"] == 3
        assert thinking >= 2 * 0.02  # three thoughts 20 ms apart before the first answer token
        assert ttfa >= thinking
        assert figs[f"cold_start/ttfa/{state}"]["workload"]["think"] == "true"  # think on and off don't compare
    rows = {r["cache state"]: r for r in _state_table(run)}
    assert {"TTFT (first thought)", "first answer token", "decode: thinking", "decode: answer",
            "thinking tokens"} <= set(rows["cold_memory"])
    assert "decode" not in rows["cold_memory"] and rows["cold_memory"]["thinking tokens"].startswith("3")
    page = _text(run / "cold_start.html")
    assert "Thinking (asked with think: true)" in page and "cold_memory first answer token" in page
    assert "of thinking" in page and "client first answer token" in page and "was ignored" not in page
    assert "{" not in page.split("The answer")[1].split("Provenance")[0]  # no reprs in what a user reads


def test_a_model_that_does_not_think_keeps_the_split_it_had(tmp_path, fake_ollama):
    """``think: true`` to a model that ignores it: the split is the plain one, and the report says think was ignored."""
    run = _run(tmp_path, _cold_start(fake_ollama.url, "ignores-think", "    think: true\n"))
    figs = _figures(run, "cold_start")
    assert not any("/ttfa/" in k or "/thinking" in k for k in figs)
    (row, _) = _state_table(run)
    assert list(row)[:8] == ["cache state", "n", "e2e", "TTFT", "load", "prefill", "decode", "overhead"]
    page = _text(run / "cold_start.html")
    assert "think was ignored" in page.replace("`", "") and "first answer token" not in page


@pytest.mark.parametrize("value, ok", [("high", "high"), (False, False), ("TRUE", True), ("hard", None), (2, None)])
def test_think_is_a_cold_start_parameter_checked_like_the_others(tmp_path, value, ok):
    from perfkit.studies.params import load

    p = tmp_path / "p.yaml"
    p.write_text("name: x\nstudies:\n  cold_start:\n    model: m\n    think: " + json.dumps(value) + "\n")
    if ok is None:
        with pytest.raises(ConfigError, match=r"p.yaml: studies.cold_start.think: .*allowed: true, false, low, "
                                              r"medium or high"):
            load(p, check_models=False)
    else:
        assert load(p, check_models=False).studies.cold_start.think == ok


# ---- perfkit tune: think as a request option in the search space -----------------------------------------------

THINKER = "thinker:latest"


def test_think_null_in_the_space_is_both_values_and_a_ttft_objective_reads_the_first_answer_token():
    from perfkit.studies.tuning import TuningParams, search_space
    from perfkit.studies.tuning.params import objective_metric

    c = TuningParams(model="m", objective="ttft", space={"think": None, "OLLAMA_NUM_PARALLEL": [1, 2]})
    assert search_space(c, "ollama") == {"think": [False, True], "OLLAMA_NUM_PARALLEL": [1, 2]}
    assert objective_metric(c)[0] == "ttfa"
    assert objective_metric(TuningParams(model="m", objective="ttft"))[0] == "ttft"  # nothing changes without think
    assert objective_metric(TuningParams(model="m", objective="rate", space={"think": None}))[0] == "request_rate"
    with pytest.raises(ValueError, match=r"think='hard' is not allowed; allowed: true, false, low, medium or high"):
        TuningParams(model="m", space={"think": ["hard"]})


def test_a_think_only_tune_still_needs_a_server_perfkit_can_restart(tmp_path):
    from perfkit.studies.params import load
    from perfkit.studies.tuning import Tuning

    p = tmp_path / "p.yaml"
    p.write_text("name: x\nbackend: {kind: ollama, url: 'http://127.0.0.1:9'}\nstudies:\n  tuning:\n"
                 "    model: m\n    space: {think: null}\n")
    (problem,) = Tuning().preflight(load(p, check_models=False))
    assert problem.startswith("studies.tuning: the proof") and "backend.restart_command" in problem


def test_tune_searches_think_without_a_restart_and_deploys_it_as_a_request_option(tmp_path, scripted_models_dir):
    """A model that thinks 6 tokens (20 ms each) before it answers. Today it thinks (baseline think: true); with a
    TTFT objective tune judges each candidate by its first answer token, so think=false must win, and the files to
    deploy must say that the client sends it (no server setting can)."""
    import yaml
    from scripted_ollama.harness import ScriptedOllama
    from perfkit.studies.base import StudyContext
    from perfkit.studies.tuning import analyze, pair_rows

    models = {THINKER: {"thinking_tokens": 6, "itl_s": 0.02, "load_s": 0.05, "prefill_s_per_token": 0.0002}}
    with ScriptedOllama(tmp_path / "ollama", models_dir=scripted_models_dir, models=models) as so:
        p = tmp_path / "tune.yaml"
        p.write_text(yaml.safe_dump({"name": "tune-think", "backend": {
            "kind": "ollama", "url": so.url, "restart_command": so.restart_command, "ready_timeout_s": 30},
            "studies": {"tuning": {"model": THINKER, "objective": "ttft", "concurrency": 1,
                                   "space": {"think": None}, "baseline": {"think": True}, "candidates": 2,
                                   "requests": 6, "looks": 2, "replicates": 2, "proof_requests": 4, "cold_reps": 1,
                                   "capacity_steps": 0, "num_predict": 8, "prompt_words": 8,
                                   "slo": {"ttft_s": 5}}}}, sort_keys=False))
        assert main(["tune", str(p), "--results", str(tmp_path / "results")]) == 0
        thought = {t.get("thinking_tokens") for t in so.truth() if t.get("kind") == "generate"}
        assert {0, 6} <= thought  # both values reached the server, with every request
    (run,) = [d for d in (tmp_path / "results").iterdir() if (d / "run.json").exists()]
    events = [json.loads(x) for x in (run / "tuning" / "events.jsonl").read_text().splitlines()]
    cands = [e for e in events if e["kind"] == "tuning_candidate" and e.get("look") == 1]
    assert {e["key"] for e in cands} == {"think=false", "think=true"}
    assert all(e["checks"]["think"]["status"] == "confirmed" for e in cands)
    # Candidates that differ in a request option only are never restarted into (the proof's cold starts restart).
    assert not any(e["kind"] == "restart" for e in events)
    res = analyze(StudyContext(p, run, "tuning", check_models=False))
    assert res.winner == "think=false" and res.objective_tag == "ttfa"
    on, off = res.figures["tuning/ttfa/think=true"], res.figures["tuning/ttfa/think=false"]
    assert on.value - off.value >= 5 * 0.02  # the thoughts before the first answer token
    rows = {r.what: r.row for r in pair_rows(res)}
    assert "time to first answer token (1 client)" in rows
    env = (run / "tuning" / "tuned" / "ollama.env").read_text()
    assert "think=false: part of the tuned setting, but a request option" in env
    assert "your clients must send it with every request" in env
    assert not any(line.startswith(("think", "OLLAMA_THINK")) for line in env.splitlines())
    assert "think" not in (run / "tuning" / "tuned" / "llama-server.sh").read_text().splitlines()[-1].replace(THINKER, "")
    page = _text(run / "tuning.html")
    line = page[page.index("What thinking costs at 1 client"):][:800]
    assert re.search(r"think=false [\d.]+ ms .*, no thinking; think=true [\d.]+ ms .* of thinking \(TTFT, its first", line)
    assert "think ∈ {false, true}" in page and "the files leave it out" in page
