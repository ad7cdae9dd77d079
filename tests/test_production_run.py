"""`perfkit run params/ollama-qwen2.5.yaml`, pointed at the scripted local Ollama: every study as
complete as on the embedded engine (samples, settings confirmed or not applied, cold_disk with a load
floor, the server's own timeline, cold_server and scheme A, a partial-offload warning), and no secret
anywhere under the run directory."""

import html as htmllib
import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import perfkit_run
from scripted_ollama.harness import ScriptedOllama

pytestmark = pytest.mark.notebooks
ROOT = Path(__file__).resolve().parent.parent
SECRET = "sekret-token-8d41f"


def text(page: Path) -> str:
    t = re.sub(r"<(style|script).*?</\1>", "", page.read_text(), flags=re.S)
    return htmllib.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", t)))


@pytest.fixture(scope="module")
def production_run(tmp_path_factory, scripted_models_dir):
    tmp = tmp_path_factory.mktemp("prod")
    with ScriptedOllama(tmp / "ollama", models_dir=scripted_models_dir,
                        env={"OLLAMA_NUM_PARALLEL": "1", "OLLAMA_KEEP_ALIVE": "5m"}) as so:
        p = yaml.safe_load((ROOT / "params" / "ollama-qwen2.5.yaml").read_text())
        b = p["backend"]
        b.update(url=so.url, restart_command=so.restart_command, server_log={"file": str(so.log_path)},
                 ready_timeout_s=30, headers={"Authorization": f"Bearer {SECRET}"})
        p["sampling"] = {"interval_s": 0.05, "idle_baseline_s": 0.2}
        p["timeouts"] = {"request_s": 60, "stall_s": 30}
        s = p["studies"]
        s["cold_start"].update(reps=2, num_predict=8, prompt_words=24, strategy_reps=1, keep_alive_s=2,
                               idle_gaps_s=[1], keep_warm_interval_s=0.5, scheme_a_delays_s=[0], scheme_a_reps=1)
        s["model_size"].update(reps=2, cold_reps=1, num_predict=8, prompt_words=24)
        s["quantization"].update(reps=2, drift_prompts=2, num_predict=8, prompt_words=24)
        s["config_tuning"].update(concurrency=[1, 2], requests=3, num_predict=8, prompt_words=24, rates_rps=[4],
                                  rate_requests=3)
        s["config_tuning"]["settings"] = [{"OLLAMA_NUM_PARALLEL": 1}, {"OLLAMA_NUM_PARALLEL": 2, "OLLAMA_FLASH_ATTENTION": 1}]
        s["config_tuning"]["model"] = "qwen2.5:32b-instruct-q4_0"  # scripted: flash attention not supported
        s["tuning"].update(concurrency=2, space={"OLLAMA_NUM_PARALLEL": [1, 2]}, context_length=None, candidates=2,
                           requests=4, looks=1, replicates=1, proof_requests=3, cold_reps=1, capacity_steps=0,
                           budget_s=None, num_predict=8, prompt_words=24)
        s["workload"].update(model="qwen2.5:32b-instruct-q4_0", users=[2], requests=4, num_predict=8,
                             settings=[{"OLLAMA_NUM_PARALLEL": 2}],
                             workload={"kind": "sessions", "file": "builtin:chat", "max_turns": 2, "think_s": 0.1})
        yield so, perfkit_run(p, tmp, name="ollama-scripted.yaml", timeout_s=900)
    assert not so.leftover_processes()  # the serve and every runner it ever had are gone


def test_reports_are_as_complete_as_on_the_embedded_engine(production_run):
    so, run_dir = production_run
    cold = text(run_dir / "cold_start.html")
    assert "No samples recorded" not in cold and "needs a local engine" not in cold
    assert "Load floor:" in cold and "unknown, because" not in cold.split("Load floor:")[1][:60]
    assert "After a server restart" in cold and "Scheme A" in cold and "the preload had finished before it in" in cold
    assert "runner started in" in cold and "server config" in cold  # the server's own timeline
    assert "Partial offload" in cold  # the scripted 72B has 60 of 81 layers on the "GPU"
    samples = [json.loads(x) for x in (run_dir / "cold_start" / "samples.jsonl").read_text().splitlines()]
    assert any(s.get("server_processes", 0) >= 2 for s in samples)  # serve + its runner, sampled
    tuning = text(run_dir / "config_tuning.html")
    assert "confirmed" in tuning and "not applied" in tuning and "not supported" in tuning
    size = text(run_dir / "model_size.html")
    assert "Partial offload" in size and "n/a" not in size.split("What the measurements say")[1][:400]
    quant = text(run_dir / "quantization.html")
    assert "agrees with the reference" in quant


def test_the_users_settings_are_restored(production_run):
    so, _ = production_run
    last = so.log_text().split('msg="server config"')[-1]
    assert "OLLAMA_NUM_PARALLEL:1 " in last or "OLLAMA_NUM_PARALLEL:1]" in last


def test_no_secret_anywhere_under_the_run_directory(production_run):
    _, run_dir = production_run
    leaks = [str(f) for f in run_dir.rglob("*") if f.is_file() and SECRET.encode() in f.read_bytes()]
    assert not leaks
