"""`perfkit tune`: its parameters and refusals, the files it writes, and whole tunes against servers whose best
setting is known — a scripted Ollama (known slots and speeds) and the real embedded engine."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import llama_server_pids
from perfkit.core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _params(tmp_path, tuning: dict, backend: dict | None = None) -> Path:
    p = tmp_path / "tune.yaml"
    p.write_text(yaml.safe_dump({"name": "tune", "backend": backend or {"kind": "embedded"},
                                 "studies": {"tuning": tuning}}, sort_keys=False))
    return p


def test_a_setting_outside_the_vocabulary_is_refused_naming_the_key(tmp_path):
    from perfkit.studies.params import load

    p = _params(tmp_path, {"model": "smollm2-135m-q4_1", "space": {"OLLAMA_NUM_PARALEL": [1, 2]}})
    with pytest.raises(ConfigError, match=r"studies.tuning.space.*OLLAMA_NUM_PARALEL.*allowed: OLLAMA_FLASH_ATTENTION"):
        load(p, check_models=False)
    p = _params(tmp_path, {"model": "smollm2-135m-q4_1", "space": {"OLLAMA_KV_CACHE_TYPE": ["q2"]}})
    with pytest.raises(ConfigError, match=r"OLLAMA_KV_CACHE_TYPE='q2' is not allowed; allowed: f16 \| q8_0 \| q4_0"):
        load(p, check_models=False)


def test_a_server_perfkit_cannot_restart_is_refused_before_any_work(tmp_path, scripted_models_dir):
    """A user's Ollama without a restart command: `perfkit tune` names the key to set and measures nothing."""
    from scripted_ollama.harness import ScriptedOllama

    with ScriptedOllama(tmp_path / "ollama", models_dir=scripted_models_dir) as so:
        p = _params(tmp_path, {"model": MODEL}, {"kind": "ollama", "url": so.url})
        r = subprocess.run([sys.executable, "-m", "perfkit", "tune", str(p), "--results", str(tmp_path / "results")],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and "nothing was measured" in r.stderr and "studies.tuning" in r.stderr, r.stderr
        assert "restart_command" in r.stderr and "Traceback" not in r.stderr
        assert not so.truth()  # not one request reached the server


def test_the_space_is_the_kinds_own_narrowed_by_the_user_and_the_context_users_need():
    from perfkit.studies.tuning import TuningParams, search_space

    assert search_space(TuningParams(model="m"), "embedded") == {
        "OLLAMA_NUM_PARALLEL": [1, 2, 4], "OLLAMA_FLASH_ATTENTION": [0, 1], "OLLAMA_KV_CACHE_TYPE": ["f16", "q8_0"],
        "num_batch": [64, 256, 512]}
    # A space given is the space: its settings only, the kind's values where it names none.
    c = TuningParams(model="m", space={"OLLAMA_NUM_PARALLEL": [2, 8], "OLLAMA_FLASH_ATTENTION": None},
                     context_length=8192)
    assert search_space(c, "embedded") == {"OLLAMA_NUM_PARALLEL": [2, 8], "OLLAMA_FLASH_ATTENTION": [0, 1],
                                            "OLLAMA_CONTEXT_LENGTH": [8192]}
    c = TuningParams(model="m", space={"OLLAMA_CONTEXT_LENGTH": [2048, 4096, 16384]}, context_length=4096)
    assert search_space(c, "ollama") == {"OLLAMA_CONTEXT_LENGTH": [4096, 16384]}
    assert "num_batch" not in search_space(TuningParams(model="m"), "ollama")  # a per-request option there


def test_the_deploy_files_carry_the_settings_and_the_timeout_the_cold_start_needs(tmp_path):
    from perfkit.studies.tuning import deploy as tuning_deploy
    from perfkit.studies.tuning import TuningResult
    from perfkit.analysis.figures import FigureSet

    res = TuningResult("tuning", FigureSet(), pd.DataFrame(), {}, winner="NUM_PARALLEL=4, FLASH_ATTENTION=1",
                       winner_settings={"OLLAMA_NUM_PARALLEL": 4, "OLLAMA_FLASH_ATTENTION": 1, "num_batch": 256},
                       cold={"cold_e2e": object(), "worst_cold_s": 41.3, "proxy_read_timeout_s": 130})
    files = tuning_deploy.write(tmp_path / "run" / "tuning" / "tuned", res, "ollama", "20261205-run", "qwen2.5:32b")
    out = tmp_path / "run" / "tuning" / "tuned"
    env = (out / "ollama.env").read_text()
    assert "OLLAMA_NUM_PARALLEL=4\n" in env and "OLLAMA_FLASH_ATTENTION=1\n" in env and "OLLAMA_KEEP_ALIVE=-1" in env
    assert "num_batch" not in env  # a per-request option, not the server's environment
    assert "run 20261205-run" in env.splitlines()[0]
    assert 'Environment="OLLAMA_NUM_PARALLEL=4"' in (out / "ollama.service.d" / "override.conf").read_text()
    assert '  OLLAMA_NUM_PARALLEL: "4"' in (out / "docker-compose.environment.yml").read_text()
    cmd = (out / "llama-server.sh").read_text()
    assert "-np 4" in cmd and "-fa on" in cmd and "-b 256 -ub 256" in cmd
    assert "proxy_read_timeout 130s;" in (out / "nginx.conf").read_text()
    assert files["ollama.env"] == "tuning/tuned/ollama.env"


# ---- whole tunes against servers whose best is known -----------------------------------------------------------

def _tune(tmp_path, so, tuning: dict, *, extra_args=(), background=False):
    p = _params(tmp_path, tuning, {"kind": "ollama", "url": so.url, "restart_command": so.restart_command,
                                   "ready_timeout_s": 30})
    cmd = [sys.executable, "-m", "perfkit", "tune", str(p), "--results", str(tmp_path / "results"), *extra_args]
    if background:
        return p, subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (run_dir,) = [d for d in (tmp_path / "results").iterdir() if (d / "run.json").exists()]
    return p, run_dir, r.stdout


def _result(params: Path, run_dir: Path):
    from perfkit.studies.base import StudyContext
    from perfkit.studies.tuning import analyze

    return analyze(StudyContext(params, run_dir, "tuning", check_models=False))


MODEL = "tiny:latest"
SLOTS_MATTER = {MODEL: {"itl_s": 0.02, "parallel_itl_penalty": 0.25, "load_s": 0.05, "prefill_s_per_token": 0.0002}}


def test_tune_picks_the_setting_a_server_of_known_capacity_is_fastest_with(tmp_path, scripted_models_dir):
    """Slots are the only thing that matters on this server: 4 clients on 1 slot queue (about 6 requests/s), on 4
    slots they decode together (about 14 requests/s). Tune must call NUM_PARALLEL=4, beat the baseline with it,
    and its measured rate must bracket the server's true capacity."""
    from scripted_ollama.harness import ScriptedOllama
    from perfkit.studies import tuning as tuning_mod

    with ScriptedOllama(tmp_path / "ollama", models_dir=scripted_models_dir, models=SLOTS_MATTER,
                        env={"OLLAMA_NUM_PARALLEL": "1"}) as so:
        params, run_dir, out = _tune(tmp_path, so, {
            "model": MODEL, "concurrency": 4, "space": {"OLLAMA_NUM_PARALLEL": [1, 2, 4]},
            "baseline": {"OLLAMA_NUM_PARALLEL": 1}, "candidates": 3, "requests": 16, "looks": 3, "replicates": 4,
            "proof_requests": 8, "cold_reps": 1, "num_predict": 8, "prompt_words": 8, "slo": {"ttft_s": 5, "tpot_s": 1},
            "rate_requests": 40})
    res = _result(params, run_dir)
    # The true best leads; the clearly worse one slot is beaten (a called winner, or NUM_PARALLEL=2 not separated).
    assert res.winner.startswith("NUM_PARALLEL=4"), res.candidates.to_string()
    assert "NUM_PARALLEL=1" not in res.claim.not_separated, res.candidates.to_string()
    rate = res.figures[f"tuning/request_rate/{res.winner}"]
    # The server's capacity at 4 slots: 4 requests in flight, each 8 tokens at 20 ms × (1 + 3 × 0.25) per token.
    capacity = 4 / (8 * 0.02 * 1.75)
    assert rate.estimate.lo <= capacity * 1.15 and rate.estimate.hi >= capacity * 0.6, (rate.text(), capacity)
    # The open loop brackets it: sustained at a rate at or below the capacity, not at one at or above it.
    top, above, tried = res.capacity
    verdicts = tuning_mod.rate_verdicts(tuning_mod.TuningParams(**yaml.safe_load(params.read_text())["studies"]["tuning"]), res.trials, res.winner, 4)
    assert tried >= 2 and (math.isfinite(top) or math.isfinite(above)), (res.capacity, verdicts)
    assert (math.isnan(top) or top <= capacity * 1.15) and (math.isnan(above) or above >= capacity * 0.85), \
        (res.capacity, verdicts)
    proof = {r.what: r.row for r in tuning_mod.pair_rows(res)}
    assert proof["request rate at 4 clients"].verdict == "improved"
    assert "tuned: NUM_PARALLEL=4" in out and "to deploy:" in out
    assert (run_dir / "tuning" / "tuned" / "ollama.env").read_text().count("OLLAMA_NUM_PARALLEL=4") == 1
    assert not so.leftover_processes()


def test_tune_says_so_when_no_setting_matters(tmp_path, scripted_models_dir):
    """Flash attention changes nothing on this server (no prefill to speed up): tune must not call a winner over
    an equal one, and the proof must not call the tuned settings better than the baseline."""
    from scripted_ollama.harness import ScriptedOllama
    from perfkit.studies import tuning

    models = {MODEL: {"itl_s": 0.01, "fa_prefill_factor": 1.0, "prefill_s_per_token": 0.0}}
    with ScriptedOllama(tmp_path / "ollama", models_dir=scripted_models_dir, models=models) as so:
        params, run_dir, _ = _tune(tmp_path, so, {
            "model": MODEL, "concurrency": 1, "space": {"OLLAMA_FLASH_ATTENTION": [0, 1]},
            "baseline": {"OLLAMA_FLASH_ATTENTION": 0}, "candidates": 2, "requests": 10, "looks": 2,
            "replicates": 3, "proof_requests": 6, "cold_reps": 1, "num_predict": 8, "prompt_words": 8})
    res = _result(params, run_dir)
    assert not res.claim.called
    text = tuning.conclusions(res)
    assert "is the best" not in text and "Run **" not in text
    rows = {r.what: r.row for r in tuning.pair_rows(res)}
    if rows["request rate at 1 client"].verdict != "improved":
        assert "no setting is shown better" in text


@pytest.mark.engine
def test_a_tune_killed_mid_search_resumes_without_measuring_anything_twice(tmp_path):
    """`kill -9` of perfkit tune during the search on the real engine; `perfkit tune --resume` finishes it: every
    series measured once, the winner proven and written out, no server left running."""
    p = _params(tmp_path, {"model": "smollm2-135m-q4_1", "concurrency": 2,
                           "space": {"OLLAMA_NUM_PARALLEL": [1, 2], "OLLAMA_FLASH_ATTENTION": [0, 1]},
                           "candidates": 3, "requests": 6, "looks": 2, "replicates": 2, "proof_requests": 4,
                           "cold_reps": 1, "num_predict": 6, "prompt_words": 8},
                {"kind": "embedded", "settings": {"num_thread": 2}})
    results = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "perfkit", "tune", str(p), "--results", str(results)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    events = None
    while time.monotonic() < deadline:
        found = list(results.glob("*/tuning/events.jsonl"))
        if found and found[0].read_text().count('"tuning_candidate"') >= 1 and \
                found[0].with_name("trials.jsonl").exists() and found[0].with_name("trials.jsonl").read_text().count("\n") >= 8:
            events = found[0]
            break
        time.sleep(0.2)
    assert events is not None, "the search never started"
    os.kill(proc.pid, signal.SIGKILL)  # `kill -9` of perfkit: its kernel and servers must follow
    proc.wait()
    deadline = time.monotonic() + 30
    while llama_server_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not llama_server_pids()  # nothing of the killed run outlives it
    run_dir = events.parent.parent
    r = subprocess.run([sys.executable, "-m", "perfkit", "tune", str(p), "--resume", str(run_dir)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    trials = [json.loads(x) for x in (run_dir / "tuning" / "trials.jsonl").read_text().splitlines() if x.strip()]
    done = {}
    for t in trials:
        if t.get("series", "").startswith("cand/") and not t.get("interrupted"):
            done.setdefault((t["series"], t.get("attempt", 0), t["trial_id"]), 0)
            done[(t["series"], t.get("attempt", 0), t["trial_id"])] += 1
    assert max(done.values()) == 1  # no request of a completed attempt measured twice
    res = _result(p, run_dir)
    assert res.winner and (run_dir / "tuning" / "tuned" / "llama-server.sh").exists()
    assert len({k for k in res.candidates["setting"]}) == len(res.candidates)  # one row per candidate
    assert not llama_server_pids()
