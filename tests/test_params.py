from pathlib import Path

import pytest

from perfkit import params
from perfkit.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, text):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", ["demo.yaml", "smoke.yaml", "ollama-qwen2.5.yaml"])
def test_shipped_parameter_sets_validate(name):
    p = params.load(ROOT / "params" / name, check_models=False)
    assert p.enabled() == list(params.STUDIES)


@pytest.mark.parametrize("text,match", [
    ("name: x\nstudiez: {}\n", r"p.yaml: unknown key 'studiez'; allowed here: name, description, backend"),
    ("name: x\nstudies:\n  cold_start:\n    model: m\n    reps: many\n", r"p.yaml: studies.cold_start.reps: .*integer"),
    ("name: x\nstudies:\n  cold_start:\n    model: m\n    states: [cold]\n",
     r"studies.cold_start.states: unknown cache state 'cold'; allowed: .*cold_disk, cold_memory, .*warm_cached"),
    ("name: x\nstudies:\n  cold_start:\n    model: m\n    strategies: [prewarm]\n",
     r"unknown warmup strategy 'prewarm'; allowed: none, preload, keep_warm"),
    ("name: x\nstudies:\n  config_tuning:\n    model: m\n    settings: [{OLLAMA_KV_CACHE_TYPE: q5}]\n",
     r"studies.config_tuning.settings: entry 0: OLLAMA_KV_CACHE_TYPE='q5' is not allowed; allowed: f16 \| q8_0 \| q4_0"),
    ("name: x\nstudies:\n  model_size:\n    models: [a, b]\n    extra: 1\n",
     r"unknown key 'studies.model_size.extra'; allowed here: models, reps"),
    ("name: x\nbackend: {kind: ollama}\nstudies: {}\n", r"backend: Value error|backend: backend kind 'ollama' needs a url"),
    ("name: x\nbackend: {kind: vllm, url: u}\nstudies: {}\n", r"backend.kind: Input should be 'embedded', 'ollama'"),
    ("- a list\n", r"expected a mapping at the top level"),
    ("name: [unclosed\n", r"not valid YAML"),
])
def test_bad_files_name_file_key_and_allowed(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        params.load(write(tmp_path, text), check_models=False)


def test_unknown_model_in_the_embedded_store(tmp_path, monkeypatch):
    store = tmp_path / "models"
    store.mkdir()
    (store / "tiny.gguf").write_bytes(b"GGUF")
    monkeypatch.setenv("PERFKIT_MODELS_DIR", str(store))
    p = write(tmp_path, "name: x\nstudies:\n  model_size:\n    models: [tiny, huge]\n")
    with pytest.raises(ConfigError, match=r"studies.model_size.models\[1\]: unknown model 'huge'; allowed: tiny"):
        params.load(p)


def test_missing_file():
    with pytest.raises(ConfigError, match="no such parameter file"):
        params.load("nope.yaml")
