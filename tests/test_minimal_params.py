"""A parameter file with no optional section (each study's required keys only, every default taken) runs every
study to a report: on the embedded engine, which perfkit starts, and against the scripted Ollama, which it can
neither restart nor read the log of. What a study cannot measure at that shape its report says in a
sentence; nothing raises."""

import html as htmllib
import json
import re
from pathlib import Path

import pytest

from conftest import llama_server_pids, perfkit_run
from scripted_ollama.harness import ScriptedOllama
from perfkit.servers.nginx import nginx_binary

pytestmark = pytest.mark.notebooks
ROOT = Path(__file__).resolve().parent.parent


def _text(page: Path) -> str:
    t = re.sub(r"<(style|script).*?</\1>", "", page.read_text(), flags=re.S)
    return htmllib.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", t)))


def _every_study_reported(run_dir: Path, studies: list[str]) -> None:
    info = json.loads((run_dir / "run.json").read_text())
    assert {s: v["status"] for s, v in info["studies"].items()} == {s: "done" for s in studies}
    for study in studies:
        raw = (run_dir / f"{study}.html").read_text()
        page = _text(run_dir / f"{study}.html")
        assert "What the measurements say" in page and "Provenance" in page, study
        assert "Traceback" not in page and "output_error" not in raw and "output_stderr" not in raw, study
        assert " nan " not in page.lower(), study
        assert (run_dir / study / "figures.json").exists()


def test_defaults_on_the_embedded_engine(tmp_path):
    studies = {"cold_start": {"model": "smollm2-135m-q4_1"},
               "model_size": {"models": ["smollm2-135m-q4_1", "smollm2-135m-q4_0"]},
               "quantization": {"models": ["smollm2-135m-q8_0", "smollm2-135m-q4_0"]},
               "config_tuning": {"model": "smollm2-135m-q4_1", "settings": [{}]},
               "workload": {"model": "smollm2-135m-q4_1"}}
    if nginx_binary():
        studies["fleet"] = {"model": "smollm2-135m-q4_1"}
    run_dir = perfkit_run({"name": "minimal", "studies": studies}, tmp_path, name="minimal.yaml")
    _every_study_reported(run_dir, list(studies))
    assert not llama_server_pids()


def test_defaults_against_an_ollama_perfkit_cannot_restart(tmp_path, scripted_models_dir):
    """Only the backend's URL: no restart command, no server log. Cold states that need a restart are said to
    be unmeasurable, the rest is measured."""
    with ScriptedOllama(tmp_path / "ollama", models_dir=scripted_models_dir) as so:
        studies = {"cold_start": {"model": "tiny"},
                   "model_size": {"models": ["qwen2.5:32b-instruct-q4_0", "tiny"]},
                   "quantization": {"models": ["qwen2.5:32b-instruct-q8_0", "qwen2.5:32b-instruct-q4_0"]},
                   "config_tuning": {"model": "tiny", "settings": [{}]},
                   "workload": {"model": "tiny"}}
        run_dir = perfkit_run({"name": "minimal-ollama", "backend": {"kind": "ollama", "url": so.url},
                               "studies": studies}, tmp_path, name="minimal.yaml")
    _every_study_reported(run_dir, list(studies))
    assert not so.leftover_processes()
